//! The shared config renderer, from the YAML fixtures beside this file: what it renders,
//! that the gateway reads it back, and that it holds no secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use moltbot_crds::{
    Connection, ModelSpec, RenderError, RenderSite, RenderedConfig, SecretEnv, SecretKeyRef,
    gateway_config,
};
use moltbot_protocol::config::{
    Config, ConnectionConfig, DmPolicy, TelegramMode, TokenLimitField, ToolName,
};
use moltbot_protocol::inbox::AgentMode;

#[path = "common/fixture.rs"]
mod fixture;

use fixture::Fixture;

fn fixture(name: &str) -> Fixture {
    Fixture::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

fn site() -> RenderSite {
    RenderSite {
        data_dir: "/var/lib/moltbot".into(),
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        telegram_api_base: "https://api.telegram.org".into(),
        webhook_base_url: Some("https://hooks.example.com/alice/".into()),
        default_model: None,
    }
}

/// What the runtime would put in the gateway's environment.
fn environment(fixture: &Fixture, rendered: &RenderedConfig) -> BTreeMap<String, String> {
    rendered
        .secret_env
        .iter()
        .map(|e| (e.env.clone(), fixture.secret_value(&e.secret_name, &e.key)))
        .collect()
}

fn env(env: &str, secret_name: &str, key: &str) -> SecretEnv {
    SecretEnv {
        env: env.into(),
        secret_name: secret_name.into(),
        key: key.into(),
    }
}

#[test]
fn renders_the_tenant_and_its_connections() {
    let alice = fixture("alice.yaml");
    let rendered = gateway_config(&alice.tenant, &alice.connections, &site()).unwrap();
    let config = &rendered.config;

    assert_eq!(config.tenant.id, "alice");
    assert_eq!(config.tenant.display_name.as_deref(), Some("Alice"));
    assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 8080)));
    assert_eq!(config.data_dir, Path::new("/var/lib/moltbot"));
    assert!(config.channels.webchat.enabled);

    let agent = &config.agent;
    assert_eq!(agent.default_mode, AgentMode::Autopilot);
    let model = agent.model.as_ref().expect("a model");
    assert_eq!(model.base_url, "https://models.example.com/v1");
    assert_eq!(model.model, "pi-large");
    assert_eq!(
        model.api_key.as_ref().map(|k| k.expose()),
        Some("${MOLTBOT_SECRET_MODEL_API_KEY}")
    );
    assert_eq!(model.token_limit_field, TokenLimitField::MaxTokens);
    assert_eq!(agent.tokens_per_run, 30_000);
    assert_eq!(agent.tokens_per_day, 900_000);
    assert_eq!(agent.max_concurrent_runs, 3);
    assert_eq!(
        agent.tools,
        [ToolName::SearchMessages, ToolName::RememberFact]
    );

    // Sorted by name: family-bot, then telegram.
    let [
        ConnectionConfig::Telegram(family),
        ConnectionConfig::Telegram(polling),
    ] = config.connections.as_slice()
    else {
        panic!("two telegram connections: {:?}", config.connections);
    };
    assert_eq!(family.name, "family-bot");
    assert_eq!(family.mode, TelegramMode::Webhook);
    assert_eq!(family.api_base, "http://bot-api.telegram.svc:8081");
    assert_eq!(family.max_pending_pairings, 10);
    let webhook = family.webhook.as_ref().expect("webhook settings");
    assert_eq!(webhook.public_url, "https://hooks.example.com/alice");
    assert_eq!(
        webhook.secret.expose(),
        "${MOLTBOT_SECRET_CONNECTION_FAMILY_BOT_WEBHOOK_SECRET}"
    );
    assert_eq!(polling.name, "telegram");
    assert_eq!(polling.mode, TelegramMode::Polling);
    assert!(polling.webhook.is_none());
    assert_eq!(polling.api_base, "https://api.telegram.org");
    assert_eq!(polling.dm_policy, DmPolicy::Allowlist);
    assert_eq!(polling.allow_from, ["123456789"]);
    assert_eq!(polling.max_pending_pairings, 3, "the gateway's default");
    assert_eq!(polling.allow_groups, ["-100200300"]);

    assert_eq!(
        rendered.secret_env,
        [
            env(
                "MOLTBOT_SECRET_CONNECTION_FAMILY_BOT_TOKEN",
                "family-bot",
                "bot-token"
            ),
            env(
                "MOLTBOT_SECRET_CONNECTION_FAMILY_BOT_WEBHOOK_SECRET",
                "family-bot",
                "hook"
            ),
            env(
                "MOLTBOT_SECRET_CONNECTION_TELEGRAM_TOKEN",
                "telegram-bot",
                "token"
            ),
            env(
                "MOLTBOT_SECRET_INBOX_TOKEN",
                "gateway-credentials",
                "inbox-token"
            ),
            env("MOLTBOT_SECRET_MODEL_API_KEY", "model-key", "api-key"),
        ]
    );
}

#[test]
fn channels_without_a_connector_are_reported_not_refused() {
    let alice = fixture("alice.yaml");
    let rendered = gateway_config(&alice.tenant, &alice.connections, &site()).unwrap();
    let unsupported: Vec<(&str, &str)> = rendered
        .unsupported
        .iter()
        .map(|u| (u.connection.as_str(), u.reason))
        .collect();
    assert_eq!(
        unsupported,
        [
            ("discord", "ConnectorNotAvailable"),
            ("phone", "BridgeNotAvailable")
        ]
    );
    assert!(rendered.unsupported[1].message.contains("whatsapp"));
    assert!(!rendered.yaml.contains("discord") && !rendered.yaml.contains("phone"));
}

#[test]
fn the_gateway_reads_the_rendered_file_back_with_the_reported_environment() {
    let alice = fixture("alice.yaml");
    let rendered = gateway_config(&alice.tenant, &alice.connections, &site()).unwrap();
    let env = environment(&alice, &rendered);
    let loaded = Config::from_yaml(&rendered.yaml, Path::new("gateway.yaml"), &env)
        .unwrap_or_else(|e| panic!("{e}\n{}", rendered.yaml));

    // The loaded config is the rendered one with each placeholder replaced by its value.
    let mut expected = rendered.config.clone();
    expected.auth.inbox_token = loaded.auth.inbox_token.clone();
    assert_eq!(
        loaded.auth.inbox_token.expose(),
        "FAKE-inbox-token-0123456789"
    );
    let model = expected.agent.model.as_mut().unwrap();
    model.api_key = loaded.agent.model.as_ref().unwrap().api_key.clone();
    assert_eq!(
        model.api_key.as_ref().map(|k| k.expose()),
        Some("sk-FAKE-model-api-key")
    );
    for (want, got) in expected.connections.iter_mut().zip(&loaded.connections) {
        let (ConnectionConfig::Telegram(want), ConnectionConfig::Telegram(got)) = (want, got);
        want.token = got.token.clone();
        if let (Some(want), Some(got)) = (&mut want.webhook, &got.webhook) {
            want.secret = got.secret.clone();
        }
    }
    assert_eq!(loaded, expected);
    let ConnectionConfig::Telegram(family) = &loaded.connections[0];
    assert_eq!(family.token.expose(), "222222:FAKE-family-token");
    assert_eq!(
        family.webhook.as_ref().unwrap().secret.expose(),
        "FAKE-family-webhook-secret"
    );
}

#[test]
fn no_secret_value_is_ever_rendered() {
    let alice = fixture("alice.yaml");
    let rendered = gateway_config(&alice.tenant, &alice.connections, &site()).unwrap();
    let values = alice.secret_values();
    assert_eq!(values.len(), 7, "the fixture's secret values");
    let debug = format!("{rendered:?}");
    for value in &values {
        assert!(!rendered.yaml.contains(value), "{value} in the YAML");
        assert!(!debug.contains(value), "{value} in Debug");
    }
}

#[test]
fn env_names_are_valid_and_never_collide() {
    let alice = fixture("alice.yaml");
    // Names a naive `<CONNECTION>_<KEY>` scheme would mix up: `a` + `webhook-secret` and
    // `a-webhook` + `secret`; `inbox` + `token` and the inbox token.
    let mut connections = Vec::new();
    for name in ["a", "a-webhook", "a-webhook-secret", "inbox", "token"] {
        let mut telegram = alice.connections[2].clone();
        telegram.metadata.name = Some(name.into());
        connections.push(telegram);
    }
    let rendered = gateway_config(&alice.tenant, &connections, &site()).unwrap();
    let mut names: Vec<&str> = rendered.secret_env.iter().map(|e| e.env.as_str()).collect();
    assert_eq!(names.len(), 2 * 5 + 2);
    names.dedup();
    assert_eq!(names.len(), 2 * 5 + 2, "{names:?}");
    for name in names {
        assert!(
            name.starts_with("MOLTBOT_SECRET_")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
    }
}

#[test]
fn connection_order_does_not_change_the_output() {
    let alice = fixture("alice.yaml");
    let forwards = gateway_config(&alice.tenant, &alice.connections, &site()).unwrap();
    let mut reversed = alice.connections.clone();
    reversed.reverse();
    let backwards = gateway_config(&alice.tenant, &reversed, &site()).unwrap();
    assert_eq!(forwards, backwards);
}

#[test]
fn unset_fields_follow_the_plan_and_the_site() {
    let bob = fixture("bob.yaml");
    let bare = gateway_config(&bob.tenant, &[], &site()).unwrap();
    let plan = moltbot_crds::Plan::Free.defaults();
    assert_eq!(bare.config.agent.tokens_per_run, plan.tokens_per_run);
    assert_eq!(bare.config.agent.tokens_per_day, plan.tokens_per_day);
    assert_eq!(
        bare.config.agent.max_concurrent_runs,
        plan.max_concurrent_runs
    );
    assert_eq!(bare.config.agent.tools, ToolName::ALL);
    assert_eq!(bare.config.agent.default_mode, AgentMode::Draft);
    assert!(bare.config.agent.model.is_none());
    assert!(
        !bare.config.channels.webchat.enabled,
        "no webchat Connection, no web chat"
    );
    assert_eq!(bare.secret_env.len(), 1, "only the inbox token");

    let mut with_platform_model = site();
    with_platform_model.default_model = Some(ModelSpec {
        base_url: "http://ollama.ai.svc:11434/v1".into(),
        model: "llama".into(),
        api_key_secret_ref: Some(SecretKeyRef {
            name: "platform-model".into(),
            key: "key".into(),
        }),
        token_limit_field: None,
    });
    let defaulted = gateway_config(&bob.tenant, &[], &with_platform_model).unwrap();
    let model = defaulted.config.agent.model.as_ref().unwrap();
    assert_eq!(model.model, "llama");
    assert_eq!(
        model.token_limit_field,
        TokenLimitField::MaxCompletionTokens
    );
    assert!(defaulted.secret_env.contains(&env(
        "MOLTBOT_SECRET_MODEL_API_KEY",
        "platform-model",
        "key"
    )));

    let mut no_tools = bob.tenant.clone();
    no_tools.spec.agent.tools = Some(Vec::new());
    let rendered = gateway_config(&no_tools, &[], &site()).unwrap();
    assert!(rendered.config.agent.tools.is_empty());
}

#[test]
fn webhook_delivery_without_a_public_url_is_reported_and_asks_for_no_secret() {
    let alice = fixture("alice.yaml");
    let mut local = site();
    local.webhook_base_url = None;
    let rendered = gateway_config(&alice.tenant, &alice.connections, &local).unwrap();
    let skipped = rendered
        .unsupported
        .iter()
        .find(|u| u.connection == "family-bot")
        .expect("family-bot is reported");
    assert_eq!(skipped.reason, "WebhookNotAvailable");
    assert_eq!(rendered.config.connections.len(), 1);
    assert!(
        rendered
            .secret_env
            .iter()
            .all(|e| e.secret_name != "family-bot")
    );
}

#[test]
fn connections_being_deleted_are_left_out() {
    let alice = fixture("alice.yaml");
    let mut connections = alice.connections.clone();
    for connection in &mut connections {
        if connection.metadata.name.as_deref() == Some("telegram") {
            connection.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ));
        }
    }
    let rendered = gateway_config(&alice.tenant, &connections, &site()).unwrap();
    let names: Vec<&str> = rendered
        .config
        .connections
        .iter()
        .map(|c| c.name())
        .collect();
    assert_eq!(names, ["family-bot"]);
}

/// Renders alice with `change` applied to her Connection named `name`, expecting an error.
fn refused(name: &str, change: impl FnOnce(&mut Connection)) -> String {
    let alice = fixture("alice.yaml");
    let mut connections = alice.connections.clone();
    let connection = connections
        .iter_mut()
        .find(|c| c.metadata.name.as_deref() == Some(name))
        .unwrap();
    change(connection);
    match gateway_config(&alice.tenant, &connections, &site()) {
        Err(e @ RenderError::Connection { .. }) => e.to_string(),
        other => panic!("expected a Connection error, got {other:?}"),
    }
}

#[test]
fn bad_connections_are_refused_by_name() {
    let message = refused("telegram", |c| c.spec.credentials = None);
    assert!(
        message.starts_with("Connection telegram:") && message.contains("credentials"),
        "{message}"
    );

    let message = refused("family-bot", |c| {
        c.spec.credentials.as_mut().unwrap().webhook_secret_key = None
    });
    assert!(
        message.starts_with("Connection family-bot:") && message.contains("webhookSecretKey"),
        "{message}"
    );

    let message = refused("telegram", |c| {
        c.metadata.namespace = Some("tenant-mallory".into())
    });
    assert!(message.contains("tenant-mallory"), "{message}");

    let message = refused("discord", |c| c.metadata.name = Some("telegram".into()));
    assert!(message.contains("twice"), "{message}");
}

#[test]
fn a_tenant_without_a_name_is_refused() {
    let mut bob = fixture("bob.yaml").tenant;
    bob.metadata.name = None;
    assert!(matches!(
        gateway_config(&bob, &[], &site()),
        Err(RenderError::UnnamedTenant)
    ));
}
