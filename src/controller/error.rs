/// Failures of a pass that the error policy retries with a back-off. Failures of the
/// revision itself (bad manifests, failing gates) are not errors: they become phases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The status changed since this pass read it: re-read and decide again.
    #[error("the AppDeployment changed while it was being reconciled")]
    Conflict,
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict => "conflict",
            Error::Internal(_) => "internal",
        }
    }
}
