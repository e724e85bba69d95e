//! Fixtures, settings, and the parts of a built tenant most tests look at.

use std::path::Path;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use moltbot_operator::settings::PeerSelector;
use moltbot_operator::{Desired, OperatorSettings, build};

use crate::fixture::Fixture;

pub fn fixture(name: &str) -> Fixture {
    Fixture::load(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

/// The defaults, plus what a real cluster would add: a public API server address to
/// refuse, an in-cluster model server, and a webhook URL.
pub fn settings() -> OperatorSettings {
    OperatorSettings {
        webhook_base_url: Some("https://hooks.example.com".into()),
        egress_peers: vec!["ai/app.kubernetes.io/name=ollama".parse().unwrap()],
        egress_deny: vec![
            "203.0.113.10/32".parse().unwrap(),
            "2001:db8:1::/48".parse().unwrap(),
        ],
        ..OperatorSettings::default()
    }
}

/// The fixture `name` and what is built from it with [`settings`].
pub fn built(name: &str) -> (Fixture, Desired) {
    let fixture = fixture(name);
    let desired = build(&fixture.tenant, &fixture.connections, &settings())
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (fixture, desired)
}

pub fn pod_spec(desired: &Desired) -> &PodSpec {
    desired
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("the StatefulSet has a pod spec")
}

pub fn gateway_container(desired: &Desired) -> &Container {
    &pod_spec(desired).containers[0]
}

pub fn config_hash_of_pod(desired: &Desired) -> &str {
    desired
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(moltbot_operator::build::CONFIG_HASH_ANNOTATION))
        .expect("the pod template has a config hash")
}

/// The peers of [`settings`] that may reach a gateway, in order.
pub fn ingress_peers(settings: &OperatorSettings) -> [&PeerSelector; 3] {
    [
        &settings.bridge_ingress,
        &settings.control_plane,
        &settings.operator,
    ]
}
