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
//! GET at each request (pushes are rare; the controller needs only `get` on that one
//! Secret), so rotating it needs no restart. Every comparison with it takes the same time
//! whatever the guess.
//!
//! Answers: 200 with the repositories and apps woken; 202 when the request was valid
//! but nothing was woken (another event, no app uses that repository), saying so;
//! 401 for a missing or wrong signature or token, before the body is read as JSON;
//! 413 for a body over the limit (1 MiB); 400 for a body that is not the expected JSON;
//! 503 when the Secret cannot be read. Nothing is woken unless the answer is 200.
//!
//! Which URLs name the same repository: see [`Repository`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
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

use crate::controller::FetchNow;

/// Default limit on a request body. GitHub caps its payloads at 25 MB, but a push of a
/// few commits is a few kB; commit lists are not read.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The key of the Secret that holds the shared secret.
pub const SECRET_KEY: &str = "token";

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
pub fn signature_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
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
pub fn token_valid(secret: &[u8], given: Option<&str>) -> bool {
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
pub enum Hook {
    /// A push to a repository known by these URLs (every form the sender gave).
    Push(Vec<String>),
    /// GitHub's `ping`, sent when the webhook is set up: answered 200.
    Ping,
    /// Answered, nothing to do (GitHub's `ping`, another event): why.
    Ignored(String),
}

/// A GitHub delivery: `event` is `X-GitHub-Event`.
pub fn github_hook(event: Option<&str>, body: &[u8]) -> Result<Hook, String> {
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
pub fn gitlab_hook(body: &[u8]) -> Result<Hook, String> {
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
pub fn generic_hook(body: &[u8]) -> Result<Hook, String> {
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
    fetch_now: FetchNow,
    secret: SecretSource,
    body_limit: usize,
}

enum SecretSource {
    /// Key [`SECRET_KEY`] of a Secret.
    Kubernetes {
        client: kube::Client,
        namespace: String,
        name: String,
    },
    #[cfg(test)]
    Fixed(Vec<u8>),
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
            SecretSource::Fixed(secret) => Ok(secret.clone()),
        }
    }
}

impl WebhookReceiver {
    pub fn new(settings: &WebhookSettings, fetch_now: FetchNow, client: kube::Client) -> WebhookReceiver {
        WebhookReceiver {
            inner: Arc::new(Inner {
                fetch_now,
                secret: SecretSource::Kubernetes {
                    client,
                    namespace: settings.secret_namespace.clone(),
                    name: settings.secret_name.clone(),
                },
                body_limit: settings.body_limit,
            }),
        }
    }

    /// Wakes the apps of the repositories `urls` name.
    fn push(&self, source: &'static str, urls: &[String]) -> Response {
        let mut repositories: Vec<Repository> = urls.iter().filter_map(|url| Repository::of(url)).collect();
        repositories.sort();
        repositories.dedup();
        // A standby replica (or one still starting) runs no passes: say so, so that the
        // forge shows a failed delivery (and may redeliver) instead of a silent 202.
        if !self.inner.fetch_now.is_reconciling() {
            let names: Vec<String> = repositories.iter().map(Repository::to_string).collect();
            info!(source, repositories = ?names, "push received by a replica that does not reconcile");
            return answer(
                StatusCode::SERVICE_UNAVAILABLE,
                "this replica is not reconciling (a standby, or still starting): nothing triggered here; the leader picks the commit up at its interval",
                &names,
                &[],
            );
        }
        let apps = self.inner.fetch_now.repository_pushed(|url| {
            Repository::of(url).is_some_and(|repository| repositories.contains(&repository))
        });
        let names: Vec<String> = repositories.iter().map(Repository::to_string).collect();
        info!(source, repositories = ?names, apps = ?apps, "push received");
        if apps.is_empty() {
            let message = format!("no AppDeployment uses {}: nothing triggered", names.join(", "));
            return answer(StatusCode::ACCEPTED, &message, &names, &apps);
        }
        let message = format!("fetching now for {} app(s)", apps.len());
        answer(StatusCode::OK, &message, &names, &apps)
    }
}

fn answer(status: StatusCode, message: &str, repositories: &[String], apps: &[String]) -> Response {
    let body = serde_json::json!({"message": message, "repositories": repositories, "apps": apps});
    (status, axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    answer(status, message, &[], &[])
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

fn authenticated(auth: Auth, secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let signature = || signature_valid(secret, body, header(headers, "x-hub-signature-256"));
    match auth {
        Auth::GitHubSignature => signature(),
        Auth::GitLabToken => token_valid(secret, header(headers, "x-gitlab-token")),
        Auth::BearerOrSignature => match header(headers, "authorization") {
            Some(value) => token_valid(secret, value.strip_prefix("Bearer ")),
            None => signature(),
        },
    }
}

/// Authenticates, then parses, then wakes: nothing is parsed before the sender proved
/// it knows the secret.
async fn handle(
    receiver: &WebhookReceiver,
    source: &'static str,
    auth: Auth,
    headers: &HeaderMap,
    body: &[u8],
    parse: impl FnOnce(&[u8]) -> Result<Hook, String>,
) -> Response {
    let secret = match receiver.inner.secret.read().await {
        Ok(secret) => secret,
        Err(problem) => {
            warn!(source, %problem, "webhook refused: its secret cannot be read");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the webhook secret cannot be read",
            );
        }
    };
    if !authenticated(auth, &secret, headers, body) {
        warn!(source, "webhook refused: wrong or missing signature or token");
        return refuse(StatusCode::UNAUTHORIZED, "wrong or missing signature or token");
    }
    match parse(body) {
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

async fn github(State(receiver): State<WebhookReceiver>, headers: HeaderMap, body: Bytes) -> Response {
    let event = header(&headers, "x-github-event").map(str::to_string);
    handle(
        &receiver,
        "github",
        Auth::GitHubSignature,
        &headers,
        &body,
        |body| github_hook(event.as_deref(), body),
    )
    .await
}

async fn gitlab(State(receiver): State<WebhookReceiver>, headers: HeaderMap, body: Bytes) -> Response {
    handle(
        &receiver,
        "gitlab",
        Auth::GitLabToken,
        &headers,
        &body,
        gitlab_hook,
    )
    .await
}

async fn generic(State(receiver): State<WebhookReceiver>, headers: HeaderMap, body: Bytes) -> Response {
    handle(
        &receiver,
        "generic",
        Auth::BearerOrSignature,
        &headers,
        &body,
        generic_hook,
    )
    .await
}

/// `POST /hooks/github`, `/hooks/gitlab`, `/hooks/generic`, to merge into the
/// controller's HTTP server.
pub fn routes(receiver: WebhookReceiver) -> Router {
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
pub async fn listen(
    settings: &WebhookSettings,
    receiver: WebhookReceiver,
) -> Result<(), crate::controller::Error> {
    let Some(address) = settings.listen else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        crate::controller::Error::Internal(format!("--webhook-listen-address {address}: {e}"))
    })?;
    info!(%address, "webhook receiver listening");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, routes(receiver)).await {
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
        let receiver = WebhookReceiver {
            inner: Arc::new(Inner {
                fetch_now: FetchNow::new(
                    store,
                    crate::source::GitCache::new(dir.path().into()),
                    trigger,
                    ready.clone(),
                ),
                secret: SecretSource::Fixed(b"s3cret".to_vec()),
                body_limit: 4096,
            }),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(axum::serve(listener, routes(receiver)).into_future());
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
        assert_eq!(body["apps"], serde_json::json!(["a/shop", "b/shop-ssh"]));
        assert_eq!(drain(), ["a/shop", "b/shop-ssh"]);

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
        assert_eq!(post("/hooks/generic", generic, hmac).await.0, 200);
        assert_eq!(drain(), ["d/other"]);
    }
}
