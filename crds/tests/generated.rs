//! The committed CRD manifests are what the Rust types generate, and what they generate
//! is complete: names, columns, and a description for every field (`kubectl explain`).

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use moltbot_crds::{API_GROUP, API_VERSION, Connection, Tenant, crd_files};
use serde_json::Value;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for file in crd_files().expect("the CRDs generate") {
        let path = dir.join(file.file_name);
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == file.yaml => {}
            Ok(committed) => stale.push(format!(
                "crds/{} differs from line {}",
                file.file_name,
                first_difference(&committed, &file.yaml)
            )),
            Err(e) => stale.push(format!("crds/{}: {e}", file.file_name)),
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nThe CRD manifests are out of date with the Rust types; regenerate them with\n\n    cargo run -p moltbot-crds --bin crdgen\n\nand commit the result.",
        stale.join("\n")
    );
}

/// The 1-based number of the first line where `a` and `b` differ.
fn first_difference(a: &str, b: &str) -> usize {
    let mut b_lines = b.lines();
    a.lines()
        .position(|line| b_lines.next() != Some(line))
        .unwrap_or(a.lines().count())
        + 1
}

/// Paths of schema properties (and array items of objects) without a description.
fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    let documented = schema
        .get("description")
        .and_then(Value::as_str)
        .is_some_and(|d| !d.trim().is_empty());
    if !documented {
        out.push(path.to_owned());
    }
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, property) in properties {
            undocumented(property, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = schema.get("items")
        && items.get("properties").is_some()
    {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_is_documented() {
    for (kind, crd) in [("Tenant", Tenant::crd()), ("Connection", Connection::crd())] {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes");
        let mut missing = Vec::new();
        undocumented(&schema["openAPIV3Schema"], kind, &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a doc comment: {missing:?}"
        );
    }
}

/// Paths of the schemas in `schema` that admit `null`.
fn nullable(schema: &Value, path: &str, out: &mut Vec<String>) {
    match schema {
        Value::Object(node) => {
            if node.get("nullable") == Some(&Value::Bool(true)) {
                out.push(path.to_owned());
            }
            for (key, value) in node {
                nullable(value, &format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                nullable(item, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn no_spec_field_admits_null() {
    // The API server keeps a null where a schema is nullable, skips the rules on it and
    // counts it as present in `has()`: a null would slip past every rule on the field.
    for (kind, crd) in [("Tenant", Tenant::crd()), ("Connection", Connection::crd())] {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("serializes");
        let mut found = Vec::new();
        nullable(
            &schema["openAPIV3Schema"]["properties"]["spec"],
            &format!("{kind}.spec"),
            &mut found,
        );
        assert!(found.is_empty(), "nullable spec schemas: {found:?}");
    }
}

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, Option<i32>)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.priority))
        .collect()
}

fn selectable(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0]
        .selectable_fields
        .iter()
        .flatten()
        .map(|f| f.json_path.clone())
        .collect()
}

fn names(list: &[(&str, Option<i32>)]) -> Vec<(String, Option<i32>)> {
    list.iter().map(|(n, p)| (n.to_string(), *p)).collect()
}

#[test]
fn tenant_is_cluster_scoped_with_its_columns() {
    let crd = Tenant::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("tenants.cloud.moltbot.com")
    );
    assert_eq!(crd.spec.group, API_GROUP);
    assert_eq!(crd.spec.versions[0].name, API_VERSION);
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.categories, Some(vec!["moltbot".into()]));
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["mtenant".into(), "mt".into()])
    );
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
    assert_eq!(
        columns(&crd),
        names(&[
            ("Plan", None),
            ("Ready", None),
            ("Phase", None),
            ("Connections", None),
            ("Age", None),
            ("Namespace", Some(1)),
            ("Endpoint", Some(1)),
            ("Reason", Some(1)),
        ])
    );
}

#[test]
fn connection_is_namespaced_with_its_columns() {
    let crd = Connection::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("connections.cloud.moltbot.com")
    );
    assert_eq!(crd.spec.group, API_GROUP);
    assert_eq!(crd.spec.versions[0].name, API_VERSION);
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.categories, Some(vec!["moltbot".into()]));
    assert_eq!(crd.spec.names.short_names, Some(vec!["mconn".into()]));
    assert_eq!(selectable(&crd), [".spec.type"]);
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some())
    );
    assert_eq!(
        columns(&crd),
        names(&[
            ("Type", None),
            ("Mode", None),
            ("Ready", None),
            ("Last event", None),
            ("Age", None),
            ("Reason", Some(1)),
        ])
    );
}
