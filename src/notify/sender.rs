//! Delivery in the background: [`Notifier::send`] queues and returns at once; a
//! dispatcher task posts each delivery in its own task (at most
//! [`DeliverySettings::concurrent`] at a time), so a receiver that is down or slow
//! delays neither a pass nor the other receivers.
//!
//! Each delivery is retried with exponential back-off and jitter on what may pass (no
//! connection, a timeout, 5xx, 429 with its `Retry-After` when short) and given up on
//! anything else (another 4xx, a redirect: a webhook that moved is a configuration to
//! fix). Deliveries are independent: after retries, events of one app may arrive out
//! of order; `at` orders them.
//!
//! Logs name a receiver by `name` and say what came back (status code or the kind of
//! error), never its URL nor anything the receiver answered (an answer may echo the
//! URL's path, which for a chat webhook is the credential).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::RETRY_AFTER;
use reqwest::redirect;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use super::payload::payload;
use super::{PhaseEvent, Receiver};
use crate::api::Phase;
use crate::egress::{EgressPolicy, refusal_in};

/// How deliveries are made. [`Default`] is what the controller uses.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// How long one attempt may take, connecting included (default 5 s).
    pub timeout: Duration,
    /// Attempts per delivery at most (default 5).
    pub attempts: u32,
    /// The wait before the second attempt, doubled before each next one (default 1 s:
    /// 1, 2, 4, 8 s), each ±20%.
    pub first_retry: Duration,
    /// A `Retry-After` (in seconds) up to this long is waited for instead of the
    /// back-off (default 30 s); a longer one is not, the back-off applies.
    pub max_retry_after: Duration,
    /// Deliveries waiting to start at most (default 1,000). When the queue is full a
    /// new delivery is dropped (and logged): what is queued is older news, but news
    /// already promised; the newest is the one a restart of the flood repeats.
    pub queue: usize,
    /// Deliveries in flight at most (default 16).
    pub concurrent: usize,
    /// An app's event identical to the one last told for it (phase, revisions, gate,
    /// reason) within this time is not told again (default 1 h): a revision retried at
    /// every interval that fails the same way each time is told once.
    pub repeat_window: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            timeout: Duration::from_secs(5),
            attempts: 5,
            first_retry: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
            queue: 1_000,
            concurrent: 16,
            repeat_window: Duration::from_secs(3_600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("cannot build the HTTP client for notifications: {0}")]
    Client(#[source] reqwest::Error),
}

/// What became of one delivery (for [`Notifier::start_with_reports`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered 2xx at this attempt.
    Delivered { attempts: u32, status: u16 },
    /// Not delivered: a final answer, or the last attempt failed. `reason` says what
    /// came back, never the URL.
    GaveUp { attempts: u32, reason: String },
    /// The queue was full.
    Dropped,
    /// The same event was told for this app within the repeat window.
    Repeated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The receiver's `name`.
    pub receiver: String,
    /// `namespace/name` of the app.
    pub app: String,
    pub phase: Phase,
    pub outcome: DeliveryOutcome,
}

/// What one answer means for the delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// May pass: try again, after `retry_after` when the receiver said so.
    Retry {
        retry_after: Option<Duration>,
    },
    /// Will not pass by trying again.
    GiveUp,
}

/// Judges an answer: 2xx delivered; 429 and 5xx retried (with `Retry-After` in
/// seconds, when given); anything else (other 4xx, 3xx, 1xx) given up.
pub fn judge(status: u16, retry_after: Option<&str>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        429 | 500..=599 => Attempt::Retry {
            retry_after: retry_after
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        },
        _ => Attempt::GiveUp,
    }
}

/// The wait before attempt `attempt + 1`: `first_retry` doubled per attempt, ±20%.
fn backoff(first_retry: Duration, attempt: u32) -> Duration {
    let base = first_retry.saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// One event for one receiver.
struct Delivery {
    receiver: Receiver,
    app: String,
    phase: Phase,
    body: Arc<Value>,
}

/// The notification sender, shared by every pass (cheap to clone).
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Delivery>,
    reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
    settings: DeliverySettings,
    /// Per app (`namespace/name`): the event last told and when.
    last_told: Mutex<HashMap<String, (String, Instant)>>,
    policy: EgressPolicy,
}

impl Notifier {
    /// Starts the dispatcher task: call from within a Tokio runtime. Every delivery
    /// passes `policy` (a refused one is logged, reported and never retried).
    pub fn start(settings: DeliverySettings, policy: EgressPolicy) -> Result<Notifier, NotifyError> {
        Self::spawn(settings, policy, None)
    }

    /// [`Notifier::start`], plus a report of what became of every delivery.
    pub fn start_with_reports(
        settings: DeliverySettings,
        policy: EgressPolicy,
    ) -> Result<(Notifier, mpsc::UnboundedReceiver<DeliveryReport>), NotifyError> {
        let (reports, receiver) = mpsc::unbounded_channel();
        Ok((Self::spawn(settings, policy, Some(reports))?, receiver))
    }

    fn spawn(
        settings: DeliverySettings,
        policy: EgressPolicy,
        reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
    ) -> Result<Notifier, NotifyError> {
        // The policy's builder uses no HTTP_PROXY: a proxy would connect for us, to
        // addresses the policy never sees.
        let client = policy
            .client_builder()
            .use_rustls_tls()
            // A webhook that moved is a configuration to fix; following would turn the
            // POST into a GET and send the event nowhere.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("bosun-notify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(NotifyError::Client)?;
        let (queue, waiting) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(dispatch(
            waiting,
            client,
            policy.clone(),
            settings.clone(),
            reports.clone(),
        ));
        Ok(Notifier {
            inner: Arc::new(Inner {
                queue,
                reports,
                settings,
                last_told: Mutex::default(),
                policy,
            }),
        })
    }

    /// Queues `event` for each of `receivers` and returns at once (never waits for the
    /// network nor for room in the queue). Returns how many deliveries were queued.
    pub fn send(&self, receivers: Vec<Receiver>, event: PhaseEvent) -> usize {
        let app = format!("{}/{}", event.namespace, event.app);
        if receivers.is_empty() {
            return 0;
        }
        if self.repeated(&app, &event) {
            debug!(%app, phase = %event.phase, "the same event was told lately; not told again");
            for receiver in &receivers {
                self.report(receiver, &app, event.phase, DeliveryOutcome::Repeated);
            }
            return 0;
        }
        let mut queued = 0;
        for receiver in receivers {
            let delivery = Delivery {
                body: Arc::new(payload(receiver.format, &event)),
                receiver,
                app: app.clone(),
                phase: event.phase,
            };
            match self.inner.queue.try_send(delivery) {
                Ok(()) => queued += 1,
                Err(error) => {
                    let why = match &error {
                        mpsc::error::TrySendError::Full(_) => "the notification queue is full",
                        mpsc::error::TrySendError::Closed(_) => "the notification sender has stopped",
                    };
                    let delivery = error.into_inner();
                    warn!(
                        receiver = %delivery.receiver.name,
                        %app,
                        phase = %event.phase,
                        capacity = self.inner.settings.queue,
                        "{why}; this notification is dropped"
                    );
                    self.report(&delivery.receiver, &app, event.phase, DeliveryOutcome::Dropped);
                }
            }
        }
        queued
    }

    /// Whether `event` repeats what was told last for `app` within the window; if not,
    /// it becomes what was told last.
    fn repeated(&self, app: &str, event: &PhaseEvent) -> bool {
        let fingerprint = format!(
            "{}|{:?}|{:?}|{:?}|{}|{:?}",
            event.phase, event.from, event.to, event.gate, event.reason, event.rotation
        );
        let window = self.inner.settings.repeat_window;
        let now = Instant::now();
        let mut told = self.inner.last_told.lock().expect("notification memory poisoned");
        told.retain(|_, (_, at)| now.duration_since(*at) < window);
        if told.get(app).is_some_and(|(last, _)| *last == fingerprint) {
            return true;
        }
        told.insert(app.to_string(), (fingerprint, now));
        false
    }

    fn report(&self, receiver: &Receiver, app: &str, phase: Phase, outcome: DeliveryOutcome) {
        report(&self.inner.reports, receiver, app, phase, outcome);
    }

    /// Why the egress policy refuses `url` before any connection (its host name, or its
    /// address when it is an IP literal), for the pass to tell the app's owner; a name
    /// whose addresses are refused is found at delivery (logged, not retried).
    pub fn refused(&self, url: &str) -> Option<crate::egress::Refusal> {
        let url = reqwest::Url::parse(url).ok()?;
        self.inner.policy.check_url(&url).err()
    }
}

fn report(
    reports: &Option<mpsc::UnboundedSender<DeliveryReport>>,
    receiver: &Receiver,
    app: &str,
    phase: Phase,
    outcome: DeliveryOutcome,
) {
    if let Some(reports) = reports {
        let _ = reports.send(DeliveryReport {
            receiver: receiver.name.clone(),
            app: app.to_string(),
            phase,
            outcome,
        });
    }
}

/// Takes deliveries from the queue and posts each in its own task, at most
/// `concurrent` at once. Ends when every [`Notifier`] is dropped.
async fn dispatch(
    mut waiting: mpsc::Receiver<Delivery>,
    client: reqwest::Client,
    policy: EgressPolicy,
    settings: DeliverySettings,
    reports: Option<mpsc::UnboundedSender<DeliveryReport>>,
) {
    let in_flight = Arc::new(Semaphore::new(settings.concurrent.max(1)));
    while let Some(delivery) = waiting.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (client, settings, reports) = (client.clone(), settings.clone(), reports.clone());
        let policy = policy.clone();
        tokio::spawn(async move {
            let outcome = deliver(&client, &policy, &settings, &delivery).await;
            report(
                &reports,
                &delivery.receiver,
                &delivery.app,
                delivery.phase,
                outcome,
            );
            drop(permit);
        });
    }
}

/// Posts one delivery, retrying what may pass; one the egress policy refuses is
/// given up at once.
async fn deliver(
    client: &reqwest::Client,
    policy: &EgressPolicy,
    settings: &DeliverySettings,
    delivery: &Delivery,
) -> DeliveryOutcome {
    let receiver = &delivery.receiver;
    let attempts = settings.attempts.max(1);
    let mut last = String::new();
    let refused = |attempt: u32, refusal: crate::egress::Refusal| {
        // The refusal names the host and the rule, never the URL's path (for a chat
        // webhook, the credential).
        warn!(
            receiver = %receiver.name,
            app = %delivery.app,
            phase = %delivery.phase,
            "notification not sent: {refusal}; not retried"
        );
        DeliveryOutcome::GaveUp {
            attempts: attempt,
            reason: refusal.to_string(),
        }
    };
    // Not a URL: reqwest says so at the first attempt.
    if let Ok(url) = reqwest::Url::parse(&receiver.url)
        && let Err(refusal) = policy.check_url(&url)
    {
        return refused(0, refusal);
    }
    for attempt in 1..=attempts {
        let sent = client
            .post(&receiver.url)
            .timeout(settings.timeout)
            .json(delivery.body.as_ref())
            .send()
            .await;
        if let Err(error) = &sent
            && let Some(refusal) = refusal_in(error)
        {
            return refused(attempt, refusal);
        }
        let (judgement, status) = match &sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok());
                (judge(status, retry_after), Some(status))
            }
            // No answer (refused, reset, timed out, DNS): may pass.
            Err(_) => (Attempt::Retry { retry_after: None }, None),
        };
        last = match (&sent, status) {
            (_, Some(status)) => format!("answered {status}"),
            (Err(error), None) => describe(error, settings.timeout, &receiver.url),
            (Ok(_), None) => unreachable!("an answer has a status"),
        };
        let status_text = status.map_or_else(|| "none".to_string(), |s| s.to_string());
        match judgement {
            Attempt::Delivered => {
                info!(
                    receiver = %receiver.name,
                    app = %delivery.app,
                    phase = %delivery.phase,
                    status = %status_text,
                    attempt,
                    "notification delivered"
                );
                return DeliveryOutcome::Delivered {
                    attempts: attempt,
                    status: status.unwrap_or_default(),
                };
            }
            Attempt::GiveUp => {
                warn!(
                    receiver = %receiver.name,
                    app = %delivery.app,
                    phase = %delivery.phase,
                    status = %status_text,
                    attempt,
                    "notification refused by its receiver ({last}); not retried"
                );
                return DeliveryOutcome::GaveUp {
                    attempts: attempt,
                    reason: last,
                };
            }
            Attempt::Retry { retry_after } if attempt < attempts => {
                let wait = retry_after
                    .filter(|wait| *wait <= settings.max_retry_after)
                    .unwrap_or_else(|| backoff(settings.first_retry, attempt));
                warn!(
                    receiver = %receiver.name,
                    app = %delivery.app,
                    phase = %delivery.phase,
                    status = %status_text,
                    attempt,
                    retry_in = ?wait,
                    "notification not delivered ({last}); retrying"
                );
                tokio::time::sleep(wait).await;
            }
            Attempt::Retry { .. } => {}
        }
    }
    warn!(
        receiver = %receiver.name,
        app = %delivery.app,
        phase = %delivery.phase,
        attempts,
        "notification given up after {attempts} attempts ({last})"
    );
    DeliveryOutcome::GaveUp {
        attempts,
        reason: last,
    }
}

/// What went wrong without an answer (`connection refused`, `timed out after 5s`),
/// without the URL: reqwest's text names it, and its path may be the credential.
fn describe(error: &reqwest::Error, timeout: Duration, url: &str) -> String {
    if error.is_timeout() {
        return format!("no answer within {}s", timeout.as_secs_f64());
    }
    // reqwest's own text, without the URL it appends.
    let own = match error.url() {
        Some(url) => error.to_string().replace(&format!(" for url ({url})"), ""),
        None => error.to_string(),
    };
    // Whatever a cause may quote of the URL goes too.
    crate::failure::chain_after(own, std::error::Error::source(error)).replace(url, "<url>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_judged_retry_on_what_may_pass() {
        assert_eq!(judge(200, None), Attempt::Delivered);
        assert_eq!(judge(204, None), Attempt::Delivered);
        for status in [500, 502, 503, 504] {
            assert_eq!(
                judge(status, None),
                Attempt::Retry { retry_after: None },
                "{status}"
            );
        }
        assert_eq!(
            judge(429, Some("3")),
            Attempt::Retry {
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            judge(503, Some(" 120 ")),
            Attempt::Retry {
                retry_after: Some(Duration::from_secs(120))
            }
        );
        // An HTTP-date is not read: the back-off applies.
        assert_eq!(
            judge(429, Some("Wed, 21 Oct 2026 07:28:00 GMT")),
            Attempt::Retry { retry_after: None }
        );
        for status in [400, 401, 403, 404, 410, 301, 302, 101] {
            assert_eq!(judge(status, None), Attempt::GiveUp, "{status}");
        }
    }

    #[test]
    fn backoff_doubles_from_the_first_retry_with_jitter() {
        for attempt in 1..=4u32 {
            let nominal = Duration::from_secs(1u64 << (attempt - 1));
            for _ in 0..20 {
                let wait = backoff(Duration::from_secs(1), attempt);
                assert!(
                    wait >= nominal.mul_f64(0.79) && wait <= nominal.mul_f64(1.21),
                    "attempt {attempt}: {wait:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn the_same_event_for_an_app_is_told_once_within_the_window() {
        let (notifier, mut reports) =
            Notifier::start_with_reports(DeliverySettings::default(), EgressPolicy::unrestricted()).unwrap();
        let event = PhaseEvent {
            app: "api".into(),
            namespace: "shop".into(),
            phase: Phase::Failed,
            from: None,
            to: Some("a".repeat(40)),
            gate: None,
            reason: "DeadlineExceeded".into(),
            message: "step apply did not finish within 10m".into(),
            summary: "shop/api: revision aaaaaaaaaaaa failed: step apply did not finish within 10m".into(),
            at: "2026-01-01T00:10:00Z".into(),
            rotation: Vec::new(),
        };
        // A port nothing listens on: deliveries fail, which does not matter here.
        let receivers = vec![Receiver {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".into(),
            format: crate::api::NotifyFormat::Json,
        }];
        assert_eq!(notifier.send(receivers.clone(), event.clone()), 1);
        assert_eq!(notifier.send(receivers.clone(), event.clone()), 0);
        let report = reports.recv().await.unwrap();
        assert_eq!(report.outcome, DeliveryOutcome::Repeated);
        // Another event in between: the first one is news again.
        let healthy = PhaseEvent {
            phase: Phase::Healthy,
            reason: "Healthy".into(),
            ..event.clone()
        };
        assert_eq!(notifier.send(receivers.clone(), healthy), 1);
        assert_eq!(notifier.send(receivers.clone(), event.clone()), 1);
        // Another app's same event is its own.
        let other = PhaseEvent {
            app: "web".into(),
            ..event
        };
        assert_eq!(notifier.send(receivers, other), 1);
    }

    #[test]
    fn a_receivers_url_is_never_in_an_error_description() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let url = "http://127.0.0.1:9/services/Sup3rS3cr3tT0k3n";
        let error = runtime
            .block_on(reqwest::Client::new().post(url).send())
            .expect_err("nothing listens on port 9");
        let text = describe(&error, Duration::from_secs(5), url);
        assert!(!text.contains("Sup3rS3cr3tT0k3n"), "{text}");
        assert!(text.contains("error sending request"), "{text}");
    }
}
