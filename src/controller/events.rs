//! Kubernetes Events (events.k8s.io/v1) on AppDeployments.
//!
//! kube-runtime's recorder merges Events that share a reason and keeps the first note,
//! so `Applying … revision A (x2)` hid that the second apply was of revision B. Here an
//! Event is merged into a series only when its note is the same too; every note names
//! its revision ([`crate::core::record::Notice`]), so Events of different revisions
//! never merge. An Event that cannot be written is logged, never fatal: the status
//! already says the same.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use crate::api::AppDeployment;
use crate::core::record::Notice;

/// A repeat of the same Event within this time is counted in its series.
const SERIES_WINDOW: Duration = Duration::from_secs(600);
/// The API server refuses a longer note: 1 KiB counted in bytes, so multi-byte text
/// reaches it sooner than 1,024 characters.
const MAX_NOTE_BYTES: usize = 1024;
/// The API server refuses a longer object name (a DNS subdomain).
const MAX_NAME_BYTES: usize = 253;

pub struct EventRecorder {
    client: Client,
    instance: String,
    /// Recent Events by (app uid, type, reason, note): name, count, when last sent.
    recent: Mutex<HashMap<SeriesKey, Series>>,
}

/// App uid, warning, reason, note.
type SeriesKey = (String, bool, &'static str, String);
/// Event name, count, when last sent.
type Series = (String, i32, Instant);

impl EventRecorder {
    pub fn new(client: Client, instance: String) -> Self {
        Self {
            client,
            instance,
            recent: Mutex::default(),
        }
    }

    pub async fn publish(&self, app: &AppDeployment, notice: &Notice) {
        let note = note_within_limit(&notice.note);
        let key = (
            app.uid().unwrap_or_default(),
            notice.warning,
            notice.reason,
            note.clone(),
        );
        let namespace = app.namespace().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let now = Timestamp::now();
        let repeat = {
            let mut recent = self.recent.lock().expect("event cache poisoned");
            recent.retain(|_, (_, _, at)| at.elapsed() < SERIES_WINDOW);
            match recent.get_mut(&key) {
                Some((name, count, at)) => {
                    *count += 1;
                    *at = Instant::now();
                    Some((name.clone(), *count))
                }
                None => None,
            }
        };
        let result = match repeat {
            Some((name, count)) => {
                let series = EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                };
                let patch = serde_json::json!({"series": series});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            None => {
                let name = event_name(&app.name_any(), now.as_nanosecond());
                let event = Event {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.clone()),
                        ..Default::default()
                    },
                    event_time: Some(MicroTime(now)),
                    action: Some(notice.reason.to_string()),
                    reason: Some(notice.reason.to_string()),
                    note: Some(note),
                    type_: Some(if notice.warning { "Warning" } else { "Normal" }.to_string()),
                    regarding: Some(app.object_ref(&())),
                    reporting_controller: Some("bosun".to_string()),
                    reporting_instance: Some(self.instance.clone()),
                    ..Default::default()
                };
                let created = api.create(&PostParams::default(), &event).await.map(|_| ());
                if created.is_ok() {
                    let mut recent = self.recent.lock().expect("event cache poisoned");
                    recent.insert(key, (name, 1, Instant::now()));
                }
                created
            }
        };
        if let Err(error) = result {
            warn!(%error, reason = notice.reason, "could not publish Event");
        }
    }

    /// Forgets the series of a deleted app.
    pub fn forget(&self, uid: &str) {
        self.recent
            .lock()
            .expect("event cache poisoned")
            .retain(|(app, ..), _| app != uid);
    }
}

/// `note` cut to [`MAX_NOTE_BYTES`] bytes on a character boundary, ending in `…` when
/// cut.
fn note_within_limit(note: &str) -> String {
    crate::api::cut_to_bytes(note, MAX_NOTE_BYTES)
}

/// `<app>.<time in hex>`, or, when that would pass [`MAX_NAME_BYTES`], the app's name
/// cut and followed by a hash of the whole name (so two long names sharing a prefix
/// still differ): `<app cut>-<hash>.<time in hex>`.
fn event_name(app: &str, nanoseconds: i128) -> String {
    let suffix = format!(".{nanoseconds:x}");
    if app.len() + suffix.len() <= MAX_NAME_BYTES {
        return format!("{app}{suffix}");
    }
    use sha2::{Digest, Sha256};
    let hash: String = Sha256::digest(app.as_bytes())
        .iter()
        .take(5)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    let keep = MAX_NAME_BYTES - suffix.len() - hash.len() - 1;
    let mut end = keep.min(app.len());
    while !app.is_char_boundary(end) {
        end -= 1;
    }
    // A label must end in a letter or digit.
    let cut = app[..end].trim_end_matches(['-', '.']);
    format!("{cut}-{hash}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_at_1_kib_of_bytes_on_a_character_boundary() {
        assert_eq!(note_within_limit("short"), "short");
        let exact = "a".repeat(MAX_NOTE_BYTES);
        assert_eq!(note_within_limit(&exact), exact);
        // 3-byte characters: 1,000 of them are 3,000 bytes.
        let wide = "€".repeat(1000);
        let cut = note_within_limit(&wide);
        assert!(cut.len() <= MAX_NOTE_BYTES, "{}", cut.len());
        assert!(cut.len() > MAX_NOTE_BYTES - 6, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert!(cut.trim_end_matches('…').chars().all(|c| c == '€'));
    }

    #[test]
    fn event_names_stay_within_253_bytes_and_distinct() {
        let nanos = 1_765_000_000_123_456_789_i128;
        assert_eq!(event_name("api", nanos), format!("api.{nanos:x}"));
        let long = format!("{}-x", "a".repeat(250));
        let other = format!("{}-y", "a".repeat(250));
        let (a, b) = (event_name(&long, nanos), event_name(&other, nanos));
        assert!(a.len() <= MAX_NAME_BYTES && b.len() <= MAX_NAME_BYTES, "{a}");
        assert_ne!(a, b);
        let dotted = format!("{}.{}", "a".repeat(228), "b".repeat(24));
        let name = event_name(&dotted, nanos);
        assert!(name.len() <= MAX_NAME_BYTES);
        for label in name.split('.') {
            assert!(
                !label.is_empty() && !label.ends_with('-') && !label.starts_with('-'),
                "{name}"
            );
        }
    }
}
