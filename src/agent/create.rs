//! Starting a run (`POST /v1/runs`): the checks a start must pass (the caller's
//! limits, the breaker, the template and the options a user may set), then its
//! cgroup, directories and TMPDIR, the move of the caller into it (none for a
//! root caller that starts its processes into it itself), and its record.
//!
//! [`Agent::create_run`] is four stages: `admit` (the checks, made before the
//! host is touched; the pure ones are functions of the request below, tested
//! without root), `provision` (a [`Provisioned`] that removes what it made when
//! it is dropped, logging every error), `move_caller` and `record_start`.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::mount::MountFlags;

use super::audit::Audited;
use super::audit_trail::by_caller;
use super::lifecycle::Ceiling;
use super::runs::Slot;
use super::{Agent, Caller, Failure, Result, layout, stalls_and_probes};
use crate::api::AuditAction;
use crate::api::AuditEntry;
use crate::api::{self, CreateRun, ErrorKind, RunStarted};
use crate::cgroup::{self, Cgroup};
use crate::policy::Identity;
use crate::procfs;
use crate::store::RunRecord;
use crate::template::{Authority, Key, Overrides, Ready, Template, TemplateError};
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

/// A start that passed [`Agent::admit`]: what it was given and decided.
struct Admitted {
    run_id: String,
    template_name: String,
    template: Template,
    ceiling: Ceiling,
    cleanup_workspace: bool,
    workspace: Option<String>,
    teams: Vec<String>,
    id: Identity,
    /// The caller's budget reserved for this run, given back once it is recorded.
    budget: Option<Slot>,
    pidfd: Arc<OwnedFd>,
    identity: procfs::Identity,
    /// The caller's cgroup before the start, below the cgroup2 mount.
    origin: Option<String>,
    parent_run_id: Option<String>,
}

/// What [`Agent::provision`] made for a run, removed when dropped unless kept:
/// a start that fails after it leaves nothing behind. Every error of the
/// removal is logged.
struct Provisioned<'a> {
    agent: &'a Agent,
    run_id: String,
    /// The run's owner, as whom what they may have written is removed.
    uid: u32,
    cg: Cgroup,
    run_dir: Option<PathBuf>,
    tmpdir: Option<PathBuf>,
    log_path: Option<PathBuf>,
    /// The tmpfs mounted (on the run dir, on TMPDIR).
    mounts: Vec<PathBuf>,
    /// What the start could not do as asked, said in its answer.
    warnings: Vec<String>,
    kept: bool,
}

impl Provisioned<'_> {
    /// Mounts a tmpfs of the caller's on the run's directory `dir` (`mount`);
    /// where it cannot, `plain` says why in a warning and `dir` itself is given
    /// to the caller.
    fn tmpfs_or_plain(
        &mut self,
        dir: &Path,
        caller: &Caller,
        mount: impl FnOnce(&Path) -> std::io::Result<()>,
        plain: impl FnOnce(&std::io::Error) -> String,
    ) -> Result<()> {
        match mount(dir) {
            Ok(()) => self.mounts.push(dir.to_owned()),
            Err(e) => {
                self.warnings.push(plain(&e));
                std::os::unix::fs::chown(dir, Some(caller.uid), Some(caller.gid)).map_err(|e| {
                    Failure::new(
                        ErrorKind::Internal,
                        format!("cannot chown {}: {e}", dir.display()),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The run directory on a small tmpfs of its own: a run filling it cannot
    /// fill the file system of the agent's socket (`/run`), where the stop
    /// reasons of every run are written. Mounted on a directory still root's.
    fn run_dir(&mut self, dir: &Path, size: &str, caller: &Caller) -> Result<()> {
        self.run_dir = Some(private_dir(dir)?);
        self.tmpfs_or_plain(
            dir,
            caller,
            |dir| {
                crate::tmpfs::mount_with(
                    dir,
                    size,
                    caller.uid,
                    caller.gid,
                    MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                )
            },
            |e| {
                format!(
                    "the run directory {} is a plain directory, without a size limit: cannot \
                     mount a tmpfs of {size} on it: {e}",
                    dir.display()
                )
            },
        )
    }

    /// A detached run's log `file`, the caller's (0600).
    fn log(&mut self, file: &Path, caller: &Caller) -> Result<()> {
        self.log_path = Some(file.to_owned());
        let create = || -> std::io::Result<()> {
            fs::File::create(file)?;
            fs::set_permissions(file, fs::Permissions::from_mode(0o600))?;
            std::os::unix::fs::chown(file, Some(caller.uid), Some(caller.gid))
        };
        create().map_err(|e| {
            Failure::new(
                ErrorKind::Internal,
                format!("cannot create {}: {e}", file.display()),
            )
        })
    }

    /// TMPDIR on a tmpfs of its own: filling it cannot fill the store's disk. It
    /// is mounted on a directory still root's (0700), so nothing of the user's
    /// can be opened below the mount first; the tmpfs root is the user's.
    fn tmpdir(&mut self, dir: &Path, size: &str, caller: &Caller) -> Result<()> {
        self.tmpdir = Some(private_dir(dir)?);
        self.tmpfs_or_plain(
            dir,
            caller,
            |dir| crate::tmpfs::mount(dir, size, caller.uid, caller.gid),
            |e| {
                format!(
                    "TMPDIR {} is a plain directory on the agent's state filesystem: cannot \
                     mount a tmpfs of {size} on it: {e}",
                    dir.display(),
                )
            },
        )
    }

    /// The run is recorded: what was made stays. Returns the warnings.
    fn keep(&mut self) -> Vec<String> {
        self.kept = true;
        std::mem::take(&mut self.warnings)
    }
}

impl Drop for Provisioned<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let run_id = self.run_id.as_str();
        let log = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            tracing::warn!(
                run_id,
                "undoing a failed start: cannot {what} {}: {e}",
                path.display()
            );
        };
        self.agent.forget_lock_creators(run_id);
        if let Err(e) = self.cg.remove_recursive() {
            log("remove the cgroup", self.cg.path(), &e);
        }
        // The caller may have written into them already: as them, bounded.
        let budget = crate::walk::Budget::from_env();
        let cred = Cred::of_uid(self.uid);
        for mount in &self.mounts {
            if let Err(e) = crate::tmpfs::unmount(mount) {
                log("unmount the tmpfs on", mount, &e);
            }
        }
        for dir in [&self.run_dir, &self.tmpdir].into_iter().flatten() {
            if let Err(e) = crate::walk::remove_agent_dir(dir, &cred, &budget) {
                log("remove", dir, &e);
            }
        }
        if let Some(file) = &self.log_path
            && let Err(e) = fs::remove_file(file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log("remove", file, &e);
        }
    }
}

/// Where [`Agent::move_caller`] put the caller.
struct Home {
    /// The leaf it was moved into; none when it stays outside its run.
    cgroup: Option<Cgroup>,
    /// It starts its command into the payload itself.
    direct: bool,
    /// It starts its keeper into the supervisor leaf itself, from outside.
    outside: bool,
}

/// `dir` made, root's alone (0700): what the run may not open before a tmpfs
/// of its own is mounted on it.
fn private_dir(dir: &Path) -> Result<PathBuf> {
    let failed = |e: std::io::Error| {
        Failure::new(
            ErrorKind::Internal,
            format!("cannot create {}: {e}", dir.display()),
        )
    };
    fs::create_dir(dir).map_err(failed)?;
    if let Err(e) = fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
        // Empty, and made by the agent a moment ago: removed at once.
        if let Err(e) = fs::remove_dir(dir) {
            tracing::warn!(
                "undoing a failed start: cannot remove {}: {e}",
                dir.display()
            );
        }
        return Err(failed(e));
    }
    Ok(dir.to_owned())
}

/// A removal of the workspace nobody typed on this command line, said before it
/// happens.
/// `cleanup` is the decision of [`cleanup_workspace`]; `template` names the
/// run's template.
fn removal_warning(req: &CreateRun, cleanup: bool, template: &str) -> Option<String> {
    let ws = req.workspace.as_ref().filter(|_| cleanup)?;
    let by = if req.cleanup_workspace {
        "--cleanup-workspace".to_string()
    } else {
        format!("the template {template} says [cleanup] workspace = \"remove\"")
    };
    Some(format!(
        "the workspace {ws} will be removed when the run ends ({by}), unless it holds \
         anything older than the run or a git repository with uncommitted changes or \
         untracked files"
    ))
}

/// A run id in use.
fn conflict(run_id: &str) -> Failure {
    Failure::new(
        ErrorKind::Conflict,
        format!("run id {run_id:?} is already in use"),
    )
}

/// The caller died before its run could be started.
fn gone(caller: &Caller) -> Failure {
    Failure::new(
        ErrorKind::BadInput,
        format!(
            "the process that connected (pid {}) is gone; a run is started by a \
             live caller only",
            caller.pid
        ),
    )
}

/// The template with the run options of a start over it: the timeouts asked
/// for (a user may shorten the operator's, never lengthen or remove them:
/// [`Template::with_overrides`]) and `--ready-when`.
fn with_run_options(req: &CreateRun, who: Authority, template: &Template) -> Result<Template> {
    let bad = |e: String| Failure::new(ErrorKind::BadInput, e);
    let asked = Overrides::new()
        .with_ms(Key::Stall, req.stall_timeout_ms)
        .with_ms(Key::Output, req.output_timeout_ms)
        .with_ms(Key::Init, req.init_timeout_ms)
        .with_ms(Key::Total, req.timeout_ms)
        .with_ms(Key::Watchdog, req.watchdog_ms);
    let mut template = template
        .with_overrides(&asked, who)
        .map_err(|e| bad(e.to_string()))?;
    if let Some(conds) = &req.ready_when {
        if conds.is_empty() || conds.len() > 8 {
            return Err(bad("ready_when: give 1 to 8 conditions".into()));
        }
        template.run.ready = conds
            .iter()
            .map(|c| Ready::parse(c))
            .collect::<std::result::Result<_, _>>()
            .map_err(bad)?;
    }
    Ok(template)
}

/// Whether the run's workspace is removed at its end: asked for, or the
/// template's rule for a workspace named explicitly (never a cwd).
fn cleanup_workspace(req: &CreateRun, template: &Template) -> Result<bool> {
    // The template may remove only a workspace named explicitly, never a cwd.
    let cleanup = req.cleanup_workspace
        || (req.workspace.is_some()
            && template.cleanup.workspace == crate::template::WorkspacePolicy::Remove);
    if req.cleanup_workspace && req.workspace.is_none() {
        return Err(Failure::new(
            ErrorKind::BadInput,
            "cleanup_workspace needs an explicit workspace",
        ));
    }
    Ok(cleanup)
}

/// The run's id: the one asked for, if it is one, else a fresh one.
fn run_id_of(req: &CreateRun) -> Result<String> {
    match &req.run_id {
        Some(id) => match api::run_id_problem(id) {
            Some(problem) => Err(Failure::new(ErrorKind::BadInput, problem)),
            None => Ok(id.clone()),
        },
        None => Ok(new_run_id()),
    }
}

/// The run's teams: the one asked for, which `who` must be in, else all of
/// theirs (`mine`).
fn teams_of(req: &CreateRun, who: Option<&str>, mine: Vec<String>) -> Result<Vec<String>> {
    match &req.team {
        Some(team) if !mine.contains(team) => Err(Failure::new(
            ErrorKind::BadInput,
            format!(
                "team {team:?}: {} is not in it (their teams: {})",
                who.unwrap_or("caller"),
                if mine.is_empty() {
                    "none".to_string()
                } else {
                    mine.join(", ")
                }
            ),
        )),
        Some(team) => Ok(vec![team.clone()]),
        None => Ok(mine),
    }
}

impl Agent {
    /// Starts a run: creates its cgroup and directories, moves the caller into it,
    /// records it. On any failure nothing is left behind. Four stages, each a
    /// function below: [`Agent::admit`] (the checks; the host untouched),
    /// [`Agent::provision`] (the cgroup and files, undone on drop),
    /// [`Agent::move_caller`] and [`Agent::record_start`].
    pub fn create_run(
        self: &Arc<Self>,
        caller: &Caller,
        req: CreateRun,
    ) -> Result<Audited<RunStarted>> {
        let admitted = self.admit(caller, &req)?;
        let mut made = self.provision(caller, &req, &admitted)?;
        let home = self.move_caller(caller, &req, &admitted, &made)?;
        self.record_start(caller, req, admitted, &mut made, home)
    }

    /// The checks a start must pass, in order, before the host is touched: the
    /// breaker, the template and the options a user may set, the caller's
    /// budgets (reserved until the run is recorded), the workspace, the run id
    /// and team, and the caller itself (alive, pinned by its pidfd).
    fn admit(&self, caller: &Caller, req: &CreateRun) -> Result<Admitted> {
        if req.command.is_empty() {
            return Err(Failure::new(ErrorKind::BadInput, "no command given"));
        }
        self.check_breaker(caller, req.workflow.as_deref())?;
        let (template_name, template) = self.resolve_template(caller, req)?;
        let who = Authority::operator_if(caller.is_root());
        let template = with_run_options(req, who, &template)?;
        // Held until the run is recorded: the caps stay exact under concurrent starts.
        let budget = self.check_budgets(caller, &template)?;
        let ceiling = self.operator_ceiling(caller, req, &template)?;
        let cleanup_workspace = cleanup_workspace(req, &template)?;
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
        let run_id = run_id_of(req)?;
        let id = self.access.identity(caller);
        let my_teams = self.access.policy().teams_of(&id);
        let teams = teams_of(req, id.user.as_deref(), my_teams)?;
        if self.store().get_run(&run_id)?.is_some() {
            return Err(conflict(&run_id));
        }
        // The caller was pinned by a pidfd when its connection was accepted; while
        // that process lives, its pid cannot name another one.
        let pidfd = caller.pidfd.clone().ok_or_else(|| gone(caller))?;
        // Who the supervisor is, for the requests that speak for it later.
        let identity =
            procfs::pidfd_identity(&self.cfg.proc_root, &*pidfd).map_err(|_| gone(caller))?;
        let origin = cgroup::process_cgroup(&self.cfg.proc_root, caller.pid);
        if !procfs::pidfd_alive(&*pidfd) || origin.is_none() || identity.pid != caller.pid {
            return Err(gone(caller));
        }
        // Started from inside a run: that run's child, killed with it.
        let parent_run_id = self.parent_run(origin.as_deref())?;
        Ok(Admitted {
            run_id,
            template_name,
            template,
            ceiling,
            cleanup_workspace,
            workspace,
            teams,
            id,
            budget,
            pidfd,
            identity,
            origin,
            parent_run_id,
        })
    }

    /// The run's cgroup (its limits written before anyone moves in) and its two
    /// leaves, its directory and TMPDIR (each on a tmpfs of its own where it can
    /// be mounted), and a detached run's log. Undone when the result is dropped
    /// before [`Provisioned::keep`].
    fn provision<'a>(
        &'a self,
        caller: &Caller,
        req: &CreateRun,
        a: &Admitted,
    ) -> Result<Provisioned<'a>> {
        let mut made = self.run_cgroup(caller, a)?;
        made.warnings
            .extend(removal_warning(req, a.cleanup_workspace, &a.template_name));
        layout::create_leaves(&made.cg).map_err(Failure::internal)?;
        let run_dir_size = self.access.policy().limits.run_dir_size.clone();
        made.run_dir(&self.runs.run_dirs.join(&a.run_id), &run_dir_size, caller)?;
        if req.detach {
            made.log(
                &self.runs.log_dirs.join(format!("{}.log", a.run_id)),
                caller,
            )?;
        }
        made.tmpdir(
            &self.runs.tmp_dirs.join(&a.run_id),
            &a.template.tmpdir.size,
            caller,
        )?;
        Ok(made)
    }

    /// The run's cgroup, made new (a run id in use is a conflict), with the
    /// template's limits: the first thing [`Agent::provision`] makes, and the
    /// [`Provisioned`] that removes it and all that follows.
    fn run_cgroup<'a>(&'a self, caller: &Caller, a: &Admitted) -> Result<Provisioned<'a>> {
        let cg = self.runs.cg.child(&a.run_id);
        match cg.create_new() {
            Ok(()) => {}
            Err(cgroup::Error::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                return Err(conflict(&a.run_id));
            }
            Err(e) => return Err(Failure::internal(e)),
        }
        // Limits apply from the first instruction: written before the caller moves
        // in, on runs/<id> so that they cover the supervisor and the payload.
        let warnings = cg.apply_limits(&a.template.limits);
        Ok(Provisioned {
            agent: self,
            run_id: a.run_id.clone(),
            uid: caller.uid,
            cg,
            run_dir: None,
            tmpdir: None,
            log_path: None,
            mounts: Vec::new(),
            warnings,
            kept: false,
        })
    }

    /// Moves the caller into the run (or nowhere, for a root caller that starts
    /// its keeper beside it), then confirms through its pidfd that it was alive
    /// all along: alive before and after the write, so the pid named it at the
    /// write. If it died in between, whatever the pid named then is put back
    /// where the caller was, never killed (it may be any process that got the
    /// recycled pid). Its git locks are known by their creator from its first
    /// instruction.
    fn move_caller(
        &self,
        caller: &Caller,
        req: &CreateRun,
        a: &Admitted,
        made: &Provisioned<'_>,
    ) -> Result<Home> {
        let run_id = &a.run_id;
        self.watch_run_locks(run_id, a.workspace.as_deref(), caller.pid);
        // A caller that starts its command into the payload itself goes straight to
        // the supervisor leaf: one move, and no second request to leave the payload.
        let direct = req.spawn_into_payload && self.may_spawn_into_payload(caller);
        // A caller that also starts its keeper into the supervisor leaf is not
        // moved at all: no cgroup migration on its start (see run/spawn.rs).
        // Not from inside a run: there it would stay in the parent's payload,
        // and the parent's kill would signal it as one of the parent's processes
        // before it is the child's turn to be killed (and reported).
        // Nor from a cgroup a user was delegated (see may_stay_outside).
        let outside = direct
            && req.stay_outside
            && a.parent_run_id.is_none()
            && Self::may_stay_outside(a.origin.as_deref());
        let cgroup = (!outside).then(|| layout::first_home(&made.cg, direct));
        // Failures here are the agent's: the caller was alive when admitted.
        let internal = |f: Failure| Failure::new(ErrorKind::Internal, f.message);
        if !procfs::pidfd_alive(&*a.pidfd) {
            return Err(internal(gone(caller)));
        }
        if let Some(home) = &cgroup
            && let Err(e) = home.add_process(caller.pid)
        {
            return Err(Failure::new(ErrorKind::Internal, e.to_string()));
        }
        if let Some(home) = &cgroup
            && !procfs::pidfd_alive(&*a.pidfd)
        {
            tracing::warn!(run_id, "the caller died during its move");
            put_back(home, a.origin.as_deref());
            return Err(internal(gone(caller)));
        }
        Ok(Home {
            cgroup,
            direct,
            outside,
        })
    }

    /// Records the run (giving back its budget's reservation under the same
    /// lock), pins its supervisor, audits the start, begins watching it, and
    /// answers. A run that cannot be recorded is undone, its caller put back.
    fn record_start(
        &self,
        caller: &Caller,
        req: CreateRun,
        a: Admitted,
        made: &mut Provisioned<'_>,
        home: Home,
    ) -> Result<Audited<RunStarted>> {
        let Admitted {
            run_id,
            template_name,
            template,
            ceiling,
            cleanup_workspace,
            workspace,
            teams,
            id,
            budget,
            identity,
            origin,
            parent_run_id,
            ..
        } = a;
        let cg = made.cg.clone();
        let mut rec = RunRecord {
            run_id: run_id.clone(),
            pid: Some(caller.pid),
            pid_starttime: Some(identity.starttime),
            started_at: Some(chrono::Utc::now()),
            workspace_path: workspace,
            cleanup_workspace,
            // With its ceiling: set by `initial_deadlines` below.
            template_name: Some(template_name.clone()),
            notify_socket: Some(self.runs.notify_dirs.join(&run_id).display().to_string()),
            teams,
            owner_uid: caller.uid,
            workflow: req.workflow,
            command: req.command,
            cgroup_path: cg.path().display().to_string(),
            run_dir: made.run_dir.as_ref().map(|d| d.display().to_string()),
            tmpdir: made.tmpdir.as_ref().map(|d| d.display().to_string()),
            log_path: made.log_path.as_ref().map(|p| p.display().to_string()),
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
        let inserted = super::runs::Slot::recording(budget, || {
            self.store().with_sync(false, |s| s.insert_run(&rec))
        });
        if let Err(e) = inserted {
            // Never a SIGKILL of the caller (a full disk did that): it goes back
            // where it came from, and is told why.
            if let Some(home) = &home.cgroup {
                put_back(home, origin.as_deref());
            }
            let internal = Failure::new(ErrorKind::Internal, format!("cannot record the run: {e}"));
            return Err(super::budget::no_space(&e, &self.cfg.state_dir).unwrap_or(internal));
        }
        let warnings = made.keep();
        self.runs.supervisors.pin(&run_id, identity);
        self.parent_still_live(&rec)?;
        tracing::info!(run_id, uid = caller.uid, pid = caller.pid, "run started");
        let receipt = self.audit_event_soon(AuditEntry {
            action: AuditAction::RunStart,
            run_id: Some(run_id.clone()),
            outcome: "started".into(),
            ..by_caller(caller, &id)
        });
        // The notify socket is bound before the answer, so the command can use it at once.
        self.lifecycle_begin(&rec, false);
        if home.outside {
            // Empty until the caller's keeper arrives, which it cannot before
            // this answer: looked at within a second, and found over then only
            // if the caller is gone (on_run_empty).
            self.watch.reaper.recheck(&run_id, &cg);
        } else {
            self.watch.reaper.watch(&run_id, &cg, self);
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
            watch: stalls_and_probes::watch_for(&template, req.detach),
            spawn_into: home
                .direct
                .then(|| layout::payload(&cg).path().display().to_string()),
            keeper_into: home
                .outside
                .then(|| cg.child(layout::SUPERVISOR).path().display().to_string()),
        })
        .map(|started| Audited::new(started, receipt))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn template() -> Template {
        let mut t = Template::parse(crate::template::DEFAULT_TOML, "default").unwrap();
        t.timeouts.init = Duration::from_secs(60);
        t.timeouts.total = Duration::from_secs(3600);
        t.timeouts.watchdog = Duration::ZERO;
        t
    }

    fn kind(r: Result<impl std::fmt::Debug>) -> ErrorKind {
        r.expect_err("refused").kind
    }

    #[test]
    fn a_user_shortens_the_timeouts_and_root_may_lengthen_them() {
        let short = CreateRun {
            timeout_ms: Some(1000),
            init_timeout_ms: Some(500),
            ..Default::default()
        };
        let t = with_run_options(&short, Authority::User, &template()).unwrap();
        assert_eq!(t.timeouts.total, Duration::from_secs(1));
        assert_eq!(t.timeouts.init, Duration::from_millis(500));
        let long = CreateRun {
            timeout_ms: Some(7_200_000),
            ..Default::default()
        };
        let t = template();
        assert_eq!(
            kind(with_run_options(&long, Authority::User, &t)),
            ErrorKind::BadInput
        );
        // No watchdog set by the operator: a user may set one.
        let watchdog = CreateRun {
            watchdog_ms: Some(5000),
            ..Default::default()
        };
        with_run_options(&watchdog, Authority::User, &t).unwrap();
        let t = with_run_options(&long, Authority::Operator, &template()).unwrap();
        assert_eq!(t.timeouts.total, Duration::from_secs(7200));
    }

    #[test]
    fn only_a_workspace_named_explicitly_is_removed() {
        let remove = {
            let mut t = template();
            t.cleanup.workspace = crate::template::WorkspacePolicy::Remove;
            t
        };
        let named = CreateRun {
            workspace: Some("/w".into()),
            ..Default::default()
        };
        assert!(!cleanup_workspace(&named, &template()).unwrap());
        assert!(cleanup_workspace(&named, &remove).unwrap());
        assert!(!cleanup_workspace(&CreateRun::default(), &remove).unwrap());
        let asked = CreateRun {
            cleanup_workspace: true,
            ..named
        };
        assert!(cleanup_workspace(&asked, &template()).unwrap());
        let no_workspace = CreateRun {
            cleanup_workspace: true,
            ..Default::default()
        };
        assert_eq!(
            kind(cleanup_workspace(&no_workspace, &template())),
            ErrorKind::BadInput
        );
    }

    #[test]
    fn a_workspace_removal_is_said_with_what_asked_for_it() {
        let ws = CreateRun {
            workspace: Some("/w".into()),
            ..Default::default()
        };
        assert_eq!(removal_warning(&ws, false, "default"), None);
        let by_template = removal_warning(&ws, true, "builder").unwrap();
        assert!(by_template.starts_with("the workspace /w will be removed when the run ends (the template builder says [cleanup] workspace = \"remove\")"), "{by_template}");
        let asked = CreateRun {
            cleanup_workspace: true,
            ..ws
        };
        let by_flag = removal_warning(&asked, true, "builder").unwrap();
        assert!(by_flag.contains("(--cleanup-workspace)"), "{by_flag}");
    }

    #[test]
    fn a_run_id_is_the_one_asked_for_or_a_fresh_one() {
        let asked = |id: &str| CreateRun {
            run_id: Some(id.into()),
            ..Default::default()
        };
        assert_eq!(run_id_of(&asked("run_mine")).unwrap(), "run_mine");
        assert_eq!(kind(run_id_of(&asked("../x"))), ErrorKind::BadInput);
        let fresh = run_id_of(&CreateRun::default()).unwrap();
        assert!(fresh.starts_with("run_") && fresh.len() == 16, "{fresh}");
        assert_ne!(fresh, run_id_of(&CreateRun::default()).unwrap());
    }

    #[test]
    fn a_run_is_in_the_team_asked_for_only_if_its_caller_is() {
        let mine = vec!["ops".to_string(), "ml".to_string()];
        assert_eq!(
            teams_of(&CreateRun::default(), Some("alice"), mine.clone()).unwrap(),
            mine
        );
        let ops = CreateRun {
            team: Some("ops".into()),
            ..Default::default()
        };
        assert_eq!(
            teams_of(&ops, Some("alice"), mine.clone()).unwrap(),
            ["ops"]
        );
        let web = CreateRun {
            team: Some("web".into()),
            ..Default::default()
        };
        let refused = teams_of(&web, Some("alice"), mine).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::BadInput);
        assert_eq!(
            refused.message,
            "team \"web\": alice is not in it (their teams: ops, ml)"
        );
        let none = teams_of(&web, None, Vec::new()).unwrap_err().message;
        assert!(
            none.ends_with("caller is not in it (their teams: none)"),
            "{none}"
        );
    }
}
