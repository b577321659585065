//! The Git cache: bare clones fetched incrementally, one per repository *and*
//! credentials, within budgets, removed when no app uses them any more.
//!
//! # Who reads which clone
//!
//! A clone's key is the repository without credentials ([`RepoUrl::normalized`]:
//! spellings of one URL are one repository) and the *credential digest*: SHA-256 of
//! the user information written in the URL and of the Secret's credential material
//! ([`Credentials::fingerprint`]), never the secret itself. Apps whose credentials are
//! equal (the same token, or none at all for a public repository) are one principal as
//! far as the server can tell, and share a clone: nothing read from it is something one
//! of them could not fetch itself. Apps with different credentials never share a clone,
//! neither objects nor refs. A shared object store was the alternative (one clone per
//! URL, a record of who proved access): it is not safe. A server may show each
//! credential a different set of refs (Gerrit's per-ref rights, hidden refs), or a
//! different repository at one URL (a proxy choosing by user); a commit id one tenant
//! learnt would resolve in another's clone; and whoever fetched last would move the refs
//! the others resolve. Its saving, one copy of a repository read with several
//! credentials, is bounded by the budgets below anyway.
//!
//! # Shown access
//!
//! Each clone records when a fetch (or, for a pinned commit already in the clone, an
//! `ls-remote`) with exactly its credentials last succeeded (`proven`). A resolve
//! re-proves access when that is older than the app's interval; an authentication
//! failure forgets it and removes the clone; files are read only from a clone whose
//! credentials proved access since the process started, fetching first otherwise. A
//! server that cannot be reached does not revoke access (a pin still resolves from the
//! clone during an outage): only the server saying no does.
//!
//! # Budgets ([`GitBudgets`], flags `--git-max-*`)
//!
//! A fetch is cancelled from its progress callbacks when the clone would exceed its
//! bytes on disk (pack bytes received plus a block per ref written), when the server
//! announces more objects than allowed, or when it runs past its time; the whole cache
//! stays under its total by evicting the least recently used clones that are not in
//! use, and a fetch that cannot make room is cancelled too. A cancelled fetch, or a
//! clone found over its budget once measured, removes the clone: nothing partial stays.
//! The error names the limit and the figure ([`SourceError::BudgetExceeded`]).
//!
//! # Removal
//!
//! Apps say which clone they use ([`GitCache::resolve_as`]); an app deleted
//! ([`GitCache::release`]) lets its clone go at once when no other app uses it.
//! [`GitCache::sweep`] (every minute in the controller) removes clones no app uses
//! that were not read for [`UNUSED_GRACE`], clones not read at all for [`STALE_GRACE`],
//! and clones left on disk by an earlier process that nothing asked for since.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorCode, FetchOptions,
    FetchPrune, ProxyOptions, RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use super::credentials::Auth;
use super::known_hosts::PresentedKey;
use super::refs::RefQuery;
use super::tree::{TreeBudget, human_bytes};
use super::url::{RepoUrl, Scheme};
use super::{Credentials, Resolved, SourceError, SourceFile, field, tree};
use crate::api::GitRef;

/// Every branch and tag, force-updated, so the bare clone mirrors the server.
const REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
/// Extra wait past the fetch timeout for the blocking task to notice it and return.
const TIMEOUT_GRACE: Duration = Duration::from_secs(2);
/// Credential prompts answered per fetch before giving up (libgit2 asks again on 401).
const MAX_AUTH_ATTEMPTS: u32 = 3;
/// What one ref written by a fetch costs on disk (a loose ref takes a block).
const BYTES_PER_REF: u64 = 4096;
/// Room taken from the total at a time while a pack arrives.
const RESERVE_STEP: u64 = 8 * 1024 * 1024;
/// A clone no app uses is removed once it was not read for this long (a `kubectl
/// bosun diff`, an app that moved to another URL).
pub(crate) const UNUSED_GRACE: Duration = Duration::from_secs(5 * 60);
/// A clone not read at all for this long is removed even if an app said it uses it
/// (an app that left this controller's watch without being deleted).
pub(crate) const STALE_GRACE: Duration = Duration::from_secs(6 * 3600);
/// The limits on what one repository may cost, set by the `--git-max-*` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GitBudgets {
    /// Bytes on disk of one clone (`--git-max-repo-bytes`).
    pub max_repo_bytes: u64,
    /// Bytes on disk of all clones together (`--git-max-cache-bytes`).
    pub max_cache_bytes: u64,
    /// Objects one fetch may bring (`--git-max-objects`).
    pub max_objects: usize,
    /// Wall time of one fetch (`--git-max-fetch-seconds`).
    pub max_fetch_time: Duration,
    /// The walk of a commit's tree (`--git-max-files`, `--git-max-manifest-bytes`,
    /// `--git-max-depth`).
    pub tree: TreeBudget,
}

impl Default for GitBudgets {
    /// Sized for the chart's 1 GiB cache `emptyDir`: 768 MiB in all leaves a quarter
    /// for a fetch's temporary pack and the file system's own overhead; 256 MiB per
    /// repository is three times a large application repository with years of history
    /// and still lets three such clones live side by side. 500,000 objects keeps
    /// libgit2's indexer (about 100 bytes per object) near 50 MiB. Five minutes is what
    /// a 256 MiB clone needs at under 1 MiB/s.
    fn default() -> Self {
        GitBudgets {
            max_repo_bytes: 256 * 1024 * 1024,
            max_cache_bytes: 768 * 1024 * 1024,
            max_objects: 500_000,
            max_fetch_time: Duration::from_secs(300),
            tree: TreeBudget::default(),
        }
    }
}

/// Cache of bare clones under one directory. Cheap to clone; thread-safe.
#[derive(Clone)]
pub struct GitCache {
    inner: Arc<Inner>,
}

/// Told of every fetch: how long it took and, when it failed, why
/// ([`SourceError::reason`]). The controller's metrics listen here.
pub type FetchObserver = Arc<dyn Fn(Duration, Option<&'static str>) + Send + Sync>;

struct Inner {
    root: PathBuf,
    budgets: GitBudgets,
    table: Mutex<Table>,
    clones: AtomicUsize,
    fetches: AtomicUsize,
    observer: Option<FetchObserver>,
    /// When a push to each repository (normalized URL) was announced
    /// ([`GitCache::invalidate`]): a fetch begun before then may have missed it.
    pushed: Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct Table {
    /// By directory name (`<digest>.git`).
    clones: HashMap<String, Arc<Entry>>,
    /// App (`namespace/name`) → the directory name of the clone it uses.
    users: HashMap<String, String>,
}

struct Entry {
    name: String,
    /// Held while the clone is fetched or read: fetches of one clone never overlap,
    /// and a caller arriving during a fetch waits for it and then reuses its result.
    state: Arc<AsyncMutex<RepoState>>,
    usage: Mutex<Usage>,
}

struct Usage {
    last_used: Instant,
    /// Bytes on disk, measured after each fetch, or reserved while one runs.
    bytes: u64,
}

#[derive(Default)]
struct RepoState {
    /// When a fetch or `ls-remote` with this clone's credentials last began that
    /// succeeded: the access these credentials have shown.
    proven: Option<Instant>,
    /// Evicted: the entry left the table; a caller that waited for it looks again.
    removed: bool,
    /// The last fetch exceeded a budget, when it began: the same answer until the
    /// app's interval has passed (or a push is announced), rather than downloading up
    /// to the budget again at every pass.
    over_budget: Option<(Instant, SourceError)>,
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

impl Entry {
    fn touch(&self) {
        self.usage().last_used = Instant::now();
    }

    fn usage(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl GitCache {
    /// A cache keeping its clones under `root` (created when needed), with the
    /// default budgets.
    pub fn new(root: PathBuf) -> GitCache {
        GitCache::build(root, None, GitBudgets::default())
    }

    /// A cache (under `root`) that tells `observer` of every fetch.
    pub(crate) fn observed(root: PathBuf, observer: FetchObserver, budgets: GitBudgets) -> GitCache {
        GitCache::build(root, Some(observer), budgets)
    }

    /// A cache with these budgets (no observer).
    pub fn with_budgets(root: PathBuf, budgets: GitBudgets) -> GitCache {
        GitCache::build(root, None, budgets)
    }

    fn build(root: PathBuf, observer: Option<FetchObserver>, budgets: GitBudgets) -> GitCache {
        let cache = GitCache {
            inner: Arc::new(Inner {
                root,
                budgets,
                table: Mutex::new(Table::default()),
                clones: AtomicUsize::new(0),
                fetches: AtomicUsize::new(0),
                observer,
                pushed: Mutex::new(HashMap::new()),
            }),
        };
        cache.adopt_existing();
        cache
    }

    /// Limit on one fetch's wall time (default 5 minutes).
    pub fn with_fetch_timeout(self, timeout: Duration) -> GitCache {
        let mut budgets = self.inner.budgets;
        budgets.max_fetch_time = timeout;
        GitCache::build(self.inner.root.clone(), self.inner.observer.clone(), budgets)
    }

    pub fn budgets(&self) -> GitBudgets {
        self.inner.budgets
    }

    /// Bare clones created since start.
    pub(crate) fn clone_count(&self) -> usize {
        self.inner.clones.load(Ordering::Relaxed)
    }

    /// Fetches attempted since start (including each clone's first one).
    pub(crate) fn fetch_count(&self) -> usize {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// Bytes on disk of all clones, as last measured or reserved.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.total_bytes()
    }

    /// Directory of the clone of `url` read with `credentials` (whether or not it
    /// exists yet).
    pub fn repo_dir(&self, url: &str, credentials: Option<&Credentials>) -> Result<PathBuf, SourceError> {
        let url = RepoUrl::parse(url)?;
        Ok(self.inner.root.join(clone_name(&url, credentials)))
    }

    /// Registers the clones an earlier process left, so that they count against the
    /// total and are removed when nothing asks for them.
    fn adopt_existing(&self) {
        let Ok(dirs) = std::fs::read_dir(&self.inner.root) else {
            return;
        };
        let mut table = self.inner.table();
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let bytes = disk_usage(&dir.path());
            table.clones.insert(
                name.clone(),
                Arc::new(Entry {
                    name,
                    state: Arc::default(),
                    usage: Mutex::new(Usage {
                        last_used: Instant::now(),
                        bytes,
                    }),
                }),
            );
        }
    }

    /// The clone's entry, locked; waits at most the fetch time.
    async fn lock(
        &self,
        name: &str,
        url: &RepoUrl,
    ) -> Result<(Arc<Entry>, OwnedMutexGuard<RepoState>), SourceError> {
        let deadline = tokio::time::Instant::now() + self.inner.budgets.max_fetch_time;
        loop {
            let entry = {
                let mut table = self.inner.table();
                table
                    .clones
                    .entry(name.to_string())
                    .or_insert_with(|| {
                        Arc::new(Entry {
                            name: name.to_string(),
                            state: Arc::default(),
                            usage: Mutex::new(Usage {
                                last_used: Instant::now(),
                                bytes: 0,
                            }),
                        })
                    })
                    .clone()
            };
            let guard = tokio::time::timeout_at(deadline, entry.state.clone().lock_owned())
                .await
                .map_err(|_| SourceError::FetchFailed {
                    url: url.redacted.clone(),
                    message: format!(
                        "another fetch of this repository has been running for more than {}s",
                        self.inner.budgets.max_fetch_time.as_secs()
                    ),
                })?;
            if guard.removed {
                continue; // evicted while we waited: the table has a new entry (or none)
            }
            entry.touch();
            return Ok((entry, guard));
        }
    }

    /// Makes the next [`GitCache::resolve`] of `url` fetch, however recent the last
    /// fetch, whatever the credentials: a push to the repository was announced (a
    /// webhook). Only a fetch begun after this call counts as fresh, so one already
    /// running cannot hide the push.
    pub(crate) fn invalidate(&self, url: &str) -> Result<(), SourceError> {
        let url = RepoUrl::parse(url)?;
        self.inner
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(url.normalized, Instant::now());
        Ok(())
    }

    /// [`GitCache::resolve`] for the app `app` (`namespace/name`), which from now on
    /// uses this clone (and no longer the one it used before).
    pub(crate) async fn resolve_as(
        &self,
        app: &str,
        url: &str,
        reference: &GitRef,
        credentials: Option<&Credentials>,
        max_age: Duration,
    ) -> Result<Resolved, SourceError> {
        if let Ok(parsed) = RepoUrl::parse(url) {
            let name = clone_name(&parsed, credentials);
            self.inner.table().users.insert(app.to_string(), name);
        }
        self.resolve(url, reference, credentials, max_age).await
    }

    /// The app `app` is gone: its clone is removed at once when no other app uses it
    /// and nothing is reading it (else by the next [`GitCache::sweep`]).
    pub fn release(&self, app: &str) {
        let candidate = {
            let mut table = self.inner.table();
            let Some(name) = table.users.remove(app) else {
                return;
            };
            if table.users.values().any(|other| *other == name) {
                return;
            }
            table.clones.get(&name).cloned()
        };
        if let Some(entry) = candidate {
            self.inner.remove_if_idle(&entry, "no app uses it any more");
        }
    }

    /// Removes the clones no app uses that were not read for [`UNUSED_GRACE`], and
    /// those not read for [`STALE_GRACE`]; then, while the total is over its budget,
    /// the least recently used. Clones being fetched or read are left alone. Blocking
    /// (removes directories): call it from a blocking thread.
    pub(crate) fn sweep(&self) {
        let candidates: Vec<(Arc<Entry>, &'static str)> = {
            let table = self.inner.table();
            table
                .clones
                .values()
                .filter_map(|entry| {
                    let idle = entry.usage().last_used.elapsed();
                    let used = table.users.values().any(|name| *name == entry.name);
                    if !used && idle > UNUSED_GRACE {
                        Some((entry.clone(), "no app uses it"))
                    } else if idle > STALE_GRACE {
                        Some((entry.clone(), "not read for hours"))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (entry, why) in candidates {
            self.inner.remove_if_idle(&entry, why);
        }
        while self.inner.total_bytes() > self.inner.budgets.max_cache_bytes {
            if self.inner.evict_one("").is_none() {
                break;
            }
        }
    }

    /// Resolves `reference` to a commit, fetching first when these credentials last
    /// proved access to `url` longer than `max_age` ago, or before a push announced by
    /// [`GitCache::invalidate`].
    pub(crate) async fn resolve(
        &self,
        url: &str,
        reference: &GitRef,
        credentials: Option<&Credentials>,
        max_age: Duration,
    ) -> Result<Resolved, SourceError> {
        let url = RepoUrl::parse(url)?;
        let query = RefQuery::from_git_ref(reference)?;
        check_transport(&url, credentials)?;
        let pushed = self.pushed_at(&url);
        self.with_clone(&url, credentials, move |fetcher, state| {
            let fresh = state
                .proven
                .is_some_and(|at| at.elapsed() < max_age && pushed.is_none_or(|p| at >= p));
            if fresh {
                return fetcher.resolve(&query);
            }
            if let Some((at, error)) = &state.over_budget
                && at.elapsed() < max_age
                && pushed.is_none_or(|p| *at >= p)
            {
                return Err(error.clone());
            }
            // A commit never changes: once these credentials have fetched it, showing
            // that they still may read the repository (ls-remote) is enough.
            if state.proven.is_some()
                && matches!(query, RefQuery::Commit(_))
                && let Ok(resolved) = fetcher.resolve(&query)
            {
                let began = Instant::now();
                match fetcher.ls_remote() {
                    Ok(()) => state.proven = Some(began),
                    // Unreachable is not a refusal: access shown holds until the
                    // server says otherwise.
                    Err(error) if error.classify().is_transient() => {
                        tracing::debug!(url = %fetcher.url.redacted, %error, "cannot reach the server; the pinned commit is in the clone");
                    }
                    Err(error) => return Err(fetcher.failed(state, error)),
                }
                return Ok(resolved);
            }
            fetcher.fetch(state)?;
            fetcher.resolve(&query)
        })
        .await
    }

    /// The manifest files (`*.yaml|*.yml|*.json`) under `path` in `commit`, read from
    /// the clone these credentials fetched, sorted by path, within the tree budget.
    /// Fetches first when the commit is not there yet, or when these credentials have
    /// not shown access since start.
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
        let budget = self.inner.budgets.tree;
        self.with_clone(&url, credentials, move |fetcher, state| {
            let cached = if state.proven.is_some() && fetcher.dir.exists() {
                match fetcher.resolve(&query) {
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
                    fetcher.fetch(state)?;
                    fetcher.resolve(&query)?
                }
            };
            let repo = open_bare(&fetcher.dir)?;
            let oid = git2::Oid::from_str(&resolved.commit)
                .map_err(|e| SourceError::git("reading commit id", &e))?;
            tree::read_manifests(&repo, oid, path.as_deref(), budget)
        })
        .await
    }

    fn pushed_at(&self, url: &RepoUrl) -> Option<Instant> {
        self.inner
            .pushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&url.normalized)
            .copied()
    }

    /// Runs `work` on a blocking thread while holding the clone's lock. The guard moves
    /// into the task, so a caller that gives up (or is cancelled) mid-fetch leaves the
    /// lock held until the fetch really ends; callers wait a bounded time either way.
    async fn with_clone<T, F>(
        &self,
        url: &RepoUrl,
        credentials: Option<&Credentials>,
        work: F,
    ) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce(&Fetcher, &mut RepoState) -> Result<T, SourceError> + Send + 'static,
    {
        let name = clone_name(url, credentials);
        let (entry, mut state) = self.lock(&name, url).await?;
        let fetcher = Fetcher {
            inner: self.inner.clone(),
            dir: self.inner.root.join(&name),
            entry,
            url: url.clone(),
            credentials: credentials.cloned(),
            timeout: self.inner.budgets.max_fetch_time,
        };
        let limit = self.inner.budgets.max_fetch_time;
        // libgit2 has no connect timeout reachable from safe Rust: bound the wait here.
        let task = blocking(move || work(&fetcher, &mut state));
        tokio::time::timeout(limit + TIMEOUT_GRACE, task)
            .await
            .map_err(|_| SourceError::FetchFailed {
                url: url.redacted.clone(),
                message: format!("the server has not answered for more than {}s", limit.as_secs()),
            })?
    }
}

impl Inner {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn total_bytes(&self) -> u64 {
        let entries: Vec<Arc<Entry>> = self.table().clones.values().cloned().collect();
        entries.iter().map(|entry| entry.usage().bytes).sum()
    }

    /// Removes the clone unless it is being fetched or read; says whether it did.
    fn remove_if_idle(&self, entry: &Arc<Entry>, why: &str) -> bool {
        let Ok(mut guard) = entry.state.clone().try_lock_owned() else {
            return false;
        };
        guard.removed = true;
        guard.proven = None;
        {
            let mut table = self.table();
            if table
                .clones
                .get(&entry.name)
                .is_some_and(|e| Arc::ptr_eq(e, entry))
            {
                table.clones.remove(&entry.name);
            }
            table.users.retain(|_, name| *name != entry.name);
        }
        let dir = self.root.join(&entry.name);
        let freed = entry.usage().bytes;
        remove_dir(&dir);
        entry.usage().bytes = 0;
        tracing::info!(clone = %entry.name, bytes = freed, why, "removed a Git clone");
        true
    }

    /// Removes the least recently used clone that is not in use (and not `except`);
    /// returns the bytes it freed, `None` when none could go.
    fn evict_one(&self, except: &str) -> Option<u64> {
        let mut entries: Vec<Arc<Entry>> = self
            .table()
            .clones
            .values()
            .filter(|entry| entry.name != except)
            .cloned()
            .collect();
        entries.sort_by_key(|entry| entry.usage().last_used);
        for entry in entries {
            let bytes = entry.usage().bytes;
            if self.remove_if_idle(
                &entry,
                "the cache is over --git-max-cache-bytes (least recently used)",
            ) {
                return Some(bytes);
            }
        }
        None
    }

    /// Sets the clone's bytes to `bytes`, evicting others until the total fits;
    /// `false` when it cannot fit.
    fn reserve(&self, entry: &Entry, bytes: u64) -> bool {
        entry.usage().bytes = bytes;
        loop {
            if self.total_bytes() <= self.budgets.max_cache_bytes {
                return true;
            }
            if self.evict_one(&entry.name).is_none() {
                return false;
            }
        }
    }
}

/// `<sha256 of the repository and the credential digest>.git`.
fn clone_name(url: &RepoUrl, credentials: Option<&Credentials>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(url.normalized.as_bytes());
    hasher.update(b"\0");
    hasher.update(credential_digest(url, credentials).as_bytes());
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{digest}.git")
}

/// Identifies every credential a fetch presents: the user information written in the
/// URL and the Secret's material. Empty for none (a public repository).
pub(crate) fn credential_digest(url: &RepoUrl, credentials: Option<&Credentials>) -> String {
    if url.userinfo.is_none() && credentials.is_none() {
        return String::new();
    }
    let mut hasher = Sha256::new();
    hasher.update(b"url-userinfo\0");
    hasher.update(url.userinfo.as_deref().unwrap_or_default().as_bytes());
    hasher.update(b"\0secret\0");
    hasher.update(
        credentials
            .map(Credentials::fingerprint)
            .unwrap_or_default()
            .as_bytes(),
    );
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
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
    entry: Arc<Entry>,
    url: RepoUrl,
    credentials: Option<Credentials>,
    timeout: Duration,
}

/// What the callbacks of one connection saw.
#[derive(Default)]
struct Probe {
    auth_attempts: Cell<u32>,
    auth_refused: Cell<bool>,
    host_key_problem: RefCell<Option<String>>,
    /// The budget that cancelled the transfer, and the message naming the figure.
    budget: RefCell<Option<(&'static str, String)>>,
    refs: Cell<u64>,
    /// Bytes of the cache's total this clone holds (reserved in steps).
    reserved: Cell<u64>,
    /// Pack bytes received so far.
    received: Cell<u64>,
}

impl Fetcher {
    fn resolve(&self, query: &RefQuery) -> Result<Resolved, SourceError> {
        query.resolve(&open_bare(&self.dir)?, &self.url.redacted)
    }

    /// Fetches, recording shown access on success; on failure removes what must not
    /// stay (see [`Fetcher::failed`]).
    fn fetch(&self, state: &mut RepoState) -> Result<(), SourceError> {
        let began = Instant::now();
        let created = !self.dir.exists();
        let result = self.fetch_observed().and_then(|()| self.measure());
        state.over_budget = None;
        match result {
            Ok(()) => {
                state.proven = Some(began);
                Ok(())
            }
            Err(error) => {
                if matches!(error, SourceError::BudgetExceeded { .. }) {
                    state.over_budget = Some((began, error.clone()));
                }
                if created && !matches!(error, SourceError::InvalidSpec { .. }) {
                    self.remove(state);
                }
                Err(self.failed(state, error))
            }
        }
    }

    /// A refusal by the server forgets the access these credentials showed and removes
    /// their clone; a budget exceeded removes the clone.
    fn failed(&self, state: &mut RepoState, error: SourceError) -> SourceError {
        if matches!(
            error,
            SourceError::AuthenticationFailed { .. }
                | SourceError::HostKeyRejected { .. }
                | SourceError::BudgetExceeded { .. }
        ) {
            self.remove(state);
        }
        error
    }

    fn remove(&self, state: &mut RepoState) {
        state.proven = None;
        remove_dir(&self.dir);
        self.entry.usage().bytes = 0;
    }

    /// The clone's size on disk, checked against its budget.
    fn measure(&self) -> Result<(), SourceError> {
        let bytes = disk_usage(&self.dir);
        self.entry.usage().bytes = bytes;
        let max = self.inner.budgets.max_repo_bytes;
        if bytes > max {
            return Err(SourceError::BudgetExceeded {
                limit: "--git-max-repo-bytes",
                message: format!(
                    "{}: the clone takes {} on disk, more than {} (--git-max-repo-bytes={max}); it was removed",
                    self.url.redacted,
                    human_bytes(bytes),
                    human_bytes(max)
                ),
            });
        }
        if !self.inner.reserve(&self.entry, bytes) {
            let max = self.inner.budgets.max_cache_bytes;
            return Err(SourceError::BudgetExceeded {
                limit: "--git-max-cache-bytes",
                message: format!(
                    "{}: the Git cache is full: this clone's {} would exceed --git-max-cache-bytes={max} ({}) with every other clone in use; it was removed",
                    self.url.redacted,
                    human_bytes(bytes),
                    human_bytes(max)
                ),
            });
        }
        Ok(())
    }

    fn fetch_observed(&self) -> Result<(), SourceError> {
        let started = Instant::now();
        let result = self.fetch_unobserved();
        if let Some(observer) = &self.inner.observer {
            observer(started.elapsed(), result.as_ref().err().map(SourceError::reason));
        }
        result
    }

    /// The callbacks of one connection: credentials, host keys, and the budgets.
    fn callbacks<'a>(&'a self, probe: &'a Probe, deadline: Instant, size_before: u64) -> RemoteCallbacks<'a> {
        let budgets = self.inner.budgets;
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(move |_url, username_from_url, allowed| {
            probe.auth_attempts.set(probe.auth_attempts.get() + 1);
            let refuse = |message: &str| {
                probe.auth_refused.set(true);
                Err(git2::Error::from_str(message))
            };
            if probe.auth_attempts.get() > MAX_AUTH_ATTEMPTS {
                return refuse("the server rejected the credentials");
            }
            // A token written in the URL as the user alone (`https://TOKEN@host/`) is
            // sent as the user with an empty password, as git does.
            let url_user =
                username_from_url.filter(|user| !user.is_empty() && self.url.scheme != Scheme::Ssh);
            match self.credentials.as_ref().map(Credentials::auth) {
                None if url_user.is_some()
                    && allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
                    && probe.auth_attempts.get() == 1 =>
                {
                    let password = self
                        .url
                        .userinfo
                        .as_deref()
                        .and_then(|info| info.split_once(':'))
                        .map_or(String::new(), |(_, password)| {
                            super::url::percent_decode(password)
                        });
                    Cred::userpass_plaintext(url_user.unwrap_or_default(), &password)
                }
                None if self.url.has_credentials() => {
                    refuse("the server rejected the credentials in the URL")
                }
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
            callbacks.certificate_check(move |cert, _host| {
                let Some(hostkey) = cert.as_hostkey() else {
                    return Ok(CertificateCheckStatus::CertificatePassthrough);
                };
                let presented = match (hostkey.hostkey(), hostkey.hash_sha256()) {
                    (Some(raw), _) => PresentedKey::Raw(raw),
                    (None, Some(hash)) => PresentedKey::Sha256(hash),
                    (None, None) => {
                        *probe.host_key_problem.borrow_mut() =
                            Some("the server presented no host key that can be checked".into());
                        return Err(git2::Error::from_str("host key not checkable"));
                    }
                };
                match known_hosts.check(host, port, presented) {
                    Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                    Err(problem) => {
                        *probe.host_key_problem.borrow_mut() = Some(problem.to_string());
                        Err(git2::Error::from_str("host key rejected"))
                    }
                }
            });
        }
        let over_time = move || {
            let late = Instant::now() >= deadline;
            if late {
                probe.budget.borrow_mut().get_or_insert_with(|| {
                    (
                        "--git-max-fetch-seconds",
                        format!(
                            "{}: the fetch ran past {}s (--git-max-fetch-seconds={}) and was cancelled",
                            self.url.redacted,
                            budgets.max_fetch_time.as_secs(),
                            budgets.max_fetch_time.as_secs()
                        ),
                    )
                });
            }
            late
        };
        probe.reserved.set(size_before);
        // Returning false cancels the transfer: the only portable way git2 offers.
        callbacks.transfer_progress(move |progress| {
            if over_time() {
                return false;
            }
            if progress.total_objects() > budgets.max_objects {
                *probe.budget.borrow_mut() = Some((
                    "--git-max-objects",
                    format!(
                        "{}: the server sends {} objects, more than --git-max-objects={}; the fetch was cancelled",
                        self.url.redacted,
                        progress.total_objects(),
                        budgets.max_objects
                    ),
                ));
                return false;
            }
            probe.received.set(progress.received_bytes() as u64);
            self.within_bytes(
                probe,
                size_before + probe.received.get() + probe.refs.get() * BYTES_PER_REF,
            )
        });
        callbacks.sideband_progress(move |_| !over_time());
        callbacks.update_tips(move |_, _, _| {
            probe.refs.set(probe.refs.get() + 1);
            self.within_bytes(
                probe,
                size_before + probe.received.get() + probe.refs.get() * BYTES_PER_REF,
            )
        });
        callbacks
    }

    /// Whether `bytes` fit the clone's budget and, reserving in steps, the cache's.
    fn within_bytes(&self, probe: &Probe, bytes: u64) -> bool {
        let reserved = &probe.reserved;
        let budgets = self.inner.budgets;
        if bytes > budgets.max_repo_bytes {
            *probe.budget.borrow_mut() = Some((
                "--git-max-repo-bytes",
                format!(
                    "{}: the clone would take more than {} on disk (--git-max-repo-bytes={}): {} received when the fetch was cancelled",
                    self.url.redacted,
                    human_bytes(budgets.max_repo_bytes),
                    budgets.max_repo_bytes,
                    human_bytes(bytes)
                ),
            ));
            return false;
        }
        if bytes > reserved.get() {
            let want = (bytes + RESERVE_STEP).min(budgets.max_repo_bytes);
            if !self.inner.reserve(&self.entry, want) {
                *probe.budget.borrow_mut() = Some((
                    "--git-max-cache-bytes",
                    format!(
                        "{}: the Git cache is full: {} would exceed --git-max-cache-bytes={} ({}) with every other clone in use",
                        self.url.redacted,
                        human_bytes(bytes),
                        budgets.max_cache_bytes,
                        human_bytes(budgets.max_cache_bytes)
                    ),
                ));
                return false;
            }
            reserved.set(want);
        }
        true
    }

    /// Interprets a failed connection or fetch.
    fn connection_error(&self, probe: &Probe, e: &git2::Error) -> SourceError {
        if let Some((limit, message)) = probe.budget.borrow_mut().take() {
            return SourceError::BudgetExceeded { limit, message };
        }
        if let Some(problem) = probe.host_key_problem.take() {
            return SourceError::HostKeyRejected {
                host: self.url.host.clone().unwrap_or_default(),
                message: problem,
            };
        }
        if probe.auth_refused.get() || e.code() == ErrorCode::Auth {
            return SourceError::AuthenticationFailed {
                url: self.url.redacted.clone(),
                message: self.url.scrub(e.message()),
            };
        }
        SourceError::FetchFailed {
            url: self.url.redacted.clone(),
            message: self.url.scrub(e.message()),
        }
    }

    /// Connects and lists the server's refs, nothing more: proof that these
    /// credentials may still read the repository.
    fn ls_remote(&self) -> Result<(), SourceError> {
        let repo = open_bare(&self.dir)?;
        let mut remote = repo
            .remote_anonymous(&self.url.raw)
            .map_err(|e| self.fetch_failed(&e))?;
        let probe = Probe::default();
        let deadline = Instant::now() + self.timeout;
        let size = self.entry.usage().bytes;
        let callbacks = self.callbacks(&probe, deadline, size);
        let mut proxy = ProxyOptions::new();
        proxy.auto();
        let result = remote
            .connect_auth(Direction::Fetch, Some(callbacks), Some(proxy))
            .and_then(|connection| connection.list().map(|_| ()));
        result.map_err(|e| self.connection_error(&probe, &e))
    }

    fn fetch_unobserved(&self) -> Result<(), SourceError> {
        let repo = self.open_or_create()?;
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let mut remote = repo
            .remote_anonymous(&self.url.raw)
            .map_err(|e| self.fetch_failed(&e))?;
        let probe = Probe::default();
        let deadline = Instant::now() + self.timeout;
        let size_before = disk_usage(&self.dir);
        self.entry.usage().bytes = size_before;
        let callbacks = self.callbacks(&probe, deadline, size_before);

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
            return Err(self.connection_error(&probe, &e));
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

fn remove_dir(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot remove a Git clone");
    }
}

/// Bytes a directory takes on disk (allocated blocks, so a million tiny files count
/// as what they cost), without following symlinks.
pub(crate) fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            total = total.saturating_add(metadata.blocks().saturating_mul(512).max(metadata.len()));
            if metadata.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
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
