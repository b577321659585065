//! Healthy revisions stored in the cluster (the snapshot step, README, "The life of a
//! revision"): the rendered manifests of a revision that passed verification, gzipped
//! JSON in a Secret owned by the AppDeployment, so that a rollback needs no Git and the
//! garbage collector removes the snapshots together with the app.
//!
//! Where they live: in the app's own namespace, written by the controller there only
//! where the namespace was onboarded (the chart's `<release>-tenant` role), never by a
//! cluster-wide Secret grant. Whoever may write Secrets in that namespace may also edit
//! a snapshot; that gains them nothing: a multi-tenant app's snapshot is applied as the
//! app's own ServiceAccount, and writing Secrets of a namespace already lets one mint a
//! token for any ServiceAccount of it, so an edited snapshot applies nothing its author
//! could not apply directly (or push to Git). A hostile snapshot is bounded in what it
//! costs to read ([`MAX_DECODED_BYTES`]). Moving them to the controller's namespace
//! would keep tenants from editing them but not add a right they lack, and would need
//! a cross-namespace owner (none exists: the garbage collector ignores one). In the
//! single-tenant mode (apps applied as the controller itself) a namespace's Secret
//! writers are as trusted as its AppDeployment authors, as the README says.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::api::{APP_LABEL, AppDeployment, FIELD_MANAGER, short_revision};
use crate::render::Manifest;

/// `type` of snapshot Secrets.
pub const SNAPSHOT_SECRET_TYPE: &str = "bosun.dev/snapshot";
/// Label with the short revision of a snapshot.
pub const REVISION_LABEL: &str = "bosun.dev/revision";
/// Annotation with the full revision of a snapshot.
pub const REVISION_ANNOTATION: &str = "bosun.dev/revision";
/// Key of the gzipped JSON manifests in a snapshot Secret.
pub const DATA_KEY: &str = "manifests.json.gz";

/// A Secret holds at most 1 MiB; leave room for its metadata.
const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 - 16 * 1024;
/// Refuse to inflate a snapshot beyond this many bytes of JSON (a corrupt or hostile
/// Secret: gzip inflates 1 MiB into 1 GiB): well under the controller's memory limit
/// (the chart's is 512 MiB), as the manifests parsed from it take a few times more.
/// No real render comes near it: a Secret holds at most 1 MiB compressed, and a
/// snapshot that would inflate beyond it is refused when stored.
pub const MAX_DECODED_BYTES: usize = 32 * 1024 * 1024;
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_VALUE_LEN: usize = 63;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("AppDeployment {name} has no {field}")]
    IncompleteApp { name: String, field: &'static str },
    #[error(
        "snapshot of revision {revision} for {namespace}/{app}: {bytes} bytes compressed, \
         more than a Secret can hold ({limit})"
    )]
    TooLarge {
        namespace: String,
        app: String,
        revision: String,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "no snapshot of revision {revision}: Secret {namespace}/{name} not found \
         (the revision was never Healthy, or its snapshot was pruned)"
    )]
    NotFound {
        namespace: String,
        name: String,
        revision: String,
    },
    #[error("snapshot Secret {namespace}/{name} is unreadable: {message}")]
    Corrupt {
        namespace: String,
        name: String,
        message: String,
    },
    #[error(
        "snapshot of revision {revision} for {namespace}/{app}: {bytes} bytes of manifests, \
         more than the {limit}-byte limit of a snapshot (it could not be read back)"
    )]
    TooLargeDecoded {
        namespace: String,
        app: String,
        revision: String,
        bytes: usize,
        limit: usize,
    },
    #[error("snapshot data is unreadable: {0}")]
    Decode(String),
    #[error("{action} snapshot Secret {namespace}/{name} failed: {message}")]
    Api {
        action: &'static str,
        namespace: String,
        name: String,
        message: String,
        class: crate::failure::ApiErrorClass,
    },
}

impl SnapshotError {
    /// Short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            SnapshotError::IncompleteApp { .. } => "InvalidAppDeployment",
            SnapshotError::TooLarge { .. } | SnapshotError::TooLargeDecoded { .. } => "SnapshotTooLarge",
            SnapshotError::NotFound { .. } => "SnapshotNotFound",
            SnapshotError::Corrupt { .. } | SnapshotError::Decode(_) => "SnapshotCorrupt",
            SnapshotError::Api { .. } => "SnapshotFailed",
        }
    }

    /// What the error means for the step that met it (see [`crate::failure`]): only
    /// an API server that did not answer may answer later; the others need a person.
    pub fn classify(&self) -> crate::failure::Classified {
        use crate::core::{Failure, FailureKind};
        use crate::failure::{ApiErrorClass, Classified};
        match self {
            SnapshotError::Api {
                class: ApiErrorClass::Transient,
                ..
            } => Classified::Transient(self.to_string()),
            SnapshotError::Api {
                class: ApiErrorClass::Forbidden,
                ..
            } => Classified::Refused(Failure::new(FailureKind::Forbidden, self.to_string())),
            _ => Classified::Refused(Failure::new(FailureKind::RevisionInvalid, self.to_string())),
        }
    }
}

/// gzip of the manifests' JSON. Deterministic (no timestamp in the gzip header), so
/// storing the same revision again changes nothing on the server.
pub fn encode(manifests: &[Manifest]) -> Vec<u8> {
    encode_counted(manifests).0
}

/// [`encode`], and how many bytes of JSON it compressed.
fn encode_counted(manifests: &[Manifest]) -> (Vec<u8>, usize) {
    // Writing JSON values into memory cannot fail: no I/O, and no non-string map keys.
    let json = serde_json::to_vec(manifests).expect("serializing manifests into memory");
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&json).expect("gzip into memory");
    (encoder.finish().expect("finishing gzip into memory"), json.len())
}

/// The manifests of [`encode`]d bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<Manifest>, SnapshotError> {
    decode_counted(bytes).map(|(manifests, _)| manifests)
}

/// [`decode`], and how many bytes of JSON the manifests were read from (what the
/// decoded-snapshot cache counts them as).
pub fn decode_counted(bytes: &[u8]) -> Result<(Vec<Manifest>, usize), SnapshotError> {
    let mut json = Vec::new();
    // Never more than the limit (and one byte to tell) is inflated into memory.
    GzDecoder::new(bytes)
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut json)
        .map_err(|error| SnapshotError::Decode(format!("gzip: {error}")))?;
    if json.len() > MAX_DECODED_BYTES {
        return Err(SnapshotError::Decode(format!(
            "inflates beyond the snapshot limit of {MAX_DECODED_BYTES} bytes ({} MiB)",
            MAX_DECODED_BYTES / (1024 * 1024)
        )));
    }
    let manifests =
        serde_json::from_slice(&json).map_err(|error| SnapshotError::Decode(format!("JSON: {error}")))?;
    Ok((manifests, json.len()))
}

/// Name of the snapshot Secret of `revision` rendered with `render_digest` (what shaped
/// the render: url, path, target namespace): `<app>-rev-<short revision>-<digest>`, with
/// the app name shortened (and a hash of it added) when the result would exceed 253
/// chars. A re-render of the same commit (a changed path) gets a Secret of its own, so
/// it never overwrites the snapshot of a render that proved itself.
pub fn secret_name(app_name: &str, revision: &str, render_digest: &str) -> String {
    let suffix = format!(
        "-rev-{}-{}",
        short_revision(revision).to_ascii_lowercase(),
        render_digest.to_ascii_lowercase()
    );
    if app_name.len() + suffix.len() <= MAX_NAME_LEN {
        return format!("{app_name}{suffix}");
    }
    let hash = short_hash(app_name);
    let room = MAX_NAME_LEN - suffix.len() - hash.len() - 1;
    format!("{}-{hash}{suffix}", truncate_alnum_end(app_name, room))
}

/// Value of the [`APP_LABEL`] label for an app: `namespace.name`, shortened with a hash
/// when longer than a label value may be (63).
pub fn app_label_value(namespace: &str, name: &str) -> String {
    let full = format!("{namespace}.{name}");
    if full.len() <= MAX_LABEL_VALUE_LEN {
        return full;
    }
    let hash = short_hash(&full);
    let room = MAX_LABEL_VALUE_LEN - hash.len() - 1;
    format!("{}-{hash}", truncate_alnum_end(&full, room))
}

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// At most `max` bytes of a (DNS-name-like, so ASCII) string, ending on a letter or digit.
fn truncate_alnum_end(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
}

fn app_identity(app: &AppDeployment) -> Result<(String, String), SnapshotError> {
    let name = app.name_any();
    match app.namespace() {
        Some(namespace) => Ok((namespace, name)),
        None => Err(SnapshotError::IncompleteApp {
            name,
            field: "namespace",
        }),
    }
}

/// The snapshot Secret of `revision` (pure; [`store`] sends it).
pub fn snapshot_secret(
    app: &AppDeployment,
    revision: &str,
    render_digest: &str,
    manifests: &[Manifest],
) -> Result<Secret, SnapshotError> {
    let (namespace, app_name) = app_identity(app)?;
    let uid = app.uid().ok_or_else(|| SnapshotError::IncompleteApp {
        name: app_name.clone(),
        field: "uid (it must be read from the API server)",
    })?;
    let (data, json_bytes) = encode_counted(manifests);
    // What could not be read back is not stored: a rollback to it would fail.
    if json_bytes > MAX_DECODED_BYTES {
        return Err(SnapshotError::TooLargeDecoded {
            namespace,
            app: app_name,
            revision: revision.to_string(),
            bytes: json_bytes,
            limit: MAX_DECODED_BYTES,
        });
    }
    if data.len() > MAX_SNAPSHOT_BYTES {
        return Err(SnapshotError::TooLarge {
            namespace,
            app: app_name,
            revision: revision.to_string(),
            bytes: data.len(),
            limit: MAX_SNAPSHOT_BYTES,
        });
    }
    let owner = OwnerReference {
        api_version: AppDeployment::api_version(&()).to_string(),
        kind: AppDeployment::kind(&()).to_string(),
        name: app_name.clone(),
        uid,
        controller: Some(true),
        // Needs `update` on appdeployments/finalizers where that admission is on, and
        // nothing waits on a snapshot: leave unset.
        block_owner_deletion: None,
    };
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&app_name, revision, render_digest)),
            namespace: Some(namespace.clone()),
            labels: Some(BTreeMap::from([
                (APP_LABEL.to_string(), app_label_value(&namespace, &app_name)),
                (REVISION_LABEL.to_string(), short_revision(revision)),
            ])),
            annotations: Some(BTreeMap::from([(
                REVISION_ANNOTATION.to_string(),
                revision.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some(SNAPSHOT_SECRET_TYPE.to_string()),
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(data))])),
        ..Secret::default()
    })
}

/// Stores the manifests of a revision's render; returns the Secret's name. Idempotent
/// (server-side apply, deterministic content).
pub async fn store(
    client: &Client,
    app: &AppDeployment,
    revision: &str,
    render_digest: &str,
    manifests: &[Manifest],
) -> Result<String, SnapshotError> {
    let secret = snapshot_secret(app, revision, render_digest, manifests)?;
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|error| {
        let class = crate::failure::class_of(&error);
        let mut message = api_message(&error);
        // Snapshots are written only in namespaces onboarded as tenants (the chart's
        // tenant role): the first thing a namespace not onboarded is refused.
        if class == crate::failure::ApiErrorClass::Forbidden {
            message = format!(
                "{} (namespace {namespace} is not onboarded as a bosun tenant: bosun keeps snapshots \
                 and impersonates ServiceAccounts only where its tenant ClusterRole is bound)",
                crate::failure::describe_forbidden(&message)
            );
        }
        SnapshotError::Api {
            action: "storing",
            namespace: namespace.clone(),
            name: name.clone(),
            message,
            class,
        }
    })?;
    info!(app = %app.name_any(), %revision, secret = %name, objects = manifests.len(), "stored snapshot");
    Ok(name)
}

/// The manifests of the snapshot Secret `namespace/name`, which must hold `revision`.
pub async fn load(
    client: &Client,
    namespace: &str,
    name: &str,
    revision: &str,
) -> Result<Vec<Manifest>, SnapshotError> {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let secret = api
        .get_opt(&name)
        .await
        .map_err(|error| SnapshotError::Api {
            action: "reading",
            namespace: namespace.clone(),
            name: name.clone(),
            message: api_message(&error),
            class: crate::failure::class_of(&error),
        })?
        .ok_or_else(|| SnapshotError::NotFound {
            namespace: namespace.clone(),
            name: name.clone(),
            revision: revision.to_string(),
        })?;
    manifests_of(&secret, revision)
}

/// The manifests a snapshot Secret holds (e.g. one from a watch cache); it must hold
/// `revision`.
pub fn manifests_of(secret: &Secret, revision: &str) -> Result<Vec<Manifest>, SnapshotError> {
    manifests_counted(secret, revision).map(|(manifests, _)| manifests)
}

/// [`manifests_of`], and the bytes of JSON they were decoded from.
pub fn manifests_counted(secret: &Secret, revision: &str) -> Result<(Vec<Manifest>, usize), SnapshotError> {
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let corrupt = |message: String| SnapshotError::Corrupt {
        namespace: namespace.clone(),
        name: name.clone(),
        message,
    };
    // Short revisions can in principle collide; the full one is in the annotation.
    if let Some(stored) = secret.annotations().get(REVISION_ANNOTATION)
        && stored != revision
    {
        return Err(corrupt(format!("holds revision {stored}, not {revision}")));
    }
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(DATA_KEY))
        .ok_or_else(|| corrupt(format!("no key {DATA_KEY}")))?;
    decode_counted(&bytes.0).map_err(|error| corrupt(error.to_string()))
}

/// Deletes the app's snapshot Secrets whose names are not in `keep`.
pub async fn retain(client: &Client, app: &AppDeployment, keep: &[String]) -> Result<(), SnapshotError> {
    let (namespace, app_name) = app_identity(app)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let selector = format!("{APP_LABEL}={}", app_label_value(&namespace, &app_name));
    let listed = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|error| SnapshotError::Api {
            action: "listing",
            namespace: namespace.clone(),
            name: format!("({selector})"),
            message: api_message(&error),
            class: crate::failure::class_of(&error),
        })?;
    retain_among(client, app, &listed.items, keep).await
}

/// Deletes those of `secrets` (e.g. from a watch cache) that are snapshots of `app` and
/// whose names are not in `keep`.
pub async fn retain_among(
    client: &Client,
    app: &AppDeployment,
    secrets: &[Secret],
    keep: &[String],
) -> Result<(), SnapshotError> {
    let (namespace, _) = app_identity(app)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let keep: HashSet<&str> = keep.iter().map(String::as_str).collect();
    for secret in secrets
        .iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()) && is_snapshot_of(s, app))
    {
        let name = secret.name_any();
        if keep.contains(name.as_str()) {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => debug!(secret = %name, "deleted snapshot"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => {
                return Err(SnapshotError::Api {
                    action: "deleting",
                    namespace: namespace.clone(),
                    name,
                    message: api_message(&error),
                    class: crate::failure::class_of(&error),
                });
            }
        }
    }
    Ok(())
}

/// A snapshot Secret of this very app (type, and owned by it when the app has a uid: a
/// shortened label could in principle be shared by two apps).
fn is_snapshot_of(secret: &Secret, app: &AppDeployment) -> bool {
    let typed = secret.type_.as_deref() == Some(SNAPSHOT_SECRET_TYPE);
    let owned = match app.uid() {
        Some(uid) => secret.owner_references().iter().any(|o| o.uid == uid),
        None => true,
    };
    typed && owned
}

fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppDeploymentSpec;
    use serde_json::json;

    fn manifests() -> Vec<Manifest> {
        vec![
            Manifest {
                object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "cfg"}, "data": {"k": "v"}}),
                file: "app/config.yaml".into(),
                line: 1,
            },
            Manifest {
                object: json!({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web"}, "spec": {"replicas": 2}}),
                file: "app/web.yaml".into(),
                line: 12,
            },
        ]
    }

    fn app(name: &str) -> AppDeployment {
        let mut app = AppDeployment::new(name, AppDeploymentSpec::default());
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-1".into());
        app
    }

    #[test]
    fn encode_decode_round_trip_keeps_objects_and_locations() {
        let original = manifests();
        let bytes = encode(&original);
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.len(), 2);
        for (a, b) in original.iter().zip(&decoded) {
            assert_eq!(a.object, b.object);
            assert_eq!(a.file, b.file);
            assert_eq!(a.line, b.line);
        }
        assert_eq!(encode(&original), bytes, "deterministic");
        assert!(decode(&encode(&[])).unwrap().is_empty());
    }

    #[test]
    fn decode_rejects_garbage() {
        assert!(matches!(decode(b"not gzip"), Err(SnapshotError::Decode(_))));
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(b"{\"not\": \"a list\"}").unwrap();
        let err = decode(&encoder.finish().unwrap()).unwrap_err();
        assert!(err.to_string().contains("JSON"), "{err}");
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_limit_naming_it() {
        // 1 byte over the limit, of the cheapest kind to compress (a few KiB of gzip).
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(b"[").unwrap();
        encoder.write_all(&vec![b' '; MAX_DECODED_BYTES]).unwrap();
        encoder.write_all(b"]").unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let error = decode(&bomb).unwrap_err();
        assert!(
            error.to_string().contains(&MAX_DECODED_BYTES.to_string())
                && error.to_string().contains("32 MiB"),
            "{error}"
        );
        // At the limit exactly, it is read.
        let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
        encoder.write_all(b"[").unwrap();
        encoder.write_all(&vec![b' '; MAX_DECODED_BYTES - 2]).unwrap();
        encoder.write_all(b"]").unwrap();
        let (manifests, bytes) = decode_counted(&encoder.finish().unwrap()).unwrap();
        assert!(manifests.is_empty());
        assert_eq!(bytes, MAX_DECODED_BYTES);
    }

    #[test]
    fn a_render_too_large_to_read_back_is_not_stored() {
        // Compresses to a few KiB, so only the decoded size can refuse it.
        let big = vec![Manifest {
            object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "big"}, "data": {"k": "a".repeat(MAX_DECODED_BYTES)}}),
            file: "big.yaml".into(),
            line: 1,
        }];
        let error = snapshot_secret(&app("web"), "abc", "d", &big).unwrap_err();
        assert_eq!(error.reason(), "SnapshotTooLarge");
        let message = error.to_string();
        assert!(
            message.contains(&MAX_DECODED_BYTES.to_string()) && message.contains("team/web"),
            "{message}"
        );
    }

    #[test]
    fn secret_names_are_short_revision_and_bounded() {
        let rev = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(secret_name("web", rev, "d1d2"), "web-rev-0123456789ab-d1d2");
        // Another render of the same commit gets a Secret of its own.
        assert_ne!(secret_name("web", rev, "d1d2"), secret_name("web", rev, "e3e4"));

        let long = format!("{}.x", "a".repeat(250));
        let name = secret_name(&long, rev, "d1d2");
        assert!(name.len() <= 253, "{}", name.len());
        assert!(name.ends_with("-rev-0123456789ab-d1d2"));
        assert!(name.starts_with("aaaa"));
        let other = secret_name(&format!("{}.y", "a".repeat(250)), rev, "d1d2");
        assert_ne!(name, other, "hash keeps truncated names apart");
        // A dot right before the cut must not leave an invalid `.-` in the name.
        let dotted = format!("{}.{}", "a".repeat(221), "b".repeat(30));
        assert!(!secret_name(&dotted, rev, "d1d2").contains(".-"));
    }

    #[test]
    fn app_label_values_fit_a_label() {
        assert_eq!(app_label_value("team", "web"), "team.web");
        let long = app_label_value("team", &"x".repeat(100));
        assert!(long.len() <= 63);
        assert!(long.starts_with("team.xxx"));
        assert_ne!(long, app_label_value("team", &"x".repeat(101)));
    }

    #[test]
    fn snapshot_secret_is_typed_labelled_and_owned_by_the_app() {
        let rev = "0123456789abcdef0123456789abcdef01234567";
        let secret = snapshot_secret(&app("web"), rev, "d1d2", &manifests()).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("web-rev-0123456789ab-d1d2"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("team"));
        assert_eq!(secret.type_.as_deref(), Some(SNAPSHOT_SECRET_TYPE));
        let labels = secret.metadata.labels.clone().unwrap();
        assert_eq!(labels[APP_LABEL], "team.web");
        assert_eq!(labels[REVISION_LABEL], "0123456789ab");
        assert_eq!(secret.annotations()[REVISION_ANNOTATION], rev);
        let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "AppDeployment");
        assert_eq!(owner.api_version, "bosun.dev/v1alpha1");
        assert_eq!(owner.uid, "uid-1");
        assert_eq!(owner.controller, Some(true));
        let data = &secret.data.as_ref().unwrap()[DATA_KEY];
        assert_eq!(decode(&data.0).unwrap().len(), 2);
        assert_eq!(manifests_of(&secret, rev).unwrap(), manifests());
        assert!(manifests_of(&secret, "another").is_err());
        assert!(is_snapshot_of(&secret, &app("web")));

        let mut other_app = app("web");
        other_app.metadata.uid = Some("uid-2".into());
        assert!(!is_snapshot_of(&secret, &other_app));
    }

    #[test]
    fn snapshot_secret_needs_namespace_and_uid() {
        let mut no_uid = app("web");
        no_uid.metadata.uid = None;
        let err = snapshot_secret(&no_uid, "abc", "d", &manifests()).unwrap_err();
        assert!(err.to_string().contains("uid"), "{err}");
        let mut no_ns = app("web");
        no_ns.metadata.namespace = None;
        let err = snapshot_secret(&no_ns, "abc", "d", &manifests()).unwrap_err();
        assert_eq!(err.reason(), "InvalidAppDeployment");
    }

    #[test]
    fn oversized_snapshots_are_refused_before_sending() {
        // Incompressible data: a long run of distinct hashes.
        let noise: String = (0..40_000)
            .map(|i| format!("{:x}", Sha256::digest(format!("{i}").as_bytes())))
            .collect();
        let big = vec![Manifest {
            object: json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "big"}, "data": {"k": noise}}),
            file: "big.yaml".into(),
            line: 1,
        }];
        let err = snapshot_secret(&app("web"), "abc", "d", &big).unwrap_err();
        assert_eq!(err.reason(), "SnapshotTooLarge");
    }
}
