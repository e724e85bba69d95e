//! The operator's Prometheus metrics (`moltbot_operator_*`), served at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::reconcile::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Result_ {
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    failures: Family<Reason, Counter>,
    duration: Histogram,
    health_polls: Family<Result_, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("moltbot_operator");
        let reconciles = Counter::default();
        registry.register(
            "tenant_reconciles",
            "Tenant reconciles run",
            reconciles.clone(),
        );
        let failures = Family::<Reason, Counter>::default();
        registry.register(
            "tenant_reconcile_failures",
            "Tenant reconciles that failed, by reason",
            failures.clone(),
        );
        // 1 ms to ~16 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "tenant_reconcile_duration_seconds",
            "How long a Tenant reconcile took",
            duration.clone(),
        );
        let health_polls = Family::<Result_, Counter>::default();
        registry.register(
            "gateway_health_polls",
            "Polls of gateways' /status, by result",
            health_polls.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            health_polls,
        }
    }
}

impl Metrics {
    /// Counts one reconcile that took `elapsed` and failed with `error`, if it did.
    pub fn reconciled(&self, elapsed: Duration, error: Option<&Error>) {
        self.reconciles.inc();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(error) = error {
            self.failures
                .get_or_create(&Reason {
                    reason: error.reason(),
                })
                .inc();
        }
    }

    /// Counts one poll of a gateway's health.
    pub fn polled(&self, result: &'static str) {
        self.health_polls.get_or_create(&Result_ { result }).inc();
    }

    /// Reconciles run so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
