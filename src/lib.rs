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
pub mod template;
pub mod tmpfs;
pub mod top;
pub mod userfs;
pub mod users;
pub mod walk;
pub mod workspace_check;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every `.rs` file under `src/` whose path starts with one of `prefixes`,
    /// with its text.
    fn sources(prefixes: &[&str]) -> Vec<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        files
            .into_iter()
            .map(|p| (p.strip_prefix(&src).unwrap().display().to_string(), p))
            .filter(|(name, _)| prefixes.iter().any(|pre| name.starts_with(pre)))
            .map(|(name, p)| (name, std::fs::read_to_string(p).unwrap()))
            .collect()
    }

    #[test]
    fn the_clients_and_the_leaves_import_only_downwards() {
        let rules: &[(&[&str], &[&str])] = &[
            (
                &["cli/", "top/", "run/", "mcp.rs", "client.rs"],
                &["crate::agent", "crate::store"],
            ),
            (
                &["alerts/", "diagnostics.rs", "sdnotify.rs"],
                &["crate::agent", "crate::template", "crate::policy"],
            ),
            // The store reads a run's template as its type (a bad one is a
            // BadColumn, never a default); templates are configuration that
            // knows nothing of the store, so the arrow still points down.
            (&["store/"], &["crate::agent", "crate::policy"]),
            (&["template/"], &["crate::agent", "crate::store"]),
        ];
        let mut wrong = Vec::new();
        for (files, banned) in rules {
            for (name, text) in sources(files) {
                // `wfcg agent` and `wfcg hold` are the agent's own entry points.
                if name == "cli/agent.rs" {
                    continue;
                }
                for b in *banned {
                    if text.contains(b) {
                        wrong.push(format!("{name} uses {b}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
