//! Git over SSH on loopback: an OpenSSH `sshd` of its own (own config, host key and
//! authorized key, in a temporary directory) that lets one generated client key in
//! as the current user, so `git-upload-pack` serves any repository by absolute path.
//!
//! It exists so the end-to-end tests can fetch over `ssh://` with an `identity` and
//! `known_hosts` from a Secret, the way a user fetches with a deploy key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use super::process::{self, ManagedProcess};

/// The OpenSSH server, from Debian's `openssh-server`.
const SSHD: &str = "/usr/sbin/sshd";

/// How long sshd may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// An `sshd` on 127.0.0.1 that accepts only [`GitSshServer::client_private_key`]
/// for the user running the tests. Dropping it stops the daemon and removes its keys.
#[derive(Debug)]
pub struct GitSshServer {
    dir: TempDir,
    port: u16,
    user: String,
    client_private_key: String,
    /// `<type> <base64>` of the host key, as in `known_hosts` after the host.
    host_public_key: String,
    sshd: Option<ManagedProcess>,
}

impl GitSshServer {
    /// Generates the host and client keys (ed25519), writes the configuration and
    /// starts sshd on a free port, waiting until it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        if !Path::new(SSHD).is_file() {
            bail!("{SSHD} not found: install openssh-server (scripts/control-plane-bins.sh does)");
        }
        let mut dir = tempfile::Builder::new().prefix("bosun-git-sshd-").tempdir()?;
        if std::env::var("BOSUN_KEEP_DEVENV").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
        }
        let user = current_user()?;
        let host_key = generate_key(dir.path(), "host_key")?;
        let client_key = generate_key(dir.path(), "client_key")?;
        std::fs::write(dir.path().join("authorized_keys"), &client_key.public)
            .context("writing authorized_keys")?;
        if user == "root" {
            // sshd running as root insists on its privilege separation directory.
            std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        }
        let mut server = Self {
            dir,
            port: 0,
            user,
            client_private_key: client_key.private,
            host_public_key: key_type_and_blob(&host_key.public)?,
            sshd: None,
        };
        // A port found free can be taken before sshd binds it: try another.
        let mut last_error = None;
        for _ in 0..3 {
            server.port = process::free_ports(1)?[0];
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("sshd did not start")))
    }

    /// `ssh://<user>@127.0.0.1:<port><repo_path>`: the repository at the absolute
    /// `repo_path` (a work tree or bare repository) on this server.
    pub fn url(&self, repo_path: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo_path.display()
        )
    }

    /// The port sshd listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The only private key sshd accepts (OpenSSH format), e.g. for a Secret's `identity`.
    pub fn client_private_key(&self) -> String {
        self.client_private_key.clone()
    }

    /// The `known_hosts` line that trusts this server: `[127.0.0.1]:<port> <type> <key>`.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_public_key)
    }

    /// A `known_hosts` line for this server's address but a freshly generated key:
    /// what a client sees when someone else answers on the server's address.
    pub fn known_hosts_line_for_another_key(&self) -> anyhow::Result<String> {
        let other = generate_key(self.dir.path(), &format!("other_key_{}", rand::random::<u32>()))?;
        Ok(format!(
            "[127.0.0.1]:{} {}",
            self.port,
            key_type_and_blob(&other.public)?
        ))
    }

    /// sshd's log (it runs with `-e`, so everything it logs goes here).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let config = self.dir.path().join("sshd_config");
        std::fs::write(&config, sshd_config(self.dir.path(), self.port)).context("writing sshd_config")?;
        let mut command = Command::new(SSHD);
        command.arg("-D").arg("-e").arg("-f").arg(&config);
        let mut sshd = ManagedProcess::spawn("sshd", command, &self.log_path())?;
        sshd.wait_for_port(self.port, START_TIMEOUT)?;
        self.sshd = Some(sshd);
        Ok(())
    }
}

/// The configuration: loopback only, the generated host key, public keys from our
/// own `authorized_keys` and nothing else (no passwords, no PAM, no user files).
fn sshd_config(dir: &Path, port: u16) -> String {
    let dir = dir.display();
    format!(
        "Port {port}\n\
         ListenAddress 127.0.0.1\n\
         HostKey {dir}/host_key\n\
         PidFile {dir}/sshd.pid\n\
         AuthorizedKeysFile {dir}/authorized_keys\n\
         PubkeyAuthentication yes\n\
         PasswordAuthentication no\n\
         KbdInteractiveAuthentication no\n\
         PermitRootLogin prohibit-password\n\
         UsePAM no\n\
         StrictModes no\n\
         PermitUserEnvironment no\n\
         AllowTcpForwarding no\n\
         X11Forwarding no\n\
         PrintMotd no\n\
         LogLevel VERBOSE\n"
    )
}

/// A generated key pair: the private key (OpenSSH format) and the public key line.
struct KeyPair {
    private: String,
    public: String,
}

/// Runs `ssh-keygen -t ed25519` without a passphrase, writing `<dir>/<name>` and
/// `<dir>/<name>.pub` (libssh2 1.11, built into git2, reads ed25519 OpenSSH keys).
fn generate_key(dir: &Path, name: &str) -> anyhow::Result<KeyPair> {
    let path = dir.join(name);
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "bosun-test", "-f"])
        .arg(&path)
        .output()
        .context("running ssh-keygen (install openssh-client)")?;
    if !output.status.success() {
        bail!(
            "ssh-keygen for {} failed ({}): {}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let read =
        |path: &Path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    Ok(KeyPair {
        private: read(&path)?,
        public: read(&path.with_extension("pub"))?,
    })
}

/// `<type> <base64>` of a public key line, dropping its comment.
fn key_type_and_blob(public_line: &str) -> anyhow::Result<String> {
    let mut fields = public_line.split_whitespace();
    match (fields.next(), fields.next()) {
        (Some(kind), Some(blob)) => Ok(format!("{kind} {blob}")),
        _ => bail!("unreadable public key line from ssh-keygen"),
    }
}

/// The user sshd lets in: the one running the tests (and sshd).
fn current_user() -> anyhow::Result<String> {
    let output = Command::new("whoami").output().context("running whoami")?;
    let user = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || user.is_empty() {
        bail!("whoami failed ({})", output.status);
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WorkRepo;

    #[test]
    fn key_type_and_blob_drops_the_comment() {
        assert_eq!(
            key_type_and_blob("ssh-ed25519 AAAAC3Nz bosun-test\n").unwrap(),
            "ssh-ed25519 AAAAC3Nz"
        );
        assert!(key_type_and_blob("garbage").is_err());
    }

    /// The OpenSSH client lists refs with the client key and the server's host key
    /// pinned, and is refused with another client key.
    #[test]
    fn git_ls_remote_over_ssh_with_the_client_key() {
        let base = tempfile::tempdir().unwrap();
        let repo = WorkRepo::init(base.path(), "app").unwrap();
        repo.write("a.txt", "a\n").unwrap();
        let head = repo.commit("first").unwrap();
        let server = GitSshServer::start().unwrap();

        let keys = tempfile::tempdir().unwrap();
        let identity = keys.path().join("id");
        std::fs::write(&identity, server.client_private_key()).unwrap();
        std::fs::write(keys.path().join("known_hosts"), server.known_hosts_line() + "\n").unwrap();
        let ssh_command = |identity: &Path| {
            format!(
                "ssh -F /dev/null -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
                 -o UserKnownHostsFile={} -i {}",
                keys.path().join("known_hosts").display(),
                identity.display()
            )
        };
        // ssh refuses a private key file readable by others.
        let chmod = Command::new("chmod").arg("600").arg(&identity).status().unwrap();
        assert!(chmod.success());
        let url = server.url(repo.path());
        let refs = repo
            .git(&[
                "-c",
                &format!("core.sshCommand={}", ssh_command(&identity)),
                "ls-remote",
                &url,
            ])
            .unwrap_or_else(|e| panic!("{e:#}\nsshd log:\n{}", process::log_tail(&server.log_path(), 20)));
        assert!(refs.contains(&format!("{head}\trefs/heads/main")), "{refs}");

        generate_key(keys.path(), "stranger").unwrap();
        let error = repo
            .git(&[
                "-c",
                &format!("core.sshCommand={}", ssh_command(&keys.path().join("stranger"))),
                "ls-remote",
                &url,
            ])
            .unwrap_err();
        assert!(format!("{error:#}").contains("Permission denied"), "{error:#}");
    }
}
