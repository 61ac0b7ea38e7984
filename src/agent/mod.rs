//! `wfcg agent`: the root daemon that owns the cgroup tree and the store.
//!
//! [`Agent`] holds the state and carries out requests as plain blocking calls;
//! [`server`] puts them on the Unix socket; [`reaper`] notices runs that ended.
//! The agent is never the parent of a workflow: `wfcg run` supervises its own
//! command inside the run's cgroup, so the agent may stop and start again while
//! runs go on, and [`Agent::start`] reconciles the store with the cgroup tree.
//!
//! This file holds the struct, its configuration and errors, who asks
//! ([`Caller`], `Requester`), the start and the reconciliation.
//!
//! # Wings and operations
//!
//! `Agent` composes four wings that own their state (and only hold it: no
//! wing file has an `impl Agent`), each testable alone:
//!
//! | wing | owns |
//! | --- | --- |
//! | `runs.rs` ([`runs::Runs`]) | `runs/` cgroup, run dirs, the store, open run files, start budgets, supervisors' identities |
//! | `kills.rs` ([`kills::Kills`]) | kill sequences under way, critical sections seen, stale git locks, git locks' creators |
//! | `watch.rs` ([`watch::Watch`]) | live runs' deadlines, heartbeats, notify sockets, progress watches; the reaper; the stop |
//! | `records.rs` ([`records::Records`]) | the audit trail, alerts, metrics |
//!
//! The agent keeps its configuration, default template, policy (`access.rs`)
//! and how it was started (`about.rs`) itself. Each operation is an
//! `impl Agent` in a file named for it, which also holds the operation's own
//! types and functions:
//!
//! | file | operation |
//! | --- | --- |
//! | `create.rs` | start a run (`wfcg run`) |
//! | `adopt.rs`, `adopt/in_place.rs` | take over a tree or a cgroup started outside wfcg |
//! | `kill_run.rs` | a kill request: policy, audit, concurrent kills coalesced |
//! | `kill_and_record.rs` | one kill sequence: the plan, [`crate::kill`], the result recorded |
//! | `kill_result.rs` | the answer to a kill (pure functions) |
//! | `run_end.rs` | the exit report, the supervisor leaf, a run's cgroup emptied |
//! | `cleanup.rs` | what an ended run leaves, removed |
//! | `queries.rs`, `may_kill.rs` | `ps`, `status` and the `/metrics` scrape; "may uid U kill run R?" |
//! | `lease.rs` | leases: renewal, a fresh lease after a restart, a lapse |
//! | `lifecycle.rs`, `lifecycle/deadlines.rs` | notify, heartbeats, deadlines, stuck runs |
//! | `breaker.rs` | the circuit breaker of each workflow |
//! | `control.rs` | the agent itself: health (`agent status`), a stop (`agent stop`) |
//! | `audit_trail.rs`, `alert.rs` | the agent's audit records and policy reload; alerts |
//! | `time.rs` | times as the store writes them |
//!
//! Imports run one way: an operation uses the agent, the wings and the
//! leaves (`layout.rs`, `reaper.rs`, `metrics.rs`, …); the agent, the wings
//! and the leaves never name an operation's file (the test `layering` below
//! checks it). `server.rs` is the front that calls the operations.
//!
//! # Threads and locks
//!
//! Requests run as plain blocking calls on tokio's blocking pool; nothing of
//! the agent's state is held across an `.await`. The threads and tasks:
//!
//! | thread or task | started in | owns, and what it calls |
//! | --- | --- | --- |
//! | tokio runtime (main) | `server::serve` | the socket's listener and one task per connection (the per-uid connection and in-flight counts, `server.rs`); the `/metrics` TCP listener; the SIGHUP task |
//! | blocking pool (`spawn_blocking`) | `server.rs` | every request's [`Agent`] call but a kill's, the `/metrics` text, [`Agent::start`], a SIGHUP's policy reload (at most `WFCG_REQUEST_THREADS` threads, 512 by default) |
//! | `wfcg-kill` pool | `server.rs` (`KILLS`) | a kill request's [`Agent::kill`]: kills wait (for their processes, for the exit reports of their runs' supervisors, which the blocking pool serves), so they never hold the threads other requests need |
//! | monitor task (tokio) | `monitor.rs` | the deadline queue (its `Current` map); a passed deadline runs `on_deadline` on the blocking pool |
//! | heartbeat/sample task (tokio) | `lifecycle.rs` (`start_lifecycle`) | two intervals; `flush_heartbeats` (`watch.beats` → store) and `sample_loops` (`watch.loops`) on the blocking pool |
//! | `wfcg-notify` | `notify_hub.rs` | the epoll of every run's notify socket (`Hub.sockets`); calls `on_notify` per datagram, never waits on the store |
//! | `wfcg-notify-close` | `notify_hub.rs` | closes descriptors that senders passed |
//! | `wfcg-notify-phase` | `lifecycle.rs` | pops `watch.phases` (READY, STATUS, STOPPING, EXTEND_TIMEOUT_USEC) and writes them to the store |
//! | `wfcg-reaper` | `reaper.rs` | the inotify of runs' `cgroup.events` (`Reaper.watches`, `unsure`); calls `on_run_empty` |
//! | `wfcg-audit-retry` | `audit.rs` (`start_retry`) | retries pending audit records every few seconds; expires denial windows |
//! | `wfcg-audit-sync` | `audit.rs` (`start_sync`) | syncs records written without waiting for the disk (a run's start, its end by exit) within 100 ms, through a store connection of its own; takes no agent lock but `unsynced` |
//! | audit head writer (scoped) | `audit.rs` (`flush`) | writes the chain's head file while the transaction commits |
//! | `wfcg-policy-watch` | `access.rs` | inotify on the policy file's directory; calls `reload_policy` |
//! | `wfcg-tmpfs-end` | [`Agent::start`] | once: lets go the tmpfs of ended runs left mounted |
//! | a kill resumed (one per run) | `reconcile` | a kill the previous agent was doing when it stopped |
//! | `wfcg-user-tree` | `cleanup.rs` (`bounded`) | a walk of a user's tree with a time limit (at most a few at once) |
//! | escapee search (scoped) | `cleanup.rs` | searches for marked processes outside a killed run, beside its cleanup |
//! | a child's kill (scoped) | `nesting.rs` | kills the runs started inside a run, one thread each |
//! | fanotify reader | `lockwatch.rs` | who created each git lock |
//! | alert jobs (tokio) | `alerts/` | runs `on_event` commands and webhooks |
//! | scope holder's reaper | `placement.rs` | waits for `systemd-run --scope` |
//!
//! Every `Mutex` is `parking_lot`'s. Where two are held at once, they are
//! taken in this order, never the other way:
//!
//! 0. `runs.adopt_lock` and `runs.workspace_lock` come first: each is held over
//!    a whole adoption (its budget, record, audit and kill) or a workspace's
//!    removal (and its audit record), under which the locks below are taken.
//! 1. `kills.inflight` → `runs.store` → the auditor's `pending`, `last` and
//!    `denials` (a kill's start is decided, and a run's end recorded, with
//!    `inflight` held so that no kill starts in between; a flush holds the
//!    store while it takes the pending records).
//! 2. `runs.budgets.pending` → `runs.budgets.starts`, and
//!    `runs.budgets.pending` → `runs.store` (a start's check and its insert
//!    are made under `pending`, so the caps are exact).
//! 3. `watch.lives` → the notify hub's `sockets` (a run's socket is removed as
//!    its watch ends).
//!
//! Every other lock is taken alone and released before another is taken:
//! `KillSlot.result` (waited on with its `Condvar`, released before the slot
//! leaves `inflight`), `kills.sightings`, `kills.stale_candidates`,
//! `runs.supervisors`,
//! `runs.files`, `runs.budgets.held` and `ballast`, `watch.beats`,
//! `watch.loops`, `watch.watches`, `watch.stuck_ends`, the phase queue's, the
//! reaper's `watches` and `unsure`, the monitor's `Current`, the policy's
//! `RwLock` (`access.rs`), and the server's `connections` and `busy`.

mod about;
pub mod access;
mod adopt;
mod alert;
pub mod audit;
mod audit_trail;
mod breaker;
mod budget;
mod cgroup_file_cache;
mod cleanup;
mod control;
mod create;
mod denials;
mod ended_tmpfs;
mod fd_dropping_stream;
mod kill_and_record;
mod kill_result;
mod kill_run;
mod kills;
pub mod layout;
mod lease;
mod lifecycle;
mod lock_creators;
mod may_kill;
pub mod metrics;
pub mod monitor;
mod nesting;
pub mod notify;
mod notify_hub;
mod phase_queue;
pub mod placement;
mod queries;
pub mod reaper;
mod records;
mod run_end;
mod runs;
mod sender_in_run;
pub mod server;
mod stalls_and_probes;
mod supervisors;
mod time;
mod watch;

use parking_lot::Mutex;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::api::AuditAction;
use crate::api::AuditEntry;
use crate::api::{self, ErrorKind, KillMode, KillRequest, RunStatus};
use crate::cgroup::{self, Cgroup};
use crate::policy::{Action, Identity, RunScope};
use crate::procfs;
use crate::store::{self, AuditFilter, RunRecord, Store};
use crate::template::Template;
use audit::Audited;
use kills::{KILL_START, KillStarted};
use reaper::{OnEmpty, Reaper};

/// Where the agent keeps and finds things. Every host path is here so tests
/// can run agents side by side.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// The cgroup the agent owns; `<cgroup2 mount>/wfcg` when absent.
    pub cgroup_root: Option<PathBuf>,
    pub proc_root: PathBuf,
    /// The policy file; the built-in policy while it does not exist.
    pub policy: PathBuf,
    /// Agent-wide alert channels, for runs whose template names none.
    pub on_event: Option<String>,
    pub webhook: Option<String>,
    /// Also serve `/metrics` on this TCP address.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether `/metrics` on TCP (which anyone who can connect reads) carries the
    /// per-run series with run ids and workflows.
    pub metrics_per_run: bool,
    /// The operator's templates (`NAME.toml`), over the shipped ones.
    pub templates_dir: PathBuf,
}

/// Why the agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Not run as root.
    #[error("wfcg agent must run as root (it creates cgroups and signals other users' processes)")]
    NotRoot,
    /// No cgroup2 mount.
    #[error("{0}")]
    Cgroup(#[from] cgroup::Error),
    /// Under systemd, the agent's cgroup is not delegated to it.
    #[error("{0}")]
    Placement(String),
    /// The kernel lacks cgroup.kill.
    #[error("the kernel has no cgroup.kill in {0} (needs Linux 5.14 or later)")]
    NoCgroupKill(PathBuf),
    /// The store cannot be opened.
    #[error("cannot open the store {path}: {source}{}", recovery(path))]
    Store { path: PathBuf, source: store::Error },
    /// The store fails its integrity check.
    #[error(
        "the store {path} is corrupt (quick_check: {detail}){}",
        recovery(path)
    )]
    Corrupt { path: PathBuf, detail: String },
    /// A directory cannot be made.
    #[error("cannot create {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The template is broken.
    #[error("{0}")]
    Template(crate::template::TemplateError),
    /// The policy file is broken.
    #[error("{0}")]
    Policy(crate::policy::PolicyError),
    /// The socket cannot be served.
    #[error("{0}")]
    Socket(String),
}

/// How to recover from a store the agent cannot use.
fn recovery(db: &Path) -> String {
    let d = db.display();
    format!(
        ". The agent does not start on it. To recover: move it aside with its -wal and \
         -shm files (`mv {d} {d}.bad; mv {d}-wal {d}-wal.bad; mv {d}-shm {d}-shm.bad`) \
         and start the agent again: it creates a new store and re-adopts the live runs \
         from the cgroup tree (their history and audit trail stay in the moved file)"
    )
}

/// An error answer: its kind decides the HTTP status and the CLI's exit code.
#[derive(Debug)]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
    /// The auditor's receipt when the refusal was recorded: a state-changing
    /// request refused as `forbidden` must carry one (the server checks it).
    audited: Option<audit::Receipt>,
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
            audited: None,
        }
    }
    /// This failure, recorded in the audit trail (`receipt`).
    fn recorded(mut self, receipt: audit::Receipt) -> Failure {
        self.audited = Some(receipt);
        self
    }
    /// Whether the failure was recorded in the audit trail.
    fn is_recorded(&self) -> bool {
        self.audited.is_some()
    }
    fn internal(e: impl std::fmt::Display) -> Failure {
        Failure::new(ErrorKind::Internal, e.to_string())
    }
    fn not_found(run_id: &str) -> Failure {
        Failure::new(ErrorKind::NotFound, format!("no such run: {run_id}"))
    }
}

impl From<store::Error> for Failure {
    fn from(e: store::Error) -> Failure {
        Failure::internal(e)
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Who sent a request, from the socket's peer credentials.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// From SO_PEERPIDFD where the kernel has it (Linux ≥ 6.5).
    pub pidfd: Option<Arc<OwnedFd>>,
}

impl Caller {
    fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Who asked for a kill, as records name them: a caller (name, uid and pid), or
/// the agent itself (`monitor`, a resumed kill), with a name only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Requester {
    name: String,
    uid: Option<u32>,
    pid: Option<i32>,
}

impl Requester {
    fn of(caller: &Caller) -> Requester {
        Requester {
            name: crate::users::user_name_cached(caller.uid).unwrap_or_else(|| "?".into()),
            uid: Some(caller.uid),
            pid: Some(caller.pid),
        }
    }

    fn named(name: impl Into<String>) -> Requester {
        Requester {
            name: name.into(),
            uid: None,
            pid: None,
        }
    }
}

impl std::fmt::Display for Requester {
    /// `name (uid N, pid P)`, or the name alone.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.uid, self.pid) {
            (Some(uid), Some(pid)) => write!(f, "{} (uid {uid}, pid {pid})", self.name),
            _ => f.write_str(&self.name),
        }
    }
}

/// The agent: its configuration and the policy's access, and four wings that
/// own their state (see the module's doc for the threads and locks).
pub struct Agent {
    pub cfg: Config,
    /// The agent's default template (`default.toml`), read at its start.
    template: Template,
    access: access::Access,
    /// How the agent was started (health).
    about: about::About,
    /// Where runs live and what is known of them: cgroups, dirs, store, budgets.
    runs: runs::Runs,
    /// Kills under way, critical sections seen, stale git locks, lock creators.
    kills: kills::Kills,
    /// Live runs' deadlines, heartbeats, notify sockets, progress; the reaper.
    watch: watch::Watch,
    /// The audit trail, alerts and metrics.
    records: records::Records,
}

impl AsRef<Mutex<Store>> for Agent {
    fn as_ref(&self) -> &Mutex<Store> {
        &self.runs.store
    }
}

fn make_dir(path: &Path, mode: u32) -> std::result::Result<(), StartError> {
    fs::create_dir_all(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|source| StartError::Dir {
            path: path.into(),
            source,
        })
}

/// The agent's cgroup tree, made where the host wants it (its own root, or a
/// scope under systemd), with the agent in a leaf of its own where the root is
/// its own, and the limit controllers enabled for the runs. Returns `runs/`.
fn cgroup_tree(cfg: &Config) -> std::result::Result<Cgroup, StartError> {
    let place = match &cfg.cgroup_root {
        Some(p) => placement::Placement::Own(p.clone()),
        None => placement::decide(None, &placement::Host::current()?, placement::is_delegated)
            .map_err(StartError::Placement)?,
    };
    let root = match &place {
        placement::Placement::Own(path) => Cgroup::new(path),
        placement::Placement::Scope { path, unit, slice } => {
            placement::ensure_scope(path, unit, slice).map_err(StartError::Placement)?;
            Cgroup::new(path)
        }
    };
    root.create()?;
    if !root.supports_kill() {
        return Err(StartError::NoCgroupKill(root.path().into()));
    }
    if let placement::Placement::Own(_) = place {
        // The no-internal-processes rule: the agent lives in a leaf beside the runs.
        let leaf = root.child("agent");
        leaf.create()?;
        leaf.add_process(std::process::id() as i32)?;
    }
    tracing::info!(root = %root.path().display(), "cgroup tree");
    let runs_cg = root.child("runs");
    runs_cg.create()?;
    // Limits need their controllers in the subtree: enabled once here, where the
    // host offers them (a hybrid host offers none: limits are then skipped per run).
    for cg in [&root, &runs_cg] {
        for controller in cgroup::LIMIT_CONTROLLERS {
            if cg
                .controllers()
                .is_ok_and(|c| c.iter().any(|c| c == controller))
                && let Err(e) = cg.enable_controller(controller)
            {
                tracing::warn!("cannot enable the {controller} controller: {e}");
            }
        }
    }
    Ok(runs_cg)
}

/// The socket's and the state's directories, and the agent-owned directories
/// of the runs' files below them.
fn run_dirs(cfg: &Config) -> std::result::Result<runs::RunDirs, StartError> {
    let sock_dir = cfg.socket.parent().unwrap_or(Path::new("/")).to_path_buf();
    make_dir(&sock_dir, 0o755)?;
    // The state dir holds the store and the audit head (0600 each): users may
    // pass through it to their own TMPDIR and logs, but not list or read it.
    make_dir(&cfg.state_dir, 0o711)?;
    // Run files live in these agent-owned directories, which no user can write:
    // a user's symlink can never stand where the agent creates or removes one.
    // Resolved once, so later no-symlink opens below them succeed.
    let agent_dir = |parent: &Path, name: &str| -> std::result::Result<PathBuf, StartError> {
        let dir = parent.join(name);
        make_dir(&dir, 0o711)?;
        fs::canonicalize(&dir).map_err(|source| StartError::Dir { path: dir, source })
    };
    Ok(runs::RunDirs {
        runs: agent_dir(&sock_dir, "runs")?,
        notify: agent_dir(&sock_dir, "notify")?,
        tmp: agent_dir(&cfg.state_dir, "tmp")?,
        logs: agent_dir(&cfg.state_dir, "logs")?,
    })
}

/// The store in `state_dir`, checked whole, its files root's alone.
fn open_store(state_dir: &Path) -> std::result::Result<Store, StartError> {
    let db = state_dir.join("wfcg.db");
    let store = Store::open(&db).map_err(|source| StartError::Store {
        path: db.clone(),
        source,
    })?;
    // A corrupt store would fail every call behind a healthy-looking socket.
    match store.quick_check() {
        Ok(None) => {}
        Ok(Some(detail)) => return Err(StartError::Corrupt { path: db, detail }),
        Err(source) => return Err(StartError::Store { path: db, source }),
    }
    for file in [
        db.clone(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
    ] {
        if file.exists() {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
                .map_err(|source| StartError::Dir { path: file, source })?;
        }
    }
    Ok(store)
}

impl Agent {
    /// Checks the host, sets up the cgroup tree, directories and store, moves the
    /// agent into its own leaf cgroup, and reconciles runs left from before.
    /// Each step is a function below, in the order it runs.
    pub fn start(cfg: Config) -> std::result::Result<Arc<Agent>, StartError> {
        if !rustix::process::geteuid().is_root() {
            return Err(StartError::NotRoot);
        }
        // Before the agent moves into its own leaf: the cgroup it was started in.
        let about = about::About::now(&cfg.proc_root);
        // Nothing the agent creates is readable by others unless it says so.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        // Everything that can refuse a start is read before the host is touched.
        let access = access::Access::load(cfg.policy.clone()).map_err(StartError::Policy)?;
        let template =
            Template::lookup_in(&cfg.templates_dir, "default").map_err(StartError::Template)?;
        let runs_cg = cgroup_tree(&cfg)?;
        let dirs = run_dirs(&cfg)?;
        let store = open_store(&cfg.state_dir)?;
        let reaper = Reaper::new().map_err(|e| StartError::Socket(format!("inotify: {e}")))?;
        let records = records::Records::new(
            cfg.state_dir.join("audit.head"),
            crate::alerts::Alerter::new(cfg.on_event.clone(), cfg.webhook.clone()),
        );
        let lock_watch = kills::start_lock_watch(&cfg.proc_root, &runs_cg);
        match &lock_watch {
            Ok(_) => tracing::info!("git locks are known by their creator (fanotify)"),
            Err(why) => tracing::warn!(
                "git locks' creators cannot be watched ({why}): a lock is counted as a run's \
                 only where no process outside the run works in its repository"
            ),
        }

        let agent = Arc::new(Agent {
            cfg,
            template,
            access,
            about,
            runs: runs::Runs::new(runs_cg, dirs, store),
            kills: kills::Kills::new(lock_watch),
            watch: watch::Watch::new(reaper),
            records,
        });
        agent.start_watching();
        agent.reconcile();
        agent.end_left_tmpfs_later()?;
        Ok(agent)
    }

    /// Starts the threads that watch runs, the audit trail and the policy file
    /// (see "Threads and locks"), and records the policy's load.
    fn start_watching(self: &Arc<Self>) {
        self.start_lifecycle(tokio::runtime::Handle::current());
        self.watch.reaper.start(Arc::downgrade(self));
        self.records.auditor.start_retry(Arc::downgrade(self));
        self.records.auditor.start_sync(&self.runs.store.lock());
        let weak = Arc::downgrade(self);
        self.records.auditor.on_break(move |why| {
            if let Some(agent) = weak.upgrade() {
                agent.alert_audit_tampered(why);
            }
        });
        self.audit_policy_load("start", Ok(()));
        let weak = Arc::downgrade(self);
        self.access.watch(move || {
            if let Some(agent) = weak.upgrade() {
                agent.reload_policy("file changed");
            }
        });
    }

    /// The tmpfs of ended runs left mounted: each a walk as its owner, off the start.
    fn end_left_tmpfs_later(self: &Arc<Self>) -> std::result::Result<(), StartError> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("wfcg-tmpfs-end".into())
            .spawn(move || {
                if let Some(agent) = weak.upgrade() {
                    agent.end_left_tmpfs();
                }
            })
            .map(drop)
            .map_err(|e| StartError::Socket(format!("cannot start a thread: {e}")))
    }

    fn store(&self) -> parking_lot::MutexGuard<'_, Store> {
        self.runs.store()
    }

    /// Brings the store in line with the cgroup tree after a start.
    fn reconcile(self: &Arc<Self>) {
        let live = RunStatus::live();
        let records = self.store().list_runs(Some(&live)).unwrap_or_default();
        let mut known = std::collections::HashSet::new();
        for rec in records {
            known.insert(rec.run_id.clone());
            let cg = Cgroup::new(&rec.cgroup_path);
            let interrupted = (rec.status == RunStatus::Stopping)
                .then(|| self.kill_interrupted(&rec, cg.exists()));
            if cg.exists() {
                // Deadlines are absolute times: one that passed meanwhile fires at once.
                self.lifecycle_begin(&rec, true);
                self.watch.reaper.watch(&rec.run_id, &cg, &**self);
                if let Some((by, req, end)) = interrupted {
                    let agent = self.clone();
                    std::thread::spawn(move || {
                        let entry = AuditEntry {
                            actor_name: "agent".into(),
                            action: AuditAction::KillResumed,
                            run_id: Some(rec.run_id.clone()),
                            ..Default::default()
                        };
                        let run_id = rec.run_id.clone();
                        let res = agent
                            .audited(entry, &req.clone(), |_| {
                                agent.kill_allowed(by, rec, req, end)
                            })
                            .map(Audited::into_inner);
                        if let Err(f) = res {
                            tracing::error!(run_id, "resuming the kill failed: {}", f.message);
                        }
                    });
                }
            } else {
                self.on_run_empty(&rec.run_id);
            }
        }
        for cg in self.runs.cg.children().unwrap_or_default() {
            let Some(run_id) = cg.path().file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if known.contains(run_id) || self.store().get_run(run_id).ok().flatten().is_some() {
                continue;
            }
            let pid = cg.procs_recursive().ok().and_then(|p| p.first().copied());
            let command = pid
                .and_then(|p| procfs::cmdline(&self.cfg.proc_root, p))
                .map(|c| vec![c])
                .unwrap_or_default();
            tracing::warn!(
                "adopting cgroup {} with no record as run {run_id} (status unknown)",
                cg.path().display()
            );
            let rec = RunRecord {
                run_id: run_id.to_owned(),
                pid,
                pid_starttime: pid.and_then(|p| procfs::starttime(&self.cfg.proc_root, p)),
                status: RunStatus::Unknown,
                started_at: Some(chrono::Utc::now()),
                owner_uid: 0,
                command,
                cgroup_path: cg.path().display().to_string(),
                ..Default::default()
            };
            if self.store().insert_run(&rec).is_ok() {
                self.lifecycle_begin(&rec, true);
                self.watch.reaper.watch(run_id, &cg, &**self);
            }
        }
    }

    /// A run found `stopping` at start: the previous agent stopped during its
    /// kill. Audits the interrupted attempt (from its `kill_start` record) and
    /// returns how to resume it: same mode and reason, the template's graces
    /// (a request's own graces are not kept), ending as the attempt would have.
    fn kill_interrupted(&self, rec: &RunRecord, live: bool) -> (Requester, KillRequest, RunStatus) {
        let filter = AuditFilter {
            run_id: Some(rec.run_id.clone()),
            ..Default::default()
        };
        let start = self
            .store()
            .audit_records(&filter)
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|r| r.entry.action == KILL_START)
            .map(|r| r.entry);
        let mode = start
            .as_ref()
            .and_then(|s| s.mode.as_deref())
            .and_then(KillMode::parse)
            .unwrap_or_default();
        let end = start
            .as_ref()
            .and_then(|s| KillStarted::parse(&s.outcome))
            .map_or(RunStatus::Killed, |k| k.ending);
        let by = start
            .as_ref()
            .map(|s| format!("{} at {}", s.actor_name, s.time))
            .unwrap_or_else(|| "an unrecorded request".into());
        tracing::warn!(
            run_id = rec.run_id,
            "the {mode} kill by {by} was interrupted by an agent restart; {}",
            if live {
                "resuming it"
            } else {
                "its processes are gone"
            }
        );
        self.audit_event(AuditEntry {
            action: AuditAction::KillInterrupted,
            run_id: Some(rec.run_id.clone()),
            reason: Some(format!("the agent stopped during the {mode} kill by {by}")),
            mode: Some(mode.to_string()),
            outcome: if live { "resumed" } else { "processes gone" }.into(),
            ..Default::default()
        });
        let req = KillRequest::new(mode, start.and_then(|s| s.reason));
        (
            Requester::named(format!("agent (resuming the kill by {by})")),
            req,
            end,
        )
    }

    /// The record of a run, whoever may see it.
    fn find_run(&self, run_id: &str) -> Result<RunRecord> {
        if let Some(problem) = api::run_id_problem(run_id) {
            return Err(Failure::new(ErrorKind::BadInput, problem));
        }
        let mut rec = self
            .store()
            .get_run(run_id)?
            .ok_or_else(|| Failure::not_found(run_id))?;
        self.records.auditor.overlay(&mut rec);
        Ok(rec)
    }

    /// What the policy says of `id` doing `action` to the run `rec`.
    fn decide(&self, id: &Identity, action: Action, rec: &RunRecord) -> crate::policy::Decision {
        let scope = RunScope {
            owner_uid: rec.owner_uid,
            teams: &rec.teams,
        };
        self.access.policy().decide(id, action, &scope)
    }

    /// How many runs the reaper watches.
    pub fn watched_runs(&self) -> usize {
        self.watch.reaper.len()
    }
}

#[cfg(test)]
#[test]
fn a_requester_is_named_in_records_with_its_uid_and_pid() {
    let alice = Requester {
        name: "alice".into(),
        uid: Some(1000),
        pid: Some(42),
    };
    assert_eq!(alice.to_string(), "alice (uid 1000, pid 42)");
    assert_eq!(Requester::named("monitor").to_string(), "monitor");
    assert_eq!(Requester::named("monitor").uid, None);
}

/// The rule of the agent's files: an operation (a file with an `impl Agent`
/// block, named for what it does) may use the agent, its wings and its leaves;
/// the agent (this file), its wings (`runs.rs`, `kills.rs`, `watch.rs`,
/// `records.rs`) and its leaves (every other file without an `impl Agent`)
/// never name an operation's file: state types live in a wing or a leaf, and
/// nothing runs back up. `server.rs` is the front that calls the operations.
#[cfg(test)]
mod layering {
    use std::path::Path;

    /// Every `.rs` file below `src/agent`, by its path there, with its code:
    /// its text up to its tests, less comments.
    fn files() -> Vec<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent");
        crate::layers::rs_files(&root)
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                // Tests may use anything: the rule is for the code above them.
                let code = text.split("#[cfg(test)]").next().unwrap_or("");
                let code: Vec<&str> = code
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or(""))
                    .collect();
                let name = p.strip_prefix(&root).unwrap().display().to_string();
                (name, code.join("\n"))
            })
            .collect()
    }

    /// The module below `agent` a file belongs to: `adopt` for `adopt/in_place.rs`.
    fn module(name: &str) -> &str {
        name.split('/').next().unwrap().trim_end_matches(".rs")
    }

    /// Whether `text` names the module `op`: `super::op`, `crate::agent::op`,
    /// `super::{…, op, …}`, and in `mod.rs` a path `op::…`.
    fn names(text: &str, op: &str, in_mod_rs: bool) -> bool {
        let ident = |c: char| c.is_alphanumeric() || c == '_';
        let at = |prefix: &str| {
            text.match_indices(&format!("{prefix}{op}")).any(|(i, m)| {
                let after = text[i + m.len()..].chars().next();
                let before = text[..i].chars().next_back();
                !after.is_some_and(ident) && !before.is_some_and(|c| ident(c) || c == ':')
            })
        };
        let grouped = text.match_indices("super::{").any(|(i, m)| {
            let rest = &text[i + m.len()..];
            let group = &rest[..rest.find('}').unwrap_or(rest.len())];
            group
                .split(',')
                .any(|item| item.trim().split("::").next() == Some(op))
        });
        let bare = in_mod_rs
            && text.match_indices(&format!("{op}::")).any(|(i, _)| {
                !text[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| ident(c) || c == ':')
            });
        at("super::") || at("crate::agent::") || grouped || bare
    }

    #[test]
    fn the_agent_its_wings_and_leaves_never_import_an_operation() {
        let files = files();
        let ops: std::collections::BTreeSet<&str> = files
            .iter()
            .filter(|(name, text)| name != "mod.rs" && text.contains("\nimpl Agent {"))
            .map(|(name, _)| module(name))
            .collect();
        for op in [
            "create",
            "kill_run",
            "kill_and_record",
            "adopt",
            "lifecycle",
        ] {
            assert!(ops.contains(op), "{op} is an operation: {ops:?}");
        }
        for wing in ["runs", "kills", "watch", "records"] {
            assert!(!ops.contains(wing), "the wing {wing} holds no operation");
        }
        let mut wrong = Vec::new();
        for (name, text) in &files {
            if name == "server.rs" || (name != "mod.rs" && ops.contains(module(name))) {
                continue;
            }
            for op in &ops {
                if names(text, op, name == "mod.rs") {
                    wrong.push(format!("{name} names the operation {op}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn an_import_of_an_operation_is_seen_in_every_form() {
        assert!(names("use super::kill_run::KillSlot;", "kill_run", false));
        assert!(names("use super::{Agent, kill_run};", "kill_run", false));
        assert!(names("x: crate::agent::adopt::TREE", "adopt", false));
        assert!(names("use kill_run::KillSlot;", "kill_run", true));
        assert!(!names("use kill_run::KillSlot;", "kill_run", false));
        assert!(!names("mod kill_run;", "kill_run", true));
        assert!(!names("use super::kill_run_x;", "kill_run", false));
        assert!(!names("self.adopt_lock; my_adopt::x", "adopt", true));
    }
}
