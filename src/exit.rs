//! The process's exit codes (SPEC "Exit codes"), each named once. `main` turns the one a
//! command ends with into the process status; the supervisor also logs it. Pure data.

use std::process::ExitCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped by a signal; `healthcheck`: every region healthy; `--help`, `--version` and
    /// `regions` printed what they print.
    Ok = 0,
    /// A region exhausted its restarts, or a failure at run time; `healthcheck`: a region is
    /// unhealthy.
    Failure = 1,
    /// Bad usage or configuration: nothing was started.
    Usage = 2,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}
