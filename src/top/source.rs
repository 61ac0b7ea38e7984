//! Where the dashboard's numbers come from: the agent's API (health, runs,
//! audit), each run's cgroup (`memory.current`) and the agent's `/proc/<pid>`.
//! CPU shares are the difference between two refreshes.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::app::{AgentUsage, RunRow, Snapshot};
use crate::api::{AuditAction, AuditQuery, AuditRecord, RunInfo, RunsQuery};
use crate::client::Client;

/// How long a run stays on screen (greyed) after it was seen ending.
pub const KEEP_ENDED: Duration = Duration::from_secs(60);
/// How many audit records are read to find the latest kills among them.
const AUDIT_WINDOW: u32 = 200;
/// At most this many runs that vanished are looked up per refresh.
const MAX_LOOKUPS: usize = 20;
/// At most this many live runs are asked for their critical sections per
/// refresh (one request and procfs scan each; the run list has none).
pub const MAX_SECTION_SCANS: usize = 50;

/// Reads snapshots, remembering what it needs between them.
pub struct Source {
    client: Client,
    /// Show every run the agent knows (`?all=true`), not only live ones.
    all: bool,
    /// How many kills to keep.
    kills: usize,
    /// Each run's CPU time at the previous refresh.
    prev_cpu: HashMap<String, (u64, Instant)>,
    /// The agent's pid, CPU ticks and when they were read.
    prev_agent: Option<(i32, u64, Instant)>,
    /// The live runs of the previous refresh.
    live: Vec<String>,
    /// Runs seen ending, and when.
    ended: Vec<(RunRow, Instant)>,
}

impl Source {
    pub fn new(client: Client, all: bool, kills: usize) -> Source {
        Source {
            client,
            all,
            kills,
            prev_cpu: HashMap::new(),
            prev_agent: None,
            live: Vec::new(),
            ended: Vec::new(),
        }
    }

    /// One refresh. Fails (with a message for the header) when the agent does
    /// not answer the health or runs request; a failing audit request only
    /// leaves the kills pane with an error.
    pub fn fetch(&mut self) -> Result<Snapshot, String> {
        let health = self.client.health().map_err(|e| e.to_string())?;
        let query = RunsQuery {
            all: self.all,
            stuck: false,
        };
        let infos = self.client.runs(query).map_err(|e| e.to_string())?;
        let mut scans = 0;
        let infos: Vec<(RunInfo, bool)> = infos
            .into_iter()
            .map(|info| {
                if info.status.is_live() && scans < MAX_SECTION_SCANS {
                    scans += 1;
                    if let Ok(full) = self.client.run(&info.run_id) {
                        return (full, true);
                    }
                }
                (info, false)
            })
            .collect();
        let now = Instant::now();
        let taken_at = chrono::Utc::now();

        let mut cpu = HashMap::new();
        let mut runs: Vec<RunRow> = infos
            .into_iter()
            .map(|(info, sections_known)| {
                let cpu_percent = info.cpu_usec.and_then(|usec| {
                    cpu.insert(info.run_id.clone(), (usec, now));
                    let (before, at) = self.prev_cpu.get(&info.run_id)?;
                    share(usec.checked_sub(*before)? as f64 / 1e6, now - *at)
                });
                let memory_bytes = if info.status.is_live() {
                    read_u64(&Path::new(&info.cgroup).join("memory.current"))
                } else {
                    None
                };
                RunRow {
                    info,
                    memory_bytes,
                    cpu_percent,
                    sections_known,
                }
            })
            .collect();
        self.prev_cpu = cpu;

        if !self.all {
            // A run that ended between the list and its lookup is ended now.
            let (live_rows, ended_now): (Vec<RunRow>, Vec<RunRow>) =
                runs.into_iter().partition(|r| r.info.status.is_live());
            runs = live_rows;
            for r in ended_now {
                self.remember_ended(r, now);
            }
        }
        let live: Vec<String> = runs
            .iter()
            .filter(|r| r.info.status.is_live())
            .map(|r| r.info.run_id.clone())
            .collect();
        if !self.all {
            self.note_ended(&live, now);
            runs.extend(self.ended.iter().map(|(r, _)| r.clone()));
        }
        self.live = live;

        let audit = AuditQuery {
            limit: Some(AUDIT_WINDOW),
            ..Default::default()
        };
        let (kills, kills_error) = match self.client.audit(&audit) {
            Ok(records) => (latest_kills(records, self.kills), None),
            Err(e) => (Vec::new(), Some(format!("audit: {e}"))),
        };

        let agent = i32::try_from(health.pid)
            .ok()
            .map(|pid| self.agent_usage(pid, &health.version, now));
        let breakers = self.client.breakers().unwrap_or_default();
        Ok(Snapshot {
            taken_at,
            runs,
            kills,
            kills_error,
            agent,
            breakers_open: breakers
                .into_iter()
                .filter(|b| b.open)
                .map(|b| b.workflow)
                .collect(),
        })
    }

    /// Looks up the runs that were live last time and are not now, and keeps
    /// them for [`KEEP_ENDED`] so a kill's end can be seen.
    fn note_ended(&mut self, live: &[String], now: Instant) {
        let gone: Vec<String> = self
            .live
            .iter()
            .filter(|id| !live.contains(id))
            .filter(|id| !self.ended.iter().any(|(r, _)| &r.info.run_id == *id))
            .take(MAX_LOOKUPS)
            .cloned()
            .collect();
        for id in gone {
            if let Ok(info) = self.client.run(&id)
                && !info.status.is_live()
            {
                let row = RunRow {
                    info,
                    memory_bytes: None,
                    cpu_percent: None,
                    sections_known: false,
                };
                self.remember_ended(row, now);
            }
        }
        self.ended.retain(|(r, at)| {
            now.duration_since(*at) < KEEP_ENDED && !live.contains(&r.info.run_id)
        });
    }

    /// Keeps a run that ended on screen for [`KEEP_ENDED`] from now.
    fn remember_ended(&mut self, mut row: RunRow, now: Instant) {
        row.memory_bytes = None;
        row.cpu_percent = None;
        row.sections_known = false;
        self.ended.retain(|(r, _)| r.info.run_id != row.info.run_id);
        self.ended.push((row, now));
    }

    fn agent_usage(&mut self, pid: i32, version: &str, now: Instant) -> AgentUsage {
        let proc_dir = Path::new("/proc").join(pid.to_string());
        let ticks = std::fs::read_to_string(proc_dir.join("stat"))
            .ok()
            .and_then(|s| crate::procfs::parse_stat_cpu_ticks(&s));
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let cpu_percent = match (ticks, self.prev_agent) {
            (Some(t), Some((p, before, at))) if p == pid => {
                share(t.saturating_sub(before) as f64 / hz, now - at)
            }
            _ => None,
        };
        self.prev_agent = ticks.map(|t| (pid, t, now));
        AgentUsage {
            pid,
            version: version.to_string(),
            cpu_percent,
            cpu_secs: ticks.map(|t| t as f64 / hz),
            rss_bytes: std::fs::read_to_string(proc_dir.join("status"))
                .ok()
                .and_then(|s| rss_bytes(&s)),
        }
    }
}

/// CPU seconds used over a wall-clock interval, in percent of one CPU.
fn share(cpu_secs: f64, wall: Duration) -> Option<f64> {
    let wall = wall.as_secs_f64();
    (wall > 0.05).then(|| cpu_secs / wall * 100.0)
}

/// The `kill` and `auto_kill` records, newest first, at most `n`.
pub fn latest_kills(records: Vec<AuditRecord>, n: usize) -> Vec<AuditRecord> {
    let mut kills: Vec<AuditRecord> = records
        .into_iter()
        .filter(|r| matches!(r.entry.action, AuditAction::Kill | AuditAction::AutoKill))
        .collect();
    kills.sort_by_key(|r| std::cmp::Reverse(r.seq));
    kills.truncate(n);
    kills
}

/// `VmRSS` of a `/proc/<pid>/status`, in bytes.
pub fn rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A file holding one number (`memory.current`), or `None` when it cannot be read.
fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_the_name() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 12345 1000000 300 18446744073709551615";
        assert_eq!(crate::procfs::parse_stat_cpu_ticks(stat), Some(300));
        assert_eq!(crate::procfs::parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\twfcg\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(rss_bytes(status), Some(1234 * 1024));
        assert_eq!(rss_bytes("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn kills_are_filtered_and_newest_first() {
        let rec = |seq: i64, action: &str| AuditRecord {
            seq,
            entry: crate::api::AuditEntry {
                action: action.into(),
                ..Default::default()
            },
            prev_hash: String::new(),
            hash: String::new(),
        };
        let records = vec![
            rec(1, "run_start"),
            rec(2, "kill"),
            rec(3, "run_end"),
            rec(4, "auto_kill"),
            rec(5, "kill"),
            rec(6, "policy_load"),
        ];
        let seqs: Vec<i64> = latest_kills(records, 2).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![5, 4]);
    }

    #[test]
    fn cpu_share_needs_a_real_interval() {
        assert_eq!(share(0.5, Duration::from_secs(1)), Some(50.0));
        assert_eq!(share(0.5, Duration::ZERO), None);
    }
}
