//! Prometheus metrics (the text exposition format, by prometheus-client), served
//! at `GET /metrics` on the agent's socket and, with `--metrics-listen ADDR`, on TCP.
//!
//! Events (kills, notify messages) are counted as they happen; the rest (runs by
//! status, stuck runs, run ages, the agent's own resources) is read at scrape time.
//! [`Agent::metrics_text`] gathers one scrape; [`Agent::metrics_for`] answers a
//! caller on the socket (the per-run series only to those who may see every run).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::api::{KillMode, KillResult, SectionKind};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    mode: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    run_id: String,
    workflow: String,
    status: String,
}

/// The counters kept between scrapes.
#[derive(Debug)]
pub struct Metrics {
    kills: Family<KillLabels, Counter>,
    kill_duration: Family<ModeLabel, Histogram>,
    section_waits: Family<KindLabel, Counter>,
    section_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    notify: Family<ResultLabel, Counter>,
    /// The two series of `notify`, once each has been counted: a message is then
    /// counted without building a label (a hundred heartbeats a second count).
    notify_series: [std::sync::OnceLock<Counter>; 2],
    /// Runs killed because nobody renewed their lease.
    lease_expired: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            kills: Family::default(),
            kill_duration: Family::new_with_constructor(|| {
                // 1 ms … ~65 s
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            section_waits: Family::default(),
            section_wait_seconds: Counter::default(),
            notify: Family::default(),
            notify_series: Default::default(),
            lease_expired: Counter::default(),
        }
    }
}

/// What is read at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Runs by status (all the store holds).
    pub runs_by_status: Vec<(String, u64)>,
    pub stuck: u64,
    /// Live runs whose only output is a retry loop (progress.rs).
    pub retrying: u64,
    /// Workflows whose circuit breaker is open.
    pub breakers_open: u64,
    /// Live runs: id, workflow, status, age in seconds.
    pub live: Vec<(String, String, String, f64)>,
    pub audit_records: u64,
    pub audit_failures: u64,
    pub audit_pending: u64,
    pub alerts_sent: u64,
    pub alerts_failed: u64,
}

impl Metrics {
    /// Counts a finished kill attempt (`outcome` as audited).
    pub fn kill(&self, mode: KillMode, outcome: &str, result: Option<&KillResult>, seconds: f64) {
        self.kills
            .get_or_create(&KillLabels {
                mode: mode.as_str().into(),
                outcome: outcome.into(),
            })
            .inc();
        let Some(r) = result.filter(|r| !r.already_ended) else {
            return;
        };
        self.kill_duration
            .get_or_create(&ModeLabel {
                mode: mode.as_str().into(),
            })
            .observe(seconds);
        let mut kinds: Vec<SectionKind> = r.sections.iter().map(|s| s.kind).collect();
        kinds.sort();
        kinds.dedup();
        for kind in kinds {
            self.section_waits
                .get_or_create(&KindLabel {
                    kind: kind.as_str().into(),
                })
                .inc();
        }
        self.section_wait_seconds.inc_by(r.waited_ms / 1e3);
    }

    /// Counts a run whose lease ran out (it is then killed).
    pub fn lease_expired(&self) {
        self.lease_expired.inc();
    }

    /// Counts a notify message, accepted or rejected.
    pub fn notify(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.notify_series[usize::from(accepted)]
            .get_or_init(|| {
                self.notify
                    .get_or_create(&ResultLabel {
                        result: result.into(),
                    })
                    .clone()
            })
            .inc();
    }

    /// The exposition text for one scrape.
    pub fn render(&self, snap: &Snapshot) -> String {
        let mut reg = Registry::with_prefix("wfcg");
        reg.register(
            "kills",
            "Kill attempts by mode (graceful, force, emergency) and outcome",
            self.kills.clone(),
        );
        reg.register_with_unit(
            "kill_duration",
            "Duration of kill sequences",
            Unit::Seconds,
            self.kill_duration.clone(),
        );
        reg.register(
            "critical_section_waits",
            "Kills that found critical sections open, by kind",
            self.section_waits.clone(),
        );
        reg.register_with_unit(
            "critical_section_wait",
            "Time kills spent waiting for critical sections to close",
            Unit::Seconds,
            self.section_wait_seconds.clone(),
        );
        reg.register(
            "notify_messages",
            "sd_notify messages, accepted or rejected (sender outside the run)",
            self.notify.clone(),
        );
        reg.register(
            "lease_expired",
            "Runs killed because nobody renewed their lease (wfcg run --lease)",
            self.lease_expired.clone(),
        );
        let runs: Family<StatusLabel, Gauge> = Family::default();
        for (status, n) in &snap.runs_by_status {
            runs.get_or_create(&StatusLabel {
                status: status.clone(),
            })
            .set(*n as i64);
        }
        reg.register("runs", "Runs in the store by status", runs);
        reg.register(
            "stuck_runs",
            "Live runs past or near a deadline",
            ConstGauge::new(snap.stuck as i64),
        );
        reg.register(
            "retrying_runs",
            "Live runs whose newest output line repeats an earlier one with nothing else new (a retry loop)",
            ConstGauge::new(snap.retrying as i64),
        );
        reg.register(
            "breakers_open",
            "Workflows whose circuit breaker is open (new runs refused)",
            ConstGauge::new(snap.breakers_open as i64),
        );
        let ages: Family<RunLabels, Gauge<f64, std::sync::atomic::AtomicU64>> = Family::default();
        for (run_id, workflow, status, age) in &snap.live {
            ages.get_or_create(&RunLabels {
                run_id: run_id.clone(),
                workflow: workflow.clone(),
                status: status.clone(),
            })
            .set(*age);
        }
        reg.register_with_unit("run_age", "Age of each live run", Unit::Seconds, ages);
        reg.register(
            "audit_records",
            "Audit records written",
            ConstCounter::new(snap.audit_records),
        );
        reg.register(
            "audit_write_failures",
            "Failed attempts to write an audit record (retried)",
            ConstCounter::new(snap.audit_failures),
        );
        reg.register(
            "audit_pending",
            "Audit records waiting to be written",
            ConstGauge::new(snap.audit_pending as i64),
        );
        let alerts: Family<ResultLabel, Counter> = Family::default();
        for (result, n) in [("sent", snap.alerts_sent), ("failed", snap.alerts_failed)] {
            alerts
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .inc_by(n);
        }
        reg.register("alerts", "Alert deliveries, sent or failed", alerts);
        register_process(&mut reg);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!("cannot encode metrics: {e}");
        }
        to_prometheus_text(&out)
    }
}

/// prometheus-client writes OpenMetrics; scrapers and `promtool check metrics` read
/// the Prometheus text format (0.0.4), where a counter's HELP and TYPE carry the
/// `_total` name of its samples and there are no `# UNIT` or `# EOF` lines.
fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The agent's own resources, from `/proc/self`.
fn register_process(reg: &mut Registry) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let cpu = crate::procfs::parse_stat_cpu_ticks(&stat).unwrap_or(0) as f64 / ticks.max(1.0);
    let rss_pages: f64 = crate::procfs::stat_field(&stat, 24)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let rss = rss_pages * page;
    let fds = open_fds();
    let process = reg.sub_registry_with_prefix("agent");
    process.register_with_unit(
        "process_cpu",
        "CPU time used by the agent",
        Unit::Seconds,
        ConstCounter::new(cpu),
    );
    process.register_with_unit(
        "process_resident_memory",
        "Resident memory of the agent",
        Unit::Bytes,
        ConstGauge::new(rss as i64),
    );
    process.register(
        "process_open_fds",
        "Open file descriptors of the agent",
        ConstGauge::new(fds as i64),
    );
}

/// How many files the agent has open: the size the kernel gives its fd
/// directory (Linux 6.2 on), else the directory listed (slow with a descriptor
/// a run: 15,000 at 10,000 runs).
fn open_fds() -> usize {
    match std::fs::metadata("/proc/self/fd") {
        Ok(m) if m.len() > 0 => m.len() as usize,
        _ => std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_files_are_counted_as_the_fd_directory_lists_them() {
        let _held: Vec<std::fs::File> = (0..20)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let counted = open_fds();
        // Listing opens the directory itself: one more, or other threads' files.
        let listed = std::fs::read_dir("/proc/self/fd").unwrap().count();
        assert!(counted >= 20, "{counted}");
        assert!(
            counted.abs_diff(listed) <= 3,
            "{counted} against {listed} listed"
        );
    }

    #[test]
    fn counters_are_named_with_total_and_units_dropped() {
        let om = "# HELP x_kills Kills.\n# TYPE x_kills counter\n# UNIT x_kills seconds\nx_kills_total 1\n\
                  # HELP x_runs Runs.\n# TYPE x_runs gauge\nx_runs 2\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP x_kills_total Kills.\n# TYPE x_kills_total counter\nx_kills_total 1\n\
             # HELP x_runs Runs.\n# TYPE x_runs gauge\nx_runs 2\n"
        );
    }

    #[test]
    fn a_scrape_names_every_family() {
        let m = Metrics::default();
        m.notify(true);
        m.kill(KillMode::Force, "killed", None, 0.01);
        m.lease_expired();
        let text = m.render(&Snapshot {
            runs_by_status: vec![("running".into(), 3)],
            live: vec![("run_a".into(), "w".into(), "running".into(), 1.5)],
            ..Default::default()
        });
        for want in [
            "wfcg_kills_total{mode=\"force\",outcome=\"killed\"} 1",
            "wfcg_runs{status=\"running\"} 3",
            "wfcg_notify_messages_total{result=\"accepted\"} 1",
            "wfcg_lease_expired_total 1",
            "wfcg_run_age_seconds{run_id=\"run_a\",workflow=\"w\",status=\"running\"} 1.5",
            "# TYPE wfcg_agent_process_cpu_seconds_total counter",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }
}
