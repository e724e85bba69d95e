//! What each plan gives a tenant where its spec says nothing: the one table of plan
//! defaults, read by the config renderer (budgets) and the operator (resources, quota).

use crate::tenant::Plan;

/// A plan's defaults. Quantities are Kubernetes quantity strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanDefaults {
    /// Tokens one agent run may spend.
    pub tokens_per_run: u64,
    /// Tokens the agent may spend per UTC day.
    pub tokens_per_day: u64,
    /// Agent runs at once across conversations.
    pub max_concurrent_runs: usize,
    /// The gateway container's CPU request and limit.
    pub cpu_request: &'static str,
    pub cpu_limit: &'static str,
    /// The gateway container's memory request and limit.
    pub memory_request: &'static str,
    pub memory_limit: &'static str,
    /// The gateway's volume.
    pub storage: &'static str,
    /// Pods the tenant's namespace may hold: the gateway, and room for short jobs beside
    /// it (an export, a restore) of the gateway's size each.
    pub pods: u32,
}

const FREE: PlanDefaults = PlanDefaults {
    tokens_per_run: 8_000,
    tokens_per_day: 50_000,
    max_concurrent_runs: 2,
    cpu_request: "50m",
    cpu_limit: "500m",
    memory_request: "96Mi",
    memory_limit: "256Mi",
    storage: "1Gi",
    pods: 2,
};

const PRO: PlanDefaults = PlanDefaults {
    tokens_per_run: 20_000,
    tokens_per_day: 500_000,
    max_concurrent_runs: 4,
    cpu_request: "100m",
    cpu_limit: "1",
    memory_request: "128Mi",
    memory_limit: "512Mi",
    storage: "5Gi",
    pods: 2,
};

const FAMILY: PlanDefaults = PlanDefaults {
    tokens_per_run: 20_000,
    tokens_per_day: 1_000_000,
    max_concurrent_runs: 8,
    cpu_request: "200m",
    cpu_limit: "1",
    memory_request: "256Mi",
    memory_limit: "768Mi",
    storage: "10Gi",
    pods: 2,
};

const TEAM: PlanDefaults = PlanDefaults {
    tokens_per_run: 40_000,
    tokens_per_day: 2_000_000,
    max_concurrent_runs: 16,
    cpu_request: "250m",
    cpu_limit: "2",
    memory_request: "512Mi",
    memory_limit: "1Gi",
    storage: "20Gi",
    pods: 3,
};

const ENTERPRISE: PlanDefaults = PlanDefaults {
    tokens_per_run: 100_000,
    tokens_per_day: 10_000_000,
    max_concurrent_runs: 32,
    cpu_request: "500m",
    cpu_limit: "4",
    memory_request: "1Gi",
    memory_limit: "4Gi",
    storage: "50Gi",
    pods: 4,
};

impl Plan {
    /// Every plan, cheapest first.
    pub const ALL: [Plan; 5] = [
        Plan::Free,
        Plan::Pro,
        Plan::Family,
        Plan::Team,
        Plan::Enterprise,
    ];

    /// This plan's defaults.
    pub fn defaults(self) -> &'static PlanDefaults {
        match self {
            Plan::Free => &FREE,
            Plan::Pro => &PRO,
            Plan::Family => &FAMILY,
            Plan::Team => &TEAM,
            Plan::Enterprise => &ENTERPRISE,
        }
    }
}
