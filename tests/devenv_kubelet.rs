//! The kubelet stand-in end to end: the pod simulator binds Pods to a registered
//! Node, the real `pods/log` API of kube-apiserver 1.20 returns the simulated
//! containers' lines through the control plane's kubelet endpoint (read with kube's
//! `Api::logs` and with `kubectl logs`), Job Pods end as their `sh -c` script says,
//! and bound Pods are deleted gracefully with the simulator confirming.

mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use bosun_devenv::{ControlPlane, ControlPlaneOptions, PodSimulator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{eventually, init_tracing};
use tokio::process::Command;

const WAIT: Duration = Duration::from_secs(60);
const NS: &str = "kubelet";
const NODE: &str = "devenv-node";

async fn apply<K>(api: &Api<K>, object: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"].as_str().expect("a name").to_owned();
    let params = PatchParams::apply("bosun-test").force();
    Ok(api.patch(&name, &params, &Patch::Apply(&object)).await?)
}

fn worker(script: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "worker" },
        "spec": {
            "selector": { "matchLabels": { "app": "worker" } },
            "template": {
                "metadata": { "labels": { "app": "worker" } },
                "spec": { "containers": [
                    { "name": "worker", "image": "example/worker:1", "command": ["sh", "-c", script] },
                    { "name": "sidecar", "image": "example/proxy:1", "args": ["--port", "9000"] },
                ] }
            }
        }
    })
}

fn job(name: &str, script: &str) -> serde_json::Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "migrate", "image": "example/app:2", "command": ["/bin/sh", "-c"], "args": [script] }],
            } }
        }
    })
}

/// The one Pod matching `labels`, once it is bound and Running.
async fn running_pod(pods: &Api<Pod>, labels: &str) -> anyhow::Result<Pod> {
    eventually(&format!("a running pod {labels}"), WAIT, || async {
        let found = pods.list(&ListParams::default().labels(labels)).await?.items;
        Ok(found.into_iter().find(|pod| {
            pod.metadata.deletion_timestamp.is_none()
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE)
        }))
    })
    .await
}

/// Waits for Job `name` to get a `Complete` or `Failed` condition; returns it.
async fn job_outcome(jobs: &Api<Job>, name: &str) -> anyhow::Result<String> {
    eventually(&format!("Job {name} to finish"), WAIT, || async {
        let job = jobs.get(name).await?;
        Ok(job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            .map(|c| c.type_))
    })
    .await
}

/// `kubectl logs ARGS` in the test namespace. Async: the API server asks the kubelet
/// endpoint, which runs on this test's runtime.
async fn kubectl_logs(control_plane: &ControlPlane, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(control_plane.kubeconfig_path())
        .args(["--namespace", NS, "logs"])
        .args(args)
        .output()
        .await
        .context("running /usr/bin/kubectl")?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl logs {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn pods_are_bound_and_their_logs_come_through_the_api_server() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    control_plane.register_node(NODE).await?;
    let _simulator = PodSimulator::start_on_node(client.clone(), NODE);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } }),
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);

    // A long-running worker: bound to the Node, Running and Ready, its line logged.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    apply(
        &deployments,
        worker("echo 'EnrichmentWorker started'; sleep 1; echo \"polling queue enrichment\"; sleep infinity"),
    )
    .await?;
    let pod = running_pod(&pods, "app=worker").await?;
    let name = pod.name_any();
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
    assert!(ready, "the worker is Ready: {:?}", pod.status);
    let worker_log = |params: LogParams| {
        let pods = pods.clone();
        let name = name.clone();
        async move { pods.logs(&name, &params).await }
    };
    let container = |name: &str| LogParams {
        container: Some(name.into()),
        ..LogParams::default()
    };
    let log = eventually("both worker lines", WAIT, || async {
        let log = worker_log(container("worker")).await?;
        Ok((log.lines().count() == 2).then_some(log))
    })
    .await?;
    assert_eq!(log, "EnrichmentWorker started\npolling queue enrichment\n");
    let tail = worker_log(LogParams {
        tail_lines: Some(1),
        timestamps: true,
        ..container("worker")
    })
    .await?;
    let (time, line) = tail
        .trim_end()
        .split_once(' ')
        .expect("a timestamp, then the line");
    assert_eq!(line, "polling queue enrichment");
    let written: k8s_openapi::jiff::Timestamp = time.parse()?;
    let started = pod.status.as_ref().unwrap().start_time.as_ref().unwrap().0;
    assert_eq!(
        written.as_second() - started.as_second(),
        1,
        "{time}: one second after {started}"
    );
    assert_eq!(
        worker_log(LogParams {
            since_seconds: Some(3600),
            ..container("sidecar")
        })
        .await?,
        "simulated: ran the entrypoint of example/proxy:1 --port 9000\n"
    );

    // kubectl (whatever its version) reads the same lines through the API server.
    assert_eq!(kubectl_logs(&control_plane, &[&name, "-c", "worker"]).await?, log);
    assert_eq!(
        kubectl_logs(&control_plane, &["deployment/worker", "-c", "worker", "--tail=1"]).await?,
        "polling queue enrichment\n"
    );

    // A container that never started has no log; the API server passes the reason on.
    apply(
        &deployments,
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "broken" },
            "spec": {
                "selector": { "matchLabels": { "app": "broken" } },
                "template": { "metadata": { "labels": { "app": "broken" } },
                    "spec": { "containers": [{ "name": "main", "image": "example/errimagepull:1" }] } }
            }
        }),
    )
    .await?;
    let broken = eventually("a broken pod waiting for its image", WAIT, || async {
        let found = pods
            .list(&ListParams::default().labels("app=broken"))
            .await?
            .items;
        Ok(found.into_iter().find(|pod| {
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE)
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some()
        }))
    })
    .await?;
    let error = pods
        .logs(&broken.name_any(), &LogParams::default())
        .await
        .expect_err("no log for a container waiting for its image");
    assert!(
        error.to_string().contains("is waiting to start: ErrImagePull"),
        "{error}"
    );

    // Jobs end as their scripts say; their logs stay readable afterwards.
    let jobs: Api<Job> = Api::namespaced(client.clone(), NS);
    let started = Instant::now();
    apply(&jobs, job("migrate-ok", "echo 'running migrations'; echo done")).await?;
    assert_eq!(job_outcome(&jobs, "migrate-ok").await?, "Complete");
    eprintln!(
        "a Job whose script exits at once completes in {:?}",
        started.elapsed()
    );

    let started = Instant::now();
    apply(
        &jobs,
        job(
            "migrate-bad",
            "echo 'alembic upgrade head'; sleep 2; echo 'ERROR: relation \"users\" does not exist' >&2; exit 3",
        ),
    )
    .await?;
    assert_eq!(job_outcome(&jobs, "migrate-bad").await?, "Failed");
    let took = started.elapsed();
    eprintln!("a Job whose script fails after 2 s fails in {took:?}");
    // Script time counts from the Pod's startTime, which the API stores in whole
    // seconds: a `sleep 2` lasts between 1 and 2 seconds of wall time.
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let failed_pod = pods
        .list(&ListParams::default().labels("job-name=migrate-bad"))
        .await?
        .items
        .pop()
        .expect("the Job's pod");
    let status = failed_pod.status.clone().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status.container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!(terminated.exit_code, 3);
    assert_eq!(
        kubectl_logs(&control_plane, &["job/migrate-bad"]).await?,
        "alembic upgrade head\nERROR: relation \"users\" does not exist\n"
    );

    // Deleting a bound Pod is graceful; the simulator confirms as its kubelet would.
    let deleted_at = Instant::now();
    let deleting = pods.delete(&name, &DeleteParams::default()).await?;
    let marked = deleting.left().expect("graceful: the Pod is still there, marked");
    assert!(marked.metadata.deletion_timestamp.is_some());
    eventually(
        "the deleted worker pod to be gone",
        Duration::from_secs(15),
        || async { Ok(pods.get_opt(&name).await?.is_none().then_some(())) },
    )
    .await?;
    eprintln!(
        "a bound Pod is gone {:?} after its deletion",
        deleted_at.elapsed()
    );
    // The Deployment's replacement is bound and logs again.
    let replacement = running_pod(&pods, "app=worker").await?;
    assert_ne!(replacement.name_any(), name);
    Ok(())
}
