//! Fixtures, a context on the fake API server, and the paths the operator writes.

use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::runtime::reflector;
use kube::runtime::watcher;
use moltbot_crds::{Connection, FINALIZER, Tenant};
use moltbot_operator::OperatorSettings;
use moltbot_operator::metrics::Metrics;
use moltbot_operator::reconcile::Context;
use serde_json::Value;

use crate::api_server::{ApiServer, Seen};
use crate::fixture::Fixture;

pub fn fixture(name: &str) -> Fixture {
    Fixture::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

/// A reconcile context on a fake API server holding `fixture`'s Tenant (with the
/// finalizer, as after the first reconcile), Connections and Secrets.
pub fn cluster(fixture: &Fixture) -> (Arc<Context>, ApiServer, Tenant) {
    let (client, server) = ApiServer::start();
    let mut tenant = fixture.tenant.clone();
    tenant.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    server.put(&tenant_path(&tenant_name(&tenant)), &tenant);
    for secret in &fixture.secrets {
        server.put(&secret_path(secret), secret);
    }
    for connection in &fixture.connections {
        server.put(&connection_path(connection), connection);
    }
    (context(client, &fixture.connections), server, tenant)
}

/// A context whose cache holds `connections`.
fn context(client: Client, connections: &[Connection]) -> Arc<Context> {
    let (store, mut writer) = reflector::store();
    for connection in connections {
        writer.apply_watcher_event(&watcher::Event::Apply(connection.clone()));
    }
    Arc::new(Context::new(
        client,
        OperatorSettings::default(),
        store,
        Arc::new(Metrics::default()),
        None,
    ))
}

/// `ctx` with its cache of Connections as the fake server holds them now.
pub fn with_stored_connections(
    server: &ApiServer,
    fixture: &Fixture,
    ctx: Arc<Context>,
) -> Arc<Context> {
    let stored: Vec<Connection> = fixture
        .connections
        .iter()
        .map(|c| {
            serde_json::from_value(
                server
                    .get(&connection_path(c))
                    .expect("a stored Connection"),
            )
            .expect("a Connection")
        })
        .collect();
    context(ctx.client.clone(), &stored)
}

fn connection_path(connection: &Connection) -> String {
    format!(
        "/apis/cloud.moltbot.com/v1alpha1/namespaces/{}/connections/{}",
        connection
            .metadata
            .namespace
            .as_deref()
            .expect("a namespaced Connection"),
        connection
            .metadata
            .name
            .as_deref()
            .expect("a named Connection")
    )
}

fn tenant_name(tenant: &Tenant) -> String {
    tenant.metadata.name.clone().expect("a named Tenant")
}

pub fn tenant_path(name: &str) -> String {
    format!("/apis/cloud.moltbot.com/v1alpha1/tenants/{name}")
}

fn secret_path(secret: &Secret) -> String {
    format!(
        "/api/v1/namespaces/{}/secrets/{}",
        secret
            .metadata
            .namespace
            .as_deref()
            .expect("a namespaced Secret"),
        secret.metadata.name.as_deref().expect("a named Secret")
    )
}

/// The Tenant as the fake server holds it now (after the operator's writes).
pub fn stored_tenant(server: &ApiServer, name: &str) -> Tenant {
    serde_json::from_value(
        server
            .get(&tenant_path(name))
            .expect("the Tenant is stored"),
    )
    .expect("a Tenant")
}

/// The path of a namespaced core object of the tenant's namespace.
pub fn core(namespace: &str, plural_name: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/{plural_name}")
}

/// The requests' `METHOD path` lines.
pub fn lines(seen: &[Seen]) -> Vec<String> {
    seen.iter().map(Seen::line).collect()
}

/// The one request with this line.
pub fn request<'a>(seen: &'a [Seen], line: &str) -> &'a Seen {
    let mut matching = seen.iter().filter(|s| s.line() == line);
    let found = matching
        .next()
        .unwrap_or_else(|| panic!("no request {line}"));
    assert!(matching.next().is_none(), "{line} was requested twice");
    found
}

/// Asserts that a status body has the condition `type_` with this status and reason.
pub fn assert_condition(status: &Value, type_: &str, expected: &str, reason: &str) {
    let condition = status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    assert_eq!(
        (condition["status"].as_str(), condition["reason"].as_str()),
        (Some(expected), Some(reason)),
        "{type_}"
    );
}

/// Asserts that `seen` is one status write of Tenant `tenant` and one event, and returns
/// the status written.
pub fn only_status_and_event<'a>(seen: &'a [Seen], tenant: &str) -> &'a Value {
    assert_eq!(
        lines(seen),
        [
            format!("PATCH {}/status", tenant_path(tenant)),
            "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
        ]
    );
    assert!(seen[0].is_operator_apply());
    &seen[0].body["status"]
}

/// The events posted, as (type, reason).
pub fn events(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter()
        .filter(|s| s.method == "POST" && s.path.ends_with("/events"))
        .map(|s| {
            (
                s.body["type"].as_str().unwrap_or_default().to_string(),
                s.body["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}
