//! Bad input the openAPIV3Schema refuses: wrong enums, missing required fields,
//! numbers out of range, malformed names and URLs, unknown fields.

use std::collections::BTreeMap;
use std::path::Path;

use moltbot_protocol::config::Config;
use serde_json::json;

use crate::support::{
    Kind, assert_admitted, assert_schema_refuses, connection, schema_errors, tenant, with, without,
};

#[test]
fn minimal_objects_pass() {
    assert_admitted(Kind::Tenant, &tenant(), None);
    for type_ in [
        "webchat", "telegram", "discord", "slack", "teams", "whatsapp", "imessage", "signal",
    ] {
        assert_admitted(Kind::Connection, &connection(type_), None);
    }
}

#[test]
fn tenant_enums_are_closed() {
    let cases = [
        ("/spec/plan", json!("platinum")),
        ("/spec/plan", json!("Pro")),
        ("/spec/agent/defaultMode", json!("auto")),
        ("/spec/agent/tools", json!(["search_messages", "run_shell"])),
    ];
    for (path, value) in cases {
        let error_at = if path.ends_with("tools") {
            "/spec/agent/tools/1"
        } else {
            path
        };
        assert_schema_refuses(Kind::Tenant, &with(tenant(), path, value), error_at);
    }
}

#[test]
fn tenant_required_fields() {
    assert_schema_refuses(Kind::Tenant, &without(tenant(), "/spec/owner"), "/spec");
    assert_schema_refuses(Kind::Tenant, &without(tenant(), "/spec/plan"), "/spec");
    assert_schema_refuses(Kind::Tenant, &without(tenant(), "/spec"), "");
    let model_without_name = with(
        tenant(),
        "/spec/agent/model",
        json!({"baseUrl": "https://api.openai.com/v1"}),
    );
    assert_schema_refuses(Kind::Tenant, &model_without_name, "/spec/agent/model");
    let storage_without_size = with(
        tenant(),
        "/spec/gateway/storage",
        json!({"storageClassName": "fast"}),
    );
    assert_schema_refuses(Kind::Tenant, &storage_without_size, "/spec/gateway/storage");
    let key_without_name = with(
        tenant(),
        "/spec/agent/model",
        json!({"baseUrl": "https://api.openai.com/v1", "model": "gpt-4.1-mini", "apiKeySecretRef": {"key": "api-key"}}),
    );
    assert_schema_refuses(
        Kind::Tenant,
        &key_without_name,
        "/spec/agent/model/apiKeySecretRef",
    );
}

#[test]
fn tenant_numbers_in_range() {
    let cases = [
        ("/spec/agent/tokensPerRun", json!(0)),
        ("/spec/agent/tokensPerRun", json!(-5)),
        ("/spec/agent/tokensPerRun", json!(2_000_001)),
        ("/spec/agent/tokensPerDay", json!(999)),
        ("/spec/agent/tokensPerDay", json!(10_000_000_001_i64)),
        ("/spec/agent/maxConcurrentRuns", json!(0)),
        ("/spec/agent/maxConcurrentRuns", json!(65)),
        ("/spec/retention/messagesDays", json!(0)),
        ("/spec/retention/mediaDays", json!(36501)),
        ("/spec/agent/tokensPerRun", json!(1500.5)),
        ("/spec/agent/tokensPerRun", json!("20000")),
    ];
    for (path, value) in cases {
        assert_schema_refuses(Kind::Tenant, &with(tenant(), path, value), path);
    }
    // The bounds themselves are allowed.
    let edges = [
        ("/spec/agent/tokensPerRun", json!(1000)),
        ("/spec/agent/tokensPerRun", json!(2_000_000)),
        ("/spec/agent/maxConcurrentRuns", json!(64)),
        ("/spec/retention/messagesDays", json!(1)),
    ];
    for (path, value) in edges {
        assert_admitted(Kind::Tenant, &with(tenant(), path, value), None);
    }
}

#[test]
fn tenant_strings_have_their_shape() {
    let cases = [
        ("/spec/owner", json!("")),
        ("/spec/owner", json!("alice smith")),
        ("/spec/owner", json!("u".repeat(129))),
        ("/spec/displayName", json!("")),
        ("/spec/gateway/image", json!("ghcr.io/moltbot/gateway: 1.2")),
        ("/spec/gateway/runtimeClassName", json!("gVisor")),
        ("/spec/gateway/storage/storageClassName", json!("fast_ssd")),
        ("/spec/gateway/storage/size", json!(10)),
        (
            "/spec/gateway/resources/limits/memory",
            json!("x".repeat(33)),
        ),
    ];
    for (path, value) in cases {
        let object = with(
            with(tenant(), "/spec/gateway/storage/size", json!("10Gi")),
            path,
            value,
        );
        assert_schema_refuses(Kind::Tenant, &object, path);
    }
    for url in [
        "api.openai.com/v1",
        "ftp://models.local",
        "https://",
        "https:// x",
    ] {
        let object = with(
            tenant(),
            "/spec/agent/model",
            json!({"baseUrl": url, "model": "m"}),
        );
        assert_schema_refuses(Kind::Tenant, &object, "/spec/agent/model/baseUrl");
    }
    let bad_secret_key = with(
        tenant(),
        "/spec/agent/model",
        json!({"baseUrl": "https://api.openai.com/v1", "model": "m", "apiKeySecretRef": {"name": "openai", "key": "api key"}}),
    );
    assert_schema_refuses(
        Kind::Tenant,
        &bad_secret_key,
        "/spec/agent/model/apiKeySecretRef/key",
    );
}

#[test]
fn unknown_and_misspelt_fields_are_refused() {
    assert_schema_refuses(
        Kind::Tenant,
        &with(tenant(), "/spec/suspend", json!(true)),
        "/spec",
    );
    assert_schema_refuses(
        Kind::Tenant,
        &with(
            tenant(),
            "/spec/agent/model",
            json!({"baseUrl": "https://x/v1", "model": "m", "apiKey": "sk-live"}),
        ),
        "/spec/agent/model",
    );
    assert_schema_refuses(
        Kind::Connection,
        &with(
            connection("telegram"),
            "/spec/credentials/token",
            json!("123:abc"),
        ),
        "/spec/credentials",
    );
}

#[test]
fn connection_enums_are_closed() {
    let cases = [
        ("/spec/type", json!("irc")),
        ("/spec/mode", json!("local")),
        ("/spec/telegram/delivery", json!("push")),
        ("/spec/telegram/dmPolicy", json!("everyone")),
        ("/spec/telegram/groupPolicy", json!("closed")),
    ];
    for (path, value) in cases {
        assert_schema_refuses(
            Kind::Connection,
            &with(connection("telegram"), path, value),
            path,
        );
    }
}

#[test]
fn connection_required_fields_and_shapes() {
    assert_schema_refuses(
        Kind::Connection,
        &without(connection("webchat"), "/spec/type"),
        "/spec",
    );
    assert_schema_refuses(
        Kind::Connection,
        &without(connection("telegram"), "/spec/credentials/secretName"),
        "/spec/credentials",
    );
    let cases = [
        ("/spec/credentials/secretName", json!("Telegram_Bot")),
        ("/spec/credentials/tokenKey", json!("bot token")),
        ("/spec/credentials/webhookSecretKey", json!("")),
        ("/spec/telegram/allowFrom", json!(["@alice"])),
        ("/spec/telegram/allowGroups", json!(["group-1"])),
        ("/spec/telegram/apiBase", json!("api.telegram.org")),
        ("/spec/telegram/maxPendingPairings", json!(0)),
        ("/spec/telegram/maxPendingPairings", json!(1001)),
        ("/spec/displayName", json!("x".repeat(129))),
    ];
    for (path, value) in cases {
        let object = with(connection("telegram"), path, value);
        let at = if path.starts_with("/spec/telegram/allow") {
            format!("{path}/0")
        } else {
            path.to_owned()
        };
        assert_schema_refuses(Kind::Connection, &object, &at);
    }
    let too_many: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    assert_schema_refuses(
        Kind::Connection,
        &with(
            connection("telegram"),
            "/spec/telegram/allowFrom",
            json!(too_many),
        ),
        "/spec/telegram/allowFrom",
    );
}

#[test]
fn status_is_checked_too() {
    let status = json!({
        "phase": "Ready",
        "conditions": [{"type": "Ready", "status": "True", "reason": "GatewayReady", "message": "", "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 1}],
        "connections": {"total": 2, "connected": 2, "degraded": 0, "actionRequired": 0, "summary": "2/2"},
    });
    assert_admitted(
        Kind::Tenant,
        &with(tenant(), "/status", status.clone()),
        None,
    );
    assert_schema_refuses(
        Kind::Tenant,
        &with(
            tenant(),
            "/status",
            with(status.clone(), "/phase", json!("Running")),
        ),
        "/status/phase",
    );
    assert_schema_refuses(
        Kind::Tenant,
        &with(
            tenant(),
            "/status",
            without(status.clone(), "/conditions/0/lastTransitionTime"),
        ),
        "/status/conditions/0",
    );
    assert_schema_refuses(
        Kind::Tenant,
        &with(
            tenant(),
            "/status",
            with(
                status,
                "/conditions/0/lastTransitionTime",
                json!("yesterday"),
            ),
        ),
        "/status/conditions/0/lastTransitionTime",
    );
    assert_schema_refuses(
        Kind::Connection,
        &with(connection("webchat"), "/status/state", json!("online")),
        "/status/state",
    );
}

/// Whether the gateway's config validation accepts `id` in `field` of a Telegram
/// connection.
fn gateway_accepts(field: &str, id: &str) -> bool {
    let yaml = format!(
        "tenant:\n  id: alice\ndata_dir: /data\nauth:\n  inbox_token: 0123456789abcdef\n\
         connections:\n- type: telegram\n  name: bot\n  token: \"123:abc\"\n  {field}: [\"{id}\"]\n"
    );
    Config::from_yaml(&yaml, Path::new("gateway.yaml"), &BTreeMap::new()).is_ok()
}

#[test]
fn telegram_ids_the_crd_admits_are_ids_the_gateway_accepts() {
    let base = with(
        connection("telegram"),
        "/spec/telegram/dmPolicy",
        json!("allowlist"),
    );
    // (id, the CRD admits it, the gateway accepts it) at the edges of 16 digits and of
    // i64; the gateway reads any i64, the CRD only the 52 bits Telegram uses.
    let user_ids = [
        ("0", true, true),
        ("4503599627370495", true, true),
        ("9999999999999999", true, true),
        ("10000000000000000", false, true),
        ("9223372036854775807", false, true),
        ("9223372036854775808", false, false),
        ("99999999999999999999", false, false),
        ("-42", false, true),
    ];
    let chat_ids = [
        ("-1001234567890", true, true),
        ("-9999999999999999", true, true),
        ("-10000000000000000", false, true),
        ("-9223372036854775808", false, true),
        ("-9223372036854775809", false, false),
        ("-99999999999999999999", false, false),
        ("9999999999999999", true, true),
    ];
    for (crd_field, gateway_field, ids) in [
        ("allowFrom", "allow_from", &user_ids[..]),
        ("allowGroups", "allow_groups", &chat_ids[..]),
    ] {
        for &(id, crd, gateway) in ids {
            let object = with(
                base.clone(),
                &format!("/spec/telegram/{crd_field}"),
                json!([id]),
            );
            let admitted = schema_errors(Kind::Connection, &object).is_empty();
            let accepted = gateway_accepts(gateway_field, id);
            assert_eq!(
                (admitted, accepted),
                (crd, gateway),
                "{crd_field} {id}: (CRD admits, gateway accepts)"
            );
            assert!(
                accepted || !admitted,
                "the CRD admits {crd_field} {id}, which the gateway refuses"
            );
        }
    }
}
