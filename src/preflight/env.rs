//! Where each environment variable of a container gets its value, as the kubelet
//! computes it, and the Secrets and ConfigMaps it reads (rendered by the revision
//! itself, or in the cluster).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::ByteString;
use serde_json::Value;

use super::ClusterLookup;
use super::workloads::{array, optional, str_field};
use crate::render::Manifest;

/// The data of a Secret or ConfigMap.
pub(super) struct Data {
    /// The revision renders the object itself (its data is the manifest's).
    pub rendered: bool,
    /// Key → value; `None` for a rendered value that is not valid base64 (the key
    /// exists, its value is not known).
    pub entries: BTreeMap<String, Option<EnvValue>>,
}

/// A value read for a check: its Debug output hides it, since it may come from a
/// Secret.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct EnvValue(pub String);

impl fmt::Debug for EnvValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EnvValue(..)")
    }
}

impl EnvValue {
    fn from_bytes(bytes: &[u8]) -> EnvValue {
        EnvValue(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// The Secrets and ConfigMaps a container can read: those the revision renders, then
/// those in the cluster.
pub(super) struct KnownObjects<'a> {
    secrets: BTreeMap<(String, String), BTreeMap<String, Option<EnvValue>>>,
    config_maps: BTreeMap<(String, String), BTreeMap<String, Option<EnvValue>>>,
    cluster: &'a dyn ClusterLookup,
}

impl<'a> KnownObjects<'a> {
    pub fn new(objects: &[Manifest], namespace: &str, cluster: &'a dyn ClusterLookup) -> Self {
        let mut secrets = BTreeMap::new();
        let mut config_maps = BTreeMap::new();
        for manifest in objects {
            if manifest.group() != "" {
                continue;
            }
            let key = (
                manifest.namespace().unwrap_or(namespace).to_string(),
                manifest.name().to_string(),
            );
            match manifest.kind() {
                "Secret" => {
                    secrets.insert(key, rendered_secret_data(&manifest.object));
                }
                "ConfigMap" => {
                    config_maps.insert(key, rendered_config_map_data(&manifest.object));
                }
                _ => {}
            }
        }
        KnownObjects {
            secrets,
            config_maps,
            cluster,
        }
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Option<Data> {
        if let Some(entries) = self.secrets.get(&(namespace.into(), name.into())) {
            return Some(Data {
                rendered: true,
                entries: entries.clone(),
            });
        }
        let data = self.cluster.secret(namespace, name)?;
        Some(Data {
            rendered: false,
            entries: data
                .iter()
                .map(|(key, value)| (key.clone(), Some(EnvValue::from_bytes(value))))
                .collect(),
        })
    }

    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Data> {
        if let Some(entries) = self.config_maps.get(&(namespace.into(), name.into())) {
            return Some(Data {
                rendered: true,
                entries: entries.clone(),
            });
        }
        let data = self.cluster.config_map(namespace, name)?;
        Some(Data {
            rendered: false,
            entries: data
                .into_iter()
                .map(|(key, value)| (key, Some(EnvValue(value))))
                .collect(),
        })
    }

    /// Does the revision render Secret `namespace/name` itself?
    pub fn renders_secret(&self, namespace: &str, name: &str) -> bool {
        self.secrets.contains_key(&(namespace.into(), name.into()))
    }

    pub fn of(&self, kind: ObjectKind, namespace: &str, name: &str) -> Option<Data> {
        match kind {
            ObjectKind::Secret => self.secret(namespace, name),
            ObjectKind::ConfigMap => self.config_map(namespace, name),
        }
    }
}

/// A rendered Secret's keys and values: `data` (base64) overlaid with `stringData`,
/// as the API server stores them.
fn rendered_secret_data(secret: &Value) -> BTreeMap<String, Option<EnvValue>> {
    let mut entries = BTreeMap::new();
    if let Some(data) = secret.get("data").and_then(Value::as_object) {
        for (key, value) in data {
            let decoded = serde_json::from_value::<ByteString>(value.clone())
                .ok()
                .map(|bytes| EnvValue::from_bytes(&bytes.0));
            entries.insert(key.clone(), decoded);
        }
    }
    if let Some(data) = secret.get("stringData").and_then(Value::as_object) {
        for (key, value) in data {
            entries.insert(key.clone(), value.as_str().map(|v| EnvValue(v.to_string())));
        }
    }
    entries
}

fn rendered_config_map_data(config_map: &Value) -> BTreeMap<String, Option<EnvValue>> {
    config_map
        .get("data")
        .and_then(Value::as_object)
        .map(|data| {
            data.iter()
                .map(|(key, value)| (key.clone(), value.as_str().map(|v| EnvValue(v.to_string()))))
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ObjectKind {
    Secret,
    ConfigMap,
}

impl ObjectKind {
    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Secret => "Secret",
            ObjectKind::ConfigMap => "ConfigMap",
        }
    }
}

/// Where a container's variable gets its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// `value:` in the manifest.
    Literal,
    /// A key of a Secret or ConfigMap, by `valueFrom` or (`env_from`) `envFrom`.
    Object {
        kind: ObjectKind,
        /// `namespace/name`.
        object: String,
        key: String,
        env_from: bool,
    },
    /// `fieldRef` / `resourceFieldRef`: what it reads (`fieldRef metadata.name`).
    Downward(String),
    /// A literal expanding `$(NAME)` references to other variables.
    Expansion {
        references: Vec<String>,
        /// One of them comes from a Secret: the value is a Secret's to hide.
        from_secret: bool,
    },
}

impl Source {
    /// The value comes (wholly or in part) from a Secret.
    pub fn is_from_secret(&self) -> bool {
        match self {
            Source::Object { kind, .. } => *kind == ObjectKind::Secret,
            Source::Expansion { from_secret, .. } => *from_secret,
            Source::Literal | Source::Downward(_) => false,
        }
    }
}

/// The value of a variable, as far as it can be known before the pod runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Known {
    Value(EnvValue),
    /// Known only in the pod (`fieldRef`, or built from such a value).
    InPod,
    /// Its Secret or ConfigMap (or key) is missing: reported as a reference miss, so
    /// nothing else is judged about it.
    Broken,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Setting {
    pub source: Source,
    pub value: Known,
}

/// A container's environment as the kubelet would build it.
#[derive(Debug, Default)]
pub(super) struct ContainerEnv {
    pub vars: BTreeMap<String, Setting>,
    /// An `envFrom` source is missing (and not optional): any variable may come from
    /// it once it exists, so the absence of a variable proves nothing.
    pub incomplete: bool,
    /// The variables whose `$(VAR)` expansion went over a budget: each is a miss, and
    /// its value is not built.
    pub over_budget: Vec<OverBudget>,
}

/// The longest value one `$(VAR)` expansion may build, in bytes. The kubelet has no
/// cap, but Linux refuses to start a process with one environment string over
/// `MAX_ARG_STRLEN` (128 KiB), so a longer value cannot run anyway; without a cap,
/// `Vn = "$(Vn-1)$(Vn-1)"` doubles 30 times into 16 GiB.
pub const MAX_EXPANDED_VALUE: usize = 128 * 1024;
/// The most bytes expansions may build for one container, all variables together: the
/// whole environment and arguments of a Linux process are limited to about 2 MiB
/// (a quarter of the default 8 MiB stack), so a container over this cannot start.
pub const MAX_EXPANDED_CONTAINER: usize = 2 * 1024 * 1024;

/// An expansion refused for its size, before it was built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OverBudget {
    pub variable: String,
    /// The sentence: the limit and the figure.
    pub message: String,
}

/// What expansions may still build in one container.
struct Budget {
    /// Bytes built so far by expansions of this container.
    spent: usize,
}

/// The variables of `container` (a container spec) in `namespace`: `envFrom` in
/// order, then `env` in order, later definitions winning, as the kubelet does.
pub(super) fn resolve(container: &Value, namespace: &str, known: &KnownObjects<'_>) -> ContainerEnv {
    let mut env = ContainerEnv::default();
    let mut budget = Budget { spent: 0 };
    for source in array(container, "envFrom") {
        let prefix = str_field(source, "prefix").unwrap_or_default();
        let Some((kind, reference)) = env_from_reference(source) else {
            continue;
        };
        let name = str_field(reference, "name").unwrap_or_default();
        match known.of(kind, namespace, name) {
            Some(data) => {
                for (key, value) in data.entries {
                    env.vars.insert(
                        format!("{prefix}{key}"),
                        Setting {
                            source: Source::Object {
                                kind,
                                object: format!("{namespace}/{name}"),
                                key,
                                env_from: true,
                            },
                            value: value.map_or(Known::InPod, Known::Value),
                        },
                    );
                }
            }
            None if optional(reference) => {}
            None => env.incomplete = true,
        }
    }
    for variable in array(container, "env") {
        let Some(name) = str_field(variable, "name") else {
            continue;
        };
        // No value and no valueFrom: the variable is set, to "". A non-empty value
        // goes first, as in the kubelet (the API server refuses both anyway).
        let literal = str_field(variable, "value").unwrap_or_default();
        if literal.is_empty()
            && let Some(from) = from_value_from(variable.get("valueFrom"), namespace, known)
        {
            // None: an optional reference to what does not exist. The kubelet skips
            // the entry, and an earlier definition (from envFrom) stays.
            if let Some(setting) = from {
                env.vars.insert(name.to_string(), setting);
            }
            continue;
        }
        let setting = match expand(literal, &env.vars, &mut budget) {
            Ok(setting) => setting,
            Err(message) => {
                env.over_budget.push(OverBudget {
                    variable: name.to_string(),
                    message,
                });
                // Not built: nothing else is judged about it, and a later reference
                // to it builds nothing either.
                Setting {
                    source: Source::Literal,
                    value: Known::Broken,
                }
            }
        };
        env.vars.insert(name.to_string(), setting);
    }
    env
}

/// The Secret or ConfigMap an `envFrom` entry reads.
pub(super) fn env_from_reference(source: &Value) -> Option<(ObjectKind, &Value)> {
    if let Some(reference) = source.get("secretRef") {
        Some((ObjectKind::Secret, reference))
    } else {
        source
            .get("configMapRef")
            .map(|reference| (ObjectKind::ConfigMap, reference))
    }
}

/// The Secret or ConfigMap key a `valueFrom` reads.
pub(super) fn key_reference(value_from: &Value) -> Option<(ObjectKind, &Value)> {
    if let Some(reference) = value_from.get("secretKeyRef") {
        Some((ObjectKind::Secret, reference))
    } else {
        value_from
            .get("configMapKeyRef")
            .map(|reference| (ObjectKind::ConfigMap, reference))
    }
}

/// `None`: no `valueFrom`. `Some(None)`: an optional reference to what does not exist.
fn from_value_from(
    value_from: Option<&Value>,
    namespace: &str,
    known: &KnownObjects<'_>,
) -> Option<Option<Setting>> {
    let value_from = value_from.filter(|v| v.is_object())?;
    if let Some((kind, reference)) = key_reference(value_from) {
        let name = str_field(reference, "name").unwrap_or_default();
        let key = str_field(reference, "key").unwrap_or_default();
        let value = match known
            .of(kind, namespace, name)
            .map(|data| data.entries.get(key).cloned())
        {
            Some(Some(Some(value))) => Known::Value(value),
            Some(Some(None)) => Known::InPod,
            _ if optional(reference) => return Some(None),
            _ => Known::Broken,
        };
        return Some(Some(Setting {
            source: Source::Object {
                kind,
                object: format!("{namespace}/{name}"),
                key: key.to_string(),
                env_from: false,
            },
            value,
        }));
    }
    let what = if let Some(field) = value_from.get("fieldRef") {
        format!("fieldRef {}", str_field(field, "fieldPath").unwrap_or_default())
    } else if let Some(resource) = value_from.get("resourceFieldRef") {
        format!(
            "resourceFieldRef {}",
            str_field(resource, "resource").unwrap_or_default()
        )
    } else {
        "valueFrom".to_string()
    };
    Some(Some(Setting {
        source: Source::Downward(what),
        value: Known::InPod,
    }))
}

/// One piece of an expanded literal, in the kubelet's reading of `$` (its
/// `third_party/forked/golang/expansion`): `$$` is a `$`, `$(NAME)` a reference, a
/// reference to an undefined variable stays as written, an unclosed `$(` and a `$`
/// before anything else stay as they are.
enum Piece<'a> {
    Text(&'a str),
    Reference(&'a str),
}

/// The pieces of `literal`, in order, handed to `each`.
fn pieces<'a>(literal: &'a str, mut each: impl FnMut(Piece<'a>)) {
    let mut rest = literal;
    while let Some(dollar) = rest.find('$') {
        each(Piece::Text(&rest[..dollar]));
        let after = &rest[dollar + 1..];
        if after.is_empty() {
            // A '$' at the very end stays.
            each(Piece::Text("$"));
            rest = after;
            break;
        }
        if let Some(after_escape) = after.strip_prefix('$') {
            each(Piece::Text("$"));
            rest = after_escape;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(close) => {
                    each(Piece::Reference(&inner[..close]));
                    rest = &inner[close + 1..];
                }
                None => {
                    // Incomplete reference: "$(" stays and scanning goes on after it.
                    each(Piece::Text("$("));
                    rest = inner;
                }
            }
        } else {
            // A '$' that starts no expression stays, with the character after it.
            let next = after.chars().next().map_or(0, char::len_utf8);
            each(Piece::Text(&rest[dollar..dollar + 1 + next]));
            rest = &after[next..];
        }
    }
    each(Piece::Text(rest));
}

/// A literal with its `$(NAME)` references to variables defined before it expanded,
/// by the kubelet's rules (see [`Piece`]); not recursive: a value read is not expanded
/// again. `Err`: the value, or all expansions of the container, would go over
/// [`MAX_EXPANDED_VALUE`] or [`MAX_EXPANDED_CONTAINER`]; the size is counted before
/// anything is built.
fn expand(
    literal: &str,
    defined: &BTreeMap<String, Setting>,
    budget: &mut Budget,
) -> Result<Setting, String> {
    let mut size: usize = 0;
    let mut copies = false;
    pieces(literal, |piece| {
        size = size.saturating_add(match piece {
            Piece::Text(text) => text.len(),
            Piece::Reference(name) => match defined.get(name) {
                Some(Setting {
                    value: Known::Value(value),
                    ..
                }) => {
                    copies = true;
                    value.0.len()
                }
                Some(_) => 0,
                None => name.len() + 3,
            },
        });
    });
    // A literal that copies no value is no bigger than the manifest it is written in.
    if !copies {
        size = 0;
    }
    if size > MAX_EXPANDED_VALUE {
        return Err(format!(
            "its $(VAR) expansion would be {size} bytes, over the limit of {MAX_EXPANDED_VALUE} bytes for one variable"
        ));
    }
    if budget.spent.saturating_add(size) > MAX_EXPANDED_CONTAINER {
        return Err(format!(
            "the container's $(VAR) expansions would reach {} bytes with it, over the limit of {MAX_EXPANDED_CONTAINER} bytes for one container",
            budget.spent.saturating_add(size)
        ));
    }
    budget.spent += size;
    let mut expanded = String::with_capacity(size.max(literal.len()));
    let mut references: Vec<String> = Vec::new();
    let mut value_known = true;
    let mut from_secret = false;
    pieces(literal, |piece| match piece {
        Piece::Text(text) => expanded.push_str(text),
        Piece::Reference(name) => match defined.get(name) {
            Some(setting) => {
                references.push(name.to_string());
                from_secret |= setting.source.is_from_secret();
                match &setting.value {
                    Known::Value(value) => expanded.push_str(&value.0),
                    Known::InPod | Known::Broken => value_known = false,
                }
            }
            None => {
                expanded.push_str("$(");
                expanded.push_str(name);
                expanded.push(')');
            }
        },
    });
    if references.is_empty() {
        return Ok(Setting {
            source: Source::Literal,
            value: Known::Value(EnvValue(expanded)),
        });
    }
    // `$(OTHER)` alone is OTHER, wherever it comes from.
    if references.len() == 1 && literal == format!("$({})", references[0]) {
        return Ok(defined[&references[0]].clone());
    }
    Ok(Setting {
        source: Source::Expansion {
            references,
            from_secret,
        },
        value: if value_known {
            Known::Value(EnvValue(expanded))
        } else {
            Known::InPod
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(value: &str) -> Setting {
        Setting {
            source: Source::Literal,
            value: Known::Value(EnvValue(value.into())),
        }
    }

    fn expanded(literal: &str, defined: &[(&str, Setting)]) -> Setting {
        let defined = defined
            .iter()
            .map(|(name, setting)| (name.to_string(), setting.clone()))
            .collect();
        expand(literal, &defined, &mut Budget { spent: 0 }).unwrap()
    }

    fn value_of(setting: &Setting) -> &str {
        match &setting.value {
            Known::Value(value) => &value.0,
            other => panic!("no value: {other:?}"),
        }
    }

    #[test]
    fn expansion_follows_the_kubelet() {
        let host = ("HOST", literal("db"));
        for (input, want) in [
            ("plain", "plain"),
            ("$(HOST):5432", "db:5432"),
            ("$$(HOST)", "$(HOST)"),
            ("$(MISSING)", "$(MISSING)"),
            ("a$b", "a$b"),
            ("end$", "end$"),
            ("$(HOST", "$(HOST"),
            ("$(HOST)$(HOST)", "dbdb"),
            ("€$€", "€$€"),
        ] {
            assert_eq!(
                value_of(&expanded(input, std::slice::from_ref(&host))),
                want,
                "{input}"
            );
        }
        assert_eq!(
            expanded("$$(HOST)", std::slice::from_ref(&host)).source,
            Source::Literal
        );
    }

    #[test]
    fn an_expansion_of_a_secret_is_the_secrets() {
        let password = Setting {
            source: Source::Object {
                kind: ObjectKind::Secret,
                object: "app/db".into(),
                key: "password".into(),
                env_from: false,
            },
            value: Known::Value(EnvValue("pw".into())),
        };
        let alone = expanded("$(PASSWORD)", &[("PASSWORD", password.clone())]);
        assert_eq!(alone, password);
        let built = expanded("postgres://u:$(PASSWORD)@db", &[("PASSWORD", password)]);
        assert_eq!(
            built.source,
            Source::Expansion {
                references: vec!["PASSWORD".into()],
                from_secret: true
            }
        );
        assert_eq!(value_of(&built), "postgres://u:pw@db");
        let in_pod = Setting {
            source: Source::Downward("fieldRef status.podIP".into()),
            value: Known::InPod,
        };
        assert_eq!(expanded("http://$(IP):80", &[("IP", in_pod)]).value, Known::InPod);
    }

    /// The kubelet's `Expand` (k8s.io/kubernetes third_party/forked/golang/expansion),
    /// step for step, with its mapping of an undefined name to `$(name)`: the oracle.
    fn kubelet_expand(input: &str, mapping: &BTreeMap<String, String>) -> String {
        let bytes = input.as_bytes();
        let mut out = String::new();
        let mut checkpoint = 0;
        let mut cursor = 0;
        while cursor < bytes.len() {
            if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
                out.push_str(&input[checkpoint..cursor]);
                let rest = &input[cursor + 1..];
                let (read, is_var, advance) = match rest.as_bytes()[0] {
                    b'$' => ("$".to_string(), false, 1),
                    b'(' => match rest[1..].find(')') {
                        Some(close) => (rest[1..1 + close].to_string(), true, close + 2),
                        None => ("$(".to_string(), false, 1),
                    },
                    // Go writes `string(input[0])`, one byte taken as a code point,
                    // which garbles a multi-byte character; bosun keeps the character.
                    _ => {
                        let next = rest.chars().next().map_or(0, char::len_utf8);
                        (format!("${}", &rest[..next]), false, next)
                    }
                };
                if is_var {
                    match mapping.get(&read) {
                        Some(value) => out.push_str(value),
                        None => out.push_str(&format!("$({read})")),
                    }
                } else {
                    out.push_str(&read);
                }
                cursor += advance;
                checkpoint = cursor + 1;
            }
            cursor += 1;
        }
        out.push_str(&input[checkpoint..]);
        out
    }

    fn container_env(entries: &[(String, String)]) -> ContainerEnv {
        let env: Vec<Value> = entries
            .iter()
            .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
            .collect();
        let lookup = super::super::InMemoryLookup::default();
        let known = KnownObjects::new(&[], "app", &lookup);
        resolve(&serde_json::json!({"name": "api", "env": env}), "app", &known)
    }

    #[test]
    fn the_doubling_bomb_is_refused_with_the_limit_and_the_figure() {
        let mut entries = vec![("V0".to_string(), "0123456789abcdef".to_string())];
        for n in 1..=30 {
            entries.push((format!("V{n}"), format!("$(V{})$(V{})", n - 1, n - 1)));
        }
        let env = container_env(&entries);
        // 16 · 2^13 = 131,072 is the last size within the limit.
        let first = &env.over_budget[0];
        assert_eq!(first.variable, "V14");
        assert!(first.message.contains("262144 bytes"), "{}", first.message);
        assert!(
            first.message.contains(&MAX_EXPANDED_VALUE.to_string()),
            "{}",
            first.message
        );
        assert_eq!(
            env.vars["V13"].value,
            Known::Value(EnvValue("0123456789abcdef".repeat(1 << 13)))
        );
        assert_eq!(env.vars["V14"].value, Known::Broken);
        // What refers to a refused value builds nothing.
        assert_eq!(env.vars["V30"].value, Known::InPod);
    }

    #[test]
    fn many_large_variables_are_refused_by_the_container_budget() {
        let big = "x".repeat(MAX_EXPANDED_VALUE / 2);
        let mut entries = vec![("BIG".to_string(), big)];
        for n in 0..40 {
            entries.push((format!("COPY{n}"), "$(BIG)$(BIG)".to_string()));
        }
        let env = container_env(&entries);
        assert!(!env.over_budget.is_empty());
        assert!(
            env.over_budget[0]
                .message
                .contains(&MAX_EXPANDED_CONTAINER.to_string()),
            "{}",
            env.over_budget[0].message
        );
    }

    fn total_built(env: &ContainerEnv) -> usize {
        env.vars
            .values()
            .filter(|setting| setting.source != Source::Literal)
            .map(|setting| match &setting.value {
                Known::Value(value) => value.0.len(),
                _ => 0,
            })
            .sum()
    }

    use proptest::prelude::*;

    /// A literal of pieces that matter to expansion: references (defined or not),
    /// escapes, stray `$` and parentheses, multi-byte text.
    fn literal_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            (0..6usize).prop_map(|n| format!("$(V{n})")),
            Just("$$".to_string()),
            Just("$".to_string()),
            Just("$(".to_string()),
            Just(")".to_string()),
            Just("x".to_string()),
            Just("€".to_string()),
            "[a-z]{0,40}",
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        /// Ordinary input: each value is what the kubelet computes, against the
        /// variables defined before it, once (not recursively).
        #[test]
        fn expansion_matches_the_kubelet(values in prop::collection::vec(literal_text(), 1..7)) {
            let entries: Vec<(String, String)> = values
                .iter()
                .enumerate()
                .map(|(n, value)| (format!("V{n}"), value.clone()))
                .collect();
            let env = container_env(&entries);
            prop_assert!(env.over_budget.is_empty());
            let mut mapping = BTreeMap::new();
            for (name, value) in &entries {
                let want = kubelet_expand(value, &mapping);
                prop_assert_eq!(&env.vars[name].value, &Known::Value(EnvValue(want.clone())), "{}", value);
                mapping.insert(name.clone(), want);
            }
        }

        /// Whatever the input, no value built is over the limit for one variable, all
        /// of a container's stay under the container's, and every refusal names both
        /// the limit and the figure.
        #[test]
        fn expansion_output_is_bounded(
            seed in "[a-z€]{0,64}",
            copies in prop::collection::vec((1..40usize, prop::collection::vec(0..8usize, 0..8)), 1..40),
        ) {
            let mut entries = vec![("V0".to_string(), seed)];
            for (n, (repeat, references)) in copies.iter().enumerate() {
                let text: String = references
                    .iter()
                    .map(|r| format!("$(V{})", r.min(&n)))
                    .collect::<String>()
                    .repeat(*repeat);
                entries.push((format!("V{}", n + 1), text));
            }
            let env = container_env(&entries);
            for setting in env.vars.values() {
                if let Known::Value(value) = &setting.value {
                    prop_assert!(value.0.len() <= MAX_EXPANDED_VALUE);
                }
            }
            prop_assert!(total_built(&env) <= MAX_EXPANDED_CONTAINER);
            for over in &env.over_budget {
                prop_assert!(over.message.contains("bytes, over the limit of"), "{}", over.message);
            }
        }
    }
}
