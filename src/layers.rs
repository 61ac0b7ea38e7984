//! The layers of the crate, checked by a test: every module of `src/` has a
//! place in [`LAYERS`], and every reference a file makes to another module
//! (`use crate::…` trees, `crate::x::…` paths in code, `wfcg::x` in the binary)
//! goes to a module of its own layer or of a layer its layer may use. A
//! violation fails the test with its file and line.
//!
//! From the bottom: `sys` (all the unsafe code) → values → the wire types →
//! the host's facilities (cgroupfs, procfs, files as a user, git locks, …) →
//! the templates (configuration) → the domain (policy, the kill sequence,
//! adoption) and the store (which reads a run's template as one) →
//! the clients (command line, client, MCP, top, the supervisor) beside the
//! agent → the entry points (`main.rs`, `cli/agent.rs`, which starts the agent).

use std::path::{Path, PathBuf};

/// One layer: its modules (a top-level module of `src/`, or one file of it that
/// stands apart, such as `cli/agent.rs`) and the layers below it they may use.
struct Layer {
    name: &'static str,
    may_use: &'static [&'static str],
    modules: &'static [&'static str],
}

const LAYERS: &[Layer] = &[
    Layer {
        name: "sys",
        may_use: &[],
        modules: &["sys"],
    },
    Layer {
        name: "values",
        may_use: &["sys"],
        modules: &["bounds", "duration", "parallel", "novelty", "diagnostics"],
    },
    Layer {
        name: "wire",
        may_use: &["values", "sys"],
        modules: &["api"],
    },
    Layer {
        name: "host",
        may_use: &["wire", "values", "sys"],
        modules: &[
            "users",
            "userfs",
            "tmpfs",
            "procfs",
            "cgroup",
            "gitlocks",
            "sections",
            "sdnotify",
            "walk",
            "workspace_check",
            "lockwatch",
            "alerts",
        ],
    },
    // The templates: configuration, which the store reads a run's with (a
    // bad one is an error, never a default) and the domain acts on.
    Layer {
        name: "config",
        may_use: &["host", "wire", "values", "sys"],
        modules: &["template"],
    },
    Layer {
        name: "store",
        may_use: &["config", "wire", "values", "sys"],
        modules: &["store"],
    },
    Layer {
        name: "domain",
        may_use: &["config", "host", "wire", "values", "sys"],
        modules: &["policy", "kill", "adopt"],
    },
    Layer {
        name: "clients",
        may_use: &["domain", "config", "host", "wire", "values", "sys"],
        modules: &["client", "exit", "output", "mcp", "top", "run", "cli"],
    },
    Layer {
        name: "agent",
        may_use: &["store", "domain", "config", "host", "wire", "values", "sys"],
        modules: &["agent"],
    },
    Layer {
        name: "entry",
        may_use: &[
            "agent", "clients", "store", "domain", "config", "host", "wire", "values", "sys",
        ],
        // `layers` is this check (it uses nothing).
        modules: &["main.rs", "lib.rs", "cli/agent.rs", "layers"],
    },
];

/// The layer of a file of `src/` (by its path from `src/`): the entry naming
/// that very file, else the one naming its top-level module.
fn layer_of_file(file: &str) -> Option<&'static Layer> {
    let top = top_module(file);
    LAYERS
        .iter()
        .find(|l| l.modules.contains(&file))
        .or_else(|| LAYERS.iter().find(|l| l.modules.contains(&top)))
}

/// The layer of a top-level module.
fn layer_of_module(module: &str) -> Option<&'static Layer> {
    LAYERS.iter().find(|l| l.modules.contains(&module))
}

/// `cgroup/mod.rs` → `cgroup`, `users.rs` → `users`, `main.rs` → `main.rs`.
fn top_module(file: &str) -> &str {
    match file.split_once('/') {
        Some((dir, _)) => dir,
        None if file == "main.rs" || file == "lib.rs" => file,
        None => file.strip_suffix(".rs").unwrap_or(file),
    }
}

/// The text of `src` with comments, strings and character literals blanked
/// (newlines kept, so offsets keep their line).
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied().unwrap_or(0);
        if c == b'/' && next == b'/' {
            while i < b.len() && b[i] != b'\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'/' && next == b'*' {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == b'r' || (c == b'b' && next == b'r')) && (i == 0 || !ident(b[i - 1])) && {
            let start = if c == b'b' { i + 2 } else { i + 1 };
            let hashes = b[start..].iter().take_while(|&&h| h == b'#').count();
            b.get(start + hashes) == Some(&b'"')
        } {
            // A raw string: r"…", r#"…"#, br"…".
            let start = if c == b'b' { i + 2 } else { i + 1 };
            let hashes = b[start..].iter().take_while(|&&h| h == b'#').count();
            let mut end = vec![b'"'];
            end.extend(std::iter::repeat_n(b'#', hashes));
            let body = start + hashes + 1;
            let close = b[body..]
                .windows(end.len())
                .position(|w| w == end.as_slice())
                .map_or(b.len(), |p| body + p + end.len());
            for &x in &b[i..close] {
                blank(&mut out, x);
            }
            i = close;
        } else if c == b'"' {
            blank(&mut out, c);
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            if i < b.len() {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime (kept).
            let close = if next == b'\\' {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else {
                let len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
            };
            match close {
                Some(close) => {
                    for &x in &b[i..=close] {
                        blank(&mut out, x);
                    }
                    i = close + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The top-level modules `code` names through `root::` (`crate` or `wfcg`), each
/// with the line it is named on: `root::x…` and every first name of a group,
/// `root::{x::…, y, z::{…}}`.
fn references(code: &str, root: &str) -> Vec<(String, usize)> {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let line_at = |at: usize| code[..at].matches('\n').count() + 1;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let word = |i: usize| {
        let end = i + b[i..].iter().take_while(|&&c| ident(c)).count();
        &code[i..end]
    };
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(p) = code[from..].find(root) {
        let at = from + p;
        from = at + root.len();
        if (at > 0 && ident(b[at - 1])) || b.get(from).is_some_and(|&c| ident(c)) {
            continue;
        }
        let i = skip_ws(from);
        if !code[i..].starts_with("::") {
            continue;
        }
        let i = skip_ws(i + 2);
        if b.get(i) == Some(&b'{') {
            // The first name of each item of the group, at its top depth.
            let mut depth = 0;
            let mut j = i;
            let mut expect_name = true;
            while j < b.len() {
                match b[j] {
                    b'{' => {
                        depth += 1;
                        if depth == 1 {
                            expect_name = true;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => expect_name = true,
                    c if ident(c) && expect_name && depth == 1 => {
                        let w = word(j);
                        found.push((w.to_string(), line_at(j)));
                        expect_name = false;
                        j += w.len();
                        continue;
                    }
                    c if !c.is_ascii_whitespace() && depth == 1 => expect_name = false,
                    _ => {}
                }
                j += 1;
            }
        } else if b.get(i).is_some_and(|&c| ident(c)) {
            found.push((word(i).to_string(), line_at(i)));
        }
    }
    found
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file below `dir`, at any depth: for the tests that read the
/// sources (these, the agent's layering, the API's routes).
pub(crate) fn rs_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rs_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Every `.rs` file under `src/`, by its path from `src/`.
fn source_files() -> Vec<String> {
    let src = src_dir();
    let files = rs_files(&src);
    let mut names: Vec<String> = files
        .iter()
        .map(|p| p.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    names.sort();
    names
}

/// Every module of `src/` has a layer, and every module a layer names exists.
#[test]
fn every_module_has_a_layer() {
    let files = source_files();
    let mut wrong: Vec<String> = files
        .iter()
        .filter(|f| layer_of_file(f).is_none())
        .map(|f| format!("src/{f}: module {} is in no layer", top_module(f)))
        .collect();
    for layer in LAYERS {
        for m in layer.modules {
            if !files.iter().any(|f| f == m || top_module(f) == *m) {
                wrong.push(format!("layer {}: no module {m} in src/", layer.name));
            }
        }
        for used in layer.may_use {
            if !LAYERS.iter().any(|l| l.name == *used) {
                wrong.push(format!(
                    "layer {}: may use an unknown layer {used}",
                    layer.name
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Every reference from one module to another goes down the layers (or stays
/// in its own layer): the leaves know nothing of the agent or the clients, the
/// clients nothing of the agent or the store, the wire types nothing of either.
#[test]
fn references_go_down_the_layers() {
    let mut wrong = Vec::new();
    let mut checked = 0;
    for file in source_files() {
        let from = layer_of_file(&file).expect("every_module_has_a_layer");
        let text = std::fs::read_to_string(src_dir().join(&file)).unwrap();
        let code = code_only(&text);
        let root = if file == "main.rs" { "wfcg" } else { "crate" };
        for (module, line) in references(&code, root) {
            checked += 1;
            // This module is compiled for tests only; other tests that read
            // the sources use its `rs_files`.
            if module == top_module(&file) || module == "layers" {
                continue;
            }
            match layer_of_module(&module) {
                None => wrong.push(format!("src/{file}:{line}: {module} is in no layer")),
                Some(to) if to.name == from.name || from.may_use.contains(&to.name) => {}
                Some(to) => wrong.push(format!(
                    "src/{file}:{line}: {module} (layer {}) is not below layer {}",
                    to.name, from.name
                )),
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} references found: is the parser broken?"
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// What counts as a reference, and what does not (comments, strings, `pub(crate)`).
#[test]
fn references_are_read_from_code_only() {
    let src = r##"
        use crate::{api::{A, B}, cgroup,
            procfs::pidfd_open};
        use crate::sys;
        pub(crate) fn f() { crate::kill::run(); let _ = $crate::output::line; }
        // crate::agent in a comment
        /* crate::store /* nested */ crate::cli */
        const S: &str = "crate::top";
        const R: &str = r#"crate::mcp "quoted""#;
        fn g<'a>(x: &'a str) -> char { let _ = '"'; 'c' }
        fn h() { crate :: template::x(); }
    "##;
    let code = code_only(src);
    let mut got: Vec<(String, usize)> = references(&code, "crate");
    got.sort();
    let want: Vec<(String, usize)> = [
        ("api", 2),
        ("cgroup", 2),
        ("kill", 5),
        ("output", 5),
        ("procfs", 3),
        ("sys", 4),
        ("template", 11),
    ]
    .iter()
    .map(|(m, l)| (m.to_string(), *l))
    .collect();
    assert_eq!(got, want);
}

/// A module is `pub` only if something outside the library uses it (the
/// binary, the integration tests, the benchmarks); the others are `pub(crate)`.
#[test]
fn a_module_is_pub_only_if_used_outside_the_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut outside = vec![src_dir().join("main.rs")];
    outside.extend(rs_files(&root.join("tests")));
    outside.extend(rs_files(&root.join("benches")));
    let mut used = std::collections::BTreeSet::new();
    for file in &outside {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        used.extend(references(&code, "wfcg").into_iter().map(|(m, _)| m));
    }
    let lib = std::fs::read_to_string(src_dir().join("lib.rs")).unwrap();
    let mut wrong = Vec::new();
    for (n, line) in lib.lines().enumerate() {
        let line = line.trim();
        if let Some(m) = line
            .strip_prefix("pub mod ")
            .and_then(|m| m.strip_suffix(';'))
            && !used.contains(m)
        {
            wrong.push(format!(
                "src/lib.rs:{}: pub mod {m}, which only the crate uses",
                n + 1
            ));
        }
        if let Some(m) = line
            .strip_prefix("pub(crate) mod ")
            .and_then(|m| m.strip_suffix(';'))
            && used.contains(m)
        {
            wrong.push(format!(
                "src/lib.rs:{}: pub(crate) mod {m}, used outside",
                n + 1
            ));
        }
    }
    assert!(
        used.len() > 10,
        "only {used:?} used outside: is the parser broken?"
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// No `unsafe` outside `src/sys/` (the crate root denies it; this also catches
/// an `allow` slipped in elsewhere), and `mod sys` alone is allowed it.
#[test]
fn unsafe_code_is_only_in_sys() {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut wrong = Vec::new();
    for file in source_files() {
        if file.starts_with("sys/") {
            continue;
        }
        let code = code_only(&std::fs::read_to_string(src_dir().join(&file)).unwrap());
        let b = code.as_bytes();
        let line = |at: usize| code[..at].matches('\n').count() + 1;
        for (at, _) in code.match_indices("unsafe") {
            let end = at + "unsafe".len();
            if (at == 0 || !ident(b[at - 1])) && b.get(end).is_none_or(|&c| !ident(c)) {
                wrong.push(format!("src/{file}:{}: unsafe outside src/sys/", line(at)));
            }
        }
        for (at, _) in code.match_indices("allow(unsafe_code)]") {
            let next = code[at..].lines().nth(1).unwrap_or("").trim();
            if !(file == "lib.rs" && next == "pub(crate) mod sys;") {
                wrong.push(format!(
                    "src/{file}:{}: unsafe_code allowed outside sys",
                    line(at)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
