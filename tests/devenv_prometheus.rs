//! The devenv's Prometheus end to end: Debian's real `prometheus` scrapes a
//! `MetricsEndpoint` every second, and PromQL over it gives the error rate and the
//! latency the test set.

mod support;

use std::time::{Duration, Instant};

use bosun_devenv::{MetricsEndpoint, Prometheus};
use support::init_tracing;

const ERROR_RATE: &str =
    "sum(rate(http_requests_total{code=~\"5..\"}[5s])) / sum(rate(http_requests_total[5s]))";
const P95: &str = "histogram_quantile(0.95, sum(rate(http_request_duration_seconds_bucket[5s])) by (le))";

/// Waits until `query` settles within `tolerance` of `expected`; returns the value.
async fn settles_at(
    prometheus: &Prometheus,
    query: &str,
    expected: f64,
    tolerance: f64,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let value = prometheus.wait_for_value(query, Duration::from_secs(20)).await?;
        if (value - expected).abs() <= tolerance {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{query} = {value}, not within {tolerance} of {expected}\n{}",
            prometheus.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_error_rate_and_latency_the_test_sets() -> anyhow::Result<()> {
    init_tracing();
    let endpoint = MetricsEndpoint::start().await?;
    endpoint.set_error_rate(0.05);
    endpoint.set_latency(Duration::from_millis(300));
    let prometheus = Prometheus::start(&[endpoint.target()], Duration::from_secs(60)).await?;
    eprintln!("prometheus ready in {:?}", prometheus.startup_duration());

    let up = prometheus
        .wait_for_value(
            &format!("up{{instance=\"{}\"}}", endpoint.target()),
            Duration::from_secs(20),
        )
        .await?;
    assert_eq!(up, 1.0);
    let started = Instant::now();
    let rate = settles_at(&prometheus, ERROR_RATE, 0.05, 0.002).await?;
    eprintln!("error rate {rate} after {:?}", started.elapsed());
    // 300 ms lies in the (0.25, 0.5] bucket: the quantile is interpolated inside it.
    let p95 = settles_at(&prometheus, P95, 0.375, 0.125).await?;
    eprintln!("p95 {p95}");

    // A change shows once the window has passed over it.
    let changed = Instant::now();
    endpoint.set_error_rate(0.0);
    settles_at(&prometheus, ERROR_RATE, 0.0, 0.0).await?;
    eprintln!("error rate back to 0 after {:?}", changed.elapsed());
    let (ok, errors) = endpoint.requests();
    assert!(ok > 0 && errors > 0, "{ok} {errors}");
    assert!(endpoint.scrapes() >= 3, "{}", endpoint.scrapes());

    // A metric nobody exposes: an empty vector.
    let empty = prometheus.query("absent_metric_total").await?;
    assert_eq!(empty["resultType"], "vector");
    assert_eq!(empty["result"].as_array().map(Vec::len), Some(0));
    Ok(())
}
