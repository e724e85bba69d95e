//! One Tenant's life: created, reconciled again with nothing changed, rotated, paused,
//! suspended, refused, failing, deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use moltbot_crds::{FINALIZER, PAUSED_ANNOTATION, ROTATE_CREDENTIALS_ANNOTATION};
use moltbot_operator::build::CONFIG_HASH_ANNOTATION;
use moltbot_operator::reconcile::{error_policy, reconcile};
use serde_json::{Value, json};

use crate::support::{
    assert_condition, cluster, core, events, fixture, lines, only_status_and_event, request,
    stored_tenant, tenant_path,
};

const NS: &str = "tenant-alice";

fn policy(name: &str) -> String {
    format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies/{name}")
}

fn stateful_set_path(namespace: &str) -> String {
    format!("/apis/apps/v1/namespaces/{namespace}/statefulsets/gateway")
}

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

/// Every request of a first reconcile of Alice, whose namespace does not exist yet.
fn first_reconcile_of_alice() -> Vec<String> {
    [
        format!("PATCH /api/v1/namespaces/{NS}"),
        format!("GET {}", core(NS, "persistentvolumeclaims/gateway-data")),
        format!("PATCH {}", core(NS, "resourcequotas/tenant-quota")),
        format!("PATCH {}", core(NS, "limitranges/tenant-limits")),
        format!("PATCH {}", core(NS, "serviceaccounts/gateway")),
        format!("PATCH {}", policy("default-deny")),
        format!("PATCH {}", policy("gateway-ingress")),
        format!("PATCH {}", policy("gateway-egress")),
        format!("PATCH {}", core(NS, "configmaps/gateway-config")),
        format!("GET {}", core(NS, "secrets/gateway-credentials")),
        format!("PATCH {}", core(NS, "secrets/gateway-credentials")),
        format!("POST {EVENTS}"),
        format!("GET {}", core(NS, "secrets/model-key")),
        format!("GET {}", core(NS, "secrets/telegram-bot")),
        format!("PATCH {}", core(NS, "persistentvolumeclaims/gateway-data")),
        format!("PATCH {}", core(NS, "services/gateway")),
        format!("PATCH {}", stateful_set_path(NS)),
        format!("PATCH {}/status", tenant_path("alice")),
    ]
    .into()
}

fn pod_config_hash(stateful_set: &Value) -> String {
    stateful_set["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        .as_str()
        .expect("a config hash on the pod template")
        .to_string()
}

#[tokio::test]
async fn a_new_tenant_gets_every_object_by_server_side_apply_then_its_status() {
    let alice = fixture("alice.yaml");
    let (ctx, server, tenant) = cluster(&alice);

    let action = reconcile(Arc::new(tenant), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(3600)));

    let seen = server.take();
    assert_eq!(lines(&seen), first_reconcile_of_alice());
    for write in seen.iter().filter(|s| s.method == "PATCH") {
        assert!(
            write.is_operator_apply(),
            "{} is not the operator's apply",
            write.line()
        );
        let expected_kind = match write.path.rsplit('/').nth(1) {
            Some("namespaces") => "Namespace",
            Some("secrets") => "Secret",
            Some("statefulsets") => "StatefulSet",
            Some("tenants") => "Tenant",
            _ => continue,
        };
        assert_eq!(write.body["kind"], expected_kind, "{}", write.line());
    }

    let secret = &request(
        &seen,
        &format!("PATCH {}", core(NS, "secrets/gateway-credentials")),
    )
    .body;
    for key in ["inbox-token", "ingress-hmac-key"] {
        let value = secret["data"][key]
            .as_str()
            .expect("a generated credential");
        // base64 of 64 hex digits.
        assert_eq!(value.len(), 88, "{key}");
    }
    assert_ne!(
        secret["data"]["inbox-token"],
        secret["data"]["ingress-hmac-key"]
    );
    assert_eq!(
        events(&seen),
        [("Normal".to_string(), "CredentialsGenerated".to_string())]
    );
    for event in seen.iter().filter(|s| s.method == "POST") {
        let note = event.body.to_string();
        for value in alice.secret_values() {
            assert!(!note.contains(&value), "an event shows a secret");
        }
    }

    let stateful_set = &request(&seen, &format!("PATCH {}", stateful_set_path(NS))).body;
    assert_eq!(stateful_set["spec"]["replicas"], 1);
    assert_eq!(
        stateful_set["metadata"]["ownerReferences"][0]["kind"],
        "Tenant"
    );

    let status = &request(&seen, &format!("PATCH {}/status", tenant_path("alice"))).body["status"];
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["namespace"], NS);
    assert_eq!(status["endpoint"], "http://gateway.tenant-alice.svc:8080");
    assert_eq!(status["phase"], "Provisioning");
    assert_eq!(status["connections"]["total"], 3);
    assert_eq!(status["connections"]["summary"], "0/3");
    assert_condition(status, "Ready", "False", "GatewayStarting");
    assert_condition(status, "Progressing", "True", "RollingOut");
    assert_condition(status, "Degraded", "False", "AsExpected");
    assert_condition(status, "Suspended", "False", "Active");
    for c in status["conditions"].as_array().unwrap() {
        assert_eq!(c["observedGeneration"], 3, "{c}");
    }
}

#[tokio::test]
async fn a_reconcile_where_nothing_changed_writes_no_status_and_no_credentials() {
    let alice = fixture("alice.yaml");
    let (ctx, server, tenant) = cluster(&alice);
    reconcile(Arc::new(tenant), ctx.clone()).await.unwrap();
    let first = server.take();

    reconcile(Arc::new(stored_tenant(&server, "alice")), ctx.clone())
        .await
        .unwrap();
    let second = server.take();
    let expected: Vec<String> = first_reconcile_of_alice()
        .into_iter()
        .filter(|line| {
            !line.starts_with("POST")
                && !line.ends_with("/status")
                && *line != format!("PATCH {}", core(NS, "secrets/gateway-credentials"))
        })
        .collect();
    assert_eq!(lines(&second), expected);
    let sts = format!("PATCH {}", stateful_set_path(NS));
    assert_eq!(
        pod_config_hash(&request(&second, &sts).body),
        pod_config_hash(&request(&first, &sts).body),
        "the same inputs roll nothing"
    );
}

#[tokio::test]
async fn a_changed_secret_or_a_rotation_request_rolls_the_gateway() {
    let alice = fixture("alice.yaml");
    let (ctx, server, tenant) = cluster(&alice);
    reconcile(Arc::new(tenant), ctx.clone()).await.unwrap();
    let sts = format!("PATCH {}", stateful_set_path(NS));
    let hash_at_first = pod_config_hash(&request(&server.take(), &sts).body);

    // A new bot token: the Secret's resourceVersion moves.
    let token = core(NS, "secrets/telegram-bot");
    server.put(&token, server.get(&token).unwrap());
    reconcile(Arc::new(stored_tenant(&server, "alice")), ctx.clone())
        .await
        .unwrap();
    let hash_after_token = pod_config_hash(&request(&server.take(), &sts).body);
    assert_ne!(hash_after_token, hash_at_first);

    let mut tenant = stored_tenant(&server, "alice");
    tenant.metadata.annotations.get_or_insert_default().insert(
        ROTATE_CREDENTIALS_ANNOTATION.into(),
        "2026-12-03T07:00:00Z".into(),
    );
    let old_token = server
        .get(&core(NS, "secrets/gateway-credentials"))
        .unwrap()["data"]["inbox-token"]
        .clone();
    reconcile(Arc::new(tenant), ctx.clone()).await.unwrap();
    let seen = server.take();
    let secret = &request(
        &seen,
        &format!("PATCH {}", core(NS, "secrets/gateway-credentials")),
    )
    .body;
    assert_ne!(secret["data"]["inbox-token"], old_token);
    assert_eq!(
        events(&seen),
        [("Normal".to_string(), "CredentialsRotated".to_string())]
    );
    assert_ne!(
        pod_config_hash(&request(&seen, &sts).body),
        hash_after_token
    );
}

#[tokio::test]
async fn a_volume_larger_than_the_spec_asks_is_kept() {
    let alice = fixture("alice.yaml");
    let (ctx, server, tenant) = cluster(&alice);
    let claim = core(NS, "persistentvolumeclaims/gateway-data");
    server.put(
        &claim,
        json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "gateway-data", "namespace": NS},
            "spec": {"resources": {"requests": {"storage": "500Gi"}}},
        }),
    );
    reconcile(Arc::new(tenant), ctx).await.unwrap();
    let seen = server.take();
    let applied = &request(&seen, &format!("PATCH {claim}")).body;
    assert_eq!(applied["spec"]["resources"]["requests"]["storage"], "500Gi");
    let quota = &request(
        &seen,
        &format!("PATCH {}", core(NS, "resourcequotas/tenant-quota")),
    )
    .body;
    assert_eq!(quota["spec"]["hard"]["requests.storage"], "500Gi");
}

#[tokio::test]
async fn a_paused_tenant_only_gets_its_status() {
    let alice = fixture("alice.yaml");
    let (ctx, server, mut tenant) = cluster(&alice);
    tenant
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(PAUSED_ANNOTATION.into(), "true".into());

    let action = reconcile(Arc::new(tenant), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = server.take();
    let status = only_status_and_event(&seen, "alice");
    assert_condition(status, "ReconcilePaused", "True", "PausedByAnnotation");
    assert_eq!(status["phase"], "Paused");
    assert!(
        status.get("observedGeneration").is_none(),
        "a paused spec is not observed"
    );
    assert_eq!(
        events(&seen),
        [("Normal".into(), "PausedByAnnotation".into())]
    );

    // Still paused: nothing at all.
    let mut again = stored_tenant(&server, "alice");
    again
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(PAUSED_ANNOTATION.into(), "true".into());
    reconcile(Arc::new(again), ctx).await.unwrap();
    assert_eq!(lines(&server.take()), Vec::<String>::new());
}

#[tokio::test]
async fn a_suspended_tenant_keeps_its_objects_with_no_gateway_pod() {
    let carol = fixture("carol.yaml");
    let (ctx, server, tenant) = cluster(&carol);
    reconcile(Arc::new(tenant), ctx).await.unwrap();
    let seen = server.take();
    let stateful_set = &request(
        &seen,
        &format!("PATCH {}", stateful_set_path("tenant-carol")),
    )
    .body;
    assert_eq!(stateful_set["spec"]["replicas"], 0);
    let claim = &request(
        &seen,
        &format!(
            "PATCH {}",
            core("tenant-carol", "persistentvolumeclaims/gateway-data")
        ),
    )
    .body;
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "40Gi");
    let status = &request(&seen, &format!("PATCH {}/status", tenant_path("carol"))).body["status"];
    assert_condition(status, "Suspended", "True", "Suspended");
    assert_condition(status, "Ready", "False", "Suspended");
    assert_condition(status, "Progressing", "False", "Suspended");
    assert_eq!(status["phase"], "Suspended");
    assert_eq!(
        events(&seen),
        [
            ("Normal".into(), "CredentialsGenerated".into()),
            ("Normal".into(), "Suspended".into())
        ]
    );
}

#[tokio::test]
async fn an_invalid_tenant_is_degraded_with_a_warning_and_nothing_applied() {
    let bob = fixture("bob.yaml");
    let (ctx, server, mut tenant) = cluster(&bob);
    // A quantity the schema refuses, as an older CRD might have let through.
    tenant.spec.gateway.resources = Some(moltbot_crds::GatewayResources {
        requests: Some(moltbot_crds::ComputeResources {
            cpu: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "lots".into(),
            )),
            memory: None,
        }),
        limits: None,
    });
    let action = reconcile(Arc::new(tenant.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        action,
        Action::await_change(),
        "no retry loop on a spec only a person can fix"
    );
    let seen = server.take();
    let status = only_status_and_event(&seen, "bob");
    assert_condition(status, "Degraded", "True", "InvalidSpec");
    assert_condition(status, "Ready", "False", "InvalidSpec");
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(events(&seen), [("Warning".into(), "InvalidSpec".into())]);
    let note = seen[1].body["note"].as_str().unwrap();
    assert!(note.contains("gateway.resources.requests.cpu"), "{note}");

    // The same spec again: nothing to write.
    let mut again = stored_tenant(&server, "bob");
    again.spec = tenant.spec;
    reconcile(Arc::new(again), ctx).await.unwrap();
    assert_eq!(lines(&server.take()), Vec::<String>::new());
}

#[tokio::test]
async fn a_refused_apply_says_so_in_status_and_backs_off() {
    let alice = fixture("alice.yaml");
    let (ctx, server, tenant) = cluster(&alice);
    let config_map = core(NS, "configmaps/gateway-config");
    server.forbid(&config_map);
    let tenant = Arc::new(tenant);
    let error = reconcile(tenant.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(error.reason(), "Forbidden");
    let seen = server.take();
    let lines = lines(&seen);
    let refused = lines
        .iter()
        .position(|l| *l == format!("PATCH {config_map}"))
        .unwrap();
    assert_eq!(
        lines[refused + 1..],
        [
            format!("PATCH {}/status", tenant_path("alice")),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ]
    );
    let status = &seen[refused + 1].body["status"];
    assert_condition(status, "Degraded", "True", "ApplyFailed");
    assert_eq!(
        events(&seen),
        [
            ("Warning".into(), "ApplyFailed".into()),
            ("Warning".into(), "Forbidden".into())
        ]
    );

    let metrics = ctx.metrics.encode();
    assert!(
        metrics
            .contains("moltbot_operator_tenant_reconcile_failures_total{reason=\"Forbidden\"} 1"),
        "{metrics}"
    );

    let waits: Vec<Action> = (0..3)
        .map(|_| error_policy(tenant.clone(), &error, ctx.clone()))
        .collect();
    assert_eq!(
        waits,
        [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    // A success resets the backoff.
    server.forbid_nothing();
    reconcile(tenant.clone(), ctx.clone()).await.unwrap();
    assert_eq!(
        error_policy(tenant, &error, ctx),
        Action::requeue(Duration::from_secs(5))
    );
}

#[tokio::test]
async fn a_new_tenant_first_gets_the_finalizer_and_nothing_else() {
    let bob = fixture("bob.yaml");
    let (ctx, server, mut tenant) = cluster(&bob);
    tenant.metadata.finalizers = None;
    let action = reconcile(Arc::new(tenant), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    let seen = server.take();
    assert_eq!(lines(&seen), [format!("PATCH {}", tenant_path("bob"))]);
    assert_eq!(seen[0].content_type, "application/json-patch+json");
    assert!(seen[0].body.to_string().contains(FINALIZER));
}

/// Alice being deleted, with a bound volume and the given retention.
async fn delete_alice(retain: bool) -> (Vec<crate::api_server::Seen>, Value) {
    let alice = fixture("alice.yaml");
    let (ctx, server, mut tenant) = cluster(&alice);
    tenant.spec.retain_data_on_delete = retain;
    tenant.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
    server.put(
        &format!("/api/v1/namespaces/{NS}"),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    );
    server.put(
        &stateful_set_path(NS),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "gateway", "namespace": NS}, "spec": {"replicas": 1}}),
    );
    server.put(
        &core(NS, "persistentvolumeclaims/gateway-data"),
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "gateway-data", "namespace": NS}, "spec": {"volumeName": "pv-alice"}}),
    );
    server.put(
        "/api/v1/persistentvolumes/pv-alice",
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-alice"}, "spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
    );
    reconcile(Arc::new(tenant), ctx).await.unwrap();
    let seen = server.take();
    assert_eq!(
        lines(&seen),
        [
            format!("PATCH {}", stateful_set_path(NS)),
            format!("GET {}", core(NS, "persistentvolumeclaims/gateway-data")),
            "PATCH /api/v1/persistentvolumes/pv-alice".to_string(),
            format!("DELETE /api/v1/namespaces/{NS}"),
            format!("PATCH {}", tenant_path("alice")),
        ]
    );
    assert_eq!(seen[0].body, json!({"spec": {"replicas": 0}}));
    for merge in [&seen[0], &seen[2]] {
        assert_eq!(merge.content_type, "application/merge-patch+json");
        assert_eq!(merge.query["fieldManager"], "moltbot-operator");
    }
    assert_eq!(seen[4].content_type, "application/json-patch+json");
    assert!(server.get(&format!("/api/v1/namespaces/{NS}")).is_none());
    let finalizers = stored_tenant(&server, "alice")
        .metadata
        .finalizers
        .unwrap_or_default();
    assert!(finalizers.is_empty(), "the finalizer is released");
    (
        seen.clone(),
        server.get("/api/v1/persistentvolumes/pv-alice").unwrap(),
    )
}

#[tokio::test]
async fn deleting_a_tenant_that_keeps_its_data_retains_the_volume() {
    let (_, volume) = delete_alice(true).await;
    assert_eq!(volume["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(
        volume["metadata"]["labels"]["cloud.moltbot.com/tenant"],
        "alice"
    );
}

#[tokio::test]
async fn deleting_a_tenant_that_drops_its_data_deletes_the_volume_with_the_claim() {
    let (_, volume) = delete_alice(false).await;
    assert_eq!(volume["spec"]["persistentVolumeReclaimPolicy"], "Delete");
}

#[tokio::test]
async fn a_bound_volume_is_kept_from_the_start_when_the_tenant_keeps_its_data() {
    let alice = fixture("alice.yaml");
    let (ctx, server, tenant) = cluster(&alice);
    let claim = core(NS, "persistentvolumeclaims/gateway-data");
    server.put(
        &claim,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "gateway-data", "namespace": NS},
               "spec": {"volumeName": "pv-alice", "resources": {"requests": {"storage": "10Gi"}}}}),
    );
    let volume = "/api/v1/persistentvolumes/pv-alice";
    server.put(
        volume,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-alice"},
               "spec": {"persistentVolumeReclaimPolicy": "Delete"}}),
    );
    reconcile(Arc::new(tenant), ctx).await.unwrap();
    let lines = lines(&server.take());
    let applied = lines
        .iter()
        .position(|l| *l == format!("PATCH {claim}"))
        .unwrap();
    assert_eq!(lines[applied + 1], format!("PATCH {volume}"));
    let kept = server.get(volume).unwrap();
    assert_eq!(kept["spec"]["persistentVolumeReclaimPolicy"], "Retain");
    assert_eq!(
        kept["metadata"]["labels"]["cloud.moltbot.com/tenant"],
        "alice"
    );
}
