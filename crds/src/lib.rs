//! The custom resources of Moltbot Cloud: `Tenant` (cluster-scoped) and `Connection` (in
//! the tenant's namespace), group `cloud.moltbot.com`, version `v1alpha1`.
//!
//! The Rust types are the source of truth: their doc comments become the schema's
//! descriptions (`kubectl explain`), and `crdgen` writes the CRD manifests beside this
//! crate from them. The control plane writes specs, the operator writes status; the
//! keys below are the other names both sides must agree on.

use std::path::{Path, PathBuf};

use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod conditions;
pub mod connection;
pub mod plan;
pub mod render;
pub mod tenant;

pub use connection::{
    ChannelType, Connection, ConnectionMode, ConnectionSpec, ConnectionState, ConnectionStatus,
    CredentialsRef, DmPolicy, GroupPolicy, TelegramDelivery, TelegramSettings,
};
pub use plan::PlanDefaults;
pub use render::{
    CREDENTIALS_SECRET, INBOX_TOKEN_KEY, INGRESS_HMAC_KEY, RenderError, RenderSite, RenderedConfig,
    SecretEnv, Unsupported, gateway_config,
};
pub use tenant::{
    AgentMode, AgentSpec, AgentTool, ComputeResources, ConnectionCounts, GatewayResources,
    GatewaySpec, GatewayStorage, ModelSpec, Plan, RetentionSpec, Tenant, TenantPhase, TenantSpec,
    TenantStatus, TokenLimitField,
};

/// The API group of every Moltbot Cloud resource.
pub const API_GROUP: &str = "cloud.moltbot.com";
/// The one served and stored version.
pub const API_VERSION: &str = "v1alpha1";

/// Label on every object the operator makes for a tenant; the value is the Tenant's name.
pub const TENANT_LABEL: &str = "cloud.moltbot.com/tenant";
/// Annotation that stops the operator from changing a Tenant's objects while it is
/// `"true"` (the Tenant reports `ReconcilePaused`).
pub const PAUSED_ANNOTATION: &str = "cloud.moltbot.com/paused";
/// Annotation on a Tenant that asks for new generated credentials (the inbox token and
/// the ingress key): the operator rotates them whenever its value changes, e.g. to the
/// time of the request.
pub const ROTATE_CREDENTIALS_ANNOTATION: &str = "cloud.moltbot.com/rotate-credentials";
/// Finalizer that holds a Tenant until its namespace and data are handled.
pub const FINALIZER: &str = "cloud.moltbot.com/cleanup";

/// Prefix of a tenant's namespace; the Tenant's name schema leaves room for it.
pub const TENANT_NAMESPACE_PREFIX: &str = "tenant-";

/// The namespace of the Tenant named `tenant_name`: `tenant-<name>`.
pub fn tenant_namespace(tenant_name: &str) -> String {
    format!("{TENANT_NAMESPACE_PREFIX}{tenant_name}")
}

/// A DNS subdomain (RFC 1123), the form of most Kubernetes object names.
pub(crate) const DNS_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A key of a Secret's data.
pub(crate) const SECRET_KEY: &str = r"^[-._a-zA-Z0-9]+$";

/// A schemars transform for the spec structs (`#[schemars(transform = crate::not_nullable)]`):
/// no field of the schema, however deep, admits `null`.
///
/// schemars marks every `Option` field `nullable: true`. With that, the API server keeps an
/// explicit `null` instead of pruning it, skips the rules on it, and `has()` is true for it,
/// so `storage: null` would pass "storage cannot be removed". Without `nullable`, a `null`
/// is pruned and the rules see the field as absent.
pub(crate) fn not_nullable(schema: &mut schemars::Schema) {
    // schemars writes `Option<T>` as `T` with "null" added to its `type` (and `enum`).
    if let Some(Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_mut_slice() {
            let only = only.take();
            schema.insert("type".into(), only);
        }
    }
    if let Some(Value::Array(values)) = schema.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    schemars::transform::transform_subschemas(&mut not_nullable, schema);
}

/// One key of a Secret in the same namespace as the reader.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,
    /// The key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY))]
    pub key: String,
}

/// A generated CRD manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrdFile {
    /// The file's name in this crate's directory, e.g. `tenant.yaml`.
    pub file_name: &'static str,
    /// The manifest, with a header saying how it was made.
    pub yaml: String,
}

/// Why the CRD manifests could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    #[error("cannot write the {crd} CRD as YAML: {source}")]
    Yaml {
        crd: &'static str,
        source: serde_saphyr::SerializeError,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

const HEADER: &str =
    "# Generated from crds/src by `cargo run -p moltbot-crds --bin crdgen`; do not edit.\n";

/// The CRD manifests, one file per resource.
pub fn crd_files() -> Result<Vec<CrdFile>, CrdError> {
    Ok(vec![
        crd_file::<Tenant>("tenant.yaml")?,
        crd_file::<Connection>("connection.yaml")?,
    ])
}

fn crd_file<K: CustomResourceExt>(file_name: &'static str) -> Result<CrdFile, CrdError> {
    let yaml = serde_saphyr::to_string(&K::crd()).map_err(|source| CrdError::Yaml {
        crd: K::crd_name(),
        source,
    })?;
    Ok(CrdFile {
        file_name,
        yaml: format!("{HEADER}{yaml}"),
    })
}

/// Writes the CRD manifests into `dir` and returns their paths.
pub fn write_crd_files(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    crd_files()?
        .into_iter()
        .map(|file| {
            let path = dir.join(file.file_name);
            std::fs::write(&path, file.yaml).map_err(|source| CrdError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}
