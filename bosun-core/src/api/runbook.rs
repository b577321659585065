//! The Runbook and ClusterRunbook resources.
//!
//! Their CRD schema refuses at `kubectl apply` time what a Kubernetes 1.20 schema can
//! express (patterns, minimums, enums, required fields, one probe kind per gate, gate
//! names as list-map keys; see the `schemars` attributes below). The controller
//! validates every Runbook it reads as well ([`RunbookSpec::validate`]): Runbooks
//! stored under CRDs of an older bosun, ClusterRunbooks written before an upgrade and
//! probe kinds of a newer bosun all reach it without passing this schema, and some
//! rules (`verifyWindow` < `progressDeadline`, the 30-day bound of durations, a full
//! URL parse) have no schema form without CEL.

use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The probe kinds a gate can have, exactly one per gate. This controller can
/// evaluate each of them; the CRD schema and [`RunbookSpec::validate`] both read
/// this list.
pub const PROBE_KINDS: &[&str] = &["http", "smoke", "logs", "metrics"];

/// HTTP methods an `http` gate may send (the CRD's `enum`; HTTP methods are
/// case-sensitive, so only capitals).
pub const HTTP_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// The durations [`super::parse_duration`] reads: whole seconds (`90`) or numbers with
/// units `ms`, `s`, `m`, `h` (`1h30m`). The 30-day bound is checked by the controller.
pub const DURATION_PATTERN: &str = "^([0-9]+|([0-9]+(ms|s|m|h))+)$";

/// An absolute `http`/`https` URL with a host; the controller parses it fully.
const URL_PATTERN: &str = r"^[hH][tT][tT][pP][sS]?://[^/?#\s]+([/?#]\S*)?$";

/// A Kubernetes Service name (DNS-1035 label).
const SERVICE_NAME_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// How to deploy an app safely: the executable form of a deployment runbook.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "bosun.dev",
    version = "v1alpha1",
    kind = "Runbook",
    namespaced,
    shortname = "rb",
    category = "bosun",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[kube(derive = "Default", derive = "PartialEq")]
#[serde(rename_all = "camelCase")]
pub struct RunbookSpec {
    /// Readiness gates that must keep passing for `verifyWindow` after rollout.
    /// Gate names are unique (a list keyed by `name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub gates: Vec<Gate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_gate: Option<WorkloadGate>,
    /// How long every gate must keep passing after rollout (default `60s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub verify_window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackPolicy>,
    /// How long verification may stay undecided (rollout incomplete, gates below
    /// their thresholds) before the revision counts as failed (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub progress_deadline: Option<String>,
    /// Names of the workloads (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs)
    /// whose containers the env contract is checked against (default: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<String>,
    /// The env contract: variables the containers must (or must not) have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub env: Vec<EnvRule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsPolicy>,
    /// A Job run before the migration (e.g. `pg_dump`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStep>,
    /// A Job run before the revision's workloads are applied (e.g. `alembic upgrade head`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<MigrateStep>,
    /// Webhooks told when the app becomes Healthy, Blocked, Failed, RollingBack or RolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notify>,
}

/// Cluster-wide defaults shared by many apps, with the same fields as a Runbook.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "bosun.dev",
    version = "v1alpha1",
    kind = "ClusterRunbook",
    shortname = "crb",
    category = "bosun",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRunbookSpec {
    #[serde(flatten)]
    pub runbook: RunbookSpec,
}

/// One readiness gate: a name, its timing, and exactly one probe (today `http`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = exactly_one_probe_kind)]
pub struct Gate {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Seconds between probes (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub period_seconds: Option<u32>,
    /// Seconds one probe may take (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub timeout_seconds: Option<u32>,
    /// Consecutive failed probes that fail the gate (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_threshold: Option<u32>,
    /// Consecutive passing probes before the gate counts as passing (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub success_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "not_nullable::<HttpGate>")]
    pub http: Option<HttpGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "not_nullable::<SmokeGate>")]
    pub smoke: Option<SmokeGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "not_nullable::<LogsGate>")]
    pub logs: Option<LogsGate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "not_nullable::<MetricsGate>")]
    pub metrics: Option<MetricsGate>,
    /// Fields this controller does not know. The schema prunes them, so they arrive
    /// only past it: a probe kind of a newer bosun whose CRD kept it, or a Runbook
    /// stored before a CRD upgrade. [`RunbookSpec::validate`] names each one.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub unknown_fields: BTreeMap<String, Value>,
}

/// Schema transform for [`Gate`]: `oneOf` one `required` clause per probe kind, so the
/// API server refuses a gate with no probe or with two. Structural schemas allow
/// value validations only in `oneOf` branches (no `type`, `description`,
/// `properties`), which plain `required` lists are. An unknown field (`smoke:`) is
/// pruned before validation, so such a gate is refused as having no probe.
fn exactly_one_probe_kind(schema: &mut schemars::Schema) {
    let branches: Vec<Value> = PROBE_KINDS
        .iter()
        .map(|kind| json!({ "required": [kind] }))
        .collect();
    schema.insert("oneOf".into(), Value::Array(branches));
}

/// The schema of `T` for an `Option<T>` field without `nullable`: the API server then
/// drops an explicit `null` before validation instead of storing it, so `http: null`
/// counts as no probe in the `oneOf` above.
fn not_nullable<T: JsonSchema>(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.subschema_for::<T>()
}

impl Gate {
    pub fn period(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.period_seconds.unwrap_or(5).max(1).into())
    }
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(5).max(1).into())
    }
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3).max(1)
    }
    pub fn success_threshold(&self) -> u32 {
        self.success_threshold.unwrap_or(1).max(1)
    }
}

/// An HTTP probe: `url`, or `service` + `port` (+ `scheme`) in the target namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_http_target)]
pub struct HttpGate {
    /// Absolute `http://` or `https://` URL; `path` is appended to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN))]
    pub url: Option<String>,
    /// A Service in the app's namespace, probed at `{scheme}://{service}.{namespace}.svc:{port}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SERVICE_NAME_PATTERN), length(max = 63))]
    pub service: Option<String>,
    /// The Service port (required with `service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub port: Option<u16>,
    /// `http` (default) or `https`, with `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["http", "https"]))]
    pub scheme: Option<String>,
    /// Path of the request, starting with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^/"))]
    pub path: Option<String>,
    /// Default `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = HTTP_METHODS))]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request headers whose values are read from Secrets of the app's own namespace,
    /// by header name: `Authorization: {secretKeyRef: {name: api, key: token}, prefix:
    /// "Bearer "}`. Read as the app's identity (it needs `get secrets` there), never
    /// printed. The way a ClusterRunbook sends a credential to an app's endpoint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from: BTreeMap<String, HeaderFrom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default)]
    pub expect: HttpExpect,
    /// Follow redirects (default false: a 3xx answer is judged as the status it is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow_redirects: bool,
}

/// A request header's value from a Secret of the app's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderFrom {
    pub secret_key_ref: SecretKeyRef,
    /// Written before the Secret's value, e.g. `"Bearer "` for a Secret holding a bare token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Schema transform for [`HttpGate`]: exactly one target, `url` or `service` + `port`;
/// `port` and `scheme` only with `service` (a URL carries its own).
fn one_http_target(schema: &mut schemars::Schema) {
    schema.insert(
        "oneOf".into(),
        json!([{ "required": ["url"] }, { "required": ["service", "port"] }]),
    );
    schema.insert(
        "not".into(),
        json!({ "anyOf": [
            { "required": ["url", "service"] },
            { "required": ["url", "port"] },
            { "required": ["url", "scheme"] },
        ] }),
    );
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpExpect {
    /// Accepted status codes (default: any 2xx).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 100, max = 599)))]
    pub status: Vec<u16>,
    /// Dotted JSON path → expected value, e.g. `status: ok`, `checks.database: connected`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub json: BTreeMap<String, serde_json::Value>,
    /// Text the body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Response headers that must have these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// Always on; these settings tune it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadGate {
    /// Container restarts above which a pod counts as failing (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_restarts: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackPolicy {
    /// Flip back to the last healthy revision when a gate fails (default true).
    #[serde(default = "default_true")]
    pub automatic: bool,
}

fn default_true() -> bool {
    true
}

impl RunbookSpec {
    pub fn verify_window(&self) -> Result<std::time::Duration, String> {
        match &self.verify_window {
            Some(text) => super::parse_duration(text).map_err(|e| format!("spec.verifyWindow: {e}")),
            None => Ok(std::time::Duration::from_secs(60)),
        }
    }
    pub fn progress_deadline(&self) -> Result<std::time::Duration, String> {
        match &self.progress_deadline {
            Some(text) => super::parse_duration(text).map_err(|e| format!("spec.progressDeadline: {e}")),
            None => Ok(std::time::Duration::from_secs(600)),
        }
    }
    pub fn automatic_rollback(&self) -> bool {
        self.rollback.as_ref().is_none_or(|r| r.automatic)
    }
    pub fn max_restarts(&self) -> i32 {
        self.workload_gate
            .as_ref()
            .and_then(|w| w.max_restarts)
            .unwrap_or(3)
    }
}

/// Ordered HTTP requests, each judged like an `http` gate, stopping at the first that
/// fails. A step may capture values from its response for later steps: write
/// `{{.steps.STEP.NAME}}` in a later step's `url`, `path`, header value or `body`
/// (spaces inside the braces, `{{ .steps.STEP.NAME }}`, everywhere but in `url`, which
/// may not contain spaces). One probe of the gate runs every step; `timeoutSeconds`
/// bounds each request, not the steps' `eventually`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmokeGate {
    #[schemars(length(min = 1))]
    pub steps: Vec<SmokeStep>,
}

/// One request of a smoke test: an `http` probe with a name, captures and `eventually`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmokeStep {
    /// Names the step in messages and in `{{.steps.NAME.CAPTURE}}`: letters, digits,
    /// `-` and `_`.
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(flatten)]
    pub request: HttpGate,
    /// Values to keep from the response once the step passed, by name (letters,
    /// digits, `-`, `_`): `json:DOTTED.PATH` (`json:items.0.id`; a string as it is,
    /// other values as JSON) or `header:NAME` (e.g. `header:Location`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capture: BTreeMap<String, String>,
    /// Send the step again until its expectations hold and its captures are found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eventually: Option<Eventually>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Eventually {
    /// How long the step may keep failing (e.g. `30s`): the last try starts then.
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub within: String,
    /// Pause between tries (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub every: Option<String>,
}

/// A workload's pods that serve the revision being verified (whenever created; older
/// ones read from the apply on) log a line matching `pattern` within `within` of the
/// apply. A revision that rolled no pod and logged no such line: the gate does not apply.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogsGate {
    /// Name of a Deployment, StatefulSet or DaemonSet of the revision.
    #[schemars(length(min = 1))]
    pub workload: String,
    /// The container whose log is read (default: the pod's first container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// A regular expression a log line must match.
    #[schemars(length(min = 1))]
    pub pattern: String,
    /// Default `60s`, counted from the apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub within: Option<String>,
}

/// A PromQL instant query whose every sample must satisfy the threshold.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsGate {
    /// Base URL of the Prometheus server, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(regex(pattern = URL_PATTERN))]
    pub prometheus: String,
    #[schemars(length(min = 1))]
    pub query: String,
    pub threshold: Threshold,
    /// What an empty result means (default `Wait`: pending, failed at the progress deadline).
    #[serde(default)]
    pub no_data: NoData,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// One of `<`, `<=`, `>`, `>=`, `==`.
    #[schemars(extend("enum" = ["<", "<=", ">", ">=", "=="]))]
    pub op: String,
    pub value: f64,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NoData {
    #[default]
    Wait,
    Fail,
    Pass,
}

/// One variable of the env contract.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvRule {
    #[schemars(length(min = 1))]
    pub name: String,
    /// Every checked container must set it (unless `default` gives a value).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// The value assumed when a container does not set the variable: `required` is
    /// then met, and `policy` and `requiredWhen` of other variables read this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// With `default`: add `NAME=default` to containers that lack it when applying.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inject: bool,
    /// The value must come from a Secret (`secretKeyRef` or `envFrom` of a Secret); a
    /// literal or a ConfigMap is refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// Required only when another variable has a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required_when: Option<RequiredWhen>,
    /// Rules the value must follow wherever it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EnvPolicy>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequiredWhen {
    pub env: String,
    pub equals: String,
}

/// Rules for a value; every one given must hold.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<String>,
    /// A regular expression the whole value must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u32>,
    /// A value the variable must not have (e.g. a documented default secret, or `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_equals: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsPolicy {
    /// Roll the workloads that use a Secret when its data changes (default true).
    #[serde(default = "default_true")]
    pub rollout_on_change: bool,
}

/// A Job's container: from a workload of the new revision, or an image.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobStep {
    /// Take image, env, `envFrom`, volume mounts (and the pod's volumes, service account
    /// and image pull Secrets) from this container of the new revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ContainerRef>,
    /// The image, when not `from` a workload (or to override its image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// How long the Job may run (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// Retries of the Job's pod (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRef {
    /// A Deployment, StatefulSet, DaemonSet, Job or CronJob of the revision.
    pub workload: String,
    /// Default: the workload's first container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStep {
    #[serde(flatten)]
    pub job: JobStep,
    /// A failed backup stops the revision (default true); otherwise it is a warning.
    #[serde(default = "default_true")]
    pub required: bool,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrateStep {
    #[serde(flatten)]
    pub job: JobStep,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<MigrateRollback>,
}

/// What happens to the schema when a migrated revision is rolled back.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrateRollback {
    #[serde(default)]
    pub policy: MigrationRollbackPolicy,
    /// For `Downgrade`: the command run with the failed (newer) revision's image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum MigrationRollbackPolicy {
    /// The schema stays as the newer revision left it (additive migrations).
    #[default]
    Keep,
    /// Run the downgrade command before the workloads flip back.
    Downgrade,
    /// A revision that marks its migration irreversible (annotation
    /// `bosun.dev/migration: irreversible` on the migration's `from` workload) is not
    /// flipped back automatically: the app holds, `Failed`, for a human to decide.
    Hold,
}

/// A webhook told of the app's phase changes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Notify {
    /// Names the receiver in messages.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The webhook URL, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = URL_PATTERN))]
    pub url: Option<String>,
    /// The webhook URL from a Secret of the AppDeployment's namespace (URLs of chat
    /// webhooks are credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<SecretKeyRef>,
    /// `Json` (default) or `Slack` (`text` and `blocks`).
    #[serde(default)]
    pub format: NotifyFormat,
    /// Phases to tell (default: Healthy, Blocked, Failed, RollingBack, RolledBack).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<super::Phase>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum NotifyFormat {
    #[default]
    Json,
    Slack,
}

impl RunbookSpec {
    /// Whether a change of a referenced Secret rolls the workloads (default true).
    pub fn rollout_on_secret_change(&self) -> bool {
        self.secrets.as_ref().is_none_or(|s| s.rollout_on_change)
    }
    /// The policy for the schema when a migrated revision is rolled back.
    pub fn migration_rollback_policy(&self) -> MigrationRollbackPolicy {
        self.migrate
            .as_ref()
            .and_then(|m| m.rollback.as_ref())
            .map_or(MigrationRollbackPolicy::Keep, |r| r.policy)
    }
}

impl JobStep {
    pub fn timeout(&self) -> Result<std::time::Duration, String> {
        match &self.timeout {
            Some(text) => super::parse_duration(text),
            None => Ok(std::time::Duration::from_secs(600)),
        }
    }
}
