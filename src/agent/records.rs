//! The records wing: what the agent writes down and tells, and nothing else.
//! The audit trail (with its pending records and its hash chain's head), the
//! alert channels, and the counters and histograms of `/metrics`. The
//! operations that use it are `audit_trail.rs`, `alert.rs`, `kill_run.rs`,
//! `kill_and_record.rs`, `queries.rs` (the `/metrics` scrape) and most others:
//! every state-changing request writes its audit record.

use std::sync::Arc;

use super::audit::Auditor;
use super::metrics::Metrics;
use crate::alerts::Alerter;

/// What the agent writes down and tells.
pub(super) struct Records {
    /// The audit trail's writer: records are kept pending while the store
    /// cannot be written, and written before the answer.
    pub(super) auditor: Arc<Auditor>,
    /// The agent-wide alert channels (a run's template may name its own).
    pub(super) alerter: Alerter,
    /// The series of `/metrics` that are counted as things happen.
    pub(super) metrics: Metrics,
}

impl Records {
    /// The audit head in `audit_head`; alerts to `alerter`; no metric counted yet.
    pub(super) fn new(audit_head: std::path::PathBuf, alerter: Alerter) -> Records {
        Records {
            auditor: Arc::new(Auditor::new(audit_head)),
            alerter,
            metrics: Metrics::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_records_have_nothing_pending_sent_or_counted() {
        let dir = tempfile::tempdir().unwrap();
        let records = Records::new(dir.path().join("audit.head"), Alerter::new(None, None));
        assert_eq!(records.auditor.pending(), 0);
        let stats = records.alerter.stats();
        assert_eq!((stats.sent, stats.failed), (0, 0));
        let text = records.metrics.render(&Default::default());
        assert!(
            text.contains("\nwfcg_critical_section_wait_seconds_total 0.0\n"),
            "{text}"
        );
        assert!(
            !text.contains("wfcg_kills_total{"),
            "no kill counted: {text}"
        );
    }
}
