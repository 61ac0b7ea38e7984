//! Budgets per user (issue 21, item 6), attacked as real unprivileged users: one
//! user's stuck runs open only that user's breaker; a flood of denied requests
//! grows the audit trail by a bounded amount and the chain still verifies; a
//! user who fills the state filesystem leaves root its reserve (root's start
//! and kills work, the user's start is refused with exit 7); the live-run cap
//! is exact under concurrent starts.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::*;

/// A second unprivileged user (the first is [`TestUser`]).
struct OtherUser {
    uid: u32,
    gid: u32,
    _lease: UserLease,
}

impl OtherUser {
    const NAME: &str = "wfcgbudget2";

    fn get() -> OtherUser {
        let lease = UserLease::take(
            Self::NAME,
            &format!(
                "id -u {0} >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin {0}",
                Self::NAME
            ),
            &format!("userdel -f {}", Self::NAME),
        );
        let id = |flag: &str| -> u32 {
            let out = Command::new("id")
                .args([flag, Self::NAME])
                .output()
                .unwrap();
            text(&out.stdout).trim().parse().unwrap()
        };
        OtherUser {
            uid: id("-u"),
            gid: id("-g"),
            _lease: lease,
        }
    }

    fn wfcg(&self, agent: &TestAgent) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_wfcg"))
            .envs(agent.env())
            .current_dir("/");
        cmd
    }
}

/// `wfcg audit --json` as root.
fn audit(agent: &TestAgent) -> Vec<serde_json::Value> {
    let out = agent.cli(&["audit", "--json"]);
    assert!(out.status.success(), "audit: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A run of `builder` that never gets ready: killed as stuck after 1 s.
fn stuck_builder(agent: &TestAgent, cmd: &mut Command) -> String {
    let out = cmd
        .current_dir("/")
        .args([
            "run",
            "--detach",
            "--workflow",
            "builder",
            "--init-timeout",
            "1s",
        ])
        .args(["--", "sleep", "100"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = text(&out.stdout).trim().to_string();
    assert!(
        agent.wait_status(&id, "timed_out"),
        "{id} not timed out: {:#}",
        agent.status(&id)
    );
    id
}

/// A quick run of `builder` that succeeds.
fn good_builder(cmd: &mut Command) -> Output {
    cmd.current_dir("/")
        .args([
            "run",
            "-q",
            "--workflow",
            "builder",
            "--ready-when",
            "start",
        ])
        .args(["--", "true"])
        .output()
        .unwrap()
}

#[test]
fn one_users_stuck_runs_open_only_that_users_breaker() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let a = TestUser::get();
    let b = OtherUser::get();
    for _ in 0..3 {
        stuck_builder(&agent, &mut agent.wfcg_as(&a));
    }
    // A's breaker is open: A's next start is refused, exit 6, saying whose.
    let refused = good_builder(&mut agent.wfcg_as(&a));
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!("circuit breaker open for uid {}", a.uid)),
        "{err}"
    );
    // Root's and B's runs of the same workflow start.
    let root = good_builder(&mut agent.wfcg());
    assert!(root.status.success(), "root: {}", described(&root));
    let other = good_builder(&mut b.wfcg(&agent));
    assert!(other.status.success(), "user B: {}", described(&other));
    // `wfcg breaker` says whose; B sees none of A's.
    let list = text(&agent.cli(&["breaker"]).stdout);
    assert!(
        list.contains("breaker OPEN   builder for") && list.contains(&format!("uid {}", a.uid)),
        "{list}"
    );
    let seen = b.wfcg(&agent).args(["breaker", "--json"]).output().unwrap();
    let seen: Vec<serde_json::Value> = serde_json::from_slice(&seen.stdout).unwrap();
    assert!(seen.is_empty(), "{seen:#?}");
    // Reset of another user's breaker leaves A's; of A's closes it.
    agent.cli_expect(
        3,
        &["breaker", "reset", "builder", "--user", &b.uid.to_string()],
    );
    agent.cli_expect(
        0,
        &["breaker", "reset", "builder", "--user", TestUser::NAME],
    );
    let again = good_builder(&mut agent.wfcg_as(&a));
    assert!(
        again.status.success(),
        "A after reset: {}",
        described(&again)
    );
}

#[test]
fn a_flood_of_denied_kills_grows_the_audit_by_a_bounded_amount_and_verifies() {
    require_privileges!();
    let agent = TestAgent::start_with_policy("[limits]\ndenial_window_secs = 3\n");
    agent.open_to_all_users();
    let user = TestUser::get();
    let victim = agent.start_run(&[], "sleep 1000");
    let reason = "R".repeat(1024);
    const FLOOD: usize = 150;
    let script = format!(
        "i=0; while [ $i -lt {FLOOD} ]; do \"$0\" kill {} --reason {reason} >/dev/null 2>&1; \
         i=$((i+1)); done",
        victim.id
    );
    let started = Instant::now();
    let out = user
        .command("sh")
        .envs(agent.env())
        .current_dir("/")
        .args(["-c", &script, env!("CARGO_BIN_EXE_wfcg")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let took = started.elapsed();
    // Every denial is accounted for: the first of each window written, the
    // others counted in a summary record at the window's end.
    let accounted = |records: &[serde_json::Value]| -> (usize, u64) {
        let mine: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| r["actor_uid"] == user.uid)
            .collect();
        let counted: u64 = mine
            .iter()
            .map(|r| {
                if r["action"] == "denials_coalesced" {
                    let why = r["reason"].as_str().unwrap();
                    let n = why.strip_prefix("count=").unwrap();
                    n[..n.find(' ').unwrap()].parse::<u64>().unwrap()
                } else {
                    assert_eq!(r["action"], "kill", "{r:#}");
                    assert_eq!(r["decision"], "denied", "{r:#}");
                    1
                }
            })
            .sum();
        (mine.len(), counted)
    };
    let mut last = (0, 0);
    let all_counted = wait_until(Duration::from_secs(30), || {
        last = accounted(&audit(&agent));
        last.1 == FLOOD as u64
    });
    assert!(all_counted, "denials accounted for: {last:?} of {FLOOD}");
    // At most one record and one summary per window of 3 s.
    let windows = took.as_secs() as usize / 3 + 2;
    assert!(
        last.0 <= 2 * windows,
        "{} records for {FLOOD} denials",
        last.0
    );
    // Reasons are capped.
    for r in audit(&agent).iter().filter(|r| r["actor_uid"] == user.uid) {
        let why = r["reason"].as_str().unwrap_or("");
        assert!(why.len() < 600, "{} bytes: {why}", why.len());
    }
    let verify = agent.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", described(&verify));
    agent.kill_ok(&victim.id, &["--force"]);
}

#[test]
fn with_the_state_fs_full_roots_start_and_kill_work_and_a_users_start_is_refused() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    // The state directory on a small tmpfs of its own (unmounted with the agent).
    let state = agent.dir.path().join("smallfs");
    std::fs::create_dir(&state).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &state,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        Some(c"size=24M,mode=0755"),
    )
    .unwrap();
    agent.state_dir = state.clone();
    std::fs::write(agent.policy_path(), "[limits]\nstate_reserve = \"4M\"\n").unwrap();
    agent.spawn();
    agent.open_to_all_users();
    let user = TestUser::get();
    let victim = agent.start_run(&[], "sleep 1000");
    assert!(
        state.join("reserve").exists(),
        "no reserve file kept for root"
    );
    // The user fills the rest through a detached run's log on the state fs.
    let out = agent
        .wfcg_as(&user)
        .current_dir("/")
        .args(["run", "--detach", "--ready-when", "start", "--"])
        .args([
            "sh",
            "-c",
            "head -c 64M /dev/zero; : >\"$TMPDIR/full\"; sleep 1000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let filler = text(&out.stdout).trim().to_string();
    let free = || {
        let st = rustix::fs::statvfs(&state).unwrap();
        st.f_bavail * st.f_frsize
    };
    // Filled once the writer has stopped (its write failed for space): a writer
    // still running would take whatever root's start frees next.
    let stopped = || {
        std::fs::read_dir(state.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("full").exists())
    };
    assert!(
        wait_until(Duration::from_secs(30), stopped) && free() < 4 << 20,
        "the user did not fill the state fs: {} free",
        free()
    );
    // The user's start is refused, saying why, with exit 7.
    let refused = agent
        .wfcg_as(&user)
        .current_dir("/")
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(7), "{}", described(&refused));
    assert!(err.contains("kept for root"), "{err}");
    // Root's start works, and kills do.
    let root = agent.cli(&["run", "-q", "--ready-when", "start", "--", "true"]);
    assert!(root.status.success(), "root: {}", described(&root));
    agent.kill_ok(&filler, &["--force"]);
    agent.kill_ok(&victim.id, &[]);
    assert_no_space_left_behind(&state);
}

/// Nothing of a run's is left on the state filesystem's TMPDIR mounts.
fn assert_no_space_left_behind(state: &Path) {
    let left: Vec<_> = mounts_below(&state.join("tmp"));
    assert!(left.is_empty(), "TMPDIR mounts left: {left:?}");
}

#[test]
fn concurrent_starts_against_a_cap_of_k_admit_exactly_k() {
    require_privileges!();
    const K: usize = 3;
    const N: usize = 12;
    let agent = TestAgent::start_with_policy(&format!(
        "[limits]\nmax_live_runs = {K}\nmax_starts_per_minute = 100\n"
    ));
    agent.open_to_all_users();
    let user = TestUser::get();
    let children: Vec<_> = (0..N)
        .map(|_| {
            agent
                .wfcg_as(&user)
                .current_dir("/")
                .args(["run", "--detach", "--", "sleep", "1000"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let admitted = outs.iter().filter(|o| o.status.success()).count();
    for o in outs.iter().filter(|o| !o.status.success()) {
        let err = text(&o.stderr);
        assert!(err.contains(&format!("max_live_runs = {K}")), "{err}");
    }
    let live = agent
        .ps(true)
        .iter()
        .filter(|r| r["owner_uid"] == user.uid)
        .count();
    assert_eq!((admitted, live), (K, K), "{outs:#?}");
}

#[test]
fn only_an_operators_template_makes_a_breaker_host_wide() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let template = agent.dir.path().join("hostwide.toml");
    std::fs::write(
        &template,
        "[breaker]\nfailures = 1\nscope = \"host\"\n[timeouts]\ninit = \"1s\"\n",
    )
    .unwrap();
    let workflow = format!("hostwide-{}", std::process::id());
    // Root's run with the operator's template ends stuck: the breaker of everybody opens.
    let out = agent.cli(&[
        "run",
        "--detach",
        "--workflow",
        &workflow,
        "--template",
        template.to_str().unwrap(),
        "--",
        "sleep",
        "100",
    ]);
    assert!(out.status.success(), "{}", described(&out));
    let id = text(&out.stdout).trim().to_string();
    assert!(
        agent.wait_status(&id, "timed_out"),
        "{:#}",
        agent.status(&id)
    );
    // The user's own (empty) template: the default's, confined.
    let empty = agent.dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let start = || {
        agent
            .wfcg_as(&user)
            .current_dir("/")
            .args([
                "run",
                "-q",
                "--workflow",
                &workflow,
                "--template",
                empty.to_str().unwrap(),
                "--ready-when",
                "start",
            ])
            .args(["--", "true"])
            .output()
            .unwrap()
    };
    let refused = start();
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(6), "{err}");
    assert!(err.contains("host-wide"), "{err}");
    // A user's template may not set [breaker] (so no scope) at all.
    let own = agent
        .wfcg_as(&user)
        .current_dir("/")
        .args([
            "run",
            "--template",
            template.to_str().unwrap(),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(!own.status.success(), "{}", described(&own));
    agent.cli_expect(0, &["breaker", "reset", &workflow, "--user", "host"]);
    let again = start();
    assert!(again.status.success(), "{}", described(&again));
}
