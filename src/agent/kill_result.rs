//! The answer to a kill, built from what the kill did: pure functions of the
//! run's record, the request and the kill's report, without I/O.

use crate::api::{KillRequest, KillResult, RunStatus};
use crate::store::RunRecord;

/// `graceful`, `force` or `emergency`.
pub(super) fn kill_mode(req: &KillRequest) -> &'static str {
    if req.emergency {
        "emergency"
    } else if req.force {
        "force"
    } else {
        "graceful"
    }
}

/// The answer to a kill of a run that had ended already.
pub(super) fn already_ended(rec: &RunRecord, status: RunStatus) -> KillResult {
    let how = match (status, rec.exit_code, rec.exit_signal) {
        (RunStatus::Exited, Some(c), _) => format!("exited with status {c}"),
        (RunStatus::Exited, _, Some(s)) => format!("exited on signal {s}"),
        (RunStatus::Killed, ..) => "was killed".to_string(),
        (RunStatus::TimedOut, ..) => "was killed by the monitor (timed out)".to_string(),
        (other, ..) => format!("ended as {other}"),
    };
    let previous: Option<KillResult> = rec
        .kill_result
        .as_deref()
        .and_then(|k| serde_json::from_str(k).ok());
    KillResult {
        success: true,
        run_id: rec.run_id.clone(),
        killed_at: previous.as_ref().and_then(|p| p.killed_at.clone()),
        cleanup_status: previous.map(|p| p.cleanup_status).unwrap_or_default(),
        message: format!("run {} already ended: it {how}", rec.run_id),
        already_ended: true,
        ended_as: Some(status.as_str().into()),
        mode: "none".into(),
        ..Default::default()
    }
}
