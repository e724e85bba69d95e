//! What the API server does with a Tenant or Connection it is given, done here without
//! one: the committed CRD's openAPIV3Schema checks structure, types, enums, bounds and
//! patterns (with strict field validation, kubectl's default), then its
//! `x-kubernetes-validations` CEL rules run with `self` (and `oldSelf` on an update)
//! bound, after the schema's defaults are applied.
//!
//! The CEL rules run in kube-cel (kube's client-side CEL, built on the `cel` crate,
//! formerly `cel-interpreter`), which implements the Kubernetes CEL libraries these
//! rules use, `quantity()` and `isQuantity()` included, and the transition-rule
//! semantics: a rule naming `oldSelf` runs only on an update where the old object has
//! the field too.

use std::path::Path;
use std::sync::LazyLock;

use kube::core::cel::Validator as CelValidator;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Tenant,
    Connection,
}

impl Kind {
    fn file(self) -> &'static str {
        match self {
            Kind::Tenant => "tenant.yaml",
            Kind::Connection => "connection.yaml",
        }
    }

    /// The CRD's openAPIV3Schema as committed.
    pub fn schema(self) -> &'static Value {
        static TENANT: LazyLock<Value> = LazyLock::new(|| load_schema(Kind::Tenant));
        static CONNECTION: LazyLock<Value> = LazyLock::new(|| load_schema(Kind::Connection));
        match self {
            Kind::Tenant => &TENANT,
            Kind::Connection => &CONNECTION,
        }
    }

    fn json_schema(self) -> &'static jsonschema::Validator {
        static TENANT: LazyLock<jsonschema::Validator> =
            LazyLock::new(|| json_schema_validator(Kind::Tenant));
        static CONNECTION: LazyLock<jsonschema::Validator> =
            LazyLock::new(|| json_schema_validator(Kind::Connection));
        match self {
            Kind::Tenant => &TENANT,
            Kind::Connection => &CONNECTION,
        }
    }
}

fn load_schema(kind: Kind) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(kind.file());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let crd: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn json_schema_validator(kind: Kind) -> jsonschema::Validator {
    let mut schema = kind.schema().clone();
    to_strict_json_schema(&mut schema);
    // The fields every object has, which the CRD leaves to the API server.
    let properties = schema["properties"]
        .as_object_mut()
        .expect("root properties");
    properties.insert("apiVersion".into(), json!({"type": "string"}));
    properties.insert("kind".into(), json!({"type": "string"}));
    properties.insert("metadata".into(), json!({"type": "object"}));
    jsonschema::draft4::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the CRD schema is a valid JSON Schema")
}

/// OpenAPI v3 to JSON Schema: `nullable` becomes a `null` type, and an object with
/// declared properties admits no others (strict field validation: an unknown or
/// misspelt field is an error, not silently dropped).
fn to_strict_json_schema(schema: &mut Value) {
    let Some(node) = schema.as_object_mut() else {
        return;
    };
    if node.remove("nullable") == Some(Value::Bool(true))
        && let Some(Value::String(ty)) = node.get("type").cloned()
    {
        node.insert("type".into(), json!([ty, "null"]));
    }
    if node.contains_key("properties") && !node.contains_key("additionalProperties") {
        node.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(properties)) = node.get_mut("properties") {
        properties.values_mut().for_each(to_strict_json_schema);
    }
    if let Some(items) = node.get_mut("items") {
        to_strict_json_schema(items);
    }
}

/// The schema's complaints about `object`, as `path: message`.
pub fn schema_errors(kind: Kind, object: &Value) -> Vec<String> {
    kind.json_schema()
        .iter_errors(object)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// The CEL rules' complaints about `object` (an update of `old` when given), as
/// `path: message`.
pub fn cel_errors(kind: Kind, object: &Value, old: Option<&Value>) -> Vec<String> {
    match CelValidator::new().validate(kind.schema(), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| format!("{}: {}", e.field_path, e.message))
            .collect(),
    }
}

/// Both checks, as the API server makes them on a create (`old` is `None`) or an update.
pub fn admit(kind: Kind, object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    let mut errors = schema_errors(kind, object);
    errors.extend(cel_errors(kind, object, old));
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Asserts the object passes the schema and that CEL refuses it with `message`.
#[track_caller]
pub fn assert_cel_refuses(kind: Kind, object: &Value, old: Option<&Value>, message: &str) {
    let schema = schema_errors(kind, object);
    assert!(
        schema.is_empty(),
        "the schema already refuses it: {schema:?}"
    );
    let cel = cel_errors(kind, object, old);
    assert!(
        cel.iter().any(|e| e.contains(message)),
        "expected CEL to refuse with {message:?}, got {cel:?}"
    );
}

/// Asserts the schema refuses the object with an error at `path` (a JSON pointer).
#[track_caller]
pub fn assert_schema_refuses(kind: Kind, object: &Value, path: &str) {
    let errors = schema_errors(kind, object);
    assert!(
        errors.iter().any(|e| e.starts_with(&format!("{path}: "))),
        "expected a schema error at {path}, got {errors:?}"
    );
}

#[track_caller]
pub fn assert_admitted(kind: Kind, object: &Value, old: Option<&Value>) {
    if let Err(errors) = admit(kind, object, old) {
        panic!("expected {kind:?} to be admitted, got {errors:?}");
    }
}

/// `object` with the value at the JSON pointer `path` set, making parent objects as
/// needed.
pub fn with(mut object: Value, path: &str, value: Value) -> Value {
    let (parent, key) = path.rsplit_once('/').expect("a JSON pointer");
    let mut node = &mut object;
    for step in parent.split('/').skip(1) {
        node = match node {
            Value::Array(items) => &mut items[step.parse::<usize>().expect("an index")],
            Value::Object(map) => map
                .entry(step.to_owned())
                .or_insert_with(|| Value::Object(Map::new())),
            _ => panic!("{path}: {step} is in neither an object nor an array"),
        };
    }
    match node {
        Value::Array(items) => items[key.parse::<usize>().expect("an index")] = value,
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        _ => panic!("{path}: the parent is neither an object nor an array"),
    }
    object
}

/// `object` without the value at the JSON pointer `path`.
pub fn without(mut object: Value, path: &str) -> Value {
    let (parent, key) = path.rsplit_once('/').expect("a JSON pointer");
    let removed = object
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|map| map.remove(key));
    assert!(removed.is_some(), "nothing at {path}");
    object
}

/// A minimal valid Tenant.
pub fn tenant() -> Value {
    json!({
        "apiVersion": "cloud.moltbot.com/v1alpha1",
        "kind": "Tenant",
        "metadata": {"name": "alice"},
        "spec": {"owner": "usr_01JD8X7Q2M", "plan": "pro"},
    })
}

/// A minimal valid Connection of `type` (cloud, with credentials where they are needed).
pub fn connection(type_: &str) -> Value {
    let mut spec = json!({"type": type_});
    match type_ {
        "telegram" | "discord" | "slack" | "teams" => {
            spec["credentials"] = json!({"secretName": format!("{type_}-bot")});
        }
        "whatsapp" | "imessage" | "signal" => spec["mode"] = json!("bridge"),
        _ => {}
    }
    json!({
        "apiVersion": "cloud.moltbot.com/v1alpha1",
        "kind": "Connection",
        "metadata": {"name": type_, "namespace": "tenant-alice"},
        "spec": spec,
    })
}
