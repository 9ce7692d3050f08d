//! The relay: each region's port, listened on by the supervisor on `SUPERVISOR_RELAY_ADDR`,
//! with every TCP connection copied byte for byte to the region's child on
//! 127.0.0.1:<child port> (the real plugin binds loopback only).
//!
//! Thread model: each region has its own relay workers, one per core up to [`MAX_WORKERS`].
//! A worker is a thread that owns the connections it accepted and sleeps in one `epoll` on
//! them, its mailbox's eventfd and the region's listener, which all the region's workers share
//! (registered with `EPOLLEXCLUSIVE`, so a new client wakes one idle worker, not all). That
//! keeps a region's relay independent of every other region's, costs a few hundred bytes per
//! idle connection instead of a thread and its stack, and leaves the copy a plain read/write
//! loop whose bytes the request observer can see. More than one worker per region because a
//! new connection's cost is almost all kernel work (the loopback handshake and teardown run
//! in the thread that connects and closes): one thread per region caps a busy region at one
//! core. The supervisor thread tells every worker what its region is doing (`Gate`) and when
//! to stop; the workers only ever write the region's `Stats` (atomics) and its count of live
//! connections, which holds the region's cap across them.
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
    /// Idle (on demand): hold new connections and tell the supervisor once (`Setup::demand`),
    /// which starts the region.
    Idle,
}

#[derive(Clone, Copy)]
pub enum Control {
    Gate(Gate),
    /// The first stop signal: close the listener and every held connection; connected ones
    /// flow on while the children shut down.
    Stop,
    /// The children are gone (or the grace is over): close everything and end the thread.
    Quit,
}

pub struct Setup {
    pub region: &'static str,
    pub listener: TcpListener,
    pub child_port: u16,
    pub hold: Duration,
    pub max_connections: usize,
    pub stats: Arc<Stats>,
    /// The region's request counters (SPEC "Request metrics"), fed by each connection's observer.
    pub requests: Arc<RequestStats>,
    /// Threads sharing the region's listener (at least one).
    pub workers: usize,
    /// Called when a connection arrives while the region is idle (at most once per worker and
    /// idle period): the supervisor then starts the region.
    pub demand: Arc<dyn Fn() + Send + Sync>,
}

/// How the supervisor thread reaches a region's relay workers.
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

/// Relay workers per region at most (one per core up to this).
pub const MAX_WORKERS: usize = 4;

/// Workers for each region on this machine: one per core the process may use, within
/// [`MAX_WORKERS`].
pub fn workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WORKERS)
}

/// Bytes one read takes; also the most a direction ever keeps pending.
const READ_SIZE: usize = 64 * 1024;
/// Descriptors a connection holds: the client's socket and the child's.
const FDS_PER_CONNECTION: usize = 2;
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
/// Clients accepted per readiness report of the listener (the rest on the next turn).
const ACCEPT_BATCH: usize = 64;

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;

pub fn start(setup: Setup) -> std::io::Result<Handle> {
    setup.listener.set_nonblocking(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener: one call fewer per connection.
    sys::nodelay_for_accepted(&setup.listener)?;
    let workers = (0..setup.workers.max(1))
        .map(|_| start_worker(&setup, setup.listener.try_clone()?))
        .collect::<std::io::Result<_>>()?;
    Ok(Handle { workers })
}

fn start_worker(setup: &Setup, listener: TcpListener) -> std::io::Result<Worker> {
    let (tx, rx) = unbounded();
    let wake = Arc::new(EventFd::new()?);
    let epoll = Epoll::new()?;
    epoll.add(wake.raw(), WANT_READ, WAKE)?;
    let name = format!("relay {}", setup.region);
    let relay = Relay {
        listener: Some(listener),
        listening: false,
        paused_until: None,
        epoll,
        rx,
        wake: wake.clone(),
        gate: Gate::Hold,
        demanded: false,
        demand: setup.demand.clone(),
        stopping: false,
        conns: Vec::new(),
        free: Vec::new(),
        freed: Vec::new(),
        waiting: VecDeque::new(),
        child_port: setup.child_port,
        hold: setup.hold,
        max: setup.max_connections,
        release_batch: (RELEASE_BATCH / setup.workers.max(1)).max(1),
        next_release: Instant::now(),
        stats: setup.stats.clone(),
        requests: setup.requests.clone(),
        region: setup.region,
        last_sweep: Instant::now(),
        deadlines: false,
        buf: vec![0u8; READ_SIZE],
    };
    let thread = std::thread::Builder::new().name(name).spawn(move || relay.run())?;
    Ok(Worker { tx, wake, thread })
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
    client: Option<OwnedFd>,
    state: State,
    held_until: Instant,
    /// Events registered for (client, child); 0: not registered.
    registered: [u32; 2],
    _permit: Permit,
}

struct Relay {
    listener: Option<TcpListener>,
    listening: bool,
    paused_until: Option<Instant>,
    epoll: Epoll,
    rx: Receiver<Control>,
    wake: Arc<EventFd>,
    gate: Gate,
    /// The supervisor was told of a connection in this idle period.
    demanded: bool,
    demand: Arc<dyn Fn() + Send + Sync>,
    stopping: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Slots closed during this turn; reused only after it, so a late report of a closed
    /// socket never reaches a new connection.
    freed: Vec<usize>,
    /// Held connections, oldest first.
    waiting: VecDeque<usize>,
    child_port: u16,
    hold: Duration,
    max: usize,
    /// Held connections this worker releases per [`RELEASE_EVERY`]: its share of
    /// [`RELEASE_BATCH`].
    release_batch: usize,
    /// No release before this (the last batch's time plus [`RELEASE_EVERY`]).
    next_release: Instant,
    stats: Arc<Stats>,
    requests: Arc<RequestStats>,
    region: &'static str,
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
            self.sync_listener();
            let timeout = self.timeout();
            if let Err(e) = self.epoll.wait(&mut raw, &mut ready, timeout) {
                output::error(Some(self.region), &format!("relay: epoll failed: {e}"), &[]);
                std::thread::sleep(accept::PAUSE);
                continue;
            }
            let now = Instant::now();
            for r in &ready {
                match r.token {
                    WAKE => {
                        self.wake.clear();
                    }
                    LISTENER => self.accept(now),
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
                Control::Gate(g) => {
                    if g == Gate::Idle && self.gate != Gate::Idle {
                        self.demanded = false;
                    }
                    self.gate = g;
                    // Connections held while the region went idle start it again.
                    if g == Gate::Idle && !self.waiting.is_empty() {
                        self.wake_region();
                    }
                }
                Control::Stop => self.stop(now),
                Control::Quit => {
                    // `close` takes open ones off `active`; the held ones come off here. (Not
                    // a store of 0: the region's other workers may be subtracting theirs.)
                    self.stats.held.fetch_sub(self.waiting.len() as u64, Relaxed);
                    self.waiting.clear();
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
        if let Some(l) = self.listener.take() {
            if self.listening {
                let _ = self.epoll.delete(l.as_raw_fd());
            }
        }
        while let Some(slot) = self.waiting.pop_front() {
            self.stats.held.fetch_sub(1, Relaxed);
            self.reject(slot, Reject::Stopping, now);
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

    /// Listens while there is room, descriptors and no pause.
    fn sync_listener(&mut self) {
        let Some(l) = &self.listener else { return };
        let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
        let want = self.stats.live.load(Relaxed) < self.max && !paused;
        if want != self.listening {
            let r = if want {
                self.epoll.add(l.as_raw_fd(), WANT_READ | sys::EXCLUSIVE, LISTENER)
            } else {
                self.epoll.delete(l.as_raw_fd())
            };
            if r.is_ok() {
                self.listening = want;
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
        if self.gate == Gate::Open && !self.waiting.is_empty() {
            at(Duration::from_millis(1));
        }
        if self.deadlines {
            at((self.last_sweep + SWEEP).saturating_duration_since(now));
        }
        if self.listener.is_some() && !self.listening {
            // At the region's cap: another worker may free room without this one hearing of it.
            at(SWEEP);
        }
        t
    }

    fn accept(&mut self, now: Instant) {
        let Some(l) = &self.listener else { return };
        let fd = l.as_raw_fd();
        for _ in 0..ACCEPT_BATCH {
            if !self.reserve() {
                return;
            }
            match accept::accept_one(fd, FDS_PER_CONNECTION) {
                Accepted::Conn(client, permit) => {
                    self.stats.accepted.fetch_add(1, Relaxed);
                    let state = State::Held { until: now + self.hold, not_before: now };
                    let conn = Conn {
                        client: Some(client),
                        state,
                        held_until: now + self.hold,
                        registered: [0; 2],
                        _permit: permit,
                    };
                    let slot = self.insert(conn);
                    match self.gate {
                        Gate::Open => self.connect(slot, now),
                        Gate::Hold => self.hold(slot),
                        Gate::Idle => {
                            self.hold(slot);
                            self.wake_region();
                        }
                    }
                }
                Accepted::Empty => {
                    self.stats.live.fetch_sub(1, AcqRel);
                    return;
                }
                Accepted::Pause(why) => {
                    self.stats.live.fetch_sub(1, AcqRel);
                    if self.paused_until.is_none() {
                        output::warn(Some(self.region), &format!("relay: not accepting for now: {why}"), &[]);
                    }
                    self.paused_until = Some(now + accept::PAUSE);
                    if self.listening && self.epoll.delete(fd).is_ok() {
                        self.listening = false;
                    }
                    return;
                }
            }
        }
    }

    /// Counts one more connection for the region, unless that would pass its cap.
    fn reserve(&self) -> bool {
        self.stats.live.fetch_update(AcqRel, Acquire, |n| (n < self.max).then_some(n + 1)).is_ok()
    }

    /// Tells the supervisor, once per idle period, that the idle region has a connection.
    fn wake_region(&mut self) {
        if !self.demanded {
            self.demanded = true;
            (self.demand)();
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

    fn hold(&mut self, slot: usize) {
        self.deadlines = true;
        self.stats.held.fetch_add(1, Relaxed);
        self.waiting.push_back(slot);
    }

    /// Connects held connections while the region is open, a batch per turn, oldest first.
    fn release(&mut self, now: Instant) {
        if self.gate != Gate::Open || now < self.next_release {
            return;
        }
        for _ in 0..self.release_batch {
            let Some(&slot) = self.waiting.front() else { return };
            let due = match self.conns[slot].as_ref().map(|c| &c.state) {
                Some(State::Held { not_before, .. }) => *not_before <= now,
                _ => true,
            };
            if !due {
                return;
            }
            self.next_release = now + RELEASE_EVERY;
            self.waiting.pop_front();
            self.stats.held.fetch_sub(1, Relaxed);
            if matches!(self.conns[slot].as_ref().map(|c| &c.state), Some(State::Held { .. })) {
                self.connect(slot, now);
            }
        }
    }

    fn connect(&mut self, slot: usize, now: Instant) {
        match sys::connect_loopback(self.child_port) {
            Ok((child, true)) => self.opened(slot, child, now),
            Ok((child, false)) => match sys::connect_finished(child.as_raw_fd(), self.child_port) {
                Some(Ok(())) => self.opened(slot, child, now),
                Some(Err(e)) => self.connect_failed(slot, e, now),
                None => {
                    let conn = self.conns[slot].as_mut().expect("live slot");
                    conn.state = State::Connecting { child, until: now + CONNECT_TIMEOUT };
                    self.deadlines = true;
                    self.sync(slot);
                }
            },
            Err(e) => self.connect_failed(slot, e, now),
        }
    }

    /// A refused or failed connect: hold the connection again while its hold time lasts (the
    /// child may be restarting), else give up on it.
    fn connect_failed(&mut self, slot: usize, why: std::io::Error, now: Instant) {
        let conn = self.conns[slot].as_mut().expect("live slot");
        let until = conn.held_until;
        if now + RETRY_PAUSE < until && !self.stopping {
            conn.state = State::Held { until, not_before: now + RETRY_PAUSE };
            self.sync(slot);
            self.hold(slot);
        } else {
            let _ = why;
            self.reject(slot, Reject::ConnectError, now);
        }
    }

    fn opened(&mut self, slot: usize, child: OwnedFd, now: Instant) {
        let conn = self.conns[slot].as_mut().expect("live slot");
        let client = conn.client.take().expect("a connecting connection has its client");
        let observer = Box::new(Observer::new(self.requests.clone()));
        conn.state = State::Open(Duplex::new(client, child, now), observer);
        self.stats.active.fetch_add(1, Relaxed);
        // The client has most likely sent its first bytes already: pass them on now rather
        // than after another turn of epoll. (Not while a readiness report holds the buffer:
        // then epoll reports the client's bytes on the next turn.)
        let mut buf = std::mem::take(&mut self.buf);
        let step = match self.conns[slot].as_mut().map(|c| &mut c.state) {
            Some(State::Open(d, observer)) if !buf.is_empty() => {
                let mut watch = Counter { stats: &self.stats, observer, now };
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
        self.stats.reject(why);
        let Some(conn) = self.conns[slot].as_mut() else { return };
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
        match &mut conn.state {
            State::Open(d, observer) => {
                let wanted = d.wanted(side);
                let readable = (r.readable || r.broken) && wanted & WANT_READ != 0;
                let writable = (r.writable || r.broken) && wanted & sys::WANT_WRITE != 0;
                let mut watch = Counter { stats: &self.stats, observer, now };
                let step = d.on_ready(side, readable, writable, buf, &mut watch, now);
                self.after(slot, step, now);
            }
            State::Connecting { child, .. } if side == Side::Child => {
                match sys::connect_finished(child.as_raw_fd(), self.child_port) {
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
                    Some(Err(e)) => {
                        conn.state = State::Moving;
                        self.connect_failed(slot, e, now);
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
                    self.stats.active.fetch_sub(1, Relaxed);
                    duplex::reset(d);
                }
                self.close(slot);
            }
            Step::Linger => {
                if let Some(State::Open(d, mut observer)) = self.take_state(slot) {
                    observer.end(now);
                    self.stats.active.fetch_sub(1, Relaxed);
                    let conn = self.conns[slot].as_mut().expect("live slot");
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
        self.stats.close(Instant::now());
        if let State::Open(_, mut observer) = conn.state {
            observer.end(Instant::now());
            self.stats.active.fetch_sub(1, Relaxed);
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
                    self.waiting.retain(|&s| s != slot);
                    self.stats.held.fetch_sub(1, Relaxed);
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
        let setup = Setup {
            region: "us-east-1",
            listener,
            child_port,
            hold,
            max_connections: max,
            stats: stats.clone(),
            requests: Arc::new(RequestStats::new("/healthz")),
            workers: 2,
            demand: Arc::new(|| {}),
        };
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
        h.send(Control::Gate(Gate::Open));
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
        h.send(Control::Gate(Gate::Open));
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
