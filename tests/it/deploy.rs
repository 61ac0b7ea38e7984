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

/// A copy of the wfcg binary outside the build tree (`install-service` refuses
/// one inside it), in a directory removed with the returned guard.
fn installed_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("wfcg");
    std::fs::copy(WFCG, &exe).unwrap();
    (dir, std::fs::canonicalize(&exe).unwrap())
}

/// systemd is the init system here (then `install-service` would enable the
/// unit for real: those tests run in the VM suite instead).
fn systemd_is_pid1() -> bool {
    std::path::Path::new("/run/systemd/system").is_dir()
}

#[test]
fn install_service_writes_the_unit_with_the_path_of_this_binary() {
    let (bin, exe) = installed_copy();
    let unit = bin.path().join("systemd/wfcg.service");
    let out = Command::new(&exe)
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
    assert!(
        text.contains(&format!("\nExecStart={} agent\n", exe.display())),
        "{text}"
    );
    assert!(text.contains("\nDelegate=yes\n") && text.contains("\nKillMode=process\n"));
}

#[test]
fn install_service_without_systemd_as_pid1_writes_nothing_and_says_what_to_do() {
    if systemd_is_pid1() {
        eprintln!("systemd is PID 1 here: this case is for hosts without it");
        return;
    }
    let (bin, exe) = installed_copy();
    let unit = bin.path().join("systemd/wfcg.service");
    let out = Command::new(&exe)
        .args(["install-service", "--unit"])
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("systemd is not PID 1")
            && err.contains("nothing was written")
            && err.contains("wfcg agent")
            && err.contains("--no-start"),
        "{err}"
    );
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !bin.path().join("systemd").exists(),
        "something was written"
    );
}

#[test]
fn install_service_refuses_a_binary_inside_a_build_tree() {
    // The test binary is the build tree's own (target/debug/wfcg); refused
    // before anything else is looked at, with systemd or without.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("systemd/wfcg.service");
    for extra in [&[][..], &["--no-start"][..]] {
        let out = Command::new(WFCG)
            .arg("install-service")
            .args(extra)
            .arg("--unit")
            .arg(&unit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(
            err.contains("inside a build tree")
                && err.contains("Nothing was written")
                && err.contains("scripts/install"),
            "{err}"
        );
        assert!(
            !dir.path().join("systemd").exists(),
            "something was written"
        );
    }
}

#[test]
fn generate_writes_a_man_page_per_command_and_every_page_named_exists() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WFCG)
        .args(["generate", "man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: BTreeSet<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // Every command of `wfcg --help`, and the nested ones, has its page.
    for page in [
        "wfcg.1",
        "wfcg-run.1",
        "wfcg-kill.1",
        "wfcg-adopt.1",
        "wfcg-ps.1",
        "wfcg-status.1",
        "wfcg-agent.1",
        "wfcg-mcp.1",
        "wfcg-install-service.1",
        "wfcg-audit-verify.1",
        "wfcg-breaker-reset.1",
    ] {
        assert!(pages.contains(page), "no {page} in {pages:?}");
    }
    let help = Command::new(WFCG).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let commands = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help");
    for c in commands {
        assert!(
            pages.contains(&format!("wfcg-{c}.1")),
            "no page for {c}: {pages:?}"
        );
    }
    assert!(!pages.contains("wfcg-help.1") && !pages.contains("wfcg-generate.1"));
    // Each page names only pages that exist (roff writes `-` as `\-`).
    let named = regex::Regex::new(r"\b(wfcg(?:-[a-z]+)*)\(1\)").unwrap();
    let mut named_pages = BTreeSet::new();
    for page in &pages {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap()
            .replace("\\-", "-");
        for m in named.captures_iter(&text) {
            let target = format!("{}.1", &m[1]);
            assert!(
                pages.contains(&target),
                "{page} names {}(1), which has no page",
                &m[1]
            );
            named_pages.insert(target);
        }
    }
    // Each command's page names the pages above it in its SEE ALSO.
    let verify = std::fs::read_to_string(dir.path().join("wfcg-audit-verify.1")).unwrap();
    assert!(
        verify.ends_with(".SH \"SEE ALSO\"\nwfcg\\-audit(1), wfcg(1)\n"),
        "{verify}"
    );
    // And each command's page is named by its parent's.
    let mut unnamed: Vec<&String> = pages.difference(&named_pages).collect();
    unnamed.retain(|p| *p != "wfcg.1");
    assert!(unnamed.is_empty(), "named by no page: {unnamed:?}");
    // The paths written are printed, one a line.
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), pages.len(), "{printed}");
}
