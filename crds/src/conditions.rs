//! Status conditions of Tenant and Connection: standard `metav1.Condition`s, their types,
//! and the one rule for updating them.
//!
//! Readers (`kubectl wait --for=condition=Ready`, Argo CD, Flux) rely on the usual
//! semantics: one condition per type, `lastTransitionTime` moves only when `status`
//! changes, and `observedGeneration` says which spec the condition describes.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Tenant and Connection: the resource does what its spec asks (the gateway serves; the
/// channel delivers messages).
pub const READY: &str = "Ready";
/// Tenant: the operator is still creating or changing the tenant's objects.
pub const PROGRESSING: &str = "Progressing";
/// Tenant and Connection: running, but not fully (a connection is down, a retry is
/// pending, a limit was hit).
pub const DEGRADED: &str = "Degraded";
/// Tenant: `spec.suspended` is true and the gateway is scaled to zero.
pub const SUSPENDED: &str = "Suspended";
/// Tenant: the `cloud.moltbot.com/paused` annotation stops reconciliation.
pub const RECONCILE_PAUSED: &str = "ReconcilePaused";
/// Connection: the gateway holds a working session with the provider or device.
pub const CONNECTED: &str = "Connected";
/// Connection: a person must act (a revoked token, a device to pair again); the reason
/// says what.
pub const ACTION_REQUIRED: &str = "ActionRequired";

/// The `status` of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// The wire form: `True`, `False` or `Unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// A condition observed now for the spec of `observed_generation`.
///
/// `reason` is a CamelCase word by convention (`GatewayReady`, `TokenRevoked`);
/// `message` is for people.
pub fn new_condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// The condition of this type, if there is one.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present and `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

/// Puts `condition` in place of the one of the same type, or adds it.
///
/// When the status is unchanged the old `lastTransitionTime` is kept: it marks when the
/// status last flipped, not when the operator last looked. Returns whether the list
/// changed, so a caller can skip a status write that would change nothing.
pub fn set_condition(conditions: &mut Vec<Condition>, mut condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => {
            if existing.status == condition.status {
                condition.last_transition_time = existing.last_transition_time.clone();
            }
            if *existing == condition {
                return false;
            }
            *existing = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn same_status_keeps_the_transition_time_and_takes_the_rest() {
        let mut conditions = vec![new_condition(
            READY,
            ConditionStatus::True,
            "GatewayReady",
            "serving",
            Some(1),
            at(100),
        )];
        let changed = set_condition(
            &mut conditions,
            new_condition(
                READY,
                ConditionStatus::True,
                "GatewayReady",
                "serving 2 connections",
                Some(2),
                at(200),
            ),
        );
        assert!(changed);
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].observed_generation, Some(2));
        assert_eq!(conditions[0].message, "serving 2 connections");
    }

    #[test]
    fn a_new_status_moves_the_transition_time() {
        let mut conditions = vec![new_condition(
            READY,
            ConditionStatus::True,
            "GatewayReady",
            "",
            Some(1),
            at(100),
        )];
        assert!(set_condition(
            &mut conditions,
            new_condition(
                READY,
                ConditionStatus::False,
                "GatewayUnavailable",
                "",
                Some(1),
                at(200)
            ),
        ));
        assert_eq!(conditions[0].last_transition_time, at(200));
        assert_eq!(conditions[0].status, "False");
        assert!(!is_condition_true(&conditions, READY));
    }

    #[test]
    fn an_identical_condition_is_no_change() {
        let ready = |now| {
            new_condition(
                READY,
                ConditionStatus::True,
                "GatewayReady",
                "",
                Some(3),
                now,
            )
        };
        let mut conditions = vec![ready(at(100))];
        assert!(!set_condition(&mut conditions, ready(at(500))));
        assert_eq!(conditions, vec![ready(at(100))]);
    }

    #[test]
    fn other_types_are_added_and_left_alone() {
        let mut conditions = vec![new_condition(
            READY,
            ConditionStatus::True,
            "GatewayReady",
            "",
            None,
            at(100),
        )];
        assert!(set_condition(
            &mut conditions,
            new_condition(SUSPENDED, false.into(), "NotSuspended", "", None, at(200)),
        ));
        assert_eq!(conditions.len(), 2);
        assert!(is_condition_true(&conditions, READY));
        assert_eq!(
            find_condition(&conditions, SUSPENDED).map(|c| c.status.as_str()),
            Some("False")
        );
        assert!(find_condition(&conditions, DEGRADED).is_none());
    }
}
