//! The desired Kubernetes objects of one tenant, from its Tenant and Connections: a pure
//! function, so that everything the operator would write is tested without a cluster.
//! The reconciler (`crate::reconcile`) applies [`Desired`] and reports what it observed.
//!
//! Ownership: the Tenant is cluster-scoped, so it may own both the cluster-scoped
//! Namespace and every namespaced object in it. Each object carries a controller
//! reference to the Tenant, so that the garbage collector removes what the operator made
//! once the Tenant is gone, even if the operator is not running. The Tenant's finalizer
//! (`cloud.moltbot.com/cleanup`) runs first: with `retainDataOnDelete` the operator sets
//! the volume's PersistentVolume to `Retain` before it lets the Tenant go.

mod credentials;
mod limits;
mod network;
mod observed;
mod workload;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use moltbot_crds::{
    Connection, ROTATE_CREDENTIALS_ANNOTATION, RenderError, RenderSite, RenderedConfig,
    TENANT_LABEL, Tenant, Unsupported, gateway_config, tenant_namespace,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::settings::OperatorSettings;

pub use credentials::{
    CredentialsCheck, ROTATED_FOR_ANNOTATION, TenantCredentials, check_credentials,
    credentials_secret,
};

/// Name of the gateway's StatefulSet, Service and ServiceAccount.
pub const GATEWAY: &str = "gateway";
/// Name of the ConfigMap holding the gateway's config file.
pub const CONFIG_MAP: &str = "gateway-config";
/// The config file's key in [`CONFIG_MAP`] and name in [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "gateway.yaml";
/// Where the config is mounted in the gateway container.
pub const CONFIG_DIR: &str = "/etc/moltbot";
/// Where the gateway's volume is mounted: its data directory.
pub const DATA_DIR: &str = "/var/lib/moltbot";
/// Name of the gateway's PersistentVolumeClaim.
pub const DATA_VOLUME: &str = "gateway-data";
/// Pod template annotation: a digest of everything the gateway reads only at start, so
/// that a change rolls the pod.
pub const CONFIG_HASH_ANNOTATION: &str = "cloud.moltbot.com/config-hash";

/// Everything one tenant should have, in the order the reconciler applies it: the
/// namespace and its guard rails before anything runs in it, the config and volume
/// before the pod that mounts them, and the StatefulSet's Service before it. (The generated credentials Secret is separate,
/// see [`credentials_secret`]: its values are made once, not rebuilt.)
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Desired {
    pub namespace: Namespace,
    pub resource_quota: ResourceQuota,
    pub limit_range: LimitRange,
    pub service_account: ServiceAccount,
    pub network_policies: Vec<NetworkPolicy>,
    pub config_map: ConfigMap,
    pub persistent_volume_claim: PersistentVolumeClaim,
    pub service: Service,
    pub stateful_set: StatefulSet,
    /// The gateway's in-cluster URL, for the Tenant's `status.endpoint`.
    pub endpoint: String,
    /// The value of [`CONFIG_HASH_ANNOTATION`].
    pub config_hash: String,
    /// Connections the gateway cannot serve yet; the reconciler reports each on its
    /// Connection.
    #[serde(skip)]
    pub unsupported: Vec<Unsupported>,
}

/// Why a tenant's objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("Tenant {0} has no metadata.uid: build from a Tenant as the API server returned it")]
    NotStored(String),
    #[error("Tenant {tenant}: {field} is {value:?}, which is not a quantity")]
    Quantity {
        tenant: String,
        field: &'static str,
        value: String,
    },
    #[error("Tenant {tenant}: {message}")]
    Resources { tenant: String, message: String },
}

/// The objects `tenant` should have, serving `connections` (the Connections in its
/// namespace).
pub fn build(
    tenant: &Tenant,
    connections: &[Connection],
    settings: &OperatorSettings,
) -> Result<Desired, BuildError> {
    let names = Names::of(tenant)?;
    let site = RenderSite {
        data_dir: DATA_DIR.into(),
        // Every interface: the Service and the probes reach the pod from outside it.
        listen: ([0, 0, 0, 0], settings.gateway_port).into(),
        telegram_api_base: settings.telegram_api_base.clone(),
        webhook_base_url: settings
            .webhook_base_url
            .as_ref()
            .map(|base| format!("{}/{}", base.trim_end_matches('/'), names.tenant)),
        default_model: settings.default_model.clone(),
    };
    let rendered = gateway_config(tenant, connections, &site)?;
    let config_hash = config_hash(tenant, &rendered);
    let compute = limits::Compute::of(tenant, &names)?;
    Ok(Desired {
        namespace: namespace(&names),
        resource_quota: limits::resource_quota(&names, &compute),
        limit_range: limits::limit_range(&names, &compute),
        service_account: workload::service_account(&names),
        network_policies: network::network_policies(&names, settings),
        config_map: workload::config_map(&names, &rendered),
        persistent_volume_claim: workload::persistent_volume_claim(&names, &compute),
        service: workload::service(&names, settings),
        stateful_set: workload::stateful_set(
            tenant,
            &names,
            settings,
            &compute,
            &rendered,
            &config_hash,
        ),
        endpoint: format!(
            "http://{GATEWAY}.{}.svc:{}",
            names.namespace, settings.gateway_port
        ),
        config_hash,
        unsupported: rendered.unsupported,
    })
}

/// The names every object of one tenant shares.
pub(crate) struct Names {
    tenant: String,
    namespace: String,
    owner: OwnerReference,
}

impl Names {
    fn of(tenant: &Tenant) -> Result<Self, BuildError> {
        let name = tenant
            .metadata
            .name
            .clone()
            .ok_or(RenderError::UnnamedTenant)?;
        let owner = tenant
            .controller_owner_ref(&())
            .ok_or_else(|| BuildError::NotStored(name.clone()))?;
        Ok(Self {
            namespace: tenant_namespace(&name),
            tenant: name,
            owner,
        })
    }

    /// Labels of every object of the tenant.
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (TENANT_LABEL.to_string(), self.tenant.clone()),
            ("app.kubernetes.io/instance".into(), self.tenant.clone()),
            ("app.kubernetes.io/part-of".into(), "moltbot-cloud".into()),
            (
                "app.kubernetes.io/managed-by".into(),
                "moltbot-operator".into(),
            ),
        ])
    }

    /// Labels that pick the gateway's pods: the StatefulSet's selector (immutable, so
    /// only these two), the Service's and the NetworkPolicies'.
    fn gateway_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "moltbot-gateway".into()),
            (TENANT_LABEL.to_string(), self.tenant.clone()),
        ])
    }

    /// Labels of the gateway's own objects (workload, config, volume, Service).
    fn gateway_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.extend(self.gateway_selector());
        labels.insert("app.kubernetes.io/component".into(), "gateway".into());
        labels
    }

    /// Metadata of an object named `name` in the tenant's namespace.
    fn meta(&self, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The tenant's namespace, held to Pod Security `restricted` in all three modes: enforce
/// refuses a pod that breaks it, audit and warn report one (e.g. in a Job added later).
fn namespace(names: &Names) -> Namespace {
    let mut labels = names.labels();
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
    }
    Namespace {
        metadata: ObjectMeta {
            name: Some(names.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![names.owner.clone()]),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

/// A digest of what the gateway reads only at start: the config file, where each
/// placeholder's value comes from, and the credentials' rotation (environment variables
/// are fixed for a container's life, so rotated credentials need a new pod).
fn config_hash(tenant: &Tenant, rendered: &RenderedConfig) -> String {
    let mut digest = Sha256::new();
    digest.update(rendered.yaml.as_bytes());
    for env in &rendered.secret_env {
        digest.update(format!("\n{}={}/{}", env.env, env.secret_name, env.key));
    }
    digest.update(format!("\nrotation={}", rotation_request(tenant)));
    hex::encode(digest.finalize())
}

/// The Tenant's latest request for new credentials; empty if it never asked.
fn rotation_request(tenant: &Tenant) -> &str {
    tenant
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_CREDENTIALS_ANNOTATION))
        .map_or("", String::as_str)
}
