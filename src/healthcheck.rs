//! The `healthcheck` subcommand: probe every selected region once, in parallel, with the probe
//! `run` uses (`SUPERVISOR_PROBE`), at the region's port (through the relay when it is on).
//!
//! Runs in its own short-lived process (Docker's HEALTHCHECK), one thread per region. It
//! reads the same configuration as `run`, so it checks exactly what `run` started. Docker
//! understands exit codes 0 and 1 only, so those are the only two it returns after parsing.

use std::io::Write;

use crate::config::Config;
use crate::exit::Exit;

pub fn run(config: &Config) -> Exit {
    let results = probe_all(config);
    let mut out = std::io::stdout().lock();
    let mut unhealthy = 0;
    for (plan, result) in config.regions.iter().zip(&results) {
        match result {
            Ok(()) if config.quiet_healthcheck => {}
            Ok(()) => {
                let _ = writeln!(out, "✓ {} ({}) healthy", plan.name, plan.port);
            }
            Err(why) => {
                unhealthy += 1;
                let _ = writeln!(out, "✗ {} ({}) unhealthy: {why}", plan.name, plan.port);
            }
        }
    }
    let total = config.regions.len();
    if unhealthy == 0 {
        let _ = writeln!(out, "all {total} regions healthy");
        Exit::Ok
    } else {
        let _ = writeln!(out, "{unhealthy} of {total} regions unhealthy");
        Exit::Failure
    }
}

/// One result per region, in the configured order.
fn probe_all(config: &Config) -> Vec<Result<(), String>> {
    let timeout = config.health_check_timeout;
    std::thread::scope(|s| {
        let handles: Vec<_> = config
            .regions
            .iter()
            .map(|plan| {
                s.spawn(move || {
                    let addr = config.client_addr(plan);
                    config.probe.check(addr, &config.health_path, timeout).map_err(|why| match &config.relay {
                        // The relay holds a connection to a region that is not ready: say so.
                        Some(_) if why == "timed out" => {
                            format!("no answer within {timeout:?} (the relay holds connections while a region is not ready)")
                        }
                        _ => why,
                    })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("probe thread failed".into()))).collect()
    })
}
