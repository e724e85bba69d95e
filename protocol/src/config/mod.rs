//! The gateway's config file: a contract between the gateway, which reads it, and the
//! renderers (the operator, the local runtime), which write it.
//!
//! Reading ([`Config::from_yaml`]): YAML, `${VAR}` / `${VAR:-default}` substitution in
//! string values, then `MOLTBOT_GATEWAY__SECTION__KEY` environment overrides, then
//! validation. Every error names the key it is about.
//!
//! Substitution works on parsed values, not on the file's text, so a secret that contains
//! YAML syntax cannot change the document's shape. Substituted and overridden values are
//! strings; number and boolean keys accept numeric or boolean strings for that reason.
//!
//! Writing ([`Config::to_yaml`]): a renderer builds a [`Config`] in code ([`Config::new`],
//! [`TelegramConfig::new`], [`ModelConfig::new`] and the `Default`s), puts a
//! [`Secret::placeholder`] wherever a secret goes, and renders it. Reading the text back
//! gives an equal `Config`, with the placeholders substituted from the environment. A
//! config that holds secret values (a loaded one) cannot be rendered.

mod escape;
mod forms;
mod validate;
mod yaml;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de, ser};
use thiserror::Error;

use self::forms::{duration, lenient};
use crate::inbox::AgentMode;

/// The connection name of the built-in web chat, which every gateway has: no configured
/// connection may take it.
pub const WEBCHAT_CONNECTION: &str = "webchat";

/// Prefix of environment overrides: `MOLTBOT_GATEWAY__LIMITS__MAX_BODY_BYTES=2097152`.
pub const ENV_OVERRIDE_PREFIX: &str = "MOLTBOT_GATEWAY__";

/// `max_pending_pairings` when unset: as in OpenClaw, a flood of strangers gets three
/// codes, not one each. The Connection CRD documents it.
pub const DEFAULT_MAX_PENDING_PAIRINGS: u32 = 3;
/// The values `max_pending_pairings` may take; the Connection CRD's schema admits the same.
pub const MAX_PENDING_PAIRINGS: std::ops::RangeInclusive<u32> = 1..=1000;

/// Why a config file was refused, or a config could not be rendered.
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
    /// Names the key only: the value may be a secret.
    #[error("{key}: unterminated ${{ (write $$ for a literal $)")]
    BadPlaceholder { key: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "{name:?} is not an environment variable name (A-Z, a-z, 0-9 and _, not starting with a digit)"
    )]
    EnvName { name: String },
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// A secret string: `Debug` never shows it, and serialising writes only a placeholder.
///
/// A secret is either a placeholder or a value. A renderer writes a
/// [`placeholder`](Self::placeholder), `${NAME}`, wherever a secret goes, and the gateway
/// substitutes it when it loads the file, from an environment backed by a Kubernetes Secret
/// (or set by the local runtime). Values come only from loading (deserialising), and
/// serialising one is an error, so a loaded config is never written out with its secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(SecretForm);

#[derive(Clone, PartialEq, Eq)]
enum SecretForm {
    /// `${NAME}`.
    Placeholder(String),
    Value(String),
}

impl Secret {
    /// `${env_var}`: the value of `env_var` in the gateway's environment once loaded.
    pub fn placeholder(env_var: &str) -> Result<Self, ConfigError> {
        let mut bytes = env_var.bytes();
        // A C identifier: anything else could end the placeholder early (`}`) or turn
        // it into one with a default (`:-`).
        let valid = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(ConfigError::EnvName {
                name: env_var.to_string(),
            });
        }
        Ok(Self(SecretForm::Placeholder(format!("${{{env_var}}}"))))
    }

    /// The secret's text: a loaded value, or a placeholder's `${NAME}` (what the file holds
    /// in its place). The gateway only reads loaded values.
    pub fn expose(&self) -> &str {
        match &self.0 {
            SecretForm::Placeholder(text) | SecretForm::Value(text) => text,
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            // Under a name only the renderer looks for, so that it leaves the `$` single.
            SecretForm::Placeholder(text) => {
                serializer.serialize_newtype_struct(escape::PLACEHOLDER, text)
            }
            SecretForm::Value(_) => Err(ser::Error::custom(
                "a secret value is never written out (render a Secret::placeholder)",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde's own message quotes what it found instead, which is the secret.
        String::deserialize(deserializer)
            .map(|value| Self(SecretForm::Value(value)))
            .map_err(|_| {
                de::Error::custom(
                    "must be a string (quote a value YAML reads as a number or boolean)",
                )
            })
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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

impl Config {
    /// The required keys; every other key has the default a file without it gets.
    pub fn new(
        tenant_id: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        inbox_token: Secret,
    ) -> Self {
        Self {
            tenant: TenantConfig {
                id: tenant_id.into(),
                display_name: None,
            },
            listen: default_listen(),
            data_dir: data_dir.into(),
            auth: AuthConfig { inbox_token },
            limits: Limits::default(),
            store: StoreConfig::default(),
            channels: Channels::default(),
            connections: Vec::new(),
            agent: AgentConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// A DNS label: it also names the tenant's namespace.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token of the inbox API (the control plane holds it).
    pub inbox_token: Secret,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest request body accepted.
    #[serde(default = "default_max_body", deserialize_with = "lenient")]
    pub max_body_bytes: usize,
    /// Open WebSocket streams allowed at once.
    #[serde(default = "default_max_streams", deserialize_with = "lenient")]
    pub max_streams: usize,
    /// How long SIGTERM waits for in-flight requests before closing anyway.
    #[serde(default = "default_grace", with = "duration")]
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Channels {
    #[serde(default)]
    pub webchat: WebchatConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<TelegramWebhook>,
    /// How long one `getUpdates` long poll waits.
    #[serde(default = "default_poll_timeout", with = "duration")]
    pub poll_timeout: Duration,
    /// Timeout of every other Bot API request; a send that times out is reconciled, not resent blindly.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    #[serde(default, deserialize_with = "lenient")]
    pub dm_policy: DmPolicy,
    /// Pairing requests that may wait for the tenant at once (unexpired, neither approved
    /// nor denied); further unknown senders are ignored until one is decided or expires.
    #[serde(default = "default_max_pending_pairings", deserialize_with = "lenient")]
    pub max_pending_pairings: u32,
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

impl TelegramConfig {
    /// A bot polling the public Bot API, with every other key at its default.
    pub fn new(name: impl Into<String>, token: Secret) -> Self {
        Self {
            name: name.into(),
            token,
            api_base: default_telegram_api_base(),
            mode: TelegramMode::default(),
            webhook: None,
            poll_timeout: default_poll_timeout(),
            request_timeout: default_request_timeout(),
            dm_policy: DmPolicy::default(),
            max_pending_pairings: default_max_pending_pairings(),
            allow_from: Vec::new(),
            group_policy: GroupPolicy::default(),
            allow_groups: Vec::new(),
            rate_limit: TelegramRateLimit::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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

impl TelegramWebhook {
    /// Webhook settings with the default number of deliveries in flight.
    pub fn new(public_url: impl Into<String>, secret: Secret) -> Self {
        Self {
            public_url: public_url.into(),
            secret,
            max_connections: default_webhook_connections(),
        }
    }
}

/// Telegram's documented limits: about one message a second per chat, twenty a minute per
/// group and thirty a second overall.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Mode of conversations that have none of their own.
    #[serde(default, deserialize_with = "lenient")]
    pub default_mode: AgentMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Up to and including `/v1`.
    pub base_url: String,
    /// Empty for servers that need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    pub model: String,
    /// Longest wait for one model answer, streaming included.
    #[serde(default = "default_model_timeout", with = "duration")]
    pub timeout: Duration,
    /// Retries of a failed or timed-out model call before the run fails.
    #[serde(default = "default_model_retries", deserialize_with = "lenient")]
    pub max_retries: u32,
    /// The request field that carries the reply's token limit.
    #[serde(default, deserialize_with = "lenient")]
    pub token_limit_field: TokenLimitField,
    /// Prices per million tokens, for the cost recorded with each run.
    #[serde(default, deserialize_with = "lenient")]
    pub prompt_price_per_million: f64,
    #[serde(default, deserialize_with = "lenient")]
    pub completion_price_per_million: f64,
}

impl ModelConfig {
    /// A model that needs no API key, with every other key at its default.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            api_key: None,
            model: model.into(),
            timeout: default_model_timeout(),
            max_retries: default_model_retries(),
            token_limit_field: TokenLimitField::default(),
            prompt_price_per_million: 0.0,
            completion_price_per_million: 0.0,
        }
    }
}

/// Which request field limits a reply's tokens. A server ignores a field it does not know,
/// and OpenAI refuses a request with both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLimitField {
    /// OpenAI's current name, the only one its reasoning models take; recent vLLM, Ollama
    /// and llama.cpp servers read it too.
    #[default]
    MaxCompletionTokens,
    /// The older name, for servers that know only it, such as llama-cpp-python's (which
    /// otherwise writes on until its context is full).
    MaxTokens,
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
fn default_max_pending_pairings() -> u32 {
    DEFAULT_MAX_PENDING_PAIRINGS
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
