//! Events (events.k8s.io) on Tenants' and Connections' transitions and on failures. Their notes come
//! from conditions and errors, which never hold a secret value.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use moltbot_crds::conditions::{
    ACTION_REQUIRED, CONNECTED, Condition, ConditionStatus, DEGRADED, READY, RECONCILE_PAUSED,
    SUSPENDED, find_condition,
};

use super::{Context, Error};

/// Publishes `event`; a failure is logged, not returned: events are for people, and a
/// refused event must not fail a reconcile that did its work.
pub(crate) async fn publish(ctx: &Context, regarding: &ObjectReference, event: &Event) {
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

/// The conditions of a Tenant that make an event when they turn true, and whether it
/// is a warning.
pub(crate) const TENANT_EVENTS: &[(&str, bool)] = &[
    (DEGRADED, true),
    (READY, false),
    (SUSPENDED, false),
    (RECONCILE_PAUSED, false),
];

/// The same for a Connection: a person should hear of a channel that needs them.
pub(crate) const CONNECTION_EVENTS: &[(&str, bool)] = &[
    (ACTION_REQUIRED, true),
    (DEGRADED, true),
    (CONNECTED, false),
];

/// The events of the conditions among `types` that turned true between `old` and `new`
/// (and of one whose reason changed while true).
pub(crate) fn transitions(
    old: &[Condition],
    new: &[Condition],
    types: &[(&str, bool)],
) -> Vec<Event> {
    let true_in = |conditions: &'_ [Condition], type_: &str| {
        find_condition(conditions, type_)
            .filter(|c| c.status == ConditionStatus::True.as_str())
            .cloned()
    };
    let mut events = Vec::new();
    for &(type_, warning) in types {
        let Some(now) = true_in(new, type_) else {
            continue;
        };
        if true_in(old, type_).is_some_and(|before| before.reason == now.reason) {
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
