//! The relay's counters of one region: written by that region's relay workers only, read by the
//! HTTP server for `/metrics` and `/healthz`. Plain atomics, so neither side ever waits.

use std::sync::atomic::{AtomicU64, Ordering};

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
}
