//! OpenSSH `known_hosts` matching for SSH fetches: the server's host key must be the
//! one listed for its host, or the fetch is refused (no trust on first use).

use sha2::{Digest, Sha256};

/// Parsed `known_hosts` content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownHosts {
    entries: Vec<Entry>,
    /// Hashed (`|1|…`) lines seen: they cannot be matched here, and a message says so.
    hashed_lines: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    revoked: bool,
    patterns: Vec<Pattern>,
    key: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pattern {
    negated: bool,
    glob: String,
}

/// Why a presented host key was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostKeyProblem {
    /// No line names this host.
    UnknownHost { hashed_lines: usize },
    /// Lines name this host but none with this key: possibly a man in the middle.
    Mismatch,
    /// The key is listed as `@revoked`.
    Revoked,
}

impl std::fmt::Display for HostKeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostKeyProblem::UnknownHost { hashed_lines: 0 } => {
                write!(f, "host is not listed in known_hosts")
            }
            HostKeyProblem::UnknownHost { .. } => write!(
                f,
                "host is not listed in known_hosts (hashed |1| entries are not supported: list the host in plain text, e.g. `ssh-keyscan HOST` without -H)"
            ),
            HostKeyProblem::Mismatch => write!(
                f,
                "the server's key differs from the one in known_hosts (possible man-in-the-middle, or the server's key changed)"
            ),
            HostKeyProblem::Revoked => {
                write!(f, "the server's key is marked @revoked in known_hosts")
            }
        }
    }
}

/// What the SSH transport tells us about the server's key.
pub(crate) enum PresentedKey<'a> {
    /// The raw key blob (as base64-encoded in known_hosts).
    Raw(&'a [u8]),
    /// Only the SHA-256 of the blob (older libssh2).
    Sha256(&'a [u8; 32]),
}

impl PresentedKey<'_> {
    fn matches(&self, key: &[u8]) -> bool {
        match self {
            PresentedKey::Raw(raw) => *raw == key,
            PresentedKey::Sha256(hash) => Sha256::digest(key).as_slice() == hash.as_slice(),
        }
    }
}

impl KnownHosts {
    /// Feeds every entry (marker, host patterns, key) to `hasher`, length-prefixed so
    /// different contents never hash alike: callers share a fetch of the cache only
    /// if they trust the same host keys.
    pub(crate) fn hash_into(&self, hasher: &mut Sha256) {
        let len = |n: usize| (n as u64).to_le_bytes();
        hasher.update(len(self.entries.len()));
        for entry in &self.entries {
            hasher.update([u8::from(entry.revoked)]);
            hasher.update(len(entry.patterns.len()));
            for pattern in &entry.patterns {
                hasher.update([u8::from(pattern.negated)]);
                hasher.update(len(pattern.glob.len()));
                hasher.update(pattern.glob.as_bytes());
            }
            hasher.update(len(entry.key.len()));
            hasher.update(&entry.key);
        }
    }

    /// Parses `known_hosts` text. Unreadable lines are an error (naming the line number,
    /// never its content) so that a typo is not silently ignored.
    pub fn parse(text: &str) -> Result<KnownHosts, String> {
        let mut entries = Vec::new();
        let mut hashed_lines = 0;
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("known_hosts line {}: {what}", index + 1);
            let mut fields = line.split_whitespace();
            let mut first = fields.next().unwrap_or_default();
            let mut revoked = false;
            if let Some(marker) = first.strip_prefix('@') {
                match marker {
                    "revoked" => revoked = true,
                    // Host certificates are not supported: such a line trusts nothing here.
                    "cert-authority" => continue,
                    _ => return Err(bad("unknown marker")),
                }
                first = fields.next().ok_or_else(|| bad("missing host patterns"))?;
            }
            let _key_type = fields.next().ok_or_else(|| bad("missing key type"))?;
            let key = fields.next().ok_or_else(|| bad("missing key"))?;
            let key = base64_decode(key).ok_or_else(|| bad("key is not valid base64"))?;
            if first.starts_with('|') {
                hashed_lines += 1;
                continue;
            }
            let patterns = first
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| match p.strip_prefix('!') {
                    Some(glob) => Pattern {
                        negated: true,
                        glob: glob.to_ascii_lowercase(),
                    },
                    None => Pattern {
                        negated: false,
                        glob: p.to_ascii_lowercase(),
                    },
                })
                .collect();
            entries.push(Entry {
                revoked,
                patterns,
                key,
            });
        }
        if entries.is_empty() && hashed_lines == 0 {
            return Err("known_hosts has no host key lines".into());
        }
        Ok(KnownHosts {
            entries,
            hashed_lines,
        })
    }

    /// Checks the key presented by `host` on `port` the way OpenSSH does: the host is
    /// looked up as `host` on port 22 and as `[host]:port` otherwise.
    pub fn check(&self, host: &str, port: u16, key: PresentedKey<'_>) -> Result<(), HostKeyProblem> {
        let host = host.to_ascii_lowercase();
        let name = if port == 22 {
            host
        } else {
            format!("[{host}]:{port}")
        };
        let for_host: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|entry| entry_matches_host(entry, &name))
            .collect();
        if for_host.iter().any(|e| e.revoked && key.matches(&e.key)) {
            return Err(HostKeyProblem::Revoked);
        }
        let listed: Vec<&&Entry> = for_host.iter().filter(|e| !e.revoked).collect();
        if listed.is_empty() {
            return Err(HostKeyProblem::UnknownHost {
                hashed_lines: self.hashed_lines,
            });
        }
        if listed.iter().any(|e| key.matches(&e.key)) {
            Ok(())
        } else {
            Err(HostKeyProblem::Mismatch)
        }
    }
}

fn entry_matches_host(entry: &Entry, name: &str) -> bool {
    // A matching negated pattern excludes the line even when another pattern matches.
    let mut matched = false;
    for pattern in &entry.patterns {
        if glob_match(pattern.glob.as_bytes(), name.as_bytes()) {
            if pattern.negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

/// `*` and `?` wildcards, as in OpenSSH host patterns.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, star_text)) = backtrack {
            p = star + 1;
            t = star_text + 1;
            backtrack = Some((star, star_text + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Standard base64 (with or without padding), as used for keys in known_hosts.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let trimmed = text.trim_end_matches('=');
    if trimmed.len() % 4 == 1 || text.len() - trimmed.len() > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real-shaped ed25519 key blobs (32-byte keys behind the type header).
    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIEBq0Wm6E9cB7ZPYVw3X0JU1fM5sTn2vIu8rS4nDpQ2k";

    fn raw(key: &str) -> Vec<u8> {
        base64_decode(key).unwrap()
    }

    #[test]
    fn base64_round_trips_known_values() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a$==").is_none());
        assert!(base64_decode("a").is_none());
    }

    #[test]
    fn plain_host_matches_on_port_22_only() {
        let hosts = KnownHosts::parse(&format!("github.com ssh-ed25519 {KEY_A}\n")).unwrap();
        assert_eq!(
            hosts.check("github.com", 22, PresentedKey::Raw(&raw(KEY_A))),
            Ok(())
        );
        assert_eq!(
            hosts.check("GitHub.com", 22, PresentedKey::Raw(&raw(KEY_A))),
            Ok(())
        );
        assert_eq!(
            hosts.check("github.com", 2222, PresentedKey::Raw(&raw(KEY_A))),
            Err(HostKeyProblem::UnknownHost { hashed_lines: 0 })
        );
        assert_eq!(
            hosts.check("gitlab.com", 22, PresentedKey::Raw(&raw(KEY_A))),
            Err(HostKeyProblem::UnknownHost { hashed_lines: 0 })
        );
    }

    #[test]
    fn bracketed_host_with_port() {
        let text = format!("# comment\n\n[git.local]:2222,[10.0.0.5]:2222 ssh-ed25519 {KEY_A} me@laptop\n");
        let hosts = KnownHosts::parse(&text).unwrap();
        assert_eq!(
            hosts.check("git.local", 2222, PresentedKey::Raw(&raw(KEY_A))),
            Ok(())
        );
        assert_eq!(
            hosts.check("10.0.0.5", 2222, PresentedKey::Raw(&raw(KEY_A))),
            Ok(())
        );
        assert!(
            hosts
                .check("git.local", 22, PresentedKey::Raw(&raw(KEY_A)))
                .is_err()
        );
    }

    #[test]
    fn wrong_key_is_a_mismatch() {
        let hosts = KnownHosts::parse(&format!("github.com ssh-ed25519 {KEY_A}")).unwrap();
        assert_eq!(
            hosts.check("github.com", 22, PresentedKey::Raw(&raw(KEY_B))),
            Err(HostKeyProblem::Mismatch)
        );
    }

    #[test]
    fn any_of_several_keys_for_a_host() {
        let text = format!("github.com ssh-ed25519 {KEY_A}\ngithub.com ssh-ed25519 {KEY_B}\n");
        let hosts = KnownHosts::parse(&text).unwrap();
        assert_eq!(
            hosts.check("github.com", 22, PresentedKey::Raw(&raw(KEY_B))),
            Ok(())
        );
    }

    #[test]
    fn sha256_of_key_is_compared_when_raw_key_is_unavailable() {
        let hosts = KnownHosts::parse(&format!("github.com ssh-ed25519 {KEY_A}")).unwrap();
        let hash: [u8; 32] = Sha256::digest(raw(KEY_A)).into();
        assert_eq!(hosts.check("github.com", 22, PresentedKey::Sha256(&hash)), Ok(()));
        let other: [u8; 32] = Sha256::digest(raw(KEY_B)).into();
        assert_eq!(
            hosts.check("github.com", 22, PresentedKey::Sha256(&other)),
            Err(HostKeyProblem::Mismatch)
        );
    }

    #[test]
    fn wildcards_and_negation() {
        let text =
            format!("*.example.com,!evil.example.com ssh-ed25519 {KEY_A}\ngit?.corp ssh-ed25519 {KEY_B}");
        let hosts = KnownHosts::parse(&text).unwrap();
        assert_eq!(
            hosts.check("git.example.com", 22, PresentedKey::Raw(&raw(KEY_A))),
            Ok(())
        );
        assert!(
            hosts
                .check("evil.example.com", 22, PresentedKey::Raw(&raw(KEY_A)))
                .is_err()
        );
        assert_eq!(
            hosts.check("git1.corp", 22, PresentedKey::Raw(&raw(KEY_B))),
            Ok(())
        );
        assert!(
            hosts
                .check("git12.corp", 22, PresentedKey::Raw(&raw(KEY_B)))
                .is_err()
        );
    }

    #[test]
    fn revoked_key_is_refused() {
        let text = format!("@revoked * ssh-ed25519 {KEY_A}\ngithub.com ssh-ed25519 {KEY_A}\n");
        let hosts = KnownHosts::parse(&text).unwrap();
        assert_eq!(
            hosts.check("github.com", 22, PresentedKey::Raw(&raw(KEY_A))),
            Err(HostKeyProblem::Revoked)
        );
    }

    #[test]
    fn hashed_lines_are_reported_not_matched() {
        let text = format!("|1|c2FsdA==|aGFzaA== ssh-ed25519 {KEY_A}\n");
        let hosts = KnownHosts::parse(&text).unwrap();
        let problem = hosts
            .check("github.com", 22, PresentedKey::Raw(&raw(KEY_A)))
            .unwrap_err();
        assert_eq!(problem, HostKeyProblem::UnknownHost { hashed_lines: 1 });
        assert!(problem.to_string().contains("hashed"));
    }

    #[test]
    fn malformed_known_hosts_is_an_error() {
        assert!(KnownHosts::parse("").is_err());
        assert!(KnownHosts::parse("# only a comment\n").is_err());
        assert!(KnownHosts::parse("github.com ssh-ed25519").is_err());
        assert!(KnownHosts::parse("github.com ssh-ed25519 not*base64").is_err());
    }
}
