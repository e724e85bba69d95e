//! Reads a YAML fixture: a Tenant, its Connections and the Secrets they name, as `---`
//! separated documents. Shared by the renderer's tests here and the operator's (which
//! include this file by path), so that both read fixtures the same way.

use std::path::Path;

use k8s_openapi::api::core::v1::Secret;
use moltbot_crds::{Connection, Tenant};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub struct Fixture {
    pub tenant: Tenant,
    pub connections: Vec<Connection>,
    pub secrets: Vec<Secret>,
}

impl Fixture {
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let docs: Vec<Value> =
            serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let mut tenant = None;
        let mut connections = Vec::new();
        let mut secrets = Vec::new();
        for doc in docs {
            match doc["kind"].as_str().unwrap_or_default() {
                "Tenant" => tenant = Some(parse(path, doc)),
                "Connection" => connections.push(parse(path, doc)),
                "Secret" => secrets.push(parse(path, doc)),
                other => panic!("{path:?}: unexpected kind {other:?}"),
            }
        }
        Fixture {
            tenant: tenant.unwrap_or_else(|| panic!("{path:?} has no Tenant")),
            connections,
            secrets,
        }
    }

    /// Every value in the fixture's Secrets (its `stringData`).
    pub fn secret_values(&self) -> Vec<String> {
        self.secrets
            .iter()
            .flat_map(|s| s.string_data.iter().flat_map(|d| d.values().cloned()))
            .collect()
    }

    /// The value of `key` in the fixture's Secret `name`.
    pub fn secret_value(&self, name: &str, key: &str) -> String {
        self.secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.string_data.as_ref()?.get(key).cloned())
            .unwrap_or_else(|| panic!("the fixture has no Secret {name} with key {key}"))
    }
}

fn parse<T: DeserializeOwned>(path: &Path, doc: Value) -> T {
    let kind = doc["kind"].clone();
    serde_json::from_value(doc).unwrap_or_else(|e| panic!("{path:?}: a {kind}: {e}"))
}
