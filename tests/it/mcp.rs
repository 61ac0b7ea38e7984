//! `wfcg mcp` driven by two real MCP clients over stdio, against a real agent:
//! rmcp's own client (in this test process), and the Python `mcp` package
//! (tests/mcp_client.py, run with `$WFCG_PYTHON`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, Tool};
use rmcp::service::RunningService;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

use crate::require_privileges;
use crate::util::{self, TestAgent};

/// The six tools, sorted.
const TOOLS: [&str; 6] = [
    "adopt_workflow",
    "audit_log",
    "get_workflow",
    "kill_workflow",
    "list_stuck",
    "list_workflows",
];

/// `wfcg mcp` aimed at `agent`, connected to rmcp's client over the child's stdio.
pub(crate) async fn connect(agent: &TestAgent) -> RunningService<RoleClient, ()> {
    let cmd = tokio::process::Command::new(util::WFCG).configure(|cmd| {
        cmd.arg("mcp").envs(agent.env());
    });
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting wfcg mcp");
    ().serve(transport).await.expect("MCP initialization")
}

/// Calls a tool; the result, whether it is a success or a tool error.
pub(crate) async fn call(
    client: &RunningService<RoleClient, ()>,
    tool: &str,
    args: Value,
) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: protocol error: {e}"))
}

pub(crate) fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

/// The structured answer of a successful call (the text content must say the same).
fn answer(tool: &str, r: CallToolResult) -> Value {
    assert_eq!(r.is_error, Some(false), "{tool} failed: {}", text(&r));
    let value = r.structured_content.clone().expect("structured content");
    let from_text: Value = serde_json::from_str(&text(&r)).expect("text content is JSON");
    assert_eq!(
        from_text, value,
        "{tool}: text and structured content differ"
    );
    value
}

/// The run ids in a `{"runs": [...]}` answer.
fn run_ids(v: &Value) -> Vec<&str> {
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(v["count"], runs.len(), "{v:#}");
    runs.iter().map(|r| r["run_id"].as_str().unwrap()).collect()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn mcp_rmcp_client_lists_tools_inspects_and_kills_a_live_run() {
    require_privileges!();
    let agent = TestAgent::start();
    // Workflows named like no template: the default template given as a file.
    let default = util::DEFAULT_TEMPLATE;
    let run = agent.start_run(
        &["--workflow", "mcp-test", "--template", default],
        "sleep 1000 & setsid sleep 1001 & wait",
    );
    assert!(agent.wait_procs(&run.id, 4), "the run did not start");
    let other = agent.start_run(
        &["--workflow", "other", "--template", default],
        "sleep 1000",
    );

    runtime().block_on(async {
        let client = connect(&agent).await;
        let info = client.peer_info().expect("server info");
        assert_eq!(
            info.server_info.as_ref().map(|i| i.name.as_str()),
            Some("wfcg")
        );

        // The tools: all six, each described, with an object schema; only kill and
        // adopt (which may kill) are destructive.
        let mut tools: Vec<Tool> = client.list_all_tools().await.expect("tools/list");
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, TOOLS);
        for t in &tools {
            assert!(
                t.description.as_deref().is_some_and(|d| !d.is_empty()),
                "{}",
                t.name
            );
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
            let a = t.annotations.as_ref().expect("annotations");
            if t.name == "kill_workflow" || t.name == "adopt_workflow" {
                assert_eq!(a.destructive_hint, Some(true), "{}", t.name);
                assert_eq!(a.read_only_hint, Some(false));
            } else {
                assert_eq!(a.read_only_hint, Some(true), "{}", t.name);
                assert_ne!(a.destructive_hint, Some(true), "{}", t.name);
            }
        }
        let kill_tool = tools.iter().find(|t| t.name == "kill_workflow").unwrap();
        assert_eq!(kill_tool.input_schema["required"], json!(["run_id"]));
        for arg in ["run_id", "force", "reason"] {
            assert!(
                kill_tool.input_schema["properties"].get(arg).is_some(),
                "kill_workflow has no {arg}: {:#}",
                Value::Object((*kill_tool.input_schema).clone())
            );
        }

        // `wfcg mcp --help` lists exactly the tools the server gave this client.
        let help = std::process::Command::new(util::WFCG)
            .args(["mcp", "--help"])
            .output()
            .unwrap();
        assert!(help.status.success());
        let help = String::from_utf8(help.stdout).unwrap();
        let listed: Vec<&str> = help
            .split("\nTools:\n")
            .nth(1)
            .unwrap_or_else(|| panic!("no Tools section: {help}"))
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(listed, names, "{help}");
        // Only what a client of the agent uses: no agent-only options.
        for agent_only in ["--state-dir", "--cgroup-root"] {
            assert!(!help.contains(agent_only), "{agent_only} in: {help}");
        }
        assert!(help.contains("--socket") && help.contains("--agent-timeout"));

        // list_workflows: live runs, and the filters.
        let live = answer(
            "list_workflows",
            call(&client, "list_workflows", json!({})).await,
        );
        let ids = run_ids(&live);
        assert!(
            ids.contains(&run.id.as_str()) && ids.contains(&other.id.as_str()),
            "{ids:?}"
        );
        let by_workflow = answer(
            "list_workflows",
            call(&client, "list_workflows", json!({"workflow": "mcp-test"})).await,
        );
        assert_eq!(run_ids(&by_workflow), [run.id.as_str()]);
        let killed = answer(
            "list_workflows",
            call(&client, "list_workflows", json!({"status": "killed"})).await,
        );
        assert!(run_ids(&killed).is_empty(), "{killed:#}");
        let stuck = answer("list_stuck", call(&client, "list_stuck", json!({})).await);
        assert!(run_ids(&stuck).is_empty(), "{stuck:#}");

        // get_workflow: the live run in detail.
        let got = answer(
            "get_workflow",
            call(&client, "get_workflow", json!({"run_id": run.id})).await,
        );
        assert_eq!(got["run_id"], run.id);
        assert_eq!(got["workflow"], "mcp-test");
        assert!(
            ["initializing", "running"].contains(&got["status"].as_str().unwrap()),
            "{got:#}"
        );
        assert!(got["processes"].as_u64().unwrap() >= 3, "{got:#}");
        for field in [
            "sections",
            "last_heartbeat",
            "init_deadline",
            "total_deadline",
        ] {
            assert!(got.get(field).is_some(), "no {field}: {got:#}");
        }

        // kill_workflow: the kill result, and nothing of the run is left.
        let reason = "stuck, says the MCP test";
        let result = answer(
            "kill_workflow",
            call(
                &client,
                "kill_workflow",
                json!({"run_id": run.id, "reason": reason}),
            )
            .await,
        );
        assert_eq!(result["success"], true, "{result:#}");
        assert_eq!(result["run_id"], run.id);
        assert!(result["killed_at"].is_string(), "{result:#}");
        assert!(result["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
        assert_eq!(result["cleanup_status"]["cgroup_removed"], true);
        assert_eq!(result["reason"], reason);
        assert_eq!(result["mode"], "graceful");
        assert_eq!(agent.status(&run.id)["status"], "killed");
        assert!(
            util::pids_with_env("WFCG_RUN_ID", &run.id).is_empty(),
            "processes of the run remain: {}",
            util::describe(&util::pids_with_env("WFCG_RUN_ID", &run.id))
        );
        agent.assert_run_gone(&run);
        let after = answer(
            "get_workflow",
            call(&client, "get_workflow", json!({"run_id": run.id})).await,
        );
        assert_eq!(after["status"], "killed");
        let killed = answer(
            "list_workflows",
            call(&client, "list_workflows", json!({"status": "killed"})).await,
        );
        assert_eq!(run_ids(&killed), [run.id.as_str()]);
        // The other run was not touched.
        assert_eq!(
            run_ids(&answer(
                "list_workflows",
                call(&client, "list_workflows", json!({})).await
            )),
            [other.id.as_str()]
        );

        // audit_log: the kill is on the record, with its reason.
        let audit = answer(
            "audit_log",
            call(&client, "audit_log", json!({"run_id": run.id, "limit": 10})).await,
        );
        let records = audit["records"].as_array().expect("records");
        assert!(records.iter().all(|r| r["run_id"] == run.id), "{audit:#}");
        assert!(
            records
                .iter()
                .any(|r| r["action"] == "kill" && r["reason"] == reason),
            "{audit:#}"
        );

        // Errors are tool errors with the CLI's message.
        let missing = "run_000000000000";
        for tool in ["get_workflow", "kill_workflow"] {
            let err = call(&client, tool, json!({"run_id": missing})).await;
            assert_eq!(err.is_error, Some(true), "{tool}: {}", text(&err));
            assert_eq!(text(&err), format!("no such run: {missing}"), "{tool}");
            assert_eq!(err.structured_content.unwrap()["kind"], "not_found");
        }
        let cli = agent.cli(&["status", missing]);
        assert_eq!(
            String::from_utf8_lossy(&cli.stderr).trim(),
            format!("wfcg: no such run: {missing}"),
            "the CLI says something else"
        );
        let bad = call(&client, "kill_workflow", json!({"run_id": "../etc"})).await;
        assert_eq!(bad.is_error, Some(true));
        let cli = agent.cli(&["kill", "../etc"]);
        assert_eq!(
            format!("wfcg: {}", text(&bad)),
            String::from_utf8_lossy(&cli.stderr).trim()
        );

        client.cancel().await.expect("closing the client");
    });
}

#[test]
fn mcp_python_client_kills_a_live_run() {
    require_privileges!();
    let Some(python) = util::python() else {
        return;
    };
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "sleep 1000 & setsid sleep 1001 & wait");
    assert!(agent.wait_procs(&run.id, 4), "the run did not start");

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    let out_path = agent.dir.path().join("mcp_client.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let child = std::process::Command::new(&python)
        .arg(&script)
        .args(["--wfcg", util::WFCG, "--reason", "python says stop"])
        .arg(&run.id)
        .envs(agent.env())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} (WFCG_PYTHON): {e}", python.display()));
    let mut child = util::KillOnDrop(child);
    let status = child.wait_timeout(Duration::from_secs(90));
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "{} tests/mcp_client.py {}: {status:?}\n{output}",
        python.display(),
        run.id
    );
    assert!(
        output.contains("after: ") && output.ends_with("ok\n"),
        "{output}"
    );
    eprintln!("tests/mcp_client.py said:\n{output}");

    // Checked here too, independently of the Python side.
    let st = agent.status(&run.id);
    assert_eq!(st["status"], "killed", "{st:#}");
    assert_eq!(st["kill_result"]["reason"], "python says stop", "{st:#}");
    assert!(util::pids_with_env("WFCG_RUN_ID", &run.id).is_empty());
    agent.assert_run_gone(&run);
}

#[test]
fn mcp_adopt_workflow_lists_then_kills_a_tree_started_outside_wfcg() {
    require_privileges!();
    let agent = TestAgent::start();
    let marker = util::marker("mcp-adopt");
    // Without the markers executors set (a CI job sets them on every process
    // of this test's cgroup, which the adoption would take as escapees).
    let mut cmd = std::process::Command::new("sh");
    for key in wfcg::adopt::DEFAULT_MARKERS {
        cmd.env_remove(key);
    }
    let mut tree = util::KillOnDrop(
        cmd.args(["-c", "sleep 1090 & sleep 1091 & wait"])
            .env(util::TEST_MARK, &marker)
            .spawn()
            .unwrap(),
    );
    assert!(util::wait_until(Duration::from_secs(10), || {
        util::pids_with_env(util::TEST_MARK, &marker).len() == 3
    }));
    runtime().block_on(async {
        let client = connect(&agent).await;
        let pid = tree.id();
        let listed = answer(
            "adopt_workflow",
            call(
                &client,
                "adopt_workflow",
                json!({"pid": pid, "dry_run": true}),
            )
            .await,
        );
        assert_eq!(listed["dry_run"], true);
        assert_eq!(listed["members"].as_array().unwrap().len(), 3, "{listed:#}");
        assert_eq!(listed["members"][0]["reason"], "root");

        let done = answer(
            "adopt_workflow",
            call(
                &client,
                "adopt_workflow",
                json!({"pid": pid, "run_id": "run_0dcbc991c0d4", "kill": true,
                       "force": true, "reason": "stuck two days"}),
            )
            .await,
        );
        assert_eq!(done["run_id"], "run_0dcbc991c0d4");
        assert_eq!(done["kill"]["success"], true, "{done:#}");
        assert_eq!(done["kill"]["mode"], "force");

        let bad = call(&client, "adopt_workflow", json!({"pid": 1})).await;
        assert_eq!(bad.is_error, Some(true));
        assert!(
            text(&bad).contains("pid 1 is the init process"),
            "{}",
            text(&bad)
        );
        client.cancel().await.unwrap();
    });
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(util::pids_with_env(util::TEST_MARK, &marker).is_empty());
    assert_eq!(agent.status("run_0dcbc991c0d4")["status"], "killed");
}

#[test]
fn mcp_kill_workflow_kills_with_mode_force_and_refuses_an_unknown_field() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&["--template", util::DEFAULT_TEMPLATE], "sleep 1000");
    assert!(agent.wait_procs(&run.id, 2), "the run did not start");
    runtime().block_on(async {
        let client = connect(&agent).await;
        // The schema offers `mode` with its three names, beside the old `force`.
        let tools: Vec<Tool> = client.list_all_tools().await.expect("tools/list");
        for name in ["kill_workflow", "adopt_workflow"] {
            let tool = tools.iter().find(|t| t.name == name).unwrap();
            let schema = Value::Object((*tool.input_schema).clone());
            assert!(schema["properties"].get("force").is_some(), "{schema:#}");
            let mode = serde_json::to_string(&schema).unwrap();
            for m in ["graceful", "force", "emergency"] {
                assert!(mode.contains(&format!("\"{m}\"")), "{name}: {m}: {mode}");
            }
        }

        // An unknown field is refused, and nothing is killed.
        let Value::Object(args) = json!({"run_id": run.id, "mode": "force", "forcefully": true})
        else {
            unreachable!()
        };
        let refused = client
            .call_tool(CallToolRequestParams::new("kill_workflow").with_arguments(args))
            .await;
        match refused {
            Err(e) => assert!(e.to_string().contains("forcefully"), "{e}"),
            Ok(r) => {
                assert_eq!(r.is_error, Some(true), "{}", text(&r));
                assert!(text(&r).contains("forcefully"), "{}", text(&r));
            }
        }
        let status = agent.status(&run.id)["status"].clone();
        assert!(
            status == "initializing" || status == "running",
            "the run is {status} after a refused kill"
        );

        let result = answer(
            "kill_workflow",
            call(
                &client,
                "kill_workflow",
                json!({"run_id": run.id, "mode": "force", "reason": "mode force over MCP"}),
            )
            .await,
        );
        assert_eq!(result["success"], true, "{result:#}");
        assert_eq!(result["mode"], "force", "{result:#}");
        assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
        client.cancel().await.expect("closing the client");
    });
    assert_eq!(agent.status(&run.id)["status"], "killed");
    agent.assert_run_gone(&run);
    let audit = agent.cli(&["audit", "--run", &run.id, "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(
        audit.contains("\"mode\":\"force\"") || audit.contains("\"mode\": \"force\""),
        "{audit}"
    );
}
