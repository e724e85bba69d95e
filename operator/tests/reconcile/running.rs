//! The whole operator (`run`) against the fake API server, which lists and watches: a
//! Tenant is taken from first sight to Ready, nothing is written while nothing changes,
//! and a stop request ends it cleanly.

use std::future::Future;
use std::time::Duration;

use moltbot_crds::Tenant;
use moltbot_crds::conditions::{READY, is_condition_true};
use moltbot_operator::OperatorSettings;
use moltbot_operator::run::{LeaderElection, RunOptions, run};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::api_server::ApiServer;
use crate::support::{fixture, lines, stored_tenant, tenant_path};

/// Waits up to 10 s for `condition`.
async fn eventually<F: Future<Output = bool>>(what: &str, mut condition: impl FnMut() -> F) {
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn status_of(server: &ApiServer) -> Option<moltbot_crds::TenantStatus> {
    server.get(&tenant_path("alice"))?;
    stored_tenant(server, "alice").status
}

/// How often `line` was requested so far.
fn times(server: &ApiServer, line: &str) -> usize {
    lines(&server.seen()).iter().filter(|l| *l == line).count()
}

#[tokio::test]
async fn a_tenant_goes_from_first_sight_to_ready_and_the_operator_stops_on_request() {
    let alice = fixture("alice.yaml");
    let (client, server) = ApiServer::start();
    server.put(&tenant_path("alice"), &alice.tenant);
    for connection in &alice.connections {
        let path = format!(
            "/apis/cloud.moltbot.com/v1alpha1/namespaces/tenant-alice/connections/{}",
            connection.metadata.name.as_deref().unwrap()
        );
        server.put(&path, connection);
    }
    let admin = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let stop = CancellationToken::new();
    let options = RunOptions {
        settings: OperatorSettings::default(),
        concurrency: 4,
        health_interval: Duration::from_secs(3600),
        admin,
        leader_election: None,
        identity: "moltbot-operator-0".into(),
    };
    let running = tokio::spawn(run(client, options, stop.clone()));

    eventually("the first status", || async {
        status_of(&server).is_some()
    })
    .await;
    let tenant: Tenant = stored_tenant(&server, "alice");
    assert_eq!(
        tenant.metadata.finalizers.as_deref(),
        Some(&["cloud.moltbot.com/cleanup".to_string()][..])
    );
    let seen = lines(&server.seen());
    let first_write = seen.iter().position(|l| !l.starts_with("GET")).unwrap();
    assert_eq!(
        seen[first_write],
        format!("PATCH {}", tenant_path("alice")),
        "the finalizer comes before anything else is written"
    );
    eventually("/ready", || async {
        let ready = reqwest::get(format!("http://{admin}/ready")).await;
        ready.is_ok_and(|r| r.status() == 200)
    })
    .await;

    // The kubelet starts the pod: the StatefulSet's status changes, the operator looks.
    let path = "/apis/apps/v1/namespaces/tenant-alice/statefulsets/gateway";
    let mut stateful_set = server.get(path).expect("the gateway is applied");
    stateful_set["status"] = json!({"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1});
    server.put(path, stateful_set);
    eventually("Ready", || async {
        status_of(&server).is_some_and(|s| is_condition_true(&s.conditions, READY))
    })
    .await;

    // At rest: no more reconciles (each applies the StatefulSet) and no status writes.
    let status_write = format!("PATCH {}/status", tenant_path("alice"));
    let reconcile = format!("PATCH {path}");
    let (writes, reconciles) = (times(&server, &status_write), times(&server, &reconcile));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(times(&server, &status_write), writes);
    assert_eq!(times(&server, &reconcile), reconciles, "a reconcile loop");
    assert_eq!(writes, 2, "Provisioning, then Ready");

    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(5), running).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the operator stops cleanly: {stopped:?}"
    );
}

/// The operator with leader election, as replica `identity`, and its admin address.
fn with_lease(
    client: kube::Client,
    identity: &str,
    stop: &CancellationToken,
) -> (
    tokio::task::JoinHandle<Result<(), moltbot_operator::run::RunError>>,
    std::net::SocketAddr,
) {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = RunOptions {
        settings: OperatorSettings::default(),
        concurrency: 4,
        health_interval: Duration::from_secs(3600),
        admin,
        leader_election: Some(LeaderElection {
            namespace: "moltbot-system".into(),
            lease: "moltbot-operator".into(),
        }),
        identity: identity.into(),
    };
    (tokio::spawn(run(client, options, stop.clone())), admin)
}

const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/moltbot-system/leases/moltbot-operator";

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_it_lets_go_when_stopped() {
    let alice = fixture("alice.yaml");
    let (client, server) = ApiServer::start();
    server.put(&tenant_path("alice"), &alice.tenant);
    let stop = CancellationToken::new();
    let (running, admin) = with_lease(client, "moltbot-operator-0", &stop);

    eventually("the Lease", || async {
        server
            .get(LEASE)
            .is_some_and(|l| l["spec"]["holderIdentity"] == "moltbot-operator-0")
    })
    .await;
    eventually("/ready", || async {
        let ready = reqwest::get(format!("http://{admin}/ready")).await;
        ready.is_ok_and(|r| r.status() == 200)
    })
    .await;
    eventually("the first status", || async {
        status_of(&server).is_some()
    })
    .await;

    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    let lease = server.get(LEASE).unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "the Lease is released: {lease}"
    );
}

#[tokio::test]
async fn a_standby_replica_is_alive_but_not_ready_and_writes_nothing() {
    let alice = fixture("alice.yaml");
    let (client, server) = ApiServer::start();
    server.put(&tenant_path("alice"), &alice.tenant);
    let renewed = k8s_openapi::jiff::Timestamp::now().to_string();
    server.put(
        LEASE,
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "moltbot-operator", "namespace": "moltbot-system"},
            "spec": {"holderIdentity": "moltbot-operator-1", "leaseDurationSeconds": 3600,
                     "acquireTime": renewed, "renewTime": renewed},
        }),
    );
    let stop = CancellationToken::new();
    let (running, admin) = with_lease(client, "moltbot-operator-0", &stop);

    eventually("/live", || async {
        let live = reqwest::get(format!("http://{admin}/live")).await;
        live.is_ok_and(|r| r.status() == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ready = reqwest::get(format!("http://{admin}/ready")).await.unwrap();
    assert_eq!(ready.status(), 503);
    let tenant_writes = lines(&server.seen())
        .into_iter()
        .filter(|l| l.contains("/tenants/") && !l.starts_with("GET"))
        .count();
    assert_eq!(tenant_writes, 0, "a standby touches no Tenant");

    stop.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(10), running).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    assert_eq!(
        server.get(LEASE).unwrap()["spec"]["holderIdentity"],
        "moltbot-operator-1"
    );
}
