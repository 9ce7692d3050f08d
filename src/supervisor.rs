//! The supervisor thread: one event loop that owns the policy, the region mailboxes and the
//! view the HTTP server reads. Every other thread only sends it `Event`s on one channel.
//!
//! It blocks on that channel until the policy's next deadline (never a sleep-poll), feeds the
//! event to the pure `Policy`, and carries out the actions: messages to region threads, probe
//! threads, signals through the registry (which refuses pids already reaped), log lines.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};
use signal_hook::iterator::Signals;

use crate::accept;
use crate::config::{Config, Preflight};
use crate::exit::Exit;
use crate::observe::RequestStats;
use crate::output;
use crate::policy::{Action, Event, Policy, Settings};
use crate::reaper::Registry;
use crate::region::{self, Mailbox, Msg};
use crate::relay::{self, Control, Gate};
use crate::server;
use crate::signals;
use crate::sys;
use crate::view::{LogStats, RegionState, RegionView, SharedView, View};

/// Supervises until stopped; returns the process exit code (0 signal stop, 1 gave up).
pub fn run(config: Config, preflight: Preflight, mut signals: Signals) -> Exit {
    let writer = output::start();
    // The first event names what runs and how it is judged ready (SPEC: the `probe` member).
    output::info(
        None,
        &format!("supervising {} regions", config.regions.len()),
        &[
            ("version", env!("CARGO_PKG_VERSION").into()),
            ("pid", sys::getpid().into()),
            ("probe", config.probe.as_str().into()),
            ("probe_reason", config.probe_why.clone().into()),
        ],
    );
    if let Some(signal) = stop_pending(&mut signals) {
        // Nothing runs yet, but the stop is logged like any other.
        output::info(None, &format!("stopping all regions: received {}", sys::signal_name(signal)), &[]);
        output::info(None, "stopped", &[("exit_code", Exit::Ok.code().into())]);
        output::flush(Duration::from_secs(1));
        return Exit::Ok;
    }
    if sys::getpid() != 1 {
        if let Err(e) = sys::become_subreaper() {
            output::warn(None, &format!("cannot become a child subreaper: {e}"), &[]);
        }
    }
    let registry = Arc::new(Registry::default());
    let (events, inbox) = unbounded();
    let (signal_handle, _signal_thread) = signals::start(signals, registry.clone(), events.clone());
    let started = start_regions(&config, &registry, &events).and_then(|regions| {
        let relays = start_relays(&config, preflight.relay_listeners, preflight.relay_workers, &events)?;
        Ok((regions, relays))
    });
    let ((mailboxes, threads, stats), (relay, relay_stats)) = match started {
        Ok(s) => s,
        Err(e) => {
            output::error(None, &e, &[]);
            output::flush(Duration::from_secs(1));
            return Exit::Failure;
        }
    };
    let view = initial_view(&config, &stats, &relay_stats);
    let server = match preflight.metrics_listener.map(|l| server::start(l, view.clone(), &config)).transpose()
    {
        Ok(server) => server,
        Err(e) => {
            output::error(None, &format!("the HTTP endpoint: {e}"), &[]);
            output::flush(Duration::from_secs(1));
            return Exit::Failure;
        }
    };
    // Once every listener and thread exists, so the budget counts what they hold.
    accept::init(config.regions.len());

    let names = config.regions.iter().map(|r| r.name).collect();
    let mut sup = Supervisor {
        policy: Policy::new(Settings::from_config(&config), names),
        gates: vec![None; relay_stats.len()],
        relays_stopped: false,
        relay,
        config,
        mailboxes,
        registry,
        events,
        view,
        started_at: vec![None; stats.len()],
        relay_stats: relay_stats.iter().map(|(s, _)| s.clone()).collect(),
        began: Instant::now(),
    };
    let code = sup.event_loop(inbox);
    sup.shut_down(threads, server, signal_handle, &stats, code);
    drop(writer);
    code
}

/// A stop signal that came while the configuration was checked: nothing is started then.
fn stop_pending(signals: &mut Signals) -> Option<i32> {
    signals.pending().find(|s| matches!(*s, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT))
}

type Regions = (Vec<Mailbox>, Vec<JoinHandle<()>>, Vec<Arc<LogStats>>);

fn start_regions(
    config: &Config,
    registry: &Arc<Registry>,
    events: &Sender<Event>,
) -> Result<Regions, String> {
    let (mut mailboxes, mut threads, mut all_stats) = (Vec::new(), Vec::new(), Vec::new());
    for (index, plan) in config.regions.iter().enumerate() {
        let stats = Arc::new(LogStats::default());
        let setup = region::Setup {
            index,
            plan: plan.clone(),
            format: config.log_format,
            max_line: config.max_line,
            registry: registry.clone(),
            events: events.clone(),
            stats: stats.clone(),
        };
        let (mailbox, thread) = region::start(setup)
            .map_err(|e| format!("{}: cannot start the region thread: {e}", plan.name))?;
        mailboxes.push(mailbox);
        threads.push(thread);
        all_stats.push(stats);
    }
    Ok((mailboxes, threads, all_stats))
}

/// The relay workers, listening on every region's port from now on (connections are held
/// until their region is ready).
fn start_relays(
    config: &Config,
    listeners: Vec<std::net::TcpListener>,
    workers: usize,
    events: &Sender<Event>,
) -> Result<(Option<relay::Handle>, Vec<RelayStats>), String> {
    let Some(settings) = &config.relay else { return Ok((None, Vec::new())) };
    let (mut ports, mut all_stats) = (Vec::new(), Vec::new());
    for (region, (plan, listener)) in config.regions.iter().zip(listeners).enumerate() {
        let events = events.clone();
        let stats = Arc::new(relay::Stats::default());
        let requests = Arc::new(RequestStats::new(&config.health_path));
        ports.push(relay::Port {
            listener,
            child_port: plan.child_port,
            stats: stats.clone(),
            requests: requests.clone(),
            demand: Arc::new(move || {
                let _ = events.send(Event::Demand { region });
            }),
        });
        all_stats.push((stats, requests));
    }
    let setup =
        relay::Setup { ports, hold: settings.hold, max_connections: settings.max_connections, workers };
    let handle = relay::start(setup).map_err(|e| format!("cannot start the relay: {e}"))?;
    Ok((Some(handle), all_stats))
}

/// A relay's counters: connections and bytes, and the requests measured in them.
type RelayStats = (Arc<relay::Stats>, Arc<RequestStats>);

fn initial_view(config: &Config, stats: &[Arc<LogStats>], relay: &[RelayStats]) -> SharedView {
    let regions = config
        .regions
        .iter()
        .enumerate()
        .map(|(i, p)| RegionView {
            name: p.name,
            port: p.port,
            child_port: p.child_port,
            state: RegionState::Starting,
            pid: None,
            restarts: 0,
            idle_stops: 0,
            last_exit: None,
            started_at: None,
            stats: stats[i].clone(),
            relay: relay.get(i).map(|r| r.0.clone()),
            requests: relay.get(i).map(|r| r.1.clone()),
        })
        .collect();
    Arc::new(RwLock::new(View { regions, stopping: false }))
}

struct Supervisor {
    policy: Policy,
    /// The relay workers (none with the relay off).
    relay: Option<relay::Handle>,
    /// The gate the relay was last told, per region.
    gates: Vec<Option<Gate>>,
    relays_stopped: bool,
    config: Config,
    mailboxes: Vec<Mailbox>,
    registry: Arc<Registry>,
    events: Sender<Event>,
    view: SharedView,
    started_at: Vec<Option<SystemTime>>,
    /// Each region's relay counters (empty with the relay off): on demand, how busy it is.
    relay_stats: Vec<Arc<relay::Stats>>,
    /// When supervising began: a region that never had a connection is quiet since then.
    began: Instant,
}

impl Supervisor {
    fn event_loop(&mut self, inbox: crossbeam_channel::Receiver<Event>) -> Exit {
        // A stop signal that arrived while the threads were being started goes first: the
        // policy then logs the stop and starts nothing.
        let mut early: std::collections::VecDeque<Event> = inbox.try_iter().collect();
        let stop = early.iter().position(|e| matches!(e, Event::Stop { .. }));
        let mut event = match stop.and_then(|i| early.remove(i)) {
            Some(stop) => {
                early.push_front(Event::Begin);
                stop
            }
            None => Event::Begin,
        };
        loop {
            if let Event::Started { region, .. } = event {
                self.started_at[region] = Some(SystemTime::now());
            }
            let actions = self.policy.on(event, Instant::now());
            // The relays learn first: a region about to be stopped holds new connections
            // before its child is signalled, so none is sent to a closing child.
            self.steer_relays();
            for action in actions {
                if let Some(code) = self.act(action) {
                    self.publish();
                    return code;
                }
            }
            self.publish();
            if let Some(e) = early.pop_front() {
                event = e;
                continue;
            }
            event = match self.policy.next_deadline() {
                Some(deadline) => match inbox.recv_deadline(deadline) {
                    Ok(e) => e,
                    Err(RecvTimeoutError::Timeout) => Event::Tick,
                    Err(RecvTimeoutError::Disconnected) => return Exit::Failure,
                },
                None => match inbox.recv() {
                    Ok(e) => e,
                    Err(_) => return Exit::Failure,
                },
            };
        }
    }

    fn act(&mut self, action: Action) -> Option<Exit> {
        match action {
            Action::Spawn { region, generation } => self.mailboxes[region].send(Msg::Spawn { generation }),
            Action::Probe { region, generation, timeout } => self.probe(region, generation, timeout),
            Action::CheckIdle { region } => {
                if let Some(stats) = self.relay_stats.get(region) {
                    let (open, quiet) = stats.activity(Instant::now(), self.began);
                    let _ = self.events.send(Event::Activity { region, open, quiet });
                }
            }
            Action::Signal { region: _, pid, signal } => {
                // False when the child was reaped meanwhile: its Exited event is on its way,
                // and a reaped pid is never signalled (it may belong to someone else by now).
                self.registry.signal(pid, signal);
            }
            Action::Log { level, region, message, fields } => {
                let name = region.map(|r| self.config.regions[r].name);
                output::event(level, name, &message, &fields);
            }
            Action::Exit(exit) => return Some(exit),
        }
        None
    }

    /// Probes on a short-lived thread so a hanging child never stalls the event loop.
    fn probe(&self, region: usize, generation: u64, timeout: Duration) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.config.regions[region].child_port));
        let (probe, path) = (self.config.probe, self.config.health_path.clone());
        let events = self.events.clone();
        let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
            let result = {
                let _fd = accept::borrow(1);
                probe.check(addr, &path, timeout)
            };
            let _ = events.send(Event::Probed { region, generation, result });
        });
        if let Err(e) = spawned {
            // Out of threads: report the probe as failed rather than lose track of it.
            let _ = self.events.send(Event::Probed {
                region,
                generation,
                result: Err(format!("cannot start a probe thread: {e}")),
            });
        }
    }

    /// After the event loop: every child is gone. Closes what is still relayed, ends the
    /// region threads, the HTTP endpoint and the signal thread, and logs the summary.
    fn shut_down(
        &mut self,
        threads: Vec<JoinHandle<()>>,
        server: Option<server::Handle>,
        signal_handle: signal_hook::iterator::Handle,
        stats: &[Arc<LogStats>],
        exit: Exit,
    ) {
        if let Some(relay) = self.relay.take() {
            relay.quit();
        }
        for mailbox in &self.mailboxes {
            mailbox.send(Msg::Quit);
        }
        for thread in threads {
            let _ = thread.join();
        }
        if let Some(server) = server {
            server.stop();
        }
        signal_handle.close();
        let (lost, dropped) = output::losses();
        let dropped_lines: u64 = stats.iter().map(|s| s.lines_dropped.load(Ordering::Relaxed)).sum();
        output::info(
            None,
            "stopped",
            &[
                ("exit_code", exit.code().into()),
                ("orphans_reaped", self.registry.orphans_reaped().into()),
                ("lines_dropped", (dropped_lines + lost).into()),
                ("events_dropped", dropped.into()),
            ],
        );
        output::flush(Duration::from_secs(2));
    }

    /// Tells the relay whether each region takes connections now, and that every port closes
    /// once the supervisor stops.
    fn steer_relays(&mut self) {
        if self.relays_stopped {
            return;
        }
        if self.policy.is_stopping() {
            self.relay.iter().for_each(|r| r.send(Control::Stop));
            self.relays_stopped = true;
            return;
        }
        let Some(relay) = &self.relay else { return };
        for (i, r) in self.policy.regions.iter().enumerate() {
            let gate = match () {
                _ if r.takes_connections() => Gate::Open,
                _ if r.wakes_on_connection() => Gate::Idle,
                _ => Gate::Hold,
            };
            if self.gates[i] != Some(gate) {
                relay.send(Control::Gate(i, gate));
                self.gates[i] = Some(gate);
            }
        }
    }

    fn publish(&mut self) {
        self.steer_relays();
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.stopping = self.policy.is_stopping();
        for (i, (r, v)) in self.policy.regions.iter().zip(view.regions.iter_mut()).enumerate() {
            v.state = r.state();
            v.pid = r.pid;
            v.restarts = r.restarts;
            v.idle_stops = r.idle_stops;
            v.last_exit.clone_from(&r.last_exit);
            v.started_at = self.started_at[i];
        }
    }
}
