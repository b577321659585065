//! What `status` and `history` show, computed from the AppDeployment alone (pure: the
//! commands read the objects, these functions turn them into rows).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{AppDeployment, AppDeploymentStatus, HistoryEntry, OperationKind, Step, short_revision};
use crate::core::quarantined_at;

/// One line of `kubectl bosun status`; `-o json|yaml` prints it with full revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusRow {
    pub namespace: String,
    pub name: String,
    pub phase: String,
    pub current_revision: Option<String>,
    pub last_healthy_revision: Option<String>,
    /// The Git tip (or the pin) the controller last resolved.
    pub desired_revision: Option<String>,
    pub pinned: bool,
    pub suspended: bool,
    /// What became of the Git tip: see [`tip_fate`].
    pub tip: String,
    pub created: Option<String>,
}

impl StatusRow {
    pub fn of(app: &AppDeployment) -> StatusRow {
        let status = app.status.clone().unwrap_or_default();
        StatusRow {
            namespace: app.namespace().unwrap_or_default(),
            name: app.name_any(),
            phase: status.phase.to_string(),
            current_revision: status.current_revision.clone(),
            last_healthy_revision: status.last_healthy_revision.clone(),
            desired_revision: status.desired_revision.clone(),
            pinned: app.spec.pin.is_some(),
            suspended: app.spec.suspend,
            tip: tip_fate(app),
            created: app.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        }
    }
}

/// The table of `status`: NAMESPACE, NAME, PHASE, CURRENT, LAST HEALTHY, AGE, TIP.
pub(crate) fn status_table(rows: &[StatusRow], now: Timestamp) -> String {
    let header = [
        "NAMESPACE",
        "NAME",
        "PHASE",
        "CURRENT",
        "LAST HEALTHY",
        "AGE",
        "TIP",
    ];
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.namespace.clone(),
                row.name.clone(),
                row.phase.clone(),
                short_or_dash(row.current_revision.as_deref()),
                short_or_dash(row.last_healthy_revision.as_deref()),
                row.created
                    .as_deref()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .map_or_else(|| "-".into(), |t| age(now, t)),
                row.tip.clone(),
            ]
        })
        .collect();
    table(&header, &lines)
}

/// What became of the Git tip (or the pin), in a few words: `running`, `verifying`,
/// `deploying (apply)`, `blocked: PreflightFailed`, `quarantined`, `rolling back`,
/// `suspended`, `pending`, or `unknown` when Git was not read yet. A pinned app says
/// so: `running (pinned)`.
pub(crate) fn tip_fate(app: &AppDeployment) -> String {
    if app.spec.suspend {
        return "suspended".into();
    }
    let status = app.status.clone().unwrap_or_default();
    let Some(tip) = status.desired_revision.as_deref() else {
        return "unknown".into();
    };
    let fate = fate_of(&status, tip, &app.spec.apply_digest());
    if app.spec.pin.is_some() {
        format!("{fate} (pinned)")
    } else {
        fate
    }
}

fn fate_of(status: &AppDeploymentStatus, tip: &str, spec_digest: &str) -> String {
    if let Some(operation) = &status.operation {
        if operation.kind == OperationKind::Rollback && operation.failed_revision.as_deref() == Some(tip) {
            return "quarantined (rolling back)".into();
        }
        if operation.revision == tip {
            return match (operation.kind, operation.step) {
                (OperationKind::Rollback, _) => "rolling back to it".into(),
                (_, Step::Verify) => "verifying".into(),
                (_, step) => format!("deploying ({step})"),
            };
        }
    }
    if let Some(block) = status.blocked.as_ref().filter(|b| b.revision == tip) {
        return format!("blocked: {}", block.reason.as_str());
    }
    if quarantined_at(status, tip, spec_digest) {
        return "quarantined".into();
    }
    if status.current_revision.as_deref() == Some(tip) {
        return if status.last_healthy_revision.as_deref() == Some(tip) {
            "running".into()
        } else {
            format!("running ({})", status.phase)
        };
    }
    "pending".into()
}

/// The text of `history`: one row per revision, newest first, each followed by its
/// gates' verdicts and messages.
pub(crate) fn history_text(history: &[HistoryEntry]) -> String {
    let header = ["REVISION", "PHASE", "STARTED", "FINISHED", "MESSAGE"];
    let rows: Vec<Vec<String>> = history
        .iter()
        .map(|entry| {
            vec![
                short_revision(&entry.revision),
                entry.phase.to_string(),
                entry.started_at.clone(),
                entry.finished_at.clone().unwrap_or_else(|| "-".into()),
                one_line(entry.message.as_deref().unwrap_or("-")),
            ]
        })
        .collect();
    let table = table(&header, &rows);
    let mut lines = table.lines();
    let mut text = String::new();
    if let Some(header) = lines.next() {
        text.push_str(header);
        text.push('\n');
    }
    for (line, entry) in lines.zip(history) {
        text.push_str(line);
        text.push('\n');
        if !entry.rotation.is_empty() {
            text.push_str(&format!(
                "    rollout of changed Secrets: {}\n",
                entry.rotation.join(", ")
            ));
        }
        for gate in &entry.gates {
            let message = gate.message.as_deref().map(one_line).unwrap_or_default();
            text.push_str(&format!("    gate {}: {:?}", gate.name, gate.verdict));
            if !message.is_empty() {
                text.push_str(&format!(" - {message}"));
            }
            text.push('\n');
        }
    }
    text
}

/// Columns padded to their widest cell, three spaces apart, as kubectl prints them.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let format_row = |cells: &mut dyn Iterator<Item = &str>| {
        let mut line = String::new();
        for (index, cell) in cells.enumerate() {
            if index > 0 {
                line.push_str("   ");
            }
            line.push_str(cell);
            let pad = widths[index].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        line.trim_end().to_string()
    };
    let mut text = format_row(&mut header.iter().copied());
    text.push('\n');
    for row in rows {
        text.push_str(&format_row(&mut row.iter().map(String::as_str)));
        text.push('\n');
    }
    text
}

/// `45s`, `12m`, `5h`, `3d`: the age of an object as kubectl shows it.
pub(crate) fn age(now: Timestamp, since: Timestamp) -> String {
    let elapsed: Duration = now.duration_since(since).try_into().unwrap_or(Duration::ZERO);
    let seconds = elapsed.as_secs();
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7_200 => format!("{}m", seconds / 60),
        7_200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn short_or_dash(revision: Option<&str>) -> String {
    revision.map_or_else(|| "-".into(), short_revision)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{BlockReason, BlockedRevision, Phase, Pin, Quarantine};

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn app(status: AppDeploymentStatus) -> AppDeployment {
        let mut app = AppDeployment::new("web", Default::default());
        app.status = Some(status);
        app
    }

    fn running(revision: &str) -> AppDeploymentStatus {
        AppDeploymentStatus {
            phase: Phase::Healthy,
            desired_revision: Some(revision.into()),
            current_revision: Some(revision.into()),
            last_healthy_revision: Some(revision.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_tip_is_running_blocked_quarantined_or_pinned() {
        assert_eq!(tip_fate(&app(running(A))), "running");
        let mut blocked = running(A);
        blocked.desired_revision = Some(B.into());
        blocked.blocked = Some(BlockedRevision {
            revision: B.into(),
            reason: BlockReason::PreflightFailed,
            ..Default::default()
        });
        assert_eq!(tip_fate(&app(blocked)), "blocked: PreflightFailed");
        let mut quarantined = running(A);
        quarantined.desired_revision = Some(B.into());
        quarantined.quarantined = vec![Quarantine {
            revision: B.into(),
            ..Default::default()
        }];
        assert_eq!(tip_fate(&app(quarantined)), "quarantined");
        let mut pinned = app(running(A));
        pinned.spec.pin = Some(Pin { revision: A.into() });
        assert_eq!(tip_fate(&pinned), "running (pinned)");
        assert_eq!(tip_fate(&app(AppDeploymentStatus::default())), "unknown");
    }

    #[test]
    fn tables_align_columns_and_ages_read_like_kubectl() {
        let text = table(
            &["NAME", "PHASE"],
            &[
                vec!["web".into(), "Healthy".into()],
                vec!["api-server".into(), "Failed".into()],
            ],
        );
        assert_eq!(
            text,
            "NAME         PHASE\nweb          Healthy\napi-server   Failed\n"
        );
        let now: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let ago = |s: i64| now - k8s_openapi::jiff::SignedDuration::from_secs(s);
        assert_eq!(age(now, ago(45)), "45s");
        assert_eq!(age(now, ago(600)), "10m");
        assert_eq!(age(now, ago(3 * 3600)), "3h");
        assert_eq!(age(now, ago(86_400 * 3)), "3d");
    }
}
