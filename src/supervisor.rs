//! The supervisor thread: one event loop that owns the policy, the region mailboxes and the
//! view the HTTP server reads. Every other thread only sends it `Event`s on one channel.
//!
//! It blocks on that channel until the policy's next deadline (never a sleep-poll), feeds the
//! event to the pure `Policy`, and carries out the actions: messages to region threads, probe
//! threads, signals through the registry (which refuses pids already reaped), log lines.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{unbounded, RecvTimeoutError, Sender};
use signal_hook::iterator::Signals;

use crate::config::{Config, Preflight};
use crate::output;
use crate::policy::{Action, Event, Policy, Settings};
use crate::probe;
use crate::reaper::Registry;
use crate::region::{self, Mailbox, Msg, Stats};
use crate::server;
use crate::signals;
use crate::sys;

/// A probe reads at most this much of a health response.
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// What the HTTP server shows; rewritten by the supervisor thread after every event.
pub struct View {
    pub regions: Vec<RegionView>,
    /// Stopping or given up: `/livez` answers 503.
    pub stopping: bool,
}

#[derive(Clone)]
pub struct RegionView {
    pub name: &'static str,
    pub port: u16,
    pub state: &'static str,
    pub pid: Option<i32>,
    pub restarts: u64,
    pub last_exit: Option<String>,
    pub started_at: Option<SystemTime>,
    pub stats: Arc<Stats>,
}

pub type SharedView = Arc<RwLock<View>>;

/// Supervises until stopped; returns the process exit code (0 signal stop, 1 gave up).
pub fn run(config: Config, preflight: Preflight, signals: Signals) -> i32 {
    let writer = output::start();
    if sys::getpid() != 1 {
        if let Err(e) = sys::become_subreaper() {
            output::warn(None, &format!("cannot become a child subreaper: {e}"), &[]);
        }
    }
    let registry = Arc::new(Registry::default());
    let (events, inbox) = unbounded();
    let (signal_handle, _signal_thread) = signals::start(signals, registry.clone(), events.clone());

    let mut mailboxes = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut stats = Vec::new();
    for (index, plan) in config.regions.iter().enumerate() {
        let s = Arc::new(Stats::default());
        let setup = region::Setup {
            index,
            plan: plan.clone(),
            format: config.log_format,
            max_line: config.max_line,
            registry: registry.clone(),
            events: events.clone(),
            stats: s.clone(),
        };
        match region::start(setup) {
            Ok((mailbox, thread)) => {
                mailboxes.push(mailbox);
                threads.push(thread);
                stats.push(s);
            }
            Err(e) => {
                output::error(Some(plan.name), &format!("cannot start the region thread: {e}"), &[]);
                output::flush(Duration::from_secs(1));
                return 1;
            }
        }
    }

    let view: SharedView = Arc::new(RwLock::new(View {
        regions: config
            .regions
            .iter()
            .zip(&stats)
            .map(|(p, s)| RegionView {
                name: p.name,
                port: p.port,
                state: "starting",
                pid: None,
                restarts: 0,
                last_exit: None,
                started_at: None,
                stats: s.clone(),
            })
            .collect(),
        stopping: false,
    }));
    let server = preflight.metrics_listener.map(|l| server::start(l, view.clone(), &config));

    let names = config.regions.iter().map(|r| r.name).collect();
    let mut sup = Supervisor {
        policy: Policy::new(Settings::from_config(&config), names),
        config,
        mailboxes,
        registry,
        events,
        view,
        started_at: vec![None; stats.len()],
    };
    output::info(
        None,
        &format!("supervising {} regions", sup.config.regions.len()),
        &[("version", env!("CARGO_PKG_VERSION").into()), ("pid", sys::getpid().into())],
    );
    let code = sup.event_loop(inbox);

    for mailbox in &sup.mailboxes {
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
            ("exit_code", code.into()),
            ("orphans_reaped", sup.registry.orphans_reaped().into()),
            ("lines_dropped", (dropped_lines + lost).into()),
            ("events_dropped", dropped.into()),
        ],
    );
    output::flush(Duration::from_secs(2));
    drop(writer);
    code
}

struct Supervisor {
    policy: Policy,
    config: Config,
    mailboxes: Vec<Mailbox>,
    registry: Arc<Registry>,
    events: Sender<Event>,
    view: SharedView,
    started_at: Vec<Option<SystemTime>>,
}

impl Supervisor {
    fn event_loop(&mut self, inbox: crossbeam_channel::Receiver<Event>) -> i32 {
        let mut event = Event::Begin;
        loop {
            if let Event::Started { region, .. } = event {
                self.started_at[region] = Some(SystemTime::now());
            }
            let actions = self.policy.on(event, Instant::now());
            for action in actions {
                if let Some(code) = self.act(action) {
                    self.publish();
                    return code;
                }
            }
            self.publish();
            event = match self.policy.next_deadline() {
                Some(deadline) => match inbox.recv_deadline(deadline) {
                    Ok(e) => e,
                    Err(RecvTimeoutError::Timeout) => Event::Tick,
                    Err(RecvTimeoutError::Disconnected) => return 1,
                },
                None => match inbox.recv() {
                    Ok(e) => e,
                    Err(_) => return 1,
                },
            };
        }
    }

    fn act(&mut self, action: Action) -> Option<i32> {
        match action {
            Action::Spawn { region, gen } => self.mailboxes[region].send(Msg::Spawn { gen }),
            Action::Probe { region, gen, timeout } => self.probe(region, gen, timeout),
            Action::Signal { region: _, pid, signal } => {
                // False when the child was reaped meanwhile: its Exited event is on its way,
                // and a reaped pid is never signalled (it may belong to someone else by now).
                self.registry.signal(pid, signal);
            }
            Action::Log { level, region, message, fields } => {
                let name = region.map(|r| self.config.regions[r].name);
                output::event(level, name, &message, &fields);
            }
            Action::Exit(code) => return Some(code),
        }
        None
    }

    /// Probes on a short-lived thread so a hanging child never stalls the event loop.
    fn probe(&self, region: usize, gen: u64, timeout: Duration) {
        let port = self.config.regions[region].child_port;
        let path = self.config.health_path.clone();
        let events = self.events.clone();
        let spawned = std::thread::Builder::new().name("probe".into()).spawn(move || {
            let result = match probe::get(port, &path, timeout, PROBE_BODY_LIMIT) {
                Ok(r) if (200..300).contains(&r.status) => Ok(()),
                Ok(r) => Err(format!("{path} answered HTTP {}", r.status)),
                Err(e) => Err(e),
            };
            let _ = events.send(Event::Probed { region, gen, result });
        });
        if let Err(e) = spawned {
            // Out of threads: report the probe as failed rather than lose track of it.
            let _ = self.events.send(Event::Probed {
                region,
                gen,
                result: Err(format!("cannot start a probe thread: {e}")),
            });
        }
    }

    fn publish(&self) {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.stopping = self.policy.is_stopping();
        for (i, (r, v)) in self.policy.regions.iter().zip(view.regions.iter_mut()).enumerate() {
            v.state = r.state();
            v.pid = r.pid;
            v.restarts = r.restarts;
            v.last_exit.clone_from(&r.last_exit);
            v.started_at = self.started_at[i];
        }
    }
}
