//! The answer to a kill, built once from what the kill did:
//! [`KillResult::build`], a pure function of the run's record, the request,
//! the kill's report and its cleanup, without I/O. Its steps are the private
//! functions below: [`from_report`], then one of [`unconfirmed`], [`emptied`]
//! or [`survived`], then [`note_errors`]. A kill request's audit record takes
//! [`audit_outcome`].

use chrono::{DateTime, Utc};

use super::Failure;
use super::kills::Sighting;
use crate::api::{self, ErrorKind, KillMode, KillRequest, KillResult, MAX_REASON, RunStatus};
use crate::kill;
use crate::store::RunRecord;

/// The answer to a kill of a run that had ended already.
pub(super) fn already_ended(rec: &RunRecord, status: RunStatus) -> KillResult {
    let how = match (status, rec.exit_code, rec.exit_signal) {
        (RunStatus::Exited, Some(c), _) => format!("exited with status {c}"),
        (RunStatus::Exited, _, Some(s)) => format!("exited on signal {s}"),
        (RunStatus::Killed, ..) => "was killed".to_string(),
        (RunStatus::TimedOut, ..) => "was killed by the monitor (timed out)".to_string(),
        (other, ..) => format!("ended as {other}"),
    };
    let previous = rec.kill_result.as_ref();
    KillResult {
        success: true,
        run_id: rec.run_id.clone(),
        killed_at: previous.and_then(|p| p.killed_at),
        cleanup_status: previous
            .map(|p| p.cleanup_status.clone())
            .unwrap_or_default(),
        message: format!("run {} already ended: it {how}", rec.run_id),
        already_ended: true,
        ended_as: Some(status.as_str().into()),
        mode: None,
        ..Default::default()
    }
}

/// What a kill sequence did, for its answer.
pub(super) struct Done<'a> {
    pub(super) rec: &'a RunRecord,
    pub(super) req: &'a KillRequest,
    pub(super) report: &'a kill::Report,
    /// When the sequence began.
    pub(super) started_at: DateTime<Utc>,
    /// How long it prepared (the plan, the `kill_start` record), in ms.
    pub(super) prepared_ms: f64,
    /// What a force kill reports as open, not having looked: the sections the
    /// run was last seen holding.
    pub(super) last_seen: &'a [Sighting],
    /// How the run ends if nothing of it is left.
    pub(super) end: RunStatus,
}

/// What the cleanup after an emptied cgroup did (none runs otherwise).
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    /// When the cgroup was found empty.
    pub(super) killed_at: DateTime<Utc>,
    pub(super) status: api::CleanupStatus,
    pub(super) duration_ms: f64,
    /// Each step's name and duration in ms.
    pub(super) steps: Vec<(&'static str, f64)>,
}

impl KillResult {
    /// The answer to a kill, from what it did (`kill`) and its cleanup (when
    /// the cgroup was emptied), and the status the run is left in.
    pub(super) fn build(kill: &Done<'_>, cleanup: Option<Cleanup>) -> (KillResult, RunStatus) {
        let Done { rec, report, .. } = *kill;
        let mut result = from_report(rec, kill.req, report, kill.started_at);
        result.phases.insert(
            0,
            api::Phase {
                name: "prepare".into(),
                duration_ms: kill.prepared_ms,
                detail: "the plan, the kill_start record, the lock creators so far".into(),
            },
        );
        result
            .sections
            .extend(kill.last_seen.iter().map(|s| api::Section {
                kind: s.finding.kind,
                path: s.finding.path.clone(),
                pid: s.finding.pid,
                command: s.finding.command.clone(),
                since: s.first,
                open_secs: (s.last - s.first).num_milliseconds() as f64 / 1e3,
            }));
        let status = if let Some(why) = &report.unconfirmed {
            unconfirmed(&mut result, rec, why)
        } else if report.survivors.is_empty() {
            let cleanup = cleanup.unwrap_or_default();
            result.killed_at = Some(cleanup.killed_at);
            result.cleanup_status = cleanup.status;
            let steps: Vec<String> = cleanup
                .steps
                .iter()
                .map(|(name, ms)| format!("{name} {ms:.2} ms"))
                .collect();
            result.phases.push(api::Phase {
                name: "cleanup".into(),
                duration_ms: cleanup.duration_ms,
                detail: format!("{} ({})", result.cleanup_status.summary(), steps.join(", ")),
            });
            emptied(&mut result, rec, report.processes, kill.end)
        } else {
            survived(&mut result, rec, &report.survivors)
        };
        note_errors(&mut result, &report.errors);
        (result, status)
    }
}

/// The answer's account of what the kill did, from its report; whether it
/// succeeded is for [`unconfirmed`], [`emptied`] or [`survived`] to say.
fn from_report(
    rec: &RunRecord,
    req: &KillRequest,
    report: &kill::Report,
    started_at: DateTime<Utc>,
) -> KillResult {
    KillResult {
        run_id: rec.run_id.clone(),
        mode: Some(req.mode()),
        reason: req.reason.clone(),
        processes_killed: report.processes,
        phases: report.phases.clone(),
        sections: report
            .sections
            .iter()
            .map(|s| api::Section {
                kind: s.finding.kind,
                path: s.finding.path.clone(),
                pid: s.finding.pid,
                command: s.finding.command.clone(),
                since: crate::bounds::later(started_at, s.first),
                open_secs: (s.last - s.first).as_secs_f64(),
            })
            .collect(),
        waited_ms: report.waited.as_secs_f64() * 1e3,
        graces_expired: report.graces_expired.clone(),
        max_wait_expired: report.max_wait_expired,
        ..Default::default()
    }
}

/// A kill whose end could not be confirmed (a read failed, `why`): the run is
/// not known to be over. It stays live (its TMPDIR and cgroup untouched), the
/// kill fails, and may be retried. Returns the status the run keeps.
fn unconfirmed(result: &mut KillResult, rec: &RunRecord, why: &str) -> RunStatus {
    result.message = format!(
        "run {}: the kill could not be confirmed ({why}); the run stays {} and \
         the kill may be retried",
        rec.run_id, rec.status
    );
    Some(rec.status)
        .filter(|s| s.is_live() && *s != RunStatus::Stopping)
        .unwrap_or(RunStatus::Running)
}

/// A kill that emptied the run's cgroup, once its cleanup is in
/// `result.cleanup_status`: `processes` were in the cgroup when it began. The
/// run ends as `end` (`killed` only when nothing is left), else it is unkillable.
fn emptied(result: &mut KillResult, rec: &RunRecord, processes: u32, end: RunStatus) -> RunStatus {
    let clean = result.cleanup_status.processes_remaining == 0;
    result.success = clean;
    let escaped = &result.cleanup_status.escapees_killed;
    result.message = if clean {
        format!(
            "run {} killed ({}): {} processes ended, nothing left",
            rec.run_id,
            KillMode::or_none(result.mode),
            processes as usize + escaped.len()
        )
    } else {
        format!(
            "run {} is unkillable: cgroup empty but {} processes carrying its marker \
             remain outside it: {}",
            rec.run_id,
            result.cleanup_status.processes_remaining,
            result.cleanup_status.survivors.join("; ")
        )
    };
    if !escaped.is_empty() {
        result.message.push_str(&format!(
            "; {} of them had left its cgroup (pids {escaped:?}), killed through pidfds",
            escaped.len()
        ));
    }
    if !result.sections.is_empty() {
        result.message.push_str(&format!(
            "; {} critical section(s) seen, waited {:.1} s",
            result.sections.len(),
            result.waited_ms / 1e3
        ));
    }
    if !result.cleanup_status.stale_locks_removed.is_empty() {
        result.message.push_str(&format!(
            "; removed stale lock(s) {}",
            result.cleanup_status.stale_locks_removed.join(", ")
        ));
    }
    if clean { end } else { RunStatus::Unkillable }
}

/// The processes of an adopted tree its adoption left alone and that are alive
/// after the kill (`alive`, described): the tree is not gone, whatever its
/// cgroup says, so the kill does not say "nothing left" and does not succeed.
pub(super) fn left_alone(result: &mut KillResult, alive: Vec<String>) {
    if alive.is_empty() {
        return;
    }
    result.success = false;
    result.cleanup_status.processes_remaining += alive.len() as u32;
    result.message = format!(
        "{}; {} process(es) of its tree live on outside it, left alone when it was \
         adopted: {}",
        result.message.replacen(", nothing left", "", 1),
        alive.len(),
        alive.join("; ")
    );
    result.cleanup_status.left_alone = alive;
}

/// A kill that `survivors` outlived: the run is unkillable. Its cgroup stays
/// frozen (the hard kill left it so) and in place: a later kill retries.
fn survived(result: &mut KillResult, rec: &RunRecord, survivors: &[kill::Survivor]) -> RunStatus {
    result.cleanup_status.processes_remaining = survivors.len() as u32;
    let names: Vec<String> = survivors.iter().map(kill::Survivor::describe).collect();
    result.message = format!(
        "run {} is unkillable: {} processes survived cgroup.kill: {}",
        rec.run_id,
        survivors.len(),
        names.join("; ")
    );
    RunStatus::Unkillable
}

/// Errors that did not stop the kill, named at the end of its message.
fn note_errors(result: &mut KillResult, errors: &[crate::kill::KillError]) {
    if !errors.is_empty() {
        let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
        result
            .message
            .push_str(&format!(" (errors: {})", texts.join("; ")));
    }
}

/// The reason as the audit trail records it: only the accepted length
/// ([`MAX_REASON`] bytes, cut at a character boundary), whatever was sent.
pub(super) fn recorded_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

/// The outcome of a kill attempt as its audit record says it.
pub(super) fn audit_outcome(outcome: &Result<KillResult, Failure>) -> &'static str {
    match outcome {
        Ok(r) if r.already_ended => "already_ended",
        Ok(r) if r.success => "killed",
        Ok(r) if r.mode.is_none() => "failed",
        // Not confirmed over, nothing survivor-listed: a failed kill, not an unkillable run.
        Ok(r) if r.killed_at.is_none() && r.cleanup_status.processes_remaining == 0 => "failed",
        Ok(_) => "unkillable",
        Err(f) => match f.kind {
            ErrorKind::NotFound => "no_such_run",
            ErrorKind::Forbidden => "denied",
            ErrorKind::BadInput | ErrorKind::Conflict => "bad_input",
            ErrorKind::Internal | ErrorKind::BreakerOpen | ErrorKind::NoSpace => "failed",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SectionKind;
    use crate::api::time::{format, parse};
    use crate::sections::Finding;
    use std::time::Duration;

    fn run(status: RunStatus) -> RunRecord {
        RunRecord {
            run_id: "run_1".into(),
            status,
            ..Default::default()
        }
    }

    /// A request with the older flags, as a client sends them.
    fn forced(force: bool, emergency: bool) -> KillRequest {
        let body = serde_json::json!({"force": force, "emergency": emergency});
        serde_json::from_value(body).unwrap()
    }

    fn git_lock(pid: i32) -> Finding {
        Finding {
            kind: SectionKind::Git,
            path: "/w/.git/index.lock".into(),
            pid,
            command: "git commit".into(),
            dev: 1,
            ino: 2,
        }
    }

    #[test]
    fn the_mode_is_the_strongest_asked_for() {
        assert_eq!(forced(false, false).mode(), KillMode::Graceful);
        assert_eq!(forced(true, false).mode(), KillMode::Force);
        assert_eq!(forced(false, true).mode(), KillMode::Emergency);
        assert_eq!(forced(true, true).mode(), KillMode::Emergency);
    }

    #[test]
    fn a_run_that_ended_answers_success_with_how_and_its_earlier_kill() {
        let mut rec = run(RunStatus::Exited);
        rec.exit_code = Some(3);
        let r = already_ended(&rec, RunStatus::Exited);
        assert!(r.success && r.already_ended);
        assert_eq!(r.mode, None);
        assert_eq!(r.ended_as.as_deref(), Some("exited"));
        assert_eq!(
            r.message,
            "run run_1 already ended: it exited with status 3"
        );
        assert_eq!(r.killed_at, None);

        let earlier = KillResult {
            killed_at: Some(parse("2026-01-01T00:00:00.000Z").unwrap()),
            cleanup_status: api::CleanupStatus {
                cgroup_removed: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut rec = run(RunStatus::TimedOut);
        rec.kill_result = Some(earlier.clone());
        let r = already_ended(&rec, RunStatus::TimedOut);
        assert_eq!(r.killed_at, earlier.killed_at);
        assert!(r.cleanup_status.cgroup_removed);
        assert!(
            r.message
                .ends_with("it was killed by the monitor (timed out)")
        );
        let mut signalled = run(RunStatus::Exited);
        signalled.exit_signal = Some(9);
        assert!(
            already_ended(&signalled, RunStatus::Exited)
                .message
                .ends_with("it exited on signal 9")
        );
    }

    #[test]
    fn the_report_is_carried_over_with_sections_dated_from_the_start() {
        let started = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let report = kill::Report {
            processes: 7,
            sections: vec![kill::Seen {
                finding: git_lock(42),
                first: Duration::from_millis(1500),
                last: Duration::from_millis(4000),
            }],
            waited: Duration::from_millis(2500),
            graces_expired: vec![SectionKind::Git],
            max_wait_expired: true,
            ..Default::default()
        };
        let req = KillRequest::new(KillMode::Force, Some("stuck".into()));
        let r = from_report(&run(RunStatus::Running), &req, &report, started);
        assert_eq!(
            (r.run_id.as_str(), r.mode),
            ("run_1", Some(KillMode::Force))
        );
        assert_eq!(r.reason.as_deref(), Some("stuck"));
        assert_eq!(r.processes_killed, 7);
        assert_eq!(r.waited_ms, 2500.0);
        assert_eq!(r.graces_expired, vec![SectionKind::Git]);
        assert!(r.max_wait_expired && !r.success);
        assert_eq!(r.sections.len(), 1);
        assert_eq!(format(&r.sections[0].since), "2026-01-01T00:00:01.500Z");
        assert_eq!(r.sections[0].open_secs, 2.5);
        assert_eq!(
            (r.sections[0].pid, r.sections[0].kind),
            (42, SectionKind::Git)
        );
        assert_eq!(
            format(&crate::bounds::later(started, Duration::ZERO)),
            "2026-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn an_unconfirmed_kill_leaves_the_run_live_and_retriable() {
        let mut r = KillResult::default();
        let status = unconfirmed(&mut r, &run(RunStatus::Initializing), "EIO");
        assert_eq!(status, RunStatus::Initializing);
        assert!(!r.success);
        assert!(
            r.message.contains("could not be confirmed (EIO)"),
            "{}",
            r.message
        );
        // A run marked stopping by this kill goes back to running, not stopping.
        let status = unconfirmed(&mut r, &run(RunStatus::Stopping), "EIO");
        assert_eq!(status, RunStatus::Running);
        assert_eq!(
            unconfirmed(&mut r, &run(RunStatus::Unknown), "EIO"),
            RunStatus::Unknown
        );
    }

    #[test]
    fn an_emptied_run_ends_as_asked_only_when_nothing_is_left() {
        let mut r = KillResult {
            mode: Some(KillMode::Graceful),
            ..Default::default()
        };
        r.cleanup_status.escapees_killed = vec![900];
        r.cleanup_status.stale_locks_removed = vec!["/w/.git/index.lock".into()];
        let status = emptied(&mut r, &run(RunStatus::Stopping), 3, RunStatus::TimedOut);
        assert_eq!(status, RunStatus::TimedOut);
        assert!(r.success);
        assert_eq!(
            r.message,
            "run run_1 killed (graceful): 4 processes ended, nothing left; 1 of them had \
             left its cgroup (pids [900]), killed through pidfds; removed stale lock(s) \
             /w/.git/index.lock"
        );

        let mut r = KillResult::default();
        r.cleanup_status.processes_remaining = 2;
        r.cleanup_status.survivors = vec!["pid 5 (a)".into(), "pid 6 (b)".into()];
        let status = emptied(&mut r, &run(RunStatus::Stopping), 3, RunStatus::Killed);
        assert_eq!(status, RunStatus::Unkillable);
        assert!(!r.success);
        assert!(
            r.message.ends_with(
                "2 processes carrying its marker remain outside it: pid 5 (a); pid 6 (b)"
            ),
            "{}",
            r.message
        );
    }

    #[test]
    fn survivors_of_the_hard_kill_make_the_run_unkillable_and_are_named() {
        let mut r = KillResult::default();
        let survivor = kill::Survivor {
            pid: 77,
            state: Some('D'),
            cmdline: Some("fuse-wait".into()),
            wchan: Some("request_wait_answer".into()),
            stack: None,
        };
        let status = survived(
            &mut r,
            &run(RunStatus::Stopping),
            std::slice::from_ref(&survivor),
        );
        assert_eq!(status, RunStatus::Unkillable);
        assert_eq!(r.cleanup_status.processes_remaining, 1);
        assert!(!r.success);
        assert_eq!(
            r.message,
            format!(
                "run run_1 is unkillable: 1 processes survived cgroup.kill: {}",
                survivor.describe()
            )
        );
        note_errors(&mut r, &[]);
        assert!(!r.message.contains("errors"));
        note_errors(
            &mut r,
            &[
                crate::kill::KillError::StopReason("a".into()),
                crate::kill::KillError::Freeze("b".into()),
            ],
        );
        assert!(r.message.ends_with(" (errors: a; b)"), "{}", r.message);
    }

    #[test]
    fn the_answer_is_built_once_from_the_report_what_was_last_seen_and_the_cleanup() {
        let started = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rec = run(RunStatus::Stopping);
        let req = forced(true, false);
        let seen = [Sighting {
            finding: git_lock(5),
            first: started,
            last: started + chrono::Duration::seconds(2),
        }];
        let emptied_report = kill::Report {
            processes: 2,
            ..Default::default()
        };
        let done = |report| Done {
            rec: &rec,
            req: &req,
            report,
            started_at: started,
            prepared_ms: 1.5,
            last_seen: &seen,
            end: RunStatus::Killed,
        };
        let cleanup = Cleanup {
            killed_at: parse("2026-01-01T00:00:03.000Z").unwrap(),
            status: api::CleanupStatus {
                cgroup_removed: true,
                ..Default::default()
            },
            duration_ms: 3.0,
            steps: vec![("rmdir", 0.25)],
        };
        let (r, status) = KillResult::build(&done(&emptied_report), Some(cleanup));
        assert_eq!(status, RunStatus::Killed);
        assert!(r.success && r.cleanup_status.cgroup_removed);
        assert_eq!(
            r.killed_at.as_ref().map(format).as_deref(),
            Some("2026-01-01T00:00:03.000Z")
        );
        let phases: Vec<&str> = r.phases.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(phases, ["prepare", "cleanup"]);
        assert_eq!(r.phases[0].duration_ms, 1.5);
        assert!(
            r.phases[1].detail.ends_with("(rmdir 0.25 ms)"),
            "{}",
            r.phases[1].detail
        );
        assert_eq!(r.sections.len(), 1);
        assert_eq!(
            (
                format(&r.sections[0].since).as_str(),
                r.sections[0].open_secs
            ),
            ("2026-01-01T00:00:00.000Z", 2.0)
        );
        assert!(
            r.message.starts_with(
                "run run_1 killed (force): 2 processes ended, nothing left; 1 critical section(s) seen"
            ),
            "{}",
            r.message
        );

        // Not confirmed: no cleanup, no time of death, the run stays live.
        let unconfirmed_report = kill::Report {
            unconfirmed: Some("EIO".into()),
            errors: vec![crate::kill::KillError::Freeze("b".into())],
            ..Default::default()
        };
        let (r, status) = KillResult::build(&done(&unconfirmed_report), None);
        assert_eq!(status, RunStatus::Running);
        assert!(!r.success && r.killed_at.is_none());
        assert!(r.message.ends_with(" (errors: b)"), "{}", r.message);
        assert_eq!(r.phases.len(), 1);

        // Survivors: unkillable, and no cleanup ran.
        let survived_report = kill::Report {
            survivors: vec![kill::Survivor {
                pid: 77,
                state: Some('D'),
                cmdline: None,
                wchan: None,
                stack: None,
            }],
            ..Default::default()
        };
        let (r, status) = KillResult::build(&done(&survived_report), None);
        assert_eq!(status, RunStatus::Unkillable);
        assert_eq!(r.cleanup_status.processes_remaining, 1);
        assert!(r.killed_at.is_none());
    }

    #[test]
    fn a_long_reason_is_recorded_cut_at_a_character_boundary() {
        assert_eq!(recorded_reason("short"), "short");
        let long = format!("{}é", "a".repeat(MAX_REASON - 1));
        let cut = recorded_reason(&long);
        assert_eq!(cut.len(), MAX_REASON - 1);
        assert!(cut.chars().all(|c| c == 'a'));
    }

    #[test]
    fn each_outcome_of_a_kill_has_its_audit_word() {
        let ok = |f: fn(&mut KillResult)| {
            let mut r = KillResult {
                mode: Some(KillMode::Force),
                ..Default::default()
            };
            f(&mut r);
            audit_outcome(&Ok(r))
        };
        assert_eq!(ok(|r| r.already_ended = true), "already_ended");
        assert_eq!(ok(|r| r.success = true), "killed");
        assert_eq!(ok(|r| r.mode = None), "failed");
        assert_eq!(ok(|_| {}), "failed");
        assert_eq!(
            ok(|r| r.cleanup_status.processes_remaining = 1),
            "unkillable"
        );
        assert_eq!(ok(|r| r.killed_at = Some(Utc::now())), "unkillable");
        let err = |kind| audit_outcome(&Err(Failure::new(kind, "x")));
        assert_eq!(err(ErrorKind::NotFound), "no_such_run");
        assert_eq!(err(ErrorKind::Forbidden), "denied");
        assert_eq!(err(ErrorKind::BadInput), "bad_input");
        assert_eq!(err(ErrorKind::Conflict), "bad_input");
        assert_eq!(err(ErrorKind::Internal), "failed");
        assert_eq!(err(ErrorKind::BreakerOpen), "failed");
    }
}
