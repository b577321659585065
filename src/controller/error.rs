/// A cause kept with an error, with its own causes (see [`crate::failure::error_chain`]).
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Failures of a pass that the error policy retries with a back-off. Failures of the
/// revision itself (bad manifests, failing gates) are not errors: they become phases.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The status changed since this pass read it: re-read and decide again.
    #[error("the AppDeployment changed while it was being reconciled")]
    Conflict,
    /// Something of the controller's own failed (a listener, a client, the Lease): the
    /// message says what, and `cause`, when there is one, keeps why with its own causes.
    #[error("{message}")]
    Internal {
        message: String,
        #[source]
        cause: Option<Cause>,
    },
}

impl Error {
    /// An internal error with nothing underneath (a rule of the controller's own).
    pub fn internal(message: impl Into<String>) -> Error {
        Error::Internal {
            message: message.into(),
            cause: None,
        }
    }

    /// `what: cause`, the cause kept as the error's source.
    pub fn internal_from(what: &str, cause: impl Into<Cause>) -> Error {
        let cause = cause.into();
        Error::Internal {
            message: format!("{what}: {cause}"),
            cause: Some(cause),
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Conflict => "conflict",
            Error::Internal { .. } => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_cause_chain() {
        let refused = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let error = Error::internal_from("--listen-address 0.0.0.0:8080", refused);
        assert_eq!(
            error.to_string(),
            "--listen-address 0.0.0.0:8080: Address already in use"
        );
        let cause = std::error::Error::source(&error).expect("the cause is kept");
        assert_eq!(cause.to_string(), "Address already in use");
        // Said once, though the message quotes it.
        assert_eq!(
            crate::failure::error_chain(&error),
            "--listen-address 0.0.0.0:8080: Address already in use"
        );
        assert!(std::error::Error::source(&Error::internal("no operation")).is_none());
    }
}
