//! `wfcg install-service` and `wfcg generate`: installing wfcg on a host.
//!
//! `install-service` writes the systemd unit shipped in `deploy/wfcg.service`
//! (with this binary's path in `ExecStart=`), reloads systemd and enables and
//! starts the agent. `generate` prints the man page or a shell's completions,
//! made from the clap definitions, for packages.

use std::path::{Path, PathBuf};

use crate::exit::{self, Failure};
use crate::output::outln;

/// The unit file, as shipped.
pub const UNIT: &str = include_str!("../../deploy/wfcg.service");

/// Install the agent as a systemd service (wfcg.service: Delegate=yes, Type=notify,
/// runs survive restarts), then enable and start it. Needs root and systemd as
/// PID 1: without systemd it writes nothing and exits 1 (see --no-start). A
/// binary inside a cargo build tree (target/...) is refused: install it first.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Where the unit goes.
    #[arg(long, default_value = "/etc/systemd/system/wfcg.service")]
    pub unit: PathBuf,
    /// Write the unit only: no daemon-reload, enable or start (also where systemd
    /// is not running, e.g. in an image that will boot with it).
    #[arg(long)]
    pub no_start: bool,
}

/// The unit text with `exe` in ExecStart=.
pub fn unit_for(exe: &std::path::Path) -> String {
    UNIT.replace(
        "ExecStart=/usr/bin/wfcg agent",
        &format!("ExecStart={} agent", exe.display()),
    )
}

pub fn install_service(args: &InstallArgs) -> Result<i32, Failure> {
    let fail = |m: String| Failure::new(exit::FAILED, m);
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| fail(format!("cannot find the wfcg binary itself: {e}")))?;
    // Both checks come before anything is written.
    if let Some(tree) = build_tree(&exe) {
        return Err(fail(format!(
            "{} is inside a build tree ({}): a later build or `cargo clean` would change or \
             remove the service's binary under it. Nothing was written. Install the binary \
             first and run that one: `scripts/install` (as root), or \
             `install -m 0755 {} /usr/local/bin/wfcg && /usr/local/bin/wfcg install-service`",
            exe.display(),
            tree.display(),
            exe.display()
        )));
    }
    let systemd = Path::new(SYSTEMD_RUNNING).is_dir();
    if !systemd && !args.no_start {
        return Err(fail(format!(
            "systemd is not PID 1 on this host (no {SYSTEMD_RUNNING}): nothing was written. \
             Start the agent with `wfcg agent` as root (a root `wfcg run` also starts one in \
             the background), or write the unit only, for a host or image that boots with \
             systemd, with `wfcg install-service --no-start`"
        )));
    }
    if let Some(dir) = args.unit.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    std::fs::write(&args.unit, unit_for(&exe))
        .map_err(|e| fail(format!("cannot write {}: {e}", args.unit.display())))?;
    outln!(
        "wrote {} (ExecStart={} agent)",
        args.unit.display(),
        exe.display()
    )?;
    if args.no_start {
        return Ok(exit::OK);
    }
    for cmd in [
        &["daemon-reload"][..],
        &["enable", "--now", "wfcg.service"][..],
    ] {
        let status = std::process::Command::new("systemctl")
            .args(cmd)
            .status()
            .map_err(|e| fail(format!("cannot run systemctl: {e}")))?;
        if !status.success() {
            return Err(fail(format!(
                "systemctl {} failed ({status})",
                cmd.join(" ")
            )));
        }
    }
    outln!("wfcg.service is enabled and running (systemctl status wfcg)")?;
    Ok(exit::OK)
}

/// Exists when systemd is the init system (sd_booted(3)).
const SYSTEMD_RUNNING: &str = "/run/systemd/system";

/// The cargo target directory `exe` lies in, if any: a directory above it that
/// holds cargo's `CACHEDIR.TAG` or `.rustc_info.json`.
fn build_tree(exe: &Path) -> Option<PathBuf> {
    exe.ancestors()
        .skip(1)
        .find(|dir| {
            dir.join(".rustc_info.json").is_file()
                || std::fs::read_to_string(dir.join("CACHEDIR.TAG"))
                    .is_ok_and(|t| t.contains("cargo"))
        })
        .map(Path::to_path_buf)
}

/// What `wfcg generate` makes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum What {
    /// The man page wfcg(1), as roff (with --dir: every command's page).
    Man,
    /// bash completions.
    Bash,
    /// zsh completions.
    Zsh,
    /// fish completions.
    Fish,
}

/// Print the man page or shell completions (for packages).
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    pub what: What,
    /// With `man`: write every page (wfcg.1, and wfcg-run.1, wfcg-agent-status.1,
    /// ... for each command) into DIR, and print their paths.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The command line the man pages describe: without clap's `help` subcommand,
/// which has no page of its own.
fn for_pages() -> clap::Command {
    fn no_help(cmd: clap::Command) -> clap::Command {
        cmd.disable_help_subcommand(true).mut_subcommands(no_help)
    }
    let mut cmd = no_help(super::command());
    cmd.build();
    cmd
}

/// `cmd`'s man page, as roff; `parents` are the pages above it (wfcg(1), then
/// wfcg-audit(1), ...), named in its SEE ALSO.
fn man_page(cmd: &clap::Command, parents: &[String]) -> Result<Vec<u8>, Failure> {
    // Rendered in memory: the generators panic on a write error.
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut text)
        .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    if !parents.is_empty() {
        let pages: Vec<String> = parents
            .iter()
            .rev()
            .map(|p| format!("{}(1)", p.replace('-', "\\-")))
            .collect();
        text.extend_from_slice(format!(".SH \"SEE ALSO\"\n{}\n", pages.join(", ")).as_bytes());
    }
    Ok(text)
}

/// Writes the page of `cmd` and of each command under it (hidden ones have
/// none) into `dir`, named as each page's SUBCOMMANDS section names them.
fn write_man_pages(
    cmd: &clap::Command,
    parents: &mut Vec<String>,
    dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<(), Failure> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name());
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, man_page(cmd, parents)?).map_err(|e| {
        Failure::new(
            exit::FAILED,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    written.push(path);
    parents.push(name.to_string());
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, parents, dir, written)?;
    }
    parents.pop();
    Ok(())
}

pub fn generate(args: &GenerateArgs) -> Result<i32, Failure> {
    let mut cmd = super::command();
    let mut text = Vec::new();
    let shell = match (args.what, &args.dir) {
        (What::Man, None) => {
            let text = man_page(&for_pages(), &[])?;
            crate::output::with(|out| out.write_all(&text))?;
            return Ok(exit::OK);
        }
        (What::Man, Some(dir)) => {
            let mut written = Vec::new();
            write_man_pages(&for_pages(), &mut Vec::new(), dir, &mut written)?;
            for path in written {
                outln!("{}", path.display())?;
            }
            return Ok(exit::OK);
        }
        (_, Some(_)) => return Err(Failure::usage("--dir is for `wfcg generate man`")),
        (What::Bash, None) => clap_complete::Shell::Bash,
        (What::Zsh, None) => clap_complete::Shell::Zsh,
        (What::Fish, None) => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "wfcg", &mut text);
    crate::output::with(|out| out.write_all(&text))?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_binary_under_a_cargo_target_dir_is_in_a_build_tree() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("release")).unwrap();
        let exe = target.join("release/wfcg");
        assert_eq!(super::build_tree(&exe), None);
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by cargo.\n",
        )
        .unwrap();
        assert_eq!(super::build_tree(&exe), Some(target));
        assert_eq!(
            super::build_tree(std::path::Path::new("/usr/local/bin/wfcg")),
            None
        );
    }

    #[test]
    fn the_unit_runs_this_binary_and_keeps_runs_alive() {
        let unit = super::unit_for(std::path::Path::new("/opt/wfcg/bin/wfcg"));
        assert!(
            unit.contains("\nExecStart=/opt/wfcg/bin/wfcg agent\n"),
            "{unit}"
        );
        for line in [
            "Type=notify",
            "Delegate=yes",
            "KillMode=process",
            "RuntimeDirectoryPreserve=yes",
            "StateDirectory=wfcg",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
    }
}
