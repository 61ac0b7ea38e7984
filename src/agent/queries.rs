//! Reading runs: `ps` ([`Agent::list`]) and `status` ([`Agent::get`]), each run as
//! the caller may see it, with its processes, CPU and the critical sections open now.

use std::collections::HashMap;

use super::time::{age_secs, rfc3339};
use super::{Agent, Caller, Failure, Result, Sighting, layout, workload};
use crate::api::{self, ErrorKind, RunInfo, RunStatus};
use crate::cgroup::{Cgroup, Dirs};
use crate::policy::Action;
use crate::sections;
use crate::store::RunRecord;

impl Agent {
    /// The record of a run the caller may see.
    pub(super) fn visible_run(&self, caller: &Caller, run_id: &str) -> Result<RunRecord> {
        let rec = self.find_run(run_id)?;
        let d = self.decide(&self.access.identity(caller), Action::View, &rec);
        if !d.allowed {
            return Err(Failure::new(
                ErrorKind::Forbidden,
                format!("run {run_id}: {}", d.message),
            ));
        }
        Ok(rec)
    }

    /// Whether the caller may see every run (root, or `view_all`).
    pub(super) fn sees_all(&self, caller: &Caller) -> bool {
        caller.is_root()
            || self
                .access
                .policy()
                .permissions(&self.access.identity(caller))
                .contains(&crate::policy::Permission::ViewAll)
    }

    /// The runs the caller may see: live ones, or all with `all`.
    pub fn list(&self, caller: &Caller, all: bool, stuck: bool) -> Result<Vec<RunInfo>> {
        let live = RunStatus::live();
        let mut recs = self.store().list_runs_brief((!all).then_some(&live[..]))?;
        recs.iter_mut().for_each(|r| self.auditor.overlay(r));
        let id = self.access.identity(caller);
        let visible: Vec<RunRecord> = recs
            .into_iter()
            .filter(|r| self.decide(&id, Action::View, r).allowed)
            .filter(|r| !stuck || self.stuck_reason(r).is_some())
            .collect();
        // Three cgroup files per live run (the processes of its two leaves, its
        // CPU time), read now so that they are current: kept open from one
        // listing to the next (see run_files.rs), else opened relative to the
        // runs' directory opened once; with many runs, on every core.
        let mut dirs = Dirs::default();
        let runs: Vec<(RunRecord, Cgroup)> = visible
            .into_iter()
            .map(|r| {
                let cg = workload(&r);
                let cg = if r.status.is_live() {
                    dirs.held(cg)
                } else {
                    cg
                };
                (r, cg)
            })
            .collect();
        let infos = crate::par::map_owned(runs, 256, |(r, cg)| self.info(r, &cg, false));
        if !stuck && self.sees_all(caller) {
            // Every live run was listed: the files of any other are not needed.
            let live = infos.iter().filter(|i| i.status.is_live());
            self.run_files.keep_only(live.map(|i| i.run_id.as_str()));
        }
        Ok(infos)
    }

    pub fn get(&self, caller: &Caller, run_id: &str) -> Result<RunInfo> {
        let rec = self.visible_run(caller, run_id)?;
        let cg = workload(&rec);
        Ok(self.info(rec, &cg, true))
    }

    /// A run for display, `cg` its workload's cgroup; `with_sections` adds the
    /// critical sections open now (a procfs scan).
    fn info(&self, rec: RunRecord, cg: &Cgroup, with_sections: bool) -> RunInfo {
        let status = rec.status;
        let sections = if with_sections && status.is_live() {
            self.open_sections(&rec)
        } else {
            Vec::new()
        };
        let (processes, cpu_usec) = if status.is_live() {
            // A run's processes are all in its leaves (it cannot make cgroups
            // below them unless it runs as root): no directory walk.
            self.run_files.stats(&rec.run_id, cg)
        } else {
            (0, None)
        };
        let stuck = self.stuck_reason(&rec);
        let waiting_for =
            (status == RunStatus::Initializing).then(|| self.run_template(&rec).run.waiting_for());
        // One look in the audit trail: for `wfcg status` of a run whose
        // workspace was to be removed.
        let workspace_cleanup = (with_sections && rec.cleanup_workspace)
            .then(|| self.workspace_outcome(&rec.run_id))
            .flatten();
        let (last_heartbeat, watchdog_deadline) = self
            .fresh_heartbeat(&rec.run_id)
            .map(|(at, deadline)| (Some(at), deadline))
            .unwrap_or((rec.last_heartbeat, rec.watchdog_deadline));
        let end = rec.ended_at.unwrap_or_else(chrono::Utc::now);
        let age_secs = age_secs(rec.started_at, end);
        RunInfo {
            owner: crate::users::user_name_cached(rec.owner_uid),
            command: rec.command,
            kill_result: rec
                .kill_result
                .as_deref()
                .and_then(|k| serde_json::from_str(k).ok()),
            run_id: rec.run_id,
            workflow: rec.workflow,
            owner_uid: rec.owner_uid,
            status,
            pid: rec.pid,
            processes,
            started_at: rec.started_at.map(rfc3339),
            ended_at: rec.ended_at.map(rfc3339),
            age_secs,
            cpu_usec,
            exit_code: rec.exit_code,
            exit_signal: rec.exit_signal,
            workspace: rec.workspace_path,
            cgroup: rec.cgroup_path,
            log_path: rec.log_path,
            sections,
            template: rec.template_name,
            ready_at: rec.ready_at.map(rfc3339),
            ready_on: rec.ready_on,
            status_text: rec.status_text,
            last_heartbeat: last_heartbeat.map(rfc3339),
            init_deadline: rec.init_deadline.map(rfc3339),
            total_deadline: rec.total_deadline.map(rfc3339),
            watchdog_deadline: watchdog_deadline.map(rfc3339),
            stuck,
            loop_suspected: rec.loop_suspected,
            adopted: rec.adopted,
            waiting_for,
            workspace_cleanup,
            parent_run_id: rec.parent_run_id,
        }
    }

    /// The critical sections a live run has open now, each with when it was first seen.
    fn open_sections(&self, rec: &RunRecord) -> Vec<api::Section> {
        let pids = layout::payload(&Cgroup::new(&rec.cgroup_path))
            .procs_recursive()
            .unwrap_or_default();
        let scope = sections::Scope {
            pids,
            ..self.section_scope(rec)
        };
        let found = sections::scan(&self.cfg.proc_root, &scope);
        let now = chrono::Utc::now();
        let mut sightings = self.sightings.lock();
        let previous = sightings.remove(&rec.run_id).unwrap_or_default();
        let mut current = HashMap::new();
        let out = found
            .into_iter()
            .map(|f| {
                let key = (f.pid, f.path.clone());
                let since = previous.get(&key).map_or(now, |s| s.first);
                let sighting = Sighting {
                    finding: f.clone(),
                    first: since,
                    last: now,
                };
                current.insert(key, sighting);
                api::Section {
                    kind: f.kind,
                    path: f.path,
                    pid: f.pid,
                    command: f.command,
                    since: rfc3339(since),
                    open_secs: (now - since).num_milliseconds() as f64 / 1e3,
                }
            })
            .collect();
        if !current.is_empty() {
            sightings.insert(rec.run_id.clone(), current);
        }
        out
    }
}
