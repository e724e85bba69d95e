//! The gateway itself: its identity, config, volume, pod and Service.
//!
//! The volume is a PersistentVolumeClaim of its own rather than a StatefulSet
//! volumeClaimTemplate: a template cannot change once the StatefulSet exists, while a
//! Tenant's storage may grow, and a claim the operator owns is resized by patching it. It
//! also keeps the data's life apart from the workload's (suspending, or replacing the
//! StatefulSet, never touches it).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use moltbot_crds::{RenderedConfig, Tenant};

use super::limits::Compute;
use super::{
    CONFIG_DIR, CONFIG_FILE, CONFIG_HASH_ANNOTATION, CONFIG_MAP, DATA_DIR, DATA_VOLUME, GATEWAY,
    Names,
};
use crate::settings::OperatorSettings;

/// The gateway's user and group: `nonroot` of the distroless images, and the owner the
/// volume is given (fsGroup) so that the gateway can write it.
const GATEWAY_UID: i64 = 65532;
/// The name of the gateway's container port, which probes and the Service refer to.
const HTTP_PORT: &str = "http";
/// Scratch space for SQLite's temporary files; the root filesystem is read-only.
const TMP_SIZE: &str = "256Mi";

/// The gateway's identity, without an API token: it never calls the API server.
pub(crate) fn service_account(names: &Names) -> ServiceAccount {
    ServiceAccount {
        metadata: names.meta(GATEWAY, names.gateway_labels()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

pub(crate) fn config_map(names: &Names, rendered: &RenderedConfig) -> ConfigMap {
    ConfigMap {
        metadata: names.meta(CONFIG_MAP, names.gateway_labels()),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_string(),
            rendered.yaml.clone(),
        )])),
        ..ConfigMap::default()
    }
}

pub(crate) fn persistent_volume_claim(names: &Names, compute: &Compute) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: names.meta(DATA_VOLUME, names.gateway_labels()),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    compute.storage.clone(),
                )])),
                limits: None,
            }),
            storage_class_name: compute.storage_class_name.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

/// One gateway pod, or none while the tenant is suspended (the volume stays). A
/// StatefulSet rather than a Deployment: it never runs a second pod beside the first,
/// which a single-writer SQLite database on a ReadWriteOnce volume needs.
pub(crate) fn stateful_set(
    tenant: &Tenant,
    names: &Names,
    settings: &OperatorSettings,
    compute: &Compute,
    rendered: &RenderedConfig,
    config_hash: &str,
) -> StatefulSet {
    let container = Container {
        name: GATEWAY.into(),
        image: Some(
            tenant
                .spec
                .gateway
                .image
                .clone()
                .unwrap_or_else(|| settings.gateway_image.clone()),
        ),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT.into()),
            container_port: i32::from(settings.gateway_port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(
            rendered
                .secret_env
                .iter()
                .map(|env| EnvVar {
                    name: env.env.clone(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: env.secret_name.clone(),
                            key: env.key.clone(),
                            // A missing Secret keeps the pod from starting, with an event
                            // naming it, instead of a gateway that fails to load.
                            optional: Some(false),
                        }),
                        ..EnvVarSource::default()
                    }),
                    value: None,
                })
                .collect(),
        ),
        resources: Some(ResourceRequirements {
            requests: Some(compute.requests.clone()),
            limits: Some(compute.limits.clone()),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("data", DATA_DIR, false),
            mount("tmp", "/tmp", false),
        ]),
        // Generous: the first start after an upgrade may migrate a large database.
        startup_probe: Some(probe("/healthz", 2, 90)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: CONFIG_MAP.into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: DATA_VOLUME.into(),
                    read_only: None,
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(Quantity(TMP_SIZE.into())),
                    medium: None,
                }),
                ..Volume::default()
            },
        ]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(GATEWAY_UID),
            run_as_group: Some(GATEWAY_UID),
            fs_group: Some(GATEWAY_UID),
            // Re-owning every file of a large volume at each start would slow it down.
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        service_account_name: Some(GATEWAY.into()),
        automount_service_account_token: Some(false),
        // Service environment variables would tell the gateway about its neighbours.
        enable_service_links: Some(false),
        runtime_class_name: tenant.spec.gateway.runtime_class_name.clone(),
        ..PodSpec::default()
    };
    StatefulSet {
        metadata: names.meta(GATEWAY, names.gateway_labels()),
        spec: Some(StatefulSetSpec {
            replicas: Some(if tenant.spec.suspended { 0 } else { 1 }),
            selector: LabelSelector {
                match_labels: Some(names.gateway_selector()),
                ..LabelSelector::default()
            },
            service_name: Some(GATEWAY.into()),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(names.gateway_labels()),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(HTTP_PORT.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The gateway inside the cluster, at [`super::Desired::endpoint`].
pub(crate) fn service(names: &Names, settings: &OperatorSettings) -> Service {
    Service {
        metadata: names.meta(GATEWAY, names.gateway_labels()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names.gateway_selector()),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT.into()),
                port: i32::from(settings.gateway_port),
                target_port: Some(IntOrString::String(HTTP_PORT.into())),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
