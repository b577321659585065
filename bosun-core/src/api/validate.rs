//! Is a Runbook one this controller can carry out? [`RunbookSpec::validate`] answers
//! with every problem found, each naming the field (`spec.gates[1].http.url`) and what
//! to do about it. Pure: the controller calls it on every Runbook it reads and blocks
//! the app on a problem instead of holding it against a revision.
//!
//! The CRD schema refuses most of this at `kubectl apply` time; validating here too
//! covers what reaches the controller past that schema (see the module doc of
//! `runbook.rs`).

use std::collections::BTreeMap;
use std::fmt;

use super::{
    ClusterRunbookSpec, EnvRule, Gate, HTTP_METHODS, HttpExpect, HttpGate, PROBE_KINDS, RunbookSpec,
    SmokeGate, SmokeStep, parse_duration,
};

/// One thing wrong with a Runbook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunbookProblem {
    /// Where, as a path into the resource: `spec.gates[1].http.url`.
    pub field: String,
    /// What is wrong and how to put it right.
    pub message: String,
}

impl RunbookProblem {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for RunbookProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem on one line, for a condition message or an Event:
/// `spec.verifyWindow: …; spec.gates[0]: …`.
pub fn describe_problems(problems: &[RunbookProblem]) -> String {
    problems
        .iter()
        .map(RunbookProblem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl RunbookSpec {
    /// Checks everything the controller relies on when it verifies a revision with
    /// this Runbook; `Err` lists every problem, in field order.
    pub fn validate(&self) -> Result<(), Vec<RunbookProblem>> {
        let mut problems = Vec::new();
        check_durations(self, &mut problems);
        let mut first_of_name: BTreeMap<&str, usize> = BTreeMap::new();
        for (index, gate) in self.gates.iter().enumerate() {
            let at = format!("spec.gates[{index}]");
            if !gate.name.trim().is_empty()
                && let Some(first) = first_of_name.insert(gate.name.as_str(), index)
            {
                first_of_name.insert(gate.name.as_str(), first);
                problems.push(RunbookProblem::new(
                    format!("{at}.name"),
                    format!(
                        "{:?} is already the name of spec.gates[{first}]; give each gate its own name",
                        gate.name
                    ),
                ));
            }
            check_gate(gate, &at, &mut problems);
        }
        if let Some(max_restarts) = self.workload_gate.as_ref().and_then(|w| w.max_restarts)
            && max_restarts < 0
        {
            problems.push(RunbookProblem::new(
                "spec.workloadGate.maxRestarts",
                format!("{max_restarts} is negative; use 0 or more"),
            ));
        }
        check_env(self, &mut problems);
        check_jobs(self, &mut problems);
        check_notify(self, &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl ClusterRunbookSpec {
    /// The rules of [`RunbookSpec::validate`] (a ClusterRunbook has the same fields,
    /// flattened into its `spec`, so the paths are the same), and no inline
    /// credentials ([`cluster_credential_problems`]).
    pub fn validate(&self) -> Result<(), Vec<RunbookProblem>> {
        let mut problems = self.runbook.validate().err().unwrap_or_default();
        problems.extend(cluster_credential_problems(&self.runbook));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Request headers that carry credentials, by name (lower case), or by a part of it.
const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];
const CREDENTIAL_HEADER_PARTS: &[&str] = &[
    "token",
    "secret",
    "key",
    "auth",
    "password",
    "session",
    "credential",
];
/// Authentication schemes a credential header may name besides its references.
const AUTH_SCHEMES: &[&str] = &["bearer", "basic", "token", "digest"];

/// A ClusterRunbook's gates probe targets each app's tenant controls (its Services, its
/// URLs), so a credential written in it would be handed to every tenant: a header that
/// carries one (Authorization, Cookie, X-Api-Key, …) may hold only references to values
/// a smoke step captured (`Bearer {{.steps.login.token}}`), and a URL no user info.
/// A credential a gate needs comes from a Secret of the app's own namespace
/// (`headersFrom`), read as the app's identity.
pub fn cluster_credential_problems(spec: &RunbookSpec) -> Vec<RunbookProblem> {
    let mut problems = Vec::new();
    let mut check = |request: &HttpGate, at: String| {
        for (name, value) in &request.headers {
            let lower = name.to_ascii_lowercase();
            let credential = CREDENTIAL_HEADERS.contains(&lower.as_str())
                || CREDENTIAL_HEADER_PARTS.iter().any(|part| lower.contains(part));
            if !credential {
                continue;
            }
            let literal: String = match super::template_pieces(value) {
                Ok(pieces) => pieces
                    .into_iter()
                    .filter_map(|piece| match piece {
                        super::TemplatePiece::Text(text) => Some(text.to_string()),
                        super::TemplatePiece::Reference(_) => None,
                    })
                    .collect(),
                Err(_) => value.clone(),
            };
            let literal = literal
                .split_whitespace()
                .filter(|word| !AUTH_SCHEMES.contains(&word.to_ascii_lowercase().as_str()))
                .count();
            if literal > 0 {
                // Never quote the value.
                problems.push(RunbookProblem::new(
                    format!("{at}.headers[{name:?}]"),
                    "a ClusterRunbook carries no credentials to the apps it verifies (their targets are \
                     their tenants'): take the value from a Secret of the app's namespace with \
                     headersFrom, or use only values captured by an earlier smoke step",
                ));
            }
        }
        if let Some(url) = &request.url
            && let Some((_, rest)) = url.split_once("://")
            && rest
                .split(['/', '?', '#'])
                .next()
                .is_some_and(|authority| authority.contains('@'))
        {
            problems.push(RunbookProblem::new(
                format!("{at}.url"),
                "a ClusterRunbook carries no credentials to the apps it verifies: remove the user info \
                 (user:password@) from the URL",
            ));
        }
    };
    for (index, gate) in spec.gates.iter().enumerate() {
        if let Some(http) = &gate.http {
            check(http, format!("spec.gates[{index}].http"));
        }
        if let Some(smoke) = &gate.smoke {
            for (step, smoke_step) in smoke.steps.iter().enumerate() {
                check(
                    &smoke_step.request,
                    format!("spec.gates[{index}].smoke.steps[{step}]"),
                );
            }
        }
    }
    problems
}

fn check_durations(spec: &RunbookSpec, problems: &mut Vec<RunbookProblem>) {
    // `verify_window()` and `progress_deadline()` prefix their errors with the field.
    let window = spec.verify_window().map_err(|e| problem_from_prefixed(&e));
    let deadline = spec.progress_deadline().map_err(|e| problem_from_prefixed(&e));
    match (window, deadline) {
        (Ok(window), Ok(deadline)) if window >= deadline => {
            let shown = |value: &Option<String>, default: &str| match value {
                Some(text) => text.clone(),
                None => format!("{default}, the default"),
            };
            problems.push(RunbookProblem::new(
                "spec.verifyWindow",
                format!(
                    "{} is not shorter than progressDeadline ({}): gates could never pass for the whole window \
                     before the deadline; shorten verifyWindow or lengthen progressDeadline",
                    shown(&spec.verify_window, "60s"),
                    shown(&spec.progress_deadline, "10m"),
                ),
            ));
        }
        (window, deadline) => problems.extend(window.err().into_iter().chain(deadline.err())),
    }
}

/// `"spec.verifyWindow: invalid duration …"` → field and message.
fn problem_from_prefixed(error: &str) -> RunbookProblem {
    match error.split_once(": ") {
        Some((field, message)) => {
            RunbookProblem::new(field, format!("{message}; write it like 90s, 5m or 1h30m"))
        }
        None => RunbookProblem::new("spec", error),
    }
}

fn check_gate(gate: &Gate, at: &str, problems: &mut Vec<RunbookProblem>) {
    if gate.name.trim().is_empty() {
        problems.push(RunbookProblem::new(
            format!("{at}.name"),
            "is empty; name the gate (status and events report it by name)",
        ));
    }
    let counts = [
        ("periodSeconds", gate.period_seconds),
        ("timeoutSeconds", gate.timeout_seconds),
        ("failureThreshold", gate.failure_threshold),
        ("successThreshold", gate.success_threshold),
    ];
    for (field, value) in counts {
        if value == Some(0) {
            problems.push(RunbookProblem::new(
                format!("{at}.{field}"),
                "is 0; use 1 or more, or leave it out for the default",
            ));
        }
    }
    let known = PROBE_KINDS.join(", ");
    // Fields serde did not recognise: a probe kind of a newer bosun, or a typo that
    // reached the controller past an older schema.
    for field in gate.unknown_fields.keys() {
        problems.push(RunbookProblem::new(
            format!("{at}.{field}"),
            format!(
                "is not a field of a gate this controller knows; if it is a probe kind, this controller \
                 can evaluate only: {known} (a newer bosun may know more)"
            ),
        ));
    }
    let mut kinds: Vec<&str> = Vec::new();
    for (kind, set) in [
        ("http", gate.http.is_some()),
        ("smoke", gate.smoke.is_some()),
        ("logs", gate.logs.is_some()),
        ("metrics", gate.metrics.is_some()),
    ] {
        if set {
            kinds.push(kind);
        }
    }
    match kinds.as_slice() {
        [] if gate.unknown_fields.is_empty() => problems.push(RunbookProblem::new(
            at,
            format!("has no probe; set exactly one of: {known}"),
        )),
        // Already reported as unknown fields above.
        [] => {}
        [_] => {}
        several => problems.push(RunbookProblem::new(
            at,
            format!("has {} probes; set exactly one", several.join(" and ")),
        )),
    }
    if let Some(http) = &gate.http {
        check_http(http, &format!("{at}.http"), problems);
    }
    if let Some(smoke) = &gate.smoke {
        check_smoke(smoke, &format!("{at}.smoke"), problems);
    }
    if let Some(logs) = &gate.logs {
        check_logs(logs, &format!("{at}.logs"), problems);
    }
    if let Some(metrics) = &gate.metrics {
        check_metrics(metrics, &format!("{at}.metrics"), problems);
    }
}

/// A `logs` gate: a workload name, a pattern (compiled by the controller, which has a
/// regex engine), a duration. A gate the controller cannot evaluate must be refused
/// here, not found out while a revision is verified.
fn check_logs(logs: &super::LogsGate, at: &str, problems: &mut Vec<RunbookProblem>) {
    if logs.workload.trim().is_empty() {
        problems.push(RunbookProblem::new(
            format!("{at}.workload"),
            "is empty; name the Deployment, StatefulSet or DaemonSet whose pods must log the line",
        ));
    }
    if logs.pattern.is_empty() {
        problems.push(RunbookProblem::new(
            format!("{at}.pattern"),
            "is empty; give the regular expression a log line must match",
        ));
    }
    if let Some(within) = &logs.within
        && let Err(error) = parse_duration(within)
    {
        problems.push(RunbookProblem::new(format!("{at}.within"), error));
    }
}

/// A `metrics` gate: a Prometheus URL, a query, a comparison the controller knows.
fn check_metrics(metrics: &super::MetricsGate, at: &str, problems: &mut Vec<RunbookProblem>) {
    if let Some(problem) = url_problem(&metrics.prometheus) {
        problems.push(RunbookProblem::new(format!("{at}.prometheus"), problem));
    }
    if metrics.query.trim().is_empty() {
        problems.push(RunbookProblem::new(
            format!("{at}.query"),
            "is empty; give the PromQL query whose samples are compared",
        ));
    }
    if !["<", "<=", ">", ">=", "=="].contains(&metrics.threshold.op.as_str()) {
        problems.push(RunbookProblem::new(
            format!("{at}.threshold.op"),
            format!("{:?} is not one of <, <=, >, >=, ==", metrics.threshold.op),
        ));
    }
    if !metrics.threshold.value.is_finite() {
        problems.push(RunbookProblem::new(
            format!("{at}.threshold.value"),
            "is not a finite number",
        ));
    }
}

/// `spec.backup` and `spec.migrate`: a container to run (`from` or `image`), a command,
/// a timeout; a `Downgrade` policy needs the command that downgrades.
fn check_jobs(spec: &RunbookSpec, problems: &mut Vec<RunbookProblem>) {
    let steps = [
        ("spec.backup", spec.backup.as_ref().map(|b| &b.job)),
        ("spec.migrate", spec.migrate.as_ref().map(|m| &m.job)),
    ];
    for (at, job) in steps {
        let Some(job) = job else { continue };
        if job.from.is_none() && job.image.is_none() {
            problems.push(RunbookProblem::new(
                at,
                "has neither `from` (a workload of the revision whose container the Job copies) nor `image`; set one",
            ));
        }
        if job
            .from
            .as_ref()
            .is_some_and(|from| from.workload.trim().is_empty())
        {
            problems.push(RunbookProblem::new(format!("{at}.from.workload"), "is empty"));
        }
        if job.command.is_empty() && job.args.is_empty() && job.from.is_none() {
            problems.push(RunbookProblem::new(
                format!("{at}.command"),
                "is empty; with `image` alone the Job would run the image's default entrypoint, say what to run",
            ));
        }
        if let Err(error) = job.timeout() {
            problems.push(RunbookProblem::new(format!("{at}.timeout"), error));
        }
        if job.backoff_limit.is_some_and(|limit| limit < 0) {
            problems.push(RunbookProblem::new(
                format!("{at}.backoffLimit"),
                "is negative; use 0 or more",
            ));
        }
    }
    if let Some(rollback) = spec.migrate.as_ref().and_then(|m| m.rollback.as_ref())
        && rollback.policy == super::MigrationRollbackPolicy::Downgrade
        && rollback.command.is_empty()
        && rollback.args.is_empty()
    {
        problems.push(RunbookProblem::new(
            "spec.migrate.rollback.command",
            "is empty; the Downgrade policy runs this command (e.g. alembic downgrade -1) with the failed revision's image",
        ));
    }
}

/// `spec.notify`: each receiver named once, with exactly one of `url` and `urlFrom`.
fn check_notify(spec: &RunbookSpec, problems: &mut Vec<RunbookProblem>) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, receiver) in spec.notify.iter().enumerate() {
        let at = format!("spec.notify[{index}]");
        if receiver.name.trim().is_empty() {
            problems.push(RunbookProblem::new(
                format!("{at}.name"),
                "is empty; name the receiver",
            ));
        } else if let Some(first) = seen.insert(receiver.name.as_str(), index) {
            seen.insert(receiver.name.as_str(), first);
            problems.push(RunbookProblem::new(
                format!("{at}.name"),
                format!("{:?} is already the name of spec.notify[{first}]", receiver.name),
            ));
        }
        match (&receiver.url, &receiver.url_from) {
            (Some(_), Some(_)) => problems.push(RunbookProblem::new(at, "has both url and urlFrom; set one")),
            (None, None) => problems.push(RunbookProblem::new(
                at,
                "has neither url nor urlFrom (a Secret key holding the URL); set one",
            )),
            (Some(url), None) => {
                if let Some(problem) = url_problem(url) {
                    problems.push(RunbookProblem::new(format!("{at}.url"), problem));
                }
            }
            (None, Some(_)) => {}
        }
    }
}

fn check_http(http: &HttpGate, at: &str, problems: &mut Vec<RunbookProblem>) {
    match (&http.url, &http.service) {
        (Some(_), Some(_)) => problems.push(RunbookProblem::new(
            at,
            "sets both url and service; set url, or service and port",
        )),
        (None, None) => problems.push(RunbookProblem::new(
            at,
            "names neither url nor service; set url, or service and port",
        )),
        (Some(url), None) => {
            if let Some(problem) = url_problem(url) {
                problems.push(RunbookProblem::new(format!("{at}.url"), problem));
            }
            for (field, set) in [("port", http.port.is_some()), ("scheme", http.scheme.is_some())] {
                if set {
                    problems.push(RunbookProblem::new(
                        format!("{at}.{field}"),
                        format!("applies only with service; with url, write the {field} into the URL"),
                    ));
                }
            }
        }
        (None, Some(service)) => {
            if !is_service_name(service) {
                problems.push(RunbookProblem::new(
                    format!("{at}.service"),
                    format!(
                        "{service:?} is not a Service name: lowercase letters, digits and '-', starting with \
                         a letter, at most 63 characters"
                    ),
                ));
            }
            if http.port.is_none() {
                problems.push(RunbookProblem::new(
                    format!("{at}.port"),
                    "is required with service: the port of the Service to probe",
                ));
            }
            if let Some(scheme) = &http.scheme
                && scheme != "http"
                && scheme != "https"
            {
                problems.push(RunbookProblem::new(
                    format!("{at}.scheme"),
                    format!("{scheme:?} is not http or https"),
                ));
            }
        }
    }
    if http.port == Some(0) {
        problems.push(RunbookProblem::new(
            format!("{at}.port"),
            "0 is not a port; use 1 to 65535",
        ));
    }
    if let Some(method) = &http.method
        && !HTTP_METHODS.contains(&method.as_str())
    {
        let hint = if HTTP_METHODS.contains(&method.to_ascii_uppercase().as_str()) {
            format!(
                "; methods are case-sensitive: write {}",
                method.to_ascii_uppercase()
            )
        } else {
            String::new()
        };
        problems.push(RunbookProblem::new(
            format!("{at}.method"),
            format!(
                "{method:?} is not a method a gate sends; use one of {}{hint}",
                HTTP_METHODS.join(", ")
            ),
        ));
    }
    if let Some(path) = &http.path
        && !path.starts_with('/')
    {
        problems.push(RunbookProblem::new(
            format!("{at}.path"),
            format!(
                "{path:?} does not start with '/'; write /{}",
                path.trim_start_matches('/')
            ),
        ));
    }
    for (name, value) in &http.headers {
        let field = format!("{at}.headers[{name:?}]");
        if !is_token(name) {
            problems.push(RunbookProblem::new(
                field.clone(),
                "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)",
            ));
        }
        // Never quote the value: request headers carry tokens.
        if value.chars().any(|c| c.is_control() && c != '\t') {
            problems.push(RunbookProblem::new(
                field,
                "has a value with a line break or another control character",
            ));
        }
    }
    for (name, from) in &http.headers_from {
        let field = format!("{at}.headersFrom[{name:?}]");
        if !is_token(name) {
            problems.push(RunbookProblem::new(
                field.clone(),
                "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)",
            ));
        }
        if http
            .headers
            .keys()
            .any(|inline| inline.eq_ignore_ascii_case(name))
        {
            problems.push(RunbookProblem::new(
                field.clone(),
                format!("is also in {at}.headers; give the header one value"),
            ));
        }
        let secret = &from.secret_key_ref;
        if !is_dns_subdomain(&secret.name) {
            problems.push(RunbookProblem::new(
                format!("{field}.secretKeyRef.name"),
                format!("{:?} is not a Secret name (a DNS-1123 subdomain)", secret.name),
            ));
        }
        if !is_secret_key(&secret.key) {
            problems.push(RunbookProblem::new(
                format!("{field}.secretKeyRef.key"),
                format!(
                    "{:?} is not a Secret key (letters, digits, '-', '_' and '.')",
                    secret.key
                ),
            ));
        }
        if from
            .prefix
            .as_deref()
            .is_some_and(|prefix| prefix.chars().any(|c| c.is_control() && c != '\t'))
        {
            problems.push(RunbookProblem::new(
                format!("{field}.prefix"),
                "has a line break or another control character",
            ));
        }
    }
    check_expect(&http.expect, &format!("{at}.expect"), problems);
}

/// A key of a Secret's `data` (Kubernetes' `IsConfigMapKey`).
fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_expect(expect: &HttpExpect, at: &str, problems: &mut Vec<RunbookProblem>) {
    for (index, status) in expect.status.iter().enumerate() {
        if !(100..=599).contains(status) {
            problems.push(RunbookProblem::new(
                format!("{at}.status[{index}]"),
                format!("{status} is not an HTTP status code; use 100 to 599"),
            ));
        }
    }
    for name in expect.headers.keys() {
        if !is_token(name) {
            problems.push(RunbookProblem::new(
                format!("{at}.headers[{name:?}]"),
                "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)",
            ));
        }
    }
}

fn check_smoke(smoke: &SmokeGate, at: &str, problems: &mut Vec<RunbookProblem>) {
    if smoke.steps.is_empty() {
        problems.push(RunbookProblem::new(
            format!("{at}.steps"),
            "has no steps; list the requests of the smoke test in order",
        ));
    }
    for (index, step) in smoke.steps.iter().enumerate() {
        let step_at = format!("{at}.steps[{index}]");
        let earlier = &smoke.steps[..index];
        if step.name.is_empty() {
            problems.push(RunbookProblem::new(
                format!("{step_at}.name"),
                "is empty; name the step (messages name it, later steps use its captures by it)",
            ));
        } else if !is_smoke_name(&step.name) {
            problems.push(RunbookProblem::new(
                format!("{step_at}.name"),
                format!("{:?} {SMOKE_NAME_RULE}", step.name),
            ));
        } else if let Some(first) = earlier.iter().position(|s| s.name == step.name) {
            problems.push(RunbookProblem::new(
                format!("{step_at}.name"),
                format!(
                    "{:?} is already the name of {at}.steps[{first}]; give each step its own name",
                    step.name
                ),
            ));
        }
        // The request is checked as an `http` gate's, with every reference standing in
        // for a value: what a reference points to is checked below.
        check_http(&with_stand_ins(&step.request), &step_at, problems);
        for (name, source) in &step.capture {
            let field = format!("{step_at}.capture[{name:?}]");
            if !is_smoke_name(name) {
                problems.push(RunbookProblem::new(
                    field.clone(),
                    format!("{name:?} {SMOKE_NAME_RULE}"),
                ));
            }
            if let Err(problem) = CaptureSource::parse(source) {
                problems.push(RunbookProblem::new(field, problem));
            }
        }
        check_references(step, &smoke.steps, index, &step_at, problems);
        if let Some(eventually) = &step.eventually {
            if let Err(problem) = parse_duration(&eventually.within) {
                problems.push(RunbookProblem::new(
                    format!("{step_at}.eventually.within"),
                    format!("{problem}; write it like 30s or 2m"),
                ));
            }
            match eventually.every.as_deref().map(parse_duration) {
                Some(Err(problem)) => problems.push(RunbookProblem::new(
                    format!("{step_at}.eventually.every"),
                    format!("{problem}; write it like 1s or 500ms"),
                )),
                Some(Ok(every)) if every.is_zero() => problems.push(RunbookProblem::new(
                    format!("{step_at}.eventually.every"),
                    "is 0; use a pause like 1s or 500ms, or leave it out for 1s",
                )),
                _ => {}
            }
        }
    }
}

/// Every reference in the step's `url`, `path`, header values and `body` must name a
/// capture of an earlier step. Header values are never quoted (they carry tokens).
fn check_references(
    step: &SmokeStep,
    steps: &[SmokeStep],
    index: usize,
    at: &str,
    problems: &mut Vec<RunbookProblem>,
) {
    let request = &step.request;
    let fields = [
        ("url".to_string(), request.url.as_deref()),
        ("path".to_string(), request.path.as_deref()),
    ]
    .into_iter()
    .chain(
        request
            .headers
            .iter()
            .map(|(name, value)| (format!("headers[{name:?}]"), Some(value.as_str()))),
    )
    .chain([("body".to_string(), request.body.as_deref())]);
    for (field, text) in fields {
        let Some(text) = text else { continue };
        let field_at = format!("{at}.{field}");
        let references = match template_pieces(text) {
            Ok(pieces) => pieces.into_iter().filter_map(|piece| match piece {
                TemplatePiece::Reference(reference) => Some(reference),
                TemplatePiece::Text(_) => None,
            }),
            Err(problem) => {
                problems.push(RunbookProblem::new(field_at, problem));
                continue;
            }
        };
        for reference in references {
            if field == "url" && reference.spaced() {
                problems.push(RunbookProblem::new(
                    field_at.clone(),
                    format!(
                        "{} has spaces, which a url may not have; write {{{{.steps.{}.{}}}}}",
                        reference.written, reference.step, reference.capture
                    ),
                ));
            }
            if let Some(problem) = reference_problem(&reference, steps, index) {
                problems.push(RunbookProblem::new(field_at.clone(), problem));
            }
        }
    }
}

/// Why `reference`, used by step `index`, points to no value, if it does not.
fn reference_problem(reference: &CaptureReference<'_>, steps: &[SmokeStep], index: usize) -> Option<String> {
    let written = reference.written;
    let step_name = reference.step;
    let Some(source) = steps[..index].iter().rev().find(|s| s.name == step_name) else {
        let problem = if steps[index].name == step_name {
            format!("{written} refers to this step itself; a step can use only what earlier steps captured")
        } else if steps[index..].iter().any(|s| s.name == step_name) {
            format!(
                "{written} refers to step {step_name:?}, which comes later; a step can use only what earlier steps captured"
            )
        } else {
            format!("{written} refers to step {step_name:?}, which is not a step of this smoke gate")
        };
        return Some(problem);
    };
    if source.capture.contains_key(reference.capture) {
        return None;
    }
    let captured = if source.capture.is_empty() {
        "it captures nothing".to_string()
    } else {
        format!(
            "it captures {}",
            source
                .capture
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Some(format!(
        "{written}: step {step_name:?} captures no {:?} ({captured})",
        reference.capture
    ))
}

/// The request with every well-formed reference replaced by a value, for the checks of
/// an `http` gate (a reference in the URL's host or port is not a problem there).
fn with_stand_ins(request: &HttpGate) -> HttpGate {
    let stand_in = |text: &str| -> String {
        match template_pieces(text) {
            Ok(pieces) => pieces
                .iter()
                .map(|piece| match piece {
                    TemplatePiece::Text(text) => text,
                    TemplatePiece::Reference(_) => "1",
                })
                .collect(),
            Err(_) => text.to_string(),
        }
    };
    HttpGate {
        url: request.url.as_deref().map(url_with_stand_ins),
        path: request.path.as_deref().map(stand_in),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), stand_in(value)))
            .collect(),
        ..request.clone()
    }
}

/// A step's `url` with values standing in for its references, for the checks of a fixed
/// URL. A reference inside the host or port (`http://{{.steps.a.host}}:8080`, or a
/// captured `Location` path right after the port) leaves the host and port to the run,
/// which checks the URL it sends: only the scheme is checked then.
fn url_with_stand_ins(url: &str) -> String {
    let Ok(pieces) = template_pieces(url) else {
        return url.to_string();
    };
    let literal_prefix: String = pieces
        .iter()
        .map_while(|piece| match piece {
            TemplatePiece::Text(text) => Some(*text),
            TemplatePiece::Reference(_) => None,
        })
        .collect();
    let reference_in_authority = literal_prefix.len() < url.len()
        && literal_prefix
            .split_once("://")
            .is_some_and(|(_, authority)| !authority.contains(['/', '?', '#']));
    if reference_in_authority {
        let scheme = literal_prefix.split_once("://").map_or("", |(scheme, _)| scheme);
        return format!("{scheme}://host.invalid/");
    }
    pieces
        .iter()
        .map(|piece| match piece {
            TemplatePiece::Text(text) => text,
            TemplatePiece::Reference(_) => "1",
        })
        .collect()
}

const SMOKE_NAME_RULE: &str =
    "is not a name a reference can use: letters, digits, '-' and '_' ({{.steps.STEP.NAME}} reads them)";

/// Step and capture names: what `{{.steps.STEP.NAME}}` can spell.
pub fn is_smoke_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A piece of a smoke step's `url`, `path`, header value or `body`: text sent as it is,
/// or a reference to a value that an earlier step captured.
///
/// The template grammar of smoke steps, one definition for [`RunbookSpec::validate`]
/// and the smoke gate: `{{.steps.STEP.NAME}}`, spaces inside the braces allowed
/// (`{{ .steps.STEP.NAME }}`) except in `url`, whose CRD pattern refuses spaces. A
/// `{{` not followed by `.` is plain text (a JSON body may hold one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplatePiece<'a> {
    Text(&'a str),
    Reference(CaptureReference<'a>),
}

/// `{{.steps.STEP.NAME}}`: the value capture `NAME` of step `STEP` took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureReference<'a> {
    pub step: &'a str,
    pub capture: &'a str,
    /// As written, braces included, for messages.
    pub written: &'a str,
}

impl CaptureReference<'_> {
    /// Whether it was written with spaces inside the braces.
    pub fn spaced(&self) -> bool {
        self.written.contains(char::is_whitespace)
    }
}

/// Splits `text` into plain text and references; `Err` says why a `{{.` that starts a
/// reference is not one. The error never quotes `text` beyond the reference (a header
/// value may hold a token).
pub fn template_pieces(text: &str) -> Result<Vec<TemplatePiece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut text_start = 0;
    let mut search_from = 0;
    while let Some(found) = text[search_from..].find("{{") {
        let open = search_from + found;
        let inner_start = open + 2;
        if !text[inner_start..].trim_start().starts_with('.') {
            search_from = inner_start;
            continue;
        }
        let Some(close) = text[inner_start..].find("}}").map(|at| inner_start + at) else {
            return Err("has a {{. without its closing }}; write {{.steps.STEP.NAME}}".into());
        };
        let written = &text[open..close + 2];
        let inner = text[inner_start..close].trim();
        let Some((step, capture)) = inner
            .strip_prefix(".steps.")
            .and_then(|rest| rest.split_once('.'))
            .filter(|(step, capture)| is_smoke_name(step) && is_smoke_name(capture))
        else {
            return Err(format!(
                "{written} is not a reference to a captured value; write {{{{.steps.STEP.NAME}}}}"
            ));
        };
        if open > text_start {
            pieces.push(TemplatePiece::Text(&text[text_start..open]));
        }
        pieces.push(TemplatePiece::Reference(CaptureReference {
            step,
            capture,
            written,
        }));
        text_start = close + 2;
        search_from = text_start;
    }
    if text_start < text.len() {
        pieces.push(TemplatePiece::Text(&text[text_start..]));
    }
    Ok(pieces)
}

/// Where a smoke step's capture takes its value: `json:DOTTED.PATH` (a path as
/// `expect.json` reads it, with numeric indices into arrays: `items.0.id`) or
/// `header:NAME` (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureSource<'a> {
    Json(&'a str),
    Header(&'a str),
}

impl<'a> CaptureSource<'a> {
    pub fn parse(text: &'a str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("json:") {
            let path = path.trim();
            return if path.is_empty() {
                Err("\"json:\" names no path; write json:DOTTED.PATH, e.g. json:items.0.id".into())
            } else {
                Ok(CaptureSource::Json(path))
            };
        }
        if let Some(name) = text.strip_prefix("header:") {
            let name = name.trim();
            return if is_token(name) {
                Ok(CaptureSource::Header(name))
            } else {
                Err(format!(
                    "{name:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~, no spaces)"
                ))
            };
        }
        Err(format!(
            "{text:?} is neither json:DOTTED.PATH nor header:NAME; write e.g. json:items.0.id or header:Location"
        ))
    }
}

/// `spec.workloads` and `spec.env`: names that can select a container and a
/// variable, one rule per variable, rules that some value can meet. A `policy.pattern`
/// is compiled (and refused when invalid) by preflight: this crate has no regex engine.
fn check_env(spec: &RunbookSpec, problems: &mut Vec<RunbookProblem>) {
    for (index, entry) in spec.workloads.iter().enumerate() {
        let at = format!("spec.workloads[{index}]");
        let parts: Vec<&str> = entry.split('/').collect();
        if entry.trim().is_empty() {
            problems.push(RunbookProblem::new(
                at,
                "is empty; name a workload (api) or one of its containers (api/server)",
            ));
        } else if parts.len() > 2 || parts.iter().any(|part| part.trim().is_empty()) {
            problems.push(RunbookProblem::new(
                at,
                format!("{entry:?} is neither a workload name (api) nor workload/container (api/server)"),
            ));
        }
    }
    let mut first_of_name: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, rule) in spec.env.iter().enumerate() {
        let at = format!("spec.env[{index}]");
        let name = rule.name.as_str();
        if name.trim().is_empty() {
            problems.push(RunbookProblem::new(
                format!("{at}.name"),
                "is empty; name the environment variable",
            ));
        } else if !is_env_name(name) {
            problems.push(RunbookProblem::new(
                format!("{at}.name"),
                format!(
                    "{name:?} is not an environment variable name (printable characters, no '=' or space)"
                ),
            ));
        } else if let Some(first) = first_of_name.get(name) {
            problems.push(RunbookProblem::new(
                format!("{at}.name"),
                format!("{name:?} already has a rule, spec.env[{first}]; write one rule per variable"),
            ));
        } else {
            first_of_name.insert(name, index);
        }
        check_env_rule(rule, &at, problems);
    }
}

fn check_env_rule(rule: &EnvRule, at: &str, problems: &mut Vec<RunbookProblem>) {
    let name = rule.name.as_str();
    if let Some(condition) = &rule.required_when {
        if condition.env.trim().is_empty() {
            problems.push(RunbookProblem::new(
                format!("{at}.requiredWhen.env"),
                format!("is empty; name the variable whose value makes {name} required"),
            ));
        } else if condition.env == name {
            problems.push(RunbookProblem::new(
                format!("{at}.requiredWhen.env"),
                format!("names {name} itself; a variable cannot be required by its own value"),
            ));
        }
    }
    if rule.inject && rule.default.is_none() {
        problems.push(RunbookProblem::new(
            format!("{at}.inject"),
            format!("needs default: inject adds {name}=<default> to the containers that lack it"),
        ));
    }
    if rule.inject && rule.secret {
        problems.push(RunbookProblem::new(
            format!("{at}.inject"),
            "would add the default as a literal, which secret: true refuses; drop inject or secret",
        ));
    }
    let Some(policy) = &rule.policy else { return };
    if policy.min_length == Some(0) {
        problems.push(RunbookProblem::new(
            format!("{at}.policy.minLength"),
            "is 0, which every value meets; use 1 or more, or leave it out",
        ));
    }
    // Quoting the Runbook's own values is safe: they are in the Runbook already.
    if let Some(equals) = &policy.equals {
        let no_value_passes = "; no value can pass";
        if !policy.one_of.is_empty() && !policy.one_of.contains(equals) {
            problems.push(RunbookProblem::new(
                format!("{at}.policy"),
                format!("equals {equals:?} is not in oneOf{no_value_passes}"),
            ));
        }
        if policy.not_equals.contains(equals) {
            problems.push(RunbookProblem::new(
                format!("{at}.policy"),
                format!("equals {equals:?} is also in notEquals{no_value_passes}"),
            ));
        }
        if let Some(min_length) = policy.min_length
            && equals.chars().count() < min_length as usize
        {
            problems.push(RunbookProblem::new(
                format!("{at}.policy"),
                format!("equals {equals:?} is shorter than minLength ({min_length}){no_value_passes}"),
            ));
        }
    }
}

/// A name some Kubernetes version can set: up to 1.31 a server accepts only
/// `[-._a-zA-Z][-._a-zA-Z0-9]*` by default, from 1.32 (RelaxedEnvironmentVariableValidation,
/// beta) any printable ASCII but `=`. Only what no server accepts is refused here.
fn is_env_name(name: &str) -> bool {
    name.chars().all(|c| c.is_ascii_graphic() && c != '=')
}

/// Why `url` is not an absolute `http`/`https` URL with a host, if it is not. The
/// message quotes the scheme, host or port at fault, never the whole URL (it may
/// carry credentials).
fn url_problem(url: &str) -> Option<String> {
    const EXAMPLE: &str = "write it like https://api.example.com/health";
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("contains a space or a control character; {EXAMPLE}"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(format!("is not an absolute URL; {EXAMPLE}"));
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Some(format!("scheme {scheme:?} is not http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_and_port = authority.rsplit_once('@').map_or(authority, |(_, after)| after);
    let (host, port) = if let Some(bracketed) = host_and_port.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Some("has an IPv6 address without its closing ']'".into());
        };
        if address.is_empty()
            || !address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Some(format!("[{address}] is not an IPv6 address"));
        }
        match after.strip_prefix(':') {
            Some(port) => (address, Some(port)),
            None if after.is_empty() => (address, None),
            None => return Some(format!("has {after:?} after the IPv6 address; expected :port")),
        }
    } else {
        match host_and_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_and_port, None),
        }
    };
    if host.is_empty() {
        return Some(format!("has no host; {EXAMPLE}"));
    }
    const FORBIDDEN_IN_HOST: &[char] = &['%', '<', '>', '\\', '^', '|', '[', ']', '"', '{', '}', '`'];
    if host.contains(FORBIDDEN_IN_HOST) {
        return Some(format!("host {host:?} is not a host name or address"));
    }
    if let Some(port) = port
        && (port.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0))
    {
        return Some(format!("port {port:?} is not a number from 1 to 65535"));
    }
    None
}

/// A DNS-1035 label, as Service names are.
fn is_service_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// An HTTP token (RFC 9110 §5.6.2): header names and methods.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Why `name` (`spec.serviceAccountName`) cannot name a ServiceAccount, if it cannot:
/// a ServiceAccount's name is a DNS-1123 subdomain (lower-case letters, digits, `-` and
/// `.`, at most 253 characters). A user name such as
/// `system:serviceaccount:kube-system:namespace-controller` is refused by name: the
/// account is always one of the app's own namespace, never another namespace's.
pub fn service_account_name_problem(name: &str) -> Option<String> {
    const FIELD: &str = "spec.serviceAccountName";
    if name.starts_with("system:") {
        return Some(format!(
            "{FIELD}: {:?} is a user name, not the name of a ServiceAccount; name a ServiceAccount of the \
             AppDeployment's own namespace (another namespace's account cannot be named)",
            shortened(name)
        ));
    }
    if !is_dns_subdomain(name) {
        return Some(format!(
            "{FIELD}: {:?} is not a ServiceAccount name (lower-case letters, digits, '-' and '.', starting and \
             ending with a letter or digit, at most 253 characters)",
            shortened(name)
        ));
    }
    None
}

/// At most 100 characters of `text`, for a message.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(100) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A DNS-1123 subdomain, as Kubernetes object names mostly are.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_names_are_dns_subdomains_of_the_apps_namespace() {
        for good in ["deployer", "bosun-deployer", "a.b-c", "0"] {
            assert_eq!(service_account_name_problem(good), None, "{good}");
        }
        let user = service_account_name_problem("system:serviceaccount:kube-system:namespace-controller")
            .expect("refused");
        assert!(user.starts_with("spec.serviceAccountName: "), "{user}");
        assert!(user.contains("user name"), "{user}");
        for bad in ["", "Deployer", "-a", "a-", "a..b", "a_b", "a b", &"a".repeat(254)] {
            let problem = service_account_name_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(problem.starts_with("spec.serviceAccountName: "), "{problem}");
        }
        assert!(service_account_name_problem(&"x".repeat(300)).unwrap().len() < 400);
    }

    fn spec(yaml: &str) -> RunbookSpec {
        serde_saphyr::from_str(yaml).expect("RunbookSpec YAML")
    }

    fn problems(yaml: &str) -> Vec<String> {
        match spec(yaml).validate() {
            Ok(()) => Vec::new(),
            Err(problems) => problems.iter().map(RunbookProblem::to_string).collect(),
        }
    }

    /// The one problem of a single-gate Runbook whose `http` is `http_yaml`.
    fn http_problems(http_yaml: &str) -> Vec<String> {
        problems(&format!("gates: [{{name: health, http: {http_yaml}}}]"))
    }

    #[test]
    fn the_readme_runbook_is_valid() {
        let readme = spec(
            r#"
verifyWindow: 60s
progressDeadline: 10m
rollback: {automatic: true}
workloadGate: {maxRestarts: 3}
gates:
  - name: health
    periodSeconds: 5
    timeoutSeconds: 2
    failureThreshold: 3
    http:
      service: backend
      port: 8000
      path: /health
      expect:
        status: [200]
        json: {status: ok}
"#,
        );
        assert_eq!(readme.validate(), Ok(()));
        assert_eq!(RunbookSpec::default().validate(), Ok(()), "no gates, defaults");
        let with_url = "gates: [{name: h, http: {url: 'https://user:pw@api.example.com:8443/health?full=1', \
                        method: POST, headers: {Authorization: Bearer x}, followRedirects: true}}]";
        assert_eq!(problems(with_url), Vec::<String>::new());
    }

    #[test]
    fn a_gate_without_a_probe_says_which_kinds_exist() {
        assert_eq!(
            problems("gates: [{name: smoke}]"),
            ["spec.gates[0]: has no probe; set exactly one of: http, smoke, logs, metrics"]
        );
    }

    #[test]
    fn an_unknown_probe_kind_is_named() {
        // What an older controller sees of a gate kind it does not know, when the
        // resource was stored without pruning.
        assert_eq!(
            problems("gates: [{name: grpc, grpc: {port: 9090}}]"),
            [
                "spec.gates[0].grpc: is not a field of a gate this controller knows; if it is a probe kind, \
                 this controller can evaluate only: http, smoke, logs, metrics (a newer bosun may know more)"
            ]
        );
        let both = problems("gates: [{name: grpc, grpc: {}, http: {url: 'http://h'}}]");
        assert_eq!(both.len(), 1, "{both:?}");
        assert!(both[0].starts_with("spec.gates[0].grpc: "), "{both:?}");
    }

    #[test]
    fn names_are_required_and_unique() {
        assert_eq!(
            problems(
                "gates: [{name: a, http: {url: 'http://h'}}, {name: '', http: {url: 'http://h'}}, \
                 {name: a, http: {url: 'http://h'}}, {name: a, http: {url: 'http://h'}}]"
            ),
            [
                "spec.gates[1].name: is empty; name the gate (status and events report it by name)",
                "spec.gates[2].name: \"a\" is already the name of spec.gates[0]; give each gate its own name",
                "spec.gates[3].name: \"a\" is already the name of spec.gates[0]; give each gate its own name",
            ]
        );
    }

    #[test]
    fn counts_are_at_least_one() {
        assert_eq!(
            problems(
                "gates: [{name: h, periodSeconds: 0, timeoutSeconds: 0, failureThreshold: 0, \
                 successThreshold: 0, http: {url: 'http://h'}}]"
            ),
            [
                "spec.gates[0].periodSeconds: is 0; use 1 or more, or leave it out for the default",
                "spec.gates[0].timeoutSeconds: is 0; use 1 or more, or leave it out for the default",
                "spec.gates[0].failureThreshold: is 0; use 1 or more, or leave it out for the default",
                "spec.gates[0].successThreshold: is 0; use 1 or more, or leave it out for the default",
            ]
        );
        assert_eq!(
            problems("gates: [{name: h, periodSeconds: 1, failureThreshold: 1, http: {url: 'http://h'}}]"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            problems("verifyWindow: 5 minutes"),
            [
                "spec.verifyWindow: invalid duration \"5 minutes\": unknown unit \" minutes\" (use ms, s, m, h); \
                 write it like 90s, 5m or 1h30m"
            ]
        );
        assert_eq!(
            problems("progressDeadline: 1d"),
            [
                "spec.progressDeadline: invalid duration \"1d\": unknown unit \"d\" (use ms, s, m, h); \
                 write it like 90s, 5m or 1h30m"
            ]
        );
        assert_eq!(
            problems("verifyWindow: 2m\nprogressDeadline: 1h30m"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn the_verify_window_fits_in_the_progress_deadline() {
        assert_eq!(
            problems("verifyWindow: 10m"),
            [
                "spec.verifyWindow: 10m is not shorter than progressDeadline (10m, the default): gates could \
                 never pass for the whole window before the deadline; shorten verifyWindow or lengthen \
                 progressDeadline"
            ]
        );
        assert_eq!(
            problems("progressDeadline: 30s"),
            [
                "spec.verifyWindow: 60s, the default is not shorter than progressDeadline (30s): gates could \
                 never pass for the whole window before the deadline; shorten verifyWindow or lengthen \
                 progressDeadline"
            ]
        );
        assert_eq!(
            problems("verifyWindow: 10s\nprogressDeadline: 30s"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn exactly_one_target() {
        assert_eq!(
            http_problems("{url: 'http://h', service: backend, port: 80}"),
            ["spec.gates[0].http: sets both url and service; set url, or service and port"]
        );
        assert_eq!(
            http_problems("{path: /health}"),
            ["spec.gates[0].http: names neither url nor service; set url, or service and port"]
        );
        assert_eq!(
            http_problems("{service: backend}"),
            ["spec.gates[0].http.port: is required with service: the port of the Service to probe"]
        );
        assert_eq!(
            http_problems("{url: 'http://h', port: 80, scheme: https}"),
            [
                "spec.gates[0].http.port: applies only with service; with url, write the port into the URL",
                "spec.gates[0].http.scheme: applies only with service; with url, write the scheme into the URL",
            ]
        );
    }

    #[test]
    fn urls_are_absolute_http_with_a_host_and_credentials_are_not_quoted() {
        let cases = [
            ("ftp://h/x", "scheme \"ftp\" is not http or https"),
            (
                "h:8080/health",
                "is not an absolute URL; write it like https://api.example.com/health",
            ),
            (
                "http:///health",
                "has no host; write it like https://api.example.com/health",
            ),
            ("http://h:0/x", "port \"0\" is not a number from 1 to 65535"),
            ("http://h:99999", "port \"99999\" is not a number from 1 to 65535"),
            ("http://h:/x", "port \"\" is not a number from 1 to 65535"),
            (
                "http://user:hunter2@[::1",
                "has an IPv6 address without its closing ']'",
            ),
            (
                "http://ex ample.com",
                "contains a space or a control character; write it like https://api.example.com/health",
            ),
            (
                "http://user:hunter2@h%zz/",
                "host \"h%zz\" is not a host name or address",
            ),
        ];
        for (url, want) in cases {
            let found = http_problems(&format!("{{url: '{url}'}}"));
            assert_eq!(found, [format!("spec.gates[0].http.url: {want}")], "{url}");
            assert!(!found[0].contains("hunter2"), "{found:?}");
        }
        for url in [
            "HTTPS://h",
            "http://[::1]:8080/x",
            "http://127.0.0.1:1",
            "https://h.example?x=1#y",
        ] {
            assert_eq!(
                http_problems(&format!("{{url: '{url}'}}")),
                Vec::<String>::new(),
                "{url}"
            );
        }
    }

    #[test]
    fn service_scheme_port_method_and_path() {
        assert_eq!(
            http_problems("{service: Backend_1, port: 80}"),
            [
                "spec.gates[0].http.service: \"Backend_1\" is not a Service name: lowercase letters, digits and \
                 '-', starting with a letter, at most 63 characters"
            ]
        );
        assert_eq!(
            http_problems("{service: backend, port: 0, scheme: ftp}"),
            [
                "spec.gates[0].http.scheme: \"ftp\" is not http or https",
                "spec.gates[0].http.port: 0 is not a port; use 1 to 65535",
            ]
        );
        assert_eq!(
            http_problems("{url: 'http://h', method: post}"),
            [
                "spec.gates[0].http.method: \"post\" is not a method a gate sends; use one of GET, HEAD, POST, \
                 PUT, PATCH, DELETE, OPTIONS; methods are case-sensitive: write POST"
            ]
        );
        assert_eq!(
            http_problems("{url: 'http://h', method: FETCH}"),
            [
                "spec.gates[0].http.method: \"FETCH\" is not a method a gate sends; use one of GET, HEAD, POST, \
                 PUT, PATCH, DELETE, OPTIONS"
            ]
        );
        assert_eq!(
            http_problems("{url: 'http://h', path: health}"),
            ["spec.gates[0].http.path: \"health\" does not start with '/'; write /health"]
        );
    }

    #[test]
    fn headers_are_checked_without_quoting_their_values() {
        let found = http_problems(
            "{url: 'http://h', headers: {'bad name': x, Authorization: \"Bearer hunter2\\nx\"}}",
        );
        assert_eq!(
            found,
            [
                "spec.gates[0].http.headers[\"Authorization\"]: has a value with a line break or another control character",
                "spec.gates[0].http.headers[\"bad name\"]: is not a valid header name (letters, digits and \
                 !#$%&'*+-.^_`|~, no spaces)",
            ]
        );
        assert!(!found.concat().contains("hunter2"));
    }

    #[test]
    fn expected_statuses_are_status_codes() {
        assert_eq!(
            http_problems("{url: 'http://h', expect: {status: [200, 99, 600], headers: {'x y': z}}}"),
            [
                "spec.gates[0].http.expect.status[1]: 99 is not an HTTP status code; use 100 to 599",
                "spec.gates[0].http.expect.status[2]: 600 is not an HTTP status code; use 100 to 599",
                "spec.gates[0].http.expect.headers[\"x y\"]: is not a valid header name (letters, digits and \
                 !#$%&'*+-.^_`|~, no spaces)",
            ]
        );
    }

    #[test]
    fn max_restarts_is_not_negative() {
        assert_eq!(
            problems("workloadGate: {maxRestarts: -1}"),
            ["spec.workloadGate.maxRestarts: -1 is negative; use 0 or more"]
        );
        assert_eq!(problems("workloadGate: {maxRestarts: 0}"), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_and_described_on_one_line() {
        let found =
            spec("verifyWindow: x\ngates: [{name: a}, {name: b, periodSeconds: 0, http: {url: 'ftp://h'}}]")
                .validate()
                .expect_err("invalid");
        let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.verifyWindow",
                "spec.gates[0]",
                "spec.gates[1].periodSeconds",
                "spec.gates[1].http.url"
            ]
        );
        let line = describe_problems(&found);
        assert!(
            line.starts_with("spec.verifyWindow: invalid duration \"x\"")
                && line.contains("; spec.gates[0]: has no probe"),
            "{line}"
        );
    }

    #[test]
    fn the_seed_env_contracts_are_valid() {
        let seeds = r#"
workloads: [api, worker/worker]
env:
  - {name: AUTH_MODE, required: true, default: mixed, policy: {equals: clerk}}
  - {name: LLM_PROVIDER, default: stub, inject: true, policy: {oneOf: [stub, litellm]}}
  - {name: OPENAI_API_KEY, secret: true, requiredWhen: {env: LLM_PROVIDER, equals: litellm}}
  - name: JWT_SECRET
    required: true
    secret: true
    policy: {minLength: 32, notEquals: [your-long-random-secret-key-min-32-chars], pattern: '\S+'}
  - {name: CORS_ORIGINS, required: true, policy: {notEquals: ['*']}}
"#;
        assert_eq!(problems(seeds), Vec::<String>::new());
    }

    #[test]
    fn env_names_are_given_once_and_can_be_set() {
        assert_eq!(
            problems(
                "env: [{name: A}, {name: ''}, {name: A}, {name: 'B=C'}, {name: 'has space'}, {name: A}]"
            ),
            [
                "spec.env[1].name: is empty; name the environment variable",
                "spec.env[2].name: \"A\" already has a rule, spec.env[0]; write one rule per variable",
                "spec.env[3].name: \"B=C\" is not an environment variable name (printable characters, no '=' or \
                 space)",
                "spec.env[4].name: \"has space\" is not an environment variable name (printable characters, no \
                 '=' or space)",
                "spec.env[5].name: \"A\" already has a rule, spec.env[0]; write one rule per variable",
            ]
        );
        // Names servers from 1.32 accept.
        assert_eq!(problems("env: [{name: '1.x-Y:z'}]"), Vec::<String>::new());
    }

    #[test]
    fn required_when_names_another_variable() {
        assert_eq!(
            problems(
                "env: [{name: KEY, requiredWhen: {env: KEY, equals: x}}, {name: B, requiredWhen: {env: '', equals: x}}]"
            ),
            [
                "spec.env[0].requiredWhen.env: names KEY itself; a variable cannot be required by its own value",
                "spec.env[1].requiredWhen.env: is empty; name the variable whose value makes B required",
            ]
        );
        assert_eq!(
            problems("env: [{name: KEY, requiredWhen: {env: PROVIDER, equals: x}}]"),
            Vec::<String>::new(),
            "the other variable needs no rule of its own"
        );
    }

    #[test]
    fn inject_needs_a_default_and_no_secret() {
        assert_eq!(
            problems("env: [{name: A, inject: true}, {name: S, inject: true, secret: true, default: x}]"),
            [
                "spec.env[0].inject: needs default: inject adds A=<default> to the containers that lack it",
                "spec.env[1].inject: would add the default as a literal, which secret: true refuses; drop inject or \
                 secret",
            ]
        );
        assert_eq!(
            problems("env: [{name: A, inject: true, default: ''}]"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_policy_some_value_can_meet() {
        assert_eq!(
            problems("env: [{name: A, policy: {minLength: 0}}]"),
            ["spec.env[0].policy.minLength: is 0, which every value meets; use 1 or more, or leave it out"]
        );
        assert_eq!(
            problems("env: [{name: A, policy: {equals: ab, oneOf: [x, y], notEquals: [ab], minLength: 3}}]"),
            [
                "spec.env[0].policy: equals \"ab\" is not in oneOf; no value can pass",
                "spec.env[0].policy: equals \"ab\" is also in notEquals; no value can pass",
                "spec.env[0].policy: equals \"ab\" is shorter than minLength (3); no value can pass",
            ]
        );
        assert_eq!(
            problems("env: [{name: A, policy: {equals: abc, oneOf: [abc], notEquals: [x], minLength: 3}}]"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn workload_entries_name_a_workload_or_a_container() {
        assert_eq!(
            problems("workloads: [api, '', api/, a/b/c, api/server]"),
            [
                "spec.workloads[1]: is empty; name a workload (api) or one of its containers (api/server)",
                "spec.workloads[2]: \"api/\" is neither a workload name (api) nor workload/container (api/server)",
                "spec.workloads[3]: \"a/b/c\" is neither a workload name (api) nor workload/container (api/server)",
            ]
        );
    }

    #[test]
    fn cluster_runbooks_share_the_rules() {
        let cluster: ClusterRunbookSpec = serde_saphyr::from_str("verifyWindow: 1s\ngates: [{name: smoke}]")
            .expect("ClusterRunbookSpec YAML");
        assert_eq!(
            cluster.validate().map_err(|p| describe_problems(&p)),
            Err("spec.gates[0]: has no probe; set exactly one of: http, smoke, logs, metrics".into())
        );
    }

    #[test]
    fn cluster_runbooks_carry_no_inline_credentials() {
        let cluster: ClusterRunbookSpec = serde_saphyr::from_str(
            r#"
gates:
  - name: api
    http: {url: "http://api", headers: {Authorization: "Bearer s3cr3t-canary", X-Trace: "1"}}
  - name: flow
    smoke:
      steps:
        - name: login
          url: "http://user:pw-canary@api/login"
          headers: {X-Api-Key: "k-canary"}
          capture: {token: "json:token"}
        - name: use
          url: "http://api/me"
          headers: {Authorization: "Bearer {{.steps.login.token}}"}
"#,
        )
        .expect("ClusterRunbookSpec YAML");
        let problems: Vec<String> = cluster
            .validate()
            .expect_err("inline credentials")
            .iter()
            .map(|p| p.field.clone())
            .collect();
        assert_eq!(
            problems,
            [
                "spec.gates[0].http.headers[\"Authorization\"]",
                "spec.gates[1].smoke.steps[0].headers[\"X-Api-Key\"]",
                "spec.gates[1].smoke.steps[0].url",
            ]
        );
        let text = describe_problems(&cluster.validate().unwrap_err());
        assert!(!text.contains("canary"), "{text}");
        // The same gates in a namespace's own Runbook are fine.
        assert_eq!(cluster.runbook.validate(), Ok(()));
    }

    /// The problems of a single-gate Runbook whose `smoke` is `smoke_yaml`.
    fn smoke_problems(smoke_yaml: &str) -> Vec<String> {
        problems(&format!("gates:\n  - name: smoke\n    smoke:\n{smoke_yaml}"))
    }

    #[test]
    fn the_litevault_smoke_test_is_valid() {
        let found = smoke_problems(
            r#"
      steps:
        - name: create
          url: http://backend.shop:8000
          path: /api/v1/items
          method: POST
          headers: {Content-Type: application/json}
          body: '{"title": "smoke", "note": "{{ not a reference }}"}'
          expect: {status: [201], json: {status: ENRICHING}}
          capture: {id: json:id, location: 'header:Location'}
        - name: enriched
          url: http://backend.shop:8000/api/v1/items/{{.steps.create.id}}
          expect: {json: {status: READY_TO_CONFIRM}}
          eventually: {within: 30s, every: 2s}
        - name: confirm
          url: http://backend.shop:8000
          path: '/api/v1/items/{{ .steps.create.id }}/confirm'
          method: POST
          headers: {X-Item: '{{ .steps.create.id }}'}
          body: '{"id": "{{.steps.create.id}}"}'
          expect: {json: {status: ARCHIVED}}
"#,
        );
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn references_name_captures_of_earlier_steps() {
        let found = smoke_problems(
            r#"
      steps:
        - name: create
          url: 'http://h/{{.steps.create.id}}'
          capture: {id: json:id}
        - name: read
          url: 'http://h/items/{{.steps.create.idd}}'
          path: '/{{.steps.confirm.id}}'
          body: '{{.steps.nowhere.x}}'
        - name: confirm
          url: 'http://h/{{.steps.read.id}}'
          capture: {id: json:id}
"#,
        );
        assert_eq!(
            found,
            [
                "spec.gates[0].smoke.steps[0].url: {{.steps.create.id}} refers to this step itself; a step can use \
                 only what earlier steps captured",
                "spec.gates[0].smoke.steps[1].url: {{.steps.create.idd}}: step \"create\" captures no \"idd\" (it \
                 captures id)",
                "spec.gates[0].smoke.steps[1].path: {{.steps.confirm.id}} refers to step \"confirm\", which comes \
                 later; a step can use only what earlier steps captured",
                "spec.gates[0].smoke.steps[1].body: {{.steps.nowhere.x}} refers to step \"nowhere\", which is not a \
                 step of this smoke gate",
                "spec.gates[0].smoke.steps[2].url: {{.steps.read.id}}: step \"read\" captures no \"id\" (it captures \
                 nothing)",
            ]
        );
    }

    #[test]
    fn references_in_urls_have_no_spaces_and_malformed_ones_are_named() {
        let found = smoke_problems(
            r#"
      steps:
        - name: create
          url: http://h
          capture: {id: json:id}
        - name: read
          url: 'http://h/items/{{ .steps.create.id }}'
          path: '/{{.step.create.id}}'
          headers: {X-Item: 'Bearer secret-token {{.steps.create.id'}
"#,
        );
        assert_eq!(
            found,
            [
                "spec.gates[0].smoke.steps[1].url: {{ .steps.create.id }} has spaces, which a url may not have; \
                 write {{.steps.create.id}}",
                "spec.gates[0].smoke.steps[1].path: {{.step.create.id}} is not a reference to a captured value; \
                 write {{.steps.STEP.NAME}}",
                "spec.gates[0].smoke.steps[1].headers[\"X-Item\"]: has a {{. without its closing }}; write \
                 {{.steps.STEP.NAME}}",
            ]
        );
        assert!(!found.concat().contains("secret-token"), "{found:?}");
    }

    #[test]
    fn step_names_captures_and_eventually() {
        let found = smoke_problems(
            r#"
      steps:
        - name: create item
          url: http://h
          capture: {id: 'jsonpath:$.id', 'the id': json:id, loc: 'header:', empty: 'json: '}
          eventually: {within: 30 seconds, every: 0s}
        - name: ''
          url: http://h
          eventually: {within: 1m, every: soon}
        - name: again
          url: http://h
        - name: again
          url: http://h
"#,
        );
        assert_eq!(
            found,
            [
                "spec.gates[0].smoke.steps[0].name: \"create item\" is not a name a reference can use: letters, \
                 digits, '-' and '_' ({{.steps.STEP.NAME}} reads them)",
                "spec.gates[0].smoke.steps[0].capture[\"empty\"]: \"json:\" names no path; write json:DOTTED.PATH, \
                 e.g. json:items.0.id",
                "spec.gates[0].smoke.steps[0].capture[\"id\"]: \"jsonpath:$.id\" is neither json:DOTTED.PATH nor \
                 header:NAME; write e.g. json:items.0.id or header:Location",
                "spec.gates[0].smoke.steps[0].capture[\"loc\"]: \"\" is not a header name (letters, digits and \
                 !#$%&'*+-.^_`|~, no spaces)",
                "spec.gates[0].smoke.steps[0].capture[\"the id\"]: \"the id\" is not a name a reference can use: \
                 letters, digits, '-' and '_' ({{.steps.STEP.NAME}} reads them)",
                "spec.gates[0].smoke.steps[0].eventually.within: invalid duration \"30 seconds\": unknown unit \" \
                 seconds\" (use ms, s, m, h); write it like 30s or 2m",
                "spec.gates[0].smoke.steps[0].eventually.every: is 0; use a pause like 1s or 500ms, or leave it out \
                 for 1s",
                "spec.gates[0].smoke.steps[1].name: is empty; name the step (messages name it, later steps use its \
                 captures by it)",
                "spec.gates[0].smoke.steps[1].eventually.every: invalid duration \"soon\": expected a number; write \
                 it like 1s or 500ms",
                "spec.gates[0].smoke.steps[3].name: \"again\" is already the name of spec.gates[0].smoke.steps[2]; \
                 give each step its own name",
            ]
        );
    }

    #[test]
    fn steps_are_checked_as_http_requests() {
        let found = smoke_problems(
            r#"
      steps: []
"#,
        );
        assert_eq!(
            found,
            ["spec.gates[0].smoke.steps: has no steps; list the requests of the smoke test in order"]
        );
        let found = smoke_problems(
            r#"
      steps:
        - name: create
          service: backend
          method: post
          path: items
          capture: {id: json:id}
        - name: read
          url: 'http://{{.steps.create.id}}:{{.steps.create.id}}/items'
        - name: confirm
          url: 'http://127.0.0.1:8000{{.steps.create.id}}/confirm'
        - name: elsewhere
          url: 'ftp://{{.steps.create.id}}/x'
        - name: relative
          url: '{{.steps.create.id}}/x'
"#,
        );
        assert_eq!(
            found,
            [
                "spec.gates[0].smoke.steps[0].port: is required with service: the port of the Service to probe",
                "spec.gates[0].smoke.steps[0].method: \"post\" is not a method a gate sends; use one of GET, HEAD, \
                 POST, PUT, PATCH, DELETE, OPTIONS; methods are case-sensitive: write POST",
                "spec.gates[0].smoke.steps[0].path: \"items\" does not start with '/'; write /items",
                "spec.gates[0].smoke.steps[3].url: scheme \"ftp\" is not http or https",
                "spec.gates[0].smoke.steps[4].url: is not an absolute URL; write it like \
                 https://api.example.com/health",
            ],
            "a reference may stand for a host, a port or a path after the port"
        );
    }

    #[test]
    fn template_grammar() {
        use TemplatePiece::{Reference, Text};
        let reference = |step, capture, written| {
            Reference(CaptureReference {
                step,
                capture,
                written,
            })
        };
        assert_eq!(
            template_pieces("/items/{{.steps.create.id}}/confirm?x={{ .steps.a-1.b_2 }}"),
            Ok(vec![
                Text("/items/"),
                reference("create", "id", "{{.steps.create.id}}"),
                Text("/confirm?x="),
                reference("a-1", "b_2", "{{ .steps.a-1.b_2 }}"),
            ])
        );
        assert_eq!(
            template_pieces("{{.steps.a.b}}{{.steps.c.d}}"),
            Ok(vec![
                reference("a", "b", "{{.steps.a.b}}"),
                reference("c", "d", "{{.steps.c.d}}")
            ])
        );
        // `{{` not followed by `.` is text: JSON bodies, other template languages.
        assert_eq!(
            template_pieces(r#"{"a": {{"b": 1}}}"#),
            Ok(vec![Text(r#"{"a": {{"b": 1}}}"#)])
        );
        assert_eq!(template_pieces(""), Ok(vec![]));
        assert!(
            template_pieces("{{ .steps.a.b.c }}")
                .expect_err("three segments")
                .starts_with("{{ .steps.a.b.c }} is not a reference")
        );
        assert!(template_pieces("{{.steps.a}}").is_err());
        assert!(template_pieces("{{.steps..b}}").is_err());
        assert!(reference_spaced("{{ .steps.a.b}}"));
        assert!(!reference_spaced("{{.steps.a.b}}"));
    }

    fn reference_spaced(text: &str) -> bool {
        match template_pieces(text).expect("a reference").as_slice() {
            [TemplatePiece::Reference(reference)] => reference.spaced(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn capture_sources() {
        assert_eq!(
            CaptureSource::parse("json:items.0.id"),
            Ok(CaptureSource::Json("items.0.id"))
        );
        assert_eq!(CaptureSource::parse(" json: id "), Ok(CaptureSource::Json("id")));
        assert_eq!(
            CaptureSource::parse("header:Location"),
            Ok(CaptureSource::Header("Location"))
        );
        assert!(CaptureSource::parse("body").is_err());
        assert!(CaptureSource::parse("header:bad name").is_err());
    }

    #[test]
    fn logs_and_metrics_gates_are_checked_before_a_revision_is() {
        let found = problems(
            "gates: [{name: l, logs: {workload: '', pattern: '', within: soon}}, \
             {name: m, metrics: {prometheus: 'ftp://p', query: ' ', threshold: {op: '!=', value: 1}}}]",
        );
        for field in [
            "spec.gates[0].logs.workload",
            "spec.gates[0].logs.pattern",
            "spec.gates[0].logs.within",
            "spec.gates[1].metrics.prometheus",
            "spec.gates[1].metrics.query",
            "spec.gates[1].metrics.threshold.op",
        ] {
            assert!(found.iter().any(|p| p.starts_with(field)), "{field} in {found:?}");
        }
    }

    #[test]
    fn jobs_need_something_to_run_and_a_downgrade_its_command() {
        let found = problems(
            "backup: {command: [pg_dump], timeout: forever}\nmigrate: {from: {workload: api}, backoffLimit: -1, \
             rollback: {policy: Downgrade}}",
        );
        for field in [
            "spec.backup: has neither",
            "spec.backup.timeout",
            "spec.migrate.backoffLimit",
            "spec.migrate.rollback.command",
        ] {
            assert!(found.iter().any(|p| p.starts_with(field)), "{field} in {found:?}");
        }
        assert!(
            problems("migrate: {from: {workload: api}, command: [alembic, upgrade, head]}").is_empty(),
            "a plain migration is fine"
        );
    }

    #[test]
    fn notify_receivers_have_one_url_each_and_distinct_names() {
        let found = problems(
            "notify: [{name: a, url: 'http://h/x'}, {name: a, url: 'http://h/y'}, {name: b}, \
             {name: c, url: 'http://h', urlFrom: {name: s, key: url}}]",
        );
        assert!(
            found.iter().any(|p| p.starts_with("spec.notify[1].name")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("spec.notify[2]: has neither")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|p| p.starts_with("spec.notify[3]: has both")),
            "{found:?}"
        );
    }
}
