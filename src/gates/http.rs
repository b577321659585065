//! The Runbook `http` gate: one probe is one request whose answer is checked against
//! `expect` (status, JSON field values, body text, response headers).
//!
//! Redirects are followed only when the gate sets `followRedirects: true`: otherwise a
//! 3xx answer is judged as the status it is, and the message names its `Location`.
//! Messages quote at most [`MAX_QUOTED_CHARS`] characters of anything from a response
//! (body, JSON values, header values) and never request headers or URL credentials.
//!
//! [`evaluate_response`] and [`probe_url`] are pure; [`HttpProber`] does the I/O. Smoke
//! steps send their requests through [`HttpProber::exchange`], judged the same way.

use super::truncate;
use std::time::Duration;

use reqwest::Method;
use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::redirect;
use serde_json::Value;

use crate::api::{HttpExpect, HttpGate};
use crate::egress::{EgressPolicy, Refusal, refusal_in};
use crate::failure::error_chain;

/// Longest text from a response (body, a JSON value, header values, a `Location`)
/// quoted in a message: gate messages end up in `status` and Events.
pub const MAX_QUOTED_CHARS: usize = 200;
/// Redirects followed at most, for a gate with `followRedirects: true`.
const MAX_REDIRECTS: usize = 10;
/// Bodies are read up to this size; a health endpoint has no business sending more.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOutcome {
    pub passed: bool,
    pub message: String,
    /// The egress policy refused the request: a Runbook problem, not a verdict on the
    /// revision (never counted towards the gate's thresholds).
    pub refused: bool,
}

impl ProbeOutcome {
    pub fn passed(message: impl Into<String>) -> Self {
        Self {
            passed: true,
            message: message.into(),
            refused: false,
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            passed: false,
            message: message.into(),
            refused: false,
        }
    }
    /// Not sent: the egress policy refused where it would go.
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            passed: false,
            message: message.into(),
            refused: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProberError {
    #[error("cannot build the HTTP client for gates: {0}")]
    Client(#[source] reqwest::Error),
}

/// Sends the probes of every `http` gate through two shared connection pools: one
/// that follows redirects and one that does not (reqwest sets the policy per client).
/// Every request, every redirect hop and every address connected to passes `policy`.
#[derive(Clone, Debug)]
pub struct HttpProber {
    not_following: reqwest::Client,
    following: reqwest::Client,
    policy: EgressPolicy,
}

impl HttpProber {
    pub fn new(policy: EgressPolicy) -> Result<Self, ProberError> {
        // Not following is the default: a redirect usually means the probe hit a login
        // page or the wrong path, and a followed redirect carries the gate's custom
        // headers (reqwest drops only Authorization and cookies) to wherever it points.
        let not_following = client(&policy, redirect::Policy::none())?;
        let following = client(&policy, policy.redirect_policy(MAX_REDIRECTS))?;
        Ok(Self {
            not_following,
            following,
            policy,
        })
    }

    /// The egress policy the prober's requests pass.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// The client that follows redirects (each hop checked): `metrics` queries use it.
    pub(crate) fn following(&self) -> &reqwest::Client {
        &self.following
    }

    /// Sends one request for `gate` and judges the answer. Never errors: anything that
    /// goes wrong (bad URL, refused connection, timeout, unexpected answer) is a failed
    /// probe whose message says what. Request headers are never echoed (they may
    /// carry tokens), nor URL credentials.
    /// `secret_headers` are the gate's `headersFrom` values (see [`super::secret_headers`]).
    pub async fn probe(
        &self,
        gate: &HttpGate,
        secret_headers: &HeaderMap,
        timeout: Duration,
        target_namespace: &str,
    ) -> ProbeOutcome {
        self.exchange(gate, secret_headers, timeout, target_namespace)
            .await
            .outcome
    }

    /// [`HttpProber::probe`], keeping the answer for whoever needs more of it than the
    /// verdict (a smoke step captures values from it).
    pub async fn exchange(
        &self,
        gate: &HttpGate,
        secret_headers: &HeaderMap,
        timeout: Duration,
        target_namespace: &str,
    ) -> Exchange {
        let url = match probe_url(gate, target_namespace) {
            Ok(url) => url,
            Err(problem) => return Exchange::unanswered(problem),
        };
        let method_name = gate
            .method
            .as_deref()
            .unwrap_or("GET")
            .trim()
            .to_ascii_uppercase();
        let target = format!("{method_name} {}", display_url(&url));
        if let Err(refusal) = self.policy.check_url(&url) {
            return Exchange::refused(&method_name, &url, &refusal);
        }
        let method = match Method::from_bytes(method_name.as_bytes()) {
            Ok(method) => method,
            Err(_) => {
                return Exchange::unanswered(format!("method {method_name:?} is not an HTTP method"));
            }
        };
        let mut headers = match request_headers(gate) {
            Ok(headers) => headers,
            Err(problem) => return Exchange::unanswered(format!("{target}: {problem}")),
        };
        headers.extend(secret_headers.clone());
        let client = if gate.follow_redirects {
            &self.following
        } else {
            &self.not_following
        };
        let mut request = client.request(method, url.clone()).headers(headers);
        if let Some(body) = &gate.body {
            request = request.body(body.clone());
        }
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let answered_from = response.url().clone();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                let room = MAX_BODY_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_BODY_BYTES {
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, headers, body, answered_from))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Exchange::unanswered(format!("{target}: no answer within {}", seconds(timeout))),
            Ok(Err(error)) if error.is_timeout() => {
                Exchange::unanswered(format!("{target}: no answer within {}", seconds(timeout)))
            }
            Ok(Err(error)) => match refusal_in(&error) {
                Some(refusal) => Exchange::refused(&method_name, &url, &refusal),
                None => Exchange::unanswered(format!("{target}: {}", error_chain(&error.without_url()))),
            },
            Ok(Ok((status, headers, body, answered_from))) => {
                // Where the answer came from, when redirects led elsewhere.
                let target = if answered_from == url {
                    target
                } else {
                    format!("{target} → {}", quote(&display_url(&answered_from)))
                };
                let redirect = redirect_note(status, &headers, &answered_from);
                let outcome = match (evaluate_response(&gate.expect, status, &headers, &body), redirect) {
                    (Ok(()), None) => ProbeOutcome::passed(format!("{target}: {status}")),
                    (Ok(()), Some(note)) => ProbeOutcome::passed(format!("{target}: {status}; {note}")),
                    (Err(problem), None) => ProbeOutcome::failed(format!("{target}: {problem}")),
                    (Err(problem), Some(note)) => {
                        ProbeOutcome::failed(format!("{target}: {problem}; {note}"))
                    }
                };
                Exchange {
                    outcome,
                    answer: Some(Answer {
                        target,
                        status,
                        headers,
                        body,
                    }),
                }
            }
        }
    }
}

/// One request sent and its answer judged: the probe of an `http` gate, or one try of
/// a smoke step.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// The verdict on the answer against `expect`, and its message.
    pub outcome: ProbeOutcome,
    /// What came back, when anything did (not for a bad URL, a refused connection or a
    /// timeout).
    pub answer: Option<Answer>,
}

impl Exchange {
    fn unanswered(problem: String) -> Self {
        Self {
            outcome: ProbeOutcome::failed(problem),
            answer: None,
        }
    }

    /// Not sent (or a redirect not followed): names the method, the scheme, host and
    /// port of the request (never its path or query, which may carry captured values)
    /// and the policy's reason.
    fn refused(method: &str, url: &Url, refusal: &Refusal) -> Self {
        let origin = url.origin().ascii_serialization();
        Self {
            outcome: ProbeOutcome::refused(format!("{method} {origin}: {refusal}")),
            answer: None,
        }
    }
}

/// What came back for one request (the body up to 1 MiB).
#[derive(Clone, Debug)]
pub struct Answer {
    /// How messages name the request: `METHOD URL` without credentials, with `→ URL`
    /// when redirects led elsewhere.
    pub target: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

fn client(policy: &EgressPolicy, redirects: redirect::Policy) -> Result<reqwest::Client, ProberError> {
    // Probes target in-cluster Services or URLs the Runbook names directly, like a
    // kubelet probe: the policy's builder uses no HTTP_PROXY, which would reroute them
    // and connect for us to addresses the policy never sees.
    policy
        .client_builder()
        .use_rustls_tls()
        .redirect(redirects)
        .user_agent(concat!("bosun-gate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ProberError::Client)
}

/// For a 3xx answer with a `Location` (not followed, or past the last redirect
/// followed): where it pointed, resolved
/// against the URL that answered, without credentials and cut short.
pub fn redirect_note(status: u16, headers: &HeaderMap, answered_from: &Url) -> Option<String> {
    if !(300..400).contains(&status) {
        return None;
    }
    let location = match headers.get(reqwest::header::LOCATION).map(HeaderValue::to_str) {
        // 304 Not Modified and friends point nowhere.
        None => return None,
        Some(Err(_)) => return Some("redirect to a Location that is not text".into()),
        Some(Ok(location)) => match answered_from.join(location) {
            Ok(resolved) => display_url(&resolved),
            Err(_) => redact(location),
        },
    };
    Some(format!(
        "Location: {}, not followed (set followRedirects: true to follow it)",
        quote(&location)
    ))
}

/// Where a gate's probe goes: `url` (+ `path`), or
/// `{scheme}://{service}.{namespace}.svc[:{port}]{path}`.
pub fn probe_url(gate: &HttpGate, target_namespace: &str) -> Result<Url, String> {
    let base = match (&gate.url, &gate.service) {
        (Some(url), _) => url.clone(),
        (None, Some(service)) => {
            let scheme = gate.scheme.as_deref().unwrap_or("http");
            if scheme != "http" && scheme != "https" {
                return Err(format!("scheme {scheme:?}: expected http or https"));
            }
            let port = gate.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{service}.{target_namespace}.svc{port}")
        }
        (None, None) => return Err("http gate names neither url nor service".into()),
    };
    let mut url = Url::parse(&base).map_err(|e| format!("URL {:?} is not valid: {e}", redact(&base)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("URL scheme {:?}: expected http or https", url.scheme()));
    }
    if let Some(path) = gate.path.as_deref().filter(|p| !p.is_empty()) {
        // `path` extends the URL's own path; a query in `path` replaces the URL's.
        let (path, query) = match path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path, None),
        };
        let joined = format!(
            "{}/{}",
            url.path().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        url.set_path(&joined);
        if query.is_some() {
            url.set_query(query);
        }
    }
    Ok(url)
}

fn request_headers(gate: &HttpGate) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, value) in &gate.headers {
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} is not valid"))?;
        // The value may be a token: say which header, never what it holds.
        let header_value = HeaderValue::from_str(value)
            .map_err(|_| format!("value of header {name:?} is not a valid header value"))?;
        headers.insert(header_name, header_value);
    }
    Ok(headers)
}

/// Checks an answer against `expect`; the error lists every mismatch and quotes the
/// start of the body.
pub fn evaluate_response(
    expect: &HttpExpect,
    status: u16,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    let mut problems = Vec::new();
    let status_ok = if expect.status.is_empty() {
        (200..300).contains(&status)
    } else {
        expect.status.contains(&status)
    };
    if !status_ok {
        let wanted = if expect.status.is_empty() {
            "2xx".to_string()
        } else {
            expect
                .status
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        };
        problems.push(format!("status {status}, expected {wanted}"));
    }
    for (name, expected) in &expect.headers {
        let values: Vec<&str> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| v.to_str().unwrap_or("<not text>"))
            .collect();
        if !values.iter().any(|v| v.trim() == expected.trim()) {
            let got = if values.is_empty() {
                "none".to_string()
            } else {
                quote(
                    &values
                        .iter()
                        .map(|v| format!("{v:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            };
            problems.push(format!("header {name}: expected {expected:?}, got {got}"));
        }
    }
    let text = String::from_utf8_lossy(body);
    if let Some(needle) = &expect.contains
        && !text.contains(needle.as_str())
    {
        problems.push(format!("body does not contain {needle:?}"));
    }
    if !expect.json.is_empty() {
        match serde_json::from_slice::<Value>(body) {
            Err(error) => problems.push(format!("body is not JSON ({error})")),
            Ok(document) => {
                for (path, expected) in &expect.json {
                    match json_lookup(&document, path) {
                        None => problems.push(format!("json {path}: expected {expected}, missing")),
                        Some(actual) if !json_matches(expected, actual) => problems.push(format!(
                            "json {path}: expected {expected}, got {}",
                            quote(&actual.to_string())
                        )),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let problems = problems.join("; ");
    // The status, when it is not itself a problem, is still what came back.
    let problems = if status_ok {
        format!("{status} but {problems}")
    } else {
        problems
    };
    Err(format!("{problems} ({})", quote_body(body)))
}

/// The start of a body as messages quote it: `body: …` (at most [`MAX_QUOTED_CHARS`]),
/// or `empty body`.
pub fn quote_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "empty body".to_string()
    } else {
        format!("body: {}", quote(text))
    }
}

/// The value at a dotted path: `status`, `checks.database`, `items.0.id`. An object
/// key that itself contains dots is found too (`"checks.database": …`).
pub fn json_lookup<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    let path = path.strip_prefix("$.").unwrap_or(path);
    if path.is_empty() || path == "$" {
        return Some(document);
    }
    let segments: Vec<&str> = path.split('.').collect();
    lookup_segments(document, &segments)
}

fn lookup_segments<'a>(value: &'a Value, segments: &[&str]) -> Option<&'a Value> {
    let Some(first) = segments.first() else {
        return Some(value);
    };
    match value {
        // Longest key first, so a literal dotted key wins over nesting.
        Value::Object(map) => (1..=segments.len()).rev().find_map(|taken| {
            map.get(&segments[..taken].join("."))
                .and_then(|child| lookup_segments(child, &segments[taken..]))
        }),
        Value::Array(items) => first
            .parse::<usize>()
            .ok()
            .and_then(|index| items.get(index))
            .and_then(|child| lookup_segments(child, &segments[1..])),
        _ => None,
    }
}

/// Whether a response value equals what the Runbook expects. Runbooks are YAML, where
/// `ok`, `200` and `true` are easy to write with or without quotes, so scalars also
/// match by their text: `"200"` matches `200`, `"true"` matches `true`; numbers compare
/// numerically (`1` matches `1.0`).
pub fn json_matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(e), Value::Number(a)) => numbers_equal(e, a),
        (Value::String(e), Value::String(a)) => e == a,
        (Value::String(text), Value::Number(number)) | (Value::Number(number), Value::String(text)) => text
            .trim()
            .parse::<serde_json::Number>()
            .is_ok_and(|parsed| numbers_equal(&parsed, number)),
        (Value::String(text), Value::Bool(flag)) | (Value::Bool(flag), Value::String(text)) => {
            text.trim() == flag.to_string()
        }
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(e, a)| json_matches(e, a))
        }
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(key, e)| a.get(key).is_some_and(|a| json_matches(e, a)))
        }
        _ => expected == actual,
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a == b;
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a == b;
    }
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// The URL without user and password, for messages.
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() || shown.password().is_some() {
        // Both only fail for URLs that cannot have credentials in the first place.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
    }
    shown.to_string()
}

fn redact(text: &str) -> String {
    match Url::parse(text) {
        Ok(url) => display_url(&url),
        // Unparseable: cut any `user:pass@` part by hand.
        Err(_) => match (text.find("://"), text.rfind('@')) {
            (Some(scheme_end), Some(at)) if at > scheme_end => {
                format!("{}{}", &text[..scheme_end + 3], &text[at + 1..])
            }
            _ => text.to_string(),
        },
    }
}

/// Text from a response as a message quotes it: at most [`MAX_QUOTED_CHARS`].
fn quote(text: &str) -> String {
    truncate(text, MAX_QUOTED_CHARS)
}

fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expect(yaml: &str) -> HttpExpect {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn gate(yaml: &str) -> HttpGate {
        serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("fixture does not parse: {e}\n{yaml}"))
    }

    #[test]
    fn default_status_is_any_2xx() {
        let none = HttpExpect::default();
        assert_eq!(evaluate_response(&none, 200, &HeaderMap::new(), b""), Ok(()));
        assert_eq!(evaluate_response(&none, 204, &HeaderMap::new(), b""), Ok(()));
        assert_eq!(
            evaluate_response(&none, 503, &HeaderMap::new(), b"down"),
            Err("status 503, expected 2xx (body: down)".into())
        );
        assert_eq!(
            evaluate_response(&none, 302, &HeaderMap::new(), b""),
            Err("status 302, expected 2xx (empty body)".into())
        );
    }

    #[test]
    fn listed_statuses_only() {
        let listed = expect("status: [200, 401]");
        assert_eq!(evaluate_response(&listed, 401, &HeaderMap::new(), b""), Ok(()));
        assert_eq!(
            evaluate_response(&listed, 204, &HeaderMap::new(), b""),
            Err("status 204, expected 200 or 401 (empty body)".into())
        );
    }

    #[test]
    fn json_fields_by_dotted_path() {
        let wanted = expect(
            r#"
json:
  status: ok
  checks.database: connected
  items.0.id: 7
"#,
        );
        let good = br#"{"status":"ok","checks":{"database":"connected"},"items":[{"id":7},{"id":8}]}"#;
        assert_eq!(evaluate_response(&wanted, 200, &HeaderMap::new(), good), Ok(()));

        let bad = br#"{"status":"degraded","checks":{"database":"down"},"items":[]}"#;
        let error = evaluate_response(&wanted, 200, &HeaderMap::new(), bad).expect_err("mismatch");
        assert!(
            error.contains(r#"json status: expected "ok", got "degraded""#),
            "{error}"
        );
        assert!(
            error.contains(r#"json checks.database: expected "connected", got "down""#),
            "{error}"
        );
        assert!(error.contains("json items.0.id: expected 7, missing"), "{error}");
        assert!(
            error.ends_with(r#"(body: {"status":"degraded","checks":{"database":"down"},"items":[]})"#),
            "{error}"
        );
    }

    #[test]
    fn non_json_body_when_json_is_expected() {
        let wanted = expect("json: {status: ok}");
        let error =
            evaluate_response(&wanted, 200, &HeaderMap::new(), b"<html>ok</html>").expect_err("not JSON");
        assert!(error.starts_with("200 but body is not JSON"), "{error}");
        assert!(error.ends_with("(body: <html>ok</html>)"), "{error}");
    }

    #[test]
    fn scalar_matching_rules() {
        // Numbers numerically.
        assert!(json_matches(&json!(1), &json!(1.0)));
        assert!(!json_matches(&json!(1), &json!(2)));
        assert!(json_matches(&json!(u64::MAX), &json!(u64::MAX)));
        // Strings by text against numbers and booleans, both ways.
        assert!(json_matches(&json!("200"), &json!(200)));
        assert!(json_matches(&json!("1.5"), &json!(1.5)));
        assert!(json_matches(&json!(200), &json!("200")));
        assert!(json_matches(&json!("true"), &json!(true)));
        assert!(json_matches(&json!(false), &json!("false")));
        assert!(!json_matches(&json!("ok"), &json!(0)));
        assert!(!json_matches(&json!("true"), &json!(false)));
        // Strings exactly.
        assert!(json_matches(&json!("ok"), &json!("ok")));
        assert!(!json_matches(&json!("ok"), &json!("OK")));
        // Null and mismatched kinds.
        assert!(json_matches(&json!(null), &json!(null)));
        assert!(!json_matches(&json!("null"), &json!(null)));
        assert!(!json_matches(&json!(1), &json!([1])));
    }

    #[test]
    fn structured_values_match_element_wise() {
        assert!(json_matches(
            &json!({"a": "1", "b": [true]}),
            &json!({"b": [true], "a": 1})
        ));
        assert!(!json_matches(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!json_matches(&json!([1, 2]), &json!([1])));
    }

    #[test]
    fn yaml_values_compare_with_json_values() {
        let wanted = expect("json: {status: ok, code: 200, ready: true, ratio: 0.5, version: \"2\"}");
        let body = br#"{"status":"ok","code":200,"ready":true,"ratio":0.50,"version":2}"#;
        assert_eq!(evaluate_response(&wanted, 200, &HeaderMap::new(), body), Ok(()));
    }

    #[test]
    fn lookup_paths() {
        let document = json!({"a": {"b": [10, {"c": "x"}]}, "d.e": 1, "top": null});
        assert_eq!(json_lookup(&document, "a.b.0"), Some(&json!(10)));
        assert_eq!(json_lookup(&document, "a.b.1.c"), Some(&json!("x")));
        assert_eq!(json_lookup(&document, "$.a.b.1.c"), Some(&json!("x")));
        assert_eq!(json_lookup(&document, "d.e"), Some(&json!(1)));
        assert_eq!(json_lookup(&document, "top"), Some(&json!(null)));
        assert_eq!(json_lookup(&document, "a.b.2"), None);
        assert_eq!(json_lookup(&document, "a.b.x"), None);
        assert_eq!(json_lookup(&document, "a.b.0.deeper"), None);
        assert_eq!(json_lookup(&document, "missing"), None);
        assert_eq!(json_lookup(&document, ""), Some(&document));
    }

    #[test]
    fn contains_text() {
        let wanted = expect("contains: all good");
        assert_eq!(
            evaluate_response(&wanted, 200, &HeaderMap::new(), b"we are all good here"),
            Ok(())
        );
        assert_eq!(
            evaluate_response(&wanted, 200, &HeaderMap::new(), b"bad"),
            Err(r#"200 but body does not contain "all good" (body: bad)"#.into())
        );
    }

    #[test]
    fn headers_by_case_insensitive_name() {
        let wanted = expect("headers: {Access-Control-Allow-Origin: 'https://shop.example'}");
        let good = headers(&[("access-control-allow-origin", "https://shop.example")]);
        assert_eq!(evaluate_response(&wanted, 200, &good, b""), Ok(()));
        let wrong = headers(&[("access-control-allow-origin", "*")]);
        assert_eq!(
            evaluate_response(&wanted, 200, &wrong, b""),
            Err(r#"200 but header Access-Control-Allow-Origin: expected "https://shop.example", got "*" (empty body)"#.into())
        );
        assert_eq!(
            evaluate_response(&wanted, 200, &HeaderMap::new(), b""),
            Err("200 but header Access-Control-Allow-Origin: expected \"https://shop.example\", got none (empty body)".into())
        );
        // Any of several values of one header may match.
        let several = headers(&[("vary", "Origin"), ("vary", "Accept")]);
        assert_eq!(
            evaluate_response(&expect("headers: {Vary: Accept}"), 200, &several, b""),
            Ok(())
        );
    }

    #[test]
    fn long_bodies_are_cut_in_messages() {
        let body = "x".repeat(1000);
        let error = evaluate_response(&HttpExpect::default(), 500, &HeaderMap::new(), body.as_bytes())
            .expect_err("status 500");
        let quoted = error.split("(body: ").nth(1).expect("body quoted");
        assert_eq!(quoted, format!("{}…)", "x".repeat(MAX_QUOTED_CHARS)));
    }

    #[test]
    fn long_json_and_header_values_are_cut_in_messages() {
        let long = "y".repeat(1000);
        let body = json!({"status": long}).to_string();
        let error = evaluate_response(
            &expect("json: {status: ok}"),
            200,
            &HeaderMap::new(),
            body.as_bytes(),
        )
        .expect_err("mismatch");
        let got = error
            .split("got ")
            .nth(1)
            .and_then(|rest| rest.split(" (body: ").next())
            .expect("value quoted");
        assert_eq!(got, format!("\"{}…", "y".repeat(MAX_QUOTED_CHARS - 1)));

        let mut answered = HeaderMap::new();
        answered.insert("x-version", HeaderValue::from_str(&long).expect("header value"));
        let error = evaluate_response(&expect("headers: {X-Version: '2'}"), 200, &answered, b"")
            .expect_err("mismatch");
        assert_eq!(
            error,
            format!(
                "200 but header X-Version: expected \"2\", got \"{}… (empty body)",
                "y".repeat(MAX_QUOTED_CHARS - 1)
            )
        );
    }

    #[test]
    fn redirect_notes_resolve_the_location_without_credentials() {
        let from = Url::parse("http://h:8080/app/health").expect("url");
        assert_eq!(redirect_note(200, &headers(&[("location", "/x")]), &from), None);
        assert_eq!(
            redirect_note(302, &headers(&[("location", "../login?next=1")]), &from),
            Some(
                "Location: http://h:8080/login?next=1, not followed (set followRedirects: true to follow it)"
                    .into()
            )
        );
        assert_eq!(
            redirect_note(301, &headers(&[("location", "https://u:hunter2@other/")]), &from),
            Some("Location: https://other/, not followed (set followRedirects: true to follow it)".into())
        );
        assert_eq!(redirect_note(304, &HeaderMap::new(), &from), None);
    }

    #[test]
    fn all_mismatches_are_listed() {
        let wanted = expect("{status: [200], contains: ok, json: {status: ok}}");
        let error = evaluate_response(&wanted, 500, &HeaderMap::new(), br#"{"status":"bad"}"#)
            .expect_err("all wrong");
        assert_eq!(
            error,
            r#"status 500, expected 200; body does not contain "ok"; json status: expected "ok", got "bad" (body: {"status":"bad"})"#
        );
    }

    #[test]
    fn url_from_url_and_path() {
        let cases = [
            ("url: http://h:8080", "http://h:8080/"),
            ("{url: 'http://h:8080', path: /health}", "http://h:8080/health"),
            ("{url: 'http://h:8080/', path: /health}", "http://h:8080/health"),
            (
                "{url: 'http://h:8080/api', path: health}",
                "http://h:8080/api/health",
            ),
            ("{url: 'http://h/x?y=1'}", "http://h/x?y=1"),
            ("{url: 'http://h/x?y=1', path: health}", "http://h/x/health?y=1"),
            (
                "{url: 'http://h', path: '/health?full=1'}",
                "http://h/health?full=1",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(
                probe_url(&gate(yaml), "shop").map(|u| u.to_string()),
                Ok(want.to_string()),
                "{yaml}"
            );
        }
    }

    #[test]
    fn url_from_service_in_the_target_namespace() {
        let cases = [
            (
                "{service: backend, port: 8080, path: /health}",
                "http://backend.shop.svc:8080/health",
            ),
            (
                "{service: backend, port: 8443, scheme: https, path: health}",
                "https://backend.shop.svc:8443/health",
            ),
            ("{service: backend}", "http://backend.shop.svc/"),
        ];
        for (yaml, want) in cases {
            assert_eq!(
                probe_url(&gate(yaml), "shop").map(|u| u.to_string()),
                Ok(want.to_string()),
                "{yaml}"
            );
        }
    }

    #[test]
    fn unusable_urls_are_explained() {
        assert_eq!(
            probe_url(&gate("{path: /health}"), "shop"),
            Err("http gate names neither url nor service".into())
        );
        assert_eq!(
            probe_url(&gate("{service: b, scheme: ftp}"), "shop"),
            Err(r#"scheme "ftp": expected http or https"#.into())
        );
        assert_eq!(
            probe_url(&gate("{url: 'ftp://h/x'}"), "shop"),
            Err(r#"URL scheme "ftp": expected http or https"#.into())
        );
        let error = probe_url(&gate("{url: 'http://user:hunter2@[::1'}"), "shop").expect_err("invalid");
        assert!(error.starts_with("URL \"http://[::1\" is not valid"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn credentials_never_shown() {
        let url = Url::parse("https://user:hunter2@h/health").expect("url");
        assert_eq!(display_url(&url), "https://h/health");
    }

    #[test]
    fn invalid_request_headers_name_the_header_not_the_value() {
        let bad_value = gate("{url: 'http://h', headers: {Authorization: \"Bearer a\\nb\"}}");
        assert_eq!(
            request_headers(&bad_value),
            Err(r#"value of header "Authorization" is not a valid header value"#.into())
        );
        let bad_name = gate("{url: 'http://h', headers: {'bad name': x}}");
        assert_eq!(
            request_headers(&bad_name),
            Err(r#"header name "bad name" is not valid"#.into())
        );
    }
}
