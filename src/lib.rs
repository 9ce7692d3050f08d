//! `region-supervisor` as a library: PID 1 for a container running one pricing-plugin process
//! per AWS region. The binary (`src/main.rs`) only hands its arguments to [`run`]; each step
//! lives in the module named for it, and the fuzz targets and the stand-in plugin use the
//! modules they check from here.
//!
//! Threads of a running supervisor: main (becomes the supervisor event loop, `supervisor.rs`),
//! signals (`signals.rs`, also reaps), stdout (`output.rs`), one per region (`region.rs`), each
//! relay workers shared by every region, one per CPU up to 4 (`relay/`), the HTTP front and its forwarders
//! (`front/`), tiny_http's workers (`server.rs`), and short-lived probe threads.

pub mod accept;
pub mod cli;
pub mod config;
#[cfg(test)]
mod corpus;
pub mod exit;
pub mod exposition;
pub mod families;
pub mod front;
pub mod healthcheck;
pub mod http_client;
pub mod logtag;
pub mod observe;
pub mod output;
pub mod policy;
pub mod probe;
pub mod reaper;
pub mod region;
pub mod region_table;
pub mod relay;
pub mod server;
pub mod signals;
pub mod spawn;
pub mod supervisor;
pub mod sys;
pub mod time;
pub mod view;

use cli::Command;
use config::Config;
use exit::Exit;

/// Runs the command line `args` (without the program name) to its end: the exit code.
pub fn run(args: &[String]) -> Exit {
    let invocation = match cli::parse(args) {
        Ok(i) => i,
        Err(e) => return fail(&[e]),
    };
    match invocation.command {
        Command::Help => {
            print!("{}", cli::help());
            return Exit::Ok;
        }
        Command::Version => {
            println!("region-supervisor {}", env!("CARGO_PKG_VERSION"));
            return Exit::Ok;
        }
        _ => {}
    }
    // `run`: handlers first, before the configuration is even read, while this is the only
    // thread. As PID 1 a signal without a handler is dropped, and signal-hook must register
    // before other threads exist; a stop that comes during the checks is then seen, and
    // nothing is started. The other subcommands keep the default signal actions.
    let signals = match invocation.command {
        Command::Run => match signals::install() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("region-supervisor: cannot install signal handlers: {e}");
                return Exit::Failure;
            }
        },
        _ => None,
    };
    let lookup = |name: &str| std::env::var_os(name).map(|v| v.into_string().map_err(|_| name.to_string()));
    let config = match Config::parse(&lookup, &invocation.flags) {
        Ok(c) => c,
        Err(errors) => return fail(&errors),
    };
    match (invocation.command, signals) {
        (Command::Regions { json: true }, _) => println!("{}", config.plan_json()),
        (Command::Regions { json: false }, _) => print!("{}", config.plan_text()),
        (Command::Healthcheck, _) => return healthcheck::run(&config),
        (_, Some(signals)) => return supervise(config, signals),
        (_, None) => unreachable!("run installs its handlers above"),
    }
    Exit::Ok
}

fn supervise(config: Config, signals: signal_hook::iterator::Signals) -> Exit {
    sys::cloexec_inherited_fds();
    sys::raise_nofile_limit();
    let path = std::env::var("PATH").ok();
    let preflight = match config::preflight(&config, path.as_deref()) {
        Ok(p) => p,
        Err(errors) => return fail(&errors),
    };
    supervisor::run(config, preflight, signals)
}

/// Prints every problem once, with the program's name, and returns the usage exit code.
fn fail(errors: &[String]) -> Exit {
    let mut text = String::new();
    for e in errors {
        text.push_str(&format!("region-supervisor: {e}\n"));
    }
    text.push_str("region-supervisor: nothing was started (see --help)\n");
    eprint!("{text}");
    Exit::Usage
}
