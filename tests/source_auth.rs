//! bosun end to end against Git servers that require credentials: HTTP Basic auth
//! (`git http-backend` behind [`GitHttpServer`]) and SSH keys (a real sshd,
//! [`GitSshServer`]), with the credentials in a Secret named by
//! `spec.source.git.secretRef`.
//!
//! Each test runs apps that share one repository URL, one with good credentials and
//! others with bad ones, in one controller: the bad ones must fail with the right
//! reason even though the shared clone was fetched successfully by the good one.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bosun::api::{AppDeployment, Phase};
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use bosun_devenv::{GitHttpServer, GitSshServer, WorkRepo};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use support::{Harness, status};

const APP: &str = "litevault";
const SECRET: &str = "git-credentials";

fn commit(repo: &WorkRepo, revision: &ExampleRevision, message: &str) -> String {
    revision.commit_to(repo, message).unwrap()
}

/// A value no test input contains by chance, so finding it in a message means it leaked.
fn unique_secret(label: &str) -> String {
    format!("{label}-{:016x}", rand::random::<u64>())
}

/// Namespace `namespace` with the Secret, a Runbook with no gates but the workload's
/// and a 1s verify window, and the AppDeployment on `url` using the Secret.
async fn set_up_app(harness: &Harness, namespace: &str, url: &str, secret_data: &[(&str, &str)]) {
    set_up_app_with(harness, namespace, url, secret_data, url.starts_with("http://")).await;
}

/// [`set_up_app`], saying whether credentials may travel over plain HTTP.
async fn set_up_app_with(
    harness: &Harness,
    namespace: &str,
    url: &str,
    secret_data: &[(&str, &str)],
    insecure: bool,
) {
    harness.namespace(namespace).await;
    let data: BTreeMap<String, ByteString> = secret_data
        .iter()
        .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
        .collect();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(harness.client.clone(), namespace);
    secrets
        .patch(
            SECRET,
            &PatchParams::apply("bosun-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .expect("apply Secret");
    harness
        .apply_runbook(&workload_only_runbook_yaml(namespace, "quick"))
        .await;
    let plain = app_deployment_yaml(namespace, APP, url, Some("quick"), "2s");
    let insecure = if insecure { "      insecure: true\n" } else { "" };
    let with_secret = plain.replacen(
        "      path: deploy\n",
        &format!("      path: deploy\n      secretRef:\n        name: {SECRET}\n{insecure}"),
        1,
    );
    assert_ne!(plain, with_secret, "secretRef not inserted into:\n{plain}");
    harness.apply_app(&with_secret).await;
}

fn source_ready(app: &AppDeployment) -> Option<&Condition> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "SourceReady")
}

/// Waits until `SourceReady` is False with `reason`; returns the condition.
async fn wait_for_source_failure(harness: &Harness, namespace: &str, reason: &str) -> Condition {
    let app = harness
        .wait_for(
            namespace,
            APP,
            &format!("SourceReady False ({reason})"),
            Duration::from_secs(90),
            |app| source_ready(app).is_some_and(|c| c.status == "False" && c.reason == reason),
        )
        .await;
    source_ready(&app).cloned().expect("SourceReady condition")
}

/// The failing app never got a revision, and nothing of the example was applied in
/// its namespace.
async fn assert_nothing_applied(harness: &Harness, namespace: &str) {
    let app = harness.app(namespace, APP).await;
    let s = status(&app);
    assert_eq!(s.current_revision, None, "{namespace}: {s:?}");
    assert_eq!(s.desired_revision, None, "{namespace}: {s:?}");
    assert!(s.history.is_empty(), "{namespace}: {:?}", s.history);
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), namespace);
    let names: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert!(names.is_empty(), "{namespace}: applied {names:?}");
}

/// Everything bosun wrote about the app: its status and the Events in its namespace.
async fn messages_about_app(harness: &Harness, namespace: &str) -> Vec<String> {
    let app = harness.app(namespace, APP).await;
    // The whole status, conditions and history included.
    let mut messages = vec![serde_json::to_string(status(&app)).unwrap()];
    let events: Api<Event> = Api::namespaced(harness.client.clone(), namespace);
    for event in events.list(&ListParams::default()).await.unwrap().items {
        messages.extend(event.note);
    }
    messages
}

#[tokio::test]
async fn http_basic_auth_from_a_secret_fetches_and_a_wrong_password_is_refused() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let head = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let password = unique_secret("right-password");
    let wrong_password = unique_secret("wrong-password");
    let server = GitHttpServer::start(&harness.dir.path().join("repos"), "deployer", &password)
        .expect("git HTTP server starts");
    let url = server.url(repo.name());

    set_up_app(
        &harness,
        "http-ok",
        &url,
        &[("username", "deployer"), ("password", &password)],
    )
    .await;
    set_up_app(
        &harness,
        "http-bad",
        &url,
        &[("username", "deployer"), ("password", &wrong_password)],
    )
    .await;
    // Without `insecure: true` the credentials are not sent over plain HTTP at all.
    set_up_app_with(
        &harness,
        "http-clear",
        &url,
        &[("username", "deployer"), ("password", &password)],
        false,
    )
    .await;
    harness.start_controller();

    let app = harness
        .wait_for_phase("http-ok", APP, Phase::Healthy, &head)
        .await;
    let ready = source_ready(&app).expect("SourceReady");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Fetched")
    );
    assert!(
        server.served_requests() > 0,
        "nothing fetched from the HTTP server"
    );
    let deployments: Api<Deployment> = Api::namespaced(harness.client.clone(), "http-ok");
    assert!(deployments.get_opt("backend").await.unwrap().is_some());

    let failed = wait_for_source_failure(&harness, "http-bad", "AuthenticationFailed").await;
    assert!(server.refused_requests() > 0, "the server refused nothing");
    assert!(failed.message.contains(&url), "{}", failed.message);
    assert_nothing_applied(&harness, "http-bad").await;
    for message in messages_about_app(&harness, "http-bad").await {
        assert!(!message.contains(&wrong_password), "password in {message:?}");
        assert!(!message.contains(&password), "password in {message:?}");
    }

    let clear = harness
        .wait_for(
            "http-clear",
            APP,
            "Blocked: credentials over http://",
            Duration::from_secs(90),
            |app| app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked),
        )
        .await;
    let ready = clear
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    assert_eq!(ready.reason, "SpecInvalid", "{ready:?}");
    assert!(ready.message.contains("insecure: true"), "{ready:?}");
    assert_nothing_applied(&harness, "http-clear").await;
}

/// Generates an ed25519 key pair with ssh-keygen; returns the private key.
fn stranger_private_key(dir: &std::path::Path) -> String {
    let path = dir.join("stranger");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen: {status}");
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn ssh_key_from_a_secret_fetches_and_an_unknown_host_key_or_client_key_is_rejected() {
    let mut harness = Harness::start().await;
    let repo = harness.repo("app");
    let head = commit(&repo, &ExampleRevision::good("1.0"), "v1.0");
    let server = GitSshServer::start().expect("sshd starts");
    let url = server.url(repo.path());
    let identity = server.client_private_key();
    let stranger = stranger_private_key(harness.dir.path());

    set_up_app(
        &harness,
        "ssh-ok",
        &url,
        &[
            ("identity", &identity),
            ("known_hosts", &server.known_hosts_line()),
        ],
    )
    .await;
    // The right client key, but a known_hosts line for another host key.
    let impostor_line = server.known_hosts_line_for_another_key().unwrap();
    set_up_app(
        &harness,
        "ssh-bad-host",
        &url,
        &[("identity", &identity), ("known_hosts", &impostor_line)],
    )
    .await;
    // The right host key, but a client key the server does not know.
    set_up_app(
        &harness,
        "ssh-bad-key",
        &url,
        &[
            ("identity", &stranger),
            ("known_hosts", &server.known_hosts_line()),
        ],
    )
    .await;
    harness.start_controller();

    let app = harness.wait_for_phase("ssh-ok", APP, Phase::Healthy, &head).await;
    let ready = source_ready(&app).expect("SourceReady");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Fetched")
    );

    let rejected = wait_for_source_failure(&harness, "ssh-bad-host", "HostKeyRejected").await;
    assert!(rejected.message.contains("127.0.0.1"), "{}", rejected.message);
    let refused = wait_for_source_failure(&harness, "ssh-bad-key", "AuthenticationFailed").await;
    assert!(refused.message.contains("127.0.0.1"), "{}", refused.message);

    // Several fetch intervals later the good app's fetches have not let the others in.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for namespace in ["ssh-bad-host", "ssh-bad-key"] {
        let app = harness.app(namespace, APP).await;
        let ready = source_ready(&app).expect("SourceReady");
        assert_eq!(ready.status, "False", "{namespace}: {ready:?}");
        assert_nothing_applied(&harness, namespace).await;
        for message in messages_about_app(&harness, namespace).await {
            assert!(!message.contains("PRIVATE KEY"), "key in {message:?}");
        }
    }
}
