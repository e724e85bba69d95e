//! Logging through `tracing`: JSON when stdout is not a terminal (or when configured), text
//! otherwise; the level filter can be changed at run time (SIGHUP).

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// Changes the level filter of the installed subscriber.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

impl LogControl {
    /// Applies a new configured level, unless `RUST_LOG` fixed it at start.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.from_env {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

pub fn init(config: &LogConfig) -> LogControl {
    let from_env = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let output = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().boxed()
    };
    // A second init (tests running the server in-process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init();
    LogControl { handle, from_env }
}
