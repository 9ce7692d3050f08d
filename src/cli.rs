//! The command line: a subcommand, flags that mirror the environment, `--help`, `--version`.
//!
//! Runs on the main thread. Pure: arguments in, `Invocation` or an error message out.

use std::fmt::Write as _;

use crate::config::{Key, SETTINGS};
use crate::time::duration_forms;

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run,
    Healthcheck,
    Regions { json: bool },
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// `(variable, value)` pairs given as flags; they win over the environment.
    pub flags: Vec<(&'static str, String)>,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut command = None;
    let mut json = false;
    let mut flags = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        match arg {
            "-h" | "--help" | "help" => return Ok(Invocation { command: Command::Help, flags }),
            "-V" | "--version" => return Ok(Invocation { command: Command::Version, flags }),
            "run" | "healthcheck" | "regions" if command.is_none() => {
                command = Some(arg);
                continue;
            }
            "--json" => {
                json = true;
                continue;
            }
            "--quiet" | "-q" => {
                flags.push((Key::QuietHealthcheck.env(), "1".to_string()));
                continue;
            }
            _ => {}
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg, None),
        };
        let Some(setting) = SETTINGS.iter().find(|s| s.flag == name) else {
            return Err(if arg.starts_with('-') {
                format!("unknown flag {arg:?} (see --help)")
            } else {
                format!("unknown command {arg:?} (use run, healthcheck or regions; see --help)")
            });
        };
        let value = match inline {
            Some(v) => v,
            None if i < args.len() => {
                i += 1;
                args[i - 1].clone()
            }
            None => return Err(format!("{name} needs a value (see --help)")),
        };
        flags.push((setting.env, value));
    }
    let command = match command.unwrap_or("run") {
        "healthcheck" => Command::Healthcheck,
        "regions" => Command::Regions { json },
        _ if json => return Err("--json goes with the regions command".into()),
        _ => Command::Run,
    };
    Ok(Invocation { command, flags })
}

pub fn help() -> String {
    let mut h = format!(
        "region-supervisor {}
Runs one pricing-plugin process per AWS region as a container's PID 1: starts them all, tags
their logs, restarts failures, stops gracefully, reaps zombies, serves metrics and health.

Usage:
  region-supervisor [run] [FLAGS]           supervise the selected regions (default)
  region-supervisor healthcheck [FLAGS]     probe every selected region once (Docker HEALTHCHECK)
  region-supervisor regions [--json] [FLAGS]  print the region -> port -> command plan
  region-supervisor --help | --version

Exit codes: 0 stopped by a signal (healthcheck: all healthy); 1 a region exhausted its
restarts or a runtime failure (healthcheck: a region unhealthy); 2 bad usage or configuration.

Signals: SIGTERM, SIGINT, SIGQUIT stop every region (SIGTERM, then SIGKILL after the grace);
a second SIGTERM or SIGINT kills at once. SIGHUP restarts the regions one at a time (rolling,
each waits for the last to be ready; not failures). SIGUSR1, SIGUSR2 are forwarded to every region.

Configuration (environment variable, or the flag that mirrors it; flags win):
",
        env!("CARGO_PKG_VERSION")
    );
    for s in SETTINGS {
        let flag = if s.flag == "--quiet" { "--quiet".to_string() } else { format!("{} VALUE", s.flag) };
        let _ = writeln!(h, "  {:<30} {}\n  {:<30} {} (default: {})", s.env, flag, "", s.help, s.default);
    }
    h.push_str(concat!(
        "
Durations: ",
        duration_forms!(),
        ". Sizes: 65536, 64KiB, 1MiB.
SUPERVISOR_SHUTDOWN_GRACE falls back to TERMINATION_GRACE_SECONDS when unset.
Each region's child gets FINFOCUS_PLUGIN_PORT, PORT and REGION, and the supervisor's whole
environment.
",
    ));
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn subcommands_and_flags() {
        assert_eq!(p(&[]).unwrap().command, Command::Run);
        assert_eq!(p(&["regions", "--json"]).unwrap().command, Command::Regions { json: true });
        let inv = p(&["healthcheck", "--quiet", "--regions", "us-east-1", "--port-base=9000"]).unwrap();
        assert_eq!(inv.command, Command::Healthcheck);
        assert_eq!(
            inv.flags,
            [
                ("QUIET_HEALTHCHECK", "1".to_string()),
                ("SUPERVISOR_REGIONS", "us-east-1".to_string()),
                ("SUPERVISOR_PORT_BASE", "9000".to_string())
            ]
        );
        assert_eq!(p(&["run", "--help"]).unwrap().command, Command::Help);
        assert_eq!(p(&["--version"]).unwrap().command, Command::Version);
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(p(&["--frobnicate"]).unwrap_err(), "unknown flag \"--frobnicate\" (see --help)");
        assert!(p(&["start"]).unwrap_err().contains("use run, healthcheck or regions"));
        assert_eq!(p(&["--regions"]).unwrap_err(), "--regions needs a value (see --help)");
        assert!(p(&["run", "--json"]).is_err());
        assert!(p(&["run", "regions"]).is_err());
    }

    #[test]
    fn help_names_every_variable() {
        let h = help();
        for s in SETTINGS {
            assert!(h.contains(s.env), "{}", s.env);
            assert!(h.contains(s.default), "{}", s.default);
        }
    }
}
