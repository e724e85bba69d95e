//! The admin server: `/live`, `/ready` and `/metrics`, for the kubelet and Prometheus.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What `/ready` answers from: ready once the caches are filled and, with leader
/// election, while this replica leads (a standby is alive but not ready).
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    synced: Arc<AtomicBool>,
    leading: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && self.leading.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

pub fn router(metrics: Arc<Metrics>, readiness: Readiness) -> Router {
    Router::new()
        .route("/live", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { metrics, readiness })
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ready_only_when_synced_and_leading() {
        let readiness = Readiness::default();
        let router = router(Arc::new(Metrics::default()), readiness.clone());
        assert_eq!(get(&router, "/live").await.0, StatusCode::OK);
        assert_eq!(
            get(&router, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_synced();
        assert_eq!(
            get(&router, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_leading(true);
        assert_eq!(get(&router, "/ready").await.0, StatusCode::OK);
        readiness.set_leading(false);
        assert_eq!(
            get(&router, "/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn metrics_count_reconciles_and_failures_by_reason() {
        let metrics = Arc::new(Metrics::default());
        metrics.reconciled(std::time::Duration::from_millis(3), None);
        metrics.polled("ok");
        let router = router(metrics, Readiness::default());
        let (status, text) = get(&router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            text.contains("moltbot_operator_tenant_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("moltbot_operator_tenant_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("moltbot_operator_gateway_health_polls_total{result=\"ok\"} 1"),
            "{text}"
        );
    }
}
