//! Pure steps of the Apply stage: identity, namespace placement, stamping, ordering,
//! "already applied?" comparison and the prune set. No I/O here.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::{APP_LABEL, InventoryEntry, OWNER_ANNOTATION};
use crate::render::Manifest;
use crate::render::quantity::{self, PathStep, QuantityFields};

/// Annotation holding a hash of what bosun last sent for an object. Because it is part of
/// the desired object, "desired is a subset of live" also notices a field that was
/// *removed* from Git (which a plain subset test cannot see), so such a change is sent.
pub const APPLIED_HASH_ANNOTATION: &str = "bosun.dev/applied-hash";

/// apiVersion, kind, namespace and name as written in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIdentity {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

/// Reads the identity of a manifest; `Err` says which field is missing or malformed.
pub fn identity(object: &Value) -> Result<ManifestIdentity, String> {
    let Some(map) = object.as_object() else {
        return Err("manifest is not a mapping".to_string());
    };
    let text = |v: Option<&Value>, field: &str| -> Result<String, String> {
        match v {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) | None | Some(Value::Null) => Err(format!("missing {field}")),
            Some(_) => Err(format!("{field} is not a string")),
        }
    };
    let api_version = text(map.get("apiVersion"), "apiVersion")?;
    let kind = text(map.get("kind"), "kind")?;
    let metadata = map.get("metadata");
    if metadata.is_some_and(|m| !m.is_object()) {
        return Err("metadata is not a mapping".to_string());
    }
    let name = text(metadata.and_then(|m| m.get("name")), "metadata.name")?;
    let namespace = match metadata.and_then(|m| m.get("namespace")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("metadata.namespace is not a string".to_string()),
    };
    Ok(ManifestIdentity {
        api_version,
        kind,
        name,
        namespace,
    })
}

/// The API group of an apiVersion (`""` for the core group).
pub fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((group, _)) => group,
        None => "",
    }
}

/// A kind served by a CustomResourceDefinition that is part of the same revision: known
/// before the CRD exists on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdKind {
    /// Name of the CRD object (`plural.group`).
    pub crd_name: String,
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
}

/// Kinds declared by the CustomResourceDefinitions (apiextensions.k8s.io/v1) among `manifests`.
pub fn crd_kinds(manifests: &[Manifest]) -> Vec<CrdKind> {
    let mut kinds = Vec::new();
    for manifest in manifests {
        let object = &manifest.object;
        if object.get("apiVersion").and_then(Value::as_str) != Some("apiextensions.k8s.io/v1")
            || object.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition")
        {
            continue;
        }
        let spec = &object["spec"];
        let (Some(group), Some(kind), Some(plural)) = (
            spec["group"].as_str(),
            spec["names"]["kind"].as_str(),
            spec["names"]["plural"].as_str(),
        ) else {
            continue;
        };
        let crd_name = object["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{plural}.{group}"));
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        for version in spec["versions"].as_array().into_iter().flatten() {
            let served = version["served"].as_bool().unwrap_or(true);
            if let (Some(name), true) = (version["name"].as_str(), served) {
                kinds.push(CrdKind {
                    crd_name: crd_name.clone(),
                    group: group.to_string(),
                    version: name.to_string(),
                    kind: kind.to_string(),
                    plural: plural.to_string(),
                    namespaced,
                });
            }
        }
    }
    kinds
}

/// Where a namespaced object goes: its own namespace or the default. A cluster-scoped
/// object naming a namespace is an error (it would be silently ignored by the server,
/// which usually means the author mistook the kind).
pub fn place_namespace(
    object: &mut Value,
    namespaced: bool,
    default_namespace: &str,
) -> Result<Option<String>, String> {
    let written = identity(object)?.namespace;
    match (namespaced, written) {
        (true, Some(ns)) => Ok(Some(ns)),
        (true, None) => {
            metadata_mut(object).insert(
                "namespace".to_string(),
                Value::String(default_namespace.to_string()),
            );
            Ok(Some(default_namespace.to_string()))
        }
        (false, Some(ns)) => Err(format!(
            "cluster-scoped kind must not name a namespace (metadata.namespace: {ns})"
        )),
        (false, None) => {
            // An explicit `namespace: ""` or null would otherwise be compared and sent.
            metadata_mut(object).remove("namespace");
            Ok(None)
        }
    }
}

/// Marks the object as bosun's: owner annotation, app label, and the hash of the result.
pub fn stamp(object: &mut Value, owner: &str, app_label: &str) {
    let metadata = metadata_mut(object);
    string_map_mut(metadata, "labels").insert(APP_LABEL.to_string(), app_label.into());
    let annotations = string_map_mut(metadata, "annotations");
    annotations.insert(OWNER_ANNOTATION.to_string(), owner.into());
    annotations.remove(APPLIED_HASH_ANNOTATION);
    let hash = content_hash(object);
    string_map_mut(metadata_mut(object), "annotations")
        .insert(APPLIED_HASH_ANNOTATION.to_string(), Value::String(hash));
}

/// SHA-256 (first 32 hex digits) of the object's canonical JSON (keys sorted).
pub fn content_hash(object: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(canonical_json(object).as_bytes());
    let digest = hasher.finalize();
    digest.iter().take(16).map(|byte| format!("{byte:02x}")).collect()
}

fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, String> = map.iter().map(|(k, v)| (k, canonical_json(v))).collect();
            let fields: Vec<String> = sorted
                .into_iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        scalar => scalar.to_string(),
    }
}

/// Metadata only the server sets. Copied from an exported object they would turn the
/// apply into a conditional update (`resourceVersion`) or be refused (`uid`).
const SERVER_METADATA: [&str; 7] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "generation",
    "managedFields",
    "selfLink",
];

/// Removes [`SERVER_METADATA`] fields from a manifest.
pub fn strip_server_metadata(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            metadata.remove(field);
        }
    }
}

/// `stringData` of a v1 Secret folded into `data` (base64), as the API server does. The
/// server never returns `stringData`, so leaving it would make every resync look changed;
/// server-side apply also tracks `stringData` ownership poorly.
pub fn fold_secret_string_data(object: &mut Value) {
    let is_secret = object.get("apiVersion").and_then(Value::as_str) == Some("v1")
        && object.get("kind").and_then(Value::as_str) == Some("Secret");
    let Some(map) = object.as_object_mut().filter(|_| is_secret) else {
        return;
    };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = string_map_mut(map, "data");
    for (key, value) in string_data {
        let bytes = match value {
            Value::String(s) => s.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        // ByteString serializes as standard base64, the encoding Secret data uses.
        let encoded = serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or_default();
        data.insert(key, encoded);
    }
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    let map = match object {
        Value::Object(map) => map,
        other => {
            *other = Value::Object(Map::new());
            match other {
                Value::Object(map) => map,
                _ => unreachable!("just assigned an object"),
            }
        }
    };
    object_entry(map, "metadata")
}

fn string_map_mut<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    object_entry(map, key)
}

fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    match entry {
        Value::Object(inner) => inner,
        _ => unreachable!("made an object above"),
    }
}

/// Apply order: namespaces, CRDs, identities and RBAC, config, Secrets, volumes claims,
/// Services, anything else, and workloads last (so that what they mount and reference
/// exists when their Pods start).
pub fn apply_rank(group: &str, kind: &str) -> u8 {
    match (group, kind) {
        ("", "Namespace") => 0,
        ("apiextensions.k8s.io", "CustomResourceDefinition") => 1,
        ("", "ServiceAccount") => 2,
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding") => 2,
        ("", "ConfigMap") => 3,
        ("", "Secret") => 4,
        ("", "PersistentVolumeClaim") => 5,
        ("", "Service") => 6,
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet") => 8,
        ("batch", "Job" | "CronJob") => 8,
        _ => 7,
    }
}

/// Indices of `entries` in apply order; stable within a rank (the order of the files).
pub fn apply_order(entries: &[InventoryEntry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| apply_rank(group_of(&entries[i].api_version), &entries[i].kind));
    order
}

/// Whether every field of `desired` already has that value in `live`. Maps are compared
/// key by key (extra live keys, e.g. defaults and other managers' fields, are fine), lists
/// element by element with equal length. A zero value in `desired` (null, "", 0, false,
/// {} or []) also matches an absent live field: the API server omits such fields. A
/// top-level `status` is ignored: it is not applied through the main resource.
///
/// Resource quantities ([`QuantityFields`]) match when they are the same quantity once the
/// server has rounded them up to milli-units (`"1.5"` and the stored `"1500m"`, `0.5` and
/// `"500m"`), because the server rewrites every quantity it stores; anywhere else `"1000"`
/// and `"1k"` still differ. This keeps the cheap comparison exact for quantities; the final
/// judge of "would applying change anything" is the API server's own dry-run result, which
/// the Apply stage is to consult.
pub fn already_applied(desired: &Value, live: &Value) -> bool {
    let subset = Subset {
        quantities: QuantityFields::of(desired),
    };
    match (desired.as_object(), live.as_object()) {
        (Some(desired), Some(live)) => desired
            .iter()
            .filter(|(key, _)| key.as_str() != "status")
            .all(|(key, value)| subset.field_matches(value, live.get(key), &mut vec![PathStep::Field(key)])),
        _ => false,
    }
}

/// `desired` ⊆ `live`, recursively (see [`already_applied`]), knowing no quantities.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    let subset = Subset {
        quantities: QuantityFields::default(),
    };
    subset.is_subset(desired, live, &mut Vec::new())
}

/// The comparison of [`already_applied`] for one kind of object.
struct Subset {
    quantities: QuantityFields,
}

impl Subset {
    fn field_matches<'d>(
        &self,
        desired: &'d Value,
        live: Option<&Value>,
        path: &mut Vec<PathStep<'d>>,
    ) -> bool {
        match live {
            None => is_zero(desired),
            Some(live) => self.is_subset(desired, live, path),
        }
    }

    /// `path` leads from the object's root to `desired`.
    fn is_subset<'d>(&self, desired: &'d Value, live: &Value, path: &mut Vec<PathStep<'d>>) -> bool {
        match (desired, live) {
            (Value::Object(desired), Value::Object(live)) => desired.iter().all(|(key, value)| {
                path.push(PathStep::Field(key));
                let matches = self.field_matches(value, live.get(key), path);
                path.pop();
                matches
            }),
            (Value::Array(desired), Value::Array(live)) => {
                desired.len() == live.len()
                    && desired.iter().zip(live).enumerate().all(|(index, (d, l))| {
                        path.push(PathStep::Index(index));
                        let matches = self.is_subset(d, l, path);
                        path.pop();
                        matches
                    })
            }
            (desired, live) if self.quantities.contains(path) && quantity::same_quantity(desired, live) => {
                true
            }
            (Value::Number(d), Value::Number(l)) => d == l || d.as_f64() == l.as_f64(),
            (Value::Null, Value::Null) => true,
            (desired, Value::Null) => is_zero(desired),
            (desired, live) => desired == live,
        }
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
    }
}

/// Identity of an object across API versions: a kind moving from `apps/v1beta1` to
/// `apps/v1` is the same object and must not be pruned.
fn version_free_key(entry: &InventoryEntry) -> (&str, &str, Option<&str>, &str) {
    (
        group_of(&entry.api_version),
        entry.kind.as_str(),
        entry.namespace.as_deref(),
        entry.name.as_str(),
    )
}

/// What the previous revision owned and this one does not, in delete order: the reverse
/// of apply order (workloads first), so Namespaces go last and CRDs just before them.
pub fn prune_set(previous: &[InventoryEntry], current: &[InventoryEntry]) -> Vec<InventoryEntry> {
    let kept: HashSet<_> = current.iter().map(version_free_key).collect();
    let mut seen = HashSet::new();
    let mut prune: Vec<InventoryEntry> = previous
        .iter()
        .filter(|entry| !kept.contains(&version_free_key(entry)))
        .filter(|entry| seen.insert(version_free_key(entry)))
        .cloned()
        .collect();
    prune.sort();
    prune.sort_by_key(|entry| std::cmp::Reverse(apply_rank(group_of(&entry.api_version), &entry.kind)));
    prune
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> InventoryEntry {
        InventoryEntry {
            api_version: api_version.to_string(),
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
            adopted: false,
        }
    }

    #[test]
    fn identity_reads_fields_and_names_what_is_missing() {
        let id = identity(&json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "cfg", "namespace": "team"}
        }))
        .unwrap();
        assert_eq!(id.api_version, "v1");
        assert_eq!(id.kind, "ConfigMap");
        assert_eq!(id.name, "cfg");
        assert_eq!(id.namespace.as_deref(), Some("team"));

        let err = identity(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap_err();
        assert!(err.contains("metadata.name"), "{err}");
        let err = identity(&json!({"kind": "ConfigMap", "metadata": {"name": "x"}})).unwrap_err();
        assert!(err.contains("apiVersion"), "{err}");
        let err = identity(&json!({"apiVersion": "v1", "kind": 3})).unwrap_err();
        assert!(err.contains("kind is not a string"), "{err}");
        assert!(identity(&json!([1, 2])).is_err());
    }

    #[test]
    fn group_of_core_and_named_groups() {
        assert_eq!(group_of("v1"), "");
        assert_eq!(group_of("apps/v1"), "apps");
        assert_eq!(
            group_of("rbac.authorization.k8s.io/v1"),
            "rbac.authorization.k8s.io"
        );
    }

    #[test]
    fn crd_kinds_come_from_the_crd_object() {
        let crd = Manifest {
            object: json!({
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": "widgets.example.com"},
                "spec": {
                    "group": "example.com",
                    "scope": "Cluster",
                    "names": {"kind": "Widget", "plural": "widgets"},
                    "versions": [
                        {"name": "v1", "served": true, "storage": true},
                        {"name": "v0", "served": false, "storage": false}
                    ]
                }
            }),
            file: "crd.yaml".into(),
            line: 1,
        };
        let other = Manifest {
            object: json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}),
            file: "c.yaml".into(),
            line: 1,
        };
        let kinds = crd_kinds(&[other, crd]);
        assert_eq!(
            kinds,
            vec![CrdKind {
                crd_name: "widgets.example.com".into(),
                group: "example.com".into(),
                version: "v1".into(),
                kind: "Widget".into(),
                plural: "widgets".into(),
                namespaced: false,
            }]
        );
    }

    #[test]
    fn namespaced_objects_get_the_default_namespace() {
        let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let ns = place_namespace(&mut object, true, "team").unwrap();
        assert_eq!(ns.as_deref(), Some("team"));
        assert_eq!(object["metadata"]["namespace"], "team");

        let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "other"}});
        let ns = place_namespace(&mut object, true, "team").unwrap();
        assert_eq!(ns.as_deref(), Some("other"));
    }

    #[test]
    fn cluster_scoped_objects_must_not_name_a_namespace() {
        let mut object = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "n", "namespace": "team"}});
        let err = place_namespace(&mut object, false, "team").unwrap_err();
        assert!(err.contains("metadata.namespace: team"), "{err}");

        let mut object = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "n", "namespace": ""}});
        assert_eq!(place_namespace(&mut object, false, "team").unwrap(), None);
        assert!(object["metadata"].get("namespace").is_none());
    }

    #[test]
    fn stamp_sets_owner_label_and_a_hash_that_follows_content() {
        let mut a = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"x": "y"}}, "data": {"k": "v"}});
        stamp(&mut a, "team/app", "team.app");
        assert_eq!(a["metadata"]["annotations"][OWNER_ANNOTATION], "team/app");
        assert_eq!(a["metadata"]["labels"][APP_LABEL], "team.app");
        assert_eq!(a["metadata"]["labels"]["x"], "y");
        let hash_a = a["metadata"]["annotations"][APPLIED_HASH_ANNOTATION].clone();
        assert_eq!(hash_a.as_str().map(str::len), Some(32));

        // Stamping again is stable: the old hash is not part of the new one.
        let mut again = a.clone();
        stamp(&mut again, "team/app", "team.app");
        assert_eq!(again, a);

        let mut b = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "labels": {"x": "y"}}, "data": {}});
        stamp(&mut b, "team/app", "team.app");
        assert_ne!(b["metadata"]["annotations"][APPLIED_HASH_ANNOTATION], hash_a);
    }

    #[test]
    fn content_hash_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":[1,2],"d":"x"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"d":"x","c":[1,2]},"a":1}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"b":{"d":"x","c":[2,1]},"a":1}"#).unwrap();
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
    }

    #[test]
    fn server_metadata_is_stripped() {
        let mut object = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": "c", "namespace": "t", "resourceVersion": "12", "uid": "u",
            "creationTimestamp": null, "generation": 3, "managedFields": [], "labels": {"a": "b"}
        }});
        strip_server_metadata(&mut object);
        assert_eq!(
            object["metadata"],
            json!({"name": "c", "namespace": "t", "labels": {"a": "b"}})
        );
    }

    #[test]
    fn secret_string_data_is_folded_into_data() {
        let mut secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"a": "YQ==", "b": "b2xk"}, "stringData": {"b": "new", "c": "hi"}});
        fold_secret_string_data(&mut secret);
        assert!(secret.get("stringData").is_none());
        assert_eq!(secret["data"], json!({"a": "YQ==", "b": "bmV3", "c": "aGk="}));

        let mut config = json!({"apiVersion": "v1", "kind": "ConfigMap", "stringData": {"b": "x"}});
        let before = config.clone();
        fold_secret_string_data(&mut config);
        assert_eq!(config, before);
    }

    #[test]
    fn apply_order_puts_namespaces_first_workloads_last_and_is_stable() {
        let entries = vec![
            entry("apps/v1", "Deployment", Some("t"), "web"),
            entry("v1", "Service", Some("t"), "web"),
            entry("example.com/v1", "Widget", Some("t"), "w"),
            entry("v1", "ConfigMap", Some("t"), "b"),
            entry("v1", "Secret", Some("t"), "s"),
            entry("batch/v1", "Job", Some("t"), "j"),
            entry("v1", "ConfigMap", Some("t"), "a"),
            entry(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                "widgets",
            ),
            entry("rbac.authorization.k8s.io/v1", "RoleBinding", Some("t"), "rb"),
            entry("v1", "PersistentVolumeClaim", Some("t"), "data"),
            entry("v1", "ServiceAccount", Some("t"), "sa"),
            entry("v1", "Namespace", None, "t"),
        ];
        let names: Vec<&str> = apply_order(&entries)
            .into_iter()
            .map(|i| entries[i].name.as_str())
            .collect();
        assert_eq!(
            names,
            vec![
                "t", "widgets", "rb", "sa", "b", "a", "s", "data", "web", "w", "web", "j"
            ]
        );
        // The Deployment named "web" comes after the Service named "web".
        let order = apply_order(&entries);
        assert_eq!(entries[order[8]].kind, "Service");
        assert_eq!(entries[order[10]].kind, "Deployment");
    }

    #[test]
    fn subset_accepts_server_additions_and_rejects_differences() {
        let desired = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "c", "image": "img:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]}
            ]}}},
            "status": {"replicas": 5}
        });
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "7",
                "labels": {"app": "web", "extra": "1"}},
            "spec": {"replicas": 1, "strategy": {"type": "RollingUpdate"},
                "template": {"spec": {"containers": [
                    {"name": "c", "image": "img:1", "imagePullPolicy": "IfNotPresent",
                     "ports": [{"containerPort": 80, "protocol": "TCP"}]}
                ]}}},
            "status": {"replicas": 1}
        });
        assert!(already_applied(&desired, &live));

        let mut changed_image = desired.clone();
        changed_image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("img:2");
        assert!(!already_applied(&changed_image, &live));

        let mut extra_container = desired.clone();
        extra_container["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "d", "image": "x"}));
        assert!(!already_applied(&extra_container, &live));

        let mut new_label = desired.clone();
        new_label["metadata"]["labels"]["tier"] = json!("front");
        assert!(!already_applied(&new_label, &live));

        let mut quantity = desired.clone();
        quantity["spec"]["replicas"] = json!("1");
        assert!(!already_applied(&quantity, &live));
    }

    #[test]
    fn subset_treats_zero_values_as_matching_absent_fields() {
        let desired = json!({"metadata": {"name": "c", "annotations": {}, "creationTimestamp": null},
            "spec": {"hostNetwork": false, "initialDelaySeconds": 0, "env": [], "x": ""}});
        let live = json!({"metadata": {"name": "c"}, "spec": {}});
        assert!(already_applied(&desired, &live));

        let desired = json!({"spec": {"hostNetwork": true}});
        assert!(!already_applied(&desired, &live));
        assert!(!already_applied(&json!({"a": 1}), &json!("not an object")));
    }

    #[test]
    fn subset_numbers_compare_by_value() {
        assert!(is_subset(&json!(1), &json!(1.0)));
        assert!(!is_subset(&json!(1), &json!(2)));
        assert!(!is_subset(&json!([1, 2]), &json!([1])));
        assert!(is_subset(&json!([{"a": 1}]), &json!([{"a": 1, "b": 2}])));
    }

    #[test]
    fn quantities_compare_by_value_where_kubernetes_has_quantities() {
        let desired = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "resources": {
                "requests": {"cpu": 0.5, "memory": "1024Mi"},
                "limits": {"cpu": "1e3", "memory": "1Gi", "ephemeral-storage": "0.0001"}
            }}]}}}
        });
        let live = json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "1k", "memory": "1073741824", "ephemeral-storage": "1m"}
            }}]}}}
        });
        assert!(already_applied(&desired, &live));

        let mut other_value = desired.clone();
        other_value["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] =
            json!("1G");
        assert!(!already_applied(&other_value, &live), "1G is not 1Gi");
        let mut malformed = desired.clone();
        malformed["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("1 k");
        assert!(!already_applied(&malformed, &live));

        // The same texts outside a quantity field are just strings.
        let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"size": "1000"}});
        let live_config = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"size": "1k"}});
        assert!(!already_applied(&config, &live_config));
        let not_resources = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": [{"env": [{"name": "CPU", "value": "1000"}]}]}}}});
        let live_env = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "spec": {"template": {"spec": {"containers": [{"env": [{"name": "CPU", "value": "1k"}]}]}}}});
        assert!(!already_applied(&not_resources, &live_env));
        // Without a kind, no field is a quantity.
        assert!(!is_subset(&json!({"cpu": "1000"}), &json!({"cpu": "1k"})));
    }

    #[test]
    fn quantities_of_claims_quotas_and_limit_ranges_compare_by_value() {
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "spec": {"resources": {"requests": {"storage": 1073741824}}}});
        let live_claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "spec": {"resources": {"requests": {"storage": "1Gi"}}, "volumeMode": "Filesystem"}});
        assert!(already_applied(&claim, &live_claim));

        let quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "spec": {"hard": {"requests.cpu": "1.5", "pods": 10}}});
        let live_quota = json!({"apiVersion": "v1", "kind": "ResourceQuota",
            "spec": {"hard": {"requests.cpu": "1500m", "pods": "10"}}});
        assert!(already_applied(&quota, &live_quota));

        let limits = json!({"apiVersion": "v1", "kind": "LimitRange",
            "spec": {"limits": [{"type": "Container", "min": {"cpu": 0.1}, "maxLimitRequestRatio": {"cpu": 4}}]}});
        let live_limits = json!({"apiVersion": "v1", "kind": "LimitRange",
            "spec": {"limits": [{"type": "Container", "min": {"cpu": "100m"}, "maxLimitRequestRatio": {"cpu": "4"},
                                 "defaultRequest": {"cpu": "100m"}}]}});
        assert!(already_applied(&limits, &live_limits));
        let mut changed = limits.clone();
        changed["spec"]["limits"][0]["min"]["cpu"] = json!(0.2);
        assert!(!already_applied(&changed, &live_limits));
    }

    #[test]
    fn prune_set_is_previous_minus_current_ignoring_version_namespaces_last() {
        let previous = vec![
            entry("v1", "Namespace", None, "old-ns"),
            entry("v1", "ConfigMap", Some("t"), "gone"),
            entry("v1", "ConfigMap", Some("t"), "kept"),
            entry("apps/v1beta1", "Deployment", Some("t"), "web"),
            entry("apps/v1", "Deployment", Some("t"), "old-web"),
            entry(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                None,
                "w.example.com",
            ),
            entry("v1", "ConfigMap", Some("other"), "kept"),
        ];
        let current = vec![
            entry("v1", "ConfigMap", Some("t"), "kept"),
            entry("apps/v1", "Deployment", Some("t"), "web"),
        ];
        let pruned: Vec<String> = prune_set(&previous, &current)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            pruned,
            vec![
                "Deployment t/old-web",
                "ConfigMap other/kept",
                "ConfigMap t/gone",
                "CustomResourceDefinition w.example.com",
                "Namespace old-ns",
            ]
        );
        assert!(prune_set(&current, &current).is_empty());
    }
}
