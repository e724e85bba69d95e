//! The Tenant's status from what one reconcile found: pure, so that each outcome's
//! conditions are tested without a cluster, and so that an unchanged outcome yields an
//! equal status (which the reconciler then does not write).

use k8s_openapi::api::apps::v1::StatefulSet;
use moltbot_crds::conditions::{
    ConditionStatus, DEGRADED, PROGRESSING, READY, RECONCILE_PAUSED, SUSPENDED, Time,
    find_condition, new_condition, set_condition,
};
use moltbot_crds::{ConnectionCounts, Tenant, TenantPhase, TenantStatus};

/// What a reconcile of a Tenant found.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The `paused` annotation is set: nothing was changed.
    Paused,
    /// The spec cannot be built; nothing was applied.
    Invalid { message: String },
    /// Applying stopped at an object the API server refused; the objects before it are
    /// applied, the rest are not.
    ApplyFailed { message: String },
    /// Every object is applied.
    Applied {
        endpoint: String,
        gateway: Rollout,
        /// Secrets the gateway reads that do not exist (its pod cannot start).
        missing_secrets: Vec<String>,
    },
}

/// Where the gateway's StatefulSet is, from its status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// Its one pod is ready.
    pub ready: bool,
    /// The pod runs the latest template.
    pub updated: bool,
}

impl Rollout {
    pub fn of(stateful_set: &StatefulSet) -> Self {
        let generation = stateful_set.metadata.generation;
        let Some(status) = &stateful_set.status else {
            return Self {
                ready: false,
                updated: false,
            };
        };
        let wanted = stateful_set
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let seen = generation.is_none() || status.observed_generation >= generation;
        Self {
            ready: status.ready_replicas.unwrap_or(0) >= wanted,
            updated: seen
                && status.updated_replicas.unwrap_or(0) >= wanted
                && status.current_revision == status.update_revision,
        }
    }
}

/// The status `tenant` should have after `outcome`, starting from its current one (so
/// that unchanged conditions keep their transition times).
pub fn next_status(
    tenant: &Tenant,
    outcome: &Outcome,
    connections: ConnectionCounts,
    now: Time,
) -> TenantStatus {
    let generation = tenant.metadata.generation;
    let mut status = tenant.status.clone().unwrap_or_default();
    let mut set = |type_: &str, value: bool, reason: &str, message: &str| {
        set_condition(
            &mut status.conditions,
            new_condition(
                type_,
                ConditionStatus::from(value),
                reason,
                message,
                generation,
                now.clone(),
            ),
        );
    };
    let suspended = tenant.spec.suspended;
    match outcome {
        Outcome::Paused => {
            set(
                RECONCILE_PAUSED,
                true,
                "PausedByAnnotation",
                "cloud.moltbot.com/paused is true: the operator changes nothing",
            );
        }
        Outcome::Invalid { message } | Outcome::ApplyFailed { message } => {
            // An invalid spec waits for a new one; a refused apply is retried.
            let (reason, retrying, progress) = match outcome {
                Outcome::Invalid { .. } => ("InvalidSpec", false, "nothing was applied"),
                _ => ("ApplyFailed", true, "retrying with backoff"),
            };
            set(RECONCILE_PAUSED, false, "Reconciling", "");
            set(DEGRADED, true, reason, message);
            set(PROGRESSING, retrying, reason, progress);
            set(READY, false, reason, message);
            set(SUSPENDED, suspended, suspended_reason(suspended), "");
        }
        Outcome::Applied {
            endpoint,
            gateway,
            missing_secrets,
        } => {
            set(RECONCILE_PAUSED, false, "Reconciling", "");
            if missing_secrets.is_empty() {
                set(DEGRADED, false, "AsExpected", "");
            } else {
                let message = format!(
                    "the gateway waits for missing Secrets: {}",
                    missing_secrets.join(", ")
                );
                set(DEGRADED, true, "SecretMissing", &message);
            }
            set(SUSPENDED, suspended, suspended_reason(suspended), "");
            if suspended {
                set(
                    PROGRESSING,
                    false,
                    "Suspended",
                    "the gateway is scaled to zero",
                );
                set(READY, false, "Suspended", "the gateway is scaled to zero");
            } else if gateway.ready && gateway.updated {
                set(PROGRESSING, false, "RolloutComplete", "");
                set(READY, true, "GatewayReady", "the gateway serves");
            } else {
                set(PROGRESSING, true, "RollingOut", "the gateway is starting");
                set(READY, false, "GatewayStarting", "the gateway is starting");
            }
            status.namespace = Some(moltbot_crds::tenant_namespace(
                tenant.metadata.name.as_deref().unwrap_or_default(),
            ));
            status.endpoint = Some(endpoint.clone());
        }
    }
    if *outcome != Outcome::Paused {
        status.observed_generation = generation;
    }
    status.connections = Some(connections);
    status.phase = Some(phase(&status, tenant));
    status
}

fn suspended_reason(suspended: bool) -> &'static str {
    if suspended { "Suspended" } else { "Active" }
}

/// One word for the conditions, for `kubectl get`.
fn phase(status: &TenantStatus, tenant: &Tenant) -> TenantPhase {
    let is = |type_| {
        find_condition(&status.conditions, type_)
            .is_some_and(|c| c.status == ConditionStatus::True.as_str())
    };
    if tenant.metadata.deletion_timestamp.is_some() {
        TenantPhase::Deleting
    } else if is(RECONCILE_PAUSED) {
        TenantPhase::Paused
    } else if is(DEGRADED) {
        TenantPhase::Degraded
    } else if is(SUSPENDED) {
        TenantPhase::Suspended
    } else if is(READY) {
        TenantPhase::Ready
    } else if find_condition(&status.conditions, READY).is_some() {
        TenantPhase::Provisioning
    } else {
        TenantPhase::Pending
    }
}
