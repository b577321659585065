//! Attacks of a hostile tenant on the Git sources (issue 11 §2 and the Git budgets of
//! §4), each against a real control plane, a real `bosun controller` and real Git
//! servers on loopback: another tenant's credentials written in a URL, a token that
//! must not be printed, a tree bomb, a repository larger than its budget. In each, a
//! bystander app in another namespace keeps deploying.

mod support;

use std::time::Duration;

use bosun::api::{AppDeployment, Phase};
use bosun_devenv::example::{ExampleRevision, app_deployment_yaml, workload_only_runbook_yaml};
use bosun_devenv::{GitHttpServer, WorkRepo};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::ListParams;
use support::{Harness, status};

const APP: &str = "litevault";

/// A value no test input contains by chance: finding it means it leaked.
fn canary(label: &str) -> String {
    format!("{label}-{:016x}", rand::random::<u64>())
}

fn condition<'a>(app: &'a AppDeployment, type_: &str) -> Option<&'a Condition> {
    app.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// The app `namespace/litevault` on `url` (a Runbook with the workload gate alone),
/// with `insecure: true` when credentials travel over plain HTTP.
async fn tenant_app(harness: &Harness, namespace: &str, url: &str, insecure: bool) {
    harness.namespace(namespace).await;
    harness
        .apply_runbook(&workload_only_runbook_yaml(namespace, "quick"))
        .await;
    let plain = app_deployment_yaml(namespace, APP, url, Some("quick"), "2s");
    let yaml = if insecure {
        plain.replacen(
            "      path: deploy\n",
            "      path: deploy\n      insecure: true\n",
            1,
        )
    } else {
        plain
    };
    harness.apply_app(&yaml).await;
}

/// Everything bosun wrote about the app: its whole status and the Events of its
/// namespace.
async fn written_about(harness: &Harness, namespace: &str) -> Vec<String> {
    assert!(
        harness.controller_rss_kib().is_some(),
        "the controller is not running: it died under its address-space limit"
    );
    let app = harness.app(namespace, APP).await;
    let mut texts = vec![serde_json::to_string(&app.status).unwrap()];
    let events: Api<Event> = Api::namespaced(harness.client.clone(), namespace);
    for event in events.list(&ListParams::default()).await.unwrap().items {
        texts.extend(event.note);
        texts.extend(event.reason);
    }
    texts
}

/// Every ConfigMap value of `namespace`.
async fn config_map_values(harness: &Harness, namespace: &str) -> Vec<String> {
    let api: Api<ConfigMap> = Api::namespaced(harness.client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .flat_map(|cm| cm.data.unwrap_or_default().into_values())
        .collect()
}

/// The example's good revision plus `deploy/canary.yaml`, a ConfigMap holding `secret`.
fn commit_with_canary(repo: &WorkRepo, secret: &str) -> String {
    repo.write(
        "deploy/canary.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: canary\ndata:\n  value: {secret}\n"),
    )
    .unwrap();
    ExampleRevision::good("1.0").commit_to(repo, "v1.0").unwrap()
}

/// Tenant A writes its token in the URL of a private repository; tenant B names the
/// same repository without credentials, tenant C with a token of its own as the URL's
/// user. Only A ever renders the private commit; nobody's token is printed.
#[tokio::test]
async fn credentials_in_a_url_are_not_lent_to_another_tenant_and_never_printed() {
    let mut harness = Harness::start().await;
    let private = harness.repo("private");
    let private_content = canary("private-content");
    let head = commit_with_canary(&private, &private_content);
    let token = canary("PAT");
    let wrong_token = canary("TOKEN");
    let server = GitHttpServer::start(&harness.dir.path().join("repos"), "x-access-token", &token)
        .expect("git HTTP server starts");
    let url = server.url("private");
    let with_token = url.replacen("http://", &format!("http://x-access-token:{token}@"), 1);
    let with_user_token = url.replacen("http://", &format!("http://{wrong_token}@"), 1);

    tenant_app(&harness, "tenant-a", &with_token, true).await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller();
    harness
        .wait_for_phase("tenant-a", APP, Phase::Healthy, &head)
        .await;
    assert!(
        config_map_values(&harness, "tenant-a")
            .await
            .contains(&private_content),
        "tenant A renders its private repository"
    );

    // A's clone is in the cache now: B and C arrive after it.
    tenant_app(&harness, "tenant-b", &url, false).await;
    tenant_app(&harness, "tenant-c", &with_user_token, true).await;
    for namespace in ["tenant-b", "tenant-c"] {
        let app = harness
            .wait_for(
                namespace,
                APP,
                "SourceReady False (AuthenticationFailed)",
                Duration::from_secs(90),
                |app| {
                    condition(app, "SourceReady")
                        .is_some_and(|c| c.status == "False" && c.reason == "AuthenticationFailed")
                },
            )
            .await;
        let message = &condition(&app, "SourceReady").unwrap().message;
        assert!(message.contains("127.0.0.1"), "{namespace}: {message}");
    }
    let b = harness.app("tenant-b", APP).await;
    let message = &condition(&b, "SourceReady").unwrap().message;
    assert!(message.contains("secretRef is not set"), "{message}");

    // Several intervals later A's fetches have not let B or C in.
    tokio::time::sleep(Duration::from_secs(8)).await;
    for namespace in ["tenant-b", "tenant-c"] {
        let app = harness.app(namespace, APP).await;
        let s = status(&app);
        assert_eq!(s.desired_revision, None, "{namespace}: {s:?}");
        assert_eq!(s.current_revision, None, "{namespace}: {s:?}");
        assert!(s.history.is_empty(), "{namespace}: {:?}", s.history);
        for text in written_about(&harness, namespace).await {
            assert!(!text.contains(&head), "{namespace}: A's commit in {text:?}");
            assert!(!text.contains(&head[..7]), "{namespace}: A's commit in {text:?}");
            assert!(
                !text.contains(&private_content),
                "{namespace}: content in {text:?}"
            );
        }
        assert!(
            !config_map_values(&harness, namespace)
                .await
                .contains(&private_content),
            "{namespace} got the private repository's content"
        );
    }
    assert!(
        server.refused_requests() > 0,
        "B and C were refused by the server"
    );

    // No token in any status, Event or log line; the URL shows masked.
    for namespace in ["tenant-a", "tenant-b", "tenant-c"] {
        for text in written_about(&harness, namespace).await {
            assert!(!text.contains(&token), "{namespace}: token in {text:?}");
            assert!(!text.contains(&wrong_token), "{namespace}: token in {text:?}");
        }
    }
    let c = harness.app("tenant-c", APP).await;
    let message = &condition(&c, "SourceReady").unwrap().message;
    assert!(message.contains("http://***@127.0.0.1"), "{message}");
    let log = harness.controller_log_text();
    assert!(!log.is_empty());
    assert!(!log.contains(&token), "token in the controller log");
    assert!(!log.contains(&wrong_token), "token in the controller log");
    assert!(!log.contains(&private_content), "content in the controller log");
}

/// `deploy/` of a commit whose tree names 10^8 files with 9 tree objects.
fn commit_tree_bomb(repo: &WorkRepo) -> String {
    let git = git2::Repository::open(repo.path()).unwrap();
    let blob = git.blob(b"apiVersion: v1\nkind: ConfigMap\n").unwrap();
    let mut level = git.treebuilder(None).unwrap();
    for i in 0..10 {
        level.insert(format!("f{i}.yaml"), blob, 0o100644).unwrap();
    }
    let mut tree = level.write().unwrap();
    for _ in 1..8 {
        let mut level = git.treebuilder(None).unwrap();
        for i in 0..10 {
            level.insert(format!("d{i}"), tree, 0o040000).unwrap();
        }
        tree = level.write().unwrap();
    }
    let mut root = git.treebuilder(None).unwrap();
    root.insert("deploy", tree, 0o040000).unwrap();
    let root = root.write().unwrap();
    let signature = git2::Signature::now("attacker", "attacker@example.com").unwrap();
    let parent = git.head().ok().and_then(|head| head.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    git.commit(
        Some("HEAD"),
        &signature,
        &signature,
        "a tree bomb",
        &git.find_tree(root).unwrap(),
        &parents,
    )
    .unwrap()
    .to_string()
}

/// A bystander app, Healthy, and then Healthy again at a new commit while `attacker`
/// is being refused: the attack stalls nobody else.
async fn bystander_keeps_deploying(harness: &Harness, repo: &WorkRepo, first: &str) {
    harness
        .wait_for_phase("bystander", APP, Phase::Healthy, first)
        .await;
    let second = ExampleRevision::good("2.0").commit_to(repo, "v2.0").unwrap();
    harness
        .wait_for_phase("bystander", APP, Phase::Healthy, &second)
        .await;
}

#[tokio::test]
async fn a_tree_bomb_is_blocked_naming_the_files_budget_and_nothing_else_stops() {
    let mut harness = Harness::start().await;
    let bystander = harness.repo("bystander");
    let first = ExampleRevision::good("1.0")
        .commit_to(&bystander, "v1.0")
        .unwrap();
    let bomb_repo = harness.repo("bomb");
    let bomb = commit_tree_bomb(&bomb_repo);
    harness.quick_app("bystander", APP, "bystander", "2s").await;
    harness.quick_app("attacker", APP, "bomb", "2s").await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller();

    let app = harness
        .wait_for("attacker", APP, "Blocked", Duration::from_secs(120), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await;
    let blocked = status(&app).blocked.clone().expect("status.blocked");
    assert_eq!(blocked.revision, bomb);
    assert!(
        blocked.message.contains("--git-max-files=10000"),
        "{}",
        blocked.message
    );
    assert!(
        blocked.message.contains("more than 10000 files"),
        "{}",
        blocked.message
    );
    assert!(harness.controller_running(), "{}", harness.controller_log());
    bystander_keeps_deploying(&harness, &bystander, &first).await;
    assert!(harness.controller_running(), "{}", harness.controller_log());
    let app = harness.app("attacker", APP).await;
    assert_eq!(status(&app).phase, Phase::Blocked);
    assert_eq!(status(&app).current_revision, None, "nothing of the bomb applied");
}

/// `n` bytes of lower-case letters no compression shrinks much, in lines.
fn noise(n: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let letters: Vec<u8> = (0..n).map(|_| b'a' + rng.random_range(0..26u8)).collect();
    letters
        .chunks(100)
        .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
        .collect()
}

#[tokio::test]
async fn a_repository_over_the_bytes_budget_is_blocked_naming_it_and_its_clone_removed() {
    let mut harness = Harness::start().await;
    let bystander = harness.repo("bystander");
    let first = ExampleRevision::good("1.0")
        .commit_to(&bystander, "v1.0")
        .unwrap();
    let huge = harness.repo("huge");
    huge.write("assets/blob.txt", &noise(6 * 1024 * 1024)).unwrap();
    ExampleRevision::good("1.0").commit_to(&huge, "v1.0").unwrap();
    harness.quick_app("bystander", APP, "bystander", "2s").await;
    harness.quick_app("attacker", APP, "huge", "2s").await;
    harness.limit_controller_address_space(support::ATTACK_ADDRESS_SPACE);
    harness.start_controller_with(&["--git-max-repo-bytes", "2Mi"], &[]);

    let app = harness
        .wait_for("attacker", APP, "Blocked", Duration::from_secs(120), |app| {
            app.status.as_ref().is_some_and(|s| s.phase == Phase::Blocked)
        })
        .await;
    let ready = condition(&app, "Ready").expect("Ready").clone();
    assert!(
        ready.message.contains("--git-max-repo-bytes=2097152"),
        "{ready:?}"
    );
    assert!(ready.message.contains("spec.source.git.url"), "{ready:?}");
    let source = condition(&app, "SourceReady").expect("SourceReady").clone();
    assert_eq!(
        (source.status.as_str(), source.reason.as_str()),
        ("False", "BudgetExceeded")
    );
    assert!(source.message.contains(&harness.git.url("huge")), "{source:?}");
    let notes: Vec<String> = written_about(&harness, "attacker").await;
    assert!(
        notes
            .iter()
            .any(|note| note.contains("--git-max-repo-bytes=2097152")),
        "an Event names the budget: {notes:?}"
    );

    bystander_keeps_deploying(&harness, &bystander, &first).await;
    // The budget holds on disk: sampled while the app is refused, the over-budget
    // clone is never larger than its budget (plus one network read), and it is
    // removed after each refusal; the bystander's clone stays.
    let cache = bosun::source::GitCache::new(harness.cache_dir.clone());
    let huge_dir = cache.repo_dir(&harness.git.url("huge"), None).unwrap();
    let bystander_dir = cache.repo_dir(&harness.git.url("bystander"), None).unwrap();
    assert!(bystander_dir.exists(), "{}", bystander_dir.display());
    let mut absent = 0;
    for _ in 0..20 {
        let bytes = directory_bytes(&huge_dir);
        assert!(
            bytes <= 2 * 1024 * 1024 + 512 * 1024,
            "the clone holds {bytes} bytes"
        );
        if !huge_dir.exists() {
            absent += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        absent > 0,
        "the over-budget clone is never removed: {}",
        huge_dir.display()
    );
    assert!(harness.controller_running(), "{}", harness.controller_log());
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(metadata) if metadata.is_dir() => pending.push(entry.path()),
                Ok(metadata) => total += metadata.len(),
                Err(_) => {}
            }
        }
    }
    total
}
