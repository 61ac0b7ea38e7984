//! The schema, versioned with `PRAGMA user_version`: every step in order.

/// Schema steps; the database's `user_version` is the number applied.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 8: a run started from inside another run is that run's child, killed with it.
    "ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    CREATE INDEX runs_parent ON runs(parent_run_id);",
    // 9: a breaker per workflow and run owner (-1: the host-wide breaker of an
    // operator's `[breaker] scope = "host"`). Old counts mixed everyone's and are dropped.
    "DROP TABLE breakers;
    CREATE TABLE breakers (
        workflow TEXT NOT NULL,
        owner_uid INTEGER NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        opened_at TIMESTAMP,
        open_until TIMESTAMP,
        last_run_id TEXT,
        last_reason TEXT,
        PRIMARY KEY (workflow, owner_uid)
    );",
    // 10: how a run became ready, when that says something (`first output`).
    "ALTER TABLE runs ADD COLUMN ready_on TEXT;",
    // 11: a run's lease: its duration, last renewal and expiry (none without one).
    "ALTER TABLE runs ADD COLUMN lease_ms INTEGER;
    ALTER TABLE runs ADD COLUMN lease_renewed_at TIMESTAMP;
    ALTER TABLE runs ADD COLUMN lease_expires_at TIMESTAMP;",
];
