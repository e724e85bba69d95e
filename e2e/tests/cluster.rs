//! The operator against a real cluster, whatever `KUBECONFIG` points at (kind, k3d, …):
//! installs the CRDs, runs the operator in-process, and walks one Tenant through its
//! life from the examples in `crds/examples/`.
//!
//! A cluster without nodes is enough: the gateway's pod stays Pending, so the test
//! asserts on the objects and conditions the operator writes, never on a running gateway.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;
use kube::core::NamespaceResourceScope;
use kube::{Client, Config, Resource, ResourceExt};
use moltbot_crds::conditions::{self, find_condition, is_condition_true};
use moltbot_crds::{
    CREDENTIALS_SECRET, Connection, FINALIZER, INBOX_TOKEN_KEY, INGRESS_HMAC_KEY,
    PAUSED_ANNOTATION, Tenant, tenant_namespace,
};
use moltbot_operator::run::{RunOptions, run};
use moltbot_operator::{Desired, OperatorSettings, build};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// How long any one wait may take: the operator reconciles within seconds; a fresh
/// cluster may be slow to establish CRDs or finish a namespace.
const TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_secs(1);
/// The committed CRDs, in `crds/`.
const CRD_FILES: [&str; 2] = ["tenant.yaml", "connection.yaml"];
/// The field manager of what the test itself applies (the CRDs).
const FIELD_MANAGER: &str = "moltbot-e2e";

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster: KUBECONFIG=… cargo nextest run -p moltbot-e2e --run-ignored only"]
async fn operator_walks_a_tenant_through_its_life() -> anyhow::Result<()> {
    // The operator's logs, shown by nextest when the test fails.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    let client = connect().await?;
    install_crds(&client).await?;

    let suffix = format!("{:08x}", rand::rng().random::<u32>());
    let e2e = E2e {
        client: client.clone(),
        tenant: format!("e2e-{suffix}"),
        stop: CancellationToken::new(),
    };
    let options = RunOptions {
        settings: OperatorSettings::default(),
        concurrency: 4,
        health_interval: Duration::from_secs(60),
        // Port 0: a free loopback port, so runs never collide.
        admin: (Ipv4Addr::LOCALHOST, 0).into(),
        leader_election: None,
        identity: format!("moltbot-e2e-{suffix}"),
    };
    let operator = async {
        let result = run(client, options, e2e.stop.clone()).await;
        // An operator that stops on its own fails the waits at once.
        e2e.stop.cancel();
        result
    };
    let scenario = async {
        let result = e2e.scenario().await;
        if result.is_err() {
            e2e.clean_up().await;
        }
        e2e.stop.cancel();
        result
    };
    let (ran, result) = tokio::join!(operator, scenario);
    if let (Err(error), Err(_)) = (&ran, &result) {
        // The scenario's error only says that the operator stopped; this says why.
        eprintln!("the operator failed: {error}");
    }
    result?;
    ran.context("the operator failed")?;
    Ok(())
}

/// Without a cluster, at least the files the test above applies must parse.
#[test]
fn the_applied_files_parse() -> anyhow::Result<()> {
    for file in CRD_FILES {
        let crds = read_yaml::<CustomResourceDefinition>(file)?;
        anyhow::ensure!(crds.len() == 1, "{file}: {} CRDs", crds.len());
    }
    example_tenant("e2e")?;
    let (secrets, connections) = example_connections("tenant-e2e")?;
    anyhow::ensure!(
        !secrets.is_empty() && !connections.is_empty(),
        "examples/connection.yaml: {} Secrets, {} Connections",
        secrets.len(),
        connections.len()
    );
    Ok(())
}

/// A client for the kubeconfig's current context; fails fast without one.
async fn connect() -> anyhow::Result<Client> {
    let config = Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .context(
            "no cluster to test against: cannot load a kubeconfig (set KUBECONFIG, e.g. \
             after `kind create cluster` or `k3d cluster create`)",
        )?;
    let server = config.cluster_url.clone();
    let client = Client::try_from(config).context("cannot make a client from the kubeconfig")?;
    let version = tokio::time::timeout(Duration::from_secs(20), client.apiserver_version())
        .await
        .map_err(|_| anyhow::anyhow!("the API server at {server} did not answer within 20 s"))?
        .with_context(|| format!("cannot reach the API server at {server}"))?;
    println!(
        "testing against {server} (Kubernetes {}.{})",
        version.major, version.minor
    );
    Ok(client)
}

fn crds_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../crds"))
}

fn read_yaml<T: DeserializeOwned>(file: &str) -> anyhow::Result<Vec<T>> {
    let path = crds_dir().join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path:?}"))?;
    serde_saphyr::from_multiple(&text).with_context(|| format!("cannot parse {path:?}"))
}

/// The Tenant of `examples/tenant.yaml`, named `name`.
fn example_tenant(name: &str) -> anyhow::Result<Tenant> {
    let mut tenant = read_yaml::<Tenant>("examples/tenant.yaml")?
        .pop()
        .context("examples/tenant.yaml holds no Tenant")?;
    tenant.metadata.name = Some(name.into());
    Ok(tenant)
}

/// The Secrets and Connections of `examples/connection.yaml`, moved to `namespace`.
fn example_connections(namespace: &str) -> anyhow::Result<(Vec<Secret>, Vec<Connection>)> {
    let (mut secrets, mut connections) = (Vec::new(), Vec::new());
    for mut document in read_yaml::<Value>("examples/connection.yaml")? {
        document["metadata"]["namespace"] = namespace.into();
        match document["kind"].as_str() {
            Some("Secret") => secrets.push(serde_json::from_value(document)?),
            Some("Connection") => connections.push(serde_json::from_value(document)?),
            other => bail!("examples/connection.yaml: unexpected kind {other:?}"),
        }
    }
    Ok((secrets, connections))
}

/// Server-side applies the committed CRDs and waits until the API server serves them.
async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in CRD_FILES {
        for crd in read_yaml::<CustomResourceDefinition>(file)? {
            let name = crd.name_any();
            crds.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("cannot apply CRD {name}"))?;
            poll(&format!("CRD {name} to be Established"), None, async || {
                let crd = get(&crds, &name).await?;
                let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                match conditions.iter().find(|c| c.type_ == "Established") {
                    Some(c) if c.status == "True" => Ok(()),
                    other => Err(format!("Established: {other:?}")),
                }
            })
            .await?;
        }
    }
    Ok(())
}

/// One run: the client, the Tenant's name and the token that stops the operator.
struct E2e {
    client: Client,
    tenant: String,
    stop: CancellationToken,
}

impl E2e {
    async fn scenario(&self) -> anyhow::Result<()> {
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        let namespace = tenant_namespace(&self.tenant);

        let tenant = example_tenant(&self.tenant)?;
        let tenant = tenants
            .create(&PostParams::default(), &tenant)
            .await
            .with_context(|| format!("cannot create Tenant {}", self.tenant))?;
        println!("created Tenant {}", self.tenant);

        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        self.wait(&format!("namespace {namespace}"), async || {
            get(&namespaces, &namespace).await.map(drop)
        })
        .await?;
        let connections = self.create_connections(&namespace).await?;

        // What the operator should have made: the same pure function it runs.
        let desired = build(&tenant, &connections, &OperatorSettings::default())
            .context("the example Tenant does not build")?;
        self.wait_objects(&desired, &namespace).await?;

        self.wait_tenant("finalizer and status of the current generation", |t| {
            let status = t.status.as_ref().ok_or("no status")?;
            if !t.finalizers().iter().any(|f| f == FINALIZER) {
                return Err(format!("finalizers {:?}", t.finalizers()));
            }
            if status.observed_generation != t.metadata.generation {
                return Err(format!(
                    "observedGeneration {:?}, generation {:?}",
                    status.observed_generation, t.metadata.generation
                ));
            }
            for type_ in [
                conditions::READY,
                conditions::PROGRESSING,
                conditions::DEGRADED,
            ] {
                let condition = find_condition(&status.conditions, type_)
                    .ok_or_else(|| format!("no {type_} condition"))?;
                if condition.observed_generation != t.metadata.generation {
                    return Err(format!("{type_}: {condition:?}"));
                }
            }
            // The example's Secrets exist, so nothing is missing.
            if is_condition_true(&status.conditions, conditions::DEGRADED) {
                let degraded = find_condition(&status.conditions, conditions::DEGRADED);
                return Err(format!("{degraded:?}"));
            }
            if status.namespace.as_deref() != Some(namespace.as_str())
                || status.endpoint.as_deref() != Some(desired.endpoint.as_str())
            {
                return Err(format!(
                    "namespace {:?}, endpoint {:?}",
                    status.namespace, status.endpoint
                ));
            }
            match &status.connections {
                Some(counts) if counts.total == len_i32(&connections) => Ok(()),
                other => Err(format!("connections {other:?}")),
            }
        })
        .await?;

        self.patch_tenant(json!({ "spec": { "suspended": true } }))
            .await?;
        let stateful_sets: Api<StatefulSet> = self.namespaced(&namespace);
        let gateway = desired.stateful_set.name_any();
        self.wait("the StatefulSet scaled to 0 replicas", async || {
            replicas_are(&get(&stateful_sets, &gateway).await?, 0)
        })
        .await?;
        self.wait_tenant("the Suspended condition", |t| {
            condition_true(t, conditions::SUSPENDED)
        })
        .await?;

        self.patch_tenant(json!({ "metadata": { "annotations": { PAUSED_ANNOTATION: "true" } } }))
            .await?;
        self.wait_tenant("the ReconcilePaused condition", |t| {
            condition_true(t, conditions::RECONCILE_PAUSED)
        })
        .await?;

        self.delete_tenant().await?;
        self.wait(
            &format!("namespace {namespace} to go"),
            async || match namespaces.get_opt(&namespace).await {
                Ok(None) => Ok(()),
                Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_some() => Ok(()),
                Ok(Some(_)) => Err("present, not terminating".into()),
                Err(error) => Err(format!("cannot read it: {error}")),
            },
        )
        .await?;
        Ok(())
    }

    /// Waits for every object of `desired` and for the generated credentials.
    async fn wait_objects(&self, desired: &Desired, namespace: &str) -> anyhow::Result<()> {
        self.wait_object(Api::all(self.client.clone()), &desired.namespace, |ns| {
            let labels = ns.labels();
            for mode in ["enforce", "audit", "warn"] {
                let key = format!("pod-security.kubernetes.io/{mode}");
                if labels.get(&key).map(String::as_str) != Some("restricted") {
                    return Err(format!("{key} is {:?}", labels.get(&key)));
                }
            }
            Ok(())
        })
        .await?;
        self.wait_object(self.namespaced(namespace), &desired.resource_quota, ok)
            .await?;
        self.wait_object(self.namespaced(namespace), &desired.limit_range, ok)
            .await?;
        self.wait_object(
            self.namespaced(namespace),
            &desired.service_account,
            |sa| match sa.automount_service_account_token {
                Some(false) => Ok(()),
                other => Err(format!("automountServiceAccountToken is {other:?}")),
            },
        )
        .await?;
        for policy in &desired.network_policies {
            self.wait_object(self.namespaced(namespace), policy, ok)
                .await?;
        }
        self.wait_object(self.namespaced(namespace), &desired.config_map, ok)
            .await?;
        self.wait_object(
            self.namespaced(namespace),
            &desired.persistent_volume_claim,
            ok,
        )
        .await?;
        self.wait_object(self.namespaced(namespace), &desired.service, ok)
            .await?;
        self.wait_object(self.namespaced(namespace), &desired.stateful_set, |sts| {
            replicas_are(sts, 1)
        })
        .await?;
        let secrets: Api<Secret> = self.namespaced(namespace);
        self.wait(&format!("Secret {CREDENTIALS_SECRET}"), async || {
            let secret = get(&secrets, CREDENTIALS_SECRET).await?;
            let data = secret.data.unwrap_or_default();
            // Only the keys: the values are secrets.
            let keys: Vec<&String> = data.keys().collect();
            if data.contains_key(INBOX_TOKEN_KEY) && data.contains_key(INGRESS_HMAC_KEY) {
                Ok(())
            } else {
                Err(format!("keys {keys:?}"))
            }
        })
        .await?;
        Ok(())
    }

    /// The Secret and Connections of `examples/connection.yaml`, in the tenant's
    /// namespace. The bot token is a placeholder: the gateway never runs without nodes.
    async fn create_connections(&self, namespace: &str) -> anyhow::Result<Vec<Connection>> {
        let (secrets, connections) = example_connections(namespace)?;
        let post = PostParams::default();
        for secret in &secrets {
            self.namespaced::<Secret>(namespace)
                .create(&post, secret)
                .await
                .with_context(|| format!("cannot create Secret {}", secret.name_any()))?;
        }
        let mut created = Vec::new();
        for connection in &connections {
            created.push(
                self.namespaced::<Connection>(namespace)
                    .create(&post, connection)
                    .await
                    .with_context(|| {
                        format!("cannot create Connection {}", connection.name_any())
                    })?,
            );
        }
        Ok(created)
    }

    fn namespaced<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    async fn patch_tenant(&self, patch: Value) -> anyhow::Result<()> {
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        tenants
            .patch(&self.tenant, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("cannot patch Tenant {} with {patch}", self.tenant))?;
        Ok(())
    }

    /// Deletes the Tenant and waits until its finalizer has let it go.
    async fn delete_tenant(&self) -> anyhow::Result<()> {
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        match tenants.delete(&self.tenant, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => return Err(error).context("cannot delete the Tenant"),
        }
        self.wait(
            &format!("Tenant {} to go", self.tenant),
            async || match tenants.get_opt(&self.tenant).await {
                Ok(None) => Ok(()),
                Ok(Some(t)) => Err(format!(
                    "still there, finalizers {:?}, phase {:?}",
                    t.finalizers(),
                    t.status.as_ref().and_then(|s| s.phase)
                )),
                Err(error) => Err(format!("cannot read it: {error}")),
            },
        )
        .await
    }

    /// After a failure: delete the Tenant while the operator still runs its finalizer,
    /// so that the cluster is left as it was (the CRDs stay: other Tenants may use them).
    async fn clean_up(&self) {
        if self.stop.is_cancelled() {
            eprintln!(
                "the operator stopped: Tenant {} may need its finalizer removed by hand",
                self.tenant
            );
            return;
        }
        if let Err(error) = self.delete_tenant().await {
            eprintln!("cleaning up: {error:#}");
        }
    }

    async fn wait_tenant(
        &self,
        what: &str,
        check: impl Fn(&Tenant) -> Result<(), String>,
    ) -> anyhow::Result<()> {
        let tenants: Api<Tenant> = Api::all(self.client.clone());
        self.wait(&format!("Tenant {}: {what}", self.tenant), async || {
            check(&get(&tenants, &self.tenant).await?)
        })
        .await
    }

    /// Waits until the object named as `desired` exists with its labels and owner
    /// (the Tenant) and passes `check`.
    async fn wait_object<K>(
        &self,
        api: Api<K>,
        desired: &K,
        check: impl Fn(&K) -> Result<(), String>,
    ) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let name = desired.name_any();
        self.wait(&format!("{} {name}", K::kind(&())), async || {
            let object = get(&api, &name).await?;
            for (key, value) in desired.labels() {
                if object.labels().get(key) != Some(value) {
                    return Err(format!("label {key} is {:?}", object.labels().get(key)));
                }
            }
            for owner in desired.owner_references() {
                if !object.owner_references().contains(owner) {
                    return Err(format!("owners {:?}", object.owner_references()));
                }
            }
            check(&object)
        })
        .await
    }

    async fn wait(
        &self,
        what: &str,
        check: impl AsyncFnMut() -> Result<(), String>,
    ) -> anyhow::Result<()> {
        poll(what, Some(&self.stop), check).await
    }
}

/// Polls `check` until it passes; on timeout (or once `stop` is cancelled: the operator
/// is gone) fails with what it waited for and the last state `check` reported.
async fn poll(
    what: &str,
    stop: Option<&CancellationToken>,
    mut check: impl AsyncFnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let state = match check().await {
            Ok(()) => return Ok(()),
            Err(state) => state,
        };
        if stop.is_some_and(CancellationToken::is_cancelled) {
            bail!("the operator stopped while waiting for {what}; last seen: {state}");
        }
        if Instant::now() >= deadline {
            bail!("timed out after {TIMEOUT:?} waiting for {what}; last seen: {state}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The object, or why not yet, as a state for [`poll`].
async fn get<K>(api: &Api<K>, name: &str) -> Result<K, String>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => Err(format!("{} {name} not found", K::kind(&()))),
        Err(error) => Err(format!("cannot read {} {name}: {error}", K::kind(&()))),
    }
}

fn ok<K>(_: &K) -> Result<(), String> {
    Ok(())
}

fn replicas_are(stateful_set: &StatefulSet, replicas: i32) -> Result<(), String> {
    match stateful_set.spec.as_ref().and_then(|s| s.replicas) {
        Some(r) if r == replicas => Ok(()),
        other => Err(format!("replicas {other:?}")),
    }
}

fn condition_true(tenant: &Tenant, type_: &str) -> Result<(), String> {
    let conditions = tenant
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    if is_condition_true(conditions, type_) {
        Ok(())
    } else {
        Err(format!("{type_}: {:?}", find_condition(conditions, type_)))
    }
}

fn len_i32<T>(items: &[T]) -> i32 {
    i32::try_from(items.len()).unwrap_or(i32::MAX)
}
