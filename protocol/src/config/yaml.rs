//! The file's text: reading it (parse, substitute, override, deserialise, validate) and
//! writing it.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

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
        config.validate()?;
        Ok(config)
    }

    /// The YAML text of this config, which [`from_yaml`](Self::from_yaml) reads back as an
    /// equal config. Every key that has a value is written, defaults included, so the file
    /// shows everything the gateway will use. Strings have their `$` doubled so that they read back as
    /// themselves; a [`Secret`](super::Secret) is written raw, so its placeholder is
    /// substituted at load. (An empty `agent.model.api_key` reads back as none.)
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        let mut text = String::new();
        let mut serializer = serde_saphyr::Serializer::new(&mut text);
        serde_path_to_error::serialize(self, &mut serializer).map_err(keyed)?;
        Ok(text)
    }
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
