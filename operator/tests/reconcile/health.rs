//! Connection status from a gateway's `/status`: a loopback gateway stands in for the
//! tenant's pod, the fake API server for the cluster.

use std::net::SocketAddr;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use moltbot_crds::{Tenant, TenantStatus};
use moltbot_operator::health::poll_tenant;
use moltbot_protocol::event::{Channel, ConnectionState};
use moltbot_protocol::inbox::{AgentMode, AgentStatusView, ConnectionStatusView, GatewayStatus};

use crate::support::{
    assert_condition, cluster, core, events, fixture, lines, with_stored_connections,
};

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/tenant-alice/events";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

fn gateway_status() -> GatewayStatus {
    let view = |name: &str, channel, state, reason: Option<&str>| ConnectionStatusView {
        name: name.into(),
        channel,
        state,
        reason: reason.map(Into::into),
        since: Some("2026-12-03T06:00:00Z".parse().unwrap()),
    };
    GatewayStatus {
        tenant: "alice".into(),
        connections: vec![
            view(
                "webchat",
                Channel::Webchat,
                ConnectionState::Connected,
                None,
            ),
            view(
                "telegram",
                Channel::Telegram,
                ConnectionState::ActionRequired,
                Some("the bot token was revoked"),
            ),
        ],
        agent: AgentStatusView {
            enabled: true,
            model: Some("pi-large".into()),
            default_mode: AgentMode::Draft,
            runs_queued: 0,
            tokens_today: 0,
            tokens_per_day: 500_000,
        },
    }
}

/// A gateway on loopback answering `/status` to the right token only.
async fn gateway() -> SocketAddr {
    let app = axum::Router::new().route(
        "/status",
        get(|headers: HeaderMap| async move {
            let bearer = format!("Bearer {TOKEN}");
            if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&bearer) {
                return Err(StatusCode::UNAUTHORIZED);
            }
            Ok(Json(gateway_status()))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// The Tenant's gateway as its status names it.
fn serve_at(tenant: &mut Tenant, endpoint: impl Into<String>) {
    tenant.status = Some(TenantStatus {
        endpoint: Some(endpoint.into()),
        ..TenantStatus::default()
    });
}

fn credentials() -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some("gateway-credentials".into());
    secret.metadata.namespace = Some("tenant-alice".into());
    secret.data = Some(
        [(
            "inbox-token".to_string(),
            ByteString(TOKEN.as_bytes().to_vec()),
        )]
        .into(),
    );
    secret
}

#[tokio::test]
async fn connections_get_the_gateways_word_and_unchanged_health_writes_nothing() {
    let address = gateway().await;
    let alice = fixture("alice.yaml");
    let (ctx, server, mut tenant) = cluster(&alice);
    serve_at(&mut tenant, format!("http://{address}"));
    server.put(
        &core("tenant-alice", "secrets/gateway-credentials"),
        credentials(),
    );
    let http = reqwest::Client::new();

    poll_tenant(&ctx, &http, &tenant).await.unwrap();
    let seen = server.take();
    let connections = "/apis/cloud.moltbot.com/v1alpha1/namespaces/tenant-alice/connections";
    assert_eq!(
        lines(&seen),
        [
            format!(
                "GET {}",
                core("tenant-alice", "secrets/gateway-credentials")
            ),
            format!("PATCH {connections}/discord/status"),
            format!("PATCH {connections}/telegram/status"),
            format!("POST {EVENTS}"),
            format!("PATCH {connections}/webchat/status"),
            format!("POST {EVENTS}"),
        ]
    );
    assert_eq!(
        events(&seen),
        [
            ("Warning".into(), "ActionRequired".into()),
            ("Normal".into(), "Connected".into())
        ]
    );
    assert_eq!(seen[3].body["regarding"]["name"], "telegram");
    assert_eq!(seen[3].body["note"], "the bot token was revoked");
    for write in &seen[1..] {
        assert!(
            write.method == "POST" || write.is_operator_apply(),
            "{}",
            write.line()
        );
        assert!(
            !write.body.to_string().contains(TOKEN),
            "a status shows the token"
        );
    }
    let discord = &seen[1].body["status"];
    assert_condition(discord, "Ready", "False", "NotServed");
    let telegram = &seen[2].body["status"];
    assert_eq!(telegram["state"], "action_required");
    assert_eq!(telegram["reason"], "the bot token was revoked");
    assert_eq!(telegram["lastEventTime"], "2026-12-03T06:00:00Z");
    assert_condition(telegram, "ActionRequired", "True", "ActionRequired");
    assert_condition(telegram, "Connected", "False", "ActionRequired");
    let webchat = &seen[4].body["status"];
    assert_condition(webchat, "Connected", "True", "Connected");
    assert_condition(webchat, "Ready", "True", "Connected");

    // The cache now holds what was written: the next poll finds nothing to change.
    let ctx = with_stored_connections(&server, &alice, ctx);
    poll_tenant(&ctx, &http, &tenant).await.unwrap();
    assert_eq!(
        lines(&server.take()),
        [format!(
            "GET {}",
            core("tenant-alice", "secrets/gateway-credentials")
        )]
    );
}

#[tokio::test]
async fn an_unreachable_gateway_makes_health_unknown() {
    let alice = fixture("alice.yaml");
    let (ctx, server, mut tenant) = cluster(&alice);
    // Nothing listens on port 9 of loopback.
    serve_at(&mut tenant, "http://127.0.0.1:9");
    server.put(
        &core("tenant-alice", "secrets/gateway-credentials"),
        credentials(),
    );
    poll_tenant(&ctx, &reqwest::Client::new(), &tenant)
        .await
        .unwrap();
    let seen = server.take();
    assert_eq!(seen.len(), 4, "{:?}", lines(&seen));
    for write in &seen[1..] {
        let status = &write.body["status"];
        assert_condition(status, "Ready", "Unknown", "GatewayUnreachable");
        assert_eq!(status["state"], "unknown");
    }
}

#[tokio::test]
async fn a_suspended_tenant_is_not_polled() {
    let carol = fixture("carol.yaml");
    let (ctx, server, mut tenant) = cluster(&carol);
    serve_at(&mut tenant, "http://127.0.0.1:9");
    poll_tenant(&ctx, &reqwest::Client::new(), &tenant)
        .await
        .unwrap();
    assert!(server.take().is_empty());
}
