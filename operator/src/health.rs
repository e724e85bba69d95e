//! Connection status, from the gateways themselves: gateway pods have no API access, so
//! the operator polls each serving gateway's `GET /status` (with the tenant's inbox
//! token) at an interval and writes a Connection's status only when it changed, with an
//! event when it now needs a person, is degraded or connected again. A changed
//! Connection status then triggers its Tenant's reconcile, which recounts.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use moltbot_crds::conditions::{
    ACTION_REQUIRED, CONNECTED, ConditionStatus, DEGRADED, READY, Time, new_condition,
    set_condition,
};
use moltbot_crds::{
    CREDENTIALS_SECRET, Connection, ConnectionState, ConnectionStatus, INBOX_TOKEN_KEY, Tenant,
    tenant_namespace,
};
use moltbot_protocol::event::ConnectionState as GatewayState;
use moltbot_protocol::inbox::{ConnectionStatusView, GatewayStatus};
use tokio_util::sync::CancellationToken;

use crate::reconcile::{self, Context, api, apply_status, events, is_paused};

/// How long one gateway may take to answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Why one gateway's health could not be read or reported.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(transparent)]
    Api(#[from] reconcile::Error),
    #[error("Secret {namespace}/{CREDENTIALS_SECRET} holds no inbox token")]
    NoToken { namespace: String },
}

/// What a poll found out about a gateway.
#[derive(Debug)]
enum Report {
    Status(GatewayStatus),
    /// No answer, or not one we understand: every Connection's health is unknown.
    Unreachable(String),
}

/// Polls every serving gateway each `interval` until `stop`, `concurrency` at a time.
pub async fn poll(
    ctx: Arc<Context>,
    tenants: Store<Tenant>,
    interval: Duration,
    concurrency: usize,
    stop: CancellationToken,
) {
    let http = match reqwest::Client::builder().timeout(POLL_TIMEOUT).build() {
        Ok(http) => http,
        Err(error) => {
            tracing::error!(%error, "cannot make an HTTP client; Connection status stays as it is");
            return;
        }
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        futures_util::stream::iter(tenants.state())
            .for_each_concurrent(concurrency, |tenant| {
                let (ctx, http) = (&ctx, &http);
                async move {
                    if let Err(error) = poll_tenant(ctx, http, &tenant).await {
                        tracing::warn!(tenant = %tenant.name_any(), %error, "cannot report Connection health");
                    }
                }
            })
            .await;
    }
}

/// Polls one tenant's gateway, if it serves, and reports on its Connections.
pub async fn poll_tenant(
    ctx: &Context,
    http: &reqwest::Client,
    tenant: &Tenant,
) -> Result<(), HealthError> {
    let endpoint = tenant.status.as_ref().and_then(|s| s.endpoint.clone());
    let serving = !tenant.spec.suspended
        && !is_paused(tenant)
        && tenant.metadata.deletion_timestamp.is_none();
    let Some(endpoint) = endpoint.filter(|_| serving) else {
        return Ok(());
    };
    let namespace = tenant_namespace(&tenant.name_any());
    let token = inbox_token(ctx, &namespace).await?;
    let report = match fetch(http, &endpoint, &token).await {
        Ok(status) => {
            ctx.metrics.polled("ok");
            Report::Status(status)
        }
        Err(error) => {
            ctx.metrics.polled("unreachable");
            Report::Unreachable(error)
        }
    };
    let now = Time(Timestamp::now());
    for connection in ctx.connections_in(&namespace) {
        let next = next_status(&connection, &report, now.clone());
        if connection.status.as_ref() == Some(&next) {
            continue;
        }
        let connections: Api<Connection> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_status(&connections, &connection, &next).await?;
        let old = connection
            .status
            .as_ref()
            .map_or(&[][..], |s| &s.conditions[..]);
        for event in events::transitions(old, &next.conditions, events::CONNECTION_EVENTS) {
            events::publish(ctx, &connection.object_ref(&()), &event).await;
        }
    }
    Ok(())
}

async fn inbox_token(ctx: &Context, namespace: &str) -> Result<String, HealthError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = api(
        "read",
        || format!("Secret {namespace}/{CREDENTIALS_SECRET}"),
        secrets.get_opt(CREDENTIALS_SECRET),
    )
    .await?;
    secret
        .and_then(|s| s.data?.remove(INBOX_TOKEN_KEY))
        .and_then(|token| String::from_utf8(token.0).ok())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| HealthError::NoToken {
            namespace: namespace.into(),
        })
}

/// The gateway's `/status`; the error says what went wrong without the token.
async fn fetch(
    http: &reqwest::Client,
    endpoint: &str,
    token: &str,
) -> Result<GatewayStatus, String> {
    let url = format!("{}/status", endpoint.trim_end_matches('/'));
    let response = http
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: {}", response.status()));
    }
    response
        .json()
        .await
        .map_err(|e| format!("GET {url}: {}", e.without_url()))
}

/// The status `connection` should have after `report`, from its current one.
fn next_status(connection: &Connection, report: &Report, now: Time) -> ConnectionStatus {
    let generation = connection.metadata.generation;
    let mut status = connection.status.clone().unwrap_or_default();
    let mut set = |type_: &str, value: ConditionStatus, reason: &str, message: &str| {
        set_condition(
            &mut status.conditions,
            new_condition(type_, value, reason, message, generation, now.clone()),
        );
    };
    use ConditionStatus::{False, True, Unknown};
    let view = match report {
        Report::Status(gateway) => gateway
            .connections
            .iter()
            .find(|c| Some(&c.name) == connection.metadata.name.as_ref()),
        Report::Unreachable(why) => {
            for type_ in [READY, CONNECTED] {
                set(type_, Unknown, "GatewayUnreachable", why);
            }
            status.state = Some(ConnectionState::Unknown);
            status.observed_generation = generation;
            return status;
        }
    };
    let Some(ConnectionStatusView {
        state,
        reason,
        since,
        ..
    }) = view
    else {
        let message = "the gateway does not serve this Connection (its channel has no connector yet, or the config is not rolled out)";
        set(READY, False, "NotServed", message);
        set(CONNECTED, False, "NotServed", message);
        status.state = Some(ConnectionState::Unknown);
        status.reason = None;
        status.observed_generation = generation;
        return status;
    };
    let message = reason.as_deref().unwrap_or_default();
    let (ready, connected, degraded, action) = match state {
        GatewayState::Connected => (True, True, False, False),
        GatewayState::Degraded => (True, True, True, False),
        GatewayState::ActionRequired => (False, False, False, True),
        GatewayState::Disconnected => (False, False, False, False),
    };
    let word = match state {
        GatewayState::Connected => "Connected",
        GatewayState::Degraded => "Degraded",
        GatewayState::ActionRequired => "ActionRequired",
        GatewayState::Disconnected => "Disconnected",
    };
    set(READY, ready, word, message);
    set(CONNECTED, connected, word, message);
    set(DEGRADED, degraded, word, message);
    set(ACTION_REQUIRED, action, word, message);
    status.state = Some(match state {
        GatewayState::Connected => ConnectionState::Connected,
        GatewayState::Degraded => ConnectionState::Degraded,
        GatewayState::ActionRequired => ConnectionState::ActionRequired,
        GatewayState::Disconnected => ConnectionState::Disconnected,
    });
    status.reason = reason.clone();
    // The gateway reports when the channel's state last changed: its latest event.
    if let Some(since) = since {
        status.last_event_time = Some(Time(*since));
    }
    status.observed_generation = generation;
    status
}
