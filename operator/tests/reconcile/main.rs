//! Reconcile scenarios against a fake API server (a tower-test mock): each test asserts
//! every request the operator makes, in order, and what the important ones carry.

// Shared with the build tests, which use all of it.
#[allow(dead_code)]
#[path = "../../../crds/tests/common/fixture.rs"]
mod fixture;

mod api_server;
mod health;
mod running;
mod scenarios;
mod support;
