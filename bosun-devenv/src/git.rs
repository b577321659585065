//! Git on loopback: a `git daemon` serving every repository under a directory, and
//! [`WorkRepo`] to build such a repository commit by commit with the git CLI.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use super::process::{self, ManagedProcess};

/// How long the daemon may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `git daemon` on 127.0.0.1 serving (read and push) every repository under a
/// base directory as `git://127.0.0.1:<port>/<name>`. Dropping it stops the daemon.
#[derive(Debug)]
pub struct GitServer {
    base_dir: PathBuf,
    port: u16,
    daemon: Option<ManagedProcess>,
    log_dir: TempDir,
}

impl GitServer {
    /// Starts the daemon on a free port and waits until it accepts connections.
    pub fn start(base_dir: &Path) -> anyhow::Result<Self> {
        let mut log_dir = tempfile::Builder::new().prefix("bosun-git-daemon-").tempdir()?;
        if std::env::var("BOSUN_KEEP_DEVENV").is_ok_and(|v| v == "1") {
            log_dir.disable_cleanup(true);
        }
        let mut server = Self {
            base_dir: base_dir.to_owned(),
            port: 0,
            daemon: None,
            log_dir,
        };
        // A port found free can be taken before the daemon binds it: try another.
        let mut last_error = None;
        for _ in 0..3 {
            server.port = process::free_ports(1)?[0];
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("git daemon did not start")))
    }

    /// The URL of repository `name` (a directory under the base directory).
    pub fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }

    /// The port the daemon listens on; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir.path().join("git-daemon.log")
    }

    /// How many fetches (`upload-pack` requests) the daemon has served so far, counted
    /// from its own log.
    pub fn fetches(&self) -> usize {
        std::fs::read_to_string(self.log_path())
            .map(|log| {
                log.lines()
                    .filter(|line| line.contains("Request upload-pack"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Stops the daemon; clients then fail to connect until [`GitServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop(Duration::from_secs(5));
        }
    }

    /// Starts the daemon again on the same port (stopping it first if running).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("git");
        command
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--informative-errors")
            .arg("--verbose")
            .arg(format!("--base-path={}", self.base_dir.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .arg("--enable=receive-pack");
        let mut daemon = ManagedProcess::spawn("git daemon", command, &self.log_path())?;
        daemon.wait_for_port(self.port, START_TIMEOUT)?;
        self.daemon = Some(daemon);
        Ok(())
    }
}

/// A non-bare repository on branch `main`, built with the git CLI; put it under a
/// [`GitServer`]'s base directory to serve it.
#[derive(Clone, Debug)]
pub struct WorkRepo {
    path: PathBuf,
    name: String,
}

impl WorkRepo {
    /// Creates `<base_dir>/<name>` with `git init -b main` and a local identity.
    pub fn init(base_dir: &Path, name: &str) -> anyhow::Result<Self> {
        let path = base_dir.join(name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let repo = Self {
            path,
            name: name.to_owned(),
        };
        repo.git(&["init", "-q", "-b", "main"])?;
        repo.git(&["config", "user.name", "bosun test"])?;
        repo.git(&["config", "user.email", "test@bosun.invalid"])?;
        repo.git(&["config", "commit.gpgsign", "false"])?;
        repo.git(&["config", "tag.gpgsign", "false"])?;
        Ok(repo)
    }

    /// The working tree.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The repository's name (its directory name under the base directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `contents` to the file at `path` (relative to the work tree),
    /// creating parent directories.
    pub fn write(&self, path: &str, contents: &str) -> anyhow::Result<()> {
        let file = self.path.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))
    }

    /// Removes the file, symlink or directory at `path`.
    pub fn remove(&self, path: &str) -> anyhow::Result<()> {
        let target = self.path.join(path);
        let metadata =
            std::fs::symlink_metadata(&target).with_context(|| format!("removing {}", target.display()))?;
        let result = if metadata.is_dir() {
            std::fs::remove_dir_all(&target)
        } else {
            std::fs::remove_file(&target)
        };
        result.with_context(|| format!("removing {}", target.display()))
    }

    /// Creates a symbolic link at `path` pointing to `target` (kept verbatim, so it
    /// may be relative or point outside the repository).
    pub fn symlink(&self, path: &str, target: &str) -> anyhow::Result<()> {
        let link = self.path.join(path);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink(target, &link)
            .with_context(|| format!("creating symlink {} -> {target}", link.display()))
    }

    /// Stages every change and commits it (an empty commit if nothing changed);
    /// returns the full commit sha.
    pub fn commit(&self, message: &str) -> anyhow::Result<String> {
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "--allow-empty", "-m", message])?;
        self.head()
    }

    /// The full sha of `HEAD`.
    pub fn head(&self) -> anyhow::Result<String> {
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }

    /// Points the lightweight tag `name` at `HEAD` (moving it if it exists).
    pub fn tag(&self, name: &str) -> anyhow::Result<()> {
        self.git(&["tag", "-f", name]).map(drop)
    }

    /// Runs git in the work tree with user and system configuration ignored;
    /// returns stdout.
    pub fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        run_git(&self.path, args)
    }
}

/// Runs `git <args>` in `dir`, isolated from the user's configuration.
fn run_git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .with_context(|| format!("running git {} in {}", args.join(" "), dir.display()))?;
    if !output.status.success() {
        bail!(
            "git {} in {} failed ({}): {}",
            args.join(" "),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_repo_commits_files_symlinks_and_tags() {
        let base = tempfile::tempdir().unwrap();
        let repo = WorkRepo::init(base.path(), "app").unwrap();
        repo.write("deploy/a.yaml", "a: 1\n").unwrap();
        repo.symlink("deploy/link.yaml", "../../outside").unwrap();
        let first = repo.commit("first").unwrap();
        assert_eq!(first.len(), 40);
        repo.tag("v1.0.0").unwrap();

        repo.remove("deploy/a.yaml").unwrap();
        let second = repo.commit("second").unwrap();
        assert_ne!(first, second);
        let files = repo.git(&["ls-tree", "-r", "--name-only", "HEAD"]).unwrap();
        assert_eq!(files.trim(), "deploy/link.yaml");
        let tagged = repo.git(&["rev-parse", "v1.0.0^{commit}"]).unwrap();
        assert_eq!(tagged.trim(), first);
        let branch = repo.git(&["symbolic-ref", "--short", "HEAD"]).unwrap();
        assert_eq!(branch.trim(), "main");
    }

    #[test]
    fn remove_of_missing_path_fails() {
        let base = tempfile::tempdir().unwrap();
        let repo = WorkRepo::init(base.path(), "app").unwrap();
        let error = repo.remove("nope.yaml").unwrap_err();
        assert!(format!("{error:#}").contains("nope.yaml"));
    }
}
