//! The relay, driven through the real binary: regions reachable on their ports while the
//! children listen on loopback only, connections held across restarts, bounded hold, no leak,
//! a prompt stop with open connections, and the relay's metrics.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use util::*;

/// A supervisor of `regions` with the relay on `relay_addr` and children on a block of their own.
fn relayed(regions: &str, relay_addr: &str, extra: &[(&str, &str)]) -> (Sup, Ports) {
    let ports = Ports::new();
    let children = Ports::new();
    let child_base = children.base.to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("SUPERVISOR_REGIONS", regions),
        ("SUPERVISOR_RELAY_ADDR", relay_addr),
        ("SUPERVISOR_CHILD_PORT_BASE", &child_base),
    ];
    env.extend_from_slice(extra);
    let cmd = command(&ports, &env);
    (Sup::spawn(cmd, ports), children)
}

/// Waits until a killed child's port refuses connections: its sockets are closed.
fn wait_refused(child_port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect("127.0.0.1", child_port).is_ok() {
        assert!(Instant::now() < deadline, "the child's port still accepts");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn connect(addr: &str, port: u16) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = format!("{addr}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
}

/// One HTTP/1.0-style request: write, half-close, read to the end. Returns the status.
fn get_once(addr: &str, port: u16, path: &str) -> Result<u16, String> {
    let mut s = connect(addr, port).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    answer.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status in {answer:?}"))
}

fn metric(sup: &Sup, name: &str, region: &str) -> Option<f64> {
    let (_, page) = sup.get("/metrics")?;
    let prefix = format!("{name}{{region=\"{region}\"");
    page.lines().find(|l| l.starts_with(&prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn thread_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn regions_are_reachable_through_the_relay_only() {
    let (sup, children) = relayed("us-east-1,eu-west-1", "127.0.0.2", &[]);
    sup.wait_ready(Duration::from_secs(20));
    let port = sup.ports.base; // us-east-1, row 0
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"])
        .arg(format!("http://127.0.0.2:{port}/healthz"))
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "curl through the relay: {out:?}");
    assert_eq!(get_once("127.0.0.2", port + 2, "/healthz"), Ok(200), "eu-west-1 is row 2");
    assert!(connect("127.0.0.1", port).is_err(), "nothing listens on the region port but the relay address");
    assert!(connect("127.0.0.2", children.base).is_err(), "the child listens on 127.0.0.1 only");
    assert_eq!(get_once("127.0.0.1", children.base, "/healthz"), Ok(200), "the child on its own port");

    let (off, _) = relayed("us-east-1", "off", &[]);
    off.wait_ready(Duration::from_secs(20));
    assert!(connect("127.0.0.2", off.ports.base).is_err(), "with the relay off, only the child listens");
    assert_eq!(get_once("127.0.0.1", off.ports.base, "/healthz"), Ok(200));
}

#[test]
fn a_restart_inside_the_hold_time_loses_no_new_connection() {
    let (sup, children) = relayed("us-east-1", "127.0.0.1", &[("SUPERVISOR_RESTART_BACKOFF", "300ms")]);
    sup.wait_ready(Duration::from_secs(20));
    let port = sup.ports.base;
    let pid = sup.child_pids()[0].1;
    let client = std::thread::spawn(move || {
        let mut results = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            let started = Instant::now();
            let result = get_once("127.0.0.1", port, "/healthz").and_then(|c| {
                if c == 200 {
                    Ok(())
                } else {
                    Err(format!("HTTP {c}"))
                }
            });
            results.push((started, result));
            std::thread::sleep(Duration::from_millis(10));
        }
        results
    });
    std::thread::sleep(Duration::from_millis(500));
    send_signal(pid, libc::SIGKILL);
    // The child's sockets close as its last thread dies, a moment after the signal. A
    // connection the kernel queued for it before that ends with it (a reset, as without the
    // relay: an established connection never moves to another child). From the moment its
    // port refuses connections (the restart comes 300ms later), none may fail.
    wait_refused(children.base);
    let killed = Instant::now();
    let results = client.join().unwrap();
    let n = results.len();
    let after: Vec<_> = results
        .iter()
        .filter(|(t, r)| *t >= killed && r.is_err())
        .map(|(t, r)| (format!("{:?} after", t.duration_since(killed)), r))
        .collect();
    let before = results.iter().filter(|(t, r)| *t < killed && r.is_err()).count();
    assert!(
        after.is_empty(),
        "{} of {n} requests after the child's port closed failed: {after:?}",
        after.len()
    );
    // At most the request with the child at the signal and one that reached it while it died.
    assert!(before <= 2, "{before} requests before the child's port closed failed");
    assert!(
        results.iter().filter(|(t, r)| *t >= killed && r.is_ok()).count() >= 20,
        "the test kept going after the kill"
    );
    sup.wait_for("the restart to be counted", Duration::from_secs(10), |s| {
        metric(s, "supervisor_region_restarts_total", "us-east-1") == Some(1.0)
    });
    assert!(metric(&sup, "supervisor_region_relay_connections_total", "us-east-1").unwrap() >= n as f64);
}

#[test]
fn held_connections_close_after_the_hold_time_when_the_region_never_gets_ready() {
    let (sup, _) = relayed(
        "us-east-1",
        "127.0.0.1",
        &[
            ("STANDIN_NEVER_READY", "1"),
            ("SUPERVISOR_RELAY_HOLD", "500ms"),
            ("SUPERVISOR_STARTUP_TIMEOUT", "20s"),
        ],
    );
    sup.wait_for("the region to start", Duration::from_secs(10), |s| !s.child_pids().is_empty());
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect("127.0.0.1", sup.ports.base).unwrap()).collect();
    let started = Instant::now();
    for c in &mut held {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0, "closed with a FIN, nothing sent");
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "held for the hold time, not less ({waited:?})");
    let page = sup.get("/metrics").unwrap().1;
    let line =
        "supervisor_region_relay_rejected_connections_total{region=\"us-east-1\",reason=\"hold_timeout\"} 3";
    assert!(page.contains(line), "{page}");
}

#[test]
fn connections_of_every_kind_leave_nothing_behind() {
    // Kills are part of the mix: restarts soon, and every kill forgiven once the child is up.
    let restarts = [
        ("SUPERVISOR_MAX_RESTARTS", "1000"),
        ("SUPERVISOR_RESTART_BACKOFF", "100ms"),
        ("SUPERVISOR_RESTART_RESET", "100ms"),
    ];
    let (sup, children) = relayed("us-east-1", "127.0.0.1", &restarts);
    sup.wait_ready(Duration::from_secs(20));
    let port = sup.ports.base;
    // Warm up once so lazily created state is there before the baseline.
    get_once("127.0.0.1", port, "/healthz").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (fds, threads) = (fd_count(sup.pid), thread_count(sup.pid));
    let rounds = std::env::var("RELAY_LEAK_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let mut kills = 0;
    for i in 0..rounds {
        if i % 1000 == 999 {
            // The child is killed with requests on the wire; clients that connect while it is
            // away are held, and go away before it is back.
            let mut open: Vec<TcpStream> = (0..3).map(|_| connect("127.0.0.1", port).unwrap()).collect();
            for c in &mut open {
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost").unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
            send_signal(sup.child_pids()[0].1, libc::SIGKILL);
            // Once the child's port is closed (until then a new connection may still reach the
            // dying child and end with it, as without the relay).
            wait_refused(children.base);
            drop((0..3).map(|_| connect("127.0.0.1", port).unwrap()).collect::<Vec<_>>());
            for c in &mut open {
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = c.read(&mut [0u8; 64]);
            }
            kills += 1;
            sup.wait_for("the restart", Duration::from_secs(20), |s| {
                metric(s, "supervisor_region_restarts_total", "us-east-1") == Some(f64::from(kills))
            });
            sup.wait_ready(Duration::from_secs(20));
            continue;
        }
        match i % 4 {
            // A whole request; the child answers and closes (HTTP/1.0).
            0 => assert_eq!(get_once("127.0.0.1", port, "/healthz"), Ok(200)),
            // The client closes first, having sent nothing.
            1 => drop(connect("127.0.0.1", port).unwrap()),
            // The client resets mid-request.
            2 => {
                let mut s = connect("127.0.0.1", port).unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost").unwrap();
                reset(s);
            }
            // The client half-closes without a request: the child closes too.
            _ => {
                let mut s = connect("127.0.0.1", port).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let _ = s.read(&mut [0u8; 64]);
            }
        }
    }
    sup.wait_for("every kill counted as a restart", Duration::from_secs(20), |s| {
        metric(s, "supervisor_region_restarts_total", "us-east-1") == Some(f64::from(kills))
    });
    sup.wait_for("descriptors back at the baseline", Duration::from_secs(40), |s| fd_count(s.pid) <= fds);
    assert_eq!(thread_count(sup.pid), threads);
    sup.wait_for("no active connection", Duration::from_secs(10), |s| {
        metric(s, "supervisor_region_relay_active_connections", "us-east-1") == Some(0.0)
    });
    let ss = Command::new("ss").args(["-tanp", "state", "close-wait"]).output().expect("ss runs");
    let mine = format!("pid={},", sup.pid);
    let text = String::from_utf8_lossy(&ss.stdout);
    assert!(!text.lines().any(|l| l.contains(&mine)), "sockets of the supervisor in CLOSE_WAIT:\n{text}");
}

#[test]
fn a_stop_with_500_open_connections_exits_promptly() {
    let (mut sup, _) = relayed("us-east-1,us-west-2", "127.0.0.1", &[]);
    sup.wait_ready(Duration::from_secs(20));
    let mut open = Vec::new();
    for i in 0..500 {
        let mut s = connect("127.0.0.1", sup.ports.base + (i % 2) as u16).unwrap();
        // A started request keeps the child's side of the connection busy, as a slow client would.
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
        open.push(s);
    }
    sup.wait_for("500 relayed connections", Duration::from_secs(20), |s| {
        let a = metric(s, "supervisor_region_relay_active_connections", "us-east-1").unwrap_or(0.0);
        let b = metric(s, "supervisor_region_relay_active_connections", "us-west-2").unwrap_or(0.0);
        a + b >= 500.0
    });
    let started = Instant::now();
    sup.signal(libc::SIGTERM);
    let status = sup.wait_exit(Duration::from_secs(10));
    assert_eq!(exit_code(status), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "stop took {:?}", started.elapsed());
    drop(open);
}

/// Closes a socket with a reset (SO_LINGER 0).
fn reset(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: setsockopt reads a live linger struct of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(s);
}
