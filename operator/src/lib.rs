//! The Kubernetes operator of Moltbot Cloud: it turns each Tenant and its Connections
//! into an isolated gateway (namespace, guard rails, workload, Service).
//!
//! [`build`] computes every object a tenant should have, purely, from its Tenant, its
//! Connections and the operator's [`settings`]; [`reconcile`] applies them and reports
//! in status.

pub mod admin;
pub mod build;
pub mod health;
pub mod metrics;
mod quantity;
pub mod reconcile;
pub mod run;
pub mod settings;

pub use build::{BuildError, Desired, build};
pub use settings::OperatorSettings;
