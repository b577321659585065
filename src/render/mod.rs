//! Render: the manifests of a revision (the render step, README, "The life of a
//! revision"), from the files the source stage read. Pure: bytes in, validated and
//! normalized Kubernetes objects out.
//!
//! Every `*.yaml|*.yml` file may hold several documents; `*.json` holds one object.
//! A `kind: List` expands into its items. Any error names the file and the line, so
//! the revision is blocked with a message the author can act on. kustomize's own files
//! (a `kustomization.yaml`) are refused: bosun applies what kustomize would output, not
//! its input.

mod kustomize;
mod normalize;
mod parse;
pub mod quantity;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::source::SourceFile;

/// One Kubernetes object of a revision and where it was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub object: Value,
    /// Repository-relative file path.
    pub file: String,
    /// 1-based line where the object starts in the file.
    pub line: usize,
}

impl Manifest {
    /// `apiVersion`, e.g. `apps/v1` (validated non-empty by [`render`]).
    pub fn api_version(&self) -> &str {
        self.str_at(&["apiVersion"]).unwrap_or_default()
    }

    /// API group: `apps` for `apps/v1`, empty for the core group (`v1`).
    pub fn group(&self) -> &str {
        group_of(self.api_version())
    }

    pub fn kind(&self) -> &str {
        self.str_at(&["kind"]).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.str_at(&["metadata", "name"]).unwrap_or_default()
    }

    /// `metadata.namespace` as written (absent for cluster-scoped objects, and for
    /// namespaced ones that take the AppDeployment's target namespace).
    pub fn namespace(&self) -> Option<&str> {
        self.str_at(&["metadata", "namespace"])
    }

    /// For messages: `Deployment shop/backend (deploy/app.yaml:3)`.
    pub fn id(&self) -> String {
        format!("{} ({}:{})", self.kind_and_name(), self.file, self.line)
    }

    /// `Deployment shop/backend`, or `Namespace shop` without a namespace.
    pub(crate) fn kind_and_name(&self) -> String {
        match self.namespace() {
            Some(namespace) => format!("{} {namespace}/{}", self.kind(), self.name()),
            None => format!("{} {}", self.kind(), self.name()),
        }
    }

    fn str_at(&self, path: &[&str]) -> Option<&str> {
        let mut value = &self.object;
        for key in path {
            value = value.get(key)?;
        }
        value.as_str()
    }
}

fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((group, _)) => group,
        None => "",
    }
}

/// Why a revision's manifests cannot be used. Every variant names file and line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The file is not valid YAML/JSON: `deploy/app.yaml:12:3: <parser message>`.
    #[error("{file}:{}: {message}", position(*.line, *.column))]
    Syntax {
        file: String,
        line: usize,
        column: Option<usize>,
        message: String,
    },
    /// A document is well-formed but not a usable Kubernetes object.
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    /// A kustomize file (a `kustomization.yaml`, a `Component`): input to a build,
    /// not an object to apply.
    #[error("{file}:{line}: {message}")]
    KustomizeInput {
        file: String,
        line: usize,
        message: String,
    },
    /// Two documents describe the same object.
    #[error("{object} is defined twice: {first} and {second}")]
    Duplicate {
        object: String,
        /// `file:line` of each definition.
        first: String,
        second: String,
    },
}

fn position(line: usize, column: Option<usize>) -> String {
    match column {
        Some(column) => format!("{line}:{column}"),
        None => line.to_string(),
    }
}

impl RenderError {
    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::Syntax { .. } | RenderError::Invalid { .. } => "InvalidManifest",
            RenderError::KustomizeInput { .. } => "KustomizeInput",
            RenderError::Duplicate { .. } => "DuplicateManifest",
        }
    }
}

/// Parses, validates and normalizes every manifest of a revision, in file order and,
/// within a file, in document order.
pub fn render(files: &[SourceFile]) -> Result<Vec<Manifest>, RenderError> {
    // First: in a directory made for kustomize, other files' errors (a patch that is
    // only part of an object) would only hide what is really wrong.
    reject_kustomization_files(files)?;
    let mut manifests = Vec::new();
    for file in files {
        for document in parse::parse_file(&file.path, &file.content)? {
            if kustomize::is_kustomize_object(&document.value) {
                return Err(RenderError::KustomizeInput {
                    file: file.path.clone(),
                    line: document.line,
                    message: kustomize::refusal(&file.path, kind_of(&document.value)),
                });
            }
            let invalid = |message: String| RenderError::Invalid {
                file: file.path.clone(),
                line: document.line,
                message,
            };
            validate(&document.value).map_err(invalid)?;
            let mut object = document.value;
            normalize::fill_default_protocols(&mut object);
            normalize::canonicalize_numeric_quantities(&mut object);
            manifests.push(Manifest {
                object,
                file: file.path.clone(),
                line: document.line,
            });
        }
    }
    reject_duplicates(&manifests)?;
    Ok(manifests)
}

/// Refuses the first file named like a kustomization (`kustomization.yaml`), at the
/// line of its first document (line 1 when it does not even parse).
fn reject_kustomization_files(files: &[SourceFile]) -> Result<(), RenderError> {
    let Some(file) = files.iter().find(|f| kustomize::is_kustomization_file(&f.path)) else {
        return Ok(());
    };
    let documents = parse::parse_file(&file.path, &file.content).unwrap_or_default();
    let first = documents.first();
    Err(RenderError::KustomizeInput {
        file: file.path.clone(),
        line: first.map_or(1, |document| document.line),
        message: kustomize::refusal(&file.path, first.and_then(|document| kind_of(&document.value))),
    })
}

fn kind_of(object: &Value) -> Option<&str> {
    object.get("kind").and_then(Value::as_str)
}

/// The minimum server-side apply needs: a mapping with `apiVersion`, `kind` and
/// `metadata.name`.
fn validate(object: &Value) -> Result<(), String> {
    let Some(map) = object.as_object() else {
        return Err(format!(
            "expected a Kubernetes object (a mapping with apiVersion, kind, metadata.name), found {}",
            type_name(object)
        ));
    };
    let string_field = |key: &str| -> Result<(), String> {
        match map.get(key) {
            None | Some(Value::Null) => Err(format!("missing `{key}`")),
            Some(Value::String(s)) if s.trim().is_empty() => Err(format!("`{key}` is empty")),
            Some(Value::String(_)) => Ok(()),
            Some(other) => Err(format!("`{key}` must be a string, found {}", type_name(other))),
        }
    };
    string_field("apiVersion")?;
    string_field("kind")?;
    let metadata = match map.get("metadata") {
        None | Some(Value::Null) => return Err("missing `metadata` (with `name`)".into()),
        Some(Value::Object(metadata)) => metadata,
        Some(other) => {
            return Err(format!(
                "`metadata` must be a mapping, found {}",
                type_name(other)
            ));
        }
    };
    match metadata.get("name") {
        Some(Value::String(name)) if !name.trim().is_empty() => {}
        Some(Value::String(_)) => return Err("`metadata.name` is empty".into()),
        None | Some(Value::Null) if metadata.contains_key("generateName") => {
            return Err(
                "`metadata.generateName` cannot be applied declaratively: set `metadata.name`".into(),
            );
        }
        None | Some(Value::Null) => return Err("missing `metadata.name`".into()),
        Some(other) => {
            return Err(format!(
                "`metadata.name` must be a string, found {}",
                type_name(other)
            ));
        }
    }
    match metadata.get("namespace") {
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
        Some(other) => Err(format!(
            "`metadata.namespace` must be a string, found {}",
            type_name(other)
        )),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// Two definitions of one object would fight each other at apply time, and which one
/// wins would depend on file order: refuse them.
fn reject_duplicates(manifests: &[Manifest]) -> Result<(), RenderError> {
    let mut seen: HashMap<(&str, &str, Option<&str>, &str), &Manifest> = HashMap::new();
    for manifest in manifests {
        let key = (
            manifest.group(),
            manifest.kind(),
            manifest.namespace(),
            manifest.name(),
        );
        if let Some(first) = seen.insert(key, manifest) {
            return Err(RenderError::Duplicate {
                object: manifest.kind_and_name(),
                first: format!("{}:{}", first.file, first.line),
                second: format!("{}:{}", manifest.file, manifest.line),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
