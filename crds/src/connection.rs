//! `Connection`: one chat channel account of a tenant.
//!
//! Namespaced, in the tenant's namespace, so that its credentials Secret sits beside it
//! and namespace RBAC covers both. Credentials are only ever Secret references.

use kube::{CustomResource, KubeSchema};
use moltbot_protocol::config::MAX_PENDING_PAIRINGS;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::conditions::{Condition, Time};

/// The desired state of one channel account.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "cloud.moltbot.com",
    version = "v1alpha1",
    kind = "Connection",
    namespaced,
    doc = "A Connection is one chat channel account of a tenant: web chat, a Telegram bot, or a WhatsApp, iMessage or Signal account reached through a device bridge. It lives in the tenant's namespace; the operator configures the tenant's gateway from it and reports the channel's health in status.",
    status = "ConnectionStatus",
    derive = "PartialEq",
    shortname = "mconn",
    category = "moltbot",
    // `kubectl get connections -A --field-selector spec.type=telegram`.
    selectable = ".spec.type",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type", description = "The chat channel."),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode", description = "cloud or bridge."),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the channel delivers messages."
    ),
    printcolumn(
        name = "Last event",
        type_ = "date",
        json_path = ".status.lastEventTime",
        description = "When the channel last carried a message or event."
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.reason",
        description = "What the gateway last said about the channel.",
        priority = 1
    ),
    // The name is the connection's name in the gateway and in its webhook path
    // (/hooks/<name>), where only a DNS label fits and "webchat" is the built-in one.
    validation = Rule::new("self.metadata.name.size() <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("name must be a DNS label"),
    validation = Rule::new("self.spec.type == 'webchat' || self.metadata.name != 'webchat'")
        .message("the name webchat is reserved for the web chat Connection"),
)]
#[x_kube(
    validation = Rule::new("self.mode != 'bridge' || self.type in ['whatsapp', 'imessage', 'signal']")
        .message("mode bridge is only for whatsapp, imessage and signal"),
    validation = Rule::new("!(self.type in ['whatsapp', 'imessage', 'signal']) || self.mode == 'bridge'")
        .message("whatsapp, imessage and signal connect only through a device: set mode bridge"),
    validation = Rule::new("!(self.type in ['telegram', 'discord', 'slack', 'teams']) || has(self.credentials)")
        .message("telegram, discord, slack and teams need credentials"),
    validation = Rule::new("self.type in ['telegram', 'discord', 'slack', 'teams'] || !has(self.credentials)")
        .message("credentials are only for telegram, discord, slack and teams: web chat needs none and a bridged channel keeps its own on the device"),
    validation = Rule::new("!has(self.telegram) || self.type == 'telegram'")
        .message("telegram settings are only for type telegram"),
    validation = Rule::new("!has(self.telegram) || self.telegram.delivery != 'webhook' || (has(self.credentials) && has(self.credentials.webhookSecretKey))")
        .message("telegram webhook delivery needs credentials.webhookSecretKey"),
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::not_nullable)]
pub struct ConnectionSpec {
    /// The chat channel: webchat, telegram, discord, slack, teams, whatsapp, imessage or signal. Immutable: another channel is another Connection.
    #[serde(rename = "type")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("type is immutable"))]
    pub type_: ChannelType,

    /// How the gateway reaches the channel: cloud (it talks to the provider itself) or bridge (through a person's device, for whatsapp, imessage and signal, which only bridge). Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("mode is immutable"))]
    pub mode: ConnectionMode,

    /// A name for people, e.g. the bot's name. Unset: the Connection's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub display_name: Option<String>,

    /// Where the channel's secrets are: a Secret in this namespace. Required for telegram, discord, slack and teams; not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsRef>,

    /// Settings of a telegram Connection. Unset: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramSettings>,
}

/// A chat channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    Webchat,
    Telegram,
    Discord,
    Slack,
    Teams,
    Whatsapp,
    Imessage,
    Signal,
}

/// How the gateway reaches a channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionMode {
    #[default]
    Cloud,
    Bridge,
}

/// Keys of a Secret holding a channel's credentials.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsRef {
    /// The Secret's name, in the Connection's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::DNS_SUBDOMAIN))]
    pub secret_name: String,

    /// The key of the channel's token: Telegram's bot token from BotFather, Discord's or Slack's bot token, Teams' client secret.
    #[serde(default = "default_token_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::SECRET_KEY))]
    pub token_key: String,

    /// The key of the secret that proves webhook deliveries come from the provider: the secret token Telegram sends with each update, Slack's signing secret. Required for telegram webhook delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::SECRET_KEY))]
    pub webhook_secret_key: Option<String>,
}

fn default_token_key() -> String {
    "token".into()
}

/// A Telegram user id. Telegram's ids have at most 52 significant bits, so 16 digits hold
/// every one (2^52 has 16), and every 16-digit number fits the i64 the gateway reads it as.
const TELEGRAM_USER_ID: &str = r"^[0-9]{1,16}$";
/// A Telegram chat id: a user id, or a group's (negative).
const TELEGRAM_CHAT_ID: &str = r"^-?[0-9]{1,16}$";

/// Settings of a Telegram bot.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelegramSettings {
    /// How updates arrive: polling (the gateway asks with getUpdates; no public URL needed) or webhook (Telegram posts to the gateway through the platform's ingress).
    #[serde(default)]
    pub delivery: TelegramDelivery,

    /// Who may talk to the bot in direct messages: pairing (an unknown sender gets a code the tenant approves), allowlist (only allowFrom), open (anyone) or disabled.
    #[serde(default)]
    pub dm_policy: DmPolicy,

    /// Pairing requests that may wait for the tenant at once under dmPolicy pairing; further unknown senders are ignored until one is approved, denied or expires (1 hour). Unset: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = *MAX_PENDING_PAIRINGS.start(), max = *MAX_PENDING_PAIRINGS.end()))]
    pub max_pending_pairings: Option<u32>,

    /// Telegram user ids always allowed in direct messages (and the only ones under allowlist).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(regex(pattern = TELEGRAM_USER_ID)), extend("x-kubernetes-list-type" = "set"))]
    pub allow_from: Vec<String>,

    /// Which groups the bot takes part in: allowlist (only allowGroups, so a stranger adding the bot cannot spend the tenant's tokens), open or disabled.
    #[serde(default)]
    pub group_policy: GroupPolicy,

    /// Group chat ids (negative numbers) the bot takes part in under allowlist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(regex(pattern = TELEGRAM_CHAT_ID)), extend("x-kubernetes-list-type" = "set"))]
    pub allow_groups: Vec<String>,

    /// The Bot API's base URL, for a local Bot API server. Unset: https://api.telegram.org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/]+\S*$"))]
    pub api_base: Option<String>,
}

/// How a Telegram bot receives updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TelegramDelivery {
    #[default]
    Polling,
    Webhook,
}

/// Who may talk to a bot in direct messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DmPolicy {
    #[default]
    Pairing,
    Allowlist,
    Open,
    Disabled,
}

/// Which groups a bot takes part in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupPolicy {
    #[default]
    Allowlist,
    Open,
    Disabled,
}

/// What the operator observed of a channel.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionStatus {
    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The channel's conditions: Ready, Connected, Degraded and ActionRequired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The gateway's word for the channel: connected, degraded (working with trouble), action_required (a person must act), disconnected, or unknown (no report yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ConnectionState>,

    /// What the gateway last said about the channel, e.g. why it needs action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// When the channel last carried a message or event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<Time>,
}

/// A channel's health as the gateway reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    Connected,
    Degraded,
    ActionRequired,
    Disconnected,
    Unknown,
}
