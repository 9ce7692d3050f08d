//! The shell pieces: the image's entrypoint shim, the size checks a publish workflow calls,
//! and the plugin download script (against a local HTTP server with fake release assets).

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::REGIONS;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output { status, stdout, stderr } = cmd.output().unwrap();
    (status.code(), String::from_utf8_lossy(&stdout).into(), String::from_utf8_lossy(&stderr).into())
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn image_size_warns_above_the_budget_only() {
    let script = root().join("scripts/check-image-size.sh");
    let (code, out, _) = run(Command::new(&script).args(["--bytes", "2300000000"]));
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), "::warning title=Image size::the image is 2.30 GB, above the 2.20 GB budget");
    let (code, out, _) = run(Command::new(&script).args(["--bytes", "1900000000"]));
    assert_eq!((code, out.trim()), (Some(0), "image size ok: the image is 1.90 GB (budget 2.20 GB)"));
    let (code, _, err) = run(Command::new(&script).args(["--bytes", "big"]));
    assert_eq!(code, Some(2), "{err}");
    let (code, _, _) = run(&mut Command::new(&script));
    assert_eq!(code, Some(2));
}

fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

#[test]
fn plugin_sizes_alert_above_240_mb() {
    let script = root().join("scripts/check-plugin-sizes.sh");
    let dir = temp_dir("plugin-sizes");
    sparse(&dir.join("finfocus-plugin-aws-public-us-east-1"), 150_000_000);
    sparse(&dir.join("finfocus-plugin-aws-public-eu-west-1"), 240_000_000);
    let (code, out, _) = run(Command::new(&script).arg(&dir));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("all 2 plugins within the budget"));
    sparse(&dir.join("finfocus-plugin-aws-public-sa-east-1"), 250_000_000);
    let (code, out, err) = run(Command::new(&script).arg(&dir));
    assert_eq!(code, Some(1));
    assert!(out.contains("::error title=Plugin size::finfocus-plugin-aws-public-sa-east-1 is 250.0 MB, above the 240 MB budget"), "{out}");
    assert!(err.contains("1 of 3 plugins above the budget"));
    let empty = temp_dir("plugin-sizes-empty");
    assert_eq!(run(Command::new(&script).arg(&empty)).0, Some(2));
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(empty);
}

#[test]
fn entrypoint_routes_supervisor_words_to_the_supervisor() {
    // The shim execs an absolute path that exists only in the image (the Docker test runs it
    // there); here its pass-through runs for real and its routing table is checked as text.
    let shim = root().join("docker/entrypoint");
    let (code, out, _) = run(Command::new("sh").arg(&shim).args(["echo", "passed", "through"]));
    assert_eq!((code, out.as_str()), (Some(0), "passed through\n"));
    let text = std::fs::read_to_string(&shim).unwrap();
    assert!(text.contains("\"\" | run | healthcheck | regions | help | -*)"));
    assert!(text.contains("exec /usr/local/bin/region-supervisor \"$@\""));
}

/// The regions upstream releases, so fetch-plugins' default: the table less GovCloud.
fn published() -> Vec<&'static str> {
    REGIONS.iter().copied().filter(|r| !r.starts_with("us-gov-")).collect()
}

/// Fake release assets for v9.9.9, linux/amd64, of `regions`: per region a tarball holding a
/// tiny "binary" under goreleaser's name for it (plus README.md and LICENSE), and
/// checksums.txt, where `corrupt`'s line is wrong.
fn fake_release(dir: &Path, regions: &[&str], corrupt: Option<&str>) {
    let rel = dir.join("v9.9.9");
    std::fs::create_dir_all(&rel).unwrap();
    let mut sums = String::new();
    for region in regions {
        let stage = dir.join(format!("stage-{region}"));
        std::fs::create_dir_all(&stage).unwrap();
        let binary = format!("finfocus-plugin-aws-public-{region}");
        std::fs::write(stage.join(&binary), format!("#!/bin/sh\necho {region}\n")).unwrap();
        std::fs::write(stage.join("README.md"), "test release\n").unwrap();
        std::fs::write(stage.join("LICENSE"), "test release\n").unwrap();
        let name = format!("finfocus-plugin-aws-public_9.9.9_Linux_x86_64_{region}.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(rel.join(&name))
            .arg("-C")
            .arg(&stage)
            .args([binary.as_str(), "README.md", "LICENSE"])
            .status()
            .unwrap();
        assert!(status.success());
        let sum = run(Command::new("sha256sum").arg(rel.join(&name))).1;
        let mut hash = sum.split_whitespace().next().unwrap().to_string();
        if Some(*region) == corrupt {
            hash = "0".repeat(64);
        }
        sums.push_str(&format!("{hash}  {name}\n"));
    }
    std::fs::write(rel.join("checksums.txt"), sums).unwrap();
}

/// Serves `dir` on 127.0.0.1:`port` with Python's http.server while `f` runs.
fn serving<T>(dir: &Path, port: u16, f: impl FnOnce() -> T) -> T {
    let mut server = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 for a local file server");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = f();
    let _ = server.kill();
    let _ = server.wait();
    out
}

fn fetch_plugins() -> Command {
    Command::new(root().join("docker/fetch-plugins"))
}

/// fetch-plugins v9.9.9 amd64 DEST [REGIONS] against the server on `port`.
fn fetch(port: u16, dest: &Path, regions: Option<&str>) -> (Option<i32>, String, String) {
    let mut cmd = fetch_plugins();
    cmd.args(["v9.9.9", "amd64"]).arg(dest).env("RELEASE_URL", format!("http://127.0.0.1:{port}"));
    if let Some(regions) = regions {
        cmd.arg(regions);
    }
    run(&mut cmd)
}

/// The regions installed in `dest`, each checked to be its own region's program.
fn installed(dest: &Path) -> Vec<String> {
    let mut regions = Vec::new();
    for entry in std::fs::read_dir(dest).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let region = name.strip_prefix("finfocus-plugin-aws-public-").unwrap().to_string();
        assert_eq!(run(&mut Command::new(&path)).1.trim(), region);
        regions.push(region);
    }
    regions.sort();
    regions
}

fn sorted(regions: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
    v.sort();
    v
}

#[test]
fn fetch_plugins_verifies_every_region() {
    let port = 10_000 + (std::process::id() % 2000) as u16 * 3 + 1;

    // A release with all 12: the default takes the 10 upstream publishes; REGIONS adds GovCloud.
    let dir = temp_dir("release-ok");
    fake_release(&dir, &REGIONS, None);
    let (code, out, err) = serving(&dir, port, || fetch(port, &dir.join("out"), None));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(installed(&dir.join("out")), sorted(&published()));
    let all = REGIONS.join(",");
    let (code, out, err) = serving(&dir, port, || fetch(port, &dir.join("all"), Some(&all)));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(installed(&dir.join("all")), sorted(&REGIONS));

    // Without sa-east-1 and with a wrong checksum for ap-south-1: both named, in one run.
    let bad = temp_dir("release-bad");
    let lacking: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != "sa-east-1").collect();
    fake_release(&bad, &lacking, Some("ap-south-1"));
    let asked = Some("us-east-1,ap-south-1,sa-east-1,us-gov-west-1");
    let (code, _, err) = serving(&bad, port + 1, || fetch(port + 1, &bad.join("out"), asked));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "missing or unverified regions: ap-south-1(checksum mismatch) sa-east-1(not in the release)"
        ),
        "{err}"
    );
    // No release there at all: every asked region named.
    let (code, _, err) = fetch(port + 2, &bad.join("none"), Some("us-east-1,eu-west-1"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("none of the 2 requested regions could be verified: us-east-1 eu-west-1"), "{err}");

    // REGIONS read as SUPERVISOR_REGIONS: unknown names, repeats and an empty list are refused
    // (exit 2), each named, with the valid names.
    let (code, _, err) =
        run(fetch_plugins().args(["v9.9.9", "amd64", "/tmp/x", "us-east-1,us-east-9, us-east-1"]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown region 'us-east-9'") && err.contains("us-east-1 is named twice"), "{err}");
    assert!(err
        .contains(&format!("valid regions (comma-separated, in the order wanted): {}", REGIONS.join(", "))));
    let (code, _, err) = run(fetch_plugins().args(["v9.9.9", "amd64", "/tmp/x", " , "]));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no region named"), "{err}");
    let (code, _, err) = run(fetch_plugins().args(["", "amd64", "/tmp/x"]));
    assert_eq!(code, Some(2), "{err}");
    let (code, _, err) = run(fetch_plugins().args(["v1", "riscv", "/tmp/x"]));
    assert_eq!(code, Some(2), "{err}");

    // --from DIR (the image's PLUGINS_SOURCE=context): the binaries of REGIONS only.
    let from = dir.join("all");
    let (code, out, err) = run(fetch_plugins().arg("--from").arg(&from).args(["amd64"]).arg(dir.join("ctx")));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(installed(&dir.join("ctx")), sorted(&published()));
    let (code, _, err) = run(fetch_plugins()
        .arg("--from")
        .arg(bad.join("none"))
        .args(["amd64"])
        .arg(bad.join("ctx"))
        .arg("us-east-1,us-gov-east-1"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("missing regions: us-east-1(missing) us-gov-east-1(missing)"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(bad);
}
