//! Gateway configuration: a YAML file, `${VAR}` / `${VAR:-default}` substitution in string
//! values, then `MOLTBOT_GATEWAY__SECTION__KEY` environment overrides, then validation.
//! Every error names the key it is about.
//!
//! Substitution works on parsed values, not on the file's text, so a secret that contains
//! YAML syntax cannot change the document's shape. Substituted and overridden values are
//! strings; number and boolean keys accept numeric or boolean strings for that reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use thiserror::Error;

/// Prefix of environment overrides: `MOLTBOT_GATEWAY__LIMITS__MAX_BODY_BYTES=2097152`.
pub const ENV_OVERRIDE_PREFIX: &str = "MOLTBOT_GATEWAY__";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error(
        "{key}: environment variable {var} is not set (write ${{{var}:-default}} for a default)"
    )]
    MissingEnv { key: String, var: String },
    #[error("{key}: unterminated ${{ in {value:?}")]
    BadPlaceholder { key: String, value: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub tenant: TenantConfig,
    /// Address of the inbox API, health and metrics.
    #[serde(default = "default_listen", deserialize_with = "lenient")]
    pub listen: SocketAddr,
    /// Where the tenant's database lives; relative paths are relative to the working directory.
    pub data_dir: PathBuf,
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub channels: Channels,
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// A DNS label: it also names the tenant's namespace.
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token of the inbox API (the control plane holds it).
    pub inbox_token: Secret,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted.
    #[serde(default = "default_max_body", deserialize_with = "lenient")]
    pub max_body_bytes: usize,
    /// Open WebSocket streams allowed at once.
    #[serde(default = "default_max_streams", deserialize_with = "lenient")]
    pub max_streams: usize,
    /// How long SIGTERM waits for in-flight requests before closing anyway.
    #[serde(default = "default_grace", deserialize_with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: default_max_body(),
            max_streams: default_max_streams(),
            shutdown_grace: default_grace(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync at every commit: an acknowledged write survives power loss.
    Full,
    /// fsync at checkpoints: survives a process crash, not power loss.
    Normal,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    #[serde(default = "default_synchronous", deserialize_with = "lenient")]
    pub synchronous: Synchronous,
    /// Writes committed together in one transaction (group commit).
    #[serde(default = "default_max_batch", deserialize_with = "lenient")]
    pub max_batch: usize,
    #[serde(default = "default_read_connections", deserialize_with = "lenient")]
    pub read_connections: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            synchronous: default_synchronous(),
            max_batch: default_max_batch(),
            read_connections: default_read_connections(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    #[serde(default)]
    pub webchat: WebchatConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebchatConfig {
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub enabled: bool,
}

impl Default for WebchatConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text otherwise.
    #[default]
    Auto,
    Json,
    Text,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `moltbot_gateway=debug,info`); `RUST_LOG` wins over it.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default, deserialize_with = "lenient")]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::Auto,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_max_streams() -> usize {
    1024
}
fn default_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
fn default_max_batch() -> usize {
    256
}
fn default_read_connections() -> u32 {
    4
}
fn default_log_level() -> String {
    "info".into()
}
fn yes() -> bool {
    true
}

/// Accepts a value in its own type or as a string that parses to it.
fn lenient<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + Deserialize<'de>,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Native(T),
        Text(String),
    }
    match Either::<T>::deserialize(deserializer)? {
        Either::Native(v) => Ok(v),
        Either::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// A duration written as `10s`, `1m 30s` or ISO 8601 `PT10S`.
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    let signed: jiff::SignedDuration = text.parse().map_err(serde::de::Error::custom)?;
    Duration::try_from(signed).map_err(|_| serde::de::Error::custom("must not be negative"))
}

macro_rules! from_str_via_serde {
    ($($t:ty),+) => {$(
        impl FromStr for $t {
            type Err = serde_json::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                serde_json::from_value(Value::String(s.to_string()))
            }
        }
    )+};
}
from_str_via_serde!(Synchronous, LogFormat);

impl Config {
    /// Reads, substitutes, overrides and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let env: BTreeMap<String, String> = std::env::vars().collect();
        Self::from_yaml(&text, path, &env)
    }

    /// The whole pipeline on given text and environment (so tests need not touch the process).
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut tree: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if tree.is_null() {
            tree = Value::Object(Default::default());
        }
        if !tree.is_object() {
            return Err(ConfigError::invalid(
                "(root)",
                "the config must be a mapping",
            ));
        }
        substitute(&mut tree, "", env)?;
        apply_overrides(&mut tree, env)?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." {
                "(root)".to_string()
            } else {
                key
            };
            ConfigError::Invalid {
                key,
                message: e.into_inner().to_string(),
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.tenant.id;
        let dns_label = !id.is_empty()
            && id.len() <= 63
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !id.starts_with('-')
            && !id.ends_with('-');
        if !dns_label {
            return Err(ConfigError::invalid(
                "tenant.id",
                "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
            ));
        }
        let token = self.auth.inbox_token.expose();
        if token.len() < 16 {
            return Err(ConfigError::invalid(
                "auth.inbox_token",
                "must be at least 16 characters",
            ));
        }
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
        {
            return Err(ConfigError::invalid(
                "auth.inbox_token",
                "may only contain letters, digits and - . _ ~ + / =",
            ));
        }
        if !(1024..=64 << 20).contains(&self.limits.max_body_bytes) {
            return Err(ConfigError::invalid(
                "limits.max_body_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        if self.limits.max_streams == 0 {
            return Err(ConfigError::invalid(
                "limits.max_streams",
                "must be at least 1",
            ));
        }
        if !(1..=10_000).contains(&self.store.max_batch) {
            return Err(ConfigError::invalid(
                "store.max_batch",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=64).contains(&self.store.read_connections) {
            return Err(ConfigError::invalid(
                "store.read_connections",
                "must be between 1 and 64",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "must not be empty"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        Ok(())
    }

    /// Keys that only take effect at start; a reload that changes them keeps the old value.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.tenant.id != new.tenant.id {
            changed.push("tenant.id");
        }
        if self.listen != new.listen {
            changed.push("listen");
        }
        if self.data_dir != new.data_dir {
            changed.push("data_dir");
        }
        if self.store.synchronous != new.store.synchronous
            || self.store.max_batch != new.store.max_batch
            || self.store.read_connections != new.store.read_connections
        {
            changed.push("store");
        }
        if self.log.format != new.log.format {
            changed.push("log.format");
        }
        changed
    }

    /// `new` with the restart-only keys taken from `self`: what a reload may apply.
    pub fn reloadable_part_of(&self, new: Config) -> Config {
        Config {
            tenant: self.tenant.clone(),
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            store: self.store.clone(),
            log: LogConfig {
                format: self.log.format,
                ..new.log
            },
            ..new
        }
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` in every string; `$$` is a literal `$`.
fn substitute(
    value: &mut Value,
    key: &str,
    env: &BTreeMap<String, String>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => *s = substitute_str(s, key, env)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                substitute(item, &format!("{key}[{i}]"), env)?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                substitute(v, &child, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn substitute_str(
    s: &str,
    key: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| ConfigError::BadPlaceholder {
                key: key.to_string(),
                value: s.to_string(),
            })?;
            let expr = &body[..end];
            let (var, default) = match expr.split_once(":-") {
                Some((var, default)) => (var, Some(default)),
                None => (expr, None),
            };
            match (env.get(var).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(ConfigError::MissingEnv {
                        key: key.to_string(),
                        var: var.to_string(),
                    });
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies `MOLTBOT_GATEWAY__A__B=value` as the string value of key `a.b`.
fn apply_overrides(tree: &mut Value, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in env.range(ENV_OVERRIDE_PREFIX.to_string()..) {
        let Some(path) = name.strip_prefix(ENV_OVERRIDE_PREFIX) else {
            break;
        };
        let segments: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if segments.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(name, "malformed override name"));
        }
        let mut node = &mut *tree;
        for (i, segment) in segments.iter().enumerate() {
            let map = match node {
                Value::Object(map) => map,
                _ => {
                    return Err(ConfigError::invalid(
                        &segments[..i].join("."),
                        format!("{name} overrides a key inside a value that is not a mapping"),
                    ));
                }
            };
            node = map
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(Default::default()));
        }
        *node = Value::String(value.clone());
    }
    Ok(())
}
