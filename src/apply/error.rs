use crate::api::InventoryEntry;

/// Where a failing object came from, as `file:line`.
pub type Location = String;

/// Why a revision could not be applied (or pruned). Every variant names the object, and
/// where the object came from when it came from a manifest.
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
    #[error("discovery of {api_version} failed: {message}")]
    Discovery { api_version: String, message: String },
    #[error("{object} ({location}) was rejected by the API server (dry run): {message}")]
    DryRunFailed {
        object: InventoryEntry,
        location: Location,
        message: String,
    },
    #[error("{object} ({location}) could not be read from the API server: {message}")]
    ReadFailed {
        object: InventoryEntry,
        location: Location,
        message: String,
    },
    #[error("applying {object} ({location}) failed: {message}")]
    ApplyFailed {
        object: InventoryEntry,
        location: Location,
        message: String,
    },
    #[error("CustomResourceDefinition {name} did not become Established: {message}")]
    CrdNotEstablished { name: String, message: String },
    #[error("pruning {object} failed: {message}")]
    PruneFailed { object: InventoryEntry, message: String },
}

impl ApplyError {
    /// Short CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::InvalidManifest { .. } | ApplyError::InvalidObject { .. } => "InvalidManifest",
            ApplyError::DuplicateObject { .. } => "DuplicateObject",
            ApplyError::UnknownKind { .. } => "UnknownKind",
            ApplyError::Discovery { .. } => "DiscoveryFailed",
            ApplyError::DryRunFailed { .. } => "DryRunFailed",
            ApplyError::ReadFailed { .. } => "ReadFailed",
            ApplyError::ApplyFailed { .. } => "ApplyFailed",
            ApplyError::CrdNotEstablished { .. } => "CrdNotEstablished",
            ApplyError::PruneFailed { .. } => "PruneFailed",
        }
    }

    /// True when nothing of the revision was changed on the server: the error came from
    /// validation (manifests, discovery, dry run) before the first write.
    pub fn before_any_write(&self) -> bool {
        !matches!(
            self,
            ApplyError::ApplyFailed { .. }
                | ApplyError::CrdNotEstablished { .. }
                | ApplyError::PruneFailed { .. }
        )
    }
}

/// The API server's own message when there is one (it names the field), else the error.
pub(crate) fn server_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}
