//! Reading runs: `ps` ([`Agent::list`]) and `status` ([`Agent::get`]), each run as
//! the caller may see it, with its processes, CPU and the critical sections open now.

use std::collections::HashMap;

use super::kills::Sighting;
use super::layout::workload;
use super::metrics::Snapshot;
use super::time::age_secs;
use super::{Agent, Caller, Failure, Result, layout};
use crate::api::{self, ErrorKind, RunInfo, RunStatus};
use crate::cgroup::{Cgroup, Dirs};
use crate::policy::Action;
use crate::sections;
use crate::store::RunRecord;

impl Agent {
    /// The longest a kill may take where the request leaves a value to the
    /// run's template: each the longest of the shipped default and the
    /// templates in the agent's directory (a run's own template text may not
    /// ask for more than them). For clients, at `/v1/health?kill_course=true`.
    pub fn kill_course(&self) -> api::KillCourseMs {
        use crate::template::Template;
        let dir = &self.cfg.templates_dir;
        let on_host = Template::list_in(dir)
            .into_iter()
            .filter_map(|(name, _)| Template::lookup_in(dir, &name).ok());
        Template::builtin()
            .ok()
            .into_iter()
            .chain(on_host)
            .map(|t| t.kill_course())
            .reduce(api::KillCourse::wider)
            .map(|c| c.to_ms())
            .unwrap_or_default()
    }

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
        recs.iter_mut()
            .for_each(|r| self.records.auditor.overlay(r));
        let id = self.access.identity(caller);
        let visible: Vec<RunRecord> = recs
            .into_iter()
            .filter(|r| self.decide(&id, Action::View, r).allowed)
            .filter(|r| !stuck || self.stuck_reason(r).is_some())
            .collect();
        // Two cgroup files per live run (the processes of its payload, its
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
        let infos = crate::parallel::map_owned(runs, 256, |(r, cg)| self.info(r, &cg, false));
        if !stuck && self.sees_all(caller) {
            // Every live run was listed: the files of any other are not needed.
            let live = infos.iter().filter(|i| i.status.is_live());
            self.runs.files.keep_only(live.map(|i| i.run_id.as_str()));
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
            self.runs.files.stats(&rec.run_id, cg)
        } else {
            (0, None)
        };
        let stuck = self.stuck_reason(&rec);
        let template = status.is_live().then(|| self.run_template(&rec));
        let waiting_for = template
            .as_ref()
            .filter(|_| status == RunStatus::Initializing)
            .map(|t| t.run.waiting_for());
        let ready_when = template.as_ref().map(|t| t.run.ready_condition());
        let progress = self.progress_of(&rec.run_id);
        let retrying = self.retrying(&rec.run_id);
        let end_reason = end_reason(&rec);
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
            kill_result: rec.kill_result.clone(),
            run_id: rec.run_id,
            workflow: rec.workflow,
            owner_uid: rec.owner_uid,
            status,
            pid: rec.pid,
            processes,
            started_at: rec.started_at,
            ended_at: rec.ended_at,
            age_secs,
            cpu_usec,
            exit_code: rec.exit_code,
            exit_signal: rec.exit_signal,
            workspace: rec.workspace_path,
            cgroup: rec.cgroup_path,
            log_path: rec.log_path,
            sections,
            template: rec.template_name,
            ready_at: rec.ready_at,
            ready_on: rec.ready_on,
            status_text: rec.status_text,
            last_heartbeat,
            init_deadline: rec.init_deadline,
            total_deadline: rec.total_deadline,
            watchdog_deadline,
            stuck,
            loop_suspected: rec.loop_suspected,
            adopted: rec.adopted,
            waiting_for,
            workspace_cleanup,
            parent_run_id: rec.parent_run_id,
            ready_when,
            stall_deadline: progress.and_then(|(_, _, d)| d),
            last_progress: progress.map(|(at, _, _)| at),
            last_progress_kind: progress.map(|(_, kind, _)| kind.as_str().to_string()),
            retrying,
            end_reason,
            lease_ms: rec.lease_ms,
            lease_renewed_at: rec.lease_renewed_at,
            lease_expires_at: rec.lease_expires_at,
        }
    }
}

/// How an ended run ended, in words: why it was killed, else its exit.
fn end_reason(rec: &RunRecord) -> Option<String> {
    if rec.status.is_live() {
        return None;
    }
    if let Some(why) = rec.kill_result.as_ref().and_then(|k| k.reason.clone()) {
        return Some(why);
    }
    Some(match (rec.status, rec.exit_code, rec.exit_signal) {
        (RunStatus::OomKilled, _, _) => "out of memory: the kernel's OOM killer ended it".into(),
        (RunStatus::Lost, _, _) => "ended while nobody watched (no exit was reported)".into(),
        (_, Some(code), _) => format!("exited with status {code}"),
        (_, None, Some(sig)) => format!("ended by signal {sig}"),
        _ => match &rec.kill_result {
            Some(k) => k.message.clone(),
            None => rec.status.to_string(),
        },
    })
}

impl Agent {
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
        let mut sightings = self.kills.sightings.lock();
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
                    since,
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

impl Agent {
    /// `/metrics` on the socket: per-run series only for callers who may see
    /// every run; the aggregates for everyone.
    pub fn metrics_for(&self, caller: &Caller) -> String {
        self.metrics_text(self.sees_all(caller))
    }

    /// The metrics text for one scrape; `per_run` adds the series labelled with
    /// run ids and workflows.
    pub fn metrics_text(&self, per_run: bool) -> String {
        use std::sync::atomic::Ordering;
        let live_statuses = RunStatus::live();
        let (counts, live) = {
            let store = self.store();
            (
                store.count_by_status().unwrap_or_default(),
                store
                    .list_runs_for_checks(Some(&live_statuses))
                    .unwrap_or_default(),
            )
        };
        let now_t = chrono::Utc::now();
        let mut snap = Snapshot {
            runs_by_status: counts,
            audit_records: self.records.auditor.written.load(Ordering::Relaxed),
            audit_failures: self.records.auditor.failures.load(Ordering::Relaxed),
            audit_pending: self.records.auditor.pending() as u64,
            breakers_open: self.open_breakers() as u64,
            retrying: self.retrying_count(),
            ..Default::default()
        };
        let stats = self.records.alerter.stats();
        (snap.alerts_sent, snap.alerts_failed) = (stats.sent, stats.failed);
        for rec in &live {
            if self.stuck_reason(rec).is_some() {
                snap.stuck += 1;
            }
            if !per_run {
                continue;
            }
            let age = age_secs(rec.started_at, now_t);
            snap.live.push((
                rec.run_id.clone(),
                rec.workflow.clone().unwrap_or_default(),
                rec.status.as_str().to_owned(),
                age,
            ));
        }
        self.records.metrics.render(&snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_reason_is_the_kills_reason_else_the_exit() {
        let ended = |status, code, signal, kill: Option<&api::KillResult>| RunRecord {
            status,
            exit_code: code,
            exit_signal: signal,
            kill_result: kill.cloned(),
            ..Default::default()
        };
        assert_eq!(
            end_reason(&ended(RunStatus::Running, None, None, None)),
            None
        );
        let killed = api::KillResult {
            reason: Some("stalled: no progress".into()),
            ..Default::default()
        };
        assert_eq!(
            end_reason(&ended(RunStatus::TimedOut, None, Some(9), Some(&killed))).as_deref(),
            Some("stalled: no progress")
        );
        assert_eq!(
            end_reason(&ended(RunStatus::Exited, Some(3), None, None)).as_deref(),
            Some("exited with status 3")
        );
        assert_eq!(
            end_reason(&ended(RunStatus::Exited, None, Some(15), None)).as_deref(),
            Some("ended by signal 15")
        );
        assert!(
            end_reason(&ended(RunStatus::OomKilled, None, Some(9), None))
                .unwrap()
                .starts_with("out of memory")
        );
    }
}
