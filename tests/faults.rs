//! Real faults against the real control plane and the real `bosun` binary: the API
//! server stopped in the middle of a revision, an admission webhook that fails, denies
//! or is down, a second writer racing bosun's status writes, and a step that keeps
//! failing past the Runbook's `progressDeadline`.
//!
//! What each fault must come to (see `src/failure.rs`): a fault outside the revision
//! is retried with back-off and never blamed on the revision (no rollback, no
//! quarantine); a verdict on the revision (a webhook's denial) blocks it before
//! anything is written.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bosun::api::{
    AppDeployment, AppDeploymentStatus, BlockReason, Phase, Quarantine, Step, Verdict, short_revision,
};
use bosun::controller::status_writer;
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use bosun_devenv::{
    AdmissionWebhook, ControlPlane, ControlPlaneOptions, WebhookBehavior, WorkRepo, webhook_name,
    webhook_rule,
};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use support::{Harness, eventually, status};

const NS: &str = "shop";
const APP: &str = "litevault";
/// The example app's ConfigMap, the object the admission webhook guards.
const CONFIG: &str = "litevault-config";
/// The ValidatingWebhookConfiguration of these tests.
const GUARD: &str = "guard";
const FAULT_ENV: &str = bosun::controller::fault::ENV;

fn commit(repo: &WorkRepo, version: &str) -> String {
    ExampleRevision::good(version)
        .commit_to(repo, &format!("v{version}"))
        .unwrap()
}

/// Namespace, Runbook (`runbook_yaml`, named after the app) and the AppDeployment
/// following `repo` every `interval`.
async fn set_up_app(harness: &Harness, repo: &WorkRepo, runbook_yaml: &str, interval: &str) {
    harness.namespace(NS).await;
    harness.apply_runbook(runbook_yaml).await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some(APP), interval)
        .await;
}

/// A Runbook with the workload gate alone, a 1 s verify window and `extra` spec lines.
fn quick_runbook(extra: &str) -> String {
    let base = workload_only_runbook_yaml(NS, APP);
    format!("{base}{extra}")
}

/// A validating webhook for ConfigMaps in the app's namespace, answering Allow, and
/// known to be in effect (the API server loads its configuration from a watch).
async fn guard_config_maps(harness: &Harness) -> AdmissionWebhook {
    let webhook = AdmissionWebhook::start().await.expect("webhook starts");
    let rules = vec![webhook_rule(&["CREATE", "UPDATE"], "", "v1", "configmaps")];
    webhook
        .register(&harness.client, GUARD, rules, NS)
        .await
        .expect("webhook registered");
    let probes: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    let probe = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "webhook-probe"}
    });
    let mut params = PatchParams::apply("bosun-test").force();
    params.dry_run = true;
    eventually(
        "the webhook to review requests",
        Duration::from_secs(30),
        || async {
            probes
                .patch("webhook-probe", &params, &Patch::Apply(&probe))
                .await?;
            Ok(webhook
                .reviews()
                .iter()
                .any(|r| r.name.as_deref() == Some("webhook-probe"))
                .then_some(()))
        },
    )
    .await
    .unwrap();
    webhook
}

/// Reviews of the app's ConfigMap sent by bosun (dry runs included).
fn bosun_reviews_of_config(webhook: &AdmissionWebhook) -> usize {
    webhook
        .reviews()
        .iter()
        .filter(|r| r.name.as_deref() == Some(CONFIG) && r.user == "bosun")
        .count()
}

/// The Events bosun published about the app.
async fn bosun_events(harness: &Harness) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(harness.client.clone(), NS);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(APP))
        .filter(|e| e.reporting_controller.as_deref() == Some("bosun"))
        .collect()
}

/// `reason: note` of each of bosun's Events, for assertions and failure messages.
async fn event_lines(harness: &Harness) -> Vec<String> {
    bosun_events(harness)
        .await
        .into_iter()
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

fn condition<'a>(app: &'a AppDeployment, type_: &str) -> Option<&'a Condition> {
    app.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

fn retrying_at(app: &AppDeployment, step: Step) -> bool {
    app.status
        .as_ref()
        .and_then(|s| s.operation.as_ref())
        .is_some_and(|op| op.step == step)
        && condition(app, "Reconciling").is_some_and(|c| c.reason == "Retrying")
}

async fn config_version(harness: &Harness) -> Option<String> {
    let api: Api<ConfigMap> = Api::namespaced(harness.client.clone(), NS);
    api.get_opt(CONFIG)
        .await
        .unwrap()
        .and_then(|cm| cm.data)
        .and_then(|data| data.get("APP_VERSION").cloned())
}

async fn backend_image(harness: &Harness) -> String {
    harness.image_of(NS, "backend").await
}

/// Nothing rolled back, nothing quarantined, one history entry for `revision`, and it
/// ended Healthy.
async fn assert_completed_once_without_blame(harness: &Harness, app: &AppDeployment, revision: &str) {
    let s = status(app);
    let entries: Vec<_> = s.history.iter().filter(|h| h.revision == revision).collect();
    assert_eq!(entries.len(), 1, "history: {:#?}", s.history);
    assert_eq!(entries[0].phase, Phase::Healthy, "{:#?}", entries[0]);
    assert!(s.quarantined.is_empty(), "quarantined: {:?}", s.quarantined);
    assert!(s.operation.is_none() && s.blocked.is_none(), "{s:#?}");
    let events = event_lines(harness).await;
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("RollingBack") || e.starts_with("RolledBack") || e.starts_with("Failed")),
        "{events:#?}"
    );
}

/// v1 runs Healthy; v2 is committed and the controller stops (fault switch) right after
/// v2's inventory was persisted, before its apply.
async fn stop_before_applying_v2(harness: &mut Harness, repo: &WorkRepo) -> (String, String) {
    let v1 = commit(repo, "1.0");
    set_up_app(harness, repo, &quick_runbook(""), "2s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &v1).await;
    harness.kill_controller();

    let v2 = commit(repo, "2.0");
    harness.start_controller_with(&[], &[(FAULT_ENV, &format!("{NS}/{APP}@deploy/inventory"))]);
    let exit = harness.wait_for_controller_exit(Duration::from_secs(60)).await;
    assert!(!exit.success(), "the fault switch aborts: {exit:?}");
    let app = harness.app(NS, APP).await;
    let operation = status(&app).operation.clone().expect("operation in progress");
    assert_eq!(operation.revision, v2);
    assert_eq!(operation.step, Step::Apply, "stopped right before the apply");
    assert_eq!(
        config_version(harness).await.as_deref(),
        Some("1.0"),
        "nothing of v2 applied yet"
    );
    (v1, v2)
}

/// The controller is restarted while kube-apiserver is down, keeps trying to reach it,
/// and finishes the apply it had not started once the API server is back.
#[tokio::test]
async fn controller_restarted_while_the_api_server_is_down_finishes_the_apply() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let (_v1, v2) = stop_before_applying_v2(&mut harness, &repo).await;

    harness.control_plane.stop_apiserver().await.unwrap();
    harness.start_controller();
    // It cannot reach the API server: it must wait for it, not give up.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            harness.controller_running(),
            "the controller exited while the API server was down\n{}",
            harness.controller_log()
        );
    }
    harness.control_plane.start_apiserver().await.unwrap();

    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &v2).await;
    assert_completed_once_without_blame(&harness, &app, &v2).await;
    assert_eq!(config_version(&harness).await.as_deref(), Some("2.0"));
    assert!(backend_image(&harness).await.ends_with(":2.0"));
    let log = harness.controller_log_text();
    let waited = log
        .lines()
        .filter(|l| l.contains("API server") && l.contains("unreachable"))
        .count();
    assert!(waited >= 1, "the log says it waited for the API server\n{log}");
}

/// kube-apiserver stops while the apply step is being retried (an admission webhook
/// answering 500 holds it there): the attempt that finds no API server is recorded
/// once the API server is back, and the revision completes, once, unblamed.
#[tokio::test]
async fn api_server_stopped_during_the_apply_step_is_retried_and_recorded() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let webhook = guard_config_maps(&harness).await;
    let (_v1, v2) = stop_before_applying_v2(&mut harness, &repo).await;

    webhook.set_behavior(WebhookBehavior::Fail500);
    let reviews_before = bosun_reviews_of_config(&webhook);
    // Without leader election: with it, passes stop 10 s into the outage (the claim
    // lapses, tests/leader.rs), and this test is about the passes that meet it.
    harness.start_controller_with(&[], &[("BOSUN_LEADER_ELECT", "false")]);
    let app = harness
        .wait_for(
            NS,
            APP,
            "the apply step retried",
            Duration::from_secs(60),
            |app| retrying_at(app, Step::Apply),
        )
        .await;
    // The API server finishes what is in flight for up to 3 s after SIGTERM: stop it
    // right after the third attempt (the next comes about 8 s later), so that the
    // next attempt finds it gone.
    eventually(
        "three attempts of the apply step",
        Duration::from_secs(30),
        || async { Ok((bosun_reviews_of_config(&webhook) >= reviews_before + 3).then_some(())) },
    )
    .await
    .unwrap();
    let reconciling = condition(&app, "Reconciling").unwrap();
    eprintln!("Reconciling while the webhook fails: {}", reconciling.message);
    assert!(
        reconciling.message.contains("step apply"),
        "{}",
        reconciling.message
    );
    assert!(
        reconciling.message.contains(&webhook_name(GUARD)),
        "{}",
        reconciling.message
    );

    let failed_passes = |log: &str| log.lines().filter(|l| l.contains("pass failed")).count();
    let before = failed_passes(&harness.controller_log_text());
    let stopped_at = Instant::now();
    harness.control_plane.stop_apiserver().await.unwrap();
    // The next attempt finds no API server, nor does the write of its outcome; the
    // passes after it keep trying to write that.
    while failed_passes(&harness.controller_log_text()) < before + 2 {
        assert!(
            stopped_at.elapsed() < Duration::from_secs(40),
            "no pass met the stopped API server\n{}",
            harness.controller_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "passes failed while the API server was down:\n{}",
        harness
            .controller_log_text()
            .lines()
            .filter(|l| l.contains("pass failed"))
            .skip(before)
            .collect::<Vec<_>>()
            .join("\n")
    );
    webhook.set_behavior(WebhookBehavior::Allow);
    harness.control_plane.start_apiserver().await.unwrap();

    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &v2).await;
    assert_completed_once_without_blame(&harness, &app, &v2).await;
    assert_eq!(config_version(&harness).await.as_deref(), Some("2.0"));
    // What was retried while the API server was down reached the record afterwards.
    let events = event_lines(&harness).await;
    eprintln!("Events: {events:#?}");
    let short = short_revision(&v2);
    let retried = |what: &str| {
        events.iter().any(|e| {
            e.starts_with("Retrying:")
                && e.contains(&format!("step apply of revision {short}"))
                && e.to_lowercase().contains(what)
        })
    };
    assert!(retried("failed calling webhook"), "{events:#?}");
    assert!(retried("connection refused"), "{events:#?}");
}

/// A webhook answering 500 and a webhook that is down are faults outside the
/// revision: retried with back-off, never a rollback or a quarantine. A webhook that
/// denies is a verdict: the revision is blocked before anything of it is written.
#[tokio::test]
async fn admission_webhook_failing_down_and_denying() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let mut webhook = guard_config_maps(&harness).await;
    let v1 = commit(&repo, "1.0");
    set_up_app(&harness, &repo, &quick_runbook(""), "3s").await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &v1).await;
    let webhook_name = webhook_name(GUARD);

    // HTTP 500: the step that first meets the webhook (the inventory's dry run) is
    // retried, further apart each time.
    webhook.set_behavior(WebhookBehavior::Fail500);
    let v2 = commit(&repo, "2.0");
    let mut seen = bosun_reviews_of_config(&webhook);
    let mut attempts: Vec<Instant> = Vec::new();
    let began = Instant::now();
    while attempts.len() < 4 {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "{} attempts in 60 s\n{}",
            attempts.len(),
            harness.controller_log()
        );
        let now = bosun_reviews_of_config(&webhook);
        if now > seen {
            attempts.push(Instant::now());
            seen = now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let intervals: Vec<f64> = attempts.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
    eprintln!("retry intervals with the webhook answering 500: {intervals:.2?} s");
    // 2 s, 4 s, 8 s nominal, each ±20%.
    for (interval, nominal) in intervals.iter().zip([2.0, 4.0, 8.0]) {
        assert!(
            *interval > nominal * 0.75 && *interval < nominal * 1.25 + 0.5,
            "interval {interval:.2} s, nominal {nominal} s: {intervals:?}"
        );
    }
    let app = harness.app(NS, APP).await;
    assert!(retrying_at(&app, Step::Inventory), "{:#?}", app.status);
    let reconciling = condition(&app, "Reconciling").unwrap();
    eprintln!(
        "Reconciling with the webhook answering 500: {}",
        reconciling.message
    );
    assert!(
        reconciling.message.contains(&webhook_name),
        "{}",
        reconciling.message
    );
    assert!(
        reconciling.message.contains("step inventory")
            && reconciling.message.contains("failed calling webhook"),
        "{}",
        reconciling.message
    );
    let s = status(&app);
    assert_eq!(s.phase, Phase::Applying);
    assert!(s.quarantined.is_empty());
    assert_eq!(s.current_revision.as_deref(), Some(v1.as_str()), "v1 still runs");
    assert_eq!(config_version(&harness).await.as_deref(), Some("1.0"));

    // The webhook down: retried alike, with the API server's "connection refused".
    webhook.stop().await;
    let app = harness
        .wait_for(
            NS,
            APP,
            "a retry naming the webhook down",
            Duration::from_secs(60),
            |app| {
                retrying_at(app, Step::Inventory)
                    && condition(app, "Reconciling").is_some_and(|c| c.message.contains("connection refused"))
            },
        )
        .await;
    let reconciling = condition(&app, "Reconciling").unwrap();
    eprintln!("Reconciling with the webhook down: {}", reconciling.message);
    assert!(
        reconciling.message.contains(&webhook_name),
        "{}",
        reconciling.message
    );
    assert!(status(&app).quarantined.is_empty());

    // Back and allowing: the revision completes, nothing was blamed.
    webhook.restart().await.unwrap();
    webhook.set_behavior(WebhookBehavior::Allow);
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &v2).await;
    assert_completed_once_without_blame(&harness, &app, &v2).await;
    assert_eq!(config_version(&harness).await.as_deref(), Some("2.0"));
    // One Event per cause of the retries, not one per attempt.
    let retried: Vec<String> = event_lines(&harness)
        .await
        .into_iter()
        .filter(|e| e.starts_with("Retrying:") && e.contains(&short_revision(&v2)))
        .collect();
    assert_eq!(retried.len(), 2, "{retried:#?}");
    assert!(retried[0].contains("(attempt 1)") && retried[0].contains("simulated webhook failure"));
    assert!(retried[1].contains("connection refused"), "{retried:#?}");

    // A denial: v3 is blocked at its dry run with the webhook's own words; v2 runs on.
    let denial = "ConfigMaps in shop are frozen by the change board";
    webhook.set_behavior(WebhookBehavior::Deny(denial.into()));
    let writes_before = harness.controller_writes().await.len();
    let v3 = commit(&repo, "3.0");
    let app = harness
        .wait_for(NS, APP, "v3 blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await;
    let s = status(&app);
    let ready = condition(&app, "Ready").unwrap();
    eprintln!(
        "Ready when denied: {} {}: {}",
        ready.status, ready.reason, ready.message
    );
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains(&format!(
            "admission webhook \"{webhook_name}\" denied the request: {denial}"
        )),
        "{}",
        ready.message
    );
    let block = s.blocked.as_ref().expect("a block");
    assert_eq!(block.revision, v3);
    assert_eq!(block.reason, BlockReason::RevisionInvalid);
    assert_eq!(s.current_revision.as_deref(), Some(v2.as_str()), "v2 runs on");
    assert_eq!(s.last_healthy_revision.as_deref(), Some(v2.as_str()));
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    assert!(s.operation.is_none());
    let events = event_lines(&harness).await;
    let blocked_event = events
        .iter()
        .find(|e| e.starts_with("Blocked:") && e.contains(&short_revision(&v3)))
        .unwrap_or_else(|| panic!("no Blocked Event for v3: {events:#?}"));
    eprintln!("Event: {blocked_event}");
    assert!(blocked_event.contains(denial), "{blocked_event}");
    // Nothing of v3 was written: the objects are v2's, and bosun wrote nothing but its
    // own status, Events and the snapshot of v3.
    assert_eq!(config_version(&harness).await.as_deref(), Some("2.0"));
    assert!(backend_image(&harness).await.ends_with(":2.0"));
    let app_objects: Vec<_> = harness.controller_writes().await[writes_before..]
        .iter()
        .filter(|w| w.namespace.as_deref() == Some(NS))
        .filter(|w| !matches!(w.resource.as_str(), "appdeployments" | "events" | "secrets"))
        .map(|w| format!("{} {} {:?}", w.verb, w.resource, w.name))
        .collect();
    assert!(app_objects.is_empty(), "written while blocked: {app_objects:?}");
}

/// A second writer changes the status while bosun verifies a revision: bosun's
/// writes computed from the copy before it conflict and are decided again from a
/// fresh read, so the other writer's marks survive and bosun's own record is whole.
#[tokio::test]
async fn a_second_status_writer_racing_bosun_loses_nothing() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    // A gate that answers after 400 ms: each verification round that probes takes that
    // long between reading the app and writing its status.
    let slow_gate = SlowHealth::start(Duration::from_millis(400)).await;
    let v1 = commit(&repo, "1.0");
    let runbook = format!(
        "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: {APP}\n  namespace: {NS}\n\
         spec:\n  verifyWindow: 4s\n  gates:\n    - name: health\n      periodSeconds: 1\n      \
         timeoutSeconds: 2\n      failureThreshold: 3\n      http:\n        url: {}\n        \
         expect:\n          status: [200]\n",
        slow_gate.url
    );
    set_up_app(&harness, &repo, &runbook, "2s").await;
    harness.start_controller();
    harness
        .wait_for(NS, APP, "verification of v1", Duration::from_secs(60), |app| {
            app.status
                .as_ref()
                .and_then(|s| s.operation.as_ref())
                .is_some_and(|op| op.revision == v1 && op.step == Step::Verify)
        })
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let racer = tokio::spawn(race_status_writes(harness.client.clone(), stop.clone()));
    harness.wait_for_phase(NS, APP, Phase::Healthy, &v1).await;
    // A few more writes after bosun's last transition.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let race = racer.await.unwrap();
    eprintln!(
        "racer: {} writes, {} of them conflicted with bosun's",
        race.writes, race.conflicts
    );
    assert!(race.lost.is_empty(), "marks lost: {:#?}", race.lost);
    assert!(race.writes >= 10, "the racer wrote {} times", race.writes);

    let log = harness.controller_log_text();
    let conflicts = log
        .lines()
        .filter(|l| l.contains("status changed meanwhile"))
        .count();
    eprintln!("bosun re-read after a conflict {conflicts} times");
    assert!(conflicts >= 1, "bosun never met the racer's writes\n{log}");

    let app = harness.app(NS, APP).await;
    let s = status(&app);
    let mark = condition(&app, RACER_CONDITION).expect("the racer's condition survives");
    assert_eq!(mark.message, format!("write {}", race.writes));
    assert!(
        s.quarantined.iter().any(|q| q.revision == RACER_REVISION),
        "the racer's quarantine entry survives: {:?}",
        s.quarantined
    );
    assert!(!s.quarantined.iter().any(|q| q.revision == v1));
    // bosun's own record is whole.
    assert_eq!(s.phase, Phase::Healthy);
    assert_eq!(s.last_healthy_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(s.history.len(), 1, "{:#?}", s.history);
    assert_eq!(s.history[0].phase, Phase::Healthy);
    assert!(
        s.history[0]
            .gates
            .iter()
            .any(|g| g.name == "health" && g.verdict == Verdict::Passed),
        "{:?}",
        s.history[0].gates
    );
    assert!(condition(&app, "Ready").is_some_and(|c| c.status == "True"));
}

/// The condition type and quarantined revision the racing writer adds.
const RACER_CONDITION: &str = "ReleaseBoardReviewed";
const RACER_REVISION: &str = "feedfacefeedfacefeedfacefeedfacefeedface";

struct Race {
    writes: u32,
    conflicts: u32,
    /// Reads that found the racer's last write undone.
    lost: Vec<String>,
}

/// Every 100 ms: reads the app, checks that its own last write is still there, and
/// writes the status back (PUT /status with the resourceVersion read) with its
/// condition saying `write N` and its quarantine entry.
async fn race_status_writes(client: kube::Client, stop: Arc<AtomicBool>) -> Race {
    let api: Api<AppDeployment> = Api::namespaced(client, NS);
    let mut race = Race {
        writes: 0,
        conflicts: 0,
        lost: Vec::new(),
    };
    while !stop.load(Ordering::SeqCst) {
        let mut app = api.get(APP).await.expect("racer reads the app");
        let read_version = app.resource_version();
        let status = app.status.get_or_insert_with(AppDeploymentStatus::default);
        let mark = status.conditions.iter().find(|c| c.type_ == RACER_CONDITION);
        if race.writes > 0 {
            let expected = format!("write {}", race.writes);
            let quarantined = status.quarantined.iter().any(|q| q.revision == RACER_REVISION);
            if mark.map(|c| c.message.as_str()) != Some(expected.as_str()) || !quarantined {
                race.lost.push(format!(
                    "at resourceVersion {:?}: expected {expected:?} and the quarantine entry, found {:?}, quarantined {:?}",
                    read_version,
                    mark.map(|c| &c.message),
                    status.quarantined
                ));
            }
        }
        status.conditions.retain(|c| c.type_ != RACER_CONDITION);
        status.conditions.push(Condition {
            type_: RACER_CONDITION.into(),
            status: "True".into(),
            reason: "Reviewed".into(),
            message: format!("write {}", race.writes + 1),
            last_transition_time: Time(Timestamp::now()),
            observed_generation: None,
        });
        if !status.quarantined.iter().any(|q| q.revision == RACER_REVISION) {
            status.quarantined.push(Quarantine {
                revision: RACER_REVISION.into(),
                reason: "held by the release board".into(),
                at: "2026-01-01T00:00:00Z".into(),
                generation: None,
                spec_digest: None,
            });
        }
        app.metadata.managed_fields = None;
        match api.replace_status(APP, &PostParams::default(), &app).await {
            Ok(_) => race.writes += 1,
            Err(kube::Error::Api(status)) if status.code == 409 => race.conflicts += 1,
            Err(error) => panic!("racer write: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    race
}

/// An HTTP endpoint answering `200 {"status":"ok"}` after a delay.
struct SlowHealth {
    url: String,
    _server: tokio::task::JoinHandle<()>,
}

impl SlowHealth {
    async fn start(delay: Duration) -> SlowHealth {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        let router = axum::Router::new().route(
            "/health",
            axum::routing::get(move || async move {
                tokio::time::sleep(delay).await;
                axum::Json(serde_json::json!({"status": "ok"}))
            }),
        );
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        SlowHealth { url, _server: server }
    }
}

/// `status_writer::save` against the real API server: a write computed from
/// resourceVersion N after another writer wrote N+1 is a conflict and changes nothing.
#[tokio::test]
async fn a_status_write_from_a_stale_copy_conflicts_and_changes_nothing() {
    support::init_tracing();
    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await.unwrap();
    let client = control_plane.client();
    support::install_crds(&client).await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    namespaces
        .patch(NS, &PatchParams::apply("bosun-test"), &Patch::Apply(&namespace))
        .await
        .unwrap();
    let api: Api<AppDeployment> = Api::namespaced(client.clone(), NS);
    // The only writer here: no leader election.
    let unelected = bosun::controller::leader::LeaderClaim::unconditional();
    let app: AppDeployment =
        serde_saphyr::from_str(&app_deployment_yaml(NS, APP, "git://127.0.0.1/none", None, "1m")).unwrap();
    api.create(&PostParams::default(), &app).await.unwrap();

    // bosun's copy, at resourceVersion N.
    let at_n = api.get(APP).await.unwrap();
    let n = at_n.resource_version().unwrap();
    // Someone else writes the status: N+1.
    let mut theirs = at_n.clone();
    theirs.status = Some(AppDeploymentStatus {
        phase: Phase::Blocked,
        quarantined: vec![Quarantine {
            revision: RACER_REVISION.into(),
            reason: "held by the release board".into(),
            at: "2026-01-01T00:00:00Z".into(),
            generation: None,
            spec_digest: None,
        }],
        ..Default::default()
    });
    let after_theirs = api
        .replace_status(APP, &PostParams::default(), &theirs)
        .await
        .unwrap();
    let n_plus_1 = after_theirs.resource_version().unwrap();
    assert_ne!(n, n_plus_1);

    // bosun's write computed from N.
    let ours = AppDeploymentStatus {
        phase: Phase::Healthy,
        current_revision: Some("a".repeat(40)),
        ..Default::default()
    };
    let result = status_writer::save(&unelected, &api, &at_n, &ours).await;
    assert!(
        matches!(result, Err(bosun::controller::Error::Conflict)),
        "{result:?}"
    );
    let now = api.get(APP).await.unwrap();
    assert_eq!(
        now.resource_version().as_deref(),
        Some(n_plus_1.as_str()),
        "nothing written"
    );
    assert_eq!(now.status, theirs.status, "their status is intact");

    // Computed again from the fresh copy, the write goes through and keeps theirs.
    let mut fresh_status = now.status.clone().unwrap();
    fresh_status.phase = Phase::Healthy;
    let written = status_writer::save(&unelected, &api, &now, &fresh_status)
        .await
        .unwrap();
    let after = api.get(APP).await.unwrap();
    assert_eq!(after.resource_version().as_deref(), Some(written.as_str()));
    let after_status = after.status.unwrap();
    assert_eq!(after_status.phase, Phase::Healthy);
    assert_eq!(after_status.quarantined, theirs.status.unwrap().quarantined);

    // The finalizer is written the same way: from a stale copy, a conflict.
    let stale_finalizer = status_writer::set_finalizer(&unelected, &api, &at_n, true).await;
    assert!(
        matches!(stale_finalizer, Err(bosun::controller::Error::Conflict)),
        "{stale_finalizer:?}"
    );
    assert!(api.get(APP).await.unwrap().finalizers().is_empty());
}

/// With `progressDeadline: 30s` a step that keeps meeting a failing webhook gives up:
/// phase Failed, reason DeadlineExceeded, the step and the last error named, nothing
/// quarantined; once the webhook is fixed the revision is tried again at the next
/// interval and completes.
#[tokio::test]
async fn a_step_failing_past_the_progress_deadline_gives_up_and_is_tried_again() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let webhook = guard_config_maps(&harness).await;
    webhook.set_behavior(WebhookBehavior::Fail500);
    let v1 = commit(&repo, "1.0");
    let interval = Duration::from_secs(5);
    set_up_app(&harness, &repo, &quick_runbook("  progressDeadline: 30s\n"), "5s").await;
    let started = Instant::now();
    harness.start_controller();

    let app = harness
        .wait_for(NS, APP, "the deadline to pass", Duration::from_secs(120), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Failed)
        })
        .await;
    let gave_up_at = Instant::now();
    let gave_up_after = gave_up_at - started;
    let s = status(&app);
    let ready = condition(&app, "Ready").unwrap();
    eprintln!(
        "gave up after {:.1} s: Ready {} {}: {}",
        gave_up_after.as_secs_f64(),
        ready.status,
        ready.reason,
        ready.message
    );
    // Not before the deadline, and not a whole back-off (32 s by then) after it.
    assert!(
        gave_up_after >= Duration::from_secs(30) && gave_up_after < Duration::from_secs(38),
        "{gave_up_after:?}"
    );
    assert_eq!(ready.reason, "DeadlineExceeded");
    assert!(
        ready.message.contains("step inventory did not finish within 30s")
            && ready
                .message
                .contains(&format!("failed calling webhook \"{}\"", webhook_name(GUARD))),
        "{}",
        ready.message
    );
    assert!(s.quarantined.is_empty(), "{:?}", s.quarantined);
    assert!(s.operation.is_none());
    let block = s.blocked.as_ref().expect("held until the next interval");
    assert_eq!(block.reason, BlockReason::DeadlineExceeded);
    assert_eq!(block.revision, v1);
    let events = event_lines(&harness).await;
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("DeadlineExceeded:") && e.contains("step inventory")),
        "{events:#?}"
    );

    // Fixed: at the next interval the revision is tried again and completes.
    let reviews_at_give_up = bosun_reviews_of_config(&webhook);
    webhook.set_behavior(WebhookBehavior::Allow);
    let tried_again = eventually("v1 tried again", Duration::from_secs(30), || async {
        Ok((bosun_reviews_of_config(&webhook) > reviews_at_give_up).then(Instant::now))
    })
    .await
    .unwrap();
    let after = tried_again - gave_up_at;
    eprintln!(
        "tried again {:.1} s after giving up (interval {interval:?})",
        after.as_secs_f64()
    );
    assert!(
        after >= interval - Duration::from_secs(2) && after < interval + Duration::from_secs(3),
        "tried again {after:?} after giving up, not at the next interval ({interval:?})"
    );
    let app = harness.wait_for_phase(NS, APP, Phase::Healthy, &v1).await;
    let s = status(&app);
    assert!(s.quarantined.is_empty());
    assert!(s.blocked.is_none());
    let phases: Vec<Phase> = s.history.iter().map(|h| h.phase).collect();
    assert_eq!(phases, [Phase::Healthy, Phase::Failed], "{:#?}", s.history);
}
