//! Every Secret (and env ConfigMap) a workload reads must exist, with the keys it
//! reads, unless the reference is optional: checked in every workload, whatever the
//! Runbook says, since a pod cannot start without them.

use std::collections::BTreeSet;

use serde_json::Value;

use super::PreflightMiss;
use super::env::{KnownObjects, ObjectKind, env_from_reference, key_reference};
use super::workloads::{Workload, array, optional, str_field};

/// Who reads: the workload, and the container when it is one.
struct Reader<'a> {
    workload: String,
    container: Option<&'a str>,
    /// `Deployment app/api container api`, `Deployment app/api`.
    prefix: String,
}

/// What is read, and how it is described: `env JWT_SECRET`, `volume certs`.
struct Reference<'a> {
    kind: ObjectKind,
    namespace: &'a str,
    name: &'a str,
    /// The keys read (none: the whole object).
    keys: Vec<&'a str>,
    optional: bool,
    variable: Option<&'a str>,
    by: String,
}

/// Adds a miss for every missing Secret, ConfigMap or key `workload` reads, and
/// records the Secrets it reads from the cluster in `secrets` (`namespace/name`).
pub(super) fn check(
    workload: &Workload<'_>,
    known: &KnownObjects<'_>,
    misses: &mut Vec<PreflightMiss>,
    secrets: &mut BTreeSet<String>,
) {
    let namespace = workload.namespace.as_str();
    let pod = Reader {
        workload: workload.describe(),
        container: None,
        prefix: workload.describe(),
    };
    for reference in pod_references(workload.pod_spec, namespace) {
        judge(&pod, &reference, known, misses, secrets);
    }
    for container in workload.containers() {
        let reader = Reader {
            workload: workload.describe(),
            container: Some(container.name),
            prefix: format!("{} {}", workload.describe(), container.describe()),
        };
        for reference in container_references(container.spec, namespace) {
            judge(&reader, &reference, known, misses, secrets);
        }
    }
}

/// The Secrets a pod template's volumes and `imagePullSecrets` read.
fn pod_references<'a>(pod_spec: &'a Value, namespace: &'a str) -> Vec<Reference<'a>> {
    let mut references = Vec::new();
    for pull in array(pod_spec, "imagePullSecrets") {
        references.push(Reference {
            kind: ObjectKind::Secret,
            namespace,
            name: str_field(pull, "name").unwrap_or_default(),
            keys: Vec::new(),
            // The kubelet pulls without it, but a private image then fails to pull.
            optional: false,
            variable: None,
            by: "imagePullSecrets names".into(),
        });
    }
    for volume in array(pod_spec, "volumes") {
        let volume_name = str_field(volume, "name").unwrap_or_default();
        if let Some(secret) = volume.get("secret") {
            references.push(Reference {
                kind: ObjectKind::Secret,
                namespace,
                name: str_field(secret, "secretName").unwrap_or_default(),
                keys: item_keys(secret),
                optional: optional(secret),
                variable: None,
                by: format!("volume {volume_name} reads"),
            });
        }
        if let Some(projected) = volume.get("projected") {
            for source in array(projected, "sources") {
                if let Some(secret) = source.get("secret") {
                    references.push(Reference {
                        kind: ObjectKind::Secret,
                        namespace,
                        name: str_field(secret, "name").unwrap_or_default(),
                        keys: item_keys(secret),
                        optional: optional(secret),
                        variable: None,
                        by: format!("projected volume {volume_name} reads"),
                    });
                }
            }
        }
    }
    references
}

/// The Secrets and ConfigMaps a container's `env` and `envFrom` read.
fn container_references<'a>(container: &'a Value, namespace: &'a str) -> Vec<Reference<'a>> {
    let mut references = Vec::new();
    for source in array(container, "envFrom") {
        if let Some((kind, reference)) = env_from_reference(source) {
            references.push(Reference {
                kind,
                namespace,
                name: str_field(reference, "name").unwrap_or_default(),
                keys: Vec::new(),
                optional: optional(reference),
                variable: None,
                by: "envFrom reads".into(),
            });
        }
    }
    for variable in array(container, "env") {
        let name = str_field(variable, "name").unwrap_or_default();
        let Some((kind, reference)) = variable.get("valueFrom").and_then(key_reference) else {
            continue;
        };
        references.push(Reference {
            kind,
            namespace,
            name: str_field(reference, "name").unwrap_or_default(),
            keys: str_field(reference, "key").into_iter().collect(),
            optional: optional(reference),
            variable: Some(name),
            by: format!("env {name} reads"),
        });
    }
    references
}

/// The keys a volume's `items` project (none: every key).
fn item_keys(source: &Value) -> Vec<&str> {
    array(source, "items")
        .iter()
        .filter_map(|item| str_field(item, "key"))
        .collect()
}

fn judge(
    reader: &Reader<'_>,
    reference: &Reference<'_>,
    known: &KnownObjects<'_>,
    misses: &mut Vec<PreflightMiss>,
    secrets: &mut BTreeSet<String>,
) {
    let object = format!("{}/{}", reference.namespace, reference.name);
    let kind = reference.kind.name();
    let miss = |key: Option<&str>, message: String| PreflightMiss {
        workload: Some(reader.workload.clone()),
        container: reader.container.map(str::to_string),
        variable: reference.variable.map(str::to_string),
        secret: (reference.kind == ObjectKind::Secret).then(|| object.clone()),
        config_map: (reference.kind == ObjectKind::ConfigMap).then(|| object.clone()),
        key: key.map(str::to_string),
        field: None,
        message: format!("{}: {message}", reader.prefix),
    };
    let data = known.of(reference.kind, reference.namespace, reference.name);
    if reference.kind == ObjectKind::Secret && !known.renders_secret(reference.namespace, reference.name) {
        secrets.insert(object.clone());
    }
    let Some(data) = data else {
        if !reference.optional {
            let what = match reference.keys.as_slice() {
                [key] => format!("key {key} of {kind} {object}"),
                _ => format!("{kind} {object}"),
            };
            let key = match reference.keys.as_slice() {
                [key] => Some(*key),
                _ => None,
            };
            misses.push(miss(
                key,
                format!("{} {what}, which does not exist", reference.by),
            ));
        }
        return;
    };
    if reference.optional {
        return;
    }
    for key in &reference.keys {
        if data.entries.contains_key(*key) {
            continue;
        }
        let lacks = if data.rendered {
            "which this revision renders without that key"
        } else {
            "which does not have that key"
        };
        misses.push(miss(
            Some(key),
            format!("{} key {key} of {kind} {object}, {lacks}", reference.by),
        ));
    }
}
