//! The config file contract: substitution, overrides, errors that name the key, and
//! rendering a config built in code so that the gateway reads it back unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use moltbot_protocol::config::{
    AgentConfig, Config, ConfigError, ConnectionConfig, DmPolicy, GroupPolicy, Limits, LogConfig,
    LogFormat, ModelConfig, Secret, StoreConfig, Synchronous, TelegramConfig, TelegramMode,
    TelegramRateLimit, TelegramWebhook, TokenLimitField, ToolName,
};
use moltbot_protocol::inbox::AgentMode;

const MINIMAL: &str = "tenant:\n  id: acme\ndata_dir: /tmp/x\nauth:\n  inbox_token: ${TOKEN}\n";

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn load(yaml: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_yaml(yaml, Path::new("test.yaml"), &env(pairs))
}

fn error_text(yaml: &str, pairs: &[(&str, &str)]) -> String {
    load(yaml, pairs)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn defaults_fill_everything_but_the_essentials() {
    let config = load(MINIMAL, &[("TOKEN", "0123456789abcdef")]).unwrap();
    assert_eq!(config.tenant.id, "acme");
    assert_eq!(config.auth.inbox_token.expose(), "0123456789abcdef");
    assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.limits.max_body_bytes, 1 << 20);
    assert_eq!(config.limits.shutdown_grace, Duration::from_secs(10));
    assert_eq!(config.store.synchronous, Synchronous::Full);
    assert!(config.channels.webchat.enabled);
    assert_eq!(config.log.format, LogFormat::Auto);
    assert!(
        !format!("{config:?}").contains("0123456789abcdef"),
        "Debug never shows the token"
    );
}

#[test]
fn substitution_defaults_escapes_and_typed_values() {
    let yaml = "tenant:\n  id: ${TENANT:-fallback}\ndata_dir: ${HOME_DIR}/data\nauth:\n  inbox_token: \"${TOKEN}\"\n\
                limits:\n  max_body_bytes: ${MAX}\n  shutdown_grace: 1m 30s\nlog:\n  level: \"$$literal\"\n";
    let config = Config::from_yaml(
        &yaml.replace("$$literal", "info"),
        Path::new("t.yaml"),
        &env(&[
            ("TOKEN", "abc: #not-yaml-{x}"),
            ("HOME_DIR", "/srv"),
            ("MAX", "4096"),
        ]),
    );
    // A secret with YAML syntax in it stays one string (substitution is on values, not text)…
    let error = config
        .expect_err("but ':' '#' '{' are not token characters")
        .to_string();
    assert!(error.starts_with("auth.inbox_token:"), "{error}");
    let config = load(
        yaml,
        &[
            ("TOKEN", "0123456789abcdef"),
            ("HOME_DIR", "/srv"),
            ("MAX", "4096"),
        ],
    );
    let error = config
        .expect_err("$$literal is not a log filter")
        .to_string();
    assert!(error.starts_with("log.level:"), "{error}");
    let config = load(
        &yaml.replace("$$literal", "debug"),
        &[
            ("TOKEN", "0123456789abcdef"),
            ("HOME_DIR", "/srv"),
            ("MAX", "4096"),
        ],
    )
    .unwrap();
    assert_eq!(config.tenant.id, "fallback");
    assert_eq!(config.data_dir, Path::new("/srv/data"));
    assert_eq!(
        config.limits.max_body_bytes, 4096,
        "a substituted number is a number"
    );
    assert_eq!(config.limits.shutdown_grace, Duration::from_secs(90));
    let escaped = load(
        &format!("{MINIMAL}tenant:\n  id: a\n  display_name: costs $$5\n").replacen(
            "tenant:\n  id: acme\n",
            "",
            1,
        ),
        &[("TOKEN", "0123456789abcdef")],
    )
    .unwrap();
    assert_eq!(escaped.tenant.display_name.as_deref(), Some("costs $5"));
}

#[test]
fn environment_overrides_any_key() {
    let config = load(
        MINIMAL,
        &[
            ("TOKEN", "0123456789abcdef"),
            ("MOLTBOT_GATEWAY__LISTEN", "0.0.0.0:9999"),
            ("MOLTBOT_GATEWAY__LIMITS__MAX_BODY_BYTES", "2048"),
            ("MOLTBOT_GATEWAY__CHANNELS__WEBCHAT__ENABLED", "false"),
            ("MOLTBOT_GATEWAY__AUTH__INBOX_TOKEN", "overridden-token-123"),
            ("MOLTBOT_GATEWAY__STORE__SYNCHRONOUS", "normal"),
        ],
    )
    .unwrap();
    assert_eq!(config.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(config.limits.max_body_bytes, 2048);
    assert!(!config.channels.webchat.enabled);
    assert_eq!(config.auth.inbox_token.expose(), "overridden-token-123");
    assert_eq!(config.store.synchronous, Synchronous::Normal);
    // An all-digit token stays a string.
    let config = load(
        MINIMAL,
        &[
            ("TOKEN", "x"),
            ("MOLTBOT_GATEWAY__AUTH__INBOX_TOKEN", "12345678901234567890"),
        ],
    )
    .unwrap();
    assert_eq!(config.auth.inbox_token.expose(), "12345678901234567890");
}

#[test]
fn every_error_names_its_key() {
    let token = [("TOKEN", "0123456789abcdef")];
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            MINIMAL.into(),
            vec![],
            "auth.inbox_token: environment variable TOKEN is not set",
        ),
        (
            MINIMAL.replace("${TOKEN}", "${TOKEN"),
            vec![],
            "auth.inbox_token: unterminated",
        ),
        (
            MINIMAL.into(),
            vec![("TOKEN", "short")],
            "auth.inbox_token: must be at least 16",
        ),
        (
            MINIMAL.replace("acme", "Not_A_Label"),
            token.to_vec(),
            "tenant.id: must be a DNS label",
        ),
        (
            format!("{MINIMAL}listen: nowhere\n"),
            token.to_vec(),
            "listen: invalid socket address",
        ),
        (
            format!("{MINIMAL}limits:\n  max_body_bytes: lots\n"),
            token.to_vec(),
            "limits.max_body_bytes: invalid digit",
        ),
        (
            format!("{MINIMAL}limits:\n  max_body_bytes: 10\n"),
            token.to_vec(),
            "limits.max_body_bytes: must be between",
        ),
        (
            format!("{MINIMAL}limits:\n  shutdown_grace: soon\n"),
            token.to_vec(),
            "limits.shutdown_grace:",
        ),
        (
            format!("{MINIMAL}limits:\n  max_bodybytes: 10\n"),
            token.to_vec(),
            "limits.max_bodybytes: unknown field",
        ),
        (
            format!("{MINIMAL}store:\n  synchronous: sometimes\n"),
            token.to_vec(),
            "store.synchronous:",
        ),
        (
            format!(
                "{MINIMAL}agent:\n  model:\n    base_url: http://127.0.0.1:1/v1\n    model: m\n    token_limit_field: max_output_tokens\n"
            ),
            token.to_vec(),
            "agent.model.token_limit_field:",
        ),
        (
            format!("{MINIMAL}channels:\n  webchat:\n    enabled: maybe\n"),
            token.to_vec(),
            "channels.webchat.enabled:",
        ),
        (
            MINIMAL.replace("data_dir: /tmp/x\n", ""),
            token.to_vec(),
            "missing field `data_dir`",
        ),
        (
            "- a\n- b\n".into(),
            vec![],
            "(root): the config must be a mapping",
        ),
        (
            MINIMAL.into(),
            vec![
                ("TOKEN", "0123456789abcdef"),
                ("MOLTBOT_GATEWAY__LIMITS__NOPE", "1"),
            ],
            "limits.nope: unknown field",
        ),
    ];
    for (yaml, env, expected) in cases {
        let text = error_text(&yaml, &env);
        assert!(text.contains(expected), "expected {expected:?} in {text:?}");
        assert!(
            !text.contains("0123456789abcdef"),
            "errors never echo the token: {text}"
        );
    }
    let yaml_error = error_text("tenant: [unclosed\n", &[]);
    assert!(yaml_error.contains("not valid YAML"), "{yaml_error}");
}

/// Asserts that neither the error's Display nor its Debug holds four characters in a row
/// of `secret`.
#[track_caller]
fn assert_hides(error: &ConfigError, secret: &str) {
    for text in [error.to_string(), format!("{error:?}")] {
        for part in secret.as_bytes().windows(4) {
            let part = std::str::from_utf8(part).expect("ASCII");
            assert!(!text.contains(part), "{part:?} of the secret in {text}");
        }
    }
}

#[test]
fn errors_never_show_a_secret() {
    const SECRET: &str = "Zq8xWv3kPm7Jr2Nb";
    const NUMBER: &str = "98765432109876543";
    let huge = "9".repeat(400);
    let cases = [
        // serde's message would quote the number it found.
        (
            MINIMAL.replace("${TOKEN}", NUMBER),
            NUMBER,
            "auth.inbox_token: must be a string",
        ),
        // Also inside a connection, which serde reads through a buffer (it is tagged).
        (
            MINIMAL.replace("${TOKEN}", "0123456789abcdef")
                + &format!("connections:\n- type: telegram\n  name: bot\n  token: {NUMBER}\n"),
            NUMBER,
            "must be a string",
        ),
        (
            MINIMAL.replace("${TOKEN}", &format!("\"{SECRET}${{X\"")),
            SECRET,
            "auth.inbox_token: unterminated ${",
        ),
        // The parser's message would show the lines around the error.
        (
            format!("tenant: [unclosed\nauth:\n  inbox_token: {SECRET}\ndata_dir: /x\n"),
            SECRET,
            "line 2, column 5: ",
        ),
        // And quote a number too large to read.
        (
            MINIMAL.replace("${TOKEN}", &huge),
            &huge,
            "line 5, column 16: ",
        ),
    ];
    for (yaml, secret, expected) in cases {
        let error = load(&yaml, &[]).expect_err("refused");
        assert_hides(&error, secret);
        assert!(
            error.to_string().contains(expected),
            "{expected:?} in {error}"
        );
    }
}

/// A secret value, as only loading makes one.
fn secret(text: &str) -> Secret {
    serde_json::from_value(serde_json::Value::String(text.into())).unwrap()
}

fn placeholder(name: &str) -> Secret {
    Secret::placeholder(name).unwrap()
}

fn reload(config: &Config, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let text = config.to_yaml().expect("renders");
    load(&text, pairs)
}

const BOT_TOKEN: &str = "123456:bot-token_value";

/// The secrets of [`everything_set`]: the environment variable of each, and its value.
const INBOX: (&str, &str) = ("MOLTBOT_INBOX_TOKEN", "0123456789abcdef");
const BOT: (&str, &str) = ("TELEGRAM_BOT_TOKEN", BOT_TOKEN);
const HOOK: (&str, &str) = ("TELEGRAM_WEBHOOK_SECRET", "hook_secret-1");
const OTHER_BOT: (&str, &str) = ("OTHER_BOT_TOKEN", "7:other");
const API_KEY: (&str, &str) = ("OPENAI_API_KEY", "sk-key");
const SECRETS: [(&str, &str); 5] = [INBOX, BOT, HOOK, OTHER_BOT, API_KEY];

/// A secret as a renderer writes it.
fn as_placeholder((name, _): (&str, &str)) -> Secret {
    placeholder(name)
}

/// A secret as the gateway loads it.
fn as_value((_, value): (&str, &str)) -> Secret {
    secret(value)
}

#[test]
fn code_built_configs_get_the_defaults_a_file_gets() {
    let yaml = format!(
        "{MINIMAL}connections:\n- type: telegram\n  name: bot\n  token: \"{BOT_TOKEN}\"\n\
         agent:\n  model:\n    base_url: http://127.0.0.1:1/v1\n    model: pi\n"
    );
    let loaded = load(&yaml, &[("TOKEN", "0123456789abcdef")]).unwrap();

    let mut built = Config::new("acme", "/tmp/x", secret("0123456789abcdef"));
    built
        .connections
        .push(ConnectionConfig::Telegram(TelegramConfig::new(
            "bot",
            secret(BOT_TOKEN),
        )));
    built.agent.model = Some(ModelConfig::new("http://127.0.0.1:1/v1", "pi"));
    assert_eq!(built, loaded);

    let webhook: TelegramWebhook =
        serde_saphyr::from_str("public_url: https://example.com\nsecret: s3cret\n").unwrap();
    assert_eq!(
        TelegramWebhook::new("https://example.com", secret("s3cret")),
        webhook
    );
}

/// Every key away from its default, and `$` in every string that may hold one; `secret`
/// makes each of [`SECRETS`].
fn everything_set(secret: fn((&str, &str)) -> Secret) -> Config {
    let mut config = Config::new("acme-2", "/srv/$HOME/${NOT_A_VAR}", secret(INBOX));
    config.tenant.display_name = Some("Acme $$ Co ${X}".into());
    config.listen = "0.0.0.0:9090".parse().unwrap();
    config.limits = Limits {
        max_body_bytes: 4096,
        max_streams: 3,
        shutdown_grace: Duration::from_millis(1500),
    };
    config.store = StoreConfig {
        synchronous: Synchronous::Normal,
        max_batch: 17,
        read_connections: 2,
    };
    config.channels.webchat.enabled = false;
    let mut bot = TelegramConfig::new("bot", secret(BOT));
    bot.api_base = "http://127.0.0.1:8081/$x".into();
    bot.mode = TelegramMode::Webhook;
    let mut webhook = TelegramWebhook::new("https://example.com/${Y}", secret(HOOK));
    webhook.max_connections = 7;
    bot.webhook = Some(webhook);
    bot.poll_timeout = Duration::from_secs(0);
    bot.request_timeout = Duration::new(90, 250_000_000);
    bot.dm_policy = DmPolicy::Open;
    bot.max_pending_pairings = 25;
    bot.allow_from = vec!["42".into(), "12345678901".into()];
    bot.group_policy = GroupPolicy::Disabled;
    bot.allow_groups = vec!["-1001".into()];
    bot.rate_limit = TelegramRateLimit {
        per_chat_per_second: 2,
        per_group_per_minute: 30,
        global_per_second: 40,
    };
    config.connections.push(ConnectionConfig::Telegram(bot));
    config
        .connections
        .push(ConnectionConfig::Telegram(TelegramConfig::new(
            "other",
            secret(OTHER_BOT),
        )));
    let mut model = ModelConfig::new("https://models.example/$v1", "pi-$mall");
    model.api_key = Some(secret(API_KEY));
    model.timeout = Duration::from_secs(3725);
    model.max_retries = 5;
    model.token_limit_field = TokenLimitField::MaxTokens;
    model.prompt_price_per_million = 0.15;
    model.completion_price_per_million = 2.5;
    config.agent = AgentConfig {
        default_mode: AgentMode::Autopilot,
        model: Some(model),
        system_prompt: "Line one costs $5.\n  Line two: ${NOT_A_VAR} and $$, # not a comment\n"
            .into(),
        context_tokens: 9000,
        max_reply_tokens: 500,
        tokens_per_run: 1234,
        tokens_per_day: u64::MAX,
        budget_exhausted_reply: "true".into(),
        tools: vec![ToolName::SetFollowUp, ToolName::SearchMessages],
        max_tool_rounds: 0,
        max_concurrent_runs: 1,
        require_mention_in_groups: false,
    };
    config.log = LogConfig {
        level: "moltbot_gateway=debug,odd$$target=trace,warn".into(),
        format: LogFormat::Json,
    };
    config
}

/// Every key of a config has a row in the README's configuration table: the key's name
/// is among the names in the table's first column.
#[test]
fn the_readme_documents_every_key() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("the README");
    let table = readme
        .split_once("| key | default | reload | meaning |")
        .and_then(|(_, rest)| rest.split("\n\n").next())
        .expect("the configuration table");
    let documented: BTreeSet<&str> = table
        .lines()
        .filter_map(|row| row.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2))
        .flat_map(|key| key.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|name| !name.is_empty())
        .collect();
    let config = serde_json::to_value(everything_set(as_placeholder)).unwrap();
    let mut keys = BTreeSet::new();
    key_names(&config, &mut keys);
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !documented.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the README does not document: {missing:?}"
    );
}

/// The name of every key in `value`, at every depth.
fn key_names(value: &serde_json::Value, names: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                names.insert(key.clone());
                key_names(value, names);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| key_names(item, names)),
        _ => {}
    }
}

#[test]
fn a_config_built_in_code_renders_and_reads_back_equal() {
    let loaded = reload(&everything_set(as_placeholder), &SECRETS).unwrap();
    assert_eq!(loaded, everything_set(as_value));
    assert_eq!(
        reload(&Config::new("a", "d", as_placeholder(INBOX)), &SECRETS).unwrap(),
        Config::new("a", "d", as_value(INBOX)),
        "an all-defaults config too"
    );
}

#[test]
fn durations_are_written_in_the_human_form() {
    let text = everything_set(as_placeholder).to_yaml().unwrap();
    for line in [
        "shutdown_grace: 1s 500ms",
        "request_timeout: 1m 30s 250ms",
        "poll_timeout: 0s",
        "timeout: 1h 2m 5s",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
}

#[test]
fn placeholders_survive_rendering_and_are_substituted_at_load() {
    let config = everything_set(as_placeholder);
    let text = config.to_yaml().unwrap();
    for (name, _) in SECRETS {
        let written = format!("${{{name}}}");
        assert!(
            text.contains(&written) && !text.contains(&format!("${written}")),
            "{written} is written as a placeholder, not escaped:\n{text}"
        );
    }
    let missing = reload(&config, &SECRETS[1..]).expect_err("the inbox token is unset");
    assert!(
        matches!(&missing, ConfigError::MissingEnv { key, var }
            if key == "auth.inbox_token" && var == "MOLTBOT_INBOX_TOKEN"),
        "{missing}"
    );
}

#[test]
fn a_config_the_gateway_would_refuse_is_refused_at_render_time() {
    type Case = (fn(&mut Config), &'static str);
    let cases: [Case; 4] = [
        (
            |c| c.tenant.id = "${HOME}".into(),
            "tenant.id: must be a DNS label",
        ),
        (
            |c| {
                let ConnectionConfig::Telegram(bot) = &mut c.connections[0];
                bot.max_pending_pairings = 0;
            },
            "connections[0].max_pending_pairings: must be between 1 and 1000",
        ),
        (
            |c| {
                let ConnectionConfig::Telegram(bot) = &mut c.connections[0];
                bot.allow_from.push("${USER_ID}".into());
            },
            "connections[0].allow_from:",
        ),
        (
            |c| c.agent.max_tool_rounds = 17,
            "agent.max_tool_rounds: must be between 0 and 16",
        ),
    ];
    for (break_it, expected) in cases {
        let mut config = everything_set(as_placeholder);
        break_it(&mut config);
        let error = config.to_yaml().expect_err(expected).to_string();
        assert!(error.starts_with(expected), "{expected:?}: {error}");
    }
}

#[test]
fn a_loaded_config_is_never_written_out() {
    let loaded = reload(&everything_set(as_placeholder), &SECRETS).unwrap();
    let rendered = loaded.to_yaml().expect_err("it holds secret values");
    assert!(
        rendered
            .to_string()
            .starts_with("auth.inbox_token: a secret value is never written out"),
        "{rendered}"
    );
    let json = serde_json::to_value(&loaded).expect_err("it holds secret values");
    assert!(
        json.to_string()
            .contains("a secret value is never written out"),
        "{json}"
    );
    for text in [
        rendered.to_string(),
        format!("{rendered:?}"),
        json.to_string(),
        format!("{json:?}"),
    ] {
        for (_, value) in SECRETS {
            assert!(!text.contains(value), "{value} in {text}");
        }
    }
    // Placeholders are what a config is written out with.
    serde_json::to_value(everything_set(as_placeholder)).expect("placeholders are written");
}

#[test]
fn placeholder_names_are_environment_variable_names() {
    assert_eq!(placeholder("_TOKEN_2").expose(), "${_TOKEN_2}");
    for bad in ["", "2X", "A-B", "A}B", "A:-default", "A B", "É"] {
        let error = Secret::placeholder(bad).expect_err(bad);
        assert!(
            matches!(&error, ConfigError::EnvName { name } if name == bad),
            "{error}"
        );
    }
}

#[test]
fn rendering_never_shows_secrets_in_debug_and_names_an_unwritable_key() {
    let debug = format!("{:?}", everything_set(as_value));
    for (_, value) in SECRETS {
        assert!(!debug.contains(value), "Debug shows {value}: {debug}");
    }
    let mut config = everything_set(as_placeholder);
    config.limits.shutdown_grace = Duration::MAX;
    let error = config
        .to_yaml()
        .expect_err("too long for a signed duration");
    assert!(
        error.to_string().starts_with("limits.shutdown_grace:"),
        "{error}"
    );
}
