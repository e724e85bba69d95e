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

use moltbot_protocol::inbox::AgentMode;
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
    /// External channel accounts (a Telegram bot, …), each with a unique name.
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
    #[serde(default)]
    pub agent: AgentConfig,
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

/// One external channel account, tagged by `type`.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ConnectionConfig {
    Telegram(TelegramConfig),
}

impl ConnectionConfig {
    pub fn name(&self) -> &str {
        match self {
            ConnectionConfig::Telegram(t) => &t.name,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TelegramMode {
    /// The gateway asks with `getUpdates`: works behind NAT, no public URL needed.
    #[default]
    Polling,
    /// Telegram posts updates to `webhook.public_url`.
    Webhook,
}

/// Who may talk to the agent in direct messages (the same four policies OpenClaw has).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    /// An unknown sender gets a one-time code; the tenant approves it in the inbox.
    #[default]
    Pairing,
    /// Only the senders in `allow_from`.
    Allowlist,
    /// Anyone.
    Open,
    /// Direct messages are ignored.
    Disabled,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    /// Only the groups in `allow_groups`: a stranger adding the bot to their group cannot
    /// fill the inbox or spend the tenant's tokens.
    #[default]
    Allowlist,
    Open,
    Disabled,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramConfig {
    /// The connection's name: unique in this gateway, a DNS label.
    pub name: String,
    /// The bot token from BotFather.
    pub token: Secret,
    /// Base URL of the Bot API (a local Bot API server or a test fake).
    #[serde(default = "default_telegram_api_base")]
    pub api_base: String,
    #[serde(default, deserialize_with = "lenient")]
    pub mode: TelegramMode,
    /// Required in webhook mode.
    #[serde(default)]
    pub webhook: Option<TelegramWebhook>,
    /// How long one `getUpdates` long poll waits.
    #[serde(default = "default_poll_timeout", deserialize_with = "duration")]
    pub poll_timeout: Duration,
    /// Timeout of every other Bot API request; a send that times out is reconciled, not resent blindly.
    #[serde(default = "default_request_timeout", deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(default, deserialize_with = "lenient")]
    pub dm_policy: DmPolicy,
    /// Telegram user ids allowed to write in direct messages (policy `allowlist`, and
    /// always allowed under `pairing`).
    #[serde(default)]
    pub allow_from: Vec<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub group_policy: GroupPolicy,
    /// Group chat ids the bot takes part in under group policy `allowlist`.
    #[serde(default)]
    pub allow_groups: Vec<String>,
    #[serde(default)]
    pub rate_limit: TelegramRateLimit,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramWebhook {
    /// The gateway's public base URL; Telegram posts to `{public_url}/hooks/{name}`.
    pub public_url: String,
    /// Sent back by Telegram in `X-Telegram-Bot-Api-Secret-Token`: 1-256 of A-Z a-z 0-9 _ -.
    pub secret: Secret,
    /// Deliveries Telegram may have in flight at once.
    #[serde(default = "default_webhook_connections", deserialize_with = "lenient")]
    pub max_connections: u32,
}

/// Telegram's documented limits: about one message a second per chat, twenty a minute per
/// group and thirty a second overall.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramRateLimit {
    #[serde(default = "default_per_chat", deserialize_with = "lenient")]
    pub per_chat_per_second: u32,
    #[serde(default = "default_per_group", deserialize_with = "lenient")]
    pub per_group_per_minute: u32,
    #[serde(default = "default_global", deserialize_with = "lenient")]
    pub global_per_second: u32,
}

impl Default for TelegramRateLimit {
    fn default() -> Self {
        Self {
            per_chat_per_second: default_per_chat(),
            per_group_per_minute: default_per_group(),
            global_per_second: default_global(),
        }
    }
}

/// The agent's tools; `agent.tools` is the tenant's allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolName {
    SearchMessages,
    RememberFact,
    SetFollowUp,
    SummarizeConversation,
}

impl ToolName {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolName::SearchMessages => "search_messages",
            ToolName::RememberFact => "remember_fact",
            ToolName::SetFollowUp => "set_follow_up",
            ToolName::SummarizeConversation => "summarize_conversation",
        }
    }

    /// Whether the tool changes anything (a write tool) or only reads.
    pub fn writes(self) -> bool {
        matches!(self, ToolName::RememberFact | ToolName::SetFollowUp)
    }

    pub const ALL: [ToolName; 4] = [
        ToolName::SearchMessages,
        ToolName::RememberFact,
        ToolName::SetFollowUp,
        ToolName::SummarizeConversation,
    ];
}

/// Pi, the agent. Without `model` it never runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Mode of conversations that have none of their own.
    #[serde(default, deserialize_with = "lenient")]
    pub default_mode: AgentMode,
    #[serde(default)]
    pub model: Option<ModelConfig>,
    #[serde(default = "default_system_prompt")]
    pub system_prompt: String,
    /// Budget of the prompt: memory, summary and as many recent messages as fit.
    #[serde(default = "default_context_tokens", deserialize_with = "lenient")]
    pub context_tokens: u32,
    /// Longest reply the model may write.
    #[serde(default = "default_max_reply_tokens", deserialize_with = "lenient")]
    pub max_reply_tokens: u32,
    /// Tokens one run may spend, tool rounds and summaries included.
    #[serde(default = "default_tokens_per_run", deserialize_with = "lenient")]
    pub tokens_per_run: u64,
    /// Tokens the tenant may spend per UTC day.
    #[serde(default = "default_tokens_per_day", deserialize_with = "lenient")]
    pub tokens_per_day: u64,
    /// What the agent says, once per conversation and day, when the daily budget is spent.
    #[serde(default = "default_budget_reply")]
    pub budget_exhausted_reply: String,
    /// Tools the model is offered.
    #[serde(default = "default_tools")]
    pub tools: Vec<ToolName>,
    /// Model rounds with tool calls before the run must answer.
    #[serde(default = "default_tool_rounds", deserialize_with = "lenient")]
    pub max_tool_rounds: u32,
    /// Runs at once across conversations (one at a time within a conversation).
    #[serde(default = "default_concurrent_runs", deserialize_with = "lenient")]
    pub max_concurrent_runs: usize,
    /// In groups, answer only messages that mention or reply to the bot.
    #[serde(default = "yes", deserialize_with = "lenient")]
    pub require_mention_in_groups: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            default_mode: AgentMode::default(),
            model: None,
            system_prompt: default_system_prompt(),
            context_tokens: default_context_tokens(),
            max_reply_tokens: default_max_reply_tokens(),
            tokens_per_run: default_tokens_per_run(),
            tokens_per_day: default_tokens_per_day(),
            budget_exhausted_reply: default_budget_reply(),
            tools: default_tools(),
            max_tool_rounds: default_tool_rounds(),
            max_concurrent_runs: default_concurrent_runs(),
            require_mention_in_groups: true,
        }
    }
}

/// Any OpenAI-compatible chat completions endpoint (OpenAI, Ollama, vLLM, llama.cpp).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Up to and including `/v1`.
    pub base_url: String,
    /// Empty for servers that need none.
    #[serde(default)]
    pub api_key: Option<Secret>,
    pub model: String,
    /// Longest wait for one model answer, streaming included.
    #[serde(default = "default_model_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Retries of a failed or timed-out model call before the run fails.
    #[serde(default = "default_model_retries", deserialize_with = "lenient")]
    pub max_retries: u32,
    /// Prices per million tokens, for the cost recorded with each run.
    #[serde(default, deserialize_with = "lenient")]
    pub prompt_price_per_million: f64,
    #[serde(default, deserialize_with = "lenient")]
    pub completion_price_per_million: f64,
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
fn default_telegram_api_base() -> String {
    "https://api.telegram.org".into()
}
fn default_poll_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_webhook_connections() -> u32 {
    40
}
fn default_per_chat() -> u32 {
    1
}
fn default_per_group() -> u32 {
    20
}
fn default_global() -> u32 {
    30
}
fn default_system_prompt() -> String {
    "You are Pi, a personal assistant answering on the owner's behalf in their chats. \
     Be brief, warm and accurate; say so when you do not know."
        .into()
}
fn default_context_tokens() -> u32 {
    6000
}
fn default_max_reply_tokens() -> u32 {
    1024
}
fn default_tokens_per_run() -> u64 {
    20_000
}
fn default_tokens_per_day() -> u64 {
    500_000
}
fn default_budget_reply() -> String {
    "I have reached my limit for today, so I cannot answer right now. I will be back tomorrow."
        .into()
}
fn default_tools() -> Vec<ToolName> {
    ToolName::ALL.to_vec()
}
fn default_tool_rounds() -> u32 {
    4
}
fn default_concurrent_runs() -> usize {
    8
}
fn default_model_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_model_retries() -> u32 {
    2
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
from_str_via_serde!(Synchronous, LogFormat, TelegramMode, DmPolicy, GroupPolicy);

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
        let mut config = config;
        // `${OPENAI_API_KEY:-}` with nothing set means no key (a local model server).
        if let Some(model) = &mut config.agent.model
            && model
                .api_key
                .as_ref()
                .is_some_and(|k| k.expose().is_empty())
        {
            model.api_key = None;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !is_dns_label(&self.tenant.id) {
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
        let mut names = std::collections::BTreeSet::new();
        for (i, connection) in self.connections.iter().enumerate() {
            let key = format!("connections[{i}]");
            let name = connection.name();
            if !is_dns_label(name) || name == crate::channels::webchat::CONNECTION {
                return Err(ConfigError::invalid(
                    &format!("{key}.name"),
                    "must be a DNS label other than \"webchat\"",
                ));
            }
            if !names.insert(name) {
                return Err(ConfigError::invalid(
                    &format!("{key}.name"),
                    format!("{name:?} is used by another connection"),
                ));
            }
            match connection {
                ConnectionConfig::Telegram(telegram) => telegram.validate(&key)?,
            }
        }
        self.agent.validate()
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
        // Connectors start once; comparing the parsed values would need every secret's text.
        if format!("{:?}", self.connections) != format!("{:?}", new.connections)
            || !same_secrets(&self.connections, &new.connections)
        {
            changed.push("connections");
        }
        if self.agent.max_concurrent_runs != new.agent.max_concurrent_runs {
            changed.push("agent.max_concurrent_runs");
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
            connections: self.connections.clone(),
            agent: AgentConfig {
                max_concurrent_runs: self.agent.max_concurrent_runs,
                ..new.agent
            },
            log: LogConfig {
                format: self.log.format,
                ..new.log
            },
            ..new
        }
    }
}

fn same_secrets(a: &[ConnectionConfig], b: &[ConnectionConfig]) -> bool {
    let secrets = |c: &ConnectionConfig| match c {
        ConnectionConfig::Telegram(t) => (
            t.token.clone(),
            t.webhook.as_ref().map(|w| w.secret.clone()),
        ),
    };
    a.iter().map(secrets).eq(b.iter().map(secrets))
}

fn is_dns_label(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-')
}

/// An absolute http(s) URL.
fn check_url(key: &str, value: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(()),
        Ok(_) => Err(ConfigError::invalid(key, "must be an http or https URL")),
        Err(e) => Err(ConfigError::invalid(key, format!("not a URL: {e}"))),
    }
}

fn check_range<T: PartialOrd + fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

impl TelegramConfig {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let token = self.token.expose();
        let well_formed = token.split_once(':').is_some_and(|(id, secret)| {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !secret.is_empty()
                && secret
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
        if !well_formed {
            // Never echo the token.
            return Err(ConfigError::invalid(
                &format!("{key}.token"),
                "is not a bot token (digits, ':', then letters, digits, _ and -)",
            ));
        }
        check_url(&format!("{key}.api_base"), &self.api_base)?;
        match (&self.mode, &self.webhook) {
            (TelegramMode::Webhook, None) => {
                return Err(ConfigError::invalid(
                    &format!("{key}.webhook"),
                    "is required in webhook mode",
                ));
            }
            (_, Some(webhook)) => {
                check_url(&format!("{key}.webhook.public_url"), &webhook.public_url)?;
                let secret = webhook.secret.expose();
                if secret.is_empty()
                    || secret.len() > 256
                    || !secret
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(ConfigError::invalid(
                        &format!("{key}.webhook.secret"),
                        "must be 1-256 of A-Z a-z 0-9 _ -",
                    ));
                }
                check_range(
                    &format!("{key}.webhook.max_connections"),
                    webhook.max_connections,
                    1,
                    100,
                )?;
            }
            (TelegramMode::Polling, None) => {}
        }
        check_range(
            &format!("{key}.poll_timeout"),
            self.poll_timeout.as_secs(),
            0,
            50,
        )?;
        check_range(
            &format!("{key}.request_timeout"),
            self.request_timeout.as_millis(),
            100,
            120_000,
        )?;
        for (field, ids) in [
            ("allow_from", &self.allow_from),
            ("allow_groups", &self.allow_groups),
        ] {
            if let Some(bad) = ids.iter().find(|id| id.parse::<i64>().is_err()) {
                return Err(ConfigError::invalid(
                    &format!("{key}.{field}"),
                    format!("{bad:?} is not a Telegram id (a number)"),
                ));
            }
        }
        let limits = &self.rate_limit;
        for (field, value) in [
            ("per_chat_per_second", limits.per_chat_per_second),
            ("per_group_per_minute", limits.per_group_per_minute),
            ("global_per_second", limits.global_per_second),
        ] {
            check_range(&format!("{key}.rate_limit.{field}"), value, 1, 100_000)?;
        }
        Ok(())
    }
}

impl AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(model) = &self.model {
            check_url("agent.model.base_url", &model.base_url)?;
            if model.model.trim().is_empty() {
                return Err(ConfigError::invalid(
                    "agent.model.model",
                    "must not be empty",
                ));
            }
            check_range("agent.model.max_retries", model.max_retries, 0, 10)?;
            for (key, price) in [
                (
                    "agent.model.prompt_price_per_million",
                    model.prompt_price_per_million,
                ),
                (
                    "agent.model.completion_price_per_million",
                    model.completion_price_per_million,
                ),
            ] {
                if !price.is_finite() || price < 0.0 {
                    return Err(ConfigError::invalid(key, "must be a number of 0 or more"));
                }
            }
        }
        check_range("agent.context_tokens", self.context_tokens, 256, 1_000_000)?;
        check_range(
            "agent.max_reply_tokens",
            self.max_reply_tokens,
            16,
            self.context_tokens,
        )?;
        check_range("agent.tokens_per_run", self.tokens_per_run, 1, u64::MAX)?;
        check_range("agent.max_tool_rounds", self.max_tool_rounds, 0, 16)?;
        check_range(
            "agent.max_concurrent_runs",
            self.max_concurrent_runs,
            1,
            1024,
        )?;
        if self.budget_exhausted_reply.trim().is_empty() {
            return Err(ConfigError::invalid(
                "agent.budget_exhausted_reply",
                "must not be empty",
            ));
        }
        Ok(())
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
