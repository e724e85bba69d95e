//! The apply stage: a Tenant's objects, in the order [`Desired`] gives, then its status.

use std::collections::BTreeMap;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolumeClaim, ResourceQuota, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use moltbot_crds::conditions::Time;
use moltbot_crds::{
    CREDENTIALS_SECRET, Connection, ConnectionCounts, ConnectionState, Tenant, tenant_namespace,
};
use rand::Rng;

use super::cleanup::keep_or_release_volume;
use super::status::{Outcome, Rollout, next_status};
use super::{Context, Error, RESYNC, api, apply_object, apply_status, events, is_paused};
use crate::build;
use crate::build::{
    CredentialsCheck, DATA_VOLUME, Desired, TenantCredentials, check_credentials,
    credentials_secret,
};

/// Brings the Tenant's objects to what its spec asks, and reports.
pub(super) async fn apply(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let namespace = tenant_namespace(&tenant.name_any());
    let connections = ctx.connections_in(&namespace);
    let counts = count(&connections);
    if is_paused(tenant) {
        write_status(ctx, tenant, &Outcome::Paused, counts).await?;
        return Ok(Action::await_change());
    }
    let mut desired = match build(tenant, &connections, &ctx.settings) {
        Ok(desired) => desired,
        Err(error) => {
            // Only a new spec (or Connection) can fix this: no retry until one comes.
            tracing::warn!(tenant = %tenant.name_any(), %error, "invalid Tenant");
            let outcome = Outcome::Invalid {
                message: error.to_string(),
            };
            write_status(ctx, tenant, &outcome, counts).await?;
            return Ok(Action::await_change());
        }
    };
    match apply_objects(tenant, ctx, &mut desired).await {
        Ok(outcome) => {
            write_status(ctx, tenant, &outcome, counts).await?;
            Ok(Action::requeue(RESYNC))
        }
        Err(error) => {
            // Say so on the Tenant before the retry: part of it may be applied.
            let outcome = Outcome::ApplyFailed {
                message: error.to_string(),
            };
            if let Err(status_error) = write_status(ctx, tenant, &outcome, counts).await {
                tracing::warn!(tenant = %tenant.name_any(), error = %status_error, "cannot report a failed apply");
            }
            Err(error)
        }
    }
}

/// Applies every object; reads the credentials, the other Secrets' versions and the
/// volume on the way, because the pod's config hash and the claim's size depend on them.
async fn apply_objects(
    tenant: &Tenant,
    ctx: &Context,
    desired: &mut Desired,
) -> Result<Outcome, Error> {
    let client = &ctx.client;
    let namespace = desired.namespace.name_any();
    let ns = InNamespace(client, &namespace);
    apply_object(&Api::<Namespace>::all(client.clone()), &desired.namespace).await?;

    let claims: Api<PersistentVolumeClaim> = ns.api();
    let claim = api(
        "read",
        || format!("PersistentVolumeClaim {namespace}/{DATA_VOLUME}"),
        claims.get_opt(DATA_VOLUME),
    )
    .await?;
    desired.keep_storage_of(claim.as_ref());

    apply_object::<ResourceQuota>(&ns.api(), &desired.resource_quota).await?;
    apply_object::<LimitRange>(&ns.api(), &desired.limit_range).await?;
    apply_object::<ServiceAccount>(&ns.api(), &desired.service_account).await?;
    for policy in &desired.network_policies {
        apply_object::<NetworkPolicy>(&ns.api(), policy).await?;
    }
    apply_object::<ConfigMap>(&ns.api(), &desired.config_map).await?;

    let secrets: Api<Secret> = ns.api();
    let credentials_version = ensure_credentials(tenant, ctx, &secrets).await?;
    let mut versions = BTreeMap::new();
    for name in desired.referenced_secrets() {
        let version = if name == CREDENTIALS_SECRET {
            credentials_version.clone()
        } else {
            // Metadata only: the operator has no use for the values.
            api(
                "read",
                || format!("Secret {namespace}/{name}"),
                secrets.get_metadata_opt(&name),
            )
            .await?
            .and_then(|secret| secret.metadata.resource_version)
        };
        versions.insert(name, version);
    }
    desired.pin_secret_versions(&versions);
    let missing_secrets = versions
        .into_iter()
        .filter_map(|(name, version)| version.is_none().then_some(name))
        .collect();

    apply_object::<PersistentVolumeClaim>(&ns.api(), &desired.persistent_volume_claim).await?;
    // Now rather than only at deletion: a foreground delete of the Tenant lets the
    // garbage collector remove the namespace, and with it the claim, before the
    // finalizer's cleanup runs.
    if let Some(claim) = &claim {
        keep_or_release_volume(tenant, ctx, claim).await?;
    }
    apply_object::<Service>(&ns.api(), &desired.service).await?;
    let stateful_set = apply_object::<StatefulSet>(&ns.api(), &desired.stateful_set).await?;
    Ok(Outcome::Applied {
        endpoint: desired.endpoint.clone(),
        gateway: Rollout::of(&stateful_set),
        missing_secrets,
    })
}

/// An `Api` of any kind in the tenant's namespace.
struct InNamespace<'a>(&'a kube::Client, &'a str);

impl InNamespace<'_> {
    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.0.clone(), self.1)
    }
}

/// Makes the credentials Secret when it is missing, damaged or due for rotation, and
/// returns its resourceVersion.
async fn ensure_credentials(
    tenant: &Tenant,
    ctx: &Context,
    secrets: &Api<Secret>,
) -> Result<Option<String>, Error> {
    let current = api(
        "read",
        || {
            format!(
                "Secret {CREDENTIALS_SECRET} of Tenant {}",
                tenant.name_any()
            )
        },
        secrets.get_opt(CREDENTIALS_SECRET),
    )
    .await?;
    let check = check_credentials(tenant, current.as_ref());
    if check == CredentialsCheck::Current {
        return Ok(current.and_then(|s| s.metadata.resource_version));
    }
    let secret = credentials_secret(tenant, &generate_credentials())?;
    let applied = apply_object(secrets, &secret).await?;
    tracing::info!(tenant = %tenant.name_any(), ?check, "wrote new gateway credentials");
    let rotated = check == CredentialsCheck::RotationRequested;
    events::publish(ctx, &tenant.object_ref(&()), &events::credentials(rotated)).await;
    Ok(applied.metadata.resource_version)
}

/// 256 random bits each, as hex: within the gateway's token alphabet.
fn generate_credentials() -> TenantCredentials {
    let random = || hex::encode(rand::rng().random::<[u8; 32]>());
    TenantCredentials {
        inbox_token: random(),
        ingress_hmac_key: random(),
    }
}

fn count(connections: &[Connection]) -> ConnectionCounts {
    ConnectionCounts::count(connections.iter().map(|c| {
        c.status
            .as_ref()
            .and_then(|s| s.state)
            .unwrap_or(ConnectionState::Unknown)
    }))
}

/// Writes the status `outcome` calls for, only if it differs from the Tenant's: an
/// unchanged status is not written, so a reconcile never triggers another by itself.
async fn write_status(
    ctx: &Context,
    tenant: &Tenant,
    outcome: &Outcome,
    counts: ConnectionCounts,
) -> Result<(), Error> {
    let status = next_status(tenant, outcome, counts, Time(Timestamp::now()));
    if tenant.status.as_ref() == Some(&status) {
        return Ok(());
    }
    apply_status(&Api::<Tenant>::all(ctx.client.clone()), tenant, &status).await?;
    let old = tenant
        .status
        .as_ref()
        .map_or(&[][..], |s| &s.conditions[..]);
    for event in events::transitions(old, &status.conditions, events::TENANT_EVENTS) {
        events::publish(ctx, &tenant.object_ref(&()), &event).await;
    }
    Ok(())
}
