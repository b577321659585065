//! Git push webhooks: a push announced by GitHub, GitLab or any tool that can send a
//! small JSON document makes every AppDeployment of that repository fetch at once,
//! instead of at the end of its `spec.source.git.interval`.
//!
//! | path              | authenticated by                                           | a push is                         |
//! |-------------------|------------------------------------------------------------|-----------------------------------|
//! | `/hooks/github`   | `X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>`   | `X-GitHub-Event: push` (`ping` answers 200) |
//! | `/hooks/gitlab`   | `X-Gitlab-Token: <secret>`                                 | `"object_kind": "push"`           |
//! | `/hooks/generic`  | `Authorization: Bearer <secret>`, or the GitHub signature  | `{"repository": "<url>"}`         |
//!
//! The secret is the `token` key of one Secret (`--webhook-secret-name`), read with a
//! GET and kept ([`SECRET_TTL`]): a request costs no API call, except the first after
//! the TTL and, at most once per [`SECRET_MIN_REREAD`], one after a well-formed
//! credential that did not match (the secret may have been rotated: the new one counts
//! at once, the old one is refused from that read on). The controller needs only `get`
//! on that one Secret. Every comparison with it takes the same time whatever the guess.
//!
//! In order, each step before any work of the next:
//! 1. the sender's address has requests left ([`ADDRESS_RATE`], IPv6 by /64), else 429;
//! 2. the credential header is there and well-formed (a token; a `sha256=` and 64 hex
//!    digits), else 401 without reading the body or the Secret;
//! 3. a declared `Content-Length` over the limit (1 MiB) is 413;
//! 4. a token is compared (the body not read yet); a signature is checked on the body,
//!    read up to the limit (413 beyond);
//! 5. the body is parsed (400 if it is not the expected JSON), then each repository of
//!    the push has pushes left ([`REPOSITORY_RATE`]), else 429.
//!
//! Answers: 200 with the repositories woken and how many apps (a count: which apps,
//! and in which namespaces, is not the sender's business); 202 when the request was
//! valid but nothing was woken (another event, no app uses that repository), saying so;
//! 503 when the Secret was never read or this replica does not reconcile. Nothing is
//! woken unless the answer is 200.
//!
//! Which URLs name the same repository: see [`Repository`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

/// What a push may do to the controller: wake the apps of a repository. All the
/// receiver knows of the controller (which implements it, `controller::FetchNow`), so
/// the server does not depend on the controller that starts it.
pub trait SourceWaker: Send + Sync + 'static {
    /// Whether a push can wake anything here: only the replica that reconciles (a
    /// standby has no apps in its cache and runs no passes).
    fn is_reconciling(&self) -> bool;

    /// Wakes every app whose repository URL `pushed` accepts, so that its next pass
    /// fetches whatever its interval; returns the apps woken (`namespace/name`), sorted.
    fn wake(&self, pushed: &dyn Fn(&str) -> bool) -> Vec<String>;
}

/// Default limit on a request body. GitHub caps its payloads at 25 MB, but a push of a
/// few commits is a few kB; commit lists are not read.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The key of the Secret that holds the shared secret.
pub(crate) const SECRET_KEY: &str = "token";

/// Where the receiver's shared secret is, and where it listens.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub secret_namespace: String,
    pub secret_name: String,
    /// An address of its own to listen on (`--webhook-listen-address`); `None` when the
    /// controller's HTTP server serves [`routes`].
    pub listen: Option<SocketAddr>,
    /// Larger bodies are refused with 413.
    pub body_limit: usize,
}

/// Which URLs name the same repository: host and path, compared after normalisation.
///
/// - the scheme does not count: `https://`, `http://`, `ssh://`, `git+ssh://`, `git://`
///   and the scp-like `git@host:path` of one host and path are one repository, because
///   a forge serves each repository over all of them and tells which in the payload;
/// - user information (`git@`, `user:password@`) and the port do not count: SSH and
///   HTTPS of one forge listen on different ports (22 or 2222, 443);
/// - the host is compared without case, IPv6 brackets removed;
/// - the path is compared without case (GitHub and GitLab treat owner and repository
///   names so), without leading, trailing or repeated slashes, without one `.git`
///   suffix, and without a query or fragment;
/// - `file:///path` has an empty host.
///
/// Not the same: another host name for the same server (`ssh.github.com`), a forge
/// mounted under a path prefix in one form only (`https://host/gitlab/g/p` vs
/// `git@host:g/p`). A false match costs one fetch; a missed one, the interval.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    pub host: String,
    pub path: String,
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

impl Repository {
    /// The repository `url` names, or `None` when it names none (no host, no path, an
    /// unknown scheme).
    pub fn of(url: &str) -> Option<Repository> {
        let url = url.trim();
        let (host, path) = match url.split_once("://") {
            Some((scheme, rest)) => {
                let known = ["https", "http", "ssh", "git+ssh", "ssh+git", "git", "file"];
                if !known.contains(&scheme.to_ascii_lowercase().as_str()) {
                    return None;
                }
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let host = host_of(authority)?;
                if scheme.eq_ignore_ascii_case("file") {
                    if !host.is_empty() && host != "localhost" {
                        return None;
                    }
                    (String::new(), path)
                } else {
                    (host, path)
                }
            }
            None => {
                // scp-like `[user@]host:path`: no slash before the colon.
                let (before, path) = url.split_once(':')?;
                if before.contains('/') {
                    return None;
                }
                let host = before.rsplit_once('@').map_or(before, |(_, host)| host);
                (
                    host.trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_ascii_lowercase(),
                    path,
                )
            }
        };
        if host.is_empty() && !url.to_ascii_lowercase().starts_with("file://") {
            return None;
        }
        let path = path.split(['?', '#']).next().unwrap_or_default().to_lowercase();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut path = segments.join("/");
        if let Some(stripped) = path.strip_suffix(".git") {
            path = stripped.trim_end_matches('/').to_string();
        }
        if path.is_empty() {
            return None;
        }
        Some(Repository { host, path })
    }
}

/// `user@host:port`, `[v6]:port`, `host` → the lower-cased host; `None` when malformed.
fn host_of(authority: &str) -> Option<String> {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        host
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    Some(host.to_ascii_lowercase())
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`,
/// checked in constant time.
pub(crate) fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(signature) = decode_hex(hex) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Whether `given` is the secret, in constant time: digests are compared, so not even
/// the length of the secret shows in the timing.
pub(crate) fn token_valid(secret: &[u8], given: Option<&str>) -> bool {
    let Some(given) = given else {
        return false;
    };
    let (a, b) = (Sha256::digest(secret), Sha256::digest(given.as_bytes()));
    bool::from(a.ct_eq(&b)) && !secret.is_empty()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What a valid request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hook {
    /// A push to a repository known by these URLs (every form the sender gave).
    Push(Vec<String>),
    /// GitHub's `ping`, sent when the webhook is set up: answered 200.
    Ping,
    /// Answered, nothing to do (GitHub's `ping`, another event): why.
    Ignored(String),
}

/// A GitHub delivery: `event` is `X-GitHub-Event`.
pub(crate) fn github_hook(event: Option<&str>, body: &[u8]) -> Result<Hook, String> {
    #[derive(Deserialize)]
    struct Payload {
        repository: Option<GitHubRepository>,
    }
    #[derive(Deserialize)]
    struct GitHubRepository {
        clone_url: Option<String>,
        ssh_url: Option<String>,
        html_url: Option<String>,
    }
    match event {
        Some("push") => {}
        Some("ping") => return Ok(Hook::Ping),
        Some(other) => return Ok(Hook::Ignored(format!("event {other:?} is not a push"))),
        None => return Err("no X-GitHub-Event header".into()),
    }
    let payload: Payload = json(body)?;
    let repository = payload.repository.ok_or("no \"repository\" in the push")?;
    urls(
        [repository.clone_url, repository.ssh_url, repository.html_url],
        "repository",
    )
}

/// A GitLab delivery (`object_kind` is the event).
pub(crate) fn gitlab_hook(body: &[u8]) -> Result<Hook, String> {
    #[derive(Deserialize)]
    struct Payload {
        object_kind: Option<String>,
        project: Option<Project>,
        repository: Option<Project>,
    }
    #[derive(Deserialize)]
    struct Project {
        git_http_url: Option<String>,
        git_ssh_url: Option<String>,
    }
    let payload: Payload = json(body)?;
    match payload.object_kind.as_deref() {
        Some("push") => {}
        Some(other) => return Ok(Hook::Ignored(format!("object_kind {other:?} is not a push"))),
        None => return Err("no \"object_kind\"".into()),
    }
    // `repository` is the older, deprecated place of the same URLs.
    let project = payload
        .project
        .or(payload.repository)
        .ok_or("no \"project\" in the push")?;
    urls([project.git_http_url, project.git_ssh_url], "project")
}

/// A generic push: `{"repository": "<url>"}`.
pub(crate) fn generic_hook(body: &[u8]) -> Result<Hook, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Payload {
        repository: String,
    }
    let payload: Payload = json(body)?;
    urls([Some(payload.repository)], "repository")
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("not the expected JSON: {e}"))
}

fn urls<const N: usize>(urls: [Option<String>; N], field: &str) -> Result<Hook, String> {
    let urls: Vec<String> = urls.into_iter().flatten().collect();
    if urls.is_empty() || urls.iter().any(|url| Repository::of(url).is_none()) {
        return Err(format!(
            "{field}: no repository URL, or one that names no repository"
        ));
    }
    Ok(Hook::Push(urls))
}

/// Receives pushes and wakes the apps of the pushed repository. Cheap to clone.
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

struct Inner {
    waker: Arc<dyn SourceWaker>,
    secret: SecretCache,
    body_limit: usize,
    limits: RateLimits,
}

/// A cached secret is used this long before it is read again (at the next request
/// that presents a credential).
pub(crate) const SECRET_TTL: Duration = Duration::from_secs(60);
/// After a credential that does not match, the secret is read again (it may have
/// been rotated) unless it was read less than this ago: wrong guesses cost at most one
/// Secret GET per this time, whatever their number.
pub const SECRET_MIN_REREAD: Duration = Duration::from_secs(10);

enum SecretSource {
    /// Key [`SECRET_KEY`] of a Secret.
    Kubernetes {
        client: kube::Client,
        namespace: String,
        name: String,
    },
    /// A value the test changes, and how many times it was read.
    #[cfg(test)]
    Fixed(
        Arc<std::sync::Mutex<Vec<u8>>>,
        Arc<std::sync::atomic::AtomicUsize>,
    ),
}

impl SecretSource {
    async fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            SecretSource::Kubernetes {
                client,
                namespace,
                name,
            } => {
                let what = format!("Secret {namespace}/{name}");
                let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                    .get_opt(name)
                    .await
                    .map_err(|e| format!("reading {what}: {}", crate::failure::server_message(&e)))?
                    .ok_or_else(|| format!("{what} not found"))?;
                let value = secret
                    .data
                    .and_then(|mut data| data.remove(SECRET_KEY))
                    .ok_or_else(|| format!("{what} has no key {SECRET_KEY:?}"))?
                    .0;
                // `echo secret > file` leaves a newline the sender does not have.
                let trimmed = value.trim_ascii_end();
                if trimmed.is_empty() {
                    return Err(format!("{what}: key {SECRET_KEY:?} is empty"));
                }
                Ok(trimmed.to_vec())
            }
            #[cfg(test)]
            SecretSource::Fixed(secret, reads) => {
                reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(secret.lock().unwrap().clone())
            }
        }
    }
}

/// The shared secret, read once and kept: a request costs no API call, except the
/// first after [`SECRET_TTL`] and, at most once per [`SECRET_MIN_REREAD`], one after a
/// credential that did not match (so that a rotation counts at once for the new
/// secret; the old one is refused from the next read on).
struct SecretCache {
    source: SecretSource,
    state: tokio::sync::Mutex<CachedSecret>,
}

#[derive(Default)]
struct CachedSecret {
    secret: Option<Vec<u8>>,
    read_at: Option<Instant>,
    /// Why the last read failed.
    problem: Option<String>,
}

impl SecretCache {
    fn new(source: SecretSource) -> SecretCache {
        SecretCache {
            source,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// Reads the Secret into `state`. A failed read keeps the secret known before (an
    /// API server hiccup does not stop the webhooks); it is retried after
    /// [`SECRET_MIN_REREAD`].
    async fn refresh(&self, state: &mut CachedSecret) {
        state.read_at = Some(Instant::now());
        match self.source.read().await {
            Ok(secret) => {
                state.secret = Some(secret);
                state.problem = None;
            }
            Err(problem) => {
                warn!(%problem, "the webhook secret cannot be read");
                state.problem = Some(problem);
            }
        }
    }

    /// The secret to check a credential against.
    async fn current(&self) -> Result<Vec<u8>, String> {
        let mut state = self.state.lock().await;
        let age = state.read_at.map(|at| at.elapsed());
        let due = match (&state.secret, age) {
            (_, None) => true,
            (Some(_), Some(age)) => age >= SECRET_TTL,
            (None, Some(age)) => age >= SECRET_MIN_REREAD,
        };
        if due {
            self.refresh(&mut state).await;
        }
        state
            .secret
            .clone()
            .ok_or_else(|| state.problem.clone().unwrap_or_default())
    }

    /// After `used` did not match: the secret read again, when it may have changed
    /// and was not read in the last [`SECRET_MIN_REREAD`]; `None` when it is the same.
    async fn reread(&self, used: &[u8]) -> Option<Vec<u8>> {
        let mut state = self.state.lock().await;
        if state.secret.as_deref().is_some_and(|known| known != used) {
            // Another request read a new one meanwhile.
            return state.secret.clone();
        }
        if state.read_at.is_some_and(|at| at.elapsed() < SECRET_MIN_REREAD) {
            return None;
        }
        self.refresh(&mut state).await;
        state.secret.clone().filter(|secret| secret != used)
    }
}

/// A token bucket: `burst` requests at once, then one per `every`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rate {
    pub burst: u32,
    pub every: Duration,
}

/// Requests from one address (before authentication: a flood of guesses is cut before
/// any work) and pushes of one repository (after: a sender that knows the secret
/// cannot make bosun fetch in a loop). IPv6 addresses count by /64, which one host
/// usually holds whole. `X-Forwarded-For` is not trusted: behind a proxy, the proxy's
/// address is the one counted.
pub(crate) const ADDRESS_RATE: Rate = Rate {
    burst: 60,
    every: Duration::from_millis(500),
};
pub(crate) const REPOSITORY_RATE: Rate = Rate {
    burst: 20,
    every: Duration::from_secs(3),
};
/// Addresses and repositories tracked at most; the one seen least recently goes first.
const MAX_TRACKED: usize = 4096;

struct Buckets<K> {
    rate: Rate,
    /// Key → (tokens, when last refilled).
    buckets: std::sync::Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            buckets: std::sync::Mutex::default(),
        }
    }

    /// Takes a token for `key`; false when it has none left.
    fn take(&self, key: &K) -> bool {
        let now = Instant::now();
        let burst = f64::from(self.rate.burst);
        let per_second = 1.0 / self.rate.every.as_secs_f64();
        let mut buckets = self.buckets.lock().expect("rate limits poisoned");
        if !buckets.contains_key(key) && buckets.len() >= MAX_TRACKED {
            let oldest = buckets
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                buckets.remove(&oldest);
            }
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct RateLimits {
    addresses: Buckets<IpAddr>,
    repositories: Buckets<Repository>,
}

impl RateLimits {
    fn new(address: Rate, repository: Rate) -> RateLimits {
        RateLimits {
            addresses: Buckets::new(address),
            repositories: Buckets::new(repository),
        }
    }
}

/// The key an address is counted under: itself, or its /64 for IPv6.
fn address_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl WebhookReceiver {
    pub fn new(
        settings: &WebhookSettings,
        waker: Arc<dyn SourceWaker>,
        client: kube::Client,
    ) -> WebhookReceiver {
        WebhookReceiver {
            inner: Arc::new(Inner {
                waker,
                secret: SecretCache::new(SecretSource::Kubernetes {
                    client,
                    namespace: settings.secret_namespace.clone(),
                    name: settings.secret_name.clone(),
                }),
                body_limit: settings.body_limit,
                limits: RateLimits::new(ADDRESS_RATE, REPOSITORY_RATE),
            }),
        }
    }

    /// Wakes the apps of the repositories `urls` name. The answer says how many apps,
    /// never which: whoever knows the secret of one repository learns nothing of the
    /// apps (and their namespaces) of the cluster.
    fn push(&self, source: &'static str, urls: &[String]) -> Response {
        let mut repositories: Vec<Repository> = urls.iter().filter_map(|url| Repository::of(url)).collect();
        repositories.sort();
        repositories.dedup();
        let names: Vec<String> = repositories.iter().map(Repository::to_string).collect();
        if let Some(busy) = repositories
            .iter()
            .find(|repository| !self.inner.limits.repositories.take(repository))
        {
            let rate = self.inner.limits.repositories.rate;
            warn!(source, repository = %busy, "push refused: too many for this repository");
            return answer(
                StatusCode::TOO_MANY_REQUESTS,
                &format!(
                    "too many pushes of {busy}: the limit is {} at once, then one per {}s; nothing triggered, the apps fetch at their interval",
                    rate.burst,
                    rate.every.as_secs_f64()
                ),
                &names,
                0,
            );
        }
        // A standby replica (or one still starting) runs no passes: say so, so that the
        // forge shows a failed delivery (and may redeliver) instead of a silent 202.
        if !self.inner.waker.is_reconciling() {
            info!(source, repositories = ?names, "push received by a replica that does not reconcile");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "this replica is not reconciling (a standby, or still starting): nothing triggered here; the leader picks the commit up at its interval",
                &names,
                0,
            );
        }
        let apps = self
            .inner
            .waker
            .wake(&|url| Repository::of(url).is_some_and(|repository| repositories.contains(&repository)));
        info!(source, repositories = ?names, apps = ?apps, "push received");
        if apps.is_empty() {
            let message = format!("no AppDeployment uses {}: nothing triggered", names.join(", "));
            return answer(StatusCode::ACCEPTED, &message, &names, 0);
        }
        let message = format!("fetching now for {} app(s)", apps.len());
        answer(StatusCode::OK, &message, &names, apps.len())
    }
}

fn answer(status: StatusCode, message: &str, repositories: &[String], apps: usize) -> Response {
    let body = serde_json::json!({"message": message, "repositories": repositories, "apps": apps});
    (status, axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    answer(status, message, &[], 0)
}

/// How a request proves it knows the secret.
#[derive(Clone, Copy)]
enum Auth {
    GitHubSignature,
    GitLabToken,
    /// A bearer token, or else a GitHub-style signature.
    BearerOrSignature,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// The credential a request presents, when it is shaped right: a token (checked
/// without the body), or a well-formed `sha256=<64 hex digits>` signature (the body is
/// read to check it).
enum Credential<'a> {
    Token(&'a str),
    Signature(&'a str),
}

fn presented<'h>(auth: Auth, headers: &'h HeaderMap) -> Option<Credential<'h>> {
    let signature = || {
        header(headers, "x-hub-signature-256")
            .filter(|value| {
                value
                    .trim()
                    .strip_prefix("sha256=")
                    .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            })
            .map(Credential::Signature)
    };
    let token = |value: Option<&'h str>| value.filter(|v| !v.is_empty()).map(Credential::Token);
    match auth {
        Auth::GitHubSignature => signature(),
        Auth::GitLabToken => token(header(headers, "x-gitlab-token")),
        Auth::BearerOrSignature => match header(headers, "authorization") {
            Some(value) => token(value.strip_prefix("Bearer ")),
            None => signature(),
        },
    }
}

fn matches(credential: &Credential<'_>, secret: &[u8], body: Option<&[u8]>) -> bool {
    match credential {
        Credential::Token(token) => token_valid(secret, Some(token)),
        Credential::Signature(signature) => {
            body.is_some_and(|body| signature_valid(secret, body, Some(signature)))
        }
    }
}

/// Limits the sender, checks the shape of the credential, then the credential (the
/// body is read only for a signature, up to the limit, and only then), then parses,
/// then wakes: nothing is read, and no API call made, before the request is shaped
/// right, and nothing parsed before the sender proved it knows the secret.
async fn handle(
    receiver: &WebhookReceiver,
    source: &'static str,
    auth: Auth,
    request: Request,
    parse: impl FnOnce(&HeaderMap, &[u8]) -> Result<Hook, String>,
) -> Response {
    let inner = &receiver.inner;
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>()
        && !inner.limits.addresses.take(&address_key(peer.ip()))
    {
        warn!(source, peer = %peer.ip(), "webhook refused: too many requests from this address");
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "too many requests from this address: the limit is {} at once, then one per {}s",
                inner.limits.addresses.rate.burst,
                inner.limits.addresses.rate.every.as_secs_f64()
            ),
        );
    }
    let unauthorized = || refuse(StatusCode::UNAUTHORIZED, "wrong or missing signature or token");
    let Some(credential) = presented(auth, headers) else {
        warn!(
            source,
            "webhook refused: no signature or token, or a malformed one"
        );
        return unauthorized();
    };
    let declared = header(headers, "content-length").and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > inner.body_limit as u64) {
        return too_large(inner.body_limit);
    }
    let secret = match inner.secret.current().await {
        Ok(secret) => secret,
        Err(problem) => {
            warn!(source, %problem, "webhook refused: its secret cannot be read");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the webhook secret cannot be read",
            );
        }
    };
    // A token is checked before the body is read; a signature needs the body.
    let (signed_body, body) = match credential {
        Credential::Signature(_) => match read_body(body, inner.body_limit).await {
            Ok(bytes) => (Some(bytes), None),
            Err(response) => return response,
        },
        Credential::Token(_) => (None, Some(body)),
    };
    let authenticated = matches(&credential, &secret, signed_body.as_deref())
        || match inner.secret.reread(&secret).await {
            Some(new) => matches(&credential, &new, signed_body.as_deref()),
            None => false,
        };
    if !authenticated {
        warn!(source, "webhook refused: wrong signature or token");
        return unauthorized();
    }
    let bytes = match (signed_body, body) {
        (Some(bytes), _) => bytes,
        (None, Some(body)) => match read_body(body, inner.body_limit).await {
            Ok(bytes) => bytes,
            Err(response) => return response,
        },
        (None, None) => Bytes::new(),
    };
    finish(receiver, source, headers, &bytes, parse)
}

fn too_large(limit: usize) -> Response {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is over the limit of {limit} bytes"),
    )
}

/// The body, read up to `limit` bytes; `Err` with the answer when it is longer or
/// cannot be read.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))
}

/// An authenticated request: parsed, then the apps woken.
fn finish(
    receiver: &WebhookReceiver,
    source: &'static str,
    headers: &HeaderMap,
    body: &[u8],
    parse: impl FnOnce(&HeaderMap, &[u8]) -> Result<Hook, String>,
) -> Response {
    match parse(headers, body) {
        Ok(Hook::Push(urls)) => receiver.push(source, &urls),
        Ok(Hook::Ping) => refuse(StatusCode::OK, "pong: the webhook is set up"),
        Ok(Hook::Ignored(why)) => {
            info!(source, %why, "webhook ignored");
            refuse(StatusCode::ACCEPTED, &format!("{why}: nothing triggered"))
        }
        Err(problem) => {
            warn!(source, %problem, "webhook refused: malformed");
            refuse(StatusCode::BAD_REQUEST, &problem)
        }
    }
}

async fn github(State(receiver): State<WebhookReceiver>, request: Request) -> Response {
    handle(
        &receiver,
        "github",
        Auth::GitHubSignature,
        request,
        |headers, body| github_hook(header(headers, "x-github-event"), body),
    )
    .await
}

async fn gitlab(State(receiver): State<WebhookReceiver>, request: Request) -> Response {
    handle(&receiver, "gitlab", Auth::GitLabToken, request, |_, body| {
        gitlab_hook(body)
    })
    .await
}

async fn generic(State(receiver): State<WebhookReceiver>, request: Request) -> Response {
    handle(
        &receiver,
        "generic",
        Auth::BearerOrSignature,
        request,
        |_, body| generic_hook(body),
    )
    .await
}

/// `POST /hooks/github`, `/hooks/gitlab`, `/hooks/generic`, to merge into the
/// controller's HTTP server.
pub(crate) fn routes(receiver: WebhookReceiver) -> Router {
    let limit = receiver.inner.body_limit;
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/gitlab", post(gitlab))
        .route("/hooks/generic", post(generic))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(receiver)
}

/// Serves [`routes`] on `settings.listen`, when set, in the background. Binding
/// happens before this returns, so a port in use fails the start.
pub async fn listen(settings: &WebhookSettings, receiver: WebhookReceiver) -> std::io::Result<()> {
    let Some(address) = settings.listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(address).await?;
    info!(%address, "webhook receiver listening");
    tokio::spawn(async move {
        let service = routes(receiver).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service).await {
            warn!(%error, "webhook receiver stopped");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AppDeployment;
    use kube::runtime::{reflector, watcher};
    use proptest::prelude::*;

    fn repo(url: &str) -> Repository {
        Repository::of(url).unwrap_or_else(|| panic!("{url} names no repository"))
    }

    #[test]
    fn every_form_of_one_repository_is_the_same_repository() {
        let forms = [
            "https://github.com/acme/shop.git",
            "https://github.com/acme/shop",
            "https://GitHub.com/Acme/Shop/",
            "http://github.com//acme/shop.git/",
            "https://user:password@github.com:443/acme/shop.git",
            "git@github.com:acme/shop.git",
            "git@github.com:/acme/shop",
            "GITHUB.COM:acme/shop.git",
            "ssh://git@github.com/acme/shop.git",
            "ssh://git@github.com:22/acme/shop",
            "git+ssh://git@github.com/acme/shop.git",
            "git://github.com/acme/shop.git",
            "https://github.com/acme/shop.git?ref=main",
            "  https://github.com/acme/shop  ",
        ];
        for form in forms {
            assert_eq!(
                repo(form),
                Repository {
                    host: "github.com".into(),
                    path: "acme/shop".into()
                },
                "{form}"
            );
        }
        // GitLab subgroups and another SSH port.
        assert_eq!(
            repo("ssh://git@gitlab.example.com:2222/group/sub/project.git"),
            repo("https://gitlab.example.com/group/sub/project")
        );
        assert_eq!(
            repo("ssh://git@[::1]:2222/repo.git"),
            Repository {
                host: "::1".into(),
                path: "repo".into()
            }
        );
        assert_eq!(
            repo("git://127.0.0.1:9418/app.git"),
            repo("http://127.0.0.1:8080/app")
        );
        assert_eq!(repo("file:///srv/git/app.git").to_string(), "/srv/git/app");
    }

    #[test]
    fn different_repositories_differ() {
        let pairs = [
            ("https://github.com/acme/shop", "https://github.com/acme/shop-api"),
            ("https://github.com/acme/shop", "https://gitlab.com/acme/shop"),
            ("https://github.com/acme/shop", "https://github.com/other/shop"),
            ("git@github.com:acme/shop.git", "git@github.com:acme/shop.git.git"),
            ("https://host/gitlab/g/p", "git@host:g/p"),
            ("file:///srv/app", "https://srv/app"),
        ];
        for (a, b) in pairs {
            assert_ne!(repo(a), repo(b), "{a} vs {b}");
        }
    }

    #[test]
    fn urls_naming_no_repository() {
        for url in [
            "",
            "https://github.com",
            "https://github.com/",
            "https:///acme/shop",
            "ftp://github.com/acme/shop",
            "/srv/git/app",
            "./app",
            "git@github.com:",
            ":acme/shop",
            "file://otherhost/srv/app",
            "https://[::1/app",
        ] {
            assert_eq!(Repository::of(url), None, "{url}");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,8}".prop_filter("not a .git name", |s| {
            !s.to_lowercase().ends_with(".git") && s != "." && s != ".."
        })
    }

    proptest! {
        /// Whatever the spelling (scheme, user, port, host case, `.git`, slashes),
        /// a host and path name one repository; another path, another repository.
        #[test]
        fn spellings_of_one_repository_compare_equal(
            host in "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}",
            segments in prop::collection::vec(segment(), 1..4),
            other in segment(),
            user in prop::option::of("[a-z]{1,6}(:[a-zA-Z0-9]{1,6})?"),
            port in prop::option::of(1u16..),
            upper_host in any::<bool>(),
            dot_git in any::<bool>(),
            trailing in any::<bool>(),
            form in 0usize..5,
        ) {
            let path = segments.join("/");
            let shown_host = if upper_host { host.to_uppercase() } else { host.clone() };
            let suffix = format!("{}{}", if dot_git { ".git" } else { "" }, if trailing { "/" } else { "" });
            let user_at = user.as_ref().map(|u| format!("{u}@")).unwrap_or_default();
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let url = match form {
                0 => format!("https://{user_at}{shown_host}{port}/{path}{suffix}"),
                1 => format!("http://{shown_host}{port}/{path}{suffix}"),
                2 => format!("ssh://{user_at}{shown_host}{port}/{path}{suffix}"),
                3 => format!("git://{shown_host}{port}/{path}{suffix}"),
                _ => format!("{}{shown_host}:{path}{suffix}", user.as_ref().map(|u| format!("{}@", u.split(':').next().unwrap())).unwrap_or_default()),
            };
            let expected = Repository { host: host.clone(), path: path.to_lowercase() };
            prop_assert_eq!(Repository::of(&url), Some(expected.clone()), "{}", url);
            let elsewhere = format!("https://{host}/{path}/{other}");
            prop_assert_ne!(Repository::of(&elsewhere), Some(expected));
        }
    }

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let bytes = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    #[test]
    fn github_signatures() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let good = sign(b"s3cret", body);
        assert!(signature_valid(b"s3cret", body, Some(&good)));
        assert!(signature_valid(
            b"s3cret",
            body,
            Some(&good.to_uppercase().replace("SHA256=", "sha256="))
        ));
        assert!(!signature_valid(b"other", body, Some(&good)), "another secret");
        assert!(
            !signature_valid(b"s3cret", b"{\"ref\":\"refs/heads/evil\"}", Some(&good)),
            "another body"
        );
        assert!(!signature_valid(b"s3cret", body, None));
        assert!(!signature_valid(
            b"s3cret",
            body,
            Some(good.trim_start_matches("sha256="))
        ));
        assert!(
            !signature_valid(b"s3cret", body, Some(&good[..good.len() - 2])),
            "short"
        );
        assert!(
            !signature_valid(b"s3cret", body, Some(&good[..good.len() - 1])),
            "odd length"
        );
        assert!(!signature_valid(b"s3cret", body, Some("sha256=zz")));
        assert!(!signature_valid(b"s3cret", body, Some("sha1=0123")));
    }

    #[test]
    fn tokens() {
        assert!(token_valid(b"s3cret", Some("s3cret")));
        assert!(!token_valid(b"s3cret", Some("s3cre")));
        assert!(!token_valid(b"s3cret", Some("s3cret ")));
        assert!(!token_valid(b"s3cret", None));
        assert!(!token_valid(b"", Some("")), "an empty secret admits nobody");
    }

    #[test]
    fn payloads() {
        let github = br#"{"ref":"refs/heads/main","repository":{"clone_url":"https://github.com/acme/shop.git","ssh_url":"git@github.com:acme/shop.git","html_url":"https://github.com/acme/shop"}}"#;
        assert_eq!(
            github_hook(Some("push"), github),
            Ok(Hook::Push(vec![
                "https://github.com/acme/shop.git".into(),
                "git@github.com:acme/shop.git".into(),
                "https://github.com/acme/shop".into()
            ]))
        );
        assert_eq!(github_hook(Some("ping"), b"{}"), Ok(Hook::Ping));
        assert!(matches!(github_hook(Some("issues"), b"{}"), Ok(Hook::Ignored(_))));
        assert!(github_hook(None, github).is_err());
        assert!(github_hook(Some("push"), b"{\"repository\":").is_err());
        assert!(github_hook(Some("push"), b"{}").is_err());
        assert!(github_hook(Some("push"), br#"{"repository":{"clone_url":"nowhere"}}"#).is_err());

        let gitlab = br#"{"object_kind":"push","project":{"git_http_url":"https://gitlab.com/g/p.git","git_ssh_url":"git@gitlab.com:g/p.git"}}"#;
        assert_eq!(
            gitlab_hook(gitlab),
            Ok(Hook::Push(vec![
                "https://gitlab.com/g/p.git".into(),
                "git@gitlab.com:g/p.git".into()
            ]))
        );
        assert!(matches!(
            gitlab_hook(br#"{"object_kind":"tag_push"}"#),
            Ok(Hook::Ignored(_))
        ));
        assert!(gitlab_hook(br#"{"project":{}}"#).is_err());
        assert!(gitlab_hook(br#"{"object_kind":"push","project":{}}"#).is_err());

        assert_eq!(
            generic_hook(br#"{"repository":"git@h:r.git"}"#),
            Ok(Hook::Push(vec!["git@h:r.git".into()]))
        );
        assert!(generic_hook(br#"{"repository":["a"]}"#).is_err());
        assert!(generic_hook(br#"{"repo":"git@h:r.git"}"#).is_err());
        assert!(generic_hook(b"repository=git@h:r.git").is_err());
    }

    fn app(namespace: &str, name: &str, url: &str, suspend: bool) -> AppDeployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "bosun.dev/v1alpha1", "kind": "AppDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"git": {"url": url}}, "suspend": suspend}
        }))
        .unwrap()
    }

    /// The routes on a loopback listener, over a cache of three apps: what each answer
    /// is, and which apps each request woke.
    #[tokio::test]
    async fn routes_answer_and_wake_only_the_apps_of_a_pushed_repository() {
        let (store, mut writer) = reflector::store();
        for app in [
            app("a", "shop", "https://git.example.com/acme/shop.git", false),
            app("b", "shop-ssh", "ssh://git@git.example.com:2222/acme/shop", false),
            app("c", "sleeping", "https://git.example.com/acme/shop", true),
            app("d", "other", "https://git.example.com/acme/other", false),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(app));
        }
        let dir = tempfile::tempdir().unwrap();
        let (trigger, mut woken) = tokio::sync::mpsc::unbounded_channel();
        let ready = crate::server::Readiness::default();
        ready.standby();
        let secret = Arc::new(std::sync::Mutex::new(b"s3cret".to_vec()));
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let receiver = WebhookReceiver {
            inner: Arc::new(Inner {
                waker: Arc::new(crate::controller::FetchNow::new(
                    store,
                    crate::source::GitCache::new(dir.path().into()),
                    trigger,
                    ready.clone(),
                )),
                secret: SecretCache::new(SecretSource::Fixed(secret.clone(), reads.clone())),
                body_limit: 4096,
                limits: RateLimits::new(
                    Rate {
                        burst: 1000,
                        every: Duration::from_millis(1),
                    },
                    Rate {
                        burst: 3,
                        every: Duration::from_secs(3600),
                    },
                ),
            }),
        };
        let reads_now = || reads.load(std::sync::atomic::Ordering::SeqCst);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            axum::serve(
                listener,
                routes(receiver).into_make_service_with_connect_info::<SocketAddr>(),
            )
            .into_future(),
        );
        let http = reqwest::Client::new();
        let post = |path: &str, body: Vec<u8>, headers: Vec<(&'static str, String)>| {
            let mut request = http.post(format!("{base}{path}")).body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (status, body)
            }
        };
        let mut drain = || {
            let mut names = Vec::new();
            while let Ok(object) = woken.try_recv() {
                names.push(format!(
                    "{}/{}",
                    object.namespace.unwrap_or_default(),
                    object.name
                ));
            }
            names.sort();
            names
        };

        let push = br#"{"repository":{"clone_url":"https://git.example.com/acme/shop.git","ssh_url":"git@git.example.com:acme/shop.git"}}"#.to_vec();
        let signed = |body: &[u8]| {
            vec![
                ("x-github-event", "push".to_string()),
                ("x-hub-signature-256", sign(b"s3cret", body)),
            ]
        };
        // A standby replica wakes nothing, and says so.
        let (status, body) = post("/hooks/github", push.clone(), signed(&push)).await;
        assert_eq!(status, 503, "{body}");
        assert!(drain().is_empty());
        ready.reconciling();

        let (status, body) = post("/hooks/github", push.clone(), signed(&push)).await;
        assert_eq!(status, 200, "{body}");
        // How many apps, never which.
        assert_eq!(body["apps"], serde_json::json!(2), "{body}");
        assert!(!body.to_string().contains("a/shop"), "{body}");
        assert_eq!(drain(), ["a/shop", "b/shop-ssh"]);
        assert_eq!(reads_now(), 1, "the secret is read once and kept");

        let forged = vec![
            ("x-github-event", "push".to_string()),
            ("x-hub-signature-256", sign(b"guess", &push)),
        ];
        assert_eq!(post("/hooks/github", push.clone(), forged).await.0, 401);
        assert_eq!(
            post(
                "/hooks/github",
                push.clone(),
                vec![("x-github-event", "push".into())]
            )
            .await
            .0,
            401
        );
        let ping = vec![
            ("x-github-event", "ping".to_string()),
            ("x-hub-signature-256", sign(b"s3cret", b"{}")),
        ];
        assert_eq!(post("/hooks/github", b"{}".to_vec(), ping).await.0, 200);
        let unknown = br#"{"repository":{"clone_url":"https://git.example.com/acme/nobody.git"}}"#.to_vec();
        let (status, body) = post("/hooks/github", unknown.clone(), signed(&unknown)).await;
        assert_eq!(status, 202);
        assert!(
            body["message"].as_str().unwrap().contains("nothing triggered"),
            "{body}"
        );
        let malformed = b"{\"repository\": ".to_vec();
        assert_eq!(
            post("/hooks/github", malformed.clone(), signed(&malformed))
                .await
                .0,
            400
        );
        let big = vec![b' '; 5000];
        assert_eq!(post("/hooks/github", big.clone(), signed(&big)).await.0, 413);
        assert_eq!(drain(), Vec::<String>::new(), "only the valid push woke apps");

        let gitlab =
            br#"{"object_kind":"push","project":{"git_http_url":"https://git.example.com/acme/other.git"}}"#
                .to_vec();
        assert_eq!(
            post(
                "/hooks/gitlab",
                gitlab.clone(),
                vec![("x-gitlab-token", "wrong".into())]
            )
            .await
            .0,
            401
        );
        assert_eq!(drain(), Vec::<String>::new());
        assert_eq!(
            post("/hooks/gitlab", gitlab, vec![("x-gitlab-token", "s3cret".into())])
                .await
                .0,
            200
        );
        assert_eq!(drain(), ["d/other"]);

        let generic = br#"{"repository":"GIT.example.com:acme/other"}"#.to_vec();
        let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
        assert_eq!(
            post("/hooks/generic", generic.clone(), bearer("nope")).await.0,
            401
        );
        assert_eq!(post("/hooks/generic", generic.clone(), vec![]).await.0, 401);
        assert_eq!(
            post("/hooks/generic", generic.clone(), bearer("s3cret")).await.0,
            200
        );
        assert_eq!(drain(), ["d/other"]);
        let hmac = vec![("x-hub-signature-256", sign(b"s3cret", &generic))];
        assert_eq!(post("/hooks/generic", generic.clone(), hmac).await.0, 200);
        assert_eq!(drain(), ["d/other"]);

        // A fourth push of one repository within the hour: 429, nothing woken.
        let (status, body) = post("/hooks/generic", generic.clone(), bearer("s3cret")).await;
        assert_eq!(status, 429, "{body}");
        assert!(body["message"].as_str().unwrap().contains("limit is 3"), "{body}");
        assert!(drain().is_empty());

        // Requests without a well-formed credential read neither the Secret nor the
        // body; wrong guesses read the Secret at most once per SECRET_MIN_REREAD.
        let before = reads_now();
        for _ in 0..20 {
            assert_eq!(post("/hooks/github", push.clone(), vec![]).await.0, 401);
            assert_eq!(
                post(
                    "/hooks/github",
                    push.clone(),
                    vec![("x-hub-signature-256", "sha256=zz".into())]
                )
                .await
                .0,
                401
            );
            assert_eq!(
                post(
                    "/hooks/gitlab",
                    gitlab_body(),
                    vec![("x-gitlab-token", "guess".into())]
                )
                .await
                .0,
                401
            );
        }
        assert!(reads_now() - before <= 1, "{} reads", reads_now() - before);
    }

    /// The secret is read once; after a mismatch it is read again only when the last
    /// read is old enough, and a rotated secret then counts.
    #[tokio::test]
    async fn the_secret_is_cached_and_read_again_after_a_mismatch_at_most_so_often() {
        let secret = Arc::new(std::sync::Mutex::new(b"old".to_vec()));
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let cache = SecretCache::new(SecretSource::Fixed(secret.clone(), reads.clone()));
        let reads_now = || reads.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(cache.current().await.unwrap(), b"old");
        assert_eq!(cache.current().await.unwrap(), b"old");
        assert_eq!(reads_now(), 1);
        *secret.lock().unwrap() = b"new".to_vec();
        // Read just now: a mismatch does not read again.
        assert_eq!(cache.reread(b"old").await, None);
        assert_eq!(reads_now(), 1);
        cache.state.lock().await.read_at = Some(Instant::now() - SECRET_MIN_REREAD);
        assert_eq!(cache.reread(b"old").await.as_deref(), Some(&b"new"[..]));
        assert_eq!(reads_now(), 2);
        assert_eq!(cache.current().await.unwrap(), b"new");
        // Past the TTL, the next request reads again.
        cache.state.lock().await.read_at = Some(Instant::now() - SECRET_TTL);
        cache.current().await.unwrap();
        assert_eq!(reads_now(), 3);
    }

    #[test]
    fn rate_limits_refill_and_stay_bounded() {
        let buckets = Buckets::new(Rate {
            burst: 2,
            every: Duration::from_secs(3600),
        });
        assert!(buckets.take(&1u32));
        assert!(buckets.take(&1u32));
        assert!(!buckets.take(&1u32), "the burst is spent");
        assert!(buckets.take(&2u32), "another key has its own");
        for key in 0..(MAX_TRACKED as u32 + 100) {
            buckets.take(&(key + 10));
        }
        assert!(buckets.buckets.lock().unwrap().len() <= MAX_TRACKED);
        let fast = Buckets::new(Rate {
            burst: 1,
            every: Duration::from_millis(1),
        });
        assert!(fast.take(&0u8));
        std::thread::sleep(Duration::from_millis(5));
        assert!(fast.take(&0u8), "refilled");
        let v6 = |text: &str| address_key(text.parse().unwrap());
        assert_eq!(v6("2001:db8::1"), v6("2001:db8::ffff:1"));
        assert_ne!(v6("2001:db8::1"), v6("2001:db8:0:1::1"));
        assert_eq!(v6("::ffff:10.0.0.1"), v6("10.0.0.1"));
    }

    fn gitlab_body() -> Vec<u8> {
        br#"{"object_kind":"push","project":{"git_http_url":"https://git.example.com/acme/other.git"}}"#
            .to_vec()
    }
}
