//! The gateway's config file from a Tenant and its Connections: the one function both
//! runtimes use, so that a tenant's gateway is configured the same way in a cluster (the
//! operator puts the text in a ConfigMap) and on one machine (the local runtime writes it
//! to a file).
//!
//! The renderer never sees a secret value. Wherever one goes it writes a `${NAME}`
//! placeholder and reports `NAME` with the Secret key it comes from ([`SecretEnv`]); the
//! runtime puts that key's value in the gateway's environment (an `env[].valueFrom.secretKeyRef`
//! in a pod, a read of its own secret store locally), and the gateway substitutes it when
//! it loads the file.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use moltbot_protocol::config::{
    self as gateway, Config, ConfigError, ConnectionConfig, ModelConfig, Secret, TelegramConfig,
    TelegramWebhook, ToolName, WEBCHAT_CONNECTION,
};
use moltbot_protocol::inbox::AgentMode as GatewayAgentMode;

use crate::connection::{
    ChannelType, Connection, ConnectionMode, CredentialsRef, DmPolicy, GroupPolicy,
    TelegramDelivery, TelegramSettings,
};
use crate::tenant::{AgentMode, AgentTool, ModelSpec, Tenant, TokenLimitField};
use crate::{SecretKeyRef, tenant_namespace};

/// The Secret, in the tenant's namespace, holding the credentials the runtime generates
/// for each tenant.
pub const CREDENTIALS_SECRET: &str = "gateway-credentials";
/// Key of [`CREDENTIALS_SECRET`]: the bearer token of the gateway's inbox API.
pub const INBOX_TOKEN_KEY: &str = "inbox-token";
/// Key of [`CREDENTIALS_SECRET`]: the key the bridge ingress signs its requests to the
/// gateway with.
pub const INGRESS_HMAC_KEY: &str = "ingress-hmac-key";

/// Prefix of every environment variable a rendered config reads. It stays clear of the
/// gateway's `MOLTBOT_GATEWAY__` overrides, which would otherwise rewrite config keys.
const ENV_PREFIX: &str = "MOLTBOT_SECRET_";

/// What differs between runtimes (and, for the paths, between tenants of one runtime).
#[derive(Clone, Debug, PartialEq)]
pub struct RenderSite {
    /// The gateway's data directory.
    pub data_dir: PathBuf,
    /// The gateway's listen address.
    pub listen: SocketAddr,
    /// The Telegram Bot API of Connections that name none.
    pub telegram_api_base: String,
    /// This gateway's public base URL, if it has one: a Telegram webhook posts to
    /// `{webhook_base_url}/hooks/{connection}`. Without it, webhook delivery is unsupported.
    pub webhook_base_url: Option<String>,
    /// The platform's model, for tenants that name none. Its API key Secret is read where
    /// the tenant's Secrets are (in a cluster: the tenant's namespace).
    pub default_model: Option<ModelSpec>,
}

/// An environment variable the rendered config expects, and the Secret key that holds its
/// value (in the tenant's namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretEnv {
    pub env: String,
    pub secret_name: String,
    pub key: String,
}

/// A Connection left out of the config, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The Connection's name.
    pub connection: String,
    /// A CamelCase reason for the Connection's condition.
    pub reason: &'static str,
    /// What a person should know.
    pub message: String,
}

/// A rendered gateway config.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedConfig {
    pub config: Config,
    /// `config` as the gateway's config file.
    pub yaml: String,
    /// Every placeholder in `yaml`, sorted by name.
    pub secret_env: Vec<SecretEnv>,
    /// Connections this gateway cannot serve yet, by name.
    pub unsupported: Vec<Unsupported>,
}

/// Input the renderer refuses. The schema and its CEL rules refuse most of it first.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the Tenant has no metadata.name")]
    UnnamedTenant,
    #[error("Tenant {tenant}: {message}")]
    Tenant { tenant: String, message: String },
    #[error("Connection {connection}: {message}")]
    Connection { connection: String, message: String },
    #[error("cannot render the gateway config: {0}")]
    Config(#[from] ConfigError),
}

/// The gateway config of `tenant` serving `connections` (its Connections; their order
/// does not matter) at `site`.
///
/// Connections being deleted are left out; Connections of channels the gateway cannot
/// serve yet are left out and reported in [`RenderedConfig::unsupported`].
pub fn gateway_config(
    tenant: &Tenant,
    connections: &[Connection],
    site: &RenderSite,
) -> Result<RenderedConfig, RenderError> {
    let tenant_name = tenant
        .metadata
        .name
        .as_deref()
        .ok_or(RenderError::UnnamedTenant)?;
    let mut env = EnvVars::default();

    let inbox_token = env.secret(
        "INBOX_TOKEN".into(),
        &SecretKeyRef {
            name: CREDENTIALS_SECRET.into(),
            key: INBOX_TOKEN_KEY.into(),
        },
    )?;
    let mut config = Config::new(tenant_name, &site.data_dir, inbox_token);
    config.listen = site.listen;
    config.tenant.display_name = tenant.spec.display_name.clone();

    let agent = &tenant.spec.agent;
    let plan = tenant.spec.plan.defaults();
    config.agent.default_mode = match agent.default_mode {
        AgentMode::Off => GatewayAgentMode::Off,
        AgentMode::Draft => GatewayAgentMode::Draft,
        AgentMode::Autopilot => GatewayAgentMode::Autopilot,
    };
    if let Some(model) = agent.model.as_ref().or(site.default_model.as_ref()) {
        let mut rendered = ModelConfig::new(&model.base_url, &model.model);
        if let Some(key) = &model.api_key_secret_ref {
            rendered.api_key = Some(env.secret("MODEL_API_KEY".into(), key)?);
        }
        if let Some(field) = model.token_limit_field {
            rendered.token_limit_field = match field {
                TokenLimitField::MaxCompletionTokens => {
                    gateway::TokenLimitField::MaxCompletionTokens
                }
                TokenLimitField::MaxTokens => gateway::TokenLimitField::MaxTokens,
            };
        }
        config.agent.model = Some(rendered);
    }
    let positive = |value: i64, field: &str| {
        u64::try_from(value)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| RenderError::Tenant {
                tenant: tenant_name.to_string(),
                message: format!("{field} must be positive, not {value}"),
            })
    };
    config.agent.tokens_per_run = match agent.tokens_per_run {
        Some(tokens) => positive(tokens.into(), "agent.tokensPerRun")?,
        None => plan.tokens_per_run,
    };
    config.agent.tokens_per_day = match agent.tokens_per_day {
        Some(tokens) => positive(tokens, "agent.tokensPerDay")?,
        None => plan.tokens_per_day,
    };
    config.agent.max_concurrent_runs = match agent.max_concurrent_runs {
        // At most 64 by the schema, so it fits any usize.
        Some(runs) => positive(runs.into(), "agent.maxConcurrentRuns")? as usize,
        None => plan.max_concurrent_runs,
    };
    if let Some(tools) = &agent.tools {
        config.agent.tools = tools.iter().map(|&tool| tool_name(tool)).collect();
    }

    let namespace = tenant_namespace(tenant_name);
    let mut live: Vec<&Connection> = connections
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .collect();
    // Sorted, so that the same Connections always render the same text (and config hash).
    live.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    config.channels.webchat.enabled = false;
    let mut names = BTreeSet::new();
    let mut unsupported = Vec::new();
    for connection in live {
        let Some(name) = connection.metadata.name.clone() else {
            return Err(RenderError::Connection {
                connection: "(unnamed)".into(),
                message: "has no metadata.name".into(),
            });
        };
        let bad = |message: String| RenderError::Connection {
            connection: name.clone(),
            message,
        };
        if let Some(theirs) = connection.metadata.namespace.as_deref()
            && theirs != namespace
        {
            return Err(bad(format!(
                "is in namespace {theirs}, not the tenant's namespace {namespace}"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(bad("is given twice".into()));
        }
        let spec = &connection.spec;
        let unsupported_because = |reason, message| Unsupported {
            connection: name.clone(),
            reason,
            message,
        };
        match spec.type_ {
            ChannelType::Webchat => config.channels.webchat.enabled = true,
            ChannelType::Telegram => {
                if spec.mode != ConnectionMode::Cloud {
                    return Err(bad("telegram connects only in mode cloud".into()));
                }
                let settings = spec.telegram.clone().unwrap_or_default();
                let webhook_url = match (settings.delivery, &site.webhook_base_url) {
                    (TelegramDelivery::Polling, _) => None,
                    (TelegramDelivery::Webhook, Some(url)) => Some(url.as_str()),
                    (TelegramDelivery::Webhook, None) => {
                        unsupported.push(unsupported_because(
                            "WebhookNotAvailable",
                            "webhook delivery needs a public URL, which this gateway does not \
                             have; use delivery polling"
                                .into(),
                        ));
                        continue;
                    }
                };
                let telegram = telegram(
                    &name,
                    spec.credentials.as_ref(),
                    &settings,
                    webhook_url,
                    site,
                    &mut env,
                )?;
                config.connections.push(ConnectionConfig::Telegram(telegram));
            }
            ChannelType::Discord | ChannelType::Slack | ChannelType::Teams => {
                unsupported.push(unsupported_because(
                    "ConnectorNotAvailable",
                    format!("the gateway has no {} connector yet", channel_name(spec.type_)),
                ))
            }
            ChannelType::Whatsapp | ChannelType::Imessage | ChannelType::Signal => {
                unsupported.push(unsupported_because(
                    "BridgeNotAvailable",
                    format!(
                        "{} reaches the gateway through the bridge ingress, which is not available yet",
                        channel_name(spec.type_)
                    ),
                ))
            }
        }
    }

    let yaml = config.to_yaml()?;
    Ok(RenderedConfig {
        config,
        yaml,
        secret_env: env.into_sorted(),
        unsupported,
    })
}

/// The Telegram connection of the telegram Connection `name`, receiving updates at
/// `webhook_url` if it has one, else polling.
fn telegram(
    name: &str,
    credentials: Option<&CredentialsRef>,
    settings: &TelegramSettings,
    webhook_url: Option<&str>,
    site: &RenderSite,
    env: &mut EnvVars,
) -> Result<TelegramConfig, RenderError> {
    let bad = |message: &str| RenderError::Connection {
        connection: name.to_string(),
        message: message.to_string(),
    };
    if !is_dns_label(name) || name == WEBCHAT_CONNECTION {
        return Err(bad(
            "a telegram Connection's name must be a DNS label other than webchat",
        ));
    }
    let credentials = credentials
        .ok_or_else(|| bad("type telegram needs credentials (a Secret with the bot token)"))?;
    let from_credentials = |key: &str| SecretKeyRef {
        name: credentials.secret_name.clone(),
        key: key.to_string(),
    };
    // Upper snake case keeps names apart: a DNS label has no '_' of its own, and every
    // name ends in a role no other role ends in.
    let stem = format!("CONNECTION_{}", name.to_ascii_uppercase().replace('-', "_"));
    let token = env.secret(
        format!("{stem}_TOKEN"),
        &from_credentials(&credentials.token_key),
    )?;
    let mut telegram = TelegramConfig::new(name, token);
    telegram.api_base = settings
        .api_base
        .clone()
        .unwrap_or_else(|| site.telegram_api_base.clone());
    if let Some(public_url) = webhook_url {
        let key = credentials
            .webhook_secret_key
            .as_deref()
            .ok_or_else(|| bad("telegram webhook delivery needs credentials.webhookSecretKey"))?;
        let secret = env.secret(format!("{stem}_WEBHOOK_SECRET"), &from_credentials(key))?;
        telegram.mode = gateway::TelegramMode::Webhook;
        telegram.webhook = Some(TelegramWebhook::new(
            public_url.trim_end_matches('/'),
            secret,
        ));
    }
    telegram.dm_policy = match settings.dm_policy {
        DmPolicy::Pairing => gateway::DmPolicy::Pairing,
        DmPolicy::Allowlist => gateway::DmPolicy::Allowlist,
        DmPolicy::Open => gateway::DmPolicy::Open,
        DmPolicy::Disabled => gateway::DmPolicy::Disabled,
    };
    if let Some(max) = settings.max_pending_pairings {
        telegram.max_pending_pairings = max;
    }
    telegram.allow_from = settings.allow_from.clone();
    telegram.group_policy = match settings.group_policy {
        GroupPolicy::Allowlist => gateway::GroupPolicy::Allowlist,
        GroupPolicy::Open => gateway::GroupPolicy::Open,
        GroupPolicy::Disabled => gateway::GroupPolicy::Disabled,
    };
    telegram.allow_groups = settings.allow_groups.clone();
    Ok(telegram)
}

/// The placeholders handed out so far.
#[derive(Default)]
struct EnvVars(Vec<SecretEnv>);

impl EnvVars {
    /// A placeholder for `MOLTBOT_SECRET_{name}`, read from `source`.
    fn secret(&mut self, name: String, source: &SecretKeyRef) -> Result<Secret, ConfigError> {
        let env = format!("{ENV_PREFIX}{name}");
        let placeholder = Secret::placeholder(&env)?;
        self.0.push(SecretEnv {
            env,
            secret_name: source.name.clone(),
            key: source.key.clone(),
        });
        Ok(placeholder)
    }

    fn into_sorted(mut self) -> Vec<SecretEnv> {
        self.0.sort();
        self.0
    }
}

fn tool_name(tool: AgentTool) -> ToolName {
    match tool {
        AgentTool::SearchMessages => ToolName::SearchMessages,
        AgentTool::RememberFact => ToolName::RememberFact,
        AgentTool::SetFollowUp => ToolName::SetFollowUp,
        AgentTool::SummarizeConversation => ToolName::SummarizeConversation,
    }
}

fn channel_name(channel: ChannelType) -> &'static str {
    match channel {
        ChannelType::Webchat => "webchat",
        ChannelType::Telegram => "telegram",
        ChannelType::Discord => "discord",
        ChannelType::Slack => "slack",
        ChannelType::Teams => "teams",
        ChannelType::Whatsapp => "whatsapp",
        ChannelType::Imessage => "imessage",
        ChannelType::Signal => "signal",
    }
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}
