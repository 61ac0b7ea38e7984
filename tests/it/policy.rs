//! Who may kill what, and the audit trail: real users and groups (created here
//! with useradd/groupadd), the CLI run as them against a private agent, the
//! decisions it makes, and the hash-chained record of every attempt.

use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;

use crate::require_privileges;
use crate::util::{self, KillOnDrop, Run, TestAgent, UserLease, described, marker, wait_until};

/// The team every test user except erin may be part of (bob is a member through it).
const TEAM_GROUP: &str = "wfcgt_team";

/// The [`UserLease`] of these users.
const USERS_LEASE: &str = "policy-users";

/// The users of these tests; in [`POLICY`], alice leads team `wfcgt` (whose
/// members are the Unix group `wfcgt_team`, bob's), carol is readonly, dave is
/// admin, and bob and erin are plain owners.
const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

const POLICY: &str = r#"
[users]
wfcgt_alice = "team_lead"
wfcgt_carol = "readonly"
wfcgt_dave = "admin"

[teams.wfcgt]
members = ["@wfcgt_team"]
leads = ["wfcgt_alice"]
"#;

/// A test user: its name, uid and primary gid.
#[derive(Debug, Clone)]
struct User {
    name: String,
    uid: u32,
    gid: u32,
}

/// Creates the test users and their group once per process, idempotently, under
/// a [`UserLease`] that removes them when the last test process on the host
/// that holds them exits (a static is never dropped: `atexit` lets it go).
fn users() -> &'static [User] {
    static USERS_MADE: OnceLock<Vec<User>> = OnceLock::new();
    static LEASE: Mutex<Option<UserLease>> = Mutex::new(None);
    extern "C" fn let_go() {
        if let Ok(mut lease) = LEASE.lock() {
            lease.take();
        }
    }
    USERS_MADE.get_or_init(|| {
        let names: Vec<String> = USERS.iter().map(|u| format!("wfcgt_{u}")).collect();
        let create = format!(
            r#"getent group {TEAM_GROUP} >/dev/null || groupadd {TEAM_GROUP} || [ $? -eq 9 ]
for u in {names}; do
    id -u "$u" >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin "$u" || [ $? -eq 9 ]
done
id -nG wfcgt_bob | grep -qw {TEAM_GROUP} || usermod -a -G {TEAM_GROUP} wfcgt_bob
for u in {names}; do id -u "$u" >/dev/null; done
id -nG wfcgt_bob | grep -qw {TEAM_GROUP}"#,
            names = names.join(" ")
        );
        let remove = format!(
            "for u in {names}; do userdel -f \"$u\"; done; groupdel {TEAM_GROUP}",
            names = names.join(" ")
        );
        *LEASE.lock().unwrap() = Some(UserLease::take(USERS_LEASE, &create, &remove));
        // SAFETY: atexit(3) only records the function; `let_go` touches nothing but
        // the lease, whose Mutex is a static that lives as long as the process.
        unsafe { libc::atexit(let_go) };
        names
            .into_iter()
            .map(|name| {
                let id = |flag: &str| -> u32 {
                    let out = Command::new("id").args([flag, &name]).output().unwrap();
                    String::from_utf8(out.stdout)
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap()
                };
                User {
                    uid: id("-u"),
                    gid: id("-g"),
                    name,
                }
            })
            .collect()
    })
}

/// The test user `wfcgt_<short>`.
fn user(short: &str) -> User {
    let name = format!("wfcgt_{short}");
    users()
        .iter()
        .find(|u| u.name == name)
        .unwrap_or_else(|| panic!("no test user {name}"))
        .clone()
}

/// `wfcg` aimed at `agent`, run as `user` with its groups (from the group
/// database, as a login would have them), in `/`, which every user may enter.
fn wfcg_as(agent: &TestAgent, user: &User) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .arg("--")
        .arg(util::WFCG)
        .envs(agent.env())
        .current_dir("/")
        .stdin(Stdio::null());
    cmd
}

/// Runs `wfcg ARGS` as `user` to the end.
fn cli_as(agent: &TestAgent, user: &User, args: &[&str]) -> Output {
    wfcg_as(agent, user)
        .args(args)
        .output()
        .expect("running wfcg as a test user")
}

/// A policy agent reachable by the test users.
fn policy_agent(policy: &str) -> TestAgent {
    users();
    let agent = TestAgent::start_with_policy(policy);
    agent.open_to_all_users();
    agent
}

/// `wfcg run --detach [extra] -- sh -c 'exec sleep 1000'` as `user`; waits until
/// the run holds its two processes (supervisor and sleep).
fn start_run_as(agent: &TestAgent, user: &User, extra: &[&str]) -> Run {
    let marker = marker("policy");
    let out = wfcg_as(agent, user)
        .env(util::TEST_MARK, &marker)
        .args(["run", "--detach"])
        .args(extra)
        .args(["--", "sh", "-c", "exec sleep 1000"])
        .output()
        .expect("running wfcg run as a test user");
    assert!(
        out.status.success(),
        "wfcg run as {} failed: {}{}\nagent log:\n{}",
        user.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        agent.wait_procs(&id, 2),
        "run {id} did not start its command"
    );
    Run { id, marker }
}

/// Asserts that a command was refused with exit 4 and a message naming `permission`.
fn assert_denied(out: &Output, permission: &str) {
    assert_eq!(out.status.code(), Some(4), "{}", described(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not permitted") && stderr.contains(permission),
        "the refusal does not name {permission}: {}",
        described(out)
    );
}

/// Asserts that a command succeeded.
fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{}", described(out));
}

/// `wfcg audit --json ARGS` as root, parsed.
fn audit(agent: &TestAgent, args: &[&str]) -> Vec<Value> {
    let out = agent.wfcg().arg("audit").args(args).arg("--json").output();
    let out = out.expect("running wfcg audit");
    assert_ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The kill records of a run by an actor, oldest first.
fn kill_records(agent: &TestAgent, run_id: &str, actor: &str) -> Vec<Value> {
    audit(agent, &["--run", run_id, "--actor", actor])
        .into_iter()
        .filter(|r| r["action"] == "kill")
        .collect()
}

/// Asserts that `actor`'s one kill attempt on `run_id` is on the record as
/// `decision`, resting on `permission`, with `outcome` and `mode`.
fn assert_kill_audited(
    agent: &TestAgent,
    run_id: &str,
    actor: &User,
    (decision, permission, outcome, mode): (&str, &str, &str, &str),
) {
    let records = kill_records(agent, run_id, &actor.name);
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["decision"], decision, "{r:#}");
    assert_eq!(r["permission"], permission, "{r:#}");
    assert_eq!(r["outcome"], outcome, "{r:#}");
    assert_eq!(r["mode"], mode, "{r:#}");
    assert_eq!(r["actor_uid"], actor.uid, "{r:#}");
    assert!(r["caller_pid"].as_i64().unwrap_or(0) > 0, "{r:#}");
}

/// Asserts a run is still live (not yet ready, or running) with its command's
/// one process (the supervisor is not counted; it may still be on its way out
/// of the payload just after the start, hence the wait).
fn assert_running(agent: &TestAgent, run: &Run) {
    let mut status = serde_json::Value::Null;
    let one = wait_until(Duration::from_secs(10), || {
        status = agent.status(&run.id);
        status["processes"] == 1
    });
    assert!(
        status["status"] == "running" || status["status"] == "initializing",
        "{status:#}"
    );
    assert!(one, "{status:#}");
}

/// The runs `user` sees in `wfcg ps --json`.
fn ps_as(agent: &TestAgent, user: &User) -> Vec<String> {
    let out = cli_as(agent, user, &["ps", "--json"]);
    assert_ok(&out);
    let runs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    runs.iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_user_cannot_kill_another_users_run_and_the_denial_is_audited() {
    require_privileges!();
    let agent = policy_agent(POLICY);
    let (bob, erin) = (user("bob"), user("erin"));
    let run = start_run_as(&agent, &bob, &[]);

    for extra in [&[][..], &["--force"]] {
        let mut args = vec!["kill", run.id.as_str()];
        args.extend_from_slice(extra);
        assert_denied(&cli_as(&agent, &erin, &args), "kill_any");
    }

    assert_running(&agent, &run);
    assert_eq!(agent.kill_count(&run.id), 0);
    let records = kill_records(&agent, &run.id, &erin.name);
    let seen: Vec<(&Value, &Value, &Value, &Value)> = records
        .iter()
        .map(|r| (&r["decision"], &r["permission"], &r["outcome"], &r["mode"]))
        .collect();
    assert_eq!(
        seen,
        [
            (
                &Value::from("denied"),
                &Value::from("kill_any"),
                &Value::from("denied"),
                &Value::from("graceful")
            ),
            (
                &Value::from("denied"),
                &Value::from("kill_any"),
                &Value::from("denied"),
                &Value::from("force")
            ),
        ],
        "{records:#?}"
    );
    // The same through the sqlite3 CLI, as an operator would check it.
    assert_eq!(
        agent.sql(&format!(
            "select decision, outcome, permission, actor_uid from audit \
             where run_id = '{}' and action = 'kill' order by seq",
            run.id
        )),
        format!(
            "denied|denied|kill_any|{0}\ndenied|denied|kill_any|{0}",
            erin.uid
        )
    );
    // The owner kills it, --force included (the built-in owner role has kill_force).
    assert_ok(&cli_as(&agent, &bob, &["kill", "--force", &run.id]));
    agent.assert_run_gone(&run);
    assert_kill_audited(
        &agent,
        &run.id,
        &bob,
        ("allowed", "kill_own", "killed", "force"),
    );
}

#[test]
fn an_owner_kills_their_own_run_but_force_needs_kill_force() {
    require_privileges!();
    // An owner role without kill_force.
    let agent = policy_agent("[roles]\nowner = [\"kill_own\"]\n");
    let bob = user("bob");
    let run = start_run_as(&agent, &bob, &[]);

    assert_denied(
        &cli_as(&agent, &bob, &["kill", "--force", &run.id]),
        "kill_force",
    );
    assert_running(&agent, &run);
    assert_kill_audited(
        &agent,
        &run.id,
        &bob,
        ("denied", "kill_force", "denied", "force"),
    );

    let out = cli_as(
        &agent,
        &bob,
        &["kill", "--grace", "2s", "--reason", "mine", &run.id],
    );
    assert_ok(&out);
    agent.assert_run_gone(&run);
    let records = kill_records(&agent, &run.id, &bob.name);
    assert_eq!(records.len(), 2, "{records:#?}");
    let r = &records[1];
    assert_eq!(
        (&r["decision"], &r["permission"], &r["outcome"], &r["mode"]),
        (
            &Value::from("allowed"),
            &Value::from("kill_own"),
            &Value::from("killed"),
            &Value::from("graceful")
        ),
        "{r:#}"
    );
    assert_eq!(r["reason"], "mine", "{r:#}");
}

#[test]
fn a_team_lead_kills_a_members_run_but_not_an_outsiders() {
    require_privileges!();
    let agent = policy_agent(POLICY);
    let (alice, bob, erin) = (user("alice"), user("bob"), user("erin"));
    // bob is in the team through his Unix group; erin is in no team, and may not
    // claim one.
    let members = start_run_as(&agent, &bob, &["--team", "wfcgt"]);
    let outsiders = start_run_as(&agent, &erin, &[]);
    assert_eq!(
        agent.sql(&format!(
            "select teams from runs where run_id = '{}'",
            members.id
        )),
        r#"["wfcgt"]"#
    );
    assert_eq!(
        agent.sql(&format!(
            "select teams from runs where run_id = '{}'",
            outsiders.id
        )),
        "[]"
    );
    let out = cli_as(&agent, &erin, &["run", "--team", "wfcgt", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", described(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wfcgt"),
        "{}",
        described(&out)
    );

    // The lead sees both kinds of run only as far as the team goes.
    let seen = ps_as(&agent, &alice);
    assert!(seen.contains(&members.id), "{seen:?}");
    assert!(!seen.contains(&outsiders.id), "{seen:?}");

    assert_denied(
        &cli_as(&agent, &alice, &["kill", "--force", &outsiders.id]),
        "kill_any",
    );
    assert_running(&agent, &outsiders);
    assert_kill_audited(
        &agent,
        &outsiders.id,
        &alice,
        ("denied", "kill_any", "denied", "force"),
    );

    assert_ok(&cli_as(&agent, &alice, &["kill", "--force", &members.id]));
    agent.assert_run_gone(&members);
    assert_kill_audited(
        &agent,
        &members.id,
        &alice,
        ("allowed", "kill_team_workflows", "killed", "force"),
    );
    assert_eq!(agent.status(&members.id)["status"], "killed");
}

#[test]
fn readonly_sees_every_run_and_kills_none() {
    require_privileges!();
    let agent = policy_agent(POLICY);
    let (bob, carol, erin) = (user("bob"), user("carol"), user("erin"));
    let run = start_run_as(&agent, &bob, &[]);

    let seen = ps_as(&agent, &carol);
    assert!(seen.contains(&run.id), "readonly does not see it: {seen:?}");
    assert_ok(&cli_as(&agent, &carol, &["status", &run.id]));
    assert_ok(&cli_as(&agent, &carol, &["audit", "verify"]));
    // Against a plain owner, who sees neither the run nor the whole trail.
    let seen = ps_as(&agent, &erin);
    assert!(
        !seen.contains(&run.id),
        "an owner sees another's run: {seen:?}"
    );
    assert_denied(&cli_as(&agent, &erin, &["status", &run.id]), "view_all");
    assert_denied(&cli_as(&agent, &erin, &["audit", "verify"]), "view_all");

    for extra in ["--force", "--emergency"] {
        let out = cli_as(&agent, &carol, &["kill", extra, &run.id]);
        assert_denied(
            &out,
            if extra == "--force" {
                "kill_any"
            } else {
                "emergency_kill"
            },
        );
    }
    assert_running(&agent, &run);
    let records = kill_records(&agent, &run.id, &carol.name);
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap(),
                r["permission"].as_str().unwrap(),
                r["mode"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("denied", "kill_any", "force"),
            ("denied", "emergency_kill", "emergency")
        ],
        "{records:#?}"
    );
}

#[test]
fn admin_may_do_anything() {
    require_privileges!();
    let agent = policy_agent(POLICY);
    let (bob, dave) = (user("bob"), user("dave"));
    let graceful = start_run_as(&agent, &bob, &[]);
    let emergency = start_run_as(&agent, &bob, &[]);

    let seen = ps_as(&agent, &dave);
    assert!(
        seen.contains(&graceful.id) && seen.contains(&emergency.id),
        "{seen:?}"
    );
    assert_ok(&cli_as(&agent, &dave, &["audit", "verify"]));

    assert_ok(&cli_as(
        &agent,
        &dave,
        &["kill", "--grace", "2s", &graceful.id],
    ));
    agent.assert_run_gone(&graceful);
    assert_kill_audited(
        &agent,
        &graceful.id,
        &dave,
        ("allowed", "kill_any", "killed", "graceful"),
    );

    assert_ok(&cli_as(
        &agent,
        &dave,
        &["kill", "--emergency", &emergency.id],
    ));
    agent.assert_run_gone(&emergency);
    assert_kill_audited(
        &agent,
        &emergency.id,
        &dave,
        ("allowed", "emergency_kill", "killed", "emergency"),
    );
    // An admin reads the whole trail, other users' records included.
    let out = cli_as(&agent, &dave, &["audit", "--json", "--actor", &bob.name]);
    assert_ok(&out);
    let records: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let starts = records
        .iter()
        .filter(|r| r["action"] == "run_start")
        .count();
    assert_eq!(starts, 2, "{records:#?}");
}

#[test]
fn an_emergency_kill_ends_a_frozen_run_and_needs_emergency_kill() {
    require_privileges!();
    // The built-in policy: bob is owner (no emergency_kill), root is admin.
    users();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let bob = user("bob");
    let run = start_run_as(&agent, &bob, &[]);
    let cg = agent.run_cgroup(&run.id);
    std::fs::write(cg.path().join("cgroup.freeze"), "1").unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || cg
            .events()
            .is_ok_and(|e| e.frozen)),
        "the run did not freeze"
    );

    assert_denied(
        &cli_as(&agent, &bob, &["kill", "--emergency", &run.id]),
        "emergency_kill",
    );
    assert!(
        cg.events().unwrap().frozen,
        "the denied kill touched the run"
    );
    assert_kill_audited(
        &agent,
        &run.id,
        &bob,
        ("denied", "emergency_kill", "denied", "emergency"),
    );

    let result = agent.kill_ok(&run.id, &["--emergency", "--reason", "frozen solid"]);
    assert_eq!(result["mode"], "emergency", "{result:#}");
    assert_eq!(result["audit"], "written", "{result:#}");
    agent.assert_run_gone(&run);
    let records = kill_records(&agent, &run.id, "root");
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(
        (
            &r["decision"],
            &r["permission"],
            &r["outcome"],
            &r["mode"],
            &r["reason"]
        ),
        (
            &Value::from("allowed"),
            &Value::from("emergency_kill"),
            &Value::from("killed"),
            &Value::from("emergency"),
            &Value::from("frozen solid")
        ),
        "{r:#}"
    );
}

/// A root-only agent with `1 + n` audit records: its start (a policy load), then
/// `n` kills of runs that do not exist, each written before its answer, so the
/// trail is quiet afterwards.
fn agent_with_records(n: usize) -> TestAgent {
    let agent = TestAgent::start();
    for i in 0..n {
        agent.cli_expect(3, &["kill", &format!("run_none{i}")]);
    }
    assert_eq!(agent.sql("select count(*) from audit"), (n + 1).to_string());
    assert_eq!(
        agent.sql("select count(*) from audit where outcome = 'no_such_run'"),
        n.to_string()
    );
    agent
}

/// `wfcg audit verify`: its exit code and its answer (from `--json`), and its
/// text output.
fn verify(agent: &TestAgent) -> (Option<i32>, Value, String) {
    let json = agent.cli(&["audit", "verify", "--json"]);
    let plain = agent.cli(&["audit", "verify"]);
    assert_eq!(
        json.status.code(),
        plain.status.code(),
        "{}",
        described(&plain)
    );
    (
        json.status.code(),
        serde_json::from_slice(&json.stdout).unwrap(),
        String::from_utf8_lossy(&plain.stdout).into_owned(),
    )
}

#[test]
fn an_edited_audit_row_fails_verify_naming_its_sequence_number() {
    require_privileges!();
    let agent = agent_with_records(5);
    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(0), "{message}");
    assert_eq!(message.trim(), "6 records, chain intact");
    assert_eq!(v["intact"], true);

    agent.sql("UPDATE audit SET outcome = 'x' WHERE seq = 4");

    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(1), "{message}");
    assert_eq!(v["intact"], false, "{v:#}");
    assert_eq!(v["first_bad_seq"], 4, "{v:#}");
    assert!(
        message.contains("record 4 ") && message.contains("edited"),
        "{message}"
    );
    // The edit put back, the chain is whole again: the hash covers the content.
    agent.sql("UPDATE audit SET outcome = 'no_such_run' WHERE seq = 4");
    assert_eq!(verify(&agent).0, Some(0));
}

#[test]
fn a_deleted_audit_row_is_detected_in_the_middle() {
    require_privileges!();
    let agent = agent_with_records(5);
    agent.sql("DELETE FROM audit WHERE seq = 3");

    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(1), "{message}");
    assert_eq!(v["first_bad_seq"], 4, "{v:#}");
    assert!(
        message.contains("from 2 to 4") && message.contains("deleted"),
        "{message}"
    );
}

#[test]
fn a_deleted_newest_audit_row_is_detected_through_the_head_file() {
    require_privileges!();
    let agent = agent_with_records(5);
    let head = agent.state_dir.join("audit.head");
    let kept = std::fs::read_to_string(&head).unwrap();
    assert!(kept.starts_with("6 "), "{kept:?}");
    agent.sql("DELETE FROM audit WHERE seq = 6");

    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(1), "{message}");
    assert_eq!(v["first_bad_seq"], 6, "{v:#}");
    assert!(message.contains("missing"), "{message}");

    // Two newest gone: still named from the first missing one.
    agent.sql("DELETE FROM audit WHERE seq = 5");
    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(1), "{message}");
    assert_eq!(v["first_bad_seq"], 5, "{v:#}");
}

#[test]
fn the_audit_record_of_a_kill_survives_a_sigkill_of_the_agent_right_after_the_answer() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let mut runs = Vec::new();
    for i in 0..20 {
        let run = agent.start_run(&[], "exec sleep 1000");
        let reason = format!("crash {i}");
        let result = agent.kill_ok(&run.id, &["--force", "--reason", &reason]);
        assert_eq!(result["audit"], "written", "{result:#}");
        agent.kill9();
        agent.spawn();
        let records = kill_records(&agent, &run.id, "root");
        assert_eq!(records.len(), 1, "iteration {i}: {records:#?}");
        let r = &records[0];
        assert_eq!(
            (&r["decision"], &r["outcome"], &r["mode"], &r["reason"]),
            (
                &Value::from("allowed"),
                &Value::from("killed"),
                &Value::from("force"),
                &Value::from(reason)
            ),
            "iteration {i}: {r:#}"
        );
        runs.push(run);
    }
    for run in &runs {
        agent.assert_run_gone(run);
    }
    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(0), "{message}");
    // 21 policy loads (one per start), and per run: start, kill_start, kill, end.
    assert_eq!(v["records"], 21 + 4 * 20, "{v:#}\n{message}");
}

/// Runs one statement on the agent's store with the sqlite3 CLI, waiting up to
/// 5 s for a write of the agent's own to finish instead of failing as busy.
fn sql_write(agent: &TestAgent, statement: &str) {
    let out = Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(agent.db())
        .arg(statement)
        .output()
        .expect("sqlite3");
    assert_ok(&out);
}

/// The value of an unlabelled metric in the agent's `GET /metrics`.
fn metric(agent: &TestAgent, name: &str) -> f64 {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&agent.socket)
        .arg("http://wfcg/metrics")
        .output()
        .expect("curl");
    assert_ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// A kill whose audit record cannot be written (a trigger makes every insert
/// into `audit` fail) is still carried out and answered `audit: pending`; the
/// agent logs the failure loudly and retries, and once the store takes writes
/// again the held records land in order, the chain verifies intact, and the
/// next kill is `written` at once.
#[test]
fn a_kill_whose_audit_record_cannot_be_written_is_carried_out_and_written_later() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "exec sleep 1000");
    assert!(agent.wait_procs(&run.id, 2), "{}", agent.log_tail(30));
    // The policy load at start, and the run's start.
    assert_eq!(agent.sql("select count(*) from audit"), "2");
    sql_write(
        &agent,
        "CREATE TRIGGER block_audit BEFORE INSERT ON audit \
         BEGIN SELECT RAISE(ABORT, 'audit blocked by the test'); END;",
    );

    let result = agent.kill_ok(&run.id, &["--reason", "audit down"]);
    assert_eq!(result["audit"], "pending", "{result:#}");
    assert_eq!(result["already_ended"], false, "{result:#}");
    agent.assert_run_gone(&run);
    assert_eq!(agent.status(&run.id)["status"], "killed");
    let log = agent.log();
    assert!(
        log.contains("AUDIT RECORD NOT WRITTEN, will retry")
            && log.contains("audit blocked by the test"),
        "{}",
        agent.log_tail(30)
    );
    // Neither the kill's start, nor the run's end (audited by the kill sequence,
    // before the kill's own record), nor the kill is in the store yet: all wait,
    // in memory.
    let actions = |agent: &TestAgent| -> Vec<Value> {
        audit(agent, &["--run", &run.id])
            .into_iter()
            .map(|r| r["action"].clone())
            .collect()
    };
    assert_eq!(actions(&agent), ["run_start"]);
    // kill_start, the kill's result on the run, run_end, kill.
    assert_eq!(metric(&agent, "wfcg_audit_pending"), 4.0);
    assert!(metric(&agent, "wfcg_audit_write_failures_total") >= 2.0);
    let (code, _, message) = verify(&agent);
    assert_eq!(code, Some(0), "{message}");
    assert_eq!(message.trim(), "2 records, chain intact (4 pending)");

    sql_write(&agent, "DROP TRIGGER block_audit");
    let written = wait_until(Duration::from_secs(20), || {
        kill_records(&agent, &run.id, "root").len() == 1
    });
    assert!(
        written,
        "the kill's record was never written; agent log (end):\n{}",
        agent.log_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(20), || agent
            .log()
            .contains("AUDIT: pending records are written now")),
        "{}",
        agent.log_tail(30)
    );
    assert_eq!(
        actions(&agent),
        ["run_start", "kill_start", "run_end", "kill"]
    );
    let r = &kill_records(&agent, &run.id, "root")[0];
    assert_eq!(
        (&r["decision"], &r["outcome"], &r["reason"]),
        (
            &Value::from("allowed"),
            &Value::from("killed"),
            &Value::from("audit down")
        ),
        "{r:#}"
    );
    assert_eq!(metric(&agent, "wfcg_audit_pending"), 0.0);
    let (code, v, message) = verify(&agent);
    assert_eq!(code, Some(0), "{message}");
    assert_eq!(message.trim(), "5 records, chain intact");
    assert_eq!(v["intact"], true, "{v:#}");

    // The trail takes writes again: the next kill is on record before its answer.
    let again = agent.kill_ok(&run.id, &[]);
    assert_eq!(again["already_ended"], true, "{again:#}");
    assert_eq!(again["audit"], "written", "{again:#}");
    let records = kill_records(&agent, &run.id, "root");
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[1]["outcome"], "already_ended", "{records:#?}");
    let (code, _, message) = verify(&agent);
    assert_eq!(code, Some(0), "{message}");
    assert_eq!(message.trim(), "6 records, chain intact");
}

/// Waits until `user`'s `wfcg ps` does (or does not) show `run`.
fn wait_sees(agent: &TestAgent, user: &User, run: &Run, sees: bool) -> bool {
    wait_until(Duration::from_secs(10), || {
        ps_as(agent, user).contains(&run.id) == sees
    })
}

/// The policy loads on the record, oldest first: (reason, outcome).
fn policy_loads(agent: &TestAgent) -> Vec<(String, String)> {
    audit(agent, &["--actor", "agent"])
        .into_iter()
        .filter(|r| r["action"] == "policy_load")
        .map(|r| {
            (
                r["reason"].as_str().unwrap_or("").to_string(),
                r["outcome"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn send_sighup(agent: &TestAgent) {
    let pid = agent.pid().expect("the agent runs");
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

#[test]
fn a_policy_reload_on_sighup_takes_effect() {
    require_privileges!();
    users();
    let mut agent = TestAgent::unstarted();
    // The policy path is a link into a directory the agent does not watch: only
    // SIGHUP can make it read the new text.
    let real_dir = agent.dir.path().join("real");
    std::fs::create_dir(&real_dir).unwrap();
    let real = real_dir.join("policy.toml");
    std::fs::write(&real, "").unwrap();
    std::os::unix::fs::symlink(&real, agent.policy_path()).unwrap();
    agent.spawn();
    agent.open_to_all_users();
    let (bob, carol) = (user("bob"), user("carol"));
    let run = start_run_as(&agent, &bob, &[]);
    assert!(!ps_as(&agent, &carol).contains(&run.id));

    std::fs::write(&real, POLICY).unwrap();
    assert!(
        !ps_as(&agent, &carol).contains(&run.id),
        "the policy changed without SIGHUP"
    );
    send_sighup(&agent);
    assert!(
        wait_sees(&agent, &carol, &run, true),
        "SIGHUP did not make carol readonly; log:\n{}",
        agent.log()
    );
    // The record follows the switch to the new policy: wait for it too.
    let mut loads = Vec::new();
    wait_until(Duration::from_secs(10), || {
        loads = policy_loads(&agent);
        loads.len() >= 2
    });
    assert_eq!(loads.len(), 2, "{loads:?}");
    assert!(loads[1].0.starts_with("SIGHUP"), "{loads:?}");
    assert_eq!(loads[1].1, "loaded", "{loads:?}");
    // And the new role decides kills too: readonly may not kill.
    assert_denied(&cli_as(&agent, &carol, &["kill", &run.id]), "kill_any");
}

#[test]
fn a_rewritten_policy_file_takes_effect_without_sighup() {
    require_privileges!();
    let agent = policy_agent("");
    let (bob, carol) = (user("bob"), user("carol"));
    let run = start_run_as(&agent, &bob, &[]);
    assert!(!ps_as(&agent, &carol).contains(&run.id));

    // A plain rewrite in place (no rename), as `echo > policy.toml` would.
    std::fs::write(agent.policy_path(), POLICY).unwrap();
    assert!(
        wait_sees(&agent, &carol, &run, true),
        "the rewritten policy was not picked up; log:\n{}",
        agent.log()
    );
    // The record follows the switch to the new policy: wait for it too.
    let mut loads = Vec::new();
    wait_until(Duration::from_secs(10), || {
        loads = policy_loads(&agent);
        loads.len() >= 2
    });
    let last = loads.last().unwrap();
    assert!(last.0.starts_with("file changed"), "{loads:?}");
    assert_eq!(last.1, "loaded", "{loads:?}");
}

#[test]
fn a_broken_reload_keeps_the_old_policy_and_is_audited_as_refused() {
    require_privileges!();
    let agent = policy_agent(POLICY);
    let (bob, carol) = (user("bob"), user("carol"));
    let run = start_run_as(&agent, &bob, &[]);
    assert!(ps_as(&agent, &carol).contains(&run.id));

    // carol's role goes missing from the new text, and the file breaks on line 3.
    std::fs::write(
        agent.policy_path(),
        "[users]\nwfcgt_dave = \"admin\"\nwfcgt_carol = \"overlord\"\n",
    )
    .unwrap();
    let refused = |trigger: &str| {
        policy_loads(&agent)
            .into_iter()
            .filter(|(reason, outcome)| {
                reason.starts_with(trigger) && outcome.starts_with("refused")
            })
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(Duration::from_secs(10), || !refused("file changed")
            .is_empty()),
        "no refused reload on the record: {:?}",
        policy_loads(&agent)
    );
    let (_, outcome) = &refused("file changed")[0];
    assert!(
        outcome.contains("policy.toml:3:") && outcome.contains("overlord"),
        "{outcome}"
    );
    send_sighup(&agent);
    assert!(
        wait_until(Duration::from_secs(10), || !refused("SIGHUP").is_empty()),
        "no refused SIGHUP reload on the record: {:?}",
        policy_loads(&agent)
    );
    // The previous policy stays: carol is still readonly; under the built-in
    // policy she would see nothing.
    assert!(ps_as(&agent, &carol).contains(&run.id));
    assert_denied(&cli_as(&agent, &carol, &["kill", &run.id]), "kill_any");
    assert!(
        policy_loads(&agent)
            .iter()
            .all(|(_, o)| o != "built-in (no policy file)"),
        "{:?}",
        policy_loads(&agent)
    );
    assert_running(&agent, &run);
}

#[test]
fn a_broken_policy_at_start_stops_the_agent_with_file_and_line() {
    require_privileges!();
    let mount = wfcg::cgroup::cgroup2_mount().unwrap();
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "role",
            b"[users]\nsomeone = \"owner\"\nother = \"overlord\"\n",
            ":3:",
        ),
        (
            "permission",
            b"[roles]\nowner = [\"kill_own\", \"kill_everything\"]\n",
            ":2:",
        ),
        ("utf8", b"[users]\n\xff\xfe = \"owner\"\n", ":2:"),
        (
            "team",
            b"[teams.build]\nleads = [\"someone\"]\nmembers = [\"other\", \"\"]\n",
            ":3:",
        ),
    ];
    for (name, policy, line) in cases {
        let dir = tempfile::Builder::new()
            .prefix("wfcg-test")
            .tempdir()
            .unwrap();
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy).unwrap();
        let socket = dir.path().join("agent.sock");
        let root = wfcg::cgroup::Cgroup::new(
            mount.join(format!("wfcg-test-{}-badpolicy-{name}", std::process::id())),
        );
        let mut child = KillOnDrop(
            Command::new(util::WFCG)
                .arg("agent")
                .env("WFCG_SOCKET", &socket)
                .env("WFCG_STATE_DIR", dir.path().join("state"))
                .env("WFCG_CGROUP_ROOT", root.path())
                .env("WFCG_POLICY", &policy_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let status = child.wait_timeout(Duration::from_secs(10));
        if status.is_none() {
            // It started after all: stop it before its cgroups are removed.
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
        let mut stderr = String::new();
        if let Some(mut pipe) = child.0.stderr.take() {
            use std::io::Read;
            let _ = pipe.read_to_string(&mut stderr);
        }
        // The agent set up its cgroup root before reading the policy: remove it.
        let cleanup = root.remove_recursive();
        let status = status.unwrap_or_else(|| panic!("{name}: the agent started: {stderr}"));
        assert!(!status.success(), "{name}: {status:?} {stderr}");
        let want = format!("{}{line}", policy_path.display());
        assert!(stderr.contains(&want), "{name}: no {want:?} in: {stderr}");
        assert!(!socket.exists(), "{name}: the socket was left behind");
        assert!(
            !root.exists(),
            "{name}: {} left: {cleanup:?}",
            root.path().display()
        );
    }
}

#[test]
fn audit_lists_filter_by_run_actor_and_limit_and_export_prints_json_lines() {
    require_privileges!();
    let agent = policy_agent(POLICY);
    let erin = user("erin");
    let a = agent.start_run(&[], "exec sleep 1000");
    let b = agent.start_run(&[], "exec sleep 1000");
    assert_denied(&cli_as(&agent, &erin, &["kill", &a.id]), "kill_any");
    agent.kill_ok(&a.id, &["--force", "--reason", "filter me"]);
    agent.kill_ok(&b.id, &["--force"]);

    let all = audit(&agent, &[]);
    let seqs: Vec<i64> = all.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    // start, 2 run starts, erin's denial, 2 kill starts, 2 kills, 2 run ends.
    assert_eq!(all.len(), 10, "{all:#?}");

    let of_a = audit(&agent, &["--run", &a.id]);
    let actions: Vec<&str> = of_a.iter().map(|r| r["action"].as_str().unwrap()).collect();
    // The kill sequence records the run's end, then the kill is recorded.
    assert_eq!(
        actions,
        ["run_start", "kill", "kill_start", "run_end", "kill"],
        "{of_a:#?}"
    );
    assert!(of_a.iter().all(|r| r["run_id"] == a.id.as_str()));

    let of_erin = audit(&agent, &["--actor", &erin.name]);
    assert_eq!(of_erin.len(), 1, "{of_erin:#?}");
    assert_eq!(of_erin[0]["decision"], "denied");
    let of_root = audit(&agent, &["--actor", "root"]);
    assert_eq!(of_root.len(), 6, "{of_root:#?}");
    assert!(of_root.iter().all(|r| r["actor_uid"] == 0));

    let newest = audit(&agent, &["--limit", "2"]);
    assert_eq!(newest, all[all.len() - 2..].to_vec());
    assert_eq!(
        audit(&agent, &["--run", &a.id, "--limit", "1"]),
        [of_a[4].clone()]
    );
    assert_eq!(audit(&agent, &["--since", "1h"]), all);

    // A user without view_all reads only their own records.
    let out = cli_as(&agent, &erin, &["audit", "--json"]);
    assert_ok(&out);
    let own: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(own, of_erin);

    let out = agent.cli(&["audit", "export"]);
    assert_ok(&out);
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines, all);
    assert!(
        lines
            .iter()
            .all(|r| r["hash"].as_str().is_some_and(|h| h.len() == 64))
    );
    let out = agent.cli(&["audit", "export", "--run", &b.id]);
    assert_ok(&out);
    // start, kill_start, run_end, kill.
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 4);
}

#[test]
fn a_sighup_while_the_agent_starts_does_not_kill_it() {
    require_privileges!();
    let agent = TestAgent::unstarted();
    std::fs::write(agent.policy_path(), POLICY).unwrap();
    // Started by hand, to signal it while it starts: the socket is bound first,
    // then the store, cgroups and runs are set up, then it answers.
    let mut child = KillOnDrop(
        Command::new(util::WFCG)
            .arg("agent")
            .envs(agent.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent.socket.exists()),
        "the agent did not bind its socket"
    );
    let pid = rustix::process::Pid::from_raw(child.id()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();

    let answered = wait_until(Duration::from_secs(10), || {
        agent.cli(&["ps"]).status.success() || child.0.try_wait().unwrap().is_some()
    });
    assert!(answered);
    assert_eq!(
        child.0.try_wait().unwrap(),
        None,
        "a SIGHUP during start-up ended the agent"
    );
    // The SIGHUP was not lost either: it reloads the policy once the agent serves.
    assert!(
        wait_until(Duration::from_secs(10), || policy_loads(&agent).iter().any(
            |(reason, outcome)| reason.starts_with("SIGHUP") && outcome == "loaded"
        )),
        "{:?}",
        policy_loads(&agent)
    );
}
