//! The agent's durable state: a SQLite database (WAL, `synchronous=FULL`) with
//! the runs and every kill sequence carried out.
//!
//! A leaf module: plain records in and out, no knowledge of cgroups or the agent.
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] lists every
//! step, applied in order inside one transaction each. Operators may read the
//! file with the `sqlite3` CLI.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, Row, params};

/// Schema steps; the database's `user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: runs and kills.
    "CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        pid INTEGER,
        status TEXT NOT NULL,
        started_at TIMESTAMP,
        workspace_path TEXT,
        last_heartbeat TIMESTAMP,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
        owner_uid INTEGER NOT NULL,
        workflow TEXT,
        command TEXT NOT NULL,
        cgroup_path TEXT NOT NULL,
        pid_starttime INTEGER,
        exit_code INTEGER,
        exit_signal INTEGER,
        ended_at TIMESTAMP,
        kill_result TEXT,
        run_dir TEXT,
        tmpdir TEXT,
        log_path TEXT
    );
    CREATE INDEX runs_status ON runs(status);
    CREATE TABLE kills (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        started_at TIMESTAMP NOT NULL,
        result TEXT NOT NULL
    );
    CREATE INDEX kills_run ON kills(run_id);",
    // 2: the workspace may be removed when the run ends.
    "ALTER TABLE runs ADD COLUMN cleanup_workspace INTEGER NOT NULL DEFAULT 0;",
    // 3: teams a run belongs to, and the audit trail.
    "ALTER TABLE runs ADD COLUMN teams TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor_uid INTEGER,
        actor_name TEXT NOT NULL,
        caller_pid INTEGER,
        action TEXT NOT NULL,
        run_id TEXT,
        reason TEXT,
        mode TEXT,
        decision TEXT NOT NULL,
        permission TEXT,
        outcome TEXT NOT NULL,
        sections TEXT,
        duration_ms REAL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX audit_run ON audit(run_id);",
    // 4: lifecycle: the run's template, phases, deadlines, heartbeats.
    "ALTER TABLE runs ADD COLUMN template TEXT;
    ALTER TABLE runs ADD COLUMN template_name TEXT;
    ALTER TABLE runs ADD COLUMN ready_at TIMESTAMP;
    ALTER TABLE runs ADD COLUMN status_text TEXT;
    ALTER TABLE runs ADD COLUMN init_deadline TIMESTAMP;
    ALTER TABLE runs ADD COLUMN total_deadline TIMESTAMP;
    ALTER TABLE runs ADD COLUMN watchdog_deadline TIMESTAMP;
    ALTER TABLE runs ADD COLUMN watchdog_usec INTEGER;
    ALTER TABLE runs ADD COLUMN loop_suspected TEXT;
    ALTER TABLE runs ADD COLUMN notify_socket TEXT;",
    // 5: the executors' table, as a view over runs, so their queries work unchanged.
    "CREATE VIEW workflow_processes AS
        SELECT run_id, pid, status, started_at, workspace_path, last_heartbeat, created_at
        FROM runs;",
    // 6: runs adopted from outside wfcg: `pid` (a tree moved in), `cgroup` (taken in place).
    "ALTER TABLE runs ADD COLUMN adopted TEXT;",
    // 7: circuit breakers, one row per workflow with stuck runs counted.
    "CREATE TABLE breakers (
        workflow TEXT PRIMARY KEY,
        failures INTEGER NOT NULL DEFAULT 0,
        opened_at TIMESTAMP,
        open_until TIMESTAMP,
        last_run_id TEXT,
        last_reason TEXT
    );",
];

/// One row of `breakers`: a workflow's runs that ended stuck in a row, and
/// until when new runs are refused (after the count reached the template's limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BreakerRecord {
    pub workflow: String,
    pub failures: u32,
    pub opened_at: Option<String>,
    pub open_until: Option<String>,
    pub last_run_id: Option<String>,
    pub last_reason: Option<String>,
}

const BREAKER_COLUMNS: &str = "workflow, failures, opened_at, open_until, last_run_id, last_reason";

fn breaker_from_row(r: &Row<'_>) -> rusqlite::Result<BreakerRecord> {
    Ok(BreakerRecord {
        workflow: r.get(0)?,
        failures: r.get(1)?,
        opened_at: r.get(2)?,
        open_until: r.get(3)?,
        last_run_id: r.get(4)?,
        last_reason: r.get(5)?,
    })
}

/// Text columns of `runs` that change during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    ReadyAt,
    StatusText,
    InitDeadline,
    TotalDeadline,
    WatchdogDeadline,
    LastHeartbeat,
    LoopSuspected,
}

impl Col {
    fn name(self) -> &'static str {
        match self {
            Col::ReadyAt => "ready_at",
            Col::StatusText => "status_text",
            Col::InitDeadline => "init_deadline",
            Col::TotalDeadline => "total_deadline",
            Col::WatchdogDeadline => "watchdog_deadline",
            Col::LastHeartbeat => "last_heartbeat",
            Col::LoopSuspected => "loop_suspected",
        }
    }
}

/// A heartbeat to store: run id, its time, the watchdog deadline it sets, and the interval.
pub type Heartbeat = (String, String, Option<String>, Option<i64>);

/// The hash that stands before the first audit record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run with this id exists already.
    #[error("run id {0:?} is already in use")]
    Duplicate(String),
    /// The database was written by a newer wfcg.
    #[error("database schema version {found} is newer than this wfcg knows ({known})")]
    TooNew { found: i64, known: i64 },
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// One row of `runs`. Times are RFC 3339 strings in UTC.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    /// The supervisor's pid and its start time (clock ticks), its identity.
    pub pid: Option<i32>,
    pub pid_starttime: Option<u64>,
    pub status: String,
    pub started_at: Option<String>,
    pub workspace_path: Option<String>,
    pub last_heartbeat: Option<String>,
    pub owner_uid: u32,
    pub workflow: Option<String>,
    /// The command as a JSON array of strings.
    pub command: String,
    pub cgroup_path: String,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub ended_at: Option<String>,
    /// The last kill result, as JSON.
    pub kill_result: Option<String>,
    pub run_dir: Option<String>,
    pub tmpdir: Option<String>,
    pub log_path: Option<String>,
    /// Remove the workspace when the run ends.
    pub cleanup_workspace: bool,
    /// The teams the run belongs to, as a JSON array.
    pub teams: String,
    /// The run's resolved template, as JSON, and its name.
    pub template: Option<String>,
    pub template_name: Option<String>,
    pub ready_at: Option<String>,
    pub status_text: Option<String>,
    pub init_deadline: Option<String>,
    pub total_deadline: Option<String>,
    pub watchdog_deadline: Option<String>,
    /// The heartbeat interval in force (from the template or WATCHDOG_USEC).
    pub watchdog_usec: Option<i64>,
    pub loop_suspected: Option<String>,
    pub notify_socket: Option<String>,
    /// How a run started outside wfcg was adopted: `pid` (its tree was moved
    /// into the run's payload cgroup) or `cgroup` (its own cgroup, taken in
    /// place); `None` for runs started by `wfcg run`. An adopted run has no
    /// supervisor: `pid` is its root process.
    pub adopted: Option<String>,
}

const RUN_COLUMNS: &str = "run_id, pid, pid_starttime, status, started_at, workspace_path, \
    last_heartbeat, owner_uid, workflow, command, cgroup_path, exit_code, exit_signal, \
    ended_at, kill_result, run_dir, tmpdir, log_path, cleanup_workspace, teams, template, \
    template_name, ready_at, status_text, init_deadline, total_deadline, watchdog_deadline, \
    watchdog_usec, loop_suspected, notify_socket, adopted";

fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        run_id: r.get(0)?,
        pid: r.get(1)?,
        pid_starttime: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        status: r.get(3)?,
        started_at: r.get(4)?,
        workspace_path: r.get(5)?,
        last_heartbeat: r.get(6)?,
        owner_uid: r.get(7)?,
        workflow: r.get(8)?,
        command: r.get(9)?,
        cgroup_path: r.get(10)?,
        exit_code: r.get(11)?,
        exit_signal: r.get(12)?,
        ended_at: r.get(13)?,
        kill_result: r.get(14)?,
        run_dir: r.get(15)?,
        tmpdir: r.get(16)?,
        log_path: r.get(17)?,
        cleanup_workspace: r.get(18)?,
        teams: r.get(19)?,
        template: r.get(20)?,
        template_name: r.get(21)?,
        ready_at: r.get(22)?,
        status_text: r.get(23)?,
        init_deadline: r.get(24)?,
        total_deadline: r.get(25)?,
        watchdog_deadline: r.get(26)?,
        watchdog_usec: r.get(27)?,
        loop_suspected: r.get(28)?,
        notify_socket: r.get(29)?,
        adopted: r.get(30)?,
    })
}

/// The database of one agent.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(Error::TooNew { found, known });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// `PRAGMA quick_check`: `None` when the database is sound, else what SQLite
    /// found wrong (its first lines).
    pub fn quick_check(&self) -> Result<Option<String>> {
        let mut stmt = self.conn.prepare("PRAGMA quick_check(5)")?;
        let lines: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<std::result::Result<_, _>>()?;
        Ok((lines != ["ok"]).then(|| lines.join("; ")))
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// A workflow's breaker row, if it has one.
    pub fn breaker(&self, workflow: &str) -> Result<Option<BreakerRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {BREAKER_COLUMNS} FROM breakers WHERE workflow = ?1"),
                params![workflow],
                breaker_from_row,
            )
            .optional()?)
    }

    /// Every breaker row, by workflow.
    pub fn breakers(&self) -> Result<Vec<BreakerRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {BREAKER_COLUMNS} FROM breakers ORDER BY workflow"
        ))?;
        let rows = stmt.query_map([], breaker_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Writes a workflow's breaker row (replacing it).
    pub fn put_breaker(&self, b: &BreakerRecord) -> Result<()> {
        self.conn.execute(
            &format!("INSERT OR REPLACE INTO breakers ({BREAKER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                b.workflow,
                b.failures,
                b.opened_at,
                b.open_until,
                b.last_run_id,
                b.last_reason
            ],
        )?;
        Ok(())
    }

    /// Removes a workflow's breaker row (its count starts again from 0); whether there was one.
    pub fn delete_breaker(&self, workflow: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM breakers WHERE workflow = ?1",
            params![workflow],
        )? > 0)
    }

    /// Inserts a new run; [`Error::Duplicate`] if its id is taken.
    pub fn insert_run(&self, run: &RunRecord) -> Result<()> {
        let res = self.conn.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
                 ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)"
            ),
            params![
                run.run_id,
                run.pid,
                run.pid_starttime.map(|v| v as i64),
                run.status,
                run.started_at,
                run.workspace_path,
                run.last_heartbeat,
                run.owner_uid,
                run.workflow,
                run.command,
                run.cgroup_path,
                run.exit_code,
                run.exit_signal,
                run.ended_at,
                run.kill_result,
                run.run_dir,
                run.tmpdir,
                run.log_path,
                run.cleanup_workspace,
                run.teams,
                run.template,
                run.template_name,
                run.ready_at,
                run.status_text,
                run.init_deadline,
                run.total_deadline,
                run.watchdog_deadline,
                run.watchdog_usec,
                run.loop_suspected,
                run.notify_socket,
                run.adopted,
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(Error::Duplicate(run.run_id.clone()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"),
                [run_id],
                run_from_row,
            )
            .optional()?)
    }

    /// Runs, newest first; with `statuses`, only those in one of them.
    pub fn list_runs(&self, statuses: Option<&[&str]>) -> Result<Vec<RunRecord>> {
        self.query_runs(RUN_COLUMNS, statuses)
    }

    /// [`Store::list_runs`] without each run's template (the bulk of a row), for
    /// listings that do not need it.
    pub fn list_runs_brief(&self, statuses: Option<&[&str]>) -> Result<Vec<RunRecord>> {
        self.query_runs(
            &RUN_COLUMNS.replacen("teams, template,", "teams, NULL,", 1),
            statuses,
        )
    }

    fn query_runs(&self, columns: &str, statuses: Option<&[&str]>) -> Result<Vec<RunRecord>> {
        let mut sql = format!("SELECT {columns} FROM runs");
        if let Some(st) = statuses {
            let list: Vec<String> = st
                .iter()
                .map(|s| format!("'{}'", s.replace('\'', "''")))
                .collect();
            sql.push_str(&format!(" WHERE status IN ({})", list.join(",")));
        }
        sql.push_str(" ORDER BY created_at DESC, rowid DESC");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([], run_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records how the command ended (reported by the supervisor).
    pub fn record_exit(&self, run_id: &str, code: Option<i32>, signal: Option<i32>) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET exit_code = ?2, exit_signal = ?3 WHERE run_id = ?1",
            params![run_id, code, signal],
        )?;
        Ok(())
    }

    /// Marks a run ended with its final status.
    pub fn finish_run(&self, run_id: &str, status: &str, ended_at: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET status = ?2, ended_at = ?3 WHERE run_id = ?1",
            params![run_id, status, ended_at],
        )?;
        Ok(())
    }

    /// Marks a run ended only if its status is still `from`; returns whether it was.
    pub fn finish_run_if(
        &self,
        run_id: &str,
        from: &[&str],
        status: &str,
        ended_at: &str,
    ) -> Result<bool> {
        let from = serde_json::to_string(from).unwrap_or_default();
        let n = self.conn.execute(
            "UPDATE runs SET status = ?3, ended_at = ?4 WHERE run_id = ?1 \
             AND status IN (SELECT value FROM json_each(?2))",
            params![run_id, from, status, ended_at],
        )?;
        Ok(n == 1)
    }

    /// Changes a run's status only if it is one of `from`; returns whether it was.
    pub fn transition(&self, run_id: &str, from: &[&str], to: &str) -> Result<bool> {
        let from = serde_json::to_string(from).unwrap_or_default();
        let n = self.conn.execute(
            "UPDATE runs SET status = ?3 WHERE run_id = ?1 \
             AND status IN (SELECT value FROM json_each(?2))",
            params![run_id, from, to],
        )?;
        Ok(n == 1)
    }

    /// Sets one of the lifecycle columns.
    pub fn set(&self, run_id: &str, col: Col, value: Option<&str>) -> Result<()> {
        self.conn.execute(
            &format!("UPDATE runs SET {} = ?2 WHERE run_id = ?1", col.name()),
            params![run_id, value],
        )?;
        Ok(())
    }

    /// Stores heartbeats in one transaction (one fsync for many runs).
    pub fn set_heartbeats(&mut self, beats: &[Heartbeat]) -> Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare(
                "UPDATE runs SET last_heartbeat = ?2, watchdog_deadline = ?3, \
                 watchdog_usec = coalesce(?4, watchdog_usec) WHERE run_id = ?1",
            )?;
            for (run_id, at, deadline, usec) in beats {
                stmt.execute(params![run_id, at, deadline, usec])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a kill sequence's outcome in one transaction: a row in `kills`, and
    /// the run's last result, its status and (if it ended) its end time.
    pub fn record_kill(
        &mut self,
        run_id: &str,
        started_at: &str,
        result_json: &str,
        status: &str,
        ended_at: Option<&str>,
    ) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO kills (run_id, started_at, result) VALUES (?1, ?2, ?3)",
            params![run_id, started_at, result_json],
        )?;
        tx.execute(
            "UPDATE runs SET kill_result = ?2, status = ?3, ended_at = coalesce(?4, ended_at) \
             WHERE run_id = ?1",
            params![run_id, result_json, status, ended_at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// How many runs there are of each status.
    pub fn count_by_status(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many runs of `owner_uid` have one of `statuses`.
    pub fn count_runs_of(&self, owner_uid: u32, statuses: &[&str]) -> Result<u64> {
        let list: Vec<String> = statuses
            .iter()
            .map(|s| format!("'{}'", s.replace('\'', "''")))
            .collect();
        let sql = format!(
            "SELECT count(*) FROM runs WHERE owner_uid = ?1 AND status IN ({})",
            list.join(",")
        );
        Ok(self
            .conn
            .query_row(&sql, [owner_uid], |r| r.get::<_, i64>(0))? as u64)
    }

    /// How many kill sequences were carried out on a run.
    pub fn kill_count(&self, run_id: &str) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM kills WHERE run_id = ?1",
            [run_id],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }
}

/// One event for the audit trail, before it is chained.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub time: String,
    pub actor_uid: Option<u32>,
    pub actor_name: String,
    pub caller_pid: Option<i32>,
    /// `kill`, `auto_kill`, `run_start`, `run_end`, `policy_load`.
    pub action: String,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    /// `graceful`, `force` or `emergency`.
    pub mode: Option<String>,
    /// `allowed`, `denied`, or `-` where no decision was needed.
    pub decision: String,
    /// The permission the decision rested on (or the one missing).
    pub permission: Option<String>,
    pub outcome: String,
    /// Critical sections waited on, as JSON.
    pub sections: Option<String>,
    pub duration_ms: Option<f64>,
}

/// A chained audit record.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

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
pub const CHAIN_BREAK: &str = "chain_break";

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
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let last: Option<AuditRecord> = tx
            .query_row(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT 1"),
                [],
                audit_from_row,
            )
            .optional()?;
        // The newest record as it reads now: its content must still give its hash.
        let edited = last
            .as_ref()
            .is_some_and(|r| audit_hash(r.seq, &r.prev_hash, &r.entry) != r.hash);
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
        if let Some(why) = broken {
            let at = expected.expect("a break has an expected head");
            // After the head we wrote, unless records beyond it were added.
            if at.0 > head.0 {
                head = at.clone();
            }
            entries.push(AuditEntry {
                time: e.time.clone(),
                actor_name: "agent".into(),
                action: CHAIN_BREAK.into(),
                decision: "-".into(),
                outcome: why,
                ..Default::default()
            });
        }
        entries.push(e.clone());
        let mut out = Vec::new();
        for e in entries {
            let (prev_seq, prev_hash) = head;
            let seq = prev_seq + 1;
            let hash = audit_hash(seq, &prev_hash, &e);
            tx.execute(
                &format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
                params![
                    seq, e.time, e.actor_uid, e.actor_name, e.caller_pid, e.action, e.run_id,
                    e.reason, e.mode, e.decision, e.permission, e.outcome, e.sections,
                    e.duration_ms, prev_hash, hash
                ],
            )?;
            head = (seq, hash.clone());
            out.push(AuditRecord {
                seq,
                entry: e,
                prev_hash,
                hash,
            });
        }
        tx.commit()?;
        Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str) -> RunRecord {
        RunRecord {
            run_id: id.into(),
            pid: Some(42),
            pid_starttime: Some(u64::MAX / 2),
            status: "running".into(),
            owner_uid: 1000,
            command: r#"["sleep","1"]"#.into(),
            cgroup_path: format!("/sys/fs/cgroup/wfcg/runs/{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn migrates_and_round_trips_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wfcg.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        store.insert_run(&sample("run_a")).unwrap();
        assert_eq!(store.get_run("run_a").unwrap().unwrap(), sample("run_a"));
        assert_eq!(store.get_run("run_b").unwrap(), None);
        drop(store);
        // Reopening applies nothing twice and keeps the data.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.list_runs(None).unwrap().len(), 1);
        assert_eq!(store.list_runs_brief(None).unwrap()[0].run_id, "run_a");
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
        store.insert_run(&sample("run_a")).unwrap();
        let err = store.insert_run(&sample("run_a")).unwrap_err();
        assert!(
            matches!(err, Error::Duplicate(ref id) if id == "run_a"),
            "{err}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wfcg.db");
        drop(Store::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().unwrap().to_string();
        assert!(err.contains("99"), "{err}");
    }

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            time: "2026-01-01T00:00:00.000Z".into(),
            actor_uid: Some(0),
            actor_name: "root".into(),
            action: action.into(),
            decision: "allowed".into(),
            outcome: "killed".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_audit_chain_detects_edits_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
        for i in 0..5 {
            let rec = store.append_audit(&entry(&format!("kill{i}"))).unwrap();
            assert_eq!(rec.seq, i + 1);
        }
        let ok = store.verify_audit().unwrap();
        assert_eq!((ok.records, ok.first_bad.clone()), (5, None));
        let recs = store
            .audit_records(&AuditFilter {
                limit: Some(2),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);

        store
            .conn
            .execute("UPDATE audit SET outcome = 'denied' WHERE seq = 3", [])
            .unwrap();
        let bad = store.verify_audit().unwrap();
        assert_eq!(bad.first_bad.unwrap().0, 3);
        store
            .conn
            .execute("UPDATE audit SET outcome = 'killed' WHERE seq = 3", [])
            .unwrap();
        assert_eq!(store.verify_audit().unwrap().first_bad, None);

        store
            .conn
            .execute("DELETE FROM audit WHERE seq = 2", [])
            .unwrap();
        let (seq, why) = store.verify_audit().unwrap().first_bad.unwrap();
        assert_eq!(seq, 3);
        assert!(why.contains("records 2..2 deleted"), "{why}");
    }

    /// A writer that knows its last head does not chain over records deleted from
    /// the end, nor over a changed newest record: it writes a chain_break first,
    /// and the chain never verifies again.
    #[test]
    fn a_cut_chain_is_not_chained_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db")).unwrap();
        let mut head = None;
        for i in 0..5 {
            let recs = store
                .append_audit_after(&entry(&format!("kill{i}")), head.as_ref())
                .unwrap();
            assert_eq!(recs.len(), 1);
            head = recs.last().map(|r| (r.seq, r.hash.clone()));
        }
        store
            .conn
            .execute("DELETE FROM audit WHERE seq >= 4", [])
            .unwrap();
        let recs = store
            .append_audit_after(&entry("kill5"), head.as_ref())
            .unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].entry.action, CHAIN_BREAK);
        assert_eq!((recs[0].seq, recs[1].seq), (6, 7));
        assert!(
            recs[0].entry.outcome.contains("records 4..5 are missing"),
            "{recs:?}"
        );
        let (seq, why) = store.verify_audit().unwrap().first_bad.unwrap();
        assert_eq!(seq, 6);
        assert!(why.contains("records 4..5 deleted"), "{why}");
        head = recs.last().map(|r| (r.seq, r.hash.clone()));

        // The newest record changed: a break naming it.
        store
            .conn
            .execute("UPDATE audit SET reason = 'x' WHERE seq = 7", [])
            .unwrap();
        let recs = store
            .append_audit_after(&entry("kill6"), head.as_ref())
            .unwrap();
        assert!(
            recs[0].entry.outcome.contains("record 7 was changed"),
            "{recs:?}"
        );
        // Chained as expected: no break.
        let head = recs.last().map(|r| (r.seq, r.hash.clone()));
        let recs = store
            .append_audit_after(&entry("kill7"), head.as_ref())
            .unwrap();
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn lists_by_status_and_counts_kills() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
        store.insert_run(&sample("run_a")).unwrap();
        store.insert_run(&sample("run_b")).unwrap();
        store
            .finish_run("run_b", "killed", "2026-01-01T00:00:00Z")
            .unwrap();
        assert!(
            !store
                .finish_run_if("run_b", &["running"], "exited", "x")
                .unwrap()
        );
        assert!(
            store
                .transition("run_a", &["initializing", "running"], "stopping")
                .unwrap()
        );
        assert!(
            !store
                .transition("run_a", &["initializing"], "running")
                .unwrap()
        );
        store.transition("run_a", &["stopping"], "running").unwrap();
        store
            .set("run_a", Col::StatusText, Some("cloning"))
            .unwrap();
        assert_eq!(
            store
                .get_run("run_a")
                .unwrap()
                .unwrap()
                .status_text
                .as_deref(),
            Some("cloning")
        );
        store
            .record_kill(
                "run_b",
                "2026-01-01T00:00:00Z",
                "{}",
                "killed",
                Some("2026-01-01T00:00:01Z"),
            )
            .unwrap();
        let live = store.list_runs(Some(&["running"])).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].run_id, "run_a");
        assert_eq!(store.kill_count("run_b").unwrap(), 1);
        assert_eq!(
            store
                .get_run("run_b")
                .unwrap()
                .unwrap()
                .kill_result
                .as_deref(),
            Some("{}")
        );
    }
}
