//! Environment (and mirroring flags) -> a typed [`Config`], before any thread or child exists.
//!
//! Runs on the main thread only. Parsing is pure (`Config::parse` takes a lookup function, so
//! tests need no process environment) and reports every problem at once; `preflight` then
//! checks the outside world (programs, ports, the metrics address) and hands over the bound
//! metrics listener so nothing can take the address between the check and its use.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logtag::LogFormat;
use crate::probe::Probe;
use crate::region_table::{self, REGIONS};
use crate::time::{duration_forms, parse_duration};

/// One configuration variable: its name, the flag that mirrors it, its default and meaning.
/// This table drives `--help`, flag parsing and the README's configuration table.
pub struct Setting {
    pub key: Key,
    pub env: &'static str,
    pub flag: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// A configuration variable, by what it sets: its name, flag and default are written once, in
/// [`SETTINGS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Regions,
    Command,
    PortBase,
    MetricsAddr,
    RelayAddr,
    ChildPortBase,
    RelayHold,
    RelayMaxConnections,
    HealthPath,
    ChildMetricsPath,
    ScrapeTimeout,
    MaxRestarts,
    RestartBackoff,
    RestartReset,
    StartupTimeout,
    ProbeInterval,
    LivenessFailures,
    ShutdownGrace,
    LogFormat,
    MaxLine,
    Probe,
    Start,
    IdleStop,
    HealthCheckTimeout,
    QuietHealthcheck,
}

impl Key {
    pub fn setting(self) -> &'static Setting {
        SETTINGS.iter().find(|s| s.key == self).expect("every key is in the table")
    }

    /// The variable's name.
    pub fn env(self) -> &'static str {
        self.setting().env
    }
}

pub const SETTINGS: &[Setting] = &[
    Setting {
        key: Key::Regions,
        env: "SUPERVISOR_REGIONS",
        flag: "--regions",
        default: "all 12",
        help: "comma-separated subset, in the order given; unknown or duplicate names are an error",
    },
    Setting {
        key: Key::Command,
        env: "SUPERVISOR_COMMAND",
        flag: "--command",
        default: "/usr/local/bin/finfocus-plugin-aws-public-{region}",
        help: "command template, split on whitespace, no shell; {region} and {port} are substituted",
    },
    Setting {
        key: Key::PortBase,
        env: "SUPERVISOR_PORT_BASE",
        flag: "--port-base",
        default: "8001",
        help: "port of a region = base + its row in the region table (0..11); each must be 1..65535",
    },
    Setting {
        key: Key::MetricsAddr,
        env: "SUPERVISOR_METRICS_ADDR",
        flag: "--metrics-addr",
        default: "0.0.0.0:9090",
        help: "listen address of /metrics, /healthz, /readyz, /livez; `off` disables it",
    },
    Setting {
        key: Key::RelayAddr,
        env: "SUPERVISOR_RELAY_ADDR",
        flag: "--relay-addr",
        default: "0.0.0.0",
        help: "IP address the relay listens on, on every region's port, relaying to the child; `off`: each child listens on the region's port itself",
    },
    Setting {
        key: Key::ChildPortBase,
        env: "SUPERVISOR_CHILD_PORT_BASE",
        flag: "--child-port-base",
        default: "18001",
        help: "with the relay: the port a region's child listens on (127.0.0.1) = base + its row",
    },
    Setting {
        key: Key::RelayHold,
        env: "SUPERVISOR_RELAY_HOLD",
        flag: "--relay-hold",
        default: "10s",
        help: "how long a new connection to a region that is not ready waits for it before it is closed",
    },
    Setting {
        key: Key::RelayMaxConnections,
        env: "SUPERVISOR_RELAY_MAX_CONNECTIONS",
        flag: "--relay-max-connections",
        default: "1024",
        help: "relayed connections per region at once (held ones included); past it, new ones wait in the listen queue",
    },
    Setting {
        key: Key::HealthPath,
        env: "SUPERVISOR_HEALTH_PATH",
        flag: "--health-path",
        default: "/healthz",
        help: "path probed on each child",
    },
    Setting {
        key: Key::ChildMetricsPath,
        env: "SUPERVISOR_CHILD_METRICS_PATH",
        flag: "--child-metrics-path",
        default: "/metrics",
        help: "path scraped on each child",
    },
    Setting {
        key: Key::ScrapeTimeout,
        env: "SUPERVISOR_SCRAPE_TIMEOUT",
        flag: "--scrape-timeout",
        default: "2s",
        help: "per-child time limit of that scrape",
    },
    Setting {
        key: Key::MaxRestarts,
        env: "SUPERVISOR_MAX_RESTARTS",
        flag: "--max-restarts",
        default: "3",
        help: "restarts allowed per region before the whole supervisor shuts down",
    },
    Setting {
        key: Key::RestartBackoff,
        env: "SUPERVISOR_RESTART_BACKOFF",
        flag: "--restart-backoff",
        default: "1s",
        help: "delay before the first restart; doubles per consecutive failure, capped at 30s",
    },
    Setting {
        key: Key::RestartReset,
        env: "SUPERVISOR_RESTART_RESET",
        flag: "--restart-reset",
        default: "60s",
        help: "a region healthy this long gets its failure count reset to 0",
    },
    Setting {
        key: Key::StartupTimeout,
        env: "SUPERVISOR_STARTUP_TIMEOUT",
        flag: "--startup-timeout",
        default: "10s",
        help: "a (re)started child must answer its health path with 2xx within this",
    },
    Setting {
        key: Key::ProbeInterval,
        env: "SUPERVISOR_PROBE_INTERVAL",
        flag: "--probe-interval",
        default: "10s",
        help: "health probe period once a region is ready",
    },
    Setting {
        key: Key::LivenessFailures,
        env: "SUPERVISOR_LIVENESS_FAILURES",
        flag: "--liveness-failures",
        default: "3",
        help: "consecutive failed probes of a ready region that count as a failure (0 = never)",
    },
    Setting {
        key: Key::ShutdownGrace,
        env: "SUPERVISOR_SHUTDOWN_GRACE",
        flag: "--shutdown-grace",
        default: "4s",
        help: "time between SIGTERM and SIGKILL at shutdown (else TERMINATION_GRACE_SECONDS)",
    },
    Setting {
        key: Key::LogFormat,
        env: "SUPERVISOR_LOG_FORMAT",
        flag: "--log-format",
        default: "inject",
        help: "inject: JSON lines get a region key, others a `[region] ` prefix; json: others are wrapped in JSON too",
    },
    Setting {
        key: Key::MaxLine,
        env: "SUPERVISOR_MAX_LINE",
        flag: "--max-line",
        default: "64KiB",
        help: "longest log line kept whole; longer lines are emitted in pieces of at most this size",
    },
    Setting {
        key: Key::Probe,
        env: "SUPERVISOR_PROBE",
        flag: "--probe",
        default: "auto",
        help: "readiness and liveness probe: http (GET the health path, 2xx), h2 (an HTTP/2 PING answered), tcp (a connect); auto: h2 if the children's FINFOCUS_PLUGIN_WEB_ENABLED or FINFOCUS_PLUGIN_HEALTH_ENDPOINT is false (any value but true), else http",
    },
    Setting {
        key: Key::Start,
        env: "SUPERVISOR_START",
        flag: "--start",
        default: "all",
        help: "all: every region starts at once; on-demand: a region's child starts at its first relayed connection and stops when idle (needs the relay)",
    },
    Setting {
        key: Key::IdleStop,
        env: "SUPERVISOR_IDLE_STOP",
        flag: "--idle-stop",
        default: "10m",
        help: "with on-demand: a running region with no relayed connection for this long is stopped (not a failure)",
    },
    Setting {
        key: Key::HealthCheckTimeout,
        env: "HEALTH_CHECK_TIMEOUT",
        flag: "--health-check-timeout",
        default: "5s",
        help: "per-region timeout of the `healthcheck` subcommand",
    },
    Setting {
        key: Key::QuietHealthcheck,
        env: "QUIET_HEALTHCHECK",
        flag: "--quiet",
        default: "unset",
        help: "1/true: `healthcheck` prints only failures and the final line",
    },
];

/// Read by `SUPERVISOR_SHUTDOWN_GRACE` when that is unset (the name Kubernetes users know).
const GRACE_FALLBACK: &str = "TERMINATION_GRACE_SECONDS";

/// Any restart waits at most this long (SPEC: the backoff doubles, capped at 30s).
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// What one region runs and where it is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPlan {
    pub name: &'static str,
    /// The port the region is reached on (SPEC's table: base + row).
    pub port: u16,
    /// The port the child is told to listen on (on 127.0.0.1): with the relay,
    /// `SUPERVISOR_CHILD_PORT_BASE` + row; without it, `port`.
    pub child_port: u16,
    /// Program and arguments, placeholders already substituted.
    pub argv: Vec<String>,
}

/// The relay's settings (SPEC "Relay"); `Config::relay` is `None` with `SUPERVISOR_RELAY_ADDR=off`.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub addr: IpAddr,
    pub hold: Duration,
    pub max_connections: usize,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub regions: Vec<RegionPlan>,
    pub relay: Option<RelaySettings>,
    pub metrics_addr: Option<SocketAddr>,
    pub health_path: String,
    pub child_metrics_path: String,
    pub scrape_timeout: Duration,
    pub max_restarts: u32,
    pub restart_backoff: Duration,
    pub restart_reset: Duration,
    pub startup_timeout: Duration,
    pub probe_interval: Duration,
    pub liveness_failures: u32,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub max_line: usize,
    /// `SUPERVISOR_START=on-demand`: `SUPERVISOR_IDLE_STOP`; `None` with `all`.
    pub idle_stop: Option<Duration>,
    pub probe: Probe,
    /// Why that probe: the setting, or for `auto` the variable that chose it.
    pub probe_why: String,
    pub health_check_timeout: Duration,
    pub quiet_healthcheck: bool,
}

/// Where a value came from, so an error names what the operator actually typed.
struct Value {
    origin: String,
    text: String,
}

/// Collects every problem instead of stopping at the first.
struct Parser<'a> {
    lookup: &'a dyn Fn(&str) -> Option<Result<String, String>>,
    flags: &'a [(&'static str, String)],
    errors: Vec<String>,
}

impl Parser<'_> {
    /// The flag wins over the environment; an empty variable counts as unset.
    fn value(&mut self, key: Key) -> Option<Value> {
        let setting = key.setting();
        let env = setting.env;
        if let Some((_, text)) = self.flags.iter().rev().find(|(e, _)| *e == env) {
            return Some(Value { origin: setting.flag.to_string(), text: text.clone() });
        }
        match (self.lookup)(env)? {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(Value { origin: env.to_string(), text }),
            Err(_) => {
                self.errors.push(format!("{env}: the value is not valid UTF-8"));
                None
            }
        }
    }

    /// The value of `key` parsed by `parse`, or the table's default (parsed the same way).
    fn typed<T>(&mut self, key: Key, parse: fn(&str) -> Option<T>, valid: &str) -> T {
        let default = || parse(key.setting().default).expect("every default in SETTINGS parses");
        match self.value(key) {
            None => default(),
            Some(v) => parse(v.text.trim()).unwrap_or_else(|| {
                self.errors.push(format!("{}: {:?} is not {valid}", v.origin, v.text));
                default()
            }),
        }
    }

    fn duration(&mut self, key: Key) -> Duration {
        self.typed(key, parse_duration, DURATION)
    }

    /// A duration that must be more than zero (a zero timeout or period makes no sense).
    fn positive_duration(&mut self, key: Key) -> Duration {
        self.typed(key, |s| parse_duration(s).filter(|d| !d.is_zero()), POSITIVE_DURATION)
    }

    fn count(&mut self, key: Key) -> u32 {
        self.typed(key, |s| s.parse().ok(), "a whole number (0, 1, 2, ...)")
    }

    fn port(&mut self, key: Key) -> u32 {
        self.typed(
            key,
            |s| s.parse::<u32>().ok().filter(|b| (1..=65535).contains(b)),
            "a port number (1..65535)",
        )
    }

    fn path(&mut self, key: Key) -> String {
        self.typed(
            key,
            |s| (s.starts_with('/') && !s.contains(char::is_whitespace)).then(|| s.to_string()),
            "an HTTP path (it starts with / and has no spaces, e.g. /healthz)",
        )
    }
}

const DURATION: &str = concat!("a duration (use ", duration_forms!(), ")");
const POSITIVE_DURATION: &str = concat!("a duration above zero (use ", duration_forms!(), ")");

impl Config {
    /// Parses the configuration. `lookup` reads a variable (`Err` for one that is not UTF-8);
    /// `flags` are `(variable, value)` pairs from the command line, which win. Every problem
    /// is reported, one message each, in the returned `Err`.
    pub fn parse(
        lookup: &dyn Fn(&str) -> Option<Result<String, String>>,
        flags: &[(&'static str, String)],
    ) -> Result<Config, Vec<String>> {
        let mut p = Parser { lookup, flags, errors: Vec::new() };
        let relay = parse_relay(&mut p);
        let regions = plan_regions(&mut p, relay.is_some());
        let metrics_addr = parse_metrics_addr(&mut p);
        let shutdown_grace = parse_grace(&mut p);
        let (probe, probe_why) = parse_probe(&mut p);
        let idle_stop = parse_start(&mut p, relay.is_some());
        let config = Config {
            regions,
            relay,
            metrics_addr,
            health_path: p.path(Key::HealthPath),
            child_metrics_path: p.path(Key::ChildMetricsPath),
            scrape_timeout: p.positive_duration(Key::ScrapeTimeout),
            max_restarts: p.count(Key::MaxRestarts),
            restart_backoff: p.duration(Key::RestartBackoff),
            restart_reset: p.positive_duration(Key::RestartReset),
            startup_timeout: p.positive_duration(Key::StartupTimeout),
            probe_interval: p.positive_duration(Key::ProbeInterval),
            liveness_failures: p.count(Key::LivenessFailures),
            shutdown_grace,
            log_format: p.typed(Key::LogFormat, LogFormat::parse, "a log format (use inject or json)"),
            max_line: p.typed(
                Key::MaxLine,
                |s| parse_size(s).filter(|n| (MIN_LINE..=MAX_LINE).contains(n)),
                "a size from 64 bytes to 64MiB (use 65536, 64KiB, 1MiB)",
            ),
            idle_stop,
            probe,
            probe_why,
            health_check_timeout: p.positive_duration(Key::HealthCheckTimeout),
            quiet_healthcheck: p.typed(
                Key::QuietHealthcheck,
                parse_switch,
                "a switch (use 1 or true; 0 or false)",
            ),
        };
        check_port_clashes(&mut p, &config);
        if p.errors.is_empty() {
            Ok(config)
        } else {
            Err(p.errors)
        }
    }

    /// Where a client inside the container reaches a region: through the relay (its wildcard
    /// address as loopback), or at the child itself on 127.0.0.1 without it.
    pub fn client_addr(&self, r: &RegionPlan) -> SocketAddr {
        let ip = match self.relay.as_ref().map(|relay| relay.addr) {
            Some(IpAddr::V4(a)) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(IpAddr::V6(a)) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Some(a) => a,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        SocketAddr::new(ip, r.port)
    }

    /// The `regions` subcommand's text form: one line per region.
    pub fn plan_text(&self) -> String {
        let mut out = String::new();
        for r in &self.regions {
            let _ =
                writeln!(out, "{:<15} {:>5} -> {:>5}  {}", r.name, r.port, r.child_port, r.argv.join(" "));
        }
        out
    }

    /// The `regions --json` form: an array of {"region","port","child_port","command"}.
    pub fn plan_json(&self) -> String {
        let plan: Vec<_> = self
            .regions
            .iter()
            .map(|r| serde_json::json!({"region": r.name, "port": r.port, "child_port": r.child_port, "command": r.argv}))
            .collect();
        serde_json::Value::Array(plan).to_string()
    }
}

fn parse_switch(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" | "unset" => Some(false),
        _ => None,
    }
}

/// `SUPERVISOR_RELAY_ADDR` and the settings that only matter with the relay.
fn parse_relay(p: &mut Parser) -> Option<RelaySettings> {
    let addr = p.typed(
        Key::RelayAddr,
        |s| if s == "off" { Some(None) } else { s.parse::<IpAddr>().ok().map(Some) },
        "an IP address (such as 0.0.0.0, 127.0.0.1 or ::) or off",
    );
    let hold = p.positive_duration(Key::RelayHold);
    let max_connections = p.typed(
        Key::RelayMaxConnections,
        |s| s.parse::<usize>().ok().filter(|n| (1..=1_000_000).contains(n)),
        "a whole number from 1 to 1000000",
    );
    addr.map(|addr| RelaySettings { addr, hold, max_connections })
}

/// Each selected region's ports and command.
fn plan_regions(p: &mut Parser, relay: bool) -> Vec<RegionPlan> {
    let names = parse_region_list(p);
    let port_base = p.port(Key::PortBase);
    let child_base = p.port(Key::ChildPortBase);
    let template = match p.value(Key::Command) {
        Some(v) if v.text.split_whitespace().next().is_some() => v.text,
        Some(v) => {
            p.errors.push(format!("{}: the command is empty", v.origin));
            String::new()
        }
        None => Key::Command.setting().default.to_string(),
    };
    let mut plans = Vec::new();
    for (index, name) in names {
        let Some(port) = row_port(p, Key::PortBase, port_base, index, name) else { continue };
        let child_port = if relay {
            let Some(c) = row_port(p, Key::ChildPortBase, child_base, index, name) else {
                continue;
            };
            c
        } else {
            port
        };
        let argv = template
            .split_whitespace()
            .map(|word| word.replace("{region}", name).replace("{port}", &child_port.to_string()))
            .collect();
        plans.push(RegionPlan { name, port, child_port, argv });
    }
    plans
}

/// `base` + the region's row, or an error naming the region when that passes 65535.
fn row_port(p: &mut Parser, key: Key, base: u32, index: usize, name: &str) -> Option<u16> {
    let env = key.env();
    let port = base + index as u32;
    if port > 65535 {
        p.errors.push(format!(
            "{env}: {base} gives {name} the port {port}, above 65535 (the base must be at most {} with these regions)",
            65535 - index as u32
        ));
        return None;
    }
    Some(port as u16)
}

fn parse_metrics_addr(p: &mut Parser) -> Option<SocketAddr> {
    p.typed(
        Key::MetricsAddr,
        |s| if s == "off" { Some(None) } else { parse_listen_addr(s).map(Some) },
        "a listen address (use HOST:PORT such as 0.0.0.0:9090, :9090, or off)",
    )
}

/// `SUPERVISOR_SHUTDOWN_GRACE`, else `TERMINATION_GRACE_SECONDS`, else the default.
fn parse_grace(p: &mut Parser) -> Duration {
    let fallback = (p.lookup)(GRACE_FALLBACK).and_then(Result::ok).filter(|t| !t.trim().is_empty());
    match fallback {
        Some(text) if p.value(Key::ShutdownGrace).is_none() => {
            parse_duration(text.trim()).unwrap_or_else(|| {
                p.errors.push(format!("{GRACE_FALLBACK}: {text:?} is not {DURATION}"));
                parse_duration(Key::ShutdownGrace.setting().default).expect("the default parses")
            })
        }
        _ => p.duration(Key::ShutdownGrace),
    }
}

/// `SUPERVISOR_START` and, for `on-demand`, `SUPERVISOR_IDLE_STOP`; on demand needs the relay
/// (it is the relay's connection that starts a region).
fn parse_start(p: &mut Parser, relay: bool) -> Option<Duration> {
    let on_demand = p.typed(
        Key::Start,
        |s| match s {
            "all" => Some(false),
            "on-demand" => Some(true),
            _ => None,
        },
        "a start mode (use all or on-demand)",
    );
    let idle_stop = p.positive_duration(Key::IdleStop);
    if on_demand && !relay {
        p.errors.push(format!(
            "{}=on-demand needs the relay (a region starts at its first relayed connection), but {} is off",
            Key::Start.env(),
            Key::RelayAddr.env()
        ));
    }
    on_demand.then_some(idle_stop)
}

/// The variables that turn the plugin's HTTP/1.1 health endpoint off (SPEC "The real
/// plugin"); the children inherit the supervisor's environment, so this is theirs too.
const HEALTH_SWITCHES: [&str; 2] = ["FINFOCUS_PLUGIN_WEB_ENABLED", "FINFOCUS_PLUGIN_HEALTH_ENDPOINT"];

/// `SUPERVISOR_PROBE`, with `auto` resolved, and why.
fn parse_probe(p: &mut Parser) -> (Probe, String) {
    let chosen = p.typed(
        Key::Probe,
        |s| if s == "auto" { Some(None) } else { Probe::parse(s).map(Some) },
        "a probe (use http, h2, tcp or auto)",
    );
    if let Some(probe) = chosen {
        return (probe, format!("{}={}", Key::Probe.env(), probe.as_str()));
    }
    // The plugin turns a switch on only for `true` (any case), and the children get `true`
    // where the variable is unset or empty: any other value means no health endpoint.
    for name in HEALTH_SWITCHES {
        if let Some(Ok(v)) = (p.lookup)(name) {
            if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("true") {
                return (Probe::H2, format!("auto: {name}={v} (the children serve no /healthz)"));
            }
        }
    }
    (Probe::Http, "auto: the children serve their health path (FINFOCUS_PLUGIN_WEB_ENABLED and FINFOCUS_PLUGIN_HEALTH_ENDPOINT are true)".into())
}

/// No two of the region ports, child ports and the metrics port may be equal.
fn check_port_clashes(p: &mut Parser, c: &Config) {
    let mut owners: Vec<(u16, String)> = Vec::new();
    if let Some(m) = c.metrics_addr {
        owners.push((m.port(), "the metrics port (SUPERVISOR_METRICS_ADDR)".into()));
    }
    for r in &c.regions {
        owners.push((r.port, format!("the port of region {}", r.name)));
    }
    if c.relay.is_some() {
        for r in &c.regions {
            owners.push((
                r.child_port,
                format!("the child port of region {} (SUPERVISOR_CHILD_PORT_BASE)", r.name),
            ));
        }
    }
    for (i, (port, who)) in owners.iter().enumerate() {
        if let Some((_, first)) = owners[..i].iter().find(|(q, _)| q == port) {
            p.errors.push(format!("port {port} is both {first} and {who}: every port must be different"));
        }
    }
}

const MIN_LINE: usize = 64;
const MAX_LINE: usize = 64 << 20;

/// Region names in the order given; empty entries (a trailing comma) are ignored.
fn parse_region_list(p: &mut Parser) -> Vec<(usize, &'static str)> {
    let Some(v) = p.value(Key::Regions) else {
        return REGIONS.iter().copied().enumerate().collect();
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in v.text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match region_table::index_of(name) {
            None => p.errors.push(format!(
                "{}: unknown region {name:?} (valid regions: {})",
                v.origin,
                REGIONS.join(", ")
            )),
            Some(_) if !seen.insert(name) => {
                p.errors.push(format!("{}: region {name:?} is listed twice", v.origin))
            }
            Some(i) => out.push((i, REGIONS[i])),
        }
    }
    out
}

/// `65536`, `64KiB`, `1MiB`, `1GiB`.
pub fn parse_size(s: &str) -> Option<usize> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().ok()?;
    let shift = match unit {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// `HOST:PORT`, `[v6]:PORT`, or `:PORT` for every IPv4 address (as Go programs accept).
fn parse_listen_addr(s: &str) -> Option<SocketAddr> {
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    full.to_socket_addrs().ok()?.next()
}

/// What `preflight` hands over: the listeners, already bound, so nothing can take an address
/// between the check and its use.
pub struct Preflight {
    /// Relay workers (serving every region): one per CPU (at most 4), fewer where the
    /// open-file limit allows no more; 0 with the relay off.
    pub relay_workers: usize,
    pub metrics_listener: Option<TcpListener>,
    /// One per region, in `config.regions` order; empty with the relay off.
    pub relay_listeners: Vec<TcpListener>,
}

/// The relay workers the open-file limit allows (the soft limit, already raised to the hard
/// one): as many as there are CPUs (at most 4), fewer when short, and an error naming the limit
/// and the need when not even one fits (or, without the relay, the regions themselves do not).
fn check_descriptors(config: &Config, errors: &mut Vec<String>) -> usize {
    let limit = usize::try_from(crate::sys::nofile_limit()).unwrap_or(usize::MAX);
    let regions = config.regions.len();
    let found = match config.relay {
        Some(_) => crate::accept::relay_workers(regions, crate::relay::workers(), limit),
        None => (crate::accept::least(regions, 0) <= limit).then_some(0),
    };
    found.unwrap_or_else(|| {
        let need = crate::accept::least(regions, usize::from(config.relay.is_some()));
        let what = if config.relay.is_some() { "with the relay" } else { "without the relay" };
        errors.push(format!(
            "the open-file limit (RLIMIT_NOFILE, hard limit included) is {limit}; {regions} regions {what} need at least {need} (raise it: docker run --ulimit nofile={need}, or ulimit -n {need})"
        ));
        0
    })
}

/// The listen queue of a region port: clients past `SUPERVISOR_RELAY_MAX_CONNECTIONS` wait here.
const RELAY_BACKLOG: i32 = 1024;

/// Checks, before anything starts, what parsing cannot: every program exists and is
/// executable, every child port is free on 127.0.0.1, every region port is bindable on the
/// relay address, the metrics address is bindable.
pub fn preflight(config: &Config, path_var: Option<&str>) -> Result<Preflight, Vec<String>> {
    let mut errors = Vec::new();
    let relay_workers = check_descriptors(config, &mut errors);
    check_programs(config, path_var, &mut errors);
    let child_env = if config.relay.is_some() { Key::ChildPortBase } else { Key::PortBase }.env();
    for r in &config.regions {
        if let Err(e) = TcpListener::bind(("127.0.0.1", r.child_port)) {
            errors.push(format!(
                "{child_env}: port {} of region {} is not free on 127.0.0.1 ({e})",
                r.child_port, r.name
            ));
        }
    }
    let mut relay_listeners = Vec::new();
    if let Some(relay) = &config.relay {
        for r in &config.regions {
            match TcpListener::bind((relay.addr, r.port)) {
                Ok(l) => {
                    crate::sys::set_backlog(&l, RELAY_BACKLOG);
                    relay_listeners.push(l);
                }
                Err(e) => errors.push(format!(
                    "{}: cannot listen on {} for region {} ({e})",
                    Key::RelayAddr.env(),
                    SocketAddr::new(relay.addr, r.port),
                    r.name
                )),
            }
        }
    }
    let metrics_listener = match config.metrics_addr {
        None => None,
        Some(addr) => match TcpListener::bind(addr) {
            Ok(l) => Some(l),
            Err(e) => {
                errors.push(format!("{}: cannot listen on {addr} ({e})", Key::MetricsAddr.env()));
                None
            }
        },
    };
    if errors.is_empty() {
        Ok(Preflight { relay_workers, metrics_listener, relay_listeners })
    } else {
        Err(errors)
    }
}

fn check_programs(config: &Config, path_var: Option<&str>, errors: &mut Vec<String>) {
    let mut checked = HashSet::new();
    for r in &config.regions {
        let program = &r.argv[0];
        if checked.insert(program.clone()) {
            if let Err(why) = find_program(program, path_var) {
                errors.push(format!("{}: program {program:?} ({}) {why}", Key::Command.env(), r.name));
            }
        }
    }
}

/// Resolves a program the way `execvp` will: a name with a slash is a path, any other name is
/// searched in `PATH`. Says why it cannot be run when it cannot.
pub fn find_program(program: &str, path_var: Option<&str>) -> Result<PathBuf, String> {
    if program.contains('/') {
        return check_executable(Path::new(program)).map(|()| PathBuf::from(program));
    }
    let dirs = path_var.unwrap_or("/usr/local/bin:/usr/bin:/bin");
    let mut last = String::from("is not found in PATH");
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(program);
        match check_executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(why) if candidate.exists() => last = format!("at {}: {why}", candidate.display()),
            Err(_) => {}
        }
    }
    Err(last)
}

fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if !crate::sys::can_execute(path) {
        return Err("is not executable by this user".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(vars: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::parse(&move |k| map.get(k).cloned().map(Ok), &[])
    }

    #[test]
    fn defaults_match_spec() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.regions.len(), 12);
        assert_eq!(c.regions[0].port, 8001);
        assert_eq!(c.regions[11].name, "us-west-1");
        assert_eq!(c.regions[11].port, 8012);
        assert_eq!(c.regions[0].argv, ["/usr/local/bin/finfocus-plugin-aws-public-us-east-1"]);
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9090".parse().unwrap()));
        assert_eq!(c.health_path, "/healthz");
        assert_eq!(c.child_metrics_path, "/metrics");
        assert_eq!(c.scrape_timeout, Duration::from_secs(2));
        assert_eq!(c.max_restarts, 3);
        assert_eq!(c.restart_backoff, Duration::from_secs(1));
        assert_eq!(c.restart_reset, Duration::from_secs(60));
        assert_eq!(c.startup_timeout, Duration::from_secs(10));
        assert_eq!(c.probe_interval, Duration::from_secs(10));
        assert_eq!(c.liveness_failures, 3);
        assert_eq!(c.shutdown_grace, Duration::from_secs(4));
        assert_eq!(c.log_format, LogFormat::Inject);
        assert_eq!(c.max_line, 65536);
        assert_eq!(c.health_check_timeout, Duration::from_secs(5));
        assert!(!c.quiet_healthcheck);
    }

    #[test]
    fn subset_keeps_given_order_and_table_ports() {
        let c = parse(&[
            ("SUPERVISOR_REGIONS", "us-west-1, eu-west-1,"),
            ("SUPERVISOR_PORT_BASE", "9000"),
            ("SUPERVISOR_COMMAND", "/bin/plugin --region={region}  --listen :{port}"),
        ])
        .unwrap();
        let got: Vec<_> = c.regions.iter().map(|r| (r.name, r.port)).collect();
        assert_eq!(got, [("us-west-1", 9011), ("eu-west-1", 9002)]);
        // `{port}` is the port the child listens on: with the relay, its child port.
        assert_eq!(c.regions[0].argv, ["/bin/plugin", "--region=us-west-1", "--listen", ":18012"]);
        let c = parse(&[
            ("SUPERVISOR_REGIONS", "us-west-1"),
            ("SUPERVISOR_PORT_BASE", "9000"),
            ("SUPERVISOR_RELAY_ADDR", "off"),
        ])
        .unwrap();
        assert_eq!((c.regions[0].port, c.regions[0].child_port), (9011, 9011));
    }

    #[test]
    fn relay_settings_and_child_ports() {
        let c = parse(&[]).unwrap();
        let relay = c.relay.as_ref().unwrap();
        assert_eq!(relay.addr, IpAddr::from([0, 0, 0, 0]));
        assert_eq!((relay.hold, relay.max_connections), (Duration::from_secs(10), 1024));
        assert_eq!((c.regions[11].port, c.regions[11].child_port), (8012, 18012));
        assert_eq!(c.client_addr(&c.regions[0]), "127.0.0.1:8001".parse().unwrap());
        let c = parse(&[("SUPERVISOR_RELAY_ADDR", "127.0.0.2"), ("SUPERVISOR_CHILD_PORT_BASE", "20000")])
            .unwrap();
        assert_eq!(c.client_addr(&c.regions[1]), "127.0.0.2:8002".parse().unwrap());
        assert_eq!(c.regions[1].child_port, 20001);
        let c = parse(&[("SUPERVISOR_RELAY_ADDR", "::")]).unwrap();
        assert_eq!(c.client_addr(&c.regions[0]), "[::1]:8001".parse().unwrap());
        assert!(parse(&[("SUPERVISOR_RELAY_ADDR", "off")]).unwrap().relay.is_none());
    }

    #[test]
    fn bad_relay_values_are_named() {
        let errors = parse(&[
            ("SUPERVISOR_RELAY_ADDR", "localhost"),
            ("SUPERVISOR_RELAY_HOLD", "0"),
            ("SUPERVISOR_RELAY_MAX_CONNECTIONS", "0"),
        ])
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("SUPERVISOR_RELAY_ADDR: \"localhost\" is not an IP address"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("SUPERVISOR_RELAY_HOLD: \"0\" is not a duration above zero"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("SUPERVISOR_RELAY_MAX_CONNECTIONS: \"0\" is not a whole number from 1"),
            "{errors:?}"
        );
        let errors = parse(&[("SUPERVISOR_CHILD_PORT_BASE", "65530")]).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains("SUPERVISOR_CHILD_PORT_BASE: 65530 gives ap-south-1 the port 65536")),
            "{errors:?}"
        );
    }

    #[test]
    fn equal_ports_are_refused() {
        // Child ports 8005.. collide with region ports 8005..8012.
        let errors = parse(&[("SUPERVISOR_CHILD_PORT_BASE", "8005")]).unwrap_err();
        assert!(
            errors[0].contains(
                "port 8005 is both the port of region ap-southeast-2 and the child port of region us-east-1"
            ),
            "{errors:?}"
        );
        let errors = parse(&[("SUPERVISOR_METRICS_ADDR", ":8003")]).unwrap_err();
        assert!(errors[0].contains("port 8003 is both the metrics port"), "{errors:?}");
        let errors =
            parse(&[("SUPERVISOR_METRICS_ADDR", ":18002"), ("SUPERVISOR_REGIONS", "us-west-2")]).unwrap_err();
        assert!(errors[0].contains("the child port of region us-west-2"), "{errors:?}");
        // Without the relay the child ports are the region ports: no clash with themselves.
        assert!(parse(&[("SUPERVISOR_RELAY_ADDR", "off"), ("SUPERVISOR_CHILD_PORT_BASE", "8005")]).is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let errors = parse(&[
            ("SUPERVISOR_REGIONS", "us-east-1,mars-1,us-east-1"),
            ("SUPERVISOR_RESTART_BACKOFF", "5 seconds"),
            ("SUPERVISOR_MAX_LINE", "lots"),
            ("SUPERVISOR_LOG_FORMAT", "xml"),
            ("SUPERVISOR_METRICS_ADDR", "nowhere"),
            ("SUPERVISOR_MAX_RESTARTS", "-1"),
            ("SUPERVISOR_HEALTH_PATH", "healthz"),
            ("QUIET_HEALTHCHECK", "maybe"),
        ])
        .unwrap_err();
        let all = errors.join("\n");
        for needle in [
            "SUPERVISOR_REGIONS: unknown region \"mars-1\" (valid regions: us-east-1,",
            "SUPERVISOR_REGIONS: region \"us-east-1\" is listed twice",
            "SUPERVISOR_RESTART_BACKOFF: \"5 seconds\" is not a duration (use 250ms, 5s, 2m",
            "SUPERVISOR_MAX_LINE: \"lots\" is not a size",
            "SUPERVISOR_LOG_FORMAT: \"xml\" is not a log format (use inject or json)",
            "SUPERVISOR_METRICS_ADDR: \"nowhere\" is not a listen address",
            "SUPERVISOR_MAX_RESTARTS: \"-1\" is not a whole number",
            "SUPERVISOR_HEALTH_PATH: \"healthz\" is not an HTTP path",
            "QUIET_HEALTHCHECK: \"maybe\" is not a switch",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert_eq!(errors.len(), 9, "{all}");
    }

    #[test]
    fn ports_past_65535_name_the_region() {
        let errors = parse(&[("SUPERVISOR_PORT_BASE", "65530")]).unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        assert!(errors[0].contains("ap-south-1 the port 65536"), "{errors:?}");
        let ok = parse(&[("SUPERVISOR_PORT_BASE", "65535"), ("SUPERVISOR_REGIONS", "us-east-1")]);
        assert_eq!(ok.unwrap().regions[0].port, 65535);
        assert!(parse(&[("SUPERVISOR_PORT_BASE", "0")]).is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        for bad in ["", "s", "1.5s", "-1s", "5 s", "5sec", "99999999999999999999h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        for bad in ["", "64kb", "1.5MiB", "KiB", "-3"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn zero_is_refused_where_it_means_nothing() {
        let errors =
            parse(&[("SUPERVISOR_STARTUP_TIMEOUT", "0"), ("SUPERVISOR_PROBE_INTERVAL", "0s")]).unwrap_err();
        assert_eq!(errors.len(), 2);
        let c = parse(&[("SUPERVISOR_RESTART_BACKOFF", "0"), ("SUPERVISOR_SHUTDOWN_GRACE", "0")]);
        assert_eq!(c.unwrap().restart_backoff, Duration::ZERO);
    }

    #[test]
    fn grace_falls_back_to_termination_grace_seconds() {
        let c = parse(&[("TERMINATION_GRACE_SECONDS", "25")]).unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        let c = parse(&[("TERMINATION_GRACE_SECONDS", "25"), ("SUPERVISOR_SHUTDOWN_GRACE", "2s")]);
        assert_eq!(c.unwrap().shutdown_grace, Duration::from_secs(2));
        assert!(parse(&[("TERMINATION_GRACE_SECONDS", "soon")]).is_err());
    }

    #[test]
    fn flags_win_and_are_named_in_errors() {
        let map: HashMap<&str, &str> = HashMap::from([("SUPERVISOR_PORT_BASE", "9000")]);
        let lookup = move |k: &str| map.get(k).map(|v| Ok(v.to_string()));
        let c = Config::parse(&lookup, &[("SUPERVISOR_PORT_BASE", "7001".into())]).unwrap();
        assert_eq!(c.regions[0].port, 7001);
        let e = Config::parse(&lookup, &[("SUPERVISOR_MAX_RESTARTS", "x".into())]).unwrap_err();
        assert!(e[0].starts_with("--max-restarts: \"x\""), "{e:?}");
    }

    #[test]
    fn metrics_addr_forms() {
        let c = parse(&[("SUPERVISOR_METRICS_ADDR", "off")]).unwrap();
        assert_eq!(c.metrics_addr, None);
        let c = parse(&[("SUPERVISOR_METRICS_ADDR", ":9191")]).unwrap();
        assert_eq!(c.metrics_addr, Some("0.0.0.0:9191".parse().unwrap()));
        let c = parse(&[("SUPERVISOR_METRICS_ADDR", "127.0.0.1:9191")]).unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9191".parse().unwrap()));
    }

    #[test]
    fn the_probe_follows_the_setting_or_the_plugins_switches() {
        let probe = |env: &[(&str, &str)]| parse(env).map(|c| (c.probe, c.probe_why)).unwrap();
        assert_eq!(probe(&[]).0, Probe::Http);
        assert_eq!(probe(&[("FINFOCUS_PLUGIN_WEB_ENABLED", "true")]).0, Probe::Http);
        assert_eq!(
            probe(&[("FINFOCUS_PLUGIN_WEB_ENABLED", "")]).0,
            Probe::Http,
            "empty: the children get true"
        );
        let (p, why) = probe(&[("FINFOCUS_PLUGIN_WEB_ENABLED", "false")]);
        assert_eq!(
            (p, why.as_str()),
            (Probe::H2, "auto: FINFOCUS_PLUGIN_WEB_ENABLED=false (the children serve no /healthz)")
        );
        assert_eq!(probe(&[("FINFOCUS_PLUGIN_HEALTH_ENDPOINT", "FALSE")]).0, Probe::H2);
        assert_eq!(probe(&[("FINFOCUS_PLUGIN_HEALTH_ENDPOINT", "0")]).0, Probe::H2, "the plugin wants true");
        let (p, why) = probe(&[("SUPERVISOR_PROBE", "tcp"), ("FINFOCUS_PLUGIN_WEB_ENABLED", "false")]);
        assert_eq!((p, why.as_str()), (Probe::Tcp, "SUPERVISOR_PROBE=tcp"));
        let errors = parse(&[("SUPERVISOR_PROBE", "grpc")]).unwrap_err();
        assert_eq!(errors, ["SUPERVISOR_PROBE: \"grpc\" is not a probe (use http, h2, tcp or auto)"]);
    }

    #[test]
    fn on_demand_needs_the_relay() {
        assert_eq!(parse(&[]).unwrap().idle_stop, None);
        let c = parse(&[("SUPERVISOR_START", "on-demand")]).unwrap();
        assert_eq!(c.idle_stop, Some(Duration::from_secs(600)));
        let c = parse(&[("SUPERVISOR_START", "on-demand"), ("SUPERVISOR_IDLE_STOP", "90s")]).unwrap();
        assert_eq!(c.idle_stop, Some(Duration::from_secs(90)));
        let errors =
            parse(&[("SUPERVISOR_START", "on-demand"), ("SUPERVISOR_RELAY_ADDR", "off")]).unwrap_err();
        assert!(
            errors[0].contains("SUPERVISOR_START=on-demand needs the relay")
                && errors[0].contains("SUPERVISOR_RELAY_ADDR is off"),
            "{errors:?}"
        );
        let errors = parse(&[("SUPERVISOR_START", "lazy"), ("SUPERVISOR_IDLE_STOP", "0s")]).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("use all or on-demand"), "{errors:?}");
    }

    #[test]
    fn plan_json_shape() {
        let c = parse(&[("SUPERVISOR_REGIONS", "eu-west-1")]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&c.plan_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"region": "eu-west-1", "port": 8003, "child_port": 18003,
                "command": ["/usr/local/bin/finfocus-plugin-aws-public-eu-west-1"]}])
        );
    }
}

#[cfg(test)]
mod readme {
    use super::SETTINGS;

    /// The README's configuration table must list every variable with its flag and default.
    #[test]
    fn readme_table_matches_settings() {
        let readme = include_str!("../README.md");
        for s in SETTINGS {
            let row = readme.lines().find(|l| l.starts_with(&format!("| `{}` |", s.env)));
            let row = row.unwrap_or_else(|| panic!("README has no row for {}", s.env));
            assert!(row.contains(&format!("`{}`", s.flag)), "{row}");
            assert!(row.contains(s.default), "{row}");
        }
    }
}
