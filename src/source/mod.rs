//! Fetch: the first stage of a revision's life (README, "The life of a revision" and
//! "Git sources: who reads what").
//!
//! Bare clones ([`GitCache`]) are fetched incrementally and read without a work tree:
//! a revision's manifests come straight out of the commit's tree
//! ([`GitCache::files`]), with `spec.source.git.path` and every symlink on the way
//! confined to the repository.
//!
//! Sources belong to whoever proved access: a clone is shared only by apps presenting
//! the same credentials (those written in the URL and those of `secretRef`, as a
//! digest), or none at all for a public repository; an app never reads a commit
//! fetched with credentials other than its own, and re-proves its access every
//! interval (see [`cache`](GitCache) for why objects are not shared further). Fetches
//! and tree walks have budgets ([`GitBudgets`]); clones no app uses are removed. URLs
//! are printed only through [`redact_url`].

mod cache;
mod credentials;
mod known_hosts;
mod refs;
mod tree;
mod url;

pub use cache::{FetchObserver, GitBudgets, GitCache};
pub use credentials::Credentials;
pub use tree::TreeBudget;
pub use url::redact_url;

use serde::{Deserialize, Serialize};

use crate::core::{Failure, FailureKind};
use crate::failure::Classified;

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
    pub(crate) const REF: &str = "spec.source.git.ref";
    pub const PATH: &str = "spec.source.git.path";
    pub(crate) const SECRET_REF: &str = "spec.source.git.secretRef";
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
    /// A budget of the controller (`--git-max-*`, [`GitBudgets`]) was exceeded by the
    /// repository: the message names the limit and the figure. The tenant's problem
    /// (the app is Blocked), never retried before the next interval.
    #[error("{message}")]
    BudgetExceeded { limit: &'static str, message: String },
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
            SourceError::BudgetExceeded { .. } => "BudgetExceeded",
            SourceError::Git { .. } => "GitError",
        }
    }

    /// What the error means for a step reading the revision (see [`crate::failure`]):
    /// the server or the network may answer later; anything else stays until the spec,
    /// the Secret or the repository changes, a verdict on the revision.
    pub fn classify(&self) -> Classified {
        match self {
            SourceError::FetchFailed { .. } | SourceError::Git { .. } => {
                Classified::Transient(self.to_string())
            }
            _ => Classified::Refused(Failure::new(FailureKind::RevisionInvalid, self.to_string())),
        }
    }

    pub(crate) fn git(context: &str, err: &git2::Error) -> SourceError {
        SourceError::Git {
            message: format!("{context}: {}", err.message()),
        }
    }
}

#[cfg(test)]
mod tests;

/// A byte count as the `--git-max-*-bytes` flags take it: `268435456`, `256Mi`,
/// `1Gi`, `512Ki` (binary units, as Kubernetes quantities), or `500M` (decimal).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (e.g. 268435456, 256Mi, 1Gi)"))?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use Ki, Mi, Gi, Ti, k, M, G or T)"
            ));
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Checks `spec.source.git.path` without touching Git: relative, no `..`.
pub fn validate_path(path: &str) -> Result<(), SourceError> {
    tree::validate_path(Some(path)).map(|_| ())
}

/// What a controller lets an AppDeployment's source do, beyond what the URL itself allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// `file://` URLs read the controller's own file system: only for demos and tests
    /// (`--allow-file-sources`), never in a shared cluster.
    pub allow_file_sources: bool,
}

/// Refuses a source the policy does not allow, before anything is fetched: `file://`
/// unless allowed, and credentials over plain `http://` (sent in clear text) unless the
/// source says `insecure: true`, whether they come from the Secret or are written in
/// the URL.
pub fn check_policy(
    url: &str,
    has_credentials: bool,
    insecure: bool,
    policy: SourcePolicy,
) -> Result<(), SourceError> {
    let url = url::RepoUrl::parse(url)?;
    let has_credentials = has_credentials || url.has_credentials();
    match url.scheme {
        url::Scheme::File if !policy.allow_file_sources => Err(SourceError::InvalidSpec {
            field: field::URL,
            message: format!(
                "{} reads the controller's own file system; file:// sources are allowed only when the controller runs with --allow-file-sources",
                url.redacted
            ),
        }),
        url::Scheme::Http if has_credentials && !insecure => Err(SourceError::InvalidSpec {
            field: field::SECRET_REF,
            message: format!(
                "{} is plain http://: the credentials would travel in clear text; use https:// or set spec.source.git.insecure: true",
                url.redacted
            ),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("256Mi"), Ok(256 * 1024 * 1024));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("5M"), Ok(5_000_000));
        for bad in ["", "Mi", "12 parsecs", "1.5Gi", "99999999999Ti"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_sources_need_the_controller_flag() {
        let closed = SourcePolicy::default();
        let open = SourcePolicy {
            allow_file_sources: true,
        };
        let error = check_policy("file:///srv/repo", false, false, closed).unwrap_err();
        assert!(error.to_string().contains("--allow-file-sources"), "{error}");
        assert!(check_policy("file:///srv/repo", false, false, open).is_ok());
        assert!(check_policy("https://example.com/repo.git", false, false, closed).is_ok());
    }

    #[test]
    fn credentials_over_plain_http_need_insecure() {
        let policy = SourcePolicy::default();
        let error = check_policy("http://git.example.com/repo.git", true, false, policy).unwrap_err();
        assert!(
            error.to_string().starts_with("spec.source.git.secretRef:"),
            "{error}"
        );
        assert!(error.to_string().contains("insecure: true"), "{error}");
        assert!(check_policy("http://git.example.com/repo.git", true, true, policy).is_ok());
        assert!(check_policy("http://git.example.com/repo.git", false, false, policy).is_ok());
        assert!(check_policy("https://git.example.com/repo.git", true, false, policy).is_ok());
        // A token written in the URL is a credential too, and is not shown.
        let error =
            check_policy("http://TOKEN1234@git.example.com/repo.git", false, false, policy).unwrap_err();
        assert!(!error.to_string().contains("TOKEN1234"), "{error}");
        assert!(check_policy("http://TOKEN1234@git.example.com/repo.git", false, true, policy).is_ok());
    }
}
