//! High availability (README, "High availability and sharding"): two real `bosun controller` processes elect a leader on
//! a `coordination.k8s.io/v1` Lease; only the leader writes; SIGKILLing it in the middle
//! of a verification hands the revision to the other, which finishes it once. And
//! sharding with `--watch-label-selector`.
//!
//! Both processes authenticate as the chart's ServiceAccount (its token, its RBAC, its
//! container's environment), as two replicas of one Deployment do; each names itself
//! in its User-Agent
//! (`bosun/<version> (<identity>)`), which the API server's audit log records, so every
//! write is attributed to the replica that sent it.

mod support;

use std::time::{Duration, Instant};

use bosun::api::{AppDeployment, Phase, Step};
use bosun::controller::leader::LeaderClaim;
use bosun::controller::status_writer;
use bosun_devenv::AuditedWrite;
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use support::{ControllerProcess, Harness, eventually, status};

/// The chart's `--lease-name`, in its release namespace (`POD_NAMESPACE`).
const LEASE: &str = "bosun-controller";
const LEASE_NAMESPACE: &str = "bosun-system";
const LEASE_DURATION: Duration = Duration::from_secs(15);
/// Generous: the machine is shared.
const WAIT: Duration = Duration::from_secs(120);

fn sent_by(write: &AuditedWrite, identity: &str) -> bool {
    write.user_agent.ends_with(&format!("({identity})"))
}

async fn lease(harness: &Harness, namespace: &str, name: &str) -> Option<Lease> {
    let leases: Api<Lease> = Api::namespaced(harness.client.clone(), namespace);
    leases.get_opt(name).await.expect("read the Lease")
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

/// A Pod standing for the replica `name` (in a cluster, the one it runs in).
async fn replica_pod(harness: &Harness, name: &str) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "bosun"}},
        "spec": {"containers": [{"name": "controller", "image": "localhost/bosun:test"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(harness.client.clone(), LEASE_NAMESPACE)
        .create(&PostParams::default(), &pod)
        .await
        .expect("replica Pod");
}

/// The leader label on the Pod of replica `name`.
async fn leader_label(harness: &Harness, name: &str) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(harness.client.clone(), LEASE_NAMESPACE);
    let pod = pods.get(name).await.expect("replica Pod");
    pod.metadata
        .labels
        .and_then(|labels| labels.get(bosun::controller::leader::LEADER_LABEL).cloned())
}

/// A Runbook with a migration Job (from the `backend` container) and a verify window
/// long enough to kill the leader in the middle of it.
fn runbook_with_migration(namespace: &str, name: &str) -> String {
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: Runbook
metadata:
  name: {name}
  namespace: {namespace}
spec:
  verifyWindow: 20s
  migrate:
    from:
      workload: backend
    command: ["sh", "-c", "echo running migrations; echo done"]
"#
    )
}

/// Both replicas start; one holds the Lease and is the only one to write; the leader
/// is SIGKILLed while revision 2 (with a migration) verifies; the follower takes over
/// within the lease duration and finishes it: one migration Job per revision, no
/// rollback, both revisions in the history once. Then a leader whose Lease is taken
/// from it stops and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_takes_over_a_killed_leader_mid_verification_and_finishes_the_revision_once() {
    let mut harness = Harness::start().await;
    harness
        .run_as_chart_account(support::chart::APPLY_AS_CONTROLLER)
        .await;
    let namespace = "shop";
    harness.namespace(namespace).await;
    // Each replica has a Pod (as in the chart: POD_NAME is the identity), which the
    // leader labels for the webhook Service.
    for identity in ["replica-a", "replica-b"] {
        replica_pod(&harness, identity).await;
    }
    let ports = bosun_devenv::process::free_ports(2).unwrap();
    let mut replicas: Vec<ControllerProcess> = ["replica-a", "replica-b"]
        .iter()
        .zip(&ports)
        .map(|(identity, port)| {
            harness.spawn_controller(
                identity,
                &[],
                &[
                    ("BOSUN_LISTEN_ADDRESS", &format!("127.0.0.1:{port}")),
                    ("POD_NAME", identity),
                ],
            )
        })
        .collect();

    // Exactly one holds the Lease, and keeps it.
    let leader = eventually("a leader", WAIT, || async {
        Ok(lease(&harness, LEASE_NAMESPACE, LEASE)
            .await
            .and_then(|l| holder(&l)))
    })
    .await
    .unwrap();
    let follower = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    assert!(
        ["replica-a", "replica-b"].contains(&leader.as_str()),
        "holder {leader}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = lease(&harness, LEASE_NAMESPACE, LEASE).await.unwrap();
    assert_eq!(
        holder(&held).as_deref(),
        Some(leader.as_str()),
        "the leader keeps the Lease"
    );
    assert_eq!(held.spec.as_ref().unwrap().lease_transitions, Some(0));
    let leader_index = replicas.iter().position(|r| r.name == leader).unwrap();
    let follower_index = 1 - leader_index;

    // Both are ready for Kubernetes (else a rolling update of the two would wait for the
    // follower forever, and the PodDisruptionBudget would pin the leader): the leader
    // reconciling, the follower on standby (a push it receives wakes nothing there and
    // is answered 503: src/server/webhook.rs).
    let readyz = |port: u16| async move {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await?;
        anyhow::Ok((response.status().as_u16(), response.text().await?))
    };
    let text = eventually("the leader ready", WAIT, || async {
        let (status, text) = readyz(ports[leader_index]).await?;
        Ok((status == 200).then_some(text))
    })
    .await
    .unwrap();
    assert_eq!(text, "ready\n");
    let (code, text) = readyz(ports[follower_index]).await.unwrap();
    assert_eq!(code, 200, "{text}");
    assert!(text.starts_with("standby"), "{text}");
    assert_eq!(leader_label(&harness, &leader).await.as_deref(), Some("true"));
    assert_eq!(leader_label(&harness, follower).await, None);

    // Revision 1 becomes Healthy, revision 2 is verifying.
    let repo = harness.repo("shop");
    let first = ExampleRevision::good("1.0.0").commit_to(&repo, "v1").unwrap();
    harness
        .apply_runbook(&runbook_with_migration(namespace, "shop"))
        .await;
    harness
        .apply_example_app(namespace, "shop", "shop", Some("shop"), "1s")
        .await;
    harness
        .wait_for_phase(namespace, "shop", Phase::Healthy, &first)
        .await;
    let second = ExampleRevision::good("2.0.0").commit_to(&repo, "v2").unwrap();
    harness
        .wait_for(namespace, "shop", "revision 2 verifying", WAIT, |app| {
            app.status
                .as_ref()
                .and_then(|s| s.operation.as_ref())
                .is_some_and(|op| op.revision == second && op.step == Step::Verify)
        })
        .await;

    // So far the follower wrote nothing (at most a Lease create that lost the race).
    let before_kill = harness.controller_writes_with_leases().await;
    let follower_writes: Vec<&AuditedWrite> = before_kill.iter().filter(|w| sent_by(w, follower)).collect();
    assert!(
        follower_writes
            .iter()
            .all(|w| w.resource == "leases" && !w.succeeded()),
        "the follower wrote: {follower_writes:#?}"
    );
    assert!(
        before_kill
            .iter()
            .any(|w| sent_by(w, &leader) && w.resource == "appdeployments"),
        "the leader's writes are recognised by its User-Agent"
    );
    assert!(replicas[follower_index].log().contains("waiting as a follower"));

    // SIGKILL the leader; the follower takes the Lease.
    let killed = Instant::now();
    replicas[leader_index].kill();
    let taken = eventually(
        "the follower holding the Lease",
        Duration::from_secs(60),
        || async {
            let lease = lease(&harness, LEASE_NAMESPACE, LEASE).await;
            Ok((lease.as_ref().and_then(holder).as_deref() == Some(follower)).then(Instant::now))
        },
    )
    .await
    .unwrap();
    let failover = taken - killed;
    println!("failover: leader SIGKILLed → follower holds the Lease in {failover:.2?}");
    assert!(
        failover <= LEASE_DURATION + Duration::from_secs(2),
        "failover took {failover:?}\n{}",
        replicas[follower_index].log()
    );

    // The new leader labels its Pod (the killed one's label stays until its container
    // restarts, and a restarting container is not Ready: no endpoint either way).
    eventually("the new leader's Pod labelled", WAIT, || async {
        Ok(leader_label(&harness, follower).await.map(|_| ()))
    })
    .await
    .unwrap();

    // The new leader finishes revision 2.
    let app = harness
        .wait_for_phase(namespace, "shop", Phase::Healthy, &second)
        .await;
    assert_eq!(
        harness.image_of(namespace, "backend").await,
        "example/litevault-backend:2.0.0"
    );
    let status = status(&app);
    let revisions: Vec<(&str, Phase)> = status
        .history
        .iter()
        .map(|entry| (entry.revision.as_str(), entry.phase))
        .collect();
    assert_eq!(
        revisions.len(),
        2,
        "one history entry per revision: {revisions:?}"
    );
    for revision in [&first, &second] {
        assert_eq!(
            revisions.iter().filter(|(r, _)| r == revision).count(),
            1,
            "{revision} in the history once: {revisions:?}"
        );
    }
    assert!(
        revisions.iter().all(|(_, phase)| *phase == Phase::Healthy),
        "no rollback: {revisions:?}"
    );
    let migrations: Vec<&str> = status
        .jobs
        .iter()
        .filter(|job| job.succeeded)
        .map(|job| job.revision.as_str())
        .collect();
    assert_eq!(
        migrations.len(),
        2,
        "one migration per revision: {:?}",
        status.jobs
    );

    let writes = harness.controller_writes_with_leases().await;
    let job_creates: Vec<&AuditedWrite> = writes
        .iter()
        .filter(|w| w.resource == "jobs" && w.verb == "create" && w.succeeded())
        .collect();
    assert_eq!(
        job_creates.len(),
        2,
        "one Job per revision, none again after the takeover: {job_creates:#?}"
    );
    assert!(job_creates.iter().all(|w| sent_by(w, &leader)));
    // The follower wrote nothing before its write that took the Lease.
    let takeover = writes
        .iter()
        .find(|w| sent_by(w, follower) && w.resource == "leases" && w.succeeded())
        .expect("the follower's write of the Lease");
    let early: Vec<&AuditedWrite> = writes
        .iter()
        .filter(|w| sent_by(w, follower) && w.resource != "leases" && w.received_at < takeover.completed_at)
        .collect();
    assert!(early.is_empty(), "written before the Lease was held: {early:#?}");
    assert!(
        writes
            .iter()
            .any(|w| sent_by(w, follower) && w.resource == "appdeployments" && w.succeeded()),
        "the new leader wrote the status"
    );
    let log = replicas[follower_index].log();
    assert!(log.contains("became the leader"), "{log}");

    // A leader whose Lease another replica took stops writing and exits.
    let leases: Api<Lease> = Api::namespaced(harness.client.clone(), LEASE_NAMESPACE);
    let mut taken_away = leases.get(LEASE).await.unwrap();
    let spec = taken_away.spec.as_mut().unwrap();
    spec.holder_identity = Some("replica-c".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        Timestamp::now(),
    ));
    leases
        .replace(LEASE, &PostParams::default(), &taken_away)
        .await
        .expect("another holder takes the Lease");
    let exited = eventually("the deposed leader exiting", Duration::from_secs(15), || {
        let status = replicas[follower_index].exit_status();
        async move { Ok(status) }
    })
    .await
    .unwrap();
    assert!(!exited.success(), "exits with an error status: {exited:?}");
    let log = replicas[follower_index].log();
    assert!(log.contains("lost the leader Lease"), "{log}");
    assert!(log.contains("replica-c holds it now"), "{log}");
}

/// `--watch-label-selector`: two controllers, one per shard (each with its own Lease),
/// each reconciles only the apps its selector matches; an app neither matches is left
/// alone. A shard stopped cleanly (SIGTERM) gives its Lease up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_shard_reconciles_only_the_apps_its_label_selector_matches() {
    let mut harness = Harness::start().await;
    harness
        .run_as_chart_account(support::chart::APPLY_AS_CONTROLLER)
        .await;
    let mut apps = Vec::new();
    for (shard, label) in [("a", Some("a")), ("b", Some("b")), ("none", None)] {
        let namespace = format!("shard-{shard}");
        harness.namespace(&namespace).await;
        let repo = harness.repo(&namespace);
        let commit = ExampleRevision::good("1.0.0").commit_to(&repo, "v1").unwrap();
        harness
            .apply_runbook(&workload_only_runbook_yaml(&namespace, "web"))
            .await;
        let mut yaml =
            app_deployment_yaml(&namespace, "web", &harness.git.url(&namespace), Some("web"), "1s");
        if let Some(label) = label {
            yaml = yaml.replacen(
                "metadata:\n",
                &format!("metadata:\n  labels:\n    bosun.dev/shard: {label}\n"),
                1,
            );
        }
        harness.apply_app(&yaml).await;
        apps.push((namespace, commit));
    }
    let mut shards: Vec<ControllerProcess> = ["a", "b"]
        .iter()
        .map(|shard| {
            harness.spawn_controller(
                &format!("shard-{shard}"),
                &[
                    &format!("--watch-label-selector=bosun.dev/shard={shard}"),
                    &format!("--lease-name=bosun-shard-{shard}"),
                    &format!("--leader-elect-identity=shard-{shard}"),
                ],
                &[],
            )
        })
        .collect();

    for (namespace, commit) in &apps[..2] {
        harness
            .wait_for_phase(namespace, "web", Phase::Healthy, commit)
            .await;
    }
    for shard in ["a", "b"] {
        let lease = lease(&harness, LEASE_NAMESPACE, &format!("bosun-shard-{shard}"))
            .await
            .expect("each shard has its own Lease");
        assert_eq!(holder(&lease), Some(format!("shard-{shard}")));
    }
    // The unlabelled app is nobody's: no status, no write, a few seconds on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unclaimed: AppDeployment = harness.app("shard-none", "web").await;
    assert!(unclaimed.status.is_none(), "{:?}", unclaimed.status);
    // A writer without the claim refuses before sending anything (checked with the
    // audit log below: nothing was written in shard-none, by anyone acting as `bosun`).
    let as_controller: Api<AppDeployment> = Api::namespaced(
        harness.control_plane.controller_client().await.unwrap(),
        "shard-none",
    );
    let refused = status_writer::save(
        &LeaderClaim::elected(),
        &as_controller,
        &unclaimed,
        &bosun::api::AppDeploymentStatus::default(),
    )
    .await
    .expect_err("no write without the claim");
    assert!(refused.to_string().contains("not the leader"), "{refused}");

    let writes = harness.controller_writes_with_leases().await;
    for (shard, other) in [("a", "b"), ("b", "a")] {
        let namespace = format!("shard-{shard}");
        let in_namespace: Vec<&AuditedWrite> = writes
            .iter()
            .filter(|w| w.namespace.as_deref() == Some(namespace.as_str()))
            .collect();
        assert!(
            in_namespace
                .iter()
                .any(|w| sent_by(w, &format!("shard-{shard}")) && w.resource == "appdeployments"),
            "shard {shard} wrote its app's status"
        );
        let strays: Vec<&&AuditedWrite> = in_namespace
            .iter()
            .filter(|w| sent_by(w, &format!("shard-{other}")))
            .collect();
        assert!(
            strays.is_empty(),
            "shard {other} wrote in {namespace}: {strays:#?}"
        );
    }
    let untouched: Vec<&AuditedWrite> = writes
        .iter()
        .filter(|w| w.namespace.as_deref() == Some("shard-none"))
        .collect();
    assert!(
        untouched.is_empty(),
        "written for the unlabelled app: {untouched:#?}"
    );

    // SIGTERM: shard a stops cleanly and releases its Lease for the next replica.
    shards[0].terminate();
    let exited = eventually("shard a stopping", Duration::from_secs(30), || {
        let status = shards[0].exit_status();
        async move { Ok(status) }
    })
    .await
    .unwrap();
    assert!(exited.success(), "{exited:?}\n{}", shards[0].log());
    let released = lease(&harness, LEASE_NAMESPACE, "bosun-shard-a").await.unwrap();
    assert_eq!(holder(&released), None, "released: {:?}", released.spec);
    assert!(shards[0].log().contains("released the Lease"));
}

/// The only replica, with leader election on (the default), through an API server
/// outage longer than the renew deadline: its claim lapses (it writes nothing) but it
/// does not exit; when the API server is back it renews the Lease still in its name,
/// without a transition, and carries on: the next commit goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_api_server_past_its_renew_deadline_renews_and_carries_on() {
    let mut harness = Harness::start().await;
    harness
        .run_as_chart_account(support::chart::APPLY_AS_CONTROLLER)
        .await;
    let namespace = "solo";
    harness.namespace(namespace).await;
    let mut replica = harness.spawn_controller("solo", &["--leader-elect-identity=solo"], &[]);
    let repo = harness.repo(namespace);
    let first = ExampleRevision::good("1.0.0").commit_to(&repo, "v1").unwrap();
    harness
        .apply_runbook(&workload_only_runbook_yaml(namespace, "web"))
        .await;
    harness
        .apply_example_app(namespace, "web", namespace, Some("web"), "1s")
        .await;
    harness
        .wait_for_phase(namespace, "web", Phase::Healthy, &first)
        .await;

    harness.control_plane.stop_apiserver().await.unwrap();
    // Past the renew deadline (10 s) and the lease duration (15 s).
    let outage = LEASE_DURATION + Duration::from_secs(3);
    let stopped = Instant::now();
    while stopped.elapsed() < outage {
        assert!(
            replica.exit_status().is_none(),
            "the controller exited during the outage\n{}",
            replica.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = replica.log();
    assert!(
        log.contains("writing nothing until the Lease is renewed"),
        "the claim lapsed at the renew deadline\n{log}"
    );
    harness.control_plane.start_apiserver().await.unwrap();

    eventually("the Lease renewed after the outage", WAIT, || async {
        Ok(replica.log().contains("renewed the Lease again").then_some(()))
    })
    .await
    .unwrap();
    let held = lease(&harness, LEASE_NAMESPACE, LEASE).await.unwrap();
    assert_eq!(holder(&held).as_deref(), Some("solo"));
    assert_eq!(
        held.spec.as_ref().unwrap().lease_transitions,
        Some(0),
        "the same holder throughout"
    );
    let second = ExampleRevision::good("2.0.0").commit_to(&repo, "v2").unwrap();
    harness
        .wait_for_phase(namespace, "web", Phase::Healthy, &second)
        .await;
    assert!(replica.exit_status().is_none(), "{}", replica.log());
    replica.terminate();
}
