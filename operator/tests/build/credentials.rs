//! The generated credentials Secret: built from values it is given, and replaced only
//! when it is missing, damaged, or the Tenant asks for a rotation.

use std::collections::BTreeMap;

use moltbot_crds::{
    CREDENTIALS_SECRET, INBOX_TOKEN_KEY, INGRESS_HMAC_KEY, ROTATE_CREDENTIALS_ANNOTATION, Tenant,
};
use moltbot_operator::build::{
    CredentialsCheck, TenantCredentials, check_credentials, credentials_secret,
};

use crate::support::{built, fixture};

fn credentials() -> TenantCredentials {
    TenantCredentials {
        inbox_token: "FAKE-generated-inbox-token".into(),
        ingress_hmac_key: "FAKE-generated-hmac-key".into(),
    }
}

fn asking_rotation(tenant: &Tenant, value: &str) -> Tenant {
    let mut tenant = tenant.clone();
    tenant.metadata.annotations = Some(BTreeMap::from([(
        ROTATE_CREDENTIALS_ANNOTATION.to_string(),
        value.to_string(),
    )]));
    tenant
}

#[test]
fn the_secret_holds_the_given_values_where_the_config_reads_them() {
    let (_, desired) = built("bob.yaml");
    let tenant = fixture("bob.yaml").tenant;
    let secret = credentials_secret(&tenant, &credentials()).unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some(CREDENTIALS_SECRET));
    assert_eq!(secret.metadata.namespace.as_deref(), Some("tenant-bob"));
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let data = secret.data.as_ref().unwrap();
    assert_eq!(data[INBOX_TOKEN_KEY].0, b"FAKE-generated-inbox-token");
    assert_eq!(data[INGRESS_HMAC_KEY].0, b"FAKE-generated-hmac-key");
    assert_eq!(
        secret.metadata.owner_references,
        desired.service.metadata.owner_references
    );

    // The gateway's inbox token comes from this Secret's key.
    let env = desired
        .stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].env.clone().unwrap_or_default())
        .unwrap();
    assert!(env.iter().any(|e| {
        e.value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .is_some_and(|r| r.name == CREDENTIALS_SECRET && r.key == INBOX_TOKEN_KEY)
    }));

    // Nothing else built for the tenant holds them.
    let text = serde_json::to_string(&desired).unwrap();
    assert!(!text.contains("FAKE-generated"));
}

#[test]
fn new_credentials_are_due_when_missing_damaged_or_asked_for() {
    let tenant = fixture("bob.yaml").tenant;
    assert_eq!(check_credentials(&tenant, None), CredentialsCheck::Missing);

    let current = credentials_secret(&tenant, &credentials()).unwrap();
    assert_eq!(
        check_credentials(&tenant, Some(&current)),
        CredentialsCheck::Current
    );

    let mut damaged = current.clone();
    damaged.data.as_mut().unwrap().remove(INGRESS_HMAC_KEY);
    assert_eq!(
        check_credentials(&tenant, Some(&damaged)),
        CredentialsCheck::Incomplete
    );

    let asked = asking_rotation(&tenant, "2025-01-01T00:00:00Z");
    assert_eq!(
        check_credentials(&asked, Some(&current)),
        CredentialsCheck::RotationRequested
    );
    // Once rotated for that request, the credentials are current again until the next.
    let rotated = credentials_secret(&asked, &credentials()).unwrap();
    assert_eq!(
        check_credentials(&asked, Some(&rotated)),
        CredentialsCheck::Current
    );
    let asked_again = asking_rotation(&tenant, "2025-02-01T00:00:00Z");
    assert_eq!(
        check_credentials(&asked_again, Some(&rotated)),
        CredentialsCheck::RotationRequested
    );
}

#[test]
fn credentials_never_show_in_debug() {
    let shown = format!("{:?}", credentials());
    assert!(!shown.contains("FAKE"), "{shown}");
}
