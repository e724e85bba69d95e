//! The finalizer's cleanup: stop the gateway, keep or release the data as the Tenant
//! asks, remove the namespace. Each step tolerates having run before (or never).

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use moltbot_crds::{TENANT_LABEL, Tenant, tenant_namespace};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER, api};
use crate::build::{DATA_VOLUME, GATEWAY};

pub(super) async fn cleanup(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    let namespace = tenant_namespace(&name);
    let client = &ctx.client;

    // The gateway gets its SIGTERM and checkpoints its database before the volume's fate
    // is decided. A merge patch, since an apply of only the replicas would drop the rest
    // of the operator's fields.
    let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    let scaled = stateful_sets
        .patch(
            GATEWAY,
            &merge_as_operator(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await;
    ignore_missing(scaled, "scale down", || {
        format!("StatefulSet {namespace}/{GATEWAY}")
    })?;

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let claim = api(
        "read",
        || format!("PersistentVolumeClaim {namespace}/{DATA_VOLUME}"),
        claims.get_opt(DATA_VOLUME),
    )
    .await?;
    if let Some(claim) = &claim {
        keep_or_release_volume(tenant, ctx, claim).await?;
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deleted = namespaces
        .delete(&namespace, &DeleteParams::background())
        .await;
    ignore_missing(deleted, "delete", || format!("Namespace {namespace}"))?;
    tracing::info!(tenant = %name, "tenant cleaned up");
    Ok(Action::await_change())
}

/// Sets the reclaim policy of the claim's volume, if it is bound, to what the Tenant's
/// `retainDataOnDelete` asks: `Retain` keeps the data once the claim goes, `Delete`
/// lets it go with it. A patch that changes nothing writes nothing.
pub(super) async fn keep_or_release_volume(
    tenant: &Tenant,
    ctx: &Context,
    claim: &PersistentVolumeClaim,
) -> Result<(), Error> {
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .filter(|v| !v.is_empty());
    let Some(volume) = volume else {
        return Ok(());
    };
    let policy = if tenant.spec.retain_data_on_delete {
        "Retain"
    } else {
        "Delete"
    };
    // The label finds a kept volume again, e.g. to restore or export it.
    let patch = json!({
        "metadata": {"labels": {TENANT_LABEL: tenant.name_any()}},
        "spec": {"persistentVolumeReclaimPolicy": policy},
    });
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let patched = volumes
        .patch(volume, &merge_as_operator(), &Patch::Merge(&patch))
        .await;
    ignore_missing(patched, "set the reclaim policy of", || {
        format!("PersistentVolume {volume}")
    })
}

/// A merge patch by the operator's field manager.
fn merge_as_operator() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// A missing object needs no cleanup.
fn ignore_missing<T>(
    result: kube::Result<T>,
    verb: &'static str,
    object: impl FnOnce() -> String,
) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(source) => Err(Error::Api {
            verb,
            object: object(),
            source,
        }),
    }
}
