//! Chaos: the real binary over 12 stand-in regions while its children are killed, stopped and
//! continued at random and it gets bursts of SIGUSR1/SIGUSR2 during restarts; at the
//! end every count must add up and nothing may have leaked. And SIGTERM at random phases of
//! fresh supervisors' lives: exit 0, no child left, nothing started after the stop began.
//!
//! The chaos phase lasts 60 s (`CHAOS_SECS` changes it; `scripts/chaos.sh` runs 600 s on a
//! release build). Every random choice comes from one seeded generator: the seed is printed
//! and `CHAOS_SEED` replays the same sequence of choices (the timing of a replay still
//! differs, so it is close to the original run, not identical).
//!
//! Stops come in two kinds, and each is counted for what it must do. With a probe interval of
//! 500 ms and 3 failures allowed, a stopped ready child fails its first liveness probe at the
//! next interval, and probes fail 1 s apart (interval + timeout), so a restart needs the child
//! stopped for at least 2.5 s from the first failing probe on. *Short* stops (20-900 ms) can
//! fail at most two probes in a row and must never cause a restart. *Long* stops hold a ready
//! child until the supervisor reports the liveness failure (it must within a few seconds;
//! 12 s is a defect), then either continue it (it handles the pending SIGTERM and exits 0) or
//! leave it for the SIGKILL after the grace: each long stop is exactly one restart.
//!
//! So each region's restarts must equal its kills plus its long stops, plus the children a
//! forwarded signal killed: a child that gets SIGUSR1 or SIGUSR2 between its exec
//! and the installation of its handlers dies of the default action, and bursts during
//! restarts hit that window now and then. Those are counted from the supervisor's exit
//! events (`killed by SIGUSR1`, ...), the rest from what the test did. SIGHUP is not in the
//! bursts: it is a rolling restart, not a forwarded signal (tested on its own).
//!
//! The test never depends on which port a child listens on: it reads the supervisor's HTTP
//! endpoint (`/healthz` for states and pids, `/metrics` for the restart counters), its log
//! events and /proc. Children are signalled through pidfds, so a signal can never reach a
//! process that took over a reaped child's pid.

mod util;

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use util::*;

const DEFAULT_SECS: u64 = 60;
const READY: Duration = Duration::from_secs(20);
const EXIT: Duration = Duration::from_secs(15);

/// Probe settings the stop lengths are derived from (see the module docs).
const PROBE_INTERVAL: &str = "500ms";
const LIVENESS_FAILURES: &str = "3";
const SHORT_STOP_MS: (u64, u64) = (20, 900);
/// A long stop the supervisor has not turned into a restart by then is a missed failure.
const LONG_STOP_LIMIT: Duration = Duration::from_secs(12);
const MAX_LONG_STOPS_AT_ONCE: usize = 3;

/// The failure count resets after a region is ready this long; the test lets a region that
/// took `MAX_STREAK` failures in a row be ready that long (plus a margin) before the next, so
/// backoff stays short (50 ms doubled at most 3 times) instead of climbing to its 30 s cap.
const RESTART_RESET: Duration = Duration::from_secs(1);
const MAX_STREAK: u32 = 4;

/// Tolerated growth of the supervisor's resident memory over the whole run.
const RSS_GROWTH_LIMIT: u64 = 8 << 20;
/// A zombie child of the supervisor older than this was not reaped.
const ZOMBIE_LIMIT: Duration = Duration::from_secs(2);

const FORWARDED: [(i32, &str); 2] = [(libc::SIGUSR1, "SIGUSR1"), (libc::SIGUSR2, "SIGUSR2")];

/// The seeded generator of every choice (fastrand: the same sequence for the same seed), with
/// the draws the chaos makes.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0.u64(..n)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.u64(lo..=hi)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.0.f64() < p
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

/// `CHAOS_SEED` (decimal or 0x-hex), else one from the clock and pid; the same for every
/// test of this file in one run.
fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(new_seed)
}

fn new_seed() -> u64 {
    if let Ok(s) = std::env::var("CHAOS_SEED") {
        let parsed = match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        return parsed.unwrap_or_else(|_| panic!("CHAOS_SEED: {s:?} is not a number"));
    }
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    nanos ^ (u64::from(std::process::id()) << 32)
}

fn chaos_secs() -> u64 {
    match std::env::var("CHAOS_SECS") {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("CHAOS_SECS: {s:?} is not a whole number")),
        Err(_) => DEFAULT_SECS,
    }
}

fn sleep(d: Duration) {
    thread::sleep(d);
}

/// What the test reads from the supervisor's own events as they arrive.
#[derive(Default)]
struct Follower {
    next: usize,
    /// Per region: failures caused by failed liveness probes.
    liveness: HashMap<String, u64>,
    /// Per region: unexpected exits by SIGKILL.
    sigkill_exits: HashMap<String, u64>,
    /// Per region: unexpected exits by a forwarded signal (a child that got SIGHUP, SIGUSR1 or
    /// SIGUSR2 before its handlers were installed dies of the default action).
    forwarded_deaths: HashMap<String, u64>,
    /// Per signal name: "forwarded SIG... to n regions" events.
    forwarded: HashMap<String, u64>,
}

impl Follower {
    fn update(&mut self, sup: &Sup) {
        let new = sup.lines_from(self.next);
        self.next += new.len();
        for line in new {
            let Ok(e) = serde_json::from_str::<Value>(&line) else { continue };
            if e.get("time").is_none() || e.get("plugin").is_some() {
                continue;
            }
            let message = e["message"].as_str().unwrap_or_default();
            let region = e["region"].as_str().unwrap_or_default().to_string();
            let cause = e["cause"].as_str().unwrap_or_default();
            if message.starts_with("failure ") && cause.contains("consecutive health probes") {
                *self.liveness.entry(region.clone()).or_default() += 1;
            }
            if e["level"] == "warn" && e.get("status").is_some() {
                if message == "killed by SIGKILL" {
                    *self.sigkill_exits.entry(region.clone()).or_default() += 1;
                }
                if FORWARDED.iter().any(|(_, name)| message == format!("killed by {name}")) {
                    *self.forwarded_deaths.entry(region.clone()).or_default() += 1;
                }
            }
            if let Some(rest) = message.strip_prefix("forwarded ") {
                let name = rest.split(' ').next().unwrap_or_default().to_string();
                *self.forwarded.entry(name).or_default() += 1;
            }
        }
    }

    fn count(map: &HashMap<String, u64>, region: &str) -> u64 {
        map.get(region).copied().unwrap_or(0)
    }
}

/// The test's view of one region's current child.
#[derive(Default)]
struct Slot {
    pid: Option<i32>,
    /// None while the child is held by a long stop, or once it could not be opened.
    handle: Option<Pidfd>,
    killed: bool,
    short_stop_until: Option<Instant>,
    ready_since: Option<Instant>,
    /// Failures caused in a row without a reset of the supervisor's count (an estimate).
    streak: u32,
}

struct LongStop {
    region: usize,
    handle: Pidfd,
    since: Instant,
    liveness_before: u64,
}

#[derive(Default)]
struct Tally {
    kills: [u64; 12],
    long_stops: [u64; 12],
    short_stops: u64,
    continued_after_failure: u64,
    left_for_the_grace: u64,
    missed_long_stops: Vec<String>,
    bursts: u64,
    bursts_during_restarts: u64,
    sent: HashMap<&'static str, u64>,
    healthz_misses: u64,
    lingering_zombies: Vec<i32>,
}

struct Chaos {
    rng: Rng,
    slots: Vec<Slot>,
    long: Vec<LongStop>,
    tally: Tally,
    follower: Follower,
    zombie_since: HashMap<i32, Instant>,
}

impl Chaos {
    fn new(seed: u64) -> Chaos {
        Chaos {
            rng: Rng::new(seed),
            slots: (0..12).map(|_| Slot::default()).collect(),
            long: Vec::new(),
            tally: Tally::default(),
            follower: Follower::default(),
            zombie_since: HashMap::new(),
        }
    }

    /// Random actions until `length` has passed, then only the bookkeeping until every stop
    /// the test began has ended.
    fn run(&mut self, sup: &mut Sup, length: Duration) {
        let end = Instant::now() + length;
        loop {
            assert!(sup.running(), "the supervisor exited during the chaos\n{}", sup.tail(40));
            let now = Instant::now();
            let Some(regions) = self.observe(sup, now) else {
                sleep(Duration::from_millis(50));
                continue;
            };
            let chaos = now < end;
            if chaos && self.rng.chance(0.3) {
                self.act(sup, &regions, now);
            }
            let stops_pending =
                !self.long.is_empty() || self.slots.iter().any(|s| s.short_stop_until.is_some());
            if !chaos && !stops_pending {
                return;
            }
            sleep(self.rng.millis(20, 80));
        }
    }

    /// Reads the supervisor's state and events, follows its children, ends due stops.
    fn observe(&mut self, sup: &Sup, now: Instant) -> Option<Vec<RegionHealth>> {
        self.follower.update(sup);
        self.watch_zombies(sup.pid, now);
        let Some((_, regions)) = sup.health() else {
            self.tally.healthz_misses += 1;
            return None;
        };
        assert_eq!(regions.iter().map(|r| r.region.as_str()).collect::<Vec<_>>(), REGIONS);
        for (r, health) in regions.iter().enumerate() {
            self.refresh_slot(sup.pid, r, health, now);
        }
        self.end_long_stops(now);
        Some(regions)
    }

    fn refresh_slot(&mut self, parent: i32, r: usize, health: &RegionHealth, now: Instant) {
        let slot = &mut self.slots[r];
        if health.pid != slot.pid {
            // A new child, or none between two. Stops of the previous one ended with it.
            let streak = slot.streak;
            *slot = Slot { pid: health.pid, streak, ..Slot::default() };
            slot.handle = health.pid.and_then(|pid| Pidfd::child_of(parent, pid));
        }
        if let Some(until) = slot.short_stop_until {
            if now >= until {
                if let Some(h) = &slot.handle {
                    h.signal(libc::SIGCONT);
                }
                slot.short_stop_until = None;
            }
        }
        if health.state == "ready" {
            let since = *slot.ready_since.get_or_insert(now);
            if now.duration_since(since) > RESTART_RESET + Duration::from_millis(500) {
                slot.streak = 0;
            }
        } else {
            slot.ready_since = None;
        }
    }

    /// A long stop ends once the supervisor has reported its liveness failure.
    fn end_long_stops(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.long.len() {
            let stop = &self.long[i];
            let region = REGIONS[stop.region];
            let failed = Follower::count(&self.follower.liveness, region) > stop.liveness_before;
            if failed {
                if self.rng.chance(0.5) {
                    stop.handle.signal(libc::SIGCONT);
                    self.tally.continued_after_failure += 1;
                } else {
                    self.tally.left_for_the_grace += 1;
                }
            } else if now.duration_since(stop.since) > LONG_STOP_LIMIT {
                stop.handle.signal(libc::SIGCONT);
                self.tally.missed_long_stops.push(format!("{region} pid {}", stop.handle.pid));
            } else {
                i += 1;
                continue;
            }
            self.long.swap_remove(i);
        }
    }

    fn watch_zombies(&mut self, parent: i32, now: Instant) {
        let zombies: Vec<i32> =
            children_of(parent).into_iter().filter(|(_, s)| *s == 'Z').map(|(p, _)| p).collect();
        self.zombie_since.retain(|pid, _| zombies.contains(pid));
        for pid in zombies {
            let since = *self.zombie_since.entry(pid).or_insert(now);
            if now.duration_since(since) > ZOMBIE_LIMIT && !self.tally.lingering_zombies.contains(&pid) {
                self.tally.lingering_zombies.push(pid);
            }
        }
    }

    fn act(&mut self, sup: &Sup, regions: &[RegionHealth], now: Instant) {
        let r = self.rng.below(12) as usize;
        let state = regions[r].state.as_str();
        match self.rng.below(100) {
            0..=39 => self.kill(sup.pid, r, state),
            40..=69 => self.short_stop(r, state, now),
            70..=84 => self.long_stop(r, state, now),
            _ => self.burst(sup.pid, false),
        }
    }

    fn kill(&mut self, sup_pid: i32, r: usize, state: &str) {
        let slot = &mut self.slots[r];
        let alive = matches!(state, "starting" | "ready" | "unhealthy");
        if !alive || slot.killed || slot.streak >= MAX_STREAK {
            return;
        }
        let Some(handle) = &slot.handle else { return };
        if !handle.signal(libc::SIGKILL) {
            return;
        }
        slot.killed = true;
        slot.short_stop_until = None;
        slot.ready_since = None;
        slot.streak += 1;
        self.tally.kills[r] += 1;
        if self.rng.chance(0.5) {
            // Into the exit, the backoff or the respawn, whichever the delay lands in.
            sleep(self.rng.millis(0, 150));
            self.burst(sup_pid, true);
        }
    }

    fn short_stop(&mut self, r: usize, state: &str, now: Instant) {
        let length = self.rng.millis(SHORT_STOP_MS.0, SHORT_STOP_MS.1);
        let slot = &mut self.slots[r];
        // Only from "ready" (no probe failed since the last success) or "starting".
        if !matches!(state, "starting" | "ready") || slot.killed || slot.short_stop_until.is_some() {
            return;
        }
        let Some(handle) = &slot.handle else { return };
        if handle.signal(libc::SIGSTOP) {
            slot.short_stop_until = Some(now + length);
            self.tally.short_stops += 1;
        }
    }

    fn long_stop(&mut self, r: usize, state: &str, now: Instant) {
        let slot = &mut self.slots[r];
        let busy = self.long.len() >= MAX_LONG_STOPS_AT_ONCE || self.long.iter().any(|l| l.region == r);
        if state != "ready"
            || busy
            || slot.killed
            || slot.short_stop_until.is_some()
            || slot.streak >= MAX_STREAK
        {
            return;
        }
        let Some(handle) = slot.handle.take() else { return };
        if !handle.signal(libc::SIGSTOP) {
            return;
        }
        slot.streak += 1;
        slot.ready_since = None;
        self.tally.long_stops[r] += 1;
        let liveness_before = Follower::count(&self.follower.liveness, REGIONS[r]);
        self.long.push(LongStop { region: r, handle, since: now, liveness_before });
    }

    /// 3-40 signals of the three forwarded kinds, back to back or a millisecond or two apart.
    fn burst(&mut self, sup_pid: i32, during_restart: bool) {
        self.tally.bursts += 1;
        self.tally.bursts_during_restarts += u64::from(during_restart);
        for _ in 0..self.rng.range(3, 40) {
            let (sig, name) = FORWARDED[self.rng.below(FORWARDED.len() as u64) as usize];
            send_signal(sup_pid, sig);
            *self.tally.sent.entry(name).or_default() += 1;
            if self.rng.chance(0.5) {
                sleep(self.rng.millis(0, 2));
            }
        }
    }

    /// Restarts each region must show: one per kill, per long stop, and per child a forwarded
    /// signal killed before it had its handlers.
    fn expected(&self) -> Vec<u64> {
        (0..12)
            .map(|r| {
                self.tally.kills[r]
                    + self.tally.long_stops[r]
                    + Follower::count(&self.follower.forwarded_deaths, REGIONS[r])
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
struct Usage {
    fds: usize,
    threads: usize,
    rss: u64,
    /// Threads by name, for the report when the counts differ.
    names: std::collections::BTreeMap<String, usize>,
}

/// tiny_http runs each connection on a thread of its pool. Idle pool threads end after 5 s
/// while more than 4 exist, and several idle ones can end together, taking the pool below 4
/// (to none); once at most 4 exist, idle ones stay. So the pool's size at rest depends on
/// how requests came, not on leaks. The wait has a wide margin over the 5 s: on a loaded
/// machine a thread due to end may be late, and would then be counted as one too many.
const HTTP_POOL_MIN: usize = 4;
const HTTP_IDLE_THREAD_LIFE: Duration = Duration::from_millis(7000);

/// Brings the HTTP server's pool to its resting size: quiet until spare threads have ended,
/// then `HTTP_POOL_MIN` connections held at once (one pool thread each, a new one where none
/// is idle) and closed, which leaves exactly that many idle threads.
fn rest_http_pool(port: u16) {
    sleep(HTTP_IDLE_THREAD_LIFE);
    let held: Vec<TcpStream> = (0..HTTP_POOL_MIN)
        .filter_map(|_| {
            let s = TcpStream::connect(("127.0.0.1", port)).ok();
            // Let the pool take each one up before the next arrives.
            sleep(Duration::from_millis(150));
            s
        })
        .collect();
    assert_eq!(held.len(), HTTP_POOL_MIN, "the HTTP endpoint refused a connection");
    sleep(Duration::from_millis(100));
    drop(held);
    sleep(Duration::from_millis(300));
}

/// The supervisor's descriptors and threads at rest (see `rest_http_pool`). Probe and scrape
/// threads and their sockets come and go within milliseconds, so the smallest of 20
/// readings over half a second is the count.
fn usage_at_rest(sup: &Sup) -> Usage {
    rest_http_pool(sup.ports.metrics());
    let mut usage = Usage { fds: usize::MAX, threads: usize::MAX, rss: 0, names: Default::default() };
    for _ in 0..20 {
        usage.fds = usage.fds.min(fd_count(sup.pid));
        let names = thread_names(sup.pid);
        let threads = names.values().sum();
        if threads < usage.threads {
            usage.threads = threads;
            usage.names = names;
        }
        sleep(Duration::from_millis(25));
    }
    usage.rss = rss_bytes(sup.pid).expect("the supervisor's VmRSS");
    usage
}

/// `supervisor_region_restarts_total` per region, from `/metrics`.
fn restarts_from_metrics(sup: &Sup) -> HashMap<String, u64> {
    let (code, body) = sup.get("/metrics").expect("/metrics answers");
    assert_eq!(code, 200);
    body.lines()
        .filter_map(|l| l.strip_prefix("supervisor_region_restarts_total{region=\""))
        .filter_map(|rest| {
            let (region, value) = rest.split_once("\"} ")?;
            Some((region.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Waits until every region is ready with exactly the restarts the test caused.
fn wait_converged(sup: &Sup, chaos: &mut Chaos, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        chaos.follower.update(sup);
        let expected = chaos.expected();
        let last = match sup.health() {
            Some((200, regions)) if regions.iter().map(|r| r.restarts).eq(expected.iter().copied()) => {
                return Ok(());
            }
            Some((code, regions)) => format!(
                "/healthz {code}: {:?}, expected restarts {expected:?}",
                regions.iter().map(|r| (r.region.as_str(), r.state.as_str(), r.restarts)).collect::<Vec<_>>()
            ),
            None => "/healthz did not answer".into(),
        };
        if Instant::now() > deadline {
            return Err(last);
        }
        sleep(Duration::from_millis(100));
    }
}

/// After the chaos, a calm SIGUSR1 and SIGUSR2 each reach every current child once.
fn forwarding_still_reaches_every_child(sup: &Sup, from: usize) {
    let mut mark = from;
    for (sig, name) in FORWARDED {
        sup.signal(sig);
        sup.wait_for(&format!("{name} at every child"), EXIT, |s| {
            let got: Vec<String> = s
                .lines_from(mark)
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["signal"] == name)
                .filter_map(|v| v["region"].as_str().map(str::to_string))
                .collect();
            REGIONS.iter().all(|r| got.iter().any(|g| g == r))
        });
        mark += sup.lines_from(mark).len();
    }
}

#[test]
fn chaos_kills_stops_and_signal_bursts_add_up_and_leak_nothing() {
    let (seed, secs) = (seed(), chaos_secs());
    println!("chaos: seed {seed} (replay: CHAOS_SEED={seed}), {secs} s of chaos");
    let t0 = Instant::now();
    let reset = format!("{}ms", RESTART_RESET.as_millis());
    let mut sup = Sup::start(&[
        ("SUPERVISOR_MAX_RESTARTS", "1000000000"),
        ("SUPERVISOR_RESTART_BACKOFF", "50ms"),
        ("SUPERVISOR_RESTART_RESET", &reset),
        ("SUPERVISOR_PROBE_INTERVAL", PROBE_INTERVAL),
        ("SUPERVISOR_LIVENESS_FAILURES", LIVENESS_FAILURES),
        ("SUPERVISOR_STARTUP_TIMEOUT", "10s"),
        ("SUPERVISOR_SHUTDOWN_GRACE", "1s"),
    ]);
    sup.wait_ready(READY);
    let before = usage_at_rest(&sup);

    let mut chaos = Chaos::new(seed);
    let c0 = Instant::now();
    chaos.run(&mut sup, Duration::from_secs(secs));
    let chaos_took = c0.elapsed();
    let converged = wait_converged(&sup, &mut chaos, Duration::from_secs(30));
    let after = usage_at_rest(&sup);
    // Nothing may restart late: the same counts after those seconds of rest.
    let settled = converged.and_then(|()| wait_converged(&sup, &mut chaos, Duration::ZERO));
    let end = End::read(&sup, &chaos);
    println!("{}", report(&chaos, &end, &before, &after));
    println!("chaos: chaos phase (with its last stops) {chaos_took:.1?}, whole test {:.1?}", t0.elapsed());

    let context = format!("seed {seed}");
    settled.unwrap_or_else(|e| panic!("regions did not settle on the expected restarts: {e} ({context})"));
    check_counts(&chaos, &end, secs, &context);
    check_nothing_leaked(&chaos, &end, &before, &after, &context);
    forwarding_still_reaches_every_child(&sup, chaos.follower.next);
    let pids = sup.all_child_pids();
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0), "{}", sup.tail(20));
    assert!(wait_gone(&pids, Duration::from_secs(3)).is_empty(), "a stand-in outlived the supervisor");
    let stopped = sup.events().into_iter().find(|e| e["message"] == "stopped").expect("a final event");
    assert_eq!(stopped["events_dropped"], 0, "the counts above need every event: {stopped}");
}

/// What the supervisor shows once the chaos is over and every region is ready again.
struct End {
    expected: Vec<u64>,
    metrics: HashMap<String, u64>,
    regions: Vec<RegionHealth>,
    children: Vec<(i32, char)>,
}

impl End {
    fn read(sup: &Sup, chaos: &Chaos) -> End {
        End {
            expected: chaos.expected(),
            metrics: restarts_from_metrics(sup),
            regions: sup.health().expect("/healthz answers").1,
            children: children_of(sup.pid),
        }
    }
}

fn report(chaos: &Chaos, end: &End, before: &Usage, after: &Usage) -> String {
    let (t, f) = (&chaos.tally, &chaos.follower);
    let sum = |m: &HashMap<String, u64>| m.values().sum::<u64>();
    let by_kind = |m: &dyn Fn(&str) -> u64| FORWARDED.map(|(_, n)| format!("{n} {}", m(n))).join(", ");
    format!(
        "chaos: {} kills, {} long stops ({} liveness failures: {} continued, {} left to the grace \
         kill), {} short stops, {} bursts ({} during restarts); sent {}; forwarded {}; {} children \
         killed by a forwarded signal before their handlers\n\
         chaos: restarts {} (expected {}); fds {} -> {}, threads {} -> {}, RSS {} -> {} KiB",
        t.kills.iter().sum::<u64>(),
        t.long_stops.iter().sum::<u64>(),
        sum(&f.liveness),
        t.continued_after_failure,
        t.left_for_the_grace,
        t.short_stops,
        t.bursts,
        t.bursts_during_restarts,
        by_kind(&|n| t.sent.get(n).copied().unwrap_or(0)),
        by_kind(&|n| f.forwarded.get(n).copied().unwrap_or(0)),
        sum(&f.forwarded_deaths),
        end.metrics.values().sum::<u64>(),
        end.expected.iter().sum::<u64>(),
        before.fds,
        after.fds,
        before.threads,
        after.threads,
        before.rss / 1024,
        after.rss / 1024,
    )
}

/// Restarts per region are what the test caused, and each cause shows in the events as such.
fn check_counts(chaos: &Chaos, end: &End, secs: u64, context: &str) {
    let (t, f) = (&chaos.tally, &chaos.follower);
    let kills: u64 = t.kills.iter().sum();
    assert!(kills > 0 && t.short_stops > 0 && t.bursts > 0, "nothing happened ({context})");
    assert!(t.long_stops.iter().sum::<u64>() > 0 || secs < 30, "no long stop in {secs} s ({context})");
    assert_eq!(t.healthz_misses, 0, "/healthz went unanswered during the chaos ({context})");
    assert!(t.missed_long_stops.is_empty(), "stopped children never restarted: {:?}", t.missed_long_stops);
    for (r, region) in REGIONS.iter().enumerate() {
        let restarts = end.metrics.get(*region).copied();
        assert_eq!(restarts, Some(end.expected[r]), "{region}: /metrics restarts ({context})");
        assert_eq!(
            Follower::count(&f.liveness, region),
            t.long_stops[r],
            "{region}: liveness failures are the long stops, no more (short stops never restart)"
        );
        assert_eq!(Follower::count(&f.sigkill_exits, region), t.kills[r], "{region}: SIGKILL exits");
    }
    for (_, name) in FORWARDED {
        let sent = t.sent.get(name).copied().unwrap_or(0);
        let got = f.forwarded.get(name).copied().unwrap_or(0);
        // Deliveries of one signal coalesce while pending, so a burst may forward fewer.
        assert!(sent == 0 || (1..=sent).contains(&got), "{name}: sent {sent}, forwarded {got} times");
    }
}

/// No zombie, no stray or stopped child, descriptors and threads at rest as before, RSS
/// growth bounded.
fn check_nothing_leaked(chaos: &Chaos, end: &End, before: &Usage, after: &Usage, context: &str) {
    let zombies = &chaos.tally.lingering_zombies;
    assert!(zombies.is_empty(), "zombies unreaped for {ZOMBIE_LIMIT:?}: {zombies:?} ({context})");
    let mut running: Vec<i32> =
        end.regions.iter().map(|r| r.pid.expect("a ready region has a pid")).collect();
    let mut kids: Vec<i32> = end.children.iter().map(|(p, _)| *p).collect();
    running.sort_unstable();
    kids.sort_unstable();
    assert_eq!(kids, running, "the supervisor's children are exactly its 12 current children");
    let odd: Vec<_> = end.children.iter().filter(|(_, s)| matches!(s, 'Z' | 'T')).collect();
    assert!(odd.is_empty(), "zombie or stopped child: {odd:?} ({context})");
    assert_eq!(after.fds, before.fds, "descriptors at rest before and after ({context})");
    assert_eq!(
        after.threads, before.threads,
        "threads at rest before and after ({context}): {:?} -> {:?}",
        before.names, after.names
    );
    let growth = after.rss.saturating_sub(before.rss);
    assert!(growth < RSS_GROWTH_LIMIT, "RSS grew by {} KiB ({context})", growth / 1024);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// As soon as the handlers are in place (during the checks, or as the children start).
    Start,
    /// While one region waits out its backoff after a kill.
    Backoff,
    /// Right after some children were killed: their exits, backoffs and respawns.
    Restart,
    /// Every region ready.
    Ready,
}

/// Collects the supervisor's children from /proc until stopped: pid -> start time.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<HashMap<i32, u64>>,
}

impl Watcher {
    fn start(parent: i32) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut seen = HashMap::new();
            while !flag.load(Ordering::Relaxed) {
                for (pid, _) in children_of(parent) {
                    if let Some(stat) = proc_stat(pid) {
                        seen.entry(pid).or_insert(stat.start_time);
                    }
                }
                sleep(Duration::from_millis(10));
            }
            seen
        });
        Watcher { stop, thread }
    }

    fn finish(self) -> HashMap<i32, u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// SIGKILLs the current child of `region`; its pid, if there was one to kill.
fn kill_child(sup: &Sup, region: usize) -> Option<i32> {
    let (_, regions) = sup.health()?;
    let pid = regions[region].pid?;
    let handle = Pidfd::child_of(sup.pid, pid)?;
    handle.signal(libc::SIGKILL).then_some(pid)
}

/// One fresh supervisor stopped by SIGTERM in `phase`; returns the starts that were under way
/// when the stop began (logged after it, and allowed: see `check_no_start_after_stop`).
fn sigterm_round(round: usize, phase: Phase, rng: &mut Rng) -> usize {
    let backoff = match phase {
        Phase::Backoff => "2s",
        Phase::Restart => ["0", "20ms", "50ms"][rng.below(3) as usize],
        _ => "100ms",
    };
    let mut sup =
        Sup::start(&[("SUPERVISOR_MAX_RESTARTS", "1000000000"), ("SUPERVISOR_RESTART_BACKOFF", backoff)]);
    let watcher = Watcher::start(sup.pid);
    let what = format!("round {round} ({phase:?}, backoff {backoff})");
    let mut killed = Vec::new();
    match phase {
        Phase::Start => {
            // Before its handlers exist, a process that is not PID 1 dies of SIGTERM's default
            // action: no program can close that window, so "at start" begins once /proc shows
            // the handler.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !catches(sup.pid, libc::SIGTERM) {
                assert!(Instant::now() < deadline && sup.running(), "{what}: no SIGTERM handler");
                sleep(Duration::from_micros(200));
            }
            // Half the time at once (most often still during the checks, before any child).
            if rng.chance(0.5) {
                sleep(rng.millis(0, 25));
            }
        }
        Phase::Backoff => {
            sup.wait_ready(READY);
            let r = rng.below(12) as usize;
            kill_child(&sup, r).unwrap_or_else(|| panic!("{what}: no child of {} to kill", REGIONS[r]));
            sup.wait_for(&format!("{} in backoff", REGIONS[r]), EXIT, |s| {
                s.health().is_some_and(|(_, regions)| regions[r].state == "backoff")
            });
            sleep(rng.millis(0, 500));
        }
        Phase::Restart => {
            sup.wait_ready(READY);
            for _ in 0..rng.range(1, 3) {
                let r = rng.below(12) as usize;
                if kill_child(&sup, r).is_some() {
                    killed.push(REGIONS[r]);
                }
            }
            sleep(rng.millis(0, 60));
        }
        Phase::Ready => {
            sup.wait_ready(READY);
            sleep(rng.millis(0, 200));
        }
    }
    let t = Instant::now();
    sup.signal(libc::SIGTERM);
    while sup.running() && t.elapsed() < EXIT {
        sleep(Duration::from_millis(1));
    }
    let took = t.elapsed();
    let status = sup.wait_exit(EXIT);
    let seen = watcher.finish();
    assert_eq!(exit_code(status), Some(0), "{what}\n{}", sup.tail(30));
    assert!(took < Duration::from_secs(5), "{what}: the stop took {took:?}");

    let events = sup.events();
    let (stop, under_way) = check_no_start_after_stop(&events, phase, &what);
    // Where the stop caught each killed region: its last event before the stop.
    let caught: Vec<String> = killed
        .iter()
        .map(|region| {
            let last = events[..stop].iter().rfind(|e| e["region"] == *region);
            format!("{region}: {}", last.map_or("-", |e| e["message"].as_str().unwrap_or_default()))
        })
        .collect();
    // Every child seen, in the log or in /proc, is gone (a pid with another start time is
    // someone else's process by now).
    let mut pids: HashMap<i32, Option<u64>> = seen.into_iter().map(|(p, t)| (p, Some(t))).collect();
    for pid in sup.all_child_pids() {
        pids.entry(pid).or_insert(None);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let left = loop {
        let left: Vec<i32> = pids
            .iter()
            .filter(|(&pid, &start)| {
                proc_stat(pid).is_some_and(|s| s.state != 'Z' && start.is_none_or(|t| t == s.start_time))
            })
            .map(|(&pid, _)| pid)
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        sleep(Duration::from_millis(20));
    };
    assert!(left.is_empty(), "{what}: stand-ins left alive: {left:?}");
    // However early the stop came, it ends with "stopped".
    let last = events
        .iter()
        .rfind(|e| e["message"] == "stopped")
        .unwrap_or_else(|| panic!("{what}: no final event"));
    assert_eq!(last["exit_code"], 0, "{what}: {last}");
    println!(
        "sigterm: {what}: {} children, {under_way} start(s) under way at the stop, exit 0 in {took:.0?}{}",
        pids.len(),
        if caught.is_empty() { String::new() } else { format!("; stop caught {}", caught.join(", ")) }
    );
    under_way
}

/// No child is started once the stop began. A spawn already asked for when SIGTERM arrived
/// reports in after the stop's first event and is stopped at once; it is the region's latest
/// scheduled start (its `restarts` equals the region's restarts scheduled before the stop)
/// and there is at most one per region. In the backoff and ready phases no spawn is under
/// way, so there is none at all. Returns the index of the stop's first event and how many
/// starts were under way.
fn check_no_start_after_stop(events: &[Value], phase: Phase, what: &str) -> (usize, usize) {
    let message = |e: &Value| e["message"].as_str().unwrap_or_default().to_string();
    let stop = events
        .iter()
        .position(|e| message(e).starts_with("stopping all regions"))
        .unwrap_or_else(|| panic!("{what}: no event marks the stop"));
    let (before, after) = events.split_at(stop);
    let mut late: Vec<&Value> = after.iter().filter(|e| message(e) == "started").collect();
    let strict = matches!(phase, Phase::Backoff | Phase::Ready);
    assert!(!strict || late.is_empty(), "{what}: started after the stop: {late:?}");
    for e in &late {
        let region = e["region"].as_str().unwrap();
        let of_region = |m: &str| -> Vec<&Value> {
            before.iter().filter(|b| b["region"] == region && message(b).starts_with(m)).collect()
        };
        let scheduled = of_region("restarting in").len() as u64;
        let attempt = e["restarts"].as_u64().unwrap();
        assert_eq!(attempt, scheduled, "{what}: {region} started a restart scheduled after the stop: {e}");
        assert!(
            of_region("started").iter().all(|b| b["restarts"].as_u64() != Some(attempt)),
            "{what}: {region} started attempt {attempt} twice: {e}"
        );
    }
    let n = late.len();
    late.sort_by_key(|e| e["region"].as_str().unwrap_or_default().to_string());
    late.dedup_by_key(|e| e["region"].as_str().unwrap_or_default().to_string());
    assert_eq!(late.len(), n, "{what}: a region started more than once after the stop");
    (stop, n)
}

#[test]
fn sigterm_at_random_phases_exits_0_and_leaves_nothing() {
    let seed = seed();
    println!("sigterm: seed {seed} (replay: CHAOS_SEED={seed})");
    // Distinct from the chaos test's sequence, replayed by the same seed.
    let mut rng = Rng::new(seed ^ 0x5349_4754_4552_4d00);
    let per_phase = (chaos_secs() / 10).max(6) as usize;
    let mut rounds: Vec<Phase> = [Phase::Start, Phase::Backoff, Phase::Restart, Phase::Ready]
        .iter()
        .flat_map(|&p| std::iter::repeat_n(p, per_phase))
        .collect();
    for i in (1..rounds.len()).rev() {
        rounds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let t0 = Instant::now();
    let under_way: usize =
        rounds.iter().enumerate().map(|(i, &phase)| sigterm_round(i, phase, &mut rng)).sum();
    println!(
        "sigterm: {} rounds in {:.1?}, {under_way} start(s) under way at a stop",
        rounds.len(),
        t0.elapsed()
    );
}
