//! `build` from the YAML fixtures in `tests/fixtures`: every pod meets Pod Security
//! `restricted`, the network policies have their shape, and the workload, volume, config
//! hash and credentials behave. One test binary, so the fixtures' code compiles once.

// The fixture reader is the renderer's own, so both crates read fixtures alike.
#[path = "../../../crds/tests/common/fixture.rs"]
mod fixture;

mod credentials;
mod network;
mod pod_security;
mod support;
mod workload;
