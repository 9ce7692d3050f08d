//! Accepting connections with limits, for every port the supervisor listens on: the relay's
//! region ports and the HTTP endpoint.
//!
//! Called on whichever thread accepts from a listener (the relay workers, the HTTP front
//! thread). Two limits apply. Each listener has its own cap (the relay workers share a
//! region's count; past the cap they stop asking, and new clients wait in the kernel's listen
//! queue). And one process-wide descriptor budget, shared by every listener, keeps a reserve
//! that connections can never take, so the supervisor's own work (a spawn's pipes, probes,
//! scrapes, /proc reads) still finds descriptors while thousands of clients are connected.
//! That work borrows from the reserve ([`borrow`]) and waits its turn when the reserve is in
//! use, so under a low limit it is slower, never failed for want of a descriptor. When
//! accept(2) itself fails for lack of descriptors or memory, the owner pauses accepting for
//! [`PAUSE`]: never a hot loop, never an abort, and the listener stays bound.
//!
//! The arithmetic ([`least`]) is what lets 12 regions with the relay run under a limit of 64:
//! a region holds two pipes and a listener, the relay two descriptors per worker.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::sys;

/// Descriptors the supervisor holds whatever it supervises: the standard streams, /dev/null,
/// the signal thread's socket pair, the HTTP endpoint's listener (and the front's copy of it),
/// the front's epoll and wake-up, tiny_http's socket and wake-up pipe (12 measured with the
/// endpoint on; `tests/http.rs` checks the whole sum against a running supervisor).
const BASE_FDS: usize = 12;
/// Per region: its child's two log pipes (read ends).
const REGION_FDS: usize = 2;
/// Per region with the relay: its port's listener (one, whatever the number of workers).
const PORT_FDS: usize = 1;
/// Descriptors a spawn opens for a moment: the write ends of the child's two log pipes,
/// /dev/null for its stdin, and the pipe that tells whether exec worked.
pub const SPAWN_FDS: usize = 5;
/// The least reserve: a spawn, and a probe's, a scrape's and a /proc read's descriptor.
const RESERVE_LEAST: usize = SPAWN_FDS + 3;

/// The reserve `regions` regions get where the limit leaves room: every region probed and
/// scraped at once while one spawns.
fn reserve_wanted(regions: usize) -> usize {
    16 + 4 * regions
}

/// What the supervisor holds with `regions` regions and `workers` relay workers (0: no
/// relay), children's pipes included.
fn held(regions: usize, workers: usize) -> usize {
    let relay = if workers > 0 { regions * PORT_FDS + workers * crate::relay::FDS_PER_WORKER } else { 0 };
    BASE_FDS + regions * REGION_FDS + relay
}

/// The fewest descriptors `regions` regions need with `workers` relay workers (0: no relay):
/// what the supervisor holds, the least reserve for its own work, and room for one request to
/// the HTTP endpoint and one relayed connection.
pub fn least(regions: usize, workers: usize) -> usize {
    let relayed = if workers > 0 { crate::relay::FDS_PER_CONNECTION } else { 0 };
    held(regions, workers) + RESERVE_LEAST + crate::front::REQUEST_FDS + relayed
}

/// The most relay workers, up to `wanted`, that `limit` descriptors allow; `None` when not
/// even one does.
pub fn relay_workers(regions: usize, wanted: usize, limit: usize) -> Option<usize> {
    (1..=wanted.max(1)).rev().find(|&w| least(regions, w) <= limit)
}

/// How long a listener's owner waits before trying again after running short.
pub const PAUSE: Duration = Duration::from_millis(100);

/// Descriptors connections may hold at once, process-wide; set once by [`init`].
struct Budget {
    capacity: usize,
    used: AtomicUsize,
}

static BUDGET: OnceLock<Budget> = OnceLock::new();

/// The reserve: descriptors the supervisor's own work borrows for a moment ([`borrow`]).
struct Reserve {
    capacity: usize,
    used: Mutex<usize>,
    returned: Condvar,
}

static RESERVE: OnceLock<Reserve> = OnceLock::new();

/// Splits what the descriptor limit leaves (less what is open now, less the log pipes of
/// `regions` children to come) between the reserve and connections: the reserve gets what
/// `regions` regions want where the limit leaves room, at most half of it where it is low,
/// never less than the least. Call once all listeners are bound and threads started, before
/// any child or connection. Returns (connections, reserve).
pub fn init(regions: usize) -> (usize, usize) {
    let limit = usize::try_from(sys::nofile_limit()).unwrap_or(usize::MAX);
    let free = limit.saturating_sub(sys::open_fds()).saturating_sub(regions * REGION_FDS);
    let reserve = reserve_wanted(regions).min(free / 2).max(RESERVE_LEAST);
    let capacity = free.saturating_sub(reserve);
    BUDGET.get_or_init(|| Budget { capacity, used: AtomicUsize::new(0) });
    RESERVE.get_or_init(|| Reserve { capacity: reserve, used: Mutex::new(0), returned: Condvar::new() });
    (capacity, reserve)
}

/// Descriptors of the reserve, lent until dropped.
pub struct Loan(usize);

/// Borrows `n` descriptors of the reserve for a moment of the supervisor's own work (a spawn,
/// a probe, a scrape, a /proc read), waiting while others hold it: under a low limit that
/// work queues up instead of failing. No wait before [`init`] (no limit is known then).
pub fn borrow(n: usize) -> Loan {
    let Some(r) = RESERVE.get() else { return Loan(0) };
    let n = n.min(r.capacity);
    let mut used = r.used.lock().unwrap_or_else(|p| p.into_inner());
    while *used + n > r.capacity {
        used = r.returned.wait(used).unwrap_or_else(|p| p.into_inner());
    }
    *used += n;
    Loan(n)
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let (Some(r), n @ 1..) = (RESERVE.get(), self.0) {
            *r.used.lock().unwrap_or_else(|p| p.into_inner()) -= n;
            r.returned.notify_all();
        }
    }
}

/// Descriptors held by one connection; given back when dropped.
pub struct Permit(usize);

impl Permit {
    /// Takes `n` descriptors from the budget, or none when that would eat into the reserve or
    /// leave fewer than `leave` for others.
    pub fn take(n: usize, leave: usize) -> Option<Permit> {
        let Some(budget) = BUDGET.get() else { return Some(Permit(0)) };
        budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n + leave <= budget.capacity).then_some(used + n)
            })
            .ok()
            .map(|_| Permit(n))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(budget) = BUDGET.get() {
            budget.used.fetch_sub(self.0, Ordering::AcqRel);
        }
    }
}

/// What one accept attempt gave.
pub enum Accepted {
    Conn(OwnedFd, Permit),
    /// No client is waiting.
    Empty,
    /// Descriptors or memory are short: stop accepting for [`PAUSE`].
    Pause(io::Error),
}

/// Accepts one client of `listener` (non-blocking), holding `fds` descriptors of the budget
/// for it (the accepted socket and whatever the owner opens for it) and leaving at least
/// `leave` to others. (The relay leaves room for one request to the HTTP endpoint, so
/// `/healthz` is answered while relayed clients take every descriptor they can.)
pub fn accept_one(listener: RawFd, fds: usize, leave: usize) -> Accepted {
    let Some(permit) = Permit::take(fds, leave) else {
        return Accepted::Pause(io::Error::other("the descriptor budget for connections is used up"));
    };
    match sys::accept(listener) {
        Ok(fd) => Accepted::Conn(fd, permit),
        Err(e) => match e.raw_os_error() {
            Some(libc::EAGAIN) => Accepted::Empty,
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => Accepted::Pause(e),
            // ECONNABORTED and the like: that client is gone; the next may be fine.
            _ => Accepted::Empty,
        },
    }
}
