//! Pod Security Standards `restricted` (Kubernetes 1.33), checked here as the admission
//! controller checks a pod spec, so that a built pod is known to be admitted to its
//! namespace before any cluster sees it. The checker is tested too: it must refuse each
//! rule's violation, or its silence would prove nothing.

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, Container, ContainerPort, HostPathVolumeSource, PodSpec,
    SELinuxOptions, SeccompProfile, SecurityContext, Sysctl, Volume, WindowsSecurityContextOptions,
};
use moltbot_crds::Plan;
use moltbot_operator::build;

use crate::support::{fixture, pod_spec, settings};

/// Volume types `restricted` allows.
const ALLOWED_VOLUMES: [&str; 8] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls `baseline` (and so `restricted`) allows.
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// One container of any kind (init, app, ephemeral): what the rules look at.
struct Checked {
    name: String,
    context: SecurityContext,
    ports: Vec<ContainerPort>,
}

/// Every way `spec` breaks Pod Security `restricted` (its `baseline` rules included);
/// empty when it meets it.
pub fn restricted_violations(spec: &PodSpec) -> Vec<String> {
    let mut violations = Vec::new();
    let pod = spec.security_context.clone().unwrap_or_default();
    let checked = |c: &Container| Checked {
        name: c.name.clone(),
        context: c.security_context.clone().unwrap_or_default(),
        ports: c.ports.clone().unwrap_or_default(),
    };
    let containers: Vec<Checked> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(checked)
        .chain(spec.ephemeral_containers.iter().flatten().map(|c| Checked {
            name: c.name.clone(),
            context: c.security_context.clone().unwrap_or_default(),
            ports: c.ports.clone().unwrap_or_default(),
        }))
        .collect();

    // baseline: host namespaces, host paths and ports, privilege, Windows host processes,
    // sysctls, SELinux, AppArmor, /proc.
    for (set, field) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            violations.push(field.to_string());
        }
    }
    let host_process = |w: &Option<WindowsSecurityContextOptions>| {
        w.as_ref().and_then(|w| w.host_process) == Some(true)
    };
    if host_process(&pod.windows_options) {
        violations.push("pod windowsOptions.hostProcess".into());
    }
    for volume in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).expect("a volume serialises");
        let kinds = value.as_object().expect("a volume is an object").keys();
        for kind in kinds.filter(|k| *k != "name") {
            if !ALLOWED_VOLUMES.contains(&kind.as_str()) {
                violations.push(format!("volume {}: type {kind}", volume.name));
            }
        }
    }
    for sysctl in pod.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            violations.push(format!("sysctl {}", sysctl.name));
        }
    }
    let selinux_bad = |options: &Option<SELinuxOptions>| {
        options.as_ref().is_some_and(|o| {
            o.user.is_some()
                || o.role.is_some()
                || o.type_
                    .as_deref()
                    .is_some_and(|t| !t.is_empty() && !SELINUX_TYPES.contains(&t))
        })
    };
    if selinux_bad(&pod.se_linux_options) {
        violations.push("pod seLinuxOptions".into());
    }
    let unconfined = |profile: &Option<AppArmorProfile>| {
        profile.as_ref().is_some_and(|p| p.type_ == "Unconfined")
    };
    if unconfined(&pod.app_armor_profile) {
        violations.push("pod appArmorProfile Unconfined".into());
    }

    // restricted: non-root and seccomp, at pod level or in every container.
    if pod.run_as_user == Some(0) {
        violations.push("pod runAsUser 0".into());
    }
    let seccomp_ok = |p: &SeccompProfile| p.type_ == "RuntimeDefault" || p.type_ == "Localhost";
    if pod.seccomp_profile.as_ref().is_some_and(|p| !seccomp_ok(p)) {
        violations.push("pod seccompProfile".into());
    }

    for Checked {
        name,
        context,
        ports,
    } in &containers
    {
        let mut violate = |rule: &str| violations.push(format!("{name}: {rule}"));
        if context.privileged == Some(true) {
            violate("privileged");
        }
        if host_process(&context.windows_options) {
            violate("windowsOptions.hostProcess");
        }
        if ports
            .iter()
            .any(|p| p.host_port.is_some_and(|port| port != 0))
        {
            violate("hostPort");
        }
        if context
            .proc_mount
            .as_deref()
            .is_some_and(|m| m != "Default")
        {
            violate("procMount");
        }
        if selinux_bad(&context.se_linux_options) {
            violate("seLinuxOptions");
        }
        if unconfined(&context.app_armor_profile) {
            violate("appArmorProfile Unconfined");
        }
        if context.allow_privilege_escalation != Some(false) {
            violate("allowPrivilegeEscalation must be false");
        }
        if !context
            .run_as_non_root
            .unwrap_or(pod.run_as_non_root == Some(true))
        {
            violate("runAsNonRoot must be true");
        }
        if context.run_as_user == Some(0) {
            violate("runAsUser 0");
        }
        if !context
            .seccomp_profile
            .as_ref()
            .or(pod.seccomp_profile.as_ref())
            .is_some_and(seccomp_ok)
        {
            violate("seccompProfile must be RuntimeDefault or Localhost");
        }
        let capabilities = context.capabilities.clone().unwrap_or_default();
        if !capabilities.drop.iter().flatten().any(|c| c == "ALL") {
            violate("capabilities must drop ALL");
        }
        for added in capabilities.add.iter().flatten() {
            if added != "NET_BIND_SERVICE" {
                violate(&format!("capability {added} added"));
            }
        }
    }
    violations
}

#[test]
fn every_built_pod_meets_restricted() {
    let settings = settings();
    for name in ["alice.yaml", "bob.yaml", "carol.yaml"] {
        let fixture = fixture(name);
        for plan in Plan::ALL {
            for runtime_class in [None, Some("gvisor")] {
                let mut tenant = fixture.tenant.clone();
                tenant.spec.plan = plan;
                tenant.spec.gateway.runtime_class_name = runtime_class.map(Into::into);
                let desired = build(&tenant, &fixture.connections, &settings).unwrap();
                let spec = pod_spec(&desired);
                assert_eq!(spec.runtime_class_name.as_deref(), runtime_class);
                assert_eq!(
                    restricted_violations(spec),
                    Vec::<String>::new(),
                    "{name} on {plan:?} with runtime class {runtime_class:?}"
                );
            }
        }
    }
}

#[test]
fn the_gateway_runs_locked_down_beyond_restricted() {
    let fixture = fixture("alice.yaml");
    let desired = build(&fixture.tenant, &fixture.connections, &settings()).unwrap();
    let spec = pod_spec(&desired);
    let pod = spec.security_context.as_ref().unwrap();
    assert_eq!(
        (pod.run_as_user, pod.run_as_group, pod.fs_group),
        (Some(65532), Some(65532), Some(65532))
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    let context = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(context.read_only_root_filesystem, Some(true));
    assert_eq!(context.privileged, Some(false));
}

/// The built pod spec with `change` applied must break `restricted` with a violation
/// mentioning `rule`.
fn refused(rule: &str, change: impl FnOnce(&mut PodSpec)) {
    let fixture = fixture("bob.yaml");
    let desired = build(&fixture.tenant, &[], &settings()).unwrap();
    let mut spec = pod_spec(&desired).clone();
    change(&mut spec);
    let violations = restricted_violations(&spec);
    assert!(
        violations.iter().any(|v| v.contains(rule)),
        "expected a violation of {rule}, got {violations:?}"
    );
}

fn context(spec: &mut PodSpec) -> &mut SecurityContext {
    spec.containers[0]
        .security_context
        .get_or_insert_with(SecurityContext::default)
}

#[test]
fn the_checker_refuses_each_violation() {
    refused("hostNetwork", |s| s.host_network = Some(true));
    refused("hostPID", |s| s.host_pid = Some(true));
    refused("hostIPC", |s| s.host_ipc = Some(true));
    refused("type hostPath", |s| {
        s.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: None,
            }),
            ..Volume::default()
        })
    });
    refused("hostPort", |s| {
        s.containers[0].ports.get_or_insert_with(Vec::new)[0].host_port = Some(8080)
    });
    refused("privileged", |s| context(s).privileged = Some(true));
    refused("allowPrivilegeEscalation", |s| {
        context(s).allow_privilege_escalation = None
    });
    refused("allowPrivilegeEscalation", |s| {
        context(s).allow_privilege_escalation = Some(true)
    });
    refused("runAsNonRoot", |s| context(s).run_as_non_root = Some(false));
    refused("runAsNonRoot", |s| {
        context(s).run_as_non_root = None;
        s.security_context.as_mut().unwrap().run_as_non_root = None;
    });
    refused("runAsUser 0", |s| context(s).run_as_user = Some(0));
    refused("pod runAsUser 0", |s| {
        s.security_context.as_mut().unwrap().run_as_user = Some(0)
    });
    refused("seccompProfile", |s| {
        s.security_context.as_mut().unwrap().seccomp_profile = None
    });
    refused("seccompProfile", |s| {
        context(s).seccomp_profile = Some(SeccompProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        })
    });
    refused("capabilities must drop ALL", |s| {
        context(s).capabilities = None
    });
    refused("capability SYS_ADMIN added", |s| {
        context(s).capabilities.as_mut().unwrap().add = Some(vec!["SYS_ADMIN".into()])
    });
    refused("procMount", |s| {
        context(s).proc_mount = Some("Unmasked".into())
    });
    refused("seLinuxOptions", |s| {
        context(s).se_linux_options = Some(SELinuxOptions {
            type_: Some("spc_t".into()),
            ..SELinuxOptions::default()
        })
    });
    refused("sysctl kernel.msgmax", |s| {
        s.security_context.as_mut().unwrap().sysctls = Some(vec![Sysctl {
            name: "kernel.msgmax".into(),
            value: "1".into(),
        }])
    });
    refused("windowsOptions.hostProcess", |s| {
        context(s).windows_options = Some(WindowsSecurityContextOptions {
            host_process: Some(true),
            ..WindowsSecurityContextOptions::default()
        })
    });
    refused("appArmorProfile Unconfined", |s| {
        context(s).app_armor_profile = Some(AppArmorProfile {
            type_: "Unconfined".into(),
            localhost_profile: None,
        })
    });
    // An init container is held to the same rules.
    refused("setup: allowPrivilegeEscalation", |s| {
        s.init_containers = Some(vec![Container {
            name: "setup".into(),
            ..Container::default()
        }])
    });
}

#[test]
fn the_checker_admits_what_restricted_allows() {
    let fixture = fixture("bob.yaml");
    let desired = build(&fixture.tenant, &[], &settings()).unwrap();
    let mut spec = pod_spec(&desired).clone();
    context(&mut spec).capabilities = Some(Capabilities {
        drop: Some(vec!["ALL".into()]),
        add: Some(vec!["NET_BIND_SERVICE".into()]),
    });
    context(&mut spec).seccomp_profile = Some(SeccompProfile {
        type_: "Localhost".into(),
        localhost_profile: Some("profiles/gateway.json".into()),
    });
    assert_eq!(restricted_violations(&spec), Vec::<String>::new());
}
