//! The examples are a working pair: each object is admitted as the API server would
//! admit it, reads into the Rust types without losing a field, and the Connections
//! point at the Tenant's namespace and at a Secret key that exists.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use moltbot_crds::{ChannelType, Connection, Tenant, tenant_namespace};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::support::{Kind, assert_admitted};

fn documents(file: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Reads `document` as `T` and checks nothing was dropped on the way: every field
/// written in the example comes back when the value is written out again.
fn read<T: DeserializeOwned + Serialize>(document: &Value) -> T {
    let value: T =
        serde_json::from_value(document.clone()).unwrap_or_else(|e| panic!("{e} in {document:#}"));
    let back = serde_json::to_value(&value).expect("serializes");
    assert_subset(document, &back, "");
    value
}

#[track_caller]
fn assert_subset(written: &Value, read_back: &Value, path: &str) {
    match (written, read_back) {
        (Value::Object(written), Value::Object(read_back)) => {
            for (key, value) in written {
                let Some(back) = read_back.get(key) else {
                    panic!("{path}/{key} is not a field of the Rust type");
                };
                assert_subset(value, back, &format!("{path}/{key}"));
            }
        }
        _ => assert_eq!(written, read_back, "{path} changed on the way through"),
    }
}

#[test]
fn the_examples_are_a_working_pair() {
    let [tenant] = documents("tenant.yaml").try_into().expect("one Tenant");
    assert_admitted(Kind::Tenant, &tenant, None);
    let tenant: Tenant = read(&tenant);
    let namespace = tenant_namespace(tenant.metadata.name.as_deref().expect("a name"));

    let mut secrets = Vec::new();
    let mut connections = Vec::new();
    for document in documents("connection.yaml") {
        match document["kind"].as_str() {
            Some("Secret") => secrets.push(read::<Secret>(&document)),
            Some("Connection") => {
                assert_admitted(Kind::Connection, &document, None);
                connections.push(read::<Connection>(&document));
            }
            other => panic!("unexpected kind {other:?} in connection.yaml"),
        }
    }

    let types: Vec<ChannelType> = connections.iter().map(|c| c.spec.type_).collect();
    assert_eq!(types, [ChannelType::Webchat, ChannelType::Telegram]);
    for connection in &connections {
        assert_eq!(connection.metadata.namespace.as_deref(), Some(&*namespace));
    }
    for secret in &secrets {
        assert_eq!(secret.metadata.namespace.as_deref(), Some(&*namespace));
    }

    // Telegram's credentials name a Secret in this file, and a key it has.
    let credentials = connections[1]
        .spec
        .credentials
        .as_ref()
        .expect("credentials");
    let secret = secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(&*credentials.secret_name))
        .expect("the referenced Secret is in connection.yaml");
    let token = secret
        .string_data
        .as_ref()
        .and_then(|data| data.get(&credentials.token_key))
        .expect("the Secret has the token key");
    assert!(
        token.contains("PLACEHOLDER"),
        "the example holds no real token"
    );
}
