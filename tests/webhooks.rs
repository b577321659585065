//! Git push webhooks end to end: the `bosun` binary with its receiver, a real Git
//! server, an app that polls only every 10 minutes. A push announced by a signed
//! GitHub delivery, a GitLab token or a generic push is applied within seconds; a
//! forged, oversized or malformed request, or a push to another repository, wakes
//! nothing; a rotated secret counts without a restart (within 10 seconds).

mod support;

use std::time::{Duration, Instant};

use bosun::api::Phase;
use bosun_devenv::WorkRepo;
use bosun_devenv::example::{ExampleRevision, workload_only_runbook_yaml};
use hmac::{Hmac, Mac};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::json;
use sha2::Sha256;
use support::Harness;

const NS: &str = "shop";
const APP: &str = "litevault";
const SECRET: &str = "webhook-s3cret";

fn sign(body: &[u8]) -> String {
    sign_with(SECRET.as_bytes(), body)
}

fn sign_with(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The backend image the app's Deployment runs.
async fn image(harness: &Harness) -> String {
    harness.image_of(NS, "backend").await
}

/// Waits until `version` of the example is applied; the time it took from `since`.
async fn applied(harness: &Harness, version: &str, since: Instant) -> Duration {
    let wanted = format!("example/litevault-backend:{version}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if image(harness).await == wanted {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{wanted} not applied 30s after the webhook\n{}",
            harness.controller_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Receiver {
    http: reqwest::Client,
    base: String,
}

impl Receiver {
    async fn post(&self, path: &str, body: Vec<u8>, headers: &[(&str, String)]) -> (u16, serde_json::Value) {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.expect("the receiver answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// The status the receiver answers to a request announcing `length` bytes of body
    /// and sending none of them.
    async fn status_before_body(&self, path: &str, length: usize, headers: &[(&str, String)]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let address = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.expect("connects");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("headers sent");
        let mut answer = vec![0; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .expect("answered without the body")
            .expect("reads the answer");
        let line = String::from_utf8_lossy(&answer[..read]).to_string();
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"))
    }

    async fn github(&self, body: &serde_json::Value, signature: Option<String>) -> (u16, serde_json::Value) {
        let body = serde_json::to_vec(body).unwrap();
        let mut headers = vec![("x-github-event", "push".to_string())];
        headers.extend(signature.map(|s| ("x-hub-signature-256", s)));
        self.post("/hooks/github", body, &headers).await
    }
}

/// What GitHub sends for a push (the fields bosun reads, and a few it does not).
fn github_push(clone_url: &str, ssh_url: &str) -> serde_json::Value {
    json!({
        "ref": "refs/heads/main",
        "repository": {"full_name": "acme/litevault", "clone_url": clone_url, "ssh_url": ssh_url,
            "html_url": clone_url.trim_end_matches(".git")},
        "commits": [{"id": "0", "message": "a commit"}],
    })
}

async fn start(harness: &mut Harness, repo: &WorkRepo) -> Receiver {
    harness.namespace(NS).await;
    // As installed: the chart's ServiceAccount and RBAC (it may read the webhook's
    // Secret), release namespace bosun-system.
    harness
        .run_as_chart_account(support::chart::APPLY_AS_CONTROLLER)
        .await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(NS, "quick"))
        .await;
    harness
        .apply_example_app(NS, APP, repo.name(), Some("quick"), "10m")
        .await;
    // A trailing newline, as `echo` leaves it: not part of the secret.
    let base = harness
        .start_controller_with_webhook_receiver(&format!("{SECRET}\n"))
        .await;
    Receiver {
        http: reqwest::Client::new(),
        base,
    }
}

#[tokio::test]
async fn a_push_announced_by_a_webhook_is_applied_at_once_and_forged_or_bad_requests_wake_nothing() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("litevault");
    let first = ExampleRevision::good("1.0").commit_to(&repo, "first").unwrap();
    let receiver = start(&mut harness, &repo).await;
    harness.wait_for_phase(NS, APP, Phase::Healthy, &first).await;
    let port = harness.git.port();
    // The app's spec says git://127.0.0.1:<port>/litevault; the forge tells other forms.
    let https = "https://127.0.0.1/litevault.git".to_string();
    let ssh = "git@127.0.0.1:litevault.git".to_string();
    let push = github_push(&https, &ssh);

    // A forged signature: 401, and the new commit waits for the interval (10 minutes).
    let second = ExampleRevision::good("2.0").commit_to(&repo, "second").unwrap();
    let (status, _) = receiver
        .github(
            &push,
            Some(sign_with(b"a guess", &serde_json::to_vec(&push).unwrap())),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = receiver.github(&push, None).await;
    assert_eq!(status, 401, "no signature");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(image(&harness).await, "example/litevault-backend:1.0");
    assert_eq!(
        harness
            .app(NS, APP)
            .await
            .status
            .unwrap()
            .desired_revision
            .as_deref(),
        Some(first.as_str()),
        "the forged push fetched nothing"
    );

    // Signed: fetched and applied within seconds.
    let sent = Instant::now();
    let (status, body) = receiver
        .github(&push, Some(sign(&serde_json::to_vec(&push).unwrap())))
        .await;
    assert_eq!(status, 200, "{body}");
    // How many apps, never which (nor their namespaces).
    assert_eq!(body["apps"], json!(1), "{body}");
    assert!(!body.to_string().contains(&format!("{NS}/")), "{body}");
    let took = applied(&harness, "2.0", sent).await;
    println!("GitHub webhook -> commit applied: {:.3}s", took.as_secs_f64());
    assert!(took < Duration::from_secs(10), "{took:?}");
    harness.wait_for_phase(NS, APP, Phase::Healthy, &second).await;

    // GitLab: the token.
    let third = ExampleRevision::good("3.0").commit_to(&repo, "third").unwrap();
    let gitlab = serde_json::to_vec(&json!({
        "object_kind": "push",
        "project": {"git_http_url": format!("http://127.0.0.1:{port}/litevault"), "git_ssh_url": ssh},
    }))
    .unwrap();
    let (status, _) = receiver
        .post(
            "/hooks/gitlab",
            gitlab.clone(),
            &[("x-gitlab-token", "wrong".into())],
        )
        .await;
    assert_eq!(status, 401);
    let sent = Instant::now();
    let (status, body) = receiver
        .post("/hooks/gitlab", gitlab, &[("x-gitlab-token", SECRET.into())])
        .await;
    assert_eq!(status, 200, "{body}");
    let took = applied(&harness, "3.0", sent).await;
    println!("GitLab webhook -> commit applied: {:.3}s", took.as_secs_f64());
    harness.wait_for_phase(NS, APP, Phase::Healthy, &third).await;

    // Generic: a bearer token.
    let fourth = ExampleRevision::good("4.0").commit_to(&repo, "fourth").unwrap();
    let generic = serde_json::to_vec(&json!({"repository": harness.git.url("litevault.git")})).unwrap();
    let sent = Instant::now();
    let (status, body) = receiver
        .post(
            "/hooks/generic",
            generic,
            &[("authorization", format!("Bearer {SECRET}"))],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let took = applied(&harness, "4.0", sent).await;
    println!("generic webhook -> commit applied: {:.3}s", took.as_secs_f64());
    harness.wait_for_phase(NS, APP, Phase::Healthy, &fourth).await;

    // Refused or without effect, all signed: a body over 1 MiB, a malformed body,
    // another repository, a ping. None fetches the new commit.
    ExampleRevision::good("5.0").commit_to(&repo, "fifth").unwrap();
    let mut big = github_push(&https, &ssh);
    big["commits"] = json!(vec!["x".repeat(1024); 1100]);
    let big = serde_json::to_vec(&big).unwrap();
    let headers = |body: &[u8]| {
        [
            ("x-github-event", "push".to_string()),
            ("x-hub-signature-256", sign(body)),
        ]
    };
    // A body announced over the limit is refused before any of it is read: the answer
    // comes while the sender has not sent a byte of it (a client that keeps writing
    // meets a closed connection, so the request is written by hand).
    assert_eq!(
        receiver
            .status_before_body("/hooks/github", big.len(), &headers(&big))
            .await,
        413
    );
    let malformed = br#"{"repository": {"clone_url": "#.to_vec();
    assert_eq!(
        receiver
            .post("/hooks/github", malformed.clone(), &headers(&malformed))
            .await
            .0,
        400
    );
    let other = serde_json::to_vec(&github_push(
        "https://127.0.0.1/other.git",
        "git@127.0.0.1:other.git",
    ))
    .unwrap();
    let (status, body) = receiver
        .post("/hooks/github", other.clone(), &headers(&other))
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing triggered"),
        "{body}"
    );
    let ping = [
        ("x-github-event", "ping".to_string()),
        ("x-hub-signature-256", sign(b"{}")),
    ];
    assert_eq!(receiver.post("/hooks/github", b"{}".to_vec(), &ping).await.0, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(image(&harness).await, "example/litevault-backend:4.0");
    assert_eq!(
        harness
            .app(NS, APP)
            .await
            .status
            .unwrap()
            .desired_revision
            .as_deref(),
        Some(fourth.as_str())
    );

    // A rotated secret counts without a restart: the receiver keeps the secret it read,
    // and reads it again after a mismatch at most every SECRET_MIN_REREAD (10s), so the
    // new one is accepted within that, and the old one is refused from then on.
    let rotated = json!({"stringData": {"token": "rotated-s3cret"}});
    Api::<Secret>::namespaced(harness.client.clone(), "bosun-system")
        .patch(
            "bosun-webhook",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&rotated),
        )
        .await
        .unwrap();
    let generic = serde_json::to_vec(&json!({"repository": harness.git.url("litevault")})).unwrap();
    let bearer = |token: &str| [("authorization", format!("Bearer {token}"))];
    let sent = Instant::now();
    loop {
        let (status, body) = receiver
            .post("/hooks/generic", generic.clone(), &bearer("rotated-s3cret"))
            .await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(
            sent.elapsed() < Duration::from_secs(12),
            "the rotated secret is still refused after {:?}",
            sent.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    applied(&harness, "5.0", sent).await;
    assert_eq!(
        receiver
            .post("/hooks/generic", generic.clone(), &bearer(SECRET))
            .await
            .0,
        401,
        "the old secret, once the new one is read"
    );

    let log = harness.controller_log_text();
    assert!(!log.contains(SECRET), "the secret is in the controller's log");
}
