//! The Helm chart as tests install it: rendered with Helm's own library
//! (helm-python-sdk, through manifests/render.py), applied to the local control plane,
//! and a kubeconfig with the token of the chart's ServiceAccount, so that the
//! controller under test runs with exactly the rights the chart grants.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::{Value, json};

use super::Harness;

/// The chart's ServiceAccount (the release's full name with the defaults).
pub const CONTROLLER_ACCOUNT: &str = "bosun";

/// The chart's single-tenant mode: apps that name no ServiceAccount are applied as the
/// controller itself, with the write rights the chart then grants it. Tests of the
/// controller's own features (leader election, webhooks, metrics) run this way.
pub const APPLY_AS_CONTROLLER: &[&str] =
    &["rbac.applyAsController=true", "controller.defaultServiceAccount="];

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python with helm-python-sdk: `BOSUN_PYTHON` (scripts/test.sh sets it), else
/// `python3` on the PATH.
pub fn python() -> String {
    std::env::var("BOSUN_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs `manifests/render.py <args>`: (success, stdout, stderr).
pub fn render_py(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(python())
        .arg(root().join("manifests/render.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {} manifests/render.py: {e}", python()));
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The chart rendered with `sets` (`KEY=VALUE`) into `namespace`, as objects.
pub fn template(namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec!["template", "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    let (ok, stdout, stderr) = render_py(&args);
    assert!(ok, "rendering the chart with {sets:?} failed:\n{stderr}");
    serde_saphyr::from_multiple::<Value>(&stdout)
        .expect("rendered chart is YAML")
        .into_iter()
        .filter(|object| !object.is_null())
        .collect()
}

pub fn kinds(objects: &[Value]) -> Vec<&str> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or_default())
        .collect()
}

pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(objects)))
}

/// Applies rendered objects server-side as the admin, the CRDs first (waiting for them
/// to be established), after creating every namespace the objects are placed in (the
/// tenant namespaces the chart onboards must exist).
pub async fn apply_rendered(client: &kube::Client, objects: &[Value]) {
    let mut namespaces: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    for namespace in namespaces {
        create_namespace(client, namespace).await;
    }
    let (crds, others): (Vec<&Value>, Vec<&Value>) = objects
        .iter()
        .partition(|o| o["kind"] == "CustomResourceDefinition");
    let params = PatchParams::apply("bosun-install-test").force();
    for object in crds.into_iter().chain(others) {
        let mut object = object.clone();
        // Kubernetes 1.20 (the local control plane) serves PodDisruptionBudgets as
        // policy/v1beta1 only; 1.21+ serves the policy/v1 the chart renders offline.
        if object["kind"] == "PodDisruptionBudget" {
            object["apiVersion"] = json!("policy/v1beta1");
        }
        let (group, version) = match object["apiVersion"].as_str().unwrap().split_once('/') {
            Some((group, version)) => (group.to_string(), version.to_string()),
            None => (String::new(), object["apiVersion"].as_str().unwrap().to_string()),
        };
        let kind = object["kind"].as_str().unwrap().to_string();
        let gvk = GroupVersionKind::gvk(&group, &version, &kind);
        let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .unwrap_or_else(|e| panic!("discovering {kind}: {e}"));
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let api: Api<DynamicObject> = match (capabilities.scope, object["metadata"]["namespace"].as_str()) {
            (Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(&name, &params, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
        if kind == "CustomResourceDefinition" {
            super::eventually(
                &format!("CRD {name} established"),
                Duration::from_secs(30),
                || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await?;
                        let established = crd.data["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Established" && c["status"] == "True");
                        Ok(established.then_some(()))
                    }
                },
            )
            .await
            .unwrap();
        }
    }
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .patch(
            name,
            &PatchParams::apply("bosun-install-test"),
            &Patch::Apply(&namespace),
        )
        .await
        .unwrap_or_else(|e| panic!("Namespace {name}: {e}"));
}

/// A kubeconfig and a client authenticated with the token of ServiceAccount
/// `namespace/name` (1.20's token controller puts it in a Secret).
pub async fn account_credentials(harness: &Harness, namespace: &str, name: &str) -> (PathBuf, kube::Client) {
    let token = harness
        .control_plane
        .service_account_token(namespace, name)
        .await
        .expect("ServiceAccount token");
    let path = harness
        .control_plane
        .token_kubeconfig(&format!("{namespace}-{name}"), &token)
        .expect("token kubeconfig");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    (path, kube::Client::try_from(config).unwrap())
}

/// The literal environment of the chart's controller container, as the controller
/// process out of cluster gets it (the Git cache and the HTTP address are the
/// harness's; the downward API's pod name and namespace are filled in).
pub fn controller_env(objects: &[Value], install_namespace: &str) -> Vec<(String, String)> {
    let container = &find(objects, "Deployment", "bosun")["spec"]["template"]["spec"]["containers"][0];
    let mut env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .filter(|(name, _)| !matches!(name.as_str(), "BOSUN_CACHE_DIR" | "BOSUN_LISTEN_ADDRESS"))
        .collect();
    env.push(("BOSUN_LISTEN_ADDRESS".into(), "127.0.0.1:0".into()));
    env.push(("POD_NAME".into(), "bosun-test-0".into()));
    env.push(("POD_NAMESPACE".into(), install_namespace.into()));
    env
}
