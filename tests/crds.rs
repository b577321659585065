//! The checked-in CRDs must be exactly what the Rust types generate, and a real API
//! server must refuse with them the Runbooks the controller cannot carry out.

use bosun::api::{ClusterRunbook, Runbook, RunbookSpec, describe_problems};
use bosun::crdgen::{crds, to_yaml};
use bosun_devenv::example::{runbook_yaml, workload_only_runbook_yaml};
use bosun_devenv::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

#[test]
fn checked_in_crds_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for (file, crd) in crds() {
        let generated = to_yaml(&crd).expect("CRD serializes");
        let checked_in = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            checked_in == generated,
            "crds/{file} is stale: run `cargo run --all-features -- crds` and commit the result"
        );
    }
}

#[test]
fn app_deployment_crd_has_status_short_names_and_columns() {
    let (_, crd) = crds()
        .into_iter()
        .find(|(file, _)| *file == "appdeployments.yaml")
        .unwrap();
    let names = crd.spec.names.short_names.clone().unwrap_or_default();
    assert!(
        names.contains(&"ad".to_string()) && names.contains(&"appdeploy".to_string()),
        "{names:?}"
    );
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<String> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(columns, ["Phase", "Current", "Last Healthy", "Age"]);
}

/// What a real API server (Kubernetes 1.20, no CEL) makes of Runbooks under the
/// checked-in CRDs: the schema refuses what it can express before anything is stored,
/// and accepts the Runbooks the README and the examples show. Each case is also run
/// through `RunbookSpec::validate`, which the controller applies to every Runbook it
/// reads (CRDs of an older bosun, objects stored before an upgrade), so the two agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_invalid_runbooks() -> anyhow::Result<()> {
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    bosun::crdgen::install(&client).await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await?;

    let accepted = [
        ("the README's Runbook", readme_runbook_spec()?),
        (
            "bosun-devenv's example Runbook",
            spec_of(&runbook_yaml(NS, "example", "http://127.0.0.1:8080/health", "5s"))?,
        ),
        (
            "bosun-devenv's workload-only Runbook",
            spec_of(&workload_only_runbook_yaml(NS, "quick"))?,
        ),
        (
            "every http field",
            json!({"verifyWindow": "1m30s", "progressDeadline": "600", "gates": [
                {"name": "a", "http": {"url": "https://u:p@api.example.com:8443/x", "method": "POST",
                 "headers": {"X-Token": "t"}, "body": "{}", "followRedirects": true,
                 "expect": {"status": [200, 302], "json": {"status": "ok"}, "contains": "ok",
                            "headers": {"Vary": "Origin"}}}},
                {"name": "b", "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1,
                 "successThreshold": 1,
                 "http": {"service": "backend", "port": 8443, "scheme": "https", "path": "/health", "expect": {}}}]}),
        ),
    ];
    for (what, spec) in accepted {
        let stored = create(&client, &spec)
            .await
            .map_err(|e| anyhow::anyhow!("{what} refused: {e}\n{spec:#}"))?;
        assert_eq!(stored, spec, "{what}: the server changed the spec");
        assert_eq!(validate(&spec), Ok(()), "{what}");
    }

    let http = |fields: Value| json!({"gates": [{"name": "health", "http": fields}]});
    let refused = [
        (
            "a gate with no probe",
            json!({"gates": [{"name": "smoke"}]}),
            "oneOf",
        ),
        (
            // As `kubectl apply --validate=false` sends it: `grpc` is not in the
            // schema, so the server prunes it, and the gate is left with no probe.
            "a gate of an unknown kind",
            json!({"gates": [{"name": "grpc", "grpc": {"port": 9090}}]}),
            "oneOf",
        ),
        (
            "a gate with two probe kinds",
            json!({"gates": [{"name": "h", "http": {"url": "http://h"}, "logs": {"workload": "w", "pattern": "up"}}]}),
            "oneOf",
        ),
        (
            "a gate with http: null",
            json!({"gates": [{"name": "h", "http": null}]}),
            "oneOf",
        ),
        (
            "an http gate with two targets",
            http(json!({"url": "http://h", "service": "backend", "port": 80})),
            "spec.gates[0].http",
        ),
        (
            "a Service without a port",
            http(json!({"service": "backend"})),
            "spec.gates[0].http",
        ),
        (
            "a port next to a url",
            http(json!({"url": "http://h", "port": 80})),
            "spec.gates[0].http",
        ),
        (
            "a malformed duration",
            json!({"verifyWindow": "5 minutes"}),
            "spec.verifyWindow",
        ),
        (
            "a duration in days",
            json!({"progressDeadline": "1d"}),
            "spec.progressDeadline",
        ),
        (
            "periodSeconds: 0",
            json!({"gates": [{"name": "h", "periodSeconds": 0, "http": {"url": "http://h"}}]}),
            "spec.gates[0].periodSeconds",
        ),
        (
            "failureThreshold: 0",
            json!({"gates": [{"name": "h", "failureThreshold": 0, "http": {"url": "http://h"}}]}),
            "spec.gates[0].failureThreshold",
        ),
        (
            "scheme ftp",
            http(json!({"service": "backend", "port": 21, "scheme": "ftp"})),
            "spec.gates[0].http.scheme",
        ),
        (
            "a url with scheme ftp",
            http(json!({"url": "ftp://h/x"})),
            "spec.gates[0].http.url",
        ),
        (
            "a relative url",
            http(json!({"url": "h:8080/health"})),
            "spec.gates[0].http.url",
        ),
        (
            "a lowercase method",
            http(json!({"url": "http://h", "method": "post"})),
            "spec.gates[0].http.method",
        ),
        (
            "a path without a leading slash",
            http(json!({"url": "http://h", "path": "health"})),
            "spec.gates[0].http.path",
        ),
        (
            "a status that is no status code",
            http(json!({"url": "http://h", "expect": {"status": [200, 99]}})),
            "spec.gates[0].http.expect.status[1]",
        ),
        (
            "a gate without a name",
            json!({"gates": [{"name": "", "http": {"url": "http://h"}}]}),
            "spec.gates[0].name",
        ),
        (
            "two gates of one name",
            json!({"gates": [{"name": "h", "http": {"url": "http://a"}}, {"name": "h", "http": {"url": "http://b"}}]}),
            "Duplicate value",
        ),
        (
            "negative maxRestarts",
            json!({"workloadGate": {"maxRestarts": -1}}),
            "spec.workloadGate.maxRestarts",
        ),
    ];
    let mut wrong = Vec::new();
    for (what, spec, field) in refused {
        match create(&client, &spec).await {
            Ok(stored) => wrong.push(format!("{what} was accepted as {stored}")),
            Err(kube::Error::Api(status))
                if status.code == 422
                    && without_indices(&status.message).contains(&without_indices(field)) => {}
            Err(other) => wrong.push(format!("{what}: expected a 422 naming {field}, got {other}")),
        }
        if validate(&spec).is_ok() {
            wrong.push(format!("{what}: the controller accepts it"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // `http` next to an unknown kind is not a second probe the server can see: it
    // prunes the unknown one and keeps an http gate (kubectl's own validation refuses
    // the unknown field unless --validate=false).
    let with_unknown = json!({"gates": [{"name": "h", "http": {"url": "http://h"}, "grpc": {}}]});
    let stored = create(&client, &with_unknown).await?;
    assert_eq!(
        stored,
        json!({"gates": [{"name": "h", "http": {"url": "http://h", "expect": {}}}]})
    );

    // ClusterRunbooks share the schema.
    let cluster_runbooks: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<ClusterRunbook>(&()));
    let cluster_runbook = |spec: Value| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "bosun.dev/v1alpha1", "kind": "ClusterRunbook",
            "metadata": {"name": "defaults"}, "spec": spec,
        }))?)
    };
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    cluster_runbooks
        .create(&dry_run, &cluster_runbook(readme_runbook_spec()?)?)
        .await?;
    let error = cluster_runbooks
        .create(&dry_run, &cluster_runbook(json!({"gates": [{"name": "smoke"}]}))?)
        .await
        .expect_err("a ClusterRunbook gate with no probe");
    assert!(error.to_string().contains("oneOf"), "{error}");

    control_plane.stop();
    Ok(())
}

const NS: &str = "shop";

/// Creates (dry run: nothing is stored) a Runbook with `spec` sent as is, unknown
/// fields included, and returns the spec as the server would store it.
async fn create(client: &kube::Client, spec: &Value) -> Result<Value, kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NS, &ApiResource::erase::<Runbook>(&()));
    let runbook: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "bosun.dev/v1alpha1", "kind": "Runbook",
        "metadata": {"name": "runbook", "namespace": NS}, "spec": spec,
    }))
    .expect("a Runbook object");
    let params = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let stored = api.create(&params, &runbook).await?;
    Ok(stored.data.get("spec").cloned().unwrap_or(Value::Null))
}

/// `spec.gates[0].http` → `spec.gates.http`: Kubernetes 1.20 names list fields without
/// the index in its messages, later versions with it.
fn without_indices(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let index_len = rest[open + 1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
        let closes = index_len > 0 && rest[open + 1 + index_len..].starts_with(']');
        if closes {
            out.push_str(&rest[..open]);
            rest = &rest[open + index_len + 2..];
        } else {
            out.push_str(&rest[..=open]);
            rest = &rest[open + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn validate(spec: &Value) -> Result<(), String> {
    let spec: RunbookSpec = serde_json::from_value(spec.clone()).map_err(|e| e.to_string())?;
    spec.validate().map_err(|problems| describe_problems(&problems))
}

fn spec_of(runbook_yaml: &str) -> anyhow::Result<Value> {
    let runbook: Value = serde_saphyr::from_str(runbook_yaml)?;
    Ok(runbook.get("spec").cloned().unwrap_or_else(|| json!({})))
}

/// The Runbook document of the README's example.
fn readme_runbook_spec() -> anyhow::Result<Value> {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))?;
    let document = readme
        .split("```")
        .flat_map(|block| block.split("\n---\n"))
        .find(|document| document.contains("kind: Runbook\n"))
        .ok_or_else(|| anyhow::anyhow!("README.md shows no Runbook"))?;
    let document = document.trim_start_matches("yaml\n");
    spec_of(document)
}
