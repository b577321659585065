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
    #[error(
        "{kind} {name} ({location}): the API server has no kind {kind} in {api_version} \
         and no CustomResourceDefinition in this revision defines it"
    )]
    UnknownKind {
        api_version: String,
        kind: String,
        name: String,
        location: Location,
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
