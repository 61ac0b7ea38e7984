//! The end of a run: the supervisor's exit report (whatever its command left
//! running is killed), the supervisor's move to its own leaf, and what the reaper
//! does when a run's cgroup empties (how the run ended, then its cleanup).

use std::path::PathBuf;

use super::audit::{Audited, Unrecorded};
use super::reaper::OnEmpty;
use super::{Agent, Caller, Failure, Result, audit, layout};
use crate::api::AuditAction;
use crate::api::EXIT_STATUS_FILE;
use crate::api::{ErrorKind, ExitAck, ExitReport, RunStatus};
use crate::cgroup::Cgroup;
use crate::kill;
use crate::procfs;
use crate::store::RunRecord;
use crate::userfs::{self, Cred};

impl Agent {
    /// The supervisor reports its command's end: the run has exited. Whatever else
    /// the command left running in the run is killed (as systemd does for a
    /// service's control group); the reaper removes the cgroup once it is empty.
    pub fn report_exit(
        &self,
        caller: &Caller,
        run_id: &str,
        report: ExitReport,
    ) -> Result<Audited<ExitAck>> {
        // Only the run's supervisor, as the kernel identified it when the run was
        // created (supervisors.rs); root included: root's supervisors are the same.
        let rec = self.find_run(run_id)?;
        if !self.is_supervisor(caller, &rec) {
            return Err(self.refuse_for_supervisor(
                caller,
                &rec,
                AuditAction::ExitReport,
                "report its exit",
            ));
        }
        let live = rec.status.is_live();
        // Synced with what follows while the run is live (the run's end in
        // the audit trail, or the result of the kill under way), so it does
        // not wait for the disk by itself.
        self.store().with_sync(!live, |s| {
            s.record_exit(run_id, report.exit_code, report.signal)
        })?;
        // It ended already, or a kill is under way: say whether wfcg stopped it
        // (the supervisor's exit code rests on this, not on a file in the run
        // directory that its command could remove).
        let stopped = self.kill_ending(run_id).or_else(|| {
            let mut now = self.store().get_run(run_id).ok().flatten()?;
            self.records.auditor.overlay(&mut now);
            Some(now.status)
        });
        let stopped = stopped.filter(|s| matches!(s, RunStatus::Killed | RunStatus::TimedOut));
        if !live || stopped.is_some() || self.kill_in_flight(run_id) {
            let ack = ExitAck {
                stopped,
                ..Default::default()
            };
            return Ok(Audited::unrecorded(ack, Unrecorded::EndRecordedElsewhere));
        }
        let cg = layout::payload(&Cgroup::new(&rec.cgroup_path));
        let scope = self.section_scope(&rec);
        let freeze_timeout = self.run_template(&rec).kill.freeze_timeout;
        let left =
            kill::kill_leftovers(&cg, caller.pid, freeze_timeout, &scope, &self.cfg.proc_root);
        if let Some(why) = &left.unconfirmed {
            tracing::warn!(run_id, "{why}; the leftovers were killed anyway");
        }
        // Git locks the leftovers held become stale now that they are dead.
        if !left.sections.is_empty() {
            self.kills
                .stale_candidates
                .lock()
                .insert(run_id.to_owned(), left.sections);
        }
        let killed = left.killed;
        if killed > 0 {
            tracing::info!(
                run_id,
                killed,
                "killed processes left behind by the command"
            );
        }
        // Only if no kill began meanwhile: then the kill sequence has the last word.
        // (Both locks held, in the agent's order, so none begins in between.)
        // memory.events of the run's cgroup counts its leaves' OOM kills too.
        let end = if Cgroup::new(&rec.cgroup_path).oom_kills().unwrap_or(0) > 0 {
            RunStatus::OomKilled
        } else {
            RunStatus::Exited
        };
        let exited = {
            let inflight = self.kills.inflight.lock();
            !inflight.contains_key(run_id)
                && self.store().with_sync(false, |s| {
                    // Synced with the audit record of the end, below.
                    s.finish_run_if(
                        run_id,
                        &[
                            RunStatus::Initializing,
                            RunStatus::Running,
                            RunStatus::Stopping,
                            RunStatus::Unknown,
                        ],
                        end,
                        chrono::Utc::now(),
                    )
                })?
        };
        let receipt = exited.then(|| {
            // Its processes are gone: an exit does not wait for the disk (synced
            // within audit::SYNC_WITHIN, with the end recorded above).
            self.audit_run_end_soon(run_id, end)
        });
        if exited && end == RunStatus::OomKilled {
            self.alert_oom(&rec);
        }
        tracing::info!(run_id, code = ?report.exit_code, signal = ?report.signal, "run exited");
        // Its payload is empty: a workspace to remove is dealt with now, so that
        // `wfcg run` can say what became of it.
        let workspace = (exited && rec.cleanup_workspace).then(|| self.clean_workspace(&rec));
        Ok(ExitAck {
            leftovers_killed: killed,
            workspace,
            // A kill that began meanwhile has the last word.
            stopped: (!exited).then(|| self.kill_ending(run_id)).flatten(),
        })
        .map(|ack| match receipt {
            Some(receipt) => Audited::new(ack, receipt),
            // A kill that began meanwhile records the end.
            None => Audited::unrecorded(ack, Unrecorded::EndRecordedElsewhere),
        })
    }

    /// The run's supervisor, having forked its command inside the payload, moves
    /// itself to the supervisor leaf, where the kill does not reach it until the
    /// payload is empty.
    ///
    /// Only the caller itself is ever moved (pinned by its pidfd, checked to be
    /// the run's supervisor by the kernel's identity of that pidfd, see
    /// supervisors.rs, and to be in this run's payload now), and only between the
    /// two leaves of its own run: nobody can use this to move another process, and
    /// no cgroup file is handed to a user.
    pub fn enter_supervisor(&self, caller: &Caller, run_id: &str) -> Result<Audited<()>> {
        let rec = self.find_run(run_id)?;
        let proc_root = &self.cfg.proc_root;
        if !self.is_supervisor(caller, &rec) {
            return Err(self.refuse_for_supervisor(
                caller,
                &rec,
                AuditAction::EnterSupervisor,
                "enter its supervisor leaf",
            ));
        }
        let run_cg = Cgroup::new(&rec.cgroup_path);
        let payload = layout::payload(&run_cg);
        let Some(leaf) = layout::supervisor(&run_cg) else {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!("run {run_id} has no supervisor leaf"),
            ));
        };
        // A supervisor is always known by its pidfd (is_supervisor).
        let Some(pidfd) = caller.pidfd.clone() else {
            return Err(Failure::internal("the supervisor has no pidfd"));
        };
        if payload == run_cg || payload.contains_process(proc_root, caller.pid) != Some(true) {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!("the caller is not in the payload of run {run_id}"),
            ));
        }
        leaf.add_process(caller.pid).map_err(Failure::internal)?;
        if !procfs::pidfd_alive(&*pidfd) {
            tracing::error!(
                run_id,
                pid = caller.pid,
                "supervisor exited while it was moved"
            );
        }
        Ok(Audited::unrecorded((), Unrecorded::SupervisorLeaf))
    }

    /// The exit the supervisor left in the run directory, if it did.
    /// Read as the run's owner, without following symlinks, non-blocking, at most
    /// 64 bytes: the directory is the user's.
    /// `Err` when the read failed for want of the agent's own resources (out of
    /// file descriptors or memory, an I/O error): the exit is then unknown, not
    /// absent, and the run is not ended on it.
    fn exit_from_file(rec: &RunRecord) -> std::io::Result<Option<Exit>> {
        let Some(dir) = rec.run_dir.as_ref().map(PathBuf::from) else {
            return Ok(None);
        };
        // As for the stop reason: a mount stacked over the directory goes first.
        let _ = crate::tmpfs::detach_stacked(&dir);
        let read = userfs::as_user(&Cred::of_uid(rec.owner_uid), || {
            userfs::read_at(crate::tmpfs::open_unstacked(&dir)?, EXIT_STATUS_FILE, 64)
        })
        .and_then(|r| r);
        let bytes = match read {
            Ok(bytes) => bytes,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EIO)
                ) =>
            {
                return Err(e);
            }
            Err(e) => {
                tracing::info!("no exit status in {}: {e}", dir.display());
                return Ok(None);
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let parsed = text.trim().split_once(' ').and_then(|(kind, value)| {
            let value: i32 = value.parse().ok()?;
            match kind {
                "code" => Some((Some(value), None)),
                "signal" => Some((None, Some(value))),
                _ => None,
            }
        });
        Ok(parsed)
    }
}

impl Agent {
    /// Whether the run's supervisor (the process that created it, by its pid
    /// and start time) is alive: not exited, not a zombie. An adopted run has none;
    /// nor, for this, has a user's run: only root's supervisor may live beside
    /// its run (a user's starts inside it, and one alive elsewhere moved on).
    fn supervisor_lives(&self, rec: &RunRecord) -> bool {
        let Some(pid) = rec
            .pid
            .filter(|_| rec.adopted.is_none() && rec.owner_uid == 0)
        else {
            return false;
        };
        let proc_root = &self.cfg.proc_root;
        rec.pid_starttime
            .is_some_and(|t| procfs::starttime(proc_root, pid) == Some(t))
            && !matches!(procfs::state(proc_root, pid), Some('Z' | 'X') | None)
    }
}

/// How a run's command ended: its exit code, or the signal that killed it.
type Exit = (Option<i32>, Option<i32>);

impl OnEmpty for Agent {
    /// A run's cgroup emptied (or vanished). Unless a kill sequence is under way
    /// (it finishes the run itself), record how a live run ended, then clean up.
    fn on_run_empty(&self, run_id: &str) {
        // The exit the supervisor may have left is read before any lock is taken:
        // the file is the user's (read non-blocking, size-limited, as its owner).
        let from_file = match self
            .store()
            .get_run(run_id)
            .ok()
            .flatten()
            .filter(|r| r.exit_code.is_none() && r.exit_signal.is_none())
            .map(|r| (Agent::exit_from_file(&r), r))
        {
            // Unknown is not absent: looked at again in a second, not `lost` (while
            // the cgroup is there to watch).
            Some((Err(e), rec))
                if self
                    .watch
                    .reaper
                    .recheck(run_id, &Cgroup::new(&rec.cgroup_path)) =>
            {
                tracing::warn!(run_id, "cannot read the run's exit status, will retry: {e}");
                return;
            }
            Some((Err(_), _)) => None,
            Some((Ok(exit), _)) => exit,
            None => None,
        };
        let (rec, ended) = {
            // Both locks held, in the agent's order, so no kill starts in between.
            let inflight = self.kills.inflight.lock();
            if inflight.contains_key(run_id) {
                return; // the kill sequence finishes the run itself
            }
            let Ok(Some(mut rec)) = self.store().get_run(run_id) else {
                return;
            };
            self.records.auditor.overlay(&mut rec);
            // Over only if a read says so (or the cgroup is gone): a read that
            // fails leaves the run live and watched, its TMPDIR in place.
            let cg = Cgroup::new(&rec.cgroup_path);
            let empty = cg.empty();
            if !matches!(empty, Ok(true)) {
                if let Err(e) = empty {
                    tracing::warn!(run_id, "cannot tell whether the run ended: {e}");
                }
                drop(inflight);
                self.watch.reaper.watch(run_id, &cg, self);
                return;
            }
            // A supervisor that lives outside its run (its keeper holds the
            // supervisor leaf) reports the exit itself: while it lives the run
            // is not over, empty or not (its keeper not there yet, or killed).
            if rec.status.is_live()
                && rec.exit_code.is_none()
                && rec.exit_signal.is_none()
                && from_file.is_none()
                && self.supervisor_lives(&rec)
            {
                drop(inflight);
                self.watch.reaper.recheck(run_id, &cg);
                return;
            }
            let status = rec.status;
            let mut ended = None;
            if status.is_live() {
                let mut exit = None;
                if rec.exit_code.is_none()
                    && rec.exit_signal.is_none()
                    && let Some((code, signal)) = from_file
                {
                    exit = Some((code, signal));
                    (rec.exit_code, rec.exit_signal) = (code, signal);
                }
                let oom = Cgroup::new(&rec.cgroup_path).oom_kills().unwrap_or(0) > 0;
                let end = match status {
                    // A kill had begun (one interrupted by an agent restart, if
                    // no sequence is under way): its processes are gone.
                    RunStatus::Unkillable | RunStatus::Stopping => RunStatus::Killed,
                    _ if oom => RunStatus::OomKilled,
                    // An adopted run has no supervisor to report an exit: it ended by itself.
                    _ if rec.exit_code.is_some()
                        || rec.exit_signal.is_some()
                        || rec.adopted.is_some() =>
                    {
                        RunStatus::Exited
                    }
                    _ => RunStatus::Lost,
                };
                // Kept pending (and shown) while the store cannot be written.
                self.records.auditor.keep(
                    &self.runs.store,
                    audit::Record::End {
                        run_id: run_id.to_owned(),
                        status: end,
                        ended_at: chrono::Utc::now(),
                        exit,
                    },
                );
                tracing::info!(run_id, status = end.as_str(), "run ended");
                ended = Some(end);
            }
            (rec, ended)
        };
        if let Some(end) = ended {
            self.audit_run_end(run_id, end);
            if end == RunStatus::OomKilled {
                self.alert_oom(&rec);
            }
        }
        let status = self.cleanup(&rec, &[]);
        if status.processes_remaining > 0 || !status.cgroup_removed {
            tracing::warn!(run_id, ?status, "run ended but cleanup is incomplete");
        }
    }
}
