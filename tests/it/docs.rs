//! The documentation against the code: every path the code map names exists,
//! every relative link (and its `#anchor`) resolves, the README stays a first
//! screen that links every document, and the exit codes documented are the
//! code's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::WFCG;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md, SECURITY.md and every docs/*.md.
fn documents() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    docs.push(root().join("README.md"));
    docs.push(root().join("SECURITY.md"));
    docs
}

/// The anchor GitHub gives a heading: lower case, spaces to `-`, punctuation dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a markdown text's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn docs_every_path_in_the_code_map_exists() {
    let map = read(&root().join("docs/architecture.md"));
    let mut fenced = false;
    let mut checked = 0;
    let mut missing = Vec::new();
    for line in map.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let Some(path) = line.split_whitespace().next().filter(|_| fenced) else {
            continue;
        };
        checked += 1;
        if !root().join(path).exists() {
            missing.push(path);
        }
    }
    assert!(checked > 50, "only {checked} paths in the code map");
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
}

#[test]
fn docs_relative_links_and_their_anchors_resolve() {
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = read(&doc);
        let dir = doc.parent().unwrap();
        for m in link.captures_iter(&text) {
            let target = &m[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = target.split_once('#').unwrap_or((target, ""));
            let path = if file.is_empty() {
                doc.clone()
            } else {
                dir.join(file)
            };
            let name = doc.strip_prefix(root()).unwrap().display().to_string();
            if !path.exists() {
                broken.push(format!("{name}: {target}: no such file"));
            } else if !anchor.is_empty() && !anchors(&read(&path)).contains(anchor) {
                broken.push(format!("{name}: {target}: no such heading"));
            }
        }
    }
    assert!(checked > 40, "only {checked} links");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn docs_the_readme_is_a_first_screen_that_links_every_document() {
    let readme = read(&root().join("README.md"));
    let lines = readme.lines().count();
    assert!(lines < 300, "README.md has {lines} lines");
    // The default readiness, on the first screen (its first 60 lines would do;
    // the section must at least come before the documentation's list).
    let ready = readme
        .find("Ready, by default, means READY=1 (sd_notify) or its first byte of output")
        .expect("the default readiness");
    assert!(
        ready
            < readme
                .find("## Documentation")
                .expect("a Documentation section")
    );
    for doc in documents() {
        let name = doc.strip_prefix(root()).unwrap().display().to_string();
        if name != "README.md" {
            assert!(
                readme.contains(&format!("]({name})")),
                "README.md does not link {name}"
            );
        }
    }
}

#[test]
fn docs_exit_codes_are_the_codes_of_the_program() {
    use wfcg::exit::*;
    let codes = [
        OK,
        FAILED,
        USAGE,
        NO_SUCH_RUN,
        NOT_PERMITTED,
        UNREACHABLE,
        BREAKER_OPEN,
        NO_SPACE,
    ];
    let cli = read(&root().join("docs/cli.md"));
    let table = cli
        .split("## Exit codes")
        .nth(1)
        .expect("an Exit codes section")
        .split("\n## ")
        .next()
        .unwrap();
    let documented: BTreeSet<i32> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        documented,
        BTreeSet::from(codes),
        "docs/cli.md's exit codes"
    );
    let help = Command::new(WFCG).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let listed: BTreeSet<i32> = help
        .split("Exit codes:\n")
        .nth(1)
        .expect("exit codes in --help")
        .lines()
        .filter_map(|l| l.trim_start().split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(codes),
        "wfcg --help's exit codes:\n{help}"
    );
}

/// docs/cli.md's exit-code table is `src/exit.rs`'s, row for row and word for
/// word; the README's one-line summary names the same codes.
#[test]
fn docs_exit_code_table_is_the_one_in_the_code() {
    let cli = read(&root().join("docs/cli.md"));
    let section = cli
        .split("## Exit codes")
        .nth(1)
        .expect("an Exit codes section")
        .split("\n## ")
        .next()
        .unwrap();
    let table: String = section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        table,
        wfcg::exit::markdown(),
        "docs/cli.md's exit codes differ from src/exit.rs's TABLE"
    );
    let readme = read(&root().join("README.md"));
    let summary = readme
        .split("the exit codes (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the README's summary of the exit codes");
    let named: Vec<i32> = summary
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    let codes: Vec<i32> = wfcg::exit::TABLE.iter().map(|c| c.code).collect();
    assert_eq!(named, codes, "the README's exit codes: {summary}");
}
