//! The gateway's resources (the plan's, with the Tenant's overrides) and the namespace's
//! quota and limit range, which follow from them so that an override the schema admits
//! is never refused by the quota.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use moltbot_crds::Tenant;

use super::{BuildError, Names};
use crate::quantity::Amount;

/// Name of the tenant's ResourceQuota.
const QUOTA: &str = "tenant-quota";
/// Name of the tenant's LimitRange.
const LIMITS: &str = "tenant-limits";

/// What the gateway gets, after the Tenant's overrides.
pub(crate) struct Compute {
    /// The gateway container's requests and limits.
    pub(crate) requests: BTreeMap<String, Quantity>,
    pub(crate) limits: BTreeMap<String, Quantity>,
    /// The namespace's quota of requests and limits: the plan's pods, each of the
    /// gateway's size.
    quota: BTreeMap<String, Quantity>,
    pods: u32,
    pub(crate) storage: Quantity,
    pub(crate) storage_class_name: Option<String>,
}

/// One resource's request and limit.
struct Pair {
    request: Amount,
    limit: Amount,
}

impl Compute {
    pub(crate) fn of(tenant: &Tenant, names: &Names) -> Result<Self, BuildError> {
        let plan = tenant.spec.plan.defaults();
        let resources = tenant.spec.gateway.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let cpu = pair(
            names,
            (
                "gateway.resources.requests.cpu",
                requests.and_then(|r| r.cpu.as_ref()),
            ),
            (
                "gateway.resources.limits.cpu",
                limits.and_then(|l| l.cpu.as_ref()),
            ),
            (plan.cpu_request, plan.cpu_limit),
        )?;
        let memory = pair(
            names,
            (
                "gateway.resources.requests.memory",
                requests.and_then(|r| r.memory.as_ref()),
            ),
            (
                "gateway.resources.limits.memory",
                limits.and_then(|l| l.memory.as_ref()),
            ),
            (plan.memory_request, plan.memory_limit),
        )?;
        let storage_override = tenant.spec.gateway.storage.as_ref();
        let storage = match storage_override {
            Some(storage) => amount(names, "gateway.storage.size", &storage.size.0)?,
            None => amount(names, "the plan's storage", plan.storage)?,
        };

        let times_pods = |quota: &'static str, amount: Amount| {
            amount
                .times(plan.pods)
                .map(|total| (quota.to_string(), total.to_quantity()))
                .ok_or_else(|| BuildError::Resources {
                    tenant: names.tenant.clone(),
                    message: format!("{quota} for {} pods is too large", plan.pods),
                })
        };
        let quota = [
            times_pods("requests.cpu", cpu.request)?,
            times_pods("limits.cpu", cpu.limit)?,
            times_pods("requests.memory", memory.request)?,
            times_pods("limits.memory", memory.limit)?,
        ]
        .into();
        Ok(Self {
            requests: container_resources(cpu.request, memory.request),
            limits: container_resources(cpu.limit, memory.limit),
            quota,
            pods: plan.pods,
            storage: storage.to_quantity(),
            storage_class_name: storage_override.and_then(|s| s.storage_class_name.clone()),
        })
    }
}

fn amount(names: &Names, field: &'static str, value: &str) -> Result<Amount, BuildError> {
    Amount::parse(value).ok_or_else(|| BuildError::Quantity {
        tenant: names.tenant.clone(),
        field,
        value: value.to_string(),
    })
}

/// A resource's request and limit from the overrides `(field, value)` and the plan's
/// `(request, limit)`. Overriding one side moves the other only as far as it must: a
/// request above the plan's limit lifts the limit to it, a limit below the plan's request
/// lowers the request to it.
fn pair(
    names: &Names,
    (request_field, request): (&'static str, Option<&Quantity>),
    (limit_field, limit): (&'static str, Option<&Quantity>),
    (plan_request, plan_limit): (&'static str, &'static str),
) -> Result<Pair, BuildError> {
    let request = request
        .map(|q| amount(names, request_field, &q.0))
        .transpose()?;
    let limit = limit
        .map(|q| amount(names, limit_field, &q.0))
        .transpose()?;
    let plan_request = amount(names, "the plan's request", plan_request)?;
    let plan_limit = amount(names, "the plan's limit", plan_limit)?;
    let (request, limit) = match (request, limit) {
        (Some(request), Some(limit)) if request > limit => {
            return Err(BuildError::Resources {
                tenant: names.tenant.clone(),
                message: format!("{limit_field} must be at least {request_field}"),
            });
        }
        (Some(request), Some(limit)) => (request, limit),
        (Some(request), None) => (request, request.max(plan_limit)),
        (None, Some(limit)) => (plan_request.min(limit), limit),
        (None, None) => (plan_request, plan_limit),
    };
    Ok(Pair { request, limit })
}

fn container_resources(cpu: Amount, memory: Amount) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".into(), cpu.to_quantity()),
        ("memory".into(), memory.to_quantity()),
    ])
}

/// Room for the plan's pods and the one volume, and nothing that would expose the
/// namespace outside the cluster.
pub(crate) fn resource_quota(names: &Names, compute: &Compute) -> ResourceQuota {
    let mut hard = compute.quota.clone();
    hard.extend([
        ("pods".into(), Quantity(compute.pods.to_string())),
        ("persistentvolumeclaims".into(), Quantity("1".into())),
        ("requests.storage".into(), compute.storage.clone()),
        ("services.loadbalancers".into(), Quantity("0".into())),
        ("services.nodeports".into(), Quantity("0".into())),
    ]);
    ResourceQuota {
        metadata: names.meta(QUOTA, names.labels()),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..ResourceQuotaSpec::default()
        }),
        ..ResourceQuota::default()
    }
}

/// A container without resources of its own gets the gateway's; none may have more.
pub(crate) fn limit_range(names: &Names, compute: &Compute) -> LimitRange {
    LimitRange {
        metadata: names.meta(LIMITS, names.labels()),
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".into(),
                default: Some(compute.limits.clone()),
                default_request: Some(compute.requests.clone()),
                max: Some(compute.limits.clone()),
                ..LimitRangeItem::default()
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use moltbot_crds::Plan;

    use crate::quantity::Amount;

    #[test]
    fn every_plan_is_well_formed_and_grows_with_the_price() {
        let parse = |q: &str| Amount::parse(q).unwrap_or_else(|| panic!("{q} is a quantity"));
        let mut previous: Option<[Amount; 5]> = None;
        for plan in Plan::ALL {
            let d = plan.defaults();
            let sizes = [
                parse(d.cpu_request),
                parse(d.cpu_limit),
                parse(d.memory_request),
                parse(d.memory_limit),
                parse(d.storage),
            ];
            assert!(sizes[0] <= sizes[1], "{plan:?}: cpu request within limit");
            assert!(
                sizes[2] <= sizes[3],
                "{plan:?}: memory request within limit"
            );
            // The schema's floors: 10m CPU, 32Mi memory, 1Gi storage.
            assert!(sizes[0] >= parse("10m") && sizes[2] >= parse("32Mi"));
            assert!(sizes[4] >= parse("1Gi"), "{plan:?}");
            assert!(d.pods >= 1 && d.max_concurrent_runs >= 1);
            assert!(d.tokens_per_run >= 1000 && d.tokens_per_day >= d.tokens_per_run);
            if let Some(previous) = previous {
                for (was, is) in previous.iter().zip(&sizes) {
                    assert!(was <= is, "{plan:?} gives no less than the plan below it");
                }
            }
            previous = Some(sizes);
        }
    }
}
