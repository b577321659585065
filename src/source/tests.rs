//! Against real repositories made by the `git` CLI, fetched over `file://` and,
//! in one test, `git://` from a `git daemon` on loopback.

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;
use crate::api::GitRef;

const LONG: Duration = Duration::from_secs(3600);

/// A work repository on disk, driven by the git CLI.
struct TestRepo {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestRepo {
    fn new() -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app");
        std::fs::create_dir(&path).unwrap();
        let repo = TestRepo { _dir: dir, path };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args([
                "-c",
                "core.symlinks=true",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "tag.gpgsign=false",
            ])
            .args(args)
            .current_dir(&self.path)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()
            .expect("git runs");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    fn write(&self, file: &str, content: &str) {
        let path = self.path.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn symlink(&self, link: &str, target: &str) {
        let path = self.path.join(link);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    /// Commits everything in the work tree; returns the full commit id.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn cache() -> (tempfile::TempDir, GitCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = GitCache::new(dir.path().join("git"));
    (dir, cache)
}

fn branch(name: &str) -> GitRef {
    GitRef {
        branch: Some(name.into()),
        ..GitRef::default()
    }
}

fn tag(name: &str) -> GitRef {
    GitRef {
        tag: Some(name.into()),
        ..GitRef::default()
    }
}

fn paths(files: &[SourceFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

fn clone_dirs(root: &Path) -> usize {
    std::fs::read_dir(root).map_or(0, |entries| entries.count())
}

#[tokio::test]
async fn resolves_branch_tag_commit_and_semver() {
    let repo = TestRepo::new();
    repo.write("deploy/app.yaml", "v: 1\n");
    let first = repo.commit("first");
    repo.git(&["tag", "v1.0.0"]);
    repo.write("deploy/app.yaml", "v: 2\n");
    let second = repo.commit("second");
    repo.git(&["tag", "-a", "v1.2.0", "-m", "annotated"]);
    repo.git(&["branch", "release"]);
    repo.write("deploy/app.yaml", "v: 3\n");
    let third = repo.commit("third");
    repo.git(&["tag", "v2.0.0"]);
    repo.git(&["tag", "not-a-version"]);

    let (_dir, cache) = cache();
    let url = repo.url();
    let resolve = |reference: GitRef| {
        let cache = cache.clone();
        let url = url.clone();
        async move { cache.resolve(&url, &reference, None, LONG).await }
    };

    let main = resolve(GitRef::default()).await.unwrap();
    assert_eq!(
        main,
        Resolved {
            commit: third.clone(),
            reference: "branch main".into()
        }
    );
    assert_eq!(resolve(branch("release")).await.unwrap().commit, second);
    let lightweight = resolve(tag("v1.0.0")).await.unwrap();
    assert_eq!(
        (lightweight.commit.as_str(), lightweight.reference.as_str()),
        (first.as_str(), "tag v1.0.0")
    );
    assert_eq!(
        resolve(tag("v1.2.0")).await.unwrap().commit,
        second,
        "annotated tag peels to its commit"
    );
    let semver = resolve(GitRef {
        semver: Some("^1".into()),
        ..GitRef::default()
    })
    .await
    .unwrap();
    assert_eq!(semver.commit, second);
    assert_eq!(semver.reference, "tag v1.2.0 (semver ^1)");
    let latest = resolve(GitRef {
        semver: Some(">=1".into()),
        ..GitRef::default()
    })
    .await
    .unwrap();
    assert_eq!(latest.commit, third);
    let by_prefix = resolve(GitRef {
        commit: Some(first[..7].to_string()),
        ..GitRef::default()
    })
    .await
    .unwrap();
    assert_eq!(by_prefix.commit, first);
    assert_eq!(by_prefix.reference, format!("commit {}", &first[..7]));
    let full = resolve(GitRef {
        commit: Some(second.clone()),
        ..GitRef::default()
    })
    .await
    .unwrap();
    assert_eq!(full.commit, second);

    assert_eq!(cache.clone_count(), 1);
    assert_eq!(
        cache.fetch_count(),
        1,
        "one fetch serves every lookup within max_age"
    );
}

#[tokio::test]
async fn missing_refs_are_ref_not_found() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    repo.commit("first");
    let (_dir, cache) = cache();
    let url = repo.url();
    for reference in [
        branch("nope"),
        tag("v9"),
        GitRef {
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            ..GitRef::default()
        },
        GitRef {
            semver: Some(">=5".into()),
            ..GitRef::default()
        },
    ] {
        let err = cache.resolve(&url, &reference, None, LONG).await.unwrap_err();
        assert_eq!(err.reason(), "RefNotFound", "{reference:?}: {err}");
        assert!(err.to_string().contains(&url), "{err}");
    }
}

#[tokio::test]
async fn invalid_ref_spec_is_rejected_before_any_fetch() {
    let (_dir, cache) = cache();
    let both = GitRef {
        branch: Some("main".into()),
        tag: Some("v1".into()),
        ..GitRef::default()
    };
    let err = cache
        .resolve("file:///nonexistent", &both, None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidSpec");
    assert!(err.to_string().contains("spec.source.git.ref"), "{err}");
    assert_eq!(cache.fetch_count(), 0);
}

#[tokio::test]
async fn second_commit_is_fetched_incrementally_into_the_same_clone() {
    let repo = TestRepo::new();
    repo.write("deploy/app.yaml", "v: 1\n");
    let first = repo.commit("first");
    let (dir, cache) = cache();
    let url = repo.url();

    assert_eq!(
        cache
            .resolve(&url, &GitRef::default(), None, LONG)
            .await
            .unwrap()
            .commit,
        first
    );
    assert_eq!((cache.clone_count(), cache.fetch_count()), (1, 1));

    repo.write("deploy/app.yaml", "v: 2\n");
    let second = repo.commit("second");
    // Within max_age: the cached answer, no fetch.
    assert_eq!(
        cache
            .resolve(&url, &GitRef::default(), None, LONG)
            .await
            .unwrap()
            .commit,
        first
    );
    assert_eq!(cache.fetch_count(), 1);
    // Stale: fetched again into the same clone.
    let resolved = cache
        .resolve(&url, &GitRef::default(), None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(resolved.commit, second);
    assert_eq!((cache.clone_count(), cache.fetch_count()), (1, 2));
    assert_eq!(clone_dirs(&dir.path().join("git")), 1);

    let files = cache.files(&url, &second, Some("deploy"), None).await.unwrap();
    assert_eq!(files[0].content, b"v: 2\n");
    let old = cache.files(&url, &first, Some("deploy"), None).await.unwrap();
    assert_eq!(old[0].content, b"v: 1\n");
    assert_eq!(cache.fetch_count(), 2, "cached commits are read without fetching");
}

#[tokio::test]
async fn an_announced_push_makes_the_next_resolve_fetch_within_max_age() {
    let repo = TestRepo::new();
    repo.write("deploy/app.yaml", "v: 1\n");
    let first = repo.commit("first");
    let (_dir, cache) = cache();
    let url = repo.url();
    let main = GitRef::default();
    let tip = || cache.resolve(&url, &main, None, LONG);
    assert_eq!(tip().await.unwrap().commit, first);

    repo.write("deploy/app.yaml", "v: 2\n");
    let second = repo.commit("second");
    assert_eq!(tip().await.unwrap().commit, first, "within max_age, no fetch");
    assert_eq!(cache.fetch_count(), 1);

    // Another spelling of the same URL names the same clone.
    cache.invalidate(&format!("{url}/")).unwrap();
    assert_eq!(tip().await.unwrap().commit, second);
    assert_eq!(cache.fetch_count(), 2);
    // One announcement, one fetch: the fetch after it is fresh again.
    assert_eq!(tip().await.unwrap().commit, second);
    assert_eq!(cache.fetch_count(), 2);

    assert!(cache.invalidate("not a url").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolves_of_one_url_share_one_clone_and_one_fetch() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    let head = repo.commit("first");
    let (dir, cache) = cache();
    let url = repo.url();
    let tasks: Vec<_> = [GitRef::default(), branch("main")]
        .into_iter()
        .map(|reference| {
            let (cache, url) = (cache.clone(), url.clone());
            tokio::spawn(async move { cache.resolve(&url, &reference, None, LONG).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().commit, head);
    }
    assert_eq!(cache.clone_count(), 1);
    assert_eq!(cache.fetch_count(), 1);
    assert_eq!(clone_dirs(&dir.path().join("git")), 1);
    // Another spelling of the same URL uses the same clone.
    let other_spelling = format!("{url}/");
    cache
        .resolve(&other_spelling, &GitRef::default(), None, LONG)
        .await
        .unwrap();
    assert_eq!(clone_dirs(&dir.path().join("git")), 1);
    assert_eq!(
        cache.repo_dir(&url, None).unwrap(),
        cache.repo_dir(&other_spelling, None).unwrap()
    );
}

#[tokio::test]
async fn a_clone_survives_a_restart_of_the_cache() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    let head = repo.commit("first");
    let (dir, cache) = cache();
    cache
        .resolve(&repo.url(), &GitRef::default(), None, LONG)
        .await
        .unwrap();
    let restarted = GitCache::new(dir.path().join("git"));
    assert_eq!(
        restarted
            .resolve(&repo.url(), &GitRef::default(), None, LONG)
            .await
            .unwrap()
            .commit,
        head
    );
    assert_eq!(restarted.clone_count(), 0, "the existing bare clone is reused");
    assert_eq!(restarted.fetch_count(), 1);
}

#[tokio::test]
async fn deleted_branch_is_pruned() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    repo.commit("first");
    repo.git(&["branch", "feature"]);
    let (_dir, cache) = cache();
    let url = repo.url();
    cache.resolve(&url, &branch("feature"), None, LONG).await.unwrap();
    repo.git(&["branch", "-D", "feature"]);
    let err = cache
        .resolve(&url, &branch("feature"), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "RefNotFound", "{err}");
}

#[tokio::test]
async fn other_credentials_must_fetch_themselves() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    let head = repo.commit("first");
    let (_dir, cache) = cache();
    let url = repo.url();
    cache.resolve(&url, &GitRef::default(), None, LONG).await.unwrap();
    let data: BTreeMap<String, Vec<u8>> = [("token".to_string(), b"t0ken".to_vec())].into();
    let creds = Credentials::from_secret_data("git-token", &data).unwrap();
    cache
        .resolve(&url, &GitRef::default(), Some(&creds), LONG)
        .await
        .unwrap();
    assert_eq!(
        cache.fetch_count(),
        2,
        "a cached clone is not proof of access for other credentials"
    );
    assert_eq!(cache.clone_count(), 2, "other credentials, another clone");
    assert_ne!(
        cache.repo_dir(&url, None).unwrap(),
        cache.repo_dir(&url, Some(&creds)).unwrap()
    );
    cache.files(&url, &head, None, Some(&creds)).await.unwrap();
    cache
        .resolve(&url, &GitRef::default(), Some(&creds), LONG)
        .await
        .unwrap();
    assert_eq!(cache.fetch_count(), 2);
    // The same material in another Secret is the same principal: the same clone.
    let same = Credentials::from_secret_data("copy", &data).unwrap();
    assert_eq!(
        cache.repo_dir(&url, Some(&creds)).unwrap(),
        cache.repo_dir(&url, Some(&same)).unwrap()
    );
}

#[tokio::test]
async fn files_reads_manifests_recursively_sorted_from_the_commit_tree() {
    let repo = TestRepo::new();
    repo.write("deploy/b.yaml", "b\n");
    repo.write("deploy/a.yml", "a\n");
    repo.write("deploy/nested/c.json", "{}\n");
    repo.write("deploy/README.md", "docs\n");
    repo.write("deploy/script.sh", "echo\n");
    repo.write("other/x.yaml", "x\n");
    let head = repo.commit("first");
    let (_dir, cache) = cache();
    let url = repo.url();

    let files = cache.files(&url, &head, Some("deploy"), None).await.unwrap();
    assert_eq!(
        paths(&files),
        ["deploy/a.yml", "deploy/b.yaml", "deploy/nested/c.json"]
    );
    assert_eq!(files[1].content, b"b\n");
    assert_eq!(cache.fetch_count(), 1, "a fresh cache fetches once for files()");

    let all = cache.files(&url, &head, None, None).await.unwrap();
    assert_eq!(
        paths(&all),
        [
            "deploy/a.yml",
            "deploy/b.yaml",
            "deploy/nested/c.json",
            "other/x.yaml"
        ]
    );
    let dotted = cache
        .files(&url, &head, Some("./deploy/nested/"), None)
        .await
        .unwrap();
    assert_eq!(paths(&dotted), ["deploy/nested/c.json"]);

    let err = cache.files(&url, &head, Some("missing"), None).await.unwrap_err();
    assert_eq!(err.reason(), "InvalidPath", "{err}");
    let err = cache
        .files(&url, &head, Some("deploy/b.yaml"), None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidPath", "{err}");
}

#[tokio::test]
async fn path_outside_the_repository_is_rejected() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a\n");
    let head = repo.commit("first");
    let (_dir, cache) = cache();
    for bad in ["../x", "/etc", "deploy/../../x"] {
        let err = cache
            .files(&repo.url(), &head, Some(bad), None)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "InvalidPath", "{bad}: {err}");
        assert!(err.to_string().contains("spec.source.git.path"), "{err}");
    }
    assert_eq!(cache.fetch_count(), 0, "rejected before any fetch");
}

#[tokio::test]
async fn symlinks_leaving_the_repository_are_rejected() {
    let repo = TestRepo::new();
    repo.write("app/ok.yaml", "ok\n");
    repo.symlink("deploy", "../../outside");
    repo.symlink("app/passwd.yaml", "/etc/passwd");
    repo.symlink("nested/dir/up", "../../../..");
    let head = repo.commit("links");
    let (_dir, cache) = cache();
    let url = repo.url();

    let err = cache.files(&url, &head, Some("deploy"), None).await.unwrap_err();
    assert_eq!(err.reason(), "SymlinkOutsideRepository", "{err}");
    let message = err.to_string();
    assert!(message.contains("deploy -> ../../outside"), "{message}");

    let err = cache.files(&url, &head, Some("app"), None).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("app/passwd.yaml -> /etc/passwd"), "{message}");

    let err = cache.files(&url, &head, Some("nested"), None).await.unwrap_err();
    assert!(err.to_string().contains("nested/dir/up -> ../../../.."), "{err}");

    // Walking the whole repository meets the same links.
    let err = cache.files(&url, &head, None, None).await.unwrap_err();
    assert_eq!(err.reason(), "SymlinkOutsideRepository", "{err}");
}

#[tokio::test]
async fn symlinks_inside_the_repository_are_followed() {
    let repo = TestRepo::new();
    repo.write("releases/v2/app.yaml", "v2\n");
    repo.write("shared/cm.yaml", "shared\n");
    repo.symlink("current", "releases/v2");
    repo.symlink("app/cm.yaml", "../shared/cm.yaml");
    repo.symlink("app/sub", "../releases/./v2/");
    repo.symlink("app/notes", "../no/such/file");
    let head = repo.commit("links");
    let (_dir, cache) = cache();
    let url = repo.url();

    let current = cache.files(&url, &head, Some("current"), None).await.unwrap();
    assert_eq!(paths(&current), ["current/app.yaml"]);
    assert_eq!(current[0].content, b"v2\n");

    let app = cache.files(&url, &head, Some("app"), None).await.unwrap();
    assert_eq!(paths(&app), ["app/cm.yaml", "app/sub/app.yaml"]);
    assert_eq!(app[0].content, b"shared\n");
}

#[tokio::test]
async fn symlink_loops_are_errors_not_hangs() {
    let repo = TestRepo::new();
    repo.write("deploy/a.yaml", "a\n");
    repo.symlink("deploy/self", ".");
    repo.symlink("loop/a", "b");
    repo.symlink("loop/b", "a");
    let head = repo.commit("loops");
    let (_dir, cache) = cache();
    let url = repo.url();
    let err = cache.files(&url, &head, Some("deploy"), None).await.unwrap_err();
    assert!(err.to_string().contains("deploy/self"), "{err}");
    let err = cache.files(&url, &head, Some("loop/a"), None).await.unwrap_err();
    assert!(err.to_string().contains("loop"), "{err}");
}

#[tokio::test]
async fn missing_commit_is_an_error() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a\n");
    repo.commit("first");
    let (_dir, cache) = cache();
    let err = cache
        .files(
            &repo.url(),
            "0123456789abcdef0123456789abcdef01234567",
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "RefNotFound", "{err}");
    assert_eq!(cache.fetch_count(), 1, "fetched once looking for it");
}

#[tokio::test]
async fn ssh_without_known_hosts_is_refused_before_connecting() {
    let (_dir, cache) = cache();
    let err = cache
        .resolve("git@github.com:acme/shop.git", &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidSpec");
    assert!(err.to_string().contains("known_hosts"), "{err}");
    let data: BTreeMap<String, Vec<u8>> = [("token".to_string(), b"t".to_vec())].into();
    let token = Credentials::from_secret_data("tok", &data).unwrap();
    let err = cache
        .resolve(
            "ssh://git@github.com/acme/shop.git",
            &GitRef::default(),
            Some(&token),
            LONG,
        )
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidCredentials", "{err}");
    assert_eq!(cache.fetch_count(), 0);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn unreachable_server_is_a_fetch_error_without_the_password() {
    let (_dir, cache) = cache();
    let url = format!("http://bot:s3cret-pw@127.0.0.1:{}/app.git", free_port());
    let err = cache
        .resolve(&url, &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.classify().is_transient());
    assert!(!err.to_string().contains("s3cret-pw"), "{err}");
    assert!(err.to_string().contains("http://***@127.0.0.1"), "{err}");
    assert!(!err.to_string().contains("bot:"), "{err}");
}

/// `git daemon` serving a directory on a loopback port; killed when dropped.
struct GitDaemon {
    child: Child,
    port: u16,
}

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        let port = free_port();
        // Run git-daemon itself: `git daemon` would fork it as a child that outlives
        // a kill of the `git` wrapper.
        let exec_path = Command::new("git").arg("--exec-path").output().expect("git runs");
        let exec_path = PathBuf::from(String::from_utf8(exec_path.stdout).unwrap().trim());
        let child = Command::new(exec_path.join("git-daemon"))
            .args(["--reuseaddr", "--export-all"])
            .arg(format!("--base-path={}", base.display()))
            .arg(format!("--port={port}"))
            .arg("--listen=127.0.0.1")
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let daemon = GitDaemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn git_daemon_stopped_fetch_fails_but_cached_commit_is_still_readable() {
    let repo = TestRepo::new();
    repo.write("deploy/app.yaml", "kind: x\n");
    let head = repo.commit("first");
    let base = repo.path.parent().unwrap().to_path_buf();
    let mut daemon = GitDaemon::start(&base);
    let url = format!("git://127.0.0.1:{}/app", daemon.port);
    let (_dir, cache) = cache();

    let resolved = cache.resolve(&url, &GitRef::default(), None, LONG).await.unwrap();
    assert_eq!(resolved.commit, head);
    let files = cache.files(&url, &head, Some("deploy"), None).await.unwrap();
    assert_eq!(paths(&files), ["deploy/app.yaml"]);

    daemon.stop();
    let err = cache
        .resolve(&url, &GitRef::default(), None, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains(&url), "{err}");

    let files = cache.files(&url, &head, Some("deploy"), None).await.unwrap();
    assert_eq!(files[0].content, b"kind: x\n");
    // A pinned commit that is cached resolves without the server.
    let pinned = GitRef {
        commit: Some(head.clone()),
        ..GitRef::default()
    };
    let resolved = cache.resolve(&url, &pinned, None, Duration::ZERO).await.unwrap();
    assert_eq!(resolved.commit, head);
    assert_eq!(cache.fetch_count(), 2);
}

/// An HTTP server that answers every request with 401 and records the
/// `Authorization` headers it was sent.
struct RefusingHttpServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RefusingHttpServer {
    fn start() -> RefusingHttpServer {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (thread_stop, thread_seen) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some(value) = line.strip_prefix("Authorization: ") {
                        thread_seen.lock().unwrap().push(value.trim().to_string());
                    }
                    line.clear();
                }
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        RefusingHttpServer {
            port,
            stop,
            seen,
            thread: Some(thread),
        }
    }
}

impl Drop for RefusingHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn http_credentials_are_sent_and_a_refusal_is_an_authentication_error() {
    let server = RefusingHttpServer::start();
    let url = format!("http://127.0.0.1:{}/app.git", server.port);
    let (_dir, cache) = cache();

    let err = cache
        .resolve(&url, &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
    assert!(err.to_string().contains("secretRef"), "{err}");
    assert!(server.seen.lock().unwrap().is_empty());

    let data: BTreeMap<String, Vec<u8>> = [("token".to_string(), b"t0ken-value\n".to_vec())].into();
    let creds = Credentials::from_secret_data("git-token", &data).unwrap();
    let err = cache
        .resolve(&url, &GitRef::default(), Some(&creds), LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "AuthenticationFailed", "{err}");
    assert!(!err.to_string().contains("t0ken-value"), "{err}");
    let seen = server.seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "credentials were offered");
    for header in &seen {
        let encoded = header.strip_prefix("Basic ").expect("basic auth");
        let decoded = super::known_hosts::base64_decode(encoded).unwrap();
        assert_eq!(decoded, b"x-access-token:t0ken-value");
    }
}

/// A server that accepts connections and never answers; they close when it is dropped.
struct SilentServer {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !thread_stop.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentServer {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn a_silent_server_times_out_and_does_not_block_the_url_forever() {
    let server = SilentServer::start();
    let url = format!("git://127.0.0.1:{}/app", server.port);
    let (_dir, cache) = cache();
    let cache = cache.with_fetch_timeout(Duration::from_secs(1));
    let err = cache
        .resolve(&url, &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "FetchFailed", "{err}");
    assert!(err.to_string().contains("more than 1s"), "{err}");
    // The first fetch still hangs inside libgit2; the next caller gives up waiting.
    let err = cache
        .resolve(&url, &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("another fetch"), "{err}");
    drop(server);
}

// --- Sources belong to whoever proved access; budgets; removal ---

fn budgets(change: impl FnOnce(&mut GitBudgets)) -> GitBudgets {
    let mut budgets = GitBudgets::default();
    change(&mut budgets);
    budgets
}

fn cache_with(budgets: GitBudgets) -> (tempfile::TempDir, GitCache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = GitCache::with_budgets(dir.path().join("git"), budgets);
    (dir, cache)
}

/// Bytes no compression shrinks.
fn noise(bytes: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect::<String>()
        .as_bytes()
        .chunks(100)
        .map(|line| format!("{}\n", String::from_utf8_lossy(line)))
        .collect()
}

/// A commit (on `main`) whose tree names `fanout^levels` files `f<i>.yaml` with
/// `levels` tree objects, each naming the one below `fanout` times.
fn tree_bomb(repo: &TestRepo, fanout: usize, levels: usize, file: &str) -> String {
    let git = git2::Repository::open(&repo.path).unwrap();
    let blob = git.blob(b"kind: ConfigMap\n").unwrap();
    let mut builder = git.treebuilder(None).unwrap();
    for i in 0..fanout {
        builder.insert(format!("f{i}.{file}"), blob, 0o100644).unwrap();
    }
    let mut tree = builder.write().unwrap();
    for _ in 1..levels {
        let mut builder = git.treebuilder(None).unwrap();
        for i in 0..fanout {
            builder.insert(format!("d{i}"), tree, 0o040000).unwrap();
        }
        tree = builder.write().unwrap();
    }
    let signature = git2::Signature::now("test", "test@example.com").unwrap();
    let parent = git.head().ok().and_then(|head| head.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    let id = git
        .commit(
            Some("HEAD"),
            &signature,
            &signature,
            "bomb",
            &git.find_tree(tree).unwrap(),
            &parents,
        )
        .unwrap();
    id.to_string()
}

#[tokio::test]
async fn a_tree_bomb_stops_at_the_files_budget_naming_it() {
    let repo = TestRepo::new();
    repo.write("README", "x\n");
    repo.commit("first");
    // 10^8 files named by 8 tree objects; as README files, not manifests, too.
    for (file, what) in [("yaml", "manifests"), ("md", "other files")] {
        let bomb = tree_bomb(&repo, 10, 8, file);
        let (_dir, cache) = cache();
        let started = Instant::now();
        let err = cache.files(&repo.url(), &bomb, None, None).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert_eq!(err.reason(), "BudgetExceeded", "{what}: {err}");
        let message = err.to_string();
        assert!(message.contains("--git-max-files=10000"), "{message}");
        assert!(message.contains("more than 10000 files"), "{message}");
        assert!(message.contains(&bomb[..7]), "names the commit: {message}");
    }
}

#[tokio::test]
async fn a_deep_tree_stops_at_the_depth_budget() {
    let repo = TestRepo::new();
    let deep: Vec<&str> = std::iter::repeat_n("d", 40).collect();
    repo.write(&format!("{}/app.yaml", deep.join("/")), "kind: x\n");
    let head = repo.commit("deep");
    let (_dir, cache) = cache();
    let err = cache.files(&repo.url(), &head, None, None).await.unwrap_err();
    assert_eq!(err.reason(), "BudgetExceeded", "{err}");
    assert!(err.to_string().contains("--git-max-depth=32"), "{err}");
    // Within a larger budget it reads.
    let (_dir, roomy) = cache_with(budgets(|b| b.tree.max_depth = 64));
    let files = roomy.files(&repo.url(), &head, None, None).await.unwrap();
    assert_eq!(files.len(), 1);
}

#[tokio::test]
async fn manifests_over_the_bytes_budget_are_refused_before_they_are_read() {
    let repo = TestRepo::new();
    repo.write("deploy/a.yaml", "kind: x\n");
    repo.write("deploy/big.yaml", &noise(2 * 1024 * 1024));
    let head = repo.commit("big");
    let (_dir, cache) = cache_with(budgets(|b| b.tree.max_bytes = 1024 * 1024));
    let err = cache
        .files(&repo.url(), &head, Some("deploy"), None)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "BudgetExceeded", "{err}");
    let message = err.to_string();
    assert!(message.contains("--git-max-manifest-bytes=1048576"), "{message}");
    assert!(message.contains("deploy/big.yaml"), "{message}");
    assert!(message.contains("spec.source.git.path \"deploy\""), "{message}");
}

#[tokio::test]
async fn a_repository_over_the_bytes_budget_is_refused_and_its_clone_removed() {
    let repo = TestRepo::new();
    repo.write("deploy/app.yaml", "kind: x\n");
    repo.write("blob.txt", &noise(3 * 1024 * 1024));
    repo.commit("large");
    let small = TestRepo::new();
    small.write("deploy/app.yaml", "kind: x\n");
    let small_head = small.commit("small");
    let base = repo.path.parent().unwrap().to_path_buf();
    let daemon = GitDaemon::start(&base);
    let url = format!("git://127.0.0.1:{}/app", daemon.port);
    let (_dir, cache) = cache_with(budgets(|b| b.max_repo_bytes = 1024 * 1024));

    let err = cache
        .resolve(&url, &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "BudgetExceeded", "{err}");
    assert!(matches!(err.classify(), Classified::Refused(f) if f.kind == FailureKind::RevisionInvalid));
    let message = err.to_string();
    assert!(message.contains("--git-max-repo-bytes=1048576"), "{message}");
    assert!(message.contains(&url), "{message}");
    assert!(
        !cache.repo_dir(&url, None).unwrap().exists(),
        "the partial clone is removed"
    );
    // Nothing else is affected: another repository fetches into the same cache.
    let resolved = cache
        .resolve(&small.url(), &GitRef::default(), None, LONG)
        .await
        .unwrap();
    assert_eq!(resolved.commit, small_head);
}

#[tokio::test]
async fn a_fetch_of_more_objects_than_the_budget_is_cancelled() {
    let repo = TestRepo::new();
    for i in 0..20 {
        repo.write(&format!("deploy/f{i}.yaml"), &format!("n: {i}\n"));
        repo.commit(&format!("c{i}"));
    }
    let base = repo.path.parent().unwrap().to_path_buf();
    let daemon = GitDaemon::start(&base);
    let url = format!("git://127.0.0.1:{}/app", daemon.port);
    let (_dir, cache) = cache_with(budgets(|b| b.max_objects = 10));
    let err = cache
        .resolve(&url, &GitRef::default(), None, LONG)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "BudgetExceeded", "{err}");
    assert!(err.to_string().contains("--git-max-objects=10"), "{err}");
    assert!(!cache.repo_dir(&url, None).unwrap().exists());
}

#[tokio::test]
async fn the_total_budget_evicts_the_least_recently_used_clone() {
    let first = TestRepo::new();
    first.write("blob.txt", &noise(1024 * 1024));
    first.commit("one");
    let second = TestRepo::new();
    second.write("blob.txt", &noise(1024 * 1024));
    let second_head = second.commit("two");
    let (_dir, cache) = cache_with(budgets(|b| {
        b.max_repo_bytes = 3 * 1024 * 1024 / 2;
        b.max_cache_bytes = 2 * 1024 * 1024;
    }));
    cache
        .resolve(&first.url(), &GitRef::default(), None, LONG)
        .await
        .unwrap();
    assert!(cache.repo_dir(&first.url(), None).unwrap().exists());
    let resolved = cache
        .resolve(&second.url(), &GitRef::default(), None, LONG)
        .await
        .unwrap();
    assert_eq!(resolved.commit, second_head);
    assert!(!cache.repo_dir(&first.url(), None).unwrap().exists(), "evicted");
    assert!(cache.repo_dir(&second.url(), None).unwrap().exists());
    assert!(
        cache.cached_bytes() <= 2 * 1024 * 1024,
        "{}",
        cache.cached_bytes()
    );
    // Evicted is not broken: the first repository is fetched again when asked for.
    cache
        .resolve(&first.url(), &GitRef::default(), None, LONG)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_clone_goes_when_the_last_app_using_it_is_released() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    repo.commit("first");
    let (_dir, cache) = cache();
    let url = repo.url();
    for app in ["team-a/one", "team-b/two"] {
        cache
            .resolve_as(app, &url, &GitRef::default(), None, LONG)
            .await
            .unwrap();
    }
    let dir = cache.repo_dir(&url, None).unwrap();
    cache.release("team-a/one");
    assert!(dir.exists(), "team-b/two still uses it");
    cache.release("team-b/two");
    assert!(!dir.exists(), "no app uses it");
    assert_eq!(cache.cached_bytes(), 0);
}

#[tokio::test]
async fn credentials_in_the_url_key_their_own_clone() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    repo.commit("first");
    let base = repo.path.parent().unwrap().to_path_buf();
    let daemon = GitDaemon::start(&base);
    let with = format!(
        "git://x-access-token:PAT-{}@127.0.0.1:{}/app",
        rand::random::<u32>(),
        daemon.port
    );
    let without = format!("git://127.0.0.1:{}/app", daemon.port);
    let (_dir, cache) = cache();
    assert_ne!(
        cache.repo_dir(&with, None).unwrap(),
        cache.repo_dir(&without, None).unwrap()
    );
    cache
        .resolve(&with, &GitRef::default(), None, LONG)
        .await
        .unwrap();
    cache
        .resolve(&without, &GitRef::default(), None, LONG)
        .await
        .unwrap();
    assert_eq!(
        cache.fetch_count(),
        2,
        "the app without the URL's credentials fetched itself"
    );
    assert_eq!(cache.clone_count(), 2);
}

#[tokio::test]
async fn a_pinned_commit_is_re_proved_by_ls_remote_and_survives_an_outage() {
    let repo = TestRepo::new();
    repo.write("a.yaml", "a: 1\n");
    let head = repo.commit("first");
    let base = repo.path.parent().unwrap().to_path_buf();
    let daemon = GitDaemon::start(&base);
    let url = format!("git://127.0.0.1:{}/app", daemon.port);
    let (_dir, cache) = cache();
    let pinned = GitRef {
        commit: Some(head.clone()),
        ..GitRef::default()
    };
    cache.resolve(&url, &pinned, None, Duration::ZERO).await.unwrap();
    cache.resolve(&url, &pinned, None, Duration::ZERO).await.unwrap();
    assert_eq!(cache.fetch_count(), 1, "the second resolve only listed the refs");
    drop(daemon);
    // Unreachable is not a refusal: the pin still resolves from the clone.
    let resolved = cache.resolve(&url, &pinned, None, Duration::ZERO).await.unwrap();
    assert_eq!(resolved.commit, head);
}

mod digest_properties {
    use super::super::cache::credential_digest;
    use super::super::url::RepoUrl;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_credential_changes_the_key_and_none_is_the_public_key(
            user_a in "[A-Za-z0-9_-]{1,12}",
            user_b in "[A-Za-z0-9_-]{1,12}",
            password in proptest::option::of("[A-Za-z0-9%_-]{1,12}"),
        ) {
            let info = |user: &str| match &password {
                Some(password) => format!("{user}:{password}"),
                None => user.to_string(),
            };
            let a = RepoUrl::parse(&format!("https://{}@host/org/repo.git", info(&user_a))).unwrap();
            let b = RepoUrl::parse(&format!("https://{}@host/org/repo.git", info(&user_b))).unwrap();
            let public = RepoUrl::parse("https://host/org/repo.git").unwrap();
            prop_assert_eq!(credential_digest(&public, None), "");
            prop_assert_ne!(credential_digest(&a, None), "");
            prop_assert_eq!(credential_digest(&a, None) == credential_digest(&b, None), user_a == user_b);
            // A digest (never the secret itself): 64 hexadecimal digits.
            let digest = credential_digest(&a, None);
            prop_assert!(digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
