//! The bodies posted to receivers: bosun's own JSON, or a Slack incoming-webhook message.
//! Built from a [`PhaseEvent`] only, which is built from the status only.

use serde_json::{Value, json};

use super::PhaseEvent;
use crate::api::{NotifyFormat, short_revision};
use crate::gates::truncate;

/// Slack's limit for a section block's `text` (and the top-level `text` shown in
/// notifications) is 3,000 characters.
pub(crate) const SLACK_TEXT_MAX_CHARS: usize = 3_000;
/// Slack's limit for each text object of a section's `fields` is 2,000 characters.
pub(crate) const SLACK_FIELD_MAX_CHARS: usize = 2_000;

/// The body for a receiver of `format`.
pub(crate) fn payload(format: NotifyFormat, event: &PhaseEvent) -> Value {
    match format {
        NotifyFormat::Json => json_payload(event),
        NotifyFormat::Slack => slack_payload(event),
    }
}

/// `{"app", "namespace", "phase", "revision": {"from", "to"}, "gate", "reason", "message",
/// "summary", "at"}`, plus `"rotation": [Secret names]` for a rollout of a Secret change.
/// Revisions are full commit ids (links to a commit need them); absent values are null.
pub(crate) fn json_payload(event: &PhaseEvent) -> Value {
    let mut body = json!({
        "app": event.app,
        "namespace": event.namespace,
        "phase": event.phase.as_str(),
        "revision": { "from": event.from, "to": event.to },
        "gate": event.gate,
        "reason": event.reason,
        "message": event.message,
        "summary": event.summary,
        "at": event.at,
    });
    if !event.rotation.is_empty() {
        body["rotation"] = json!(event.rotation);
    }
    body
}

/// A Slack incoming-webhook message: `text` (the summary; what notifications and
/// clients without blocks show) and `blocks`: a section with the summary as `mrkdwn`
/// and `fields` App, Phase, From → To, Gate (when one failed) and Reason.
///
/// Slack reads `&`, `<` and `>` as control characters in `mrkdwn` (`<url|label>`,
/// `<!channel>`): they are escaped as `&amp;`, `&lt;`, `&gt;`, so nothing in a message
/// becomes a link or a mention.
pub(crate) fn slack_payload(event: &PhaseEvent) -> Value {
    let summary = truncate(&escape(&event.summary), SLACK_TEXT_MAX_CHARS - 1);
    let revision = |r: &Option<String>| match r {
        Some(r) => format!("`{}`", short_revision(r)),
        None => "—".to_string(),
    };
    let mut fields = vec![
        field("App", &format!("{}/{}", event.namespace, event.app)),
        field("Phase", event.phase.as_str()),
        field(
            "From → To",
            &format!("{} → {}", revision(&event.from), revision(&event.to)),
        ),
    ];
    if let Some(gate) = &event.gate {
        fields.push(field("Gate", gate));
    }
    fields.push(field("Reason", &event.reason));
    json!({
        "text": summary,
        "blocks": [{
            "type": "section",
            "text": { "type": "mrkdwn", "text": summary },
            "fields": fields,
        }],
    })
}

/// One `mrkdwn` field: the label in bold over the value.
fn field(label: &str, value: &str) -> Value {
    let text = format!("*{label}*\n{}", escape(value));
    json!({ "type": "mrkdwn", "text": truncate(&text, SLACK_FIELD_MAX_CHARS - 1) })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Phase;

    fn rolled_back() -> PhaseEvent {
        PhaseEvent {
            app: "api".into(),
            namespace: "shop".into(),
            phase: Phase::RolledBack,
            from: Some("1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d".into()),
            to: Some("0f9e8d7c6b5a0f9e8d7c6b5a0f9e8d7c6b5a0f9e".into()),
            gate: Some("health".into()),
            reason: "RolledBack".into(),
            message: "rolled back from 1a2b3c4d5e6f to last healthy revision 0f9e8d7c6b5a".into(),
            summary: "shop/api: revision 1a2b3c4d5e6f rolled back to 0f9e8d7c6b5a: gate health failed \
                      (3 consecutive failed probes: status 503)"
                .into(),
            at: "2026-01-01T00:01:00Z".into(),
            rotation: Vec::new(),
        }
    }

    #[test]
    fn json_payload_has_every_field_with_full_revisions() {
        let body = json_payload(&rolled_back());
        assert_eq!(
            body,
            json!({
                "app": "api",
                "namespace": "shop",
                "phase": "RolledBack",
                "revision": {
                    "from": "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d",
                    "to": "0f9e8d7c6b5a0f9e8d7c6b5a0f9e8d7c6b5a0f9e",
                },
                "gate": "health",
                "reason": "RolledBack",
                "message": "rolled back from 1a2b3c4d5e6f to last healthy revision 0f9e8d7c6b5a",
                "summary": "shop/api: revision 1a2b3c4d5e6f rolled back to 0f9e8d7c6b5a: gate health failed \
                            (3 consecutive failed probes: status 503)",
                "at": "2026-01-01T00:01:00Z",
            })
        );
    }

    #[test]
    fn json_payload_has_nulls_for_what_is_absent_and_names_rotated_secrets() {
        let mut event = rolled_back();
        event.phase = Phase::Failed;
        event.from = None;
        event.gate = None;
        event.rotation = vec!["jwt".into()];
        let body = json_payload(&event);
        assert_eq!(body["revision"]["from"], Value::Null);
        assert_eq!(body["gate"], Value::Null);
        assert_eq!(body["rotation"], json!(["jwt"]));
        assert!(json_payload(&rolled_back()).get("rotation").is_none());
    }

    #[test]
    fn slack_payload_is_text_and_a_section_with_fields() {
        let body = slack_payload(&rolled_back());
        let summary = "shop/api: revision 1a2b3c4d5e6f rolled back to 0f9e8d7c6b5a: gate health failed \
                       (3 consecutive failed probes: status 503)";
        assert_eq!(
            body,
            json!({
                "text": summary,
                "blocks": [{
                    "type": "section",
                    "text": { "type": "mrkdwn", "text": summary },
                    "fields": [
                        { "type": "mrkdwn", "text": "*App*\nshop/api" },
                        { "type": "mrkdwn", "text": "*Phase*\nRolledBack" },
                        { "type": "mrkdwn", "text": "*From → To*\n`1a2b3c4d5e6f` → `0f9e8d7c6b5a`" },
                        { "type": "mrkdwn", "text": "*Gate*\nhealth" },
                        { "type": "mrkdwn", "text": "*Reason*\nRolledBack" },
                    ],
                }],
            })
        );
    }

    #[test]
    fn slack_payload_escapes_control_characters_and_keeps_within_limits() {
        let mut event = rolled_back();
        event.gate = None;
        event.from = None;
        event.reason = "<!channel> & <https://evil.example|click>".into();
        event.summary = format!("shop/api: <!here> {}", "x".repeat(5_000));
        let body = slack_payload(&event);
        let text = body["text"].as_str().unwrap();
        assert!(text.starts_with("shop/api: &lt;!here&gt; xxx"), "{text}");
        assert!(
            text.chars().count() <= SLACK_TEXT_MAX_CHARS,
            "{}",
            text.chars().count()
        );
        let fields = body["blocks"][0]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 4, "no Gate field without a failed gate: {fields:?}");
        assert_eq!(fields[2]["text"], "*From → To*\n— → `0f9e8d7c6b5a`");
        assert_eq!(
            fields[3]["text"],
            "*Reason*\n&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;"
        );
        let mut long = rolled_back();
        long.reason = "y".repeat(3_000);
        let body = slack_payload(&long);
        for field in body["blocks"][0]["fields"].as_array().unwrap() {
            assert!(field["text"].as_str().unwrap().chars().count() <= SLACK_FIELD_MAX_CHARS);
        }
    }

    #[test]
    fn payload_follows_the_format() {
        let event = rolled_back();
        assert_eq!(payload(NotifyFormat::Json, &event), json_payload(&event));
        assert_eq!(payload(NotifyFormat::Slack, &event), slack_payload(&event));
    }
}
