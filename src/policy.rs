//! The restart policy and shutdown sequence as a pure state machine: no I/O, no clock, no
//! threads. `Policy::on(input, now)` returns what the supervisor thread must do.
//!
//! Owned by the supervisor thread. Every timer lives here as an `Instant` (startup deadline,
//! probe due, backoff end, SIGKILL time, failure-count reset), and `next_deadline` tells the
//! event loop how long it may block. Generations tag each spawn so a late probe result or exit
//! of a previous instance can never be applied to the current one.
//!
//! Failure counting (SPEC "Lifecycle and restart policy"): each failure increments the
//! region's count; while the count is at most `max_restarts` the region restarts after
//! `backoff * 2^(count-1)` (capped at 30s); the failure after that gives up: every region is
//! stopped and the supervisor exits 1. A region ready (and passing probes) for
//! `restart_reset` gets its count reset to 0.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{Config, BACKOFF_CAP};
use crate::exit::Exit;
use crate::output::Level;
use crate::sys::{signal_name, ExitStatus};
use crate::view::RegionState;

/// First readiness probe after a start, then the period until ready. Short, because the time
/// from the plugin's bind to its next probe is added to every start, and to the first request
/// of an on-demand region (a refused probe costs a few microseconds of loopback).
const FIRST_PROBE: Duration = Duration::from_millis(20);
const STARTUP_PROBE_EVERY: Duration = Duration::from_millis(25);
/// A readiness probe during startup waits at most this long for an answer.
const STARTUP_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// A liveness probe waits at most min(probe interval, this).
const LIVENESS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct Settings {
    pub max_restarts: u32,
    pub backoff: Duration,
    pub reset: Duration,
    pub startup_timeout: Duration,
    pub probe_interval: Duration,
    pub liveness_failures: u32,
    pub grace: Duration,
    /// `SUPERVISOR_START=on-demand`: regions start at their first connection and stop after
    /// this long without one (`SUPERVISOR_IDLE_STOP`). `None`: every region runs always.
    pub idle_stop: Option<Duration>,
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            max_restarts: c.max_restarts,
            backoff: c.restart_backoff,
            reset: c.restart_reset,
            startup_timeout: c.startup_timeout,
            probe_interval: c.probe_interval,
            liveness_failures: c.liveness_failures,
            grace: c.shutdown_grace,
            idle_stop: c.idle_stop,
        }
    }

    /// Delay before the restart that follows failure number `failures` (1-based).
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.backoff.saturating_mul(1 << doublings).min(BACKOFF_CAP)
    }
}

#[derive(Debug)]
pub enum Event {
    /// Start every region (once, at the beginning).
    Begin,
    Started {
        region: usize,
        generation: u64,
        pid: i32,
    },
    SpawnFailed {
        region: usize,
        generation: u64,
        error: String,
    },
    /// The child was reaped and all of its output has been handed to stdout.
    Exited {
        region: usize,
        generation: u64,
        status: ExitStatus,
        tail: Vec<String>,
    },
    Probed {
        region: usize,
        generation: u64,
        result: Result<(), String>,
    },
    /// SIGTERM, SIGINT or SIGQUIT.
    Stop {
        signal: i32,
    },
    /// SIGHUP: the rolling restart.
    Reload,
    /// The relay accepted a connection for a region that is idle (on demand).
    Demand {
        region: usize,
    },
    /// The relay's answer to `Action::CheckIdle`: connections open now (held or connected)
    /// and how long the region has had none.
    Activity {
        region: usize,
        open: usize,
        quiet: Duration,
    },
    /// SIGUSR1 or SIGUSR2.
    Forward {
        signal: i32,
    },
    /// A deadline passed; nothing else happened.
    Tick,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    Spawn {
        region: usize,
        generation: u64,
    },
    Probe {
        region: usize,
        generation: u64,
        timeout: Duration,
    },
    /// Signal the process group of `pid` (the supervisor sends it only if still unreaped).
    Signal {
        region: usize,
        pid: i32,
        signal: i32,
    },
    /// Ask the relay how busy the region is (answered with `Event::Activity`).
    CheckIdle {
        region: usize,
    },
    Log {
        level: Level,
        region: Option<usize>,
        message: String,
        fields: Vec<(&'static str, Value)>,
    },
    Exit(Exit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Asked the region thread to spawn; waiting for its answer.
    Spawning,
    Starting {
        deadline: Instant,
    },
    Ready,
    /// Was ready; its latest probe failed.
    Unhealthy,
    /// SIGTERM sent; SIGKILL at `kill_at` (None once sent); `then` says what follows.
    Stopping {
        kill_at: Option<Instant>,
        then: Then,
    },
    Backoff {
        until: Instant,
    },
    Stopped,
    Failed,
    /// On demand: no child; the relay holds a new connection and says so (`Event::Demand`).
    Idle,
}

/// What follows once a child that is being stopped is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Nothing: the supervisor is stopping, or the region gave up.
    Rest,
    /// The backoff, then a restart: the child failed (startup timeout, liveness).
    Backoff,
    /// A new child at once, no failure counted: the rolling restart (SIGHUP).
    Respawn,
    /// Idle: no connection for the idle time (on demand).
    Idle,
    /// A new child at once, neither failure nor restart: a connection came during an idle stop.
    Wake,
}

#[derive(Clone, Debug)]
pub struct RegionRecord {
    pub phase: Phase,
    pub generation: u64,
    /// The pid of the current child while it is unreaped.
    pub pid: Option<i32>,
    /// Consecutive failures (reset after stable health); decides backoff and give-up.
    pub failures: u32,
    pub restarts: u64,
    pub last_exit: Option<String>,
    gave_up: bool,
    probe_at: Option<Instant>,
    probing: bool,
    probe_failures: u32,
    reset_at: Option<Instant>,
    /// On demand: when to ask the relay whether the region has been without connections for
    /// the idle time.
    idle_check_at: Option<Instant>,
    /// Idle stops so far (`supervisor_region_idle_stops_total`).
    pub idle_stops: u64,
}

impl RegionRecord {
    fn new() -> RegionRecord {
        RegionRecord {
            phase: Phase::Stopped,
            generation: 0,
            pid: None,
            failures: 0,
            restarts: 0,
            last_exit: None,
            gave_up: false,
            probe_at: None,
            probing: false,
            probe_failures: 0,
            reset_at: None,
            idle_check_at: None,
            idle_stops: 0,
        }
    }

    /// The state name SPEC's `/healthz` body uses.
    pub fn state(&self) -> RegionState {
        match self.phase {
            Phase::Spawning | Phase::Starting { .. } => RegionState::Starting,
            Phase::Ready => RegionState::Ready,
            Phase::Unhealthy | Phase::Stopping { then: Then::Backoff, .. } => RegionState::Unhealthy,
            // Recycled by a rolling restart, or woken during its idle stop: on its way to a
            // new start.
            Phase::Stopping { then: Then::Respawn | Then::Wake, .. } => RegionState::Starting,
            // Its next connection is held and starts it again, as when it is idle.
            Phase::Idle | Phase::Stopping { then: Then::Idle, .. } => RegionState::Idle,
            Phase::Backoff { .. } => RegionState::Backoff,
            _ if self.gave_up => RegionState::Failed,
            Phase::Stopping { .. } | Phase::Stopped | Phase::Failed => RegionState::Stopped,
        }
    }

    /// Whether new relayed connections may go to the child now: it passed its readiness
    /// probe and runs (a failed liveness probe alone does not stop traffic; a child being
    /// stopped gets none).
    pub fn takes_connections(&self) -> bool {
        matches!(self.phase, Phase::Ready | Phase::Unhealthy)
    }

    /// Whether the relay holds a new connection and reports it (`Event::Demand`): the region
    /// is idle or going idle.
    pub fn wakes_on_connection(&self) -> bool {
        matches!(self.phase, Phase::Idle | Phase::Stopping { then: Then::Idle, .. })
    }

    /// No probe due or under way, no failure count reset or idle check pending: the child is
    /// gone or going.
    fn stop_timers(&mut self) {
        self.probe_at = None;
        self.probing = false;
        self.reset_at = None;
        self.idle_check_at = None;
    }

    #[cfg(test)]
    fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }
}

pub struct Policy {
    settings: Settings,
    names: Vec<&'static str>,
    pub regions: Vec<RegionRecord>,
    /// Set once the supervisor is stopping (signal or give-up); no more restarts.
    stopping: bool,
    /// A second SIGTERM/SIGINT arrived: anything that starts is killed at once.
    killing: bool,
    exit: Exit,
    /// The region that gave up, and why, until its last output is known.
    give_up: Option<(usize, String)>,
    /// The regions in table order (the order a rolling restart takes).
    table_order: Vec<usize>,
    /// During a rolling restart: the position in `table_order` of the region being recycled.
    rolling: Option<usize>,
    finished: bool,
    out: Vec<Action>,
}

impl Policy {
    /// `names`: the selected regions, in the order the supervisor indexes them.
    pub fn new(settings: Settings, names: Vec<&'static str>) -> Policy {
        let mut table_order: Vec<usize> = (0..names.len()).collect();
        table_order.sort_by_key(|&r| crate::region_table::index_of(names[r]));
        Policy {
            settings,
            regions: names.iter().map(|_| RegionRecord::new()).collect(),
            table_order,
            rolling: None,
            names,
            stopping: false,
            killing: false,
            exit: Exit::Ok,
            give_up: None,
            finished: false,
            out: Vec::new(),
        }
    }

    /// True once the supervisor is stopping or has given up (for `/livez`).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    pub fn on(&mut self, input: Event, now: Instant) -> Vec<Action> {
        match input {
            // A stop that came first leaves nothing to start.
            Event::Begin if self.stopping => {}
            Event::Begin if self.settings.idle_stop.is_some() => {
                self.regions.iter_mut().for_each(|r| r.phase = Phase::Idle);
                self.log(
                    Level::Info,
                    None,
                    "every region idle until its first connection (on demand)".into(),
                    vec![],
                );
            }
            Event::Begin => (0..self.regions.len()).for_each(|r| self.spawn(r)),
            Event::Started { region, generation, pid } => self.started(region, generation, pid, now),
            Event::SpawnFailed { region, generation, error } => {
                if generation == self.regions[region].generation {
                    self.log(Level::Error, Some(region), format!("cannot start: {error}"), vec![]);
                    self.ended(region, format!("could not be started: {error}"), vec![], now);
                }
            }
            Event::Exited { region, generation, status, tail } => {
                if generation == self.regions[region].generation {
                    self.exited(region, status, tail, now);
                }
            }
            Event::Probed { region, generation, result } => {
                if generation == self.regions[region].generation {
                    self.probed(region, result, now);
                }
            }
            Event::Stop { signal } => self.stop_signal(signal, now),
            Event::Reload => self.reload(now),
            Event::Demand { region } => self.demand(region),
            Event::Activity { region, open, quiet } => self.activity(region, open, quiet, now),
            Event::Forward { signal } => self.forward(signal),
            Event::Tick => {}
        }
        self.fire_due(now);
        self.check_done();
        std::mem::take(&mut self.out)
    }

    /// The earliest instant at which `on(Tick)` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.regions
            .iter()
            .flat_map(|r| {
                let phase_time = match r.phase {
                    Phase::Starting { deadline } => Some(deadline),
                    Phase::Stopping { kill_at, .. } => kill_at,
                    Phase::Backoff { until } => Some(until),
                    _ => None,
                };
                let probe = if r.probing { None } else { r.probe_at };
                [phase_time, probe, r.reset_at, r.idle_check_at]
            })
            .flatten()
            .min()
    }

    fn log(
        &mut self,
        level: Level,
        region: Option<usize>,
        message: String,
        fields: Vec<(&'static str, Value)>,
    ) {
        self.out.push(Action::Log { level, region, message, fields });
    }

    fn spawn(&mut self, r: usize) {
        let reg = &mut self.regions[r];
        reg.generation += 1;
        reg.phase = Phase::Spawning;
        reg.stop_timers();
        reg.probe_failures = 0;
        self.out.push(Action::Spawn { region: r, generation: reg.generation });
    }

    fn started(&mut self, r: usize, generation: u64, pid: i32, now: Instant) {
        if generation != self.regions[r].generation {
            return;
        }
        let attempt = self.regions[r].restarts;
        self.regions[r].pid = Some(pid);
        self.log(
            Level::Info,
            Some(r),
            "started".into(),
            vec![("pid", json!(pid)), ("restarts", json!(attempt))],
        );
        if self.stopping {
            // A stop began while this spawn was under way: stop it right away.
            self.regions[r].phase =
                Phase::Stopping { kill_at: Some(now + self.settings.grace), then: Then::Rest };
            let signal = if self.killing { libc::SIGKILL } else { libc::SIGTERM };
            self.out.push(Action::Signal { region: r, pid, signal });
            return;
        }
        let reg = &mut self.regions[r];
        reg.phase = Phase::Starting { deadline: now + self.settings.startup_timeout };
        reg.probe_at = Some(now + FIRST_PROBE);
    }

    fn exited(&mut self, r: usize, status: ExitStatus, tail: Vec<String>, now: Instant) {
        let reg = &mut self.regions[r];
        reg.pid = None;
        reg.stop_timers();
        reg.last_exit = Some(status.to_string());
        let expected = matches!(reg.phase, Phase::Stopping { .. });
        let level = if expected { Level::Info } else { Level::Warn };
        self.log(level, Some(r), status.to_string(), vec![("status", status_json(status))]);
        if self.give_up.as_ref().is_some_and(|(g, _)| *g == r) {
            let (_, cause) = self.give_up.take().expect("checked");
            self.report_give_up(r, &cause, tail);
            self.regions[r].phase = Phase::Failed;
            return;
        }
        match self.regions[r].phase {
            Phase::Stopping { then: Then::Backoff, .. } if !self.stopping => self.schedule_restart(r, now),
            Phase::Stopping { then: Then::Respawn, .. } if !self.stopping => {
                self.regions[r].restarts += 1;
                self.spawn(r);
            }
            Phase::Stopping { then: Then::Idle, .. } if !self.stopping => {
                self.regions[r].phase = Phase::Idle;
                self.regions[r].idle_stops += 1;
            }
            Phase::Stopping { then: Then::Wake, .. } if !self.stopping => {
                self.regions[r].idle_stops += 1;
                self.log(Level::Info, Some(r), "starting on demand".into(), vec![]);
                self.spawn(r);
            }
            Phase::Stopping { .. } => self.regions[r].phase = Phase::Stopped,
            _ => self.ended(r, status.to_string(), tail, now),
        }
    }

    /// The child is gone without being asked to go: a failure, unless we are stopping.
    fn ended(&mut self, r: usize, cause: String, tail: Vec<String>, now: Instant) {
        self.regions[r].pid = None;
        if self.stopping {
            self.regions[r].phase = Phase::Stopped;
        } else {
            self.failure(r, cause, Some(tail), now);
        }
    }

    /// Counts a failure and restarts or gives up. `tail` is the last output when the child is
    /// already gone (`None`: it is still running and is stopped first).
    fn failure(&mut self, r: usize, cause: String, tail: Option<Vec<String>>, now: Instant) {
        let reg = &mut self.regions[r];
        reg.failures += 1;
        reg.stop_timers();
        let (failures, max) = (reg.failures, self.settings.max_restarts);
        if failures > max {
            reg.gave_up = true;
            self.exit = Exit::Failure;
            match tail {
                Some(tail) => {
                    self.regions[r].phase = Phase::Failed;
                    self.report_give_up(r, &cause, tail);
                }
                None => {
                    self.give_up = Some((r, cause.clone()));
                    self.stop_region(r, Then::Rest, now);
                }
            }
            self.begin_stop(format!("{} gave up", self.names[r]), now);
            return;
        }
        self.log(
            Level::Warn,
            Some(r),
            format!("failure {failures} of {max} allowed: {cause}"),
            vec![("cause", json!(cause)), ("failures", json!(failures))],
        );
        if tail.is_some() {
            self.schedule_restart(r, now);
        } else {
            self.stop_region(r, Then::Backoff, now);
        }
    }

    fn report_give_up(&mut self, r: usize, cause: &str, tail: Vec<String>) {
        let max = self.settings.max_restarts;
        self.log(
            Level::Error,
            Some(r),
            format!("giving up after {max} restarts: {cause}"),
            vec![("cause", json!(cause)), ("restarts", json!(max)), ("last_lines", json!(tail))],
        );
    }

    fn schedule_restart(&mut self, r: usize, now: Instant) {
        let failures = self.regions[r].failures;
        let delay = self.settings.backoff(failures);
        self.regions[r].phase = Phase::Backoff { until: now + delay };
        self.log(
            Level::Info,
            Some(r),
            format!("restarting in {} (attempt {failures}/{})", human(delay), self.settings.max_restarts),
            vec![
                ("attempt", json!(failures)),
                ("max_restarts", json!(self.settings.max_restarts)),
                ("delay_ms", json!(delay.as_millis() as u64)),
            ],
        );
    }

    /// SIGTERM now, SIGKILL after the grace.
    fn stop_region(&mut self, r: usize, then: Then, now: Instant) {
        let Some(pid) = self.regions[r].pid else { return };
        if let Phase::Stopping { kill_at, .. } = self.regions[r].phase {
            self.regions[r].phase = Phase::Stopping { kill_at, then };
            return;
        }
        self.regions[r].phase = Phase::Stopping { kill_at: Some(now + self.settings.grace), then };
        self.out.push(Action::Signal { region: r, pid, signal: libc::SIGTERM });
    }

    fn begin_stop(&mut self, reason: String, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.log(Level::Info, None, format!("stopping all regions: {reason}"), vec![]);
        if self.rolling.take().is_some() {
            self.log(Level::Info, None, "rolling restart: ended by the stop".into(), vec![]);
        }
        for r in 0..self.regions.len() {
            match self.regions[r].phase {
                Phase::Starting { .. } | Phase::Ready | Phase::Unhealthy | Phase::Stopping { .. } => {
                    self.stop_region(r, Then::Rest, now)
                }
                Phase::Backoff { .. } | Phase::Idle => self.regions[r].phase = Phase::Stopped,
                // A spawn under way is stopped when it reports in (`started`).
                Phase::Spawning | Phase::Stopped | Phase::Failed => {}
            }
        }
    }

    fn stop_signal(&mut self, signal: i32, now: Instant) {
        if !self.stopping {
            self.begin_stop(format!("received {}", signal_name(signal)), now);
            return;
        }
        if signal == libc::SIGQUIT || self.killing {
            return;
        }
        self.killing = true;
        self.log(
            Level::Warn,
            None,
            format!("received {} again: killing what is left", signal_name(signal)),
            vec![],
        );
        for r in 0..self.regions.len() {
            if let Some(pid) = self.regions[r].pid {
                self.out.push(Action::Signal { region: r, pid, signal: libc::SIGKILL });
                if let Phase::Stopping { then, .. } = self.regions[r].phase {
                    self.regions[r].phase = Phase::Stopping { kill_at: None, then };
                }
            }
        }
    }

    /// SIGHUP: every serving region gets a new child, one at a time in table order, the next
    /// once the last is ready again. Not failures: the count and backoff stay as they are.
    fn reload(&mut self, now: Instant) {
        if self.stopping {
            self.log(Level::Info, None, "SIGHUP ignored: stopping".into(), vec![]);
        } else if self.rolling.is_some() {
            self.log(Level::Warn, None, "rolling restart already in progress: SIGHUP ignored".into(), vec![]);
        } else {
            self.log(Level::Info, None, "rolling restart: begin".into(), vec![]);
            self.roll_from(0, now);
        }
    }

    /// Recycles the first region at or after `position` (in table order) that serves now, or
    /// ends the rolling restart. Regions that do not serve (starting, in backoff, stopped) are
    /// skipped: they get a new child anyway, or have none to recycle.
    fn roll_from(&mut self, position: usize, now: Instant) {
        let next = (position..self.table_order.len())
            .find(|&p| self.regions[self.table_order[p]].takes_connections());
        self.rolling = next;
        match next {
            Some(p) => {
                let r = self.table_order[p];
                self.log(Level::Info, Some(r), "rolling restart: restarting".into(), vec![]);
                self.stop_region(r, Then::Respawn, now);
            }
            None => self.log(Level::Info, None, "rolling restart: done".into(), vec![]),
        }
    }

    /// A region passed its readiness probe: the rolling restart moves on if it waited for it.
    fn became_ready(&mut self, r: usize, now: Instant) {
        if let Some(p) = self.rolling.filter(|&p| self.table_order[p] == r) {
            self.roll_from(p + 1, now);
        }
    }

    /// A connection for an idle region: start it (its connections are held until it is
    /// ready). During its idle stop: start it again once the old child is gone.
    fn demand(&mut self, r: usize) {
        match self.regions[r].phase {
            Phase::Idle if !self.stopping => {
                self.log(Level::Info, Some(r), "starting on demand".into(), vec![]);
                self.spawn(r);
            }
            Phase::Stopping { kill_at, then: Then::Idle } => {
                self.regions[r].phase = Phase::Stopping { kill_at, then: Then::Wake };
            }
            _ => {}
        }
    }

    /// The relay's count: stop the region if it has had no connection for the idle time,
    /// else look again when it could have.
    fn activity(&mut self, r: usize, open: usize, quiet: Duration, now: Instant) {
        let Some(idle_stop) = self.settings.idle_stop else { return };
        if !matches!(self.regions[r].phase, Phase::Ready | Phase::Unhealthy) {
            return;
        }
        if open == 0 && quiet >= idle_stop {
            self.log(
                Level::Info,
                Some(r),
                format!("idle: stopping after {} without connections", human(idle_stop)),
                vec![("quiet_ms", json!(quiet.as_millis() as u64))],
            );
            self.stop_region(r, Then::Idle, now);
        } else {
            let wait = if open > 0 { idle_stop } else { idle_stop - quiet };
            self.regions[r].idle_check_at = Some(now + wait);
        }
    }

    fn forward(&mut self, signal: i32) {
        let mut n = 0;
        for r in 0..self.regions.len() {
            if let Some(pid) = self.regions[r].pid {
                self.out.push(Action::Signal { region: r, pid, signal });
                n += 1;
            }
        }
        self.log(Level::Info, None, format!("forwarded {} to {n} regions", signal_name(signal)), vec![]);
    }

    fn probed(&mut self, r: usize, result: Result<(), String>, now: Instant) {
        let interval = self.settings.probe_interval;
        let reg = &mut self.regions[r];
        reg.probing = false;
        match (reg.phase, result) {
            (Phase::Starting { .. }, Ok(())) => {
                reg.phase = Phase::Ready;
                reg.probe_at = Some(now + interval);
                reg.reset_at = (reg.failures > 0).then_some(now + self.settings.reset);
                reg.idle_check_at = self.settings.idle_stop.map(|d| now + d);
                self.log(Level::Info, Some(r), "ready".into(), vec![]);
                self.became_ready(r, now);
            }
            (Phase::Starting { .. }, Err(_)) => reg.probe_at = Some(now + STARTUP_PROBE_EVERY),
            (Phase::Ready, Ok(())) => reg.probe_at = Some(now + interval),
            (Phase::Unhealthy, Ok(())) => {
                reg.phase = Phase::Ready;
                reg.probe_failures = 0;
                reg.probe_at = Some(now + interval);
                reg.reset_at = (reg.failures > 0).then_some(now + self.settings.reset);
                self.log(Level::Info, Some(r), "healthy again".into(), vec![]);
            }
            (Phase::Ready | Phase::Unhealthy, Err(why)) => {
                reg.phase = Phase::Unhealthy;
                reg.probe_failures += 1;
                reg.reset_at = None;
                reg.probe_at = Some(now + interval);
                let (n, limit) = (reg.probe_failures, self.settings.liveness_failures);
                self.log(
                    Level::Warn,
                    Some(r),
                    format!("health probe failed ({n} in a row): {why}"),
                    vec![("cause", json!(why))],
                );
                if limit > 0 && n >= limit {
                    self.failure(r, format!("failed {n} consecutive health probes ({why})"), None, now);
                }
            }
            _ => {}
        }
    }

    fn fire_due(&mut self, now: Instant) {
        for r in 0..self.regions.len() {
            match self.regions[r].phase {
                Phase::Starting { deadline } if now >= deadline => {
                    let cause = format!("not ready within {}", human(self.settings.startup_timeout));
                    self.failure(r, cause, None, now);
                }
                Phase::Stopping { kill_at: Some(t), then } if now >= t => {
                    self.regions[r].phase = Phase::Stopping { kill_at: None, then };
                    if let Some(pid) = self.regions[r].pid {
                        self.log(
                            Level::Warn,
                            Some(r),
                            format!("still running after {}: killing", human(self.settings.grace)),
                            vec![],
                        );
                        self.out.push(Action::Signal { region: r, pid, signal: libc::SIGKILL });
                    }
                }
                Phase::Backoff { until } if now >= until => {
                    self.regions[r].restarts += 1;
                    self.spawn(r);
                }
                _ => {}
            }
            let reg = &mut self.regions[r];
            if reg.reset_at.is_some_and(|t| now >= t) && reg.phase == Phase::Ready {
                reg.reset_at = None;
                reg.failures = 0;
                self.log(
                    Level::Info,
                    Some(r),
                    format!("healthy for {}: failure count reset", human(self.settings.reset)),
                    vec![],
                );
            }
            let reg = &mut self.regions[r];
            if reg.idle_check_at.is_some_and(|t| now >= t) {
                reg.idle_check_at = None;
                self.out.push(Action::CheckIdle { region: r });
            }
            let reg = &mut self.regions[r];
            let probe_phase = matches!(reg.phase, Phase::Starting { .. } | Phase::Ready | Phase::Unhealthy);
            if probe_phase && !reg.probing && reg.probe_at.is_some_and(|t| now >= t) {
                let timeout = match reg.phase {
                    Phase::Starting { deadline } => STARTUP_PROBE_TIMEOUT
                        .min(deadline.saturating_duration_since(now))
                        .max(Duration::from_millis(10)),
                    _ => self.settings.probe_interval.min(LIVENESS_PROBE_TIMEOUT),
                };
                reg.probing = true;
                reg.probe_at = None;
                self.out.push(Action::Probe { region: r, generation: reg.generation, timeout });
            }
        }
    }

    fn check_done(&mut self) {
        if self.finished || !self.stopping {
            return;
        }
        if self.regions.iter().all(|r| matches!(r.phase, Phase::Stopped | Phase::Failed)) {
            self.finished = true;
            self.out.push(Action::Exit(self.exit));
        }
    }
}

fn status_json(status: ExitStatus) -> Value {
    match status {
        ExitStatus::Code(c) => json!({"code": c}),
        ExitStatus::Signal(s) => json!({"signal": signal_name(s)}),
    }
}

/// `250ms`, `4s`, `2m30s`: durations as operators write them.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            max_restarts: 3,
            backoff: Duration::from_secs(1),
            reset: Duration::from_secs(60),
            startup_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(10),
            liveness_failures: 3,
            grace: Duration::from_secs(4),
            idle_stop: None,
        }
    }

    struct Sim {
        p: Policy,
        now: Instant,
        actions: Vec<Action>,
    }

    impl Sim {
        fn new(regions: usize) -> Sim {
            let names = crate::region_table::REGIONS[..regions].to_vec();
            let mut sim = Sim { p: Policy::new(settings(), names), now: Instant::now(), actions: vec![] };
            sim.send(Event::Begin);
            sim
        }

        fn send(&mut self, input: Event) -> &[Action] {
            self.actions = self.p.on(input, self.now);
            &self.actions
        }

        fn advance(&mut self, d: Duration) -> &[Action] {
            self.now += d;
            self.send(Event::Tick)
        }

        fn generation(&self, r: usize) -> u64 {
            self.p.regions[r].generation
        }

        /// Start region r with `pid` and make it ready.
        fn up(&mut self, r: usize, pid: i32) {
            let generation = self.generation(r);
            self.send(Event::Started { region: r, generation, pid });
            self.send(Event::Probed { region: r, generation, result: Ok(()) });
            assert!(self.p.regions[r].is_ready());
        }

        fn exit(&mut self, r: usize, status: ExitStatus) -> &[Action] {
            let generation = self.generation(r);
            self.send(Event::Exited { region: r, generation, status, tail: vec!["last words".into()] })
        }

        fn has(&self, want: &Action) -> bool {
            self.actions.iter().any(|a| a == want)
        }

        fn exit_code(&self) -> Option<Exit> {
            self.actions.iter().find_map(|a| if let Action::Exit(c) = a { Some(*c) } else { None })
        }
    }

    #[test]
    fn begin_spawns_every_region_at_once() {
        let sim = Sim::new(3);
        let spawns = sim.actions.iter().filter(|a| matches!(a, Action::Spawn { .. })).count();
        assert_eq!(spawns, 3);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = settings();
        let got: Vec<u64> = (1..=7).map(|f| s.backoff(f).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(s.backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn three_failures_restart_then_the_fourth_gives_up() {
        let mut sim = Sim::new(2);
        sim.up(0, 100);
        sim.up(1, 200);
        let mut delay = Duration::from_secs(1);
        for attempt in 1..=3 {
            sim.exit(0, ExitStatus::Code(3));
            assert_eq!(sim.p.regions[0].state().as_str(), "backoff");
            assert!(sim.advance(delay - Duration::from_millis(1)).is_empty());
            let generation = sim.generation(0);
            sim.advance(Duration::from_millis(1));
            assert!(sim.has(&Action::Spawn { region: 0, generation: generation + 1 }), "attempt {attempt}");
            assert_eq!(sim.p.regions[0].restarts, attempt);
            sim.up(0, 100 + attempt as i32);
            delay *= 2;
        }
        sim.exit(0, ExitStatus::Signal(libc::SIGSEGV));
        assert_eq!(sim.p.regions[0].state().as_str(), "failed");
        assert!(sim.has(&Action::Signal { region: 1, pid: 200, signal: libc::SIGTERM }));
        let give_up = sim.actions.iter().find_map(|a| match a {
            Action::Log { level: Level::Error, message, fields, .. } => {
                Some((message.clone(), fields.clone()))
            }
            _ => None,
        });
        let (message, fields) = give_up.expect("a give-up error");
        assert!(message.contains("killed by SIGSEGV"), "{message}");
        assert!(fields.contains(&("last_lines", json!(["last words"]))));
        assert_eq!(sim.exit_code(), None, "waits for the other region");
        sim.exit(1, ExitStatus::Code(0));
        assert_eq!(sim.exit_code(), Some(Exit::Failure));
    }

    #[test]
    fn stable_health_resets_the_failure_count() {
        let mut sim = Sim::new(1);
        sim.up(0, 10);
        sim.exit(0, ExitStatus::Code(1));
        sim.advance(Duration::from_secs(1));
        sim.up(0, 11);
        assert_eq!(sim.p.regions[0].failures, 1);
        // Probes keep passing for 60s.
        for _ in 0..6 {
            sim.advance(Duration::from_secs(10));
            let generation = sim.generation(0);
            sim.send(Event::Probed { region: 0, generation, result: Ok(()) });
        }
        assert_eq!(sim.p.regions[0].failures, 0);
        sim.exit(0, ExitStatus::Code(1));
        assert!(sim
            .actions
            .iter()
            .any(|a| matches!(a, Action::Log { message, .. } if message.contains("in 1s (attempt 1/3)"))));
    }

    #[test]
    fn startup_timeout_stops_then_restarts() {
        let mut sim = Sim::new(1);
        let generation = sim.generation(0);
        sim.send(Event::Started { region: 0, generation, pid: 7 });
        sim.advance(Duration::from_secs(10));
        assert!(sim.has(&Action::Signal { region: 0, pid: 7, signal: libc::SIGTERM }));
        assert_eq!(sim.p.regions[0].failures, 1);
        sim.advance(Duration::from_secs(4));
        assert!(sim.has(&Action::Signal { region: 0, pid: 7, signal: libc::SIGKILL }));
        sim.exit(0, ExitStatus::Signal(libc::SIGKILL));
        assert_eq!(sim.p.regions[0].state().as_str(), "backoff");
        sim.advance(Duration::from_secs(1));
        assert!(sim.has(&Action::Spawn { region: 0, generation: generation + 1 }));
    }

    #[test]
    fn liveness_failures_count_after_the_threshold() {
        let mut sim = Sim::new(1);
        sim.up(0, 5);
        for n in 1..=3 {
            sim.advance(Duration::from_secs(10));
            let generation = sim.generation(0);
            assert!(sim.actions.iter().any(|a| matches!(a, Action::Probe { .. })));
            sim.send(Event::Probed { region: 0, generation, result: Err("timed out".into()) });
            assert_eq!(sim.p.regions[0].state().as_str(), "unhealthy");
            let stopped = sim.has(&Action::Signal { region: 0, pid: 5, signal: libc::SIGTERM });
            assert_eq!(stopped, n == 3, "probe {n}");
        }
    }

    #[test]
    fn zero_liveness_failures_never_restarts() {
        let mut sim = Sim::new(1);
        sim.p.settings.liveness_failures = 0;
        sim.up(0, 5);
        for _ in 0..10 {
            sim.advance(Duration::from_secs(10));
            let generation = sim.generation(0);
            sim.send(Event::Probed { region: 0, generation, result: Err("503".into()) });
            assert!(!sim.actions.iter().any(|a| matches!(a, Action::Signal { .. })));
        }
    }

    #[test]
    fn sigterm_stops_everything_and_exits_zero() {
        let mut sim = Sim::new(2);
        sim.up(0, 10);
        sim.up(1, 20);
        sim.send(Event::Stop { signal: libc::SIGTERM });
        assert!(sim.has(&Action::Signal { region: 0, pid: 10, signal: libc::SIGTERM }));
        assert!(sim.has(&Action::Signal { region: 1, pid: 20, signal: libc::SIGTERM }));
        sim.exit(0, ExitStatus::Code(0));
        assert_eq!(sim.exit_code(), None);
        // An exit during the stop is not a failure.
        sim.exit(1, ExitStatus::Signal(libc::SIGTERM));
        assert_eq!(sim.exit_code(), Some(Exit::Ok));
        assert_eq!(sim.p.regions[1].failures, 0);
    }

    #[test]
    fn grace_then_sigkill_and_second_signal_kills_at_once() {
        let mut sim = Sim::new(2);
        sim.up(0, 10);
        sim.up(1, 20);
        sim.send(Event::Stop { signal: libc::SIGINT });
        sim.advance(Duration::from_secs(4));
        assert!(sim.has(&Action::Signal { region: 0, pid: 10, signal: libc::SIGKILL }));
        let mut sim = Sim::new(1);
        sim.up(0, 10);
        sim.send(Event::Stop { signal: libc::SIGTERM });
        sim.send(Event::Stop { signal: libc::SIGTERM });
        assert!(sim.has(&Action::Signal { region: 0, pid: 10, signal: libc::SIGKILL }));
        sim.exit(0, ExitStatus::Signal(libc::SIGKILL));
        assert_eq!(sim.exit_code(), Some(Exit::Ok));
    }

    #[test]
    fn stop_during_backoff_and_during_spawn() {
        let mut sim = Sim::new(2);
        sim.up(0, 10);
        sim.exit(0, ExitStatus::Code(1)); // region 0 in backoff; region 1 still spawning
        sim.send(Event::Stop { signal: libc::SIGTERM });
        assert_eq!(sim.p.regions[0].state().as_str(), "stopped");
        let generation = sim.generation(1);
        sim.send(Event::Started { region: 1, generation, pid: 20 });
        assert!(sim.has(&Action::Signal { region: 1, pid: 20, signal: libc::SIGTERM }));
        sim.exit(1, ExitStatus::Code(0));
        assert_eq!(sim.exit_code(), Some(Exit::Ok));
    }

    #[test]
    fn forwards_to_live_children_only() {
        let mut sim = Sim::new(2);
        sim.up(0, 10);
        sim.send(Event::Forward { signal: libc::SIGUSR1 });
        assert!(sim.has(&Action::Signal { region: 0, pid: 10, signal: libc::SIGUSR1 }));
        assert_eq!(sim.actions.iter().filter(|a| matches!(a, Action::Signal { .. })).count(), 1);
    }

    fn logged(sim: &Sim, text: &str) -> bool {
        sim.actions.iter().any(|a| matches!(a, Action::Log { message, .. } if message.contains(text)))
    }

    fn sigterms(sim: &Sim) -> Vec<usize> {
        sim.actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { region, signal: libc::SIGTERM, .. } => Some(*region),
                _ => None,
            })
            .collect()
    }

    /// Regions given out of table order: ap-south-1 (row 6), us-east-1 (row 0), eu-west-1 (row 2).
    fn rolling_sim() -> Sim {
        let names = vec!["ap-south-1", "us-east-1", "eu-west-1"];
        let mut sim = Sim { p: Policy::new(settings(), names), now: Instant::now(), actions: vec![] };
        sim.send(Event::Begin);
        for r in 0..3 {
            sim.up(r, 10 + r as i32);
        }
        sim
    }

    #[test]
    fn sighup_recycles_one_region_at_a_time_in_table_order() {
        let mut sim = rolling_sim();
        sim.send(Event::Reload);
        assert!(logged(&sim, "rolling restart: begin"));
        let mut order = Vec::new();
        for pid in [100, 200, 300] {
            let stopped = sigterms(&sim);
            assert_eq!(stopped.len(), 1, "one region at a time: {:?}", sim.actions);
            let r = stopped[0];
            order.push(sim.p.names[r]);
            let not_ready = sim.p.regions.iter().filter(|x| !x.takes_connections()).count();
            assert_eq!(not_ready, 1, "only the recycled region stops serving");
            assert_eq!(sim.p.regions[r].state().as_str(), "starting");
            let generation = sim.generation(r);
            sim.exit(r, ExitStatus::Code(0));
            assert!(sim.has(&Action::Spawn { region: r, generation: generation + 1 }), "respawned at once");
            assert_eq!(sim.p.regions[r].restarts, 1);
            assert_eq!(sim.p.regions[r].failures, 0, "not a failure");
            let generation = sim.generation(r);
            sim.send(Event::Started { region: r, generation, pid });
            assert!(sigterms(&sim).is_empty(), "the next waits until this one is ready");
            sim.send(Event::Probed { region: r, generation, result: Ok(()) });
        }
        assert_eq!(order, ["us-east-1", "eu-west-1", "ap-south-1"]);
        assert!(logged(&sim, "rolling restart: done"));
        assert!(sim.p.regions.iter().all(|r| r.is_ready() && r.restarts == 1 && r.failures == 0));
    }

    #[test]
    fn sighup_during_a_rolling_restart_is_logged_and_ignored() {
        let mut sim = rolling_sim();
        sim.send(Event::Reload);
        assert_eq!(sigterms(&sim), [1]);
        sim.send(Event::Reload);
        assert!(logged(&sim, "rolling restart already in progress"));
        assert!(sigterms(&sim).is_empty());
    }

    #[test]
    fn a_stop_ends_the_rolling_restart() {
        let mut sim = rolling_sim();
        sim.send(Event::Reload);
        sim.send(Event::Stop { signal: libc::SIGTERM });
        assert!(logged(&sim, "rolling restart: ended by the stop"));
        sim.exit(1, ExitStatus::Code(0));
        assert!(!sim.actions.iter().any(|a| matches!(a, Action::Spawn { .. })), "no respawn while stopping");
        sim.exit(0, ExitStatus::Code(0));
        sim.exit(2, ExitStatus::Code(0));
        assert_eq!(sim.exit_code(), Some(Exit::Ok));
    }

    #[test]
    fn a_recycled_region_that_fails_to_come_back_is_a_failure_and_the_roll_waits() {
        let mut sim = rolling_sim();
        sim.send(Event::Reload);
        sim.exit(1, ExitStatus::Code(0));
        let generation = sim.generation(1);
        sim.send(Event::Started { region: 1, generation, pid: 50 });
        sim.advance(Duration::from_secs(10));
        assert_eq!(sim.p.regions[1].failures, 1, "not ready within the startup timeout");
        assert_eq!(sigterms(&sim), [1]);
        sim.exit(1, ExitStatus::Signal(libc::SIGTERM));
        sim.advance(Duration::from_secs(1));
        sim.up(1, 51);
        assert_eq!(sigterms(&sim), [2], "the roll goes on once the region is ready");
    }

    #[test]
    fn a_rolling_restart_skips_regions_that_do_not_serve() {
        let mut sim = rolling_sim();
        sim.exit(1, ExitStatus::Code(1)); // us-east-1 in backoff
        sim.send(Event::Reload);
        assert_eq!(sigterms(&sim), [2], "us-east-1 is skipped: eu-west-1 first");
    }

    #[test]
    fn a_stop_before_the_start_starts_nothing() {
        let names = crate::region_table::REGIONS[..2].to_vec();
        let mut p = Policy::new(settings(), names);
        let now = Instant::now();
        let actions = p.on(Event::Stop { signal: libc::SIGTERM }, now);
        assert!(actions.iter().any(|a| matches!(a, Action::Log { message, .. } if message == "stopping all regions: received SIGTERM")));
        assert!(actions.contains(&Action::Exit(Exit::Ok)));
        assert!(p.on(Event::Begin, now).is_empty());
    }

    #[test]
    fn stale_generations_are_ignored() {
        let mut sim = Sim::new(1);
        sim.up(0, 10);
        let old = sim.generation(0);
        sim.exit(0, ExitStatus::Code(1));
        sim.advance(Duration::from_secs(1));
        sim.send(Event::Probed { region: 0, generation: old, result: Ok(()) });
        assert_eq!(sim.p.regions[0].state().as_str(), "starting");
    }

    #[test]
    fn spawn_failure_counts_as_failure() {
        let mut sim = Sim::new(1);
        let generation = sim.generation(0);
        sim.send(Event::SpawnFailed { region: 0, generation, error: "Exec format error".into() });
        assert_eq!(sim.p.regions[0].failures, 1);
        assert_eq!(sim.p.regions[0].state().as_str(), "backoff");
    }

    const IDLE: Duration = Duration::from_secs(600);

    /// On demand, two regions.
    fn on_demand() -> Sim {
        let names = crate::region_table::REGIONS[..2].to_vec();
        let settings = Settings { idle_stop: Some(IDLE), ..settings() };
        let mut sim = Sim { p: Policy::new(settings, names), now: Instant::now(), actions: vec![] };
        sim.send(Event::Begin);
        sim
    }

    fn spawns(sim: &Sim) -> Vec<usize> {
        sim.actions
            .iter()
            .filter_map(|a| if let Action::Spawn { region, .. } = a { Some(*region) } else { None })
            .collect()
    }

    #[test]
    fn on_demand_a_region_starts_at_its_first_connection_only() {
        let mut sim = on_demand();
        assert!(spawns(&sim).is_empty(), "no child at start");
        assert!(sim.p.regions.iter().all(|r| r.state() == RegionState::Idle && r.wakes_on_connection()));
        sim.send(Event::Demand { region: 1 });
        assert_eq!(spawns(&sim), [1]);
        assert!(logged(&sim, "starting on demand"));
        assert_eq!(sim.p.regions[1].state(), RegionState::Starting);
        sim.send(Event::Demand { region: 1 });
        assert!(spawns(&sim).is_empty(), "a second connection starts nothing more");
        sim.up(1, 50);
        assert_eq!(sim.p.regions[0].state(), RegionState::Idle);
        assert_eq!(sim.p.regions[1].restarts, 0);
    }

    #[test]
    fn on_demand_a_ready_region_without_connections_goes_idle_after_the_idle_time() {
        let mut sim = on_demand();
        sim.send(Event::Demand { region: 0 });
        sim.up(0, 50);
        assert_eq!(sim.p.next_deadline(), Some(sim.now + Duration::from_secs(10)), "the probe comes first");
        // Probes pass; at the idle time the relay is asked, and it had connections: look again later.
        let mut asked = false;
        for _ in 0..60 {
            sim.advance(Duration::from_secs(10));
            asked |= sim.has(&Action::CheckIdle { region: 0 });
            let generation = sim.generation(0);
            sim.send(Event::Probed { region: 0, generation, result: Ok(()) });
        }
        assert!(asked, "asked the relay at the idle time");
        sim.send(Event::Activity { region: 0, open: 2, quiet: Duration::ZERO });
        assert!(sigterms(&sim).is_empty(), "busy: not stopped");
        assert_eq!(sim.p.regions[0].idle_check_at, Some(sim.now + IDLE));
        // Quiet for 4 minutes: look again in 6.
        sim.send(Event::Activity { region: 0, open: 0, quiet: Duration::from_secs(240) });
        assert_eq!(sim.p.regions[0].idle_check_at, Some(sim.now + Duration::from_secs(360)));
        sim.send(Event::Activity { region: 0, open: 0, quiet: IDLE });
        assert_eq!(sigterms(&sim), [0]);
        assert!(logged(&sim, "idle: stopping after 10m without connections"));
        assert_eq!(sim.p.regions[0].state(), RegionState::Idle);
        sim.exit(0, ExitStatus::Code(0));
        assert!(spawns(&sim).is_empty(), "not a restart");
        assert!(!logged(&sim, "failure"));
        let r = &sim.p.regions[0];
        assert_eq!((r.state(), r.idle_stops, r.restarts, r.failures), (RegionState::Idle, 1, 0, 0));
        sim.send(Event::Demand { region: 0 });
        assert_eq!(spawns(&sim), [0], "the next connection starts it again");
    }

    #[test]
    fn on_demand_a_connection_during_the_idle_stop_starts_the_region_once_the_old_child_is_gone() {
        let mut sim = on_demand();
        sim.send(Event::Demand { region: 0 });
        sim.up(0, 50);
        sim.send(Event::Activity { region: 0, open: 0, quiet: IDLE });
        assert_eq!(sigterms(&sim), [0]);
        sim.send(Event::Demand { region: 0 });
        assert!(spawns(&sim).is_empty(), "not while the old child runs");
        assert_eq!(sim.p.regions[0].state(), RegionState::Starting);
        assert!(!sim.p.regions[0].wakes_on_connection(), "the relay now holds without asking again");
        sim.exit(0, ExitStatus::Code(0));
        assert_eq!(spawns(&sim), [0]);
        let r = &sim.p.regions[0];
        assert_eq!((r.idle_stops, r.restarts, r.failures), (1, 0, 0));
    }

    #[test]
    fn on_demand_failures_follow_the_restart_policy() {
        let mut sim = on_demand();
        sim.send(Event::Demand { region: 0 });
        sim.up(0, 50);
        sim.exit(0, ExitStatus::Code(1));
        assert_eq!(sim.p.regions[0].state(), RegionState::Backoff);
        assert_eq!(sim.p.regions[0].failures, 1);
        sim.advance(Duration::from_secs(1));
        assert_eq!(spawns(&sim), [0], "restarted after the backoff");
        assert_eq!(sim.p.regions[0].restarts, 1);
        // Three more failures give up, as for any region.
        for _ in 0..2 {
            sim.up(0, 60);
            sim.exit(0, ExitStatus::Code(1));
            sim.advance(Duration::from_secs(30));
        }
        sim.up(0, 61);
        sim.exit(0, ExitStatus::Code(1));
        assert_eq!(sim.p.regions[0].state(), RegionState::Failed);
        assert_eq!(sim.exit_code(), Some(Exit::Failure), "the idle region stops with it");
    }

    #[test]
    fn on_demand_a_rolling_restart_skips_idle_regions_and_a_stop_ends_idle_ones() {
        let mut sim = on_demand();
        sim.send(Event::Demand { region: 1 });
        sim.up(1, 50);
        sim.send(Event::Reload);
        assert_eq!(sigterms(&sim), [1], "only the running region");
        sim.exit(1, ExitStatus::Code(0));
        sim.up(1, 51);
        assert!(logged(&sim, "rolling restart: done"));
        assert_eq!(sim.p.regions[0].state(), RegionState::Idle);
        sim.send(Event::Stop { signal: libc::SIGTERM });
        assert_eq!(sigterms(&sim), [1]);
        sim.exit(1, ExitStatus::Code(0));
        assert_eq!(sim.exit_code(), Some(Exit::Ok));
        sim.send(Event::Demand { region: 0 });
        assert!(spawns(&sim).is_empty(), "nothing starts once stopping");
    }

    #[test]
    fn humanizes_durations() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(4)), "4s");
        assert_eq!(human(Duration::from_secs(150)), "2m30s");
        assert_eq!(human(Duration::from_secs(60)), "1m");
    }
}
