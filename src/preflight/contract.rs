//! The env contract (`spec.env`) judged against one container's environment.

use regex::Regex;

use super::PreflightMiss;
use super::env::{ContainerEnv, EnvValue, Known, ObjectKind, Setting, Source};
use super::workloads::{Container, Depth, Workload};
use crate::api::{EnvPolicy, EnvRule};

/// The `policy.pattern` of each rule, compiled once, anchored to the whole value.
pub(super) struct Patterns {
    compiled: Vec<Option<Regex>>,
    misses: Vec<PreflightMiss>,
}

impl Patterns {
    pub fn compile(rules: &[EnvRule]) -> Patterns {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut misses = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            let Some(pattern) = rule.policy.as_ref().and_then(|p| p.pattern.as_deref()) else {
                compiled.push(None);
                continue;
            };
            match Regex::new(&format!("^(?:{pattern})$")) {
                Ok(regex) => compiled.push(Some(regex)),
                Err(error) => {
                    // bosun-core has no regex engine, so this part of validating the
                    // Runbook happens here.
                    let field = format!("spec.env[{index}].policy.pattern");
                    let reason = match error {
                        regex::Error::Syntax(text) => text.lines().last().unwrap_or_default().to_string(),
                        other => other.to_string(),
                    };
                    misses.push(PreflightMiss {
                        workload: None,
                        container: None,
                        variable: Some(rule.name.clone()),
                        secret: None,
                        config_map: None,
                        key: None,
                        message: format!("{field}: {pattern:?} is not a regular expression ({reason})"),
                        field: Some(field),
                    });
                    compiled.push(None);
                }
            }
        }
        Patterns { compiled, misses }
    }

    pub fn misses(&self) -> Vec<PreflightMiss> {
        self.misses.clone()
    }

    fn of(&self, index: usize) -> Option<&Regex> {
        self.compiled.get(index).and_then(Option::as_ref)
    }
}

/// The value assumed for variable `name` when a container does not set it: the
/// `default` of its first rule that has one (a Runbook has one rule per variable;
/// validation says so, and this keeps preflight and injection agreeing if not).
pub(super) fn default_of<'r>(rules: &'r [EnvRule], name: &str) -> Option<&'r str> {
    rules
        .iter()
        .find_map(|rule| (rule.name == name).then_some(rule.default.as_deref()).flatten())
}

/// One container to judge, and the contract to judge it by.
pub(super) struct Target<'a> {
    pub rules: &'a [EnvRule],
    pub patterns: &'a Patterns,
    pub workload: &'a Workload<'a>,
    pub container: &'a Container<'a>,
    pub depth: Depth,
    pub env: &'a ContainerEnv,
}

/// The value a rule reads for a variable.
enum Effective<'a> {
    Set(&'a Setting),
    /// Not set; the Runbook's `default` is assumed.
    Default(&'a str),
    Absent,
}

impl Target<'_> {
    fn effective<'s>(&'s self, name: &str) -> Effective<'s> {
        if let Some(setting) = self.env.vars.get(name) {
            return Effective::Set(setting);
        }
        // Only app containers take the defaults: an init container's variables are
        // its own.
        if self.depth == Depth::Full
            && let Some(default) = default_of(self.rules, name)
        {
            return Effective::Default(default);
        }
        Effective::Absent
    }

    /// A value of variable `name` must not be quoted: it comes from a Secret, or
    /// the Runbook says it is secret.
    fn hidden(&self, name: &str, source: Option<&Source>) -> bool {
        source.is_some_and(Source::is_from_secret)
            || self.rules.iter().any(|rule| rule.name == name && rule.secret)
    }

    fn miss(&self, variable: &str, source: Option<&Source>, text: String) -> PreflightMiss {
        let (secret, config_map, key) = match source {
            Some(Source::Object {
                kind, object, key, ..
            }) => match kind {
                ObjectKind::Secret => (Some(object.clone()), None, Some(key.clone())),
                ObjectKind::ConfigMap => (None, Some(object.clone()), Some(key.clone())),
            },
            _ => (None, None, None),
        };
        PreflightMiss {
            workload: Some(self.workload.describe()),
            container: Some(self.container.name.to_string()),
            variable: Some(variable.to_string()),
            secret,
            config_map,
            key,
            field: None,
            message: format!(
                "{} {}: {text}",
                self.workload.describe(),
                self.container.describe()
            ),
        }
    }

    fn note(&self, text: String) -> String {
        format!(
            "{} {}: {text}",
            self.workload.describe(),
            self.container.describe()
        )
    }
}

/// Judges `target`'s container by every rule, adding what fails to `misses` and
/// what cannot be judged before the pod runs to `notes`.
pub(super) fn check(target: &Target<'_>, misses: &mut Vec<PreflightMiss>, notes: &mut Vec<String>) {
    // The tenant's input is at fault: Blocked, naming the limit and the figure.
    for over in &target.env.over_budget {
        misses.push(target.miss(
            &over.variable,
            None,
            format!("{}: {}", over.variable, over.message),
        ));
    }
    for (index, rule) in target.rules.iter().enumerate() {
        let name = rule.name.as_str();
        match target.effective(name) {
            Effective::Set(setting) => {
                if rule.secret
                    && let Some(text) = not_from_a_secret(name, setting)
                {
                    misses.push(target.miss(name, Some(&setting.source), text));
                }
                let Some(policy) = &rule.policy else { continue };
                match &setting.value {
                    Known::Value(value) => {
                        let subject = subject(name, &setting.source);
                        let hidden = target.hidden(name, Some(&setting.source));
                        for text in policy_misses(policy, target.patterns.of(index), value, hidden) {
                            misses.push(target.miss(
                                name,
                                Some(&setting.source),
                                format!("{subject} {text}"),
                            ));
                        }
                    }
                    Known::InPod => notes.push(target.note(format!(
                        "{name} {}; its value is known only in the pod, so its policy was not checked",
                        source_phrase(&setting.source)
                    ))),
                    Known::Broken => {}
                }
            }
            Effective::Default(default) => {
                let Some(policy) = &rule.policy else { continue };
                let subject = format!("{name} (not set; the Runbook's default applies)");
                let hidden = target.hidden(name, None);
                let value = EnvValue(default.to_string());
                for text in policy_misses(policy, target.patterns.of(index), &value, hidden) {
                    misses.push(target.miss(name, None, format!("{subject} {text}")));
                }
            }
            Effective::Absent => {
                // Init containers are judged only on what they set; a missing envFrom
                // source (already a miss) may hold the variable.
                if target.depth != Depth::Full || target.env.incomplete {
                    continue;
                }
                if rule.required {
                    misses.push(target.miss(name, None, format!("{name} is required and not set")));
                } else if let Some(condition) = &rule.required_when
                    && let Some(text) =
                        required_when(target, index, name, &condition.env, &condition.equals, notes)
                {
                    misses.push(target.miss(name, None, text));
                }
            }
        }
    }
}

/// Why a variable that `secret: true` covers does not come from a Secret, if so.
fn not_from_a_secret(name: &str, setting: &Setting) -> Option<String> {
    let must = "it must come from a Secret";
    match &setting.source {
        source if source.is_from_secret() => None,
        Source::Literal | Source::Expansion { .. } => Some(format!("{name} is a literal; {must}")),
        source => Some(format!("{name} {}; {must}", source_phrase(source))),
    }
}

/// `comes from ConfigMap app/cfg (key cors)`, `comes from fieldRef status.podIP`.
fn source_phrase(source: &Source) -> String {
    match source {
        Source::Literal => "is a literal".into(),
        Source::Object {
            kind,
            object,
            key,
            env_from,
        } => {
            let through = if *env_from { ", through envFrom" } else { "" };
            format!("comes from {} {object} (key {key}{through})", kind.name())
        }
        Source::Downward(what) => format!("comes from {what}"),
        Source::Expansion { references, .. } => format!(
            "is built from {}",
            references
                .iter()
                .map(|name| format!("$({name})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// How a policy miss names the variable: `JWT_SECRET (Secret app/jwt, key secret)`.
fn subject(name: &str, source: &Source) -> String {
    match source {
        Source::Object {
            kind, object, key, ..
        } => format!("{name} ({} {object}, key {key})", kind.name()),
        Source::Expansion { references, .. } => format!(
            "{name} (built from {})",
            references
                .iter()
                .map(|name| format!("$({name})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Source::Literal | Source::Downward(_) => name.to_string(),
    }
}

/// What in `policy` the value breaks, one predicate each (`is "dev", must be
/// "clerk"`). With `hidden`, no predicate quotes the value, or a Runbook value it
/// equals.
fn policy_misses(policy: &EnvPolicy, pattern: Option<&Regex>, value: &EnvValue, hidden: bool) -> Vec<String> {
    let value = value.0.as_str();
    let mut broken = Vec::new();
    if let Some(equals) = &policy.equals
        && value != equals
    {
        broken.push(if hidden {
            "is not the value the Runbook requires (equals)".to_string()
        } else {
            format!("is {value:?}, must be {equals:?}")
        });
    }
    if !policy.one_of.is_empty() && !policy.one_of.iter().any(|allowed| allowed == value) {
        broken.push(if hidden {
            "is not one of the values the Runbook allows (oneOf)".to_string()
        } else {
            let allowed: Vec<String> = policy.one_of.iter().map(|v| format!("{v:?}")).collect();
            format!("is {value:?}, must be one of {}", allowed.join(", "))
        });
    }
    if let (Some(regex), Some(written)) = (pattern, policy.pattern.as_deref())
        && !regex.is_match(value)
    {
        broken.push(if hidden {
            format!("does not match the pattern {written}")
        } else {
            format!("is {value:?}, which does not match the pattern {written}")
        });
    }
    if let Some(min_length) = policy.min_length
        && value.chars().count() < min_length as usize
    {
        broken.push(if hidden {
            format!("is shorter than {min_length} characters")
        } else {
            format!("is {value:?}, shorter than {min_length} characters")
        });
    }
    if policy.not_equals.iter().any(|forbidden| forbidden == value) {
        broken.push(if hidden {
            "still has a value the Runbook forbids (notEquals)".to_string()
        } else {
            format!("is {value:?}, a value the Runbook forbids (notEquals)")
        });
    }
    broken
}

/// The miss of variable `name` (rule `index`), absent, when its `requiredWhen`
/// holds: `other` has the value `equals`.
fn required_when(
    target: &Target<'_>,
    index: usize,
    name: &str,
    other: &str,
    equals: &str,
    notes: &mut Vec<String>,
) -> Option<String> {
    let (value, source) = match target.effective(other) {
        Effective::Set(setting) => match &setting.value {
            Known::Value(value) => (value.0.as_str(), Some(&setting.source)),
            Known::InPod => {
                notes.push(target.note(format!(
                    "{name} is required when {other} is {equals:?}, and {other} {}; its value is known only \
                     in the pod, so this was not checked",
                    source_phrase(&setting.source)
                )));
                return None;
            }
            Known::Broken => return None,
        },
        Effective::Default(default) => (default, None),
        Effective::Absent => return None,
    };
    if value != equals {
        return None;
    }
    Some(if target.hidden(other, source) {
        // Saying which value it has would tell the Secret's value.
        format!("{name} is required (spec.env[{index}].requiredWhen reads {other}) and not set")
    } else {
        format!("{name} is required when {other} is {equals:?}, and not set")
    })
}
