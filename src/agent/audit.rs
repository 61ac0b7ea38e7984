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

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::api::AuditEntry;
use crate::api::RunStatus;
use crate::store::{CHAIN_BREAK, ChainCheck, RunRecord, Store};

/// A write the store must get, in order.
#[derive(Debug, Clone)]
pub enum Record {
    Audit(AuditEntry),
    /// A kill sequence's result and the status it leaves the run in.
    Kill {
        run_id: String,
        started_at: DateTime<Utc>,
        result: String,
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

/// How often pending records are retried.
const RETRY_EVERY: Duration = Duration::from_secs(1);

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
        }
    }

    /// Appends `entry` after any pending records. Returns whether everything,
    /// this entry included, is now written.
    pub fn record(&self, store: &Mutex<Store>, entry: AuditEntry) -> bool {
        self.keep(store, Record::Audit(entry))
    }

    /// Writes `rec` after any pending records, or keeps it pending. Returns
    /// whether everything, this record included, is now written.
    pub fn keep(&self, store: &Mutex<Store>, rec: Record) -> bool {
        let mut pending = self.pending.lock();
        pending.push_back(rec);
        self.flush(store, &mut pending)
    }

    /// Calls `f` with what is wrong whenever the chain is found cut.
    pub fn on_break(&self, f: impl Fn(&str) + Send + Sync + 'static) {
        *self.on_break.lock() = Some(Box::new(f));
    }

    fn flush(&self, store: &Mutex<Store>, pending: &mut VecDeque<Record>) -> bool {
        let mut store = store.lock();
        let mut last = self.last.lock();
        while let Some(rec) = pending.front() {
            let res = match rec {
                Record::Audit(entry) => {
                    store.append_audit_after(entry, last.as_ref()).map(|recs| {
                        self.written.fetch_add(recs.len() as u64, Ordering::Relaxed);
                        for r in recs.iter().filter(|r| r.entry.action == CHAIN_BREAK) {
                            tracing::error!(
                                "AUDIT CHAIN BROKEN (record {}): {}",
                                r.seq,
                                r.entry.outcome
                            );
                            if let Some(f) = &*self.on_break.lock() {
                                f(&r.entry.outcome);
                            }
                        }
                        let rec = recs.last().expect("the entry's record");
                        *last = Some((rec.seq, rec.hash.clone()));
                        if let Err(e) = write_head(&self.head, rec.seq, &rec.hash) {
                            tracing::error!("AUDIT: cannot write {}: {e}", self.head.display());
                        }
                    })
                }
                Record::Kill {
                    run_id,
                    started_at,
                    result,
                    status,
                    ended_at,
                } => store.record_kill(run_id, *started_at, result, *status, *ended_at),
                Record::End {
                    run_id,
                    status,
                    ended_at,
                    exit,
                } => exit
                    .map_or(Ok(()), |(code, signal)| {
                        store.record_exit(run_id, code, signal)
                    })
                    .and_then(|()| store.finish_run(run_id, *status, *ended_at)),
            };
            match res {
                Ok(()) => {
                    pending.pop_front();
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        pending = pending.len(),
                        "AUDIT RECORD NOT WRITTEN, will retry: {e}"
                    );
                    return false;
                }
            }
        }
        true
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
                    run.kill_result = Some(result.clone());
                    run.status = *status;
                    run.ended_at = ended_at.or(run.ended_at);
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
                    let mut pending = me.pending.lock();
                    if !pending.is_empty() && me.flush((*owner).as_ref(), &mut pending) {
                        tracing::warn!("AUDIT: pending records are written now");
                    }
                }
            })
            .expect("spawning the audit retry thread");
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

fn write_head(path: &Path, seq: i64, hash: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{seq} {hash}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn read_head(path: &Path) -> Option<(i64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (seq, hash) = text.trim().split_once(' ')?;
    Some((seq.parse().ok()?, hash.to_string()))
}
