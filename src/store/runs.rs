//! The `runs` table: one row per run, and every change of it.
//!
//! Values are typed in [`RunRecord`] and stored as text the `sqlite3` CLI shows
//! as it is: the status by its name, times as [`super::rfc3339`] writes them,
//! the command and teams as JSON arrays. A row that does not read as its type
//! (edited by hand, or written by a newer wfcg) is an [`Error::BadColumn`]
//! naming the run and the column, never a panic nor a silent default; a list
//! leaves such a row out (and logs it) so that it hides no other run.

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{OptionalExtension, Row, params};

use super::{BadColumn, Error, Result, Store, rfc3339, time};
use crate::api::{KillResult, RunStatus};
use crate::template::Template;

/// Time columns of `runs` that change during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeCol {
    ReadyAt,
    InitDeadline,
    TotalDeadline,
    WatchdogDeadline,
    LastHeartbeat,
}

impl TimeCol {
    fn name(self) -> &'static str {
        match self {
            TimeCol::ReadyAt => "ready_at",
            TimeCol::InitDeadline => "init_deadline",
            TimeCol::TotalDeadline => "total_deadline",
            TimeCol::WatchdogDeadline => "watchdog_deadline",
            TimeCol::LastHeartbeat => "last_heartbeat",
        }
    }
}

/// Text columns of `runs` that change during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCol {
    StatusText,
    LoopSuspected,
    ReadyOn,
}

impl TextCol {
    fn name(self) -> &'static str {
        match self {
            TextCol::StatusText => "status_text",
            TextCol::LoopSuspected => "loop_suspected",
            TextCol::ReadyOn => "ready_on",
        }
    }
}

/// A heartbeat to store: run id, its time, the watchdog deadline it sets, and the interval.
pub type Heartbeat = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<i64>);

/// One row of `runs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    /// The supervisor's pid and its start time (clock ticks), its identity.
    pub pid: Option<i32>,
    pub pid_starttime: Option<u64>,
    pub status: RunStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub workspace_path: Option<String>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub owner_uid: u32,
    pub workflow: Option<String>,
    /// The command and its arguments (a JSON array in the column).
    pub command: Vec<String>,
    pub cgroup_path: String,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The last kill result (JSON in the column); one that does not read is a
    /// [`BadColumn`].
    pub kill_result: Option<KillResult>,
    pub run_dir: Option<String>,
    pub tmpdir: Option<String>,
    pub log_path: Option<String>,
    /// Remove the workspace when the run ends.
    pub cleanup_workspace: bool,
    /// The teams the run belongs to (a JSON array in the column).
    pub teams: Vec<String>,
    /// The run's resolved template and its name. `None` for a record that has
    /// none (an older one): the agent's default template is then the run's. A
    /// column that does not read as a template is a [`BadColumn`].
    pub template: Option<Template>,
    /// The operator's ceiling stored with the template (see the agent's
    /// `Ceiling`); `None` for a bare template (an older record, an adopted run),
    /// whose own timeouts are then the ceiling.
    pub template_ceiling: Option<CeilingMs>,
    pub template_name: Option<String>,
    pub ready_at: Option<DateTime<Utc>>,
    pub status_text: Option<String>,
    pub init_deadline: Option<DateTime<Utc>>,
    pub total_deadline: Option<DateTime<Utc>>,
    pub watchdog_deadline: Option<DateTime<Utc>>,
    /// The heartbeat interval in force (from the template or WATCHDOG_USEC).
    pub watchdog_usec: Option<i64>,
    pub loop_suspected: Option<String>,
    pub notify_socket: Option<String>,
    /// How a run started outside wfcg was adopted: `pid` (its tree was moved
    /// into the run's payload cgroup) or `cgroup` (its own cgroup, taken in
    /// place); `None` for runs started by `wfcg run`. An adopted run has no
    /// supervisor: `pid` is its root process.
    pub adopted: Option<String>,
    /// The run this one was started from inside of (its caller was in that
    /// run's cgroup, by the kernel's word): it dies with that run.
    pub parent_run_id: Option<String>,
    /// `first output` when the first bytes of its output met its ready
    /// condition (a banner can do that); `None` otherwise.
    pub ready_on: Option<String>,
    /// Its lease in milliseconds (`wfcg run --lease`): killed when nobody renews
    /// it for this long; `None` without a lease.
    pub lease_ms: Option<u64>,
    /// The lease's last renewal (none yet: `None`) and when it runs out.
    pub lease_renewed_at: Option<DateTime<Utc>>,
    pub lease_expires_at: Option<DateTime<Utc>>,
}

/// A status is stored by its name.
impl ToSql for RunStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl FromSql for RunStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        RunStatus::parse(name).ok_or_else(|| FromSqlError::Other("not a status wfcg knows".into()))
    }
}

/// The operator's ceiling of a run's deadlines as stored with its template,
/// in milliseconds (the agent's `Ceiling` says what they mean).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CeilingMs {
    pub init: u64,
    pub total: u64,
    pub watchdog: u64,
}

/// The `template` column: `{"template": …, "ceiling": …}`, or a bare template
/// (an older record, an adopted run).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WithCeiling<T> {
    template: T,
    ceiling: CeilingMs,
}

/// A run's template as its column holds it.
fn template_text(run: &RunRecord) -> Option<String> {
    let template = run.template.as_ref()?;
    let text = match run.template_ceiling {
        Some(ceiling) => serde_json::to_string(&WithCeiling { template, ceiling }),
        None => serde_json::to_string(template),
    };
    // A template is plain data (strings, numbers, maps with string keys).
    Some(text.expect("a template serializes"))
}

/// The `template` column: the template and its ceiling, or an error naming
/// what is wrong (a [`BadColumn`] once [`run_from_row`] has it).
fn template_from_row(
    r: &Row<'_>,
    i: usize,
) -> rusqlite::Result<(Option<Template>, Option<CeilingMs>)> {
    let Some(text) = r.get::<_, Option<String>>(i)? else {
        return Ok((None, None));
    };
    if let Ok(w) = serde_json::from_str::<WithCeiling<Template>>(&text) {
        return Ok((Some(w.template), Some(w.ceiling)));
    }
    match serde_json::from_str::<Template>(&text) {
        Ok(t) => Ok((Some(t), None)),
        Err(e) => Err(rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("not a template wfcg can read ({e})").into(),
        )),
    }
}

/// A kill result as its column holds it (JSON).
fn kill_result_text(result: &KillResult) -> String {
    // A kill result is plain data (strings, numbers, lists).
    serde_json::to_string(result).expect("a kill result serializes")
}

/// A column holding a kill result, or an error naming what is wrong.
fn kill_result_from_row(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<KillResult>> {
    let Some(text) = r.get::<_, Option<String>>(i)? else {
        return Ok(None);
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("not a kill result wfcg can read ({e})").into(),
        )
    })
}

/// Statuses as a JSON array, for `IN (SELECT value FROM json_each(?))`.
fn status_list(statuses: &[RunStatus]) -> String {
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    serde_json::Value::from(names).to_string()
}

/// A time as its column holds it.
fn time_text(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(rfc3339)
}

/// A list of strings as its column holds it (a JSON array).
fn json_list(list: &[String]) -> String {
    serde_json::Value::from(list).to_string()
}

/// A column holding a JSON array of strings.
fn list_from_row(r: &Row<'_>, i: usize) -> rusqlite::Result<Vec<String>> {
    let text: String = r.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("not a JSON array of strings ({e})").into(),
        )
    })
}

const RUN_COLUMNS: &str = "run_id, pid, pid_starttime, status, started_at, workspace_path, \
    last_heartbeat, owner_uid, workflow, command, cgroup_path, exit_code, exit_signal, \
    ended_at, kill_result, run_dir, tmpdir, log_path, cleanup_workspace, teams, template, \
    template_name, ready_at, status_text, init_deadline, total_deadline, watchdog_deadline, \
    watchdog_usec, loop_suspected, notify_socket, adopted, parent_run_id, ready_on, \
    lease_ms, lease_renewed_at, lease_expires_at";

/// A row of `runs`; a value that does not read as its type is a [`BadColumn`]
/// naming the run and the column.
fn run_from_row(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    read_run(r).map_err(|e| {
        let (i, ty, why) = match e {
            rusqlite::Error::FromSqlConversionFailure(i, ty, why) => (i, ty, why.to_string()),
            rusqlite::Error::InvalidColumnType(i, _, ty) => (i, ty, format!("a {ty} value")),
            rusqlite::Error::IntegralValueOutOfRange(i, v) => (
                i,
                rusqlite::types::Type::Integer,
                format!("{v} is out of range"),
            ),
            e => return e,
        };
        let bad = BadColumn {
            run_id: r.get(0).unwrap_or_default(),
            column: r.as_ref().column_name(i).unwrap_or("?").to_string(),
            value: r.get_ref(i).map(shown).unwrap_or_default(),
            why,
        };
        rusqlite::Error::FromSqlConversionFailure(i, ty, Box::new(bad))
    })
}

/// A stored value as an error shows it (text quoted, at most 100 characters).
fn shown(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => {
            format!(
                "{:?}",
                String::from_utf8_lossy(t)
                    .chars()
                    .take(100)
                    .collect::<String>()
            )
        }
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

fn read_run(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    let (template, template_ceiling) = template_from_row(r, 20)?;
    Ok(RunRecord {
        run_id: r.get(0)?,
        pid: r.get(1)?,
        pid_starttime: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        status: r.get(3)?,
        started_at: time::column(r, 4)?,
        workspace_path: r.get(5)?,
        last_heartbeat: time::column(r, 6)?,
        owner_uid: r.get(7)?,
        workflow: r.get(8)?,
        command: list_from_row(r, 9)?,
        cgroup_path: r.get(10)?,
        exit_code: r.get(11)?,
        exit_signal: r.get(12)?,
        ended_at: time::column(r, 13)?,
        kill_result: kill_result_from_row(r, 14)?,
        run_dir: r.get(15)?,
        tmpdir: r.get(16)?,
        log_path: r.get(17)?,
        cleanup_workspace: r.get(18)?,
        teams: list_from_row(r, 19)?,
        template,
        template_ceiling,
        template_name: r.get(21)?,
        ready_at: time::column(r, 22)?,
        status_text: r.get(23)?,
        init_deadline: time::column(r, 24)?,
        total_deadline: time::column(r, 25)?,
        watchdog_deadline: time::column(r, 26)?,
        watchdog_usec: r.get(27)?,
        loop_suspected: r.get(28)?,
        notify_socket: r.get(29)?,
        adopted: r.get(30)?,
        parent_run_id: r.get(31)?,
        ready_on: r.get(32)?,
        lease_ms: r.get::<_, Option<i64>>(33)?.map(|v| v.max(0) as u64),
        lease_renewed_at: r.get(34)?,
        lease_expires_at: r.get(35)?,
    })
}

impl Store {
    /// Inserts a new run; [`Error::Duplicate`] if its id is taken.
    pub fn insert_run(&self, run: &RunRecord) -> Result<()> {
        let res = self.conn.prepare_cached(&format!(
                "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
                 ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, \
                 ?34, ?35, ?36)"
            ))?
            .execute(params![
                run.run_id,
                run.pid,
                run.pid_starttime.map(|v| v as i64),
                run.status,
                time_text(run.started_at),
                run.workspace_path,
                time_text(run.last_heartbeat),
                run.owner_uid,
                run.workflow,
                json_list(&run.command),
                run.cgroup_path,
                run.exit_code,
                run.exit_signal,
                time_text(run.ended_at),
                run.kill_result.as_ref().map(kill_result_text),
                run.run_dir,
                run.tmpdir,
                run.log_path,
                run.cleanup_workspace,
                json_list(&run.teams),
                template_text(run),
                run.template_name,
                time_text(run.ready_at),
                run.status_text,
                time_text(run.init_deadline),
                time_text(run.total_deadline),
                time_text(run.watchdog_deadline),
                run.watchdog_usec,
                run.loop_suspected,
                run.notify_socket,
                run.adopted,
                run.parent_run_id,
                run.ready_on,
                run.lease_ms.map(|v| v.min(i64::MAX as u64) as i64),
                time_text(run.lease_renewed_at),
                time_text(run.lease_expires_at),
            ]);
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
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"))?
            .query_row([run_id], run_from_row)
            .optional()?)
    }

    /// The live runs started from inside `run_id` (its children), oldest first.
    pub fn live_children(&self, run_id: &str) -> Result<Vec<RunRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE parent_run_id = ?1 \
             AND status IN (SELECT value FROM json_each(?2)) ORDER BY rowid"
        ))?;
        let rows = stmt.query_map(
            params![run_id, status_list(&RunStatus::live())],
            run_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The live runs of one owner (a start's budget check: one user's runs, not
    /// every user's).
    pub fn live_runs_of(&self, owner_uid: u32) -> Result<Vec<RunRecord>> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE owner_uid = ?1 \
             AND status IN (SELECT value FROM json_each(?2)) ORDER BY rowid"
        ))?;
        let rows = stmt.query_map(
            params![owner_uid, status_list(&RunStatus::live())],
            run_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Runs, newest first; with `statuses`, only those in one of them.
    pub fn list_runs(&self, statuses: Option<&[RunStatus]>) -> Result<Vec<RunRecord>> {
        self.query_runs(RUN_COLUMNS, statuses)
    }

    /// [`Store::list_runs`] without each run's template (the bulk of a row), for
    /// listings that do not need it.
    pub fn list_runs_brief(&self, statuses: Option<&[RunStatus]>) -> Result<Vec<RunRecord>> {
        self.query_runs(
            &RUN_COLUMNS.replacen("teams, template,", "teams, NULL,", 1),
            statuses,
        )
    }

    /// [`Store::list_runs_brief`] with only what a run's stuck check reads:
    /// the paths, the status text and the kill result are left out (`None`,
    /// `cgroup_path` empty). For counting, as a metrics scrape does, at every
    /// live run.
    pub fn list_runs_for_checks(&self, statuses: Option<&[RunStatus]>) -> Result<Vec<RunRecord>> {
        let mut columns = RUN_COLUMNS.replacen("teams, template,", "teams, NULL,", 1);
        for unread in [
            "workspace_path",
            "kill_result",
            "run_dir",
            "tmpdir",
            "log_path",
            "status_text",
            "notify_socket",
        ] {
            columns = columns.replacen(&format!("{unread},"), "NULL,", 1);
        }
        columns = columns.replacen("cgroup_path,", "'',", 1);
        self.query_runs(&columns, statuses)
    }

    fn query_runs(&self, columns: &str, statuses: Option<&[RunStatus]>) -> Result<Vec<RunRecord>> {
        let mut sql = format!("SELECT {columns} FROM runs");
        if statuses.is_some() {
            sql.push_str(" WHERE status IN (SELECT value FROM json_each(?1))");
        }
        sql.push_str(" ORDER BY created_at DESC, rowid DESC");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = match statuses {
            Some(st) => stmt.query_map([status_list(st)], run_from_row)?,
            None => stmt.query_map([], run_from_row)?,
        };
        // One unreadable row must not hide the others (the agent's restart
        // reconciles the live runs from this list): it is left out, and logged.
        let mut runs = Vec::new();
        for row in rows {
            match row.map_err(Error::from) {
                Ok(run) => runs.push(run),
                Err(Error::BadColumn(bad)) => tracing::error!("{bad}; the run is left out"),
                Err(e) => return Err(e),
            }
        }
        Ok(runs)
    }

    /// Records how the command ended (reported by the supervisor).
    pub fn record_exit(&self, run_id: &str, code: Option<i32>, signal: Option<i32>) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE runs SET exit_code = ?2, exit_signal = ?3 WHERE run_id = ?1")?
            .execute(params![run_id, code, signal])?;
        Ok(())
    }

    /// Marks a run ended with its final status.
    pub fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        ended_at: DateTime<Utc>,
    ) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE runs SET status = ?2, ended_at = ?3 WHERE run_id = ?1")?
            .execute(params![run_id, status, rfc3339(ended_at)])?;
        Ok(())
    }

    /// Marks a run ended only if its status is still one of `from`; returns whether it was.
    pub fn finish_run_if(
        &self,
        run_id: &str,
        from: &[RunStatus],
        status: RunStatus,
        ended_at: DateTime<Utc>,
    ) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE runs SET status = ?3, ended_at = ?4 WHERE run_id = ?1 \
             AND status IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![
                run_id,
                status_list(from),
                status,
                rfc3339(ended_at)
            ])?;
        Ok(n == 1)
    }

    /// Changes a run's status only if it is one of `from`; returns whether it was.
    pub fn transition(&self, run_id: &str, from: &[RunStatus], to: RunStatus) -> Result<bool> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE runs SET status = ?3 WHERE run_id = ?1 \
             AND status IN (SELECT value FROM json_each(?2))",
            )?
            .execute(params![run_id, status_list(from), to])?;
        Ok(n == 1)
    }

    /// Sets one of the lifecycle times.
    pub fn set_time(&self, run_id: &str, col: TimeCol, value: Option<DateTime<Utc>>) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "UPDATE runs SET {} = ?2 WHERE run_id = ?1",
                col.name()
            ))?
            .execute(params![run_id, time_text(value)])?;
        Ok(())
    }

    /// Sets one of the lifecycle texts.
    pub fn set_text(&self, run_id: &str, col: TextCol, value: Option<&str>) -> Result<()> {
        self.conn
            .prepare_cached(&format!(
                "UPDATE runs SET {} = ?2 WHERE run_id = ?1",
                col.name()
            ))?
            .execute(params![run_id, value])?;
        Ok(())
    }

    /// Records a lease's renewal (`renewed_at` none: the lease restarted
    /// without one, as after an agent restart) and its new expiry.
    pub fn set_lease(
        &self,
        run_id: &str,
        renewed_at: Option<DateTime<Utc>>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE runs SET lease_renewed_at = coalesce(?2, lease_renewed_at), \
             lease_expires_at = ?3 WHERE run_id = ?1",
            )?
            .execute(params![run_id, time_text(renewed_at), rfc3339(expires_at)])?;
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
                stmt.execute(params![run_id, rfc3339(*at), time_text(*deadline), usec])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a kill sequence's outcome in one transaction: a row in `kills`, and
    /// the run's last result, its status and (if it ended) its end time. A run
    /// that ended already keeps its status and end time: a kill that ends after
    /// its run ended another way (a second kill beside it) never brings it back.
    pub fn record_kill(
        &mut self,
        run_id: &str,
        started_at: DateTime<Utc>,
        result: &KillResult,
        status: RunStatus,
        ended_at: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let result_json = kill_result_text(result);
        self.immediate(|tx| {
            tx.prepare_cached(
                "INSERT INTO kills (run_id, started_at, result) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![run_id, rfc3339(started_at), result_json])?;
            tx.prepare_cached(
                "UPDATE runs SET kill_result = ?2, \
                 status = CASE WHEN ended_at IS NULL THEN ?3 ELSE status END, \
                 ended_at = coalesce(ended_at, ?4) WHERE run_id = ?1",
            )?
            .execute(params![run_id, result_json, status, time_text(ended_at)])?;
            Ok(())
        })
    }

    /// How many runs there are of each status.
    pub fn count_by_status(&self) -> Result<Vec<(String, u64)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        // One unreadable row must not hide the others (the agent's restart
        // reconciles the live runs from this list): it is left out, and logged.
        let mut runs = Vec::new();
        for row in rows {
            match row.map_err(Error::from) {
                Ok(run) => runs.push(run),
                Err(Error::BadColumn(bad)) => tracing::error!("{bad}; the run is left out"),
                Err(e) => return Err(e),
            }
        }
        Ok(runs)
    }

    /// How many runs of `owner_uid` have one of `statuses`.
    pub fn count_runs_of(&self, owner_uid: u32, statuses: &[RunStatus]) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM runs WHERE owner_uid = ?1 \
             AND status IN (SELECT value FROM json_each(?2))",
            )?
            .query_row(params![owner_uid, status_list(statuses)], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    /// How many kill sequences were carried out on a run.
    pub fn kill_count(&self, run_id: &str) -> Result<u64> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM kills WHERE run_id = ?1")?
            .query_row([run_id], |r| r.get::<_, i64>(0))? as u64)
    }
}
