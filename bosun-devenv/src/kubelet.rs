//! The kubelet endpoint of the local control plane: an HTTPS server on loopback
//! answering what kube-apiserver asks a kubelet for `pods/log`,
//! `GET /containerLogs/{namespace}/{pod}/{container}`, with the lines of the
//! simulated container ([`container_log`]).
//!
//! Every Node that [`ControlPlane::register_node`](super::ControlPlane::register_node)
//! writes names this server as its kubelet (`status.daemonEndpoints.kubeletEndpoint`,
//! address `InternalIP` 127.0.0.1; the API server runs with
//! `--kubelet-preferred-address-types=InternalIP`). The API server proxies
//! `GET /api/v1/namespaces/{ns}/pods/{pod}/log` of a Pod bound to such a Node here;
//! for a Pod bound to no Node it answers an empty log without asking.
//!
//! The certificate is self-signed, made at start with the `openssl` CLI: the API
//! server does not verify a kubelet's serving certificate unless it runs with
//! `--kubelet-certificate-authority`, which this control plane does not set. Nor does
//! it present a client certificate (no `--kubelet-client-certificate`), so this
//! server asks for none.
//!
//! Query parameters, as the kubelet reads them: `tailLines`, `sinceTime` (RFC 3339),
//! `sinceSeconds`, `timestamps` (each line prefixed by its RFC 3339 time with nine
//! fraction digits, as the kubelet writes it), `limitBytes`. `follow=true` returns
//! what is there and ends the stream; `previous=true` answers 400, since a simulated
//! container keeps no previous run.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::admission::{openssl, tls_acceptor};
use super::podsim::container_log;

/// The kubelet endpoint; dropping it stops the server.
pub struct KubeletEndpoint {
    port: u16,
    server: JoinHandle<()>,
    _cert_dir: TempDir,
}

impl std::fmt::Debug for KubeletEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletEndpoint")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl KubeletEndpoint {
    /// Makes a self-signed certificate for 127.0.0.1 and serves on a free loopback
    /// port; Pods are read with `client`. Must be called inside a Tokio runtime.
    pub async fn start(client: kube::Client) -> anyhow::Result<Self> {
        let cert_dir = tempfile::Builder::new()
            .prefix("bosun-kubelet-")
            .tempdir()
            .context("creating the kubelet endpoint's certificate directory")?;
        openssl(
            cert_dir.path(),
            &[&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "kubelet.key",
                "-out",
                "kubelet.crt",
                "-days",
                "30",
                "-subj",
                "/CN=bosun-devenv-kubelet",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ]],
        )
        .await?;
        let read = |name: &str| {
            let path = cert_dir.path().join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let acceptor = tls_acceptor(&read("kubelet.crt")?, &read("kubelet.key")?)?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the kubelet endpoint's port")?;
        let port = listener.local_addr()?.port();
        let server = tokio::spawn(serve(listener, acceptor, client));
        tracing::debug!(port, "kubelet endpoint serving");
        Ok(Self {
            port,
            server,
            _cert_dir: cert_dir,
        })
    }

    /// The port, as a Node's `status.daemonEndpoints.kubeletEndpoint.Port`.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for KubeletEndpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Accepts connections until aborted; connections are tasks of a [`JoinSet`] owned
/// here, so aborting this task cuts them too.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor, client: kube::Client) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, acceptor.clone(), client.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "kubelet endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, acceptor: TlsAcceptor, client: kube::Client) {
    let stream = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(%error, "kubelet endpoint: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = service_fn(move |request| answer(request, client.clone()));
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "kubelet endpoint: connection ended");
    }
}

async fn answer(
    request: Request<Incoming>,
    client: kube::Client,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    let Some((namespace, pod, container)) = container_logs_path(request.uri().path()) else {
        return Ok(reply(StatusCode::NOT_FOUND, "404 page not found\n".into()));
    };
    if request.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ));
    }
    let now = Timestamp::now();
    let query = match LogQuery::parse(request.uri().query().unwrap_or_default(), now) {
        Ok(query) => query,
        Err(problem) => return Ok(reply(StatusCode::BAD_REQUEST, problem)),
    };
    if query.previous {
        return Ok(reply(
            StatusCode::BAD_REQUEST,
            format!("previous terminated container {container:?} in pod {pod:?} not found"),
        ));
    }
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let pod_object = match pods.get_opt(&pod).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{pod} not found"),
            ));
        }
        Err(error) => {
            return Ok(reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading pod {namespace}/{pod}: {error}"),
            ));
        }
    };
    match container_log(&pod_object, &container, now) {
        Ok(lines) => Ok(reply(StatusCode::OK, query.render(&lines))),
        Err(problem) => Ok(reply(StatusCode::BAD_REQUEST, problem)),
    }
}

/// `(namespace, pod, container)` of a `/containerLogs/{namespace}/{pod}/{container}` path.
fn container_logs_path(path: &str) -> Option<(String, String, String)> {
    let rest = path.strip_prefix("/containerLogs/")?;
    let mut parts = rest.split('/');
    let (namespace, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [namespace, pod, container].iter().any(|part| part.is_empty()) {
        return None;
    }
    Some((namespace.to_owned(), pod.to_owned(), container.to_owned()))
}

/// The parameters of one log request.
#[derive(Clone, Debug, Default, PartialEq)]
struct LogQuery {
    tail_lines: Option<usize>,
    /// Lines written before this are left out (`sinceTime`, or `sinceSeconds` before now).
    since: Option<Timestamp>,
    timestamps: bool,
    limit_bytes: Option<usize>,
    previous: bool,
}

impl LogQuery {
    /// Reads the query string of a request received at `now`.
    fn parse(query: &str, now: Timestamp) -> Result<Self, String> {
        let mut parsed = LogQuery::default();
        let url = reqwest::Url::parse(&format!("https://kubelet/?{query}")).map_err(|e| e.to_string())?;
        for (key, value) in url.query_pairs() {
            let number = || {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("{key}: {value:?} is not a number"))
            };
            match key.as_ref() {
                "tailLines" => parsed.tail_lines = Some(number()?.max(0) as usize),
                "limitBytes" => parsed.limit_bytes = Some(number()?.max(0) as usize),
                "sinceSeconds" => {
                    // Longer ago than time goes back: everything.
                    parsed.since = now.checked_sub(SignedDuration::from_secs(number()?.max(0))).ok();
                }
                "sinceTime" => {
                    parsed.since = Some(
                        value
                            .parse::<Timestamp>()
                            .map_err(|e| format!("sinceTime: {value:?}: {e}"))?,
                    );
                }
                "timestamps" => parsed.timestamps = value == "true" || value == "1",
                "previous" => parsed.previous = value == "true" || value == "1",
                _ => {}
            }
        }
        Ok(parsed)
    }

    /// The response body for `lines` (oldest first).
    fn render(&self, lines: &[(Timestamp, String)]) -> String {
        let since: Vec<&(Timestamp, String)> = lines
            .iter()
            .filter(|(at, _)| self.since.is_none_or(|since| *at >= since))
            .collect();
        let skip = self.tail_lines.map_or(0, |tail| since.len().saturating_sub(tail));
        let mut body = String::new();
        for (at, line) in &since[skip..] {
            if self.timestamps {
                body.push_str(&kubelet_timestamp(*at));
                body.push(' ');
            }
            body.push_str(line);
            body.push('\n');
        }
        if let Some(limit) = self.limit_bytes
            && body.len() > limit
        {
            let mut cut = limit;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        body
    }
}

/// `at` as the kubelet prefixes a log line with it: RFC 3339 in UTC with nine
/// fraction digits (`2026-01-01T00:00:00.500000000Z`).
fn kubelet_timestamp(at: Timestamp) -> String {
    let whole = Timestamp::from_second(at.as_second()).unwrap_or(at).to_string();
    format!(
        "{}.{:09}Z",
        whole.trim_end_matches('Z'),
        at.subsec_nanosecond().max(0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn lines() -> Vec<(Timestamp, String)> {
        vec![
            (at(0), "one".into()),
            (at(2), "two".into()),
            (at(2) + SignedDuration::from_millis(500), "three".into()),
        ]
    }

    #[test]
    fn paths_name_namespace_pod_and_container() {
        assert_eq!(
            container_logs_path("/containerLogs/shop/worker-1/main"),
            Some(("shop".into(), "worker-1".into(), "main".into()))
        );
        for path in [
            "/containerLogs/shop/worker-1",
            "/containerLogs/shop//main",
            "/exec/a/b/c",
            "/containerLogs/a/b/c/d",
        ] {
            assert_eq!(container_logs_path(path), None, "{path}");
        }
    }

    #[test]
    fn tail_since_timestamps_and_limit() {
        let now = at(10);
        let render = |query: &str| LogQuery::parse(query, now).unwrap().render(&lines());
        assert_eq!(render(""), "one\ntwo\nthree\n");
        assert_eq!(render("tailLines=2"), "two\nthree\n");
        assert_eq!(render("tailLines=0"), "");
        assert_eq!(render("tailLines=9"), "one\ntwo\nthree\n");
        assert_eq!(render("sinceSeconds=8"), "two\nthree\n");
        assert_eq!(render(&format!("sinceTime={}", at(1))), "two\nthree\n");
        assert_eq!(render("limitBytes=6"), "one\ntw");
        assert_eq!(
            render("timestamps=true&tailLines=1"),
            "2023-11-14T22:13:22.500000000Z three\n"
        );
        assert_eq!(
            render("timestamps=true&tailLines=2").lines().next(),
            Some("2023-11-14T22:13:22.000000000Z two")
        );
        assert_eq!(render("sinceSeconds=9223372036854775807"), "one\ntwo\nthree\n");
        assert!(LogQuery::parse("previous=true", now).unwrap().previous);
        assert!(
            LogQuery::parse("tailLines=many", now)
                .unwrap_err()
                .contains("tailLines")
        );
    }
}
