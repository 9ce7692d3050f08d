//! Test harness: runs the real `region-supervisor` binary over `finfocus-standin` children on
//! ports of their own, collects its output, and ends only the processes it started, by pid.
//!
//! Every wait is bounded; every test gets a fresh block of ports below the kernel's ephemeral
//! range, so tests can run in parallel.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// SPEC's region table, in order (row index = port offset). Written out here again, not
/// imported from the crate, so the tests check the binary against SPEC, not against itself.
pub const REGIONS: [&str; 12] = [
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-south-1",
    "ca-central-1",
    "sa-east-1",
    "us-gov-west-1",
    "us-gov-east-1",
    "us-west-1",
];

pub const SUPERVISOR: &str = env!("CARGO_BIN_EXE_region-supervisor");
pub const STANDIN: &str = env!("CARGO_BIN_EXE_finfocus-standin");

/// Ports per test: 12 regions, the metrics port and spares, then 12 child ports and spares.
const BLOCK: u16 = 32;
static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);

/// A block of free ports: `base..base+12` for regions, `base+13` for metrics, `base+16..`
/// for the children behind the relay.
pub struct Ports {
    pub base: u16,
}

impl Ports {
    pub fn new() -> Ports {
        // Spread concurrent test binaries apart by pid; within one binary, by a counter.
        let seed = (std::process::id() % 400) as u16;
        for _ in 0..200 {
            let n = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
            let base = 10_000 + ((seed * 7 + n) % 650) * BLOCK;
            let free = (base..base + BLOCK).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
            if free {
                return Ports { base };
            }
        }
        panic!("no free block of {BLOCK} ports below 31000");
    }

    pub fn metrics(&self) -> u16 {
        self.base + 13
    }

    /// `SUPERVISOR_CHILD_PORT_BASE` of the test: where the children listen behind the relay.
    pub fn child_base(&self) -> u16 {
        self.base + 16
    }
}

pub struct Sup {
    pub child: Option<Child>,
    pub pid: i32,
    pub ports: Ports,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    status: Option<ExitStatus>,
}

/// A supervisor command with test defaults: stand-in children, this test's ports, fast
/// backoff. `env` entries override the defaults.
pub fn command(ports: &Ports, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(SUPERVISOR);
    cmd.env("SUPERVISOR_COMMAND", STANDIN)
        .env("SUPERVISOR_PORT_BASE", ports.base.to_string())
        .env("SUPERVISOR_METRICS_ADDR", format!("127.0.0.1:{}", ports.metrics()))
        .env("SUPERVISOR_CHILD_PORT_BASE", ports.child_base().to_string())
        .env("SUPERVISOR_RESTART_BACKOFF", "100ms")
        .env("SUPERVISOR_SHUTDOWN_GRACE", "2s")
        .env_remove("TERMINATION_GRACE_SECONDS");
    for key in ["STANDIN_CRASH_AFTER", "STANDIN_IGNORE_SIGTERM", "STANDIN_NEVER_READY", "STANDIN_ORPHANS"] {
        cmd.env_remove(key);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Sup {
    pub fn start(env: &[(&str, &str)]) -> Sup {
        let ports = Ports::new();
        let cmd = command(&ports, env);
        Sup::spawn(cmd, ports)
    }

    pub fn spawn(mut cmd: Command, ports: Ports) -> Sup {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start region-supervisor");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push(String::from_utf8_lossy(&buf).trim_end_matches('\n').to_string());
                buf.clear();
            }
        });
        let mut err = child.stderr.take().unwrap();
        let esink = stderr.clone();
        thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            esink.lock().unwrap().push_str(&s);
        });
        let pid = child.id() as i32;
        Sup { child: Some(child), pid, ports, lines, stderr, status: None }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The supervisor's own events (JSON lines with `time` and `level`, no child fields).
    pub fn events(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("time").is_some() && v.get("plugin").is_none())
            .collect()
    }

    pub fn events_matching(&self, region: &str, message: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["region"] == region && e["message"].as_str().is_some_and(|m| m.contains(message)))
            .collect()
    }

    /// Waits until `check` holds, at most `limit`; panics with the output otherwise.
    pub fn wait_for(&self, what: &str, limit: Duration, check: impl Fn(&Sup) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "timed out after {limit:?} waiting for {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.tail(60),
            self.stderr()
        );
    }

    pub fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn wait_ready(&self, limit: Duration) {
        self.wait_for("/healthz 200", limit, |s| s.get("/healthz").is_some_and(|(code, _)| code == 200));
    }

    /// GET on the supervisor's metrics port: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.ports.metrics(), path)
    }

    /// The current pid of each region's child, from the last "started" event per region.
    pub fn child_pids(&self) -> Vec<(String, i32)> {
        let mut latest: Vec<(String, i32)> = Vec::new();
        for e in self.events().iter().filter(|e| e["message"] == "started") {
            let region = e["region"].as_str().unwrap().to_string();
            let pid = e["pid"].as_i64().unwrap() as i32;
            latest.retain(|(r, _)| *r != region);
            latest.push((region, pid));
        }
        latest
    }

    /// Every child pid the supervisor ever started.
    pub fn all_child_pids(&self) -> Vec<i32> {
        self.events()
            .iter()
            .filter(|e| e["message"] == "started")
            .map(|e| e["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        send_signal(self.pid, sig);
    }

    /// Waits for the supervisor to exit (at most `limit`) and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.status = Some(status);
                // Let the reader threads catch the last lines.
                thread::sleep(Duration::from_millis(50));
                return status;
            }
            if Instant::now() > deadline {
                let out = self.tail(40);
                panic!("supervisor still running after {limit:?}\n{out}\n--- stderr ---\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                // A failed test must not leave its supervisor (and so its children) behind.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill with a pid this test started.
    unsafe { libc::kill(pid, sig) };
}

pub fn exit_code(status: ExitStatus) -> Option<i32> {
    status.code().or_else(|| status.signal().map(|s| 128 + s))
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()).is_some_and(|state| state != 'Z')
        }
        Err(_) => false,
    }
}

/// Waits until none of `pids` is alive, at most `limit`.
pub fn wait_gone(pids: &[i32], limit: Duration) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<i32> = pids.iter().copied().filter(|&p| alive(p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Children of `parent` (from /proc) with their state letter.
pub fn children_of(parent: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            out.push((pid, fields[0].chars().next().unwrap_or('?')));
        }
    }
    out
}

/// A minimal HTTP/1.0 GET on 127.0.0.1, for tests only.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let code = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}

pub fn require_root(test: &str) {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        panic!("{test} needs root (namespaces / setpriv); run the suite as root, as CI does");
    }
}

// ---------------------------------------------------------------------------------------------
// For the chaos tests: following the output as it grows, `/healthz` as data, /proc readings,
// and process handles that stay valid when a pid is reused.

/// One region as `/healthz` reports it.
#[derive(Clone, Debug)]
pub struct RegionHealth {
    pub region: String,
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u64,
}

impl Sup {
    /// Output lines from index `from` on, for a reader that follows the output as it grows.
    pub fn lines_from(&self, from: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.get(from..).map(<[String]>::to_vec).unwrap_or_default()
    }

    /// `/healthz`: its status and each region's entry, in the supervisor's order.
    pub fn health(&self) -> Option<(u16, Vec<RegionHealth>)> {
        let (code, body) = self.get("/healthz")?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let regions = v["regions"]
            .as_array()?
            .iter()
            .map(|r| RegionHealth {
                region: r["region"].as_str().unwrap_or_default().to_string(),
                state: r["state"].as_str().unwrap_or_default().to_string(),
                pid: r["pid"].as_i64().map(|p| p as i32),
                restarts: r["restarts"].as_u64().unwrap_or_default(),
            })
            .collect();
        Some((code, regions))
    }

    /// Whether the supervisor process is still running (it has not exited).
    pub fn running(&mut self) -> bool {
        self.status.is_none() && self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

/// The fields of /proc/PID/stat the tests use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub ppid: i32,
    /// Clock ticks after boot; with the pid, it names one process even across pid reuse.
    pub start_time: u64,
}

pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Open descriptors of `pid` (/proc/PID/fd).
pub fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Threads of `pid` by name (/proc/PID/task/TID/comm; a thread without a name of its own
/// has its creator's).
pub fn thread_names(pid: i32) -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            *names.entry(name.trim_end().to_string()).or_insert(0) += 1;
        }
    }
    names
}

/// A line of /proc/PID/status, e.g. `VmRSS`, without its name.
fn status_field(pid: i32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_string()))
}

/// Resident set size of `pid` in bytes.
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let kib: u64 = status_field(pid, "VmRSS")?.trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Whether `pid` has a handler for `sig` (the SigCgt mask of /proc/PID/status).
pub fn catches(pid: i32, sig: i32) -> bool {
    status_field(pid, "SigCgt")
        .and_then(|mask| u64::from_str_radix(&mask, 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// A pidfd (pidfd_open(2)): it names one process for as long as it is open, so a signal sent
/// through it can never reach a process that took over the pid after a reap.
pub struct Pidfd {
    fd: std::os::fd::OwnedFd,
    pub pid: i32,
}

impl Pidfd {
    /// A handle on `pid` if it is a running (not zombie) child of `parent`.
    pub fn child_of(parent: i32, pid: i32) -> Option<Pidfd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the descriptor was just returned to us and nothing else owns it.
        let handle = Pidfd { fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }, pid };
        let stat = proc_stat(pid)?;
        // Read after the handle was opened, and the process had not exited after the read:
        // so the stat read describes the process the handle names, not a successor.
        let ours = stat.ppid == parent && stat.state != 'Z' && !handle.exited();
        ours.then_some(handle)
    }

    /// Whether the process has terminated (a zombie counts as terminated).
    pub fn exited(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd, without waiting.
        unsafe { libc::poll(&mut p, 1, 0) > 0 }
    }

    /// Sends `sig` if the process has not terminated; true when sent.
    pub fn signal(&self, sig: i32) -> bool {
        use std::os::fd::AsRawFd;
        if self.exited() {
            return false;
        }
        // SAFETY: pidfd_send_signal on our own descriptor, no siginfo, no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        rc == 0
    }
}

// ---------------------------------------------------------------------------------------------
// The SDK test plugin (`tests/fixtures/sdk-plugin`): a Go program served through the same
// stack as the real plugin (grpc-go, connect-go, net/http h2c, zerolog), and its client.

/// Where the SDK test plugin's sources are.
const SDK_PLUGIN_SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sdk-plugin");

/// The SDK test plugin, built with `go build` into `target/sdk-plugin/` the first time a test
/// binary asks, and again only when a source file is newer than the binary. Static
/// (`CGO_ENABLED=0`), so the Docker tests can put it into an image as it is.
pub fn sdk_plugin() -> &'static str {
    static BUILT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_sdk_plugin)
}

fn build_sdk_plugin() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target.join("sdk-plugin/finfocus-sdk-plugin");
    let built = std::fs::metadata(&out).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| newest_source(std::path::Path::new(SDK_PLUGIN_SRC)) <= b) {
        return out.to_string_lossy().into_owned();
    }
    // Build beside the final name and rename, so a concurrent test binary never runs half
    // a file.
    let part = out.with_extension(format!("part{}", std::process::id()));
    let status = Command::new("go")
        .args(["build", "-trimpath", "-o"])
        .arg(&part)
        .arg(".")
        .current_dir(SDK_PLUGIN_SRC)
        .env("CGO_ENABLED", "0")
        .status()
        .expect("the Go toolchain (`go`) to build tests/fixtures/sdk-plugin; scripts/test.sh installs what the tests need");
    assert!(status.success(), "go build of tests/fixtures/sdk-plugin failed: {status}");
    std::fs::rename(&part, &out).expect("rename the SDK plugin into place");
    out.to_string_lossy().into_owned()
}

/// The newest modification time of the module's sources (Go files, go.mod, go.sum).
fn newest_source(dir: &std::path::Path) -> std::time::SystemTime {
    let mut newest = std::time::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).expect("the SDK plugin's sources").flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let time = if meta.is_dir() {
            newest_source(&path)
        } else if name.ends_with(".go") || name == "go.mod" || name == "go.sum" {
            meta.modified().unwrap_or(newest)
        } else {
            continue;
        };
        newest = newest.max(time);
    }
    newest
}

/// A supervisor command over SDK test plugins: `command` with the plugin as every region's
/// child (it takes its port from `FINFOCUS_PLUGIN_PORT`, as the real one does).
pub fn sdk_command(ports: &Ports, env: &[(&str, &str)]) -> Command {
    let plugin = sdk_plugin();
    let mut cmd = command(ports, &[("SUPERVISOR_COMMAND", plugin)]);
    for key in ["FINFOCUS_PLUGIN_WEB_ENABLED", "FINFOCUS_PLUGIN_HEALTH_ENDPOINT", "SUPERVISOR_PROBE"] {
        cmd.env_remove(key);
    }
    for key in [
        "SDK_PLUGIN_HOLD_MEMORY",
        "SDK_PLUGIN_START_DELAY",
        "SDK_PLUGIN_CRASH_AFTER",
        "SDK_PLUGIN_RESPONSE_DELAY",
    ] {
        cmd.env_remove(key);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the SDK's client (`finfocus-sdk-plugin client ARGS`) and returns whether it exited 0
/// and its JSON report.
pub fn sdk_client(args: &[&str]) -> (bool, Value) {
    let out = Command::new(sdk_plugin())
        .arg("client")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the SDK client");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("client {args:?}: no JSON report ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), report)
}

/// The value of one sample of `/metrics` text: the line `name{labels} value` whose labels
/// contain every `want` pair; 0 when there is none.
pub fn sample(metrics: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| want.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
