//! Builds the `Command` for one region's child (SPEC "Children").
//!
//! Called by the region thread, which then spawns it through `reaper::Registry::spawn`. The
//! child gets: the supervisor's whole environment plus its region and port; /dev/null as
//! stdin; a pipe of its own for stdout and another for stderr (so a partial line on one is
//! never joined with a line of the other; SPEC "Logs"); its own process
//! group (so a stop reaches its helpers too); a parent-death signal; the open-file limit the
//! supervisor started with (it raised its own). It inherits no other
//! descriptor: everything the supervisor opens is close-on-exec, and `main` marks whatever
//! it inherited close-on-exec before any thread starts.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::config::RegionPlan;
use crate::sys;

/// Set for the child only where the supervisor's environment does not set them.
const DEFAULT_ENV: [(&str, &str); 3] = [
    ("FINFOCUS_PLUGIN_WEB_ENABLED", "true"),
    ("FINFOCUS_PLUGIN_HEALTH_ENDPOINT", "true"),
    ("FINFOCUS_LOG_LEVEL", "info"),
];

/// `stdout` and `stderr` are the write ends of the region's two log pipes; they become fd 1
/// and fd 2.
pub fn command(plan: &RegionPlan, stdout: OwnedFd, stderr: OwnedFd, supervisor_pid: i32) -> Command {
    let mut cmd = Command::new(&plan.argv[0]);
    cmd.args(&plan.argv[1..]);
    let port = plan.child_port.to_string();
    cmd.env("FINFOCUS_PLUGIN_PORT", &port).env("PORT", &port).env("REGION", plan.name);
    for (key, value) in DEFAULT_ENV {
        if std::env::var_os(key).is_none_or(|v| v == OsStr::new("")) {
            cmd.env(key, value);
        }
    }
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    cmd.process_group(0);
    let nofile_soft = sys::child_nofile_limit();
    // SAFETY: the closure only makes async-signal-safe syscalls on integers captured before
    // the fork (see `sys::child_pre_exec`).
    unsafe {
        cmd.pre_exec(move || sys::child_pre_exec(supervisor_pid, nofile_soft));
    }
    cmd
}
