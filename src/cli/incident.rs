//! The incident command, `rollback --all-namespaces --since 30m`: which apps changed
//! revision within the window, and which healthy revision each had before it. Pure:
//! the command lists the apps, this decides, the command pins (or, with `--dry-run`,
//! only prints).

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{AppDeployment, HistoryEntry, Phase, short_revision};

/// One app the incident rollback concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IncidentRollback {
    pub namespace: String,
    pub name: String,
    pub current_revision: Option<String>,
    /// The revisions that started or finished within the window, newest first.
    pub changed: Vec<String>,
    /// The newest revision that was healthy before the window: what the app is pinned
    /// to. `None`: nothing to go back to (the app is listed, not changed).
    pub target: Option<String>,
    /// What is done: `pin <rev>`, `already pinned`, or why nothing can be.
    pub action: String,
}

impl IncidentRollback {
    /// Whether the command writes a pin for this app.
    pub fn pins(&self) -> bool {
        self.target.is_some() && self.action.starts_with("pin ")
    }
}

/// Every app of `apps` whose revision changed at or after `window_start` (a history
/// entry that started or finished in the window and was applied, not merely blocked or
/// a Secret rollout), with the revision to go back to.
pub fn plan(apps: &[AppDeployment], window_start: Timestamp) -> Vec<IncidentRollback> {
    let mut plans: Vec<IncidentRollback> = apps
        .iter()
        .filter_map(|app| plan_one(app, window_start))
        .collect();
    plans.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    plans
}

fn plan_one(app: &AppDeployment, window_start: Timestamp) -> Option<IncidentRollback> {
    let status = app.status.as_ref()?;
    let in_window = |entry: &HistoryEntry| {
        let at = |text: &str| text.parse::<Timestamp>().is_ok_and(|t| t >= window_start);
        at(&entry.started_at) || entry.finished_at.as_deref().is_some_and(at)
    };
    let changed_revision = |entry: &HistoryEntry| entry.rotation.is_empty() && entry.phase != Phase::Blocked;
    let changed: Vec<String> = status
        .history
        .iter()
        .filter(|entry| changed_revision(entry) && in_window(entry))
        .map(|entry| entry.revision.clone())
        .collect();
    if changed.is_empty() {
        return None;
    }
    // History is newest first: the first healthy entry wholly before the window.
    let target = status
        .history
        .iter()
        .find(|entry| entry.phase == Phase::Healthy && !in_window(entry))
        .map(|entry| entry.revision.clone());
    let pinned = app.spec.pin.as_ref().map(|pin| pin.revision.as_str());
    let action = match &target {
        None => "none: no healthy revision before the window in its history".to_string(),
        Some(target) if pinned == Some(target.as_str()) => "already pinned".to_string(),
        Some(target) if status.current_revision.as_deref() == Some(target.as_str()) => {
            format!("pin {} (already running)", short_revision(target))
        }
        Some(target) => format!("pin {}", short_revision(target)),
    };
    Some(IncidentRollback {
        namespace: app.namespace().unwrap_or_default(),
        name: app.name_any(),
        current_revision: status.current_revision.clone(),
        changed,
        target,
        action,
    })
}

/// The table `--dry-run` (and the real run, before it acts) prints.
pub fn table(plans: &[IncidentRollback]) -> String {
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|plan| {
            vec![
                plan.namespace.clone(),
                plan.name.clone(),
                plan.current_revision
                    .as_deref()
                    .map_or_else(|| "-".into(), short_revision),
                plan.changed
                    .iter()
                    .map(|r| short_revision(r))
                    .collect::<Vec<_>>()
                    .join(","),
                plan.target.as_deref().map_or_else(|| "-".into(), short_revision),
                plan.action.clone(),
            ]
        })
        .collect();
    super::view::table(
        &[
            "NAMESPACE",
            "NAME",
            "CURRENT",
            "CHANGED IN WINDOW",
            "ROLL BACK TO",
            "ACTION",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppDeploymentStatus, Pin};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn entry(revision: &str, phase: Phase, started: &str, finished: &str) -> HistoryEntry {
        HistoryEntry {
            revision: revision.into(),
            phase,
            started_at: started.into(),
            finished_at: Some(finished.into()),
            ..Default::default()
        }
    }

    fn app(name: &str, current: &str, history: Vec<HistoryEntry>) -> AppDeployment {
        let mut app = AppDeployment::new(name, Default::default());
        app.metadata.namespace = Some("shop".into());
        app.status = Some(AppDeploymentStatus {
            current_revision: Some(current.into()),
            history,
            ..Default::default()
        });
        app
    }

    #[test]
    fn apps_changed_in_the_window_go_back_to_the_healthy_revision_before_it() {
        let start: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
        let changed = app(
            "web",
            C,
            vec![
                entry(C, Phase::Healthy, "2026-01-01T10:05:00Z", "2026-01-01T10:06:00Z"),
                entry(B, Phase::Healthy, "2026-01-01T10:01:00Z", "2026-01-01T10:02:00Z"),
                entry(A, Phase::Healthy, "2026-01-01T09:00:00Z", "2026-01-01T09:01:00Z"),
            ],
        );
        let quiet = app(
            "api",
            A,
            vec![entry(
                A,
                Phase::Healthy,
                "2026-01-01T09:00:00Z",
                "2026-01-01T09:01:00Z",
            )],
        );
        let first_ever = app(
            "new",
            B,
            vec![entry(
                B,
                Phase::Healthy,
                "2026-01-01T10:01:00Z",
                "2026-01-01T10:02:00Z",
            )],
        );
        let mut pinned = app(
            "pinned",
            A,
            vec![
                entry(
                    B,
                    Phase::RolledBack,
                    "2026-01-01T10:01:00Z",
                    "2026-01-01T10:02:00Z",
                ),
                entry(A, Phase::Healthy, "2026-01-01T09:00:00Z", "2026-01-01T09:01:00Z"),
            ],
        );
        pinned.spec.pin = Some(Pin { revision: A.into() });
        let plans = plan(&[changed, quiet, first_ever, pinned], start);
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["new", "pinned", "web"]);
        let web = &plans[2];
        assert_eq!(web.changed, [C, B]);
        assert_eq!(web.target.as_deref(), Some(A));
        assert!(web.pins());
        assert!(!plans[0].pins() && plans[0].target.is_none());
        assert_eq!(plans[1].action, "already pinned");
        assert!(!plans[1].pins());
    }

    #[test]
    fn blocked_revisions_and_secret_rollouts_are_not_revision_changes() {
        let start: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
        let mut rotation = entry(A, Phase::Healthy, "2026-01-01T10:05:00Z", "2026-01-01T10:06:00Z");
        rotation.rotation = vec!["shop/db".into()];
        let quiet = app(
            "web",
            A,
            vec![
                entry(B, Phase::Blocked, "2026-01-01T10:07:00Z", "2026-01-01T10:07:00Z"),
                rotation,
                entry(A, Phase::Healthy, "2026-01-01T09:00:00Z", "2026-01-01T09:01:00Z"),
            ],
        );
        assert!(plan(&[quiet], start).is_empty());
    }
}
