//! The shared Git cache: one bare clone per repository URL, fetched incrementally,
//! whatever number of AppDeployments use it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, ErrorCode, FetchOptions, FetchPrune,
    ProxyOptions, RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::credentials::Auth;
use super::known_hosts::PresentedKey;
use super::refs::RefQuery;
use super::url::{RepoUrl, Scheme};
use super::{Credentials, Resolved, SourceError, SourceFile, field, tree};
use crate::api::GitRef;

/// Every branch and tag, force-updated, so the bare clone mirrors the server.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
/// Default limit on one fetch; a stalled server must not hold the URL's lock forever.
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Extra wait past the fetch timeout for the blocking task to notice it and return.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);
/// Credential prompts answered per fetch before giving up (libgit2 asks again on 401).
const MAX_AUTH_ATTEMPTS: u32 = 3;

/// Shared cache of bare clones under one directory. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct GitCache {
    inner: Arc<Inner>,
    fetch_timeout: Duration,
}

/// Told of every fetch: how long it took and, when it failed, why
/// ([`SourceError::reason`]). The controller's metrics listen here.
pub type FetchObserver = Arc<dyn Fn(Duration, Option<&'static str>) + Send + Sync>;

struct Inner {
    root: PathBuf,
    /// One lock per normalized URL: fetches of one repository never overlap, and a
    /// caller arriving during a fetch waits for it and then reuses its result.
    repos: Mutex<HashMap<String, Arc<AsyncMutex<RepoState>>>>,
    clones: AtomicUsize,
    fetches: AtomicUsize,
    /// When a push to each repository (normalized URL) was announced
    /// ([`GitCache::invalidate`]): a fetch begun before then may have missed it.
    pushed: Mutex<HashMap<String, Instant>>,
    observer: Option<FetchObserver>,
}

#[derive(Default)]
struct RepoState {
    /// When each set of credentials (by fingerprint; `""` = none) last began a fetch of
    /// this repository that succeeded. A caller whose credentials never fetched it must fetch
    /// once itself: sharing the clone must not share access to a private repository.
    fetched: HashMap<String, Instant>,
}

impl std::fmt::Debug for GitCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCache")
            .field("root", &self.inner.root)
            .field("clones", &self.clone_count())
            .field("fetches", &self.fetch_count())
            .finish_non_exhaustive()
    }
}

impl GitCache {
    /// A cache keeping its clones under `root` (created when needed).
    pub fn new(root: PathBuf) -> GitCache {
        GitCache::with_observer(root, None)
    }

    /// A cache (under `root`) that tells `observer` of every fetch.
    pub fn observed(root: PathBuf, observer: FetchObserver) -> GitCache {
        GitCache::with_observer(root, Some(observer))
    }

    fn with_observer(root: PathBuf, observer: Option<FetchObserver>) -> GitCache {
        GitCache {
            inner: Arc::new(Inner {
                root,
                repos: Mutex::new(HashMap::new()),
                clones: AtomicUsize::new(0),
                fetches: AtomicUsize::new(0),
                pushed: Mutex::new(HashMap::new()),
                observer,
            }),
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// Limit on the transfer of one fetch (default 5 minutes).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> GitCache {
        self.fetch_timeout = timeout;
        self
    }

    /// Bare clones created since start (one per repository URL).
    pub fn clone_count(&self) -> usize {
        self.inner.clones.load(Ordering::Relaxed)
    }

    /// Fetches attempted since start (including each clone's first one).
    pub fn fetch_count(&self) -> usize {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Directory of the bare clone for `url` (whether or not it exists yet).
    pub fn repo_dir(&self, url: &str) -> Result<PathBuf, SourceError> {
        Ok(self.dir_for(&RepoUrl::parse(url)?))
    }

    fn dir_for(&self, url: &RepoUrl) -> PathBuf {
        let digest = Sha256::digest(url.normalized.as_bytes());
        let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        self.inner.root.join(format!("{name}.git"))
    }

    async fn lock(&self, url: &RepoUrl) -> OwnedMutexGuard<RepoState> {
        let state = {
            let mut repos = self
                .inner
                .repos
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            repos.entry(url.normalized.clone()).or_default().clone()
        };
        state.lock_owned().await
    }

    /// Makes the next [`GitCache::resolve`] of `url` fetch, however recent the last
    /// fetch: a push to the repository was announced (a webhook). Only a fetch begun
    /// after this call counts as fresh, so one already running cannot hide the push.
    pub fn invalidate(&self, url: &str) -> Result<(), SourceError> {
        let url = RepoUrl::parse(url)?;
        self.inner
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(url.normalized, Instant::now());
        Ok(())
    }

    /// Resolves `reference` to a commit, fetching first when the last successful fetch
    /// of `url` (with these credentials) is older than `max_age`, or began before a push
    /// announced by [`GitCache::invalidate`].
    pub async fn resolve(
        &self,
        url: &str,
        reference: &GitRef,
        credentials: Option<&Credentials>,
        max_age: Duration,
    ) -> Result<Resolved, SourceError> {
        let url = RepoUrl::parse(url)?;
        let query = RefQuery::from_git_ref(reference)?;
        check_transport(&url, credentials)?;
        let fetcher = self.fetcher(&url, credentials);
        self.with_repo(&url, move |state| {
            let last_fetch = state.fetched.get(&fetcher.who);
            let pushed = fetcher.pushed_at();
            let fresh =
                last_fetch.is_some_and(|at| at.elapsed() < max_age && pushed.is_none_or(|p| *at >= p));
            // A commit never changes: once cached (and these credentials have fetched
            // the repository), it resolves without the server.
            if !fresh
                && last_fetch.is_some()
                && matches!(query, RefQuery::Commit(_))
                && let Ok(resolved) =
                    open_bare(&fetcher.dir).and_then(|repo| query.resolve(&repo, &fetcher.url.redacted))
            {
                return Ok(resolved);
            }
            if !fresh {
                let began = Instant::now();
                fetcher.fetch()?;
                state.fetched.insert(fetcher.who.clone(), began);
            }
            let repo = open_bare(&fetcher.dir)?;
            query.resolve(&repo, &fetcher.url.redacted)
        })
        .await
    }

    /// The manifest files (`*.yaml|*.yml|*.json`) under `path` in `commit`, read from
    /// the bare clone, sorted by path. Fetches once when the commit is not cached yet,
    /// or when these credentials have not fetched the repository since start.
    pub async fn files(
        &self,
        url: &str,
        commit: &str,
        path: Option<&str>,
        credentials: Option<&Credentials>,
    ) -> Result<Vec<SourceFile>, SourceError> {
        let url = RepoUrl::parse(url)?;
        tree::validate_path(path)?;
        let query = RefQuery::from_git_ref(&GitRef {
            commit: Some(commit.to_string()),
            ..GitRef::default()
        })?;
        check_transport(&url, credentials)?;
        let path = path.map(str::to_string);
        let fetcher = self.fetcher(&url, credentials);
        self.with_repo(&url, move |state| {
            let shown_access = state.fetched.contains_key(&fetcher.who);
            let cached = if shown_access && fetcher.dir.exists() {
                let repo = open_bare(&fetcher.dir)?;
                match query.resolve(&repo, &fetcher.url.redacted) {
                    Ok(resolved) => Some(resolved),
                    Err(SourceError::RefNotFound { .. }) => None,
                    Err(other) => return Err(other),
                }
            } else {
                None
            };
            let resolved = match cached {
                Some(resolved) => resolved,
                None => {
                    let began = Instant::now();
                    fetcher.fetch()?;
                    state.fetched.insert(fetcher.who.clone(), began);
                    query.resolve(&open_bare(&fetcher.dir)?, &fetcher.url.redacted)?
                }
            };
            let repo = open_bare(&fetcher.dir)?;
            let oid = git2::Oid::from_str(&resolved.commit)
                .map_err(|e| SourceError::git("reading commit id", &e))?;
            tree::read_manifests(&repo, oid, path.as_deref())
        })
        .await
    }

    /// Runs `work` on a blocking thread while holding the URL's lock. The guard moves
    /// into the task, so a caller that gives up (or is cancelled) mid-fetch leaves the
    /// lock held until the fetch really ends; callers wait a bounded time either way.
    async fn with_repo<T, F>(&self, url: &RepoUrl, work: F) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce(&mut RepoState) -> Result<T, SourceError> + Send + 'static,
    {
        let timed_out = |what: &str| SourceError::FetchFailed {
            url: url.redacted.clone(),
            message: format!("{what} for more than {}s", self.fetch_timeout.as_secs()),
        };
        let mut state = tokio::time::timeout(self.fetch_timeout, self.lock(url))
            .await
            .map_err(|_| timed_out("another fetch of this repository has been running"))?;
        // libgit2 has no connect timeout reachable from safe Rust: bound the wait here.
        let task = blocking(move || work(&mut state));
        tokio::time::timeout(self.fetch_timeout + TIMEOUT_GRACE, task)
            .await
            .map_err(|_| timed_out("the server has not answered"))?
    }

    fn fetcher(&self, url: &RepoUrl, credentials: Option<&Credentials>) -> Fetcher {
        Fetcher {
            inner: self.inner.clone(),
            dir: self.dir_for(url),
            url: url.clone(),
            credentials: credentials.cloned(),
            who: credentials.map(Credentials::fingerprint).unwrap_or_default(),
            timeout: self.fetch_timeout,
        }
    }
}

/// Refuses combinations that cannot work or would be unsafe, before any network I/O.
fn check_transport(url: &RepoUrl, credentials: Option<&Credentials>) -> Result<(), SourceError> {
    match (url.scheme, credentials.map(|c| (c, c.auth()))) {
        (Scheme::Ssh, None) => Err(SourceError::InvalidSpec {
            field: field::SECRET_REF,
            message: format!(
                "{} uses SSH, which needs a Secret with `identity` and `known_hosts` (host keys are always checked)",
                url.redacted
            ),
        }),
        (Scheme::Ssh, Some((creds, Auth::Basic { .. }))) => Err(SourceError::InvalidCredentials {
            secret: creds.secret_name().to_string(),
            message: format!(
                "holds {} credentials, but {} uses SSH (needs `identity` and `known_hosts`)",
                creds.kind(),
                url.redacted
            ),
        }),
        (Scheme::Https | Scheme::Http, Some((creds, Auth::Ssh { .. }))) => {
            Err(SourceError::InvalidCredentials {
                secret: creds.secret_name().to_string(),
                message: format!("holds an SSH identity, but {} is not an SSH URL", url.redacted),
            })
        }
        _ => Ok(()),
    }
}

/// Everything one fetch needs, owned, so it can run on a blocking thread.
struct Fetcher {
    inner: Arc<Inner>,
    dir: PathBuf,
    url: RepoUrl,
    credentials: Option<Credentials>,
    who: String,
    timeout: Duration,
}

impl Fetcher {
    /// When a push to this repository was last announced.
    fn pushed_at(&self) -> Option<Instant> {
        self.inner
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&self.url.normalized)
            .copied()
    }

    fn fetch(&self) -> Result<(), SourceError> {
        let started = Instant::now();
        let result = self.fetch_unobserved();
        if let Some(observer) = &self.inner.observer {
            observer(started.elapsed(), result.as_ref().err().map(SourceError::reason));
        }
        result
    }

    fn fetch_unobserved(&self) -> Result<(), SourceError> {
        let repo = self.open_or_create()?;
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let mut remote = repo
            .remote_anonymous(&self.url.raw)
            .map_err(|e| self.fetch_failed(&e))?;

        let deadline = Instant::now() + self.timeout;
        let auth_attempts = Cell::new(0u32);
        let auth_refused = Cell::new(false);
        let host_key_problem: RefCell<Option<String>> = RefCell::new(None);

        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|_url, username_from_url, allowed| {
            auth_attempts.set(auth_attempts.get() + 1);
            let refuse = |message: &str| {
                auth_refused.set(true);
                Err(git2::Error::from_str(message))
            };
            if auth_attempts.get() > MAX_AUTH_ATTEMPTS {
                return refuse("the server rejected the credentials");
            }
            match self.credentials.as_ref().map(Credentials::auth) {
                None => refuse("the server asks for credentials and spec.source.git.secretRef is not set"),
                Some(Auth::Basic {
                    username, password, ..
                }) if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                    Cred::userpass_plaintext(username, password)
                }
                Some(Auth::Ssh {
                    identity, passphrase, ..
                }) => {
                    let user = username_from_url.unwrap_or("git");
                    if allowed.contains(CredentialType::USERNAME) {
                        Cred::username(user)
                    } else if allowed.intersects(CredentialType::SSH_MEMORY | CredentialType::SSH_KEY) {
                        Cred::ssh_key_from_memory(user, None, identity, passphrase.as_deref())
                    } else {
                        refuse("the server does not accept an SSH key")
                    }
                }
                Some(_) => refuse("the server does not accept the kind of credentials in the Secret"),
            }
        });
        if let (Some(Auth::Ssh { known_hosts, .. }), Some(host)) = (
            self.credentials.as_ref().map(Credentials::auth),
            self.url.host.as_deref(),
        ) {
            let port = self.url.port.unwrap_or(22);
            let host_key_problem = &host_key_problem;
            callbacks.certificate_check(move |cert, _host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                let presented = match (hostkey.hostkey(), hostkey.hash_sha256()) {
                    (Some(raw), _) => PresentedKey::Raw(raw),
                    (None, Some(hash)) => PresentedKey::Sha256(hash),
                    (None, None) => {
                        *host_key_problem.borrow_mut() =
                            Some("the server presented no host key that can be checked".into());
                        return Err(git2::Error::from_str("host key not checkable"));
                    }
                };
                match known_hosts.check(host, port, presented) {
                    Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                    Err(problem) => {
                        *host_key_problem.borrow_mut() = Some(problem.to_string());
                        Err(git2::Error::from_str("host key rejected"))
                    }
                }
            });
        }
        // Returning false cancels the transfer: the only portable timeout git2 offers.
        callbacks.transfer_progress(|_| Instant::now() < deadline);
        callbacks.sideband_progress(|_| Instant::now() < deadline);

        let mut proxy = ProxyOptions::new();
        proxy.auto();
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .proxy_options(proxy)
            .prune(FetchPrune::On)
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);

        tracing::debug!(url = %self.url.redacted, "fetching");
        let result = remote.fetch(&REFSPECS, Some(&mut options), Some("bosun: fetch"));
        drop(options);
        if let Err(e) = result {
            if let Some(problem) = host_key_problem.take() {
                return Err(SourceError::HostKeyRejected {
                    host: self.url.host.clone().unwrap_or_default(),
                    message: problem,
                });
            }
            if auth_refused.get() || e.code() == ErrorCode::Auth {
                return Err(SourceError::AuthenticationFailed {
                    url: self.url.redacted.clone(),
                    message: self.url.scrub(e.message()),
                });
            }
            if Instant::now() >= deadline {
                return Err(SourceError::FetchFailed {
                    url: self.url.redacted.clone(),
                    message: format!("timed out after {}s", self.timeout.as_secs()),
                });
            }
            return Err(self.fetch_failed(&e));
        }
        let stats = remote.stats();
        // An empty fetch happens every interval: only news is worth an info line.
        if stats.received_objects() > 0 {
            tracing::info!(
                url = %self.url.redacted,
                received_objects = stats.received_objects(),
                received_bytes = stats.received_bytes(),
                "fetched"
            );
        } else {
            tracing::debug!(url = %self.url.redacted, "fetched: up to date");
        }
        Ok(())
    }

    fn fetch_failed(&self, e: &git2::Error) -> SourceError {
        SourceError::FetchFailed {
            url: self.url.redacted.clone(),
            message: self.url.scrub(e.message()),
        }
    }

    /// Opens the bare clone, creating it on first use (or when a crash left it unreadable).
    fn open_or_create(&self) -> Result<Repository, SourceError> {
        if self.dir.exists() {
            match Repository::open_bare(&self.dir) {
                Ok(repo) => return Ok(repo),
                Err(e) => {
                    tracing::warn!(
                        url = %self.url.redacted,
                        dir = %self.dir.display(),
                        error = e.message(),
                        "cached clone unreadable; cloning again"
                    );
                    std::fs::remove_dir_all(&self.dir).map_err(|e| SourceError::Git {
                        message: format!("removing {}: {e}", self.dir.display()),
                    })?;
                }
            }
        }
        std::fs::create_dir_all(&self.inner.root).map_err(|e| SourceError::Git {
            message: format!("creating cache directory {}: {e}", self.inner.root.display()),
        })?;
        let repo = Repository::init_bare(&self.dir)
            .map_err(|e| SourceError::git(&format!("creating {}", self.dir.display()), &e))?;
        self.inner.clones.fetch_add(1, Ordering::Relaxed);
        tracing::info!(url = %self.url.redacted, dir = %self.dir.display(), "new clone");
        Ok(repo)
    }
}

fn open_bare(dir: &Path) -> Result<Repository, SourceError> {
    Repository::open_bare(dir).map_err(|e| SourceError::git(&format!("opening {}", dir.display()), &e))
}

async fn blocking<T, F>(work: F) -> Result<T, SourceError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SourceError> + Send + 'static,
{
    // Keep the caller's span (app, revision) on the logs of the blocking thread.
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(work))
        .await
        .map_err(|e| SourceError::Git {
            message: format!("git task did not finish: {e}"),
        })?
}
