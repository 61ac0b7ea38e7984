//! `wfcg agent`: the root daemon that owns the cgroup tree and the store.
//!
//! [`Agent`] holds the state and carries out requests as plain blocking calls;
//! [`server`] puts them on the Unix socket; [`reaper`] notices runs that ended.
//! The agent is never the parent of a workflow: `wfcg run` supervises its own
//! command inside the run's cgroup, so the agent may stop and start again while
//! runs go on, and [`Agent::start`] reconciles the store with the cgroup tree.
//!
//! This file holds the struct, its configuration and errors, who asks
//! ([`Caller`], `Requester`), the start and the reconciliation. Each operation is
//! an `impl Agent` in a file named for it:
//!
//! | file | operation |
//! | --- | --- |
//! | `create.rs` | start a run (`wfcg run`) |
//! | `adopt.rs`, `adopt/in_place.rs` | take over a tree or a cgroup started outside wfcg |
//! | `kill_run.rs` | a kill request: policy, audit, concurrent kills coalesced |
//! | `kill_sequence.rs` | one kill sequence: the plan, [`crate::kill`], the result recorded |
//! | `kill_result.rs` | the answer to a kill (pure functions) |
//! | `run_end.rs` | the exit report, the supervisor leaf, a run's cgroup emptied |
//! | `cleanup.rs` | what an ended run leaves, removed |
//! | `queries.rs`, `may_kill.rs` | `ps` and `status`; "may uid U kill run R?" |
//! | `lease.rs` | leases: renewal, a fresh lease after a restart, a lapse |
//! | `lifecycle.rs`, `lifecycle/deadlines.rs` | notify, heartbeats, deadlines, stuck runs |
//! | `breaker.rs` | the circuit breaker of each workflow |
//! | `control.rs` | the agent itself: health (`agent status`), a stop (`agent stop`) |
//! | `metrics.rs` | the `/metrics` scrape |
//! | `audit_trail.rs`, `alert.rs` | the agent's audit records and policy reload; alerts |
//! | `time.rs` | times as the store writes them |

pub mod access;
mod adopt;
mod alert;
pub mod audit;
mod audit_trail;
mod breaker;
mod budget;
mod cleanup;
mod control;
mod create;
mod denials;
mod ended_tmpfs;
mod kill_result;
mod kill_run;
mod kill_sequence;
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
mod progress;
mod queries;
pub mod reaper;
mod run_end;
mod run_files;
mod sender;
pub mod server;
mod supervisors;
mod time;

use parking_lot::Mutex;
use std::collections::HashMap;
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
use crate::sections::Finding;
use crate::store::{self, AuditFilter, RunRecord, Store};
use crate::template::Template;
use kill_run::KillSlot;
use kill_sequence::{KILL_START, KillStarted};
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
}

impl Failure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
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

/// The critical sections a run was seen holding at the last look (`status`),
/// by (pid, path): what is reported as open when a force kill looks no more.
type Sightings = HashMap<(i32, String), Sighting>;

/// A critical section seen open: first seen, and at the last look.
#[derive(Debug, Clone)]
struct Sighting {
    finding: Finding,
    first: chrono::DateTime<chrono::Utc>,
    last: chrono::DateTime<chrono::Utc>,
}

pub struct Agent {
    pub cfg: Config,
    runs_cg: Cgroup,
    run_dirs: PathBuf,
    /// The runs' sd_notify sockets, `<socket dir>/notify/<id>` (agent-owned, 0711).
    notify_dirs: PathBuf,
    tmp_dirs: PathBuf,
    log_dirs: PathBuf,
    store: Mutex<Store>,
    template: Template,
    reaper: Reaper,
    /// The kill sequence under way per run. Lock order: `inflight`, then
    /// `store`; never take `inflight` while holding `store`.
    inflight: Mutex<HashMap<String, Arc<KillSlot>>>,
    /// When each open critical section was first seen, per run, for `status`.
    sightings: Mutex<HashMap<String, Sightings>>,
    /// The cgroup files of live runs that listings read, kept open.
    run_files: run_files::RunFiles,
    /// The per-user start budgets (live runs, starts a minute, TMPDIR memory).
    budgets: budget::Budgets,
    /// Git locks that processes of an exited run held when they were killed,
    /// checked and removed once the run's cgroup is empty.
    stale_candidates: Mutex<HashMap<String, Vec<Finding>>>,
    /// Held while a run's workspace is removed or kept (cleanup.rs).
    workspace_lock: Mutex<()>,
    /// Who each run's supervisor is, as the kernel identified it at the run's creation.
    supervisors: supervisors::Supervisors,
    access: access::Access,
    auditor: Arc<audit::Auditor>,
    life: lifecycle::Lifecycle,
    alerter: crate::alerts::Alerter,
    metrics: metrics::Metrics,
    /// Held while a tree is adopted: concurrent adoptions of one tree make one run.
    adopt_lock: Mutex<()>,
    /// How the agent was started (health).
    about: control::About,
    /// Notified when root asked the agent to stop.
    stop: tokio::sync::Notify,
    /// Who created each git lock (fanotify), or why that is not known.
    lock_watch: std::result::Result<Arc<crate::lockwatch::LockWatch>, String>,
}

impl AsRef<Mutex<Store>> for Agent {
    fn as_ref(&self) -> &Mutex<Store> {
        &self.store
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

impl Agent {
    /// Checks the host, sets up the cgroup tree, directories and store, moves the
    /// agent into its own leaf cgroup, and reconciles runs left from before.
    pub fn start(cfg: Config) -> std::result::Result<Arc<Agent>, StartError> {
        if !rustix::process::geteuid().is_root() {
            return Err(StartError::NotRoot);
        }
        // Before the agent moves into its own leaf: the cgroup it was started in.
        let about = control::About::now(&cfg.proc_root);
        // Nothing the agent creates is readable by others unless it says so.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        // Everything that can refuse a start is read before the host is touched.
        let access = access::Access::load(cfg.policy.clone()).map_err(StartError::Policy)?;
        let template =
            Template::lookup_in(&cfg.templates_dir, "default").map_err(StartError::Template)?;
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
        let run_dirs = agent_dir(&sock_dir, "runs")?;
        let notify_dirs = agent_dir(&sock_dir, "notify")?;
        let tmp_dirs = agent_dir(&cfg.state_dir, "tmp")?;
        let log_dirs = agent_dir(&cfg.state_dir, "logs")?;
        let db = cfg.state_dir.join("wfcg.db");
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
        let reaper = Reaper::new().map_err(|e| StartError::Socket(format!("inotify: {e}")))?;
        let auditor = Arc::new(audit::Auditor::new(cfg.state_dir.join("audit.head")));
        let alerter = crate::alerts::Alerter::new(cfg.on_event.clone(), cfg.webhook.clone());
        let lock_watch = lock_creators::start(&cfg.proc_root, &runs_cg);
        match &lock_watch {
            Ok(_) => tracing::info!("git locks are known by their creator (fanotify)"),
            Err(why) => tracing::warn!(
                "git locks' creators cannot be watched ({why}): a lock is counted as a run's \
                 only where no process outside the run works in its repository"
            ),
        }

        let agent = Arc::new(Agent {
            cfg,
            runs_cg,
            run_dirs,
            notify_dirs,
            tmp_dirs,
            log_dirs,
            store: Mutex::new(store),
            template,
            reaper,
            inflight: Mutex::default(),
            sightings: Mutex::default(),
            run_files: run_files::RunFiles::default(),
            budgets: budget::Budgets::default(),
            stale_candidates: Mutex::default(),
            workspace_lock: Mutex::default(),
            supervisors: supervisors::Supervisors::default(),
            access,
            auditor,
            life: lifecycle::Lifecycle::default(),
            alerter,
            metrics: metrics::Metrics::default(),
            adopt_lock: Mutex::default(),
            about,
            stop: tokio::sync::Notify::new(),
            lock_watch,
        });
        agent.start_lifecycle(tokio::runtime::Handle::current());
        agent.reaper.start(Arc::downgrade(&agent));
        agent.auditor.start_retry(Arc::downgrade(&agent));
        agent.auditor.start_sync(Arc::downgrade(&agent));
        let weak = Arc::downgrade(&agent);
        agent.auditor.on_break(move |why| {
            if let Some(agent) = weak.upgrade() {
                agent.alert_audit_tampered(why);
            }
        });
        agent.audit_policy_load("start", Ok(()));
        let weak = Arc::downgrade(&agent);
        agent.access.watch(move || {
            if let Some(agent) = weak.upgrade() {
                agent.reload_policy("file changed");
            }
        });
        agent.reconcile();
        // The tmpfs of ended runs left mounted: each a walk as its owner, off the start.
        let weak = Arc::downgrade(&agent);
        std::thread::Builder::new()
            .name("wfcg-tmpfs-end".into())
            .spawn(move || {
                if let Some(agent) = weak.upgrade() {
                    agent.end_left_tmpfs();
                }
            })
            .map_err(|e| StartError::Socket(format!("cannot start a thread: {e}")))?;
        Ok(agent)
    }

    fn store(&self) -> parking_lot::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (each call is one
        // statement or transaction), so a poisoned lock is safe to use.
        self.store.lock()
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
                self.reaper.watch(&rec.run_id, &cg, &**self);
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
                        let res = agent.audited(entry, &req.clone(), |_| {
                            agent.kill_allowed(by, rec, req, end)
                        });
                        if let Err(f) = res {
                            tracing::error!(run_id, "resuming the kill failed: {}", f.message);
                        }
                    });
                }
            } else {
                self.on_run_empty(&rec.run_id);
            }
        }
        for cg in self.runs_cg.children().unwrap_or_default() {
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
                self.reaper.watch(run_id, &cg, &**self);
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
        self.auditor.overlay(&mut rec);
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
        self.reaper.len()
    }
}

/// The cgroup that holds a run's workload, where its processes are counted and
/// sampled: the run's cgroup, or the `payload` leaf below it for a tree adopted
/// from outside. Freezing and killing act on the run's cgroup, which covers it
/// (both are hierarchical in cgroup v2). The one place that decides this.
pub(crate) fn workload(rec: &RunRecord) -> Cgroup {
    let cg = Cgroup::new(&rec.cgroup_path);
    match rec.adopted.as_deref() {
        Some(adopt::TREE) => cg.child(adopt::PAYLOAD),
        _ => cg,
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
