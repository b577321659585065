//! Repository URLs: which transport, where, the key of the shared clone, and a form
//! safe to show in messages.
//!
//! Every URL that is printed (messages, conditions, Events, logs) goes through
//! [`redact_url`]: user information written in a URL is a credential
//! (`https://TOKEN@host/…`, `https://x-access-token:PAT@host/…`,
//! `https://TOKEN:x-oauth-basic@host/…`), so for every scheme but SSH all of it is
//! replaced by `***`. An SSH user (`git@host:org/repo`, `ssh://git@host/…`) names an
//! account, not a secret (SSH authenticates with keys), and is kept; a password written
//! after it is not. A query string may carry a token too and is replaced.

use super::{SourceError, field};

/// What replaces a secret in a printed URL or message.
const MASK: &str = "***";

/// The URL as it may be shown anywhere: user information that may be a credential,
/// and any query string, replaced by `***`. Works on any text (a URL that does not
/// parse is redacted the same way), and is idempotent.
pub fn redact_url(raw: &str) -> String {
    let (without_query, query) = match raw.find(['?', '#']) {
        Some(at) => (&raw[..at], Some(&raw[at..at + 1])),
        None => (raw, None),
    };
    let mut shown = match without_query.find("://") {
        Some(scheme_end) => {
            let scheme = &without_query[..scheme_end];
            let rest = &without_query[scheme_end + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rfind('@') {
                Some(at) => {
                    let userinfo = &authority[..at];
                    let shown_info = if is_ssh_scheme(scheme) {
                        keep_user(userinfo)
                    } else {
                        MASK.to_string()
                    };
                    format!("{scheme}://{shown_info}@{}{path}", &authority[at + 1..])
                }
                None => without_query.to_string(),
            }
        }
        // scp-like `[user@]host:path`: the user is an SSH account; a password is not.
        None => match without_query.find('@') {
            Some(at) => format!("{}{}", keep_user(&without_query[..at]), &without_query[at..]),
            None => without_query.to_string(),
        },
    };
    if let Some(separator) = query {
        shown.push_str(separator);
        shown.push_str(MASK);
    }
    shown
}

/// Text that is not a usable URL, for an error message: what [`redact_url`] shows,
/// and with no scheme to say what its user information is, all of it masked.
fn redact_unparsed(raw: &str) -> String {
    let shown = redact_url(raw);
    match (shown.contains("://"), shown.rfind('@')) {
        (false, Some(at)) => format!("{MASK}{}", &shown[at..]),
        _ => shown,
    }
}

fn is_ssh_scheme(scheme: &str) -> bool {
    matches!(
        scheme.to_ascii_lowercase().as_str(),
        "ssh" | "git+ssh" | "ssh+git"
    )
}

/// `user:password` → `user:***`; `user` stays.
fn keep_user(userinfo: &str) -> String {
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:{MASK}"),
        None => userinfo.to_string(),
    }
}

/// `%XX` sequences decoded (lossily), for scrubbing the decoded form of a secret.
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

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
    /// The repository without credentials: scheme, host, non-default port and path,
    /// without user information, query, repeated or trailing slashes, so spellings of
    /// one repository are one repository. With [`RepoUrl::userinfo`] and the Secret's
    /// credentials it keys a clone (see the cache).
    pub normalized: String,
    /// The URL as it may be shown ([`redact_url`]).
    pub redacted: String,
    /// User information written in the URL (`user[:password]`), as written: a
    /// credential, part of the key of the clone and of the access record.
    pub userinfo: Option<String>,
    /// Pieces of the URL that are secrets, to scrub from messages (libgit2 may echo them).
    secrets: Vec<String>,
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
                        "file:// URL needs an absolute path, got {:?}",
                        redact_unparsed(trimmed)
                    )));
                }
                return Ok(RepoUrl {
                    raw: trimmed.to_string(),
                    scheme,
                    host: None,
                    port: None,
                    normalized: format!("file://{}", collapse_slashes(path)),
                    redacted: redact_url(trimmed),
                    userinfo: None,
                    secrets: Vec::new(),
                });
            }
            let (authority, path) = match rest.find('/') {
                Some(slash) => rest.split_at(slash),
                None => (rest, ""),
            };
            let path = path.split(['?', '#']).next().unwrap_or_default();
            let (userinfo, hostport) = match authority.rfind('@') {
                Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
                None => (None, authority),
            };
            let (host, port) = split_host_port(hostport)
                .ok_or_else(|| invalid(format!("cannot read host and port of {:?}", redact_url(trimmed))))?;
            let port_suffix = match port {
                Some(port) if Some(port) != scheme.default_port() => format!(":{port}"),
                _ => String::new(),
            };
            let host_display = display_host(&host);
            let normalized = format!(
                "{}://{host_display}{port_suffix}{}",
                scheme.name(),
                collapse_slashes(path)
            );
            Ok(RepoUrl {
                raw: trimmed.to_string(),
                scheme,
                port: port.or(scheme.default_port()),
                host: Some(host),
                normalized,
                redacted: redact_url(trimmed),
                userinfo: userinfo.map(str::to_string),
                secrets: secrets_of(trimmed, userinfo, scheme == Scheme::Ssh),
            })
        } else {
            // scp-like `[user@]host:path`, the form GitHub and GitLab show for SSH.
            let (before, path) = trimmed.split_once(':').ok_or_else(|| {
                invalid(format!(
                    "{:?} is neither a URL (scheme://) nor scp-like user@host:path",
                    redact_unparsed(trimmed)
                ))
            })?;
            if before.contains('/') || before.is_empty() || path.is_empty() {
                return Err(invalid(format!(
                    "{:?} is neither a URL (scheme://) nor scp-like user@host:path; local repositories need file://",
                    redact_unparsed(trimmed)
                )));
            }
            let host = match before.rfind('@') {
                Some(at) => &before[at + 1..],
                None => before,
            };
            if host.is_empty() {
                return Err(invalid(format!("no host in {:?}", redact_unparsed(trimmed))));
            }
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = host.to_ascii_lowercase();
            let normalized = format!(
                "ssh://{}/{}",
                display_host(&host),
                collapse_slashes(path).trim_start_matches('/')
            );
            let userinfo = before.rfind('@').map(|at| &before[..at]);
            Ok(RepoUrl {
                raw: trimmed.to_string(),
                scheme: Scheme::Ssh,
                host: Some(host),
                port: Some(22),
                normalized,
                redacted: redact_url(trimmed),
                userinfo: userinfo.map(str::to_string),
                secrets: secrets_of(trimmed, userinfo, true),
            })
        }
    }

    /// Removes the URL's secrets from a message (libgit2 may echo the URL, or parts
    /// of it, in its errors).
    pub(crate) fn scrub(&self, message: &str) -> String {
        scrub_secrets(&message.replace(&self.raw, &self.redacted), &self.secrets)
    }

    /// Whether the URL itself carries credentials: any user information but an SSH
    /// account name (a token may be written as the user alone).
    pub(crate) fn has_credentials(&self) -> bool {
        match (&self.userinfo, self.scheme) {
            (None, _) => false,
            (Some(info), Scheme::Ssh) => info.contains(':'),
            (Some(_), _) => true,
        }
    }
}

/// Replaces every secret (at least 4 characters: shorter pieces would garble
/// messages, and are scrubbed as part of the URL) by `***`, longest first.
fn scrub_secrets(message: &str, secrets: &[String]) -> String {
    let mut message = message.to_string();
    for secret in secrets {
        if secret.chars().count() >= 4 {
            message = message.replace(secret.as_str(), MASK);
        }
    }
    message
}

/// The pieces of a URL that are secrets: for SSH the password alone; otherwise the
/// whole user information and each of its parts; and any query string. Each as written
/// and percent-decoded, longest first.
fn secrets_of(raw: &str, userinfo: Option<&str>, ssh: bool) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    if let Some(info) = userinfo {
        match (ssh, info.split_once(':')) {
            (true, Some((_, password))) => pieces.push(password.to_string()),
            (true, None) => {}
            (false, Some((user, password))) => {
                pieces.extend([info.to_string(), user.to_string(), password.to_string()]);
            }
            (false, None) => pieces.push(info.to_string()),
        }
    }
    if let Some(at) = raw.find(['?', '#']) {
        pieces.push(raw[at + 1..].to_string());
    }
    let decoded: Vec<String> = pieces.iter().map(|piece| percent_decode(piece)).collect();
    pieces.extend(decoded);
    pieces.retain(|piece| !piece.is_empty());
    pieces.sort_by_key(|piece| std::cmp::Reverse(piece.len()));
    pieces.dedup();
    pieces
}

/// A path with repeated slashes collapsed, `.` segments and trailing slashes removed.
fn collapse_slashes(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    if path.starts_with('/') {
        format!("/{}", segments.join("/"))
    } else {
        segments.join("/")
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
        assert_eq!(url.redacted, "https://***@example.com/r.git");
        assert!(
            !url.scrub("failed for https://user:s3cr3t@example.com/r.git and s3cr3t")
                .contains("s3cr3t")
        );
    }

    #[test]
    fn redaction_of_each_form() {
        for (raw, shown) in [
            // A token written as the user alone.
            (
                "https://ghp_TOKEN123@github.com/o/r.git",
                "https://***@github.com/o/r.git",
            ),
            ("https://x-access-token:PAT@host/o/r", "https://***@host/o/r"),
            ("https://TOKEN:x-oauth-basic@host/o/r", "https://***@host/o/r"),
            ("http://us%40er:p%3Ass@host:8080/r", "http://***@host:8080/r"),
            ("git://tok@host/r", "git://***@host/r"),
            ("https://host/r.git?private_token=abc", "https://host/r.git?***"),
            // SSH: the account name is not a secret, a password is.
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("ssh://git@host:2222/r", "ssh://git@host:2222/r"),
            ("ssh://git:pw@host/r", "ssh://git:***@host/r"),
            ("deploy:pw@host:org/r", "deploy:***@host:org/r"),
            // Nothing to hide.
            ("https://github.com/o/r", "https://github.com/o/r"),
            ("file:///srv/repo", "file:///srv/repo"),
        ] {
            assert_eq!(redact_url(raw), shown, "{raw}");
            assert_eq!(redact_url(shown), shown, "idempotent on {shown}");
        }
    }

    #[test]
    fn invalid_urls_are_refused_without_their_credentials() {
        for bad in [
            "ghp_SECRETTOKEN@github.com/org/repo",
            "https://ghp_SECRETTOKEN@host:notaport/r",
            "ftp://ghp_SECRETTOKEN@host/r",
        ] {
            let err = RepoUrl::parse(bad).unwrap_err();
            assert!(!err.to_string().contains("SECRETTOKEN"), "{bad}: {err}");
        }
    }

    #[test]
    fn scrub_removes_decoded_and_partial_forms() {
        let url = RepoUrl::parse("https://bot:p%40ssw0rd-x@host/r").unwrap();
        let scrubbed =
            url.scrub("auth failed for bot:p@ssw0rd-x and p%40ssw0rd-x at https://bot:p%40ssw0rd-x@host/r");
        assert!(!scrubbed.contains("ssw0rd"), "{scrubbed}");
        let url = RepoUrl::parse("https://TOKENVALUE@host/r").unwrap();
        assert_eq!(url.scrub("user TOKENVALUE refused"), "user *** refused");
        assert!(url.has_credentials());
        assert!(!RepoUrl::parse("git@host:o/r").unwrap().has_credentials());
        assert!(RepoUrl::parse("ssh://git:pw@host/r").unwrap().has_credentials());
    }

    #[test]
    fn credentials_are_not_part_of_the_repository() {
        let with = RepoUrl::parse("https://x-access-token:PAT@host/org/private.git").unwrap();
        let without = RepoUrl::parse("https://host/org/private.git").unwrap();
        assert_eq!(with.normalized, without.normalized);
        assert_eq!(with.userinfo.as_deref(), Some("x-access-token:PAT"));
        assert_eq!(without.userinfo, None);
        assert_eq!(
            RepoUrl::parse("https://host//org/./private.git/")
                .unwrap()
                .normalized,
            without.normalized
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Characters RFC 3986 allows in user information, `%XX` included.
        fn userinfo_part() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof!["[A-Za-z0-9._~!$&'()*+,;=-]", "%[0-9A-F]{2}".prop_map(|s| s),],
                6..24,
            )
            .prop_map(|parts| parts.concat())
        }

        proptest! {
            #[test]
            fn no_http_user_information_survives(
                scheme in prop_oneof!["https", "http", "git", "HTTPS"],
                user in userinfo_part(),
                password in proptest::option::of(userinfo_part()),
                host in "[a-z]{1,10}(\\.[a-z]{2,3})?",
                port in proptest::option::of(1u16..),
                path in "(/[a-zA-Z0-9._-]{1,8}){0,4}",
            ) {
                let userinfo = match &password {
                    Some(password) => format!("{user}:{password}"),
                    None => user.clone(),
                };
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let raw = format!("{scheme}://{userinfo}@{host}{port}{path}");
                let shown = redact_url(&raw);
                prop_assert_eq!(&shown, &format!("{scheme}://***@{host}{port}{path}"));
                prop_assert_eq!(redact_url(&shown), shown.clone());
                let parsed = RepoUrl::parse(&raw).unwrap();
                prop_assert_eq!(&parsed.redacted, &shown);
                prop_assert!(parsed.has_credentials());
                let message = format!("error: {raw}: user {user} / {}", percent_decode(&userinfo));
                let scrubbed = parsed.scrub(&message);
                prop_assert!(!scrubbed.contains(&userinfo), "{scrubbed}");
                prop_assert!(!scrubbed.contains(&percent_decode(&userinfo)), "{scrubbed}");
            }

            #[test]
            fn ssh_users_are_kept_and_passwords_are_not(
                user in "[a-z][a-z0-9_-]{0,8}",
                password in userinfo_part(),
                host in "[a-z]{1,10}",
                path in "[a-z]{1,8}(/[a-z]{1,8}){0,3}",
            ) {
                let scp = format!("{user}@{host}:{path}");
                prop_assert_eq!(redact_url(&scp), scp.clone());
                let ssh = format!("ssh://{user}:{password}@{host}/{path}");
                let shown = redact_url(&ssh);
                prop_assert_eq!(&shown, &format!("ssh://{user}:***@{host}/{path}"));
                prop_assert!(!RepoUrl::parse(&ssh).unwrap().scrub(&ssh).contains(password.as_str()));
            }
        }
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
