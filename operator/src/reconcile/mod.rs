//! The Tenant reconciler, in Stackable's stages: fetch what the cluster holds, validate
//! and build (the pure [`crate::build`]), apply with server-side apply, then report in
//! status. A Tenant's finalizer runs [`cleanup`] before it goes.
//!
//! Everything is written by one field manager, [`FIELD_MANAGER`], with force: the
//! operator owns what it builds, and a conflicting hand edit is undone.

mod apply;
mod cleanup;
pub(crate) mod events;
mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use moltbot_crds::{Connection, FINALIZER, PAUSED_ANNOTATION, Tenant};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::BuildError;
use crate::metrics::Metrics;
use crate::settings::OperatorSettings;

pub use status::next_status;

/// The one field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = "moltbot-operator";

/// How often a Tenant is looked at when nothing changes: a safety net for missed
/// events, not a poll (≤ 2 reconciles per Tenant per hour at rest).
pub const RESYNC: Duration = Duration::from_secs(60 * 60);
/// The first retry after a failure; each further failure doubles it up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(10 * 60);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    /// Every Connection, from the operator's cache: a tenant's are read from here rather
    /// than listed at each reconcile.
    pub connections: Store<Connection>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Failures in a row per Tenant, for the backoff; reset by a success.
    failures: Mutex<HashMap<ObjectRef<Tenant>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: OperatorSettings,
        connections: Store<Connection>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            connections,
            metrics,
            failures: Mutex::default(),
        }
    }

    /// The Connections in `namespace` that are not being deleted.
    pub(crate) fn connections_in(&self, namespace: &str) -> Vec<Connection> {
        let mut connections: Vec<Connection> = self
            .connections
            .state()
            .iter()
            .filter(|c| c.namespace().as_deref() == Some(namespace))
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .map(|c| (**c).clone())
            .collect();
        // The store's order is a hash map's; the config must not depend on it.
        connections.sort_by_key(|c| c.name_any());
        connections
    }

    /// Records a failure of `tenant` and says when to try again.
    fn backoff(&self, tenant: ObjectRef<Tenant>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(tenant).or_insert(0);
        *count = count.saturating_add(1);
        backoff_after(*count)
    }

    fn succeeded(&self, tenant: &ObjectRef<Tenant>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(tenant);
    }
}

/// The wait after `failures` failures in a row: 5 s, 10 s, 20 s … up to 10 minutes.
fn backoff_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    MIN_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Why a reconcile failed; the controller retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {verb} {object}: {source}")]
    Api {
        verb: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("the finalizer {FINALIZER} of Tenant {tenant}: {message}")]
    Finalizer { tenant: String, message: String },
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl Error {
    /// A short label for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Api {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                500.. => "ServerError",
                _ => "ApiError",
            },
            Error::Api { .. } => "Unreachable",
            Error::Finalizer { .. } => "FinalizerFailed",
            Error::Build(_) => "InvalidSpec",
        }
    }
}

/// Runs `call`, naming what it did in its error.
pub(crate) async fn api<T>(
    verb: &'static str,
    object: impl FnOnce() -> String,
    call: impl Future<Output = kube::Result<T>>,
) -> Result<T, Error> {
    call.await.map_err(|source| Error::Api {
        verb,
        object: object(),
        source,
    })
}

/// Server-side applies `object` as the operator, taking over conflicting fields.
async fn apply_object<K>(api_: &Api<K>, object: &K) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api(
        "apply",
        || describe(object),
        api_.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        ),
    )
    .await
}

/// Writes `status` into `object`'s status subresource by server-side apply.
pub(crate) async fn apply_status<K>(
    api_: &Api<K>,
    object: &K,
    status: &impl Serialize,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api(
        "write the status of",
        || describe(object),
        api_.patch_status(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        ),
    )
    .await?;
    Ok(())
}

/// `Kind namespace/name` or `Kind name`, for errors and logs.
fn describe<K: Resource<DynamicType = ()>>(object: &K) -> String {
    let kind = K::kind(&());
    match &object.meta().namespace {
        Some(namespace) => format!("{kind} {namespace}/{}", object.name_any()),
        None => format!("{kind} {}", object.name_any()),
    }
}

/// Whether the Tenant asks the operator to leave it alone.
pub fn is_paused(tenant: &Tenant) -> bool {
    tenant
        .annotations()
        .get(PAUSED_ANNOTATION)
        .map(String::as_str)
        == Some("true")
}

/// The controller's reconcile: the finalizer first, then [`apply::apply`] or
/// [`cleanup::cleanup`].
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let reference = ObjectRef::from_obj(&*tenant);
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let result = finalizer(&tenants, FINALIZER, tenant.clone(), |event| async {
        match event {
            finalizer::Event::Apply(tenant) => apply::apply(&tenant, &ctx).await,
            finalizer::Event::Cleanup(tenant) => cleanup::cleanup(&tenant, &ctx).await,
        }
    })
    .await
    .map_err(|error| match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        finalizer::Error::AddFinalizer(source) | finalizer::Error::RemoveFinalizer(source) => {
            Error::Api {
                verb: "update the finalizers of",
                object: format!("Tenant {}", tenant.name_any()),
                source,
            }
        }
        other => Error::Finalizer {
            tenant: tenant.name_any(),
            message: other.to_string(),
        },
    });
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err());
    match &result {
        Ok(_) => ctx.succeeded(&reference),
        Err(error) => {
            tracing::warn!(tenant = %tenant.name_any(), %error, "reconcile failed");
            events::publish(&ctx, &tenant_ref(&tenant), &events::failed(error)).await;
        }
    }
    result
}

/// The controller's error policy: retry with this Tenant's own exponential backoff.
pub fn error_policy(tenant: Arc<Tenant>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.backoff(ObjectRef::from_obj(&*tenant)))
}

fn tenant_ref(tenant: &Tenant) -> ObjectReference {
    tenant.object_ref(&())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_ten_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff_after(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff_after(u32::MAX), MAX_BACKOFF);
    }
}
