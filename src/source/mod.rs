//! Fetch: the first stage of a revision's life (SPEC §2 step 1).
//!
//! One bare clone per repository URL is shared by every AppDeployment that uses it
//! ([`GitCache`]); it is fetched incrementally and read without a work tree: a
//! revision's manifests come straight out of the commit's tree ([`GitCache::files`]),
//! with `spec.source.git.path` and every symlink on the way confined to the repository.

mod cache;
mod credentials;
mod known_hosts;
mod refs;
mod tree;
mod url;

pub use cache::GitCache;
pub use credentials::Credentials;

use serde::{Deserialize, Serialize};

/// A Git reference resolved to a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolved {
    /// Full hexadecimal commit id.
    pub commit: String,
    /// What was asked for and what it matched, for messages: `branch main`,
    /// `tag v1.2.0`, `commit 1a2b3c4`, `tag v1.2.0 (semver ^1)`.
    pub reference: String,
}

/// One manifest file read from a commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Repository-relative path as the user sees it (through symlinked directories),
    /// e.g. `deploy/app.yaml`.
    pub path: String,
    pub content: Vec<u8>,
}

/// Field names used in messages, so a user knows what to fix in the AppDeployment.
pub(crate) mod field {
    pub const URL: &str = "spec.source.git.url";
    pub const REF: &str = "spec.source.git.ref";
    pub const PATH: &str = "spec.source.git.path";
    pub const SECRET_REF: &str = "spec.source.git.secretRef";
}

/// Why fetching or reading a revision failed. Messages never carry credentials:
/// URLs are shown without passwords and Secret values are never included.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A field of `spec.source.git` is malformed (the message says how).
    #[error("{field}: {message}")]
    InvalidSpec { field: &'static str, message: String },
    /// The Secret named by `secretRef` does not hold usable credentials.
    #[error("Secret {secret}: {message}")]
    InvalidCredentials { secret: String, message: String },
    /// The repository could not be fetched (network, server, protocol).
    #[error("fetching {url} failed: {message}")]
    FetchFailed { url: String, message: String },
    /// The server refused the credentials (or asked for some and none were given).
    #[error("authentication to {url} failed: {message}")]
    AuthenticationFailed { url: String, message: String },
    /// The SSH server's host key is not the one in `known_hosts`.
    #[error("host key of {host} rejected: {message}")]
    HostKeyRejected { host: String, message: String },
    /// The branch, tag, semver range or commit does not exist in the repository.
    #[error("{reference} not found in {url}{}", detail_suffix(.detail))]
    RefNotFound {
        url: String,
        reference: String,
        detail: String,
    },
    /// `spec.source.git.path` is not a usable directory of the commit.
    #[error("spec.source.git.path {path:?}: {message}")]
    InvalidPath { path: String, message: String },
    /// A symlink in the commit points outside the repository (or loops).
    #[error("symlink {link} -> {target}: {message}")]
    SymlinkEscape {
        link: String,
        target: String,
        message: String,
    },
    /// Something went wrong inside git2 or the cache directory.
    #[error("git: {message}")]
    Git { message: String },
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(" ({detail})")
    }
}

impl SourceError {
    /// CamelCase reason for the `SourceReady` condition and for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::InvalidSpec { .. } => "InvalidSpec",
            SourceError::InvalidCredentials { .. } => "InvalidCredentials",
            SourceError::FetchFailed { .. } => "FetchFailed",
            SourceError::AuthenticationFailed { .. } => "AuthenticationFailed",
            SourceError::HostKeyRejected { .. } => "HostKeyRejected",
            SourceError::RefNotFound { .. } => "RefNotFound",
            SourceError::InvalidPath { .. } => "InvalidPath",
            SourceError::SymlinkEscape { .. } => "SymlinkOutsideRepository",
            SourceError::Git { .. } => "GitError",
        }
    }

    /// Whether trying again later may help (the server or network), as opposed to
    /// an error that stays until the spec, the Secret or the repository changes.
    pub fn is_transient(&self) -> bool {
        matches!(self, SourceError::FetchFailed { .. } | SourceError::Git { .. })
    }

    pub(crate) fn git(context: &str, err: &git2::Error) -> SourceError {
        SourceError::Git {
            message: format!("{context}: {}", err.message()),
        }
    }
}

#[cfg(test)]
mod tests;

/// Checks `spec.source.git.path` without touching Git: relative, no `..`.
pub fn validate_path(path: &str) -> Result<(), SourceError> {
    tree::validate_path(Some(path)).map(|_| ())
}
