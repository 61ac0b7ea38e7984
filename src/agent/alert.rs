//! Raising alerts: an event of a run (or of the agent) sent to the run's alert
//! channels, the template's or else the agent-wide ones ([`crate::alerts`]).

use std::path::Path;

use super::Agent;
use super::time::{now, rfc3339};
use crate::cgroup;
use crate::store::RunRecord;

impl Agent {
    /// Tells the agent-wide alert channels that the audit chain was found cut.
    /// (Called while the store is locked: the alerter only queues the event.)
    pub(super) fn alert_audit_tampered(&self, why: &str) {
        self.records.alerter.emit(
            &self.template.alerts,
            crate::alerts::Event {
                event: "audit_tampered".into(),
                run_id: String::new(),
                workflow: None,
                message: format!("the audit chain was cut: {why}"),
                time: now(),
                details: serde_json::json!({ "audit_head": self.cfg.state_dir.join("audit.head") }),
            },
        );
    }

    /// The `oom_killed` alert: the kernel's OOM killer ended the run.
    pub(super) fn alert_oom(&self, rec: &RunRecord) {
        let limit = std::fs::read_to_string(Path::new(&rec.cgroup_path).join(cgroup::MEMORY_MAX))
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|_| "?".into());
        self.alert(
            "oom_killed",
            rec,
            &format!(
                "run {} was killed by the kernel's OOM killer (memory.max {limit})",
                rec.run_id
            ),
        );
    }

    /// Tells the run's alert channels (template, else agent-wide) about an event.
    pub(super) fn alert(&self, event: &str, rec: &RunRecord, message: &str) {
        tracing::warn!(run_id = rec.run_id, event, "{message}");
        let template = self.run_template(rec);
        self.records.alerter.emit(
            &template.alerts,
            crate::alerts::Event {
                event: event.into(),
                run_id: rec.run_id.clone(),
                workflow: rec.workflow.clone(),
                message: message.into(),
                time: now(),
                details: serde_json::json!({
                    "status": rec.status,
                    "owner_uid": rec.owner_uid,
                    "started_at": rec.started_at.map(rfc3339),
                    "status_text": rec.status_text,
                }),
            },
        );
    }
}
