//! The gateway process: open the store, serve the API, reload on SIGHUP, drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Agent};
use crate::api::{self, AppState};
use crate::bus::Bus;
use crate::channels::{ConnectorError, Connectors};
use crate::config::{self, Config};
use crate::metrics::{Metrics, ResultLabels};
use crate::outbox;
use crate::store::RunPolicy;
use crate::store::{self, AuditEntry, Store, StoreError};
use crate::telemetry::LogControl;

/// Frames kept per stream subscriber before it is told to resync.
const BUS_CAPACITY: usize = 4096;

#[derive(Debug, Error)]
pub enum GatewayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error(
        "the disk failed to sync the store; stopped so that a restart recovers from what is on disk"
    )]
    DiskFailed,
}

/// Runs one tenant's gateway until SIGTERM or SIGINT, then drains and returns.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    log: LogControl,
) -> Result<(), GatewayError> {
    let started = Instant::now();
    let metrics = Arc::new(Metrics::new());
    let bus = Bus::new(BUS_CAPACITY);
    let (policy_tx, policy_rx) = watch::channel(agent::run_policy(&config.agent));
    let (store, writer) = Store::open(
        &config.data_dir,
        &config.store,
        bus.clone(),
        metrics.clone(),
        policy_rx,
    )
    .await?;
    let connectors = Connectors::from_config(&config, &store, &metrics)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(GatewayError::Serve)?;

    let shutdown = CancellationToken::new();
    let data_dir = config.data_dir.clone();
    let tenant = config.tenant.id.clone();
    let grace = config.limits.shutdown_grace;
    let streams = Arc::new(Semaphore::new(config.limits.max_streams));
    let (config_tx, config_rx) = watch::channel(Arc::new(config));
    let state = AppState {
        store: store.clone(),
        bus: bus.clone(),
        connectors: connectors.clone(),
        metrics: metrics.clone(),
        config: config_rx.clone(),
        shutdown: shutdown.clone(),
        streams,
    };

    let mut term = signal(SignalKind::terminate()).map_err(GatewayError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(GatewayError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(GatewayError::Signals)?;
    let signals = {
        let shutdown = shutdown.clone();
        let store = store.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    // Nothing more can be stored: stop, and let the platform start the
                    // gateway again from what is on disk, as a database does after a failed fsync.
                    () = store.sync_failed() => {
                        tracing::error!("the store's disk failed a sync; stopping the gateway");
                        break;
                    }
                    _ = hup.recv() => reload(&config_path, &config_tx, &policy_tx, &log, &metrics, &store).await,
                }
            }
            tracing::info!("shutdown requested: no new connections; finishing in-flight requests");
            shutdown.cancel();
        })
    };
    let mut channels = connectors.start(&shutdown);
    let delivery = tokio::spawn(outbox::run(
        store.clone(),
        connectors.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let pi = tokio::spawn(
        Agent::new(store.clone(), bus, connectors, metrics.clone(), config_rx)
            .run(shutdown.clone()),
    );
    let housekeeping = tokio::spawn(prune_receipts(store.clone(), shutdown.clone()));
    let reads = store.reads().clone();

    tracing::info!(
        tenant = %tenant,
        listen = %local_addr,
        startup_ms = started.elapsed().as_millis() as u64,
        "gateway ready"
    );
    let app = api::router(state);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let grace_expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = server => served.map_err(GatewayError::Serve)?,
        _ = grace_expired => tracing::warn!(grace_secs = grace.as_secs(), "requests still open after the grace period; closing them"),
    }
    signals.abort();
    // Connectors stop reading, runs in flight are abandoned (they run again at the next
    // start), and deliveries in flight get a moment to finish.
    while channels.join_next().await.is_some() {}
    let _ = pi.await;
    let _ = delivery.await;
    let _ = housekeeping.await;
    // Commit what was accepted; a request still open past the grace gets `shutting_down`.
    writer.finish().await;
    if store.sync_failed().now_or_never().is_some() {
        return Err(GatewayError::DiskFailed);
    }
    drop(store);
    store::close(reads, &data_dir).await?;
    tracing::info!("gateway stopped cleanly");
    Ok(())
}

/// Re-reads the config file. Keys that need a restart keep their old value (with a
/// warning); an invalid file changes nothing.
async fn reload(
    path: &std::path::Path,
    config_tx: &watch::Sender<Arc<Config>>,
    policy_tx: &watch::Sender<RunPolicy>,
    log: &LogControl,
    metrics: &Metrics,
    store: &Store,
) {
    let outcome = match config::load(path) {
        Ok(new) => {
            let current = config_tx.borrow().clone();
            let restart_only = config::restart_only_changes(&current, &new);
            if !restart_only.is_empty() {
                tracing::warn!(keys = ?restart_only, "these keys only change at restart; keeping their current values");
            }
            let applied = config::reloadable_part_of(&current, new);
            if let Err(e) = log.set_level(&applied.log.level) {
                tracing::warn!(error = %e, "cannot apply log.level");
            }
            policy_tx.send_replace(agent::run_policy(&applied.agent));
            config_tx.send_replace(Arc::new(applied));
            tracing::info!("configuration reloaded");
            "ok"
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload refused; keeping the running configuration");
            "error"
        }
    };
    metrics
        .config_reloads
        .get_or_create(&ResultLabels { result: outcome })
        .inc();
    let entry = AuditEntry {
        actor: "operator".into(),
        action: "config.reload".into(),
        target: Some(path.display().to_string()),
        detail: Some(serde_json::json!({ "result": outcome })),
    };
    if let Err(e) = store.audit(entry).await {
        tracing::warn!(error = %e, "cannot record the reload in the audit log");
    }
}

/// Forgets provider deliveries older than two days, hourly: providers redeliver for a day
/// at most, so older receipts only take space.
async fn prune_receipts(store: Store, shutdown: CancellationToken) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
    loop {
        let before = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(48);
        if let Err(e) = store.prune_receipts(before).await {
            tracing::warn!(error = %e, "cannot prune old delivery receipts");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}
