//! Figures of the operator against the fake API server of its tests (in this process; no
//! cluster):
//!
//! ```text
//! cargo bench -p moltbot-operator --bench operator
//! ```
//!
//! - **memory**: `BENCH_CACHED` (10,000) Tenants with three Connections each, as the API
//!   server sends them (status, managedFields, kubectl's last-applied annotation), in the
//!   operator's caches as its reflectors keep them: resident memory before and after
//!   (goal ≤ 150 MiB in all).
//! - **reconcile cost**: `BENCH_TENANTS` (200) Tenants like Alice (three Connections, two
//!   Secrets) under their own names, each reconciled once from nothing and once more with
//!   nothing changed: the operator's CPU time per reconcile (its thread only; the fake
//!   API server runs on another) and the requests per reconcile.
//! - **hot loops**: the whole operator (`run`) with `BENCH_REST_TENANTS` (50) Tenants, on a
//!   paused clock so that two simulated hours pass in seconds: after the first reconciles
//!   settle, StatefulSet applies (one per reconcile that got that far) and status writes
//!   per Tenant per hour (goal ≤ 2 reconciles per Tenant per hour). Health polls are out
//!   of the window (no gateway answers here).

#[path = "../tests/reconcile/api_server.rs"]
#[allow(dead_code)]
mod api_server;

use std::sync::Arc;
use std::time::Duration;

use api_server::ApiServer;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use moltbot_crds::{Connection, FINALIZER, Tenant};
use moltbot_operator::OperatorSettings;
use moltbot_operator::metrics::Metrics;
use moltbot_operator::reconcile::{Context, reconcile};
use moltbot_operator::run::{RunOptions, run, slim};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    memory(setting("BENCH_CACHED", 10_000));
    reconcile_cost(setting("BENCH_TENANTS", 200));
    hot_loops(setting("BENCH_REST_TENANTS", 50));
}

/// A Tenant named `name` as the API server stores it once the operator reconciled it.
fn tenant(name: &str, uid: usize) -> Value {
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": "",
               "observedGeneration": 3, "lastTransitionTime": "2026-12-03T06:00:00Z"})
    };
    let spec = json!({
        "owner": format!("usr_{name}"),
        "plan": "pro",
        "displayName": name,
        "agent": {"model": {"baseUrl": "https://models.example.com/v1", "model": "pi-large"}},
    });
    let last_applied = json!({
        "apiVersion": "cloud.moltbot.com/v1alpha1", "kind": "Tenant",
        "metadata": {"name": name}, "spec": spec,
    });
    json!({
        "apiVersion": "cloud.moltbot.com/v1alpha1",
        "kind": "Tenant",
        "metadata": {
            "name": name,
            "uid": format!("6f1c1d52-8d1e-4c0e-9d0e-{uid:012}"),
            "resourceVersion": "1001",
            "generation": 3,
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "finalizers": [FINALIZER],
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": last_applied.to_string(),
            },
            "managedFields": [
                {"manager": "control-plane", "operation": "Apply", "apiVersion": "cloud.moltbot.com/v1alpha1",
                 "time": "2026-12-01T00:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": {"f:owner": {}, "f:plan": {}, "f:displayName": {}, "f:agent": {"f:model": {"f:baseUrl": {}, "f:model": {}}}}}},
                {"manager": "moltbot-operator", "operation": "Apply", "apiVersion": "cloud.moltbot.com/v1alpha1",
                 "time": "2026-12-01T00:00:00Z", "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:phase": {}, "f:namespace": {}, "f:endpoint": {}, "f:connections": {}, "f:observedGeneration": {}}}},
            ],
        },
        "spec": spec,
        "status": {
            "observedGeneration": 3,
            "conditions": [
                condition("ReconcilePaused", "False", "Reconciling"),
                condition("Degraded", "False", "AsExpected"),
                condition("Suspended", "False", "Active"),
                condition("Progressing", "False", "RolloutComplete"),
                condition("Ready", "True", "GatewayReady"),
            ],
            "phase": "Ready",
            "namespace": format!("tenant-{name}"),
            "endpoint": format!("http://gateway.tenant-{name}.svc:8080"),
            "connections": {"total": 3, "connected": 3, "degraded": 0, "actionRequired": 0, "summary": "3/3"},
        },
    })
}

/// One of a tenant's Connections as the API server stores it.
fn connection(tenant: &str, name: &str, spec: Value) -> Value {
    let ready = |type_: &str| {
        json!({"type": type_, "status": "True", "reason": "Connected", "message": "",
               "observedGeneration": 1, "lastTransitionTime": "2026-12-03T06:00:00Z"})
    };
    json!({
        "apiVersion": "cloud.moltbot.com/v1alpha1",
        "kind": "Connection",
        "metadata": {
            "name": name,
            "namespace": format!("tenant-{tenant}"),
            "uid": "0b1c1d52-8d1e-4c0e-9d0e-2a43c1a0a001",
            "resourceVersion": "2002",
            "generation": 1,
            "creationTimestamp": "2026-12-01T00:00:00Z",
            "managedFields": [{"manager": "control-plane", "operation": "Apply",
                "apiVersion": "cloud.moltbot.com/v1alpha1", "time": "2026-12-01T00:00:00Z",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:type": {}, "f:credentials": {}}}}],
        },
        "spec": spec,
        "status": {
            "observedGeneration": 1,
            "state": "connected",
            "lastEventTime": "2026-12-03T06:00:00Z",
            "conditions": [ready("Ready"), ready("Connected")],
        },
    })
}

fn connections(tenant: &str) -> [Value; 3] {
    [
        connection(tenant, "webchat", json!({"type": "webchat"})),
        connection(
            tenant,
            "telegram",
            json!({"type": "telegram", "credentials": {"secretName": "telegram-bot"},
                   "telegram": {"allowFrom": ["123456789"]}}),
        ),
        connection(
            tenant,
            "discord",
            json!({"type": "discord", "credentials": {"secretName": "discord-bot"}}),
        ),
    ]
}

/// `value` without its status, as before the operator wrote one.
fn without_status(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        object.remove("status");
    }
    value
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn memory(count: usize) {
    let before = rss_mib();
    let (tenants, mut tenant_writer) = reflector::store::<Tenant>();
    let (cached_connections, mut connection_writer) = reflector::store::<Connection>();
    tenant_writer.apply_watcher_event(&Event::Init);
    connection_writer.apply_watcher_event(&Event::Init);
    for i in 0..count {
        let name = format!("tenant-{i:05}");
        // Through text, as a watch delivers them.
        let text = tenant(&name, i).to_string();
        let mut object: Tenant = serde_json::from_str(&text).expect("a Tenant");
        slim(&mut object);
        tenant_writer.apply_watcher_event(&Event::InitApply(object));
        for value in connections(&name) {
            let mut object: Connection =
                serde_json::from_str(&value.to_string()).expect("a Connection");
            slim(&mut object);
            connection_writer.apply_watcher_event(&Event::InitApply(object));
        }
    }
    tenant_writer.apply_watcher_event(&Event::InitDone);
    connection_writer.apply_watcher_event(&Event::InitDone);
    let after = rss_mib();
    println!(
        "memory: {} Tenants and {} Connections cached: RSS {before:.1} MiB before, {after:.1} MiB after (+{:.1} MiB){}",
        tenants.state().len(),
        cached_connections.state().len(),
        after - before,
        if after <= 150.0 {
            ""
        } else {
            "  GOAL MISSED (≤ 150 MiB)"
        },
    );
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

fn secret(namespace: &str, name: &str) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some(namespace.into());
    secret.string_data = Some([("token".to_string(), "FAKE".to_string())].into());
    secret
}

/// A fake API server on `runtime` holding `count` Tenants like Alice, not reconciled
/// yet, with their Connections and Secrets.
fn cluster(
    count: usize,
    runtime: &tokio::runtime::Runtime,
) -> (kube::Client, ApiServer, Vec<Tenant>) {
    let (client, server) = {
        let _inside = runtime.enter();
        ApiServer::start()
    };
    let mut tenants = Vec::new();
    for i in 0..count {
        let name = format!("t{i:05}");
        let tenant: Tenant = serde_json::from_value(without_status(tenant(&name, i))).unwrap();
        server.put(
            &format!("/apis/cloud.moltbot.com/v1alpha1/tenants/{name}"),
            &tenant,
        );
        let namespace = format!("tenant-{name}");
        for connection in connections(&name) {
            let path = format!(
                "/apis/cloud.moltbot.com/v1alpha1/namespaces/{namespace}/connections/{}",
                connection["metadata"]["name"].as_str().unwrap()
            );
            server.put(&path, without_status(connection));
        }
        for secret_name in ["telegram-bot", "discord-bot"] {
            server.put(
                &format!("/api/v1/namespaces/{namespace}/secrets/{secret_name}"),
                secret(&namespace, secret_name),
            );
        }
        tenants.push(tenant);
    }
    (client, server, tenants)
}

fn reconcile_cost(count: usize) {
    // The fake API server on a runtime of its own, so that its CPU is not the operator's.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let (client, server, tenants) = cluster(count, &server_runtime);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (store, mut writer) = reflector::store::<Connection>();
        writer.apply_watcher_event(&Event::Init);
        for tenant in &tenants {
            for value in connections(tenant.metadata.name.as_deref().unwrap()) {
                let connection = serde_json::from_value(without_status(value)).unwrap();
                writer.apply_watcher_event(&Event::InitApply(connection));
            }
        }
        writer.apply_watcher_event(&Event::InitDone);
        let ctx = Arc::new(Context::new(
            client,
            OperatorSettings::default(),
            store,
            Arc::new(Metrics::default()),
            None,
        ));
        for (round, label) in ["from nothing", "nothing changed"].into_iter().enumerate() {
            server.take();
            let started = thread_cpu();
            let wall = std::time::Instant::now();
            for tenant in &tenants {
                let name = tenant.metadata.name.as_deref().unwrap();
                let current = if round == 0 {
                    tenant.clone()
                } else {
                    let path = format!("/apis/cloud.moltbot.com/v1alpha1/tenants/{name}");
                    serde_json::from_value(server.get(&path).unwrap()).unwrap()
                };
                reconcile(Arc::new(current), ctx.clone())
                    .await
                    .expect("a reconcile");
            }
            let cpu = thread_cpu() - started;
            let requests = server.take();
            let writes = requests.iter().filter(|r| r.method != "GET").count();
            let each = |n: f64| n / count as f64;
            println!(
                "reconcile ({label}): {:.2} ms operator CPU, {:.1} requests ({:.1} writes), {:.2} ms wall per Tenant",
                each(cpu.as_secs_f64() * 1000.0),
                each(requests.len() as f64),
                each(writes as f64),
                each(wall.elapsed().as_secs_f64() * 1000.0),
            );
        }
    });
}

fn hot_loops(count: usize) {
    // One runtime for everything: a paused clock moves on only when all of it waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let (client, server, _) = cluster(count, &runtime);
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let options = RunOptions {
            settings: OperatorSettings::default(),
            concurrency: 16,
            // No gateway answers here, and each refused poll costs real time on the
            // blocking pool: health polls (which write only on change, see the tests)
            // are left out of the window.
            health_interval: Duration::from_secs(4 * 3600),
            admin: "127.0.0.1:0".parse().unwrap(),
            leader_election: None,
            identity: "bench".into(),
        };
        let running = tokio::spawn(run(client, options, stop.clone()));
        // Settle: finalizers, first applies and status.
        tokio::time::sleep(Duration::from_secs(10 * 60)).await;
        server.take();
        let hours = 2;
        tokio::time::sleep(Duration::from_secs(hours * 3600)).await;
        let seen = server.take();
        let count_of = |wanted: &dyn Fn(&str) -> bool| {
            seen.iter()
                .filter(|r| r.method == "PATCH" && wanted(&r.path))
                .count()
        };
        let per_hour = |n: usize| n as f64 / count as f64 / hours as f64;
        let reconciles = per_hour(count_of(&|p| p.ends_with("/statefulsets/gateway")));
        let tenant_status = count_of(&|p| p.contains("/tenants/") && p.ends_with("/status"));
        let connection_status = count_of(&|p| p.contains("/connections/") && p.ends_with("/status"));
        println!(
            "at rest ({hours} simulated hours, {count} Tenants): {reconciles:.2} reconciles, {:.2} Tenant and {:.2} Connection status writes per Tenant per hour{}",
            per_hour(tenant_status),
            per_hour(connection_status),
            if reconciles <= 2.0 {
                ""
            } else {
                "  GOAL MISSED (≤ 2)"
            },
        );
        stop.cancel();
        let _ = running.await;
    });
}
