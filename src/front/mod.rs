//! The HTTP front: the public socket of `SUPERVISOR_METRICS_ADDR`, every client connection on
//! it, and the only way a request reaches tiny_http.
//!
//! tiny_http (`server.rs`) is not exposed to clients any more: it listens on a Unix socket of
//! its own, in the abstract namespace under a random name (no file is written), and sees only
//! complete, bounded request heads that the front has checked, one per internal connection.
//! Everything a hostile or broken client can do is met here first.
//!
//! Threads: one front thread owns the listener and every client connection that is waiting for
//! a request, in one `epoll`; `FORWARDERS` forwarder threads (`forward.rs`) each take one
//! request at a time to tiny_http and copy its answer back. A connection belongs to exactly one
//! of them at a time: the front hands it over with its head complete, the forwarder hands it
//! back (or tells the front it is gone), so the front always knows how many are open.
//!
//! The limits, all in this file or `head.rs`:
//! - `MAX_CONNECTIONS` (256) client connections at once, whatever they are doing. At the cap,
//!   or when descriptors are short, a new client takes the place of the connection that has
//!   waited longest without sending a complete request (lingering ones first), so idle and
//!   slow clients can never keep others out; only when every connection is with a forwarder
//!   do new clients wait in the kernel's listen queue. Each connection takes one descriptor
//!   from the process-wide budget (`accept.rs`), and a forwarded request three more (see
//!   `forward.rs`); when neither the budget nor an eviction gives one, accepting pauses for
//!   `accept::PAUSE` and nothing aborts.
//! - A connection that sends nothing is closed after `IDLE_TIMEOUT` (5 s): from its accept, or
//!   from the end of its previous answer on a keep-alive connection.
//! - A request head must be complete within `HEAD_TIMEOUT` (10 s) of the same moment (else
//!   408), be at most `head::HEAD_LIMIT` (64 KiB, else 431) with at most `head::MAX_HEADERS`
//!   (100) header lines (else 431), be HTTP/1.0 or 1.1 (an HTTP/2 preface or any other version:
//!   505) and well-formed (else 400). Requests with a body are refused with 413: the endpoint
//!   serves GET and HEAD only, and a body would have to be held somewhere.
//! - An answer must reach the client within the scrape timeout plus `ANSWER_TIME` (10 s) of
//!   the request being taken, else the connection is closed.
//! - `HEALTH_FORWARDERS` (2) forwarders serve `/healthz`, `/readyz` and `/livez` only and
//!   `OTHER_FORWARDERS` (4) everything else, so slow `/metrics` scrapes or slow readers of them
//!   never delay a health check. A request is taken only once its client's socket has room to
//!   send (so a client that pipelines requests and never reads cannot block a forwarder).
//!
//! Heads are never copied into per-connection memory while they arrive: the front looks at
//! them with MSG_PEEK into one shared buffer, and the kernel's socket buffer holds them (its
//! size is set so a whole 64 KiB head fits). A refused client gets its answer, our FIN, and
//! `LINGER` (2 s) in which what it still sends is read and dropped, so the answer is not lost to
//! a reset; then the socket is closed.
//!
//! Any process in the supervisor's network namespace can connect to tiny_http's abstract
//! socket directly (abstract sockets have no permissions, and `/proc/net/unix` lists their
//! names) and so meet tiny_http's own weaknesses again, abort on descriptor exhaustion
//! included. That is accepted, as no way exists to restrict who connects to a socket tiny_http
//! accepts on: such a process runs inside the container (or a sidecar of its pod), it could
//! do the same to the TCP port before, and it can already disturb the supervisor in other ways
//! (binding a child's port during a restart, using up the container's memory or pids). No
//! client outside the network namespace can reach the socket.

mod forward;
pub mod head;

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::accept::{self, Accepted};
use crate::output;
use crate::sys::{self, Epoll, EventFd, Ready, EDGE, WANT_PEER_CLOSE, WANT_READ, WANT_WRITE};
use forward::{Back, Conn, Forwarder, Job};
use head::{Lane, Refusal, Verdict, HEAD_LIMIT};

/// Client connections at once, whatever state they are in.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing for this long (since accept or its last answer) is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head must be complete this long after accept or the previous answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the scrape timeout: how long an answer may take to reach the client.
pub const ANSWER_TIME: Duration = Duration::from_secs(10);
/// Forwarders for `/healthz`, `/readyz` and `/livez`, and for everything else.
pub const HEALTH_FORWARDERS: usize = 2;
pub const OTHER_FORWARDERS: usize = 4;
/// tiny_http needs a worker for each request forwarded at once.
pub const FORWARDERS: usize = HEALTH_FORWARDERS + OTHER_FORWARDERS;
/// How long a refused or finished connection is drained after our FIN before it is closed.
pub const LINGER: Duration = Duration::from_secs(2);

/// Receive buffer asked for on each client socket: a whole `HEAD_LIMIT` head must fit in what
/// the kernel accepts before we read anything (the kernel doubles the value for its own
/// bookkeeping; this also caps what a silent connection can make the kernel hold).
const RECEIVE_BUFFER: usize = HEAD_LIMIT + HEAD_LIMIT / 2;
/// Heads that have shown at least this much are looked at again once per `SWEEP` rather than
/// on every arriving segment, so a client trickling a large head costs little work.
const RECHECK_FROM: usize = 4096;
/// Deadlines are checked this often.
const SWEEP: Duration = Duration::from_millis(100);
/// Clients accepted per readiness report of the listener.
const ACCEPT_BATCH: usize = 64;
/// Descriptors a connection holds while it waits: its socket.
const FDS_PER_CONNECTION: usize = 1;
/// Descriptors a request being answered holds: the client's socket and the internal
/// connection to tiny_http.
pub const REQUEST_FDS: usize = FDS_PER_CONNECTION + forward::BACKEND_FDS;

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;

pub struct Setup {
    pub listener: TcpListener,
    /// tiny_http's socket.
    pub backend: UnixAddr,
    /// The longest a forwarded request may take, answer copied back included.
    pub answer_timeout: Duration,
}

pub struct Handle {
    stop: Arc<AtomicBool>,
    wake: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    /// Closes the listener and every connection, and waits for the front and its forwarders
    /// (each notices within a fraction of a second, whatever it is doing).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.wake();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub fn start(setup: Setup) -> std::io::Result<Handle> {
    let listener = setup.listener;
    listener.set_nonblocking(true)?;
    // Linux copies these to every accepted socket. Without NODELAY, an answer written in
    // pieces waits for the client's delayed ACK (40 ms) between them.
    for (what, r) in [
        ("TCP_NODELAY", sys::nodelay_for_accepted(&listener)),
        ("SO_RCVBUF", sys::receive_buffer(&listener, RECEIVE_BUFFER)),
    ] {
        if let Err(e) = r {
            output::warn(None, &format!("http: cannot set {what} on the metrics listener: {e}"), &[]);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(EventFd::new()?);
    let epoll = Epoll::new()?;
    epoll.add(wake.raw(), WANT_READ, WAKE)?;
    let (back_tx, back) = unbounded();
    let (health, health_jobs) = unbounded();
    let (other, other_jobs) = unbounded();
    let mut threads = Vec::new();
    for (jobs, count, name) in
        [(health_jobs, HEALTH_FORWARDERS, "http health"), (other_jobs, OTHER_FORWARDERS, "http")]
    {
        for _ in 0..count {
            let forwarder = Forwarder {
                backend: setup.backend.clone(),
                answer_timeout: setup.answer_timeout,
                stop: stop.clone(),
                back: back_tx.clone(),
                wake: wake.clone(),
            };
            let jobs: Receiver<Job> = jobs.clone();
            threads.push(std::thread::Builder::new().name(name.into()).spawn(move || forwarder.run(jobs))?);
        }
    }
    let front = Front {
        listener,
        listening: false,
        paused_until: None,
        epoll,
        wake: wake.clone(),
        stop: stop.clone(),
        slots: Vec::new(),
        free: Vec::new(),
        freed: Vec::new(),
        away: 0,
        health,
        other,
        back,
        buf: vec![0; HEAD_LIMIT],
        last_sweep: Instant::now(),
    };
    threads.push(std::thread::Builder::new().name("http front".into()).spawn(move || front.run())?);
    Ok(Handle { stop, wake, threads })
}

/// Waiting for a complete request head.
struct Reading {
    idle_until: Instant,
    head_until: Instant,
    /// Bytes seen at the last look.
    seen: usize,
    /// More has arrived since the last look (checked at the next sweep).
    recheck: bool,
    /// The socket has room to send: an answer can be written without waiting.
    writable: bool,
    /// The last look found a complete head; it waits for `writable`.
    complete: bool,
    /// The client has shut down its sending side: a head not complete now never will be.
    peer_closed: bool,
}

impl Reading {
    fn new(now: Instant) -> Reading {
        Reading {
            idle_until: now + IDLE_TIMEOUT,
            head_until: now + HEAD_TIMEOUT,
            seen: 0,
            recheck: false,
            writable: false,
            complete: false,
            peer_closed: false,
        }
    }
}

enum State {
    Reading(Reading),
    /// Answered and our FIN sent: what the client still sends is dropped until `until`.
    Linger {
        until: Instant,
    },
}

struct Slot {
    conn: Conn,
    state: State,
}

struct Front {
    listener: TcpListener,
    listening: bool,
    paused_until: Option<Instant>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Slots closed during this turn; reused only after it, so a late report about a closed
    /// socket never reaches a new connection.
    freed: Vec<usize>,
    /// Connections a forwarder has now.
    away: usize,
    health: Sender<Job>,
    other: Sender<Job>,
    back: Receiver<Back>,
    /// Where every head is looked at.
    buf: Vec<u8>,
    last_sweep: Instant,
}

impl Front {
    fn run(mut self) {
        let mut raw = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut ready = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            self.sync_listener();
            if let Err(e) = self.epoll.wait(&mut raw, &mut ready, self.timeout()) {
                output::error(None, &format!("http: epoll failed: {e}"), &[]);
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
                    slot => self.on_ready(slot as usize, r, now),
                }
            }
            self.take_back(now);
            if now.duration_since(self.last_sweep) >= SWEEP {
                self.sweep(now);
            }
            self.free.append(&mut self.freed);
        }
    }

    fn live(&self) -> usize {
        self.here() + self.away
    }

    /// Connections the front holds itself (not a forwarder).
    fn here(&self) -> usize {
        self.slots.len() - self.free.len() - self.freed.len()
    }

    /// Listens while there is room, or a connection that can make room, and no pause.
    fn sync_listener(&mut self) {
        let paused = self.paused_until.is_some_and(|t| Instant::now() < t);
        if !paused {
            self.paused_until = None;
        }
        let want = (self.live() < MAX_CONNECTIONS || self.here() > 0) && !paused;
        if want != self.listening {
            let fd = self.listener.as_raw_fd();
            let r = if want { self.epoll.add(fd, WANT_READ, LISTENER) } else { self.epoll.delete(fd) };
            if r.is_ok() {
                self.listening = want;
            }
        }
    }

    fn timeout(&self) -> Option<Duration> {
        let now = Instant::now();
        let sweep = (self.slots.len() > self.free.len() + self.freed.len())
            .then(|| (self.last_sweep + SWEEP).saturating_duration_since(now));
        let pause = self.paused_until.map(|t| t.saturating_duration_since(now));
        match (sweep, pause) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn accept(&mut self, now: Instant) {
        let fd = self.listener.as_raw_fd();
        let mut evicted = false;
        for _ in 0..ACCEPT_BATCH {
            if self.live() >= MAX_CONNECTIONS && !self.evict() {
                return;
            }
            match accept::accept_one(fd, FDS_PER_CONNECTION, 0) {
                Accepted::Conn(fd, permit) => {
                    evicted = false;
                    self.insert(Conn { fd, _permit: permit }, State::Reading(Reading::new(now)));
                }
                Accepted::Empty => return,
                // Short of descriptors: our own oldest waiting connection makes room once per
                // client (it may be the descriptors of others that are short).
                Accepted::Pause(_) if !evicted && self.evict() => evicted = true,
                Accepted::Pause(why) => {
                    if self.paused_until.is_none() {
                        output::warn(None, &format!("http: not accepting for now: {why}"), &[]);
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

    /// Closes the connection that has waited longest without a request being taken (a
    /// lingering one first), so a new client is served while idle or slow ones fill the front;
    /// false if there is none. Clients that send a request at once are never the oldest.
    fn evict(&mut self) -> bool {
        let since = |s: &Slot| match &s.state {
            State::Linger { .. } => None,
            State::Reading(r) => Some(r.head_until),
        };
        let oldest = (0..self.slots.len())
            .filter_map(|i| self.slots[i].as_ref().map(|s| (since(s), i)))
            .min_by_key(|&(since, _)| since)
            .map(|(_, i)| i);
        match oldest {
            Some(slot) => {
                self.close(slot);
                true
            }
            None => false,
        }
    }

    /// Registers a connection: edge-triggered while its head arrives (peeking leaves the bytes
    /// in the socket, so level-triggered readiness would never clear), level-triggered while
    /// it is drained.
    fn insert(&mut self, conn: Conn, state: State) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let events = match state {
            State::Reading(_) => WANT_READ | WANT_WRITE | WANT_PEER_CLOSE | EDGE,
            State::Linger { .. } => WANT_READ,
        };
        if self.epoll.add(conn.fd.as_raw_fd(), events, slot as u64).is_err() {
            // Dropping `conn` closes it.
            self.freed.push(slot);
            return;
        }
        self.slots[slot] = Some(Slot { conn, state });
    }

    fn on_ready(&mut self, slot: usize, r: &Ready, now: Instant) {
        let Some(s) = self.slots.get_mut(slot).and_then(Option::as_mut) else { return };
        match &mut s.state {
            State::Reading(reading) => {
                reading.writable |= r.writable;
                reading.peer_closed |= r.peer_closed;
                let look = r.broken
                    || r.peer_closed
                    || reading.seen < RECHECK_FROM
                    || (reading.complete && reading.writable);
                if look {
                    self.look(slot, now);
                } else if r.readable {
                    reading.recheck = true;
                }
            }
            State::Linger { .. } => {
                if sys::drain(s.conn.fd.as_raw_fd(), &mut self.buf) {
                    self.close(slot);
                }
            }
        }
    }

    /// Peeks at what the client has sent and acts on the verdict.
    fn look(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots[slot].as_mut() else { return };
        let State::Reading(reading) = &mut s.state else { return };
        reading.recheck = false;
        let n = match sys::peek(s.conn.fd.as_raw_fd(), &mut self.buf) {
            Ok(0) => return self.close(slot),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(_) => return self.close(slot),
        };
        reading.seen = n;
        match head::judge(&self.buf[..n]) {
            // Its descriptor is worth more to the next client than a wait for the head timeout.
            Verdict::Partial if reading.peer_closed => self.close(slot),
            Verdict::Partial => {}
            Verdict::Complete(head) => {
                reading.complete = true;
                if reading.writable {
                    self.dispatch(slot, head);
                }
            }
            Verdict::Refused(why) => self.refuse(slot, why, now),
        }
    }

    /// Hands a connection with a complete head to a forwarder of its lane.
    fn dispatch(&mut self, slot: usize, head: head::Head) {
        let Some(s) = self.slots[slot].take() else { return };
        self.freed.push(slot);
        let _ = self.epoll.delete(s.conn.fd.as_raw_fd());
        let lane = match head.lane {
            Lane::Health => &self.health,
            Lane::Other => &self.other,
        };
        // Fails only once the forwarders have ended, that is while stopping.
        if lane.send(Job { conn: s.conn, head }).is_ok() {
            self.away += 1;
        }
    }

    /// Answers the client ourselves and closes gracefully.
    fn refuse(&mut self, slot: usize, why: Refusal, now: Instant) {
        let Some(s) = self.slots[slot].as_mut() else { return };
        let fd = s.conn.fd.as_raw_fd();
        // A fresh socket's send buffer holds these few bytes; if it does not, the client is
        // not reading and loses nothing it would have read.
        let _ = sys::send(fd, why.response().as_bytes());
        sys::shutdown_write(fd);
        s.state = State::Linger { until: now + LINGER };
        if self.epoll.modify(fd, WANT_READ, slot as u64).is_err() {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        if self.slots[slot].take().is_some() {
            self.freed.push(slot);
        }
    }

    /// Takes back what the forwarders are done with.
    fn take_back(&mut self, now: Instant) {
        while let Ok(back) = self.back.try_recv() {
            self.away -= 1;
            match back {
                Back::Again(conn) => self.insert(conn, State::Reading(Reading::new(now))),
                Back::Close(conn) => {
                    sys::shutdown_write(conn.fd.as_raw_fd());
                    self.insert(conn, State::Linger { until: now + LINGER });
                }
                Back::Gone => {}
            }
        }
    }

    /// Checks every deadline, and looks again at heads that grew since the last look.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        for slot in 0..self.slots.len() {
            if let Some(Slot { state: State::Reading(Reading { recheck: true, .. }), .. }) = &self.slots[slot]
            {
                self.look(slot, now);
            }
            let Some(s) = &self.slots[slot] else { continue };
            match &s.state {
                State::Reading(r) if r.seen == 0 && now >= r.idle_until => self.close(slot),
                // A complete head whose client never made room for the answer: nothing to say.
                State::Reading(r) if r.complete && now >= r.head_until => self.close(slot),
                State::Reading(r) if now >= r.head_until => self.refuse(slot, Refusal::Timeout, now),
                State::Linger { until } if now >= *until => self.close(slot),
                _ => {}
            }
        }
    }
}
