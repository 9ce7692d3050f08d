//! The relay: each region's port, listened on by the supervisor on `SUPERVISOR_RELAY_ADDR`,
//! with every TCP connection copied byte for byte to the region's child on
//! 127.0.0.1:<child port> (the real plugin binds loopback only).
//!
//! Thread model: a few relay workers serve every region's port, one worker per core up to
//! [`MAX_WORKERS`] (fewer where the open-file limit is low). A worker is a thread that owns the
//! connections it accepted and sleeps in one `epoll` on them, its mailbox's eventfd and every
//! region's listener, which all the workers share (registered with `EPOLLEXCLUSIVE`, so a new
//! client wakes one idle worker, not all). That costs a few hundred bytes per idle connection
//! instead of a thread and its stack, two descriptors per worker whatever the number of
//! regions, and leaves the copy a plain read/write loop whose bytes the request observer can
//! see. More than one worker because a new connection's cost is almost all kernel work (the
//! loopback handshake and teardown run in the thread that connects and closes): one thread
//! caps the relay at one core. The supervisor thread tells every worker what each region is
//! doing (`Gate`) and when to stop; the workers only ever write a region's `Stats` (atomics)
//! and its count of live connections, which holds the region's cap across them.
//!
//! A connection's life: accepted (within the region's cap and the process-wide descriptor
//! budget, see `accept.rs`); if the region is open (ready, or running with a failed probe) it is
//! connected to the child at once, otherwise *held*: nothing read, no child contacted, until the
//! region is open again (then released a batch at a time) or `SUPERVISOR_RELAY_HOLD` runs out.
//! A refused connect while the gate is still open (the child just died and the supervisor has
//! not heard yet) holds the connection too and retries after a short pause, so a restart that
//! fits in the hold time loses no new connection. Connected, it is a `Duplex` until both
//! directions end. A connection closed without reaching a child is closed gracefully (FIN, then
//! what the client still sends is read and dropped for a moment), never with a reset.

mod duplex;
pub mod stats;

use std::collections::VecDeque;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::accept::{self, Accepted, Permit};
use crate::observe::{Observer, RequestStats};
use crate::output;
use crate::sys::{self, Epoll, EventFd, Ready, WANT_READ};
use duplex::{Duplex, Side, Step, Watch, HALF_CLOSED_IDLE, LINGER};
pub use stats::{Reject, Stats};

/// What the region is doing, as far as new connections are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Starting, restarting or in backoff: hold new connections.
    Hold,
    /// Ready (or running with a failed probe): connect at once.
    Open,
    /// Idle (on demand): hold new connections and tell the supervisor once (`Port::demand`),
    /// which starts the region.
    Idle,
}

#[derive(Clone, Copy)]
pub enum Control {
    /// What the region of a port (its index in `Setup::ports`) is doing now.
    Gate(usize, Gate),
    /// The first stop signal: close the listeners and every held connection; connected ones
    /// flow on while the children shut down.
    Stop,
    /// The children are gone (or the grace is over): close everything and end the threads.
    Quit,
}

/// One region's port.
pub struct Port {
    pub listener: TcpListener,
    pub child_port: u16,
    pub stats: Arc<Stats>,
    /// The region's request counters (SPEC "Request metrics"), fed by each connection's observer.
    pub requests: Arc<RequestStats>,
    /// Called when a connection arrives while the region is idle (at most once per worker and
    /// idle period): the supervisor then starts the region.
    pub demand: Arc<dyn Fn() + Send + Sync>,
}

pub struct Setup {
    pub ports: Vec<Port>,
    pub hold: Duration,
    /// Connections per region at once.
    pub max_connections: usize,
    /// Threads sharing the ports (at least one).
    pub workers: usize,
}

/// How the supervisor thread reaches the relay workers.
pub struct Handle {
    workers: Vec<Worker>,
}

struct Worker {
    tx: Sender<Control>,
    wake: Arc<EventFd>,
    thread: JoinHandle<()>,
}

impl Handle {
    pub fn send(&self, c: Control) {
        for w in &self.workers {
            let _ = w.tx.send(c);
            w.wake.wake();
        }
    }

    /// Closes everything and waits for the workers.
    pub fn quit(self) {
        self.send(Control::Quit);
        for w in self.workers {
            let _ = w.thread.join();
        }
    }
}

/// Relay workers at most (one per core up to this).
pub const MAX_WORKERS: usize = 4;

/// Workers on this machine: one per core the process may use, within [`MAX_WORKERS`].
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WORKERS)
}

/// Descriptors a worker holds: its epoll and its wake-up.
pub const FDS_PER_WORKER: usize = 2;
/// Bytes one read takes; also the most a direction ever keeps pending.
const READ_SIZE: usize = 64 * 1024;
/// Descriptors a connection holds: the client's socket and the child's.
pub const FDS_PER_CONNECTION: usize = 2;
/// Held connections a region releases per [`RELEASE_EVERY`] at most (each worker its share of
/// them), so a returning child is not hit by all of them in the same millisecond.
const RELEASE_BATCH: usize = 16;
const RELEASE_EVERY: Duration = Duration::from_millis(1);
/// Pause before a refused connect is tried again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A connect to the child that has not completed in this long has failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Deadlines (hold, half-closed, linger, connect) are checked this often.
const SWEEP: Duration = Duration::from_millis(100);
/// Clients accepted per readiness report of a listener (the rest on the next turn).
const ACCEPT_BATCH: usize = 64;
/// Running short of descriptors is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

const WAKE: u64 = u64::MAX;
/// A listener's token: this bit and its port's index (a connection's token never has it).
const LISTENER: u64 = 1 << 63;

pub fn start(setup: Setup) -> std::io::Result<Handle> {
    let Setup { ports, hold, max_connections, workers } = setup;
    let mut targets = Vec::with_capacity(ports.len());
    for p in ports {
        p.listener.set_nonblocking(true)?;
        // Accepted sockets inherit TCP_NODELAY from the listener: one call fewer per connection.
        sys::nodelay_for_accepted(&p.listener)?;
        let target =
            Target { child_port: p.child_port, stats: p.stats, requests: p.requests, demand: p.demand };
        targets.push((Arc::new(target), Arc::new(p.listener)));
    }
    let workers = workers.max(1);
    let release_batch = (RELEASE_BATCH / workers).max(1);
    let workers = (1..=workers)
        .map(|n| start_worker(n, &targets, hold, max_connections, release_batch))
        .collect::<std::io::Result<_>>()?;
    Ok(Handle { workers })
}

fn start_worker(
    n: usize,
    targets: &[(Arc<Target>, Arc<TcpListener>)],
    hold: Duration,
    max: usize,
    release_batch: usize,
) -> std::io::Result<Worker> {
    let (tx, rx) = unbounded();
    let wake = Arc::new(EventFd::new()?);
    let epoll = Epoll::new()?;
    epoll.add(wake.raw(), WANT_READ, WAKE)?;
    let now = Instant::now();
    let lanes = targets
        .iter()
        .map(|(target, listener)| Lane {
            target: target.clone(),
            listener: Some(listener.clone()),
            listening: false,
            gate: Gate::Hold,
            demanded: false,
            waiting: VecDeque::new(),
            next_release: now,
        })
        .collect();
    let relay = Relay {
        lanes,
        paused_until: None,
        warned: None,
        epoll,
        rx,
        wake: wake.clone(),
        stopping: false,
        conns: Vec::new(),
        free: Vec::new(),
        freed: Vec::new(),
        hold,
        max,
        release_batch,
        last_sweep: now,
        deadlines: false,
        buf: vec![0u8; READ_SIZE],
    };
    let thread = std::thread::Builder::new().name(format!("relay {n}")).spawn(move || relay.run())?;
    Ok(Worker { tx, wake, thread })
}

/// A region's port as every worker sees it: what never changes.
struct Target {
    child_port: u16,
    stats: Arc<Stats>,
    requests: Arc<RequestStats>,
    demand: Arc<dyn Fn() + Send + Sync>,
}

/// A region's port in one worker.
struct Lane {
    target: Arc<Target>,
    /// Shared by every worker; `None` once stopping (the last worker to let go closes it).
    listener: Option<Arc<TcpListener>>,
    listening: bool,
    gate: Gate,
    /// The supervisor was told of a connection in this idle period.
    demanded: bool,
    /// Held connections, oldest first.
    waiting: VecDeque<usize>,
    /// No release before this (the last batch's time plus [`RELEASE_EVERY`]).
    next_release: Instant,
}

enum State {
    /// Accepted, waiting for the region; nothing read. Tried at `not_before` at the earliest.
    Held {
        until: Instant,
        not_before: Instant,
    },
    /// Connecting to the child.
    Connecting {
        child: OwnedFd,
        until: Instant,
    },
    Open(Duplex, Box<Observer>),
    /// Closing: our FIN is sent, what the client still sends is dropped until `until`.
    Linger {
        until: Instant,
    },
    /// Between states (only while a transition runs).
    Moving,
}

struct Conn {
    /// Its port's index in `Relay::lanes`.
    lane: usize,
    client: Option<OwnedFd>,
    state: State,
    held_until: Instant,
    /// Events registered for (client, child); 0: not registered.
    registered: [u32; 2],
    _permit: Permit,
}

struct Relay {
    lanes: Vec<Lane>,
    /// Accepting is paused (descriptors ran short) until then, or until one of this worker's
    /// connections closes, on every port.
    paused_until: Option<Instant>,
    /// When running short was last logged.
    warned: Option<Instant>,
    epoll: Epoll,
    rx: Receiver<Control>,
    wake: Arc<EventFd>,
    stopping: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Slots closed during this turn; reused only after it, so a late report of a closed
    /// socket never reaches a new connection.
    freed: Vec<usize>,
    hold: Duration,
    max: usize,
    /// Held connections of a region this worker releases per [`RELEASE_EVERY`]: its share of
    /// [`RELEASE_BATCH`].
    release_batch: usize,
    last_sweep: Instant,
    /// The thread's one read buffer, shared by all its connections.
    buf: Vec<u8>,
    /// Some connection may have a deadline (held, connecting, lingering, half-closed): sweep.
    deadlines: bool,
}

/// What sees the bytes while a `Duplex` copies them: the region's byte counters and the
/// connection's request observer (which reads a copy; it never changes or holds them).
struct Counter<'a> {
    stats: &'a Stats,
    observer: &'a mut Observer,
    now: Instant,
}

impl Watch for Counter<'_> {
    fn client_bytes(&mut self, bytes: &[u8]) {
        self.stats.received.fetch_add(bytes.len() as u64, Relaxed);
        self.observer.client(bytes, self.now);
    }
    fn child_bytes(&mut self, bytes: &[u8]) {
        self.stats.sent.fetch_add(bytes.len() as u64, Relaxed);
        self.observer.child(bytes, self.now);
    }
}

fn token(slot: usize, side: Side) -> u64 {
    (slot as u64) << 1 | u64::from(side == Side::Child)
}

impl Relay {
    fn run(mut self) {
        let mut raw = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut ready = Vec::new();
        loop {
            self.sync_listeners();
            let timeout = self.timeout();
            if let Err(e) = self.epoll.wait(&mut raw, &mut ready, timeout) {
                output::error(None, &format!("relay: epoll failed: {e}"), &[]);
                std::thread::sleep(accept::PAUSE);
                continue;
            }
            let now = Instant::now();
            for r in &ready {
                match r.token {
                    WAKE => {
                        self.wake.clear();
                    }
                    t if t & LISTENER != 0 => self.accept((t & !LISTENER) as usize, now),
                    t => self.on_ready(r, t, now),
                }
            }
            if !self.control(now) {
                return;
            }
            self.release(now);
            if now.duration_since(self.last_sweep) >= SWEEP {
                self.sweep(now);
            }
            self.free.append(&mut self.freed);
        }
    }

    /// Applies the supervisor's messages; false once the thread must end.
    fn control(&mut self, now: Instant) -> bool {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Control::Gate(lane, g) => {
                    let Some(l) = self.lanes.get_mut(lane) else { continue };
                    if g == Gate::Idle && l.gate != Gate::Idle {
                        l.demanded = false;
                    }
                    l.gate = g;
                    // Connections held while the region went idle start it again.
                    if g == Gate::Idle && !l.waiting.is_empty() {
                        self.wake_region(lane);
                    }
                }
                Control::Stop => self.stop(now),
                Control::Quit => {
                    // `close` takes open ones off `active`; the held ones come off here. (Not
                    // a store of 0: the other workers may be subtracting theirs.)
                    for l in &mut self.lanes {
                        l.target.stats.held.fetch_sub(l.waiting.len() as u64, Relaxed);
                        l.waiting.clear();
                    }
                    for slot in 0..self.conns.len() {
                        self.close(slot);
                    }
                    return false;
                }
            }
        }
        true
    }

    fn stop(&mut self, now: Instant) {
        self.stopping = true;
        for lane in 0..self.lanes.len() {
            let l = &mut self.lanes[lane];
            if let Some(listener) = l.listener.take() {
                if l.listening {
                    let _ = self.epoll.delete(listener.as_raw_fd());
                }
            }
            while let Some(slot) = self.lanes[lane].waiting.pop_front() {
                self.lanes[lane].target.stats.held.fetch_sub(1, Relaxed);
                self.reject(slot, Reject::Stopping, now);
            }
        }
        // A connection that has not carried a byte is closed now, as an idle one: the plugin's
        // graceful stop (Go's net/http Shutdown) waits for a connection that has sent no
        // request yet, up to 5 s, which is past the grace, so a few such clients would make
        // every plugin be killed.
        for slot in 0..self.conns.len() {
            if matches!(&self.conns[slot], Some(Conn { state: State::Open(d, _), .. }) if d.untouched()) {
                self.after(slot, Step::Linger, now);
                if let Some(c) = self.conns[slot].as_ref().and_then(|c| c.client.as_ref()) {
                    sys::shutdown_write(c.as_raw_fd());
                }
            }
        }
    }

    /// Listens on each port while its region has room, and descriptors are not short.
    fn sync_listeners(&mut self) {
        let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let Some(l) = &lane.listener else { continue };
            let want = !paused && lane.target.stats.live.load(Relaxed) < self.max;
            if want != lane.listening {
                let r = if want {
                    self.epoll.add(l.as_raw_fd(), WANT_READ | sys::EXCLUSIVE, LISTENER | i as u64)
                } else {
                    self.epoll.delete(l.as_raw_fd())
                };
                if r.is_ok() {
                    lane.listening = want;
                }
            }
        }
        if !paused {
            self.paused_until = None;
        }
    }

    fn timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut t: Option<Duration> = None;
        let mut at = |d: Duration| t = Some(t.map_or(d, |x| x.min(d)));
        if let Some(p) = self.paused_until {
            at(p.saturating_duration_since(now));
        }
        if self.lanes.iter().any(|l| l.gate == Gate::Open && !l.waiting.is_empty()) {
            at(RELEASE_EVERY);
        }
        if self.deadlines {
            at((self.last_sweep + SWEEP).saturating_duration_since(now));
        }
        if self.lanes.iter().any(|l| l.listener.is_some() && !l.listening) {
            // At a region's cap: another worker may free room without this one hearing of it.
            at(SWEEP);
        }
        t
    }

    fn accept(&mut self, lane: usize, now: Instant) {
        let Some(fd) = self.lanes.get(lane).and_then(|l| l.listener.as_ref()).map(|l| l.as_raw_fd()) else {
            return;
        };
        for _ in 0..ACCEPT_BATCH {
            let target = self.lanes[lane].target.clone();
            if !self.reserve(&target) {
                return;
            }
            match accept::accept_one(fd, FDS_PER_CONNECTION, crate::front::REQUEST_FDS) {
                Accepted::Conn(client, permit) => {
                    target.stats.accepted.fetch_add(1, Relaxed);
                    let state = State::Held { until: now + self.hold, not_before: now };
                    let conn = Conn {
                        lane,
                        client: Some(client),
                        state,
                        held_until: now + self.hold,
                        registered: [0; 2],
                        _permit: permit,
                    };
                    let slot = self.insert(conn);
                    match self.lanes[lane].gate {
                        Gate::Open => self.connect(slot, now),
                        Gate::Hold => self.hold(slot),
                        Gate::Idle => {
                            self.hold(slot);
                            self.wake_region(lane);
                        }
                    }
                }
                Accepted::Empty => {
                    target.stats.live.fetch_sub(1, AcqRel);
                    return;
                }
                Accepted::Pause(why) => {
                    target.stats.live.fetch_sub(1, AcqRel);
                    return self.pause(why, now);
                }
            }
        }
    }

    /// Descriptors ran short: no port accepts for [`accept::PAUSE`], or until a connection of
    /// this worker closes (under a low limit that is what frees descriptors, and a client that
    /// waits in the listen queue should not wait a whole pause for it). Logged at most every
    /// [`WARN_EVERY`].
    fn pause(&mut self, why: std::io::Error, now: Instant) {
        if self.warned.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
            self.warned = Some(now);
            output::warn(None, &format!("relay: not accepting for now: {why}"), &[]);
        }
        self.paused_until = Some(now + accept::PAUSE);
        for lane in &mut self.lanes {
            if let (true, Some(l)) = (lane.listening, &lane.listener) {
                if self.epoll.delete(l.as_raw_fd()).is_ok() {
                    lane.listening = false;
                }
            }
        }
    }

    /// Counts one more connection for the region, unless that would pass its cap.
    fn reserve(&self, target: &Target) -> bool {
        target.stats.live.fetch_update(AcqRel, Acquire, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    /// Tells the supervisor, once per idle period, that the idle region has a connection.
    fn wake_region(&mut self, lane: usize) {
        let l = &mut self.lanes[lane];
        if !l.demanded {
            l.demanded = true;
            (l.target.demand)();
        }
    }

    fn insert(&mut self, conn: Conn) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.conns[slot] = Some(conn);
                slot
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        }
    }

    /// The port's index of a live slot.
    fn lane_of(&self, slot: usize) -> usize {
        self.conns[slot].as_ref().expect("live slot").lane
    }

    fn hold(&mut self, slot: usize) {
        let lane = &mut self.lanes[self.conns[slot].as_ref().expect("live slot").lane];
        self.deadlines = true;
        lane.target.stats.held.fetch_add(1, Relaxed);
        lane.waiting.push_back(slot);
    }

    /// Connects held connections of the regions that are open, a batch per region and turn,
    /// oldest first.
    fn release(&mut self, now: Instant) {
        for lane in 0..self.lanes.len() {
            let l = &self.lanes[lane];
            if l.gate != Gate::Open || l.waiting.is_empty() || now < l.next_release {
                continue;
            }
            for _ in 0..self.release_batch {
                let Some(&slot) = self.lanes[lane].waiting.front() else { break };
                let due = match self.conns[slot].as_ref().map(|c| &c.state) {
                    Some(State::Held { not_before, .. }) => *not_before <= now,
                    _ => true,
                };
                if !due {
                    break;
                }
                let l = &mut self.lanes[lane];
                l.next_release = now + RELEASE_EVERY;
                l.waiting.pop_front();
                l.target.stats.held.fetch_sub(1, Relaxed);
                if matches!(self.conns[slot].as_ref().map(|c| &c.state), Some(State::Held { .. })) {
                    self.connect(slot, now);
                }
            }
        }
    }

    fn connect(&mut self, slot: usize, now: Instant) {
        let port = self.lanes[self.lane_of(slot)].target.child_port;
        match sys::connect_loopback(port) {
            Ok((child, true)) => self.opened(slot, child, now),
            Ok((child, false)) => match sys::connect_finished(child.as_raw_fd(), port) {
                Some(Ok(())) => self.opened(slot, child, now),
                Some(Err(_)) => self.connect_failed(slot, now),
                None => {
                    let conn = self.conns[slot].as_mut().expect("live slot");
                    conn.state = State::Connecting { child, until: now + CONNECT_TIMEOUT };
                    self.deadlines = true;
                    self.sync(slot);
                }
            },
            Err(_) => self.connect_failed(slot, now),
        }
    }

    /// A refused or failed connect: hold the connection again while its hold time lasts (the
    /// child may be restarting), else give up on it (counted as a connect error; the region's
    /// state, from its probes, says why better than one connect's errno).
    fn connect_failed(&mut self, slot: usize, now: Instant) {
        let conn = self.conns[slot].as_mut().expect("live slot");
        let until = conn.held_until;
        if now + RETRY_PAUSE < until && !self.stopping {
            conn.state = State::Held { until, not_before: now + RETRY_PAUSE };
            self.sync(slot);
            self.hold(slot);
        } else {
            self.reject(slot, Reject::ConnectError, now);
        }
    }

    fn opened(&mut self, slot: usize, child: OwnedFd, now: Instant) {
        let target = self.lanes[self.lane_of(slot)].target.clone();
        let conn = self.conns[slot].as_mut().expect("live slot");
        let client = conn.client.take().expect("a connecting connection has its client");
        let observer = Box::new(Observer::new(target.requests.clone()));
        conn.state = State::Open(Duplex::new(client, child, now), observer);
        target.stats.active.fetch_add(1, Relaxed);
        // The client has most likely sent its first bytes already: pass them on now rather
        // than after another turn of epoll. (Not while a readiness report holds the buffer:
        // then epoll reports the client's bytes on the next turn.)
        let mut buf = std::mem::take(&mut self.buf);
        let step = match self.conns[slot].as_mut().map(|c| &mut c.state) {
            Some(State::Open(d, observer)) if !buf.is_empty() => {
                let mut watch = Counter { stats: &target.stats, observer, now };
                d.on_ready(Side::Client, true, false, &mut buf, &mut watch, now)
            }
            _ => Step::Go,
        };
        self.buf = buf;
        self.after(slot, step, now);
    }

    /// Closes a connection that reached no child: FIN first, then a short linger.
    fn reject(&mut self, slot: usize, why: Reject, now: Instant) {
        self.deadlines = true;
        let Some(conn) = self.conns[slot].as_mut() else { return };
        self.lanes[conn.lane].target.stats.reject(why);
        if let Some(c) = &conn.client {
            sys::shutdown_write(c.as_raw_fd());
        }
        conn.state = State::Linger { until: now + LINGER };
        self.sync(slot);
    }

    fn on_ready(&mut self, r: &Ready, token: u64, now: Instant) {
        let mut buf = std::mem::take(&mut self.buf);
        self.on_ready_with(r, token, &mut buf, now);
        self.buf = buf;
    }

    fn on_ready_with(&mut self, r: &Ready, token: u64, buf: &mut [u8], now: Instant) {
        let slot = (token >> 1) as usize;
        let side = if token & 1 == 1 { Side::Child } else { Side::Client };
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else { return };
        let target = &self.lanes[conn.lane].target;
        match &mut conn.state {
            State::Open(d, observer) => {
                let wanted = d.wanted(side);
                let readable = (r.readable || r.broken) && wanted & WANT_READ != 0;
                let writable = (r.writable || r.broken) && wanted & sys::WANT_WRITE != 0;
                let mut watch = Counter { stats: &target.stats, observer, now };
                let step = d.on_ready(side, readable, writable, buf, &mut watch, now);
                self.after(slot, step, now);
            }
            State::Connecting { child, .. } if side == Side::Child => {
                match sys::connect_finished(child.as_raw_fd(), target.child_port) {
                    None => {}
                    Some(Ok(())) => {
                        let State::Connecting { child, .. } =
                            std::mem::replace(&mut conn.state, State::Moving)
                        else {
                            unreachable!("matched above")
                        };
                        // Still registered (for writing): `sync` turns that into reading.
                        self.opened(slot, child, now);
                    }
                    Some(Err(_)) => {
                        conn.state = State::Moving;
                        self.connect_failed(slot, now);
                    }
                }
            }
            State::Linger { .. } => {
                if conn.client.as_ref().is_none_or(|c| sys::drain(c.as_raw_fd(), buf)) {
                    self.close(slot);
                }
            }
            State::Connecting { .. } | State::Held { .. } | State::Moving => {}
        }
    }

    fn after(&mut self, slot: usize, step: Step, now: Instant) {
        match step {
            Step::Go => {
                if let Some(Conn { state: State::Open(d, _), .. }) = &self.conns[slot] {
                    self.deadlines |= d.half_closed();
                }
                self.sync(slot);
            }
            Step::Done => self.close(slot),
            Step::Reset => {
                if let Some(State::Open(d, mut observer)) = self.take_state(slot) {
                    observer.end(now);
                    self.lanes[self.lane_of(slot)].target.stats.active.fetch_sub(1, Relaxed);
                    duplex::reset(d);
                }
                self.close(slot);
            }
            Step::Linger => {
                if let Some(State::Open(d, mut observer)) = self.take_state(slot) {
                    observer.end(now);
                    let conn = self.conns[slot].as_mut().expect("live slot");
                    self.lanes[conn.lane].target.stats.active.fetch_sub(1, Relaxed);
                    // The child's socket closes with `d`; the client's stays registered.
                    conn.registered[1] = 0;
                    conn.client = Some(d.into_client());
                    conn.state = State::Linger { until: now + LINGER };
                }
                self.deadlines = true;
                self.sync(slot);
            }
        }
    }

    fn take_state(&mut self, slot: usize) -> Option<State> {
        self.conns[slot].as_mut().map(|c| std::mem::replace(&mut c.state, State::Moving))
    }

    /// Ends a connection: its sockets close when dropped (epoll forgets closed descriptors).
    fn close(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].take() else { return };
        // Its descriptors are free again (once `conn` drops, at the end of this call).
        self.paused_until = None;
        let stats = &self.lanes[conn.lane].target.stats;
        let now = Instant::now();
        stats.close(now);
        if let State::Open(_, mut observer) = conn.state {
            observer.end(now);
            stats.active.fetch_sub(1, Relaxed);
        }
        self.freed.push(slot);
    }

    /// Registers exactly the events the connection wants on each socket now.
    fn sync(&mut self, slot: usize) {
        let Some(conn) = self.conns[slot].as_mut() else { return };
        let (client, child, want): (Option<i32>, Option<i32>, [u32; 2]) = match &conn.state {
            State::Open(d, _) => (
                Some(d.client.as_raw_fd()),
                Some(d.child.as_raw_fd()),
                [d.wanted(Side::Client), d.wanted(Side::Child)],
            ),
            State::Connecting { child, .. } => (None, Some(child.as_raw_fd()), [0, sys::WANT_WRITE]),
            State::Linger { .. } => (conn.client.as_ref().map(|c| c.as_raw_fd()), None, [WANT_READ, 0]),
            State::Held { .. } | State::Moving => (None, None, [0, 0]),
        };
        let client = client.or(conn.client.as_ref().map(|c| c.as_raw_fd()));
        for (i, (fd, side)) in [(client, Side::Client), (child, Side::Child)].into_iter().enumerate() {
            let Some(fd) = fd else {
                conn.registered[i] = 0;
                continue;
            };
            let (had, want) = (conn.registered[i], want[i]);
            if had == want {
                continue;
            }
            let t = token(slot, side);
            let r = match (had, want) {
                (0, w) => self.epoll.add(fd, w, t),
                (_, 0) => self.epoll.delete(fd),
                (_, w) => self.epoll.modify(fd, w, t),
            };
            if r.is_ok() {
                conn.registered[i] = want;
            }
        }
    }

    /// Checks every deadline: hold, connect, half-closed idle, linger.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        self.deadlines = false;
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_ref() else { continue };
            let open_only = matches!(&conn.state, State::Open(d, _) if !d.half_closed());
            self.deadlines |= !open_only;
            match &conn.state {
                State::Held { until, .. } if *until <= now => {
                    let lane = &mut self.lanes[conn.lane];
                    lane.waiting.retain(|&s| s != slot);
                    lane.target.stats.held.fetch_sub(1, Relaxed);
                    self.reject(slot, Reject::HoldTimeout, now);
                }
                State::Connecting { until, .. } if *until <= now => {
                    self.reject(slot, Reject::ConnectError, now);
                }
                State::Open(d, _)
                    if d.half_closed() && now.duration_since(d.last_moved) >= HALF_CLOSED_IDLE =>
                {
                    self.close(slot);
                }
                State::Linger { until } if *until <= now => self.close(slot),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    use std::sync::atomic::AtomicU64;

    /// A relay on a free port in front of `child_port`, with its counters.
    fn relay(child_port: u16, hold: Duration) -> (Handle, u16, Arc<Stats>) {
        capped_relay(child_port, hold, 64)
    }

    /// A relay of two workers that takes at most `max` connections at once.
    fn capped_relay(child_port: u16, hold: Duration, max: usize) -> (Handle, u16, Arc<Stats>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        let port_of_region = Port {
            listener,
            child_port,
            stats: stats.clone(),
            requests: Arc::new(RequestStats::new("/healthz")),
            demand: Arc::new(|| {}),
        };
        let setup = Setup { ports: vec![port_of_region], hold, max_connections: max, workers: 2 };
        (start(setup).unwrap(), port, stats)
    }

    /// An echo child: answers each connection with what it read, uppercased, then closes.
    fn echo_child() -> (u16, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            for s in l.incoming().take(1) {
                let mut s = s.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).unwrap();
                s.write_all(&got.to_ascii_uppercase()).unwrap();
            }
        });
        (port, t)
    }

    fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    #[test]
    fn a_held_connection_reaches_the_child_once_the_region_opens() {
        let (child_port, child) = echo_child();
        let (h, port, stats) = relay(child_port, Duration::from_secs(10));
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"hello").unwrap();
        wait_until("the connection to be held", || get(&stats.held) == 1);
        assert_eq!(get(&stats.active), 0);
        h.send(Control::Gate(0, Gate::Open));
        wait_until("the connection to be connected", || get(&stats.active) == 1);
        c.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"HELLO", "a half-closing client still gets its answer");
        child.join().unwrap();
        wait_until("the connection to end", || get(&stats.active) == 0);
        assert_eq!((get(&stats.received), get(&stats.sent), get(&stats.held)), (5, 5, 0));
        h.quit();
    }

    #[test]
    fn the_cap_holds_across_the_workers() {
        let (h, port, stats) = capped_relay(1, Duration::from_millis(300), 2);
        let mut clients: Vec<TcpStream> =
            (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        wait_until("two accepted", || get(&stats.accepted) == 2);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(get(&stats.accepted), 2, "the third waits in the listen queue");
        // Both held ones run out of hold time; closed by their clients, they free the cap.
        let third = clients.pop().unwrap();
        drop(clients);
        wait_until("the third accepted", || get(&stats.accepted) == 3);
        drop(third);
        h.quit();
    }

    #[test]
    fn a_held_connection_closes_gracefully_when_the_hold_runs_out() {
        let (h, port, stats) = relay(1, Duration::from_millis(300));
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"unread").unwrap();
        let mut buf = [0u8; 8];
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.read(&mut buf).unwrap(), 0, "a FIN, not a reset");
        assert_eq!(stats.rejected(Reject::HoldTimeout), 1);
        assert_eq!(get(&stats.held), 0);
        h.quit();
    }

    #[test]
    fn a_refused_connect_is_retried_until_the_child_listens() {
        // Reserve a port, then free it: the child appears on it only later.
        let port_of_child = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (h, port, stats) = relay(port_of_child, Duration::from_secs(10));
        h.send(Control::Gate(0, Gate::Open));
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.write_all(b"late").unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(get(&stats.active), 0);
        let l = TcpListener::bind(("127.0.0.1", port_of_child)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"late");
        s.write_all(b"ok").unwrap();
        drop(s);
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"ok");
        assert_eq!(stats.rejected(Reject::ConnectError), 0);
        h.quit();
    }

    #[test]
    fn stop_closes_the_listener_and_every_held_connection() {
        let (h, port, stats) = relay(1, Duration::from_secs(10));
        let mut held: Vec<TcpStream> =
            (0..5).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
        wait_until("five held", || get(&stats.held) == 5);
        h.send(Control::Stop);
        for c in &mut held {
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            assert_eq!(c.read(&mut [0u8; 4]).unwrap(), 0);
        }
        assert_eq!(stats.rejected(Reject::Stopping), 5);
        assert_eq!(get(&stats.held), 0, "the held gauge follows");
        wait_until("the listener to close", || TcpStream::connect(("127.0.0.1", port)).is_err());
        h.quit();
    }
}
