//! The supervisor's HTTP answers on `SUPERVISOR_METRICS_ADDR`, given by tiny_http behind the
//! front (`front/`).
//!
//! Clients never reach tiny_http directly: the front owns the public socket, bounds every
//! request (connections, head size, time) and forwards each complete head over a connection of
//! its own to tiny_http, which listens on a Unix socket in the abstract namespace under a random
//! name (nothing is written to the filesystem; tiny_http reports no remote address for such
//! connections, and nothing here asks for one). So tiny_http sees one well-formed request per
//! connection, from at most `front::FORWARDERS` connections at once (local processes that
//! connect to its socket themselves aside, see `front/`), and `WORKERS` threads (one per
//! forwarder, so a forwarded request never waits for a worker) answer them from the `View` the
//! supervisor thread publishes. They never talk to the supervisor thread and never block it.
//! `/metrics` scrapes every running child in parallel at request time (each bounded by
//! `SUPERVISOR_SCRAPE_TIMEOUT` and `SCRAPE_BODY_LIMIT`). `stop` ends the front, then tiny_http's
//! accept loop, then the workers.

use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::mem::ManuallyDrop;
use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::accept;
use crate::config::Config;
use crate::exposition;
use crate::families::{self, Family};
use crate::front;
use crate::http_client;
use crate::observe::{self, RequestStats};
use crate::output;
use crate::probe::Probe;
use crate::relay::{self, Reject};
use crate::sys;
use crate::view::{RegionState, RegionView, SharedView};

/// Threads answering requests: as many as requests can be forwarded at once.
const WORKERS: usize = front::FORWARDERS;
/// A child's metrics page is read up to this size; a larger one counts as a failed scrape.
const SCRAPE_BODY_LIMIT: usize = 16 << 20;

pub struct Handle {
    front: front::Handle,
    endpoint: Arc<Endpoint>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    pub fn stop(self) {
        self.front.stop();
        self.endpoint.stopping.store(true, Ordering::SeqCst);
        // tiny_http's accept loop wakes with an error and ends.
        sys::shutdown_listener(&self.endpoint.listener);
        let server = self.endpoint.server();
        for _ in &self.threads {
            server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Where and how to scrape the children.
struct Scrape {
    path: String,
    timeout: Duration,
    /// Child port of each region, in view order.
    ports: Vec<u16>,
    /// Whether the children speak HTTP/1.1 at all.
    http: bool,
}

/// A tiny_http server that is never dropped: its `Drop` connects to its own address to wake
/// its accept loop and unwraps that address as a path, which an abstract socket has not (it
/// would panic, and a panic aborts PID 1). `stop` ends the accept loop instead.
type Tiny = Arc<ManuallyDrop<Server>>;

/// The tiny_http server in use, and what it takes to replace it.
///
/// tiny_http's accept loop ends for good on the first accept error (EMFILE, should the
/// supervisor's own reserve of descriptors ever run out), and closes its copy of the socket.
/// So we keep our own copy (the socket stays bound; the forwarders' connections wait in its
/// backlog) and start a new server on it when that happens.
struct Endpoint {
    listener: UnixListener,
    current: RwLock<Tiny>,
    stopping: AtomicBool,
}

impl Endpoint {
    fn server(&self) -> Tiny {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `old` reported `why` from `recv`: unless it was already replaced (or we were woken on
    /// purpose), start a new server on the same socket, retrying while that fails (it needs a
    /// free descriptor), and wake the workers still waiting on `old`.
    fn replace(&self, old: &Tiny, why: std::io::Error) {
        let mut pause = Duration::from_millis(100);
        let mut reported = false;
        while !self.stopping.load(Ordering::SeqCst) && Arc::ptr_eq(&self.server(), old) {
            // Never a hot loop, whatever keeps failing.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
            let fresh = self
                .listener
                .try_clone()
                .map_err(|e| e.to_string())
                .and_then(|l| Server::from_listener(l, None).map_err(|e| e.to_string()));
            match fresh {
                Ok(server) => {
                    let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
                    if Arc::ptr_eq(&current, old) {
                        *current = Arc::new(ManuallyDrop::new(server));
                        drop(current);
                        output::warn(
                            None,
                            &format!("http: tiny_http stopped accepting ({why}); listening again"),
                            &[],
                        );
                        for _ in 0..WORKERS {
                            old.unblock();
                        }
                    }
                    return;
                }
                Err(e) if !reported => {
                    reported = true;
                    output::error(
                        None,
                        &format!("http: tiny_http stopped accepting ({why}); cannot listen again yet: {e}"),
                        &[],
                    );
                }
                Err(_) => {}
            }
        }
    }
}

/// tiny_http's private socket: abstract (the root filesystem may be read-only, and nothing is
/// left behind), named with the pid and a random part so two supervisors in one network
/// namespace never meet.
fn backend_listener() -> std::io::Result<(UnixListener, UnixAddr)> {
    let mut last = None;
    for attempt in 0u32..8 {
        let tag = RandomState::new().hash_one((sys::getpid(), attempt));
        let name = format!("region-supervisor-http-{}-{tag:016x}", sys::getpid());
        let addr = UnixAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&addr) {
            Ok(l) => return Ok((l, addr)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free abstract socket name")))
}

/// Starts the endpoint's threads; an error names the step that failed (the supervisor then
/// exits 1, as when a region or relay thread cannot start).
pub fn start(listener: TcpListener, view: SharedView, config: &Config) -> Result<Handle, String> {
    let (backend, address) =
        backend_listener().map_err(|e| format!("cannot listen on tiny_http's internal socket: {e}"))?;
    let own = backend.try_clone().map_err(|e| format!("cannot duplicate tiny_http's socket: {e}"))?;
    let server =
        Server::from_listener(backend, None).map_err(|e| format!("tiny_http refused its socket: {e}"))?;
    let endpoint = Arc::new(Endpoint {
        listener: own,
        current: RwLock::new(Arc::new(ManuallyDrop::new(server))),
        stopping: AtomicBool::new(false),
    });
    let scrape = Arc::new(Scrape {
        path: config.child_metrics_path.clone(),
        timeout: config.scrape_timeout,
        ports: config.regions.iter().map(|r| r.child_port).collect(),
        // Children probed over HTTP/2 speak no HTTP/1.1 (gRPC-only plugins): not scraped.
        http: config.probe != Probe::H2,
    });
    let threads = (0..WORKERS)
        .map(|_| {
            let (endpoint, view, scrape) = (endpoint.clone(), view.clone(), scrape.clone());
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || worker(&endpoint, &view, &scrape))
                .map_err(|e| format!("cannot start an http thread: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let setup = front::Setup {
        listener,
        backend: address,
        answer_timeout: config.scrape_timeout + front::ANSWER_TIME,
    };
    let front = front::start(setup).map_err(|e| format!("cannot start the http front: {e}"))?;
    Ok(Handle { front, endpoint, threads })
}

fn worker(endpoint: &Endpoint, view: &SharedView, scrape: &Scrape) {
    while !endpoint.stopping.load(Ordering::SeqCst) {
        let server = endpoint.server();
        match server.recv() {
            Ok(request) => answer(request, view, scrape),
            Err(why) => endpoint.replace(&server, why),
        }
    }
}

/// What a request needs of the view, copied so the lock is held for microseconds only.
struct Snapshot {
    regions: Vec<RegionView>,
    stopping: bool,
}

fn snapshot(view: &SharedView) -> Snapshot {
    let view = view.read().unwrap_or_else(|p| p.into_inner());
    Snapshot { regions: view.regions.clone(), stopping: view.stopping }
}

fn answer(request: Request, view: &SharedView, scrape: &Scrape) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let known = matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz" | "/livez");
    let response = if !known {
        text(404, "not found\n")
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        text(405, "method not allowed\n").with_header(header("Allow", "GET, HEAD"))
    } else {
        let snap = snapshot(view);
        match path.as_str() {
            "/metrics" => Response::from_string(metrics(&snap, scrape))
                .with_header(header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")),
            "/livez" if snap.stopping => text(503, "stopping\n"),
            "/livez" => text(200, "ok\n"),
            _ => health(&snap),
        }
    };
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

fn text(status: u16, body: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

/// 200 when every region is ready (or idle, on demand), else 503; the body has each region's
/// state.
fn health(snap: &Snapshot) -> Response<std::io::Cursor<Vec<u8>>> {
    let all_ready = snap.regions.iter().all(|r| r.state.is_healthy());
    let regions: Vec<_> = snap
        .regions
        .iter()
        .map(|r| {
            json!({
                "region": r.name,
                "state": r.state.as_str(),
                "pid": r.pid,
                "port": r.port,
                "child_port": r.child_port,
                "connections": r.relay.as_ref().map(|s| relay::Stats::get(&s.active)),
                "held_connections": r.relay.as_ref().map(|s| relay::Stats::get(&s.held)),
                "restarts": r.restarts,
                "last_exit": r.last_exit,
            })
        })
        .collect();
    let body = json!({"status": if all_ready { "ready" } else { "not ready" }, "regions": regions});
    Response::from_string(body.to_string() + "\n")
        .with_status_code(if all_ready { 200 } else { 503 })
        .with_header(header("Content-Type", "application/json"))
}

/// Scrapes every running child at once; `None` for a region not running or not scraped.
fn scrape_all(snap: &Snapshot, scrape: &Scrape) -> Vec<Option<Vec<exposition::Family>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = snap
            .regions
            .iter()
            .zip(&scrape.ports)
            .map(|(r, &port)| {
                let running = r.pid.is_some() && scrape.http;
                s.spawn(move || {
                    if !running {
                        return None;
                    }
                    let _fd = accept::borrow(1);
                    let response =
                        http_client::get(port, &scrape.path, scrape.timeout, SCRAPE_BODY_LIMIT).ok()?;
                    if response.status != 200 {
                        return None;
                    }
                    let page = String::from_utf8(response.body).ok()?;
                    exposition::parse_and_relabel(&page, r.name).ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).collect()
    })
}

/// One of the supervisor's own families: a sample per region (or none, where `None`).
struct OwnFamily {
    family: &'static Family,
    value: fn(&Sample) -> Option<String>,
}

/// What the own families are computed from, per region.
struct Sample<'a> {
    region: &'a RegionView,
    usage: Option<(u64, f64)>,
    scraped: bool,
}

const OWN_FAMILIES: [OwnFamily; 8] = [
    OwnFamily {
        family: &families::UP,
        value: |s| Some(u8::from(s.region.state == RegionState::Ready).to_string()),
    },
    OwnFamily { family: &families::RESTARTS, value: |s| Some(s.region.restarts.to_string()) },
    OwnFamily {
        family: &families::START_TIME,
        value: |s| {
            let t = s.region.started_at?.duration_since(UNIX_EPOCH).ok()?;
            Some(format!("{:.3}", t.as_secs_f64()))
        },
    },
    OwnFamily { family: &families::RESIDENT_MEMORY, value: |s| s.usage.map(|(rss, _)| rss.to_string()) },
    OwnFamily { family: &families::CPU, value: |s| s.usage.map(|(_, cpu)| format!("{cpu:.2}")) },
    OwnFamily {
        family: &families::LOG_LINES,
        value: |s| Some(s.region.stats.lines.load(Ordering::Relaxed).to_string()),
    },
    OwnFamily { family: &families::IDLE_STOPS, value: |s| Some(s.region.idle_stops.to_string()) },
    OwnFamily { family: &families::SCRAPE_SUCCESS, value: |s| Some(u8::from(s.scraped).to_string()) },
];

/// A relay family and how its sample is read from a region's relay counters.
type RelayFamily = (&'static Family, fn(&relay::Stats) -> u64);

/// The relay's families with one sample per region.
const RELAY: [RelayFamily; 5] = [
    (&families::RELAY_CONNECTIONS, |s| relay::Stats::get(&s.accepted)),
    (&families::RELAY_ACTIVE, |s| relay::Stats::get(&s.active)),
    (&families::RELAY_HELD, |s| relay::Stats::get(&s.held)),
    (&families::RELAY_RECEIVED, |s| relay::Stats::get(&s.received)),
    (&families::RELAY_SENT, |s| relay::Stats::get(&s.sent)),
];

/// `supervisor_region_state`: 1 for each region's current state, 0 for the others.
fn state_metrics(regions: &[RegionView], out: &mut String) {
    let name = families::STATE.name;
    families::STATE.head(out);
    for r in regions {
        for state in RegionState::ALL {
            let _ = writeln!(
                out,
                "{name}{{region=\"{}\",state=\"{}\"}} {}",
                r.name,
                state.as_str(),
                u8::from(r.state == state)
            );
        }
    }
}

/// The relay's families; nothing with the relay off.
fn relay_metrics(regions: &[RegionView], out: &mut String) {
    let relayed: Vec<(&str, &relay::Stats)> =
        regions.iter().filter_map(|r| r.relay.as_deref().map(|s| (r.name, s))).collect();
    if relayed.is_empty() {
        return;
    }
    for (family, value) in RELAY {
        family.head(out);
        for (region, stats) in &relayed {
            let _ = writeln!(out, "{}{{region=\"{region}\"}} {}", family.name, value(stats));
        }
    }
    let rejected = families::RELAY_REJECTED.name;
    families::RELAY_REJECTED.head(out);
    for (region, stats) in &relayed {
        for why in Reject::ALL {
            let _ = writeln!(
                out,
                "{rejected}{{region=\"{region}\",reason=\"{}\"}} {}",
                why.as_str(),
                stats.rejected(why)
            );
        }
    }
}

/// The supervisor's own families (one `# HELP`/`# TYPE` each, a sample per region), its build
/// info, then the children's families merged.
fn metrics(snap: &Snapshot, scrape: &Scrape) -> String {
    let scraped = scrape_all(snap, scrape);
    let samples: Vec<Sample> = snap
        .regions
        .iter()
        .zip(&scraped)
        .map(|(region, page)| Sample {
            region,
            usage: region.pid.and_then(|pid| {
                let _fd = accept::borrow(1);
                sys::proc_usage(pid)
            }),
            scraped: page.is_some(),
        })
        .collect();
    let mut out = String::with_capacity(64 * 1024);
    for own in &OWN_FAMILIES {
        own.family.head(&mut out);
        for s in &samples {
            if let Some(v) = (own.value)(s) {
                // Region names are fixed ASCII from our table: no label escaping needed.
                let _ = writeln!(out, "{}{{region=\"{}\"}} {v}", own.family.name, s.region.name);
            }
        }
    }
    state_metrics(&snap.regions, &mut out);
    relay_metrics(&snap.regions, &mut out);
    let measured: Vec<(&str, &RequestStats)> =
        snap.regions.iter().filter_map(|r| r.requests.as_deref().map(|q| (r.name, q))).collect();
    if !measured.is_empty() {
        observe::write_metrics(&measured, &mut out);
    }
    families::BUILD_INFO.head(&mut out);
    let _ = writeln!(out, "{}{{version=\"{}\"}} 1", families::BUILD_INFO.name, env!("CARGO_PKG_VERSION"));
    let reserved: Vec<&str> = families::ALL.iter().map(|f| f.name).collect();
    exposition::merge(scraped.into_iter().flatten().collect(), &reserved, &mut out);
    out
}
