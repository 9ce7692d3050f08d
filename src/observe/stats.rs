//! A region's request counters, and their Prometheus families.
//!
//! Written by the relay workers of one region (through their connections' observers), read by
//! the HTTP thread that answers `/metrics`. The in-flight gauge and the parse-failure counter
//! are atomics; everything else sits behind one `Mutex` per region, held for a map update per
//! finished request (and for the method lookup of a new RPC path), never across I/O.
//!
//! Method label values are interned: a region keeps at most `MAX_METHODS` distinct values,
//! `other` and `healthz` included; a request names its method by a `Method` index, so no string
//! is allocated per request once a path has been seen.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::grpc::GrpcCode;
use crate::families;

/// Distinct `method` label values per region, `other` and `healthz` included.
pub const MAX_METHODS: usize = 64;
/// Longest `<package>.<Service>/<Method>` kept as a label value; a longer path is `other`.
const MAX_METHOD_LEN: usize = 256;
/// Upper bounds of the duration histogram's buckets, in seconds (`+Inf` follows).
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Http1,
    H2,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 => "h2",
        }
    }
}

/// A `method` label value of one region: an index into its interned names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(u16);

impl Method {
    pub const OTHER: Method = Method(0);
    pub const HEALTHZ: Method = Method(1);
}

/// How one request ended, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub protocol: Protocol,
    pub method: Method,
    /// HTTP status of the final response; 0 when none came.
    pub code: u16,
    pub grpc: Option<GrpcCode>,
    pub duration: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    protocol: Protocol,
    method: Method,
    code: u16,
    grpc: Option<GrpcCode>,
}

#[derive(Clone, Default)]
struct Histogram {
    /// Requests per bucket (not cumulative; the last is `+Inf` only).
    buckets: [u64; BUCKETS.len() + 1],
    sum_nanos: u128,
    count: u64,
}

struct Counters {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, Method>,
    requests: HashMap<RequestKey, u64>,
    durations: HashMap<(Protocol, Method), Histogram>,
}

/// Per-region request counters: written by the relay workers, read by the HTTP server.
pub struct RequestStats {
    health_path: Box<[u8]>,
    in_flight: AtomicI64,
    parse_failures: AtomicU64,
    counters: Mutex<Counters>,
}

impl RequestStats {
    pub fn new(health_path: &str) -> RequestStats {
        let names: Vec<Box<str>> = vec!["other".into(), "healthz".into()];
        RequestStats {
            health_path: health_path.as_bytes().into(),
            in_flight: AtomicI64::new(0),
            parse_failures: AtomicU64::new(0),
            counters: Mutex::new(Counters {
                names,
                index: HashMap::new(),
                requests: HashMap::new(),
                durations: HashMap::new(),
            }),
        }
    }

    fn counters(&self) -> MutexGuard<'_, Counters> {
        // Counters stay consistent whatever a panicking holder did (each update is one map
        // entry), so a poisoned lock is still used.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `method` of a request for `target` (its path, with any query): the health path is
    /// `healthz`, a `/<package>.<Service>/<Method>` path is its name while fewer than
    /// `MAX_METHODS` names are known, anything else `other`.
    pub fn method(&self, target: &[u8]) -> Method {
        let path = match memchr::memchr2(b'?', b'#', target) {
            Some(q) => &target[..q],
            None => target,
        };
        if path == &*self.health_path {
            return Method::HEALTHZ;
        }
        let Some(name) = rpc_name(path) else { return Method::OTHER };
        let mut c = self.counters();
        if let Some(&m) = c.index.get(name) {
            return m;
        }
        if c.names.len() >= MAX_METHODS {
            return Method::OTHER;
        }
        let m = Method(c.names.len() as u16);
        c.names.push(name.into());
        c.index.insert(name.into(), m);
        m
    }

    /// A request started (its first byte was seen).
    pub fn opened(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request opened with `opened` left without being counted (its connection's counting
    /// stopped).
    pub fn abandoned(&self, requests: usize) {
        self.in_flight.fetch_sub(requests as i64, Ordering::Relaxed);
    }

    /// A request opened with `opened` ended.
    pub fn finished(&self, o: Outcome) {
        {
            let mut c = self.counters();
            let key = RequestKey { protocol: o.protocol, method: o.method, code: o.code, grpc: o.grpc };
            *c.requests.entry(key).or_insert(0) += 1;
            let h = c.durations.entry((o.protocol, o.method)).or_default();
            let secs = o.duration.as_secs_f64();
            let bucket = BUCKETS.iter().position(|&le| secs <= le).unwrap_or(BUCKETS.len());
            h.buckets[bucket] += 1;
            h.sum_nanos += o.duration.as_nanos();
            h.count += 1;
        }
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A connection's bytes stopped making sense; its counting stopped.
    pub fn parse_failure(&self) {
        self.parse_failures.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn parse_failures(&self) -> u64 {
        self.parse_failures.load(Ordering::Relaxed)
    }

    /// Every counted series as `(protocol, method, code, grpc_code, count)`, sorted.
    #[cfg(test)]
    pub fn requests(&self) -> Vec<Series> {
        let c = self.counters();
        let mut v: Vec<_> = c
            .requests
            .iter()
            .map(|(k, &n)| {
                let name = c.names[k.method.0 as usize].to_string();
                (k.protocol.as_str(), name, k.code, k.grpc.map_or("", GrpcCode::name), n)
            })
            .collect();
        v.sort();
        v
    }

    /// Requests counted in all, and the durations' count (the two always agree).
    #[cfg(test)]
    pub fn totals(&self) -> (u64, u64) {
        let c = self.counters();
        (c.requests.values().sum(), c.durations.values().map(|h| h.count).sum())
    }
}

/// A connection's last request path and its method: a connection that calls one method again
/// and again finds it without taking the region's lock.
#[derive(Default)]
pub struct MethodCache {
    path: Vec<u8>,
    method: Option<Method>,
}

/// Paths longer than this are looked up each time rather than kept.
const CACHED_PATH: usize = 512;

impl MethodCache {
    pub fn method(&mut self, stats: &RequestStats, target: &[u8]) -> Method {
        match self.method {
            Some(m) if self.path == target => m,
            _ => {
                let m = stats.method(target);
                if target.len() <= CACHED_PATH {
                    self.path.clear();
                    self.path.extend_from_slice(target);
                    self.method = Some(m);
                }
                m
            }
        }
    }
}

/// A counted series in tests: `(protocol, method, code, grpc_code, count)`.
#[cfg(test)]
pub type Series = (&'static str, String, u16, &'static str, u64);

/// `package.Service/Method` of a `/package.Service/Method` path: identifiers joined by dots
/// (at least two: a package is required), a slash, one identifier.
fn rpc_name(path: &[u8]) -> Option<&str> {
    let name = path.strip_prefix(b"/")?;
    if name.len() > MAX_METHOD_LEN {
        return None;
    }
    let slash = memchr::memchr(b'/', name)?;
    let (service, method) = (&name[..slash], &name[slash + 1..]);
    let dots = service.iter().filter(|&&c| c == b'.').count();
    let ok = dots >= 1 && service.split(|&c| c == b'.').all(identifier) && identifier(method);
    // Identifiers are ASCII, so the name is valid UTF-8 and needs no escaping as a label value.
    ok.then(|| std::str::from_utf8(name).ok()).flatten()
}

fn identifier(s: &[u8]) -> bool {
    s.first().is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && s.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// What `write_metrics` reads of one region, copied under its lock so the lock is held briefly.
struct Snapshot {
    names: Vec<Box<str>>,
    requests: Vec<(RequestKey, u64)>,
    durations: Vec<((Protocol, Method), Histogram)>,
    in_flight: i64,
    parse_failures: u64,
}

impl Snapshot {
    fn name(&self, m: Method) -> &str {
        &self.names[m.0 as usize]
    }
}

fn snapshot(stats: &RequestStats) -> Snapshot {
    let mut snap = {
        let c = stats.counters();
        Snapshot {
            names: c.names.clone(),
            requests: c.requests.iter().map(|(k, &n)| (*k, n)).collect(),
            durations: c.durations.iter().map(|(k, h)| (*k, h.clone())).collect(),
            // Relaxed counters can be read mid-update by another thread: never below zero.
            in_flight: stats.in_flight.load(Ordering::Relaxed).max(0),
            parse_failures: stats.parse_failures.load(Ordering::Relaxed),
        }
    };
    let names = std::mem::take(&mut snap.names);
    snap.requests.sort_by(|(a, _), (b, _)| {
        (&names[a.method.0 as usize], a.protocol, a.code, a.grpc).cmp(&(
            &names[b.method.0 as usize],
            b.protocol,
            b.code,
            b.grpc,
        ))
    });
    snap.durations.sort_by(|((pa, ma), _), ((pb, mb), _)| {
        (&names[ma.0 as usize], pa).cmp(&(&names[mb.0 as usize], pb))
    });
    snap.names = names;
    snap
}

/// Writes the request families for all regions, one # HELP/# TYPE per family, region label first.
pub fn write_metrics(regions: &[(&str, &RequestStats)], out: &mut String) {
    let snaps: Vec<(String, Snapshot)> =
        regions.iter().map(|(name, stats)| (escape(name), snapshot(stats))).collect();
    write_requests(&snaps, out);
    write_durations(&snaps, out);
    write_in_flight(&snaps, out);
    write_parse_failures(&snaps, out);
}

/// Writes the `supervisor_region_requests_total` family: every counted series of every region
/// (`snaps`: each region's escaped name and snapshot).
fn write_requests(snaps: &[(String, Snapshot)], out: &mut String) {
    let name = families::REQUESTS.name;
    families::REQUESTS.head(out);
    for (region, s) in snaps {
        for (k, n) in &s.requests {
            let (protocol, method, code, grpc) = (k.protocol, s.name(k.method), k.code, k.grpc);
            let _ = writeln!(
                out,
                "{name}{{region=\"{region}\",protocol=\"{}\",method=\"{method}\",code=\"{code}\",grpc_code=\"{}\"}} {n}",
                protocol.as_str(),
                grpc.map_or("", GrpcCode::name),
            );
        }
    }
}

/// Writes the `supervisor_region_request_duration_seconds` family: a histogram per protocol and
/// method of every region, its buckets cumulative.
fn write_durations(snaps: &[(String, Snapshot)], out: &mut String) {
    let name = families::REQUEST_DURATION.name;
    families::REQUEST_DURATION.head(out);
    for (region, s) in snaps {
        for ((protocol, method), h) in &s.durations {
            let method = s.name(*method);
            let (buckets, sum_nanos, count) = (&h.buckets, h.sum_nanos, h.count);
            let labels =
                format!("region=\"{region}\",protocol=\"{}\",method=\"{method}\"", protocol.as_str());
            let mut cumulative = 0;
            for (i, n) in buckets.iter().enumerate() {
                cumulative += n;
                let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            let sum = sum_nanos as f64 / 1e9;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
    }
}

/// Writes the `supervisor_region_requests_in_flight` family: a gauge per region.
fn write_in_flight(snaps: &[(String, Snapshot)], out: &mut String) {
    let name = families::REQUESTS_IN_FLIGHT.name;
    families::REQUESTS_IN_FLIGHT.head(out);
    for (region, s) in snaps {
        let _ = writeln!(out, "{name}{{region=\"{region}\"}} {}", s.in_flight);
    }
}

/// Writes the `supervisor_region_request_parse_failures_total` family: a counter per region.
fn write_parse_failures(snaps: &[(String, Snapshot)], out: &mut String) {
    let name = families::PARSE_FAILURES.name;
    families::PARSE_FAILURES.head(out);
    for (region, s) in snaps {
        let _ = writeln!(out, "{name}{{region=\"{region}\"}} {}", s.parse_failures);
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(method: Method, code: u16, grpc: Option<GrpcCode>, millis: u64) -> Outcome {
        Outcome { protocol: Protocol::H2, method, code, grpc, duration: Duration::from_millis(millis) }
    }

    #[test]
    fn methods_are_classified_and_capped() {
        let s = RequestStats::new("/healthz");
        assert_eq!(s.method(b"/healthz"), Method::HEALTHZ);
        assert_eq!(s.method(b"/healthz?full=1"), Method::HEALTHZ);
        assert_eq!(s.method(b"/healthzz"), Method::OTHER);
        for other in [
            &b"/"[..],
            b"",
            b"*",
            b"/Service/Method",
            b"/a.B/",
            b"/a.B/C/D",
            b"/a..B/C",
            b"/a.B/C-d",
            b"/1a.B/C",
            b"http://host/a.B/C",
            b"/a.B/\xff",
        ] {
            assert_eq!(s.method(other), Method::OTHER, "{:?}", String::from_utf8_lossy(other));
        }
        let m = s.method(b"/finfocus.v1.CostSourceService/GetProjectedCost");
        assert_eq!(s.method(b"/finfocus.v1.CostSourceService/GetProjectedCost?x"), m);
        assert!(m != Method::OTHER && m != Method::HEALTHZ);
        for i in 0..100 {
            s.method(format!("/pkg.S/M{i}").as_bytes());
        }
        assert_eq!(s.counters().names.len(), MAX_METHODS);
        assert_eq!(s.method(b"/pkg.S/M99"), Method::OTHER);
        assert_ne!(s.method(b"/pkg.S/M5"), Method::OTHER);
        assert_eq!(s.method(b"/finfocus.v1.CostSourceService/GetProjectedCost"), m);
    }

    /// Parses `page` back: every sample as (name, labels, value); HELP and TYPE once each.
    type Sample = (String, Vec<(String, String)>, f64);

    fn parse(page: &str) -> Vec<Sample> {
        // The project's own parser validates the text format as a scrape does.
        crate::exposition::parse_and_relabel(page, "x").expect("valid exposition");
        for kind in ["# HELP ", "# TYPE "] {
            let mut names: Vec<&str> = page
                .lines()
                .filter_map(|l| l.strip_prefix(kind))
                .map(|l| l.split(' ').next().unwrap())
                .collect();
            let n = names.len();
            names.dedup();
            assert_eq!(names.len(), n, "{kind} repeated");
        }
        page.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (name, rest) = l.split_once('{').unwrap();
                let (labels, value) = rest.rsplit_once("} ").unwrap();
                let labels = labels
                    .split("\",")
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").unwrap();
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels, value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn exposition_parses_back_with_cumulative_histograms() {
        let a = RequestStats::new("/healthz");
        let b = RequestStats::new("/healthz");
        let m = a.method(b"/pkg.v1.Svc/Get");
        for (millis, grpc) in
            [(1, Some(GrpcCode::Ok)), (7, Some(GrpcCode::Ok)), (300, Some(GrpcCode::Unavailable))]
        {
            a.opened();
            a.finished(outcome(m, 200, grpc, millis));
        }
        a.opened();
        a.finished(Outcome { protocol: Protocol::Http1, ..outcome(Method::HEALTHZ, 0, None, 9000) });
        b.opened();
        a.opened();
        a.parse_failure();
        let mut page = String::new();
        write_metrics(&[("us-east-1", &a), ("eu-west-1", &b)], &mut page);
        let samples = parse(&page);
        let find = |name: &str, want: &[(&str, &str)]| -> Vec<f64> {
            samples
                .iter()
                .filter(|(n, labels, _)| {
                    n == name && want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|s| s.2)
                .collect()
        };
        for (_, labels, _) in &samples {
            assert_eq!(labels[0].0, "region");
        }
        let ok =
            [("region", "us-east-1"), ("method", "pkg.v1.Svc/Get"), ("grpc_code", "OK"), ("code", "200")];
        assert_eq!(find("supervisor_region_requests_total", &ok), [2.0]);
        assert_eq!(find("supervisor_region_requests_total", &[("grpc_code", "UNAVAILABLE")]), [1.0]);
        assert_eq!(
            find(
                "supervisor_region_requests_total",
                &[("method", "healthz"), ("code", "0"), ("grpc_code", "")]
            ),
            [1.0]
        );
        let h = [("region", "us-east-1"), ("method", "pkg.v1.Svc/Get"), ("protocol", "h2")];
        let buckets = find("supervisor_region_request_duration_seconds_bucket", &h);
        assert_eq!(buckets, [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]);
        assert_eq!(find("supervisor_region_request_duration_seconds_count", &h), [3.0]);
        let sum = find("supervisor_region_request_duration_seconds_sum", &h)[0];
        assert!((sum - 0.308).abs() < 1e-9, "{sum}");
        let slow = find("supervisor_region_request_duration_seconds_bucket", &[("method", "healthz")]);
        assert_eq!(slow, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert!(page.contains("le=\"0.005\"") && page.contains("le=\"2.5\"") && page.contains("le=\"+Inf\""));
        assert_eq!(find("supervisor_region_requests_in_flight", &[("region", "us-east-1")]), [1.0]);
        assert_eq!(find("supervisor_region_requests_in_flight", &[("region", "eu-west-1")]), [1.0]);
        assert_eq!(find("supervisor_region_request_parse_failures_total", &[("region", "us-east-1")]), [1.0]);
        assert_eq!(find("supervisor_region_request_parse_failures_total", &[("region", "eu-west-1")]), [0.0]);
        // Families stay together: every sample of a family sits between its TYPE and the next.
        let order: Vec<&str> = page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).collect();
        assert_eq!(order.len(), 4);
    }

    #[test]
    fn empty_regions_still_write_valid_families() {
        let a = RequestStats::new("/healthz");
        let mut page = String::new();
        write_metrics(&[("us-east-1", &a)], &mut page);
        let samples = parse(&page);
        assert_eq!(samples.len(), 2, "{page}");
        assert_eq!(page.matches("# TYPE ").count(), 4);
    }
}
