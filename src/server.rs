//! The supervisor's HTTP endpoint on `SUPERVISOR_METRICS_ADDR` (tiny_http).
//!
//! One thread accepts requests (tiny_http reads each connection on its own worker, so a slow
//! client holds only its worker) and answers from the `View` the supervisor thread publishes;
//! it never talks to the supervisor thread and never blocks it. `stop` unblocks `recv`.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::UNIX_EPOCH;

use serde_json::json;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::config::Config;
use crate::supervisor::{SharedView, View};
use crate::sys;

pub struct Handle {
    server: Arc<Server>,
    thread: JoinHandle<()>,
}

impl Handle {
    pub fn stop(self) {
        self.server.unblock();
        let _ = self.thread.join();
    }
}

pub fn start(listener: TcpListener, view: SharedView, _config: &Config) -> Handle {
    let server =
        Arc::new(Server::from_listener(listener, None).expect("a bound listener is always accepted"));
    let srv = server.clone();
    let thread = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            while let Ok(request) = srv.recv() {
                answer(request, &view);
            }
        })
        .expect("cannot start the http thread");
    Handle { server, thread }
}

fn answer(request: Request, view: &SharedView) {
    let path = request.url().split('?').next().unwrap_or("").to_string();
    let known = matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz" | "/livez");
    let response = if !known {
        text(404, "not found\n")
    } else if !matches!(request.method(), Method::Get | Method::Head) {
        text(405, "method not allowed\n").with_header(header("Allow", "GET, HEAD"))
    } else {
        let view = view.read().unwrap_or_else(|p| p.into_inner());
        match path.as_str() {
            "/metrics" => Response::from_string(metrics(&view))
                .with_header(header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")),
            "/livez" if view.stopping => text(503, "stopping\n"),
            "/livez" => text(200, "ok\n"),
            _ => health(&view),
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
fn health(view: &View) -> Response<std::io::Cursor<Vec<u8>>> {
    let all_ready = view.regions.iter().all(|r| r.state == "ready");
    let regions: Vec<_> = view
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

/// The supervisor's own families, one `# HELP`/`# TYPE` each, a sample per region.
fn metrics(view: &View) -> String {
    let mut out = String::new();
    let usage: Vec<Option<(u64, f64)>> =
        view.regions.iter().map(|r| r.pid.and_then(sys::proc_usage)).collect();
    family(
        &mut out,
        view,
        "supervisor_region_up",
        "gauge",
        "1 when the region answers its health path",
        |r, _| Some(if r.state == "ready" { "1".into() } else { "0".into() }),
    );
    family(
        &mut out,
        view,
        "supervisor_region_restarts_total",
        "counter",
        "Restarts of the region since the supervisor started",
        |r, _| Some(r.restarts.to_string()),
    );
    family(
        &mut out,
        view,
        "supervisor_region_start_time_seconds",
        "gauge",
        "Unix time the region's current process started",
        |r, _| {
            let t = r.started_at?.duration_since(UNIX_EPOCH).ok()?;
            Some(format!("{:.3}", t.as_secs_f64()))
        },
    );
    family(
        &mut out,
        view,
        "supervisor_region_resident_memory_bytes",
        "gauge",
        "Resident memory of the region's process",
        |_, i| usage[i].map(|(rss, _)| rss.to_string()),
    );
    family(
        &mut out,
        view,
        "supervisor_region_cpu_seconds_total",
        "counter",
        "CPU time of the region's current process",
        |_, i| usage[i].map(|(_, cpu)| format!("{cpu:.2}")),
    );
    family(
        &mut out,
        view,
        "supervisor_region_log_lines_total",
        "counter",
        "Log lines of the region written to stdout",
        |r, _| Some(r.stats.lines.load(Ordering::Relaxed).to_string()),
    );
    let _ = writeln!(
        out,
        "# HELP supervisor_build_info Version of region-supervisor\n# TYPE supervisor_build_info gauge"
    );
    let _ = writeln!(out, "supervisor_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    out
}

fn family(
    out: &mut String,
    view: &View,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&crate::supervisor::RegionView, usize) -> Option<String>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (i, r) in view.regions.iter().enumerate() {
        if let Some(v) = value(r, i) {
            // Region names are fixed ASCII from our table: no label escaping needed.
            let _ = writeln!(out, "{name}{{region=\"{}\"}} {v}", r.name);
        }
    }
}
