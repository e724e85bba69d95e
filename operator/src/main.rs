//! `moltbot-operator`: reads its settings and prints them. The reconcilers come next.

use anyhow::Context;
use clap::Parser;
use moltbot_crds::{ModelSpec, SecretKeyRef};
use moltbot_operator::OperatorSettings;
use moltbot_operator::settings::{Cidr, PeerSelector, parse_secret_key_ref};

/// The Moltbot Cloud operator. Selectors are NAMESPACE/KEY=VALUE[,KEY=VALUE…]; unset
/// options take the defaults printed when the operator starts.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The gateway image of Tenants that name none.
    #[arg(long, env = "MOLTBOT_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    /// The port gateways listen on.
    #[arg(long)]
    gateway_port: Option<u16>,
    /// The Telegram Bot API of Connections that name none.
    #[arg(long)]
    telegram_api_base: Option<String>,
    /// The platform's public base URL for provider webhooks (a tenant's is BASE/TENANT).
    #[arg(long)]
    webhook_base_url: Option<String>,
    /// The bridge ingress's pods, which may reach gateways.
    #[arg(long)]
    bridge_ingress: Option<PeerSelector>,
    /// The control plane's pods, which may reach gateways.
    #[arg(long)]
    control_plane: Option<PeerSelector>,
    /// The operator's own pods, which may reach gateways.
    #[arg(long)]
    operator_pods: Option<PeerSelector>,
    /// The cluster DNS pods.
    #[arg(long)]
    dns: Option<PeerSelector>,
    /// In-cluster pods gateways may call (repeat), e.g. a model server.
    #[arg(long = "egress-peer")]
    egress_peers: Vec<PeerSelector>,
    /// Public ranges gateways must not reach (repeat), e.g. the API server's address.
    #[arg(long = "egress-deny")]
    egress_deny: Vec<Cidr>,
    /// The platform model's API base URL, for Tenants that name no model.
    #[arg(long, requires = "default_model")]
    default_model_base_url: Option<String>,
    /// The platform model's name.
    #[arg(long, requires = "default_model_base_url")]
    default_model: Option<String>,
    /// SECRET/KEY of the platform model's API key, in each tenant's namespace.
    #[arg(long, value_parser = parse_secret_key_ref, requires = "default_model")]
    default_model_api_key: Option<SecretKeyRef>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let defaults = OperatorSettings::default();
    let settings = OperatorSettings {
        gateway_image: args.gateway_image.unwrap_or(defaults.gateway_image),
        gateway_port: args.gateway_port.unwrap_or(defaults.gateway_port),
        telegram_api_base: args.telegram_api_base.unwrap_or(defaults.telegram_api_base),
        webhook_base_url: args.webhook_base_url,
        default_model: args.default_model_base_url.zip(args.default_model).map(
            |(base_url, model)| ModelSpec {
                base_url,
                model,
                api_key_secret_ref: args.default_model_api_key,
            },
        ),
        bridge_ingress: args.bridge_ingress.unwrap_or(defaults.bridge_ingress),
        control_plane: args.control_plane.unwrap_or(defaults.control_plane),
        operator: args.operator_pods.unwrap_or(defaults.operator),
        dns: args.dns.unwrap_or(defaults.dns),
        egress_peers: args.egress_peers,
        egress_deny: args.egress_deny,
    };
    let text = serde_json::to_string_pretty(&settings).context("cannot print the settings")?;
    println!("{text}");
    eprintln!("moltbot-operator: the reconcilers are not built yet; exiting");
    Ok(())
}
