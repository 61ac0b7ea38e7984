//! Installing wfcg: the systemd unit, READY=1 to the service manager, the
//! Prometheus rules and Grafana dashboard, the man page and completions.
//! (The service itself, under systemd as PID 1 on pure cgroup v2, is tested in
//! the VM: vagrant/suite.sh, run by scripts/vm-test.)

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, WFCG};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/wfcg-rules.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/wfcg-dashboard.json"
);

/// One datagram from `sock`, or `None` after `timeout`.
fn recv(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 1024];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_agent_sends_ready_to_the_service_manager_once_its_socket_answers_and_stopping_at_the_end() {
    require_privileges!();
    let agent = TestAgent::unstarted();
    let notify_path = agent.dir.path().join("systemd-notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let mut child = KillOnDrop(
        Command::new(WFCG)
            .arg("agent")
            .envs(agent.env())
            .env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ready = recv(&notify, Duration::from_secs(20)).expect("no message from the agent");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // READY=1 means the socket answers now, without retrying.
    let ps = agent.cli(&["ps"]);
    assert!(
        ps.status.success(),
        "READY=1 came before the socket answered: {}",
        String::from_utf8_lossy(&ps.stderr)
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id()).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let stopping = recv(&notify, Duration::from_secs(20)).expect("no STOPPING=1");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(child.wait_timeout(Duration::from_secs(20)).is_some());
}

/// The metric names a scrape declares (`# TYPE name kind`).
fn served_metrics(agent: &TestAgent) -> BTreeSet<String> {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket", agent.socket.to_str().unwrap()])
        .arg("http://wfcg/metrics")
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The `wfcg_*` metric names in a text, without histogram sample suffixes.
fn named_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("wfcg_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn promtool_accepts_the_alerting_rules_and_rules_and_dashboard_name_only_served_metrics() {
    require_privileges!();
    let out = Command::new("promtool")
        .args(["check", "rules", RULES])
        .output()
        .expect("promtool (Debian package prometheus) must be installed");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A family is served once it has samples: a run that notifies and holds a
    // workspace file open for writing, killed gracefully, makes them all.
    let agent = TestAgent::start();
    let ws = tempfile::tempdir().unwrap();
    let ws = ws.path().to_str().unwrap();
    let run = agent.start_run(
        &["--workspace", ws],
        &format!("exec 3>'{ws}/out'; systemd-notify --ready; exec sleep 1000"),
    );
    assert!(agent.wait_status(&run.id, "running"));
    agent.kill_ok(&run.id, &["--grace-files", "100ms"]);
    let _live = agent.start_run(&[], "exec sleep 1000");
    let served = served_metrics(&agent);
    let rules = std::fs::read_to_string(RULES).unwrap();
    let dashboard = std::fs::read_to_string(DASHBOARD).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(!json["panels"].as_array().unwrap().is_empty());
    for (file, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        let named = named_metrics(text);
        assert!(named.len() >= 4, "{file}: {named:?}");
        let unknown: Vec<_> = named.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "the {file} name metrics the agent does not serve: {unknown:?}; served: {served:?}"
        );
    }
    for alert in [
        "WfcgRunStuck",
        "WfcgKillFailed",
        "WfcgRunUnkillable",
        "WfcgRunOomKilled",
        "WfcgAuditWriteFailing",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }
}

#[test]
fn generate_makes_a_man_page_and_completions_from_the_command_line_definitions() {
    let run = |what: &str| {
        let out = Command::new(WFCG)
            .args(["generate", what])
            .output()
            .unwrap();
        assert!(out.status.success(), "generate {what}");
        String::from_utf8(out.stdout).unwrap()
    };
    let man = run("man");
    assert!(man.contains(".TH wfcg 1"), "{man}");
    assert!(man.contains("install\\-service") || man.contains("install-service"));
    for shell in ["bash", "zsh", "fish"] {
        let text = run(shell);
        assert!(
            text.contains("kill") && text.contains("force") && text.contains("install-service"),
            "{shell} completions: {text}"
        );
    }
    let bad = Command::new(WFCG)
        .args(["generate", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn install_service_writes_the_unit_with_the_path_of_this_binary() {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("systemd/wfcg.service");
    let out = Command::new(WFCG)
        .args(["install-service", "--no-start", "--unit"])
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&unit).unwrap();
    let exe = std::fs::canonicalize(WFCG).unwrap();
    assert!(
        text.contains(&format!("\nExecStart={} agent\n", exe.display())),
        "{text}"
    );
    assert!(text.contains("\nDelegate=yes\n") && text.contains("\nKillMode=process\n"));
}
