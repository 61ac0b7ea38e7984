//! `wfcg run`: exit status, signals, detach, run ids.

use crate::require_privileges;
use crate::util::TestAgent;

#[test]
fn exit_status_is_relayed() {
    require_privileges!();
    let agent = TestAgent::start();
    for (script, want) in [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + 9)] {
        let out = agent.cli(&["run", "-q", "--", "sh", "-c", script]);
        assert_eq!(out.status.code(), Some(want), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    }
}
