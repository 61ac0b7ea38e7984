//! The hash-chained audit trail: appended in order, verified from the genesis.

use rusqlite::types::{FromSql, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Row, params};

use super::{Result, Store};
use crate::api::{AuditAction, AuditEntry, AuditRecord, Decision};

/// An action is stored by its name; any name reads (one this build does not
/// know as [`AuditAction::Other`], kept as it was).
impl ToSql for AuditAction {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for AuditAction {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str().map(AuditAction::parse)
    }
}

/// A decision is stored by its name, as an action is.
impl ToSql for Decision {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for Decision {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value.as_str().map(Decision::parse)
    }
}

/// The hash that stands before the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which audit records to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub run_id: Option<String>,
    pub actor: Option<String>,
    pub actor_uid: Option<u32>,
    /// RFC 3339; records at or after it.
    pub since: Option<String>,
    /// The newest N (all when absent).
    pub limit: Option<u32>,
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainCheck {
    pub records: u64,
    pub last_seq: i64,
    pub last_hash: String,
    /// The first record that does not match, and why.
    pub first_bad: Option<(i64, String)>,
}

/// The action of the record the agent writes when the chain in the store does
/// not end where it last wrote it.
pub const CHAIN_BREAK: AuditAction = AuditAction::ChainBreak;

/// What is wrong when the writer's last head is `expected` but the store's newest
/// record is `found` (seq, hash); `None` when they are the same.
fn chain_break(expected: &(i64, String), found: &(i64, String)) -> Option<String> {
    let (want, have) = (expected.0, found.0);
    if (want, &expected.1) == (have, &found.1) {
        None
    } else if have < want {
        Some(format!(
            "records {}..{want} are missing: the store ends at {have}, the agent last wrote {want}",
            have + 1
        ))
    } else if have == want {
        Some(format!(
            "record {want} was changed after the agent wrote it"
        ))
    } else {
        Some(format!(
            "records {}..{have} were added behind the agent's back (it last wrote {want})",
            want + 1
        ))
    }
}

/// Whether RFC 3339 time `a` is before `b` (false when either does not parse:
/// such a time is kept as it was given).
fn is_before(a: &str, b: &str) -> bool {
    use chrono::DateTime;
    match (
        DateTime::parse_from_rfc3339(a),
        DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => a < b,
        _ => false,
    }
}

/// SHA-256 over the previous hash and the record's fields, in a fixed order.
pub fn audit_hash(seq: i64, prev_hash: &str, e: &AuditEntry) -> String {
    use sha2::{Digest, Sha256};
    let fields = serde_json::json!([
        seq,
        e.time,
        e.actor_uid,
        e.actor_name,
        e.caller_pid,
        e.action,
        e.run_id,
        e.reason,
        e.mode,
        e.decision,
        e.permission,
        e.outcome,
        e.sections,
        e.duration_ms
    ]);
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(fields.to_string().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

const AUDIT_COLUMNS: &str = "seq, time, actor_uid, actor_name, caller_pid, action, run_id, reason, \
    mode, decision, permission, outcome, sections, duration_ms, prev_hash, hash";

fn audit_from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.get(0)?,
        entry: AuditEntry {
            time: r.get(1)?,
            actor_uid: r.get(2)?,
            actor_name: r.get(3)?,
            caller_pid: r.get(4)?,
            action: r.get(5)?,
            run_id: r.get(6)?,
            reason: r.get(7)?,
            mode: r.get(8)?,
            decision: r.get(9)?,
            permission: r.get(10)?,
            outcome: r.get(11)?,
            sections: r.get(12)?,
            duration_ms: r.get(13)?,
        },
        prev_hash: r.get(14)?,
        hash: r.get(15)?,
    })
}

impl Store {
    /// Appends a record to the audit chain, in one immediate transaction, so that
    /// concurrent writers cannot fork the chain. Committed (fsynced) on return.
    pub fn append_audit(&mut self, e: &AuditEntry) -> Result<AuditRecord> {
        Ok(self.append_audit_after(e, None)?.pop().expect("one record"))
    }

    /// [`Store::append_audit`] for a writer that knows the head it wrote last
    /// (`expected`: seq and hash). When the store's newest record is not that
    /// head (records deleted from the end, the newest one changed, or records
    /// added behind the writer's back), the record is not chained over the gap:
    /// a [`CHAIN_BREAK`] record naming what is missing or changed is appended
    /// first, after the expected head (so a deleted range stays a visible jump
    /// in sequence numbers). Returns the records appended, the entry's last.
    pub fn append_audit_after(
        &mut self,
        e: &AuditEntry,
        expected: Option<&(i64, String)>,
    ) -> Result<Vec<AuditRecord>> {
        self.immediate(|tx| {
        let last: Option<AuditRecord> = tx
            .prepare_cached(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT 1"))?
            .query_row([], audit_from_row)
            .optional()?;
        // The newest record as it reads now: its content must still give its hash.
        let edited = last
            .as_ref()
            .is_some_and(|r| audit_hash(r.seq, &r.prev_hash, &r.entry) != r.hash);
        // Times never go back along the chain: a record made before the newest
        // one but appended after it (its writer waited for the store) takes the
        // newest one's time. Done here, under the write lock that also gives
        // the sequence number, so sequence order and time order agree.
        let mut prev_time = last.as_ref().map(|r| r.entry.time.clone());
        let mut head = last
            .map(|r| (r.seq, r.hash))
            .unwrap_or((0, GENESIS_HASH.to_string()));
        let mut entries = Vec::new();
        let broken = expected.and_then(|x| match chain_break(x, &head) {
            None if edited => Some(format!(
                "record {} was changed after the agent wrote it",
                x.0
            )),
            other => other,
        });
        if broken.is_some() {
            // The newest record is not what the writer left: its time is not
            // one to carry forward (an edited far-future time would stick).
            prev_time = None;
        }
        if let Some(why) = broken {
            let at = expected.expect("a break has an expected head");
            // After the head we wrote, unless records beyond it were added.
            if at.0 > head.0 {
                head = at.clone();
            }
            entries.push(AuditEntry {
                time: e.time.clone(),
                actor_name: "agent".into(),
                action: CHAIN_BREAK,
                decision: Decision::NotNeeded,
                outcome: why,
                ..Default::default()
            });
        }
        entries.push(e.clone());
        let mut out = Vec::new();
        for mut e in entries {
            if let Some(prev) = &prev_time
                && is_before(&e.time, prev)
            {
                e.time = prev.clone();
            }
            prev_time = Some(e.time.clone());
            let (prev_seq, prev_hash) = head;
            let seq = prev_seq + 1;
            let hash = audit_hash(seq, &prev_hash, &e);
            tx.prepare_cached(&format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"))?
            .execute(params![
                    seq, e.time, e.actor_uid, e.actor_name, e.caller_pid, e.action, e.run_id,
                    e.reason, e.mode, e.decision, e.permission, e.outcome, e.sections,
                    e.duration_ms, prev_hash, hash
                ])?;
            head = (seq, hash.clone());
            out.push(AuditRecord {
                seq,
                entry: e,
                prev_hash,
                hash,
            });
        }
        Ok(out)
        })
    }

    /// Audit records, oldest first.
    pub fn audit_records(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>> {
        let mut sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(run) = &f.run_id {
            args.push(run.clone().into());
            sql.push_str(&format!(" AND run_id = ?{}", args.len()));
        }
        if let Some(actor) = &f.actor {
            args.push(actor.clone().into());
            sql.push_str(&format!(" AND actor_name = ?{}", args.len()));
        }
        if let Some(uid) = f.actor_uid {
            args.push(i64::from(uid).into());
            sql.push_str(&format!(" AND actor_uid = ?{}", args.len()));
        }
        if let Some(since) = &f.since {
            args.push(since.clone().into());
            sql.push_str(&format!(" AND time >= ?{}", args.len()));
        }
        sql.push_str(" ORDER BY seq DESC");
        if let Some(limit) = f.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), audit_from_row)?;
        let mut out: Vec<AuditRecord> = rows.collect::<rusqlite::Result<_>>()?;
        out.reverse();
        Ok(out)
    }

    /// Recomputes the chain: every record must follow the one before it (sequence
    /// numbers without gaps, `prev_hash` equal to its predecessor's hash) and carry
    /// the hash of its own fields.
    pub fn verify_audit(&self) -> Result<ChainCheck> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq"))?;
        let mut rows = stmt.query([])?;
        let mut check = ChainCheck {
            records: 0,
            last_seq: 0,
            last_hash: GENESIS_HASH.into(),
            first_bad: None,
        };
        while let Some(row) = rows.next()? {
            let rec = audit_from_row(row)?;
            check.records += 1;
            let bad = if rec.seq != check.last_seq + 1 {
                Some(format!(
                    "records {}..{} deleted (the sequence jumps from {} to {})",
                    check.last_seq + 1,
                    rec.seq - 1,
                    check.last_seq,
                    rec.seq
                ))
            } else if rec.prev_hash != check.last_hash {
                Some("its prev_hash does not match the record before it".to_string())
            } else if audit_hash(rec.seq, &rec.prev_hash, &rec.entry) != rec.hash {
                Some("its content does not match its hash: the record was edited".to_string())
            } else if rec.entry.action == CHAIN_BREAK {
                Some(format!("the chain was broken: {}", rec.entry.outcome))
            } else {
                None
            };
            if let Some(why) = bad {
                check.first_bad.get_or_insert((rec.seq, why));
            }
            check.last_seq = rec.seq;
            check.last_hash = rec.hash;
        }
        Ok(check)
    }
}
