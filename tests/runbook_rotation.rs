//! Secret rotation end to end: the real `bosun` binary on the local control plane rolls
//! the workloads that read a Secret when its data changes (a digest of the data in the
//! pod template, never the data), through the gates, as its own history entry; a drift
//! repair never rolls it by itself; `rolloutOnChange: false` rolls nothing; a rotation
//! whose pods fail the gates leaves the app `Failed` (reason `RotationFailed`) without a
//! rollback or a quarantine, and is not rolled again until the Secret changes again.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use bosun::api::{AppDeployment, Phase};
use bosun_devenv::WorkRepo;
use bosun_devenv::example::app_deployment_yaml;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{Harness, status};

const NS: &str = "shop";
const APP: &str = "api";
const DIGEST_ANNOTATION: &str = "bosun.dev/secrets-digest";
/// Values the Secret takes, each distinctive enough to grep for.
const FIRST_JWT: &str = "first-jwt-value-4c1d9e0b7a2f6358";
const SECOND_JWT: &str = "second-jwt-value-9b3e7f10c2d4a685";
const THIRD_JWT: &str = "third-jwt-value-0e5a8c2b6d4f1397";

// ---- the app --------------------------------------------------------------------

/// The Deployment `api` reading `JWT_SECRET` from Secret `jwt`.
fn commit_app(repo: &WorkRepo) -> String {
    commit_api(repo, "example/api:1.0", &[], "api reads Secret jwt")
}

/// The Deployment `api` running `image`, reading `JWT_SECRET` from Secret `jwt`, and
/// `more_env`.
fn commit_api(repo: &WorkRepo, image: &str, more_env: &[Value], message: &str) -> String {
    let mut env =
        vec![json!({"name": "JWT_SECRET", "valueFrom": {"secretKeyRef": {"name": "jwt", "key": "secret"}}})];
    env.extend(more_env.iter().cloned());
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "labels": {"app": "api"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{
                    "name": "api",
                    "image": image,
                    "env": env
                }]}
            }
        }
    });
    repo.write(
        "deploy/api.json",
        &serde_json::to_string_pretty(&deployment).unwrap(),
    )
    .unwrap();
    // A workload that reads no Secret: a Secret change is none of its business.
    let worker = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "worker", "labels": {"app": "worker"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "worker"}},
            "template": {
                "metadata": {"labels": {"app": "worker"}},
                "spec": {"containers": [{
                    "name": "worker",
                    "image": "example/worker:1.0",
                    "env": [{"name": "QUEUE", "value": "jobs"}]
                }]}
            }
        }
    });
    repo.write(
        "deploy/worker.json",
        &serde_json::to_string_pretty(&worker).unwrap(),
    )
    .unwrap();
    repo.commit(message).unwrap()
}

/// A Runbook with a 1 s verify window; `extra` is appended under `spec:`.
fn runbook_yaml(extra: &str) -> String {
    format!(
        "apiVersion: bosun.dev/v1alpha1\nkind: Runbook\nmetadata:\n  name: rotation\n  namespace: {NS}\nspec:\n  verifyWindow: 1s\n{extra}"
    )
}

/// The namespace, the Runbook, Secret `jwt` and the app, Healthy; returns the running
/// revision and the repository.
async fn set_up(harness: &mut Harness, runbook: &str) -> (String, WorkRepo) {
    harness.namespace(NS).await;
    harness.apply_runbook(runbook).await;
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("jwt".into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "secret".to_string(),
            ByteString(FIRST_JWT.as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let repo = harness.repo("app");
    let revision = commit_app(&repo);
    harness
        .apply_app(&app_deployment_yaml(
            NS,
            APP,
            &harness.git.url(repo.name()),
            Some("rotation"),
            "2s",
        ))
        .await;
    harness.start_controller();
    harness.wait_for_phase(NS, APP, Phase::Healthy, &revision).await;
    (revision, repo)
}

async fn set_jwt(harness: &Harness, value: &str) {
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), NS);
    let patch = json!({"stringData": {"secret": value}});
    secrets
        .patch("jwt", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn deployment(harness: &Harness) -> Deployment {
    deployment_named(harness, "api").await
}

async fn deployment_named(harness: &Harness, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(harness.client.clone(), NS)
        .get(name)
        .await
        .unwrap()
}

fn template_digest(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(DIGEST_ANNOTATION)
        .cloned()
}

fn generation(deployment: &Deployment) -> i64 {
    deployment.metadata.generation.unwrap_or_default()
}

async fn replica_sets(harness: &Harness) -> Vec<ReplicaSet> {
    Api::<ReplicaSet>::namespaced(harness.client.clone(), NS)
        .list(&ListParams::default().labels("app=api"))
        .await
        .unwrap()
        .items
}

fn rs_digest(rs: &ReplicaSet) -> Option<String> {
    rs.spec
        .as_ref()?
        .template
        .as_ref()?
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(DIGEST_ANNOTATION)
        .cloned()
}

async fn bosun_events(harness: &Harness) -> Vec<Event> {
    Api::<Event>::namespaced(harness.client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("bosun"))
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(APP))
        .collect()
}

/// Waits until the newest history entry is a rotation of `shop/jwt` in `phase`, the
/// history `len` entries long.
async fn wait_rotation(harness: &Harness, phase: Phase, len: usize) -> AppDeployment {
    harness
        .wait_for(
            NS,
            APP,
            &format!("a rotation of shop/jwt ending {phase} (history of {len})"),
            Duration::from_secs(90),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.operation.is_none()
                        && s.phase == phase
                        && s.history.len() == len
                        && s.history[0].rotation == ["shop/jwt"]
                        && s.history[0].phase == phase
                })
            },
        )
        .await
}

fn is_hex_digest(text: &str) -> bool {
    text.len() == 16 && text.chars().all(|c| c.is_ascii_hexdigit())
}

// ---- tests ----------------------------------------------------------------------

#[tokio::test]
async fn a_secret_change_rolls_the_workloads_through_the_gates_and_a_resync_never_does() {
    let mut harness = Harness::start().await;
    let (revision, _repo) = set_up(&mut harness, &runbook_yaml("")).await;
    let before = deployment(&harness).await;
    let worker_before = deployment_named(&harness, "worker").await;
    assert_eq!(
        template_digest(&worker_before),
        None,
        "the worker reads no Secret"
    );
    let first_digest = template_digest(&before).expect("the pod template carries the Secrets' digest");
    assert!(is_hex_digest(&first_digest), "{first_digest}");
    let app = harness.app(NS, APP).await;
    let recorded = status(&app).secret_digests.clone();
    assert_eq!(recorded.keys().collect::<Vec<_>>(), ["shop/jwt"], "{recorded:?}");
    assert_eq!(replica_sets(&harness).await.len(), 1);

    // The data changes: the workload rolls, through the gates, as its own entry.
    let changed = Instant::now();
    set_jwt(&harness, SECOND_JWT).await;
    let app = wait_rotation(&harness, Phase::Healthy, 2).await;
    let rotation_time = changed.elapsed();
    println!(
        "rotation: Healthy with the new data {:.2}s after the Secret changed",
        rotation_time.as_secs_f64()
    );
    let s = status(&app);
    assert_eq!(s.current_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(s.last_healthy_revision.as_deref(), Some(revision.as_str()));
    assert_ne!(s.secret_digests.get("shop/jwt"), recorded.get("shop/jwt"));
    assert!(s.rejected_secret_digests.is_empty());
    assert!(s.quarantined.is_empty());
    assert_eq!(s.history[1].revision, revision);
    assert!(s.history[1].rotation.is_empty());
    let rolled = deployment(&harness).await;
    let second_digest = template_digest(&rolled).unwrap();
    assert!(is_hex_digest(&second_digest), "{second_digest}");
    assert_ne!(second_digest, first_digest);
    assert_eq!(generation(&rolled), generation(&before) + 1);
    // Only the workload that reads the Secret rolls.
    let worker_after = deployment_named(&harness, "worker").await;
    assert_eq!(
        generation(&worker_after),
        generation(&worker_before),
        "the worker, which reads no Secret, rolled"
    );
    assert_eq!(template_digest(&worker_after), None);
    // A new ReplicaSet runs the pods; the old one is scaled down.
    let sets = replica_sets(&harness).await;
    assert_eq!(sets.len(), 2, "ReplicaSets: {}", sets.len());
    for rs in &sets {
        let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or_default();
        if rs_digest(rs).as_deref() == Some(second_digest.as_str()) {
            assert_eq!(replicas, 1);
            assert_eq!(rs.status.as_ref().and_then(|s| s.ready_replicas), Some(1));
        } else {
            assert_eq!(rs_digest(rs).as_deref(), Some(first_digest.as_str()));
            assert_eq!(replicas, 0);
        }
    }
    let events = bosun_events(&harness).await;
    assert!(
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some("RotatingSecrets")
                && e.note.as_deref().is_some_and(|n| n.contains("shop/jwt"))),
        "no RotatingSecrets Event naming shop/jwt"
    );

    // At rest, resyncs (every 2 s) leave the annotation and the Deployment alone.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let rested = deployment(&harness).await;
    assert_eq!(
        generation(&rested),
        generation(&rolled),
        "a resync rolled the Deployment"
    );
    assert_eq!(template_digest(&rested).as_deref(), Some(second_digest.as_str()));

    // A hand edit of the annotation is drift: put back as recorded at the rollout.
    let edit = json!({"spec": {"template": {"metadata": {"annotations": {DIGEST_ANNOTATION: "tampered"}}}}});
    Api::<Deployment>::namespaced(harness.client.clone(), NS)
        .patch("api", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    support::eventually("the annotation repaired", Duration::from_secs(20), || async {
        Ok(
            (template_digest(&deployment(&harness).await).as_deref() == Some(second_digest.as_str()))
                .then_some(()),
        )
    })
    .await
    .unwrap();
    let app = harness.app(NS, APP).await;
    assert_eq!(
        status(&app).history.len(),
        2,
        "a drift repair opened a history entry"
    );
    assert_eq!(status(&app).phase, Phase::Healthy);

    // The data is nowhere but in the Secret.
    let printed = serde_json::to_string(&app).unwrap();
    let events = serde_json::to_string(&bosun_events(&harness).await).unwrap();
    let log = harness.controller_log_text();
    for value in [FIRST_JWT, SECOND_JWT] {
        assert!(!printed.contains(value));
        assert!(!events.contains(value));
        assert!(!log.contains(value));
        assert!(
            !serde_json::to_string(&deployment(&harness).await)
                .unwrap()
                .contains(value)
        );
    }
}

#[tokio::test]
async fn with_rollout_on_change_false_a_secret_change_rolls_nothing() {
    let mut harness = Harness::start().await;
    let _ = set_up(
        &mut harness,
        &runbook_yaml("  secrets:\n    rolloutOnChange: false\n"),
    )
    .await;
    let before = deployment(&harness).await;
    // The digest is written all the same (so that turning the field on or off rolls
    // nothing by itself); it is not followed.
    let first_digest = template_digest(&before).expect("the digest of the data deployed");
    set_jwt(&harness, SECOND_JWT).await;
    // Several intervals (2 s): a pass for the Secret change and resyncs.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = deployment(&harness).await;
    assert_eq!(generation(&after), generation(&before), "the Deployment rolled");
    assert_eq!(template_digest(&after).as_deref(), Some(first_digest.as_str()));
    assert_eq!(replica_sets(&harness).await.len(), 1);
    let app = harness.app(NS, APP).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Healthy);
    assert_eq!(s.history.len(), 1, "{:?}", s.history);
    assert!(
        !bosun_events(&harness)
            .await
            .iter()
            .any(|e| e.reason.as_deref() == Some("RotatingSecrets"))
    );

    // Turned on, the change made meanwhile goes out, through the gates.
    harness.apply_runbook(&runbook_yaml("")).await;
    let app = wait_rotation(&harness, Phase::Healthy, 2).await;
    assert!(status(&app).quarantined.is_empty());
    let rolled = deployment(&harness).await;
    assert_eq!(generation(&rolled), generation(&before) + 1);
    assert_ne!(template_digest(&rolled).as_deref(), Some(first_digest.as_str()));

    // Turned off again: nothing rolls, neither at once nor at the next resyncs.
    harness
        .apply_runbook(&runbook_yaml("  secrets:\n    rolloutOnChange: false\n"))
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = deployment(&harness).await;
    assert_eq!(
        generation(&after),
        generation(&rolled),
        "turning rolloutOnChange off rolled the Deployment (template annotations now {:?})",
        after
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.clone())
    );
}

// ---- a gate the test controls, and a webhook receiver -----------------------------

/// `GET /health` answers the status the test sets.
struct Gate {
    url: String,
    status: Arc<AtomicU16>,
}

impl Gate {
    async fn start() -> Gate {
        let status = Arc::new(AtomicU16::new(200));
        let router = Router::new()
            .route(
                "/health",
                get(|State(status): State<Arc<AtomicU16>>| async move {
                    StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
                }),
            )
            .with_state(status.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/health", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Gate { url, status }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

/// Records the JSON bodies POSTed to it.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let router = Router::new()
            .route(
                "/hook",
                post(
                    |State(bodies): State<Arc<Mutex<Vec<Value>>>>, body: Bytes| async move {
                        bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                        StatusCode::OK
                    },
                ),
            )
            .with_state(bodies.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    async fn wait_for_body(&self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        support::eventually(what, Duration::from_secs(15), || async {
            Ok(self.bodies().into_iter().find(|b| matches(b)))
        })
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_rotation_that_fails_its_gates_is_refused_without_rollback_and_not_rolled_again() {
    let gate = Gate::start().await;
    let receiver = Receiver::start().await;
    let runbook = runbook_yaml(&format!(
        "  verifyWindow: 3s\n  gates:\n    - name: health\n      periodSeconds: 1\n      timeoutSeconds: 2\n      failureThreshold: 2\n      http:\n        url: {}\n        expect:\n          status: [200]\n  notify:\n    - name: ops\n      url: {}\n",
        gate.url, receiver.url
    ))
    .replacen("  verifyWindow: 1s\n", "", 1);
    let mut harness = Harness::start().await;
    let (revision, _repo) = set_up(&mut harness, &runbook).await;
    let healthy = deployment(&harness).await;
    let first_digest = template_digest(&healthy).unwrap();

    // The new data breaks the app: its health answers 500 from now on.
    gate.answer(500);
    let changed = Instant::now();
    set_jwt(&harness, SECOND_JWT).await;
    let app = wait_rotation(&harness, Phase::Failed, 2).await;
    println!(
        "failed rotation: Failed {:.2}s after the Secret changed",
        changed.elapsed().as_secs_f64()
    );
    let s = status(&app);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "RotationFailed", "{ready:?}");
    assert!(ready.message.contains("shop/jwt"), "{}", ready.message);
    assert!(s.quarantined.is_empty(), "quarantined: {:?}", s.quarantined);
    assert_eq!(s.current_revision.as_deref(), Some(revision.as_str()));
    assert_eq!(s.last_healthy_revision.as_deref(), Some(revision.as_str()));
    assert!(
        s.rejected_secret_digests.contains_key("shop/jwt"),
        "{:?}",
        s.rejected_secret_digests
    );
    let gates = &s.history[0].gates;
    assert!(
        gates
            .iter()
            .any(|g| g.name == "health" && g.verdict == bosun::api::Verdict::Failed),
        "{gates:?}"
    );
    let events = bosun_events(&harness).await;
    let failed = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("RotationFailed"))
        .expect("a RotationFailed Event");
    assert_eq!(failed.type_.as_deref(), Some("Warning"));
    assert!(
        failed.note.as_deref().unwrap_or_default().contains("shop/jwt"),
        "{:?}",
        failed.note
    );
    for reason in ["RollingBack", "RolledBack"] {
        assert!(
            !events.iter().any(|e| e.reason.as_deref() == Some(reason)),
            "a {reason} Event for a failed rotation"
        );
    }
    // No rollback: the Deployment keeps the new data's digest (the old data is gone).
    let failed_rollout = deployment(&harness).await;
    let second_digest = template_digest(&failed_rollout).unwrap();
    assert_ne!(second_digest, first_digest);
    // Receivers hear of it, with the Secret named (never its data).
    let told = receiver
        .wait_for_body("a Failed notification naming shop/jwt", |b| {
            b["phase"] == "Failed" && b["rotation"] == json!(["shop/jwt"])
        })
        .await;
    assert!(told["summary"].as_str().unwrap().contains("shop/jwt"), "{told}");
    assert_eq!(told["reason"], "RotationFailed", "{told}");

    // The same data is not rolled out again: several intervals go by.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let app = harness.app(NS, APP).await;
    let s = status(&app);
    assert_eq!(s.phase, Phase::Failed);
    assert_eq!(s.history.len(), 2, "{:?}", s.history);
    assert_eq!(
        generation(&deployment(&harness).await),
        generation(&failed_rollout)
    );

    // New data (the app answers again): rolled out, Healthy.
    gate.answer(200);
    let changed = Instant::now();
    set_jwt(&harness, THIRD_JWT).await;
    let app = wait_rotation(&harness, Phase::Healthy, 3).await;
    println!(
        "rotation after a failed one: Healthy {:.2}s after the Secret changed",
        changed.elapsed().as_secs_f64()
    );
    assert!(status(&app).quarantined.is_empty());
    let healthy_again = receiver
        .wait_for_body("Healthy told for the new data", |b| {
            b["phase"] == "Healthy" && b["rotation"] == json!(["shop/jwt"])
        })
        .await;
    assert!(
        healthy_again["summary"].as_str().unwrap().contains("shop/jwt"),
        "{healthy_again}"
    );
    let third_digest = template_digest(&deployment(&harness).await).unwrap();
    assert_ne!(third_digest, second_digest);
    assert_ne!(third_digest, first_digest);

    // The data once refused comes back: it is not what runs now, so it rolls (the
    // refusal was of a rollout long past, not of the data for ever).
    let changed = Instant::now();
    set_jwt(&harness, SECOND_JWT).await;
    let app = wait_rotation(&harness, Phase::Healthy, 4).await;
    println!(
        "the once-refused data again: Healthy {:.2}s after the Secret changed",
        changed.elapsed().as_secs_f64()
    );
    assert_eq!(
        template_digest(&deployment(&harness).await).as_deref(),
        Some(second_digest.as_str())
    );
    assert!(
        status(&app).rejected_secret_digests.is_empty(),
        "{:?}",
        status(&app).rejected_secret_digests
    );

    let told = serde_json::to_string(&receiver.bodies()).unwrap();
    let log = harness.controller_log_text();
    for value in [FIRST_JWT, SECOND_JWT, THIRD_JWT] {
        assert!(!told.contains(value));
        assert!(!log.contains(value));
    }
}

#[tokio::test]
async fn a_rotation_refused_by_preflight_touches_nothing_and_a_revert_ends_it() {
    let runbook = runbook_yaml(
        "  env:\n    - name: JWT_SECRET\n      secret: true\n      policy:\n        minLength: 32\n        notEquals: [\"change-me\"]\n",
    );
    let mut harness = Harness::start().await;
    let (revision, _repo) = set_up(&mut harness, &runbook).await;
    let healthy = deployment(&harness).await;

    // The Secret goes back to the documented default: the rollout stops at preflight.
    set_jwt(&harness, "change-me").await;
    let app = wait_rotation(&harness, Phase::Failed, 2).await;
    let s = status(&app);
    let ready = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "RotationFailed", "{ready:?}");
    assert!(
        ready
            .message
            .contains("JWT_SECRET (Secret shop/jwt, key secret) still has a value the Runbook forbids"),
        "{}",
        ready.message
    );
    assert!(s.quarantined.is_empty());
    assert_eq!(s.current_revision.as_deref(), Some(revision.as_str()));
    // Nothing was applied: the pods keep the data they were verified with.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = deployment(&harness).await;
    assert_eq!(after.metadata.resource_version, healthy.metadata.resource_version);
    assert_eq!(status(&harness.app(NS, APP).await).phase, Phase::Failed);

    // The Secret is put back as it was: what runs is what was verified; Healthy again.
    set_jwt(&harness, FIRST_JWT).await;
    harness
        .wait_for(
            NS,
            APP,
            "Healthy after the Secret was put back",
            Duration::from_secs(30),
            |app| {
                app.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Healthy && s.operation.is_none())
            },
        )
        .await;
    assert_eq!(
        template_digest(&deployment(&harness).await),
        template_digest(&healthy),
        "the pods roll for data they already have"
    );
    // And the default once more: refused once more.
    set_jwt(&harness, "change-me").await;
    harness
        .wait_for(
            NS,
            APP,
            "the default refused again",
            Duration::from_secs(30),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Failed
                        && s.history[0].rotation == ["shop/jwt"]
                        && s.history[0].phase == Phase::Failed
                })
            },
        )
        .await;
    let log = harness.controller_log_text();
    let printed = serde_json::to_string(&harness.app(NS, APP).await).unwrap();
    for value in ["change-me", FIRST_JWT] {
        assert!(!log.contains(value), "the log has {value}");
        assert!(!printed.contains(value), "the status has {value}");
    }
}

/// Git may point at a revision that is not deployed (blocked, or quarantined after a
/// rollback): the running revision's Secrets still roll when they change.
#[tokio::test]
async fn the_running_revision_rolls_on_a_secret_change_while_git_points_at_a_refused_one() {
    let mut harness = Harness::start().await;
    let (running, repo) = set_up(&mut harness, &runbook_yaml("")).await;
    let first = deployment(&harness).await;

    // The tip reads a Secret that does not exist: Blocked, the running revision stays.
    let blocked = commit_api(
        &repo,
        "example/api:1.1",
        &[json!({"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}})],
        "reads Secret db",
    );
    harness
        .wait_for(NS, APP, "the tip blocked", Duration::from_secs(60), |app| {
            app.status.as_ref().is_some_and(|s| {
                s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == blocked)
            })
        })
        .await;
    set_jwt(&harness, SECOND_JWT).await;
    let app = harness
        .wait_for(
            NS,
            APP,
            "the running revision rolled for the Secret",
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.operation.is_none()
                        && s.history
                            .iter()
                            .any(|h| h.rotation == ["shop/jwt"] && h.phase == Phase::Healthy)
                })
            },
        )
        .await;
    let s = status(&app);
    assert_eq!(s.current_revision.as_deref(), Some(running.as_str()));
    assert_eq!(s.phase, Phase::Blocked, "the tip is still blocked");
    assert_eq!(
        s.blocked.as_ref().map(|b| b.revision.as_str()),
        Some(blocked.as_str())
    );
    let rolled = deployment(&harness).await;
    assert_eq!(generation(&rolled), generation(&first) + 1);
    assert_ne!(template_digest(&rolled), template_digest(&first));
    assert_eq!(harness.image_of(NS, "api").await, "example/api:1.0");

    // The tip crash-loops: rolled back, quarantined; Git stays on it.
    let crashing = commit_api(&repo, "example/api:2.0-crashloop", &[], "crashes");
    harness.wait_for_phase(NS, APP, Phase::RolledBack, &running).await;
    let app = harness.app(NS, APP).await;
    assert_eq!(status(&app).desired_revision.as_deref(), Some(crashing.as_str()));
    let history = status(&app).history.len();
    let before = deployment(&harness).await;
    set_jwt(&harness, THIRD_JWT).await;
    let app = harness
        .wait_for(
            NS,
            APP,
            "the running revision rolled for the Secret again",
            Duration::from_secs(60),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.operation.is_none()
                        && s.history.len() == history + 1
                        && s.history[0].rotation == ["shop/jwt"]
                        && s.history[0].phase == Phase::Healthy
                })
            },
        )
        .await;
    let s = status(&app);
    assert_eq!(
        s.phase,
        Phase::RolledBack,
        "Git still points at the quarantined revision"
    );
    assert_eq!(s.current_revision.as_deref(), Some(running.as_str()));
    let after = deployment(&harness).await;
    assert_eq!(generation(&after), generation(&before) + 1);
    assert_ne!(template_digest(&after), template_digest(&before));
    assert_eq!(harness.image_of(NS, "api").await, "example/api:1.0");
}
