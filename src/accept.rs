//! Accepting connections with limits, for every port the supervisor listens on: the relay's
//! region ports and the HTTP endpoint.
//!
//! Called on whichever thread accepts from a listener (a region's relay workers, the HTTP front
//! thread). Two limits apply. Each listener has its own cap (a region's workers share one
//! count; past the cap they stop asking, and new clients wait in the kernel's listen queue).
//! And one process-wide descriptor budget, shared by every listener, keeps a reserve that
//! connections can never take, so the supervisor's own work (child pipes at a restart, probes,
//! scrapes, tiny_http's sockets) still finds descriptors while thousands of clients are
//! connected. When accept(2) itself fails for lack of descriptors or memory, the owner pauses
//! accepting for [`PAUSE`]: never a hot loop, never an abort, and the listener stays bound.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::sys;

/// Descriptors the supervisor holds whatever it supervises: the standard streams, the signal
/// pipe, the HTTP endpoint's listener, its front's epoll and wake-up, tiny_http's socket and
/// thread (12 measured with the endpoint on; `tests/supervisor.rs` checks the sum below).
const BASE_FDS: usize = 12;
/// Per region: its thread's wake-up and its child's two log pipes.
const REGION_FDS: usize = 3;
/// Per relay worker of a region: its epoll, its wake-up and its copy of the region's listener.
const WORKER_FDS: usize = 3;
/// Descriptors connections may never take: the supervisor's own work needs them (a restart's
/// two pipes and /dev/null, probes, scrapes, /proc reads). A fixed part, plus per region.
const RESERVED_FDS: usize = 16;
const RESERVED_FDS_PER_REGION: usize = 4;

/// What connections may never take, for `regions` regions.
pub fn reserve(regions: usize) -> usize {
    RESERVED_FDS + RESERVED_FDS_PER_REGION * regions
}

/// The fewest descriptors `regions` regions need with `workers` relay workers each (0: no
/// relay): what the supervisor holds, its reserve, and room for one relayed connection per
/// region.
pub fn least(regions: usize, workers: usize) -> usize {
    let relay = if workers > 0 { regions * (workers * WORKER_FDS + 2) } else { 0 };
    BASE_FDS + regions * REGION_FDS + relay + reserve(regions)
}

/// The most relay workers per region, up to `wanted`, that `limit` descriptors allow; `None`
/// when not even one does.
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

/// Sets the budget: the descriptor limit, less what is open now, less `reserve`. Call once
/// all listeners are bound and before any connection is accepted.
pub fn init(reserve: usize) -> usize {
    let limit = usize::try_from(sys::nofile_limit()).unwrap_or(usize::MAX);
    let capacity = limit.saturating_sub(sys::open_fds()).saturating_sub(reserve);
    BUDGET.get_or_init(|| Budget { capacity, used: AtomicUsize::new(0) }).capacity
}

/// Descriptors held by one connection; given back when dropped.
pub struct Permit(usize);

impl Permit {
    /// Takes `n` descriptors from the budget, or none when that would eat into the reserve.
    pub fn take(n: usize) -> Option<Permit> {
        let Some(budget) = BUDGET.get() else { return Some(Permit(0)) };
        budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= budget.capacity).then_some(used + n)
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
/// for it (the accepted socket and whatever the owner opens for it).
pub fn accept_one(listener: RawFd, fds: usize) -> Accepted {
    let Some(permit) = Permit::take(fds) else {
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
