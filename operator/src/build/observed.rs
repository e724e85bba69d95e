//! What the reconciler reads from the cluster and folds into a built tenant: the
//! versions of the Secrets the gateway reads at start, and the volume's current size.
//! Still pure: the reconciler fetches, these functions decide.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use sha2::{Digest, Sha256};

use super::{CONFIG_HASH_ANNOTATION, Desired};
use crate::quantity::Amount;

impl Desired {
    /// The Secrets (in the tenant's namespace) the gateway's environment comes from.
    pub fn referenced_secrets(&self) -> BTreeSet<String> {
        self.stateful_set
            .spec
            .iter()
            .filter_map(|s| s.template.spec.as_ref())
            .flat_map(|pod| &pod.containers)
            .flat_map(|c| c.env.iter().flatten())
            .filter_map(|env| env.value_from.as_ref()?.secret_key_ref.as_ref())
            .map(|key| key.name.clone())
            .collect()
    }

    /// Mixes the Secrets' resourceVersions (`None`: the Secret is missing) into the config
    /// hash: environment variables are fixed for a container's life, so a rotated token
    /// needs a new pod.
    pub fn pin_secret_versions(&mut self, versions: &BTreeMap<String, Option<String>>) {
        let mut digest = Sha256::new();
        digest.update(self.config_hash.as_bytes());
        for (name, version) in versions {
            digest.update(format!(
                "\nsecret {name}@{}",
                version.as_deref().unwrap_or("-")
            ));
        }
        self.config_hash = hex::encode(digest.finalize());
        let annotations = self
            .stateful_set
            .spec
            .as_mut()
            .and_then(|s| s.template.metadata.as_mut())
            .map(|m| m.annotations.get_or_insert_with(BTreeMap::new));
        if let Some(annotations) = annotations {
            annotations.insert(CONFIG_HASH_ANNOTATION.into(), self.config_hash.clone());
        }
    }

    /// Keeps the volume at least as large as it is: a claim cannot shrink, so a smaller
    /// size (e.g. after a downgrade to a plan with less storage) would only be refused.
    /// The quota follows, so the kept size still fits in it.
    pub fn keep_storage_of(&mut self, current: Option<&PersistentVolumeClaim>) {
        let Some(current) = current.and_then(storage_request) else {
            return;
        };
        let Some(desired) = storage_request(&self.persistent_volume_claim) else {
            return;
        };
        match (Amount::parse(&current.0), Amount::parse(&desired.0)) {
            (Some(have), Some(want)) if have > want => {}
            _ => return,
        }
        let current = current.clone();
        if let Some(requests) = self
            .persistent_volume_claim
            .spec
            .as_mut()
            .and_then(|s| s.resources.as_mut())
            .and_then(|r| r.requests.as_mut())
        {
            requests.insert("storage".into(), current.clone());
        }
        if let Some(hard) = self
            .resource_quota
            .spec
            .as_mut()
            .and_then(|s| s.hard.as_mut())
        {
            hard.insert("requests.storage".into(), current);
        }
    }
}

fn storage_request(claim: &PersistentVolumeClaim) -> Option<&Quantity> {
    claim
        .spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
}
