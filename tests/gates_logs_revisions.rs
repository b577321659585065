//! The `logs` gate judges what the revision changed, end to end: a commit that rolls
//! no pod (ConfigMap only) is served by the pods that were there before, which do
//! not log their start-up line again; the gate says it does not apply and the
//! revision goes Healthy. A crash-looping 1-replica rollout keeps the old pod
//! running; rolled back onto it, the app ends RolledBack, not Failed.

mod support;

use bosun::api::{Phase, Verdict};
use bosun_devenv::WorkRepo;
use bosun_devenv::example::ExampleRevision;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use support::{Harness, status};

const NS: &str = "shop";
const APP: &str = "litevault";
const GATE: &str = "worker-started";

/// A Runbook whose one gate is the worker's start-up line: the pod simulator logs
/// `simulated: ran the entrypoint of <image> python -m app.worker` when it starts.
fn runbook() -> String {
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: Runbook
metadata:
  name: {APP}
  namespace: {NS}
spec:
  verifyWindow: 2s
  rollback:
    automatic: true
  gates:
    - name: {GATE}
      periodSeconds: 1
      logs:
        workload: worker
        container: enrichment
        pattern: 'simulated: ran .* app\.worker$'
        within: 30s
"#
    )
}

async fn set_up(harness: &mut Harness, repo: &WorkRepo) {
    harness.namespace(NS).await;
    harness.apply_runbook(&runbook()).await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), "2s")
        .await;
    harness.start_controller();
}

/// The names of the worker's pods.
async fn worker_pods(harness: &Harness) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(harness.client.clone(), NS);
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels("component=worker"))
        .await
        .expect("list pods")
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    names
}

/// The verdict of the logs gate in the history entry of `revision`.
fn logs_verdict(app: &bosun::api::AppDeployment, revision: &str) -> bosun::api::GateVerdict {
    let s = status(app);
    let entry = s
        .history
        .iter()
        .find(|h| h.revision == revision)
        .unwrap_or_else(|| panic!("no history entry of {revision}: {:#?}", s.history));
    entry
        .gates
        .iter()
        .find(|g| g.name == GATE)
        .unwrap_or_else(|| panic!("no {GATE} verdict: {:#?}", entry.gates))
        .clone()
}

#[tokio::test]
async fn a_config_map_only_commit_passes_with_the_logs_gate_not_applying() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    set_up(&mut harness, &repo).await;
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;
    // The first revision started the worker, whose start-up line passed the gate.
    let started = logs_verdict(&app, &first);
    assert_eq!(started.verdict, Verdict::Passed, "{started:?}");
    assert!(
        started
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("logged \"simulated: ran the entrypoint of example/litevault-worker:1.0"),
        "{started:?}"
    );
    let pods_before = worker_pods(&harness).await;

    // Only the ConfigMap changes: no pod rolls, the worker does not start again.
    let config_only = ExampleRevision {
        version: "1.0-config".into(),
        ..ExampleRevision::good("1.0")
    };
    let second = config_only.commit_to(&repo, "config only").unwrap();
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &second).await;
    let s = status(&app);
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    assert_eq!(worker_pods(&harness).await, pods_before, "no pod rolled");
    let verdict = logs_verdict(&app, &second);
    assert_eq!(verdict.verdict, Verdict::Passed, "{verdict:?}");
    let message = verdict.message.unwrap_or_default();
    assert!(
        message.starts_with(
            "Deployment shop/worker, container enrichment, pattern \"simulated: ran .* app\\\\.worker$\": \
             the gate does not apply, the revision rolled no pod: no pod created since the apply (1 older pods do not count)"
        ),
        "{message}"
    );
    assert!(
        message.ends_with("the 1 pods serving it logged no matching line since the apply"),
        "{message}"
    );
}

#[tokio::test]
async fn a_rollback_onto_the_surviving_pod_ends_rolled_back() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let good = ExampleRevision::good("1.0").commit_to(&repo, "v1.0").unwrap();
    set_up(&mut harness, &repo).await;
    harness.wait_for_phase(NS, APP, Phase::Healthy, &good).await;
    let survivor = worker_pods(&harness).await;
    assert_eq!(survivor.len(), 1, "{survivor:?}");

    // One replica: the rollout surges a crash-looping pod and keeps the old one.
    let crashing = ExampleRevision {
        worker_image: "example/litevault-worker:1.1-crashloop".into(),
        ..ExampleRevision::good("1.0")
    };
    let bad = crashing.commit_to(&repo, "v1.1: the worker crashes").unwrap();
    let app = harness.wait_for_phase(NS, APP, Phase::RolledBack, &good).await;
    let s = status(&app);
    assert_eq!(s.desired_revision.as_deref(), Some(bad.as_str()));
    assert_eq!(s.last_healthy_revision.as_deref(), Some(good.as_str()));
    assert_eq!(s.quarantined.len(), 1, "{:?}", s.quarantined);
    assert_eq!(s.quarantined[0].revision, bad);
    assert!(
        s.quarantined[0].reason.contains("CrashLoopBackOff"),
        "{}",
        s.quarantined[0].reason
    );
    assert!(
        s.history.iter().all(|h| h.phase != Phase::Failed),
        "{:#?}",
        s.history
    );
    // The app returned onto the pod that never went away.
    support::eventually(
        "the crash-looping pod to go",
        std::time::Duration::from_secs(60),
        || async {
            let pods = worker_pods(&harness).await;
            Ok((pods == survivor).then_some(()))
        },
    )
    .await
    .unwrap();
}
