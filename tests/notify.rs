//! Notifications delivered to real HTTP receivers on loopback whose answers the tests
//! control: JSON and Slack bodies, retries on 5xx and 429, a receiver that is down,
//! one that never answers, and Secrets (read from a real API server) whose values
//! never reach a body or a log line.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bosun::api::{
    AppDeployment, AppDeploymentSpec, AppDeploymentStatus, GateVerdict, Notify, NotifyFormat, Phase,
    SecretKeyRef, Step, Verdict,
};
use bosun::core::record::{self, RecordInput};
use bosun::core::{
    self, Applied, Decision, DesiredRevision, Failure, FailureKind, Input, Recheck, StepOutcome, StepResult,
    Verification,
};
use bosun::notify::{
    DeliveryOutcome, DeliveryReport, DeliverySettings, Notifier, PhaseEvent, Receiver, event_of,
    receivers_for,
};
use bosun_devenv::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

const GOOD: &str = "0f9e8d7c6b5a0f9e8d7c6b5a0f9e8d7c6b5a0f9e";
const BAD: &str = "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d";
/// Generous for a shared machine; a delivery on loopback takes milliseconds.
const WAIT: Duration = Duration::from_secs(30);

// ---- receivers ------------------------------------------------------------------

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    at: Instant,
    path: String,
    content_type: Option<String>,
    body: Value,
    raw: String,
}

/// How a receiver answers its n-th request (0-based).
type Script = Arc<dyn Fn(usize) -> Response + Send + Sync>;

#[derive(Clone)]
struct Recorder {
    received: Arc<Mutex<Vec<Received>>>,
    script: Script,
}

/// A webhook receiver on loopback: records every POST and answers as `script` says.
struct HttpReceiver {
    base: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl HttpReceiver {
    async fn start(script: impl Fn(usize) -> Response + Send + Sync + 'static) -> anyhow::Result<Self> {
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            received: received.clone(),
            script: Arc::new(script),
        };
        let router = Router::new()
            .route("/{*path}", post(record_request))
            .with_state(recorder);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(Self { base, received })
    }

    /// Answers 200 to everything.
    async fn ok() -> anyhow::Result<Self> {
        Self::start(|_| StatusCode::OK.into_response()).await
    }

    fn receiver(&self, name: &str, path: &str, format: NotifyFormat) -> Receiver {
        Receiver {
            name: name.into(),
            url: format!("{}{path}", self.base),
            format,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn record_request(
    State(recorder): State<Recorder>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = String::from_utf8_lossy(&body).to_string();
    let n = {
        let mut received = recorder.received.lock().unwrap();
        received.push(Received {
            at: Instant::now(),
            path: uri.path().to_string(),
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
        });
        received.len() - 1
    };
    (recorder.script)(n)
}

/// A loopback port nothing listens on: bound, then closed.
async fn closed_port() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.port())
}

/// The next report, or an error after [`WAIT`].
async fn next_report(reports: &mut UnboundedReceiver<DeliveryReport>) -> anyhow::Result<DeliveryReport> {
    tokio::time::timeout(WAIT, reports.recv())
        .await
        .context("no delivery report in time")?
        .context("the notifier stopped")
}

// ---- events of real decisions ---------------------------------------------------

fn gate(name: &str, verdict: Verdict, message: &str) -> GateVerdict {
    GateVerdict {
        name: name.into(),
        verdict,
        message: Some(message.into()),
    }
}

/// One app's passes as the controller makes them (decide, record, save, run the
/// step), collecting the events of its saves.
struct Story {
    app: AppDeployment,
    status: AppDeploymentStatus,
    now: Timestamp,
    saves: Vec<(AppDeploymentStatus, AppDeploymentStatus)>,
}

impl Story {
    fn new() -> Self {
        let mut app = AppDeployment::new("api", AppDeploymentSpec::default());
        app.metadata.namespace = Some("shop".into());
        app.metadata.generation = Some(1);
        Story {
            app,
            status: AppDeploymentStatus::default(),
            now: "2026-01-01T00:00:00Z".parse().unwrap(),
            saves: Vec::new(),
        }
    }

    /// A pass with Git at `desired`: every step succeeds; `BAD` fails its health gate
    /// and `refused` (when given) refuses the revision at render.
    fn pass(&mut self, desired: &str, refused: Option<&Failure>) -> Vec<PhaseEvent> {
        self.status.desired_revision = Some(desired.into());
        let mut events = Vec::new();
        let mut outcome = None;
        for _ in 0..40 {
            let decision = core::decide(&Input {
                status: &self.status,
                generation: Some(1),
                suspended: false,
                automatic_rollback: true,
                desired: DesiredRevision::Known {
                    revision: desired.into(),
                    pinned: false,
                },
                spec_digest: "d1",
                problem: None,
                outcome: outcome.take(),
                now: self.now,
                step_deadline: Duration::from_secs(600),
                interval: Duration::from_secs(3600),
                block_checked_at: None,
                config_changed_at: None,
                // Drift was just repaired: these stories are about revisions.
                last_resync: Some(self.now),
                recheck: None::<Recheck>,
                plan: Default::default(),
                rollout_on_secret_change: false,
                secret_data: Default::default(),
                retry: None,
            });
            let before = self.status.clone();
            record::record(
                &mut self.status,
                &decision,
                &RecordInput {
                    now: self.now,
                    generation: Some(1),
                    history_limit: 10,
                    spec_digest: "d1",
                    desired: Some(desired),
                },
            );
            if before != self.status {
                events.extend(event_of(&self.app, &before, &self.status));
                self.saves.push((before, self.status.clone()));
            }
            self.now += SignedDuration::from_secs(1);
            match decision {
                Decision::Run(step) => outcome = Some(self.run(step, refused)),
                ref continuing if continuing.continues() => {}
                _ => break,
            }
        }
        events
    }

    fn run(&self, step: Step, refused: Option<&Failure>) -> StepOutcome {
        let revision = self
            .status
            .operation
            .as_ref()
            .map(|op| op.revision.clone())
            .unwrap();
        match (step, refused) {
            (Step::Render, Some(failure)) => StepOutcome::Refused(failure.clone()),
            (Step::Render, None) => StepOutcome::Done(StepResult::Rendered {
                render_digest: "r1".into(),
                objects: 2,
            }),
            (Step::Snapshot, _) => StepOutcome::Done(StepResult::SnapshotStored {
                name: format!("api-{}", &revision[..8]),
            }),
            (Step::Preflight, _) => StepOutcome::Done(StepResult::PreflightPassed),
            (Step::Inventory, _) => StepOutcome::Done(StepResult::Planned {
                inventory: Vec::new(),
            }),
            (Step::Apply, _) => StepOutcome::Done(StepResult::Applied(Applied::default())),
            (Step::Verify, _) if revision == BAD => StepOutcome::Verified(Verification::Failed {
                message: "gate health failed: 3 consecutive failed probes: status 503".into(),
                gates: vec![
                    gate("workload", Verdict::Passed, "1/1 pods ready"),
                    gate(
                        "health",
                        Verdict::Failed,
                        "3 consecutive failed probes: status 503",
                    ),
                ],
            }),
            (Step::Verify, _) => StepOutcome::Verified(Verification::Passed {
                gates: vec![gate("health", Verdict::Passed, "status 200")],
            }),
            (other, _) => StepOutcome::Transient(format!("step {other} is not part of this story")),
        }
    }
}

/// `GOOD` healthy, then `BAD` failing its gate: RollingBack and RolledBack.
fn rollback_events() -> (PhaseEvent, PhaseEvent) {
    let mut story = Story::new();
    story.pass(GOOD, None);
    let mut events = story.pass(BAD, None);
    assert_eq!(events.len(), 2, "{events:#?}");
    let rolled_back = events.pop().unwrap();
    let rolling_back = events.pop().unwrap();
    assert_eq!(rolling_back.phase, Phase::RollingBack);
    assert_eq!(rolled_back.phase, Phase::RolledBack);
    (rolling_back, rolled_back)
}

fn quick_retries() -> DeliverySettings {
    DeliverySettings {
        first_retry: Duration::from_millis(200),
        ..DeliverySettings::default()
    }
}

// ---- tests ----------------------------------------------------------------------

#[tokio::test]
async fn json_and_slack_receivers_get_their_bodies() -> anyhow::Result<()> {
    let ops = HttpReceiver::ok().await?;
    let chat = HttpReceiver::ok().await?;
    let (notifier, mut reports) =
        Notifier::start_with_reports(DeliverySettings::default(), loopback_policy())?;
    let (_, rolled_back) = rollback_events();

    let queued = notifier.send(
        vec![
            ops.receiver("ops", "/bosun", NotifyFormat::Json),
            chat.receiver("chat", "/services/T000/B000/XXXX", NotifyFormat::Slack),
        ],
        rolled_back.clone(),
    );
    assert_eq!(queued, 2);
    for _ in 0..2 {
        let report = next_report(&mut reports).await?;
        ensure!(
            matches!(
                report.outcome,
                DeliveryOutcome::Delivered {
                    attempts: 1,
                    status: 200
                }
            ),
            "{report:?}"
        );
        assert_eq!(
            (report.app.as_str(), report.phase),
            ("shop/api", Phase::RolledBack)
        );
    }

    let [json] = ops
        .received()
        .try_into()
        .map_err(|r| anyhow::anyhow!("ops got {r:?}"))?;
    assert_eq!(json.path, "/bosun");
    assert_eq!(json.content_type.as_deref(), Some("application/json"));
    let summary = "shop/api: revision 1a2b3c4d5e6f rolled back to 0f9e8d7c6b5a: gate health failed \
                   (3 consecutive failed probes: status 503)";
    assert_eq!(
        json.body,
        json!({
            "app": "api",
            "namespace": "shop",
            "phase": "RolledBack",
            "revision": { "from": BAD, "to": GOOD },
            "gate": "health",
            "reason": "GateFailed",
            "message": "rolled back from 1a2b3c4d5e6f to last healthy revision 0f9e8d7c6b5a",
            "summary": summary,
            "at": rolled_back.at,
        })
    );

    let [slack] = chat
        .received()
        .try_into()
        .map_err(|r| anyhow::anyhow!("chat got {r:?}"))?;
    assert_eq!(slack.path, "/services/T000/B000/XXXX");
    assert_eq!(slack.content_type.as_deref(), Some("application/json"));
    assert_eq!(slack.body["text"], summary);
    let section = &slack.body["blocks"][0];
    assert_eq!(section["type"], "section");
    assert_eq!(section["text"], json!({ "type": "mrkdwn", "text": summary }));
    let fields: Vec<&str> = section["fields"]
        .as_array()
        .context("fields")?
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "mrkdwn");
            f["text"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        fields,
        vec![
            "*App*\nshop/api",
            "*Phase*\nRolledBack",
            "*From → To*\n`1a2b3c4d5e6f` → `0f9e8d7c6b5a`",
            "*Gate*\nhealth",
            "*Reason*\nGateFailed",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_receiver_answering_500_twice_gets_the_event_at_the_third_attempt() -> anyhow::Result<()> {
    let flaky = HttpReceiver::start(|n| match n {
        0 | 1 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => StatusCode::OK.into_response(),
    })
    .await?;
    // The controller's settings: waits of 1 s then 2 s (±20%).
    let (notifier, mut reports) =
        Notifier::start_with_reports(DeliverySettings::default(), loopback_policy())?;
    let (rolling_back, _) = rollback_events();
    notifier.send(
        vec![flaky.receiver("ops", "/hook", NotifyFormat::Json)],
        rolling_back,
    );

    let report = next_report(&mut reports).await?;
    assert_eq!(
        report.outcome,
        DeliveryOutcome::Delivered {
            attempts: 3,
            status: 200
        }
    );
    let received = flaky.received();
    assert_eq!(received.len(), 3);
    // The same body each time.
    assert!(received.iter().all(|r| r.raw == received[0].raw));
    assert_eq!(received[0].body["phase"], "RollingBack");
    // Exponential back-off: about 1 s, then about 2 s.
    let first = received[1].at - received[0].at;
    let second = received[2].at - received[1].at;
    println!("waits between attempts: {first:?}, {second:?}");
    ensure!(first >= Duration::from_millis(790), "first wait {first:?}");
    ensure!(second >= Duration::from_millis(1_590), "second wait {second:?}");
    ensure!(second > first, "{first:?} then {second:?}");
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_is_down_delays_neither_send_nor_the_others() -> anyhow::Result<()> {
    let up = HttpReceiver::ok().await?;
    let down = Receiver {
        name: "pager".into(),
        url: format!("http://127.0.0.1:{}/hook", closed_port().await?),
        format: NotifyFormat::Json,
    };
    let (notifier, mut reports) = Notifier::start_with_reports(quick_retries(), loopback_policy())?;
    let (rolling_back, _) = rollback_events();

    let started = Instant::now();
    let queued = notifier.send(
        vec![down, up.receiver("ops", "/hook", NotifyFormat::Json)],
        rolling_back,
    );
    let send_took = started.elapsed();
    println!("send() returned after {send_took:?}");
    assert_eq!(queued, 2);
    // Loosely: send() only queues (it takes microseconds; the down receiver's retries
    // take seconds).
    ensure!(send_took < Duration::from_secs(1), "send() took {send_took:?}");

    // The receiver that is up gets the event first, while the other is being retried.
    let first = next_report(&mut reports).await?;
    assert_eq!(first.receiver, "ops");
    ensure!(
        matches!(first.outcome, DeliveryOutcome::Delivered { attempts: 1, .. }),
        "{first:?}"
    );
    let delivered_after = started.elapsed();
    assert_eq!(up.received().len(), 1);

    // The one that is down is given up after every attempt.
    let last = next_report(&mut reports).await?;
    assert_eq!(last.receiver, "pager");
    let given_up_after = started.elapsed();
    println!("delivered after {delivered_after:?}; given up after {given_up_after:?}");
    match &last.outcome {
        DeliveryOutcome::GaveUp { attempts: 5, reason } => {
            ensure!(reason.contains("onnect"), "reason: {reason}");
            ensure!(!reason.contains("127.0.0.1"), "reason quotes the URL: {reason}");
        }
        other => bail!("expected the down receiver given up after 5 attempts, got {other:?}"),
    }
    // Four waits of 0.2, 0.4, 0.8 and 1.6 s (±20%) came first.
    ensure!(
        given_up_after >= Duration::from_millis(2_400),
        "{given_up_after:?}"
    );
    ensure!(delivered_after < given_up_after);
    Ok(())
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_a_404_is_not_retried() -> anyhow::Result<()> {
    let busy = HttpReceiver::start(|n| match n {
        0 => (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")]).into_response(),
        _ => StatusCode::OK.into_response(),
    })
    .await?;
    let gone = HttpReceiver::start(|_| StatusCode::NOT_FOUND.into_response()).await?;
    // A back-off far longer than the Retry-After: the receiver's word is taken.
    let settings = DeliverySettings {
        first_retry: Duration::from_secs(20),
        ..DeliverySettings::default()
    };
    let (notifier, mut reports) = Notifier::start_with_reports(settings, loopback_policy())?;
    let (rolling_back, _) = rollback_events();
    notifier.send(
        vec![
            busy.receiver("busy", "/hook", NotifyFormat::Json),
            gone.receiver("gone", "/hook", NotifyFormat::Slack),
        ],
        rolling_back,
    );
    let mut outcomes = BTreeMap::new();
    for _ in 0..2 {
        let report = next_report(&mut reports).await?;
        outcomes.insert(report.receiver, report.outcome);
    }
    assert_eq!(
        outcomes["gone"],
        DeliveryOutcome::GaveUp {
            attempts: 1,
            reason: "answered 404".into()
        }
    );
    assert_eq!(gone.received().len(), 1);
    assert_eq!(
        outcomes["busy"],
        DeliveryOutcome::Delivered {
            attempts: 2,
            status: 200
        }
    );
    let received = busy.received();
    let wait = received[1].at - received[0].at;
    println!("waited {wait:?} after a 429 with Retry-After: 1");
    ensure!(
        wait >= Duration::from_millis(950) && wait < Duration::from_secs(10),
        "{wait:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_and_is_retried() -> anyhow::Result<()> {
    let ops = HttpReceiver::ok().await?;
    // A listener that accepts connections and never answers: the delivery times out.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_url = format!("http://{}/hook", silent.local_addr()?);
    let accepted = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let settings = DeliverySettings {
        timeout: Duration::from_millis(300),
        attempts: 2,
        first_retry: Duration::from_millis(100),
        ..DeliverySettings::default()
    };
    let (notifier, mut reports) = Notifier::start_with_reports(settings, loopback_policy())?;
    let (rolling_back, _) = rollback_events();
    let started = Instant::now();
    notifier.send(
        vec![
            Receiver {
                name: "silent".into(),
                url: silent_url,
                format: NotifyFormat::Json,
            },
            ops.receiver("ops", "/hook", NotifyFormat::Json),
        ],
        rolling_back,
    );
    let mut silent_outcome = None;
    for _ in 0..2 {
        let report = next_report(&mut reports).await?;
        if report.receiver == "silent" {
            silent_outcome = Some((report.outcome, started.elapsed()));
        }
    }
    let (outcome, after) = silent_outcome.context("no report for the silent receiver")?;
    println!("silent receiver given up after {after:?}");
    assert_eq!(
        outcome,
        DeliveryOutcome::GaveUp {
            attempts: 2,
            reason: "no answer within 0.3s".into()
        }
    );
    ensure!(after >= Duration::from_millis(650), "{after:?}");
    accepted.abort();
    Ok(())
}

/// A writer for log lines the test reads back.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_nor_log_line_carries_a_secret_value() -> anyhow::Result<()> {
    // The app's own Secret and the chat webhook's URL, in a real API server.
    const JWT_VALUE: &str = "jwt-Zq8vN3xWpL0rT6yK2mB9sD4fH7gJ1cV5";
    const HOOK_TOKEN: &str = "B07HOOKT0KEN-p4Xs9QwErTy";
    let logs = Logs::default();
    let writer = logs.clone();
    // Everything bosun logs, and reqwest's own lines (through the `log` bridge).
    tracing_subscriber::fmt()
        .with_env_filter("info,bosun=trace,reqwest=trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("this test reads its own log; run it in its own process: {e}"))?;

    // Slack-like receiver: answers 500 once (so that a failure is logged), then 200.
    let chat = HttpReceiver::start(|n| match n {
        0 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => StatusCode::OK.into_response(),
    })
    .await?;
    let ops = HttpReceiver::ok().await?;

    let control_plane = ControlPlane::start(ControlPlaneOptions::default()).await?;
    let client = control_plane.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "shop"}}))?,
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "shop");
    let hook_url = format!("{}/services/T000/{HOOK_TOKEN}", chat.base);
    for (name, key, value) in [
        ("jwt", "secret", JWT_VALUE),
        ("chat-webhook", "url", hook_url.as_str()),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": name},
                    "stringData": {key: value},
                }))?,
            )
            .await?;
    }

    // The Runbook's receivers: one inline, one whose URL is in the Secret; and one whose
    // key is missing (a problem naming receiver, Secret and key).
    let notify = vec![
        Notify {
            name: "ops".into(),
            url: Some(format!("{}/bosun", ops.base)),
            ..Notify::default()
        },
        Notify {
            name: "chat".into(),
            url_from: Some(SecretKeyRef {
                name: "chat-webhook".into(),
                key: "url".into(),
            }),
            format: NotifyFormat::Slack,
            ..Notify::default()
        },
        Notify {
            name: "pager".into(),
            url_from: Some(SecretKeyRef {
                name: "jwt".into(),
                key: "pager-url".into(),
            }),
            ..Notify::default()
        },
    ];

    // Events that name the app's Secret: a refusal quoting it (as preflight words
    // one), and a failed rollout of its change.
    let mut story = Story::new();
    story.pass(GOOD, None);
    let refusal = Failure::new(
        FailureKind::RevisionInvalid,
        "Deployment shop/api container api: JWT_SECRET (Secret shop/jwt, key secret) is shorter than 32 characters",
    );
    let mut blocked = story.pass(BAD, Some(&refusal));
    let blocked = blocked.pop().context("a Blocked event")?;
    assert_eq!(blocked.phase, Phase::Blocked);
    let mut failing = Story::new();
    failing.pass(BAD, None);
    let (mut before, mut after) = failing.saves.last().cloned().context("a save")?;
    before.history[0].rotation = vec!["jwt".into()];
    after.history[0].rotation = vec!["jwt".into()];
    let rotation = event_of(&failing.app, &before, &after).context("a Failed event")?;
    assert_eq!(rotation.phase, Phase::Failed);

    let (notifier, mut reports) = Notifier::start_with_reports(quick_retries(), loopback_policy())?;
    let mut problems_seen = Vec::new();
    for event in [blocked, rotation] {
        // What the controller does after a save: the receivers that want the phase,
        // with the Secrets they name read from the API server.
        let (receivers, problems) = receivers_for(&client, &notify, "shop", event.phase).await;
        assert_eq!(
            receivers.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["ops", "chat"]
        );
        for problem in &problems {
            tracing::warn!(%problem, "notify receiver skipped");
        }
        problems_seen.extend(problems);
        assert_eq!(notifier.send(receivers, event), 2);
    }
    assert_eq!(
        problems_seen,
        vec!["notify receiver pager: Secret shop/jwt has no key pager-url"; 2]
    );
    for _ in 0..4 {
        let report = next_report(&mut reports).await?;
        ensure!(
            matches!(report.outcome, DeliveryOutcome::Delivered { .. }),
            "{report:?}"
        );
    }

    // An identity that may not read the Secret: the receiver is skipped, and the problem
    // says why, still without a value.
    let nobody = control_plane.impersonating_client("nobody").await?;
    let (receivers, problems) = receivers_for(&nobody, &notify, "shop", Phase::Failed).await;
    assert_eq!(
        receivers.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["ops"]
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("notify receiver chat: cannot read Secret shop/chat-webhook: ")
            && problems[0].contains("forbidden"),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("notify receiver pager: cannot read Secret shop/jwt: "),
        "{problems:?}"
    );
    // Not told to receivers that do not want the phase.
    let (receivers, _) = receivers_for(&client, &notify, "shop", Phase::Applying).await;
    assert!(receivers.is_empty());

    let bodies: Vec<Received> = ops.received().into_iter().chain(chat.received()).collect();
    assert_eq!(bodies.len(), 5, "2 to ops; 3 to chat (one answered 500)");
    for received in &bodies {
        assert!(
            !received.raw.contains(JWT_VALUE),
            "a body carries the Secret's value: {}",
            received.raw
        );
        assert!(
            !received.raw.contains(HOOK_TOKEN),
            "a body carries the webhook URL: {}",
            received.raw
        );
    }
    // They name the Secret, which is what a reader needs.
    assert!(bodies.iter().all(|r| r.raw.contains("shop/jwt")));
    assert!(chat.received().iter().all(|r| r.path.ends_with(HOOK_TOKEN)));

    let log = logs.text();
    assert!(
        log.contains("notification not delivered")
            && log.contains("receiver=chat")
            && log.contains("status=500"),
        "the failure is logged naming receiver and status:\n{log}"
    );
    assert!(log.contains("notification delivered"), "{log}");
    // reqwest's lines are read too (it names where it connects, without the path).
    assert!(log.contains("starting new connection"), "{log}");
    assert!(
        !log.contains(HOOK_TOKEN),
        "a log line carries the webhook URL:\n{log}"
    );
    assert!(
        !log.contains(JWT_VALUE),
        "a log line carries the Secret's value:\n{log}"
    );
    Ok(())
}

/// The built-in egress denials, with loopback allowed: the receivers here listen on it.
fn loopback_policy() -> bosun::egress::EgressPolicy {
    bosun::egress::EgressPolicy::from_flags(&["127.0.0.0/8".into()], &[], &bosun::egress::Builtins::default())
        .expect("valid rules")
}
