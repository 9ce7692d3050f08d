//! `region-supervisor`: PID 1 for a container running one pricing-plugin process per AWS
//! region. The binary only passes its arguments to the library's `run` and turns what that
//! returns into the exit code; everything else is in the library (`src/lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    region_supervisor::run(&args).into()
}
