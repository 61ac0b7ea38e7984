//! The Python client (`python/`, the `wfcg` package) through its own pytest suite
//! (`python/tests`), run with `$WFCG_PYTHON` (where `.ci/run` installed pytest and
//! `./python`). The suite starts a private agent of this binary per test (its
//! own socket, state dir and cgroup root) and acts as the test user for the
//! permission tests.

use std::process::Command;

use crate::require_privileges;
use crate::util::{self, TestUser};

#[test]
fn python_client_suite_passes_against_a_real_agent() {
    require_privileges!();
    let Some(python) = util::python() else {
        return;
    };
    let user = TestUser::get();
    let out = Command::new(&python)
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "python/tests",
            // Run test by test, side by side, by tests/it/temporal.rs.
            "--ignore=python/tests/test_temporal.py",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("WFCG_BIN", util::WFCG)
        .env("WFCG_TEST_USER", TestUser::NAME)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("WFCG_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "pytest python/tests failed ({}; as user {} uid {}):\n{report}",
        out.status,
        TestUser::NAME,
        user.uid
    );
    util::every_pytest_test_ran(&report);
}
