//! The HTTP endpoint and the `healthcheck` subcommand, checked with real Prometheus tools, and
//! the endpoint under hostile clients: oversized heads, HTTP/2, random bytes, idle and slowloris
//! connections, a low descriptor limit (the supervisor never exits, memory stays flat, `/healthz`
//! keeps answering, descriptors and threads return to where they were).
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; `.ci/run` installs it).

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const LIMIT: Duration = Duration::from_secs(20);

fn promtool_check(page: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus)");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn metrics_of_twelve_regions_pass_promtool_and_merge_families() {
    let sup = Sup::start(&[("STANDIN_NO_METRICS", "us-west-1@1")]);
    sup.wait_ready(LIMIT);
    let (code, page) = sup.get("/metrics").unwrap();
    assert_eq!(code, 200);
    let (ok, report) = promtool_check(&page);
    assert!(ok, "promtool: {report}\n{page}");
    for family in
        ["finfocus_plugin_requests_total", "finfocus_plugin_request_duration_seconds", "supervisor_region_up"]
    {
        assert_eq!(page.matches(&format!("# TYPE {family} ")).count(), 1, "{family}");
        assert_eq!(page.matches(&format!("# HELP {family} ")).count(), 1, "{family}");
    }
    let sample = |prefix: &str| page.lines().filter(|l| l.starts_with(prefix)).count();
    // 11 regions serve metrics (us-west-1 does not), two request series each.
    assert_eq!(sample("finfocus_plugin_requests_total{region=\""), 22);
    assert_eq!(sample("finfocus_plugin_requests_total{region=\"us-west-1\""), 0);
    assert!(page.contains("supervisor_region_scrape_success{region=\"us-west-1\"} 0"));
    assert!(page.contains("supervisor_region_scrape_success{region=\"us-east-1\"} 1"));
    assert!(page.contains("finfocus_plugin_pricing_items{region=\"eu-west-1\",exported_region=\"eu-west-1\",service=\"ec2\"} 48213"));
    assert_eq!(sample("supervisor_region_up{"), 12);
    assert_eq!(sample("supervisor_region_resident_memory_bytes{"), 12);
    assert!(page.contains("supervisor_build_info{version=\""));
}

#[test]
fn health_endpoints_report_state() {
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1,eu-west-1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "60s"),
        ("SUPERVISOR_SHUTDOWN_GRACE", "3s"),
        ("STANDIN_NEVER_READY", "eu-west-1@1"),
        ("STANDIN_IGNORE_SIGTERM", "us-east-1@1"),
    ]);
    sup.wait_for("us-east-1 ready", LIMIT, |s| !s.events_matching("us-east-1", "ready").is_empty());
    for path in ["/healthz", "/readyz"] {
        let (code, body) = sup.get(path).unwrap();
        assert_eq!(code, 503, "{path}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let states: Vec<(&str, &str)> = v["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["region"].as_str().unwrap(), r["state"].as_str().unwrap()))
            .collect();
        assert_eq!(states, [("us-east-1", "ready"), ("eu-west-1", "starting")]);
        assert_eq!(v["regions"][0]["port"], sup.ports.base);
        assert!(v["regions"][0]["pid"].as_i64().is_some());
    }
    assert_eq!(sup.get("/livez").unwrap().0, 200);
    assert_eq!(sup.get("/nowhere").unwrap().0, 404);
    let (code, _) = raw_request(sup.ports.metrics(), "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(code, 405);
    // While stopping (us-east-1 ignores SIGTERM for the 3s grace), /livez turns 503.
    sup.signal(libc::SIGTERM);
    sup.wait_for("/livez 503", LIMIT, |s| s.get("/livez").is_some_and(|(c, _)| c == 503));
    assert_eq!(exit_code(sup.wait_exit(LIMIT)), Some(0));
}

fn raw_request(port: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    (raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), raw)
}

#[test]
fn a_real_prometheus_scrapes_twelve_regions() {
    let sup = Sup::start(&[]);
    sup.wait_ready(LIMIT);
    let dir = std::env::temp_dir().join(format!("rs-prom-{}-{}", std::process::id(), sup.ports.base));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: region-supervisor\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            sup.ports.metrics()
        ),
    )
    .unwrap();
    let web = sup.ports.base + 14;
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (Debian package prometheus)");
    let query = |q: &str| -> Option<Vec<Value>> {
        let (code, body) = http_get(web, &format!("/api/v1/query?query={q}"))?;
        if code != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut up = Vec::new();
    let mut regions = Vec::new();
    while Instant::now() < deadline {
        up = query("supervisor_region_up").unwrap_or_default();
        regions = query("finfocus_plugin_requests_total%7Bpath%3D%22%2Fhealthz%22%7D").unwrap_or_default();
        if up.len() == 12 && regions.len() == 12 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(up.len(), 12, "{up:?}");
    assert!(up.iter().all(|s| s["value"][1] == "1"), "{up:?}");
    let mut names: Vec<&str> = regions.iter().map(|s| s["metric"]["region"].as_str().unwrap()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), 12, "{names:?}");
}

fn healthcheck(ports: &Ports, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = command(ports, env).arg("healthcheck").stdin(Stdio::null()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn healthcheck_subcommand_reports_every_region() {
    let sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1,eu-west-1,sa-east-1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "60s"),
        ("STANDIN_NEVER_READY", "eu-west-1@1"),
    ]);
    sup.wait_for("two regions ready", LIMIT, |s| {
        s.events().iter().filter(|e| e["message"] == "ready").count() == 2
    });
    let regions = [("SUPERVISOR_REGIONS", "us-east-1,eu-west-1,sa-east-1"), ("HEALTH_CHECK_TIMEOUT", "1s")];
    let (code, out) = healthcheck(&sup.ports, &regions);
    assert_eq!(code, Some(1), "{out}");
    let base = sup.ports.base;
    assert_eq!(
        out,
        format!(
            "✓ us-east-1 ({base}) healthy\n✗ eu-west-1 ({}) unhealthy: no answer within 1s (the relay holds connections while a region is not ready)\n✓ sa-east-1 ({}) healthy\n1 of 3 regions unhealthy\n",
            base + 2,
            base + 8
        )
    );
    let (code, quiet) = healthcheck(&sup.ports, &[regions[0], regions[1], ("QUIET_HEALTHCHECK", "1")]);
    assert_eq!(code, Some(1));
    assert_eq!(quiet.lines().count(), 2, "{quiet}");
    let (code, ok) = healthcheck(&sup.ports, &[("SUPERVISOR_REGIONS", "us-east-1,sa-east-1")]);
    assert_eq!((code, ok.lines().last()), (Some(0), Some("all 2 regions healthy")));
}

#[test]
fn healthcheck_with_nothing_running_fails_fast() {
    let ports = Ports::new();
    let t = Instant::now();
    let (code, out) = healthcheck(&ports, &[("HEALTH_CHECK_TIMEOUT", "2s")]);
    assert_eq!(code, Some(1));
    assert_eq!(out.lines().filter(|l| l.ends_with("unhealthy: connection refused")).count(), 12, "{out}");
    assert!(t.elapsed() < Duration::from_secs(2), "probes are parallel and refused at once");
}

// ---- Hostile clients ----

/// The front's limits, as its module doc and the README state them.
const HEAD_LIMIT: usize = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// What the server may take beyond a stated bound on a busy two-core machine.
const SLACK: Duration = Duration::from_secs(8);

/// A `kB` field of /proc/<pid>/status (VmRSS, VmHWM).
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn count_dir(path: String) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// The supervisor's open descriptors and threads.
fn counts(pid: i32) -> (usize, usize) {
    (count_dir(format!("/proc/{pid}/fd")), count_dir(format!("/proc/{pid}/task")))
}

/// Descriptors and threads at rest: after a request (tiny_http's pool is up) and a pause, the
/// lowest of a few samples (a probe thread may be passing by).
fn baseline(sup: &Sup) -> (usize, usize) {
    assert_eq!(sup.get("/healthz").map(|(c, _)| c), Some(200));
    std::thread::sleep(Duration::from_millis(300));
    let mut low = counts(sup.pid);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(50));
        let (f, t) = counts(sup.pid);
        low = (low.0.min(f), low.1.min(t));
    }
    low
}

/// Waits until descriptors and threads are back at `base` (tiny_http's extra pool threads end
/// 5 s after their last task).
fn assert_settles(sup: &Sup, base: (usize, usize), limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut now = counts(sup.pid);
    while (now.0 > base.0 || now.1 > base.1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        now = counts(sup.pid);
    }
    assert!(now.0 <= base.0 && now.1 <= base.1, "fds/threads {now:?}, at rest before {base:?}");
}

fn assert_running(sup: &mut Sup) {
    let exited = sup.child.as_mut().unwrap().try_wait().unwrap();
    assert!(exited.is_none(), "supervisor exited: {exited:?}\n{}\n{}", sup.tail(30), sup.stderr());
}

/// Sends `bytes` (as much as the server takes), then reads until the server closes: what it
/// answered, and whether it closed within `limit`.
fn send_and_read(port: u16, bytes: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    read_to_close(&mut s, limit)
}

fn read_to_close(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + limit;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (answer, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (answer, true),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (answer, false)
            }
            // A reset after our answer was read (or instead of it) is a close too.
            Err(_) => return (answer, true),
        }
    }
}

/// The status of an answer, if it is an HTTP/1.1 one.
fn status_of(answer: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(answer.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.parse().ok()
}

/// `/healthz` on a new connection: its status and how long it took.
fn timed_healthz(port: u16) -> (Option<u16>, Duration) {
    let t = Instant::now();
    let code = http_get(port, "/healthz").map(|(c, _)| c);
    (code, t.elapsed())
}

fn two_regions() -> Sup {
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,eu-west-1")]);
    sup.wait_ready(LIMIT);
    sup
}

/// A request whose head is exactly `len` bytes long.
fn head_of_length(path: &str, len: usize) -> String {
    let bare = format!("GET {path} HTTP/1.1\r\nX: \r\n\r\n");
    format!("GET {path} HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(len - bare.len()))
}

#[test]
fn oversized_heads_are_refused_without_being_held() {
    let mut sup = two_regions();
    let port = sup.ports.metrics();
    let at_limit = head_of_length("/healthz", HEAD_LIMIT);
    let (answer, closed) = send_and_read(port, at_limit.as_bytes(), Duration::from_secs(5));
    assert_eq!(status_of(&answer), Some(200), "a head of exactly 64 KiB is served");
    assert!(!closed || answer.len() > 12);

    // 32 heads of 64 KiB + 1 at once: each refused, none held in the supervisor's memory.
    let hwm = status_kib(sup.pid, "VmHWM");
    let over = head_of_length("/healthz", HEAD_LIMIT + 1);
    let answers: Vec<(Vec<u8>, bool)> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..32)
            .map(|_| s.spawn(|| send_and_read(port, over.as_bytes(), Duration::from_secs(10))))
            .collect();
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for (answer, closed) in &answers {
        assert!(*closed, "the server closes a refused connection");
        assert!(answer.is_empty() || status_of(answer) == Some(431), "{}", String::from_utf8_lossy(answer));
    }
    assert!(answers.iter().any(|(a, _)| status_of(a) == Some(431)), "431 is answered");
    let grown = status_kib(sup.pid, "VmHWM").saturating_sub(hwm);
    assert!(grown < 32 * 64, "peak RSS grew by {grown} KiB for 32 refused heads of 64 KiB");

    // A 1 MB request line, 10 000 headers, and 10 000 headers small enough to fit in 64 KiB.
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
    let many = format!(
        "GET /metrics HTTP/1.1\r\n{}\r\n",
        (0..10_000).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
    );
    let many_small = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "a:\r\n".repeat(10_000));
    assert!(many_small.len() < HEAD_LIMIT);
    for request in [&long_line, &many, &many_small] {
        let (answer, closed) = send_and_read(port, request.as_bytes(), Duration::from_secs(10));
        assert!(closed);
        assert!(answer.is_empty() || status_of(&answer) == Some(431), "{}", String::from_utf8_lossy(&answer));
    }
    assert_running(&mut sup);
    assert_eq!(sup.get("/healthz").map(|(c, _)| c), Some(200));
}

#[test]
fn twenty_clients_sending_64_mib_header_lines_cost_no_memory() {
    let mut sup = two_regions();
    let port = sup.ports.metrics();
    let hwm = status_kib(sup.pid, "VmHWM");
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..20 {
            s.spawn(|| {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
                let chunk = vec![b'a'; 1 << 20];
                let _ = c.write_all(b"GET /metrics HTTP/1.1\r\nX-Huge: ");
                for _ in 0..64 {
                    if c.write_all(&chunk).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let grown = status_kib(sup.pid, "VmHWM").saturating_sub(hwm);
    assert!(grown < 8 * 1024, "peak RSS grew by {grown} KiB for 20 header lines of 64 MiB");
    assert!(t.elapsed() < Duration::from_secs(30), "the clients were cut off in {:?}", t.elapsed());
    assert_running(&mut sup);
    assert_eq!(sup.get("/healthz").map(|(c, _)| c), Some(200));
}

#[test]
fn http2_clients_get_505_and_leave_nothing_behind() {
    let mut sup = two_regions();
    let port = sup.ports.metrics();
    let base = baseline(&sup);
    // The HTTP/2 client preface followed by an empty SETTINGS frame, as a prior-knowledge
    // client sends it; and request lines of other versions.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00".to_vec();
    let others = [
        &b"GET /healthz HTTP/2.0\r\n\r\n"[..],
        b"GET /healthz HTTP/1.2\r\n\r\n",
        b"GET /healthz HTTP/3\r\n\r\n",
    ];
    let requests: Vec<&[u8]> = std::iter::repeat_n(&preface[..], 20).chain(others).collect();
    for request in requests {
        let (answer, closed) = send_and_read(port, request, Duration::from_secs(5));
        assert!(closed, "the server closes the connection");
        assert!(answer.is_empty() || status_of(&answer) == Some(505), "{}", String::from_utf8_lossy(&answer));
    }
    // Clients that send the preface and vanish at once.
    for _ in 0..20 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&preface).unwrap();
    }
    assert_settles(&sup, base, Duration::from_secs(10));
    assert_running(&mut sup);
    assert_eq!(sup.get("/healthz").map(|(c, _)| c), Some(200));
}

#[test]
fn random_bytes_are_refused() {
    let mut sup = two_regions();
    let port = sup.ports.metrics();
    let base = baseline(&sup);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ u64::from(sup.ports.base);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..64 {
        let len = 1 + (next() % 4096) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let (answer, closed) = send_and_read(port, &bytes, HEAD_TIMEOUT + SLACK);
        assert!(closed, "random bytes: the server closes");
        let status = status_of(&answer);
        assert!(
            answer.is_empty() || matches!(status, Some(400 | 408 | 431 | 505)),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_settles(&sup, base, Duration::from_secs(10));
    assert_running(&mut sup);
}

#[test]
fn idle_and_slowloris_clients_are_closed_in_time() {
    let mut sup = two_regions();
    let port = sup.ports.metrics();
    let base = baseline(&sup);
    let start = Instant::now();
    let mut clients: Vec<(TcpStream, bool, Option<Duration>)> = Vec::new();
    for i in 0..400 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let slow = i >= 300;
        if slow {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        }
        s.set_nonblocking(true).unwrap();
        clients.push((s, slow, None));
    }
    let (mut worst, mut answered, mut turn) = (Duration::ZERO, 0, 0u32);
    let mut buf = [0u8; 1024];
    while clients.iter().any(|c| c.2.is_none()) && start.elapsed() < HEAD_TIMEOUT + SLACK * 2 {
        turn += 1;
        for (s, slow, closed) in clients.iter_mut().filter(|c| c.2.is_none()) {
            match s.read(&mut buf) {
                Ok(0) => *closed = Some(start.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => *closed = Some(start.elapsed()),
            }
            // One more byte of the header value every half second.
            if *slow && turn % 5 == 0 {
                let _ = s.write(b"a");
            }
        }
        if turn % 3 == 0 {
            let (code, took) = timed_healthz(port);
            assert_eq!(code, Some(200), "/healthz behind idle and slow clients");
            worst = worst.max(took);
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(answered > 10, "{answered}");
    assert!(worst < Duration::from_secs(1), "/healthz took {worst:?} behind 400 idle and slow clients");
    let late = |slow: bool, bound: Duration| {
        clients.iter().filter(|c| c.1 == slow && c.2.is_none_or(|t| t > bound + SLACK)).count()
    };
    assert_eq!(late(false, IDLE_TIMEOUT), 0, "idle clients still open after {:?}", IDLE_TIMEOUT + SLACK);
    assert_eq!(late(true, HEAD_TIMEOUT), 0, "slowloris clients still open after {:?}", HEAD_TIMEOUT + SLACK);
    drop(clients);
    assert_settles(&sup, base, Duration::from_secs(10));
    assert_running(&mut sup);
}

/// A supervisor command whose open-file limit is `limit`, soft and hard.
fn limited(mut cmd: Command, limit: u64) -> Command {
    // SAFETY: setrlimit is async-signal-safe and reads a struct built before the fork.
    unsafe {
        let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn a_low_descriptor_limit_is_survived() {
    let ports = Ports::new();
    let env = [("SUPERVISOR_REGIONS", "us-east-1,eu-west-1"), ("SUPERVISOR_MAX_RESTARTS", "100")];
    let mut sup = Sup::spawn(limited(command(&ports, &env), 64), ports);
    let metrics = sup.ports.metrics();
    survives_clients_past_the_limit(&mut sup, &[metrics]);
}

/// 12 regions with the relay under an open-file limit of 64, soft and hard: every region
/// ready and serving through the relay while clients take every descriptor they can and a
/// child is killed.
#[test]
fn twelve_regions_with_the_relay_run_under_a_limit_of_64() {
    let ports = Ports::new();
    let env = [("SUPERVISOR_MAX_RESTARTS", "100")];
    let mut sup = Sup::spawn(limited(command(&ports, &env), 64), ports);
    sup.wait_ready(LIMIT);
    let us_east_1 = sup.ports.base;
    let last_region = sup.ports.base + 11;
    for port in [us_east_1, last_region] {
        assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200), "served through the relay");
    }
    let metrics = sup.ports.metrics();
    survives_clients_past_the_limit(&mut sup, &[metrics, us_east_1, last_region]);
    for port in [us_east_1, last_region] {
        assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200), "still served through the relay");
    }
}

/// The least open-file limit the supervisor states for 12 regions with the relay: below it,
/// exit 2 naming the limit and the need before anything starts; at it, one relay worker,
/// every region ready and serving through the relay, and what the supervisor holds leaves
/// the least reserve (8) and one relayed connection (2) of the limit.
#[test]
fn below_the_least_limit_nothing_starts_and_at_it_all_twelve_serve() {
    let ports = Ports::new();
    let mut low = Sup::spawn(limited(command(&ports, &[]), 40), ports);
    assert_eq!(exit_code(low.wait_exit(LIMIT)), Some(2));
    let err = low.stderr();
    assert!(err.contains("the open-file limit (RLIMIT_NOFILE, hard limit included) is 40; 12 regions with the relay need at least"), "{err}");
    assert!(low.all_child_pids().is_empty() && low.lines().is_empty(), "nothing may start");
    let need: usize =
        err.split("need at least ").nth(1).and_then(|t| t.split(' ').next()).unwrap().parse().unwrap();
    assert!(need <= 64, "{need}");
    drop(low);

    let ports = Ports::new();
    let sup = Sup::spawn(limited(command(&ports, &[]), need as u64), ports);
    sup.wait_ready(LIMIT);
    let relay_threads: usize =
        thread_names(sup.pid).iter().filter(|(n, _)| n.starts_with("relay ")).map(|(_, c)| c).sum();
    assert_eq!(relay_threads, 1, "the least has room for one worker: {:?}", thread_names(sup.pid));
    for port in sup.ports.base..sup.ports.base + 12 {
        assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200), "port {port} through the relay");
    }
    let (fds, _) = counts(sup.pid);
    assert!(fds + 8 + 2 <= need, "{fds} descriptors held at rest, {need} stated");
}

/// Three rounds of far more clients than descriptors at `ports`, a third of them with a
/// request begun, us-east-1's child SIGKILLed in the second: the supervisor lives, the child
/// is restarted and ready, `/healthz` answers 200 once the clients leave, nothing panicked.
fn survives_clients_past_the_limit(sup: &mut Sup, ports: &[u16]) {
    sup.wait_ready(LIMIT);
    let before = sup.child_pids();
    let pid_of =
        |pids: &[(String, i32)], region: &str| pids.iter().find(|(r, _)| r == region).map(|p| p.1).unwrap();
    for round in 0..3 {
        // Far more connections than descriptors; a third of them start a request.
        let mut hogs = Vec::new();
        for i in 0..300 {
            let port = ports[i % ports.len()];
            let Ok(mut s) = TcpStream::connect_timeout(
                &(std::net::Ipv4Addr::LOCALHOST, port).into(),
                Duration::from_secs(2),
            ) else {
                continue;
            };
            if i % 3 == 0 {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\n");
            }
            hogs.push(s);
        }
        if round == 1 {
            // A restart needs pipes and a probe while clients hold every descriptor they can.
            send_signal(pid_of(&before, "us-east-1"), libc::SIGKILL);
            sup.wait_for("us-east-1 restarted and ready", LIMIT, |s| {
                s.events_matching("us-east-1", "ready").len() >= 2
            });
        }
        assert_running(sup);
        drop(hogs);
        sup.wait_for("/healthz 200 once the clients left", Duration::from_secs(10), |s| {
            s.get("/healthz").is_some_and(|(c, _)| c == 200)
        });
    }
    assert_running(sup);
    let after = sup.child_pids();
    assert_eq!(after.len(), before.len());
    assert!(after.iter().all(|&(_, pid)| alive(pid)), "{after:?}");
    assert_eq!(pid_of(&after, "eu-west-1"), pid_of(&before, "eu-west-1"), "eu-west-1 was never restarted");
    assert!(!sup.stderr().contains("panicked"), "{}", sup.stderr());
}

/// Reads one response from a keep-alive connection: (status, body). Knows Content-Length and
/// chunked bodies, and that a HEAD answer has none.
fn read_response(s: &mut TcpStream, head_request: bool) -> (u16, Vec<u8>) {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "closed in a response head: {}",
            String::from_utf8_lossy(&raw)
        );
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    if head_request {
        return (status, body);
    }
    if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut line = Vec::new();
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            let size = usize::from_str_radix(std::str::from_utf8(&line).unwrap().trim(), 16).unwrap();
            let mut chunk = vec![0u8; size + 2];
            s.read_exact(&mut chunk).unwrap();
            if size == 0 {
                return (status, body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let length: usize = header("Content-Length").expect("a delimited answer").parse().unwrap();
    body.resize(length, 0);
    s.read_exact(&mut body).unwrap();
    (status, body)
}

#[test]
fn a_keep_alive_client_sends_several_requests_on_one_connection() {
    let sup = two_regions();
    let mut s = TcpStream::connect(("127.0.0.1", sup.ports.metrics())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let steps: [(&str, &str, u16); 7] = [
        ("GET", "/healthz", 200),
        ("GET", "/metrics", 200),
        ("HEAD", "/metrics", 200),
        ("GET", "/livez", 200),
        ("GET", "/nowhere", 404),
        ("DELETE", "/metrics", 405),
        ("GET", "/readyz", 200),
    ];
    for (method, path, want) in steps {
        write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let (status, body) = read_response(&mut s, method == "HEAD");
        assert_eq!(status, want, "{method} {path}");
        if path == "/metrics" && method == "GET" {
            assert!(String::from_utf8(body)
                .unwrap()
                .contains("supervisor_region_up{region=\"eu-west-1\"} 1"));
        }
    }
    // Two requests in one write (pipelined): two answers, in order.
    s.write_all(b"GET /livez HTTP/1.1\r\n\r\nGET /nowhere HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).0, 200);
    assert_eq!(read_response(&mut s, false).0, 404);
    // `Connection: close` ends it after the answer.
    s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s, false).0, 200);
    assert_eq!(read_to_close(&mut s, Duration::from_secs(5)), (Vec::new(), true));
    // An idle keep-alive connection is closed by the server after IDLE_TIMEOUT.
    let mut idle = TcpStream::connect(("127.0.0.1", sup.ports.metrics())).unwrap();
    idle.write_all(b"GET /livez HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut idle, false).0, 200);
    let t = Instant::now();
    assert_eq!(read_to_close(&mut idle, IDLE_TIMEOUT + SLACK), (Vec::new(), true));
    assert!(t.elapsed() > IDLE_TIMEOUT - Duration::from_secs(1), "closed after {:?}", t.elapsed());
}
