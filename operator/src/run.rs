//! The running operator: caches, the Tenant controller, the health poller, the admin
//! server and leader election, stopped together by one token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, Predicate, WatchStreamExt, controller, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use moltbot_crds::{Connection, TENANT_NAMESPACE_PREFIX, Tenant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::health;
use crate::metrics::Metrics;
use crate::reconcile::{Context, FIELD_MANAGER, error_policy, reconcile};
use crate::settings::OperatorSettings;

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub settings: OperatorSettings,
    /// Tenants reconciled at once.
    pub concurrency: u16,
    /// How often each serving gateway's health is read.
    pub health_interval: Duration,
    /// Where `/live`, `/ready` and `/metrics` listen.
    pub admin: SocketAddr,
    /// With several replicas, only the holder of this Lease reconciles.
    pub leader_election: Option<LeaderElection>,
    /// This replica's name, for events and the Lease (the pod's name).
    pub identity: String,
}

#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub namespace: String,
    pub lease: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("leader election with Lease {lease}: {source}")]
    Lease {
        lease: String,
        source: LeaseManagerError,
    },
    #[error("another replica took over the Lease; stopping so that only one reconciles")]
    LostLease,
}

/// Runs until `stop` is cancelled (or this replica loses the Lease).
pub async fn run(
    client: Client,
    options: RunOptions,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(Metrics::default());
    let readiness = Readiness::default();
    let listener = TcpListener::bind(options.admin)
        .await
        .map_err(|source| RunError::Listen {
            address: options.admin,
            source,
        })?;
    let admin = tokio::spawn({
        let router = admin::router(metrics.clone(), readiness.clone());
        let stop = stop.clone();
        async move {
            if let Err(error) = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(%error, "the admin server stopped");
            }
        }
    });

    let mut lost_lease = false;
    match &options.leader_election {
        None => {
            readiness.set_leading(true);
            controllers(client, &options, metrics, readiness, stop.clone()).await;
        }
        Some(election) => {
            let lease_error = |source| RunError::Lease {
                lease: election.lease.clone(),
                source,
            };
            let manager = LeaseManagerBuilder::new(client.clone(), &election.lease)
                .with_namespace(&election.namespace)
                .with_identity(&options.identity)
                .with_field_manager(FIELD_MANAGER)
                .build()
                .await
                .map_err(lease_error)?;
            let (mut leading, lease_task) = manager.watch().await;
            tracing::info!(lease = %election.lease, "waiting to lead");
            let became_leader = tokio::select! {
                () = stop.cancelled() => false,
                result = leading.wait_for(|leads| *leads) => result.is_ok(),
            };
            if became_leader {
                tracing::info!("leading");
                readiness.set_leading(true);
                let watch_lease = {
                    let stop = stop.clone();
                    async move {
                        tokio::select! {
                            () = stop.cancelled() => false,
                            _ = leading.wait_for(|leads| !*leads) => { stop.cancel(); true }
                        }
                    }
                };
                let (_, lost) = tokio::join!(
                    controllers(client, &options, metrics, readiness.clone(), stop.clone()),
                    watch_lease
                );
                lost_lease = lost;
                readiness.set_leading(false);
            } else {
                drop(leading);
            }
            // Dropping the receiver (above, or with `watch_lease`) makes the manager
            // release the Lease, if held, and end.
            match lease_task.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::warn!(%error, "cannot release the Lease"),
                Err(error) => tracing::warn!(%error, "the Lease task failed"),
            }
        }
    }
    stop.cancel();
    let _ = admin.await;
    if lost_lease {
        return Err(RunError::LostLease);
    }
    Ok(())
}

/// The caches and the controllers, until `stop`.
async fn controllers(
    client: Client,
    options: &RunOptions,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    stop: CancellationToken,
) {
    // Connections first: a Tenant's config is built from them, so no Tenant may be
    // reconciled before their cache is filled.
    let (connections, connection_writer) = reflector::store::<Connection>();
    let (to_tenants, from_connections) = tokio::sync::mpsc::channel(1024);
    let connection_watch = cached(Api::<Connection>::all(client.clone()), connection_writer)
        .touched_objects()
        .for_each(move |event| {
            if let Some(tenant) = event.ok().as_ref().and_then(tenant_of) {
                // A full queue drops the trigger; the hourly resync covers it.
                let _ = to_tenants.try_send(tenant);
            }
            std::future::ready(())
        });
    tokio::spawn(stopped_by(stop.clone(), connection_watch));
    tokio::select! {
        () = stop.cancelled() => return,
        _ = connections.wait_until_ready() => {}
    }
    let connection_triggers =
        futures_util::stream::unfold(from_connections, |mut receiver| async {
            receiver.recv().await.map(|tenant| (tenant, receiver))
        });

    let (tenants, tenant_writer) = reflector::store::<Tenant>();
    let tenant_changes = cached(Api::<Tenant>::all(client.clone()), tenant_writer)
        .inspect(move |event| {
            // Not `Store::wait_until_ready`: it wakes only its latest waiter, and the
            // controller waits on the same store.
            if let Ok(watcher::Event::InitDone) = event {
                readiness.set_synced();
            }
        })
        .applied_objects()
        .predicate_filter(tenant_trigger, Default::default());
    // Metadata only: a gateway's rollout is read from the apply's answer; the watch only
    // says when to look again.
    let gateways = watcher(
        Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()),
        watcher::Config::default()
            .labels("app.kubernetes.io/managed-by=moltbot-operator")
            .any_semantic(),
    )
    .default_backoff()
    .touched_objects();

    let ctx = Arc::new(Context::new(
        client,
        options.settings.clone(),
        connections,
        metrics,
        Some(options.identity.clone()),
    ));
    tokio::spawn(health::poll(
        ctx.clone(),
        tenants.clone(),
        options.health_interval,
        usize::from(options.concurrency),
        stop.clone(),
    ));
    Controller::for_stream(tenant_changes, tenants)
        .watches_stream(gateways, owning_tenant)
        .reconcile_on(connection_triggers)
        .with_config(controller::Config::default().concurrency(options.concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            if let Err(error) = result {
                tracing::debug!(%error, "controller");
            }
            std::future::ready(())
        })
        .await;
    tracing::info!("controllers stopped");
}

async fn stopped_by(stop: CancellationToken, work: impl Future<Output = ()>) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = work => {}
    }
}

/// A watch of every `K`, kept in `writer`'s store slimmed.
fn cached<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
) -> impl futures_util::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
}

/// Drops what the operator never reads from cached objects: managedFields and kubectl's
/// copy of the last applied object are often larger than the rest.
pub fn slim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// What of a Tenant triggers its reconcile. Status writes (the operator's own) do not,
/// so that writing status cannot loop; spec, annotation (paused, rotation) and finalizer
/// changes do, and deletion bumps the generation.
fn tenant_trigger(tenant: &Tenant) -> Option<u64> {
    predicates::generation
        .combine(predicates::annotations)
        .combine(predicates::finalizers)
        .hash_property(tenant)
}

/// The Tenant that owns a gateway StatefulSet. Not `owns_stream`: it gives a
/// cluster-scoped owner its child's namespace, so the same Tenant would be queued under
/// two keys and reconciled twice at once.
fn owning_tenant(gateway: PartialObjectMeta<StatefulSet>) -> Option<ObjectRef<Tenant>> {
    gateway
        .metadata
        .owner_references?
        .into_iter()
        .find(|owner| {
            owner.kind == Tenant::kind(&()) && owner.api_version == Tenant::api_version(&())
        })
        .map(|owner| ObjectRef::new(&owner.name))
}

/// The Tenant whose namespace holds `connection`.
fn tenant_of(connection: &Connection) -> Option<ObjectRef<Tenant>> {
    let namespace = connection.metadata.namespace.as_deref()?;
    namespace
        .strip_prefix(TENANT_NAMESPACE_PREFIX)
        .map(ObjectRef::new)
}

#[cfg(test)]
mod tests {
    use moltbot_crds::{PAUSED_ANNOTATION, TenantSpec, TenantStatus};

    use super::*;

    fn tenant() -> Tenant {
        let spec: TenantSpec =
            serde_json::from_value(serde_json::json!({"owner": "usr_a", "plan": "free"})).unwrap();
        let mut tenant = Tenant::new("a", spec);
        tenant.metadata.generation = Some(1);
        tenant
    }

    #[test]
    fn status_writes_do_not_trigger_but_spec_annotations_and_finalizers_do() {
        let before = tenant_trigger(&tenant());
        let mut status_only = tenant();
        status_only.status = Some(TenantStatus {
            endpoint: Some("http://gateway.tenant-a.svc:8080".into()),
            ..TenantStatus::default()
        });
        status_only.metadata.resource_version = Some("2".into());
        assert_eq!(tenant_trigger(&status_only), before);

        let mut spec = tenant();
        spec.metadata.generation = Some(2);
        let mut paused = tenant();
        paused
            .annotations_mut()
            .insert(PAUSED_ANNOTATION.into(), "true".into());
        let mut finalized = tenant();
        finalized
            .finalizers_mut()
            .push("cloud.moltbot.com/cleanup".into());
        for changed in [spec, paused, finalized] {
            assert_ne!(tenant_trigger(&changed), before);
        }
    }

    #[test]
    fn cached_objects_lose_managed_fields_and_kubectls_copy() {
        let mut tenant = tenant();
        tenant.metadata.managed_fields = Some(vec![Default::default()]);
        tenant.annotations_mut().insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "{}".into(),
        );
        tenant
            .annotations_mut()
            .insert(PAUSED_ANNOTATION.into(), "true".into());
        slim(&mut tenant);
        assert!(tenant.managed_fields().is_empty());
        assert_eq!(tenant.annotations().len(), 1);
    }

    #[test]
    fn a_gateway_triggers_its_tenant_under_the_tenants_own_key() {
        let mut tenant = tenant();
        tenant.metadata.uid = Some("6f1c1d52".into());
        let mut gateway = PartialObjectMeta::<StatefulSet>::default();
        gateway.metadata.namespace = Some("tenant-a".into());
        gateway.metadata.owner_references = Some(vec![tenant.controller_owner_ref(&()).unwrap()]);
        let key = owning_tenant(gateway).unwrap();
        assert_eq!(key, ObjectRef::from_obj(&tenant));
        assert_eq!(key.namespace, None);
        assert_eq!(owning_tenant(PartialObjectMeta::default()), None);
    }

    #[test]
    fn a_connection_triggers_the_tenant_of_its_namespace() {
        let spec = serde_json::from_value(serde_json::json!({"type": "webchat"})).unwrap();
        let mut connection = Connection::new("webchat", spec);
        connection.metadata.namespace = Some("tenant-alice".into());
        assert_eq!(tenant_of(&connection), Some(ObjectRef::new("alice")));
        connection.metadata.namespace = Some("default".into());
        assert_eq!(tenant_of(&connection), None);
    }
}
