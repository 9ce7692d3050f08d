//! The supervisor over the SDK test plugin (`tests/fixtures/sdk-plugin`): a Go program that
//! serves through the same stack as the real plugin (grpc-go, connect-go on `net/http` with
//! cleartext HTTP/2, zerolog) and keeps Go's signal defaults, called by the client finfocus
//! uses (connect-go: Connect, gRPC-Web, gRPC). Twelve of them, as in the default image.
//!
//! Needs the Go toolchain (the plugin is built by the first test that asks, into
//! `target/sdk-plugin/`) and promtool; `scripts/test.sh` installs what the tests need.

mod util;

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const READY: Duration = Duration::from_secs(60);
const EXIT: Duration = Duration::from_secs(15);
const METHOD: &str = "finfocus.v1.CostSourceService/GetProjectedCost";

/// Twelve SDK plugins under a supervisor, ready.
fn twelve(env: &[(&str, &str)]) -> Sup {
    let ports = Ports::new();
    let mut all = vec![("SUPERVISOR_STARTUP_TIMEOUT", "30s")];
    all.extend_from_slice(env);
    let sup = Sup::spawn(sdk_command(&ports, &all), ports);
    sup.wait_ready(READY);
    sup
}

/// A region's port (through the relay) on 127.0.0.2, where only the relay listens.
fn relayed(sup: &Sup, row: usize) -> String {
    format!("127.0.0.2:{}", sup.ports.base + row as u16)
}

fn metrics(sup: &Sup) -> String {
    sup.get("/metrics").expect("/metrics answers").1
}

fn requests(page: &str, region: &str, protocol: &str, code: &str, grpc: &str) -> f64 {
    sample(
        page,
        "supervisor_region_requests_total",
        &[
            ("region", region),
            ("protocol", protocol),
            ("method", METHOD),
            ("code", code),
            ("grpc_code", grpc),
        ],
    )
}

/// `region-supervisor healthcheck` with `sup`'s ports and `env`: its exit code and output.
fn healthcheck(sup: &Sup, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(SUPERVISOR);
    cmd.arg("healthcheck")
        .env("SUPERVISOR_PORT_BASE", sup.ports.base.to_string())
        .env("SUPERVISOR_CHILD_PORT_BASE", sup.ports.child_base().to_string())
        .env("SUPERVISOR_METRICS_ADDR", format!("127.0.0.1:{}", sup.ports.metrics()))
        .env_remove("SUPERVISOR_PROBE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run healthcheck");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first event names the probe in use and why.
fn probe_of(sup: &Sup) -> (String, String) {
    let first = sup.events().into_iter().next().expect("a first event");
    assert_eq!(first["message"], "supervising 12 regions", "{first}");
    (first["probe"].as_str().unwrap().into(), first["probe_reason"].as_str().unwrap().into())
}

/// Every region answers the SDK's own client through the relay on 127.0.0.2, each call reaches
/// that region's plugin, and the plugin itself is not reachable there (it binds 127.0.0.1).
#[test]
fn twelve_sdk_plugins_answer_the_sdk_client_through_the_relay() {
    let mut sup = twelve(&[]);
    assert_eq!(probe_of(&sup).0, "http");
    for (row, region) in REGIONS.iter().enumerate() {
        let (ok, report) =
            sdk_client(&["--target", &relayed(&sup, row), "--protocol", "grpc", "--method", "Name"]);
        assert!(ok, "{region}: {report}");
        assert!(
            report["response"].to_string().contains(region),
            "{region} answered by another plugin: {report}"
        );
        let child_port = sup.ports.child_base() + row as u16;
        assert!(
            TcpStream::connect(("127.0.0.2", child_port)).is_err(),
            "{region}'s plugin listens beyond loopback"
        );
    }
    // The plugin's zerolog lines (stderr) come out tagged, region first, its keys kept.
    let lines = sup.lines();
    let tagged =
        lines.iter().find(|l| l.starts_with(r#"{"region":"ap-south-1","#) && l.contains(r#""plugin_name":"#));
    let tagged = tagged.unwrap_or_else(|| panic!("no tagged zerolog line of ap-south-1:\n{}", sup.tail(40)));
    let v: Value = serde_json::from_str(tagged).unwrap();
    assert!(v.get("plugin_version").is_some() && v.get("time").is_some() && v.get("level").is_some(), "{v}");
    assert!(sup.lines().iter().any(|l| l.starts_with("[ca-central-1] PORT=")), "PORT= on stdout, tagged");
    // SIGTERM: every plugin stops gracefully (Go's handler, exit 0), well within the grace.
    let t = Instant::now();
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
    assert!(t.elapsed() < Duration::from_secs(2), "stopped in {:?}", t.elapsed());
    for region in REGIONS {
        assert_eq!(
            sup.events_matching(region, "exited with status 0").len(),
            1,
            "{region}\n{}",
            sup.tail(30)
        );
    }
}

/// Each protocol the SDK speaks, through the relay, counted exactly per method and code: gRPC
/// over h2c, Connect (proto and JSON) and gRPC-Web over HTTP/1.1; OK and NotFound each.
#[test]
fn every_sdk_protocol_is_counted_by_method_and_code() {
    let sup = twelve(&[]);
    let target = relayed(&sup, 2); // eu-west-1
                                   // (client protocol, observed protocol, code and grpc_code of OK, of NotFound)
    let cases = [
        ("grpc", "h2", ("200", "OK"), ("200", "NOT_FOUND")),
        ("grpc-go", "h2", ("200", "OK"), ("200", "NOT_FOUND")),
        ("connect", "http1", ("200", ""), ("404", "")),
        ("connect-json", "http1", ("200", ""), ("404", "")),
        ("grpc-web", "http1", ("200", "OK"), ("200", "NOT_FOUND")),
    ];
    for (protocol, observed, (ok_code, ok_grpc), (nf_code, nf_grpc)) in cases {
        let before = metrics(&sup);
        let (ok, report) = sdk_client(&["--target", &target, "--protocol", protocol, "--count", "5"]);
        assert!(ok && report["codes"]["ok"] == 5, "{protocol}: {report}");
        let args = [
            "--target",
            &target,
            "--protocol",
            protocol,
            "--count",
            "3",
            "--sku",
            "x9.huge",
            "--expect",
            "not_found",
        ];
        let (ok, report) = sdk_client(&args);
        assert!(ok && report["codes"]["not_found"] == 3, "{protocol}: {report}");
        let delta = |page: &str, code, grpc| {
            requests(page, "eu-west-1", observed, code, grpc)
                - requests(&before, "eu-west-1", observed, code, grpc)
        };
        let mut page = metrics(&sup);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (delta(&page, ok_code, ok_grpc), delta(&page, nf_code, nf_grpc)) != (5.0, 3.0)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
            page = metrics(&sup);
        }
        assert_eq!(
            delta(&page, ok_code, ok_grpc),
            5.0,
            "{protocol}: OK calls as {observed} {ok_code} {ok_grpc:?}"
        );
        assert_eq!(
            delta(&page, nf_code, nf_grpc),
            3.0,
            "{protocol}: NotFound calls as {observed} {nf_code} {nf_grpc:?}"
        );
    }
    let page = metrics(&sup);
    assert_eq!(
        sample(&page, "supervisor_region_request_parse_failures_total", &[("region", "eu-west-1")]),
        0.0
    );
    assert_eq!(
        sample(&page, "supervisor_region_requests_total", &[("region", "us-east-1")]),
        0.0,
        "other regions untouched"
    );
}

/// gRPC-only plugins (`FINFOCUS_PLUGIN_WEB_ENABLED=false`: HTTP/2 only, no `/healthz`) become
/// ready with the default probe, which is then `h2`; `healthcheck` passes through the relay;
/// the SDK's gRPC calls are counted. With `SUPERVISOR_PROBE=http` they never become ready.
#[test]
fn grpc_only_plugins_are_ready_with_the_default_probe() {
    let mut sup = twelve(&[("FINFOCUS_PLUGIN_WEB_ENABLED", "false")]);
    let (probe, why) = probe_of(&sup);
    assert_eq!(probe, "h2");
    assert!(why.contains("FINFOCUS_PLUGIN_WEB_ENABLED=false"), "{why}");
    let (code, text) = healthcheck(&sup, &[("FINFOCUS_PLUGIN_WEB_ENABLED", "false")]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("✓ us-east-1") && text.contains("all 12 regions healthy"), "{text}");
    let target = relayed(&sup, 0);
    let (ok, report) = sdk_client(&["--target", &target, "--protocol", "grpc-go", "--count", "4"]);
    assert!(ok, "{report}");
    // An HTTP/1.1 client gets no answer from a gRPC-only plugin: the web mode really is off.
    let (ok, report) = sdk_client(&["--target", &target, "--protocol", "connect", "--timeout", "2s"]);
    assert!(!ok, "Connect over HTTP/1.1 must fail without web mode: {report}");
    let page = metrics(&sup);
    assert_eq!(requests(&page, "us-east-1", "h2", "200", "OK"), 4.0, "{page}");
    // The h2 probes are not requests: nothing else was counted on the h2 side.
    let h2: f64 =
        sample(&page, "supervisor_region_requests_total", &[("region", "us-east-1"), ("protocol", "h2")]);
    assert_eq!(h2, 4.0);
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));

    let ports = Ports::new();
    let env = [
        ("FINFOCUS_PLUGIN_WEB_ENABLED", "false"),
        ("SUPERVISOR_PROBE", "http"),
        ("SUPERVISOR_REGIONS", "us-east-1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "1s"),
        ("SUPERVISOR_MAX_RESTARTS", "0"),
    ];
    let mut sup = Sup::spawn(sdk_command(&ports, &env), ports);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(1), "an HTTP probe of a gRPC-only plugin never passes");
    let give_up = sup.events_matching("us-east-1", "giving up");
    assert!(give_up.iter().any(|e| e["cause"] == "not ready within 1s"), "{}", sup.tail(20));
}

/// A child port that accepts connections but never answers the HTTP/2 PING is not ready.
#[test]
fn a_port_that_never_answers_the_ping_is_not_ready() {
    let ports = Ports::new();
    // Accepts and reads, never writes: a TCP probe would pass, an h2 one must not.
    let mute = "import os,socket,time\n\
                s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen(16); held=[]\n\
                while True: held.append(s.accept())";
    let env = [
        ("SUPERVISOR_COMMAND", "python3 -c MUTE"),
        ("SUPERVISOR_REGIONS", "us-east-1"),
        ("SUPERVISOR_PROBE", "h2"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "2s"),
        ("SUPERVISOR_MAX_RESTARTS", "0"),
    ];
    let mut cmd = command(&ports, &env);
    // The command template splits on whitespace, so the program comes in by a variable.
    cmd.env("SUPERVISOR_COMMAND", "python3 -c exec(__import__('os').environ['MUTE'])").env("MUTE", mute);
    let mut sup = Sup::spawn(cmd, ports);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(1), "{}", sup.tail(20));
    assert!(!sup.events().iter().any(|e| e["message"] == "ready"), "{}", sup.tail(20));
    let give_up = sup.events_matching("us-east-1", "giving up");
    assert!(give_up.iter().any(|e| e["cause"] == "not ready within 2s"), "{}", sup.tail(20));
}

/// SIGHUP five times over twelve SDK plugins (which SIGHUP would kill): every time a rolling
/// restart, one region at a time; afterwards all ready with new pids, 5 restarts each, no
/// failure. Meanwhile a client opens a new connection every 20 ms and gets every answer, and
/// at no moment is more than one region not ready.
#[test]
fn five_sighups_roll_twelve_plugins_without_a_refused_call() {
    let mut sup = twelve(&[]);
    let first = sup.child_pids();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, port) = (stop.clone(), sup.ports.metrics());
        std::thread::spawn(move || {
            let mut worst = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, body)) = http_get(port, "/healthz") {
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    let regions = v["regions"].as_array().cloned().unwrap_or_default();
                    worst = worst.max(regions.iter().filter(|r| r["state"] != "ready").count());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            worst
        })
    };
    let target = relayed(&sup, 0);
    let client = std::thread::spawn(move || {
        let args = ["--target", &target, "--protocol", "grpc", "--duration", "30s", "--interval", "20ms"];
        sdk_client(&[&args[..], &["--new-connection", "--timeout", "15s"]].concat())
    });
    for n in 1..=5 {
        sup.signal(libc::SIGHUP);
        sup.wait_for(&format!("rolling restart {n} done"), READY, |s| {
            s.events().iter().filter(|e| e["message"] == "rolling restart: done").count() == n
        });
    }
    let (ok, report) = client.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let worst = watcher.join().unwrap();
    assert!(ok && report["failures"] == 0, "every call answered through five rolling restarts: {report}");
    assert!(report["calls"].as_u64().unwrap() > 500, "{report}");
    assert!(worst <= 1, "{worst} regions were not ready at once");
    assert!(sup.running(), "{}", sup.tail(30));
    let (code, health) = sup.health().unwrap();
    assert_eq!(code, 200);
    assert!(health.iter().all(|r| r.state == "ready" && r.restarts == 5), "{health:?}");
    let now = sup.child_pids();
    for (region, pid) in &first {
        assert!(!now.contains(&(region.clone(), *pid)), "{region} kept its pid");
    }
    let lines = sup.lines();
    assert!(!lines.iter().any(|l| l.contains("failure") || l.contains("giving up")), "{}", sup.tail(40));
    assert!(!lines.iter().any(|l| l.contains("killed by SIGHUP")), "a plugin got the SIGHUP");
    let page = metrics(&sup);
    assert_eq!(sample(&page, "supervisor_region_restarts_total", &[("region", "sa-east-1")]), 5.0);
    assert_eq!(
        sample(&page, "supervisor_region_relay_rejected_connections_total", &[("region", "us-east-1")]),
        0.0
    );
}

/// On demand over twelve SDK plugins that hold memory as the real ones do: nothing runs until
/// a region's first connection; that starts exactly its plugin; the region goes idle again
/// after the idle time without connections, and its next connection starts it again.
#[test]
fn on_demand_regions_start_at_their_first_connection_and_stop_when_idle() {
    let ports = Ports::new();
    let env = [
        ("SUPERVISOR_START", "on-demand"),
        ("SUPERVISOR_IDLE_STOP", "2s"),
        ("SDK_PLUGIN_HOLD_MEMORY", "16MiB"),
    ];
    let mut sup = Sup::spawn(sdk_command(&ports, &env), ports);
    sup.wait_ready(READY);
    let (code, health) = sup.health().unwrap();
    assert_eq!(code, 200, "idle regions are healthy");
    assert!(health.iter().all(|r| r.state == "idle" && r.pid.is_none()), "{health:?}");
    assert!(children_of(sup.pid).is_empty(), "no child at start");
    // healthcheck passes and wakes nothing.
    let (code, text) = healthcheck(&sup, &[("SUPERVISOR_START", "on-demand")]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("✓ us-east-1 (") && text.contains(") idle"), "{text}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(children_of(sup.pid).is_empty(), "healthcheck woke a region");

    // A call through the relay starts exactly eu-west-1, and is answered.
    let (ok, report) = sdk_client(&["--target", &relayed(&sup, 2), "--protocol", "grpc", "--method", "Name"]);
    assert!(ok && report["response"].to_string().contains("eu-west-1"), "{report}");
    let started: Vec<Value> = sup.events().into_iter().filter(|e| e["message"] == "started").collect();
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0]["region"], "eu-west-1");
    assert_eq!(sup.events_matching("eu-west-1", "starting on demand").len(), 1);
    let pid = started[0]["pid"].as_i64().unwrap() as i32;
    let rss = rss_bytes(pid).unwrap();
    assert!(rss > 16 << 20, "the plugin holds its memory: {rss}");

    // No connection for the idle time: stopped, idle, counted, not a failure.
    sup.wait_for("eu-west-1 idle again", READY, |s| {
        s.health().is_some_and(|(_, h)| h.iter().any(|r| r.region == "eu-west-1" && r.state == "idle"))
    });
    assert!(wait_gone(&[pid], EXIT).is_empty());
    assert_eq!(sup.events_matching("eu-west-1", "idle: stopping after 2s without connections").len(), 1);
    let page = metrics(&sup);
    assert_eq!(sample(&page, "supervisor_region_idle_stops_total", &[("region", "eu-west-1")]), 1.0);
    assert_eq!(sample(&page, "supervisor_region_restarts_total", &[("region", "eu-west-1")]), 0.0);
    assert_eq!(sample(&page, "supervisor_region_state", &[("region", "eu-west-1"), ("state", "idle")]), 1.0);
    assert_eq!(sample(&page, "supervisor_region_state", &[("region", "eu-west-1"), ("state", "ready")]), 0.0);
    assert_eq!(sample(&page, "supervisor_region_up", &[("region", "eu-west-1")]), 0.0);
    let lines = sup.lines();
    assert!(
        !lines.iter().any(|l| l.contains("failure") || l.contains("\"level\":\"warn\"")),
        "{}",
        sup.tail(30)
    );

    // The next call starts it again.
    let (ok, report) =
        sdk_client(&["--target", &relayed(&sup, 2), "--protocol", "connect", "--method", "Name"]);
    assert!(ok, "{report}");
    assert_eq!(sup.events_matching("eu-west-1", "starting on demand").len(), 2);
    assert_eq!(sup.events().iter().filter(|e| e["message"] == "started").count(), 2, "only eu-west-1, twice");
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
}

/// Fifty connections at once to an idle region start one plugin, and every one is answered.
#[test]
fn a_burst_to_an_idle_region_starts_one_plugin_and_is_answered_whole() {
    let ports = Ports::new();
    let env = [("SUPERVISOR_START", "on-demand"), ("SUPERVISOR_REGIONS", "us-east-1,sa-east-1")];
    let sup = Sup::spawn(sdk_command(&ports, &env), ports);
    sup.wait_ready(READY);
    let port = sup.ports.base;
    let clients: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\r\n").ok()?;
                let mut answer = String::new();
                s.read_to_string(&mut answer).ok()?;
                Some(answer)
            })
        })
        .collect();
    let answers: Vec<Option<String>> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok = answers
        .iter()
        .filter(|a| a.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200") && a.ends_with("ok")))
        .count();
    assert_eq!(ok, 50, "{answers:?}");
    let started: Vec<Value> = sup.events().into_iter().filter(|e| e["message"] == "started").collect();
    assert_eq!(started.len(), 1, "one plugin for the burst: {started:?}");
    assert_eq!(sup.events_matching("us-east-1", "starting on demand").len(), 1);
    let (_, health) = sup.health().unwrap();
    assert_eq!(health.iter().map(|r| r.state.as_str()).collect::<Vec<_>>(), ["ready", "idle"]);
}

/// On demand, a plugin that crashes is a failure like any other: restarted after the backoff,
/// and given up on after the restarts allowed (stand-in children, whose crash knob this is).
#[test]
fn on_demand_failures_follow_the_restart_policy() {
    let env = [
        ("SUPERVISOR_START", "on-demand"),
        ("SUPERVISOR_REGIONS", "us-east-1,eu-west-1"),
        ("SUPERVISOR_MAX_RESTARTS", "2"),
        ("STANDIN_CRASH_AFTER", "us-east-1@300ms"),
    ];
    let mut sup = Sup::start(&env);
    sup.wait_ready(READY);
    assert!(children_of(sup.pid).is_empty());
    let _ = http_get(sup.ports.base, "/healthz");
    assert_eq!(exit_code(sup.wait_exit(Duration::from_secs(30))), Some(1), "{}", sup.tail(30));
    assert_eq!(sup.events_matching("us-east-1", "failure 1 of 2").len(), 1, "{}", sup.tail(30));
    assert_eq!(sup.events_matching("us-east-1", "failure 2 of 2").len(), 1);
    assert_eq!(sup.events_matching("us-east-1", "giving up after 2 restarts").len(), 1);
    assert!(sup.events_matching("eu-west-1", "started").is_empty(), "eu-west-1 stayed idle");
}

/// At a stop, connections that have not carried a byte are closed at once, so the plugins'
/// graceful stop (which waits for them) is not held to the grace; a request in flight still
/// gets its answer.
#[test]
fn a_stop_is_not_held_by_connections_that_sent_nothing() {
    let ports = Ports::new();
    let env = [
        ("SUPERVISOR_REGIONS", "us-east-1,eu-west-1"),
        ("SUPERVISOR_SHUTDOWN_GRACE", "4s"),
        ("SDK_PLUGIN_RESPONSE_DELAY", "700ms"),
    ];
    let mut sup = Sup::spawn(sdk_command(&ports, &env), ports);
    sup.wait_ready(READY);
    let idle: Vec<TcpStream> =
        (0..100).map(|i| TcpStream::connect(("127.0.0.1", sup.ports.base + 2 * (i % 2))).unwrap()).collect();
    sup.wait_for("100 relayed connections", EXIT, |s| {
        let page = s.get("/metrics").map(|m| m.1).unwrap_or_default();
        sample(&page, "supervisor_region_relay_active_connections", &[]) == 100.0
    });
    let target = relayed(&sup, 0);
    let busy = std::thread::spawn(move || sdk_client(&["--target", &target, "--protocol", "connect"]));
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(EXIT)), Some(0));
    let took = t.elapsed();
    let (ok, report) = busy.join().unwrap();
    assert!(ok, "the request in flight is answered: {report}");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}, not held to the grace");
    assert!(!sup.lines().iter().any(|l| l.contains("killing")), "{}", sup.tail(20));
    for region in ["us-east-1", "eu-west-1"] {
        assert_eq!(sup.events_matching(region, "exited with status 0").len(), 1, "{}", sup.tail(20));
    }
    drop(idle);
}
