//! Repository URLs: which transport, where, the key of the shared clone, and a form
//! safe to show in messages.

use super::{SourceError, field};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    Https,
    Http,
    Ssh,
    Git,
    File,
}

impl Scheme {
    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Https => Some(443),
            Scheme::Http => Some(80),
            Scheme::Ssh => Some(22),
            Scheme::Git => Some(9418),
            Scheme::File => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scheme::Https => "https",
            Scheme::Http => "http",
            Scheme::Ssh => "ssh",
            Scheme::Git => "git",
            Scheme::File => "file",
        }
    }
}

/// A parsed repository URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RepoUrl {
    /// As written in the spec; what git2 is given.
    pub raw: String,
    pub scheme: Scheme,
    /// Lower-cased host name (no brackets around IPv6); `None` for `file://`.
    pub host: Option<String>,
    /// Port the transport connects to (the scheme's default when not written).
    pub port: Option<u16>,
    /// Key of the shared clone: scheme, host, non-default port and path, without user
    /// information or trailing slashes, so spellings of one repository share a clone.
    pub normalized: String,
    /// The URL without a password, for messages and logs.
    pub redacted: String,
    /// Password written in the URL (`https://user:pass@host/`), to scrub from messages.
    password: Option<String>,
}

impl RepoUrl {
    pub fn parse(raw: &str) -> Result<RepoUrl, SourceError> {
        let invalid = |message: String| SourceError::InvalidSpec {
            field: field::URL,
            message,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("must not be empty".into()));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(invalid("contains control characters".into()));
        }
        if let Some((scheme, rest)) = trimmed.split_once("://") {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "https" => Scheme::Https,
                "http" => Scheme::Http,
                "ssh" | "git+ssh" | "ssh+git" => Scheme::Ssh,
                "git" => Scheme::Git,
                "file" => Scheme::File,
                other => {
                    return Err(invalid(format!(
                        "unsupported scheme {other:?} (use https://, http://, ssh://, git@host:path, git:// or file://)"
                    )));
                }
            };
            if scheme == Scheme::File {
                let path = rest.trim_end_matches('/');
                if !path.starts_with('/') {
                    return Err(invalid(format!(
                        "file:// URL needs an absolute path, got {trimmed:?}"
                    )));
                }
                return Ok(RepoUrl {
                    raw: trimmed.to_string(),
                    scheme,
                    host: None,
                    port: None,
                    normalized: format!("file://{path}"),
                    redacted: trimmed.to_string(),
                    password: None,
                });
            }
            let (authority, path) = match rest.find('/') {
                Some(slash) => rest.split_at(slash),
                None => (rest, ""),
            };
            let (userinfo, hostport) = match authority.rfind('@') {
                Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport)
                .ok_or_else(|| invalid(format!("cannot read host and port of {:?}", redact(trimmed))))?;
            let (user, password) = match userinfo {
                Some(info) => match info.split_once(':') {
                    Some((user, password)) => (Some(user), Some(password)),
                    None => (Some(info), None),
                },
                None => (None, None),
            };
            let port_suffix = match port {
                Some(port) if Some(port) != scheme.default_port() => format!(":{port}"),
                _ => String::new(),
            };
            let host_display = display_host(&host);
            let normalized = format!(
                "{}://{host_display}{port_suffix}{}",
                scheme.name(),
                path.trim_end_matches('/')
            );
            let redacted = match (user, password) {
                (Some(user), Some(_)) => trimmed.replacen(
                    &format!("{}@", userinfo.unwrap_or_default()),
                    &format!("{user}@"),
                    1,
                ),
                _ => trimmed.to_string(),
            };
            Ok(RepoUrl {
                raw: trimmed.to_string(),
                scheme,
                port: port.or(scheme.default_port()),
                host: Some(host),
                normalized,
                redacted,
                password: password.filter(|p| !p.is_empty()).map(str::to_string),
            })
        } else {
            // scp-like `[user@]host:path`, the form GitHub and GitLab show for SSH.
            let (before, path) = trimmed.split_once(':').ok_or_else(|| {
                invalid(format!(
                    "{trimmed:?} is neither a URL (scheme://) nor scp-like user@host:path"
                ))
            })?;
            if before.contains('/') || before.is_empty() || path.is_empty() {
                return Err(invalid(format!(
                    "{trimmed:?} is neither a URL (scheme://) nor scp-like user@host:path; local repositories need file://"
                )));
            }
            let host = match before.rfind('@') {
                Some(at) => &before[at + 1..],
                None => before,
            };
            if host.is_empty() {
                return Err(invalid(format!("no host in {trimmed:?}")));
            }
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = host.to_ascii_lowercase();
            let normalized = format!(
                "ssh://{}/{}",
                display_host(&host),
                path.trim_start_matches('/').trim_end_matches('/')
            );
            Ok(RepoUrl {
                raw: trimmed.to_string(),
                scheme: Scheme::Ssh,
                host: Some(host),
                port: Some(22),
                normalized,
                redacted: trimmed.to_string(),
                password: None,
            })
        }
    }

    /// Removes the URL's password from a message (libgit2 may echo the URL).
    pub fn scrub(&self, message: &str) -> String {
        let mut message = message.replace(&self.raw, &self.redacted);
        if let Some(password) = &self.password {
            message = message.replace(password.as_str(), "***");
        }
        message
    }
}

fn display_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (lower-cased host, port).
fn split_host_port(hostport: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Best-effort removal of a password from a URL-like string that failed to parse.
fn redact(raw: &str) -> String {
    match (raw.find("://"), raw.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &raw[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}{}", &raw[..scheme_end + 3], &raw[at..]),
                None => raw.to_string(),
            }
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_spellings_of_one_repository_share_a_key() {
        let a = RepoUrl::parse("https://GitHub.com/acme/shop/").unwrap();
        let b = RepoUrl::parse("https://user:secret@github.com:443/acme/shop").unwrap();
        assert_eq!(a.normalized, "https://github.com/acme/shop");
        assert_eq!(a.normalized, b.normalized);
        assert_eq!(b.port, Some(443));
        assert_eq!(b.host.as_deref(), Some("github.com"));
    }

    #[test]
    fn password_never_shown() {
        let url = RepoUrl::parse("https://user:s3cr3t@example.com/r.git").unwrap();
        assert_eq!(url.redacted, "https://user@example.com/r.git");
        assert!(
            !url.scrub("failed for https://user:s3cr3t@example.com/r.git and s3cr3t")
                .contains("s3cr3t")
        );
    }

    #[test]
    fn scp_like_and_ssh_urls() {
        let scp = RepoUrl::parse("git@github.com:acme/shop.git").unwrap();
        assert_eq!(scp.scheme, Scheme::Ssh);
        assert_eq!(scp.host.as_deref(), Some("github.com"));
        assert_eq!(scp.port, Some(22));
        let ssh = RepoUrl::parse("ssh://git@github.com/acme/shop.git").unwrap();
        assert_eq!(scp.normalized, ssh.normalized);
        let custom = RepoUrl::parse("ssh://git@[::1]:2222/repo").unwrap();
        assert_eq!(custom.host.as_deref(), Some("::1"));
        assert_eq!(custom.port, Some(2222));
        assert_eq!(custom.normalized, "ssh://[::1]:2222/repo");
    }

    #[test]
    fn git_and_file_urls() {
        let git = RepoUrl::parse("git://127.0.0.1:9999/app.git").unwrap();
        assert_eq!((git.scheme, git.port), (Scheme::Git, Some(9999)));
        let file = RepoUrl::parse("file:///tmp/repo/").unwrap();
        assert_eq!(file.normalized, "file:///tmp/repo");
        assert_eq!(file.host, None);
    }

    #[test]
    fn rejects_what_cannot_be_fetched() {
        for bad in [
            "",
            "ftp://x/y",
            "/srv/repo",
            "./repo",
            "file://relative",
            "https://host:notaport/x",
        ] {
            let err = RepoUrl::parse(bad).unwrap_err();
            assert!(err.to_string().starts_with("spec.source.git.url"), "{bad}: {err}");
        }
    }
}
