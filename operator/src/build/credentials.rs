//! The credentials the operator generates for a tenant (the inbox token, the bridge
//! ingress's key) and keeps in a Secret in its namespace. Unlike every other object, the
//! Secret is not rebuilt from the spec: its values are random, made once by the
//! reconciler and again only when the Tenant asks for a rotation. These functions stay
//! pure: they are given the values, and say when new ones are due.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use moltbot_crds::{CREDENTIALS_SECRET, INBOX_TOKEN_KEY, INGRESS_HMAC_KEY, Tenant};

use super::{BuildError, Names, rotation_request};

/// Annotation on the credentials Secret: the Tenant's `cloud.moltbot.com/rotate-credentials`
/// value its credentials were made for.
pub const ROTATED_FOR_ANNOTATION: &str = "cloud.moltbot.com/rotated-for";

/// Generated credentials. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct TenantCredentials {
    /// The bearer token of the gateway's inbox API.
    pub inbox_token: String,
    /// The key the bridge ingress signs its requests to the gateway with.
    pub ingress_hmac_key: String,
}

impl fmt::Debug for TenantCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantCredentials(***)")
    }
}

/// Whether the tenant's credentials Secret is as it should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsCheck {
    /// It holds both credentials, made for the Tenant's latest rotation request.
    Current,
    /// There is none yet: generate.
    Missing,
    /// A credential is missing or empty (someone edited the Secret): generate.
    Incomplete,
    /// The Tenant asked for new credentials since these were made: generate.
    RotationRequested,
}

/// Compares the tenant's credentials Secret, if there is one, with what the Tenant asks.
pub fn check_credentials(tenant: &Tenant, existing: Option<&Secret>) -> CredentialsCheck {
    let Some(secret) = existing else {
        return CredentialsCheck::Missing;
    };
    let has = |key: &str| {
        secret
            .data
            .as_ref()
            .and_then(|data| data.get(key))
            .is_some_and(|value| !value.0.is_empty())
    };
    if !has(INBOX_TOKEN_KEY) || !has(INGRESS_HMAC_KEY) {
        return CredentialsCheck::Incomplete;
    }
    let made_for = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ROTATED_FOR_ANNOTATION))
        .map_or("", String::as_str);
    if made_for != rotation_request(tenant) {
        return CredentialsCheck::RotationRequested;
    }
    CredentialsCheck::Current
}

/// The credentials Secret holding `credentials`, made for the Tenant's current rotation
/// request.
pub fn credentials_secret(
    tenant: &Tenant,
    credentials: &TenantCredentials,
) -> Result<Secret, BuildError> {
    let names = Names::of(tenant)?;
    let mut metadata = names.meta(CREDENTIALS_SECRET, names.labels());
    metadata.annotations = Some(BTreeMap::from([(
        ROTATED_FOR_ANNOTATION.to_string(),
        rotation_request(tenant).to_string(),
    )]));
    Ok(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([
            (
                INBOX_TOKEN_KEY.to_string(),
                ByteString(credentials.inbox_token.clone().into_bytes()),
            ),
            (
                INGRESS_HMAC_KEY.to_string(),
                ByteString(credentials.ingress_hmac_key.clone().into_bytes()),
            ),
        ])),
        ..Secret::default()
    })
}
