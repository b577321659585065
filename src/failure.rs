//! The one place that says what an error means for a revision: try again later
//! (transient), or a refusal of a known kind ([`FailureKind`]). Every stage maps its
//! errors through here, and [`crate::core::decide`] turns the result into retry, block
//! or rollback.
//!
//! Kubernetes API errors are classified by what the API server answered:
//! - transient: no answer (connection refused or reset, timeouts), 408, 409 (an
//!   optimistic-lock conflict), 410, 429, 401 (credentials being rotated), and 5xx except
//!   501 Not Implemented and 1.20's 500 for an object it cannot convert (a malformed
//!   quantity); an admission webhook that is down or answers 500 makes the API server
//!   answer 500 "failed calling webhook", which passes when the webhook is back;
//! - forbidden: 403 from authorization (RBAC), which names the user, verb and resource;
//! - refused: every other 4xx, and an admission webhook's denial (which can come as a
//!   403 too, but says "admission webhook ... denied the request"): the revision itself.

use crate::core::{Failure, FailureKind, StepOutcome};

/// What an error means for the step that met it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    Transient(String),
    Refused(Failure),
}

impl Classified {
    pub fn message(&self) -> &str {
        match self {
            Classified::Transient(message) => message,
            Classified::Refused(failure) => &failure.message,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Classified::Transient(_))
    }
}

/// A step that met a classified error reports it as is: retried later, or a refusal
/// for [`crate::core::decide`] to judge.
impl From<Classified> for StepOutcome {
    fn from(classified: Classified) -> StepOutcome {
        match classified {
            Classified::Transient(message) => StepOutcome::Transient(message),
            Classified::Refused(failure) => StepOutcome::Refused(failure),
        }
    }
}

/// The class of a Kubernetes API error, without the words around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiErrorClass {
    Transient,
    Forbidden,
    Refused,
}

pub(crate) fn class_of(error: &kube::Error) -> ApiErrorClass {
    match error {
        kube::Error::Api(status) => class_of_status(status.code, &status.message),
        // The request could not be built or its answer not read as JSON: the object is
        // the problem, not the network.
        kube::Error::SerdeError(_) | kube::Error::BuildRequest(_) => ApiErrorClass::Refused,
        // No answer at all: connection refused or reset, TLS, timeouts, the token
        // source, a watch stream ending.
        _ => ApiErrorClass::Transient,
    }
}

/// Classifies an answer of the API server by its HTTP status code and message.
pub(crate) fn class_of_status(code: u16, message: &str) -> ApiErrorClass {
    match code {
        401 | 408 | 409 | 410 | 429 => ApiErrorClass::Transient,
        403 if is_admission_denial(message) => ApiErrorClass::Refused,
        403 => ApiErrorClass::Forbidden,
        501 => ApiErrorClass::Refused,
        500 if is_conversion_refusal(message) => ApiErrorClass::Refused,
        500..=599 => ApiErrorClass::Transient,
        _ => ApiErrorClass::Refused,
    }
}

/// Kubernetes 1.20 answers a server-side apply of an object it cannot type (a string
/// where the schema wants a number, a malformed quantity) with a 500: "failed to create
/// typed patch object" or "failed to convert new object to proper version". A verdict
/// on the object that no retry changes.
fn is_conversion_refusal(message: &str) -> bool {
    message.contains("failed to convert new object")
        || message.contains("failed to create typed patch object")
}

/// An admission webhook (or admission plugin) said no: a verdict on the object.
fn is_admission_denial(message: &str) -> bool {
    message.contains("admission webhook") && message.contains("denied the request")
}

/// The API server's own message when there is one (it names the field), else the error
/// with its causes: `client error (Connect)` alone does not say that the connection
/// was refused.
pub(crate) fn server_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => error_chain(other),
    }
}

/// An error and the chain of its sources, each said once (many errors repeat their
/// source in their own message): `error sending request: client error (Connect): tcp
/// connect error: Connection refused (os error 111)`. The one formatter of causes.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    chain_after(error.to_string(), error.source())
}

/// `text` (what the caller says of an error, e.g. its own message without a URL)
/// followed by the causes from `source` on, each said once.
pub(crate) fn chain_after(mut text: String, mut source: Option<&dyn std::error::Error>) -> String {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Classifies `error` met while doing something to `subject` (e.g. "dry run of
/// ConfigMap shop/a (deploy/a.yaml:3)"); the message says what and why.
pub fn classify(error: &kube::Error, subject: &str) -> Classified {
    let message = server_message(error);
    match class_of(error) {
        ApiErrorClass::Transient => Classified::Transient(format!("{subject}: {message}")),
        ApiErrorClass::Forbidden => Classified::Refused(Failure::new(
            FailureKind::Forbidden,
            format!("{subject}: {}", describe_forbidden(&message)),
        )),
        ApiErrorClass::Refused => Classified::Refused(Failure::new(
            FailureKind::RevisionInvalid,
            format!("{subject}: {message}"),
        )),
    }
}

/// `forbidden: system:serviceaccount:team:deployer may not create configmaps in
/// namespace kube-system` from the API server's RBAC refusal, which reads
/// `configmaps "x" is forbidden: User "system:serviceaccount:team:deployer" cannot
/// create resource "configmaps" in API group "" in the namespace "kube-system"`.
/// Anything else is quoted as it came.
pub(crate) fn describe_forbidden(message: &str) -> String {
    let quoted_after = |marker: &str| -> Option<&str> {
        let start = message.find(marker)? + marker.len();
        let rest = &message[start..];
        let end = rest.find('"')?;
        Some(&rest[..end])
    };
    let (Some(user), Some(resource)) = (quoted_after("User \""), quoted_after("resource \"")) else {
        return format!("forbidden: {message}");
    };
    let verb = message
        .find("\" cannot ")
        .map(|at| &message[at + "\" cannot ".len()..])
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("use");
    let group = quoted_after("API group \"").filter(|g| !g.is_empty());
    let resource = match group {
        Some(group) => format!("{resource}.{group}"),
        None => resource.to_string(),
    };
    let scope = match quoted_after("the namespace \"") {
        Some(namespace) => format!("in namespace {namespace}"),
        None => "at cluster scope".to_string(),
    };
    // The controller may impersonate only in namespaces onboarded as tenants (the
    // chart's `<release>-tenant` ClusterRole, bound there): say what is missing.
    let hint = if verb == "impersonate" {
        " (the namespace is not onboarded as a bosun tenant: bind bosun's tenant ClusterRole to its ServiceAccount there)"
    } else {
        ""
    };
    format!("forbidden: {user} may not {verb} {resource} {scope}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(kube::core::Status::failure(message, "").with_code(code).boxed())
    }

    #[test]
    fn codes_map_to_classes() {
        for code in [401, 408, 409, 410, 429, 500, 502, 503, 504] {
            assert_eq!(class_of(&api(code, "x")), ApiErrorClass::Transient, "{code}");
        }
        for code in [400, 404, 413, 415, 422, 501] {
            assert_eq!(class_of(&api(code, "x")), ApiErrorClass::Refused, "{code}");
        }
        assert_eq!(class_of(&api(403, "nope")), ApiErrorClass::Forbidden);
    }

    #[test]
    fn an_admission_denial_is_a_verdict_on_the_object_and_a_webhook_down_is_not() {
        let denied = "admission webhook \"deny.example.com\" denied the request: no latest tags";
        assert_eq!(class_of(&api(403, denied)), ApiErrorClass::Refused);
        assert_eq!(class_of(&api(400, denied)), ApiErrorClass::Refused);
        let malformed =
            "failed to convert new object to proper version: quantities must match the regular expression";
        assert_eq!(class_of(&api(500, malformed)), ApiErrorClass::Refused);
        let untyped = "failed to create typed patch object: .spec.size: expected numeric (int or float), got *value.valueUnstructured";
        assert_eq!(class_of(&api(500, untyped)), ApiErrorClass::Refused);
        let down = "Internal error occurred: failed calling webhook \"x.example.com\": Post \"https://127.0.0.1:1/\": dial tcp: connection refused";
        assert_eq!(class_of(&api(500, down)), ApiErrorClass::Transient);
    }

    #[test]
    fn forbidden_names_identity_verb_resource_and_namespace() {
        let message = r#"configmaps "x" is forbidden: User "system:serviceaccount:team:deployer" cannot patch resource "configmaps" in API group "" in the namespace "kube-system""#;
        assert_eq!(
            describe_forbidden(message),
            "forbidden: system:serviceaccount:team:deployer may not patch configmaps in namespace kube-system"
        );
        let cluster = r#"namespaces "x" is forbidden: User "system:serviceaccount:team:deployer" cannot get resource "namespaces" in API group "" at the cluster scope"#;
        assert_eq!(
            describe_forbidden(cluster),
            "forbidden: system:serviceaccount:team:deployer may not get namespaces at cluster scope"
        );
        let grouped = r#"deployments.apps "web" is forbidden: User "u" cannot create resource "deployments" in API group "apps" in the namespace "n""#;
        assert_eq!(
            describe_forbidden(grouped),
            "forbidden: u may not create deployments.apps in namespace n"
        );
        assert_eq!(describe_forbidden("odd"), "forbidden: odd");
        // What the API server says when bosun may not act as the app's account.
        let impersonation = r#"serviceaccounts "deployer" is forbidden: User "system:serviceaccount:bosun-system:bosun" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "outside""#;
        let described = describe_forbidden(impersonation);
        assert!(
            described.starts_with(
                "forbidden: system:serviceaccount:bosun-system:bosun may not impersonate serviceaccounts in namespace outside (the namespace is not onboarded"
            ),
            "{described}"
        );
        let classified = classify(
            &api(403, message),
            "dry run of ConfigMap kube-system/x (x.yaml:1)",
        );
        assert!(
            matches!(classified, Classified::Refused(Failure { kind: FailureKind::Forbidden, ref message }) if message.starts_with("dry run of ConfigMap kube-system/x (x.yaml:1): forbidden: system:serviceaccount:team:deployer"))
        );
    }

    /// What hyper's client says when it cannot connect: the why is in its sources.
    #[derive(Debug)]
    struct ConnectFailure(std::io::Error);

    impl std::fmt::Display for ConnectFailure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for ConnectFailure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_failed_connection_is_described_with_its_cause() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = kube::Error::Service(Box::new(ConnectFailure(refused)));
        assert_eq!(
            server_message(&error),
            "ServiceError: client error (Connect): Connection refused"
        );
        assert_eq!(
            classify(&error, "applying ConfigMap a/b").message(),
            "applying ConfigMap a/b: ServiceError: client error (Connect): Connection refused"
        );
    }

    /// An error whose message already quotes its cause.
    #[derive(Debug)]
    struct Quoting(ConnectFailure);

    impl std::fmt::Display for Quoting {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error sending request: {}", self.0)
        }
    }

    impl std::error::Error for Quoting {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn every_cause_is_said_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = Quoting(ConnectFailure(refused));
        assert_eq!(
            error_chain(&error),
            "error sending request: client error (Connect): Connection refused"
        );
        assert_eq!(
            chain_after("sending".into(), std::error::Error::source(&error)),
            "sending: client error (Connect): Connection refused"
        );
    }

    #[test]
    fn no_answer_is_transient() {
        let error = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert!(classify(&error, "read of ConfigMap a/b").is_transient());
    }
}
