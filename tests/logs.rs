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
    assert_eq!(v["message"], format!("PORT={}", sup.ports.base + 8));
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
