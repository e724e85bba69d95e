//! Webhook delivery: a worker per set webhook POSTs each pending update as JSON, with up to
//! `max_connections` requests in flight and a chat's updates one at a time, in order. A 2xx
//! answer confirms the update; anything else keeps it and retries after a delay that starts at
//! [`RETRY_START`] and doubles up to [`RETRY_MAX`] (far shorter than Telegram's, so tests stay
//! fast).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::state::Shared;

/// The header carrying setWebhook's `secret_token`.
const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long one delivery may take before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A bot's webhook and its delivery record.
pub(super) struct Webhook {
    pub(super) url: String,
    pub(super) secret_token: Option<String>,
    pub(super) max_connections: usize,
    pub(super) last_error: Option<DeliveryError>,
    /// Delivery attempts so far, failed ones included.
    pub(super) deliveries: u64,
    /// Stops the worker when the webhook is replaced or deleted.
    _worker: DropGuard,
}

/// The latest failed delivery, as getWebhookInfo reports it.
pub(super) struct DeliveryError {
    /// Unix seconds.
    pub(super) date: i64,
    pub(super) message: String,
}

/// The client deliveries go through.
pub(super) fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().timeout(DELIVERY_TIMEOUT).build()
}

/// How long an update waits after its `failures`-th failed delivery (`failures` ≥ 1).
pub(super) fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_START.saturating_mul(1 << doublings).min(RETRY_MAX)
}

impl Webhook {
    /// Sets up a webhook for the bot `token` and starts delivering its pending updates.
    pub(super) fn start(
        shared: &Arc<Shared>,
        token: &str,
        url: String,
        secret_token: Option<String>,
        max_connections: usize,
    ) -> Webhook {
        let stop = shared.shutdown.child_token();
        tokio::spawn(deliver_updates(
            Arc::clone(shared),
            token.to_owned(),
            stop.clone(),
        ));
        Webhook {
            url,
            secret_token,
            max_connections,
            last_error: None,
            deliveries: 0,
            _worker: stop.drop_guard(),
        }
    }
}

/// Where and how to deliver, copied out of the state for one round.
struct Target {
    url: String,
    secret_token: Option<String>,
}

/// The worker: sends what may go, then waits for an answer, news, a retry time or the stop.
async fn deliver_updates(shared: Arc<Shared>, token: String, stop: CancellationToken) {
    let mut changes = shared.subscribe();
    let mut in_flight = JoinSet::new();
    let mut flying = HashSet::new();
    loop {
        let now = Instant::now();
        let round = shared.read_bot(&token, |bot| {
            // Checked under the lock, where the webhook is replaced: a stopped worker must not
            // deliver on behalf of its successor.
            let webhook = bot.webhook.as_ref().filter(|_| !stop.is_cancelled())?;
            let room = webhook.max_connections.saturating_sub(flying.len());
            let target = Target {
                url: webhook.url.clone(),
                secret_token: webhook.secret_token.clone(),
            };
            let updates = bot.updates.deliverable(now, &flying, room);
            Some((target, updates, bot.updates.next_retry(now)))
        });
        let Some((target, updates, next_retry)) = round.flatten() else {
            return;
        };
        for (seq, update) in updates {
            flying.insert(seq);
            let request = target.request(&shared.http, &update);
            in_flight.spawn(async move { (seq, deliver(request).await) });
        }
        tokio::select! {
            () = stop.cancelled() => return,
            Some(Ok((seq, outcome))) = in_flight.join_next() => {
                flying.remove(&seq);
                record_delivery(&shared, &token, &stop, seq, outcome);
            }
            Ok(()) = changes.changed() => {}
            () = tokio::time::sleep_until(next_retry.unwrap_or(now)), if next_retry.is_some() => {}
        }
    }
}

fn record_delivery(
    shared: &Shared,
    token: &str,
    stop: &CancellationToken,
    seq: u64,
    outcome: Result<(), String>,
) {
    shared.mutate_bot(token, |bot| {
        // A replaced webhook's late answer neither confirms nor counts.
        let Some(webhook) = bot.webhook.as_mut().filter(|_| !stop.is_cancelled()) else {
            return;
        };
        webhook.deliveries += 1;
        match outcome {
            Ok(()) => bot.updates.delivered(seq),
            Err(message) => {
                tracing::debug!(%message, "fake Telegram webhook delivery failed");
                webhook.last_error = Some(DeliveryError {
                    date: jiff::Timestamp::now().as_second(),
                    message,
                });
                bot.updates.delivery_failed(seq, Instant::now());
            }
        }
    });
}

impl Target {
    fn request(&self, http: &reqwest::Client, update: &Value) -> reqwest::RequestBuilder {
        let request = http.post(&self.url).json(update);
        match &self.secret_token {
            Some(secret) => request.header(SECRET_HEADER, secret),
            None => request,
        }
    }
}

/// Sends one delivery; the error is worded as getWebhookInfo's `last_error_message`.
async fn deliver(request: reqwest::RequestBuilder) -> Result<(), String> {
    match request.send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!(
            "Wrong response from the webhook: {}",
            response.status()
        )),
        Err(error) if error.is_timeout() => Err("Read timeout expired".to_owned()),
        Err(error) if error.is_connect() => Err("Connection refused".to_owned()),
        Err(error) => Err(format!("Connection error: {error}")),
    }
}
