use serde_json::json;

use super::*;

fn file(path: &str, content: &str) -> SourceFile {
    SourceFile {
        path: path.into(),
        content: content.as_bytes().to_vec(),
    }
}

fn render_one(path: &str, content: &str) -> Result<Vec<Manifest>, RenderError> {
    render(&[file(path, content)])
}

#[test]
fn multi_document_yaml_keeps_order_and_lines() {
    let yaml = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  mode: fast
---
# the backend
apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
";
    let manifests = render_one("deploy/app.yaml", yaml).unwrap();
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[0].kind(), "ConfigMap");
    assert_eq!(manifests[0].namespace(), Some("shop"));
    assert_eq!(manifests[0].line, 1);
    assert_eq!(manifests[0].id(), "ConfigMap shop/settings (deploy/app.yaml:1)");
    assert_eq!(manifests[1].kind(), "Deployment");
    assert_eq!(manifests[1].group(), "apps");
    assert_eq!(manifests[1].api_version(), "apps/v1");
    assert_eq!(manifests[1].name(), "backend");
    assert_eq!(manifests[1].namespace(), None);
    assert_eq!(manifests[1].line, 10);
    assert_eq!(manifests[1].file, "deploy/app.yaml");
}

#[test]
fn empty_documents_are_skipped() {
    let yaml = "---\n---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n...\n---\n";
    let manifests = render_one("ns.yml", yaml).unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].kind(), "Namespace");
    assert_eq!(manifests[0].line, 5);
    assert!(render_one("empty.yaml", "").unwrap().is_empty());
    assert!(render_one("null.yaml", "~\n").unwrap().is_empty());
}

#[test]
fn json_file() {
    let text = r#"
{
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {"name": "web"},
  "spec": {"ports": [{"port": 80}]}
}"#;
    let manifests = render_one("svc.json", text).unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].kind(), "Service");
    assert_eq!(manifests[0].line, 2);
}

#[test]
fn json_syntax_error_names_file_and_line() {
    let err = render_one("svc.json", "{\n  \"kind\": \"Service\",\n  \"metadata\": {\n}\n").unwrap_err();
    let RenderError::Syntax { file, line, .. } = &err else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!(file, "svc.json");
    assert_eq!(*line, 5);
    assert!(err.to_string().starts_with("svc.json:5"), "{err}");
    assert!(!err.to_string().contains("at line"), "{err}");
}

#[test]
fn list_expands_with_item_lines() {
    let yaml = "\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: a
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: b
";
    let manifests = render_one("list.yaml", yaml).unwrap();
    let names: Vec<&str> = manifests.iter().map(Manifest::name).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(manifests[0].line, 4);
    assert_eq!(manifests[1].line, 8);
}

#[test]
fn list_in_json_expands() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
      {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"}},
      {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"b"}}]}"#;
    let manifests = render_one("list.json", text).unwrap();
    assert_eq!(manifests.len(), 2);
    assert_eq!(manifests[1].name(), "b");
}

#[test]
fn invalid_list_item_is_reported_at_its_line() {
    let yaml = "\
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: ConfigMap
    metadata:
      name: a
  - apiVersion: v1
    metadata:
      name: b
";
    let err = render_one("list.yaml", yaml).unwrap_err();
    assert_eq!(err.to_string(), "list.yaml:8: missing `kind`");
}

#[test]
fn yaml_syntax_error_names_the_right_line() {
    // Line 12 holds a second `:` in a plain scalar context.
    let yaml = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: ok
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
spec:
  template:
    image: nginx: latest
";
    let err = render_one("deploy/app.yaml", yaml).unwrap_err();
    let RenderError::Syntax {
        file,
        line,
        column,
        message,
    } = &err
    else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!(file, "deploy/app.yaml");
    assert_eq!(*line, 12, "{err}");
    assert!(column.is_some(), "{err}");
    assert!(!message.is_empty());
    assert!(err.to_string().starts_with("deploy/app.yaml:12:"), "{err}");
    assert_eq!(err.reason(), "InvalidManifest");
}

#[test]
fn yaml_indentation_error_line() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n data:\n  a: b\n";
    let err = render_one("cm.yaml", yaml).unwrap_err();
    let RenderError::Syntax { line, .. } = err else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!(line, 5);
}

#[test]
fn duplicate_key_is_an_error() {
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  name: y\n";
    let err = render_one("cm.yaml", yaml).unwrap_err();
    assert!(err.to_string().starts_with("cm.yaml:5"), "{err}");
}

#[test]
fn missing_kind_and_name() {
    let err = render_one("a.yaml", "apiVersion: v1\nmetadata:\n  name: x\n").unwrap_err();
    assert_eq!(err.to_string(), "a.yaml:1: missing `kind`");
    let err = render_one(
        "a.yaml",
        "---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "a.yaml:3: missing `metadata.name`");
    let err = render_one("a.yaml", "kind: ConfigMap\nmetadata:\n  name: x\n").unwrap_err();
    assert_eq!(err.to_string(), "a.yaml:1: missing `apiVersion`");
    let err = render_one("a.yaml", "- a\n- b\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("a.yaml:1: expected a Kubernetes object"),
        "{err}"
    );
    let err = render_one("a.yaml", "apiVersion: v1\nkind: 3\nmetadata:\n  name: x\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "a.yaml:1: `kind` must be a string, found a number"
    );
}

#[test]
fn duplicates_name_both_places() {
    let a = file(
        "deploy/a.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n",
    );
    let b = file(
        "deploy/b.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\n  namespace: shop\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: shop\n",
    );
    let err = render(&[a, b]).unwrap_err();
    assert_eq!(err.reason(), "DuplicateManifest");
    assert_eq!(
        err.to_string(),
        "Deployment shop/web is defined twice: deploy/a.yaml:1 and deploy/b.yaml:7"
    );
}

#[test]
fn same_name_in_other_group_or_namespace_is_not_a_duplicate() {
    let yaml = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: a}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: b}
---
apiVersion: example.com/v1
kind: Deployment
metadata: {name: web, namespace: a}
";
    assert_eq!(render_one("x.yaml", yaml).unwrap().len(), 3);
}

#[test]
fn octal_file_modes_read_as_kubernetes_does() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  volumes:\n    - name: v\n      secret:\n        secretName: s\n        defaultMode: 0644\n";
    let manifests = render_one("pod.yaml", yaml).unwrap();
    assert_eq!(
        manifests[0].object["spec"]["volumes"][0]["secret"]["defaultMode"],
        json!(0o644)
    );
}

#[test]
fn invalid_utf8_names_line() {
    let mut content = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: \xff\n".to_vec();
    content.extend_from_slice(b"");
    let err = render(&[SourceFile {
        path: "bad.yaml".into(),
        content,
    }])
    .unwrap_err();
    assert_eq!(err.to_string(), "bad.yaml:4:9: not valid UTF-8");
}

fn ports_of(manifest: &Manifest, pointer: &str) -> Vec<Value> {
    manifest
        .object
        .pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| panic!("no array at {pointer} in {}", manifest.object))
}

#[test]
fn service_ports_get_tcp_and_udp_stays() {
    let yaml = "\
apiVersion: v1
kind: Service
metadata:
  name: dns
spec:
  ports:
    - port: 53
      protocol: UDP
    - port: 80
      name: http
";
    let manifests = render_one("svc.yaml", yaml).unwrap();
    let ports = ports_of(&manifests[0], "/spec/ports");
    assert_eq!(ports[0]["protocol"], "UDP");
    assert_eq!(ports[1]["protocol"], "TCP");
    assert_eq!(ports[1]["name"], "http");
}

#[test]
fn container_ports_get_tcp_in_every_workload_kind() {
    let pod_spec = json!({
        "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]}],
        "initContainers": [{"name": "init", "image": "init:1", "ports": [{"containerPort": 9000}]}],
        "ephemeralContainers": [{"name": "debug", "image": "busybox", "ports": [{"containerPort": 7000}]}],
    });
    let template = json!({"metadata": {"labels": {"app": "x"}}, "spec": pod_spec});
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("v1", "Pod", json!({"spec": pod_spec}), "/spec"),
        (
            "v1",
            "PodTemplate",
            json!({"template": template}),
            "/template/spec",
        ),
        (
            "v1",
            "ReplicationController",
            json!({"spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            "apps/v1",
            "Deployment",
            json!({"spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            "apps/v1",
            "StatefulSet",
            json!({"spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            "apps/v1",
            "DaemonSet",
            json!({"spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            "apps/v1",
            "ReplicaSet",
            json!({"spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            "batch/v1",
            "Job",
            json!({"spec": {"template": template}}),
            "/spec/template/spec",
        ),
        (
            "batch/v1",
            "CronJob",
            json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}}),
            "/spec/jobTemplate/spec/template/spec",
        ),
    ];
    for (api_version, kind, body, pod_path) in cases {
        let mut object = body;
        object["apiVersion"] = json!(api_version);
        object["kind"] = json!(kind);
        object["metadata"] = json!({"name": "x"});
        let manifests = render_one("w.json", &object.to_string()).unwrap();
        let manifest = &manifests[0];
        for list in ["containers", "initContainers", "ephemeralContainers"] {
            let ports = ports_of(manifest, &format!("{pod_path}/{list}/0/ports"));
            assert_eq!(ports[0]["protocol"], "TCP", "{kind} {list}");
        }
        let app_ports = ports_of(manifest, &format!("{pod_path}/containers/0/ports"));
        assert_eq!(app_ports[1]["protocol"], "UDP", "{kind}: UDP must stay");
    }
}

#[test]
fn other_objects_are_left_as_written() {
    let object = json!({
        "apiVersion": "example.com/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1}]}]}}},
    });
    let manifests = render_one("crd.json", &object.to_string()).unwrap();
    assert_eq!(manifests[0].object, object);
}

#[test]
fn odd_shapes_do_not_panic() {
    let yaml = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: a}
spec: {template: {spec: {containers: [\"not-a-map\", {ports: 5}, {ports: [1, {protocol: null}]}]}}}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {ports: \"none\"}
";
    let manifests = render_one("odd.yaml", yaml).unwrap();
    assert_eq!(
        manifests[0]
            .object
            .pointer("/spec/template/spec/containers/2/ports/1/protocol"),
        Some(&json!("TCP"))
    );
}

#[test]
fn manifests_round_trip_through_serde() {
    let manifests = render_one(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n",
    )
    .unwrap();
    let stored = serde_json::to_string(&manifests).unwrap();
    let back: Vec<Manifest> = serde_json::from_str(&stored).unwrap();
    assert_eq!(back, manifests);
    assert_eq!(back[0].id(), "Namespace shop (ns.yaml:1)");
}

/// podinfo's `kustomize/` directory as committed upstream: a kustomization listing the
/// manifests beside it.
#[test]
fn a_kustomization_beside_manifests_is_refused_naming_file_and_line() {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: podinfo\n";
    let kustomization = "\
# built by kustomize
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - deployment.yaml
";
    let error = render(&[
        file("kustomize/deployment.yaml", deployment),
        file("kustomize/kustomization.yaml", kustomization),
    ])
    .unwrap_err();
    assert_eq!(error.reason(), "KustomizeInput");
    assert_eq!(
        error.to_string(),
        "kustomize/kustomization.yaml:2: `kustomization.yaml` is kustomize input, not a \
         Kubernetes object; bosun applies plain manifests: render them with `kustomize build \
         kustomize` (or `kubectl kustomize kustomize`) and commit the output in place of the \
         kustomize files"
    );
}

#[test]
fn a_kustomization_is_refused_before_other_files_errors() {
    // A strategic-merge patch of a kustomize base is only part of an object; the user
    // needs to hear about kustomize, not about the patch's missing metadata.
    let error = render(&[
        file(
            "base/add-limits.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nspec: {}\n",
        ),
        file(
            "base/kustomization.yml",
            "resources: [app.yaml]\npatches: [{path: add-limits.yaml}]\n",
        ),
    ])
    .unwrap_err();
    assert!(
        matches!(&error, RenderError::KustomizeInput { file, line: 1, .. } if file == "base/kustomization.yml"),
        "{error}"
    );

    // Even one that does not parse is named for what it is.
    let error = render(&[file("kustomization.yaml", "resources: [\n")]).unwrap_err();
    assert!(
        matches!(&error, RenderError::KustomizeInput { line: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("`kustomize build .`"), "{error}");
}

#[test]
fn a_kustomize_component_in_a_file_of_another_name_is_refused() {
    let yaml = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
---
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches: []
";
    let error = render_one("overlays/tracing.yaml", yaml).unwrap_err();
    assert_eq!(error.reason(), "KustomizeInput");
    let text = error.to_string();
    assert!(
        text.starts_with(
            "overlays/tracing.yaml:6: `kind: Component` (kustomize.config.k8s.io) is kustomize input"
        ),
        "{text}"
    );
    // Flux's Kustomization is a Kubernetes object like any other.
    let flux = "apiVersion: kustomize.toolkit.fluxcd.io/v1\nkind: Kustomization\nmetadata:\n  name: apps\n";
    assert_eq!(render_one("clusters/apps.yaml", flux).unwrap().len(), 1);
}
