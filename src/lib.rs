//! wfcg: makes every workflow run on a Linux host killable — atomically, safely
//! and on the record.
//!
//! `wfcg run -- CMD` starts a workflow in its own cgroup v2, tracked by a root
//! agent (`wfcg agent`) in a SQLite store; `wfcg kill RUN` ends the whole tree
//! with `cgroup.kill` and verifies nothing is left.
//!
//! Modules, from the edges in: the clients [`cli`] (the command line), [`top`],
//! [`run`] (the supervisor) and [`mcp`] → [`client`] → [`api`] (wire types and
//! the constants both sides share); they never import [`agent`] or [`store`],
//! except `cli::agent`, which starts the agent. [`agent`] → [`kill`] → the leaves
//! [`cgroup`], [`procfs`], [`store`], [`alerts`], [`diagnostics`], [`sdnotify`], [`bounds`],
//! which know nothing of the agent.
//!
//! All `unsafe` code is in `sys`, behind safe functions; everywhere else the
//! compiler refuses it.

#![deny(unsafe_code)]

pub mod adopt;
pub mod agent;
pub mod alerts;
pub mod api;
pub mod bounds;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod diagnostics;
pub mod duration;
pub mod exit;
pub mod gitlocks;
pub mod kill;
pub mod lockwatch;
pub mod mcp;
pub mod novelty;
pub mod output;
pub mod par;
pub mod policy;
pub mod procfs;
pub mod run;
pub mod sdnotify;
pub mod sections;
pub mod store;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod template;
pub mod tmpfs;
pub mod top;
pub mod userfs;
pub mod users;
pub mod walk;
pub mod workspace_check;

/// The layer table and its check (`use` trees of every module).
#[cfg(test)]
mod layers;
