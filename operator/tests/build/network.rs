//! The NetworkPolicies' shape: all traffic denied, then the platform let in on the
//! gateway's port only, and the gateway let out to DNS and the public internet only.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use moltbot_operator::Desired;
use moltbot_operator::settings::PeerSelector;

use crate::support::{built, ingress_peers, settings};

fn policies_of_type<'a>(desired: &'a Desired, kind: &str) -> Vec<&'a NetworkPolicy> {
    desired
        .network_policies
        .iter()
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.policy_types.as_ref())
                .is_some_and(|types| types.iter().any(|t| t == kind))
        })
        .collect()
}

/// Whether a policy with this pod selector applies to the gateway's pods.
fn selects_gateway(desired: &Desired, selector: &LabelSelector) -> bool {
    let pod_labels = desired
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert!(
        selector.match_expressions.is_none(),
        "selectors are plain labels"
    );
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| pod_labels.get(k) == Some(v))
}

fn selector_of(peer: &PeerSelector) -> NetworkPolicyPeer {
    let labels = |labels: &BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(labels(&peer.namespace_labels)),
        pod_selector: Some(labels(&peer.pod_labels)),
        ip_block: None,
    }
}

#[test]
fn everything_in_the_namespace_is_denied_by_default() {
    let (_, desired) = built("alice.yaml");
    let deny: Vec<_> = desired
        .network_policies
        .iter()
        .filter_map(|p| p.spec.as_ref())
        .filter(|s| s.pod_selector == Some(LabelSelector::default()))
        .collect();
    assert_eq!(deny.len(), 1, "one policy selects every pod");
    let deny = deny[0];
    assert_eq!(
        deny.policy_types.as_deref(),
        Some(&["Ingress".to_string(), "Egress".to_string()][..])
    );
    assert!(deny.ingress.is_none() && deny.egress.is_none(), "{deny:?}");
}

#[test]
fn only_the_platform_reaches_the_gateway_and_only_on_its_port() {
    let (_, desired) = built("alice.yaml");
    let settings = settings();
    let mut rules = Vec::new();
    for policy in policies_of_type(&desired, "Ingress") {
        let spec = policy.spec.as_ref().unwrap();
        for rule in spec.ingress.iter().flatten() {
            assert!(
                selects_gateway(&desired, spec.pod_selector.as_ref().unwrap()),
                "ingress rules only for the gateway"
            );
            rules.push(rule);
        }
    }
    assert_eq!(rules.len(), 1, "{rules:?}");
    let expected: Vec<NetworkPolicyPeer> = ingress_peers(&settings)
        .into_iter()
        .map(selector_of)
        .collect();
    assert_eq!(rules[0].from.as_ref(), Some(&expected));
    assert_eq!(
        rules[0].ports.as_deref(),
        Some(
            &[NetworkPolicyPort {
                protocol: Some("TCP".into()),
                port: Some(IntOrString::Int(8080)),
                end_port: None,
            }][..]
        )
    );
}

/// One CIDR, for checking addresses against the policies' ipBlocks.
fn contains(cidr: &str, address: IpAddr) -> bool {
    let (network, prefix) = cidr.split_once('/').unwrap();
    let network: IpAddr = network.parse().unwrap();
    let prefix: u32 = prefix.parse().unwrap();
    let (network, address, bits) = match (network, address) {
        (IpAddr::V4(n), IpAddr::V4(a)) => (u128::from(u32::from(n)), u128::from(u32::from(a)), 32),
        (IpAddr::V6(n), IpAddr::V6(a)) => (u128::from(n), u128::from(a), 128),
        _ => return false,
    };
    let shift = bits - prefix;
    shift >= bits || network >> shift == address >> shift
}

/// Whether the gateway may open a TCP connection to `address` on `port` by its ipBlocks.
fn egress_allows(desired: &Desired, address: &str, port: i32) -> bool {
    let address: IpAddr = address.parse().unwrap();
    policies_of_type(desired, "Egress")
        .into_iter()
        .filter_map(|p| p.spec.as_ref())
        .filter(|s| selects_gateway(desired, s.pod_selector.as_ref().unwrap()))
        .flat_map(|s| s.egress.iter().flatten())
        .filter(|rule| {
            rule.ports.as_ref().is_none_or(|ports| {
                ports.iter().any(|p| {
                    p.protocol.as_deref() == Some("TCP") && p.port == Some(IntOrString::Int(port))
                })
            })
        })
        .flat_map(|rule| rule.to.iter().flatten())
        .filter_map(|peer| peer.ip_block.as_ref())
        .any(|block| {
            contains(&block.cidr, address)
                && !block
                    .except
                    .iter()
                    .flatten()
                    .any(|except| contains(except, address))
        })
}

#[test]
fn the_gateway_reaches_the_internet_but_nothing_private() {
    let (_, desired) = built("alice.yaml");
    for public in ["1.1.1.1", "149.154.167.220", "2606:4700:4700::1111"] {
        assert!(egress_allows(&desired, public, 443), "{public}");
    }
    for private in [
        "10.96.0.1",       // the API server's Service
        "172.20.0.10",     // a private node
        "192.168.1.1",     // a private router
        "169.254.169.254", // a cloud metadata service
        "100.64.0.1",      // carrier-grade NAT pod networks
        "fd00:ec2::254",   // an IPv6 metadata service
        "fe80::1",         // IPv6 link-local
        "::ffff:10.0.0.1", // IPv4-mapped private
        "203.0.113.10",    // the API server's public address, from the settings
        "2001:db8:1::5",   // a denied IPv6 range, from the settings
    ] {
        assert!(!egress_allows(&desired, private, 443), "{private}");
    }
}

#[test]
fn the_gateway_resolves_names_through_cluster_dns_only() {
    let (_, desired) = built("alice.yaml");
    let settings = settings();
    let rules: Vec<_> = policies_of_type(&desired, "Egress")
        .into_iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| s.egress.iter().flatten())
        .collect();
    let dns = rules
        .iter()
        .find(|r| r.to.as_deref() == Some(&[selector_of(&settings.dns)][..]))
        .expect("a rule to the DNS pods");
    let ports: Vec<(Option<&str>, Option<&IntOrString>)> = dns
        .ports
        .iter()
        .flatten()
        .map(|p| (p.protocol.as_deref(), p.port.as_ref()))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("UDP"), Some(&IntOrString::Int(53))),
            (Some("TCP"), Some(&IntOrString::Int(53)))
        ]
    );
    // Every in-cluster destination is one the operator was told of: no rule opens whole
    // namespaces or every pod.
    let allowed_peers = [
        selector_of(&settings.dns),
        selector_of(&settings.egress_peers[0]),
    ];
    for rule in &rules {
        for peer in rule.to.iter().flatten().filter(|p| p.ip_block.is_none()) {
            assert!(
                allowed_peers.contains(peer),
                "unexpected egress peer {peer:?}"
            );
        }
    }
    assert!(
        rules
            .iter()
            .any(|r| r.to.as_deref() == Some(&[selector_of(&settings.egress_peers[0])][..])),
        "the configured model server is reachable"
    );
}

#[test]
fn the_address_checker_can_tell_in_from_out() {
    assert!(contains("10.0.0.0/8", "10.200.3.4".parse().unwrap()));
    assert!(!contains("10.0.0.0/8", "11.0.0.1".parse().unwrap()));
    assert!(contains("0.0.0.0/0", "8.8.8.8".parse().unwrap()));
    assert!(!contains("0.0.0.0/0", "::1".parse().unwrap()));
    assert!(contains("fc00::/7", "fdff::1".parse().unwrap()));
}
