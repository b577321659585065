//! Files → documents, each with the line it starts on.

use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::{MessageFormatter, Spanned, UserMessageFormatter};

use super::RenderError;

/// One object-to-be read from a file (a `kind: List` already expanded).
#[derive(Debug)]
pub(super) struct Document {
    pub value: Value,
    pub line: usize,
}

pub(super) fn parse_file(path: &str, content: &[u8]) -> Result<Vec<Document>, RenderError> {
    let text = std::str::from_utf8(content).map_err(|e| {
        let (line, column) = line_and_column(content, e.valid_up_to());
        RenderError::Syntax {
            file: path.to_string(),
            line,
            column: Some(column),
            message: "not valid UTF-8".into(),
        }
    })?;
    // A byte-order mark is not part of either syntax; editors on Windows add one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let documents = if path.to_ascii_lowercase().ends_with(".json") {
        parse_json(path, text)?
    } else {
        parse_yaml(path, text)?
    };
    Ok(expand_lists(documents))
}

/// A document and, when it is a `kind: List`, the line of each item.
struct Parsed {
    value: Value,
    line: usize,
    item_lines: Vec<usize>,
}

fn parse_json(path: &str, text: &str) -> Result<Vec<Parsed>, RenderError> {
    let value: Value = serde_json::from_str(text).map_err(|e| RenderError::Syntax {
        file: path.to_string(),
        line: e.line().max(1),
        column: (e.column() > 0).then_some(e.column()),
        message: json_message(&e),
    })?;
    if value.is_null() {
        return Ok(Vec::new());
    }
    let line = text
        .find(|c: char| !c.is_whitespace())
        .map_or(1, |offset| line_and_column(text.as_bytes(), offset).0);
    Ok(vec![Parsed {
        value,
        line,
        item_lines: Vec::new(),
    }])
}

/// serde_json appends " at line X column Y"; the error already says where.
fn json_message(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message,
    }
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        // Positions are reported by us as file:line:column; no source excerpts.
        with_snippet: false,
        // Kubernetes reads YAML 1.1 (sigs.k8s.io/yaml): `defaultMode: 0644` is octal.
        legacy_octal_numbers: true,
    }
}

fn parse_yaml(path: &str, text: &str) -> Result<Vec<Parsed>, RenderError> {
    // Empty and null documents (`---` alone, comments only) are skipped by the parser.
    let documents: Vec<Spanned<Value>> =
        serde_saphyr::from_str_multiple_with_options::<Spanned<Value>, Vec<_>>(text, yaml_options())
            .map_err(|e| yaml_error(path, &e))?;
    let needs_item_lines = documents.iter().any(|d| is_list(&d.value));
    // Item positions only when a List needs them: a second, shape-only parse.
    let list_shapes: Option<Vec<ListShape>> = needs_item_lines
        .then(|| serde_saphyr::from_str_multiple_with_options::<ListShape, Vec<_>>(text, yaml_options()).ok())
        .flatten()
        .filter(|shapes| shapes.len() == documents.len());
    Ok(documents
        .into_iter()
        .enumerate()
        .map(|(index, document)| {
            let line = line_of(&document.referenced);
            let item_lines = list_shapes
                .as_ref()
                .and_then(|shapes| shapes[index].items.as_ref())
                .map(|items| items.iter().map(|item| line_of(&item.referenced)).collect())
                .unwrap_or_default();
            Parsed {
                value: document.value,
                line,
                item_lines,
            }
        })
        .collect())
}

/// Just enough of a document to learn where each List item starts.
#[derive(Deserialize)]
struct ListShape {
    #[serde(default)]
    items: Option<Vec<Spanned<serde::de::IgnoredAny>>>,
}

fn line_of(location: &serde_saphyr::Location) -> usize {
    usize::try_from(location.line()).unwrap_or(usize::MAX).max(1)
}

fn yaml_error(path: &str, e: &serde_saphyr::Error) -> RenderError {
    let location = e.location();
    let message = UserMessageFormatter.format_message(e);
    // The text comes from the file: keep it on one line and printable.
    let message: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    RenderError::Syntax {
        file: path.to_string(),
        line: location.as_ref().map_or(1, line_of),
        column: location
            .map(|l| usize::try_from(l.column()).unwrap_or(usize::MAX))
            .filter(|&c| c > 0),
        message,
    }
}

fn is_list(value: &Value) -> bool {
    value.get("kind").and_then(Value::as_str) == Some("List")
        && value.get("items").is_some_and(Value::is_array)
}

/// `kind: List` holds objects in `items`: each becomes a document of its own, at its
/// own line when known (else the List's).
fn expand_lists(documents: Vec<Parsed>) -> Vec<Document> {
    let mut out = Vec::new();
    for parsed in documents {
        if !is_list(&parsed.value) {
            out.push(Document {
                value: parsed.value,
                line: parsed.line,
            });
            continue;
        }
        let Value::Object(mut list) = parsed.value else {
            continue;
        };
        let Some(Value::Array(items)) = list.remove("items") else {
            continue;
        };
        for (index, item) in items.into_iter().enumerate() {
            if item.is_null() {
                continue;
            }
            out.push(Document {
                value: item,
                line: parsed.item_lines.get(index).copied().unwrap_or(parsed.line),
            });
        }
    }
    out
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(content: &[u8], offset: usize) -> (usize, usize) {
    let before = &content[..offset.min(content.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    (line, column)
}
