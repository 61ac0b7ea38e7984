//! wfcg: makes every workflow run on a Linux host killable — atomically, safely
//! and on the record.
//!
//! `wfcg run -- CMD` starts a workflow in its own cgroup v2, tracked by a root
//! agent (`wfcg agent`) in a SQLite store; `wfcg kill RUN` ends the whole tree
//! with `cgroup.kill` and verifies nothing is left.
//!
//! Modules, from the edges in: the clients [`cli`] (the command line), `top`,
//! `run` (the supervisor) and `mcp` → [`client`] → [`api`] (wire types and
//! the constants both sides share); they never import [`agent`] or `store`,
//! except `cli::agent`, which starts the agent. [`agent`] → `kill` → the leaves
//! [`cgroup`], [`procfs`], `store`, `alerts`, `diagnostics`, `sdnotify`, [`bounds`],
//! which know nothing of the agent. The layers are a table in `src/layers.rs`,
//! checked by its test; the modules that nothing outside the crate uses (the
//! integration tests, the benchmarks, `main.rs`) are `pub(crate)`.
//!
//! All `unsafe` code is in `sys`, behind safe functions; everywhere else the
//! compiler refuses it.

#![deny(unsafe_code)]

pub mod adopt;
pub mod agent;
pub(crate) mod alerts;
pub mod api;
pub mod bounds;
pub mod cgroup;
pub mod cli;
pub mod client;
pub(crate) mod diagnostics;
pub mod duration;
pub mod exit;
pub mod gitlocks;
pub(crate) mod kill;
pub(crate) mod lockwatch;
pub(crate) mod mcp;
pub(crate) mod novelty;
pub mod output;
pub(crate) mod parallel;
pub mod policy;
pub mod procfs;
pub(crate) mod run;
pub(crate) mod sdnotify;
pub mod sections;
pub(crate) mod store;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod template;
pub(crate) mod tmpfs;
pub(crate) mod top;
pub(crate) mod userfs;
pub(crate) mod users;
pub mod walk;
pub(crate) mod workspace_check;

/// The layer table and its check (`use` trees of every module).
#[cfg(test)]
mod layers;
