//! The request head, judged from what has arrived so far: complete and acceptable, not yet
//! complete, or refused with a status. Pure functions, called by the front thread on the bytes
//! it peeks at and by the forwarders on the head they read.
//!
//! Strict on purpose, because whatever passes goes on to tiny_http: exactly
//! `method SP target SP HTTP/1.x CRLF`, header lines `name: value CRLF` of ASCII without
//! control bytes, no line folding, and a blank line at the end. Every byte is checked as it
//! arrives, so random bytes and other protocols are refused after their first line (or their
//! first byte), not after a timeout.

/// Longest request head, request line and final blank line included.
pub const HEAD_LIMIT: usize = 64 * 1024;
/// Most header lines in one head (tiny_http keeps each as an object of its own).
pub const MAX_HEADERS: usize = 100;

/// Longest method and version tokens worth reading.
const METHOD_LIMIT: usize = 32;
const VERSION_LIMIT: usize = 8;

/// Paths answered from the view alone: small, fast answers with a lane of their own.
const HEALTH_PATHS: [&str; 3] = ["/healthz", "/readyz", "/livez"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// `/healthz`, `/readyz`, `/livez`.
    Health,
    /// Everything else (`/metrics` scrapes every child and can take seconds).
    Other,
}

/// What a complete, acceptable head says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, up to and including its blank line.
    pub len: usize,
    /// HTTP/1.1 without `Connection: close`: the client may send another request.
    pub keep_alive: bool,
    pub lane: Lane,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A valid beginning; more bytes are needed.
    Partial,
    Complete(Head),
    Refused(Refusal),
}

/// Why the front answers a request itself and closes the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 400: not an HTTP/1.x request head.
    Malformed,
    /// 408: the head did not arrive in time.
    Timeout,
    /// 413: the request has a body; this endpoint serves only GET and HEAD.
    Body,
    /// 431: the head is over `HEAD_LIMIT` or has more than `MAX_HEADERS` lines.
    TooLarge,
    /// 505: HTTP/2 (its preface is `PRI * HTTP/2.0`), HTTP/0.9 or any version above 1.1.
    Version,
    /// 503: descriptors are short right now, or the answer did not come in time.
    Unavailable,
}

impl Refusal {
    fn status(self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::Malformed => (400, "Bad Request", "bad request"),
            Refusal::Timeout => (408, "Request Timeout", "request timeout"),
            Refusal::Body => (413, "Content Too Large", "request bodies are refused"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large", "request head too large"),
            Refusal::Version => (505, "HTTP Version Not Supported", "only HTTP/1.0 and 1.1"),
            Refusal::Unavailable => (503, "Service Unavailable", "busy, try again shortly"),
        }
    }

    /// The whole response: status line, headers and a one-line body.
    pub fn response(self) -> String {
        let (code, reason, body) = self.status();
        format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
            body.len() + 1
        )
    }
}

/// Where the byte walk is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum At {
    Method,
    Target,
    Version,
    /// After the request line's CR.
    LineCr,
    /// At the start of a header line (or of the blank line).
    LineStart,
    Name,
    Value,
    /// After a header line's CR.
    HeaderCr,
    /// After the blank line's CR.
    EndCr,
}

/// Judges `bytes`, the beginning of what a client sent on a connection (it may hold more than
/// one request: only the first head counts). `bytes` holds at most `HEAD_LIMIT` bytes; a head
/// that has not ended within them is too large.
pub fn judge(bytes: &[u8]) -> Verdict {
    let bytes = &bytes[..bytes.len().min(HEAD_LIMIT)];
    let (mut at, mut start, mut headers) = (At::Method, 0, 0);
    for (i, &b) in bytes.iter().enumerate() {
        let len = i - start;
        at = match (at, b) {
            (At::Method, b' ') if len > 0 => new_part(At::Target, &mut start, i),
            (At::Method, b) if is_token(b) && len < METHOD_LIMIT => At::Method,
            (At::Target, b' ') if len > 0 => new_part(At::Version, &mut start, i),
            (At::Target, 0x21..=0x7e) => At::Target,
            (At::Version, b'\r') => match version(&bytes[start..i]) {
                Some((1, Some(0 | 1))) => At::LineCr,
                Some((1, None)) | None => return Verdict::Refused(Refusal::Malformed),
                Some(_) => return Verdict::Refused(Refusal::Version),
            },
            (At::Version, _) if len < VERSION_LIMIT && version_prefix(&bytes[start..=i]) => At::Version,
            (At::LineCr | At::HeaderCr, b'\n') => At::LineStart,
            (At::LineStart, b'\r') => At::EndCr,
            (At::LineStart, b) if is_token(b) => {
                headers += 1;
                if headers > MAX_HEADERS {
                    return Verdict::Refused(Refusal::TooLarge);
                }
                At::Name
            }
            (At::Name, b) if is_token(b) => At::Name,
            (At::Name, b':') => At::Value,
            (At::Value, b'\r') => At::HeaderCr,
            (At::Value, b'\t' | 0x20..=0x7e) => At::Value,
            (At::EndCr, b'\n') => return complete(&bytes[..=i]),
            _ => return Verdict::Refused(Refusal::Malformed),
        };
        // Another version shows at its first digit: "HTTP/2.0" need not be waited for.
        if at == At::Version && is_higher(&bytes[start..=i]) {
            return Verdict::Refused(Refusal::Version);
        }
    }
    if bytes.len() >= HEAD_LIMIT {
        Verdict::Refused(Refusal::TooLarge)
    } else {
        Verdict::Partial
    }
}

fn new_part(next: At, start: &mut usize, i: usize) -> At {
    *start = i + 1;
    next
}

/// RFC 9110 `tchar`: what methods and header names are made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `v` can begin `HTTP/<digit>[.<digit>]`.
fn version_prefix(v: &[u8]) -> bool {
    let literal = b"HTTP/";
    let n = v.len().min(literal.len());
    if v[..n] != literal[..n] {
        return false;
    }
    match &v[n..] {
        [] => true,
        [d] | [d, b'.'] => d.is_ascii_digit(),
        [d, b'.', m] => d.is_ascii_digit() && m.is_ascii_digit(),
        _ => false,
    }
}

/// `HTTP/<major>[.<minor>]` as numbers.
fn version(v: &[u8]) -> Option<(u8, Option<u8>)> {
    let digits = v.strip_prefix(b"HTTP/")?;
    let digit = |d: &u8| d.is_ascii_digit().then(|| d - b'0');
    match digits {
        [major] => Some((digit(major)?, None)),
        [major, b'.', minor] => Some((digit(major)?, Some(digit(minor)?))),
        _ => None,
    }
}

/// A valid version prefix that already names a version other than 1.0 and 1.1.
fn is_higher(v: &[u8]) -> bool {
    match v.strip_prefix(b"HTTP/") {
        Some([major, ..]) if *major != b'1' => true,
        Some([b'1', b'.', minor]) => *minor > b'1',
        _ => false,
    }
}

/// The head is whole and well-formed: read what the forwarder needs from it.
fn complete(head: &[u8]) -> Verdict {
    let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request = lines.next().unwrap_or_default();
    let mut parts = request.split(|&b| b == b' ');
    let (_method, target, version) = (parts.next(), parts.next().unwrap_or_default(), parts.next());
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let lane = if HEALTH_PATHS.iter().any(|p| p.as_bytes() == path) { Lane::Health } else { Lane::Other };
    let mut keep_alive = version == Some(b"HTTP/1.1");
    let mut length: Option<&[u8]> = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Verdict::Refused(Refusal::Malformed);
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"connection") {
            if value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Verdict::Refused(Refusal::Body);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || length.is_some_and(|l| l != value)
            {
                return Verdict::Refused(Refusal::Malformed);
            }
            length = Some(value);
        }
    }
    if length.is_some_and(|l| l.iter().any(|&d| d != b'0')) {
        return Verdict::Refused(Refusal::Body);
    }
    Verdict::Complete(Head { len: head.len(), keep_alive, lane })
}

/// The head as tiny_http gets it: the client's own, without its `Connection` headers and with
/// `Connection: close`, so tiny_http ends its side after exactly one answer.
pub fn for_backend(head: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let body = head.strip_suffix(b"\r\n").unwrap_or(head);
    for line in body.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !name.eq_ignore_ascii_case(b"connection") {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
}

/// The fuzz check (`fuzz/`, and `corpus_regression` below): a verdict never changes as more
/// bytes arrive once it is given, a complete head is complete at exactly its length and not
/// before, and what tiny_http gets from it is a complete head that closes.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    // Every prefix is judged: quadratic, so long inputs are cut (the fuzzer's are short).
    let data = &data[..data.len().min(16 * 1024)];
    let verdict = judge(data);
    let decided = (0..=data.len().min(HEAD_LIMIT)).find(|&n| judge(&data[..n]) != Verdict::Partial);
    match (verdict, decided) {
        (Verdict::Partial, None) => {}
        (Verdict::Complete(h), Some(n)) => {
            assert_eq!(n, h.len, "{data:?}");
            assert_eq!(judge(&data[..n]), verdict);
            let mut out = Vec::new();
            for_backend(&data[..h.len], &mut out);
            match judge(&out) {
                Verdict::Complete(b) => {
                    assert!(b.len == out.len() && !b.keep_alive && b.lane == h.lane, "{out:?}")
                }
                // The added `Connection: close` can make a head of `MAX_HEADERS` lines one
                // longer: past our cap for clients, which tiny_http does not have.
                Verdict::Refused(Refusal::TooLarge)
                    if out.split(|&b| b == b'\n').count() == 1 + (MAX_HEADERS + 1) + 2
                        && out.len() < HEAD_LIMIT => {}
                other => panic!("{other:?} for the backend's head {out:?}"),
            }
        }
        (v, Some(n)) => assert_eq!(judge(&data[..n]), v, "{data:?}"),
        (v, None) => panic!("{v:?} for all of {data:?} but partial at every length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored fuzz corpus (`tests/corpus/front_head/`) through the fuzz check.
    #[test]
    fn corpus_regression() {
        crate::corpus::replay("front_head", fuzz);
    }

    fn head(s: &str) -> Verdict {
        judge(s.as_bytes())
    }

    fn complete_head(s: &str) -> Head {
        match head(s) {
            Verdict::Complete(h) => h,
            v => panic!("{s:?}: {v:?}"),
        }
    }

    #[test]
    fn accepts_ordinary_requests() {
        let h = complete_head("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert_eq!(h, Head { len: 47, keep_alive: true, lane: Lane::Other });
        let h = complete_head("GET /healthz?verbose=1 HTTP/1.0\r\n\r\n");
        assert_eq!(h, Head { len: 35, keep_alive: false, lane: Lane::Health });
        let h = complete_head("HEAD /livez HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!h.keep_alive);
        assert_eq!(h.lane, Lane::Health);
        // Only the first head counts; a pipelined second one is the next turn's.
        let h = complete_head("GET /readyz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!((h.len, h.lane), (24, Lane::Health));
        assert!(complete_head("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(complete_head("GET / HTTP/1.1\r\nX-Empty:\r\nTab:\ta\tb\r\n\r\n").keep_alive);
    }

    #[test]
    fn waits_for_the_rest() {
        for s in [
            "",
            "G",
            "GET",
            "GET /",
            "GET / HTT",
            "GET / HTTP/1",
            "GET / HTTP/1.1\r",
            "GET / HTTP/1.1\r\nHo",
            "GET / HTTP/1.1\r\nHost: x\r\n\r",
        ] {
            assert_eq!(head(s), Verdict::Partial, "{s:?}");
        }
    }

    #[test]
    fn refuses_other_protocols_at_once() {
        assert_eq!(head("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Verdict::Refused(Refusal::Version));
        // Known from the version's first digit, before the line ends.
        assert_eq!(head("PRI * HTTP/2"), Verdict::Refused(Refusal::Version));
        for s in ["GET / HTTP/1.2\r\n", "GET / HTTP/3.0\r\n", "GET / HTTP/0.9\r\n", "GET / HTTP/2\r\n"] {
            assert_eq!(head(s), Verdict::Refused(Refusal::Version), "{s:?}");
        }
        // A TLS ClientHello, SSH, and other bytes stop at the first one that cannot be HTTP.
        for s in ["\x16\x03\x01\x02\x00", "SSH-2.0-OpenSSH_9.6\r\n", "\r\nGET / HTTP/1.1\r\n\r\n", " GET"] {
            assert_eq!(head(s), Verdict::Refused(Refusal::Malformed), "{s:?}");
        }
    }

    #[test]
    fn refuses_malformed_heads() {
        for s in [
            "GET  / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1 extra\r\n\r\n",
            "GET /\r\n\r\n",
            "GET / HTTP/1.1\n\n",
            "GET / HTTP/1.1\r\nHost x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\nX: caf\u{e9}\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            "GET /caf\u{e9} HTTP/1.1\r\n\r\n",
            "GET / HTTPS/1.1\r\n\r\n",
            "GET / HTTP/1\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 00\r\n\r\n",
        ] {
            assert_eq!(head(s), Verdict::Refused(Refusal::Malformed), "{s:?}");
        }
        let long_method = format!("{} / HTTP/1.1\r\n\r\n", "A".repeat(METHOD_LIMIT + 1));
        assert_eq!(head(&long_method), Verdict::Refused(Refusal::Malformed));
    }

    #[test]
    fn refuses_bodies() {
        for s in [
            "POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(head(s), Verdict::Refused(Refusal::Body), "{s:?}");
        }
    }

    #[test]
    fn bounds_size_and_header_count() {
        let at_limit = |fill: usize| format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(fill));
        let overhead = at_limit(0).len();
        let exact = at_limit(HEAD_LIMIT - overhead);
        assert_eq!(exact.len(), HEAD_LIMIT);
        assert_eq!(complete_head(&exact).len, HEAD_LIMIT);
        let over = at_limit(HEAD_LIMIT - overhead + 1);
        assert_eq!(head(&over), Verdict::Refused(Refusal::TooLarge));
        // The peek buffer holds HEAD_LIMIT bytes: a full buffer without the end is too large.
        assert_eq!(head(&over[..HEAD_LIMIT]), Verdict::Refused(Refusal::TooLarge));
        let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
        assert_eq!(head(&long_line), Verdict::Refused(Refusal::TooLarge));
        let many = |n: usize| format!("GET / HTTP/1.1\r\n{}\r\n", "a:\r\n".repeat(n));
        assert!(matches!(head(&many(MAX_HEADERS)), Verdict::Complete(_)));
        assert_eq!(head(&many(MAX_HEADERS + 1)), Verdict::Refused(Refusal::TooLarge));
        assert_eq!(head(&many(10_000)), Verdict::Refused(Refusal::TooLarge));
    }

    #[test]
    fn judging_a_prefix_never_contradicts_the_whole() {
        // A refusal is final: no prefix of an acceptable head is refused, and every prefix of a
        // refused one is either partial or refused the same way.
        let samples = [
            "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
        ];
        for s in samples {
            let whole = head(s);
            for cut in 0..s.len() {
                let part = head(&s[..cut]);
                assert!(
                    part == Verdict::Partial || part == whole,
                    "{s:?} cut at {cut}: {part:?} vs {whole:?}"
                );
            }
        }
    }

    #[test]
    fn refusals_are_whole_responses() {
        assert_eq!(
            Refusal::TooLarge.response(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: 23\r\nConnection: close\r\n\r\nrequest head too large\n"
        );
    }

    #[test]
    fn backend_head_closes_after_one_answer() {
        let mut out = Vec::new();
        for_backend(
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nconnection: keep-alive\r\nAccept: */*\r\n\r\n",
            &mut out,
        );
        assert_eq!(out, b"GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nConnection: close\r\n\r\n");
        for_backend(b"GET / HTTP/1.0\r\n\r\n", &mut out);
        assert_eq!(out, b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn random_bytes_never_panic() {
        // Bytes biased toward HTTP's own, so many samples get deep.
        let alphabet = b"GET /HTP1.02\r\n:abc \t\x00\xff";
        let mut rng = fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let s: Vec<u8> = (0..rng.usize(..64)).map(|_| alphabet[rng.usize(..alphabet.len())]).collect();
            if let Verdict::Complete(h) = judge(&s) {
                assert!(h.len <= s.len() && s[..h.len].ends_with(b"\r\n\r\n"));
            }
        }
    }
}
