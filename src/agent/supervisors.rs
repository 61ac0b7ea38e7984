//! Who speaks for a run's supervisor: the process that created the run, as the
//! kernel identifies it. Its identity (`procfs::Identity`: the pidfs inode of its
//! pidfd where the kernel has pidfs, and its pid and start time) is taken through
//! the pidfd the agent pinned when the run was created, and every request that
//! speaks for the supervisor (its exit report, its move to the supervisor leaf) is
//! accepted only from a caller whose own pidfd names that same process. Never a pid
//! number alone: a pid names another process once the supervisor is gone.
//!
//! The identities live in memory for the agent's life; after a restart (or once
//! the run is cleaned up) the store's pid and start time stand in for them. An
//! adopted run has no supervisor: its end is seen by the agent (the reaper's
//! cgroup events), and nobody may report it.

use super::audit_trail::by_caller;
use super::{Agent, Caller, Failure};
use crate::api::{AuditAction, Decision};
use crate::api::{AuditEntry, ErrorKind};
use crate::procfs::{self, Identity};
use crate::store::RunRecord;

impl Agent {
    /// Whether `caller` is the supervisor of `rec`, judged by the kernel's
    /// identity of the caller's pidfd (taken when its connection was accepted)
    /// against the one recorded at the run's creation. No pidfd, no trust: a
    /// caller already gone, an adopted run, a run with no supervisor recorded,
    /// are never its supervisor.
    pub(super) fn is_supervisor(&self, caller: &Caller, rec: &RunRecord) -> bool {
        if rec.adopted.is_some() {
            return false;
        }
        let Some(pidfd) = &caller.pidfd else {
            return false;
        };
        let Ok(who) = procfs::pidfd_identity(&self.cfg.proc_root, &**pidfd) else {
            return false;
        };
        let recorded = self.runs.supervisors.get(&rec.run_id).or_else(|| {
            Some(Identity {
                pid: rec.pid?,
                starttime: rec.pid_starttime?,
                ino: None,
            })
        });
        recorded.is_some_and(|r| r.same(&who))
    }

    /// The answer to a request that speaks for `rec`'s supervisor from a caller
    /// that is not it, audited (`action`, denied) with the caller's name, uid and pid.
    pub(super) fn refuse_for_supervisor(
        &self,
        caller: &Caller,
        rec: &RunRecord,
        action: AuditAction,
        what: &str,
    ) -> Failure {
        let why = if rec.adopted.is_some() {
            format!(
                "run {} was adopted: it has no supervisor, and its end is seen by the agent, \
                 never reported",
                rec.run_id
            )
        } else {
            format!("only the supervisor of run {} may {what}", rec.run_id)
        };
        let id = self.access.identity(caller);
        tracing::warn!(
            run_id = rec.run_id,
            uid = caller.uid,
            pid = caller.pid,
            "{action} refused: the caller is not the run's supervisor"
        );
        let receipt = self.audit_event(AuditEntry {
            action,
            run_id: Some(rec.run_id.clone()),
            decision: Decision::Denied,
            outcome: "refused: not the run's supervisor".into(),
            ..by_caller(caller, &id)
        });
        Failure::new(ErrorKind::Forbidden, why).recorded(receipt)
    }
}
