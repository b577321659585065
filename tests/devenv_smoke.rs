//! The development environment itself, end to end: the real control plane runs
//! Deployments and Jobs to completion with the pod simulator, and the Git server
//! serves, stops and restarts.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bosun_devenv::{ControlPlane, ControlPlaneOptions, GitServer, PodSimulator, WorkRepo};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;
use support::{eventually, init_tracing};

const WAIT: Duration = Duration::from_secs(60);

/// Server-side applies `object` with the field manager `bosun-test`.
async fn apply<K>(api: &Api<K>, object: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = object["metadata"]["name"]
        .as_str()
        .context("object without a name")?
        .to_owned();
    let params = PatchParams::apply("bosun-test").force();
    Ok(api.patch(&name, &params, &Patch::Apply(&object)).await?)
}

fn deployment(name: &str, image: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{
                    "name": "main",
                    "image": image,
                    // Required under server-side apply on 1.20 (see the devenv docs).
                    "ports": [{ "containerPort": 8080, "protocol": "TCP" }]
                }] }
            }
        }
    })
}

#[tokio::test]
async fn control_plane_runs_deployments_and_jobs_with_simulated_pods() -> anyhow::Result<()> {
    init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    eprintln!(
        "control plane at {} ready in {:?}",
        control_plane.server_url(),
        control_plane.startup_duration()
    );
    assert!(control_plane.kubeconfig_path().is_file());
    assert!(control_plane.log_dir().join("kube-apiserver.log").is_file());
    let client = control_plane.client();
    let simulator = PodSimulator::start(client.clone());

    let namespace = "smoke";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    apply(
        &namespaces,
        json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": namespace } }),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);

    // A healthy Deployment becomes available through the real Deployment controller.
    apply(&deployments, deployment("web", "example/ok:1", 2)).await?;
    let status = eventually("web to have 2 available replicas", WAIT, || async {
        let status = deployments.get("web").await?.status.unwrap_or_default();
        Ok((status.available_replicas == Some(2)).then_some(status))
    })
    .await?;
    assert_eq!(status.ready_replicas, Some(2));
    assert_eq!(status.updated_replicas, Some(2));

    // A crash-looping image shows CrashLoopBackOff with rising restarts.
    apply(&deployments, deployment("crasher", "example/crashloop:1", 1)).await?;
    let crash_restarts = || async {
        let list = pods.list(&ListParams::default().labels("app=crasher")).await?;
        let restarts = list.items.iter().find_map(|pod| {
            let container = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
            let reason = container.state.as_ref()?.waiting.as_ref()?.reason.as_deref()?;
            (reason == "CrashLoopBackOff").then_some(container.restart_count)
        });
        Ok(restarts)
    };
    let first = eventually("a crasher pod in CrashLoopBackOff", WAIT, crash_restarts).await?;
    eventually("crasher restarts to rise", WAIT, || async {
        Ok(crash_restarts().await?.filter(|&count| count > first))
    })
    .await?;
    let crasher = deployments.get("crasher").await?.status.unwrap_or_default();
    assert_eq!(crasher.available_replicas.unwrap_or(0), 0);

    // A Job's Pod runs to completion and the real Job controller counts it.
    apply(
        &jobs,
        json!({
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": { "name": "migrate" },
            "spec": {
                "backoffLimit": 0,
                "template": { "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "migrate", "image": "example/job:1" }]
                } }
            }
        }),
    )
    .await?;
    eventually("job migrate to succeed", WAIT, || async {
        let status = jobs.get("migrate").await?.status.unwrap_or_default();
        Ok((status.succeeded == Some(1)).then_some(()))
    })
    .await?;

    simulator.stop();
    let stopping = Instant::now();
    control_plane.stop();
    eprintln!("control plane stopped in {:?}", stopping.elapsed());
    Ok(())
}

fn ls_remote(url: &str) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(["ls-remote", url])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()?;
    if !output.status.success() {
        bail!("git ls-remote {url}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn git_server_serves_work_repo_and_survives_restart() -> anyhow::Result<()> {
    init_tracing();
    let base = tempfile::tempdir()?;
    let repo = WorkRepo::init(base.path(), "app")?;
    repo.write("deploy/web.yaml", "kind: ConfigMap\n")?;
    let sha = repo.commit("first")?;
    repo.tag("v1.0.0")?;

    let mut server = GitServer::start(base.path())?;
    let url = server.url("app");
    let refs = ls_remote(&url)?;
    assert!(refs.contains(&format!("{sha}\trefs/heads/main")), "{refs}");
    assert!(refs.contains(&format!("{sha}\trefs/tags/v1.0.0")), "{refs}");

    server.stop();
    assert!(ls_remote(&url).is_err(), "ls-remote should fail while stopped");

    let second = repo.commit("second")?;
    server.restart()?;
    assert_eq!(server.url("app"), url, "same port after restart");
    let refs = ls_remote(&url)?;
    assert!(refs.contains(&format!("{second}\trefs/heads/main")), "{refs}");
    Ok(())
}
