//! Prometheus metrics: scraped over the socket and over TCP, and accepted by
//! `promtool check metrics`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::require_privileges;
use crate::util::{TestAgent, WFCG, wait_until};

/// `promtool check metrics` on a scrape; panics with its complaints.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejected the metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").arg("-sf").args(args).output().unwrap();
    assert!(out.status.success(), "curl {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn metrics_on_the_socket_count_runs_kills_and_notify_messages_and_pass_promtool() {
    require_privileges!();
    let agent = TestAgent::start();
    let ready = agent
        .start_run(&[], "systemd-notify --ready; exec sleep 1000")
        .id;
    let waiting = agent.start_run(&[], "exec sleep 1000").id;
    assert!(agent.wait_status(&ready, "running"));
    let out = agent.cli(&["kill", "--force", &waiting]);
    assert!(out.status.success());
    let socket = agent.socket.to_str().unwrap().to_string();
    let text = curl(&["--unix-socket", &socket, "http://wfcg/metrics"]);
    promtool_accepts(&text);
    for want in [
        "wfcg_runs{status=\"running\"} 1",
        "wfcg_runs{status=\"killed\"} 1",
        "wfcg_kills_total{mode=\"force\",outcome=\"killed\"} 1",
        // systemd-notify may send more than one datagram: at least one was accepted.
        "wfcg_notify_messages_total{result=\"accepted\"} ",
        "wfcg_stuck_runs 0",
        "wfcg_audit_write_failures_total 0",
        "wfcg_kill_duration_seconds_count{mode=\"force\"} 1",
    ] {
        assert!(text.contains(want), "{want:?} missing in\n{text}");
    }
    assert!(
        text.contains(&format!("wfcg_run_age_seconds{{run_id=\"{ready}\"")),
        "{text}"
    );
}

/// Kills the agent started by hand when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_listen_serves_them_on_tcp() {
    require_privileges!();
    let agent = TestAgent::unstarted();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let _child = Child(
        Command::new(WFCG)
            .arg("agent")
            .envs(agent.env())
            .env("WFCG_METRICS_LISTEN", &addr)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{addr}/metrics");
    let answered = wait_until(Duration::from_secs(10), || {
        Command::new("curl")
            .args(["-sf", &url])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(answered, "no metrics on {url}");
    let text = curl(&[&url]);
    promtool_accepts(&text);
    assert!(
        text.contains("# TYPE wfcg_audit_records_total counter"),
        "{text}"
    );
    assert!(
        text.contains("wfcg_agent_process_resident_memory_bytes"),
        "{text}"
    );
}
