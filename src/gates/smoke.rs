//! The Runbook `smoke` gate: ordered HTTP steps, each sent and judged like an `http`
//! gate (through [`HttpProber::exchange`]), stopping at the first step that fails.
//!
//! - `capture` keeps values from a step's answer once it passed: `json:DOTTED.PATH`
//!   (`json:id`, `json:items.0.id`: numeric segments index arrays; a string is taken
//!   as it is, a number, boolean, object or array as its JSON text; `null` counts as
//!   missing) or `header:NAME` (any case).
//! - A later step uses them as `{{.steps.STEP.NAME}}` in its `url`, `path`, header
//!   values and `body`, inserted as they are (no escaping). Spaces inside the braces
//!   are allowed (`{{ .steps.create.id }}`) except in `url`, whose CRD pattern refuses
//!   spaces. The grammar is [`crate::api::template_pieces`], which the Runbook's
//!   validation reads too.
//! - `eventually {within, every}` sends the step again every `every` (default 1s)
//!   until its expectations hold and its captures are found; a try starts at the
//!   latest at `within`.
//!
//! One probe of the gate runs every step once: its verdict counts towards
//! `failureThreshold`/`successThreshold` like an `http` probe's, and the next probe
//! runs them all again (a smoke test that creates an item creates one per probe).
//! Messages name the step, its request (method and URL; header values never, they may
//! carry tokens) and what came back (status and the start of the body).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::http::{Exchange, HttpProber, ProbeOutcome, json_lookup, quote_body};
use super::secret_headers::SecretHeaders;
use crate::api::{
    CaptureSource, Eventually, HttpGate, SmokeGate, SmokeStep, TemplatePiece, parse_duration, template_pieces,
};

/// Pause between tries of an `eventually` step without `every`.
const DEFAULT_EVERY: Duration = Duration::from_secs(1);
/// Added to the sum of the steps' budgets for the bound on the whole run, so that a step
/// at the end of its budget reports its own failure rather than the bound's.
const RUN_GRACE: Duration = Duration::from_secs(1);

/// The values captured so far: step name → capture name → value. Every step that ran
/// has an entry, with no captures if it takes none.
pub type Captured = BTreeMap<String, BTreeMap<String, String>>;

/// Runs the steps of `smoke` in order: one probe of the gate. `request_timeout` (the
/// gate's `timeoutSeconds`) bounds each request.
/// `secrets` holds the steps' `headersFrom` values, under `gate` (the gate's name).
pub async fn probe(
    prober: &HttpProber,
    (gate, smoke): (&str, &SmokeGate),
    secrets: &SecretHeaders,
    request_timeout: Duration,
    target_namespace: &str,
) -> ProbeOutcome {
    // `timeoutSeconds` bounds each request, not the run: an `eventually` step may keep
    // trying for its whole `within`, which the gate's timeout must not cut short. The
    // run is bounded by the sum of its steps' budgets instead (each step keeps within
    // its own; this bound only guards against a step that would not).
    let budget = run_budget(smoke, request_timeout);
    let run = run(prober, (gate, smoke), secrets, request_timeout, target_namespace);
    match tokio::time::timeout(budget + RUN_GRACE, run).await {
        Ok(outcome) => outcome,
        Err(_) => ProbeOutcome::failed(format!(
            "the {} smoke steps did not finish within {}, the sum of their budgets",
            smoke.steps.len(),
            seconds(budget)
        )),
    }
}

/// How long the steps of `smoke` may take together: the sum of [`step_budget`].
pub fn run_budget(smoke: &SmokeGate, request_timeout: Duration) -> Duration {
    smoke
        .steps
        .iter()
        .map(|step| step_budget(step, request_timeout))
        .sum()
}

/// How long one step may take: its last try starts at the latest at `within` (zero
/// without `eventually`) and its request takes at most `request_timeout`.
pub fn step_budget(step: &SmokeStep, request_timeout: Duration) -> Duration {
    let within = match retry_of(step) {
        Ok(Some(retry)) => retry.within,
        _ => Duration::ZERO,
    };
    within + request_timeout
}

async fn run(
    prober: &HttpProber,
    (gate, smoke): (&str, &SmokeGate),
    secrets: &SecretHeaders,
    request_timeout: Duration,
    target_namespace: &str,
) -> ProbeOutcome {
    let total = smoke.steps.len();
    let mut captured = Captured::new();
    let mut passed = Vec::with_capacity(total);
    for (index, step) in smoke.steps.iter().enumerate() {
        let secret_headers = secrets.of_request(gate, &step.name);
        match run_step(
            prober,
            step,
            secret_headers,
            &captured,
            request_timeout,
            target_namespace,
        )
        .await
        {
            Ok(step_passed) => {
                passed.push(step_passed.summary(&step.name));
                captured.insert(step.name.clone(), step_passed.values);
            }
            Err(StepError::Failed(problem)) => {
                return ProbeOutcome::failed(step_failed(&step.name, index, total, &problem));
            }
            // Every step's request passes the egress policy, so no captured value
            // travels where the policy would not let a request go.
            Err(StepError::Refused(problem)) => {
                return ProbeOutcome::refused(step_failed(&step.name, index, total, &problem));
            }
        }
    }
    ProbeOutcome::passed(format!("{total} steps passed: {}", passed.join(", ")))
}

/// What a passing step leaves behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepPassed {
    pub status: u16,
    /// The step's captures, by name.
    pub values: BTreeMap<String, String>,
    pub tries: u32,
    pub elapsed: Duration,
}

impl StepPassed {
    /// `create 201`, or `enriched 200 after 3 tries in 2.1s`.
    fn summary(&self, name: &str) -> String {
        if self.tries > 1 {
            format!(
                "{name} {} after {} tries in {}",
                self.status,
                self.tries,
                seconds(self.elapsed)
            )
        } else {
            format!("{name} {}", self.status)
        }
    }
}

/// Why a step did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StepError {
    /// A verdict on the answer (or no answer): the step failed.
    Failed(String),
    /// The egress policy refused the request: not tried again.
    Refused(String),
}

/// Sends the step (again, with `eventually`, until it holds or `within` has passed).
async fn run_step(
    prober: &HttpProber,
    step: &SmokeStep,
    secret_headers: &HeaderMap,
    captured: &Captured,
    request_timeout: Duration,
    target_namespace: &str,
) -> Result<StepPassed, StepError> {
    let request = substitute_request(&step.request, captured).map_err(StepError::Failed)?;
    let retry = retry_of(step).map_err(StepError::Failed)?;
    let started = Instant::now();
    let last_start = started + retry.as_ref().map_or(Duration::ZERO, |r| r.within);
    let mut tries = 0;
    loop {
        tries += 1;
        let exchange = prober
            .exchange(&request, secret_headers, request_timeout, target_namespace)
            .await;
        if exchange.outcome.refused {
            return Err(StepError::Refused(exchange.outcome.message));
        }
        let problem = match judge_try(step, exchange) {
            Ok((status, values)) => {
                return Ok(StepPassed {
                    status,
                    values,
                    tries,
                    elapsed: started.elapsed(),
                });
            }
            Err(problem) => problem,
        };
        let now = Instant::now();
        match &retry {
            Some(retry) if now < last_start => {
                tokio::time::sleep(retry.every.min(last_start - now)).await;
            }
            Some(retry) => {
                return Err(StepError::Failed(still_failing(
                    &retry.within_text,
                    tries,
                    &problem,
                )));
            }
            None => return Err(StepError::Failed(problem)),
        }
    }
}

/// A step's `eventually`, read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Retry {
    within: Duration,
    /// As the Runbook writes it, for messages.
    within_text: String,
    every: Duration,
}

fn retry_of(step: &SmokeStep) -> Result<Option<Retry>, String> {
    let Some(Eventually { within, every }) = &step.eventually else {
        return Ok(None);
    };
    let within_text = within.trim().to_string();
    let within = parse_duration(within).map_err(|e| format!("eventually.within: {e}"))?;
    let every = match every {
        Some(text) => parse_duration(text).map_err(|e| format!("eventually.every: {e}"))?,
        None => DEFAULT_EVERY,
    };
    Ok(Some(Retry {
        within,
        within_text,
        // A zero pause would send requests back to back.
        every: every.max(Duration::from_millis(10)),
    }))
}

/// The verdict on one try of `step`: the status and the captured values when the
/// answer met `expect` and every capture was found, else what was wrong.
pub fn judge_try(step: &SmokeStep, exchange: Exchange) -> Result<(u16, BTreeMap<String, String>), String> {
    if !exchange.outcome.passed {
        return Err(exchange.outcome.message);
    }
    let Some(answer) = exchange.answer else {
        // A passed exchange always has an answer; say so rather than panic.
        return Err(exchange.outcome.message);
    };
    let mut values = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, source) in &step.capture {
        match capture_value(source, &answer.headers, &answer.body) {
            Ok(value) => {
                values.insert(name.clone(), value);
            }
            Err(problem) => problems.push(format!("capture {name}: {problem}")),
        }
    }
    if problems.is_empty() {
        Ok((answer.status, values))
    } else {
        Err(format!(
            "{}: {} but {} ({})",
            answer.target,
            answer.status,
            problems.join("; "),
            quote_body(&answer.body)
        ))
    }
}

/// The value `source` (`json:DOTTED.PATH` or `header:NAME`) takes from an answer.
/// Errors say what is missing, never a header's value.
pub fn capture_value(source: &str, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    match CaptureSource::parse(source)? {
        CaptureSource::Json(path) => {
            let document: Value =
                serde_json::from_slice(body).map_err(|_| format!("json:{path}: the body is not JSON"))?;
            match json_lookup(&document, path) {
                None | Some(Value::Null) => Err(format!("json:{path} is missing")),
                Some(Value::String(text)) => Ok(text.clone()),
                Some(other) => Ok(other.to_string()),
            }
        }
        CaptureSource::Header(name) => match headers.get(name) {
            None => Err(format!("header:{name} is missing")),
            Some(value) => value
                .to_str()
                .map(str::to_string)
                .map_err(|_| format!("header:{name} is not text")),
        },
    }
}

/// `text` with every `{{.steps.STEP.NAME}}` replaced by what step `STEP` captured as
/// `NAME`; an error names the reference that points nowhere.
pub fn substitute(text: &str, captured: &Captured) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in template_pieces(text)? {
        match piece {
            TemplatePiece::Text(text) => out.push_str(text),
            TemplatePiece::Reference(reference) => {
                let Some(values) = captured.get(reference.step) else {
                    return Err(format!(
                        "{} refers to step {:?}, which did not run before this one",
                        reference.written, reference.step
                    ));
                };
                let Some(value) = values.get(reference.capture) else {
                    return Err(format!(
                        "{}: step {:?} captured no {:?}",
                        reference.written, reference.step, reference.capture
                    ));
                };
                out.push_str(value);
            }
        }
    }
    Ok(out)
}

/// The step's request with the captured values in its `url`, `path`, header values and
/// `body`. An error names the field (and a header by name, never its value).
pub fn substitute_request(request: &HttpGate, captured: &Captured) -> Result<HttpGate, String> {
    let in_field = |field: &str, text: &Option<String>| -> Result<Option<String>, String> {
        text.as_deref()
            .map(|text| substitute(text, captured).map_err(|problem| format!("{field}: {problem}")))
            .transpose()
    };
    // In field order, so the first problem reported is the first in the step.
    let url = in_field("url", &request.url)?;
    let path = in_field("path", &request.path)?;
    let mut headers = BTreeMap::new();
    for (name, value) in &request.headers {
        let value = substitute(value, captured).map_err(|problem| format!("header {name}: {problem}"))?;
        headers.insert(name.clone(), value);
    }
    let body = in_field("body", &request.body)?;
    Ok(HttpGate {
        url,
        path,
        headers,
        body,
        ..request.clone()
    })
}

/// `step enriched (2 of 3): …`: which step, and where it stands in the run.
fn step_failed(name: &str, index: usize, total: usize, problem: &str) -> String {
    format!("step {name} ({} of {total}): {problem}", index + 1)
}

/// An `eventually` step that never held: how long it was tried, and the last try.
fn still_failing(within: &str, tries: u32, last_problem: &str) -> String {
    let tries = if tries == 1 {
        "1 try".to_string()
    } else {
        format!("{tries} tries")
    };
    format!("still failing after {within} ({tries}): {last_problem}")
}

fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::gates::http::Answer;
    use reqwest::header::HeaderValue;

    fn captured(entries: &[(&str, &[(&str, &str)])]) -> Captured {
        entries
            .iter()
            .map(|(step, values)| {
                (
                    step.to_string(),
                    values
                        .iter()
                        .map(|(name, value)| (name.to_string(), value.to_string()))
                        .collect(),
                )
            })
            .collect()
    }

    fn step(yaml: &str) -> SmokeStep {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
    }

    fn answered(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> Exchange {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        Exchange {
            outcome: ProbeOutcome::passed(format!("POST http://h/items: {status}")),
            answer: Some(Answer {
                target: "POST http://h/items".into(),
                status,
                headers: map,
                body: body.as_bytes().to_vec(),
            }),
        }
    }

    #[test]
    fn references_are_replaced_with_or_without_spaces() {
        let values = captured(&[("create", &[("id", "42"), ("token", "t0k")]), ("list", &[])]);
        assert_eq!(
            substitute("/items/{{.steps.create.id}}/confirm", &values),
            Ok("/items/42/confirm".into())
        );
        assert_eq!(
            substitute("Bearer {{ .steps.create.token }}", &values),
            Ok("Bearer t0k".into())
        );
        assert_eq!(
            substitute(
                r#"{"ids": [{{.steps.create.id}}, {{.steps.create.id}}], "x": {{"y": 1}}}"#,
                &values
            ),
            Ok(r#"{"ids": [42, 42], "x": {{"y": 1}}}"#.into())
        );
        assert_eq!(substitute("no references", &values), Ok("no references".into()));
    }

    #[test]
    fn a_reference_to_nothing_names_itself() {
        let values = captured(&[("create", &[("id", "42")]), ("list", &[])]);
        assert_eq!(
            substitute("/items/{{.steps.create.idd}}", &values),
            Err(r#"{{.steps.create.idd}}: step "create" captured no "idd""#.into())
        );
        assert_eq!(
            substitute("/items/{{ .steps.confirm.id }}", &values),
            Err(
                r#"{{ .steps.confirm.id }} refers to step "confirm", which did not run before this one"#
                    .into()
            )
        );
        assert_eq!(
            substitute("{{.steps.list.first}}", &values),
            Err(r#"{{.steps.list.first}}: step "list" captured no "first""#.into())
        );
        assert!(
            substitute("{{.step.create.id}}", &values)
                .expect_err("grammar")
                .contains("is not a reference to a captured value")
        );
    }

    #[test]
    fn requests_are_substituted_field_by_field_and_header_values_never_quoted() {
        let values = captured(&[("create", &[("id", "42"), ("location", "/items/42")])]);
        let request: HttpGate = serde_saphyr::from_str(
            r#"
url: http://h:8000/api/{{.steps.create.id}}
path: /{{ .steps.create.location }}
method: POST
headers: {Authorization: "Bearer secret {{ .steps.create.id }}", Accept: application/json}
body: '{"id": "{{.steps.create.id}}"}'
expect: {status: [200]}
"#,
        )
        .expect("request");
        let sent = substitute_request(&request, &values).expect("substituted");
        assert_eq!(sent.url.as_deref(), Some("http://h:8000/api/42"));
        assert_eq!(sent.path.as_deref(), Some("//items/42"));
        assert_eq!(sent.headers["Authorization"], "Bearer secret 42");
        assert_eq!(sent.headers["Accept"], "application/json");
        assert_eq!(sent.body.as_deref(), Some(r#"{"id": "42"}"#));
        assert_eq!(sent.method.as_deref(), Some("POST"));
        assert_eq!(sent.expect, request.expect);
        // `path` joins onto the URL's path whatever slashes it starts with.
        let url = crate::gates::http::probe_url(&sent, "shop").expect("url");
        assert_eq!(url.as_str(), "http://h:8000/api/42/items/42");

        let mut broken = request.clone();
        broken
            .headers
            .insert("X-Item".into(), "secret {{.steps.gone.id}}".into());
        let problem = substitute_request(&broken, &values).expect_err("unknown step");
        assert_eq!(
            problem,
            r#"header X-Item: {{.steps.gone.id}} refers to step "gone", which did not run before this one"#
        );
        broken.path = Some("/{{.steps.create.nope}}".into());
        assert_eq!(
            substitute_request(&broken, &values),
            Err(r#"path: {{.steps.create.nope}}: step "create" captured no "nope""#.into())
        );
    }

    #[test]
    fn captures_from_json_by_dotted_path() {
        let body = br#"{"id": 42, "item": {"status": "ENRICHING", "tags": ["a", "b"]}, "items": [{"id": "x1"}], "gone": null}"#;
        let none = HeaderMap::new();
        let capture = |source: &str| capture_value(source, &none, body);
        assert_eq!(capture("json:id"), Ok("42".into()));
        assert_eq!(capture("json:item.status"), Ok("ENRICHING".into()));
        assert_eq!(capture("json:items.0.id"), Ok("x1".into()));
        assert_eq!(capture("json:item.tags"), Ok(r#"["a","b"]"#.into()));
        assert_eq!(capture("json:item.tags.1"), Ok("b".into()));
        assert_eq!(
            capture("json:items.1.id"),
            Err("json:items.1.id is missing".into())
        );
        assert_eq!(capture("json:gone"), Err("json:gone is missing".into()));
        assert_eq!(
            capture_value("json:id", &none, b"<html>"),
            Err("json:id: the body is not JSON".into())
        );
        assert!(
            capture("xpath://id")
                .expect_err("unknown source")
                .contains("is neither json:DOTTED.PATH nor header:NAME")
        );
    }

    #[test]
    fn captures_headers_by_case_insensitive_name() {
        let mut headers = HeaderMap::new();
        headers.insert("location", HeaderValue::from_static("/items/42"));
        headers.insert(
            "x-binary",
            HeaderValue::from_bytes(b"\xff\xfe").expect("opaque value"),
        );
        assert_eq!(
            capture_value("header:Location", &headers, b""),
            Ok("/items/42".into())
        );
        assert_eq!(
            capture_value("header:LOCATION", &headers, b""),
            Ok("/items/42".into())
        );
        assert_eq!(
            capture_value("header:X-Request-Id", &headers, b""),
            Err("header:X-Request-Id is missing".into())
        );
        assert_eq!(
            capture_value("header:X-Binary", &headers, b""),
            Err("header:X-Binary is not text".into())
        );
    }

    #[test]
    fn a_try_passes_with_its_captures() {
        let create =
            step("{name: create, url: 'http://h', capture: {id: 'json:id', location: 'header:Location'}}");
        let exchange = answered(201, &[("location", "/items/42")], r#"{"id": 42}"#);
        let (status, values) = judge_try(&create, exchange).expect("passes");
        assert_eq!(status, 201);
        assert_eq!(values["id"], "42");
        assert_eq!(values["location"], "/items/42");
    }

    #[test]
    fn a_missing_capture_fails_the_try_naming_it_and_what_came_back() {
        let create = step(
            "{name: create, url: 'http://h', capture: {id: 'json:item.id', location: 'header:Location'}}",
        );
        let exchange = answered(201, &[], r#"{"id": 42}"#);
        assert_eq!(
            judge_try(&create, exchange),
            Err(
                r#"POST http://h/items: 201 but capture id: json:item.id is missing; capture location: header:Location is missing (body: {"id": 42})"#
                    .into()
            )
        );
    }

    #[test]
    fn a_failed_exchange_fails_the_try_with_its_message() {
        let create = step("{name: create, url: 'http://h', capture: {id: 'json:id'}}");
        let exchange = Exchange {
            outcome: ProbeOutcome::failed("POST http://h/items: status 500, expected 2xx (body: boom)"),
            answer: None,
        };
        assert_eq!(
            judge_try(&create, exchange),
            Err("POST http://h/items: status 500, expected 2xx (body: boom)".into())
        );
    }

    #[test]
    fn messages_name_the_step_and_its_place() {
        assert_eq!(
            step_failed("enriched", 1, 3, "GET http://h/items/42: 200 but json status: …"),
            "step enriched (2 of 3): GET http://h/items/42: 200 but json status: …"
        );
        assert_eq!(
            still_failing("30s", 16, "GET http://h/items/42: 200 but json status: …"),
            "still failing after 30s (16 tries): GET http://h/items/42: 200 but json status: …"
        );
        assert_eq!(still_failing("0s", 1, "x"), "still failing after 0s (1 try): x");
        let passed = StepPassed {
            status: 200,
            values: BTreeMap::new(),
            tries: 3,
            elapsed: Duration::from_millis(2140),
        };
        assert_eq!(passed.summary("enriched"), "enriched 200 after 3 tries in 2.1s");
        assert_eq!(StepPassed { tries: 1, ..passed }.summary("create"), "create 200");
    }

    #[test]
    fn the_run_budget_is_the_sum_of_the_steps_budgets() {
        let smoke: SmokeGate = serde_saphyr::from_str(
            r#"
steps:
  - {name: create, url: 'http://h'}
  - {name: enriched, url: 'http://h', eventually: {within: 30s}}
  - {name: confirm, url: 'http://h', eventually: {within: 1m, every: 5s}}
"#,
        )
        .expect("smoke");
        let timeout = Duration::from_secs(5);
        assert_eq!(step_budget(&smoke.steps[0], timeout), Duration::from_secs(5));
        assert_eq!(step_budget(&smoke.steps[1], timeout), Duration::from_secs(35));
        assert_eq!(run_budget(&smoke, timeout), Duration::from_secs(5 + 35 + 65));
        assert_eq!(
            retry_of(&smoke.steps[1]),
            Ok(Some(Retry {
                within: Duration::from_secs(30),
                within_text: "30s".into(),
                every: DEFAULT_EVERY,
            }))
        );
        assert_eq!(
            retry_of(&smoke.steps[2]).expect("valid").expect("set").every,
            Duration::from_secs(5)
        );
        let invalid = step("{name: x, url: 'http://h', eventually: {within: soon}}");
        assert!(
            retry_of(&invalid)
                .expect_err("invalid")
                .starts_with("eventually.within: ")
        );
        assert_eq!(
            step_budget(&invalid, timeout),
            timeout,
            "fails at once, no retries"
        );
    }
}
