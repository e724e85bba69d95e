//! The tenant's NetworkPolicies. Policies only add what is allowed, so the shape is: deny
//! everything to and from every pod of the namespace, then allow the gateway exactly its
//! callers (on its port) and its destinations (DNS, the public internet, and in-cluster
//! peers the operator is told of).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Names;
use crate::settings::{Cidr, OperatorSettings, PeerSelector};

/// Name of the policy that denies all traffic in the namespace.
const DEFAULT_DENY: &str = "default-deny";
/// Name of the policy that lets the platform reach the gateway.
const GATEWAY_INGRESS: &str = "gateway-ingress";
/// Name of the policy that lets the gateway reach DNS and the internet.
const GATEWAY_EGRESS: &str = "gateway-egress";

/// IPv4 ranges that are not the internet: private networks (where pods, Services, nodes
/// and the API server live), link-local (cloud metadata services) and carrier-grade NAT
/// (some clusters' pod networks).
const PRIVATE_V4: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
];
/// The same for IPv6: unique local, link-local, and IPv4-mapped addresses (which would
/// otherwise reach the IPv4 ranges above on a dual-stack socket).
const PRIVATE_V6: [&str; 3] = ["fc00::/7", "fe80::/10", "::ffff:0:0/96"];

pub(crate) fn network_policies(names: &Names, settings: &OperatorSettings) -> Vec<NetworkPolicy> {
    let gateway = LabelSelector {
        match_labels: Some(names.gateway_selector()),
        ..LabelSelector::default()
    };
    let policy = |name: &str, pod_selector: LabelSelector, spec: NetworkPolicySpec| NetworkPolicy {
        metadata: names.meta(name, names.labels()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector),
            ..spec
        }),
    };

    let deny_all = policy(
        DEFAULT_DENY,
        LabelSelector::default(),
        NetworkPolicySpec {
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ..NetworkPolicySpec::default()
        },
    );

    let ingress = policy(
        GATEWAY_INGRESS,
        gateway.clone(),
        NetworkPolicySpec {
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(
                    [
                        &settings.bridge_ingress,
                        &settings.control_plane,
                        &settings.operator,
                    ]
                    .into_iter()
                    .map(peer)
                    .collect(),
                ),
                ports: Some(vec![port("TCP", i32::from(settings.gateway_port))]),
            }]),
            ..NetworkPolicySpec::default()
        },
    );

    let (deny_v6, deny_v4): (Vec<&Cidr>, Vec<&Cidr>) = settings
        .egress_deny
        .iter()
        .partition(|cidr| cidr.address.is_ipv6());
    let internet = |cidr: &str, private: &[&str], denied: Vec<&Cidr>| NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: Some(
                private
                    .iter()
                    .map(|range| range.to_string())
                    .chain(denied.iter().map(ToString::to_string))
                    .collect(),
            ),
        }),
        ..NetworkPolicyPeer::default()
    };
    let mut egress_rules = vec![
        NetworkPolicyEgressRule {
            to: Some(vec![peer(&settings.dns)]),
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        },
        NetworkPolicyEgressRule {
            to: Some(vec![
                internet("0.0.0.0/0", &PRIVATE_V4, deny_v4),
                internet("::/0", &PRIVATE_V6, deny_v6),
            ]),
            ports: None,
        },
    ];
    if !settings.egress_peers.is_empty() {
        egress_rules.push(NetworkPolicyEgressRule {
            to: Some(settings.egress_peers.iter().map(peer).collect()),
            ports: None,
        });
    }
    let egress = policy(
        GATEWAY_EGRESS,
        gateway,
        NetworkPolicySpec {
            policy_types: Some(vec!["Egress".into()]),
            egress: Some(egress_rules),
            ..NetworkPolicySpec::default()
        },
    );

    vec![deny_all, ingress, egress]
}

/// Pods matching both selectors (one peer, so the two are ANDed).
fn peer(selector: &PeerSelector) -> NetworkPolicyPeer {
    let labels = |labels: &BTreeMap<String, String>| LabelSelector {
        match_labels: Some(labels.clone()),
        ..LabelSelector::default()
    };
    NetworkPolicyPeer {
        namespace_selector: Some(labels(&selector.namespace_labels)),
        pod_selector: Some(labels(&selector.pod_labels)),
        ip_block: None,
    }
}

fn port(protocol: &str, number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(number)),
        end_port: None,
    }
}
