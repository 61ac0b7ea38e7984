//! Starting a run (`POST /v1/runs`): the checks a start must pass (the caller's
//! limits, the breaker, the template and the options a user may set), then its
//! cgroup, directories and TMPDIR, the move of the caller into it (none for a
//! root caller that starts its processes into it itself), and its record.
//!
//! [`Agent::create_run`] is one long sequence on purpose: each step undoes what the
//! steps before it made when it fails, which reads best in one place.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use rustix::mount::MountFlags;

use super::audit_trail::by_caller;
use super::{Agent, Caller, Failure, Result, layout, progress};
use crate::api::AuditAction;
use crate::api::AuditEntry;
use crate::api::{self, CreateRun, ErrorKind, RunStarted};
use crate::cgroup::{self, Cgroup};
use crate::procfs;
use crate::store::RunRecord;
use crate::template::{Template, TemplateError};
use crate::userfs::{self, Cred};

/// A fresh run id: `run_` and 12 lowercase hex digits.
pub(super) fn new_run_id() -> String {
    let mut bytes = [0u8; 6];
    rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).expect("getrandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("run_{hex}")
}

/// Moves the processes of `home` back to the cgroup `origin` (a path below the
/// cgroup2 mount) they came from; never kills them (one may be any process that
/// got a dead caller's recycled pid).
fn put_back(home: &Cgroup, origin: Option<&str>) {
    if let (Ok(mount), Some(origin)) = (cgroup::cgroup2_mount(), origin) {
        let back = Cgroup::new(mount.join(origin.trim_start_matches('/')));
        for pid in home.procs().unwrap_or_default() {
            tracing::warn!(pid, "moving a process back to {origin}: its start failed");
            let _ = back.add_process(pid);
        }
    }
}

impl Agent {
    /// Starts a run: creates its cgroup and directories, moves the caller into it,
    /// records it. On any failure nothing is left behind.
    pub fn create_run(self: &Arc<Self>, caller: &Caller, req: CreateRun) -> Result<RunStarted> {
        if req.command.is_empty() {
            return Err(Failure::new(ErrorKind::BadInput, "no command given"));
        }
        self.check_breaker(caller, req.workflow.as_deref())?;
        let (template_name, mut template) = self.resolve_template(caller, &req)?;
        self.apply_run_options(caller, &req, &mut template)?;
        // Held until the run is recorded: the caps stay exact under concurrent starts.
        let budget = self.check_budgets(caller, &template)?;
        let ms = std::time::Duration::from_millis;
        // Users may shorten the operator's timeouts, not lengthen or remove them.
        for (flag, value, slot) in [
            (
                "init timeout",
                req.init_timeout_ms,
                &mut template.timeouts.init,
            ),
            ("timeout", req.timeout_ms, &mut template.timeouts.total),
            ("watchdog", req.watchdog_ms, &mut template.timeouts.watchdog),
        ] {
            let Some(v) = value else { continue };
            if !caller.is_root() {
                crate::template::no_longer(flag, ms(v), *slot, true)
                    .map_err(|e| Failure::new(ErrorKind::BadInput, e.to_string()))?;
            }
            *slot = ms(v);
        }
        let ceiling = self.operator_ceiling(caller, &req, &template)?;
        // The template may remove only a workspace named explicitly, never a cwd.
        let cleanup_workspace = req.cleanup_workspace
            || (req.workspace.is_some()
                && template.cleanup.workspace == crate::template::WorkspacePolicy::Remove);
        if req.cleanup_workspace && req.workspace.is_none() {
            return Err(Failure::new(
                ErrorKind::BadInput,
                "cleanup_workspace needs an explicit workspace",
            ));
        }
        // A workspace to remove must be the caller's own directory, never `/`, a
        // home or a mount point; it is checked again, and removed as its owner, at
        // the end.
        if cleanup_workspace && let Some(ws) = &req.workspace {
            let cred = Cred::of_uid(caller.uid);
            if let Some(problem) =
                userfs::removal_problem(Path::new(ws), &cred, &crate::users::home_dirs(caller.uid))
            {
                return Err(Failure::new(
                    ErrorKind::BadInput,
                    format!("workspace {ws} cannot be removed at the end of the run: {problem}"),
                ));
            }
        }
        // Without an explicit workspace, the caller's working directory is where
        // the run writes its files (and where writes count as critical sections).
        let workspace = req.workspace.clone().or_else(|| {
            fs::read_link(self.cfg.proc_root.join(caller.pid.to_string()).join("cwd"))
                .ok()
                .map(|p| p.display().to_string())
        });
        let run_id = match req.run_id {
            Some(id) => {
                if let Some(problem) = api::run_id_problem(&id) {
                    return Err(Failure::new(ErrorKind::BadInput, problem));
                }
                id
            }
            None => new_run_id(),
        };
        let id = self.access.identity(caller);
        let my_teams = self.access.policy().teams_of(&id);
        let teams = match &req.team {
            Some(team) if !my_teams.contains(team) => {
                return Err(Failure::new(
                    ErrorKind::BadInput,
                    format!(
                        "team {team:?}: {} is not in it (their teams: {})",
                        id.user.as_deref().unwrap_or("caller"),
                        if my_teams.is_empty() {
                            "none".to_string()
                        } else {
                            my_teams.join(", ")
                        }
                    ),
                ));
            }
            Some(team) => vec![team.clone()],
            None => my_teams,
        };
        let conflict = || {
            Failure::new(
                ErrorKind::Conflict,
                format!("run id {run_id:?} is already in use"),
            )
        };
        if self.store().get_run(&run_id)?.is_some() {
            return Err(conflict());
        }
        // The caller was pinned by a pidfd when its connection was accepted; while
        // that process lives, its pid cannot name another one.
        let gone = || {
            Failure::new(
                ErrorKind::BadInput,
                format!(
                    "the process that connected (pid {}) is gone; a run is started by a \
                     live caller only",
                    caller.pid
                ),
            )
        };
        let pidfd = caller.pidfd.clone().ok_or_else(gone)?;
        // Who the supervisor is, for the requests that speak for it later.
        let identity = procfs::pidfd_identity(&self.cfg.proc_root, &*pidfd).map_err(|_| gone())?;
        let origin = cgroup::process_cgroup(&self.cfg.proc_root, caller.pid);
        if !procfs::pidfd_alive(&*pidfd) || origin.is_none() || identity.pid != caller.pid {
            return Err(gone());
        }
        // Started from inside a run: that run's child, killed with it.
        let parent_run_id = self.parent_run(origin.as_deref())?;

        let cg = self.runs_cg.child(&run_id);
        match cg.create_new() {
            Ok(()) => {}
            Err(cgroup::Error::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                return Err(conflict());
            }
            Err(e) => return Err(Failure::internal(e)),
        }
        // Limits apply from the first instruction: written before the caller moves
        // in, on runs/<id> so that they cover the supervisor and the payload.
        let mut warnings = cg.apply_limits(&template.limits);
        // A removal nobody typed on this command line is said before it happens.
        if cleanup_workspace && let Some(ws) = &req.workspace {
            let by = if req.cleanup_workspace {
                "--cleanup-workspace".to_string()
            } else {
                format!("the template {template_name} says [cleanup] workspace = \"remove\"")
            };
            warnings.push(format!(
                "the workspace {ws} will be removed when the run ends ({by}), unless it holds \
                 anything older than the run or a git repository with uncommitted changes or \
                 untracked files"
            ));
        }
        if let Err(e) = layout::create_leaves(&cg) {
            let _ = cg.remove_recursive();
            return Err(Failure::internal(e));
        }
        let run_dir = self.run_dirs.join(&run_id);
        let tmpdir = self.tmp_dirs.join(&run_id);
        let log_path = req
            .detach
            .then(|| self.log_dirs.join(format!("{run_id}.log")));
        let undo = |msg: String| {
            self.forget_lock_creators(&run_id);
            let _ = cg.remove_recursive();
            // The caller may have written into them already: as them, bounded.
            let budget = crate::walk::Budget::from_env();
            let cred = crate::userfs::Cred::of_uid(caller.uid);
            let _ = crate::tmpfs::unmount(&run_dir);
            let _ = crate::walk::remove_agent_dir(&run_dir, &cred, &budget);
            let _ = crate::tmpfs::unmount(&tmpdir);
            let _ = crate::walk::remove_agent_dir(&tmpdir, &cred, &budget);
            if let Some(log) = &log_path {
                let _ = fs::remove_file(log);
            }
            Failure::new(ErrorKind::Internal, msg)
        };
        let owned = |path: &Path, dir: bool| -> std::io::Result<()> {
            if dir {
                fs::create_dir(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
            } else {
                fs::File::create(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
            }
            std::os::unix::fs::chown(path, Some(caller.uid), Some(caller.gid))
        };
        // The run directory on a small tmpfs of its own: a run filling it cannot
        // fill the file system of the agent's socket (`/run`), where the stop
        // reasons of every run are written. Mounted on a directory still root's.
        fs::create_dir(&run_dir)
            .and_then(|()| fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| undo(format!("cannot create {}: {e}", run_dir.display())))?;
        let run_dir_size = self.access.policy().limits.run_dir_size.clone();
        if let Err(e) = crate::tmpfs::mount_with(
            &run_dir,
            &run_dir_size,
            caller.uid,
            caller.gid,
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        ) {
            warnings.push(format!(
                "the run directory {} is a plain directory, without a size limit: cannot \
                 mount a tmpfs of {run_dir_size} on it: {e}",
                run_dir.display()
            ));
            std::os::unix::fs::chown(&run_dir, Some(caller.uid), Some(caller.gid))
                .map_err(|e| undo(format!("cannot chown {}: {e}", run_dir.display())))?;
        }
        if let Some(log) = &log_path {
            owned(log, false).map_err(|e| undo(format!("cannot create {}: {e}", log.display())))?;
        }
        // TMPDIR on a tmpfs of its own: filling it cannot fill the store's disk. It
        // is mounted on a directory still root's (0700), so nothing of the user's
        // can be opened below the mount first; the tmpfs root is the user's.
        fs::create_dir(&tmpdir)
            .and_then(|()| fs::set_permissions(&tmpdir, fs::Permissions::from_mode(0o700)))
            .map_err(|e| undo(format!("cannot create {}: {e}", tmpdir.display())))?;
        if let Err(e) = crate::tmpfs::mount(&tmpdir, &template.tmpdir.size, caller.uid, caller.gid)
        {
            warnings.push(format!(
                "TMPDIR {} is a plain directory on the agent's state filesystem: cannot \
                 mount a tmpfs of {} on it: {e}",
                tmpdir.display(),
                template.tmpdir.size
            ));
            std::os::unix::fs::chown(&tmpdir, Some(caller.uid), Some(caller.gid))
                .map_err(|e| undo(format!("cannot chown {}: {e}", tmpdir.display())))?;
        }
        // Move the caller, then confirm through its pidfd that it was alive all along:
        // alive before and after the write, so the pid named it at the write. If it
        // died in between, whatever the pid named then is put back where the caller
        // was, never killed (it may be any process that got the recycled pid).
        // A caller that starts its command into the payload itself goes straight to
        // the supervisor leaf: one move, and no second request to leave the payload.
        // Its git locks are known by their creator from its first instruction.
        self.watch_run_locks(&run_id, workspace.as_deref(), caller.pid);
        let direct = req.spawn_into_payload && self.may_spawn_into_payload(caller);
        // A caller that also starts its keeper into the supervisor leaf is not
        // moved at all: no cgroup migration on its start (see run/spawn.rs).
        // Not from inside a run: there it would stay in the parent's payload,
        // and the parent's kill would signal it as one of the parent's processes
        // before it is the child's turn to be killed (and reported).
        // Nor from a cgroup a user was delegated (see may_stay_outside).
        let outside = direct
            && req.stay_outside
            && parent_run_id.is_none()
            && Self::may_stay_outside(origin.as_deref());
        let home = (!outside).then(|| layout::first_home(&cg, direct));
        if !procfs::pidfd_alive(&*pidfd) {
            return Err(undo(gone().message));
        }
        if let Some(home) = &home
            && let Err(e) = home.add_process(caller.pid)
        {
            return Err(undo(e.to_string()));
        }
        if let Some(home) = &home
            && !procfs::pidfd_alive(&*pidfd)
        {
            tracing::warn!(run_id, "the caller died during its move");
            put_back(home, origin.as_deref());
            return Err(undo(gone().message));
        }
        let mut rec = RunRecord {
            run_id: run_id.clone(),
            pid: Some(caller.pid),
            pid_starttime: Some(identity.starttime),
            started_at: Some(chrono::Utc::now()),
            workspace_path: workspace,
            cleanup_workspace,
            // With its ceiling: set by `initial_deadlines` below.
            template_name: Some(template_name.clone()),
            notify_socket: Some(self.notify_dirs.join(&run_id).display().to_string()),
            teams,
            owner_uid: caller.uid,
            workflow: req.workflow,
            command: req.command,
            cgroup_path: cg.path().display().to_string(),
            run_dir: Some(run_dir.display().to_string()),
            tmpdir: Some(tmpdir.display().to_string()),
            log_path: log_path.as_ref().map(|p| p.display().to_string()),
            parent_run_id,
            ..Default::default()
        };
        Agent::initial_deadlines(&template, ceiling, &mut rec);
        if let Some(ms) = req.lease_ms {
            rec.lease_ms = Some(ms);
            rec.lease_expires_at = rec
                .started_at
                .map(|t| crate::bounds::later(t, std::time::Duration::from_millis(ms)));
        }
        // Synced with the run_start audit record below, within
        // audit::SYNC_WITHIN: a start does not wait for the disk.
        let inserted = super::budget::Slot::recording(budget, || {
            self.store().with_sync(false, |s| s.insert_run(&rec))
        });
        if let Err(e) = inserted {
            // Never a SIGKILL of the caller (a full disk did that): it goes back
            // where it came from, and is told why.
            if let Some(home) = &home {
                put_back(home, origin.as_deref());
            }
            let internal = undo(format!("cannot record the run: {e}"));
            return Err(super::budget::no_space(&e, &self.cfg.state_dir).unwrap_or(internal));
        }
        self.supervisors.pin(&run_id, identity);
        self.parent_still_live(&rec)?;
        tracing::info!(run_id, uid = caller.uid, pid = caller.pid, "run started");
        self.audit_event_soon(AuditEntry {
            action: AuditAction::RunStart,
            run_id: Some(run_id.clone()),
            outcome: "started".into(),
            ..by_caller(caller, &id)
        });
        // The notify socket is bound before the answer, so the command can use it at once.
        self.lifecycle_begin(&rec, false);
        if outside {
            // Empty until the caller's keeper arrives, which it cannot before
            // this answer: looked at within a second, and found over then only
            // if the caller is gone (on_run_empty).
            self.reaper.recheck(&run_id, &cg);
        } else {
            self.reaper.watch(&run_id, &cg, &**self);
        }
        for w in &warnings {
            tracing::warn!(run_id, "{w}");
        }
        Ok(RunStarted {
            run_id,
            run_dir: rec.run_dir.unwrap_or_default(),
            tmpdir: rec.tmpdir.unwrap_or_default(),
            cgroup: rec.cgroup_path,
            log_path: rec.log_path,
            notify_socket: rec.notify_socket,
            template: template_name,
            warnings,
            watch: progress::watch_for(&template, req.detach),
            spawn_into: direct.then(|| layout::payload(&cg).path().display().to_string()),
            keeper_into: outside.then(|| cg.child(layout::SUPERVISOR).path().display().to_string()),
        })
    }

    /// Whether the caller may start its command into the payload itself with
    /// `clone3(CLONE_INTO_CGROUP)`: the kernel lets only a caller that may write
    /// the payload's `cgroup.procs` and the run's (their common ancestor with
    /// the supervisor leaf) do it, which is root (the files stay root's: handing
    /// them to a user would let the run move its processes out of the payload).
    /// The caller must see the run's cgroups as the agent does: the same cgroup
    /// namespace (else the kernel refuses) and mount namespace (the path in the
    /// answer names the same directory).
    fn may_spawn_into_payload(&self, caller: &Caller) -> bool {
        caller.is_root()
            && procfs::shares_namespaces(&self.cfg.proc_root, caller.pid, &["cgroup", "mnt"])
    }

    /// Whether root's supervisor may stay where it was started, beside its run:
    /// only in a cgroup no user was delegated (its `cgroup.procs` root's), so that
    /// no user can freeze or kill root's supervisor there (a desktop session's
    /// scopes are its user's).
    fn may_stay_outside(origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return false;
        };
        cgroup::cgroup2_mount().is_ok_and(|mount| {
            let procs = mount
                .join(origin.trim_start_matches('/'))
                .join("cgroup.procs");
            rustix::fs::stat(&procs).is_ok_and(|st| st.st_uid == 0)
        })
    }

    /// The template a new run gets: its text if the client sent one, a template
    /// named with `template`, else the one named like the workflow, else `default`.
    /// A template text from anyone but root is confined to what a user may ask
    /// for ([`Template::confine`]) over the template the run would get without it.
    pub(super) fn resolve_template(
        &self,
        caller: &Caller,
        req: &CreateRun,
    ) -> Result<(String, Template)> {
        let bad = |e: TemplateError| Failure::new(ErrorKind::BadInput, e.to_string());
        if let Some(text) = &req.template_text {
            let name = req.template.clone().unwrap_or_else(|| "template".into());
            if caller.is_root() {
                return Template::parse(text, &name).map(|t| (name, t)).map_err(bad);
            }
            let base = match &req.workflow {
                Some(workflow) => {
                    Template::find_in(&self.cfg.templates_dir, workflow).map_err(bad)?
                }
                None => None,
            }
            .unwrap_or_else(|| self.template.clone());
            return Template::confine(text, &name, &base)
                .map(|t| (name, t))
                .map_err(bad);
        }
        if let Some(name) = &req.template {
            return Template::lookup_in(&self.cfg.templates_dir, name)
                .map(|t| (name.clone(), t))
                .map_err(bad);
        }
        // A workflow named like no template gets the default (unless the
        // caller asked for its template); a broken one is an error.
        if let Some(workflow) = &req.workflow {
            if let Some(t) = Template::find_in(&self.cfg.templates_dir, workflow).map_err(bad)? {
                return Ok((workflow.clone(), t));
            }
            if req.workflow_needs_template {
                let known: Vec<String> = Template::list_in(&self.cfg.templates_dir)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                return Err(Failure::new(
                    ErrorKind::BadInput,
                    format!(
                        "--workflow {workflow}: no template of that name (known: {}); add {}/{workflow}.toml, \
                         or give the run's template with --template FILE (an empty file: the default's)",
                        known.join(", "),
                        self.cfg.templates_dir.display()
                    ),
                ));
            }
        }
        Ok(("default".into(), self.template.clone()))
    }
}
