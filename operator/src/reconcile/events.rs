//! Events (events.k8s.io) on a Tenant's transitions and on failures. Their notes come
//! from conditions and errors, which never hold a secret value.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use moltbot_crds::TenantStatus;
use moltbot_crds::conditions::{
    ConditionStatus, DEGRADED, READY, RECONCILE_PAUSED, SUSPENDED, find_condition,
};

use super::{Context, Error};

/// Publishes `event`; a failure is logged, not returned: events are for people, and a
/// refused event must not fail a reconcile that did its work.
pub(super) async fn publish(ctx: &Context, regarding: &ObjectReference, event: &Event) {
    if let Err(error) = ctx.recorder.publish(event, regarding).await {
        tracing::warn!(reason = %event.reason, %error, "cannot publish an event");
    }
}

/// A reconcile failed.
pub(super) fn failed(error: &Error) -> Event {
    Event {
        type_: EventType::Warning,
        reason: error.reason().into(),
        note: Some(error.to_string()),
        action: "Reconcile".into(),
        secondary: None,
    }
}

/// New credentials were written (never their values).
pub(super) fn credentials(rotated: bool) -> Event {
    let (reason, note) = if rotated {
        (
            "CredentialsRotated",
            "new gateway credentials; the gateway restarts with them",
        )
    } else {
        ("CredentialsGenerated", "generated the gateway credentials")
    };
    Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Apply".into(),
        secondary: None,
    }
}

/// The events of the conditions that turned true between `old` and `new` (and of a
/// Degraded condition whose reason changed).
pub(super) fn transitions(old: Option<&TenantStatus>, new: &TenantStatus) -> Vec<Event> {
    let was = |type_: &str| {
        old.and_then(|s| find_condition(&s.conditions, type_))
            .filter(|c| c.status == ConditionStatus::True.as_str())
    };
    let mut events = Vec::new();
    for (type_, warning) in [
        (DEGRADED, true),
        (READY, false),
        (SUSPENDED, false),
        (RECONCILE_PAUSED, false),
    ] {
        let Some(now) = find_condition(&new.conditions, type_)
            .filter(|c| c.status == ConditionStatus::True.as_str())
        else {
            continue;
        };
        if was(type_).is_some_and(|before| before.reason == now.reason) {
            continue;
        }
        events.push(Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: now.reason.clone(),
            note: (!now.message.is_empty()).then(|| now.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        });
    }
    events
}
