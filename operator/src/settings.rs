//! What the operator is told about its cluster: the gateway image, who may reach a
//! gateway, and where a gateway may not go.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use moltbot_crds::{ModelSpec, SecretKeyRef, TokenLimitField};
use serde::{Serialize, Serializer};

/// The operator's settings; every tenant's objects are built with the same ones.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OperatorSettings {
    /// The gateway image of Tenants that name none.
    pub gateway_image: String,
    /// The port the gateway listens on and its Service serves.
    pub gateway_port: u16,
    /// The Telegram Bot API of Connections that name none.
    pub telegram_api_base: String,
    /// The platform's public base URL for provider webhooks. A tenant's gateway is
    /// `{webhook_base_url}/{tenant}`: the platform's ingress routes
    /// `{tenant}/hooks/{connection}` to that tenant's gateway. Unset: webhook delivery is
    /// unsupported and Connections that ask for it are reported.
    pub webhook_base_url: Option<String>,
    /// The platform's model, for Tenants that name none; its API key Secret must exist in
    /// each tenant's namespace.
    pub default_model: Option<ModelSpec>,
    /// Pods that may reach a gateway: the bridge ingress relays tunnels and webhooks, the
    /// control plane calls the inbox API, the operator reads `/status`.
    pub bridge_ingress: PeerSelector,
    pub control_plane: PeerSelector,
    pub operator: PeerSelector,
    /// The cluster's DNS pods, the only in-cluster pods a gateway reaches by default.
    pub dns: PeerSelector,
    /// Other in-cluster pods gateways may call, e.g. a model server or a local Bot API.
    pub egress_peers: Vec<PeerSelector>,
    /// Public addresses a gateway must not reach although they are on the internet, e.g.
    /// the API server's or the nodes' public addresses. Private, link-local and CGNAT
    /// ranges are always refused.
    pub egress_deny: Vec<Cidr>,
}

/// The operator's own namespace, where the defaults expect the platform's pods.
pub const SYSTEM_NAMESPACE: &str = "moltbot-system";

impl Default for OperatorSettings {
    fn default() -> Self {
        let platform = |name: &str| {
            PeerSelector::new(
                SYSTEM_NAMESPACE,
                [("app.kubernetes.io/name".to_string(), name.to_string())].into(),
            )
        };
        Self {
            gateway_image: concat!(
                "ghcr.io/moltbot/moltbot-gateway:",
                env!("CARGO_PKG_VERSION")
            )
            .into(),
            gateway_port: 8080,
            telegram_api_base: "https://api.telegram.org".into(),
            webhook_base_url: None,
            default_model: None,
            bridge_ingress: platform("moltbot-bridge-ingress"),
            control_plane: platform("moltbot-control-plane"),
            operator: platform("moltbot-operator"),
            dns: PeerSelector::new(
                "kube-system",
                [("k8s-app".to_string(), "kube-dns".to_string())].into(),
            ),
            egress_peers: Vec::new(),
            egress_deny: Vec::new(),
        }
    }
}

/// Pods with these labels in the namespace with these labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSelector {
    pub namespace_labels: BTreeMap<String, String>,
    /// Empty: every pod of those namespaces.
    pub pod_labels: BTreeMap<String, String>,
}

/// The label Kubernetes puts on every namespace, holding its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl PeerSelector {
    /// Pods with `pod_labels` in the namespace named `namespace`.
    pub fn new(namespace: &str, pod_labels: BTreeMap<String, String>) -> Self {
        Self {
            namespace_labels: [(NAMESPACE_NAME_LABEL.to_string(), namespace.to_string())].into(),
            pod_labels,
        }
    }
}

/// Why a setting could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{0:?} is not NAMESPACE/KEY=VALUE[,KEY=VALUE…] (labels may be empty: NAMESPACE/)")]
    Peer(String),
    #[error("{0:?} is not a CIDR such as 203.0.113.10/32 or 2001:db8::/64")]
    Cidr(String),
    #[error("{0:?} is not SECRET/KEY")]
    SecretKey(String),
    #[error("{0:?} is neither max_completion_tokens nor max_tokens")]
    TokenLimitField(String),
}

/// `NAMESPACE/KEY=VALUE,…`: pods with those labels in that namespace.
impl FromStr for PeerSelector {
    type Err = SettingsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || SettingsError::Peer(text.to_string());
        // A namespace name has no '/'; label keys may (app.kubernetes.io/name).
        let (namespace, labels) = text.split_once('/').ok_or_else(bad)?;
        if namespace.is_empty() {
            return Err(bad());
        }
        let pod_labels = labels
            .split(',')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(namespace, pod_labels))
    }
}

/// An IPv4 or IPv6 address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl FromStr for Cidr {
    type Err = SettingsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || SettingsError::Cidr(text.to_string());
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(bad());
        }
        Ok(Self { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `SECRET/KEY`: one key of a Secret.
pub fn parse_secret_key_ref(text: &str) -> Result<SecretKeyRef, SettingsError> {
    match text.split_once('/') {
        Some((name, key)) if !name.is_empty() && !key.is_empty() => Ok(SecretKeyRef {
            name: name.to_string(),
            key: key.to_string(),
        }),
        _ => Err(SettingsError::SecretKey(text.to_string())),
    }
}

/// `max_completion_tokens` or `max_tokens`, as in the Tenant's `tokenLimitField`.
pub fn parse_token_limit_field(text: &str) -> Result<TokenLimitField, SettingsError> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| SettingsError::TokenLimitField(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_limit_fields_read_as_in_the_tenant() {
        assert_eq!(
            parse_token_limit_field("max_tokens").unwrap(),
            TokenLimitField::MaxTokens
        );
        assert_eq!(
            parse_token_limit_field("max_completion_tokens").unwrap(),
            TokenLimitField::MaxCompletionTokens
        );
        for bad in ["", "maxTokens", "max_output_tokens"] {
            assert!(parse_token_limit_field(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn peers_read_namespace_then_labels() {
        let peer: PeerSelector = "moltbot-system/app.kubernetes.io/name=ingress,tier=edge"
            .parse()
            .unwrap();
        assert_eq!(
            peer.namespace_labels,
            BTreeMap::from([(NAMESPACE_NAME_LABEL.into(), "moltbot-system".into())])
        );
        assert_eq!(
            peer.pod_labels,
            BTreeMap::from([
                ("app.kubernetes.io/name".into(), "ingress".into()),
                ("tier".into(), "edge".into())
            ])
        );
        let everyone: PeerSelector = "monitoring/".parse().unwrap();
        assert!(everyone.pod_labels.is_empty());
        for bad in ["no-slash", "/k=v", "ns/novalue", "ns/=v"] {
            assert!(bad.parse::<PeerSelector>().is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_are_checked_and_written_back() {
        let v4: Cidr = "203.0.113.10/32".parse().unwrap();
        assert_eq!(v4.to_string(), "203.0.113.10/32");
        let v6: Cidr = "2001:db8::/64".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/64");
        for bad in [
            "203.0.113.10",
            "203.0.113.10/33",
            "2001:db8::/129",
            "host/8",
            "1.2.3.4/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_key_refs_need_both_parts() {
        let key = parse_secret_key_ref("platform-model/api-key").unwrap();
        assert_eq!(
            (key.name.as_str(), key.key.as_str()),
            ("platform-model", "api-key")
        );
        for bad in ["platform-model", "/key", "name/"] {
            assert!(parse_secret_key_ref(bad).is_err(), "{bad}");
        }
    }
}
