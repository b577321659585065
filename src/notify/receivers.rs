//! Which receivers of `spec.notify[]` want an event, and where they are.
//!
//! A URL may come from a Secret key (a chat webhook's URL is a credential): it is read
//! into a [`Receiver`] and goes nowhere else. Problems name the receiver, the Secret and
//! the key, never what the key holds; a [`Receiver`]'s `Debug` leaves the URL out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use reqwest::Url;

use crate::api::{Notify, NotifyFormat, Phase};

/// The phases told when a receiver's `on` is empty.
pub(crate) const DEFAULT_PHASES: &[Phase] = super::event::TOLD_PHASES;

/// A receiver ready to be posted to.
#[derive(Clone, PartialEq, Eq)]
pub struct Receiver {
    /// `spec.notify[].name`: how logs and messages name it.
    pub name: String,
    pub url: String,
    pub format: NotifyFormat,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("name", &self.name)
            .field("url", &"<not shown>")
            .field("format", &self.format)
            .finish()
    }
}

/// Whether `receiver` wants to be told of `phase` (`on`, or [`DEFAULT_PHASES`]).
pub(crate) fn wants(receiver: &Notify, phase: Phase) -> bool {
    if receiver.on.is_empty() {
        DEFAULT_PHASES.contains(&phase)
    } else {
        receiver.on.contains(&phase)
    }
}

/// The receivers of `notify` that want `phase`, for [`resolve`].
pub(crate) fn receivers_of(notify: &[Notify], phase: Phase) -> Vec<Notify> {
    notify.iter().filter(|r| wants(r, phase)).cloned().collect()
}

/// The Secrets (names, in the AppDeployment's namespace) whose keys hold URLs of
/// `receivers`: what to read before calling [`resolve`].
pub(crate) fn secrets_read_by(receivers: &[Notify]) -> Vec<String> {
    let mut names: Vec<String> = receivers
        .iter()
        .filter_map(|r| r.url_from.as_ref().map(|from| from.name.clone()))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The URLs of `receivers`: inline, or from a key of a Secret in `namespace` (the
/// AppDeployment's), read through `secret_data(namespace, name)` (the Secret's `data`,
/// `None` when it does not exist). Returns the receivers that can be posted to and,
/// for the others, what is wrong, naming receiver, Secret and key (never a value).
pub(crate) fn resolve(
    receivers: &[Notify],
    namespace: &str,
    secret_data: impl Fn(&str, &str) -> Option<BTreeMap<String, Vec<u8>>>,
) -> (Vec<Receiver>, Vec<String>) {
    let mut ready = Vec::new();
    let mut problems = Vec::new();
    for receiver in receivers {
        let name = &receiver.name;
        let url =
            match (&receiver.url, &receiver.url_from) {
                (Some(_), Some(_)) => Err(format!("notify receiver {name}: set url or urlFrom, not both")),
                (None, None) => Err(format!("notify receiver {name}: has neither url nor urlFrom")),
                (Some(url), None) => {
                    // The Runbook's schema checks the form; the URL may still not parse. It
                    // is not quoted: a chat webhook's URL is a credential wherever it is.
                    checked(url).ok_or_else(|| format!("notify receiver {name}: url is not an http(s) URL"))
                }
                (None, Some(from)) => {
                    let secret = format!("Secret {namespace}/{}", from.name);
                    match secret_data(namespace, &from.name) {
                    None => Err(format!("notify receiver {name}: {secret} not found")),
                    Some(data) => match data.get(&from.key) {
                        None => Err(format!("notify receiver {name}: {secret} has no key {}", from.key)),
                        Some(bytes) => std::str::from_utf8(bytes)
                            .ok()
                            .and_then(|text| checked(text.trim()))
                            .ok_or_else(|| {
                                format!(
                                    "notify receiver {name}: key {} of {secret} does not hold an http(s) URL",
                                    from.key
                                )
                            }),
                    },
                }
                }
            };
        match url {
            Ok(url) => ready.push(Receiver {
                name: name.clone(),
                url,
                format: receiver.format,
            }),
            Err(problem) => problems.push(problem),
        }
    }
    (ready, problems)
}

/// [`receivers_of`] `phase` with their URLs ([`resolve`]), the Secrets they name read
/// from the API server through `client` (one GET per Secret, made only when there is
/// something to tell). Problems as [`resolve`] words them; a Secret that cannot be read
/// is named with the API server's reason.
pub async fn receivers_for(
    client: &kube::Client,
    notify: &[Notify],
    namespace: &str,
    phase: Phase,
) -> (Vec<Receiver>, Vec<String>) {
    let wanted = receivers_of(notify, phase);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut read = BTreeMap::new();
    let mut unreadable = BTreeMap::new();
    for name in secrets_read_by(&wanted) {
        match secrets.get_opt(&name).await {
            Ok(Some(secret)) => {
                let data = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, value)| (key, value.0))
                    .collect::<BTreeMap<_, _>>();
                read.insert(name, data);
            }
            Ok(None) => {}
            Err(error) => {
                unreadable.insert(name, crate::failure::server_message(&error));
            }
        }
    }
    let mut readable: Vec<Notify> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    for receiver in wanted {
        let cannot_read = receiver
            .url_from
            .as_ref()
            .and_then(|from| unreadable.get(&from.name).map(|why| (from, why)));
        match cannot_read {
            Some((from, why)) => problems.push(format!(
                "notify receiver {}: cannot read Secret {namespace}/{}: {why}",
                receiver.name, from.name
            )),
            None => readable.push(receiver),
        }
    }
    let (ready, more) = resolve(&readable, namespace, |_, name| read.get(name).cloned());
    problems.extend(more);
    (ready, problems)
}

/// `text` when it is an absolute `http`/`https` URL with a host.
fn checked(text: &str) -> Option<String> {
    let url = Url::parse(text).ok()?;
    let web = matches!(url.scheme(), "http" | "https") && url.host().is_some();
    web.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SecretKeyRef;

    const HOOK: &str = "https://hooks.example.com/services/T000/B000/Sup3rS3cr3tT0k3n";

    fn inline(name: &str, url: &str) -> Notify {
        Notify {
            name: name.into(),
            url: Some(url.into()),
            ..Notify::default()
        }
    }

    fn from_secret(name: &str, secret: &str, key: &str) -> Notify {
        Notify {
            name: name.into(),
            url_from: Some(SecretKeyRef {
                name: secret.into(),
                key: key.into(),
            }),
            format: NotifyFormat::Slack,
            ..Notify::default()
        }
    }

    fn secrets(namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        match (namespace, name) {
            ("shop", "slack") => Some(BTreeMap::from([
                ("url".to_string(), format!("{HOOK}\n").into_bytes()),
                ("token".to_string(), b"Sup3rS3cr3tT0k3n".to_vec()),
                ("binary".to_string(), vec![0xff, 0xfe, 0x00]),
            ])),
            _ => None,
        }
    }

    #[test]
    fn urls_come_inline_or_from_a_secret_key_trimmed() {
        let (ready, problems) = resolve(
            &[
                inline("ops", "http://127.0.0.1:9000/hook"),
                from_secret("chat", "slack", "url"),
            ],
            "shop",
            secrets,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            ready,
            vec![
                Receiver {
                    name: "ops".into(),
                    url: "http://127.0.0.1:9000/hook".into(),
                    format: NotifyFormat::Json,
                },
                Receiver {
                    name: "chat".into(),
                    url: HOOK.into(),
                    format: NotifyFormat::Slack,
                },
            ]
        );
        // The URL never shows in a receiver's Debug (logs, panics).
        assert!(!format!("{ready:?}").contains("Sup3rS3cr3tT0k3n"));
    }

    #[test]
    fn problems_name_receiver_secret_and_key_never_the_value() {
        let (ready, problems) = resolve(
            &[
                from_secret("missing-secret", "nope", "url"),
                from_secret("missing-key", "slack", "webhook"),
                from_secret("not-a-url", "slack", "token"),
                from_secret("not-text", "slack", "binary"),
                inline("bad-inline", "ftp://files.example.com/Sup3rS3cr3tT0k3n"),
                Notify {
                    name: "both".into(),
                    url: Some(HOOK.into()),
                    url_from: Some(SecretKeyRef {
                        name: "slack".into(),
                        key: "url".into(),
                    }),
                    ..Notify::default()
                },
                Notify {
                    name: "neither".into(),
                    ..Notify::default()
                },
            ],
            "shop",
            secrets,
        );
        assert!(ready.is_empty());
        assert_eq!(
            problems,
            vec![
                "notify receiver missing-secret: Secret shop/nope not found",
                "notify receiver missing-key: Secret shop/slack has no key webhook",
                "notify receiver not-a-url: key token of Secret shop/slack does not hold an http(s) URL",
                "notify receiver not-text: key binary of Secret shop/slack does not hold an http(s) URL",
                "notify receiver bad-inline: url is not an http(s) URL",
                "notify receiver both: set url or urlFrom, not both",
                "notify receiver neither: has neither url nor urlFrom",
            ]
        );
        assert!(problems.iter().all(|p| !p.contains("Sup3rS3cr3tT0k3n")));
    }

    #[test]
    fn a_secret_is_read_from_the_apps_namespace_only() {
        let (ready, problems) = resolve(&[from_secret("chat", "slack", "url")], "other", secrets);
        assert!(ready.is_empty());
        assert_eq!(
            problems,
            vec!["notify receiver chat: Secret other/slack not found"]
        );
    }

    #[test]
    fn receivers_want_the_default_phases_or_those_they_list() {
        let everything = inline("all", HOOK);
        let failures = Notify {
            on: vec![Phase::Failed, Phase::RolledBack],
            ..inline("failures", HOOK)
        };
        for phase in [
            Phase::Healthy,
            Phase::Blocked,
            Phase::Failed,
            Phase::RollingBack,
            Phase::RolledBack,
        ] {
            assert!(wants(&everything, phase), "{phase}");
        }
        assert!(!wants(&everything, Phase::Applying));
        assert!(wants(&failures, Phase::Failed));
        assert!(!wants(&failures, Phase::Healthy));
        let names = |list: Vec<Notify>| list.into_iter().map(|r| r.name).collect::<Vec<_>>();
        let both = [everything, failures];
        assert_eq!(names(receivers_of(&both, Phase::Healthy)), vec!["all"]);
        assert_eq!(
            names(receivers_of(&both, Phase::RolledBack)),
            vec!["all", "failures"]
        );
    }

    #[test]
    fn the_secrets_to_read_are_listed_once() {
        let list = [
            from_secret("a", "slack", "url"),
            from_secret("b", "slack", "other"),
            from_secret("c", "pager", "url"),
            inline("d", HOOK),
        ];
        assert_eq!(secrets_read_by(&list), vec!["pager", "slack"]);
    }
}
