//! kustomize's own files beside plain manifests.
//!
//! A directory made for `kustomize build` (or `kubectl apply -k`) holds a
//! `kustomization.yaml` that lists, patches and transforms the manifests next to it.
//! bosun applies plain manifests as written: read as an object, a kustomization would
//! be applied as a kind no API server has, and what it says (patches, name prefixes,
//! generated ConfigMaps, the very list of files) would be silently ignored. So the
//! revision is refused, naming the file and telling the user what bosun expects.

use serde_json::Value;

/// The file names `kustomize build` reads as a directory's kustomization.
const FILE_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// API group of kustomize's configuration kinds (`Kustomization`, `Component`).
const GROUP: &str = "kustomize.config.k8s.io";

/// Whether `path` (repository-relative) is a kustomization by its name alone: kustomize
/// reads these names whatever they hold, and older ones have no `apiVersion` or `kind`.
pub(super) fn is_kustomization_file(path: &str) -> bool {
    FILE_NAMES.contains(&file_name(path))
}

/// Whether a document is kustomize configuration (by its `apiVersion`), whatever the
/// file is called: a `Component` usually lives in a file of another name.
pub(super) fn is_kustomize_object(object: &Value) -> bool {
    object
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_some_and(|api_version| {
            api_version
                .split_once('/')
                .is_some_and(|(group, _)| group == GROUP)
        })
}

/// What the refusal says after `file:line:`. `kind` is the document's kind when it
/// declares one.
pub(super) fn refusal(path: &str, kind: Option<&str>) -> String {
    let what = match kind {
        Some(kind) if !is_kustomization_file(path) => format!("`kind: {kind}` ({GROUP})"),
        _ => format!("`{}`", file_name(path)),
    };
    format!(
        "{what} is kustomize input, not a Kubernetes object; bosun applies plain manifests: \
         render them with `kustomize build {dir}` (or `kubectl kustomize {dir}`) and commit \
         the output in place of the kustomize files",
        dir = directory(path)
    )
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The directory `kustomize build` takes, as the user would type it from the repository root.
fn directory(path: &str) -> &str {
    match path.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => dir,
        _ => ".",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kustomization_files_are_known_by_name_in_any_directory() {
        assert!(is_kustomization_file("kustomization.yaml"));
        assert!(is_kustomization_file("deploy/kustomization.yml"));
        assert!(is_kustomization_file("a/b/Kustomization"));
        assert!(!is_kustomization_file("deploy/my-kustomization.yaml"));
        assert!(!is_kustomization_file("deploy/Kustomization.yaml"));
        assert!(!is_kustomization_file("kustomization.yaml/app.yaml"));
    }

    #[test]
    fn kustomize_objects_are_known_by_their_group() {
        assert!(is_kustomize_object(
            &json!({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"})
        ));
        assert!(is_kustomize_object(
            &json!({"apiVersion": "kustomize.config.k8s.io/v1alpha1", "kind": "Component"})
        ));
        assert!(!is_kustomize_object(
            &json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization"})
        ));
        assert!(!is_kustomize_object(
            &json!({"apiVersion": "v1", "kind": "ConfigMap"})
        ));
        assert!(!is_kustomize_object(&json!({"kind": "Kustomization"})));
    }

    #[test]
    fn the_refusal_names_the_file_and_the_directory_to_build() {
        assert_eq!(
            refusal("deploy/kustomization.yaml", Some("Kustomization")),
            "`kustomization.yaml` is kustomize input, not a Kubernetes object; bosun applies \
             plain manifests: render them with `kustomize build deploy` (or `kubectl kustomize \
             deploy`) and commit the output in place of the kustomize files"
        );
        assert!(refusal("kustomization.yml", None).contains("`kustomize build .`"));
        let component = refusal("overlays/prod/tracing.yaml", Some("Component"));
        assert!(
            component.starts_with("`kind: Component` (kustomize.config.k8s.io) is kustomize input"),
            "{component}"
        );
        assert!(
            component.contains("`kustomize build overlays/prod`"),
            "{component}"
        );
    }
}
