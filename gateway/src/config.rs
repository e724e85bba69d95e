//! The gateway's side of its config file: reading it with the process's environment, and
//! what a SIGHUP reload may change. The format itself (types, substitution, overrides,
//! validation) is the contract in [`moltbot_protocol::config`], shared with the renderers
//! and re-exported here.

use std::collections::BTreeMap;
use std::path::Path;

pub use moltbot_protocol::config::*;

/// Reads, substitutes, overrides and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // A variable that is not UTF-8 cannot be a string value; `env::vars` would panic on it.
    let env: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .collect();
    Config::from_yaml(&text, path, &env)
}

/// Keys that only take effect at start; a reload that changes them keeps the old value.
pub fn restart_only_changes(current: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if current.tenant.id != new.tenant.id {
        changed.push("tenant.id");
    }
    if current.listen != new.listen {
        changed.push("listen");
    }
    if current.data_dir != new.data_dir {
        changed.push("data_dir");
    }
    if current.store != new.store {
        changed.push("store");
    }
    if current.log.format != new.log.format {
        changed.push("log.format");
    }
    // Connectors start once.
    if current.connections != new.connections {
        changed.push("connections");
    }
    if current.agent.max_concurrent_runs != new.agent.max_concurrent_runs {
        changed.push("agent.max_concurrent_runs");
    }
    changed
}

/// `new` with the restart-only keys taken from `current`: what a reload may apply.
pub fn reloadable_part_of(current: &Config, new: Config) -> Config {
    Config {
        tenant: current.tenant.clone(),
        listen: current.listen,
        data_dir: current.data_dir.clone(),
        store: current.store.clone(),
        connections: current.connections.clone(),
        agent: AgentConfig {
            max_concurrent_runs: current.agent.max_concurrent_runs,
            ..new.agent
        },
        log: LogConfig {
            format: current.log.format,
            ..new.log
        },
        ..new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bot(token_var: &str) -> Config {
        let mut config = Config::new("acme", "/data", Secret::placeholder("INBOX").unwrap());
        let token = Secret::placeholder(token_var).unwrap();
        config
            .connections
            .push(ConnectionConfig::Telegram(TelegramConfig::new(
                "bot", token,
            )));
        config
    }

    #[test]
    fn a_rotated_bot_token_waits_for_a_restart_and_the_rest_applies() {
        let current = with_bot("TOKEN_A");
        assert!(restart_only_changes(&current, &current.clone()).is_empty());

        let mut new = with_bot("TOKEN_B");
        new.auth.inbox_token = Secret::placeholder("ROTATED").unwrap();
        new.agent.max_concurrent_runs = 2;
        new.log.level = "debug".into();
        assert_eq!(
            restart_only_changes(&current, &new),
            ["connections", "agent.max_concurrent_runs"],
            "a secret alone differing counts as a change"
        );
        let applied = reloadable_part_of(&current, new.clone());
        assert_eq!(applied.connections, current.connections);
        assert_eq!(
            applied.agent.max_concurrent_runs,
            current.agent.max_concurrent_runs
        );
        assert_eq!(applied.auth, new.auth);
        assert_eq!(applied.log.level, "debug");
    }
}
