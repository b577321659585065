//! What bosun changes in a revision's objects before applying them: the Runbook's
//! defaults injected where `inject: true` asks, and the digest of the external Secrets
//! each workload reads in its pod template, so that rolling out a change of their data
//! rolls the workload (`spec.secrets.rolloutOnChange`; README, "The runbook, step by
//! step": Secret rotation).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::ClusterLookup;
use super::contract::default_of;
use super::env::{KnownObjects, ObjectKind, env_from_reference, key_reference};
use super::workloads::{self, Depth, Selection, Workload, array, str_field};
use crate::api::RunbookSpec;
use crate::render::Manifest;

/// Pod template annotation holding the digest of the Secrets the pods read.
pub const SECRETS_DIGEST_ANNOTATION: &str = "bosun.dev/secrets-digest";

/// Digest of a Secret's data: SHA-256 over its keys and values in key order, each
/// length-prefixed (so that no two different data give the same bytes), as hex, first
/// 16 characters. The data never leaves this function.
pub fn secret_data_digest(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        hash_field(&mut hasher, key.as_bytes());
        hash_field(&mut hasher, value);
    }
    hex16(hasher)
}

fn hash_field(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

fn hex16(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The Secrets in the cluster (`namespace/name`) that the workloads which roll on a
/// pod template change (Deployments, StatefulSets, DaemonSets) read through env,
/// `envFrom`, `secret` volumes or projected volumes, each with the digest of its data
/// ([`secret_data_digest`]). Not `imagePullSecrets` (a pulled image does not change
/// with them), not the Secrets the revision renders (they change with a commit), not
/// Secrets that do not exist.
pub fn secret_digests(
    objects: &[Manifest],
    namespace: &str,
    cluster: &impl ClusterLookup,
) -> BTreeMap<String, String> {
    let known = KnownObjects::new(objects, namespace, cluster);
    let mut digests = BTreeMap::new();
    for workload in workloads::find(objects, namespace) {
        if !workload.rolls_on_template_change() {
            continue;
        }
        for (secret_namespace, name) in external_secrets_read(&workload, &known) {
            if let Some(data) = cluster.secret(&secret_namespace, &name) {
                digests.insert(format!("{secret_namespace}/{name}"), secret_data_digest(&data));
            }
        }
    }
    digests
}

/// Returns `objects` ready to apply:
/// - every rule with `inject: true` and a `default` adds `{name, value: default}` to
///   the `env` of each container the contract fully applies to (see the module doc of
///   [`super`]) that does not set the variable, neither in `env` nor through an
///   `envFrom` source; a container with an `envFrom` source that is missing gets
///   nothing (that source might set it, and `env` would override it);
/// - each Deployment, StatefulSet and DaemonSet whose pods read Secrets of the cluster
///   gets the annotation [`SECRETS_DIGEST_ANNOTATION`] on its pod template: a digest
///   over the names and `digests` (from [`secret_digests`]) of those Secrets. The
///   caller passes fresh digests on a deploy and the recorded ones on a drift repair,
///   so a repair never rolls out a Secret change that the gates have not seen. The
///   annotation is written whatever `spec.secrets.rolloutOnChange` says: that field
///   decides whether a Secret change starts a rollout, and a pod template that
///   followed the field would roll the workload, outside the gates, the moment it is
///   turned off (the annotation dropped) or on (added).
///
/// Pure, deterministic and idempotent.
pub fn apply_transforms(
    objects: &[Manifest],
    runbook: &RunbookSpec,
    namespace: &str,
    cluster: &impl ClusterLookup,
    digests: &BTreeMap<String, String>,
) -> Vec<Manifest> {
    let known = KnownObjects::new(objects, namespace, cluster);
    let selection = Selection::new(&runbook.workloads);
    let mut transformed = objects.to_vec();
    for workload in workloads::find(objects, namespace) {
        let object = &mut transformed[workload.index].object;
        for (position, container) in workload.containers().iter().enumerate() {
            if selection.depth(&workload, container) != Some(Depth::Full) {
                continue;
            }
            let missing = injections(runbook, container.spec, &workload.namespace, &known);
            if !missing.is_empty() {
                let (field, index) = if container.init {
                    ("initContainers", position)
                } else {
                    (
                        "containers",
                        position - array(workload.pod_spec, "initContainers").len(),
                    )
                };
                add_env(object, workload.template_path, field, index, missing);
            }
        }
        if workload.rolls_on_template_change() {
            let read = external_secrets_read(&workload, &known);
            if let Some(digest) = workload_digest(&read, digests) {
                annotate(object, workload.template_path, &digest);
            }
        }
    }
    transformed
}

/// `(name, default)` of each injected default the container lacks.
fn injections<'r>(
    runbook: &'r RunbookSpec,
    container: &Value,
    namespace: &str,
    known: &KnownObjects<'_>,
) -> Vec<(&'r str, &'r str)> {
    let mut from_env_from: BTreeSet<String> = BTreeSet::new();
    for source in array(container, "envFrom") {
        let Some((kind, reference)) = env_from_reference(source) else {
            continue;
        };
        let name = str_field(reference, "name").unwrap_or_default();
        match known.of(kind, namespace, name) {
            Some(data) => {
                let prefix = str_field(source, "prefix").unwrap_or_default();
                from_env_from.extend(data.entries.into_keys().map(|key| format!("{prefix}{key}")));
            }
            // Whatever it may hold would be overridden by an injected literal.
            None => return Vec::new(),
        }
    }
    let in_env: BTreeSet<&str> = array(container, "env")
        .iter()
        .filter_map(|variable| str_field(variable, "name"))
        .collect();
    let mut missing = Vec::new();
    for rule in runbook.env.iter().filter(|rule| rule.inject) {
        let name = rule.name.as_str();
        // `secret: true` refuses a literal, which an injected default would be.
        let secret = runbook.env.iter().any(|rule| rule.name == name && rule.secret);
        let Some(default) = default_of(&runbook.env, name).filter(|_| !secret) else {
            continue;
        };
        if !in_env.contains(name)
            && !from_env_from.contains(name)
            && !missing.iter().any(|(seen, _)| *seen == name)
        {
            missing.push((name, default));
        }
    }
    missing
}

fn add_env(
    object: &mut Value,
    template_path: &[&str],
    field: &str,
    index: usize,
    missing: Vec<(&str, &str)>,
) {
    let Some(container) = path_mut(object, template_path)
        .and_then(|template| template.pointer_mut(&format!("/spec/{field}/{index}")))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let env = container.entry("env").or_insert_with(|| Value::Array(Vec::new()));
    if !env.is_array() {
        *env = Value::Array(Vec::new());
    }
    let Value::Array(env) = env else { return };
    for (name, value) in missing {
        env.push(json!({ "name": name, "value": value }));
    }
}

/// The Secrets of the cluster (`(namespace, name)`) a workload's pods read: env,
/// `envFrom`, `secret` and projected volumes; not `imagePullSecrets`, not the Secrets
/// the revision renders.
fn external_secrets_read(workload: &Workload<'_>, known: &KnownObjects<'_>) -> BTreeSet<(String, String)> {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for container in workload.containers() {
        for source in array(container.spec, "envFrom") {
            if let Some((ObjectKind::Secret, reference)) = env_from_reference(source) {
                names.extend(str_field(reference, "name"));
            }
        }
        for variable in array(container.spec, "env") {
            if let Some((ObjectKind::Secret, reference)) = variable.get("valueFrom").and_then(key_reference) {
                names.extend(str_field(reference, "name"));
            }
        }
    }
    for volume in array(workload.pod_spec, "volumes") {
        if let Some(secret) = volume.get("secret") {
            names.extend(str_field(secret, "secretName"));
        }
        if let Some(projected) = volume.get("projected") {
            for source in array(projected, "sources") {
                if let Some(secret) = source.get("secret") {
                    names.extend(str_field(secret, "name"));
                }
            }
        }
    }
    let namespace = workload.namespace.as_str();
    names
        .into_iter()
        .filter(|name| !name.is_empty() && !known.renders_secret(namespace, name))
        .map(|name| (namespace.to_string(), name.to_string()))
        .collect()
}

/// Digest over `(namespace/name, digest)` of the Secrets read that have a digest;
/// `None` when none has.
fn workload_digest(read: &BTreeSet<(String, String)>, digests: &BTreeMap<String, String>) -> Option<String> {
    let mut hasher = Sha256::new();
    let mut any = false;
    for (namespace, name) in read {
        let key = format!("{namespace}/{name}");
        if let Some(digest) = digests.get(&key) {
            hash_field(&mut hasher, key.as_bytes());
            hash_field(&mut hasher, digest.as_bytes());
            any = true;
        }
    }
    any.then(|| hex16(hasher))
}

fn annotate(object: &mut Value, template_path: &[&str], digest: &str) {
    let Some(template) = path_mut(object, template_path) else {
        return;
    };
    let Some(annotations) = ensure_object(template, "metadata").and_then(|m| ensure_object(m, "annotations"))
    else {
        return;
    };
    if let Some(annotations) = annotations.as_object_mut() {
        annotations.insert(SECRETS_DIGEST_ANNOTATION.into(), Value::String(digest.into()));
    }
}

/// The mapping at `key` of `value`, made when absent or null.
fn ensure_object<'v>(value: &'v mut Value, key: &str) -> Option<&'v mut Value> {
    let map = value.as_object_mut()?;
    let entry = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.is_object().then_some(entry)
}

fn path_mut<'v>(value: &'v mut Value, path: &[&str]) -> Option<&'v mut Value> {
    path.iter().try_fold(value, |value, key| value.get_mut(*key))
}
