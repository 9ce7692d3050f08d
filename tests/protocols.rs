//! Real clients through the relay, and the request metrics they leave: curl and raw sockets
//! (HTTP/1.1 keep-alive, pipelining, chunked, HEAD, 204, 304, close-delimited), wrk, h2load
//! (HTTP/2 with prior knowledge) and a real gRPC client (grpcio), also across a restart. The
//! children are `tests/fixtures/grpc_child.py`, which serves HTTP/1.1 and gRPC over h2c on one
//! loopback port, as the real plugin does. Needs Python 3 with `h2` and `grpcio`, curl, wrk,
//! h2load and promtool (`.ci/run` installs them); a missing one fails the test, it is not skipped.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use util::*;

const CHILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc_child.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc_client.py");
const METHOD: &str = "finfocus.v1.CostSourceService/GetProjectedCost";

/// A supervisor of `regions` whose children are the gRPC test child, relayed on 127.0.0.1.
fn grpc_regions(regions: &str, extra: &[(&str, &str)]) -> Sup {
    let command = format!("{CHILD} --port {{port}}");
    let mut env = vec![
        ("SUPERVISOR_REGIONS", regions),
        ("SUPERVISOR_COMMAND", command.as_str()),
        ("SUPERVISOR_RELAY_ADDR", "127.0.0.1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "30s"),
    ];
    env.extend_from_slice(extra);
    let sup = Sup::start(&env);
    sup.wait_ready(Duration::from_secs(40));
    sup
}

/// The value of the sample `name{labels}` (labels as written, region first), or 0 when absent.
fn sample(sup: &Sup, name_and_labels: &str) -> f64 {
    let page = sup.get("/metrics").expect("/metrics answers").1;
    page.lines().find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

fn requests(sup: &Sup, protocol: &str, method: &str, code: &str, grpc: &str) -> f64 {
    sample(
        sup,
        &format!(
            "supervisor_region_requests_total{{region=\"us-east-1\",protocol=\"{protocol}\",method=\"{method}\",code=\"{code}\",grpc_code=\"{grpc}\"}}"
        ),
    )
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?} cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn grpc(port: u16, count: u32, status: &str) -> Value {
    let out = run(Command::new(CLIENT).args([
        "--target",
        &format!("127.0.0.1:{port}"),
        "--count",
        &count.to_string(),
        "--status",
        status,
        "--wait-for-ready",
    ]));
    serde_json::from_str(out.trim()).unwrap()
}

#[test]
fn grpc_calls_through_the_relay_are_counted_by_method_and_status() {
    let sup = grpc_regions("us-east-1", &[]);
    let port = sup.ports.base;
    assert_eq!(grpc(port, 30, "OK")["OK"], 30);
    assert_eq!(grpc(port, 7, "NOT_FOUND")["NOT_FOUND"], 7);
    assert_eq!(grpc(port, 5, "UNAVAILABLE")["UNAVAILABLE"], 5);
    sup.wait_for("the calls to be counted", Duration::from_secs(5), |s| {
        requests(s, "h2", METHOD, "200", "OK") == 30.0
    });
    assert_eq!(requests(&sup, "h2", METHOD, "200", "NOT_FOUND"), 7.0);
    assert_eq!(requests(&sup, "h2", METHOD, "200", "UNAVAILABLE"), 5.0);
    let count = sample(
        &sup,
        &format!("supervisor_region_request_duration_seconds_count{{region=\"us-east-1\",protocol=\"h2\",method=\"{METHOD}\"}}"),
    );
    assert_eq!(count, 42.0);
    assert_eq!(sample(&sup, "supervisor_region_requests_in_flight{region=\"us-east-1\"}"), 0.0);
    assert_eq!(sample(&sup, "supervisor_region_request_parse_failures_total{region=\"us-east-1\"}"), 0.0);
    promtool_check(&sup);
}

#[test]
fn h2load_requests_are_counted_exactly() {
    let sup = grpc_regions("us-east-1", &[]);
    let url = format!("http://127.0.0.1:{}/status/200", sup.ports.base);
    let out = run(Command::new("h2load").args(["-n", "600", "-c", "4", "-m", "8", &url]));
    assert!(out.contains("600 succeeded"), "{out}");
    sup.wait_for("600 counted", Duration::from_secs(5), |s| requests(s, "h2", "other", "200", "") == 600.0);
}

#[test]
fn http1_framings_are_counted_once_each_with_their_code() {
    let sup = grpc_regions("us-east-1", &[]);
    let base = format!("http://127.0.0.1:{}", sup.ports.base);
    // curl: one keep-alive connection for all of these.
    let mut curl = Command::new("curl");
    curl.args(["-s", "-w", "%{http_code} "]);
    for path in ["/healthz", "/status/204", "/status/304", "/chunked?chunks=5&size=1000", "/status/404"] {
        curl.args(["-o", "/dev/null", &format!("{base}{path}")]);
    }
    let codes = run(&mut curl);
    assert_eq!(codes.trim(), "200 204 304 200 404");
    run(Command::new("curl").args(["-sI", "-o", "/dev/null", &format!("{base}/status/200")]));
    run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "hello",
        &format!("{base}/echo"),
    ]));
    // Pipelined on one raw connection, the last one delimited by the close.
    let mut s = TcpStream::connect(("127.0.0.1", sup.ports.base)).unwrap();
    s.write_all(b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\nGET /close HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.matches("HTTP/1.").count(), 3, "{answer}");

    sup.wait_for("every request counted", Duration::from_secs(5), |s| {
        requests(s, "http1", "other", "202", "") == 1.0
    });
    for (method, code, n) in [
        ("healthz", "200", 1.0),
        ("other", "204", 1.0),
        ("other", "304", 1.0),
        ("other", "404", 1.0),
        ("other", "201", 1.0),
        ("other", "202", 1.0),
    ] {
        assert_eq!(requests(&sup, "http1", method, code, ""), n, "{method} {code}");
    }
    // chunked, HEAD, the chunked upload and the close-delimited answer: four 200s.
    sup.wait_for("the close-delimited answer counted", Duration::from_secs(5), |s| {
        requests(s, "http1", "other", "200", "") == 4.0
    });
    assert_eq!(sample(&sup, "supervisor_region_request_parse_failures_total{region=\"us-east-1\"}"), 0.0);
}

#[test]
fn wrk_keep_alive_load_is_relayed_and_counted() {
    let sup = grpc_regions("us-east-1", &[]);
    let url = format!("http://127.0.0.1:{}/healthz", sup.ports.base);
    let out = run(Command::new("wrk").args(["-t1", "-c4", "-d2s", &url]));
    let done: f64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse().unwrap()))
        .expect("wrk reports its requests");
    assert!(!out.contains("Non-2xx"), "{out}");
    assert!(done > 50.0, "{out}");
    sup.wait_for("wrk's connections to end", Duration::from_secs(10), |s| {
        sample(s, "supervisor_region_relay_active_connections{region=\"us-east-1\"}") == 0.0
    });
    // wrk counts the answers it read; a request in flight when it stopped is counted by us
    // too (with code 0 if its answer never came), at most one per connection.
    let counted = requests(&sup, "http1", "healthz", "200", "");
    let cut = requests(&sup, "http1", "healthz", "0", "");
    assert!(counted >= done && counted + cut <= done + 4.0, "wrk {done}, counted {counted} + {cut} cut off");
}

#[test]
fn grpc_calls_go_on_across_a_child_restart() {
    let sup = grpc_regions("us-east-1", &[("SUPERVISOR_RESTART_BACKOFF", "200ms")]);
    let port = sup.ports.base;
    let pid = sup.child_pids()[0].1;
    let client = std::thread::spawn(move || {
        let args = ["--target", &format!("127.0.0.1:{port}"), "--duration", "6", "--interval-ms", "20"];
        Command::new(CLIENT).args(args).output().expect("the gRPC client runs")
    });
    std::thread::sleep(Duration::from_secs(2));
    send_signal(pid, libc::SIGKILL);
    let out = client.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    // The one call on the wire when the child died may fail (it was sent, so gRPC does not retry
    // it; the client then exits 1); every later call waits for the new child through the held
    // connection and succeeds.
    let failures = report["failures"].as_u64().unwrap();
    assert!(failures <= 1, "{report}");
    assert_eq!(out.status.code(), Some(if failures == 0 { 0 } else { 1 }), "{report}");
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    sup.wait_for("the restart counted", Duration::from_secs(10), |s| {
        sample(s, "supervisor_region_restarts_total{region=\"us-east-1\"}") == 1.0
    });
}

#[test]
fn the_method_label_keeps_at_most_64_values() {
    let sup = grpc_regions("us-east-1", &[]);
    let port = sup.ports.base;
    // 70 distinct methods over HTTP/1.1 (Connect-style paths), one request each, one connection.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut all = String::new();
    for i in 0..70 {
        all.push_str(&format!("GET /pkg.Service/Method{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    all.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(all.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    sup.wait_for("71 requests counted", Duration::from_secs(5), |s| {
        let page = s.get("/metrics").unwrap().1;
        let total: f64 = page
            .lines()
            .filter(|l| l.starts_with("supervisor_region_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        total == 71.0
    });
    let page = sup.get("/metrics").unwrap().1;
    let mut methods: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("supervisor_region_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    methods.sort_unstable();
    methods.dedup();
    assert_eq!(methods.len(), 64, "{methods:?}");
    assert!(methods.contains(&"other") && methods.contains(&"healthz"));
}

fn promtool_check(sup: &Sup) {
    let page = sup.get("/metrics").unwrap().1;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool check metrics:\n{text}\n{page}");
    assert!(page.contains("supervisor_region_request_duration_seconds_bucket{"), "{page}");
}
