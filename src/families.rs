//! Every metric family the supervisor writes itself, each described once: its name, type and
//! help. The endpoint (`server.rs`) and the request observer (`observe/stats.rs`) write their
//! samples under these heads, and the merge of the children's pages leaves out every name here
//! (a child cannot pass its own samples off as the supervisor's).
//!
//! Pure data, read by the HTTP threads.

use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

pub struct Family {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl Family {
    /// The family's `# HELP` and `# TYPE` lines, written once per page before its samples.
    pub fn head(&self, out: &mut String) {
        let (name, help, kind) = (self.name, self.help, self.kind.as_str());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
}

const fn family(name: &'static str, kind: Kind, help: &'static str) -> Family {
    Family { name, kind, help }
}

use Kind::{Counter, Gauge, Histogram};

// Per region, from the supervisor's own view.
pub const UP: Family = family("supervisor_region_up", Gauge, "1 when the region answers its health path");
pub const RESTARTS: Family = family(
    "supervisor_region_restarts_total",
    Counter,
    "Restarts of the region since the supervisor started",
);
pub const START_TIME: Family =
    family("supervisor_region_start_time_seconds", Gauge, "Unix time the region's current process started");
pub const RESIDENT_MEMORY: Family = family(
    "supervisor_region_resident_memory_bytes",
    Gauge,
    "Resident memory of the region's current process",
);
pub const CPU: Family =
    family("supervisor_region_cpu_seconds_total", Counter, "CPU time of the region's current process");
pub const LOG_LINES: Family =
    family("supervisor_region_log_lines_total", Counter, "Log lines of the region written to stdout");
pub const IDLE_STOPS: Family = family(
    "supervisor_region_idle_stops_total",
    Counter,
    "Times the region was stopped for having no relayed connection for SUPERVISOR_IDLE_STOP (on demand)",
);
pub const SCRAPE_SUCCESS: Family = family(
    "supervisor_region_scrape_success",
    Gauge,
    "1 when the region's own metrics were scraped and valid",
);
pub const STATE: Family = family(
    "supervisor_region_state",
    Gauge,
    "The region's state (1 for the current one), as /healthz names it",
);

// Per region, from the relay.
pub const RELAY_CONNECTIONS: Family =
    family("supervisor_region_relay_connections_total", Counter, "Connections accepted on the region's port");
pub const RELAY_ACTIVE: Family = family(
    "supervisor_region_relay_active_connections",
    Gauge,
    "Relayed connections connected to the child now",
);
pub const RELAY_HELD: Family = family(
    "supervisor_region_relay_held_connections",
    Gauge,
    "Connections waiting for the region to be ready",
);
pub const RELAY_RECEIVED: Family = family(
    "supervisor_region_relay_received_bytes_total",
    Counter,
    "Bytes relayed from clients to the child",
);
pub const RELAY_SENT: Family =
    family("supervisor_region_relay_sent_bytes_total", Counter, "Bytes relayed from the child to clients");
pub const RELAY_REJECTED: Family = family(
    "supervisor_region_relay_rejected_connections_total",
    Counter,
    "Connections closed without reaching a child, by reason",
);

// Per region, the requests the relay measured.
pub const REQUESTS: Family = family(
    "supervisor_region_requests_total",
    Counter,
    "Requests relayed to the region, by protocol, method, HTTP status (0: no response) and gRPC status",
);
pub const REQUEST_DURATION: Family = family(
    "supervisor_region_request_duration_seconds",
    Histogram,
    "Time from a request's first byte to its response's last, as seen by the relay",
);
pub const REQUESTS_IN_FLIGHT: Family = family(
    "supervisor_region_requests_in_flight",
    Gauge,
    "Requests relayed to the region whose response has not ended yet",
);
pub const PARSE_FAILURES: Family = family(
    "supervisor_region_request_parse_failures_total",
    Counter,
    "Relayed connections whose bytes stopped making sense as HTTP (relayed on, no longer counted)",
);

// The supervisor itself.
pub const BUILD_INFO: Family = family("supervisor_build_info", Gauge, "Version of region-supervisor");

/// Every family above: the names a child's page may not use.
pub const ALL: [&Family; 20] = [
    &UP,
    &RESTARTS,
    &START_TIME,
    &RESIDENT_MEMORY,
    &CPU,
    &LOG_LINES,
    &IDLE_STOPS,
    &SCRAPE_SUCCESS,
    &STATE,
    &RELAY_CONNECTIONS,
    &RELAY_ACTIVE,
    &RELAY_HELD,
    &RELAY_RECEIVED,
    &RELAY_SENT,
    &RELAY_REJECTED,
    &REQUESTS,
    &REQUEST_DURATION,
    &REQUESTS_IN_FLIGHT,
    &PARSE_FAILURES,
    &BUILD_INFO,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_once_and_counters_end_in_total() {
        let mut names: Vec<&str> = ALL.iter().map(|f| f.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a family listed twice");
        for f in ALL {
            assert!(f.name.starts_with("supervisor_"), "{}", f.name);
            assert_eq!(f.kind == Kind::Counter, f.name.ends_with("_total"), "{}", f.name);
        }
    }
}
