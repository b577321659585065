//! The Runbook `metrics` gate: one probe is a PromQL instant query
//! (`GET {prometheus}/api/v1/query`) whose every sample must satisfy the threshold
//! (`error rate < 0.01`, `p95 < 5`).
//!
//! - A vector passes when every sample satisfies the threshold; a scalar likewise.
//! - No sample at all (an empty vector), or only `NaN` samples (a ratio over no
//!   requests, `0/0`), is *no data*: `noData: Wait` (the default) leaves the gate
//!   pending, so the progress deadline decides; `Fail` counts a failed probe; `Pass`
//!   a passed one.
//! - A threshold missed, an unreachable Prometheus or a query error is a failed
//!   probe, counted towards `failureThreshold` like an `http` probe.
//!
//! Messages name the query, the value (and the series' labels when it has any) and
//! the threshold: `query sum(rate(…)) returned 0.052, not < 0.01`.
//!
//! [`judge`], [`parse_answer`] and [`Comparison`] are pure; [`probe`] does the I/O.

use std::time::Duration;

use serde_json::Value;

use super::http::{HttpProber, ProbeOutcome};
use super::{Observation, truncate};
use crate::api::{MetricsGate, NoData};
use crate::egress::refusal_in;
use crate::failure::error_chain;

/// Longest query, label set or error text quoted in a message.
const MAX_QUOTED_CHARS: usize = 200;
/// Answers are read up to this size: an instant query the gate judges is small.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A threshold's comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Equal,
}

impl Comparison {
    /// Reads `<`, `<=`, `>`, `>=` or `==`.
    pub fn parse(op: &str) -> Result<Self, String> {
        match op.trim() {
            "<" => Ok(Self::Less),
            "<=" => Ok(Self::LessOrEqual),
            ">" => Ok(Self::Greater),
            ">=" => Ok(Self::GreaterOrEqual),
            "==" => Ok(Self::Equal),
            other => Err(format!(
                "threshold.op {other:?}: expected one of <, <=, >, >=, =="
            )),
        }
    }

    /// Whether `value OP threshold` holds. `NaN` never does.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Less => value < threshold,
            Self::LessOrEqual => value <= threshold,
            Self::Greater => value > threshold,
            Self::GreaterOrEqual => value >= threshold,
            Self::Equal => value == threshold,
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Self::Less => "<",
            Self::LessOrEqual => "<=",
            Self::Greater => ">",
            Self::GreaterOrEqual => ">=",
            Self::Equal => "==",
        }
    }
}

/// One sample of a query's answer: its series' labels (`{code="500"}`, empty for a
/// scalar or a series without labels) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: String,
    pub value: f64,
}

/// The samples of the body of an `/api/v1/query` answer; `Err` says why there are
/// none to judge (an error answer, a range vector, a body that is not the API's).
pub fn parse_answer(body: &Value) -> Result<Vec<Sample>, String> {
    if body["status"] != "success" {
        let kind = body["errorType"].as_str().unwrap_or("error");
        let error = body["error"].as_str().unwrap_or("no error text");
        return Err(format!(
            "Prometheus answered {kind}: {}",
            truncate(error, MAX_QUOTED_CHARS)
        ));
    }
    let data = &body["data"];
    let value_of = |pair: &Value| -> Result<f64, String> {
        let text = pair.get(1).and_then(Value::as_str).ok_or_else(|| {
            format!(
                "a sample without a value: {}",
                truncate(&pair.to_string(), MAX_QUOTED_CHARS)
            )
        })?;
        parse_value(text)
    };
    match data["resultType"].as_str() {
        Some("scalar") => Ok(vec![Sample {
            labels: String::new(),
            value: value_of(&data["result"])?,
        }]),
        Some("vector") => data["result"]
            .as_array()
            .ok_or("a vector answer without a result list")?
            .iter()
            .map(|series| {
                Ok(Sample {
                    labels: labels_text(&series["metric"]),
                    value: value_of(&series["value"])?,
                })
            })
            .collect(),
        Some("matrix") => Err(
            "the query returned a range vector; give an instant vector or a scalar \
                               (e.g. rate(x[5m]), not x[5m])"
                .into(),
        ),
        Some(other) => Err(format!("the query returned a {other}, not a vector or a scalar")),
        None => Err("the answer has no data.resultType (is this the Prometheus HTTP API?)".into()),
    }
}

/// A sample value as Prometheus writes it: a number, `NaN`, `+Inf` or `-Inf`.
fn parse_value(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .map_err(|_| format!("sample value {text:?} is not a number"))
}

/// `{a="1",b="2"}` for a series' labels (sorted, as JSON objects keep them); empty
/// when there are none.
fn labels_text(metric: &Value) -> String {
    let Some(labels) = metric.as_object().filter(|labels| !labels.is_empty()) else {
        return String::new();
    };
    let pairs: Vec<String> = labels
        .iter()
        .map(|(name, value)| format!("{name}={:?}", value.as_str().unwrap_or_default()))
        .collect();
    truncate(&format!("{{{}}}", pairs.join(",")), MAX_QUOTED_CHARS)
}

/// The verdict of one probe on `samples`, the answer to `gate.query`.
pub fn judge(gate: &MetricsGate, samples: &[Sample]) -> Observation {
    let query = format!("query {}", truncate(gate.query.trim(), MAX_QUOTED_CHARS));
    let comparison = match Comparison::parse(&gate.threshold.op) {
        Ok(comparison) => comparison,
        Err(problem) => return Observation::Probe(ProbeOutcome::failed(problem)),
    };
    let threshold = format!("{} {}", comparison.symbol(), number(gate.threshold.value));
    let with_data: Vec<&Sample> = samples.iter().filter(|s| !s.value.is_nan()).collect();
    if with_data.is_empty() {
        let what = if samples.is_empty() {
            "returned no data".to_string()
        } else {
            "returned only NaN (nothing to measure yet)".to_string()
        };
        return match gate.no_data {
            NoData::Wait => Observation::Waiting(format!("{query} {what}; waiting for data (noData: Wait)")),
            NoData::Fail => {
                Observation::Probe(ProbeOutcome::failed(format!("{query} {what} (noData: Fail)")))
            }
            NoData::Pass => {
                Observation::Probe(ProbeOutcome::passed(format!("{query} {what} (noData: Pass)")))
            }
        };
    }
    let failing: Vec<&&Sample> = with_data
        .iter()
        .filter(|s| !comparison.holds(s.value, gate.threshold.value))
        .collect();
    let described = |sample: &Sample| {
        if sample.labels.is_empty() {
            number(sample.value)
        } else {
            format!("{} for {}", number(sample.value), sample.labels)
        }
    };
    match (failing.first(), with_data.as_slice()) {
        (Some(first), [_]) => Observation::Probe(ProbeOutcome::failed(format!(
            "{query} returned {}, not {threshold}",
            described(first)
        ))),
        (Some(first), all) => Observation::Probe(ProbeOutcome::failed(format!(
            "{query} returned {}, not {threshold} ({} of {} samples fail)",
            described(first),
            failing.len(),
            all.len()
        ))),
        (None, [only]) => Observation::Probe(ProbeOutcome::passed(format!(
            "{query} returned {} ({threshold})",
            described(only)
        ))),
        (None, all) => Observation::Probe(ProbeOutcome::passed(format!(
            "{query} returned {} samples, all {threshold}",
            all.len()
        ))),
    }
}

/// A value as a message shows it: as Prometheus would (`0.052`, `+Inf`, `NaN`).
fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
}

/// Where the instant query of `gate` is sent: `{prometheus}/api/v1/query` (a base
/// URL with a path, `http://host/prometheus`, keeps it).
pub fn query_url(prometheus: &str) -> Result<reqwest::Url, String> {
    let base = prometheus.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}/api/v1/query"))
        .map_err(|e| format!("prometheus {base:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("prometheus {base:?}: expected an http or https URL"));
    }
    Ok(url)
}

/// Sends the instant query of `gate` and judges the answer. Never errors: what goes
/// wrong is a failed probe whose message says what. The query goes through the
/// prober's client (redirects followed, each hop and every address connected to
/// checked by the egress policy); a refusal is [`Observation::Refused`].
pub async fn probe(prober: &HttpProber, gate: &MetricsGate, timeout: Duration) -> Observation {
    let failed = |message: String| Observation::Probe(ProbeOutcome::failed(message));
    let url = match query_url(&gate.prometheus) {
        Ok(url) => url,
        Err(problem) => return failed(problem),
    };
    let refused = |refusal: crate::egress::Refusal| {
        Observation::Refused(format!(
            "prometheus {}: {refusal}",
            url.origin().ascii_serialization()
        ))
    };
    if let Err(refusal) = prober.policy().check_url(&url) {
        return refused(refusal);
    }
    let client = prober.following();
    let target = format!("GET {}", url.as_str());
    let exchange = async {
        let mut response = client
            .get(url.clone())
            .query(&[("query", gate.query.as_str())])
            .send()
            .await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY_BYTES {
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    };
    let (status, body) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return failed(format!("{target}: no answer within {}s", timeout.as_secs())),
        Ok(Err(error)) => {
            return match refusal_in(&error) {
                Some(refusal) => refused(refusal),
                None => failed(format!("{target}: {}", error_chain(&error.without_url()))),
            };
        }
        Ok(Ok(answer)) => answer,
    };
    if body.len() > MAX_BODY_BYTES {
        return failed(format!(
            "{target}: the answer is larger than {MAX_BODY_BYTES} bytes"
        ));
    }
    // Prometheus answers errors (a bad query: 400, a timeout: 503) in the same JSON.
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            return failed(format!(
                "{target}: status {status}, not the Prometheus API: {}",
                truncate(text.trim(), MAX_QUOTED_CHARS)
            ));
        }
    };
    match parse_answer(&parsed) {
        Ok(samples) => judge(gate, &samples),
        Err(problem) => failed(format!(
            "query {}: {problem}",
            truncate(gate.query.trim(), MAX_QUOTED_CHARS)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Threshold;
    use serde_json::json;

    fn gate(op: &str, value: f64, no_data: NoData) -> MetricsGate {
        MetricsGate {
            prometheus: "http://prometheus.monitoring:9090".into(),
            query: "sum(rate(http_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m]))"
                .into(),
            threshold: Threshold { op: op.into(), value },
            no_data,
        }
    }

    fn sample(labels: &str, value: f64) -> Sample {
        Sample {
            labels: labels.into(),
            value,
        }
    }

    fn message(observation: &Observation) -> &str {
        match observation {
            Observation::Probe(outcome) => &outcome.message,
            Observation::Waiting(message)
            | Observation::Final(message)
            | Observation::Refused(message)
            | Observation::NotApplicable(message) => message,
        }
    }

    fn passed(observation: &Observation) -> Option<bool> {
        match observation {
            Observation::Probe(outcome) => Some(outcome.passed),
            _ => None,
        }
    }

    #[test]
    fn comparisons() {
        let cases = [
            ("<", 0.5, 1.0, true),
            ("<", 1.0, 1.0, false),
            ("<=", 1.0, 1.0, true),
            (">", 1.0, 1.0, false),
            (">", 2.0, 1.0, true),
            (">=", 1.0, 1.0, true),
            ("==", 1.0, 1.0, true),
            ("==", 1.5, 1.0, false),
            (" < ", 0.0, 1.0, true),
        ];
        for (op, value, threshold, expected) in cases {
            let comparison = Comparison::parse(op).unwrap();
            assert_eq!(
                comparison.holds(value, threshold),
                expected,
                "{value} {op} {threshold}"
            );
        }
        for op in ["<", "<=", ">", ">=", "=="] {
            assert!(!Comparison::parse(op).unwrap().holds(f64::NAN, 1.0), "NaN {op}");
            assert_eq!(Comparison::parse(op).unwrap().symbol(), op);
        }
        assert!(
            Comparison::parse("!=")
                .unwrap_err()
                .contains("threshold.op \"!=\"")
        );
        assert!(Comparison::parse("<").unwrap().holds(f64::NEG_INFINITY, 0.0));
    }

    #[test]
    fn answers_are_parsed_into_samples() {
        let vector = json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"code": "500", "instance": "10.0.0.1:8080"}, "value": [1700000000.1, "0.052"]},
            {"metric": {}, "value": [1700000000.1, "+Inf"]},
            {"metric": {"code": "200"}, "value": [1700000000.1, "NaN"]},
        ]}});
        let samples = parse_answer(&vector).unwrap();
        assert_eq!(
            samples[0],
            sample("{code=\"500\",instance=\"10.0.0.1:8080\"}", 0.052)
        );
        assert_eq!(samples[1], sample("", f64::INFINITY));
        assert!(samples[2].value.is_nan());

        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "4.2"]}});
        assert_eq!(parse_answer(&scalar).unwrap(), [sample("", 4.2)]);

        let empty = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(parse_answer(&empty).unwrap(), []);

        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(parse_answer(&matrix).unwrap_err().contains("range vector"));

        let error = json!({"status": "error", "errorType": "bad_data", "error": "1:5: parse error: unexpected <EOF>"});
        assert_eq!(
            parse_answer(&error).unwrap_err(),
            "Prometheus answered bad_data: 1:5: parse error: unexpected <EOF>"
        );
        let garbage = json!({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "many"]}]}});
        assert!(
            parse_answer(&garbage)
                .unwrap_err()
                .contains("\"many\" is not a number")
        );
        assert!(
            parse_answer(&json!({"status": "success"}))
                .unwrap_err()
                .contains("resultType")
        );
    }

    #[test]
    fn one_sample_names_query_value_and_threshold() {
        let gate = gate("<", 0.01, NoData::Wait);
        let failed = judge(&gate, &[sample("", 0.052)]);
        assert_eq!(passed(&failed), Some(false));
        assert_eq!(
            message(&failed),
            "query sum(rate(http_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m])) \
             returned 0.052, not < 0.01"
        );
        let ok = judge(&gate, &[sample("", 0.001)]);
        assert_eq!(passed(&ok), Some(true));
        assert!(
            message(&ok).ends_with("returned 0.001 (< 0.01)"),
            "{}",
            message(&ok)
        );
    }

    #[test]
    fn every_sample_of_a_vector_must_hold() {
        let gate = gate("<", 5.0, NoData::Wait);
        let all_ok = judge(
            &gate,
            &[sample("{route=\"/a\"}", 1.0), sample("{route=\"/b\"}", 4.9)],
        );
        assert_eq!(passed(&all_ok), Some(true));
        assert!(
            message(&all_ok).ends_with("returned 2 samples, all < 5"),
            "{}",
            message(&all_ok)
        );
        let one_bad = judge(
            &gate,
            &[
                sample("{route=\"/a\"}", 1.0),
                sample("{route=\"/b\"}", 7.5),
                sample("{route=\"/c\"}", f64::NAN),
            ],
        );
        assert_eq!(passed(&one_bad), Some(false));
        assert!(
            message(&one_bad).ends_with("returned 7.5 for {route=\"/b\"}, not < 5 (1 of 2 samples fail)"),
            "{}",
            message(&one_bad)
        );
    }

    #[test]
    fn no_data_waits_fails_or_passes_as_asked() {
        for samples in [vec![], vec![sample("", f64::NAN)]] {
            let wait = judge(&gate("<", 0.01, NoData::Wait), &samples);
            assert!(matches!(wait, Observation::Waiting(_)), "{wait:?}");
            assert!(message(&wait).contains("waiting for data"), "{}", message(&wait));
            let fail = judge(&gate("<", 0.01, NoData::Fail), &samples);
            assert_eq!(passed(&fail), Some(false));
            assert!(message(&fail).ends_with("(noData: Fail)"), "{}", message(&fail));
            let pass = judge(&gate("<", 0.01, NoData::Pass), &samples);
            assert_eq!(passed(&pass), Some(true));
        }
        let nan = judge(&gate("<", 0.01, NoData::Wait), &[sample("", f64::NAN)]);
        assert!(message(&nan).contains("only NaN"), "{}", message(&nan));
    }

    #[test]
    fn a_bad_operator_fails_the_probe() {
        let bad = judge(&gate("≤", 0.01, NoData::Wait), &[sample("", 0.0)]);
        assert_eq!(passed(&bad), Some(false));
        assert!(
            message(&bad).starts_with("threshold.op \"≤\""),
            "{}",
            message(&bad)
        );
    }

    #[test]
    fn the_query_url_keeps_a_path_prefix() {
        assert_eq!(
            query_url("http://prometheus.monitoring:9090/").unwrap().as_str(),
            "http://prometheus.monitoring:9090/api/v1/query"
        );
        assert_eq!(
            query_url("https://example.com/prometheus").unwrap().as_str(),
            "https://example.com/prometheus/api/v1/query"
        );
        assert!(query_url("ftp://x").is_err());
        assert!(query_url("not a url").is_err());
    }
}
