//! A validating admission webhook on loopback whose answer a test switches at
//! runtime, to see how the API server (and the controller behind it) handles a
//! refusal: [`AdmissionWebhook`].
//!
//! It serves HTTPS on a free port of 127.0.0.1 with a certificate of its own CA
//! (made with the `openssl` CLI), and [`AdmissionWebhook::register`] points a
//! `ValidatingWebhookConfiguration` at it (`failurePolicy: Fail`,
//! `sideEffects: None`, so dry-run requests are sent to it too).
//!
//! What a client of the API server gets back, measured on kube-apiserver 1.20.2
//! (`<webhook>` is the webhook's name, [`webhook_name`]; `<port>` the webhook's):
//!
//! - [`WebhookBehavior::Deny`]: HTTP **403**, reason **`Forbidden`**, message
//!   `admission webhook "<webhook>" denied the request: <message>`, no `details`.
//!   The code and reason are the webhook's own (`status.code` and `status.reason`
//!   of its answer: 403 `Forbidden` here, as controller-runtime's
//!   `admission.Denied` answers; a webhook answering without a code gets 400);
//!   only the message prefix is the API server's.
//! - [`WebhookBehavior::Fail500`]: HTTP **500**, reason **`InternalError`**, message
//!   `Internal error occurred: failed calling webhook "<webhook>": an error on the
//!   server ("<the webhook's response body>") has prevented the request from
//!   succeeding`.
//! - stopped ([`AdmissionWebhook::stop`]): HTTP **500**, reason **`InternalError`**,
//!   message `Internal error occurred: failed calling webhook "<webhook>": Post
//!   "https://127.0.0.1:<port>/validate?timeout=5s": dial tcp 127.0.0.1:<port>:
//!   connect: connection refused`.
//!
//! In both failure cases (an `InternalError` because the policy is `Fail`)
//! `details` has empty name, group and kind and one cause whose `message` is the
//! message without its `Internal error occurred: ` prefix. Dry-run requests
//! (`dryRun=All`) are reviewed, and refused, the same way. The test
//! `tests/devenv_webhook.rs` asserts these texts.

use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::process;

/// The path the webhook serves.
const PATH: &str = "/validate";

/// How long the API server waits for an answer (its default is 10 s).
const TIMEOUT_SECONDS: i32 = 5;

/// The largest AdmissionReview read (the API server's own request limit is 3 MiB).
const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// The field manager of what [`AdmissionWebhook::register`] writes.
const FIELD_MANAGER: &str = "bosun-devenv-webhook";

/// The namespace label prefix that selects the namespaces of a webhook. 1.21+
/// label every namespace `kubernetes.io/metadata.name`, 1.20 does not, so the
/// namespace gets a label of its own.
const NAMESPACE_LABEL_PREFIX: &str = "admission-webhook.devenv.bosun.dev/";

/// How the webhook answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookBehavior {
    /// `allowed: true`.
    Allow,
    /// `allowed: false` with `status: {code: 403, reason: Forbidden, message}`.
    Deny(String),
    /// The webhook itself fails: HTTP 500 with a plain-text body, no review.
    Fail500,
}

/// One AdmissionReview the webhook received, and how it answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedReview {
    pub uid: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT` (a server-side apply that creates
    /// the object is a `CREATE`).
    pub operation: String,
    /// The group of the resource, `""` for the core group.
    pub group: String,
    pub version: String,
    pub resource: String,
    pub sub_resource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Whether the request under review is a dry run.
    pub dry_run: bool,
    /// Who sent the request under review.
    pub user: String,
    /// What the webhook answered.
    pub answer: WebhookBehavior,
}

/// What the server task and the test share.
struct Shared {
    behavior: Mutex<WebhookBehavior>,
    reviews: Mutex<Vec<ReceivedReview>>,
}

/// A validating admission webhook serving HTTPS on 127.0.0.1; it starts with
/// [`WebhookBehavior::Allow`]. Dropping it stops the server.
pub struct AdmissionWebhook {
    port: u16,
    ca_pem: Vec<u8>,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    _cert_dir: TempDir,
}

impl std::fmt::Debug for AdmissionWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionWebhook")
            .field("url", &self.url())
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

impl AdmissionWebhook {
    /// Makes a CA and a serving certificate for 127.0.0.1 and serves on a free
    /// loopback port. Must be called inside a Tokio runtime.
    pub async fn start() -> anyhow::Result<Self> {
        let cert_dir = tempfile::Builder::new()
            .prefix("bosun-webhook-")
            .tempdir()
            .context("creating the webhook's certificate directory")?;
        generate_certificates(cert_dir.path()).await?;
        let read = |name: &str| {
            let path = cert_dir.path().join(name);
            std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
        };
        let ca_pem = read("ca.crt")?;
        let acceptor = tls_acceptor(&read("server.crt")?, &read("server.key")?)?;
        let (listener, port) = bind_free_port().await?;
        let shared = Arc::new(Shared {
            behavior: Mutex::new(WebhookBehavior::Allow),
            reviews: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(serve(listener, acceptor.clone(), shared.clone()));
        tracing::debug!(port, "admission webhook serving");
        Ok(Self {
            port,
            ca_pem,
            acceptor,
            shared,
            server: Some(server),
            _cert_dir: cert_dir,
        })
    }

    /// Where the API server sends reviews: `https://127.0.0.1:<port>/validate`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}{PATH}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM certificate of the CA that signed the serving certificate (the
    /// configuration's `caBundle`).
    pub fn ca_pem(&self) -> &[u8] {
        &self.ca_pem
    }

    /// Changes how the webhook answers from the next review on.
    pub fn set_behavior(&self, behavior: WebhookBehavior) {
        *self
            .shared
            .behavior
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = behavior;
    }

    pub fn behavior(&self) -> WebhookBehavior {
        self.shared
            .behavior
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every review received so far, oldest first.
    pub fn reviews(&self) -> Vec<ReceivedReview> {
        self.shared
            .reviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the server is up (not stopped).
    pub fn is_running(&self) -> bool {
        self.server.as_ref().is_some_and(|task| !task.is_finished())
    }

    /// Stops serving: the port is closed, open connections are cut, and the API
    /// server's calls fail with "connection refused" until
    /// [`AdmissionWebhook::restart`].
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Wait until the task, its listener and its connections are dropped.
            let _ = server.await;
        }
    }

    /// Serves again on the same port, with the same certificate, behavior and
    /// recorded reviews.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("the admission webhook on port {} is already running", self.port);
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("binding the webhook's port {} again", self.port))?;
        self.server = Some(tokio::spawn(serve(
            listener,
            self.acceptor.clone(),
            self.shared.clone(),
        )));
        Ok(())
    }

    /// Points the ValidatingWebhookConfiguration `name` at this webhook for the
    /// requests that `rules` match (see [`webhook_rule`]) in namespace `namespace`
    /// only: `failurePolicy: Fail`, `sideEffects: None`,
    /// `admissionReviewVersions: [v1]`, timeout 5 s. The namespace is created if
    /// missing and labelled `admission-webhook.devenv.bosun.dev/<name>=enabled`,
    /// which the configuration's `namespaceSelector` selects. `name` must be a
    /// valid label name (at most 63 characters).
    ///
    /// The API server picks up the configuration from its watch, within about a
    /// second: a test should wait until a request reaches the webhook
    /// ([`AdmissionWebhook::reviews`]) before it relies on the webhook.
    pub async fn register(
        &self,
        client: &kube::Client,
        name: &str,
        rules: Vec<RuleWithOperations>,
        namespace: &str,
    ) -> anyhow::Result<ValidatingWebhookConfiguration> {
        if name.is_empty() || name.len() > 63 {
            bail!("webhook configuration name {name:?}: 1 to 63 characters (it is also a label name)");
        }
        let label = format!("{NAMESPACE_LABEL_PREFIX}{name}");
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let labelled = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": namespace, "labels": { &label: "enabled" } },
        });
        namespaces
            .patch(namespace, &params, &Patch::Apply(&labelled))
            .await
            .with_context(|| format!("labelling Namespace {namespace} with {label}"))?;

        let configuration = webhook_configuration(name, &self.url(), &self.ca_pem, rules, &label);
        let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        configurations
            .patch(name, &params, &Patch::Apply(&configuration))
            .await
            .with_context(|| format!("applying ValidatingWebhookConfiguration {name}"))
    }

    /// Deletes the ValidatingWebhookConfiguration `name`, if it exists.
    pub async fn unregister(client: &kube::Client, name: &str) -> anyhow::Result<()> {
        let configurations: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        match configurations.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => {
                Err(error).with_context(|| format!("deleting ValidatingWebhookConfiguration {name}"))
            }
        }
    }
}

impl Drop for AdmissionWebhook {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Binds a free port below the ephemeral range (see [`process::free_ports`]), so
/// that no outgoing connection takes it while the webhook is stopped.
async fn bind_free_port() -> anyhow::Result<(TcpListener, u16)> {
    let mut last_error = None;
    for _ in 0..5 {
        let port = process::free_ports(1)?[0];
        match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return Ok((listener, port)),
            // Taken since it was checked: try another.
            Err(error) => last_error = Some(error),
        }
    }
    Err(anyhow::Error::from(last_error.expect("at least one attempt")).context("binding the webhook's port"))
}

/// The name of the webhook in configuration `configuration_name`; the API server
/// quotes it in its errors. Webhook names must have at least three segments.
pub fn webhook_name(configuration_name: &str) -> String {
    format!("{configuration_name}.devenv.bosun.dev")
}

/// A rule matching `operations` (`CREATE`, `UPDATE`, `DELETE`, `CONNECT` or `*`)
/// on `resource` (plural, or `resource/subresource`) of `group`/`version` (`""`
/// for the core group; `*` for any), at any scope.
pub fn webhook_rule(operations: &[&str], group: &str, version: &str, resource: &str) -> RuleWithOperations {
    RuleWithOperations {
        operations: Some(operations.iter().map(|&o| o.to_owned()).collect()),
        api_groups: Some(vec![group.to_owned()]),
        api_versions: Some(vec![version.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        scope: Some("*".to_owned()),
    }
}

/// The configuration [`AdmissionWebhook::register`] applies.
fn webhook_configuration(
    name: &str,
    url: &str,
    ca_pem: &[u8],
    rules: Vec<RuleWithOperations>,
    namespace_label: &str,
) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: webhook_name(name),
            client_config: WebhookClientConfig {
                url: Some(url.to_owned()),
                ca_bundle: Some(ByteString(ca_pem.to_vec())),
                service: None,
            },
            rules: Some(rules),
            failure_policy: Some("Fail".to_owned()),
            side_effects: "None".to_owned(),
            admission_review_versions: vec!["v1".to_owned()],
            timeout_seconds: Some(TIMEOUT_SECONDS),
            namespace_selector: Some(LabelSelector {
                match_labels: Some([(namespace_label.to_owned(), "enabled".to_owned())].into()),
                ..LabelSelector::default()
            }),
            ..ValidatingWebhook::default()
        }]),
    }
}

/// Accepts connections until aborted. Connections are tasks of a [`JoinSet`]
/// owned here, so aborting this task cuts them too: a stopped webhook must not
/// keep answering on a connection the API server kept alive.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, acceptor.clone(), shared.clone()));
                }
                Err(error) => {
                    tracing::warn!(%error, "admission webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let stream = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(%error, "admission webhook: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = service_fn(move |request| answer(request, shared.clone()));
    if let Err(error) = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "admission webhook: connection ended");
    }
}

async fn answer(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        return Ok(plain(StatusCode::NOT_FOUND, "POST /validate only"));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                &format!("reading the body: {error}"),
            ));
        }
    };
    let review: Value = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(error) => return Ok(plain(StatusCode::BAD_REQUEST, &format!("not JSON: {error}"))),
    };
    let behavior = shared
        .behavior
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(received) = received_review(&review, behavior.clone()) else {
        return Ok(plain(
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview with a request",
        ));
    };
    let uid = received.uid.clone();
    tracing::debug!(?received, "admission webhook: review");
    shared
        .reviews
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(received);
    let response = match review_response(&uid, &behavior) {
        Some(response) => {
            let mut ok = Response::new(Full::new(Bytes::from(response.to_string())));
            ok.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                "application/json".parse().expect("a valid header"),
            );
            ok
        }
        None => plain(StatusCode::INTERNAL_SERVER_ERROR, "simulated webhook failure"),
    };
    Ok(response)
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}

/// The review in an `admission.k8s.io/v1` AdmissionReview; `None` without a request uid.
fn received_review(review: &Value, answer: WebhookBehavior) -> Option<ReceivedReview> {
    let request = review.get("request")?;
    let text = |value: &Value| value.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let resource = &request["resource"];
    Some(ReceivedReview {
        uid: text(&request["uid"])?,
        operation: text(&request["operation"]).unwrap_or_default(),
        group: text(&resource["group"]).unwrap_or_default(),
        version: text(&resource["version"]).unwrap_or_default(),
        resource: text(&resource["resource"]).unwrap_or_default(),
        sub_resource: text(&request["subResource"]),
        namespace: text(&request["namespace"]),
        name: text(&request["name"]),
        dry_run: request["dryRun"].as_bool().unwrap_or(false),
        user: text(&request["userInfo"]["username"]).unwrap_or_default(),
        answer,
    })
}

/// The AdmissionReview answering review `uid`; `None` for [`WebhookBehavior::Fail500`].
fn review_response(uid: &str, behavior: &WebhookBehavior) -> Option<Value> {
    let response = match behavior {
        WebhookBehavior::Allow => json!({ "uid": uid, "allowed": true }),
        WebhookBehavior::Deny(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": { "code": 403, "reason": "Forbidden", "message": message },
        }),
        WebhookBehavior::Fail500 => return None,
    };
    Some(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
}

/// A TLS acceptor for the PEM certificate chain and key (also the kubelet
/// endpoint's).
pub(crate) fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the serving certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("parsing the serving key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("loading the serving certificate")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The OpenSSL configuration of the two certificates: a CA, and a serving
/// certificate for 127.0.0.1 (Go, hence the API server, wants the address in the
/// subject alternative names, not in the common name).
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = bosun-devenv-webhook
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
authorityKeyIdentifier = keyid
";

/// Writes `ca.crt`, `server.key` and `server.crt` (P-256 keys) into `dir`.
async fn generate_certificates(dir: &Path) -> anyhow::Result<()> {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG)?;
    let serial = format!("{}", rand::random::<u32>());
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509", "-config", "openssl.cnf", "-extensions", "ca"][..],
            &new_key,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "30",
                "-subj",
                "/CN=bosun-devenv-webhook-ca",
            ],
        ],
    )
    .await?;
    openssl(
        dir,
        &[
            &["req", "-new", "-config", "openssl.cnf"][..],
            &new_key,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ],
    )
    .await?;
    openssl(
        dir,
        &[&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "30",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "server",
            "-out",
            "server.crt",
        ][..]],
    )
    .await
}

/// Runs `openssl` with the concatenated `args` in `dir`.
pub(crate) async fn openssl(dir: &Path, args: &[&[&str]]) -> anyhow::Result<()> {
    let args: Vec<&str> = args.concat();
    let output = tokio::process::Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .await
        .context("running openssl (is it installed? scripts/control-plane-bins.sh installs it)")?;
    if !output.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(dry_run: bool) -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": { "group": "", "version": "v1", "kind": "ConfigMap" },
                "resource": { "group": "", "version": "v1", "resource": "configmaps" },
                "namespace": "guarded",
                "name": "settings",
                "operation": "CREATE",
                "userInfo": { "username": "bosun", "groups": ["system:masters"] },
                "dryRun": dry_run,
            }
        })
    }

    #[test]
    fn a_review_is_read_from_its_request() {
        let received = received_review(&review(true), WebhookBehavior::Allow).unwrap();
        assert_eq!(received.uid, "u-1");
        assert_eq!(received.operation, "CREATE");
        assert_eq!(received.group, "");
        assert_eq!(received.resource, "configmaps");
        assert_eq!(received.sub_resource, None);
        assert_eq!(received.namespace.as_deref(), Some("guarded"));
        assert_eq!(received.name.as_deref(), Some("settings"));
        assert!(received.dry_run);
        assert_eq!(received.user, "bosun");
        assert!(received_review(&json!({ "request": {} }), WebhookBehavior::Allow).is_none());
    }

    #[test]
    fn answers_follow_the_behavior() {
        let allow = review_response("u-1", &WebhookBehavior::Allow).unwrap();
        assert_eq!(allow["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(allow["response"]["uid"], "u-1");
        assert_eq!(allow["response"]["allowed"], true);
        let deny = review_response("u-2", &WebhookBehavior::Deny("no thanks".into())).unwrap();
        assert_eq!(deny["response"]["allowed"], false);
        assert_eq!(deny["response"]["status"]["code"], 403);
        assert_eq!(deny["response"]["status"]["message"], "no thanks");
        assert_eq!(review_response("u-3", &WebhookBehavior::Fail500), None);
    }

    #[test]
    fn the_configuration_fails_closed_for_one_namespace() {
        let rules = vec![webhook_rule(&["CREATE", "UPDATE"], "", "v1", "configmaps")];
        let configuration =
            webhook_configuration("guard", "https://127.0.0.1:1/validate", b"PEM", rules, "l/guard");
        let webhook = &configuration.webhooks.as_ref().unwrap()[0];
        assert_eq!(webhook.name, "guard.devenv.bosun.dev");
        assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(webhook.side_effects, "None");
        assert_eq!(webhook.admission_review_versions, ["v1"]);
        assert_eq!(webhook.client_config.ca_bundle.as_ref().unwrap().0, b"PEM");
        let selector = webhook.namespace_selector.as_ref().unwrap();
        assert_eq!(selector.match_labels.as_ref().unwrap()["l/guard"], "enabled");
        let serialized = serde_json::to_value(&configuration).unwrap();
        assert_eq!(serialized["kind"], "ValidatingWebhookConfiguration");
        assert_eq!(serialized["webhooks"][0]["clientConfig"]["caBundle"], "UEVN");
    }

    #[tokio::test]
    async fn serves_https_that_its_ca_verifies() {
        let mut webhook = AdmissionWebhook::start().await.unwrap();
        let certificate = reqwest::Certificate::from_pem(webhook.ca_pem()).unwrap();
        let http = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(certificate)
            .build()
            .unwrap();
        let url = webhook.url();
        let post = async |body: &Value| http.post(&url).json(body).send().await;

        let answer: Value = post(&review(false)).await.unwrap().json().await.unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        webhook.set_behavior(WebhookBehavior::Fail500);
        assert_eq!(post(&review(true)).await.unwrap().status(), 500);
        let reviews = webhook.reviews();
        assert_eq!(reviews.len(), 2);
        assert_eq!(reviews[1].answer, WebhookBehavior::Fail500);
        assert!(reviews[1].dry_run);

        webhook.stop().await;
        assert!(!webhook.is_running());
        let refused = post(&review(false)).await.unwrap_err();
        assert!(refused.is_connect(), "{refused:?}");
        webhook.restart().await.unwrap();
        webhook.set_behavior(WebhookBehavior::Deny("closed".into()));
        let answer: Value = post(&review(false)).await.unwrap().json().await.unwrap();
        assert_eq!(answer["response"]["status"]["message"], "closed");
    }
}
