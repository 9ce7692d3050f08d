//! The relay's counters of one region: written by the relay workers only, read by the
//! HTTP server for `/metrics` and `/healthz`. Plain atomics, so neither side ever waits.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Why a connection was closed without reaching a child (SPEC's `reason` label values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    HoldTimeout,
    ConnectError,
    Stopping,
}

impl Reject {
    pub const ALL: [Reject; 3] = [Reject::HoldTimeout, Reject::ConnectError, Reject::Stopping];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::HoldTimeout => "hold_timeout",
            Reject::ConnectError => "connect_error",
            Reject::Stopping => "stopping",
        }
    }
}

#[derive(Default)]
pub struct Stats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connected to the child now.
    pub active: AtomicU64,
    /// Waiting for the region now.
    pub held: AtomicU64,
    rejected: [AtomicU64; 3],
    /// Bytes read from clients.
    pub received: AtomicU64,
    /// Bytes written to clients.
    pub sent: AtomicU64,
    /// The region's connections, all workers together, held or connected (each counted from
    /// its accept to its close): the region's cap, and what makes it idle (on demand).
    pub live: AtomicUsize,
    /// When a connection last closed, in nanoseconds since [`epoch`]; written before `live`
    /// drops, so a reader that sees `live` at 0 sees the time of the close that made it so.
    last_close: AtomicU64,
}

/// The instant relay times count from (the first use, early in the process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Stats {
    pub fn reject(&self, why: Reject) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Reject) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A connection ends: notes the time, then takes it off `live`.
    pub fn close(&self, now: Instant) {
        let at = now.saturating_duration_since(epoch()).as_nanos() as u64;
        self.last_close.store(at, Ordering::Release);
        self.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Connections open now, and how long the region has had none (zero while it has some;
    /// since `start` when it never had one).
    pub fn activity(&self, now: Instant, start: Instant) -> (usize, Duration) {
        let open = self.live.load(Ordering::Acquire);
        if open > 0 {
            return (open, Duration::ZERO);
        }
        let last = epoch() + Duration::from_nanos(self.last_close.load(Ordering::Acquire));
        (0, now.saturating_duration_since(last.max(start)))
    }
}
