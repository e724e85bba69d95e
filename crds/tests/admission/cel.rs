//! The CRDs' x-kubernetes-validations, evaluated: immutable fields, storage that only
//! grows, the channel type and mode rules, names. Every rule is evaluated here, the
//! `quantity()` ones included; none is checked by inspection only.

use serde_json::{Value, json};

use crate::support::{
    Kind, assert_admitted, assert_cel_refuses, assert_schema_refuses, cel_errors, connection,
    tenant, with, without,
};

/// Every rule of both CRDs, where it sits.
fn rules(schema: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    if let Some(Value::Array(list)) = schema.get("x-kubernetes-validations") {
        out.extend(list.iter().map(|rule| (path.to_owned(), rule.clone())));
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, property) in properties {
            rules(property, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items") {
        rules(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_rule_parses_and_says_what_is_wrong() {
    let mut all = Vec::new();
    rules(Kind::Tenant.schema(), "Tenant", &mut all);
    rules(Kind::Connection.schema(), "Connection", &mut all);
    // A rule lost from the types (or the YAML) shows up here.
    assert_eq!(all.len(), 22, "{all:#?}");
    for (path, rule) in all {
        let expression = rule["rule"].as_str().expect("a rule");
        // `Program::compile` only parses: it neither type-checks nor estimates the cost,
        // which the API server does; the tests below evaluate every rule.
        if let Err(e) = kube::core::cel::cel::Program::compile(expression) {
            panic!("{path}: {expression:?} does not parse: {e}");
        }
        let message = rule["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{path}: {expression:?} has no message");
    }
}

// ---- Tenant ----

#[test]
fn tenant_name_must_leave_room_for_the_namespace() {
    let named = |name: &str| with(tenant(), "/metadata/name", json!(name));
    let longest = "a".repeat(56);
    assert_admitted(Kind::Tenant, &named(&longest), None);
    assert_eq!(moltbot_crds::tenant_namespace(&longest).len(), 63);
    assert_admitted(Kind::Tenant, &named("7-dwarfs"), None);
    for bad in [
        &*"a".repeat(57),
        "Alice",
        "-alice",
        "alice-",
        "alice.smith",
        "alice_s",
    ] {
        assert_cel_refuses(Kind::Tenant, &named(bad), None, "name must be a DNS label");
    }
}

#[test]
fn owner_is_immutable() {
    let old = tenant();
    let new = with(old.clone(), "/spec/owner", json!("usr_someone_else"));
    assert_cel_refuses(Kind::Tenant, &new, Some(&old), "owner is immutable");
    // Changing anything else is fine, and a create has no old owner to compare.
    assert_admitted(
        Kind::Tenant,
        &with(old.clone(), "/spec/plan", json!("team")),
        Some(&old),
    );
    assert_admitted(Kind::Tenant, &new, None);
}

fn with_storage(size: &str) -> Value {
    with(tenant(), "/spec/gateway/storage/size", json!(size))
}

#[test]
fn storage_only_grows() {
    let old = with_storage("10Gi");
    for smaller in ["5Gi", "10G", "10239Mi"] {
        assert_cel_refuses(
            Kind::Tenant,
            &with_storage(smaller),
            Some(&old),
            "storage size may only grow",
        );
    }
    // Compared as quantities, not as strings.
    for same_or_larger in ["10Gi", "10240Mi", "20Gi", "1Ti", "11G"] {
        assert_admitted(Kind::Tenant, &with_storage(same_or_larger), Some(&old));
    }
}

#[test]
fn a_size_that_is_no_quantity_gets_one_error() {
    // Not also one from the rule that compares it with the old size.
    let errors = cel_errors(
        Kind::Tenant,
        &with_storage("ten"),
        Some(&with_storage("10Gi")),
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("must be a quantity of at least 1Gi"),
        "{errors:?}"
    );
}

#[test]
fn storage_size_is_a_quantity_of_at_least_1gi() {
    for bad in ["500Mi", "10", "ten", "10 Gi", "-10Gi"] {
        assert_cel_refuses(
            Kind::Tenant,
            &with_storage(bad),
            None,
            "must be a quantity of at least 1Gi",
        );
    }
    assert_admitted(Kind::Tenant, &with_storage("1Gi"), None);
}

#[test]
fn storage_cannot_be_removed_once_set() {
    let old = with_storage("10Gi");
    assert_cel_refuses(
        Kind::Tenant,
        &tenant(),
        Some(&old),
        "storage cannot be removed once set",
    );
    assert_admitted(Kind::Tenant, &old, Some(&tenant()));
}

#[test]
fn storage_class_is_chosen_with_the_storage() {
    let class = |name: Option<&str>| match name {
        Some(name) => with(
            with_storage("10Gi"),
            "/spec/gateway/storage/storageClassName",
            json!(name),
        ),
        None => with_storage("10Gi"),
    };
    for (old, new) in [
        (Some("fast"), Some("slow")),
        (None, Some("fast")),
        (Some("fast"), None),
    ] {
        assert_cel_refuses(
            Kind::Tenant,
            &class(new),
            Some(&class(old)),
            "storageClassName is immutable",
        );
    }
    assert_admitted(
        Kind::Tenant,
        &class(Some("fast")),
        Some(&class(Some("fast"))),
    );
    assert_admitted(Kind::Tenant, &class(Some("fast")), None);
    assert_admitted(Kind::Tenant, &class(Some("fast")), Some(&tenant()));
}

fn with_resources(resources: Value) -> Value {
    with(tenant(), "/spec/gateway/resources", resources)
}

#[test]
fn limits_are_at_least_requests() {
    assert_cel_refuses(
        Kind::Tenant,
        &with_resources(json!({"requests": {"memory": "1Gi"}, "limits": {"memory": "512Mi"}})),
        None,
        "limits.memory must be at least requests.memory",
    );
    assert_cel_refuses(
        Kind::Tenant,
        &with_resources(json!({"requests": {"cpu": "1"}, "limits": {"cpu": "500m"}})),
        None,
        "limits.cpu must be at least requests.cpu",
    );
    for fine in [
        json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "0.5", "memory": "1024Mi"}}),
        json!({"requests": {"cpu": "2", "memory": "4Gi"}}),
        json!({"limits": {"memory": "64Mi"}}),
        json!({"requests": {"memory": "1Gi"}, "limits": {"cpu": "1"}}),
    ] {
        assert_admitted(Kind::Tenant, &with_resources(fine), None);
    }
}

#[test]
fn resources_are_quantities_with_floors() {
    for (path, value, message) in [
        ("/requests/cpu", "0", "at least 10m"),
        ("/limits/cpu", "1 core", "at least 10m"),
        ("/requests/memory", "512", "at least 32Mi"),
        ("/limits/memory", "lots", "at least 32Mi"),
    ] {
        let object = with(
            tenant(),
            &format!("/spec/gateway/resources{path}"),
            json!(value),
        );
        assert_cel_refuses(Kind::Tenant, &object, None, message);
    }
}

#[test]
fn a_null_is_no_value() {
    // No spec field is nullable, so the API server prunes an explicit null and the rules
    // see the field as absent; the schema check here refuses the null outright.
    let webhook = with(
        with(
            connection("telegram"),
            "/spec/telegram/delivery",
            json!("webhook"),
        ),
        "/spec/credentials/webhookSecretKey",
        json!("webhook-secret"),
    );
    let cases = [
        (
            Kind::Tenant,
            with_storage("10Gi"),
            Some(with_storage("10Gi")),
            "/spec/gateway/storage",
            "storage cannot be removed once set",
        ),
        (
            Kind::Connection,
            connection("telegram"),
            None,
            "/spec/credentials",
            "need credentials",
        ),
        (
            Kind::Connection,
            webhook,
            None,
            "/spec/credentials/webhookSecretKey",
            "needs credentials.webhookSecretKey",
        ),
    ];
    for (kind, object, old, path, message) in cases {
        assert_admitted(kind, &object, old.as_ref());
        let nulled = with(object.clone(), path, Value::Null);
        assert_schema_refuses(kind, &nulled, path);
        assert_cel_refuses(kind, &without(object, path), old.as_ref(), message);
    }
}

// ---- Connection ----

#[test]
fn device_channels_only_bridge_and_only_they_do() {
    for type_ in ["whatsapp", "imessage", "signal"] {
        let cloud = with(connection(type_), "/spec/mode", json!("cloud"));
        assert_cel_refuses(
            Kind::Connection,
            &cloud,
            None,
            "connect only through a device",
        );
        // mode defaults to cloud, so leaving it out is the same mistake.
        let unset = without(connection(type_), "/spec/mode");
        assert_cel_refuses(
            Kind::Connection,
            &unset,
            None,
            "connect only through a device",
        );
    }
    for type_ in ["webchat", "telegram", "discord", "slack", "teams"] {
        let bridged = with(connection(type_), "/spec/mode", json!("bridge"));
        assert_cel_refuses(
            Kind::Connection,
            &bridged,
            None,
            "mode bridge is only for whatsapp, imessage and signal",
        );
    }
}

#[test]
fn credentials_where_needed_and_nowhere_else() {
    for type_ in ["telegram", "discord", "slack", "teams"] {
        assert_cel_refuses(
            Kind::Connection,
            &without(connection(type_), "/spec/credentials"),
            None,
            "need credentials",
        );
    }
    for type_ in ["webchat", "whatsapp", "imessage", "signal"] {
        let object = with(
            connection(type_),
            "/spec/credentials",
            json!({"secretName": "creds"}),
        );
        assert_cel_refuses(Kind::Connection, &object, None, "credentials are only for");
    }
}

#[test]
fn telegram_settings_only_on_telegram() {
    let settings = json!({"dmPolicy": "open"});
    assert_admitted(
        Kind::Connection,
        &with(connection("telegram"), "/spec/telegram", settings.clone()),
        None,
    );
    for type_ in ["webchat", "discord", "signal"] {
        let object = with(connection(type_), "/spec/telegram", settings.clone());
        assert_cel_refuses(
            Kind::Connection,
            &object,
            None,
            "telegram settings are only for type telegram",
        );
    }
}

#[test]
fn telegram_webhook_needs_a_webhook_secret() {
    let webhook = with(
        connection("telegram"),
        "/spec/telegram/delivery",
        json!("webhook"),
    );
    assert_cel_refuses(
        Kind::Connection,
        &webhook,
        None,
        "needs credentials.webhookSecretKey",
    );
    let with_secret = with(
        webhook,
        "/spec/credentials/webhookSecretKey",
        json!("webhook-secret"),
    );
    assert_admitted(Kind::Connection, &with_secret, None);
}

#[test]
fn type_and_mode_are_immutable() {
    let old = connection("telegram");
    let new = with(old.clone(), "/spec/type", json!("discord"));
    assert_cel_refuses(Kind::Connection, &new, Some(&old), "type is immutable");
    assert_admitted(Kind::Connection, &new, None);

    let old = connection("whatsapp");
    let new = with(old.clone(), "/spec/mode", json!("cloud"));
    assert_cel_refuses(Kind::Connection, &new, Some(&old), "mode is immutable");

    let renamed = with(old.clone(), "/spec/displayName", json!("Work phone"));
    assert_admitted(Kind::Connection, &renamed, Some(&old));
}

#[test]
fn connection_names_are_dns_labels_and_webchat_is_reserved() {
    let named = |type_: &str, name: &str| with(connection(type_), "/metadata/name", json!(name));
    assert_admitted(Kind::Connection, &named("webchat", "webchat"), None);
    assert_admitted(Kind::Connection, &named("telegram", &"t".repeat(63)), None);
    assert_cel_refuses(
        Kind::Connection,
        &named("telegram", "webchat"),
        None,
        "the name webchat is reserved",
    );
    for bad in [&*"t".repeat(64), "Telegram", "my.bot", "bot-"] {
        assert_cel_refuses(
            Kind::Connection,
            &named("telegram", bad),
            None,
            "name must be a DNS label",
        );
    }
}

#[test]
fn a_refusal_names_only_the_broken_rule() {
    // An object that breaks one rule gets one complaint, so the messages above are
    // each rule's own and not a pile-up.
    let errors = cel_errors(
        Kind::Connection,
        &without(connection("slack"), "/spec/credentials"),
        None,
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
}
