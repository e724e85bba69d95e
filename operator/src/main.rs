//! `moltbot-operator`: reads its settings, then runs the operator until SIGTERM/SIGINT.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use moltbot_crds::{ModelSpec, SecretKeyRef, TokenLimitField};
use moltbot_operator::OperatorSettings;
use moltbot_operator::run::{LeaderElection, RunOptions, run};
use moltbot_operator::settings::{
    Cidr, PeerSelector, SYSTEM_NAMESPACE, parse_secret_key_ref, parse_token_limit_field,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// The Moltbot Cloud operator. Selectors are NAMESPACE/KEY=VALUE[,KEY=VALUE…]; unset
/// options take the defaults printed with --print-settings.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The gateway image of Tenants that name none.
    #[arg(long, env = "MOLTBOT_GATEWAY_IMAGE")]
    gateway_image: Option<String>,
    /// The port gateways listen on.
    #[arg(long, env = "MOLTBOT_GATEWAY_PORT")]
    gateway_port: Option<u16>,
    /// The Telegram Bot API of Connections that name none.
    #[arg(long, env = "MOLTBOT_TELEGRAM_API_BASE")]
    telegram_api_base: Option<String>,
    /// The platform's public base URL for provider webhooks (a tenant's is BASE/TENANT).
    #[arg(long, env = "MOLTBOT_WEBHOOK_BASE_URL")]
    webhook_base_url: Option<String>,
    /// The bridge ingress's pods, which may reach gateways.
    #[arg(long, env = "MOLTBOT_BRIDGE_INGRESS")]
    bridge_ingress: Option<PeerSelector>,
    /// The control plane's pods, which may reach gateways.
    #[arg(long, env = "MOLTBOT_CONTROL_PLANE")]
    control_plane: Option<PeerSelector>,
    /// The operator's own pods, which may reach gateways.
    #[arg(long, env = "MOLTBOT_OPERATOR_PODS")]
    operator_pods: Option<PeerSelector>,
    /// The cluster DNS pods.
    #[arg(long, env = "MOLTBOT_DNS")]
    dns: Option<PeerSelector>,
    /// In-cluster pods gateways may call (repeat; in the variable, separated by
    /// spaces), e.g. a model server.
    #[arg(
        long = "egress-peer",
        env = "MOLTBOT_EGRESS_PEERS",
        value_delimiter = ' '
    )]
    egress_peers: Vec<PeerSelector>,
    /// Public ranges gateways must not reach (repeat; in the variable, separated by
    /// spaces), e.g. the API server's address.
    #[arg(
        long = "egress-deny",
        env = "MOLTBOT_EGRESS_DENY",
        value_delimiter = ' '
    )]
    egress_deny: Vec<Cidr>,
    /// The platform model's API base URL, for Tenants that name no model.
    #[arg(
        long,
        env = "MOLTBOT_DEFAULT_MODEL_BASE_URL",
        requires = "default_model"
    )]
    default_model_base_url: Option<String>,
    /// The platform model's name.
    #[arg(
        long,
        env = "MOLTBOT_DEFAULT_MODEL",
        requires = "default_model_base_url"
    )]
    default_model: Option<String>,
    /// SECRET/KEY of the platform model's API key, in each tenant's namespace.
    #[arg(long, env = "MOLTBOT_DEFAULT_MODEL_API_KEY", value_parser = parse_secret_key_ref, requires = "default_model")]
    default_model_api_key: Option<SecretKeyRef>,
    /// The request field that limits the platform model's replies: max_completion_tokens
    /// (unset) or max_tokens, for a server that knows only the older name.
    #[arg(long, env = "MOLTBOT_DEFAULT_MODEL_TOKEN_LIMIT_FIELD", value_parser = parse_token_limit_field, requires = "default_model")]
    default_model_token_limit_field: Option<TokenLimitField>,

    /// Where /live, /ready and /metrics listen.
    #[arg(
        long,
        env = "MOLTBOT_OPERATOR_ADMIN_LISTEN",
        default_value = "0.0.0.0:8081"
    )]
    admin_listen: SocketAddr,
    /// Tenants reconciled at once.
    #[arg(long, env = "MOLTBOT_OPERATOR_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Seconds between two reads of a gateway's /status.
    #[arg(long, env = "MOLTBOT_OPERATOR_HEALTH_INTERVAL", default_value_t = 60)]
    health_interval: u64,
    /// Reconcile only while holding the Lease (for more than one replica).
    #[arg(long, env = "MOLTBOT_OPERATOR_LEADER_ELECTION")]
    leader_election: bool,
    /// The Lease's name.
    #[arg(
        long,
        env = "MOLTBOT_OPERATOR_LEASE",
        default_value = "moltbot-operator"
    )]
    lease: String,
    /// The Lease's namespace: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    lease_namespace: String,
    /// This replica's name in the Lease and in events; unset: `HOSTNAME` (a pod's name),
    /// which keeps two replicas apart.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Print the settings as JSON and exit.
    #[arg(long)]
    print_settings: bool,
}

impl Args {
    fn settings(&self) -> OperatorSettings {
        let defaults = OperatorSettings::default();
        let args = self;
        OperatorSettings {
            gateway_image: args.gateway_image.clone().unwrap_or(defaults.gateway_image),
            gateway_port: args.gateway_port.unwrap_or(defaults.gateway_port),
            telegram_api_base: args
                .telegram_api_base
                .clone()
                .unwrap_or(defaults.telegram_api_base),
            webhook_base_url: args.webhook_base_url.clone(),
            default_model: args
                .default_model_base_url
                .clone()
                .zip(args.default_model.clone())
                .map(|(base_url, model)| ModelSpec {
                    base_url,
                    model,
                    api_key_secret_ref: args.default_model_api_key.clone(),
                    token_limit_field: args.default_model_token_limit_field,
                }),
            bridge_ingress: args
                .bridge_ingress
                .clone()
                .unwrap_or(defaults.bridge_ingress),
            control_plane: args.control_plane.clone().unwrap_or(defaults.control_plane),
            operator: args.operator_pods.clone().unwrap_or(defaults.operator),
            dns: args.dns.clone().unwrap_or(defaults.dns),
            egress_peers: args.egress_peers.clone(),
            egress_deny: args.egress_deny.clone(),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = args.settings();
    if args.print_settings {
        let text = serde_json::to_string_pretty(&settings).context("cannot print the settings")?;
        println!("{text}");
        return Ok(());
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if std::io::stdout().is_terminal() {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    }

    let client = kube::Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let options = RunOptions {
        settings,
        concurrency: args.concurrency.max(1),
        health_interval: Duration::from_secs(args.health_interval.max(1)),
        admin: args.admin_listen,
        leader_election: args.leader_election.then(|| LeaderElection {
            namespace: args.lease_namespace.clone(),
            lease: args.lease.clone(),
        }),
        identity: args
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "moltbot-operator".into()),
    };
    run(client, options, stop).await?;
    Ok(())
}

/// SIGTERM (the kubelet) or SIGINT: finish the reconciles in flight, then stop.
async fn stop_on_signal(stop: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("stopping: finishing the reconciles in flight");
    stop.cancel();
}
