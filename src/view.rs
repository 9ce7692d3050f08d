//! What the HTTP endpoint shows, shared between threads.
//!
//! The supervisor thread is the only writer of the `View` (it republishes it after every
//! event); the HTTP threads read it, copying what they need under the lock for microseconds.
//! Counters that change faster than events (log lines, relayed connections and bytes) are
//! atomics owned by their writer (a region thread, a relay thread) and only read here.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::observe::RequestStats;
use crate::relay;

/// A region's state as SPEC's `/healthz` body names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionState {
    Starting,
    Ready,
    Unhealthy,
    Backoff,
    Stopped,
    Failed,
    /// On demand: no child until the next relayed connection (which starts one).
    Idle,
}

impl RegionState {
    /// Every state, in the order `supervisor_region_state` lists them.
    pub const ALL: [RegionState; 7] = [
        RegionState::Starting,
        RegionState::Ready,
        RegionState::Unhealthy,
        RegionState::Backoff,
        RegionState::Stopped,
        RegionState::Failed,
        RegionState::Idle,
    ];

    /// Whether `/healthz` counts the region as serving: ready, or idle (its next connection
    /// starts it and is held until it is ready).
    pub fn is_healthy(self) -> bool {
        matches!(self, RegionState::Ready | RegionState::Idle)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Starting => "starting",
            RegionState::Ready => "ready",
            RegionState::Unhealthy => "unhealthy",
            RegionState::Backoff => "backoff",
            RegionState::Stopped => "stopped",
            RegionState::Failed => "failed",
            RegionState::Idle => "idle",
        }
    }
}

pub struct View {
    pub regions: Vec<RegionView>,
    /// Stopping or given up: `/livez` answers 503.
    pub stopping: bool,
}

#[derive(Clone)]
pub struct RegionView {
    pub name: &'static str,
    /// Where clients reach the region.
    pub port: u16,
    /// Where its child listens (on 127.0.0.1); equal to `port` without the relay.
    pub child_port: u16,
    pub state: RegionState,
    pub pid: Option<i32>,
    pub restarts: u64,
    /// On demand: how often the region was stopped for want of connections.
    pub idle_stops: u64,
    pub last_exit: Option<String>,
    pub started_at: Option<SystemTime>,
    pub stats: Arc<LogStats>,
    /// The relay's counters; `None` with the relay off.
    pub relay: Option<Arc<relay::Stats>>,
    /// The requests the relay measured; `None` with the relay off.
    pub requests: Option<Arc<RequestStats>>,
}

pub type SharedView = Arc<RwLock<View>>;

/// A region's log counters: its region thread writes them, the endpoint reads them.
#[derive(Default)]
pub struct LogStats {
    pub lines: AtomicU64,
    /// Lines of an exited child dropped because stdout was blocked (see `region::Region::deliver`).
    pub lines_dropped: AtomicU64,
}
