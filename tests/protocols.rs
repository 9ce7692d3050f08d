//! Real clients through the relay, and the request metrics they leave. The child is the SDK
//! test plugin (`tests/fixtures/sdk-plugin`: the real plugin's serving stack, grpc-go or
//! connect-go on `net/http` with cleartext HTTP/2) wherever it serves what a test needs: its
//! own client's gRPC, Connect and gRPC-Web calls with known status codes (connect-go and
//! grpc-go clients), also across a SIGKILL of the child; h2load (multiplexed gRPC over h2c);
//! wrk (keep-alive `/healthz`); the bound on method labels. The HTTP/1.1 framings the plugin
//! does not produce on demand (chunked, close-delimited, 1xx, 204, 304, HEAD, chunked uploads,
//! `Expect: 100-continue`, pipelining, HTTP/1.0 keep-alive) come from
//! `tests/fixtures/http1_child.py`, driven by curl and raw sockets. Needs Go (the plugin is built
//! by the first test that asks), Python 3 (standard library only), curl, wrk, h2load and
//! promtool (`scripts/test.sh` installs what it can and names the rest); a missing one fails
//! the test, it is not skipped.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const FRAMING_CHILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/http1_child.py");
const METHOD: &str = "finfocus.v1.CostSourceService/GetProjectedCost";
const ACTUAL: &str = "finfocus.v1.CostSourceService/GetActualCost";
const REGION: &str = "us-east-1";

/// One region (us-east-1) whose child is the SDK test plugin, relayed on 127.0.0.1, ready.
/// `extra` adds to (or overrides) the supervisor's and the plugin's environment.
fn sdk_region(extra: &[(&str, &str)]) -> Sup {
    let ports = Ports::new();
    let mut env = vec![
        ("SUPERVISOR_REGIONS", REGION),
        ("SUPERVISOR_RELAY_ADDR", "127.0.0.1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "30s"),
    ];
    env.extend_from_slice(extra);
    let sup = Sup::spawn(sdk_command(&ports, &env), ports);
    sup.wait_ready(Duration::from_secs(60));
    sup
}

/// One region (us-east-1) whose child is the HTTP/1.1 framing child, relayed on 127.0.0.1.
fn framing_region() -> Sup {
    let command = format!("{FRAMING_CHILD} --port {{port}}");
    let sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", REGION),
        ("SUPERVISOR_COMMAND", command.as_str()),
        ("SUPERVISOR_RELAY_ADDR", "127.0.0.1"),
        ("SUPERVISOR_STARTUP_TIMEOUT", "30s"),
    ]);
    sup.wait_ready(Duration::from_secs(40));
    sup
}

fn target(sup: &Sup) -> String {
    format!("127.0.0.1:{}", sup.ports.base)
}

fn page(sup: &Sup) -> String {
    sup.get("/metrics").expect("/metrics answers").1
}

/// A sample of us-east-1 in a `/metrics` page (0 when absent).
fn region_sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut want = vec![("region", REGION)];
    want.extend_from_slice(labels);
    sample(page, name, &want)
}

fn requests(page: &str, protocol: &str, method: &str, code: &str, grpc: &str) -> f64 {
    let labels = [("protocol", protocol), ("method", method), ("code", code), ("grpc_code", grpc)];
    region_sample(page, "supervisor_region_requests_total", &labels)
}

/// Every request of us-east-1 counted so far, whatever its labels.
fn all_requests(page: &str) -> f64 {
    region_sample(page, "supervisor_region_requests_total", &[])
}

/// (protocol, method, code, grpc_code, how many)
type Count<'a> = (&'a str, &'a str, &'a str, &'a str, f64);

/// Waits (at most 5 s) until the requests counted since the page `before` are exactly `want`,
/// each label set and in all (so nothing else was counted), then asserts it.
fn assert_counted_since(sup: &Sup, before: &str, want: &[Count]) {
    let delta = |now: &str, (p, m, c, g, _): &Count| requests(now, p, m, c, g) - requests(before, p, m, c, g);
    let total: f64 = want.iter().map(|w| w.4).sum();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut now = page(sup);
    while !(want.iter().all(|w| delta(&now, w) == w.4) && all_requests(&now) - all_requests(before) == total)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
        now = page(sup);
    }
    for w in want {
        assert_eq!(delta(&now, w), w.4, "{w:?}\n{now}");
    }
    assert_eq!(all_requests(&now) - all_requests(before), total, "nothing else counted\n{now}");
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

/// `count` calls of the SDK client over `protocol`, each of which must end with `expect`
/// (a connect code name); `args` picks the method and what is sent.
fn calls(sup: &Sup, protocol: &str, count: u32, expect: &str, args: &[&str]) {
    let (target, count_arg) = (target(sup), count.to_string());
    let mut all =
        vec!["--target", &target, "--protocol", protocol, "--count", &count_arg, "--expect", expect];
    all.extend_from_slice(args);
    let (ok, report) = sdk_client(&all);
    assert!(ok && report["codes"][expect] == count, "{protocol} {args:?}: {report}");
}

/// Client arguments the SDK plugin answers with a known code: OK, NotFound (a sku it has no
/// price for), InvalidArgument (no resource), Unimplemented (a method it leaves unimplemented).
const OK: &[&str] = &[];
const NOT_FOUND: &[&str] = &["--sku", "x9.huge"];
const INVALID: &[&str] = &["--empty"];
const UNIMPLEMENTED: &[&str] = &["--method", "GetActualCost"];

/// gRPC over h2c through the relay, counted exactly by method and status: OK, NotFound,
/// InvalidArgument (GetProjectedCost) and Unimplemented (GetActualCost). `web` picks the
/// plugin's server: connect-go on net/http (an error comes as headers, then trailers) or
/// grpc-go alone (an error comes trailers-only, grpc-status in the one HEADERS frame).
fn grpc_calls_are_counted(web: bool, client: &str) {
    let sup = sdk_region(&[("FINFOCUS_PLUGIN_WEB_ENABLED", if web { "true" } else { "false" })]);
    calls(&sup, client, 30, "ok", OK);
    calls(&sup, client, 7, "not_found", NOT_FOUND);
    calls(&sup, client, 5, "invalid_argument", INVALID);
    calls(&sup, client, 4, "unimplemented", UNIMPLEMENTED);
    assert_counted_since(
        &sup,
        "",
        &[
            ("h2", METHOD, "200", "OK", 30.0),
            ("h2", METHOD, "200", "NOT_FOUND", 7.0),
            ("h2", METHOD, "200", "INVALID_ARGUMENT", 5.0),
            ("h2", ACTUAL, "200", "UNIMPLEMENTED", 4.0),
        ],
    );
    let page = page(&sup);
    let durations = |method| {
        let labels = [("protocol", "h2"), ("method", method)];
        region_sample(&page, "supervisor_region_request_duration_seconds_count", &labels)
    };
    assert_eq!(durations(METHOD), 42.0, "{page}");
    assert_eq!(durations(ACTUAL), 4.0, "{page}");
    assert_eq!(region_sample(&page, "supervisor_region_requests_in_flight", &[]), 0.0);
    assert_eq!(region_sample(&page, "supervisor_region_request_parse_failures_total", &[]), 0.0);
    promtool_check(&sup);
}

#[test]
fn grpc_calls_through_the_relay_are_counted_by_method_and_status() {
    grpc_calls_are_counted(true, "grpc");
}

#[test]
fn grpc_go_trailers_only_errors_are_counted_by_method_and_status() {
    grpc_calls_are_counted(false, "grpc-go");
}

/// Connect (proto and JSON) and gRPC-Web over HTTP/1.1, counted exactly: Connect carries its
/// outcome in the HTTP status (`grpc_code` empty), gRPC-Web in the trailer frame (OK) or in
/// the response headers (an error, trailers-only).
#[test]
fn connect_and_grpc_web_calls_are_counted_by_method_and_code() {
    let sup = sdk_region(&[]);
    // (client protocol, then code and grpc_code of OK, NotFound, InvalidArgument, Unimplemented)
    let connect = [("200", ""), ("404", ""), ("400", ""), ("501", "")];
    let web = [("200", "OK"), ("200", "NOT_FOUND"), ("200", "INVALID_ARGUMENT"), ("200", "UNIMPLEMENTED")];
    for (protocol, [ok, not_found, invalid, unimplemented]) in
        [("connect", connect), ("connect-json", connect), ("grpc-web", web)]
    {
        let before = page(&sup);
        calls(&sup, protocol, 6, "ok", OK);
        calls(&sup, protocol, 3, "not_found", NOT_FOUND);
        calls(&sup, protocol, 2, "invalid_argument", INVALID);
        calls(&sup, protocol, 5, "unimplemented", UNIMPLEMENTED);
        assert_counted_since(
            &sup,
            &before,
            &[
                ("http1", METHOD, ok.0, ok.1, 6.0),
                ("http1", METHOD, not_found.0, not_found.1, 3.0),
                ("http1", METHOD, invalid.0, invalid.1, 2.0),
                ("http1", ACTUAL, unimplemented.0, unimplemented.1, 5.0),
            ],
        );
    }
    let page = page(&sup);
    assert_eq!(region_sample(&page, "supervisor_region_requests_in_flight", &[]), 0.0);
    assert_eq!(region_sample(&page, "supervisor_region_request_parse_failures_total", &[]), 0.0);
    promtool_check(&sup);
}

/// A gRPC message (uncompressed, length-prefixed) of `GetProjectedCostRequest` for an EC2
/// instance of `sku`, as protobuf encodes it.
fn projected_cost_message(sku: &str) -> Vec<u8> {
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 128, "one-byte lengths only");
        [&[number << 3 | 2, bytes.len() as u8][..], bytes].concat()
    }
    let resource =
        [field(1, b"aws"), field(2, b"aws:ec2/instance:Instance"), field(3, sku.as_bytes())].concat();
    let request = field(1, &resource);
    [&[0u8][..], &(request.len() as u32).to_be_bytes(), &request].concat()
}

/// h2load: many gRPC calls multiplexed over a few h2c connections, counted exactly, OK and
/// NotFound apart; the plugin's own log lines say it answered each as counted.
#[test]
fn h2load_requests_are_counted_exactly() {
    let sup = sdk_region(&[]);
    let url = format!("http://{}/{METHOD}", target(&sup));
    let dir = std::env::temp_dir();
    for (sku, n) in [("t3.micro", "600"), ("x9.huge", "200")] {
        let body = dir.join(format!("protocols-h2load-{}-{}-{sku}", std::process::id(), sup.ports.base));
        std::fs::write(&body, projected_cost_message(sku)).unwrap();
        let out = Command::new("h2load")
            .args(["-n", n, "-c", "4", "-m", "8"])
            .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
            .arg("-d")
            .arg(&body)
            .arg(&url)
            .output();
        let _ = std::fs::remove_file(&body);
        let out = out.expect("h2load runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains(&format!("{n} succeeded")), "{text}");
    }
    assert_counted_since(
        &sup,
        "",
        &[("h2", METHOD, "200", "OK", 600.0), ("h2", METHOD, "200", "NOT_FOUND", 200.0)],
    );
    let logged = |s: &Sup, what: &str| s.lines().iter().filter(|l| l.contains(what)).count();
    sup.wait_for("the plugin's log of every call", Duration::from_secs(5), |s| {
        logged(s, r#""message":"projected cost priced""#) == 600
            && logged(s, r#""error_code":"NotFound""#) == 200
    });
    assert_eq!(region_sample(&page(&sup), "supervisor_region_request_parse_failures_total", &[]), 0.0);
}

/// The HTTP/1.1 framings the plugin does not produce on demand, from the framing child: each
/// request counted once with its final status, interim 1xx responses not at all.
#[test]
fn http1_framings_are_counted_once_each_with_their_code() {
    let sup = framing_region();
    let base = format!("http://127.0.0.1:{}", sup.ports.base);
    // curl: one keep-alive connection for all of these; /status/103 is an interim 103, then 200.
    let mut curl = Command::new("curl");
    curl.args(["-s", "-w", "%{http_code} "]);
    for path in [
        "/healthz",
        "/status/204",
        "/status/304",
        "/chunked?chunks=5&size=1000",
        "/status/404",
        "/status/103",
    ] {
        curl.args(["-o", "/dev/null", &format!("{base}{path}")]);
    }
    let codes = run(&mut curl);
    assert_eq!(codes.trim(), "200 204 304 200 404 200");
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
    // A body sent only after the child's 100 Continue, then the final 208.
    let code = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "10",
        "--data-binary",
        "hello",
        &format!("{base}/status/208"),
    ]));
    assert_eq!(code, "208");
    // Pipelined on one raw connection, the last one delimited by the close.
    let mut s = TcpStream::connect(("127.0.0.1", sup.ports.base)).unwrap();
    s.write_all(b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\nGET /status/202 HTTP/1.1\r\nHost: x\r\n\r\nGET /close HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.matches("HTTP/1.").count(), 3, "{answer}");
    // HTTP/1.0 keep-alive: the second request goes on the same connection after the first
    // answer, and ends it (no keep-alive asked).
    let mut s = TcpStream::connect(("127.0.0.1", sup.ports.base)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /status/203 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).ends_with("status 203\n") {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after a keep-alive HTTP/1.0 answer: {}", String::from_utf8_lossy(&first));
        first.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&first).contains("connection: keep-alive"));
    s.write_all(b"GET /status/207 HTTP/1.0\r\n\r\n").unwrap();
    let mut second = String::new();
    s.read_to_string(&mut second).unwrap();
    assert!(second.starts_with("HTTP/1.1 207 "), "{second}");

    assert_counted_since(
        &sup,
        "",
        &[
            ("http1", "healthz", "200", "", 1.0),
            ("http1", "other", "204", "", 1.0),
            ("http1", "other", "304", "", 1.0),
            ("http1", "other", "404", "", 1.0),
            ("http1", "other", "201", "", 1.0),
            ("http1", "other", "202", "", 1.0),
            ("http1", "other", "203", "", 1.0),
            ("http1", "other", "207", "", 1.0),
            ("http1", "other", "208", "", 1.0),
            // chunked, after the 103, HEAD, the chunked upload and the close-delimited answer
            ("http1", "other", "200", "", 5.0),
        ],
    );
    let page = page(&sup);
    assert_eq!(region_sample(&page, "supervisor_region_requests_in_flight", &[]), 0.0);
    assert_eq!(region_sample(&page, "supervisor_region_request_parse_failures_total", &[]), 0.0);
}

/// wrk over keep-alive connections on the plugin's `/healthz`, every answer counted.
#[test]
fn wrk_keep_alive_load_is_relayed_and_counted() {
    let sup = sdk_region(&[]);
    let url = format!("http://{}/healthz", target(&sup));
    let out = run(Command::new("wrk").args(["-t1", "-c4", "-d2s", &url]));
    let done: f64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").map(|(n, _)| n.trim().parse().unwrap()))
        .expect("wrk reports its requests");
    assert!(!out.contains("Non-2xx"), "{out}");
    assert!(done > 50.0, "{out}");
    sup.wait_for("wrk's connections to end", Duration::from_secs(10), |s| {
        region_sample(&page(s), "supervisor_region_relay_active_connections", &[]) == 0.0
    });
    // wrk counts the answers it read; a request in flight when it stopped is counted by us
    // too (with code 0 if its answer never came), at most one per connection.
    let page = page(&sup);
    let counted = requests(&page, "http1", "healthz", "200", "");
    let cut = requests(&page, "http1", "healthz", "0", "");
    assert!(counted >= done && counted + cut <= done + 4.0, "wrk {done}, counted {counted} + {cut} cut off");
    assert_eq!(all_requests(&page), counted + cut, "{page}");
}

/// What one SDK client run reported, and when it ran on the test's clock.
struct Run {
    report: Value,
    exit: Option<i32>,
    spawned: Instant,
    ended: Instant,
}

fn client_run(args: Vec<String>) -> Run {
    let spawned = Instant::now();
    let out = Command::new(sdk_plugin()).arg("client").args(&args).output().expect("the SDK client runs");
    let ended = Instant::now();
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    Run { report, exit: out.status.code(), spawned, ended }
}

/// Calls through the relay while the test SIGKILLs the child: connect-go's gRPC over one
/// connection (as finfocus calls) and grpc-go over a new connection per call, one call every
/// 20 ms from each, every call held 20 ms by the plugin so that one is on the wire at the kill.
/// Every call after the restart reaches the new child (through connections the relay holds
/// meanwhile) and succeeds. The failures allowed are the calls caught by the kill, told by the
/// times the client reports: the one on the wire (it was sent, so no gRPC client retries it)
/// and at most one more, sent while the child was dying (on its dying connection, or on a new
/// one the relay passed to the child in the millisecond or two before the kernel closed the
/// child's listener, which then resets it).
#[test]
fn grpc_calls_go_on_across_a_child_restart() {
    let sup = sdk_region(&[("SUPERVISOR_RESTART_BACKOFF", "200ms"), ("SDK_PLUGIN_RESPONSE_DELAY", "20ms")]);
    let pid = sup.child_pids()[0].1;
    let clients: Vec<_> = [&["--protocol", "grpc"][..], &["--protocol", "grpc-go", "--new-connection"]]
        .into_iter()
        .map(|client| {
            let mut args = vec!["--target".to_string(), target(&sup)];
            args.extend(
                ["--duration", "6s", "--interval", "20ms"].iter().chain(client).map(|a| a.to_string()),
            );
            std::thread::spawn(move || client_run(args))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    send_signal(pid, libc::SIGKILL);
    let runs: Vec<Run> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    // A client's clock starts a little after its spawn: by at most what the run took beyond
    // the client's own elapsed time. Beyond that, a failure must be within SLACK_MS of the kill.
    const SLACK_MS: i64 = 250;
    let (mut ok, mut failures) = (0, 0);
    for run in &runs {
        let report = &run.report;
        let failed = report["failures"].as_u64().unwrap();
        assert!(failed <= 2, "{report}");
        assert_eq!(run.exit, Some(if failed == 0 { 0 } else { 1 }), "{report}");
        // About 90 calls before the kill: most of the rest must have been made (and answered).
        assert!(report["codes"]["ok"].as_u64().unwrap() > 150, "{report}");
        let kill_ms = killed.duration_since(run.spawned).as_millis() as i64;
        let late_start_ms =
            run.ended.duration_since(run.spawned).as_millis() as i64 - report["elapsed_ms"].as_i64().unwrap();
        for f in report["failed"].as_array().into_iter().flatten() {
            let (at, took) = (f["at_ms"].as_i64().unwrap(), f["took_ms"].as_i64().unwrap());
            assert!(
                at <= kill_ms + SLACK_MS && at + took + late_start_ms + SLACK_MS >= kill_ms,
                "a failure away from the kill (at {kill_ms} ms, client started up to {late_start_ms} ms late): {report}"
            );
        }
        ok += report["codes"]["ok"].as_u64().unwrap();
        failures += failed;
    }
    sup.wait_for("the restart counted", Duration::from_secs(10), |s| {
        region_sample(&page(s), "supervisor_region_restarts_total", &[]) == 1.0
    });
    // Every answered call counted as answered; a lost one, if its request reached the relay,
    // counted without a gRPC status (its connection ended first).
    sup.wait_for("nothing in flight", Duration::from_secs(5), |s| {
        region_sample(&page(s), "supervisor_region_requests_in_flight", &[]) == 0.0
    });
    let page = page(&sup);
    assert_eq!(requests(&page, "h2", METHOD, "200", "OK"), ok as f64, "{page}");
    let lost = all_requests(&page) - ok as f64;
    let without_status = region_sample(&page, "supervisor_region_requests_total", &[("grpc_code", "")]);
    assert!(lost <= failures as f64 && lost == without_status, "{failures} failed calls\n{page}");
}

/// 70 distinct method paths over HTTP/1.1 (Connect-style, unknown to the plugin: 404) and
/// `/healthz`, one connection: the method label keeps 64 values (`other` and `healthz` among
/// them).
#[test]
fn the_method_label_keeps_at_most_64_values() {
    let sup = sdk_region(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", sup.ports.base)).unwrap();
    let mut all = String::new();
    for i in 0..70 {
        all.push_str(&format!("GET /pkg.Service/Method{i} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    all.push_str("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(all.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert_eq!(answer.matches("HTTP/1.1 404 ").count(), 70, "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200 ").count(), 1, "{answer}");
    sup.wait_for("71 requests counted", Duration::from_secs(5), |s| all_requests(&page(s)) == 71.0);
    let page = page(&sup);
    let mut methods: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("supervisor_region_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    methods.sort_unstable();
    methods.dedup();
    assert_eq!(methods.len(), 64, "{methods:?}");
    assert!(methods.contains(&"other") && methods.contains(&"healthz"));
    assert_eq!(requests(&page, "http1", "healthz", "200", ""), 1.0, "{page}");
}

fn promtool_check(sup: &Sup) {
    let page = page(sup);
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
