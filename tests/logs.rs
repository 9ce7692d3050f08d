//! Log tagging end to end: many regions writing at once, tricky lines, the json format.

mod util;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use util::*;

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn twelve_regions_spewing_at_once_lose_and_mix_nothing() {
    const N: u64 = 20_000;
    let mut sup = Sup::start(&[("STANDIN_SPEW", "20000")]);
    let expected = |s: &Sup| {
        // Parse only once enough lines have arrived: parsing is the slow part here.
        if (s.lines().len() as u64) < 12 * N {
            return false;
        }
        let per_region = count_spew(&s.lines());
        per_region.len() == 12 && per_region.values().all(|seen| seen.len() as u64 == N)
    };
    sup.wait_for("every spewed line", LIMIT, expected);
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(LIMIT)), Some(0));

    // Exactly once each: no duplicates, no torn or untagged line anywhere.
    let lines = sup.lines();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for line in &lines {
        if let Some((region, seq)) = spew_line(line) {
            seen.entry(region).or_default().push(seq);
            continue;
        }
        let tagged = line.starts_with('[')
            || serde_json::from_str::<Value>(line)
                .is_ok_and(|v| v.get("region").is_some() || v.get("time").is_some());
        assert!(tagged, "untagged or torn line: {line:?}");
    }
    for (region, mut seqs) in seen {
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), n, "{region}: duplicated lines");
        assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "{region}");
    }
}

/// (region, sequence number) of a line of the stand-in's spew, checking its tag.
fn spew_line(line: &str) -> Option<(String, u64)> {
    if let Some(rest) = line.strip_prefix('[') {
        let (region, text) = rest.split_once("] ")?;
        let seq = text.strip_prefix("plain progress line ")?.split(':').next()?.parse().ok()?;
        assert_eq!(seq % 10, 9, "{line}");
        return Some((region.to_string(), seq));
    }
    let v: Value = serde_json::from_str(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    assert!(line.starts_with("{\"region\":\""), "region not first: {line}");
    Some((v["region"].as_str()?.to_string(), seq))
}

fn count_spew(lines: &[String]) -> HashMap<String, Vec<u64>> {
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for (region, seq) in lines.iter().filter_map(|l| spew_line(l)) {
        seen.entry(region).or_default().push(seq);
    }
    seen
}

#[test]
fn tricky_lines_survive_and_do_not_stop_what_follows() {
    let mut sup = Sup::start(&[
        ("SUPERVISOR_REGIONS", "us-east-1"),
        ("SUPERVISOR_MAX_LINE", "4KiB"),
        ("STANDIN_TRICKY_LOGS", "1"),
    ]);
    sup.wait_for("the tricky lines", LIMIT, |s| {
        s.lines().iter().any(|l| l == "[us-east-1] no final newline")
    });
    let lines = sup.lines();
    let has = |want: &str| lines.iter().any(|l| l == want);
    assert!(has("{\"region\":\"us-east-1\"}"), "{{}} line");
    assert!(has("{\"region\":\"us-east-1\",\"level\":\"info\",\"message\":\"own region\"}"));
    assert!(has("{\"region\":\"us-east-1\",\"level\":\"info\",\"exported_region\":\"eu-central-1\",\"message\":\"other region\"}"));
    assert!(has("{\"region\":\"us-east-1\",\"spaced\": true}"));
    assert!(has("[us-east-1] crlf line"));
    assert!(has("[us-east-1] {\"broken\": "));
    assert!(has("[us-east-1] nul \u{0} byte"));
    assert!(lines.iter().any(|l| l.starts_with("[us-east-1] plain ") && l.ends_with(" invalid utf-8")));
    // 100 000 bytes in pieces of at most 4 KiB, then the lines after it.
    let pieces: Vec<_> = lines.iter().filter(|l| l.starts_with("[us-east-1] LLLL")).collect();
    assert_eq!(pieces.len(), 100_000usize.div_ceil(4096));
    assert!(pieces.iter().all(|p| p.len() <= "[us-east-1] ".len() + 4096));
    assert_eq!(pieces.iter().map(|p| p.len() - "[us-east-1] ".len()).sum::<usize>(), 100_000);
    assert!(has("[us-east-1] tricky done"));
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(LIMIT)), Some(0));
}

#[test]
fn json_format_wraps_plain_lines() {
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "sa-east-1"), ("SUPERVISOR_LOG_FORMAT", "json")]);
    sup.wait_ready(LIMIT);
    let line = sup.lines().into_iter().find(|l| l.contains("PORT=")).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["region"], "sa-east-1");
    assert_eq!(v["level"], "info");
    assert_eq!(v["message"], format!("PORT={}", sup.ports.child_base() + 8));
    assert!(line.starts_with("{\"region\":\"sa-east-1\",\"time\":\""), "{line}");
    // Every line of the run is JSON now.
    for l in sup.lines() {
        assert!(serde_json::from_str::<Value>(&l).is_ok(), "{l}");
    }
}

#[test]
fn log_lines_are_counted_per_region() {
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1,us-west-1"), ("STANDIN_SPEW", "us-west-1@500")]);
    sup.wait_ready(LIMIT);
    sup.wait_for("the spew", LIMIT, |s| {
        count_spew(&s.lines()).get("us-west-1").is_some_and(|v| v.len() == 500)
    });
    let (_, metrics) = sup.get("/metrics").unwrap();
    let value = |region: &str| -> u64 {
        let key = format!("supervisor_region_log_lines_total{{region=\"{region}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&key)).unwrap().parse().unwrap()
    };
    let lines_of = |region: &str| -> u64 {
        let tag = format!("[{region}] ");
        let json = format!("{{\"region\":\"{region}\",");
        sup.lines().iter().filter(|l| l.starts_with(&tag) || l.starts_with(&json)).count() as u64
    };
    assert_eq!(value("us-west-1"), lines_of("us-west-1"));
    assert!(value("us-west-1") >= 500);
    assert_eq!(value("us-east-1"), lines_of("us-east-1"));
}

#[test]
fn a_blocked_stdout_stops_neither_restarts_nor_http_nor_signals() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::time::Instant;
    let ports = Ports::new();
    let mut cmd = command(
        &ports,
        &[
            ("SUPERVISOR_REGIONS", "us-east-1,eu-west-1"),
            ("SUPERVISOR_MAX_RESTARTS", "1000"),
            ("SUPERVISOR_SHUTDOWN_GRACE", "1s"),
            ("STANDIN_SPEW", "us-east-1@200000"),
            ("STANDIN_CRASH_AFTER", "eu-west-1@300ms"),
        ],
    );
    // stdout is a pipe nobody reads: it fills after 64 KiB and every write blocks.
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fresh descriptors into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are fresh and owned here.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut child = cmd.stdout(write_end).stderr(std::process::Stdio::null()).spawn().unwrap();
    drop(cmd); // it holds our copy of the write end; the pipe must close when the supervisor ends

    let restarts = |body: &str| -> u64 {
        let v: Value = serde_json::from_str(body).unwrap();
        v["regions"].as_array().unwrap().iter().find(|r| r["region"] == "eu-west-1").unwrap()["restarts"]
            .as_u64()
            .unwrap()
    };
    let deadline = Instant::now() + LIMIT;
    let mut seen = 0;
    while Instant::now() < deadline && seen < 3 {
        if let Some((_, body)) = http_get(ports.metrics(), "/healthz") {
            seen = restarts(&body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen >= 3, "eu-west-1 restarted only {seen} times while stdout was blocked");
    let (code, metrics) = http_get(ports.metrics(), "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("supervisor_region_up{region=\"us-east-1\"}"));

    let t = Instant::now();
    send_signal(child.id() as i32, libc::SIGTERM);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "did not stop while stdout was blocked");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    // What did get through is whole lines. (A child SIGKILLed with its group holds no copy.)
    let mut got = Vec::new();
    let mut reader = std::fs::File::from(read_end);
    std::io::Read::read_to_end(&mut reader, &mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    for line in text.lines() {
        assert!(line.starts_with('{') || line.starts_with('['), "torn line: {line:?}");
    }
}

#[test]
fn a_huge_line_without_newline_keeps_memory_bounded() {
    // 256 MiB here (a debug build); bench/logs.py runs the 1 GiB case on the release build.
    const SIZE: u64 = 256 << 20;
    let sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1"), ("STANDIN_LONG_LINE", &SIZE.to_string())]);
    sup.wait_for("the line after the long one", Duration::from_secs(120), |s| {
        s.lines().iter().rev().take(50).any(|l| l == "[us-east-1] after long line")
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", sup.pid)).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(hwm_kib < 16 * 1024, "peak RSS {hwm_kib} KiB while passing a {SIZE}-byte line");
    let pieces = sup.lines().iter().filter(|l| l.starts_with("[us-east-1] xxxx")).count() as u64;
    assert_eq!(pieces, SIZE.div_ceil(64 * 1024));
}

#[test]
fn stdout_and_stderr_are_framed_separately() {
    let mut sup = Sup::start(&[("SUPERVISOR_REGIONS", "us-east-1"), ("STANDIN_SPLIT_LINES", "1")]);
    // A stderr line written while a stdout line was open stays whole, and so does the line.
    let from_stderr = "{\"region\":\"us-east-1\",\"level\":\"info\",\"message\":\"from stderr\"}";
    sup.wait_for("both halves of the split lines", LIMIT, |s| {
        let lines = s.lines();
        lines.iter().any(|l| l == from_stderr) && lines.iter().any(|l| l == "[us-east-1] partial-rest")
    });
    // A last stdout line without newline, then the stderr lines of the shutdown: the stdout
    // line is flushed on its own when its stream ends, and the stderr lines stay JSON.
    sup.signal(libc::SIGTERM);
    assert_eq!(exit_code(sup.wait_exit(LIMIT)), Some(0));
    let lines = sup.lines();
    assert!(lines.iter().any(|l| l == "[us-east-1] final words"), "{lines:#?}");
    let child_says = |message: &str| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["region"] == "us-east-1" && v["plugin"] == "aws-public" && v["message"] == message)
    };
    assert!(child_says("signal received") && child_says("shutting down"), "{lines:#?}");
    for line in &lines {
        assert!(!line.contains("partial-{") && !line.contains("words{"), "joined: {line:?}");
        assert!(line.starts_with("[us-east-1] ") || serde_json::from_str::<Value>(line).is_ok(), "{line:?}");
    }
}
