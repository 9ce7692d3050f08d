//! The container image in a real Docker engine: built from the real Dockerfile with the local
//! busybox base, the prebuilt static supervisor and stand-in plugins (`dist/amd64`), then run
//! with `--network host` only.
//!
//! Ignored by plain `cargo test` (it needs root, a Docker engine and `scripts/stage-dist.sh`);
//! `.ci/run` prepares all of that and runs `cargo test --test docker -- --ignored`.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

const IMAGE: &str = "region-supervisor:e2e";
const SUPERVISOR_IMAGE: &str = "region-supervisor:e2e-supervisor";
const BASE: &str = "region-supervisor-test/busybox:latest";

fn docker() -> Command {
    let mut cmd = Command::new(std::env::var("DOCKER").unwrap_or_else(|_| "/usr/bin/docker".into()));
    cmd.env("DOCKER_BUILDKIT", "1");
    cmd
}

/// Runs docker with `args`; returns (success, stdout, stderr).
fn d(args: &[&str]) -> (bool, String, String) {
    let out = docker().args(args).stdin(Stdio::null()).output().expect("docker client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, out, err) = d(args);
    assert!(success, "docker {args:?} failed:\n{out}\n{err}");
    out
}

/// Removes the container when the test ends, however it ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = d(&["rm", "-f", &self.0]);
    }
}

/// Builds both images once per test run: the full one and `--target supervisor-image`.
fn build_image() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(build_images);
}

fn build_images() {
    let root = env!("CARGO_MANIFEST_DIR");
    assert!(
        std::path::Path::new(root).join("dist/amd64/region-supervisor").exists(),
        "run scripts/stage-dist.sh first (it builds dist/amd64)"
    );
    if !d(&["image", "inspect", BASE]).0 {
        let status = Command::new(format!("{root}/scripts/docker-test-base.sh")).status().unwrap();
        assert!(status.success(), "docker-test-base.sh failed");
    }
    let base = format!("BASE_IMAGE={BASE}");
    for (target, tag) in [(None, IMAGE), (Some("supervisor-image"), SUPERVISOR_IMAGE)] {
        let mut args = vec!["build", "--network", "host", "--build-arg", &base];
        args.extend(["--build-arg", "SUPERVISOR_SOURCE=context", "--build-arg", "PLUGINS_SOURCE=context"]);
        if let Some(target) = target {
            args.extend(["--target", target]);
        }
        args.extend(["-t", tag, root]);
        ok(&args);
    }
}

/// `GET /healthz` on 127.0.0.2:`port`, where only the relay listens; the whole answer.
fn relayed_get(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.2", port)) else { return "refused".into() };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn health_status(name: &str) -> String {
    ok(&["inspect", "--format", "{{.State.Health.Status}}", name]).trim().to_string()
}

fn wait(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!("timed out waiting for {what}");
}

/// Starts the image with this test's ports and a fast health check. The relay listens on
/// 127.0.0.2, where nothing else does: what answers there came through it.
fn run_container(name: &str, ports: &Ports, children: &Ports, extra: &[&str]) -> Container {
    run_image(IMAGE, name, ports, children, extra)
}

fn run_image(image: &str, name: &str, ports: &Ports, children: &Ports, extra: &[&str]) -> Container {
    let _ = d(&["rm", "-f", name]);
    let base = format!("SUPERVISOR_PORT_BASE={}", ports.base);
    let child_base = format!("SUPERVISOR_CHILD_PORT_BASE={}", children.base);
    let metrics = format!("SUPERVISOR_METRICS_ADDR=127.0.0.1:{}", ports.metrics());
    let mut args = vec![
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "-e",
        &base,
        "-e",
        &child_base,
        "-e",
        "SUPERVISOR_RELAY_ADDR=127.0.0.2",
        "-e",
        &metrics,
        "--health-interval",
        "1s",
        "--health-start-period",
        "30s",
        "--health-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    args.push(image);
    ok(&args);
    Container(name.to_string())
}

#[test]
#[ignore = "needs root, a Docker engine and dist/amd64 (run by .ci/run)"]
fn the_image_runs_twelve_regions_under_docker() {
    build_image();

    // The shim: supervisor flags go to the supervisor, anything else runs as given.
    let version = ok(&["run", "--rm", "--network", "host", IMAGE, "--version"]);
    assert_eq!(version.trim(), format!("region-supervisor {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(ok(&["run", "--rm", "--network", "host", IMAGE, "sh", "-c", "echo ok"]).trim(), "ok");
    let plan = ok(&["run", "--rm", "--network", "host", IMAGE, "regions", "--json"]);
    let plan: Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan[11]["command"][0], "/usr/local/bin/finfocus-plugin-aws-public-us-west-1");
    // Nothing the image promises not to carry.
    let absent = ok(&[
        "run", "--rm", "--network", "host", "--entrypoint", "/bin/sh", IMAGE, "-c",
        "for b in curl bash tini; do if command -v $b >/dev/null; then echo found $b; fi; done; ls /usr/local/bin",
    ]);
    assert!(!absent.contains("found"), "{absent}");
    assert_eq!(
        absent.lines().filter(|l| l.starts_with("finfocus-plugin-aws-public-")).count(),
        12,
        "{absent}"
    );
    let config = ok(&["image", "inspect", "--format", "{{json .Config}}", IMAGE]);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Healthcheck"]["Test"][1], "/usr/local/bin/region-supervisor");
    let exposed = config["ExposedPorts"].as_object().unwrap();
    assert_eq!(exposed.len(), 13, "{exposed:?}");
    assert!(
        exposed.contains_key("8001/tcp")
            && exposed.contains_key("8012/tcp")
            && exposed.contains_key("9090/tcp")
    );

    let ports = Ports::new();
    let children = Ports::new();
    let name = format!("rs-e2e-{}", std::process::id());
    let c = run_container(&name, &ports, &children, &[]);
    wait("Docker's health status healthy", Duration::from_secs(90), || health_status(&c.0) == "healthy");

    let logs = ok(&["logs", &c.0]);
    for (i, region) in REGIONS.iter().enumerate() {
        let line = format!("[{region}] PORT={}", children.base + i as u16);
        assert!(logs.contains(&line), "{line} not in docker logs");
        let answer = relayed_get(ports.base + i as u16);
        assert!(answer.starts_with("HTTP/1.1 200"), "{region} through the relay: {answer:?}");
        assert!(
            std::net::TcpStream::connect(("127.0.0.2", children.base + i as u16)).is_err(),
            "{region}'s plugin listens on 127.0.0.1 only"
        );
    }
    assert_eq!(ok(&["exec", &c.0, "id", "-u"]).trim(), "65532");

    // SIGKILL one plugin inside the container: the supervisor restarts it.
    let (_, health) = http_get(ports.metrics(), "/healthz").unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    let pid = health["regions"][2]["pid"].as_i64().unwrap().to_string();
    ok(&["exec", &c.0, "kill", "-9", &pid]);
    wait("eu-west-1 restarted and ready", Duration::from_secs(30), || {
        http_get(ports.metrics(), "/healthz").is_some_and(|(code, body)| {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            code == 200 && v["regions"][2]["restarts"] == 1
        })
    });

    // Idle relayed connections do not hold up the stop.
    let idle: Vec<_> = (0..500)
        .map(|i| std::net::TcpStream::connect(("127.0.0.2", ports.base + (i % 12) as u16)).unwrap())
        .collect();
    let t = Instant::now();
    ok(&["stop", "--time", "10", &c.0]);
    drop(idle);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &c.0]).trim(), "0");
    let logs = ok(&["logs", &c.0]);
    assert!(logs.contains("\"message\":\"stopped\",\"exit_code\":0"), "no final event");
    drop(c);

    // A read-only root filesystem is enough.
    let ro = run_container(&format!("{name}-ro"), &ports, &children, &["--read-only"]);
    wait("healthy on a read-only root", Duration::from_secs(90), || health_status(&ro.0) == "healthy");
    ok(&["stop", "--time", "10", &ro.0]);
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &ro.0]).trim(), "0");
}

#[test]
#[ignore = "needs root, a Docker engine and dist/amd64 (run by .ci/run)"]
fn the_supervisor_image_runs_children_mounted_at_run_time() {
    build_image();
    // Small: the supervisor and the shim over the base, no plugin.
    let size = |image: &str| {
        ok(&["image", "inspect", "--format", "{{.Size}}", image]).trim().parse::<u64>().unwrap()
    };
    let (full, supervisor, base) = (size(IMAGE), size(SUPERVISOR_IMAGE), size(BASE));
    assert!(supervisor < 100 << 20 && supervisor < full, "{supervisor} bytes (full image {full})");
    assert!(supervisor - base < 8 << 20, "{} bytes over the base", supervisor - base);
    let files = ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        "--entrypoint",
        "/bin/sh",
        SUPERVISOR_IMAGE,
        "-c",
        "ls /usr/local/bin",
    ]);
    assert_eq!(files.split_whitespace().collect::<Vec<_>>(), ["entrypoint", "region-supervisor"], "{files}");
    let config = ok(&["image", "inspect", "--format", "{{json .Config}}", SUPERVISOR_IMAGE]);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"][0], "/usr/local/bin/entrypoint");
    assert_eq!(config["Healthcheck"]["Test"][1], "/usr/local/bin/region-supervisor");
    assert_eq!(config["ExposedPorts"].as_object().unwrap().keys().collect::<Vec<_>>(), ["9090/tcp"]);

    // Without a command of its own it names the program it cannot find and exits 2.
    let out = docker().args(["run", "--rm", "--network", "host", SUPERVISOR_IMAGE]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("/usr/local/bin/finfocus-plugin-aws-public-us-east-1"), "{said}");

    // Children brought in a volume, two regions, reached through the relay; a clean stop.
    let root = env!("CARGO_MANIFEST_DIR");
    let volume = format!("{root}/dist/amd64/plugins:/opt/children:ro");
    let ports = Ports::new();
    let children = Ports::new();
    let name = format!("rs-e2e-supervisor-{}", std::process::id());
    let extra = [
        "-v",
        &volume,
        "-e",
        "SUPERVISOR_REGIONS=us-east-1,eu-west-1",
        "-e",
        "SUPERVISOR_COMMAND=/opt/children/finfocus-plugin-aws-public-{region}",
    ];
    let c = run_image(SUPERVISOR_IMAGE, &name, &ports, &children, &extra);
    wait("Docker's health status healthy", Duration::from_secs(60), || health_status(&c.0) == "healthy");
    for i in [0u16, 2] {
        let answer = relayed_get(ports.base + i);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "region port {} through the relay: {answer:?}",
            ports.base + i
        );
    }
    ok(&["stop", "--time", "10", &c.0]);
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &c.0]).trim(), "0");
}
