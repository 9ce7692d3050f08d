//! HTTP/1.x request counting for one relayed connection: requests read from the client's
//! bytes, responses from the child's, matched in order (keep-alive and pipelining).
//!
//! Runs on the connection's relay thread, on a copy of the bytes (it never changes or holds
//! them). Heads are gathered into one reused buffer of at most `MAX_HEAD` bytes (a head that
//! arrives in one chunk is parsed in place); bodies are framed by `Content-Length`, chunked
//! encoding or the connection's end and skipped by length, never copied. The one body read is a
//! gRPC-Web response's (for its trailer frame, see `grpc.rs`). A request is opened when its
//! head is complete (timed from its first byte) and finished when its final response ends
//! (`1xx` other than `101` are interim); at the connection's end a response delimited by the
//! close ends with its code, and requests without a response end with code 0. Bytes that are
//! not HTTP stop the counting for the connection: one parse failure, open requests dropped.

use std::collections::VecDeque;
use std::time::Instant;

use super::grpc::{self, GrpcCode, WebBody};
use super::stats::{Method, MethodCache, Outcome, Protocol, RequestStats};

/// A request or response head larger than this stops the counting for the connection.
pub const MAX_HEAD: usize = 64 * 1024;
/// Requests sent ahead of their responses (pipelined) that are tracked; more stops counting.
const MAX_PENDING: usize = 1024;
/// Chunk-size lines (with extensions) and trailer sections are bounded too.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = MAX_HEAD;
/// A head buffer grown past this is given back once its head is parsed.
const KEEP_HEAD_CAPACITY: usize = 4096;

pub struct Http1 {
    request: RequestSide,
    response: ResponseSide,
    pending: VecDeque<Pending>,
    methods: MethodCache,
    /// Counting has stopped: after a parse failure, or a switch to another protocol.
    stopped: bool,
}

/// A request whose head was read and whose final response has not ended yet.
struct Pending {
    method: Method,
    start: Instant,
    head: bool,
    connect: bool,
}

struct RequestSide {
    head: HeadReader,
    /// When the head being read began (its first byte's chunk).
    start: Option<Instant>,
    body: Framing,
}

struct ResponseSide {
    head: HeadReader,
    body: Framing,
    /// The response whose body is being read: its status, gRPC status so far, and whether it
    /// answers a request (an unsolicited one, say a 408 before a close, is skipped).
    status: u16,
    grpc: Option<GrpcCode>,
    web: Option<WebBody>,
    solicited: bool,
    /// The final response switches protocols (`101`, or a `2xx` to `CONNECT`).
    tunnel: bool,
}

#[derive(Debug)]
struct Malformed;

impl Http1 {
    pub fn new() -> Http1 {
        Http1 {
            request: RequestSide { head: HeadReader::new(), start: None, body: Framing::None },
            response: ResponseSide {
                head: HeadReader::new(),
                body: Framing::None,
                status: 0,
                grpc: None,
                web: None,
                solicited: false,
                tunnel: false,
            },
            pending: VecDeque::new(),
            methods: MethodCache::default(),
            stopped: false,
        }
    }

    pub fn client(&mut self, bytes: &[u8], now: Instant, stats: &RequestStats) {
        if self.stopped {
            return;
        }
        if let Err(Malformed) = self.requests(bytes, now, stats) {
            self.fail(stats);
        }
    }

    pub fn child(&mut self, bytes: &[u8], now: Instant, stats: &RequestStats) {
        if self.stopped {
            return;
        }
        if let Err(Malformed) = self.responses(bytes, now, stats) {
            self.fail(stats);
        }
    }

    pub fn end(&mut self, now: Instant, stats: &RequestStats) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        // A response delimited by the close ends here; so does one cut short, with its code.
        if self.response.solicited && self.response.status != 0 {
            let status = self.response.status;
            self.finish(now, status, stats);
        }
        while let Some(p) = self.pending.pop_front() {
            stats.finished(outcome(&p, 0, None, now));
        }
    }

    fn fail(&mut self, stats: &RequestStats) {
        stats.parse_failure();
        self.stop(stats);
    }

    /// Counting ends for this connection; requests still open leave the in-flight gauge.
    fn stop(&mut self, stats: &RequestStats) {
        self.stopped = true;
        stats.abandoned(self.pending.len());
        self.pending = VecDeque::new();
        self.request.head.release();
        self.response.head.release();
    }

    fn requests(&mut self, mut bytes: &[u8], now: Instant, stats: &RequestStats) -> Result<(), Malformed> {
        while !bytes.is_empty() {
            if !self.request.body.is_done() {
                let (used, _) = self.request.body.feed(bytes, &mut |_| {})?;
                bytes = &bytes[used..];
                continue;
            }
            if self.request.start.is_none() {
                // Blank lines between requests are allowed and ignored.
                let skip = bytes.iter().position(|&c| c != b'\r' && c != b'\n').unwrap_or(bytes.len());
                bytes = &bytes[skip..];
                if bytes.is_empty() {
                    break;
                }
                self.request.start = Some(now);
            }
            let Some((head, used)) = self.request.head.feed(bytes)? else { break };
            let start = self.request.start.take().unwrap_or(now);
            let req = parse_request(head, &mut self.methods, stats)?;
            self.request.head.clear();
            bytes = &bytes[used..];
            if self.pending.len() >= MAX_PENDING {
                return Err(Malformed);
            }
            stats.opened();
            self.pending.push_back(Pending {
                method: req.method,
                start,
                head: req.head,
                connect: req.connect,
            });
            self.request.body = req.body;
            if req.connect {
                // What follows a CONNECT is the tunnel's, whatever the answer: nothing more to
                // read on this side.
                self.request.body = Framing::Close;
            }
        }
        Ok(())
    }

    fn responses(&mut self, mut bytes: &[u8], now: Instant, stats: &RequestStats) -> Result<(), Malformed> {
        while !bytes.is_empty() && !self.stopped {
            let r = &mut self.response;
            if !r.body.is_done() {
                let web = &mut r.web;
                let (used, trailers) = r.body.feed(bytes, &mut |data| {
                    if let Some(w) = web.as_mut() {
                        w.feed(data)
                    }
                })?;
                bytes = &bytes[used..];
                if let Some(code) = trailers {
                    r.grpc = Some(code);
                }
                if r.body.is_done() {
                    self.response_done(now, stats);
                }
                continue;
            }
            if r.head.is_empty() {
                // Some servers end a body with a stray line break.
                let skip = bytes.iter().position(|&c| c != b'\r' && c != b'\n').unwrap_or(bytes.len());
                bytes = &bytes[skip..];
                if bytes.is_empty() {
                    break;
                }
            }
            let Some((head, used)) = r.head.feed(bytes)? else { break };
            let res = parse_response(head)?;
            r.head.clear();
            bytes = &bytes[used..];
            self.response_head(res, now, stats);
        }
        Ok(())
    }

    fn response_head(&mut self, res: ResponseHead, now: Instant, stats: &RequestStats) {
        let front = self.pending.front();
        let r = &mut self.response;
        r.solicited = front.is_some();
        if (100..200).contains(&res.status) && res.status != 101 {
            // Interim (100 Continue, 103 Early Hints): the final response is still to come.
            r.solicited = false;
            return;
        }
        r.status = res.status;
        r.grpc = res.grpc;
        r.web = res.web.map(|text| WebBody::new(text, res.coding));
        let (head_request, connect) = front.map_or((false, false), |p| (p.head, p.connect));
        r.tunnel = res.status == 101 || (connect && (200..300).contains(&res.status));
        r.body = if r.tunnel || head_request || res.status == 204 || res.status == 304 {
            Framing::None
        } else {
            res.body
        };
        if r.body.is_done() {
            self.response_done(now, stats);
        }
    }

    fn response_done(&mut self, now: Instant, stats: &RequestStats) {
        let r = &mut self.response;
        let status = r.status;
        if r.solicited {
            self.finish(now, status, stats);
        }
        let r = &mut self.response;
        r.status = 0;
        r.solicited = false;
        if r.tunnel {
            // The connection now speaks another protocol: stop here (not a failure).
            self.stop(stats);
        }
    }

    /// The front request's final response ended (or was cut short) with `status`.
    fn finish(&mut self, now: Instant, status: u16, stats: &RequestStats) {
        let r = &mut self.response;
        let grpc = r.grpc.or_else(|| r.web.as_ref().and_then(WebBody::status));
        r.web = None;
        r.grpc = None;
        if let Some(p) = self.pending.pop_front() {
            stats.finished(outcome(&p, status, grpc, now));
        }
    }
}

fn outcome(p: &Pending, code: u16, grpc: Option<GrpcCode>, now: Instant) -> Outcome {
    Outcome {
        protocol: Protocol::Http1,
        method: p.method,
        code,
        grpc,
        duration: now.saturating_duration_since(p.start),
    }
}

/// Gathers one head (start line and header lines, up to the blank line) across chunks.
struct HeadReader {
    buf: Vec<u8>,
    /// Bytes of the unfinished last line held in `buf`, and whether they are just `\r`.
    line: usize,
    line_cr: bool,
}

impl HeadReader {
    fn new() -> HeadReader {
        HeadReader { buf: Vec::new(), line: 0, line_cr: false }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Takes bytes of the head; when it is complete, returns it (blank line included) and how
    /// many of `bytes` it used. A head that fits in `bytes` alone is not copied.
    fn feed<'a>(&'a mut self, bytes: &'a [u8]) -> Result<Option<(&'a [u8], usize)>, Malformed> {
        let mut line_start = 0;
        let (mut line, mut line_cr) = (self.line, self.line_cr);
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let here = &bytes[line_start..nl];
            let blank = match (line, here) {
                (0, []) | (0, [b'\r']) => true,
                (1, []) => line_cr,
                _ => false,
            };
            // A first line cannot be blank: leading blank lines were skipped by the caller.
            let first = self.buf.is_empty() && line_start == 0 && line == 0;
            if blank && !first {
                let used = nl + 1;
                if self.buf.len() + used > MAX_HEAD {
                    return Err(Malformed);
                }
                if self.buf.is_empty() {
                    return Ok(Some((&bytes[..used], used)));
                }
                self.buf.extend_from_slice(&bytes[..used]);
                return Ok(Some((&self.buf, used)));
            }
            line_start = nl + 1;
            line = 0;
            line_cr = false;
        }
        if self.buf.len() + bytes.len() > MAX_HEAD {
            return Err(Malformed);
        }
        let rest = &bytes[line_start..];
        line_cr = (line == 0 && rest == b"\r") || (line == 1 && rest.is_empty() && line_cr);
        self.line = line + rest.len();
        self.line_cr = line_cr;
        self.buf.extend_from_slice(bytes);
        Ok(None)
    }

    fn clear(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > KEEP_HEAD_CAPACITY {
            self.buf = Vec::new();
        }
        self.line = 0;
        self.line_cr = false;
    }

    fn release(&mut self) {
        self.buf = Vec::new();
    }
}

/// How a message body is delimited, and how much of it is left.
enum Framing {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Until the connection ends.
    Close,
}

impl Framing {
    fn is_done(&self) -> bool {
        match self {
            Framing::None => true,
            Framing::Length(n) => *n == 0,
            Framing::Chunked(c) => c.state == ChunkState::Done,
            Framing::Close => false,
        }
    }

    /// Consumes body bytes from `bytes`, handing the payload to `data`; returns how many were
    /// used, and a `grpc-status` found in chunked trailers.
    fn feed(
        &mut self,
        bytes: &[u8],
        data: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, Option<GrpcCode>), Malformed> {
        match self {
            Framing::None => Ok((0, None)),
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64) as usize;
                data(&bytes[..n]);
                *left -= n as u64;
                Ok((n, None))
            }
            Framing::Close => {
                data(bytes);
                Ok((bytes.len(), None))
            }
            Framing::Chunked(c) => c.feed(bytes, data),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ChunkState {
    /// Hex digits of a chunk size.
    Size,
    /// After the size: extensions up to the line's end.
    Extension,
    Data,
    /// The line break after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, up to a blank line.
    Trailers,
    Done,
}

struct Chunked {
    state: ChunkState,
    size: u64,
    digits: usize,
    line: usize,
    /// The trailer line being read (kept while short enough to hold a `grpc-status`).
    trailer: Vec<u8>,
    trailers: usize,
    grpc: Option<GrpcCode>,
}

impl Chunked {
    fn new() -> Chunked {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            line: 0,
            trailer: Vec::new(),
            trailers: 0,
            grpc: None,
        }
    }

    fn feed(
        &mut self,
        bytes: &[u8],
        data: &mut dyn FnMut(&[u8]),
    ) -> Result<(usize, Option<GrpcCode>), Malformed> {
        let mut i = 0;
        while i < bytes.len() && self.state != ChunkState::Done {
            if self.state == ChunkState::Data {
                let n = self.size.min((bytes.len() - i) as u64) as usize;
                data(&bytes[i..i + n]);
                self.size -= n as u64;
                i += n;
                if self.size == 0 {
                    self.state = ChunkState::DataEnd;
                }
                continue;
            }
            let c = bytes[i];
            i += 1;
            self.byte(c)?;
        }
        Ok((i, if self.state == ChunkState::Done { self.grpc.take() } else { None }))
    }

    /// One byte of the chunked framing outside chunk data.
    fn byte(&mut self, c: u8) -> Result<(), Malformed> {
        match self.state {
            ChunkState::Size => self.size_byte(c)?,
            ChunkState::Extension => {
                if c == b'\n' {
                    self.size_line_done();
                } else {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(Malformed);
                    }
                }
            }
            ChunkState::DataEnd => match c {
                b'\r' => {}
                b'\n' => {
                    self.state = ChunkState::Size;
                    self.size = 0;
                    self.digits = 0;
                }
                _ => return Err(Malformed),
            },
            ChunkState::Trailers => self.trailer_byte(c)?,
            ChunkState::Data | ChunkState::Done => {}
        }
        Ok(())
    }

    /// A byte of a chunk-size line, before any extension.
    fn size_byte(&mut self, c: u8) -> Result<(), Malformed> {
        match c {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                // More than 15 hex digits would overflow a u64 size.
                if self.digits == 15 {
                    return Err(Malformed);
                }
                self.size = self.size * 16 + u64::from((c as char).to_digit(16).unwrap_or(0));
                self.digits += 1;
            }
            b';' | b' ' | b'\t' if self.digits > 0 => {
                self.state = ChunkState::Extension;
                self.line = 0;
            }
            b'\r' if self.digits > 0 => self.state = ChunkState::Extension,
            b'\n' if self.digits > 0 => self.size_line_done(),
            _ => return Err(Malformed),
        }
        Ok(())
    }

    /// A byte of the trailer section: each line is looked at for a gRPC status, the empty
    /// line ends the body.
    fn trailer_byte(&mut self, c: u8) -> Result<(), Malformed> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(Malformed);
        }
        if c == b'\n' {
            let line = self.trailer.strip_suffix(b"\r").unwrap_or(&self.trailer);
            if line.is_empty() {
                self.state = ChunkState::Done;
                self.trailer = Vec::new();
            } else {
                if let Some(code) = grpc::status_in_lines(line) {
                    self.grpc = Some(code);
                }
                self.trailer.clear();
            }
        } else if self.trailer.len() < 256 {
            self.trailer.push(c);
        }
        Ok(())
    }

    fn size_line_done(&mut self) {
        if self.size == 0 {
            self.state = ChunkState::Trailers;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

struct RequestHead {
    method: Method,
    head: bool,
    connect: bool,
    body: Framing,
}

struct ResponseHead {
    status: u16,
    grpc: Option<GrpcCode>,
    /// A gRPC-Web body: `Some(true)` when it is base64 text.
    web: Option<bool>,
    /// Its `grpc-encoding`: how its compressed frames (the trailer frame too) are compressed.
    coding: grpc::Coding,
    body: Framing,
}

/// What a head's header lines say about framing and content.
#[derive(Default)]
struct Fields<'a> {
    length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    content_type: &'a [u8],
    grpc_status: Option<&'a [u8]>,
    grpc_encoding: Option<&'a [u8]>,
}

fn parse_request(
    head: &[u8],
    methods: &mut MethodCache,
    stats: &RequestStats,
) -> Result<RequestHead, Malformed> {
    let (line, rest) = split_line(head);
    let mut parts = line.split(|&c| c == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed);
    };
    if method.is_empty() || method.len() > 32 || !method.iter().all(|&c| tchar(c)) {
        return Err(Malformed);
    }
    if target.is_empty() || !target.iter().all(|&c| c > b' ' && c != 0x7f) || !http1_version(version) {
        return Err(Malformed);
    }
    let f = fields(rest)?;
    let body = if f.chunked {
        Framing::Chunked(Chunked::new())
    } else if f.transfer_encoding {
        // A request body must end before its connection does: no other coding can frame it.
        return Err(Malformed);
    } else {
        match f.length {
            Some(n) if n > 0 => Framing::Length(n),
            _ => Framing::None,
        }
    };
    Ok(RequestHead {
        method: methods.method(stats, target),
        head: method == b"HEAD",
        connect: method == b"CONNECT",
        body,
    })
}

fn parse_response(head: &[u8]) -> Result<ResponseHead, Malformed> {
    let (line, rest) = split_line(head);
    // `HTTP/1.1 200 OK`: the reason phrase is optional and may contain spaces.
    if line.len() < 12 || !http1_version(&line[..8]) || line[8] != b' ' {
        return Err(Malformed);
    }
    let code = &line[9..12];
    if !code.iter().all(u8::is_ascii_digit) || code[0] == b'0' || line.get(12).is_some_and(|&c| c != b' ') {
        return Err(Malformed);
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let f = fields(rest)?;
    let body = if f.chunked {
        Framing::Chunked(Chunked::new())
    } else if f.transfer_encoding {
        Framing::Close
    } else {
        match f.length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    let ct = f.content_type;
    let web = starts_with_ignore_case(ct, b"application/grpc-web")
        .then(|| starts_with_ignore_case(ct, b"application/grpc-web-text"));
    let coding = f.grpc_encoding.map_or(grpc::Coding::Identity, grpc::Coding::parse);
    Ok(ResponseHead { status, grpc: f.grpc_status.map(GrpcCode::from_status), web, coding, body })
}

fn fields(mut lines: &[u8]) -> Result<Fields<'_>, Malformed> {
    let mut f = Fields::default();
    while !lines.is_empty() {
        let (line, rest) = split_line(lines);
        lines = rest;
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            // Obsolete line folding continues the previous value; none we read is folded.
            continue;
        }
        let colon = memchr::memchr(b':', line).ok_or(Malformed)?;
        let (name, value) = (&line[..colon], grpc::trim(&line[colon + 1..]));
        if name.is_empty() || !name.iter().all(|&c| tchar(c)) {
            return Err(Malformed);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = number(value).ok_or(Malformed)?;
            // Differing lengths make the framing ambiguous (a smuggling attempt, or a bug).
            if f.length.is_some_and(|m| m != n) {
                return Err(Malformed);
            }
            f.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.transfer_encoding = true;
            // Chunked framing applies when chunked is the last coding.
            let last = value.rsplit(|&c| c == b',').next().map(grpc::trim).unwrap_or(b"");
            f.chunked = last.eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"content-type") {
            f.content_type = value;
        } else if name.eq_ignore_ascii_case(b"grpc-status") {
            f.grpc_status = Some(value);
        } else if name.eq_ignore_ascii_case(b"grpc-encoding") {
            f.grpc_encoding = Some(value);
        }
    }
    Ok(f)
}

/// The first line (without its line break) and the rest.
fn split_line(s: &[u8]) -> (&[u8], &[u8]) {
    let (line, rest) = match memchr::memchr(b'\n', s) {
        Some(nl) => (&s[..nl], &s[nl + 1..]),
        None => (s, &s[s.len()..]),
    };
    (line.strip_suffix(b"\r").unwrap_or(line), rest)
}

fn http1_version(v: &[u8]) -> bool {
    v == b"HTTP/1.1" || v == b"HTTP/1.0"
}

fn number(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A token character (RFC 9110 `tchar`): looked up, as header names are checked byte by byte.
fn tchar(c: u8) -> bool {
    const TABLE: [bool; 256] = {
        let mut t = [false; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            t[c] = b.is_ascii_alphanumeric()
                || matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
            c += 1;
        }
        t
    };
    TABLE[c as usize]
}

/// Whether `bytes` (a connection's first client bytes) can begin an HTTP/1 request line:
/// `Some(true)` when a method and a space were seen, `Some(false)` while undecided.
pub fn looks_like_request(bytes: &[u8]) -> Option<bool> {
    for (i, &c) in bytes.iter().enumerate() {
        if c == b' ' {
            return (i > 0).then_some(true);
        }
        if !c.is_ascii_uppercase() || i >= 16 {
            return None;
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::super::grpc::tests::{base64, frame};
    use super::super::tests::{c, counted, invariants, play, play_every_way, s};
    use super::*;

    const RPC: &str = "finfocus.v1.CostSourceService/GetProjectedCost";

    fn series(
        p: &str,
        m: &str,
        code: u16,
        g: &'static str,
        n: u64,
    ) -> (&'static str, String, u16, &'static str, u64) {
        let p = if p == "h2" { "h2" } else { "http1" };
        (p, m.to_string(), code, g, n)
    }

    #[test]
    fn keep_alive_requests_with_lengths() {
        let stats = play_every_way(&[
            c(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            c(b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"),
            s(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"),
            c(b"\r\nGET /y HTTP/1.0\r\n\r\n"),
            s(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length:  4 \r\n\r\nbusy"),
        ]);
        assert_eq!(
            counted(&stats),
            [
                series("http1", "healthz", 200, "", 1),
                series("http1", "other", 404, "", 1),
                series("http1", "other", 503, "", 1)
            ]
        );
        assert_eq!(stats.parse_failures(), 0);
    }

    #[test]
    fn pipelined_requests_match_responses_in_order() {
        let rpc = format!(
            "POST /{RPC} HTTP/1.1\r\nContent-Type: application/proto\r\nContent-Length: 3\r\n\r\nabc"
        );
        let mut requests = b"GET /healthz HTTP/1.1\r\n\r\n".to_vec();
        requests.extend_from_slice(rpc.as_bytes());
        requests.extend_from_slice(b"HEAD /big HTTP/1.1\r\n\r\nGET /last HTTP/1.1\r\n\r\n");
        let stats = play_every_way(&[
            c(&requests),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 1\r\n\r\n!"),
        ]);
        assert_eq!(
            counted(&stats),
            [
                series("http1", RPC, 200, "", 1),
                series("http1", "healthz", 200, "", 1),
                series("http1", "other", 200, "", 1),
                series("http1", "other", 500, "", 1)
            ]
        );
    }

    #[test]
    fn chunked_bodies_both_ways_with_trailers() {
        let stats = play_every_way(&[
            c(b"POST /pkg.S/Up HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n"),
            c(b"A\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
            c(b"GET /pkg.S/Down HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1f\r\n"),
            s(&[b'z'; 31]),
            s(b"\r\n0\r\ngrpc-status: 9\r\ngrpc-message: later\r\n\r\n"),
        ]);
        assert_eq!(
            counted(&stats),
            [
                series("http1", "pkg.S/Down", 200, "FAILED_PRECONDITION", 1),
                series("http1", "pkg.S/Up", 200, "", 1)
            ]
        );
    }

    #[test]
    fn responses_without_bodies() {
        let stats = play_every_way(&[
            c(b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"),
            s(b"HTTP/1.1 204 No Content\r\n\r\n"),
            s(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n"),
            c(b"GET /d HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd"),
        ]);
        assert_eq!(
            counted(&stats),
            [
                series("http1", "other", 200, "", 2),
                series("http1", "other", 204, "", 1),
                series("http1", "other", 304, "", 1)
            ]
        );
    }

    #[test]
    fn interim_responses_are_not_final() {
        let stats = play_every_way(&[
            c(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"),
            s(b"HTTP/1.1 100 Continue\r\n\r\n"),
            c(b"data"),
            s(b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert_eq!(counted(&stats), [series("http1", "other", 201, "", 1)]);
    }

    #[test]
    fn close_delimited_response_ends_with_the_connection() {
        let stats = play_every_way(&[
            c(b"GET /stream HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part"),
            s(b"HTTP/1.1 this is body text, not a response\r\n\r\n"),
        ]);
        assert_eq!(counted(&stats), [series("http1", "other", 200, "", 1)]);
        assert_eq!(stats.parse_failures(), 0);
        // A response with a coding other than chunked is delimited by the close too.
        let stats =
            play(&[c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 202 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz")]);
        assert_eq!(counted(&stats), [series("http1", "other", 202, "", 1)]);
    }

    #[test]
    fn requests_without_a_response_end_with_code_zero() {
        let stats = play_every_way(&[
            c(b"GET /a HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            c(b"GET /partial-head HTTP/1.1\r\nHost"),
        ]);
        assert_eq!(
            counted(&stats),
            [series("http1", "healthz", 0, "", 1), series("http1", "other", 200, "", 1)]
        );
        // A response cut short keeps the code it announced.
        let stats =
            play(&[c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")]);
        assert_eq!(counted(&stats), [series("http1", "other", 200, "", 1)]);
    }

    #[test]
    fn connect_protocol_unary_and_streaming() {
        let unary = format!(
            "POST /{RPC} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
        );
        let mut stream_body = frame(0, b"{\"a\":1}");
        stream_body.extend(frame(2, b"{}"));
        let streaming = format!(
            "POST /pkg.v1.S/Watch HTTP/1.1\r\nContent-Type: application/connect+json\r\nContent-Length: {}\r\n\r\n",
            frame(0, b"{}").len()
        );
        let mut req = streaming.into_bytes();
        req.extend(frame(0, b"{}"));
        let mut res = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/connect+json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            stream_body.len()
        )
        .into_bytes();
        res.extend(&stream_body);
        res.extend(b"\r\n0\r\n\r\n");
        let stats = play_every_way(&[
            c(unary.as_bytes()),
            s(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"code\":\"unavailable\"}  "),
            c(&req),
            s(&res),
        ]);
        assert_eq!(
            counted(&stats),
            [series("http1", RPC, 503, "", 1), series("http1", "pkg.v1.S/Watch", 200, "", 1)]
        );
    }

    #[test]
    fn grpc_web_status_from_headers_or_the_trailer_frame() {
        let mut body = frame(0, &[1u8; 300]);
        body.extend(frame(0x80, b"grpc-status:5\r\ngrpc-message:missing\r\n"));
        let mut res = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/grpc-web+proto\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        res.extend(&body);
        let text = base64(&body);
        let mut res_text = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/grpc-web-text\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            text.len()
        )
        .into_bytes();
        res_text.extend(&text);
        res_text.extend(b"\r\n0\r\n\r\n");
        let req = format!(
            "POST /{RPC} HTTP/1.1\r\nContent-Type: application/grpc-web+proto\r\nContent-Length: 5\r\n\r\n"
        );
        let mut req = req.into_bytes();
        req.extend(frame(0, b""));
        let stats = play_every_way(&[
            c(&req),
            s(&res),
            c(&req),
            s(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc-web\r\nGrpc-Status: 14\r\nContent-Length: 0\r\n\r\n"),
            c(&req),
            s(&res_text),
            c(&req),
            s(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc-web\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert_eq!(
            counted(&stats),
            [
                series("http1", RPC, 200, "", 1),
                series("http1", RPC, 200, "NOT_FOUND", 2),
                series("http1", RPC, 200, "UNAVAILABLE", 1)
            ]
        );
    }

    #[test]
    fn upgrades_and_connect_stop_counting_without_failure() {
        let stats = play(&[
            c(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            s(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello"),
            c(b"\x81\x85garbage that is not HTTP"),
        ]);
        assert_eq!(counted(&stats), [series("http1", "other", 101, "", 1)]);
        assert_eq!(stats.parse_failures(), 0);
        invariants(&stats);
        let stats = play(&[
            c(b"CONNECT host:443 HTTP/1.1\r\n\r\n\x16\x03\x01"),
            s(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03"),
        ]);
        assert_eq!(counted(&stats), [series("http1", "other", 200, "", 1)]);
        assert_eq!(stats.parse_failures(), 0);
        invariants(&stats);
    }

    #[test]
    fn unsolicited_response_is_skipped() {
        let stats = play_every_way(&[
            s(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 7\r\n\r\ntimeout"),
            c(b"GET / HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert_eq!(counted(&stats), [series("http1", "other", 200, "", 1)]);
    }

    #[test]
    fn malformed_bytes_stop_counting_once() {
        for script in [
            vec![c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/2 200\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1\r\nbad header line\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")],
            vec![
                c(b"GET / HTTP/1.1\r\n\r\n"),
                s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            ],
            vec![
                c(b"GET / HTTP/1.1\r\n\r\n"),
                s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab"),
            ],
            vec![
                c(b"GET / HTTP/1.1\r\n\r\n"),
                s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff1\r\n"),
            ],
            vec![c(b"GET  / HTTP/1.1\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1 extra\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 20 OK\r\n\r\n")],
            vec![c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 2000 OK\r\n\r\n")],
        ] {
            let stats = play_every_way(&script);
            assert_eq!(stats.parse_failures(), 1, "{script:?}");
            assert!(counted(&stats).is_empty(), "{script:?}");
        }
        // What was counted before the failure stays counted; nothing after it is.
        let stats = play(&[
            c(b"GET / HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            c(b"GET / HTTP/1.1\r\n\r\n"),
            s(b"garbage\r\n\r\n"),
            c(b"GET / HTTP/1.1\r\n\r\n"),
            s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ]);
        assert_eq!(counted(&stats), [series("http1", "other", 200, "", 1)]);
        assert_eq!(stats.parse_failures(), 1);
        invariants(&stats);
    }

    #[test]
    fn oversized_heads_stop_counting_with_bounded_memory() {
        let stats = RequestStats::new("/healthz");
        let mut h = Http1::new();
        let now = Instant::now();
        h.client(b"GET / HTTP/1.1\r\n", now, &stats);
        let filler = [b'a'; 1000];
        for _ in 0..200 {
            h.client(b"X-Long: ", now, &stats);
            h.client(&filler, now, &stats);
            assert!(h.request.head.buf.capacity() <= 2 * MAX_HEAD);
        }
        assert_eq!(stats.parse_failures(), 1);
        assert_eq!(h.request.head.buf.capacity(), 0);
        h.client(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n", now, &stats);
        h.end(now, &stats);
        assert_eq!(stats.totals(), (0, 0));
        // A head just under the limit is fine.
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_HEAD - 4, b'b');
        head.extend_from_slice(b"\r\n\r\n");
        let stats = play(&[c(&head), s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]);
        assert_eq!(counted(&stats), [series("http1", "other", 200, "", 1)]);
    }

    #[test]
    fn method_labels_are_capped_per_region() {
        let mut script = Vec::new();
        for i in 0..100 {
            script.push(c(format!("POST /pkg.v1.Svc/M{i} HTTP/1.1\r\nContent-Length: 0\r\n\r\n").as_bytes()));
            script.push(s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        }
        let stats = play(&script);
        let got = counted(&stats);
        assert_eq!(got.len(), 63, "62 method names and other");
        assert_eq!(got.iter().find(|s| s.1 == "other").unwrap().4, 38);
        assert_eq!(got.iter().map(|s| s.4).sum::<u64>(), 100);
    }

    #[test]
    fn many_pipelined_requests_are_bounded() {
        let mut all = Vec::new();
        for _ in 0..MAX_PENDING + 1 {
            all.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        }
        let stats = play(&[c(&all)]);
        assert_eq!(stats.parse_failures(), 1);
        invariants(&stats);
        let stats = play(&[c(&all[..all.len() - 18]), s(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")]);
        assert_eq!(stats.parse_failures(), 0);
        assert_eq!(stats.totals().0, MAX_PENDING as u64);
    }

    #[test]
    fn token_characters() {
        for c in 0..=255u8 {
            let want = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
            assert_eq!(tchar(c), want, "{c:#x}");
        }
    }

    #[test]
    fn large_bodies_are_skipped_not_kept() {
        let stats = RequestStats::new("/healthz");
        let mut h = Http1::new();
        let now = Instant::now();
        h.client(b"POST /up HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n", now, &stats);
        let chunk = vec![0u8; 65536];
        for _ in 0..200 {
            h.client(&chunk, now, &stats);
        }
        h.child(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n", now, &stats);
        for _ in 0..200 {
            h.child(&chunk, now, &stats);
            h.child(b"\r\n10000\r\n", now, &stats);
        }
        assert_eq!(h.request.head.buf.capacity(), 0);
        assert!(h.response.head.buf.capacity() < 1024);
        assert_eq!(stats.parse_failures(), 0);
    }
}
