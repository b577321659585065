//! A real Prometheus on loopback and an endpoint for it to scrape whose error rate
//! and latency a test sets: what the `metrics` gate is tested against.
//!
//! [`Prometheus::start`] runs Debian's `prometheus` (2.42; `/usr/bin/prometheus`,
//! or the program `PROMETHEUS` names) on a free port of 127.0.0.1 with a generated
//! configuration and a temporary storage directory, scraping its targets every
//! second, and returns once `/-/ready` answers. `scripts/test.sh` installs the
//! package when it is missing.
//!
//! [`MetricsEndpoint`] serves `GET /metrics` for a simulated web app taking
//! [`REQUESTS_PER_SECOND`] requests a second, split between `code="200"` and
//! `code="500"` by the error rate the test sets ([`MetricsEndpoint::set_error_rate`]),
//! each lasting the latency the test sets ([`MetricsEndpoint::set_latency`]):
//!
//! ```text
//! http_requests_total{code="200"}                       counter
//! http_requests_total{code="500"}                       counter
//! http_request_duration_seconds_bucket{le="…"}          histogram, buckets LATENCY_BUCKETS
//! http_request_duration_seconds_sum / _count
//! ```
//!
//! so that `sum(rate(http_requests_total{code=~"5.."}[10s])) / sum(rate(http_requests_total[10s]))`
//! gives the error rate once the window holds only requests at that rate, and
//! `histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[10s])) by (le))`
//! a latency within the bucket of the one set. The split is exact, not random: with
//! a rate of 0.05 every twentieth request fails.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::extract::State;
use axum::routing::get;
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;

use super::process::{self, ManagedProcess};

/// Where Debian's `prometheus` package installs the server.
pub const DEFAULT_PROMETHEUS: &str = "/usr/bin/prometheus";

/// How often Prometheus scrapes its targets (and evaluates rules).
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// Requests a [`MetricsEndpoint`] counts every second.
pub const REQUESTS_PER_SECOND: u64 = 100;

/// Upper bounds (seconds) of the latency histogram's buckets, as the Prometheus
/// client libraries default them.
pub const LATENCY_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How often the simulated requests are counted: ten batches a second.
const BATCH_INTERVAL: Duration = Duration::from_millis(100);

/// How many times start is attempted when Prometheus lost a race for its port.
const START_ATTEMPTS: usize = 3;

/// A running Prometheus; dropping it stops the process and removes its directory
/// (unless `BOSUN_KEEP_DEVENV=1`).
pub struct Prometheus {
    port: u16,
    http: reqwest::Client,
    startup_duration: Duration,
    // Stopped before the directory it writes to is removed.
    process: ManagedProcess,
    dir: TempDir,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.url())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every
    /// [`SCRAPE_INTERVAL`], and waits until it is ready (at most `timeout`).
    pub async fn start(targets: &[String], timeout: Duration) -> anyhow::Result<Self> {
        let started = Instant::now();
        let program = prometheus_program()?;
        let mut dir = tempfile::Builder::new()
            .prefix("bosun-prometheus-")
            .tempdir()
            .context("creating Prometheus's directory")?;
        if std::env::var("BOSUN_KEEP_DEVENV").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("bosun devenv: keeping {}", dir.path().display());
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets))
            .with_context(|| format!("writing {}", config.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut attempt = 1;
        loop {
            let port = process::free_ports(1)?[0];
            let mut command = Command::new(&program);
            command
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--storage.tsdb.retention.time=1h")
                .arg("--log.level=warn");
            let log = dir.path().join(format!("prometheus-{attempt}.log"));
            let mut process = ManagedProcess::spawn("prometheus", command, &log)?;
            match wait_until_ready(&http, port, &mut process, started + timeout).await {
                Ok(()) => {
                    let startup_duration = started.elapsed();
                    tracing::info!(port, ?startup_duration, "prometheus ready");
                    return Ok(Self {
                        port,
                        http,
                        startup_duration,
                        process,
                        dir,
                    });
                }
                Err(error)
                    if attempt < START_ATTEMPTS
                        && process.log_tail(20).contains("address already in use") =>
                {
                    tracing::warn!(%error, attempt, "prometheus lost its port; retrying");
                    attempt += 1;
                }
                Err(error) => {
                    dir.disable_cleanup(true);
                    return Err(error.context(format!("Prometheus's files kept in {}", dir.path().display())));
                }
            }
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:9123` (the `prometheus` of a `metrics` gate).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How long [`Prometheus::start`] took, until `/-/ready` answered.
    pub fn startup_duration(&self) -> Duration {
        self.startup_duration
    }

    /// The `data` of an instant query's answer (`{"resultType": …, "result": …}`).
    pub async fn query(&self, promql: &str) -> anyhow::Result<Value> {
        let answer: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url()))
            .query(&[("query", promql)])
            .send()
            .await
            .with_context(|| format!("querying {promql}"))?
            .json()
            .await
            .with_context(|| format!("reading the answer to {promql}"))?;
        if answer["status"] != "success" {
            bail!("query {promql}: {answer}");
        }
        Ok(answer["data"].clone())
    }

    /// Waits until the instant query `promql` returns a single sample; returns its value.
    pub async fn wait_for_value(&self, promql: &str, timeout: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let data = self.query(promql).await?;
            let sample = match data["resultType"].as_str() {
                Some("scalar") => Some(&data["result"]),
                Some("vector") => data["result"]
                    .as_array()
                    .filter(|r| r.len() == 1)
                    .map(|r| &r[0]["value"]),
                _ => None,
            };
            if let Some(value) = sample
                .and_then(|s| s[1].as_str())
                .and_then(|v| v.parse::<f64>().ok())
                && value.is_finite()
            {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!("{promql} gave no single value within {timeout:?}; last answer: {data}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The directory of the configuration, data and log.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// The last lines of Prometheus's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// `PROMETHEUS` if set, else [`DEFAULT_PROMETHEUS`].
fn prometheus_program() -> anyhow::Result<PathBuf> {
    let program =
        std::env::var_os("PROMETHEUS").map_or_else(|| PathBuf::from(DEFAULT_PROMETHEUS), PathBuf::from);
    if !program.is_file() {
        bail!(
            "Prometheus not found at {} (install Debian's `prometheus` package, as scripts/test.sh does, \
             or set PROMETHEUS)",
            program.display()
        );
    }
    Ok(program)
}

/// The configuration: one job, `devenv`, scraping `targets` every second.
fn config_yaml(targets: &[String]) -> String {
    let seconds = SCRAPE_INTERVAL.as_secs();
    let targets: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
    format!(
        "global:\n  scrape_interval: {seconds}s\n  scrape_timeout: {seconds}s\n  evaluation_interval: {seconds}s\n\
         scrape_configs:\n  - job_name: devenv\n    metrics_path: /metrics\n    static_configs:\n      \
         - targets: [{}]\n",
        targets.join(", ")
    )
}

async fn wait_until_ready(
    http: &reqwest::Client,
    port: u16,
    process: &mut ManagedProcess,
    deadline: Instant,
) -> anyhow::Result<()> {
    let url = format!("http://127.0.0.1:{port}/-/ready");
    loop {
        if let Ok(response) = http.get(&url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = process.exited() {
            bail!("prometheus exited ({status}):\n{}", process.log_tail(20));
        }
        if Instant::now() >= deadline {
            bail!("prometheus not ready at {url} in time:\n{}", process.log_tail(20));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The metrics of a simulated web app (see the module docs); dropping it stops
/// serving and counting.
pub struct MetricsEndpoint {
    port: u16,
    state: Arc<EndpointState>,
    server: JoinHandle<()>,
    counter: JoinHandle<()>,
}

#[derive(Default)]
struct EndpointState {
    settings: Mutex<Settings>,
    counts: Mutex<Counts>,
    scrapes: AtomicU64,
}

#[derive(Clone, Copy)]
struct Settings {
    error_rate: f64,
    latency_seconds: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            latency_seconds: 0.02,
        }
    }
}

/// What has been counted so far.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counts {
    ok: u64,
    errors: u64,
    /// Errors owed but not yet whole: the split stays exact at any rate.
    error_debt: f64,
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    buckets: Vec<u64>,
    duration_sum: f64,
}

impl Counts {
    /// Counts `requests` more at `settings`.
    fn add(&mut self, requests: u64, settings: Settings) {
        self.error_debt += requests as f64 * settings.error_rate.clamp(0.0, 1.0);
        let errors = (self.error_debt.floor() as u64).min(requests);
        self.error_debt -= errors as f64;
        self.errors += errors;
        self.ok += requests - errors;
        self.buckets.resize(LATENCY_BUCKETS.len(), 0);
        for (count, bound) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if settings.latency_seconds <= *bound {
                *count += requests;
            }
        }
        self.duration_sum += requests as f64 * settings.latency_seconds;
    }

    /// The text exposition of these counts.
    fn exposition(&self) -> String {
        let total = self.ok + self.errors;
        let mut text = String::new();
        text.push_str("# HELP http_requests_total Requests served, by status code.\n");
        text.push_str("# TYPE http_requests_total counter\n");
        text.push_str(&format!("http_requests_total{{code=\"200\"}} {}\n", self.ok));
        text.push_str(&format!("http_requests_total{{code=\"500\"}} {}\n", self.errors));
        text.push_str("# HELP http_request_duration_seconds How long requests took.\n");
        text.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (index, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let count = self.buckets.get(index).copied().unwrap_or(0);
            text.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {count}\n"
            ));
        }
        text.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n"
        ));
        text.push_str(&format!(
            "http_request_duration_seconds_sum {}\n",
            self.duration_sum
        ));
        text.push_str(&format!("http_request_duration_seconds_count {total}\n"));
        text
    }
}

impl MetricsEndpoint {
    /// Serves `GET /metrics` on a free loopback port and starts counting requests
    /// (error rate 0, latency 20 ms). Must be called inside a Tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(EndpointState::default());
        let app = axum::Router::new()
            .route("/metrics", get(metrics))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the metrics endpoint")?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let counter = tokio::spawn(count_requests(state.clone()));
        Ok(Self {
            port,
            state,
            server,
            counter,
        })
    }

    /// `127.0.0.1:<port>`, a scrape target for [`Prometheus::start`].
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The share (0 to 1) of the requests counted from now on that answer 500.
    pub fn set_error_rate(&self, rate: f64) {
        self.settings().error_rate = rate.clamp(0.0, 1.0);
    }

    /// How long each request counted from now on takes.
    pub fn set_latency(&self, latency: Duration) {
        self.settings().latency_seconds = latency.as_secs_f64();
    }

    /// Requests counted so far: (answered 200, answered 500).
    pub fn requests(&self) -> (u64, u64) {
        let counts = self.state.counts.lock().unwrap_or_else(PoisonError::into_inner);
        (counts.ok, counts.errors)
    }

    /// How often `/metrics` was read.
    pub fn scrapes(&self) -> u64 {
        self.state.scrapes.load(Ordering::Relaxed)
    }

    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.state.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        self.server.abort();
        self.counter.abort();
    }
}

/// Counts [`REQUESTS_PER_SECOND`] requests a second, in batches, at the settings of
/// the moment.
async fn count_requests(state: Arc<EndpointState>) {
    let per_batch = REQUESTS_PER_SECOND * BATCH_INTERVAL.as_millis() as u64 / 1000;
    let mut batches = tokio::time::interval(BATCH_INTERVAL);
    loop {
        batches.tick().await;
        let settings = *state.settings.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .add(per_batch, settings);
    }
}

async fn metrics(State(state): State<Arc<EndpointState>>) -> ([(&'static str, &'static str); 1], String) {
    state.scrapes.fetch_add(1, Ordering::Relaxed);
    let text = state
        .counts
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .exposition();
    ([("content-type", "text/plain; version=0.0.4")], text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_split_is_exact_and_follows_the_rate_of_the_moment() {
        let mut counts = Counts::default();
        let at = |error_rate| Settings {
            error_rate,
            latency_seconds: 0.02,
        };
        for _ in 0..10 {
            counts.add(10, at(0.05));
        }
        assert_eq!((counts.ok, counts.errors), (95, 5));
        counts.add(100, at(0.0));
        assert_eq!((counts.ok, counts.errors), (195, 5));
        counts.add(10, at(1.0));
        assert_eq!((counts.ok, counts.errors), (195, 15));
    }

    #[test]
    fn the_exposition_has_counters_and_a_cumulative_histogram() {
        let mut counts = Counts::default();
        counts.add(
            10,
            Settings {
                error_rate: 0.5,
                latency_seconds: 0.3,
            },
        );
        let text = counts.exposition();
        assert!(text.contains("http_requests_total{code=\"200\"} 5\n"), "{text}");
        assert!(text.contains("http_requests_total{code=\"500\"} 5\n"), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_bucket{le=\"0.25\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_bucket{le=\"0.5\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_bucket{le=\"+Inf\"} 10\n"),
            "{text}"
        );
        assert!(
            text.contains("http_request_duration_seconds_count 10\n"),
            "{text}"
        );
        // The devenv's own parser reads it.
        let total = crate::sum_samples(&text, "http_requests_total", &[]).unwrap();
        assert_eq!(total, 10.0);
    }

    #[test]
    fn the_configuration_scrapes_every_target_every_second() {
        let yaml = config_yaml(&["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        assert!(yaml.contains("scrape_interval: 1s"), "{yaml}");
        assert!(
            yaml.contains("- targets: ['127.0.0.1:1', '127.0.0.1:2']"),
            "{yaml}"
        );
    }
}
