//! Credentials from the Secret named by `spec.source.git.secretRef`, and the git2
//! callbacks that present them. Values are never logged or put into messages.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::SourceError;
use super::known_hosts::KnownHosts;

/// Username sent with a bare `token`. GitHub requires `x-access-token` for GitHub App
/// installation tokens and accepts any username with personal access tokens; GitLab
/// accepts any non-blank username with personal, project and group access tokens.
/// So one fixed name serves both, where `git` would fail for GitHub App tokens.
pub(crate) const TOKEN_USERNAME: &str = "x-access-token";

/// How to authenticate to a Git server.
#[derive(Clone)]
pub struct Credentials {
    secret_name: String,
    auth: Auth,
}

#[derive(Clone)]
pub(crate) enum Auth {
    /// HTTP basic: `username`+`password`, or a `token`.
    Basic {
        username: String,
        password: String,
        from_token: bool,
    },
    /// SSH private key with the hosts it may talk to.
    Ssh {
        identity: String,
        passphrase: Option<String>,
        known_hosts: KnownHosts,
    },
}

// Never print the values, not even in debug output.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("secret", &self.secret_name)
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a Secret named by `spec.source.git.secretRef` (its `data`).
    pub(crate) fn from_secret(
        secret_name: &str,
        secret: k8s_openapi::api::core::v1::Secret,
    ) -> Result<Credentials, SourceError> {
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect();
        Credentials::from_secret_data(secret_name, &data)
    }

    /// Reads the Secret's data. Accepted keys, in order of precedence:
    /// `identity` (+ required `known_hosts`, optional `password` as passphrase),
    /// `token`, `username`+`password`.
    pub(crate) fn from_secret_data(
        secret_name: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Credentials, SourceError> {
        let invalid = |message: String| SourceError::InvalidCredentials {
            secret: secret_name.to_string(),
            message,
        };
        let text = |key: &str| -> Result<Option<String>, SourceError> {
            match data.get(key) {
                None => Ok(None),
                Some(bytes) => {
                    let value = std::str::from_utf8(bytes)
                        .map_err(|_| invalid(format!("key {key:?} is not UTF-8 text")))?;
                    // `kubectl create secret --from-file` keeps the file's final newline.
                    let value = value.trim_end_matches(['\r', '\n']);
                    if value.is_empty() {
                        Err(invalid(format!("key {key:?} is empty")))
                    } else {
                        Ok(Some(value.to_string()))
                    }
                }
            }
        };
        let auth = if let Some(identity) = text("identity")? {
            let known_hosts = text("known_hosts")?.ok_or_else(|| {
                invalid(
                    "has `identity` but no `known_hosts`: SSH needs the server's host key to be trusted"
                        .into(),
                )
            })?;
            let known_hosts = KnownHosts::parse(&known_hosts).map_err(invalid)?;
            // The private key text itself must end with a newline for libssh2.
            let identity = format!("{}\n", identity.trim_end());
            Auth::Ssh {
                identity,
                passphrase: text("password")?,
                known_hosts,
            }
        } else if let Some(token) = text("token")? {
            Auth::Basic {
                username: TOKEN_USERNAME.to_string(),
                password: token,
                from_token: true,
            }
        } else {
            match (text("username")?, text("password")?) {
                (Some(username), Some(password)) => Auth::Basic {
                    username,
                    password,
                    from_token: false,
                },
                (Some(_), None) => return Err(invalid("has `username` but no `password`".into())),
                (None, Some(_)) => return Err(invalid("has `password` but no `username`".into())),
                (None, None) => {
                    let mut present: Vec<&str> = data.keys().map(String::as_str).collect();
                    present.truncate(10);
                    return Err(invalid(format!(
                        "expected keys `username`+`password`, or `token`, or `identity`+`known_hosts`; found {present:?}"
                    )));
                }
            }
        };
        Ok(Credentials {
            secret_name: secret_name.to_string(),
            auth,
        })
    }

    pub fn secret_name(&self) -> &str {
        &self.secret_name
    }

    /// `basic`, `token` or `ssh`, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.auth {
            Auth::Basic { from_token: true, .. } => "token",
            Auth::Basic { .. } => "basic",
            Auth::Ssh { .. } => "ssh",
        }
    }

    pub(crate) fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Identifies the credential material (not the Secret's name): two Secrets holding
    /// the same token share it; for SSH the trusted host keys count too. Used to tell whether this caller has shown access to a
    /// cached repository.
    pub(crate) fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        match &self.auth {
            Auth::Basic {
                username, password, ..
            } => {
                hasher.update(b"basic\0");
                hasher.update(username.as_bytes());
                hasher.update(b"\0");
                hasher.update(password.as_bytes());
            }
            Auth::Ssh {
                identity,
                passphrase,
                known_hosts,
            } => {
                hasher.update(b"ssh\0");
                hasher.update(identity.as_bytes());
                hasher.update(b"\0");
                hasher.update(passphrase.as_deref().unwrap_or_default().as_bytes());
                hasher.update(b"\0");
                // A caller that trusts other host keys must connect and check them
                // itself, not read what a caller trusting the server's key fetched.
                known_hosts.hash_into(&mut hasher);
            }
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    const KNOWN_HOSTS: &str =
        "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n";

    #[test]
    fn username_and_password() {
        let creds = Credentials::from_secret_data("git", &data(&[("username", "bot"), ("password", "pw\n")]))
            .unwrap();
        assert_eq!(creds.kind(), "basic");
        match creds.auth() {
            Auth::Basic {
                username, password, ..
            } => assert_eq!((username.as_str(), password.as_str()), ("bot", "pw")),
            Auth::Ssh { .. } => panic!("expected basic"),
        }
    }

    #[test]
    fn token_is_sent_as_basic_auth() {
        let creds = Credentials::from_secret_data("git", &data(&[("token", "ghp_abc")])).unwrap();
        assert_eq!(creds.kind(), "token");
        match creds.auth() {
            Auth::Basic { username, .. } => assert_eq!(username, TOKEN_USERNAME),
            Auth::Ssh { .. } => panic!("expected basic"),
        }
    }

    #[test]
    fn identity_needs_known_hosts() {
        let err = Credentials::from_secret_data("deploy-key", &data(&[("identity", "KEY")])).unwrap_err();
        assert_eq!(err.reason(), "InvalidCredentials");
        assert!(err.to_string().contains("deploy-key"), "{err}");
        assert!(err.to_string().contains("known_hosts"), "{err}");
        let ok = Credentials::from_secret_data(
            "deploy-key",
            &data(&[("identity", "KEY"), ("known_hosts", KNOWN_HOSTS)]),
        )
        .unwrap();
        assert_eq!(ok.kind(), "ssh");
    }

    #[test]
    fn secret_without_known_keys_names_secret_and_expected_keys() {
        let err = Credentials::from_secret_data("creds", &data(&[("user", "x")])).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("creds"), "{message}");
        assert!(message.contains("username"), "{message}");
        assert!(message.contains("token"), "{message}");
        assert!(message.contains("identity"), "{message}");
    }

    #[test]
    fn half_a_pair_is_an_error() {
        let err = Credentials::from_secret_data("c", &data(&[("username", "x")])).unwrap_err();
        assert!(err.to_string().contains("no `password`"), "{err}");
    }

    #[test]
    fn values_never_appear_in_debug_or_errors() {
        let creds =
            Credentials::from_secret_data("c", &data(&[("username", "bot"), ("password", "hunter2-secret")]))
                .unwrap();
        assert!(!format!("{creds:?}").contains("hunter2"));
        let mut bad = data(&[("token", "")]);
        bad.insert("password".into(), vec![0xff, 0xfe]);
        let err = Credentials::from_secret_data("c", &bad).unwrap_err();
        assert!(!err.to_string().contains('\u{fffd}'));
    }

    #[test]
    fn ssh_fingerprint_depends_on_the_trusted_host_keys() {
        let other_host =
            "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbZ8Xb2Cv3uMn3xq4w3bS1y7D8yHjK2c1mI3nYqXw0a\n";
        let fingerprint = |known_hosts: &str| {
            Credentials::from_secret_data("k", &data(&[("identity", "KEY"), ("known_hosts", known_hosts)]))
                .unwrap()
                .fingerprint()
        };
        assert_eq!(fingerprint(KNOWN_HOSTS), fingerprint(KNOWN_HOSTS));
        assert_ne!(fingerprint(KNOWN_HOSTS), fingerprint(other_host));
    }

    #[test]
    fn same_material_same_fingerprint() {
        let a = Credentials::from_secret_data("a", &data(&[("token", "t1")])).unwrap();
        let b = Credentials::from_secret_data("b", &data(&[("token", "t1")])).unwrap();
        let c = Credentials::from_secret_data("c", &data(&[("token", "t2")])).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }
}
