//! The container image in a real Docker engine, built from the real Dockerfile with the local
//! busybox base and the prebuilt static supervisor (`dist/amd64`), then run with
//! `--network host` only.
//!
//! The full image is built the way a user builds it, through the plugin download path
//! (`PLUGINS_SOURCE=download`), from a fake upstream release (`scripts/fake-release.sh`)
//! served on 127.0.0.1: that path needs no network beyond the build host. The release's
//! tarballs hold the SDK test plugin (`tests/fixtures/sdk-plugin`, served by the plugin SDK's
//! own `Serve` as the real plugin is), built here with Go; while that module does not exist
//! they hold the stand-in `finfocus-standin` instead, and the test says so on stderr. The
//! context path (`PLUGINS_SOURCE=context`) builds from the stand-ins of `dist/amd64/plugins`.
//!
//! Ignored by plain `cargo test` (it needs root, a Docker engine, `scripts/stage-dist.sh` and
//! Go); `.ci/run` prepares all of that and runs `cargo test --test docker -- --ignored`.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// The full image, downloaded from the fake release, with the default `REGIONS`.
const IMAGE: &str = "region-supervisor:e2e";
/// `--target supervisor-image`.
const SUPERVISOR_IMAGE: &str = "region-supervisor:e2e-supervisor";
/// The full image from the build context's stand-ins, with every region of the table.
const CONTEXT_IMAGE: &str = "region-supervisor:e2e-context";
const BASE: &str = "region-supervisor-test/busybox:latest";

/// The fake release: the regions upstream publishes, every checksum right.
const VERSION: &str = "v0.0.0-test";
/// The same regions, but `BAD_REGION`'s line in checksums.txt is wrong.
const BAD_VERSION: &str = "v0.0.0-badsum";
const BAD_REGION: &str = "ap-south-1";
const GOVCLOUD: [&str; 2] = ["us-gov-west-1", "us-gov-east-1"];
/// `SUPERVISOR_SHUTDOWN_GRACE`'s default, which the image keeps.
const GRACE: Duration = Duration::from_secs(4);

/// The regions upstream releases, so the image's default `REGIONS`: the table less GovCloud.
fn published() -> Vec<&'static str> {
    REGIONS.iter().copied().filter(|r| !GOVCLOUD.contains(r)).collect()
}

/// A region's row in the table: its port is the base + this, whichever regions are baked in.
fn row(region: &str) -> u16 {
    REGIONS.iter().position(|r| *r == region).unwrap() as u16
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

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

// --- the fake release ---------------------------------------------------------------------------

/// The programs in the fake release's tarballs, one per architecture, and what they are.
struct ReleaseProgram {
    amd64: PathBuf,
    arm64: PathBuf,
    /// The SDK test plugin (else the stand-in, for both architectures).
    sdk: bool,
}

impl ReleaseProgram {
    fn what(&self) -> &'static str {
        if self.sdk {
            "the SDK test plugin"
        } else {
            "the stand-in"
        }
    }
}

/// The SDK test plugin when its module exists, built here (static, for linux/amd64 and
/// linux/arm64, as upstream releases the real one); else the stand-in that
/// `scripts/stage-dist.sh` staged, so the image's download path is still built and run.
fn release_program() -> &'static ReleaseProgram {
    static PROGRAM: OnceLock<ReleaseProgram> = OnceLock::new();
    PROGRAM.get_or_init(|| {
        let module = root().join("tests/fixtures/sdk-plugin");
        if !module.join("go.mod").exists() {
            eprintln!("docker test: no tests/fixtures/sdk-plugin module: the release holds the stand-in");
            let standin = root().join("dist/amd64/plugins/finfocus-plugin-aws-public-us-east-1");
            return ReleaseProgram { amd64: standin.clone(), arm64: standin, sdk: false };
        }
        let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
        let build = |arch: &str| {
            let out = root().join(format!("target/docker-e2e/sdk-plugin-{arch}"));
            let status = Command::new(&go)
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(&module)
                .env("CGO_ENABLED", "0")
                .env("GOOS", "linux")
                .env("GOARCH", arch)
                .status()
                .unwrap_or_else(|e| panic!("{go} (Go, to build tests/fixtures/sdk-plugin): {e}"));
            assert!(status.success(), "tests/fixtures/sdk-plugin did not build for {arch}");
            out
        };
        ReleaseProgram { amd64: build("amd64"), arm64: build("arm64"), sdk: true }
    })
}

fn sdk_plugin() -> bool {
    release_program().sdk
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Lays out the fake release once per test run: `VERSION` for linux/amd64 and linux/arm64,
/// `BAD_VERSION` for linux/amd64.
fn release_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = root().join("target/docker-e2e/release");
        let _ = std::fs::remove_dir_all(&dir);
        let program = release_program();
        let amd64 = format!("amd64={}", program.amd64.display());
        let arm64 = format!("arm64={}", program.arm64.display());
        for (version, arches, corrupt) in
            [(VERSION, "amd64,arm64", None), (BAD_VERSION, "amd64", Some(BAD_REGION))]
        {
            let mut cmd = Command::new(root().join("scripts/fake-release.sh"));
            cmd.args([
                "make",
                "--version",
                version,
                "--arch",
                arches,
                "--binary",
                &amd64,
                "--binary",
                &arm64,
            ]);
            if let Some(region) = corrupt {
                cmd.args(["--corrupt", region]);
            }
            let status = cmd.arg(&dir).status().expect("scripts/fake-release.sh");
            assert!(status.success(), "scripts/fake-release.sh make {version} failed");
        }
        dir
    })
}

/// The fake release served on 127.0.0.1 while this lives; the server (python3, by the pid we
/// started) is killed when it drops.
struct ReleaseServer {
    child: Child,
    ports: Ports,
    url: String,
}

impl ReleaseServer {
    fn start() -> ReleaseServer {
        let dir = release_dir();
        let ports = Ports::new();
        let port = ports.base.to_string();
        let child = Command::new(root().join("scripts/fake-release.sh"))
            .arg("serve")
            .arg(dir)
            .arg(&port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("scripts/fake-release.sh serve");
        let server = ReleaseServer { child, url: format!("http://127.0.0.1:{port}"), ports };
        let port = server.ports.base;
        let listed = format!("/{VERSION}/checksums.txt");
        wait("the fake release's server", Duration::from_secs(10), || {
            http_get(port, &listed).is_some_and(|(code, _)| code == 200)
        });
        server
    }
}

impl Drop for ReleaseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker build` of the repository with the local base and supervisor and these build args,
/// tagged `tag` (none if empty); returns (success, build log). The log is BuildKit's plain progress, which carries what
/// fetch-plugins printed.
fn build(tag: &str, args: &[&str]) -> (bool, String) {
    build_in(root(), tag, args)
}

fn build_in(context: &Path, tag: &str, args: &[&str]) -> (bool, String) {
    let dockerfile = root().join("Dockerfile");
    let dockerfile = dockerfile.to_str().unwrap();
    let mut all = vec!["build", "--network", "host", "--progress", "plain", "-f", dockerfile];
    let base = format!("BASE_IMAGE={BASE}");
    all.extend(["--build-arg", &base, "--build-arg", "SUPERVISOR_SOURCE=context"]);
    for arg in args {
        all.push(arg);
    }
    if !tag.is_empty() {
        all.extend(["-t", tag]);
    }
    all.push(context.to_str().unwrap());
    let (success, out, err) = d(&all);
    (success, out + &err)
}

/// The line fetch-plugins ends a failure with, as BuildKit shows it.
fn summary(log: &str) -> &str {
    log.lines().rev().find(|l| l.contains("missing or unverified regions:")).unwrap_or("")
}

// --- the images -----------------------------------------------------------------------------------

/// Builds the images once per test run: the full one from the fake release, and
/// `--target supervisor-image`.
fn build_image() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(build_images);
}

fn build_images() {
    assert!(
        root().join("dist/amd64/region-supervisor").exists(),
        "run scripts/stage-dist.sh first (it builds dist/amd64)"
    );
    if !d(&["image", "inspect", BASE]).0 {
        let status = Command::new(root().join("scripts/docker-test-base.sh")).status().unwrap();
        assert!(status.success(), "docker-test-base.sh failed");
    }
    let server = ReleaseServer::start();
    let url = format!("RELEASE_URL={}", server.url);
    let version = format!("VERSION={VERSION}");
    let t = Instant::now();
    // --no-cache: the release may hold another build of the plugin under the same URL.
    let (success, log) = build(
        IMAGE,
        &[
            "--no-cache",
            "--build-arg",
            "PLUGINS_SOURCE=download",
            "--build-arg",
            &url,
            "--build-arg",
            &version,
        ],
    );
    assert!(success, "the image did not build from the fake release:\n{log}");
    eprintln!(
        "docker test: {IMAGE} built from the fake release ({}) in {:?}",
        release_program().what(),
        t.elapsed()
    );
    drop(server);
    let (success, log) = build(SUPERVISOR_IMAGE, &["--target", "supervisor-image"]);
    assert!(success, "the supervisor image did not build:\n{log}");
}

/// `GET /healthz` on `addr`:`port`; the whole answer.
fn get_at(addr: &str, port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect((addr, port)) else { return "refused".into() };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

/// `GET /healthz` on 127.0.0.2:`port`, where only the relay listens; the whole answer.
fn relayed_get(port: u16) -> String {
    get_at("127.0.0.2", port)
}

/// curl on the host, as a client of the published ports would; (exit code, body).
fn curl(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "*"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
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

/// Starts `image` with this test's ports, the relay on `relay` and a fast health check.
fn run_image(
    image: &str,
    name: &str,
    ports: &Ports,
    children: &Ports,
    relay: &str,
    extra: &[&str],
) -> Container {
    let _ = d(&["rm", "-f", name]);
    let base = format!("SUPERVISOR_PORT_BASE={}", ports.base);
    let child_base = format!("SUPERVISOR_CHILD_PORT_BASE={}", children.base);
    let metrics = format!("SUPERVISOR_METRICS_ADDR=127.0.0.1:{}", ports.metrics());
    let relay = format!("SUPERVISOR_RELAY_ADDR={relay}");
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
        &relay,
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

/// What `script` prints, run by the image's /bin/sh in a throwaway container.
fn sh_in(image: &str, script: &str) -> String {
    ok(&["run", "--rm", "--network", "host", "--entrypoint", "/bin/sh", image, "-c", script])
}

/// The plugin programs under /usr/local/bin of `image`, sorted.
fn plugins_in(image: &str) -> Vec<String> {
    let files = sh_in(image, "ls /usr/local/bin");
    files.lines().filter(|l| l.starts_with("finfocus-plugin-aws-public-")).map(String::from).collect()
}

fn sorted_plugin_names(regions: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = regions.iter().map(|r| format!("finfocus-plugin-aws-public-{r}")).collect();
    names.sort();
    names
}

fn env_of(image: &str, key: &str) -> Option<String> {
    let config = ok(&["image", "inspect", "--format", "{{json .Config.Env}}", image]);
    let env: Vec<String> = serde_json::from_str(&config).unwrap();
    env.iter().find_map(|e| e.strip_prefix(&format!("{key}=")).map(String::from))
}

// --- the tests ------------------------------------------------------------------------------------

#[test]
#[ignore = "needs root, a Docker engine, Go and dist/amd64 (run by .ci/run)"]
fn the_download_path_bakes_in_the_published_regions() {
    build_image();
    let published = published();

    // Exactly the released regions, GovCloud absent, and the image says which it holds.
    assert_eq!(plugins_in(IMAGE), sorted_plugin_names(&published));
    assert_eq!(env_of(IMAGE, "SUPERVISOR_REGIONS").as_deref(), Some(published.join(",").as_str()));
    let plan = ok(&["run", "--rm", "--network", "host", IMAGE, "regions", "--json"]);
    let plan: Vec<Value> = serde_json::from_str(&plan).unwrap();
    let planned: Vec<(&str, u64)> =
        plan.iter().map(|p| (p["region"].as_str().unwrap(), p["port"].as_u64().unwrap())).collect();
    let table: Vec<(&str, u64)> = published.iter().map(|r| (*r, 8001 + row(r) as u64)).collect();
    assert_eq!(planned, table, "ports of the table, 8010 and 8011 left out");
    assert_eq!(plan[9]["command"][0], "/usr/local/bin/finfocus-plugin-aws-public-us-west-1");

    // What was installed is what the release's tarballs hold, byte for byte.
    let program = release_program();
    let got = sh_in(IMAGE, "sha256sum /usr/local/bin/finfocus-plugin-aws-public-* | cut -d' ' -f1 | sort -u");
    assert_eq!(got.trim(), sha256(&program.amd64), "every plugin is {}", program.amd64.display());

    // linux/arm64: the same stage, on the build platform, takes upstream's arm64 assets.
    let server = ReleaseServer::start();
    let url = format!("RELEASE_URL={}", server.url);
    let version = format!("VERSION={VERSION}");
    let out = root().join(format!("target/docker-e2e/arm64-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let dest = format!("type=local,dest={}", out.display());
    let (success, log) = build(
        "",
        &["--platform", "linux/arm64", "--target", "plugins", "-o", &dest]
            .into_iter()
            .chain(["--build-arg", "PLUGINS_SOURCE=download", "--build-arg", &url, "--build-arg", &version])
            .collect::<Vec<_>>(),
    );
    drop(server);
    assert!(success, "the arm64 plugins did not build:\n{log}");
    let mut arm64: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(out.join("out/plugins")).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(sha256(&path), sha256(&program.arm64), "{}", path.display());
        if program.sdk {
            let elf = std::fs::read(&path).unwrap();
            assert_eq!(elf[18..20], [0xb7, 0], "{}: not an aarch64 ELF", path.display());
        }
        arm64.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    arm64.sort();
    assert_eq!(arm64, sorted_plugin_names(&published));
    let _ = std::fs::remove_dir_all(&out);
    let label = ok(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"org.opencontainers.image.version\"}}",
        IMAGE,
    ]);
    assert_eq!(label.trim(), VERSION);
}

#[test]
#[ignore = "needs root, a Docker engine, Go and dist/amd64 (run by .ci/run)"]
fn a_build_fails_naming_each_requested_region_the_release_lacks() {
    build_image(); // the base image, dist/ and the release's program exist from here on
    let server = ReleaseServer::start();
    let url = format!("RELEASE_URL={}", server.url);
    let version = format!("VERSION={VERSION}");
    let download = [
        "--build-arg",
        "PLUGINS_SOURCE=download",
        "--build-arg",
        url.as_str(),
        "--build-arg",
        version.as_str(),
    ];

    // GovCloud asked for, not released: both named, the released us-east-1 not.
    let mut args = download.to_vec();
    args.extend(["--build-arg", "REGIONS=us-east-1,us-gov-west-1,us-gov-east-1"]);
    let (success, log) = build("region-supervisor:e2e-fail", &args);
    assert!(!success, "built without the GovCloud regions:\n{log}");
    assert!(
        summary(&log).ends_with("missing or unverified regions: us-gov-west-1(not in the release) us-gov-east-1(not in the release)"),
        "{log}"
    );

    // An unknown name: named, with the valid ones.
    let mut args = download.to_vec();
    args.extend(["--build-arg", "REGIONS=us-east-1,us-gov-central-1"]);
    let (success, log) = build("region-supervisor:e2e-fail", &args);
    assert!(!success, "{log}");
    assert!(log.contains("fetch-plugins: REGIONS: unknown region 'us-gov-central-1'"), "{log}");
    assert!(
        log.contains(&format!(
            "valid regions (comma-separated, in the order wanted): {}",
            REGIONS.join(", ")
        )),
        "{log}"
    );

    // No VERSION with the download source.
    let (success, log) =
        build("region-supervisor:e2e-fail", &["--build-arg", "PLUGINS_SOURCE=download", "--build-arg", &url]);
    assert!(!success, "{log}");
    assert!(log.contains("build arg VERSION (the plugin release, e.g. v0.4.2) is required"), "{log}");
}

#[test]
#[ignore = "needs root, a Docker engine, Go and dist/amd64 (run by .ci/run)"]
fn a_build_fails_naming_the_region_whose_checksum_is_wrong() {
    build_image();
    let server = ReleaseServer::start();
    let url = format!("RELEASE_URL={}", server.url);
    let version = format!("VERSION={BAD_VERSION}");
    let (success, log) = build(
        "region-supervisor:e2e-fail",
        &["--build-arg", "PLUGINS_SOURCE=download", "--build-arg", &url, "--build-arg", &version],
    );
    assert!(!success, "built from a release with a wrong checksum:\n{log}");
    assert!(
        summary(&log).ends_with(&format!("missing or unverified regions: {BAD_REGION}(checksum mismatch)")),
        "{log}"
    );
}

#[test]
#[ignore = "needs root, a Docker engine, Go and dist/amd64 (run by .ci/run)"]
fn the_image_runs_the_published_regions_under_docker() {
    build_image();
    let published = published();

    // The shim: supervisor flags go to the supervisor, anything else runs as given.
    let version = ok(&["run", "--rm", "--network", "host", IMAGE, "--version"]);
    assert_eq!(version.trim(), format!("region-supervisor {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(ok(&["run", "--rm", "--network", "host", IMAGE, "sh", "-c", "echo ok"]).trim(), "ok");
    // Nothing the image promises not to carry.
    let absent =
        sh_in(IMAGE, "for b in curl bash tini; do if command -v $b >/dev/null; then echo found $b; fi; done");
    assert!(!absent.contains("found"), "{absent}");
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

    // The relay on 127.0.0.1, where clients of a published port come in; the plugins on their
    // child ports on 127.0.0.1 too, so 127.0.0.2 tells that they listen nowhere else.
    let ports = Ports::new();
    let children = Ports::new();
    let name = format!("rs-e2e-{}", std::process::id());
    let c = run_image(IMAGE, &name, &ports, &children, "127.0.0.1", &[]);
    wait("Docker's health status healthy", Duration::from_secs(90), || health_status(&c.0) == "healthy");

    let logs = ok(&["logs", &c.0]);
    let (_, health) = http_get(ports.metrics(), "/healthz").unwrap();
    let health: Value = serde_json::from_str(&health).unwrap();
    let in_health: Vec<&str> =
        health["regions"].as_array().unwrap().iter().map(|r| r["region"].as_str().unwrap()).collect();
    assert_eq!(in_health, published);
    for region in &published {
        let (port, child_port) = (ports.base + row(region), children.base + row(region));
        let line = format!("[{region}] PORT={child_port}");
        assert!(logs.contains(&line), "{line} not in docker logs");
        let url = format!("http://127.0.0.1:{port}/healthz");
        let (code, body) = curl(&["-f", &url]);
        assert_eq!(code, Some(0), "{region} through the relay with curl: {body:?}");
        if sdk_plugin() {
            assert_eq!(body, "ok", "{region}: the SDK's /healthz");
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.2", child_port)).is_err(),
            "{region}'s plugin listens on 127.0.0.1 only"
        );
    }
    for region in GOVCLOUD {
        let port = ports.base + row(region);
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "{region} ({port}) is not in the image"
        );
    }
    if sdk_plugin() {
        // The SDK's own RPC path through the relay: Connect unary with JSON, the gRPC health
        // service every SDK plugin serves in web mode (connect's grpchealth, whose JSON names
        // the value SERVING_STATUS_SERVING).
        let url = format!("http://127.0.0.1:{}/grpc.health.v1.Health/Check", ports.base);
        let (code, body) = curl(&["-f", "-H", "Content-Type: application/json", "-d", "{}", &url]);
        assert_eq!(
            (code, body.as_str()),
            (Some(0), r#"{"status":"SERVING_STATUS_SERVING"}"#),
            "Connect health check"
        );
        // The plugins' own JSON log lines, tagged with their region.
        assert!(
            logs.lines().any(|l| l.starts_with(r#"{"region":"us-east-1""#) && l.contains("plugin_name")),
            "{logs}"
        );
    }
    assert_eq!(ok(&["exec", &c.0, "id", "-u"]).trim(), "65532");

    // SIGKILL one plugin inside the container: the supervisor restarts it.
    let pid = health["regions"][2]["pid"].as_i64().unwrap().to_string();
    ok(&["exec", &c.0, "kill", "-9", &pid]);
    wait("eu-west-1 restarted and ready", Duration::from_secs(30), || {
        http_get(ports.metrics(), "/healthz").is_some_and(|(code, body)| {
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            code == 200 && v["regions"][2]["restarts"] == 1
        })
    });

    // docker stop: SIGTERM to the supervisor, which stops every plugin within its grace (4s),
    // idle relayed connections notwithstanding. (The SDK plugin's net/http server waits, at
    // its graceful stop, for connections that have sent no request yet, so with these open
    // the plugins are killed at the grace: the stop takes the grace, never more.)
    let idle: Vec<_> = (0..500)
        .map(|i| {
            let region = published[i % published.len()];
            std::net::TcpStream::connect(("127.0.0.1", ports.base + row(region))).unwrap()
        })
        .collect();
    let t = Instant::now();
    ok(&["stop", "--time", "10", &c.0]);
    drop(idle);
    let took = t.elapsed();
    assert!(took < GRACE + Duration::from_millis(1500), "docker stop took {took:?}");
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &c.0]).trim(), "0");
    let logs = ok(&["logs", &c.0]);
    assert!(logs.contains("\"message\":\"stopped\",\"exit_code\":0"), "no final event");
    eprintln!(
        "docker test: {} regions of {} with 500 idle connections stopped in {took:?}",
        published.len(),
        release_program().what()
    );
    drop(c);

    // A read-only root filesystem is enough. Without connections the plugins stop at once.
    let ro = run_image(IMAGE, &format!("{name}-ro"), &ports, &children, "127.0.0.2", &["--read-only"]);
    wait("healthy on a read-only root", Duration::from_secs(90), || health_status(&ro.0) == "healthy");
    let t = Instant::now();
    ok(&["stop", "--time", "10", &ro.0]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "docker stop took {took:?}");
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &ro.0]).trim(), "0");
    let logs = ok(&["logs", &ro.0]);
    assert!(!logs.contains("killing"), "a plugin did not stop on SIGTERM:\n{logs}");
    eprintln!("docker test: {} regions of {} stopped in {took:?}", published.len(), release_program().what());
}

#[test]
#[ignore = "needs root, a Docker engine, Go and dist/amd64 (run by .ci/run)"]
fn the_context_source_takes_the_regions_asked_for_and_adds_govcloud() {
    build_image();
    // All 12, as an image with the GovCloud regions is built once a release has them.
    let all = format!("REGIONS={}", REGIONS.join(","));
    let (success, log) =
        build(CONTEXT_IMAGE, &["--build-arg", "PLUGINS_SOURCE=context", "--build-arg", &all]);
    assert!(success, "{log}");
    assert_eq!(plugins_in(CONTEXT_IMAGE), sorted_plugin_names(&REGIONS));
    assert_eq!(env_of(CONTEXT_IMAGE, "SUPERVISOR_REGIONS").as_deref(), Some(REGIONS.join(",").as_str()));
    let ports = Ports::new();
    let children = Ports::new();
    let name = format!("rs-e2e-context-{}", std::process::id());
    let c = run_image(CONTEXT_IMAGE, &name, &ports, &children, "127.0.0.2", &[]);
    wait("Docker's health status healthy", Duration::from_secs(90), || health_status(&c.0) == "healthy");
    for region in GOVCLOUD {
        let answer = relayed_get(ports.base + row(region));
        assert!(answer.starts_with("HTTP/1.1 200"), "{region} on its port of the table: {answer:?}");
    }
    ok(&["stop", "--time", "10", &c.0]);
    assert_eq!(ok(&["inspect", "--format", "{{.State.ExitCode}}", &c.0]).trim(), "0");
    drop(c);

    // The default REGIONS from the same staged 12: the published ones only.
    let (success, log) =
        build("region-supervisor:e2e-context-default", &["--build-arg", "PLUGINS_SOURCE=context"]);
    assert!(success, "{log}");
    assert_eq!(plugins_in("region-supervisor:e2e-context-default"), sorted_plugin_names(&published()));
    let _ = d(&["rmi", "region-supervisor:e2e-context-default"]);

    // A context without some asked regions: each named.
    let context = root().join(format!("target/docker-e2e/context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(context.join("dist/amd64/plugins")).unwrap();
    std::fs::create_dir_all(context.join("docker")).unwrap();
    for file in ["docker/entrypoint", "docker/fetch-plugins", "dist/amd64/region-supervisor"] {
        std::fs::copy(root().join(file), context.join(file)).unwrap();
    }
    let standin = "dist/amd64/plugins/finfocus-plugin-aws-public-us-east-1";
    std::fs::copy(root().join(standin), context.join(standin)).unwrap();
    let (success, log) = build_in(
        &context,
        "region-supervisor:e2e-fail",
        &[
            "--build-arg",
            "PLUGINS_SOURCE=context",
            "--build-arg",
            "REGIONS=us-east-1,eu-west-1,us-gov-west-1",
        ],
    );
    let _ = std::fs::remove_dir_all(&context);
    assert!(!success, "{log}");
    assert!(
        log.contains(
            "fetch-plugins: /dist/amd64/plugins: missing regions: eu-west-1(missing) us-gov-west-1(missing)"
        ),
        "{log}"
    );
}

#[test]
#[ignore = "needs root, a Docker engine, Go and dist/amd64 (run by .ci/run)"]
fn the_supervisor_image_runs_children_mounted_at_run_time() {
    build_image();
    // Small: the supervisor and the shim over the base, no plugin.
    let size = |image: &str| {
        ok(&["image", "inspect", "--format", "{{.Size}}", image]).trim().parse::<u64>().unwrap()
    };
    let (full, supervisor, base) = (size(IMAGE), size(SUPERVISOR_IMAGE), size(BASE));
    assert!(supervisor < 100 << 20 && supervisor < full, "{supervisor} bytes (full image {full})");
    assert!(supervisor - base < 8 << 20, "{} bytes over the base", supervisor - base);
    let files = sh_in(SUPERVISOR_IMAGE, "ls /usr/local/bin");
    assert_eq!(files.split_whitespace().collect::<Vec<_>>(), ["entrypoint", "region-supervisor"], "{files}");
    let config = ok(&["image", "inspect", "--format", "{{json .Config}}", SUPERVISOR_IMAGE]);
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"][0], "/usr/local/bin/entrypoint");
    assert_eq!(config["Healthcheck"]["Test"][1], "/usr/local/bin/region-supervisor");
    assert_eq!(config["ExposedPorts"].as_object().unwrap().keys().collect::<Vec<_>>(), ["9090/tcp"]);
    assert_eq!(env_of(SUPERVISOR_IMAGE, "SUPERVISOR_REGIONS"), None, "all regions unless told");

    // Without a command of its own it names the program it cannot find and exits 2.
    let out = docker().args(["run", "--rm", "--network", "host", SUPERVISOR_IMAGE]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("/usr/local/bin/finfocus-plugin-aws-public-us-east-1"), "{said}");

    // Children brought in a volume, two regions, reached through the relay; a clean stop.
    let volume = format!("{}/dist/amd64/plugins:/opt/children:ro", root().display());
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
    let c = run_image(SUPERVISOR_IMAGE, &name, &ports, &children, "127.0.0.2", &extra);
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
