//! The API server's audit log of write requests: the policy the local control
//! plane runs with, and the parsing of the log into [`AuditedWrite`] records.
//!
//! Kubernetes 1.20 has no per-user request metric, so the audit log is how a test
//! tells the writes of the controller under test (user `bosun`, see
//! [`CONTROLLER_USER`](super::CONTROLLER_USER)) from its own (user `admin`).

use anyhow::Context;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// The verbs of requests that change state; only these are audited.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// The name of the Namespace the audit barrier reads. It never exists: the read
/// answers 404, and its audit record proves the log caught up (see [`POLICY`]).
pub const BARRIER_NAMESPACE: &str = "bosun-devenv-audit-barrier";

/// The User-Agent prefix of barrier reads; a random suffix identifies each one.
pub const BARRIER_USER_AGENT: &str = "bosun-devenv-audit-barrier";

/// The audit policy: writes at `Metadata` level (who, what, which object, the
/// response code; never the request or response body), logged once the response
/// is complete. Reads are not logged, except one: a `get` by `admin` of the
/// Namespace [`BARRIER_NAMESPACE`]. The API server writes an audit record as the
/// request completes, so a client may see its response before the record is on
/// disk; reading after a barrier's record closes that gap.
pub const POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: Metadata
  users: ["admin"]
  verbs: ["get"]
  resources:
  - group: ""
    resources: ["namespaces"]
    resourceNames: ["bosun-devenv-audit-barrier"]
- level: None
"#;

/// Whether `verb` changes state (one of [`WRITE_VERBS`]).
pub fn audit_write_verb(verb: &str) -> bool {
    WRITE_VERBS.contains(&verb)
}

/// [`POLICY`] plus the reads (get, list, watch) of `user`, at `Metadata` level.
pub fn policy_with_reads_of(user: &str) -> String {
    POLICY.replacen(
        "rules:\n",
        &format!(
            "rules:\n- level: Metadata\n  users: [\"{user}\"]\n  verbs: [\"get\", \"list\", \"watch\"]\n"
        ),
        1,
    )
}

/// One write request as the API server recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedWrite {
    /// The API server's id of the request.
    pub audit_id: String,
    /// Who sent the request (`admin`, `bosun`, `system:serviceaccount:NS:NAME`, ...).
    pub user: String,
    /// Whom the sender impersonated, if anyone.
    pub impersonated_user: Option<String>,
    /// `create`, `update`, `patch` (also server-side apply), `delete` or `deletecollection`.
    pub verb: String,
    /// The API group, `""` for the core group.
    pub group: String,
    /// The API version, e.g. `v1`.
    pub version: String,
    /// The resource (plural), e.g. `configmaps`.
    pub resource: String,
    /// `status`, `scale`, ... when the request was for a subresource.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object's name; for a create taken from the object sent.
    pub name: Option<String>,
    /// Whether the request was a dry run (`dryRun=All` in the request URI).
    pub dry_run: bool,
    /// The HTTP status code of the response.
    pub code: Option<u16>,
    pub request_uri: String,
    pub user_agent: String,
    /// When the API server received the request.
    pub received_at: Timestamp,
    /// When the response was complete.
    pub completed_at: Timestamp,
}

impl AuditedWrite {
    /// The user whose rights the request used: the impersonated user if any, else
    /// the sender.
    pub fn effective_user(&self) -> &str {
        self.impersonated_user.as_deref().unwrap_or(&self.user)
    }

    /// Whether `user` sent this request (or sent it impersonating `user`) and it
    /// was not a dry run. A refused request counts too: it was sent (see
    /// [`AuditedWrite::succeeded`]).
    pub fn is_write_by(&self, user: &str) -> bool {
        self.effective_user() == user && !self.dry_run
    }

    /// Whether the API server accepted the request (2xx).
    pub fn succeeded(&self) -> bool {
        self.code.is_some_and(|code| (200..300).contains(&code))
    }
}

/// The fields of an `audit.k8s.io/v1` Event that [`AuditedWrite`] keeps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(default, rename = "auditID")]
    audit_id: String,
    stage: String,
    #[serde(default, rename = "requestURI")]
    request_uri: String,
    verb: String,
    user: UserInfo,
    impersonated_user: Option<UserInfo>,
    #[serde(default)]
    user_agent: String,
    object_ref: Option<ObjectRef>,
    response_status: Option<ResponseStatus>,
    request_received_timestamp: Timestamp,
    stage_timestamp: Timestamp,
}

#[derive(Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    #[serde(default)]
    api_group: String,
    #[serde(default)]
    api_version: String,
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    code: Option<u16>,
}

/// The write requests in an audit log (JSON lines), oldest first. Records of other
/// verbs or stages are skipped, and so is an unfinished last line (the API server
/// may be writing it).
pub fn parse_writes(log: &str) -> anyhow::Result<Vec<AuditedWrite>> {
    parse(log, |event| {
        event.stage == "ResponseComplete" && WRITE_VERBS.contains(&event.verb.as_str())
    })
}

/// Every request in an audit log, oldest first: each at its `ResponseComplete`
/// record, except watches, counted at `ResponseStarted` (they complete only when the
/// stream closes).
pub fn parse_requests(log: &str) -> anyhow::Result<Vec<AuditedWrite>> {
    parse(log, |event| match event.verb.as_str() {
        "watch" => event.stage == "ResponseStarted",
        _ => event.stage == "ResponseComplete",
    })
}

fn parse(log: &str, wanted: impl Fn(&Event) -> bool) -> anyhow::Result<Vec<AuditedWrite>> {
    let complete = match log.rfind('\n') {
        Some(end) => &log[..end],
        None => "",
    };
    let mut writes = Vec::new();
    for (index, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(line)
            .with_context(|| format!("audit log line {}: not an audit event", index + 1))?;
        if !wanted(&event) {
            continue;
        }
        let object = event.object_ref.unwrap_or_default();
        writes.push(AuditedWrite {
            dry_run: is_dry_run(&event.request_uri),
            audit_id: event.audit_id,
            user: event.user.username,
            impersonated_user: event.impersonated_user.map(|u| u.username),
            verb: event.verb,
            group: object.api_group,
            version: object.api_version,
            resource: object.resource,
            subresource: object.subresource.filter(|s| !s.is_empty()),
            namespace: object.namespace.filter(|s| !s.is_empty()),
            name: object.name.filter(|s| !s.is_empty()),
            code: event.response_status.and_then(|s| s.code),
            request_uri: event.request_uri,
            user_agent: event.user_agent,
            received_at: event.request_received_timestamp,
            completed_at: event.stage_timestamp,
        });
    }
    Ok(writes)
}

/// Whether the log holds the record of the barrier read sent with `user_agent`.
pub fn has_barrier(log: &str, user_agent: &str) -> bool {
    // The User-Agent is a JSON string without characters that need escaping.
    log.contains(&format!("\"userAgent\":\"{user_agent}\""))
}

/// Whether a request URI asks for a dry run. `All` is the only value the API
/// server accepts.
fn is_dry_run(request_uri: &str) -> bool {
    let Some((_, query)) = request_uri.split_once('?') else {
        return false;
    };
    query.split('&').any(|pair| pair == "dryRun=All")
}

#[cfg(test)]
mod tests {
    use super::*;

    const APPLY: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/web/configmaps/settings?fieldManager=bosun\u0026force=true","verb":"patch","user":{"username":"bosun","groups":["system:masters","system:authenticated"]},"sourceIPs":["127.0.0.1"],"userAgent":"bosun/0.1","objectRef":{"resource":"configmaps","namespace":"web","name":"settings","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},"requestReceivedTimestamp":"2024-05-01T10:00:00.123456Z","stageTimestamp":"2024-05-01T10:00:00.130000Z"}"#;

    const DRY_RUN_STATUS: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a2","stage":"ResponseComplete","requestURI":"/apis/apps/v1/namespaces/web/deployments/api/status?dryRun=All\u0026fieldManager=x","verb":"update","user":{"username":"admin"},"impersonatedUser":{"username":"system:serviceaccount:web:deployer"},"userAgent":"test","objectRef":{"resource":"deployments","namespace":"web","name":"api","apiGroup":"apps","apiVersion":"v1","subresource":"status"},"responseStatus":{"metadata":{},"code":403},"requestReceivedTimestamp":"2024-05-01T10:00:01Z","stageTimestamp":"2024-05-01T10:00:01Z"}"#;

    const BARRIER: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a3","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/bosun-devenv-audit-barrier","verb":"get","user":{"username":"admin"},"userAgent":"bosun-devenv-audit-barrier/42","objectRef":{"resource":"namespaces","name":"bosun-devenv-audit-barrier","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":404},"requestReceivedTimestamp":"2024-05-01T10:00:02Z","stageTimestamp":"2024-05-01T10:00:02Z"}"#;

    #[test]
    fn writes_are_parsed_with_their_object_and_caller() {
        let log = format!("{APPLY}\n{DRY_RUN_STATUS}\n{BARRIER}\n");
        let writes = parse_writes(&log).unwrap();
        assert_eq!(writes.len(), 2, "the barrier read is not a write");

        let apply = &writes[0];
        assert_eq!(apply.user, "bosun");
        assert_eq!(apply.effective_user(), "bosun");
        assert_eq!(apply.verb, "patch");
        assert_eq!((apply.group.as_str(), apply.version.as_str()), ("", "v1"));
        assert_eq!(apply.resource, "configmaps");
        assert_eq!(apply.subresource, None);
        assert_eq!(apply.namespace.as_deref(), Some("web"));
        assert_eq!(apply.name.as_deref(), Some("settings"));
        assert!(!apply.dry_run);
        assert_eq!(apply.code, Some(201));
        assert!(apply.succeeded());
        assert_eq!(apply.user_agent, "bosun/0.1");
        assert_eq!(apply.received_at.to_string(), "2024-05-01T10:00:00.123456Z");
        assert!(apply.is_write_by("bosun"));

        let status = &writes[1];
        assert_eq!(status.effective_user(), "system:serviceaccount:web:deployer");
        assert_eq!(status.group, "apps");
        assert_eq!(status.subresource.as_deref(), Some("status"));
        assert!(status.dry_run);
        assert!(!status.succeeded());
        assert!(!status.is_write_by("system:serviceaccount:web:deployer"));
    }

    #[test]
    fn an_unfinished_last_line_is_skipped() {
        let log = format!("{APPLY}\n{}", &DRY_RUN_STATUS[..40]);
        assert_eq!(parse_writes(&log).unwrap().len(), 1);
        assert!(parse_writes("").unwrap().is_empty());
    }

    #[test]
    fn a_garbled_line_names_its_number() {
        let error = parse_writes(&format!("{APPLY}\nnot json\n")).unwrap_err();
        assert!(format!("{error:#}").contains("line 2"), "{error:#}");
    }

    #[test]
    fn the_barrier_is_found_by_its_user_agent() {
        assert!(has_barrier(BARRIER, "bosun-devenv-audit-barrier/42"));
        assert!(!has_barrier(BARRIER, "bosun-devenv-audit-barrier/4"));
    }

    #[test]
    fn dry_run_is_read_from_the_query() {
        assert!(is_dry_run("/api/v1/namespaces/a/configmaps?dryRun=All"));
        assert!(is_dry_run(
            "/api/v1/namespaces/a/configmaps/b?fieldManager=x&dryRun=All"
        ));
        assert!(!is_dry_run("/api/v1/namespaces/dryRun=All/configmaps"));
        assert!(!is_dry_run("/api/v1/namespaces/a/configmaps?fieldManager=dryRun"));
    }

    #[test]
    fn the_policy_is_valid_yaml_naming_the_barrier() {
        let policy: serde_json::Value = serde_saphyr::from_str(POLICY).unwrap();
        assert_eq!(policy["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(
            policy["rules"][1]["resources"][0]["resourceNames"][0],
            BARRIER_NAMESPACE
        );
        let verbs: Vec<&str> = policy["rules"][0]["verbs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(verbs, WRITE_VERBS);
    }
}
