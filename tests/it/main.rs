//! Integration tests: the real `wfcg` binary against a real agent, on the real
//! kernel's cgroup2, as root. Each test has an agent of its own (see `util`).

#![allow(clippy::print_stdout, clippy::print_stderr)] // tests print what they saw

mod util;

mod adopt;
mod adopt_whole;
mod agent;
mod agent_clis;
mod agent_control;
mod attack_regressions;
mod audit_chain;
mod availability;
mod availability_faults;
mod deadline;
mod deploy;
mod docs;
mod fuzz;
mod git_locks;
mod hard_kills;
mod kill;
mod kill_edges;
mod lease;
mod lifecycle;
mod listing;
mod logs;
mod mcp;
mod metrics;
mod newcomer;
mod output;
mod passed_fds;
mod policy;
mod python;
mod run;
mod safety;
mod schema;
mod sections;
mod security;
mod stuck;
mod supervisor;
mod templates;
mod temporal;
mod top;
mod trust_bounds;
mod trust_budgets;
mod trust_identity;
mod trust_markers;
mod trust_nesting;
mod trust_output;
mod trust_walks;
