//! The `runs` table: one row per run, and every change of it.

use rusqlite::{OptionalExtension, Row, params};

use super::{Error, Result, Store};

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

impl Store {
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
