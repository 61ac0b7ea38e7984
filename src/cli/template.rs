//! `wfcg templates` and `wfcg template check|show`: list, validate and show run
//! templates. Local commands: they read the template files, not the agent.

use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use crate::exit::{self, Failure};
use crate::output::{self, outln};
use crate::template::Template;

/// List the run templates (`wfcg run --workflow NAME`): the shipped ones and
/// those in /etc/wfcg/templates, with where each comes from and its timeouts.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Validate or show run templates.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Validate template files: every unknown key, bad value and syntax error, as
    /// FILE:LINE: message on stderr (exit 2), or "FILE: ok" (exit 0). A template
    /// may be partial: what it leaves out comes from the built-in default.
    Check {
        /// The template files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// Print a template as runs get it, merged over the default: by name
    /// (/etc/wfcg/templates, then the shipped ones), or a FILE (a path with a '/'
    /// or ending in .toml).
    Show {
        /// A template name or file.
        #[arg(value_name = "NAME|FILE")]
        template: String,
        /// Print JSON (as the agent stores it with each run) instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

/// One row of `wfcg templates --json`.
#[derive(Serialize)]
struct Row {
    name: String,
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<Template>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

fn fmt_duration(d: std::time::Duration, zero: &str) -> String {
    if d.is_zero() {
        zero.to_string()
    } else {
        crate::duration::format(d)
    }
}

fn limits(t: &Template) -> String {
    if t.limits.is_empty() {
        return "-".into();
    }
    t.limits
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `wfcg templates`: exit 0, or 1 when a template is broken.
pub fn list(_cli: &super::Cli, args: &ListArgs) -> Result<i32, Failure> {
    let rows: Vec<Row> = Template::list()
        .into_iter()
        .map(|(name, source)| {
            let (template, error) = match Template::lookup(&name) {
                Ok(t) => (Some(t), None),
                Err(e) => (None, Some(e.to_string())),
            };
            Row {
                name,
                source,
                template,
                error,
            }
        })
        .collect();
    let broken = rows.iter().any(|r| r.error.is_some());
    if args.json {
        output::json(&rows)?;
    } else {
        let width =
            |f: fn(&Row) -> usize, min: usize| rows.iter().map(f).max().unwrap_or(0).max(min);
        let wn = width(|r| r.name.len(), 4);
        let ws = width(|r| r.source.len(), 6);
        outln!(
            "{:wn$}  {:ws$}  {:>6}  {:>6}  {:>8}  LIMITS",
            "NAME",
            "SOURCE",
            "INIT",
            "TOTAL",
            "WATCHDOG"
        )?;
        for r in &rows {
            match &r.template {
                Some(t) => outln!(
                    "{:wn$}  {:ws$}  {:>6}  {:>6}  {:>8}  {}",
                    r.name,
                    r.source,
                    fmt_duration(t.timeouts.init, "none"),
                    fmt_duration(t.timeouts.total, "none"),
                    fmt_duration(t.timeouts.watchdog, "off"),
                    limits(t)
                )?,
                None => outln!("{:wn$}  {:ws$}  BROKEN", r.name, r.source)?,
            }
        }
        for r in &rows {
            if let Some(e) = &r.error {
                crate::output::errln!("{e}");
            }
        }
    }
    Ok(if broken { exit::FAILED } else { exit::OK })
}

/// `wfcg template check|show`.
pub fn run(_cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    match &args.what {
        What::Check { files } => check(files),
        What::Show { template, json } => show(template, *json),
    }
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))
}

fn check(files: &[std::path::PathBuf]) -> Result<i32, Failure> {
    let mut bad = false;
    for file in files {
        let name = file.display().to_string();
        let text = match read(file) {
            Ok(t) => t,
            Err(f) => {
                crate::output::errln!("{}", f.message);
                bad = true;
                continue;
            }
        };
        match Template::check(&text, &name) {
            Ok(t) => outln!(
                "{name}: ok (init {}, total {}, watchdog {}, limits {})",
                fmt_duration(t.timeouts.init, "none"),
                fmt_duration(t.timeouts.total, "none"),
                fmt_duration(t.timeouts.watchdog, "off"),
                limits(&t)
            )?,
            Err(e) => {
                bad = true;
                for p in e.lines() {
                    crate::output::errln!("{p}");
                }
            }
        }
    }
    Ok(if bad { exit::USAGE } else { exit::OK })
}

fn show(template: &str, json: bool) -> Result<i32, Failure> {
    let is_file = template.contains('/') || template.ends_with(".toml");
    let t = if is_file {
        let path = Path::new(template);
        Template::parse(&read(path)?, template)
    } else {
        Template::lookup(template)
    }
    .map_err(|e| Failure::usage(e.to_string()))?;
    let text = if json {
        serde_json::to_string_pretty(&t).map_err(|e| e.to_string())
    } else {
        toml::to_string(&t).map_err(|e| e.to_string())
    }
    .map_err(|e| Failure::new(exit::FAILED, e))?;
    output::line(text.trim_end())?;
    Ok(exit::OK)
}
