use super::GroupServing;
use crate::api::InventoryEntry;
use crate::core::{Failure, FailureKind};
use crate::failure::{ApiErrorClass, Classified, class_of, describe_forbidden, server_message};

/// Where a failing object came from, as `file:line`.
pub type Location = String;

/// What the apply stage was doing when the API server answered with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Discovery,
    Read,
    DryRun,
    Apply,
    WaitEstablished,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Action::Discovery => "discovering",
            Action::Read => "reading",
            Action::DryRun => "dry run of",
            Action::Apply => "applying",
            Action::WaitEstablished => "waiting for",
        }
    }
}

/// Why a revision could not be applied. Every variant names the object, and where the
/// object came from when it came from a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{file}:{line}: invalid manifest: {message}")]
    InvalidManifest {
        file: String,
        line: usize,
        message: String,
    },
    #[error("{object} ({location}): {message}")]
    InvalidObject {
        object: InventoryEntry,
        location: Location,
        message: String,
    },
    #[error("{object} ({location}) is also defined at {first}")]
    DuplicateObject {
        object: InventoryEntry,
        location: Location,
        first: Location,
    },
    #[error("{kind} {name} ({location}): {}", unknown_kind(api_version, kind, serving.as_ref()))]
    UnknownKind {
        api_version: String,
        kind: String,
        name: String,
        location: Location,
        /// What the server serves of the group instead (`None`: discovery could not say).
        serving: Option<GroupServing>,
    },
    #[error("{object} ({location}) belongs to {owner}; nothing was overwritten")]
    OwnedByAnother {
        object: InventoryEntry,
        location: Location,
        owner: String,
    },
    /// The API server answered with an error (or did not answer).
    #[error("{} {subject}: {message}", action.describe())]
    Api {
        action: Action,
        /// The object (`ConfigMap shop/a (deploy/a.yaml:3)`) or API version concerned.
        subject: String,
        message: String,
        class: ApiErrorClass,
    },
    #[error("CustomResourceDefinition {name} cannot be Established: {message}")]
    CrdNamesRejected { name: String, message: String },
}

/// Why the server has no `kind` at `api_version`, and what the manifest could say
/// instead: manifests written for newer Kubernetes often name an apiVersion an older
/// server does not serve yet (`autoscaling/v2` before 1.23), or one a newer server
/// stopped serving (`extensions/v1beta1` Ingress after 1.21).
fn unknown_kind(api_version: &str, kind: &str, serving: Option<&GroupServing>) -> String {
    let no_crd = "no CustomResourceDefinition in this revision defines it";
    let Some(serving) = serving else {
        return format!("the API server has no kind {kind} in {api_version} and {no_crd}");
    };
    let group = api_version
        .split_once('/')
        .map_or("the core group", |(group, _)| group);
    let elsewhere = (!serving.versions_with_kind.is_empty())
        .then(|| format!("it serves {kind} as {}", serving.versions_with_kind.join(", ")));
    match (serving.version_served, elsewhere) {
        (false, Some(elsewhere)) => {
            format!("API version {api_version} is not served by this API server; {elsewhere}")
        }
        (false, None) if serving.versions.is_empty() => format!(
            "API version {api_version} is not served by this API server (it serves no version \
             of {group}), and {no_crd}"
        ),
        (false, None) => format!(
            "API version {api_version} is not served by this API server (for {group} it serves {}, \
             without kind {kind}), and {no_crd}",
            serving.versions.join(", ")
        ),
        (true, Some(elsewhere)) => {
            format!("the API server has no kind {kind} in {api_version}; {elsewhere}")
        }
        (true, None) => format!("the API server has no kind {kind} in {api_version} and {no_crd}"),
    }
}

impl ApplyError {
    pub(crate) fn api(action: Action, subject: String, error: &kube::Error) -> Self {
        ApplyError::Api {
            action,
            subject,
            message: server_message(error),
            class: class_of(error),
        }
    }

    /// Short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::InvalidManifest { .. } | ApplyError::InvalidObject { .. } => "InvalidManifest",
            ApplyError::DuplicateObject { .. } => "DuplicateObject",
            ApplyError::UnknownKind { .. } => "UnknownKind",
            ApplyError::OwnedByAnother { .. } => "OwnershipConflict",
            ApplyError::Api { action, class, .. } => match (class, action) {
                (ApiErrorClass::Forbidden, _) => "Forbidden",
                (_, Action::DryRun) => "DryRunFailed",
                (_, Action::Read) => "ReadFailed",
                (_, Action::Discovery) => "DiscoveryFailed",
                (_, Action::Apply) => "ApplyFailed",
                (_, Action::WaitEstablished) => "CrdNotEstablished",
            },
            ApplyError::CrdNamesRejected { .. } => "CrdNotEstablished",
        }
    }

    /// What the error means for the revision (see [`crate::failure`]).
    pub fn classify(&self) -> Classified {
        let refused = |kind| Classified::Refused(Failure::new(kind, self.to_string()));
        match self {
            ApplyError::Api {
                class: ApiErrorClass::Transient,
                ..
            } => Classified::Transient(self.to_string()),
            ApplyError::Api {
                action,
                subject,
                message,
                class: ApiErrorClass::Forbidden,
            } => Classified::Refused(Failure::new(
                FailureKind::Forbidden,
                format!("{} {subject}: {}", action.describe(), describe_forbidden(message)),
            )),
            ApplyError::OwnedByAnother { .. } => refused(FailureKind::OwnershipConflict),
            _ => refused(FailureKind::RevisionInvalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unknown(api_version: &str, kind: &str, serving: Option<GroupServing>) -> String {
        ApplyError::UnknownKind {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "podinfo".into(),
            location: "kustomize/hpa.yaml:1".into(),
            serving,
        }
        .to_string()
    }

    fn serving(version_served: bool, versions: &[&str], versions_with_kind: &[&str]) -> Option<GroupServing> {
        Some(GroupServing {
            version_served,
            versions: versions.iter().map(|v| v.to_string()).collect(),
            versions_with_kind: versions_with_kind.iter().map(|v| v.to_string()).collect(),
        })
    }

    #[test]
    fn a_version_the_server_does_not_serve_names_those_it_does() {
        // podinfo's HPA on a 1.20 API server (as discovery answers there).
        let served = ["autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2"];
        assert_eq!(
            unknown(
                "autoscaling/v2",
                "HorizontalPodAutoscaler",
                serving(false, &served, &served)
            ),
            "HorizontalPodAutoscaler podinfo (kustomize/hpa.yaml:1): API version autoscaling/v2 is \
             not served by this API server; it serves HorizontalPodAutoscaler as autoscaling/v1, \
             autoscaling/v2beta1, autoscaling/v2beta2"
        );
        // The group is there, the kind is not in any of its versions.
        assert_eq!(
            unknown(
                "example.com/v2",
                "Widget",
                serving(false, &["example.com/v1"], &[])
            ),
            "Widget podinfo (kustomize/hpa.yaml:1): API version example.com/v2 is not served by \
             this API server (for example.com it serves example.com/v1, without kind Widget), and \
             no CustomResourceDefinition in this revision defines it"
        );
        // No version of the group at all: most likely a CRD not installed.
        assert_eq!(
            unknown("example.com/v1", "Widget", serving(false, &[], &[])),
            "Widget podinfo (kustomize/hpa.yaml:1): API version example.com/v1 is not served by \
             this API server (it serves no version of example.com), and no \
             CustomResourceDefinition in this revision defines it"
        );
    }

    #[test]
    fn a_kind_missing_from_a_served_version_names_where_it_is() {
        assert_eq!(
            unknown(
                "batch/v1",
                "CronJob",
                serving(true, &["batch/v1", "batch/v1beta1"], &["batch/v1beta1"])
            ),
            "CronJob podinfo (kustomize/hpa.yaml:1): the API server has no kind CronJob in \
             batch/v1; it serves CronJob as batch/v1beta1"
        );
        assert_eq!(
            unknown("v1", "Gadget", serving(true, &["v1"], &[])),
            "Gadget podinfo (kustomize/hpa.yaml:1): the API server has no kind Gadget in v1 and no \
             CustomResourceDefinition in this revision defines it"
        );
        assert!(
            unknown("v2", "Pod", serving(false, &["v1"], &["v1"]))
                .ends_with("API version v2 is not served by this API server; it serves Pod as v1")
        );
    }

    #[test]
    fn without_discovery_the_message_still_names_kind_and_version() {
        let text = unknown("autoscaling/v2", "HorizontalPodAutoscaler", None);
        assert_eq!(
            text,
            "HorizontalPodAutoscaler podinfo (kustomize/hpa.yaml:1): the API server has no kind \
             HorizontalPodAutoscaler in autoscaling/v2 and no CustomResourceDefinition in this \
             revision defines it"
        );
        let error = ApplyError::UnknownKind {
            api_version: "autoscaling/v2".into(),
            kind: "HorizontalPodAutoscaler".into(),
            name: "podinfo".into(),
            location: "hpa.yaml:1".into(),
            serving: None,
        };
        assert_eq!(error.reason(), "UnknownKind");
        assert!(matches!(error.classify(), Classified::Refused(f) if f.kind == FailureKind::RevisionInvalid));
    }
}
