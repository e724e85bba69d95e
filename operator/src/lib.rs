//! The Kubernetes operator of Moltbot Cloud: it turns each Tenant and its Connections
//! into an isolated gateway (namespace, guard rails, workload, Service).
//!
//! Today this is the pure part: [`build`] computes every object a tenant should have,
//! from its Tenant, its Connections and the operator's [`settings`]. The reconcilers that
//! apply them and report status come next.

pub mod build;
mod quantity;
pub mod settings;

pub use build::{BuildError, Desired, build};
pub use settings::OperatorSettings;
