//! The audit trail's writer: every record is committed to the store before the
//! request it describes is answered. A record that cannot be written (a full or
//! read-only disk, an I/O error) is kept in order in memory and retried (loudly)
//! until it is; the answer then says `audit: pending`. The ends of runs (a kill's
//! result, an exit the reaper noticed) go through the same queue, so that a kill
//! never waits for the disk and its records land in the order they happened.
//!
//! After each write the chain's head (`seq hash`) is also written to a file
//! beside the database, so that deleting the newest records is detected too.
//! The head last written is also remembered: before appending, the store's
//! newest record must be that head. If it is not (records deleted from the end,
//! the newest changed, records added behind the agent's back), the new record is
//! not chained over the gap: a `chain_break` record naming the range comes first,
//! an `audit_tampered` alert goes out, and `audit verify` fails from then on.
//!
//! Users' texts are capped (a reason at [`api::MAX_REASON`] bytes) and their
//! refused requests coalesced ([`super::denials`]), so one user's flood grows
//! the trail by a bounded amount; below root's reserve on the state filesystem
//! they are only counted.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::denials::{self, Denials};
use crate::api::{self, AuditEntry, RunStatus};
use crate::store::{CHAIN_BREAK, ChainCheck, RunRecord, Store};

/// A write the store must get, in order.
// The kill's result is kept by value: one per kill, queued only until the next
// write, against an allocation for every record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Record {
    Audit(AuditEntry),
    /// A kill sequence's result and the status it leaves the run in.
    Kill {
        run_id: String,
        started_at: DateTime<Utc>,
        result: api::KillResult,
        status: RunStatus,
        ended_at: Option<DateTime<Utc>>,
    },
    /// The end of a run the reaper noticed, with the exit its supervisor left.
    End {
        run_id: String,
        status: RunStatus,
        ended_at: DateTime<Utc>,
        exit: Option<(Option<i32>, Option<i32>)>,
    },
}

impl Record {
    fn run_id(&self) -> Option<&str> {
        match self {
            Record::Audit(_) => None,
            Record::Kill { run_id, .. } | Record::End { run_id, .. } => Some(run_id),
        }
    }
}

/// The auditor's word that it took a record: written, kept pending (and
/// retried until it is), or counted into a user's coalesced refusals. Only the
/// auditor makes one (its field is private to this file), so holding one
/// proves a record of the request exists.
#[derive(Debug, Clone)]
pub struct Receipt {
    written: bool,
}

impl Receipt {
    /// Whether everything, this record included, is written now (else the
    /// record is pending: the answer then says `audit: pending`).
    pub fn written(&self) -> bool {
        self.written
    }
}

/// The answer of a state-changing request, with the proof that its audit
/// record was taken: the only thing the server's wrapper for a state-changing
/// route (`server.rs`, `changed`) turns into an answer. It is made from the
/// [`Receipt`] the auditor returned, or, where a change is deliberately not
/// recorded, from the [`Unrecorded`] reason that says why.
#[derive(Debug)]
#[must_use]
pub struct Audited<T> {
    value: T,
    /// How the request was recorded.
    recorded: Recorded,
}

/// How a state-changing request was recorded.
#[derive(Debug)]
enum Recorded {
    By(Receipt),
    Not(Unrecorded),
}

/// The state changes that deliberately write no audit record of their own,
/// each with why. A new one is a decision to write down here, not an omission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrecorded {
    /// A lease renewed (`POST /v1/runs/{id}/lease`): an executor renews every
    /// few seconds, and what matters is recorded anyway: the run's start (with
    /// its lease), a refused renewal, and the kill when the lease lapses.
    LeaseRenewed,
    /// A supervisor moving itself to its run's supervisor leaf
    /// (`POST /v1/runs/{id}/supervisor`): one step of the run's start (recorded
    /// as `run_start`), only ever of the caller itself, between two leaves of
    /// its own run. A refusal is recorded.
    SupervisorLeaf,
    /// An exit reported for a run whose end is recorded by something else: it
    /// had ended already (its `run_end` is written), or a kill under way ends
    /// it (the kill's own record says how).
    EndRecordedElsewhere,
}

impl<T> Audited<T> {
    /// `value`, whose record the auditor took (`receipt`).
    pub fn new(value: T, receipt: Receipt) -> Audited<T> {
        Audited {
            value,
            recorded: Recorded::By(receipt),
        }
    }

    /// `value`, of a change that is deliberately not recorded, and why.
    pub fn unrecorded(value: T, why: Unrecorded) -> Audited<T> {
        Audited {
            value,
            recorded: Recorded::Not(why),
        }
    }

    /// Whether the request's record is written now (`false` when it is
    /// pending, and when the change is not recorded).
    pub fn written(&self) -> bool {
        matches!(&self.recorded, Recorded::By(r) if r.written)
    }

    /// Why the change is not recorded, if it is not.
    pub fn unrecorded_why(&self) -> Option<Unrecorded> {
        match self.recorded {
            Recorded::By(_) => None,
            Recorded::Not(why) => Some(why),
        }
    }

    /// The answer itself (for an operation that calls another, or the server).
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The answer changed by `f`, with the same record.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Audited<U> {
        Audited {
            value: f(self.value),
            recorded: self.recorded,
        }
    }
}

/// How often pending records are retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How soon a record written without waiting for the disk
/// ([`Auditor::record_soon`]) is synced to it.
pub const SYNC_WITHIN: Duration = Duration::from_millis(100);

/// What to call when the chain is found cut.
type BreakHook = Box<dyn Fn(&str) + Send + Sync>;

pub struct Auditor {
    pending: Mutex<VecDeque<Record>>,
    head: PathBuf,
    /// The head (seq, hash) this agent wrote last (at start, the head file's):
    /// the store's newest record must be it, or the chain was cut.
    last: Mutex<Option<(i64, String)>>,
    /// Told when the chain was found cut (the chain_break record's text).
    on_break: Mutex<Option<BreakHook>>,
    /// Records written, and failed attempts to write one, since the start.
    pub written: AtomicU64,
    pub failures: AtomicU64,
    /// The last attempt to write failed.
    failing: AtomicBool,
    /// Users' refused requests being counted.
    denials: Mutex<Denials>,
    /// Free bytes on the store's filesystem kept for root (users' refused
    /// requests are only counted below it).
    reserve: AtomicU64,
    /// Seconds of a coalescing window of users' refused requests.
    window: AtomicU64,
    /// Since when records written without waiting for the disk wait for the
    /// sync thread ([`Auditor::start_sync`]), if any do.
    unsynced: Mutex<Option<Instant>>,
    unsynced_cv: parking_lot::Condvar,
}

impl Auditor {
    pub fn new(head: PathBuf) -> Auditor {
        Auditor {
            pending: Mutex::default(),
            last: Mutex::new(read_head(&head)),
            on_break: Mutex::default(),
            head,
            written: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            denials: Mutex::default(),
            reserve: AtomicU64::new(0),
            window: AtomicU64::new(60),
            unsynced: Mutex::default(),
            unsynced_cv: parking_lot::Condvar::new(),
        }
    }

    /// Sets the free space kept for root on the store's filesystem, and the
    /// seconds of a window in which a user's refused requests are coalesced.
    pub fn set_budgets(&self, reserve: u64, window_secs: u32) {
        self.reserve.store(reserve, Ordering::Relaxed);
        self.window
            .store(u64::from(window_secs.max(1)), Ordering::Relaxed);
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.window.load(Ordering::Relaxed))
    }

    /// Whether the store's filesystem has more free space than root's reserve.
    fn room(&self) -> bool {
        let reserve = self.reserve.load(Ordering::Relaxed);
        reserve == 0
            || self
                .head
                .parent()
                .and_then(super::runs::free_bytes)
                .is_none_or(|free| free >= reserve)
    }

    /// Queues the summaries of users' coalescing windows that ended (all of
    /// them when `all`); whether any were.
    fn expire_denials(&self, all: bool) -> bool {
        let summaries = self
            .denials
            .lock()
            .expire(Instant::now(), self.window(), self.room(), all);
        let any = !summaries.is_empty();
        self.pending
            .lock()
            .extend(summaries.into_iter().map(Record::Audit));
        any
    }

    /// Appends `entry` after any pending records. Returns the receipt: whether
    /// everything, this entry included, is now written.
    /// A user's text is capped, and a user's refused request coalesced with
    /// its repeats (then it is only counted: `true` when nothing else is pending).
    pub fn record(&self, store: &Mutex<Store>, entry: AuditEntry) -> Receipt {
        self.record_on(store, entry, Disk::Synced)
    }

    /// [`Auditor::record`] written to the operating system now, and synced to
    /// the disk by the sync thread within [`SYNC_WITHIN`] rather than before
    /// the answer: for the records of a run's start and of its end by exit,
    /// which the host's power loss in that window makes moot (the run dies
    /// with the host) and which an agent's crash does not lose. Kills and
    /// refusals are never written this way.
    pub fn record_soon(&self, store: &Mutex<Store>, entry: AuditEntry) -> Receipt {
        self.record_on(store, entry, Disk::Unsynced)
    }

    fn record_on(&self, store: &Mutex<Store>, mut entry: AuditEntry, disk: Disk) -> Receipt {
        if entry.actor_uid.is_some_and(|uid| uid != 0) {
            entry.reason = entry.reason.map(|r| denials::cap(&r, api::MAX_REASON));
            // An adoption's outcome lists every process: as long as a user's tree.
            if entry.outcome.len() > api::MAX_REASON {
                entry.outcome = denials::cap(&entry.outcome, api::MAX_REASON);
            }
        }
        if denials::is_coalesced(&entry) {
            let room = self.room();
            match self.denials.lock().admit(entry, room, Instant::now()) {
                Some(first) => entry = first,
                None => {
                    return Receipt {
                        written: self.pending() == 0,
                    };
                }
            }
        }
        self.pending.lock().push_back(Record::Audit(entry));
        Receipt {
            written: self.flush(store, disk),
        }
    }

    /// Writes `rec` after any pending records, or keeps it pending. Returns
    /// the receipt: whether everything, this record included, is now written.
    pub fn keep(&self, store: &Mutex<Store>, rec: Record) -> Receipt {
        self.pending.lock().push_back(rec);
        Receipt {
            written: self.flush(store, Disk::Synced),
        }
    }

    /// [`Auditor::keep`] written to the operating system but not synced to
    /// the disk: it survives the agent's crash, not the host's power loss. For
    /// what a force kill writes before it acts (the host's power going kills
    /// the run anyway); the kill's own record, kept durably before its answer,
    /// then syncs both (the write-ahead log is synced as a whole).
    pub fn keep_unsynced(&self, store: &Mutex<Store>, rec: Record) -> Receipt {
        self.pending.lock().push_back(rec);
        Receipt {
            written: self.flush(store, Disk::Unsynced),
        }
    }

    /// Queues `rec` to be written with the next record kept (in the same
    /// transaction), or by the retry within a second. For the records of one
    /// answer, whose last record is then kept before the answer is sent.
    pub fn defer(&self, rec: Record) {
        self.pending.lock().push_back(rec);
    }

    /// Calls `f` with what is wrong whenever the chain is found cut.
    pub fn on_break(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self.on_break.lock() = Some(Box::new(f));
    }

    /// Writes every pending record in one transaction (one fsync), in order: a
    /// group commit. Records queued while it writes wait for the store and are
    /// written together by the next flush; one whose record a flush already
    /// wrote finds nothing pending. A record stays pending (and visible to
    /// [`Auditor::overlay`]) until its transaction is committed; when the
    /// transaction fails, none of them is written and all stay pending.
    fn flush(&self, store: &Mutex<Store>, sync: Disk) -> bool {
        let mut store = store.lock();
        // Only a flush removes records, and only while it holds the store: the
        // first `batch.len()` pending records stay these.
        let batch: Vec<Record> = self.pending.lock().iter().cloned().collect();
        if batch.is_empty() {
            return true;
        }
        let mut last = self.last.lock();
        let mut head = last.clone();
        let mut breaks = Vec::new();
        let mut audited = 0;
        let head_path = &self.head;
        let (res, head_written) = std::thread::scope(|sc| {
            let mut writer = None;
            let mut inline = None;
            let res = store.with_sync(sync == Disk::Synced, |store| {
                store.batch(|store| {
                    for rec in &batch {
                        match rec {
                            Record::Audit(entry) => {
                                let recs = store.append_audit_after(entry, head.as_ref())?;
                                audited += recs.len() as u64;
                                breaks.extend(
                                    recs.iter()
                                        .filter(|r| r.entry.action == CHAIN_BREAK)
                                        .map(|r| (r.seq, r.entry.outcome.clone())),
                                );
                                let rec = recs.last().expect("the entry's record");
                                head = Some((rec.seq, rec.hash.clone()));
                            }
                            Record::Kill {
                                run_id,
                                started_at,
                                result,
                                status,
                                ended_at,
                            } => store.record_kill(
                                run_id,
                                *started_at,
                                result,
                                *status,
                                *ended_at,
                            )?,
                            Record::End {
                                run_id,
                                status,
                                ended_at,
                                exit,
                            } => {
                                if let Some((code, signal)) = exit {
                                    store.record_exit(run_id, *code, *signal)?;
                                }
                                store.finish_run(run_id, *status, *ended_at)?;
                            }
                        }
                    }
                    // The head file is written (and synced) while the transaction
                    // commits: one wait for the disk, not two. Set back if the commit fails.
                    // Without a sync it is written here: a thread would cost
                    // more than the write.
                    if *last != head
                        && let Some((seq, hash)) = head.clone()
                    {
                        match sync {
                            Disk::Synced => {
                                writer =
                                    Some(sc.spawn(move || write_head(head_path, seq, &hash, sync)))
                            }
                            Disk::Unsynced => {
                                inline = Some(write_head(head_path, seq, &hash, sync))
                            }
                        }
                    }
                    Ok(())
                })
            });
            (res, writer.map(|w| w.join()).or(inline.map(Ok)))
        });
        match &head_written {
            Some(Ok(Err(e))) => {
                tracing::error!("AUDIT: cannot write {}: {e}", self.head.display())
            }
            Some(Err(_)) => tracing::error!("AUDIT: writing {} failed", self.head.display()),
            _ => {}
        }
        match res {
            Ok(()) => {
                self.pending.lock().drain(..batch.len());
                self.failing.store(false, Ordering::Relaxed);
                self.written.fetch_add(audited, Ordering::Relaxed);
                for (seq, why) in &breaks {
                    tracing::error!("AUDIT CHAIN BROKEN (record {seq}): {why}");
                    if let Some(f) = &*self.on_break.lock() {
                        f(why);
                    }
                }
                if head_written.is_some() {
                    *last = head;
                }
                if sync == Disk::Unsynced {
                    self.unsynced.lock().get_or_insert_with(Instant::now);
                    self.unsynced_cv.notify_one();
                }
                true
            }
            Err(e) => {
                if head_written.is_some() {
                    // The head names a record that was not committed: the one before.
                    let back = match &*last {
                        Some((seq, hash)) => write_head(&self.head, *seq, hash, Disk::Synced),
                        None => std::fs::remove_file(&self.head),
                    };
                    if let Err(e) = back {
                        tracing::error!("AUDIT: cannot set {} back: {e}", self.head.display());
                    }
                }
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.failing.store(true, Ordering::Relaxed);
                tracing::error!(
                    pending = batch.len(),
                    "AUDIT RECORD NOT WRITTEN, will retry: {e}"
                );
                false
            }
        }
    }

    /// Puts what pending records say of a run over its stored record: a run
    /// whose end is not written yet is shown (and answered for) as ended.
    pub fn overlay(&self, run: &mut RunRecord) {
        let pending = self.pending.lock();
        for rec in pending.iter().filter(|r| r.run_id() == Some(&run.run_id)) {
            match rec {
                Record::Kill {
                    result,
                    status,
                    ended_at,
                    ..
                } => {
                    // As the store writes it: an ended run stays as it ended.
                    run.kill_result = Some(result.clone());
                    if run.ended_at.is_none() {
                        run.status = *status;
                        run.ended_at = *ended_at;
                    }
                }
                Record::End {
                    status,
                    ended_at,
                    exit,
                    ..
                } => {
                    run.status = *status;
                    run.ended_at = Some(*ended_at);
                    if let Some((code, signal)) = exit {
                        (run.exit_code, run.exit_signal) = (*code, *signal);
                    }
                }
                Record::Audit(_) => {}
            }
        }
    }

    /// How many records wait to be written.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Starts the thread that retries pending records until they are written.
    pub fn start_retry<F>(self: &Arc<Self>, store: Weak<F>)
    where
        F: AsRef<Mutex<Store>> + Send + Sync + 'static,
    {
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("wfcg-audit-retry".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(RETRY_EVERY);
                    let (Some(me), Some(owner)) = (me.upgrade(), store.upgrade()) else {
                        return;
                    };
                    me.expire_denials(false);
                    let failing = me.failing.load(Ordering::Relaxed);
                    if me.pending() > 0 && me.flush((*owner).as_ref(), Disk::Synced) && failing {
                        tracing::warn!("AUDIT: pending records are written now");
                    }
                }
            })
            .expect("spawning the audit retry thread");
    }

    /// How long records have waited for the sync thread, if any do.
    pub fn unsynced_for(&self) -> Option<Duration> {
        self.unsynced.lock().map(|since| since.elapsed())
    }

    /// Starts the thread that syncs what was written without waiting for the
    /// disk, at most [`SYNC_WITHIN`] after it was written: the store (through a
    /// connection of its own, [`Store::syncer`]) and the chain's head file. It
    /// does not hold the store: a sync is a wait for the disk, which requests
    /// do not share.
    pub fn start_sync(self: &Arc<Self>, store: &Store) {
        let syncer = match store.syncer() {
            Ok(Some(syncer)) => syncer,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("AUDIT: cannot open the store to sync it: {e}");
                return;
            }
        };
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("wfcg-audit-sync".into())
            .spawn(move || {
                loop {
                    let Some(me) = me.upgrade() else { return };
                    let since = {
                        let mut unsynced = me.unsynced.lock();
                        if unsynced.is_none() {
                            me.unsynced_cv.wait_for(&mut unsynced, RETRY_EVERY);
                        }
                        *unsynced
                    };
                    let Some(since) = since else { continue };
                    // A burst of writes shares one sync; half the window is
                    // left for the sync itself.
                    std::thread::sleep((SYNC_WITHIN / 2).saturating_sub(since.elapsed()));
                    // Taken before the syncs: what is written after waits for the next.
                    me.unsynced.lock().take();
                    if let Err(e) = syncer.sync() {
                        tracing::error!("AUDIT: cannot sync the store: {e}");
                    }
                    // The head file, and the directory it was created in.
                    let dir = me.head.parent().unwrap_or(Path::new("."));
                    for f in [me.head.as_path(), dir] {
                        if let Err(e) = sync_file(f) {
                            tracing::error!("AUDIT: cannot sync {}: {e}", f.display());
                        }
                    }
                }
            })
            .expect("spawning the audit sync thread");
    }

    /// Checks the chain in the store, and its newest record against the head file.
    pub fn verify(&self, store: &Store) -> crate::store::Result<ChainCheck> {
        let mut check = store.verify_audit()?;
        if check.first_bad.is_none()
            && let Some((seq, hash)) = read_head(&self.head)
        {
            if seq > check.last_seq {
                check.first_bad = Some((
                    check.last_seq + 1,
                    format!(
                        "records {}..{seq} are missing: the chain ends at {} but {} says {seq}",
                        check.last_seq + 1,
                        check.last_seq,
                        self.head.display()
                    ),
                ));
            } else if seq == check.last_seq && hash != check.last_hash {
                check.first_bad = Some((
                    seq,
                    format!(
                        "its hash differs from the one kept in {}",
                        self.head.display()
                    ),
                ));
            }
        }
        Ok(check)
    }
}

/// Whether a write waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    Synced,
    Unsynced,
}

/// The length of the head file's line before its newline: `seq hash` padded
/// with spaces (19 digits of the largest sequence number, a space, 64 hex
/// digits of a SHA-256).
const HEAD_WIDTH: usize = 19 + 1 + 64;

/// Writes the chain's head (`seq hash`, padded to [`HEAD_WIDTH`]) over the
/// head file in place: one write of the same length at its start, so that
/// it holds the old head or the new one, never a mix, whenever the agent
/// stops. Like PostgreSQL's control file, the line fits in one disk sector
/// (512 bytes), which a power loss does not tear; the sync (here, or the
/// sync thread's) makes it durable. Not a new file renamed over it: on ext4
/// a rename over a file that is not synced yet first writes the new file's
/// data out (`auto_da_alloc`), which made every start and exit wait for the
/// disk after all (about a millisecond each on the development machine).
fn write_head(path: &Path, seq: i64, hash: &str, sync: Disk) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let line = format!("{:<HEAD_WIDTH$}\n", format!("{seq} {hash}"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all_at(line.as_bytes(), 0)?;
    // Longer only if something else wrote it: what follows the line is cut.
    if f.metadata()?.len() > line.len() as u64 {
        f.set_len(line.len() as u64)?;
    }
    if sync == Disk::Synced {
        f.sync_all()?;
    }
    Ok(())
}

/// Syncs a file or directory; a missing one is nothing to sync. (Never one of
/// the store's: see [`Store::syncer`].)
fn sync_file(path: &Path) -> std::io::Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => f.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn read_head(path: &Path) -> Option<(i64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (seq, hash) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, hash.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditFilter;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            time: "2026-01-01T00:00:00Z".into(),
            actor_name: "t".into(),
            action: action.into(),
            decision: crate::api::Decision::NotNeeded,
            ..Default::default()
        }
    }

    #[test]
    fn an_audited_answer_carries_the_receipt_of_its_record_or_why_there_is_none() {
        let (_dir, store, auditor) = setup();
        let receipt = auditor.record(&store, entry("kill"));
        assert!(receipt.written());
        let audited = Audited::new(7, receipt).map(|v| v * 6);
        assert!(audited.written());
        assert_eq!(audited.unrecorded_why(), None);
        assert_eq!(audited.into_inner(), 42);
        let renewal = Audited::unrecorded("renewed", Unrecorded::LeaseRenewed);
        assert!(!renewal.written());
        assert_eq!(renewal.unrecorded_why(), Some(Unrecorded::LeaseRenewed));
        // The record the receipt speaks for is in the store.
        let n = store
            .lock()
            .audit_records(&Default::default())
            .unwrap()
            .len();
        assert_eq!(n, 1);
    }

    fn setup() -> (tempfile::TempDir, Mutex<Store>, Auditor) {
        // (Mutex: parking_lot's, as the agent's.)
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
        store
            .insert_run(&RunRecord {
                run_id: "run_a".into(),
                status: RunStatus::Running,
                command: Vec::new(),
                cgroup_path: "/x".into(),
                ..Default::default()
            })
            .unwrap();
        let auditor = Auditor::new(dir.path().join("audit.head"));
        (dir, Mutex::new(store), auditor)
    }

    fn kill_record() -> Record {
        Record::Kill {
            run_id: "run_a".into(),
            started_at: chrono::DateTime::UNIX_EPOCH,
            result: api::KillResult::default(),
            status: RunStatus::Killed,
            ended_at: Some(chrono::DateTime::UNIX_EPOCH),
        }
    }

    /// A record written without waiting for the disk is in the store at once
    /// (readable, chained, named by the head file) and waits for the sync
    /// thread, which syncs it within the bound and then waits for no record.
    #[test]
    fn a_record_written_soon_is_stored_at_once_and_synced_within_the_bound() {
        let (dir, store, auditor) = setup();
        let auditor = Arc::new(auditor);
        assert!(auditor.record_soon(&store, entry("run_start")).written());
        assert!(auditor.unsynced_for().is_some(), "waits for a sync");
        let check = auditor.verify(&store.lock()).unwrap();
        assert_eq!((check.last_seq, check.first_bad), (1, None));
        assert_eq!(read_head(&dir.path().join("audit.head")).unwrap().0, 1);
        auditor.start_sync(&store.lock());
        let deadline = Instant::now() + Duration::from_secs(10);
        while auditor.unsynced_for().is_some() {
            assert!(Instant::now() < deadline, "never synced");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A synced record leaves nothing waiting.
        assert!(auditor.record(&store, entry("kill")).written());
        assert!(auditor.unsynced_for().is_none());
        // Another process reading the store (the sqlite3 shell) sees both
        // records, and after it is gone the agent's writes still land: the
        // sync never dropped the agent's locks on the database.
        let db = dir.path().join("wfcg.db");
        let count = || {
            let out = std::process::Command::new("sqlite3")
                .arg(&db)
                .arg("SELECT count(*) FROM audit")
                .output()
                .expect("the sqlite3 shell");
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(count(), "2");
        assert!(auditor.record(&store, entry("kill")).written());
        assert_eq!(count(), "3");
    }

    /// Records kept from many threads at once (group commits) are all written,
    /// chained in one unbroken chain, and the head file names the last.
    #[test]
    fn records_kept_at_once_by_many_threads_are_all_written_and_chained() {
        let (dir, store, auditor) = setup();
        std::thread::scope(|s| {
            for t in 0..8 {
                let (store, auditor) = (&store, &auditor);
                s.spawn(move || {
                    for i in 0..10 {
                        assert!(auditor.record(store, entry(&format!("a{t}-{i}"))).written());
                    }
                });
            }
        });
        assert_eq!(auditor.pending(), 0);
        assert_eq!(auditor.written.load(Ordering::Relaxed), 80);
        let check = auditor.verify(&store.lock()).unwrap();
        assert_eq!((check.last_seq, check.first_bad), (80, None));
        let head = read_head(&dir.path().join("audit.head")).unwrap();
        assert_eq!(head, (80, check.last_hash));
    }

    /// Sequence order and time order agree, whatever order concurrent writers
    /// reach the store in: a record made first but written second (its writer
    /// waited) takes the time of the one before it, never an earlier one.
    #[test]
    fn concurrent_writers_never_make_time_go_back_along_the_sequence() {
        let (_dir, store, auditor) = setup();
        let at = |action: &str, time: String| AuditEntry {
            time,
            ..entry(action)
        };
        let made = std::sync::Barrier::new(2);
        let written = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            // One writer makes its record, then is overtaken by a later one.
            s.spawn(|| {
                let early = at("early", "2020-01-01T00:00:00.000Z".into());
                made.wait();
                written.wait();
                assert!(auditor.record(&store, early).written());
            });
            s.spawn(|| {
                made.wait();
                assert!(
                    auditor
                        .record(&store, at("late", "2020-01-01T00:00:01.000Z".into()))
                        .written()
                );
                written.wait();
            });
        });
        // And many writers, each timing its record just before writing it.
        std::thread::scope(|s| {
            for t in 0..8 {
                let (store, auditor) = (&store, &auditor);
                s.spawn(move || {
                    for i in 0..25 {
                        let e = at(&format!("w{t}-{i}"), crate::agent::time::now());
                        assert!(auditor.record(store, e).written());
                    }
                });
            }
        });
        let recs = store.lock().audit_records(&AuditFilter::default()).unwrap();
        assert_eq!(recs.len(), 202);
        let time = |r: &crate::api::AuditRecord| {
            chrono::DateTime::parse_from_rfc3339(&r.entry.time).unwrap()
        };
        for pair in recs.windows(2) {
            assert!(pair[0].seq < pair[1].seq);
            assert!(
                time(&pair[0]) <= time(&pair[1]),
                "record {} ({}) is later than record {} ({})",
                pair[0].seq,
                pair[0].entry.time,
                pair[1].seq,
                pair[1].entry.time
            );
        }
        assert_eq!(recs[0].entry.action.as_str(), "late");
        assert_eq!(recs[1].entry.action.as_str(), "early");
        assert_eq!(recs[1].entry.time, recs[0].entry.time);
        let check = auditor.verify(&store.lock()).unwrap();
        assert_eq!((check.last_seq, check.first_bad), (202, None));
    }

    /// A deferred record is written in the transaction of the next record
    /// kept; when that transaction fails, neither is written, both stay
    /// pending (and shown by the overlay), and a later write takes them all.
    #[test]
    fn a_deferred_record_is_written_with_the_next_one_kept_or_not_at_all() {
        let (dir, store, auditor) = setup();
        let db = rusqlite::Connection::open(dir.path().join("wfcg.db")).unwrap();
        db.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'no'); END;",
        )
        .unwrap();
        auditor.defer(kill_record());
        assert!(!auditor.record(&store, entry("kill")).written());
        assert_eq!(auditor.pending(), 2);
        let kills = |store: &Mutex<Store>| store.lock().kill_count("run_a").unwrap();
        assert_eq!(kills(&store), 0, "the kill's record was written alone");
        let mut run = store.lock().get_run("run_a").unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Running);
        auditor.overlay(&mut run);
        assert_eq!(run.status, RunStatus::Killed);

        db.execute_batch("DROP TRIGGER refuse").unwrap();
        assert!(auditor.record(&store, entry("later")).written());
        assert_eq!(auditor.pending(), 0);
        assert_eq!(kills(&store), 1);
        let actions: Vec<String> = store
            .lock()
            .audit_records(&AuditFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.entry.action.to_string())
            .collect();
        assert_eq!(actions, ["kill", "later"]);
    }

    /// The head file is written while the transaction commits; when the commit
    /// itself fails (here a deferred foreign key checked only at COMMIT), the
    /// head is set back to the last record committed, so that a restart does
    /// not take the store for cut, and the chain goes on unbroken.
    #[test]
    fn a_failed_commit_leaves_the_head_at_the_last_record_committed() {
        let (dir, store, auditor) = setup();
        let head = || read_head(&dir.path().join("audit.head")).unwrap();
        assert!(auditor.record(&store, entry("first")).written());
        let first = head();
        assert_eq!(first.0, 1);
        let db = rusqlite::Connection::open(dir.path().join("wfcg.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE p(id INTEGER PRIMARY KEY);
             CREATE TABLE c(p INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER late AFTER INSERT ON audit BEGIN INSERT INTO c VALUES (42); END;",
        )
        .unwrap();
        assert!(!auditor.record(&store, entry("second")).written());
        assert_eq!(auditor.pending(), 1);
        assert_eq!(
            head(),
            first,
            "the head names a record that was not committed"
        );

        db.execute_batch("DROP TRIGGER late").unwrap();
        assert!(auditor.record(&store, entry("third")).written());
        let check = auditor.verify(&store.lock()).unwrap();
        assert_eq!((check.last_seq, check.first_bad), (3, None));
        assert_eq!(head(), (3, check.last_hash));
    }

    /// The head is written over the same file, at a fixed length: no new file
    /// renamed over it (on ext4 such a rename waits for the disk), and a
    /// reader finds the newest head after each write, unsynced or synced.
    #[test]
    fn the_head_is_rewritten_in_place_at_one_length() {
        use std::os::unix::fs::MetadataExt;
        let (dir, store, auditor) = setup();
        let path = dir.path().join("audit.head");
        auditor.record_soon(&store, entry("start"));
        let first = std::fs::metadata(&path).unwrap();
        assert_eq!(first.mode() & 0o777, 0o600);
        auditor.record(&store, entry("kill"));
        auditor.record_soon(&store, entry("end"));
        let now = std::fs::metadata(&path).unwrap();
        assert_eq!(now.ino(), first.ino(), "the head file was replaced");
        assert_eq!(now.len(), first.len());
        assert_eq!(now.len(), HEAD_WIDTH as u64 + 1);
        let check = auditor.verify(&store.lock()).unwrap();
        assert_eq!(read_head(&path).unwrap(), (3, check.last_hash));
        assert!(!dir.path().join("audit.tmp").exists());
        // A longer file (not one this agent wrote) is cut after the line.
        std::fs::write(&path, format!("{}junk after it\n", " ".repeat(200))).unwrap();
        write_head(&path, 7, &"a".repeat(64), Disk::Unsynced).unwrap();
        assert_eq!(read_head(&path).unwrap(), (7, "a".repeat(64)));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            HEAD_WIDTH as u64 + 1
        );
    }
}
