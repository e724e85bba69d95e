//! Whole-system tests of Moltbot Cloud; the tests live in `tests/`.
//!
//! `tests/cluster.rs` runs the operator in-process against the cluster `KUBECONFIG`
//! points at (kind, k3d, any other): it is ignored by default, so CI, which has no
//! cluster, reports it as skipped. The local runtime's tests come with that runtime.
