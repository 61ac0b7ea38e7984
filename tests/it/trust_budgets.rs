//! Budgets per user (issue 21, item 6), attacked as real unprivileged users: one
//! user's stuck runs open only that user's breaker; a flood of denied requests
//! grows the audit trail by a bounded amount and the chain still verifies; a
//! user who fills the state filesystem leaves root its reserve (root's start
//! and kills work, the user's start is refused with exit 7); the live-run cap
//! is exact under concurrent starts; an ended run's TMPDIR held from outside
//! cannot grow and counts against its owner; a run filling its run directory
//! fills only that.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
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

/// Python run as the user, outside the run, in a user and mount namespace of its
/// own (so it holds a copy of the TMPDIR's mount as well): it waits for
/// `ready` in the TMPDIR (argv[1]), then holds it every way it can (an open
/// file, a working directory, a mapping, the tmpfs's root, a bind mount of it in
/// its namespace) and prints `held`. After a line on stdin (the run has ended),
/// it tries to make the tmpfs grow and prints what each attempt gave, as JSON;
/// it lets go at the end of stdin.
const HOLDER: &str = r#"
import ctypes, errno, json, mmap, os, sys, time
tmp = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
deadline = time.time() + 30
while not os.path.exists(os.path.join(tmp, 'ready')) and time.time() < deadline:
    time.sleep(0.02)
big = os.open(os.path.join(tmp, 'big'), os.O_RDWR)
root = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
os.chdir(os.path.join(tmp, 'cwd'))
mapped_file = open(os.path.join(tmp, 'mapped'), 'r+b')
mapped = mmap.mmap(mapped_file.fileno(), 0)
bound = libc.mount(tmp.encode(), os.path.join(tmp, 'sub').encode(), None, 4096, None) == 0
print(json.dumps({'held': True, 'bound': bound}), flush=True)
sys.stdin.readline()
said = {}
def attempt(name, f):
    try:
        f()
        said[name] = 'ok'
    except OSError as e:
        said[name] = errno.errorcode.get(e.errno, str(e.errno))
attempt('grow', lambda: os.pwrite(big, b'x' * (1 << 20), os.fstat(big).st_size))
def create():
    fd = os.open('new', os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=root)
    os.write(fd, b'x' * 4096)
attempt('create', create)
r = libc.mount(b'none', tmp.encode(), None, 32, b'size=1G')
said['remount'] = 'ok' if r == 0 else errno.errorcode[ctypes.get_errno()]
# Emptied from outside before a start (to fill it again after): it still counts.
attempt('emptied', lambda: (os.ftruncate(big, 0), os.ftruncate(mapped_file.fileno(), 0)))
print(json.dumps(said), flush=True)
sys.stdin.read()
"#;

/// A run's TMPDIR outlived the run, uncounted: at the run's end the tmpfs was
/// detached, and a process of the user's outside the run that held a file in it
/// kept it and its pages alive, outside `max_tmpdir_total`, so a user could pile
/// up tmpfs memory without bound (one held fd per run). Now the ended run's
/// tmpfs is emptied by its owner and shrunk to what it still holds (nothing can
/// be added, whatever holds it, even from another mount namespace); what it
/// holds counts against the owner until it is let go.
#[test]
fn an_ended_runs_tmpdir_held_from_outside_cannot_grow_and_counts_until_let_go() {
    require_privileges!();
    let user = TestUser::get();
    // Room for one live run's 1 GiB TMPDIR and 1 MiB more.
    let agent = TestAgent::start_with_policy("[limits]\nmax_tmpdir_total = \"1025M\"\n");
    agent.open_to_all_users();
    let out = agent
        .wfcg_as(&user)
        .current_dir("/")
        .args(["run", "--detach", "--ready-when", "start", "--", "sh", "-c"])
        .arg(
            "cd \"$TMPDIR\" && head -c 2M /dev/zero > big && head -c 1M /dev/zero > mapped \
             && mkdir cwd sub && head -c 1M /dev/zero > cwd/plain && touch ready \
             && exec sleep 1000",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = text(&out.stdout).trim().to_string();
    let tmpdir = agent.state_dir.join("tmp").join(&id);
    let mut holder = user.command("unshare");
    holder
        .args(["-Urm", "--propagation", "private", "python3", "-c", HOLDER])
        .arg(&tmpdir)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut holder = KillOnDrop(holder.spawn().unwrap());
    let mut said = BufReader::new(holder.0.stdout.take().unwrap()).lines();
    let held = said.next().unwrap().unwrap();
    assert!(held.contains("\"held\": true"), "{held}");

    let result = agent.kill_ok(&id, &["--force"]);
    let status = &result["cleanup_status"];
    assert_eq!(status["tmpdir_removed"], false, "{result:#}");
    assert!(
        status["not_removed"].to_string().contains("still holds"),
        "{result:#}"
    );
    // Emptied by its owner: only what is held open is left.
    let left: Vec<_> = std::fs::read_dir(&tmpdir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Nothing can be added to it, by any holder.
    let stdin = holder.0.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let tried: serde_json::Value = serde_json::from_str(&said.next().unwrap().unwrap()).unwrap();
    assert_eq!(tried["grow"], "ENOSPC", "{tried}");
    assert_eq!(tried["create"], "ENOSPC", "{tried}");
    assert_ne!(tried["remount"], "ok", "{tried}");
    assert_eq!(tried["emptied"], "ok", "{tried}");

    // What it may hold counts, though the holder emptied it: a start that needs
    // 1 GiB more is refused, saying what.
    let start = || {
        agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["run", "-q", "--ready-when", "start", "--", "true"])
            .output()
            .unwrap()
    };
    let refused = start();
    assert!(!refused.status.success(), "{}", described(&refused));
    let err = text(&refused.stderr);
    assert!(err.contains("max_tmpdir_total"), "{err}");
    assert!(err.contains(tmpdir.to_str().unwrap()), "{err}");
    // Let go: counted no more, and the tmpfs is gone.
    drop(holder.0.stdin.take());
    assert!(holder.wait_timeout(Duration::from_secs(10)).is_some());
    let mut last = None;
    let admitted = wait_until(Duration::from_secs(10), || {
        let out = start();
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    assert!(admitted, "{}", described(&last.unwrap()));
    assert!(!mounts_below(&tmpdir).contains(&tmpdir));
    assert!(!tmpdir.exists());
}

/// `$WFCG_RUN_DIR` was uncapped on `/run`: a run could fill the file system of
/// the agent's socket directory, and root's later kill of any run lost its
/// stop reason. Now each run directory is a small tmpfs of its own.
#[test]
fn a_run_filling_its_run_dir_leaves_roots_kill_of_another_users_run_its_stop_reason() {
    require_privileges!();
    let user = TestUser::get();
    let other = TestUser::other();
    // The socket directory on a 32 MiB tmpfs, as /run on a small host.
    let agent = TestAgent::on_tmpfs("32m", &[]);
    let sock_dir = agent.socket.parent().unwrap().to_path_buf();
    let out = agent
        .wfcg_as(&user)
        .current_dir("/")
        .args(["run", "--detach", "--ready-when", "start", "--", "sh", "-c"])
        .arg("head -c 64M /dev/zero > \"$WFCG_RUN_DIR/fill\"; touch \"$TMPDIR/full\"; exec sleep 1000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let filler = text(&out.stdout).trim().to_string();
    let full = agent.state_dir.join("tmp").join(&filler).join("full");
    assert!(wait_until(Duration::from_secs(30), || full.exists()));
    let fill = sock_dir.join("runs").join(&filler).join("fill");
    let size = std::fs::metadata(&fill).unwrap().len();
    assert!(size <= 4 << 20, "the run dir took {size} bytes");
    let st = rustix::fs::statvfs(&sock_dir).unwrap();
    assert!(
        st.f_bavail * st.f_frsize > 16 << 20,
        "the socket directory's file system was filled"
    );

    // Another user's run in the foreground: its `wfcg run` says why it was stopped.
    let mut victim = other.command(env!("CARGO_BIN_EXE_wfcg"));
    victim
        .envs(agent.env())
        .current_dir("/")
        .args(["run", "--ready-when", "start", "--", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let victim = victim.spawn().unwrap();
    let mut id = None;
    assert!(wait_until(Duration::from_secs(20), || {
        id = agent
            .ps(true)
            .iter()
            .find(|r| r["owner_uid"] == other.uid && r["status"] == "running")
            .and_then(|r| r["run_id"].as_str().map(str::to_string));
        id.is_some()
    }));
    let result = agent.kill_ok(&id.unwrap(), &["--reason", "root's own reason"]);
    assert!(
        !result["message"].to_string().contains("cannot write"),
        "{result:#}"
    );
    let out = victim.wait_with_output().unwrap();
    assert!(
        text(&out.stderr).contains("root's own reason"),
        "{}",
        described(&out)
    );
    // The agent's writes keep working: a root run starts and the kill is audited.
    let root = agent.cli(&["run", "-q", "--ready-when", "start", "--", "true"]);
    assert!(root.status.success(), "root: {}", described(&root));
    agent.kill_ok(&filler, &["--force"]);
    assert!(mounts_below(&sock_dir.join("runs")).is_empty());
}
