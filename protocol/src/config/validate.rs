//! The rules a config must follow: a loaded one all of them, one being rendered those of
//! everything but its secrets. Each refusal names its key.

use std::collections::BTreeSet;
use std::fmt;

use super::{
    AgentConfig, Config, ConfigError, ConnectionConfig, MAX_PENDING_PAIRINGS, TelegramConfig,
    TelegramMode, WEBCHAT_CONNECTION,
};

impl Config {
    /// Every rule: the settings' and the secrets'.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_settings()?;
        self.validate_secrets()
    }

    /// The rules of everything but the secrets, which a renderer holds only as placeholders.
    pub(super) fn validate_settings(&self) -> Result<(), ConfigError> {
        if !is_dns_label(&self.tenant.id) {
            return Err(ConfigError::invalid(
                "tenant.id",
                "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
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
        let mut names = BTreeSet::new();
        for (i, connection) in self.connections.iter().enumerate() {
            let key = format!("connections[{i}]");
            let name = connection.name();
            if !is_dns_label(name) || name == WEBCHAT_CONNECTION {
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
                ConnectionConfig::Telegram(telegram) => telegram.validate_settings(&key)?,
            }
        }
        self.agent.validate()
    }

    /// The rules of the secrets' values, which only a loaded config holds.
    fn validate_secrets(&self) -> Result<(), ConfigError> {
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
        for (i, connection) in self.connections.iter().enumerate() {
            match connection {
                ConnectionConfig::Telegram(telegram) => {
                    telegram.validate_secrets(&format!("connections[{i}]"))?
                }
            }
        }
        Ok(())
    }
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
    match url::Url::parse(value) {
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
    fn validate_settings(&self, key: &str) -> Result<(), ConfigError> {
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
        check_range(
            &format!("{key}.max_pending_pairings"),
            self.max_pending_pairings,
            *MAX_PENDING_PAIRINGS.start(),
            *MAX_PENDING_PAIRINGS.end(),
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

    fn validate_secrets(&self, key: &str) -> Result<(), ConfigError> {
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
        if let Some(webhook) = &self.webhook {
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
