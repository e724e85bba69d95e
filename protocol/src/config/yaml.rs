//! The file's text: reading it (parse, substitute, override, deserialise, validate) and
//! writing it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::escape::Escaped;
use super::{Config, ConfigError, ENV_OVERRIDE_PREFIX};

impl Config {
    /// Parses `text` (the file at `path`, which errors name), substitutes placeholders and
    /// applies overrides from `env`, deserialises and validates. The environment is a
    /// parameter so that tests need not touch the process's.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let config = read(text, path, env)?;
        config.validate()?;
        Ok(config)
    }

    /// The YAML text of this config, which [`from_yaml`](Self::from_yaml) reads back as an
    /// equal config, with the placeholders substituted. Every key that has a value is
    /// written, defaults included, so the file shows everything the gateway will use. A
    /// config the gateway would refuse for anything but its secrets is refused here, and so
    /// is one holding a secret value rather than a placeholder. (An empty
    /// `agent.model.api_key` reads back as none.)
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        self.validate_settings()?;
        render(self)
    }
}

/// The config in `text`, unvalidated: parsed, substituted, overridden and deserialised.
fn read(text: &str, path: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let mut tree: Value = serde_saphyr::from_str(text).map_err(|e| syntax_error(path, &e))?;
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
    let mut config: Config = serde_path_to_error::deserialize(tree).map_err(keyed)?;
    // `${OPENAI_API_KEY:-}` with nothing set means no key (a local model server).
    if let Some(model) = &mut config.agent.model
        && model
            .api_key
            .as_ref()
            .is_some_and(|k| k.expose().is_empty())
    {
        model.api_key = None;
    }
    Ok(config)
}

/// The text of `config`, unvalidated, with every string escaped for [`read`].
fn render(config: &Config) -> Result<String, ConfigError> {
    let mut text = String::new();
    let mut serializer = serde_saphyr::Serializer::new(&mut text);
    serde_path_to_error::serialize(&Escaped(config), &mut serializer).map_err(keyed)?;
    Ok(text)
}

/// A YAML syntax error as its place and the parser's reason. serde-saphyr's own message
/// shows the lines around the place, and some of its reasons quote the text: either can be a
/// secret.
fn syntax_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    use serde_saphyr::{Error, ExternalMessageSource};
    let reason = match e.without_snippet() {
        // The parser's reasons say what it expected or found, never the text.
        Error::ExternalMessage { source, msg, .. }
            if matches!(**source, ExternalMessageSource::Parser(_)) =>
        {
            msg.as_str()
        }
        Error::DuplicateMappingKey { .. } => "duplicate key",
        Error::NonFiniteFloat { .. } => "a number too large to read (quote it if it is text)",
        Error::UnknownAnchor { .. } => "alias of an unknown anchor",
        Error::Eof { .. } => "unexpected end of file",
        _ => "not YAML",
    };
    let message = match e.location() {
        Some(at) => format!("line {}, column {}: {reason}", at.line(), at.column()),
        None => reason.to_owned(),
    };
    ConfigError::Yaml {
        path: path.to_path_buf(),
        message,
    }
}

/// A serde error, named by the key it is about.
fn keyed<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> ConfigError {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        ConnectionConfig, ModelConfig, Secret, SecretForm, TelegramConfig, TelegramWebhook,
    };

    /// A config with every string field present; `secret` makes each secret from a name.
    fn config(secret: fn(&str) -> Secret) -> Config {
        let mut config = Config::new("acme", "/data", secret("INBOX"));
        let mut bot = TelegramConfig::new("bot", secret("BOT"));
        bot.webhook = Some(TelegramWebhook::new("https://example.com", secret("HOOK")));
        config.connections.push(ConnectionConfig::Telegram(bot));
        config.agent.model = Some(ModelConfig::new("https://models.example/v1", "pi"));
        config
    }

    fn placeholder(name: &str) -> Secret {
        Secret::placeholder(name).expect("a variable name")
    }

    /// The value the environment below gives `name`.
    fn value(name: &str) -> Secret {
        Secret(SecretForm::Value(name.to_lowercase()))
    }

    fn telegram(config: &mut Config) -> &mut TelegramConfig {
        let ConnectionConfig::Telegram(telegram) = &mut config.connections[0];
        telegram
    }

    fn model(config: &mut Config) -> &mut ModelConfig {
        config.agent.model.as_mut().expect("a model")
    }

    /// How to set each string field of a config.
    fn string_fields() -> [fn(&mut Config, &str); 13] {
        [
            |c, s| c.tenant.id = s.into(),
            |c, s| c.tenant.display_name = Some(s.into()),
            |c, s| c.data_dir = s.into(),
            |c, s| telegram(c).name = s.into(),
            |c, s| telegram(c).api_base = s.into(),
            |c, s| telegram(c).webhook.as_mut().expect("a webhook").public_url = s.into(),
            |c, s| telegram(c).allow_from = vec![s.into()],
            |c, s| telegram(c).allow_groups = vec![s.into()],
            |c, s| model(c).base_url = s.into(),
            |c, s| model(c).model = s.into(),
            |c, s| c.agent.system_prompt = s.into(),
            |c, s| c.agent.budget_exhausted_reply = s.into(),
            |c, s| c.log.level = s.into(),
        ]
    }

    /// Every string of up to four of `$`, `{`, `}` and `X` (a variable that is set): each
    /// way a `$` can meet the placeholder syntax.
    fn probes() -> Vec<String> {
        let mut probes = vec![String::new()];
        let mut longest = probes.clone();
        for _ in 0..4 {
            longest = longest
                .iter()
                .flat_map(|p| ['$', '{', '}', 'X'].map(|c| format!("{p}{c}")))
                .collect();
            probes.extend(longest.iter().cloned());
        }
        probes.push("${X:-default}".into());
        probes
    }

    #[test]
    fn every_string_reads_back_as_written() {
        let env: BTreeMap<String, String> = [
            ("INBOX", "inbox"),
            ("BOT", "bot"),
            ("HOOK", "hook"),
            ("X", "substituted"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        // Every field holds the probe at once; the failing field shows in the diff.
        for probe in probes() {
            let mut written = config(placeholder);
            let mut expected = config(value);
            for set in string_fields() {
                set(&mut written, &probe);
                set(&mut expected, &probe);
            }
            let text = render(&written).unwrap_or_else(|e| panic!("{probe:?}: {e}"));
            let read_back = read(&text, Path::new("t.yaml"), &env)
                .unwrap_or_else(|e| panic!("{probe:?} in\n{text}\n{e}"));
            assert_eq!(read_back, expected, "{probe:?}, written as\n{text}");
        }
    }
}
