//! The committed CRD manifests are what the Rust types generate, and what they generate
//! is complete: names, columns, and a description for every field (`kubectl explain`).

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use moltbot_crds::{API_GROUP, API_VERSION, Connection, Tenant, crd_files};
use moltbot_protocol::config::{DEFAULT_MAX_PENDING_PAIRINGS, MAX_PENDING_PAIRINGS};
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

/// The CRD says which value the gateway takes when a key is unset, in words; this keeps
/// the words in step with the gateway's default.
#[test]
fn documented_defaults_are_the_gateways() {
    let crd = serde_json::to_value(Connection::crd()).expect("serializes");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let max = &spec["properties"]["telegram"]["properties"]["maxPendingPairings"];
    let description = max["description"].as_str().expect("documented");
    let unset = format!("Unset: {DEFAULT_MAX_PENDING_PAIRINGS}.");
    assert!(description.ends_with(&unset), "{description}");
    let bound = |key: &str| max[key].as_f64().expect("a number");
    assert_eq!(bound("minimum"), f64::from(*MAX_PENDING_PAIRINGS.start()));
    assert_eq!(bound("maximum"), f64::from(*MAX_PENDING_PAIRINGS.end()));
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

/// What `kubectl` shows of a CRD: its names, scope, columns and selectable fields.
struct Shape<'a> {
    name: &'a str,
    scope: &'a str,
    short_names: &'a [&'a str],
    /// Each column's name and priority (none: shown by plain `kubectl get`).
    columns: &'a [(&'a str, Option<i32>)],
    selectable: &'a [&'a str],
}

#[track_caller]
fn assert_shape(crd: &CustomResourceDefinition, shape: &Shape) {
    let version = &crd.spec.versions[0];
    assert_eq!(crd.metadata.name.as_deref(), Some(shape.name));
    assert_eq!(crd.spec.group, API_GROUP);
    assert_eq!(version.name, API_VERSION);
    assert_eq!(crd.spec.scope, shape.scope);
    assert_eq!(crd.spec.names.categories, Some(vec!["moltbot".into()]));
    let short_names: Vec<&str> = crd
        .spec
        .names
        .short_names
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(short_names, shape.short_names);
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        "a status subresource"
    );
    let columns: Vec<(&str, Option<i32>)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.priority))
        .collect();
    assert_eq!(columns, shape.columns);
    let selectable: Vec<&str> = version
        .selectable_fields
        .iter()
        .flatten()
        .map(|f| f.json_path.as_str())
        .collect();
    assert_eq!(selectable, shape.selectable);
}

#[test]
fn tenant_is_cluster_scoped_with_its_columns() {
    assert_shape(
        &Tenant::crd(),
        &Shape {
            name: "tenants.cloud.moltbot.com",
            scope: "Cluster",
            short_names: &["mtenant", "mt"],
            columns: &[
                ("Plan", None),
                ("Ready", None),
                ("Phase", None),
                ("Connections", None),
                ("Age", None),
                ("Namespace", Some(1)),
                ("Endpoint", Some(1)),
                ("Reason", Some(1)),
            ],
            selectable: &[".spec.owner"],
        },
    );
}

#[test]
fn connection_is_namespaced_with_its_columns() {
    assert_shape(
        &Connection::crd(),
        &Shape {
            name: "connections.cloud.moltbot.com",
            scope: "Namespaced",
            short_names: &["mconn"],
            columns: &[
                ("Type", None),
                ("Mode", None),
                ("Ready", None),
                ("Last event", None),
                ("Age", None),
                ("Reason", Some(1)),
            ],
            selectable: &[".spec.type"],
        },
    );
}
