//! `finfocus-standin`: a stand-in for one regional `finfocus-plugin-aws-public` binary.
//!
//! It behaves like the real plugin (Go, finfocus pluginsdk) as far as the supervisor can see:
//! reads `FINFOCUS_PLUGIN_PORT` (else `PORT`), listens on 127.0.0.1, prints `PORT=<port>` on
//! stdout, writes zerolog-style JSON lines on stderr, serves `/healthz` and a realistic
//! `/metrics`, and exits 0 on SIGTERM. It also reports every signal it receives, one JSON line
//! each, so tests can see what reached it.
//!
//! Failure modes are chosen by environment variables. Each takes a plain value (every region)
//! or a list of `region@value` (only those regions), e.g. `STANDIN_CRASH_AFTER=eu-west-1@2s`:
//!
//! | variable | effect |
//! |---|---|
//! | `STANDIN_CRASH_AFTER=<dur>` | exit with `STANDIN_EXIT_CODE` (default 3) after the delay |
//! | `STANDIN_START_DELAY=<dur>` | wait before listening (a slow start) |
//! | `STANDIN_NEVER_READY=1` | `/healthz` answers 503 forever |
//! | `STANDIN_UNHEALTHY_AFTER=<dur>` | `/healthz` answers 503 once the delay has passed |
//! | `STANDIN_IGNORE_SIGTERM=1` | log SIGTERM/SIGINT and keep running |
//! | `STANDIN_SPEW=<n>` | write n ~200-byte log lines (90% JSON, 10% plain) to stderr at once |
//! | `STANDIN_REPLAY=<file>` | copy the file to stdout once, 128 KiB per write as `cat` does (benchmarks) |
//! | `STANDIN_LONG_LINE=<bytes>` | write one line of that many bytes to stdout, then `after long line` |
//! | `STANDIN_TRICKY_LOGS=1` | write edge-case lines: invalid UTF-8, NUL, CRLF, a `region` key, a long line, no final newline |
//! | `STANDIN_SPLIT_LINES=1` | begin a line on stdout (`partial-`), write a JSON line on stderr, end the stdout line (`rest`), then leave `final words` on stdout without newline (the shutdown lines on stderr follow it) |
//! | `STANDIN_ORPHANS=<n>` | fork n grandchildren whose parent exits at once (zombies for PID 1) |
//! | `STANDIN_NO_METRICS=1` | `/metrics` answers 404 |
//! | `STANDIN_SERIES=<n>` | add n extra series to `/metrics` |
//!
//! Durations as the supervisor reads them (`250ms`, `2s`, `1m`, `1h` or whole seconds): the
//! parser is the supervisor's own (`src/time.rs`).

use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

// The supervisor's duration parser.
use region_supervisor::time;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--orphan-parent") => return orphan_parent(),
        Some("--orphan-child") => return thread::sleep(Duration::from_millis(100)),
        _ => {}
    }
    // Before anything opens a descriptor: what did we inherit beyond stdin/stdout/stderr?
    let inherited = inherited_fds();
    let region = std::env::var("REGION").unwrap_or_else(|_| "unknown".into());
    let port = port_from_env();
    let mode = |name: &str| setting(name, &region);
    let ignore_term = mode("STANDIN_IGNORE_SIGTERM").is_some_and(|v| v == "1" || v == "true");
    watch_signals_in_background(ignore_term);
    log(
        "info",
        "starting aws-public pricing plugin",
        &format!(",\"plugin_region\":\"{region}\",\"port\":{port},\"inherited_fds\":{inherited:?}"),
    );
    if let Some(d) = mode("STANDIN_START_DELAY").and_then(|v| time::parse_duration(&v)) {
        thread::sleep(d);
    }
    let server = listen(port);
    println!("PORT={port}");
    let _ = std::io::stdout().flush();
    log("info", "plugin listening", &format!(",\"addr\":\"127.0.0.1:{port}\""));
    start_failure_modes(&mode, &region);
    start_bulk_output(&mode);
    let state = Arc::new(State {
        started: Instant::now(),
        never_ready: mode("STANDIN_NEVER_READY").is_some(),
        unhealthy_after: mode("STANDIN_UNHEALTHY_AFTER").and_then(|v| time::parse_duration(&v)),
        no_metrics: mode("STANDIN_NO_METRICS").is_some(),
        series: mode("STANDIN_SERIES").and_then(|v| v.parse().ok()).unwrap_or(0),
        region,
        health_requests: AtomicU64::new(0),
        metrics_requests: AtomicU64::new(0),
    });
    for request in server.incoming_requests() {
        let state = state.clone();
        thread::spawn(move || serve(request, &state));
    }
}

/// The descriptors above stderr that are open: a supervisor must pass on none.
fn inherited_fds() -> Vec<i32> {
    (3..1024)
        // SAFETY: F_GETFD only asks whether the descriptor number is open.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .collect()
}

/// `FINFOCUS_PLUGIN_PORT`, else `PORT`, as the real plugin reads them; exit 2 without one.
fn port_from_env() -> u16 {
    match std::env::var("FINFOCUS_PLUGIN_PORT").or_else(|_| std::env::var("PORT")).map(|p| p.parse()) {
        Ok(Ok(p)) => p,
        _ => {
            log("error", "FINFOCUS_PLUGIN_PORT (or PORT) must be a port number", "");
            std::process::exit(2);
        }
    }
}

fn watch_signals_in_background(ignore_term: bool) {
    let signals =
        Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP, SIGUSR1, SIGUSR2]).expect("signal handlers");
    thread::spawn(move || watch_signals(signals, ignore_term));
}

/// Listens on 127.0.0.1 only, as the real plugin does; exit 1 when the port is taken.
fn listen(port: u16) -> tiny_http::Server {
    // Like Go's net/http, answer without Nagle delays (Go sets TCP_NODELAY on every connection;
    // Linux copies it from the listener to accepted sockets).
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).inspect(|l| {
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a live variable.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(l),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    });
    match listener
        .map_err(|e| e.to_string())
        .and_then(|l| tiny_http::Server::from_listener(l, None).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            log("error", &format!("cannot listen on 127.0.0.1:{port}: {e}"), "");
            std::process::exit(1);
        }
    }
}

/// The failure modes that act once the plugin listens: a crash timer, orphans, odd log lines.
fn start_failure_modes(mode: &dyn Fn(&str) -> Option<String>, region: &str) {
    if let Some(d) = mode("STANDIN_CRASH_AFTER").and_then(|v| time::parse_duration(&v)) {
        let code: i32 = mode("STANDIN_EXIT_CODE").and_then(|v| v.parse().ok()).unwrap_or(3);
        thread::spawn(move || {
            thread::sleep(d);
            log("error", "simulated crash", &format!(",\"exit_code\":{code}"));
            std::process::exit(code);
        });
    }
    if let Some(n) = mode("STANDIN_ORPHANS").and_then(|v| v.parse::<u32>().ok()) {
        for _ in 0..n {
            let me = std::env::current_exe().expect("own path");
            if let Ok(mut child) = Command::new(me).arg("--orphan-parent").spawn() {
                let _ = child.wait();
            }
        }
        log("info", &format!("left {n} orphans behind"), "");
    }
    if mode("STANDIN_TRICKY_LOGS").is_some() {
        tricky_logs(region);
    }
    if mode("STANDIN_SPLIT_LINES").is_some() {
        split_lines();
    }
}

/// Bulk output runs beside the HTTP server, so the plugin is ready while it writes.
fn start_bulk_output(mode: &dyn Fn(&str) -> Option<String>) {
    let spew_lines = mode("STANDIN_SPEW").and_then(|v| v.parse::<u64>().ok());
    let replay = mode("STANDIN_REPLAY");
    let long_line = mode("STANDIN_LONG_LINE").and_then(|v| v.parse::<u64>().ok());
    thread::spawn(move || {
        if let Some(n) = long_line {
            write_long_line(n);
        }
        if let Some(n) = spew_lines {
            spew(n);
        }
        if let Some(path) = replay {
            replay_file(&path);
        }
    });
}

struct State {
    started: Instant,
    never_ready: bool,
    unhealthy_after: Option<Duration>,
    no_metrics: bool,
    series: u32,
    region: String,
    health_requests: AtomicU64,
    metrics_requests: AtomicU64,
}

fn serve(request: tiny_http::Request, state: &State) {
    let (status, body) = match request.url() {
        "/healthz" => {
            state.health_requests.fetch_add(1, Ordering::Relaxed);
            let sick =
                state.never_ready || state.unhealthy_after.is_some_and(|d| state.started.elapsed() >= d);
            if sick {
                (503, "unhealthy\n".to_string())
            } else {
                (200, "ok\n".to_string())
            }
        }
        "/metrics" if !state.no_metrics => {
            state.metrics_requests.fetch_add(1, Ordering::Relaxed);
            (200, metrics(state))
        }
        _ => (404, "404 page not found\n".to_string()),
    };
    let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status));
}

/// A Go-client-style exposition: counter, gauge with a `region` label, histogram.
fn metrics(s: &State) -> String {
    let health = s.health_requests.load(Ordering::Relaxed);
    let scrapes = s.metrics_requests.load(Ordering::Relaxed);
    let mut m = format!(
        "# HELP finfocus_plugin_requests_total Requests served by the plugin.
# TYPE finfocus_plugin_requests_total counter
finfocus_plugin_requests_total{{code=\"200\",path=\"/healthz\"}} {health}
finfocus_plugin_requests_total{{code=\"200\",path=\"/metrics\"}} {scrapes}
# HELP finfocus_plugin_pricing_items Pricing items loaded for the region.
# TYPE finfocus_plugin_pricing_items gauge
finfocus_plugin_pricing_items{{region=\"{}\",service=\"ec2\"}} 48213
finfocus_plugin_pricing_items{{region=\"{}\",service=\"rds\"}} 9120
# HELP finfocus_plugin_request_duration_seconds Time to answer a pricing request.
# TYPE finfocus_plugin_request_duration_seconds histogram
finfocus_plugin_request_duration_seconds_bucket{{le=\"0.005\"}} 3
finfocus_plugin_request_duration_seconds_bucket{{le=\"0.05\"}} 9
finfocus_plugin_request_duration_seconds_bucket{{le=\"0.5\"}} 12
finfocus_plugin_request_duration_seconds_bucket{{le=\"+Inf\"}} 12
finfocus_plugin_request_duration_seconds_sum 0.731
finfocus_plugin_request_duration_seconds_count 12
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {:.2}
",
        s.region,
        s.region,
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
            - s.started.elapsed().as_secs_f64()
    );
    if s.series > 0 {
        m.push_str("# HELP finfocus_plugin_sku_price_usd Price of one SKU.\n# TYPE finfocus_plugin_sku_price_usd gauge\n");
        for i in 0..s.series {
            m.push_str(&format!(
                "finfocus_plugin_sku_price_usd{{sku=\"SKU{i:06}\",unit=\"Hrs\"}} {}.{:03}\n",
                i % 17,
                i % 1000
            ));
        }
    }
    m
}

fn watch_signals(mut signals: Signals, ignore_term: bool) {
    for sig in signals.forever() {
        let name = match sig {
            SIGTERM => "SIGTERM",
            SIGINT => "SIGINT",
            SIGQUIT => "SIGQUIT",
            SIGHUP => "SIGHUP",
            SIGUSR1 => "SIGUSR1",
            _ => "SIGUSR2",
        };
        log("info", "signal received", &format!(",\"signal\":\"{name}\""));
        if matches!(sig, SIGTERM | SIGINT | SIGQUIT) {
            if ignore_term {
                log("warn", "ignoring the stop signal", "");
                continue;
            }
            log("info", "shutting down", "");
            std::process::exit(0);
        }
    }
}

/// The process in the middle: starts a grandchild and exits at once, so the grandchild is
/// re-parented to the nearest subreaper (the supervisor) and becomes its zombie to reap.
fn orphan_parent() {
    let me = std::env::current_exe().expect("own path");
    let _ = Command::new(me).arg("--orphan-child").spawn();
}

fn tricky_logs(region: &str) {
    let mut err = std::io::stderr().lock();
    let long = "L".repeat(100_000);
    let lines: Vec<Vec<u8>> = vec![
        b"{}".to_vec(),
        format!("{{\"level\":\"info\",\"region\":\"{region}\",\"message\":\"own region\"}}").into_bytes(),
        b"{\"level\":\"info\",\"region\":\"eu-central-1\",\"message\":\"other region\"}".to_vec(),
        b"plain \xff\xfe invalid utf-8".to_vec(),
        b"nul \x00 byte".to_vec(),
        b"crlf line\r".to_vec(),
        b"  {\"spaced\": true}  ".to_vec(),
        b"{\"broken\": ".to_vec(),
        long.into_bytes(),
        b"tricky done".to_vec(),
    ];
    for mut line in lines {
        line.push(b'\n');
        let _ = err.write_all(&line);
    }
    let _ = err.write_all(b"no final newline");
    let _ = err.write_all(b"\n");
}

/// Lines of the two streams that a shared pipe would join: a stdout line with a whole stderr
/// line written in its middle, and a last stdout line without newline that the stderr lines
/// of the shutdown follow.
fn split_lines() {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(b"partial-");
    let _ = out.flush();
    let _ = std::io::stderr().write_all(b"{\"level\":\"info\",\"message\":\"from stderr\"}\n");
    let _ = out.write_all(b"rest\nfinal words");
    let _ = out.flush();
}

fn spew(n: u64) {
    let mut err = std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr().lock());
    for i in 0..n {
        if i % 10 == 9 {
            let _ = writeln!(err, "plain progress line {i}: loaded pricing chunk for ec2 instance families m5 c5 r5 t3 with on-demand and reserved terms ok");
        } else {
            let _ = writeln!(
                err,
                "{{\"level\":\"debug\",\"plugin\":\"aws-public\",\"seq\":{i},\"service\":\"ec2\",\"sku\":\"JRTCKXETXF.{i:08}\",\"time\":\"2026-11-22T06:41:50Z\",\"message\":\"priced instance lookup served from embedded data\"}}"
            );
        }
    }
    let _ = err.flush();
}

fn write_long_line(mut n: u64) {
    let block = vec![b'x'; 64 * 1024];
    let mut out = std::io::stdout().lock();
    while n > 0 {
        let k = n.min(block.len() as u64) as usize;
        if out.write_all(&block[..k]).is_err() {
            return;
        }
        n -= k as u64;
    }
    let _ = out.write_all(b"\nafter long line\n");
    let _ = out.flush();
}

fn replay_file(path: &str) {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return log("error", &format!("cannot replay {path}: {e}"), ""),
    };
    // Straight to fd 1 in `cat`'s block size: the benchmark compares the supervisor with
    // `cat`, so the child must not be slower than `cat` (Rust's stdout is line-buffered and
    // would write once per line).
    // SAFETY: fd 1 is open for the life of the process; ManuallyDrop never closes it.
    let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let _ = std::io::stdout().flush();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if out.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// A mode's value for `region`: a plain value, or the entry of a `region@value` list.
fn setting(name: &str, region: &str) -> Option<String> {
    let raw = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    if !raw.contains('@') {
        return Some(raw);
    }
    raw.split(',').find_map(|entry| {
        let (r, v) = entry.split_once('@')?;
        (r.trim() == region).then(|| v.trim().to_string())
    })
}

/// One zerolog-style line on stderr.
fn log(level: &str, message: &str, extra: &str) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let line = format!(
        "{{\"level\":\"{level}\",\"plugin\":\"aws-public\",\"ts\":{}.{:03}{extra},\"message\":{}}}\n",
        now.as_secs(),
        now.subsec_millis(),
        serde_json::Value::from(message)
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}
