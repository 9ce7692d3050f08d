//! The `healthcheck` subcommand: probe every selected region once, in parallel, with the probe
//! `run` uses (`SUPERVISOR_PROBE`), at the region's port (through the relay when it is on).
//!
//! Runs in its own short-lived process (Docker's HEALTHCHECK), one thread per region. It
//! reads the same configuration as `run`, so it checks exactly what `run` started. Docker
//! understands exit codes 0 and 1 only, so those are the only two it returns after parsing.
//!
//! On demand (`SUPERVISOR_START=on-demand`) a connection to an idle region would start it, so
//! idle regions are not probed: their states come from the supervisor's own `/healthz`, and
//! for an idle one it is enough that the relay listens on its port, which the kernel's table of
//! sockets (`/proc/net/tcp`, `/proc/net/tcp6`) tells without connecting.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::Config;
use crate::exit::Exit;
use crate::http_client;

/// How one region answered.
enum Verdict {
    Healthy,
    /// On demand, not running: the relay listens for its next connection.
    Idle,
    /// On demand without the HTTP endpoint: the state is unknown, the relay listens.
    Listening,
    Unhealthy(String),
}

pub fn run(config: &Config) -> Exit {
    let results = probe_all(config);
    let mut out = std::io::stdout().lock();
    let mut unhealthy = 0;
    for (plan, result) in config.regions.iter().zip(&results) {
        let (name, port) = (plan.name, plan.port);
        match result {
            Verdict::Healthy | Verdict::Idle | Verdict::Listening if config.quiet_healthcheck => {}
            Verdict::Healthy => {
                let _ = writeln!(out, "✓ {name} ({port}) healthy");
            }
            Verdict::Idle => {
                let _ = writeln!(out, "✓ {name} ({port}) idle");
            }
            Verdict::Listening => {
                let _ = writeln!(
                    out,
                    "✓ {name} ({port}) listening (on demand; without the HTTP endpoint its state is unknown)"
                );
            }
            Verdict::Unhealthy(why) => {
                unhealthy += 1;
                let _ = writeln!(out, "✗ {name} ({port}) unhealthy: {why}");
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

/// What is done for one region: probe it, or (on demand) only see that the relay listens.
enum Check {
    Probe,
    Listen(Verdict),
    Fail(String),
}

/// One verdict per region, in the configured order.
fn probe_all(config: &Config) -> Vec<Verdict> {
    let timeout = config.health_check_timeout;
    // On demand only: the supervisor's view of which regions are idle.
    let states = config.idle_stop.map(|_| supervisor_states(config));
    let checks = config.regions.iter().map(|plan| match &states {
        None => Check::Probe,
        Some(Err(why)) => Check::Fail(why.clone()),
        Some(Ok(None)) => Check::Listen(Verdict::Listening),
        // A probe of an idle region would start it: do not wake it.
        Some(Ok(Some(m))) if m.get(plan.name).is_some_and(|s| s == "idle") => Check::Listen(Verdict::Idle),
        Some(Ok(Some(_))) => Check::Probe,
    });
    std::thread::scope(|s| {
        let handles: Vec<_> = config
            .regions
            .iter()
            .zip(checks)
            .map(|(plan, check)| {
                s.spawn(move || match check {
                    Check::Probe => probe(config, plan, timeout),
                    Check::Listen(verdict) => listening(plan.port, verdict),
                    Check::Fail(why) => Verdict::Unhealthy(why),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Verdict::Unhealthy("probe thread failed".into())))
            .collect()
    })
}

fn probe(config: &Config, plan: &crate::config::RegionPlan, timeout: std::time::Duration) -> Verdict {
    let addr = config.client_addr(plan);
    match config.probe.check(addr, &config.health_path, timeout) {
        Ok(()) => Verdict::Healthy,
        // The relay holds a connection to a region that is not ready: say so.
        Err(why) if config.relay.is_some() && why == "timed out" => Verdict::Unhealthy(format!(
            "no answer within {timeout:?} (the relay holds connections while a region is not ready)"
        )),
        Err(why) => Verdict::Unhealthy(why),
    }
}

/// `verdict` when something listens on `port`, else unhealthy.
fn listening(port: u16, verdict: Verdict) -> Verdict {
    match listens(port) {
        Ok(true) => verdict,
        Ok(false) => Verdict::Unhealthy(format!("nothing listens on port {port}")),
        Err(why) => Verdict::Unhealthy(why),
    }
}

/// Each region's state by the supervisor's `/healthz` (on its metrics address); `None` with
/// the endpoint off; an error when it does not answer (the supervisor is not well then).
fn supervisor_states(config: &Config) -> Result<Option<HashMap<String, String>>, String> {
    let Some(addr) = config.metrics_addr else { return Ok(None) };
    let ip = match addr.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let at = SocketAddr::new(ip, addr.port());
    let response = http_client::get_at(at, "/healthz", config.health_check_timeout, 1 << 20)
        .map_err(|e| format!("the supervisor's /healthz at {at}: {e}"))?;
    let body: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("the supervisor's /healthz at {at}: {e}"))?;
    let regions = body["regions"]
        .as_array()
        .ok_or_else(|| format!("the supervisor's /healthz at {at} lists no regions"))?;
    let states = regions
        .iter()
        .filter_map(|r| Some((r["region"].as_str()?.to_string(), r["state"].as_str()?.to_string())));
    Ok(Some(states.collect()))
}

/// Whether a socket of this network namespace listens on TCP `port` (any address).
fn listens(port: u16) -> Result<bool, String> {
    let mut read_any = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        read_any = true;
        if listens_in(&text, port) {
            return Ok(true);
        }
    }
    if read_any {
        Ok(false)
    } else {
        Err("cannot read /proc/net/tcp to see whether the relay listens".into())
    }
}

/// `local_address` is `ADDR:PORT` in hex, `st` 0A is LISTEN.
fn listens_in(table: &str, port: u16) -> bool {
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or_default();
        let state = fields.nth(1).unwrap_or_default();
        let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
        state == "0A" && local_port == Some(port)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_listening_sockets_from_the_kernels_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1\n\
           1: 0100007F:4651 0100007F:1F41 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        assert!(listens_in(table, 8001));
        assert!(!listens_in(table, 18001), "an established socket is not a listener");
        assert!(!listens_in(table, 8002));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listens(port), Ok(true));
        drop(listener);
        assert_eq!(listens(port), Ok(false));
    }
}
