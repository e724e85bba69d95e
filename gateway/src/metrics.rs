//! Prometheus metrics, served as text on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    pub channel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// What happened to something, per connection: a provider update, a delivery.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub connection: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub rejected: Family<CodeLabels, Counter>,
    pub ingested: Family<ChannelLabels, Counter>,
    pub deduplicated: Counter,
    pub commit_duration: Histogram,
    pub group_size: Histogram,
    pub sync_duration: Histogram,
    pub commit_failures: Counter,
    pub group_reruns: Counter,
    pub streams_open: Gauge,
    pub stream_frames_dropped: Counter,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub channel_updates: Family<OutcomeLabels, Counter>,
    pub deliveries: Family<OutcomeLabels, Counter>,
    pub agent_runs: Family<ResultLabels, Counter>,
    pub agent_tokens: Family<TokenLabels, Counter>,
    pub agent_run_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.5, 12))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_duration.clone(),
        );
        let rejected = Family::<CodeLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests refused, by error code",
            rejected.clone(),
        );
        let ingested = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "messages_ingested",
            "New inbound messages stored",
            ingested.clone(),
        );
        let deduplicated = Counter::default();
        registry.register(
            "events_deduplicated",
            "Events already stored under their dedupe key",
            deduplicated.clone(),
        );
        let commit_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "store_commit_duration_seconds",
            "Time to commit one group of writes, before it is made durable",
            commit_duration.clone(),
        );
        let group_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "store_group_size",
            "Writes committed together",
            group_size.clone(),
        );
        let sync_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register(
            "store_sync_duration_seconds",
            "Time to make committed groups durable (one fdatasync of the WAL for all of them)",
            sync_duration.clone(),
        );
        let commit_failures = Counter::default();
        registry.register(
            "store_commit_failures",
            "Groups of writes whose commit failed",
            commit_failures.clone(),
        );
        let group_reruns = Counter::default();
        registry.register(
            "store_group_reruns",
            "Groups run again with a savepoint per write because one write failed",
            group_reruns.clone(),
        );
        let streams_open = Gauge::default();
        registry.register(
            "streams_open",
            "Open WebSocket streams",
            streams_open.clone(),
        );
        let stream_frames_dropped = Counter::default();
        registry.register(
            "stream_frames_dropped",
            "Frames a slow stream client missed",
            stream_frames_dropped.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads on SIGHUP",
            config_reloads.clone(),
        );
        let channel_updates = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "channel_updates",
            "Provider updates by outcome: stored, duplicate, skipped, rejected, held back",
            channel_updates.clone(),
        );
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "outbox_deliveries",
            "Outbound delivery steps by outcome: sent, retry, ambiguous, reconciled, resent, failed",
            deliveries.clone(),
        );
        let agent_runs = Family::<ResultLabels, Counter>::default();
        registry.register("agent_runs", "Agent runs by outcome", agent_runs.clone());
        let agent_tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "agent_tokens",
            "Model tokens spent, by prompt and completion",
            agent_tokens.clone(),
        );
        let agent_run_duration = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "agent_run_duration_seconds",
            "Time from a run's start to its outcome",
            agent_run_duration.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            rejected,
            ingested,
            deduplicated,
            commit_duration,
            group_size,
            sync_duration,
            commit_failures,
            group_reruns,
            streams_open,
            stream_frames_dropped,
            config_reloads,
            channel_updates,
            deliveries,
            agent_runs,
            agent_tokens,
            agent_run_duration,
        }
    }

    pub fn channel_update(&self, connection: &str, outcome: &'static str) {
        self.channel_updates
            .get_or_create(&OutcomeLabels {
                connection: connection.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn delivery(&self, connection: &str, outcome: &'static str) {
        self.deliveries
            .get_or_create(&OutcomeLabels {
                connection: connection.to_string(),
                outcome,
            })
            .inc();
    }

    pub fn store_commit(&self, writes: usize, took: Duration) {
        self.group_size.observe(writes as f64);
        self.commit_duration.observe(took.as_secs_f64());
    }

    pub fn store_sync(&self, took: Duration) {
        self.sync_duration.observe(took.as_secs_f64());
    }

    pub fn store_group_rerun(&self) {
        self.group_reruns.inc();
    }

    pub fn store_commit_failed(&self) {
        self.commit_failures.inc();
    }

    pub fn reject(&self, code: &'static str) {
        self.rejected.get_or_create(&CodeLabels { code }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
