//! Git over HTTP with Basic authentication on loopback: an axum server that checks
//! the `Authorization` header and hands every authorized request to
//! `git http-backend` as a CGI script.
//!
//! It exists so the end-to-end tests can fetch over `http://` with credentials from
//! a Secret, the way a user fetches from GitHub or GitLab with a token.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

/// Largest request body accepted (a fetch negotiation is a few kilobytes; a push of
/// the test repositories a few hundred).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// An HTTP server on 127.0.0.1 serving every repository under a base directory as
/// `http://127.0.0.1:<port>/<name>`, to clients that present the given username and
/// password with HTTP Basic authentication. Dropping it stops the server.
#[derive(Debug)]
pub struct GitHttpServer {
    port: u16,
    counters: Arc<Counters>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server has seen, so tests can tell a refusal by the server from a
/// request that never arrived.
#[derive(Debug, Default)]
struct Counters {
    /// Requests answered 401 (no or wrong credentials).
    refused: AtomicU64,
    /// Requests with the right credentials, handed to `git http-backend`.
    served: AtomicU64,
}

/// Everything a request handler needs.
#[derive(Debug)]
struct Backend {
    /// The value of the `Authorization` header that is let through.
    expected_authorization: String,
    username: String,
    project_root: PathBuf,
    /// `<git --exec-path>/git-http-backend`.
    program: PathBuf,
    counters: Arc<Counters>,
}

impl GitHttpServer {
    /// Starts the server on a free port of 127.0.0.1 on a thread of its own (so it
    /// serves whatever runtime, if any, the caller uses) and returns once it listens.
    pub fn start(base_dir: &Path, username: &str, password: &str) -> anyhow::Result<Self> {
        let program = http_backend_program()?;
        let counters = Arc::new(Counters::default());
        let backend = Arc::new(Backend {
            expected_authorization: format!(
                "Basic {}",
                base64_encode(format!("{username}:{password}").as_bytes())
            ),
            username: username.to_owned(),
            project_root: base_dir.to_owned(),
            program,
            counters: counters.clone(),
        });
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("binding the git HTTP server to 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let thread = std::thread::Builder::new()
            .name(format!("git-http-{port}"))
            .spawn(move || serve(listener, backend, shutdown_signal, ready_tx))
            .context("starting the git HTTP server thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => bail!("the git HTTP server thread ended before listening"),
        }
        Ok(Self {
            port,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The URL of repository `name` (a directory under the base directory), without
    /// credentials.
    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/{name}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many requests were refused with 401 so far.
    pub fn refused_requests(&self) -> u64 {
        self.counters.refused.load(Ordering::Relaxed)
    }

    /// How many requests carried the right credentials and were served so far.
    pub fn served_requests(&self) -> u64 {
        self.counters.served.load(Ordering::Relaxed)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server thread: a runtime of its own, serving until `shutdown` fires.
fn serve(
    listener: std::net::TcpListener,
    backend: Arc<Backend>,
    shutdown: tokio::sync::oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(
                anyhow::Error::new(error).context("building the git HTTP runtime")
            ));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                let _ = ready.send(Err(anyhow::Error::new(error).context("registering the listener")));
                return;
            }
        };
        let app = axum::Router::new().fallback(handle).with_state(backend);
        let _ = ready.send(Ok(()));
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = shutdown.await;
            })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "git HTTP server stopped");
        }
    });
}

/// Checks the credentials, then runs `git http-backend` for the request.
async fn handle(State(backend): State<Arc<Backend>>, request: Request) -> Response {
    let authorized = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == backend.expected_authorization.as_bytes());
    if !authorized {
        backend.counters.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, r#"Basic realm="git""#)],
            "authentication required\n",
        )
            .into_response();
    }
    backend.counters.served.fetch_add(1, Ordering::Relaxed);
    match run_cgi(&backend, request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::warn!(error = format!("{error:#}"), "git http-backend failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}\n")).into_response()
        }
    }
}

/// Runs `git http-backend` with the CGI environment of `request`, the body on its
/// standard input, and turns its output into a response.
async fn run_cgi(backend: &Backend, request: Request) -> anyhow::Result<Response> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .context("reading the request body")?;
    let header_text = |name: &HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut command = tokio::process::Command::new(&backend.program);
    command
        .env("GIT_PROJECT_ROOT", &backend.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header_text(&header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", &backend.username)
        .env("REMOTE_ADDR", "127.0.0.1")
        // A gzip-compressed body (git sends one for large negotiations) and the
        // protocol version are passed on as the CGI spec names them.
        .env("HTTP_CONTENT_ENCODING", header_text(&header::CONTENT_ENCODING))
        .env(
            "HTTP_GIT_PROTOCOL",
            header_text(&HeaderName::from_static("git-protocol")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", backend.program.display()))?;
    // Written concurrently with reading the output: either side may fill a pipe.
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let writer = tokio::spawn(async move {
        let written = stdin.write_all(&body).await;
        drop(stdin);
        written
    });
    let output = child
        .wait_with_output()
        .await
        .context("waiting for git http-backend")?;
    // The backend may stop reading early (e.g. on an error it reports in its output).
    let _ = writer.await;
    if output.stdout.is_empty() {
        bail!(
            "git http-backend wrote nothing ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_cgi_response(&output.stdout)
}

/// Splits a CGI response into its header block and body; `Status:` sets the status
/// code (200 without it), every other header is passed on.
fn parse_cgi_response(output: &[u8]) -> anyhow::Result<Response> {
    let (head, body) = split_head(output).context("CGI output has no end of headers")?;
    let head = std::str::from_utf8(head).context("CGI headers are not UTF-8")?;
    let mut status = StatusCode::OK;
    let mut headers = HeaderMap::new();
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            bail!("malformed CGI header line {line:?}");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|code| StatusCode::from_u16(code).ok())
                .with_context(|| format!("CGI status {value:?}"))?;
        } else {
            headers.append(
                HeaderName::from_bytes(name.trim().as_bytes())
                    .with_context(|| format!("CGI header {name:?}"))?,
                HeaderValue::from_str(value).with_context(|| format!("CGI header value of {name:?}"))?,
            );
        }
    }
    let mut response = Response::new(Body::from(Bytes::copy_from_slice(body)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// The header block and the body of CGI output (headers end at the first empty
/// line, written as CRLF CRLF or LF LF).
fn split_head(output: &[u8]) -> Option<(&[u8], &[u8])> {
    let crlf = output.windows(4).position(|w| w == b"\r\n\r\n").map(|at| (at, 4));
    let lf = output.windows(2).position(|w| w == b"\n\n").map(|at| (at, 2));
    let (at, len) = match (crlf, lf) {
        (Some(a), Some(b)) => std::cmp::min_by_key(a, b, |(at, _)| *at),
        (a, b) => a.or(b)?,
    };
    Some((&output[..at], &output[at + len..]))
}

/// `<git --exec-path>/git-http-backend`.
fn http_backend_program() -> anyhow::Result<PathBuf> {
    let output = std::process::Command::new("git")
        .arg("--exec-path")
        .output()
        .context("running git --exec-path")?;
    if !output.status.success() {
        bail!("git --exec-path failed ({})", output.status);
    }
    let exec_path = String::from_utf8(output.stdout).context("git --exec-path is not UTF-8")?;
    let program = Path::new(exec_path.trim()).join("git-http-backend");
    if !program.is_file() {
        bail!("{} does not exist", program.display());
    }
    Ok(program)
}

/// Standard base64 with padding (RFC 4648), for the expected `Authorization` value.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkRepo;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("bot:pw", "Ym90OnB3"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain:?}");
        }
    }

    #[test]
    fn cgi_response_status_headers_and_body() {
        let response = parse_cgi_response(
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope\n\nstill body",
        )
        .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
        let ok = parse_cgi_response(b"Content-Type: application/x-git\n\n\x00\x01").unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(parse_cgi_response(b"no end of headers").is_err());
        assert!(parse_cgi_response(b"Status: teapot\n\n").is_err());
    }

    /// The git CLI can list refs with the right credentials and is refused without.
    #[test]
    fn git_ls_remote_needs_the_credentials() {
        let base = tempfile::tempdir().unwrap();
        let repo = WorkRepo::init(base.path(), "app").unwrap();
        repo.write("a.txt", "a\n").unwrap();
        let head = repo.commit("first").unwrap();
        let server = GitHttpServer::start(base.path(), "bot", "s3cret").unwrap();
        let with_credentials = server.url("app").replace("http://", "http://bot:s3cret@");
        let refs = repo.git(&["ls-remote", &with_credentials]).unwrap();
        assert!(refs.contains(&format!("{head}\trefs/heads/main")), "{refs}");
        assert!(server.served_requests() > 0);

        let wrong = server.url("app").replace("http://", "http://bot:wrong@");
        let refused_before = server.refused_requests();
        let error = repo.git(&["ls-remote", &wrong]).unwrap_err();
        assert!(
            format!("{error:#}").contains("Authentication failed"),
            "{error:#}"
        );
        assert!(server.refused_requests() > refused_before);
    }
}
