//! The controller's JSON log, end to end: one run that handles every kind of secret
//! bosun touches (Git credentials for an HTTP server with Basic auth, a right and a
//! wrong password; a Secret-backed env variable checked against a Runbook policy,
//! passing and failing; a notification URL read from a Secret; the controller's own
//! bearer token), logged at debug level for every library, must not carry any of
//! them, plain or base64-encoded; every line is JSON, and every line of a pass names
//! its app, namespace and revision.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::routing::post;
use bosun::api::{AppDeployment, Phase, short_revision};
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml};
use bosun_devenv::{GitHttpServer, WorkRepo};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::Value;
use support::Harness;

const NS: &str = "shop";
const APP: &str = "litevault";
/// A second app whose Git password is wrong.
const INTRUDER_NS: &str = "intruder";
const USER: &str = "deployer";

/// A value no input contains by chance: finding it in the log means it leaked.
fn unique(label: &str) -> String {
    format!("{label}-{:016x}", rand::random::<u64>())
}

async fn put_secret(harness: &Harness, namespace: &str, name: &str, data: &[(&str, &str)]) {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(harness.client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply Secret");
}

/// The example app whose worker reads `JWT_SECRET` from Secret `jwt_secret`.
fn commit_reading(repo: &WorkRepo, version: &str, jwt_secret: &str) -> String {
    for (path, contents) in ExampleRevision::good(version).files() {
        let contents = if path.ends_with("worker.yaml") {
            let line = "          args: [\"python\", \"-m\", \"app.worker\"]\n";
            assert!(contents.contains(line), "{contents}");
            contents.replace(
                line,
                &format!(
                    "{line}          env:\n            - name: JWT_SECRET\n              valueFrom:\n                secretKeyRef:\n                  name: {jwt_secret}\n                  key: secret\n"
                ),
            )
        } else {
            contents
        };
        repo.write(&path, &contents).unwrap();
    }
    repo.commit(&format!("v{version}: the worker reads Secret {jwt_secret}"))
        .unwrap()
}

/// The Runbook: `JWT_SECRET` must come from a Secret and be 32 characters or more;
/// phase changes are told to the URL in Secret `hooks`.
fn runbook(namespace: &str) -> String {
    format!(
        r#"apiVersion: bosun.dev/v1alpha1
kind: Runbook
metadata:
  name: {APP}
  namespace: {namespace}
spec:
  verifyWindow: 1s
  env:
    - name: JWT_SECRET
      secret: true
      policy:
        minLength: 32
  notify:
    - name: ops
      urlFrom:
        name: hooks
        key: ops
"#
    )
}

/// The AppDeployment on `url` with the credentials of Secret `git-credentials`.
fn app_yaml(namespace: &str, url: &str) -> String {
    let plain = app_deployment_yaml(namespace, APP, url, Some(APP), "2s");
    let with_secret = plain.replacen(
        "      path: deploy\n",
        "      path: deploy\n      secretRef:\n        name: git-credentials\n      insecure: true\n",
        1,
    );
    assert_ne!(plain, with_secret);
    with_secret
}

/// Receives notifications; keeps the paths they were sent to.
async fn start_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let paths: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = Router::new()
        .route("/{*path}", post(record))
        .with_state(paths.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), paths)
}

async fn record(State(paths): State<Arc<Mutex<Vec<String>>>>, uri: Uri) -> StatusCode {
    paths.lock().unwrap().push(uri.path().to_string());
    StatusCode::OK
}

fn source_failed(app: &AppDeployment, reason: &str) -> bool {
    app.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "SourceReady" && c.status == "False" && c.reason == reason)
    })
}

/// The `reconcile` span of a JSON log line, if the line was logged inside one.
fn reconcile_span(line: &Value) -> Option<&Value> {
    line["spans"]
        .as_array()?
        .iter()
        .find(|span| span["name"] == "reconcile")
}

#[tokio::test]
async fn json_logs_name_the_app_of_every_pass_and_carry_no_secret_token_or_password() {
    let mut harness = Harness::start().await;
    let password = unique("git-password");
    let wrong_password = unique("wrong-password");
    let jwt = unique("jwt-of-more-than-32-characters");
    // Under the policy's 32 characters: refused, and the refusal must not quote it.
    let weak_jwt = format!("weak-{:08x}", rand::random::<u32>());
    let hook_token = unique("hook-token");
    let (receiver, received) = start_receiver().await;
    let hook_url = format!("{receiver}/hooks/{hook_token}");

    let repo = harness.repo("app");
    let v1 = commit_reading(&repo, "1.0", "jwt");
    let server = GitHttpServer::start(&harness.dir.path().join("repos"), USER, &password)
        .expect("git HTTP server starts");
    let url = server.url(repo.name());
    for (namespace, git_password) in [(NS, &password), (INTRUDER_NS, &wrong_password)] {
        harness.namespace(namespace).await;
        put_secret(
            &harness,
            namespace,
            "git-credentials",
            &[("username", USER), ("password", git_password)],
        )
        .await;
        put_secret(&harness, namespace, "jwt", &[("secret", &jwt)]).await;
        put_secret(&harness, namespace, "jwt-weak", &[("secret", &weak_jwt)]).await;
        put_secret(&harness, namespace, "hooks", &[("ops", &hook_url)]).await;
        harness.apply_runbook(&runbook(namespace)).await;
        harness.apply_app(&app_yaml(namespace, &url)).await;
    }
    // Debug for bosun and every library (kube, hyper, rustls, reqwest, ...), from the
    // environment variable over the harness's RUST_LOG.
    harness.start_controller_with(&["--log-json"], &[("BOSUN_LOG", "debug,bosun=debug")]);

    harness.wait_for_phase(NS, APP, Phase::Healthy, &v1).await;
    harness
        .wait_for(
            INTRUDER_NS,
            APP,
            "the wrong Git password refused",
            Duration::from_secs(60),
            |app| source_failed(app, "AuthenticationFailed"),
        )
        .await;
    let v2 = commit_reading(&repo, "2.0", "jwt-weak");
    harness
        .wait_for(
            NS,
            APP,
            "v2.0 blocked by the env policy",
            Duration::from_secs(90),
            |app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Phase::Blocked && s.blocked.as_ref().is_some_and(|b| b.revision == v2)
                })
            },
        )
        .await;
    support::eventually("the Blocked notification", Duration::from_secs(30), || {
        let count = received.lock().unwrap().len();
        async move { Ok((count >= 2).then_some(())) }
    })
    .await
    .unwrap();
    assert!(
        received
            .lock()
            .unwrap()
            .iter()
            .all(|path| path == &format!("/hooks/{hook_token}")),
        "notifications went to the Secret's URL"
    );
    harness.kill_controller();

    let log = harness.controller_log_text();
    let secrets = [
        ("the Git password", password.as_str()),
        ("the wrong Git password", wrong_password.as_str()),
        ("the JWT Secret's value", jwt.as_str()),
        ("the weak JWT Secret's value", weak_jwt.as_str()),
        ("the notification URL's token", hook_token.as_str()),
        (
            "the controller's bearer token",
            harness.control_plane.controller_token(),
        ),
    ];
    for (what, value) in secrets {
        // As written, and as the API server sends Secret data (base64).
        let base64 = serde_json::to_value(ByteString(value.as_bytes().to_vec())).unwrap();
        let base64 = base64.as_str().unwrap();
        for form in [value, base64] {
            if let Some(line) = log.lines().find(|line| line.contains(form)) {
                panic!("{what} is in the log:\n{line}");
            }
        }
    }

    let mut lines = 0;
    let mut debug_lines = 0;
    let mut pass_lines = 0;
    let mut revisions = std::collections::BTreeSet::new();
    for line in log.lines().filter(|line| !line.trim().is_empty()) {
        let json: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}):\n{line}"));
        assert!(
            json["timestamp"].is_string() && json["level"].is_string() && json["fields"].is_object(),
            "{line}"
        );
        lines += 1;
        if json["level"] == "DEBUG" {
            debug_lines += 1;
        }
        let Some(span) = reconcile_span(&json) else {
            continue;
        };
        pass_lines += 1;
        assert!(
            [NS, INTRUDER_NS].contains(&span["namespace"].as_str().unwrap_or_default()),
            "no namespace in the reconcile span of {line}"
        );
        assert_eq!(span["app"], APP, "{line}");
        if let Some(revision) = span["revision"].as_str() {
            revisions.insert(revision.to_string());
        }
        // A decision is always about a revision.
        if json["fields"]["message"] == "decided" {
            assert!(span["revision"].is_string(), "no revision in {line}");
        }
    }
    assert!(debug_lines > 0, "BOSUN_LOG=debug did not apply: no debug line");
    // The log does speak of what the secrets were used for: it is checked, not empty.
    for (what, fragment) in [
        ("the Git server's URL", url.as_str()),
        ("the delivered notifications", "notification delivered"),
        ("the policy's refusal", "PreflightFailed"),
        ("the app with the wrong password", INTRUDER_NS),
    ] {
        assert!(
            log.contains(fragment),
            "nothing about {what} ({fragment:?}) in the log"
        );
    }
    assert!(pass_lines > 0, "no line from a pass");
    for revision in [&v1, &v2] {
        assert!(
            revisions.contains(&short_revision(revision)),
            "no line names {revision}: {revisions:?}"
        );
    }
    println!("{lines} JSON lines ({debug_lines} debug, {pass_lines} from passes), no secret in any");
}
