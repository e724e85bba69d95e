//! The workload, its config and volume, the guard rails that follow the plan, ownership,
//! and the config hash that rolls the pod.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use moltbot_crds::{CREDENTIALS_SECRET, Plan, TENANT_LABEL};
use moltbot_operator::build::{CONFIG_FILE, CONFIG_HASH_ANNOTATION};
use moltbot_operator::{BuildError, Desired, build};
use moltbot_protocol::config::Config;
use serde_json::Value;

use crate::support::{built, config_hash_of_pod, fixture, gateway_container, pod_spec, settings};

fn replicas(desired: &Desired) -> Option<i32> {
    desired.stateful_set.spec.as_ref().and_then(|s| s.replicas)
}

fn storage_request(desired: &Desired) -> &Quantity {
    &desired
        .persistent_volume_claim
        .spec
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .expect("the claim requests storage")["storage"]
}

fn quota(desired: &Desired) -> &BTreeMap<String, Quantity> {
    desired
        .resource_quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .expect("the quota has hard limits")
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

#[test]
fn one_gateway_runs_the_rendered_config_with_its_secrets_by_reference() {
    let (fixture, desired) = built("alice.yaml");
    assert_eq!(replicas(&desired), Some(1));
    let container = gateway_container(&desired);
    assert_eq!(
        container.image.as_deref(),
        Some(settings().gateway_image.as_str())
    );
    assert_eq!(
        container.args.as_deref(),
        Some(
            &[
                "--config".to_string(),
                "/etc/moltbot/gateway.yaml".to_string()
            ][..]
        )
    );

    // The ConfigMap holds a config the gateway loads with the environment the pod gets.
    let yaml = &desired.config_map.data.as_ref().unwrap()[CONFIG_FILE];
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let source = var
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{} comes from a Secret", var.name));
        assert!(var.value.is_none());
        assert_eq!(source.optional, Some(false));
        let value = if source.name == CREDENTIALS_SECRET {
            "generated-inbox-token-0123".to_string()
        } else {
            fixture.secret_value(&source.name, &source.key)
        };
        env.insert(var.name.clone(), value);
    }
    let config = Config::from_yaml(yaml, "gateway.yaml".as_ref(), &env)
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(config.tenant.id, "alice");
    assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.data_dir.to_str(), Some("/var/lib/moltbot"));
    assert_eq!(config.connections.len(), 1);

    // The config and data are mounted where the config says.
    let mounts: BTreeMap<&str, (&str, Option<bool>)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.mount_path.as_str(), (m.name.as_str(), m.read_only)))
        .collect();
    assert_eq!(mounts["/etc/moltbot"], ("config", Some(true)));
    assert_eq!(mounts["/var/lib/moltbot"], ("data", Some(false)));
    assert_eq!(mounts["/tmp"], ("tmp", Some(false)));
    let volumes = pod_spec(&desired).volumes.as_ref().unwrap();
    let data = volumes.iter().find(|v| v.name == "data").unwrap();
    assert_eq!(
        data.persistent_volume_claim.as_ref().unwrap().claim_name,
        desired
            .persistent_volume_claim
            .metadata
            .name
            .clone()
            .unwrap()
    );

    // The probes use the gateway's real health endpoints on its named port.
    let path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&container.startup_probe).as_deref(), Some("/healthz"));
    assert_eq!(path(&container.readiness_probe).as_deref(), Some("/readyz"));

    assert_eq!(desired.endpoint, "http://gateway.tenant-alice.svc:8080");
    let service = desired.service.spec.as_ref().unwrap();
    assert_eq!(service.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(service.ports.as_ref().unwrap()[0].port, 8080);

    let unsupported: Vec<&str> = desired
        .unsupported
        .iter()
        .map(|u| u.connection.as_str())
        .collect();
    assert_eq!(unsupported, ["discord"]);
}

#[test]
fn suspended_scales_to_zero_and_keeps_the_volume() {
    let (fixture, running) = built("carol.yaml");
    assert_eq!(replicas(&running), Some(0), "carol is suspended");
    let mut resumed = fixture.tenant.clone();
    resumed.spec.suspended = false;
    let resumed = build(&resumed, &fixture.connections, &settings()).unwrap();
    assert_eq!(replicas(&resumed), Some(1));
    assert_eq!(
        running.persistent_volume_claim, resumed.persistent_volume_claim,
        "suspending leaves the volume as it is"
    );
    assert_eq!(storage_request(&running).0, "40Gi");
}

#[test]
fn resources_follow_the_plan_and_the_overrides() {
    // Bob: the free plan as it is.
    let (_, bob) = built("bob.yaml");
    let free = Plan::Free.defaults();
    let resources = gateway_container(&bob).resources.as_ref().unwrap();
    assert_eq!(
        resources.requests.as_ref().unwrap(),
        &quantities(&[("cpu", free.cpu_request), ("memory", free.memory_request)])
    );
    assert_eq!(
        resources.limits.as_ref().unwrap(),
        &quantities(&[("cpu", free.cpu_limit), ("memory", free.memory_limit)])
    );
    assert_eq!(storage_request(&bob).0, free.storage);

    // Alice asks for more memory than the pro plan's limit: the limit rises to it.
    let (_, alice) = built("alice.yaml");
    let resources = gateway_container(&alice).resources.as_ref().unwrap();
    assert_eq!(
        resources.requests.as_ref().unwrap(),
        &quantities(&[("cpu", "200m"), ("memory", "768Mi")])
    );
    assert_eq!(
        resources.limits.as_ref().unwrap(),
        &quantities(&[("cpu", "1"), ("memory", "768Mi")])
    );
    // The quota is the plan's two pods of that size, so the override is admitted.
    let quota = quota(&alice);
    assert_eq!(quota["pods"].0, "2");
    assert_eq!(quota["requests.cpu"].0, "400m");
    assert_eq!(quota["limits.cpu"].0, "2");
    assert_eq!(quota["requests.memory"].0, "1536Mi");
    assert_eq!(quota["limits.memory"].0, "1536Mi");
    assert_eq!(quota["services.loadbalancers"].0, "0");
    assert_eq!(quota["services.nodeports"].0, "0");
    let limits = &alice.limit_range.spec.as_ref().unwrap().limits[0];
    assert_eq!(limits.type_, "Container");
    assert_eq!(limits.max.as_ref(), resources.limits.as_ref());
    assert_eq!(limits.default_request.as_ref(), resources.requests.as_ref());

    // Carol caps memory below the team plan's request: the request comes down to it.
    let (_, carol) = built("carol.yaml");
    let resources = gateway_container(&carol).resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "256Mi");
    assert_eq!(
        gateway_container(&carol).image.as_deref(),
        Some("registry.example.com/moltbot-gateway:0.1.0-rc1")
    );
}

#[test]
fn every_plan_sizes_its_namespace() {
    let fixture = fixture("bob.yaml");
    for plan in Plan::ALL {
        let mut tenant = fixture.tenant.clone();
        tenant.spec.plan = plan;
        let desired = build(&tenant, &[], &settings()).unwrap();
        let defaults = plan.defaults();
        assert_eq!(quota(&desired)["pods"].0, defaults.pods.to_string());
        assert_eq!(quota(&desired)["requests.storage"].0, defaults.storage);
        assert_eq!(storage_request(&desired).0, defaults.storage);
    }
}

#[test]
fn a_storage_override_grows_the_volume_and_its_quota() {
    let fixture = fixture("bob.yaml");
    let (_, plain) = built("bob.yaml");
    assert_eq!(storage_request(&plain).0, "1Gi");
    let mut bigger = fixture.tenant.clone();
    bigger.spec.gateway.storage = Some(moltbot_crds::GatewayStorage {
        size: Quantity("20Gi".into()),
        storage_class_name: None,
    });
    let grown = build(&bigger, &[], &settings()).unwrap();
    assert_eq!(storage_request(&grown).0, "20Gi");
    assert_eq!(quota(&grown)["requests.storage"].0, "20Gi");
    assert_eq!(
        plain.persistent_volume_claim.metadata, grown.persistent_volume_claim.metadata,
        "the same claim, resized"
    );

    let (_, carol) = built("carol.yaml");
    let claim = carol.persistent_volume_claim.spec.as_ref().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(
        claim.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
}

#[test]
fn resources_the_schema_would_refuse_are_refused_by_name() {
    let fixture = fixture("bob.yaml");
    let mut tenant = fixture.tenant.clone();
    tenant.spec.gateway.resources = Some(moltbot_crds::GatewayResources {
        requests: Some(moltbot_crds::ComputeResources {
            cpu: Some(Quantity("lots".into())),
            memory: None,
        }),
        limits: None,
    });
    let error = build(&tenant, &[], &settings()).unwrap_err();
    assert!(
        matches!(&error, BuildError::Quantity { field, .. } if *field == "gateway.resources.requests.cpu"),
        "{error}"
    );

    tenant.spec.gateway.resources = Some(moltbot_crds::GatewayResources {
        requests: Some(moltbot_crds::ComputeResources {
            cpu: Some(Quantity("2".into())),
            memory: None,
        }),
        limits: Some(moltbot_crds::ComputeResources {
            cpu: Some(Quantity("1".into())),
            memory: None,
        }),
    });
    let error = build(&tenant, &[], &settings()).unwrap_err().to_string();
    assert!(error.contains("limits.cpu must be at least"), "{error}");
}

#[test]
fn every_object_belongs_to_the_tenant() {
    let (fixture, desired) = built("alice.yaml");
    let uid = fixture.tenant.metadata.uid.clone().unwrap();
    let Value::Object(objects) = serde_json::to_value(&desired).unwrap() else {
        panic!("Desired serialises as an object");
    };
    let mut checked = 0;
    for (field, value) in objects {
        let items = match value {
            Value::Array(items) => items,
            object @ Value::Object(_) => vec![object],
            _ => continue,
        };
        for object in items {
            let metadata = &object["metadata"];
            let name = metadata["name"].as_str().unwrap_or_default();
            assert_eq!(
                metadata["labels"][TENANT_LABEL], "alice",
                "{field} {name} carries the tenant label"
            );
            let owners = metadata["ownerReferences"].as_array().unwrap();
            assert_eq!(owners.len(), 1, "{field} {name}");
            assert_eq!(owners[0]["kind"], "Tenant");
            assert_eq!(owners[0]["uid"], uid.as_str());
            assert_eq!(owners[0]["controller"], true);
            if field == "namespace" {
                assert!(metadata.get("namespace").is_none());
            } else {
                assert_eq!(metadata["namespace"], "tenant-alice", "{field} {name}");
            }
            checked += 1;
        }
    }
    // Namespace, quota, limit range, service account, 3 policies, config, claim,
    // Service, StatefulSet.
    assert_eq!(checked, 11);

    let namespace_labels = desired.namespace.metadata.labels.as_ref().unwrap();
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            namespace_labels[&format!("pod-security.kubernetes.io/{mode}")],
            "restricted"
        );
    }
    assert_eq!(
        desired.service_account.automount_service_account_token,
        Some(false)
    );
}

#[test]
fn a_tenant_not_yet_stored_cannot_own_anything() {
    let mut tenant = fixture("bob.yaml").tenant;
    tenant.metadata.uid = None;
    assert!(matches!(
        build(&tenant, &[], &settings()),
        Err(BuildError::NotStored(name)) if name == "bob"
    ));
}

#[test]
fn the_config_hash_follows_what_the_gateway_reads_at_start() {
    let fixture = fixture("alice.yaml");
    let hash = |tenant: &moltbot_crds::Tenant, connections: &[moltbot_crds::Connection]| {
        let desired = build(tenant, connections, &settings()).unwrap();
        assert_eq!(config_hash_of_pod(&desired), desired.config_hash);
        desired.config_hash
    };
    let base = hash(&fixture.tenant, &fixture.connections);
    assert_eq!(base.len(), 64, "a sha256 in hex");

    // Unrelated metadata: the same hash.
    let mut tenant = fixture.tenant.clone();
    tenant.metadata.resource_version = Some("9999".into());
    tenant.metadata.generation = Some(4);
    tenant.metadata.labels = Some(BTreeMap::from([("team".into(), "blue".into())]));
    tenant.metadata.annotations = Some(BTreeMap::from([("note".into(), "hi".into())]));
    let mut connections = fixture.connections.clone();
    connections[1].metadata.resource_version = Some("3003".into());
    connections[1].spec.display_name = Some("Pi, renamed".into());
    connections.reverse();
    assert_eq!(hash(&tenant, &connections), base);

    // A Connection's setting, a Secret reference, or a new Connection: a new hash.
    let mut allow = fixture.connections.clone();
    allow[1]
        .spec
        .telegram
        .as_mut()
        .unwrap()
        .allow_from
        .push("987654321".into());
    assert_ne!(hash(&fixture.tenant, &allow), base);
    let mut token_key = fixture.connections.clone();
    token_key[1].spec.credentials.as_mut().unwrap().token_key = "token-v2".into();
    assert_ne!(hash(&fixture.tenant, &token_key), base);
    let fewer = &fixture.connections[..1];
    assert_ne!(hash(&fixture.tenant, fewer), base);

    // A credentials rotation: a new hash, so the pod picks up the new values.
    let mut rotated = fixture.tenant.clone();
    rotated.metadata.annotations = Some(BTreeMap::from([(
        moltbot_crds::ROTATE_CREDENTIALS_ANNOTATION.into(),
        "2025-01-01T00:00:00Z".into(),
    )]));
    assert_ne!(hash(&rotated, &fixture.connections), base);

    assert_eq!(CONFIG_HASH_ANNOTATION, "cloud.moltbot.com/config-hash");
}

#[test]
fn no_secret_value_appears_in_any_built_object() {
    for name in ["alice.yaml", "carol.yaml"] {
        let (fixture, desired) = built(name);
        let values = fixture.secret_values();
        let text = serde_json::to_string(&desired).unwrap() + &format!("{desired:?}");
        for value in &values {
            assert!(!text.contains(value.as_str()), "{name}: {value} leaked");
        }
    }
    // The check has something to find: alice's fixture holds three fake values.
    assert_eq!(fixture("alice.yaml").secret_values().len(), 3);
}
