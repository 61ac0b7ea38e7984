//! Permission questions: "may uid U kill run R (with force)?", answered from the
//! policy exactly as a kill would be decided, without touching the run. Executors
//! ask before offering a kill button; every question is audited as
//! `permission_query`.

use super::audit_trail::by_caller;
use super::time::now;
use super::{Agent, Caller, Failure, Result};
use crate::api::AuditEntry;
use crate::api::{AuditAction, Decision};
use crate::api::{ErrorKind, KillMode, MayKill, MayKillQuery};
use crate::policy::{Action, Permission};

impl Agent {
    /// Answers a [`MayKillQuery`]. A user may ask about themselves; asking about
    /// another uid needs view_all. The question goes to the audit trail: its
    /// decision and permission are the answer's, its outcome `answered`; a
    /// question refused is `denied` on view_all.
    pub fn may_kill(&self, caller: &Caller, run_id: &str, q: MayKillQuery) -> Result<MayKill> {
        let asker = self.access.identity(caller);
        let uid = q.uid.unwrap_or(caller.uid);
        let mode = q.mode;
        let mut entry = AuditEntry {
            time: now(),
            action: AuditAction::PermissionQuery,
            run_id: Some(run_id.to_owned()),
            reason: Some(format!("may uid {uid} kill ({mode})?")),
            mode: Some(mode.to_string()),
            decision: Decision::NotNeeded,
            ..by_caller(caller, &asker)
        };
        let answer = self.answer_may_kill(caller, &asker, run_id, &q, mode, &mut entry);
        entry.outcome = match &answer {
            Ok(_) => "answered".into(),
            Err(f) if f.kind == ErrorKind::Forbidden => "denied".into(),
            Err(f) if f.kind == ErrorKind::NotFound => "no_such_run".into(),
            Err(_) => "bad_input".into(),
        };
        self.records.auditor.record(&self.runs.store, entry);
        answer
    }

    fn answer_may_kill(
        &self,
        caller: &Caller,
        asker: &crate::policy::Identity,
        run_id: &str,
        q: &MayKillQuery,
        mode: KillMode,
        entry: &mut AuditEntry,
    ) -> Result<MayKill> {
        let uid = q.uid.unwrap_or(caller.uid);
        let subject = if uid == caller.uid {
            asker.clone()
        } else {
            let may_ask = self
                .access
                .policy()
                .permissions(asker)
                .contains(&Permission::ViewAll);
            if !may_ask {
                entry.decision = Decision::Denied;
                entry.permission = Some(Permission::ViewAll.as_str().into());
                return Err(Failure::new(
                    ErrorKind::Forbidden,
                    format!("not permitted: asking what uid {uid} may do needs view_all"),
                ));
            }
            self.access.identity_of_uid(uid)
        };
        let rec = self.find_run(run_id)?;
        let action = Action::Kill { mode };
        let d = self.decide(&subject, action, &rec);
        entry.decision = Decision::of(d.allowed);
        entry.permission = d.permission.map(|p| p.as_str().into());
        Ok(MayKill {
            allowed: d.allowed,
            permission: d.permission.map(|p| p.as_str().into()),
            message: format!("run {run_id}: {}", d.message),
            run_id: run_id.to_owned(),
            uid,
            user: subject.user,
            mode,
        })
    }
}
