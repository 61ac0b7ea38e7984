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
];

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
}

const RUN_COLUMNS: &str = "run_id, pid, pid_starttime, status, started_at, workspace_path, \
    last_heartbeat, owner_uid, workflow, command, cgroup_path, exit_code, exit_signal, \
    ended_at, kill_result, run_dir, tmpdir, log_path, cleanup_workspace";

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
        let found: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
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

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Inserts a new run; [`Error::Duplicate`] if its id is taken.
    pub fn insert_run(&self, run: &RunRecord) -> Result<()> {
        let res = self.conn.execute(
            &format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
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
        let mut sql = format!("SELECT {RUN_COLUMNS} FROM runs");
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

    pub fn set_status(&self, run_id: &str, status: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET status = ?2 WHERE run_id = ?1",
            params![run_id, status],
        )?;
        Ok(())
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
        from: &str,
        status: &str,
        ended_at: &str,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE runs SET status = ?3, ended_at = ?4 WHERE run_id = ?1 AND status = ?2",
            params![run_id, from, status, ended_at],
        )?;
        Ok(n == 1)
    }

    /// Stores a kill sequence's result: one row in `kills`, and the run's last result.
    pub fn record_kill(&self, run_id: &str, started_at: &str, result_json: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO kills (run_id, started_at, result) VALUES (?1, ?2, ?3)",
            params![run_id, started_at, result_json],
        )?;
        self.conn.execute(
            "UPDATE runs SET kill_result = ?2 WHERE run_id = ?1",
            params![run_id, result_json],
        )?;
        Ok(())
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

    #[test]
    fn lists_by_status_and_counts_kills() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
        store.insert_run(&sample("run_a")).unwrap();
        store.insert_run(&sample("run_b")).unwrap();
        store
            .finish_run("run_b", "killed", "2026-01-01T00:00:00Z")
            .unwrap();
        store
            .record_kill("run_b", "2026-01-01T00:00:00Z", "{}")
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
