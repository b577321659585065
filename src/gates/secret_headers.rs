//! `headersFrom`: request header values read from Secrets of the app's own namespace,
//! for `http` gates and smoke steps. This is how a ClusterRunbook (whose literal text
//! every tenant shares) sends a credential to an app's endpoint: the value is the
//! tenant's own, read as its identity (see `controller::boundary::runbook_reads`).
//!
//! Values are held as [`HeaderValue`]s marked sensitive, so no `Debug` prints them;
//! messages name the gate, the header, the Secret and the key, never what it holds.
//! They are added after a smoke step's `{{.steps.…}}` references are filled in, so a
//! Secret's text is never read as a template.

use std::collections::BTreeMap;
use std::fmt;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::api::{Gate, HeaderFrom, HttpGate};

/// The `headersFrom` values of a Runbook's gates: by gate name, then by smoke step name
/// (the empty name for an `http` gate's one request).
#[derive(Clone, Default)]
pub struct SecretHeaders {
    by_request: BTreeMap<String, BTreeMap<String, HeaderMap>>,
}

/// The longest header value taken from a Secret (servers commonly refuse 8 KiB headers).
const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// Shared by every request that reads no Secret.
static NONE: std::sync::LazyLock<HeaderMap> = std::sync::LazyLock::new(HeaderMap::new);

impl fmt::Debug for SecretHeaders {
    /// Gate, step and header names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .by_request
            .iter()
            .flat_map(|(gate, steps)| {
                steps.iter().flat_map(move |(step, headers)| {
                    headers.keys().map(move |name| format!("{gate}/{step}: {name}"))
                })
            })
            .collect();
        f.debug_struct("SecretHeaders").field("headers", &names).finish()
    }
}

impl SecretHeaders {
    /// No header from any Secret.
    pub fn none() -> &'static Self {
        static NO_SECRET_HEADERS: SecretHeaders = SecretHeaders {
            by_request: BTreeMap::new(),
        };
        &NO_SECRET_HEADERS
    }

    /// Reads the `headersFrom` values of `gates` with `secret` (a Secret's `data` by
    /// name, in the app's namespace `namespace`). `Err` names the first one that cannot
    /// be read: the gate, the field, the Secret and the key.
    pub fn read(
        gates: &[Gate],
        namespace: &str,
        secret: impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>>,
    ) -> Result<Self, String> {
        let mut by_request: BTreeMap<String, BTreeMap<String, HeaderMap>> = BTreeMap::new();
        for (index, gate) in gates.iter().enumerate() {
            let requests: Vec<(String, String, &HttpGate)> = match (&gate.http, &gate.smoke) {
                (Some(http), _) => vec![(String::new(), format!("spec.gates[{index}].http"), http)],
                (_, Some(smoke)) => smoke
                    .steps
                    .iter()
                    .enumerate()
                    .map(|(step, s)| {
                        (
                            s.name.clone(),
                            format!("spec.gates[{index}].smoke.steps[{step}]"),
                            &s.request,
                        )
                    })
                    .collect(),
                _ => Vec::new(),
            };
            for (step, at, request) in requests {
                if request.headers_from.is_empty() {
                    continue;
                }
                let mut headers = HeaderMap::new();
                for (name, from) in &request.headers_from {
                    let field = format!("{at}.headersFrom[{name:?}]");
                    let value = header_value(from, namespace, &secret)
                        .map_err(|why| format!("gate {}: {field}: {why}", gate.name))?;
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("gate {}: {field}: is not a valid header name", gate.name))?;
                    headers.insert(name, value);
                }
                by_request
                    .entry(gate.name.clone())
                    .or_default()
                    .insert(step, headers);
            }
        }
        Ok(Self { by_request })
    }

    /// The headers of an `http` gate's request.
    pub fn of_http(&self, gate: &str) -> &HeaderMap {
        self.of_request(gate, "")
    }

    /// The headers of a smoke step's request.
    pub fn of_request(&self, gate: &str, step: &str) -> &HeaderMap {
        self.by_request
            .get(gate)
            .and_then(|steps| steps.get(step))
            .unwrap_or(&NONE)
    }
}

/// Whether any gate of `gates` takes a header from a Secret.
pub fn reads_secrets(gates: &[Gate]) -> bool {
    gates.iter().any(|gate| {
        gate.http
            .as_ref()
            .is_some_and(|http| !http.headers_from.is_empty())
            || gate
                .smoke
                .as_ref()
                .is_some_and(|smoke| smoke.steps.iter().any(|s| !s.request.headers_from.is_empty()))
    })
}

fn header_value(
    from: &HeaderFrom,
    namespace: &str,
    secret: &impl Fn(&str) -> Option<BTreeMap<String, Vec<u8>>>,
) -> Result<HeaderValue, String> {
    let reference = &from.secret_key_ref;
    let data = secret(&reference.name)
        .ok_or_else(|| format!("Secret {namespace}/{} does not exist", reference.name))?;
    let held = data.get(&reference.key).ok_or_else(|| {
        format!(
            "Secret {namespace}/{} has no key {}",
            reference.name, reference.key
        )
    })?;
    // A Secret written with `echo` ends in a line break no header may carry.
    let held = held.strip_suffix(b"\n").unwrap_or(held);
    // A Secret may hold 1 MiB; no server takes a header that long, and each probe
    // would send it.
    if held.len() > MAX_HEADER_VALUE_BYTES {
        return Err(format!(
            "the value of key {} of Secret {namespace}/{} is {} bytes, over the {MAX_HEADER_VALUE_BYTES} \
             bytes a header value may have",
            reference.key,
            reference.name,
            held.len()
        ));
    }
    let mut bytes = from.prefix.clone().unwrap_or_default().into_bytes();
    bytes.extend_from_slice(held);
    let mut value = HeaderValue::from_bytes(&bytes).map_err(|_| {
        format!(
            "the value of key {} of Secret {namespace}/{} is not a valid header value (a line break or \
             another control character)",
            reference.key, reference.name
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(yaml: &str) -> Vec<Gate> {
        serde_saphyr::from_str(yaml).expect("gates")
    }

    const GATES: &str = r#"
- name: api
  http: {url: "http://h/", headersFrom: {Authorization: {secretKeyRef: {name: api, key: token}, prefix: "Bearer "}}}
- name: flow
  smoke:
    steps:
      - {name: login, url: "http://h/login", headersFrom: {X-Api-Key: {secretKeyRef: {name: api, key: key}}}}
      - {name: plain, url: "http://h/"}
"#;

    fn api_secret(name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        (name == "api").then(|| {
            BTreeMap::from([
                ("token".to_string(), b"canary-token\n".to_vec()),
                ("key".to_string(), b"canary-key".to_vec()),
                ("broken".to_string(), b"a\r\nInjected: yes".to_vec()),
                ("huge".to_string(), vec![b'x'; MAX_HEADER_VALUE_BYTES + 1]),
            ])
        })
    }

    #[test]
    fn values_come_from_the_secret_with_their_prefix_and_are_never_printed() {
        let read = SecretHeaders::read(&gates(GATES), "mine", api_secret).expect("read");
        assert_eq!(read.of_http("api")["authorization"], "Bearer canary-token");
        assert_eq!(read.of_request("flow", "login")["x-api-key"], "canary-key");
        assert!(read.of_request("flow", "plain").is_empty());
        assert!(read.of_http("missing").is_empty());
        assert!(read.of_http("api")["authorization"].is_sensitive());
        let printed = format!("{read:?} {:?}", read.of_http("api"));
        assert!(!printed.contains("canary"), "{printed}");
        assert!(printed.contains("api/: authorization"), "{printed}");
        assert!(reads_secrets(&gates(GATES)));
        assert!(!reads_secrets(&gates("[{name: a, http: {url: 'http://h/'}}]")));
    }

    #[test]
    fn what_cannot_be_read_is_named_without_its_value() {
        let missing_key = GATES.replace("key: key", "key: nope");
        let missing_secret = GATES.replace("name: api, key: token", "name: gone, key: token");
        let broken = GATES.replace("key: key", "key: broken");
        let huge = GATES.replace("key: key", "key: huge");
        let problems: Vec<String> = [missing_key, missing_secret, broken, huge]
            .iter()
            .map(|yaml| SecretHeaders::read(&gates(yaml), "mine", api_secret).expect_err("unreadable"))
            .collect();
        assert_eq!(
            problems,
            [
                "gate flow: spec.gates[1].smoke.steps[0].headersFrom[\"X-Api-Key\"]: Secret mine/api has no key nope",
                "gate api: spec.gates[0].http.headersFrom[\"Authorization\"]: Secret mine/gone does not exist",
                "gate flow: spec.gates[1].smoke.steps[0].headersFrom[\"X-Api-Key\"]: the value of key broken of \
                 Secret mine/api is not a valid header value (a line break or another control character)",
                "gate flow: spec.gates[1].smoke.steps[0].headersFrom[\"X-Api-Key\"]: the value of key huge of \
                 Secret mine/api is 8193 bytes, over the 8192 bytes a header value may have",
            ]
        );
        assert!(!problems.concat().contains("Injected"));
    }
}
