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
/// The API server refuses longer notes.
const MAX_NOTE_CHARS: usize = 1000;

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
        let note: String = notice.note.chars().take(MAX_NOTE_CHARS).collect();
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
                let name = format!("{}.{:x}", app.name_any(), now.as_nanosecond());
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
