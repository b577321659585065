/// Failures of a reconcile that the error policy retries. Failures of the revision
/// itself (bad manifests, failing gates) are not errors: they become phases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Snapshot(_) => "snapshot",
            Error::Internal(_) => "internal",
        }
    }
}
