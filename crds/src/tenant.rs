//! `Tenant`: one person, family or team, and the isolated gateway that serves them.
//!
//! Cluster-scoped, because a tenant owns a namespace rather than living in one. The
//! control plane writes the spec; the operator writes the status.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::SecretKeyRef;
use crate::conditions::Condition;
use crate::connection::ConnectionState;

/// The desired state of a tenant's gateway.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Deserialize, Serialize)]
#[kube(
    group = "cloud.moltbot.com",
    version = "v1alpha1",
    kind = "Tenant",
    doc = "A Tenant is one person, family or team of Moltbot Cloud. The operator gives it a namespace of its own (tenant-<name>) holding one gateway: its connections, inbox, storage and the Pi agent. The control plane writes the spec; the operator reports in status.",
    status = "TenantStatus",
    derive = "PartialEq",
    shortname = "mtenant",
    shortname = "mt",
    category = "moltbot",
    // `kubectl get tenants --field-selector spec.owner=<id>`: a user's tenants.
    selectable = ".spec.owner",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan", description = "The subscription plan."),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the gateway serves."
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the tenant is in its life."),
    printcolumn(
        name = "Connections",
        type_ = "string",
        json_path = ".status.connections.summary",
        description = "Connected connections out of all."
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".status.namespace",
        description = "The tenant's namespace.",
        priority = 1
    ),
    printcolumn(
        name = "Endpoint",
        type_ = "string",
        json_path = ".status.endpoint",
        description = "The gateway's in-cluster URL.",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the gateway is or is not ready.",
        priority = 1
    ),
    // The name becomes the namespace `tenant-<name>` (a DNS label of at most 63) and the
    // gateway's tenant id, so it is held to the stricter of the two here.
    validation = Rule::new("self.metadata.name.size() <= 56 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')")
        .message("name must be a DNS label of at most 56 characters (it names the namespace tenant-<name>)"),
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::not_nullable)]
pub struct TenantSpec {
    /// The control plane's id of the user who owns this tenant. Immutable.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^\S+$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("owner is immutable"))]
    pub owner: String,

    /// The subscription plan, which sets the defaults of budgets, resources and storage: free, pro, family, team or enterprise.
    pub plan: Plan,

    /// A name for people; the tenant's name is used where unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub display_name: Option<String>,

    /// Stops the gateway (scaled to zero) and keeps its data; channels receive nothing until it is resumed.
    #[serde(default)]
    pub suspended: bool,

    /// Whether deleting the Tenant keeps the gateway's volume (released, to be exported or restored) instead of deleting it with the namespace.
    #[serde(default = "yes")]
    pub retain_data_on_delete: bool,

    /// The Pi agent: its default mode, model, budgets and tools.
    #[serde(default)]
    pub agent: AgentSpec,

    /// How long data is kept. Unset fields keep data until the tenant deletes it.
    #[serde(default)]
    pub retention: RetentionSpec,

    /// Overrides for the gateway workload; unset fields follow the plan.
    #[serde(default)]
    #[x_kube(validation = Rule::new("has(self.storage) || !has(oldSelf.storage)").message("storage cannot be removed once set"))]
    pub gateway: GatewaySpec,
}

fn yes() -> bool {
    true
}

/// A subscription plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Pro,
    Family,
    Team,
    Enterprise,
}

/// The Pi agent's settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// The mode of conversations that have none of their own: off (Pi stays silent), draft (Pi's replies wait for approval) or autopilot (Pi sends them).
    #[serde(default)]
    pub default_mode: AgentMode,

    /// The model Pi uses, at any OpenAI-compatible API. Unset: the platform's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,

    /// The most tokens (prompt and reply) one run may use. Unset: the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 2000000))]
    pub tokens_per_run: Option<i32>,

    /// The most tokens Pi may use in a day (UTC). Unset: the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1000, max = 10000000000_i64))]
    pub tokens_per_day: Option<i64>,

    /// The tools Pi may call. Unset: all of them; empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4), extend("x-kubernetes-list-type" = "set"))]
    pub tools: Option<Vec<AgentTool>>,

    /// Runs at once across conversations (one at a time in a conversation). Unset: the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_runs: Option<i32>,
}

/// What Pi does with a new message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    Off,
    #[default]
    Draft,
    Autopilot,
}

/// A tool Pi can call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentTool {
    SearchMessages,
    RememberFact,
    SetFollowUp,
    SummarizeConversation,
}

/// An OpenAI-compatible model endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The API's base URL up to /v1, e.g. https://api.openai.com/v1 or http://ollama.ai.svc:11434/v1.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s/]+\S*$"))]
    pub base_url: String,

    /// The model's name at that API, e.g. gpt-4.1-mini.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,

    /// The API key, by reference to a Secret in the tenant's namespace. Unset: requests carry no key (a local model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeyRef>,

    /// The request field that limits a reply's tokens: max_completion_tokens (OpenAI's current name, which its reasoning models require; recent vLLM, Ollama and llama.cpp read it) or max_tokens (for servers that know only the older name, such as llama-cpp-python's). Unset: max_completion_tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_limit_field: Option<TokenLimitField>,
}

/// A request field that limits a reply's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokenLimitField {
    MaxCompletionTokens,
    MaxTokens,
}

/// How long a tenant's data is kept.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Messages older than this many days are deleted. Unset: kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub messages_days: Option<i32>,

    /// Media (images, voice, files) older than this many days are deleted; the messages stay. Unset: kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub media_days: Option<i32>,
}

/// Overrides for the gateway workload.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The gateway's container image, e.g. to pin a version or try a build. Unset: the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+$"))]
    pub image: Option<String>,

    /// A RuntimeClass for a stronger sandbox (e.g. gVisor or Kata). Unset: the cluster's default runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = crate::DNS_SUBDOMAIN))]
    pub runtime_class_name: Option<String>,

    /// CPU and memory of the gateway container. Unset fields: the plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<GatewayResources>,

    /// The gateway's volume (database and media). Unset: the plan's size on the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<GatewayStorage>,
}

/// Requests and limits of the gateway container.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.cpu) || !has(self.limits.cpu) || quantity(self.limits.cpu).compareTo(quantity(self.requests.cpu)) >= 0")
        .message("limits.cpu must be at least requests.cpu"),
    validation = Rule::new("!has(self.requests) || !has(self.limits) || !has(self.requests.memory) || !has(self.limits.memory) || quantity(self.limits.memory).compareTo(quantity(self.requests.memory)) >= 0")
        .message("limits.memory must be at least requests.memory"),
)]
pub struct GatewayResources {
    /// What the gateway is guaranteed; the scheduler places it by these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<ComputeResources>,

    /// The most the gateway may use; past the memory limit it is restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ComputeResources>,
}

/// An amount of CPU and memory.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComputeResources {
    /// CPU as a quantity string, e.g. 250m or 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "cpu_schema")]
    pub cpu: Option<Quantity>,

    /// Memory as a quantity string, e.g. 256Mi or 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "memory_schema")]
    pub memory: Option<Quantity>,
}

/// The gateway's persistent volume.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("storageClassName is immutable"),
)]
pub struct GatewayStorage {
    /// The volume's size as a quantity string, e.g. 10Gi; at least 1Gi. It may only grow (the storage class must allow expansion).
    #[schemars(schema_with = "storage_size_schema")]
    // quantity() fails on a size that is no quantity, which the size's own rule reports.
    #[x_kube(validation = Rule::new("!(isQuantity(self) && isQuantity(oldSelf)) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage size may only grow"))]
    pub size: Quantity,

    /// The StorageClass of the volume. Unset: the cluster's default. Only set together with storage itself: once storage is set, the class can be neither set, changed nor removed, as a volume cannot change class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = crate::DNS_SUBDOMAIN))]
    pub storage_class_name: Option<String>,
}

/// A quantity field: a string (not the integer form, so CEL's `quantity()` reads every
/// value) that must parse and reach `min`.
fn quantity_at_least(min: &str, example: &str) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "maxLength": 32,
        "x-kubernetes-validations": [{
            "rule": format!("isQuantity(self) && quantity(self).compareTo(quantity('{min}')) >= 0"),
            "message": format!("must be a quantity of at least {min}, e.g. {example}"),
        }],
    })
}

fn cpu_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    quantity_at_least("10m", "250m")
}

fn memory_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    quantity_at_least("32Mi", "256Mi")
}

fn storage_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    quantity_at_least("1Gi", "10Gi")
}

/// What the operator observed of a tenant.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The tenant's conditions: Ready, Progressing, Degraded, Suspended and ReconcilePaused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// A one-word summary of the conditions: Pending, Provisioning, Ready, Degraded, Suspended, Paused (reconciliation paused) or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TenantPhase>,

    /// The namespace that holds the tenant's gateway and Connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,

    /// The gateway Service's URL inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// How the tenant's Connections are doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionCounts>,
}

/// A tenant's place in its life, derived from the conditions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum TenantPhase {
    Pending,
    Provisioning,
    Ready,
    Degraded,
    Suspended,
    Paused,
    Deleting,
}

/// Counts of a tenant's Connections by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionCounts {
    /// All Connections in the tenant's namespace.
    #[schemars(range(min = 0))]
    pub total: i32,
    /// Connections that are connected.
    #[schemars(range(min = 0))]
    pub connected: i32,
    /// Connections that run but not fully.
    #[schemars(range(min = 0))]
    pub degraded: i32,
    /// Connections waiting for a person to act.
    #[schemars(range(min = 0))]
    pub action_required: i32,
    /// connected/total, e.g. 2/3, for kubectl get.
    pub summary: String,
}

impl ConnectionCounts {
    /// Counts the states of a tenant's Connections; disconnected and unknown ones (a
    /// Connection without status is unknown) count in the total only.
    pub fn count(states: impl IntoIterator<Item = ConnectionState>) -> Self {
        let mut counts = ConnectionCounts::default();
        for state in states {
            counts.total += 1;
            match state {
                ConnectionState::Connected => counts.connected += 1,
                ConnectionState::Degraded => counts.degraded += 1,
                ConnectionState::ActionRequired => counts.action_required += 1,
                ConnectionState::Disconnected | ConnectionState::Unknown => {}
            }
        }
        counts.summary = format!("{}/{}", counts.connected, counts.total);
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_state_and_summarises_connected_of_total() {
        let counts = ConnectionCounts::count([
            ConnectionState::Connected,
            ConnectionState::Connected,
            ConnectionState::Degraded,
            ConnectionState::ActionRequired,
            ConnectionState::Disconnected,
            ConnectionState::Unknown,
        ]);
        assert_eq!(
            counts,
            ConnectionCounts {
                total: 6,
                connected: 2,
                degraded: 1,
                action_required: 1,
                summary: "2/6".into(),
            }
        );
        assert_eq!(ConnectionCounts::count([]).summary, "0/0");
    }
}
