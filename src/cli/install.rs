//! `wfcg install-service` and `wfcg generate`: installing wfcg on a host.
//!
//! `install-service` writes the systemd unit shipped in `deploy/wfcg.service`
//! (with this binary's path in `ExecStart=`), reloads systemd and enables and
//! starts the agent. `generate` prints the man page or a shell's completions,
//! made from the clap definitions, for packages.

use std::path::PathBuf;

use clap::CommandFactory;

use crate::exit::{self, Failure};
use crate::output::outln;

/// The unit file, as shipped.
pub const UNIT: &str = include_str!("../../deploy/wfcg.service");

/// Install the agent as a systemd service (wfcg.service: Delegate=yes, Type=notify,
/// runs survive restarts), then enable and start it. Needs root and systemd as PID 1.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Where the unit goes.
    #[arg(long, default_value = "/etc/systemd/system/wfcg.service")]
    pub unit: PathBuf,
    /// Write the unit only: no daemon-reload, enable or start.
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
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return Err(fail(
            "systemd is not PID 1 here: the unit is written, start the agent with `wfcg agent`"
                .into(),
        ));
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

/// What `wfcg generate` makes.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum What {
    /// The man page wfcg(1), as roff.
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
}

pub fn generate(args: &GenerateArgs) -> Result<i32, Failure> {
    let mut cmd = super::Cli::command();
    // Rendered in memory first: the generators panic on a write error.
    let mut text = Vec::new();
    let shell = match args.what {
        What::Man => {
            clap_mangen::Man::new(cmd)
                .render(&mut text)
                .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
            crate::output::with(|out| out.write_all(&text))?;
            return Ok(exit::OK);
        }
        What::Bash => clap_complete::Shell::Bash,
        What::Zsh => clap_complete::Shell::Zsh,
        What::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, "wfcg", &mut text);
    crate::output::with(|out| out.write_all(&text))?;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
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
