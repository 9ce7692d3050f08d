//! The supervisor's HTTP endpoint on `SUPERVISOR_METRICS_ADDR` (tiny_http).
//!
//! tiny_http reads each connection on a thread of its own pool, so a slow or idle client holds
//! only that thread; `WORKERS` threads take complete requests and answer them from the `View`
//! the supervisor thread publishes. They never talk to the supervisor thread and never block
//! it. `/metrics` scrapes every running child in parallel at request time (each bounded by
//! `SUPERVISOR_SCRAPE_TIMEOUT` and `SCRAPE_BODY_LIMIT`), so a slow scrape occupies one worker
//! while the others keep answering health checks. `stop` unblocks every `recv`.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::config::Config;
use crate::exposition::{self, Family};
use crate::probe;
use crate::supervisor::{RegionView, SharedView};
use crate::sys;

/// Threads answering requests; one long `/metrics` scrape never holds up `/healthz`.
const WORKERS: usize = 4;
/// Longest wait for one read or write on a client connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A child's metrics page is read up to this size; a larger one counts as a failed scrape.
const SCRAPE_BODY_LIMIT: usize = 16 << 20;

pub struct Handle {
    server: Arc<Server>,
    threads: Vec<JoinHandle<()>>,
}

impl Handle {
    pub fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
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
}

pub fn start(listener: TcpListener, view: SharedView, config: &Config) -> Handle {
    if let Err(e) = sys::nodelay_for_accepted(&listener) {
        crate::output::warn(None, &format!("cannot set TCP_NODELAY on the metrics listener: {e}"), &[]);
    }
    // An idle or trickling client is answered 408 and closed, and one that does not read its
    // response releases the worker, after IO_TIMEOUT per read or write.
    if let Err(e) = sys::timeouts_for_accepted(&listener, IO_TIMEOUT) {
        crate::output::warn(None, &format!("cannot set timeouts on the metrics listener: {e}"), &[]);
    }
    let server =
        Arc::new(Server::from_listener(listener, None).expect("a bound listener is always accepted"));
    let scrape = Arc::new(Scrape {
        path: config.child_metrics_path.clone(),
        timeout: config.scrape_timeout,
        ports: config.regions.iter().map(|r| r.child_port).collect(),
    });
    let threads = (0..WORKERS)
        .map(|_| {
            let (srv, view, scrape) = (server.clone(), view.clone(), scrape.clone());
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || {
                    while let Ok(request) = srv.recv() {
                        answer(request, &view, &scrape);
                    }
                })
                .expect("cannot start an http thread")
        })
        .collect();
    Handle { server, threads }
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

/// 200 when every region is ready, else 503; the body has each region's state.
fn health(snap: &Snapshot) -> Response<std::io::Cursor<Vec<u8>>> {
    let all_ready = snap.regions.iter().all(|r| r.state == "ready");
    let regions: Vec<_> = snap
        .regions
        .iter()
        .map(|r| {
            json!({
                "region": r.name,
                "state": r.state,
                "pid": r.pid,
                "port": r.port,
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
fn scrape_all(snap: &Snapshot, scrape: &Scrape) -> Vec<Option<Vec<Family>>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = snap
            .regions
            .iter()
            .zip(&scrape.ports)
            .map(|(r, &port)| {
                let running = r.pid.is_some();
                s.spawn(move || {
                    if !running {
                        return None;
                    }
                    let response = probe::get(port, &scrape.path, scrape.timeout, SCRAPE_BODY_LIMIT).ok()?;
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
struct Own {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Sample) -> Option<String>,
}

/// What the own families are computed from, per region.
struct Sample<'a> {
    region: &'a RegionView,
    usage: Option<(u64, f64)>,
    scraped: bool,
}

const OWN: [Own; 7] = [
    Own {
        name: "supervisor_region_up",
        kind: "gauge",
        help: "1 when the region answers its health path",
        value: |s| Some(u8::from(s.region.state == "ready").to_string()),
    },
    Own {
        name: "supervisor_region_restarts_total",
        kind: "counter",
        help: "Restarts of the region since the supervisor started",
        value: |s| Some(s.region.restarts.to_string()),
    },
    Own {
        name: "supervisor_region_start_time_seconds",
        kind: "gauge",
        help: "Unix time the region's current process started",
        value: |s| {
            let t = s.region.started_at?.duration_since(UNIX_EPOCH).ok()?;
            Some(format!("{:.3}", t.as_secs_f64()))
        },
    },
    Own {
        name: "supervisor_region_resident_memory_bytes",
        kind: "gauge",
        help: "Resident memory of the region's current process",
        value: |s| s.usage.map(|(rss, _)| rss.to_string()),
    },
    Own {
        name: "supervisor_region_cpu_seconds_total",
        kind: "counter",
        help: "CPU time of the region's current process",
        value: |s| s.usage.map(|(_, cpu)| format!("{cpu:.2}")),
    },
    Own {
        name: "supervisor_region_log_lines_total",
        kind: "counter",
        help: "Log lines of the region written to stdout",
        value: |s| Some(s.region.stats.lines.load(Ordering::Relaxed).to_string()),
    },
    Own {
        name: "supervisor_region_scrape_success",
        kind: "gauge",
        help: "1 when the region's own metrics were scraped and valid",
        value: |s| Some(u8::from(s.scraped).to_string()),
    },
];

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
            usage: region.pid.and_then(sys::proc_usage),
            scraped: page.is_some(),
        })
        .collect();
    let mut out = String::with_capacity(64 * 1024);
    for own in &OWN {
        let _ = writeln!(out, "# HELP {} {}\n# TYPE {} {}", own.name, own.help, own.name, own.kind);
        for s in &samples {
            if let Some(v) = (own.value)(s) {
                // Region names are fixed ASCII from our table: no label escaping needed.
                let _ = writeln!(out, "{}{{region=\"{}\"}} {v}", own.name, s.region.name);
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP supervisor_build_info Version of region-supervisor\n# TYPE supervisor_build_info gauge"
    );
    let _ = writeln!(out, "supervisor_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    let mut reserved: Vec<&str> = OWN.iter().map(|o| o.name).collect();
    reserved.push("supervisor_build_info");
    exposition::merge(scraped.into_iter().flatten().collect(), &reserved, &mut out);
    out
}
