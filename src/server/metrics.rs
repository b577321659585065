//! The controller's Prometheus metrics (`GET /metrics`, OpenMetrics text), every name
//! prefixed `bosun_`:
//!
//! ```text
//! bosun_reconciles_total{result="ok|error"}                   counter
//! bosun_reconcile_duration_seconds{result}                    histogram
//! bosun_appdeployments{phase}                                 gauge, counted at scrape
//! bosun_queue_depth                                           gauge, counted at scrape
//! bosun_gate_verdicts_total{kind, verdict="passed|failed"}    counter
//! bosun_rollbacks_total{namespace, app}                       counter
//! bosun_time_to_rollback_seconds                              histogram
//! bosun_git_fetch_duration_seconds{result="ok|error"}         histogram
//! bosun_git_fetch_errors_total{reason}                        counter
//! ```
//!
//! The call sites use the small API of [`Metrics`]; what each metric counts, and where
//! it is approximate, is said on the method that records it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::api::{AppDeployment, Phase, Verdict};

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every phase, so that a phase no app is in is exported as 0 rather than missing.
const PHASES: [Phase; 12] = [
    Phase::Pending,
    Phase::Fetching,
    Phase::Blocked,
    Phase::BackingUp,
    Phase::Migrating,
    Phase::Applying,
    Phase::Verifying,
    Phase::Healthy,
    Phase::RollingBack,
    Phase::RolledBack,
    Phase::Failed,
    Phase::Suspended,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    kind: String,
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    namespace: String,
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metric registry and the handles the call sites record into. Cheap to clone
/// (every clone records into the same metrics).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: HistogramFamily<ResultLabels>,
    gate_verdicts: Family<GateLabels, Counter>,
    rollbacks: Family<AppLabels, Counter>,
    time_to_rollback: Histogram,
    git_fetch_duration: HistogramFamily<ResultLabels>,
    git_fetch_errors: Family<ReasonLabels, Counter>,
    /// Apps with work pending, by `namespace/name` (read at scrape: `bosun_queue_depth`).
    work: Arc<Mutex<HashMap<String, Work>>>,
    /// When each app's rollback was decided, until its apply step finished.
    rollbacks_decided: Mutex<HashMap<String, Instant>>,
    /// The AppDeployments watched (read at scrape: `bosun_appdeployments`).
    apps: Arc<OnceLock<Store<AppDeployment>>>,
}

/// Why an app counts towards the queue depth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Work {
    /// A pass over it is running.
    running: bool,
    /// Its last pass failed: a retry is scheduled.
    retrying: bool,
    /// A deploy or rollback is in progress (`status.operation`): more passes follow.
    operating: bool,
}

impl Work {
    fn is_pending(self) -> bool {
        self.running || self.retrying || self.operating
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // Passes take from milliseconds (a verification round) to minutes (an apply
        // against a slow API server): 5 ms … 82 s.
        let reconcile_duration: HistogramFamily<ResultLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 15)));
        // From a verdict to the last healthy revision applied again: 0.25 s … 512 s.
        let time_to_rollback = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        // A fetch of a small repository on loopback takes milliseconds; a stalled
        // server up to the fetch timeout: 10 ms … 164 s.
        let git_fetch_duration: HistogramFamily<ResultLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 2.0, 15)));
        let inner = Inner {
            registry: Registry::with_prefix("bosun"),
            reconciles: Family::default(),
            reconcile_duration,
            gate_verdicts: Family::default(),
            rollbacks: Family::default(),
            time_to_rollback,
            git_fetch_duration,
            git_fetch_errors: Family::default(),
            work: Arc::default(),
            rollbacks_decided: Mutex::default(),
            apps: Arc::default(),
        };
        Metrics {
            inner: Arc::new(inner.registered()),
        }
    }

    /// Counts the AppDeployments of `apps` by phase at every scrape.
    pub(crate) fn count_apps(&self, apps: Store<AppDeployment>) {
        let _ = self.inner.apps.set(apps);
    }

    /// Every metric as OpenMetrics text (ends with `# EOF`).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// A pass over the app `key` (`namespace/name`) begins.
    pub(crate) fn pass_started(&self, key: &str) {
        self.update_work(key, |work| work.running = true);
    }

    /// A pass over the app `key` ended with `result` after `duration`. A failed pass
    /// leaves the app in the queue (a retry is scheduled).
    pub fn reconciled<T, E>(&self, key: &str, result: &Result<T, E>, duration: Duration) {
        let labels = ResultLabels {
            result: if result.is_ok() { "ok" } else { "error" },
        };
        self.inner.reconciles.get_or_create(&labels).inc();
        self.inner
            .reconcile_duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        self.update_work(key, |work| {
            work.running = false;
            work.retrying = result.is_err();
        });
    }

    /// Whether the app `key` has a deploy or rollback in progress after its pass: such
    /// an app has more passes coming (a verification round, a Job, a retried step).
    pub(crate) fn operation_in_progress(&self, key: &str, in_progress: bool) {
        self.update_work(key, |work| work.operating = in_progress);
    }

    /// The app `key` was deleted.
    pub(crate) fn forget(&self, key: &str) {
        lock(&self.inner.work).remove(key);
        lock(&self.inner.rollbacks_decided).remove(key);
    }

    fn update_work(&self, key: &str, change: impl FnOnce(&mut Work)) {
        let mut work = lock(&self.inner.work);
        let mut entry = work.get(key).copied().unwrap_or_default();
        change(&mut entry);
        if entry.is_pending() {
            work.insert(key.to_string(), entry);
        } else {
            work.remove(key);
        }
    }

    /// A verification finished: one gate of `kind` (`workload`, `http`, `smoke`,
    /// `logs`, `metrics`) ended with `verdict`. A gate still pending when another one
    /// failed the revision has no verdict and is not counted.
    pub(crate) fn gate_verdict(&self, kind: &str, verdict: Verdict) {
        let verdict = match verdict {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Pending => return,
        };
        self.inner
            .gate_verdicts
            .get_or_create(&GateLabels {
                kind: kind.to_string(),
                verdict,
            })
            .inc();
    }

    /// The app `namespace/name` is to be rolled back (the decision is saved): counts
    /// the rollback and starts the clock of `bosun_time_to_rollback_seconds`.
    ///
    /// The clock starts at the verification round that failed the revision, which is
    /// the round of the decision: a gate with `failureThreshold: N` failed its first
    /// probe `N - 1` periods earlier, which this does not count.
    pub(crate) fn rollback_decided(&self, namespace: &str, name: &str) {
        self.inner
            .rollbacks
            .get_or_create(&AppLabels {
                namespace: namespace.to_string(),
                app: name.to_string(),
            })
            .inc();
        lock(&self.inner.rollbacks_decided).insert(format!("{namespace}/{name}"), Instant::now());
    }

    /// The apply step of the app's rollback finished: stops the clock. A rollback
    /// decided before this process started (a restart in between) has no clock and is
    /// not observed.
    pub fn rollback_applied(&self, namespace: &str, name: &str) {
        let decided = lock(&self.inner.rollbacks_decided).remove(&format!("{namespace}/{name}"));
        if let Some(decided) = decided {
            self.inner
                .time_to_rollback
                .observe(decided.elapsed().as_secs_f64());
        }
    }

    /// One Git fetch took `duration`; `error` is the reason it failed
    /// (`SourceError::reason`), `None` when it succeeded.
    pub(crate) fn git_fetched(&self, duration: Duration, error: Option<&'static str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.inner
            .git_fetch_duration
            .get_or_create(&ResultLabels { result })
            .observe(duration.as_secs_f64());
        if let Some(reason) = error {
            self.inner
                .git_fetch_errors
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
    }
}

impl Inner {
    /// Registers every metric with the registry (the handles share their values).
    fn registered(mut self) -> Inner {
        let registry = &mut self.registry;
        registry.register(
            "reconciles",
            "Passes over an AppDeployment, by result",
            self.reconciles.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "How long one pass over an AppDeployment took, by result",
            Unit::Seconds,
            self.reconcile_duration.clone(),
        );
        registry.register(
            "gate_verdicts",
            "Gate verdicts of finished verifications, by gate kind (workload, http, smoke, logs, metrics) and verdict",
            self.gate_verdicts.clone(),
        );
        registry.register(
            "rollbacks",
            "Automatic rollbacks decided, by AppDeployment",
            self.rollbacks.clone(),
        );
        registry.register_with_unit(
            "time_to_rollback",
            "From the verification round that failed a revision to the last healthy revision applied again",
            Unit::Seconds,
            self.time_to_rollback.clone(),
        );
        registry.register_with_unit(
            "git_fetch_duration",
            "How long one Git fetch took, by result",
            Unit::Seconds,
            self.git_fetch_duration.clone(),
        );
        registry.register(
            "git_fetch_errors",
            "Failed Git fetches, by reason",
            self.git_fetch_errors.clone(),
        );
        registry.register_collector(Box::new(AtScrape {
            apps: self.apps.clone(),
            work: self.work.clone(),
        }));
        self
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The gauges computed when Prometheus scrapes.
#[derive(Debug)]
struct AtScrape {
    apps: Arc<OnceLock<Store<AppDeployment>>>,
    work: Arc<Mutex<HashMap<String, Work>>>,
}

impl Collector for AtScrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(apps) = self.apps.get() {
            let by_phase = count_by_phase(apps.state().iter().map(|app| phase_of(app)));
            let family = Family::<PhaseLabels, Gauge>::default();
            for (phase, count) in by_phase {
                family
                    .get_or_create(&PhaseLabels {
                        phase: phase.as_str(),
                    })
                    .set(count);
            }
            let metric = encoder.encode_descriptor(
                "appdeployments",
                "AppDeployments watched by this controller, by phase",
                None,
                family.metric_type(),
            )?;
            family.encode(metric)?;
        }
        let depth = Gauge::<i64>::default();
        depth.set(lock(&self.work).len() as i64);
        let metric = encoder.encode_descriptor(
            "queue_depth",
            "AppDeployments with work pending: a pass running, a failed pass to retry, or a deploy or rollback in progress",
            None,
            depth.metric_type(),
        )?;
        depth.encode(metric)
    }
}

fn phase_of(app: &AppDeployment) -> Phase {
    app.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// How many of `phases` are each phase, every phase listed (zero included).
fn count_by_phase(phases: impl Iterator<Item = Phase>) -> Vec<(Phase, i64)> {
    let mut counts: Vec<(Phase, i64)> = PHASES.iter().map(|phase| (*phase, 0)).collect();
    for phase in phases {
        if let Some(entry) = counts.iter_mut().find(|(p, _)| *p == phase) {
            entry.1 += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample named exactly `name{labels}` in `text`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_phase_is_counted_zero_included() {
        let counts = count_by_phase([Phase::Healthy, Phase::Healthy, Phase::Failed].into_iter());
        assert_eq!(counts.len(), PHASES.len());
        assert!(counts.contains(&(Phase::Healthy, 2)));
        assert!(counts.contains(&(Phase::Failed, 1)));
        assert!(counts.contains(&(Phase::Pending, 0)));
    }

    #[test]
    fn recorded_values_appear_under_their_names() {
        let metrics = Metrics::new();
        metrics.pass_started("shop/web");
        metrics.reconciled::<(), ()>("shop/web", &Ok(()), Duration::from_millis(30));
        metrics.pass_started("shop/api");
        metrics.reconciled::<(), &str>("shop/api", &Err("boom"), Duration::from_millis(30));
        metrics.gate_verdict("http", Verdict::Failed);
        metrics.gate_verdict("http", Verdict::Pending);
        metrics.rollback_decided("shop", "web");
        metrics.rollback_applied("shop", "web");
        metrics.rollback_applied("shop", "web");
        metrics.git_fetched(Duration::from_millis(5), Some("AuthenticationFailed"));
        let text = metrics.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(sample(&text, r#"bosun_reconciles_total{result="ok"}"#), Some(1.0));
        assert_eq!(
            sample(&text, r#"bosun_reconciles_total{result="error"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, r#"bosun_reconcile_duration_seconds_count{result="ok"}"#),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"bosun_gate_verdicts_total{kind="http",verdict="failed"}"#
            ),
            Some(1.0)
        );
        assert!(!text.contains(r#"verdict="pending""#), "{text}");
        assert_eq!(
            sample(&text, r#"bosun_rollbacks_total{namespace="shop",app="web"}"#),
            Some(1.0)
        );
        // The second "applied" had no decision to measure from.
        assert_eq!(sample(&text, "bosun_time_to_rollback_seconds_count"), Some(1.0));
        assert_eq!(
            sample(
                &text,
                r#"bosun_git_fetch_errors_total{reason="AuthenticationFailed"}"#
            ),
            Some(1.0)
        );
        // The failed pass is still in the queue; the successful one is not.
        assert_eq!(sample(&text, "bosun_queue_depth"), Some(1.0));
    }

    #[test]
    fn queue_depth_counts_each_app_once_until_its_work_is_done() {
        let metrics = Metrics::new();
        let depth = |m: &Metrics| sample(&m.encode(), "bosun_queue_depth");
        metrics.pass_started("a/x");
        metrics.pass_started("a/y");
        assert_eq!(depth(&metrics), Some(2.0));
        // x goes on verifying after its pass: still pending, counted once.
        metrics.operation_in_progress("a/x", true);
        metrics.reconciled::<(), ()>("a/x", &Ok(()), Duration::ZERO);
        metrics.reconciled::<(), ()>("a/y", &Ok(()), Duration::ZERO);
        assert_eq!(depth(&metrics), Some(1.0));
        metrics.pass_started("a/x");
        metrics.operation_in_progress("a/x", false);
        metrics.reconciled::<(), ()>("a/x", &Ok(()), Duration::ZERO);
        assert_eq!(depth(&metrics), Some(0.0));
        metrics.pass_started("a/z");
        metrics.forget("a/z");
        assert_eq!(depth(&metrics), Some(0.0));
    }
}
