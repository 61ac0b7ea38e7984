//! wfcg: makes every workflow run on a Linux host killable — atomically, safely
//! and on the record.
//!
//! `wfcg run -- CMD` starts a workflow in its own cgroup v2, tracked by a root
//! agent (`wfcg agent`) in a SQLite store; `wfcg kill RUN` ends the whole tree
//! with `cgroup.kill` and verifies nothing is left.
//!
//! Modules, from the edges in: [`cli`] (the command line) → [`client`] → [`api`]
//! (wire types); [`agent`] → [`kill`] → the leaves [`cgroup`], [`procfs`],
//! [`store`], which know nothing of the agent.

pub mod adopt;
pub mod agent;
pub mod alerts;
pub mod api;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod diagnostics;
pub mod duration;
pub mod exit;
pub mod gitlocks;
pub mod kill;
pub mod mcp;
pub mod output;
pub mod par;
pub mod policy;
pub mod procfs;
pub mod run;
pub mod sections;
pub mod store;
pub mod template;
pub mod tmpfs;
pub mod top;
pub mod userfs;
pub mod users;
