//! The HTTP endpoint and the `healthcheck` subcommand, checked with real Prometheus tools.
//! Needs `promtool` and `prometheus` (Debian package `prometheus`; `.ci/run` installs it).

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
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
fn idle_and_slow_clients_do_not_stop_metrics() {
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,eu-west-1")]);
    sup.wait_ready(LIMIT);
    let port = sup.ports.metrics();
    let mut hogs = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        if i % 2 == 0 {
            // Half send a request line and stop in the middle of the headers.
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
        }
        hogs.push(s);
    }
    let t = Instant::now();
    let (code, page) = sup.get("/metrics").unwrap();
    let took = t.elapsed();
    assert_eq!(code, 200);
    assert!(page.contains("supervisor_region_up{region=\"eu-west-1\"} 1"));
    assert!(took < Duration::from_secs(3), "/metrics took {took:?} behind 300 idle clients");
    assert_eq!(sup.get("/healthz").unwrap().0, 200);
    drop(hogs);
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
