//! HTTP/2 (prior knowledge, cleartext) request counting for one relayed connection: every
//! stream the client opens is a request, ended by the child's END_STREAM, a RST_STREAM from
//! either side, a GOAWAY that leaves it unprocessed, or the connection's end.
//!
//! Runs on the connection's relay thread, on a copy of the bytes. Each direction's frames are
//! read incrementally (`Reader`): frame headers are gathered 9 bytes at a time, DATA and other
//! payloads are skipped by length, never copied; only header blocks (HEADERS or PUSH_PROMISE and
//! their CONTINUATION frames, padding and priority removed) are gathered, each into one reused
//! buffer of at most `MAX_BLOCK` bytes, and decoded (`hpack`) to keep both HPACK tables in
//! step and read `:path`, `:status` and `grpc-status`.
//!
//! Bounds, per connection: a header block over `MAX_BLOCK`, a dynamic table over `MAX_TABLE`
//! (the peer's SETTINGS_HEADER_TABLE_SIZE, capped), or more than `MAX_STREAMS` streams open at
//! once stop the counting for the connection (one parse failure).

use std::collections::HashMap;
use std::time::Instant;

use super::grpc::GrpcCode;
use super::hpack::Decoder;
use super::stats::{Method, MethodCache, Outcome, Protocol, RequestStats};

/// The client connection preface of HTTP/2 with prior knowledge.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A header block larger than this stops the counting for the connection.
pub const MAX_BLOCK: usize = 256 * 1024;
/// The largest HPACK dynamic table followed, whatever SETTINGS_HEADER_TABLE_SIZE allows.
pub const MAX_TABLE: usize = 64 * 1024;
/// Streams open at once that are tracked; more stops the counting for the connection.
pub const MAX_STREAMS: usize = 1024;
/// HPACK's default table size (RFC 7541), in force until SETTINGS change it.
const DEFAULT_TABLE: usize = 4096;
/// A block buffer grown past this is given back once its block is decoded.
const KEEP_BLOCK_CAPACITY: usize = 16 * 1024;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

#[derive(Debug)]
pub struct Malformed;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Client,
    Child,
}

/// What a direction's frames tell the connection.
enum Event<'a> {
    /// A complete header block: HEADERS (with its END_STREAM flag) or PUSH_PROMISE.
    Headers {
        stream: u32,
        end_stream: bool,
        push: bool,
        block: &'a [u8],
        start: Instant,
    },
    /// A DATA frame ended.
    Data {
        stream: u32,
        end_stream: bool,
    },
    Reset {
        stream: u32,
    },
    Setting {
        id: u16,
        value: u32,
    },
    GoAway {
        last_stream: u32,
    },
}

/// Reads one direction's frames.
struct Reader {
    header: [u8; 9],
    have: usize,
    /// The current frame, once its header is complete.
    kind: u8,
    flags: u8,
    stream: u32,
    /// Payload bytes of the current frame still to come.
    left: u32,
    /// Bytes before a header block fragment (pad length, priority, promised stream) still to
    /// come, and the padding after it.
    prefix: u8,
    pad: u32,
    /// Small fixed payloads (a SETTINGS entry, RST_STREAM, the start of GOAWAY).
    small: [u8; 8],
    small_have: usize,
    /// The header block being gathered, and what its first frame said.
    block: Vec<u8>,
    block_open: bool,
    block_stream: u32,
    block_end_stream: bool,
    block_push: bool,
    block_start: Instant,
    /// No frame read yet: the first must be SETTINGS.
    first: bool,
}

impl Reader {
    fn new(now: Instant) -> Reader {
        Reader {
            header: [0; 9],
            have: 0,
            kind: 0,
            flags: 0,
            stream: 0,
            left: 0,
            prefix: 0,
            pad: 0,
            small: [0; 8],
            small_have: 0,
            block: Vec::new(),
            block_open: false,
            block_stream: 0,
            block_end_stream: false,
            block_push: false,
            block_start: now,
            first: true,
        }
    }

    fn feed(
        &mut self,
        mut bytes: &[u8],
        now: Instant,
        on: &mut dyn FnMut(Event) -> Result<(), Malformed>,
    ) -> Result<(), Malformed> {
        while !bytes.is_empty() {
            if self.have < 9 {
                let n = (9 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.begin(now)?;
                    if self.left == 0 {
                        self.end_frame(on)?;
                    }
                }
                continue;
            }
            let used = self.payload(bytes, on)?;
            bytes = &bytes[used..];
            if self.left == 0 {
                self.end_frame(on)?;
            }
        }
        Ok(())
    }

    /// A frame header is complete: check it against the frame it may have to continue.
    fn begin(&mut self, now: Instant) -> Result<(), Malformed> {
        let h = self.header;
        self.left = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        self.kind = h[3];
        self.flags = h[4];
        self.stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        self.prefix = 0;
        self.pad = 0;
        self.small_have = 0;
        if std::mem::take(&mut self.first) && self.kind != SETTINGS {
            return Err(Malformed);
        }
        if !self.frame_fits() {
            return Err(Malformed);
        }
        if matches!(self.kind, HEADERS | PUSH_PROMISE) {
            self.open_block(now)?;
        }
        if matches!(self.kind, HEADERS | PUSH_PROMISE | CONTINUATION)
            && self.block.len() + self.left as usize > MAX_BLOCK + 256
        {
            // Padding and priority aside, this frame alone takes the block over its limit.
            return Err(Malformed);
        }
        Ok(())
    }

    /// Whether the frame just begun may come here: a header block continues in CONTINUATION
    /// frames of its stream and only there, each type is on a stream or on the connection,
    /// and the fixed-size frames have their size.
    fn frame_fits(&self) -> bool {
        if self.block_open != (self.kind == CONTINUATION)
            || (self.block_open && self.stream != self.block_stream)
        {
            return false;
        }
        let on_stream =
            matches!(self.kind, DATA | HEADERS | PRIORITY | RST_STREAM | PUSH_PROMISE | CONTINUATION);
        let on_connection = matches!(self.kind, SETTINGS | PING | GOAWAY);
        if (on_stream && self.stream == 0) || (on_connection && self.stream != 0) {
            return false;
        }
        match self.kind {
            RST_STREAM => self.left == 4,
            SETTINGS => self.left.is_multiple_of(6) && (self.flags & ACK == 0 || self.left == 0),
            GOAWAY => self.left >= 8,
            PRIORITY => self.left == 5,
            PING => self.left == 8,
            _ => true,
        }
    }

    /// A HEADERS or PUSH_PROMISE frame opens a header block: what precedes the block in the
    /// payload (pad length, promised stream, priority), and what the block belongs to.
    fn open_block(&mut self, now: Instant) -> Result<(), Malformed> {
        let padded = self.flags & PADDED != 0;
        self.prefix = u8::from(padded)
            + if self.kind == PUSH_PROMISE {
                4
            } else if self.flags & PRIORITY_FLAG != 0 {
                5
            } else {
                0
            };
        if u32::from(self.prefix) > self.left {
            return Err(Malformed);
        }
        self.block_open = true;
        self.block_stream = self.stream;
        self.block_end_stream = self.flags & END_STREAM != 0;
        self.block_push = self.kind == PUSH_PROMISE;
        self.block_start = now;
        self.block.clear();
        Ok(())
    }

    /// Reads payload bytes of the current frame; returns how many were used.
    fn payload(
        &mut self,
        bytes: &[u8],
        on: &mut dyn FnMut(Event) -> Result<(), Malformed>,
    ) -> Result<usize, Malformed> {
        let avail = bytes.len().min(self.left as usize);
        let used = match self.kind {
            HEADERS | PUSH_PROMISE | CONTINUATION => self.fragment(&bytes[..avail])?,
            SETTINGS => {
                let mut used = 0;
                while used < avail {
                    let n = (6 - self.small_have).min(avail - used);
                    self.small[self.small_have..self.small_have + n].copy_from_slice(&bytes[used..used + n]);
                    self.small_have += n;
                    used += n;
                    if self.small_have == 6 {
                        self.small_have = 0;
                        let s = self.small;
                        let id = u16::from_be_bytes([s[0], s[1]]);
                        on(Event::Setting { id, value: u32::from_be_bytes([s[2], s[3], s[4], s[5]]) })?;
                    }
                }
                used
            }
            RST_STREAM | GOAWAY => {
                let n = (8 - self.small_have).min(avail);
                self.small[self.small_have..self.small_have + n].copy_from_slice(&bytes[..n]);
                self.small_have += n;
                // GOAWAY's debug data after its first 8 bytes is skipped.
                avail
            }
            _ => avail,
        };
        self.left -= used as u32;
        Ok(used)
    }

    /// Bytes of a HEADERS, PUSH_PROMISE or CONTINUATION payload: prefix, fragment, padding.
    fn fragment(&mut self, bytes: &[u8]) -> Result<usize, Malformed> {
        let mut used = 0;
        while self.prefix > 0 && used < bytes.len() {
            if self.flags & PADDED != 0 && self.small_have == 0 && self.kind != CONTINUATION {
                self.pad = u32::from(bytes[used]);
                self.small_have = 1;
            }
            self.prefix -= 1;
            used += 1;
            if self.prefix == 0 && self.pad > self.left - used as u32 {
                return Err(Malformed);
            }
        }
        if self.prefix > 0 {
            return Ok(used);
        }
        // What is left of the frame is fragment, then `pad` bytes of padding.
        let frag_left = (self.left as usize - used).saturating_sub(self.pad as usize);
        let n = frag_left.min(bytes.len() - used);
        if self.block.len() + n > MAX_BLOCK {
            return Err(Malformed);
        }
        self.block.extend_from_slice(&bytes[used..used + n]);
        used += n;
        // Padding follows the fragment: skipped.
        let rest = bytes.len() - used;
        Ok(used + rest.min(self.left as usize - used))
    }

    fn end_frame(&mut self, on: &mut dyn FnMut(Event) -> Result<(), Malformed>) -> Result<(), Malformed> {
        self.have = 0;
        let (stream, flags) = (self.stream, self.flags);
        match self.kind {
            DATA => on(Event::Data { stream, end_stream: flags & END_STREAM != 0 })?,
            HEADERS | PUSH_PROMISE | CONTINUATION if flags & END_HEADERS != 0 => {
                self.block_open = false;
                let event = Event::Headers {
                    stream: self.block_stream,
                    end_stream: self.block_end_stream,
                    push: self.block_push,
                    block: &self.block,
                    start: self.block_start,
                };
                on(event)?;
                self.block.clear();
                if self.block.capacity() > KEEP_BLOCK_CAPACITY {
                    self.block = Vec::new();
                }
            }
            RST_STREAM => on(Event::Reset { stream })?,
            GOAWAY => {
                let s = self.small;
                on(Event::GoAway { last_stream: u32::from_be_bytes([s[0], s[1], s[2], s[3]]) & 0x7fff_ffff })?
            }
            _ => {}
        }
        Ok(())
    }
}

/// A request: a stream the client opened.
struct Stream {
    method: Method,
    start: Instant,
    status: u16,
    grpc: Option<GrpcCode>,
}

/// What both directions share: the HPACK decoders and the open streams.
struct Conn {
    /// Decodes the client's header blocks (the table the child's SETTINGS size), and the
    /// child's (sized by the client's SETTINGS).
    client_hpack: Decoder,
    child_hpack: Decoder,
    streams: HashMap<u32, Stream>,
    methods: MethodCache,
    last_client_stream: u32,
}

pub struct H2 {
    client: Reader,
    child: Reader,
    /// Bytes of the client preface still to skip.
    preface: usize,
    conn: Conn,
    stopped: bool,
}

impl H2 {
    pub fn new(now: Instant) -> H2 {
        H2 {
            client: Reader::new(now),
            child: Reader::new(now),
            preface: PREFACE.len(),
            conn: Conn {
                client_hpack: Decoder::new(DEFAULT_TABLE),
                child_hpack: Decoder::new(DEFAULT_TABLE),
                streams: HashMap::new(),
                methods: MethodCache::default(),
                last_client_stream: 0,
            },
            stopped: false,
        }
    }

    pub fn client(&mut self, mut bytes: &[u8], now: Instant, stats: &RequestStats) {
        if self.stopped {
            return;
        }
        if self.preface > 0 {
            let n = self.preface.min(bytes.len());
            if bytes[..n] != PREFACE[PREFACE.len() - self.preface..][..n] {
                self.fail(stats);
                return;
            }
            self.preface -= n;
            bytes = &bytes[n..];
        }
        let conn = &mut self.conn;
        let r = self.client.feed(bytes, now, &mut |ev| conn.event(Side::Client, ev, now, stats));
        if r.is_err() {
            self.fail(stats);
        }
    }

    pub fn child(&mut self, bytes: &[u8], now: Instant, stats: &RequestStats) {
        if self.stopped {
            return;
        }
        let conn = &mut self.conn;
        let r = self.child.feed(bytes, now, &mut |ev| conn.event(Side::Child, ev, now, stats));
        if r.is_err() {
            self.fail(stats);
        }
    }

    pub fn end(&mut self, now: Instant, stats: &RequestStats) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let mut open: Vec<(u32, Stream)> = self.conn.streams.drain().collect();
        open.sort_by_key(|(id, _)| *id);
        for (_, s) in open {
            stats.finished(outcome(&s, now));
        }
    }

    fn fail(&mut self, stats: &RequestStats) {
        stats.parse_failure();
        self.stopped = true;
        stats.abandoned(self.conn.streams.len());
        // Give the memory back now: the connection may live on for long, unobserved.
        self.conn.streams = HashMap::new();
        self.conn.client_hpack = Decoder::new(DEFAULT_TABLE);
        self.conn.child_hpack = Decoder::new(DEFAULT_TABLE);
        self.client.block = Vec::new();
        self.child.block = Vec::new();
    }
}

fn outcome(s: &Stream, now: Instant) -> Outcome {
    Outcome {
        protocol: Protocol::H2,
        method: s.method,
        code: s.status,
        grpc: s.grpc,
        duration: now.saturating_duration_since(s.start),
    }
}

/// What a header block says that counts.
#[derive(Default)]
struct Fields {
    method: Option<Method>,
    status: Option<u16>,
    grpc: Option<GrpcCode>,
}

impl Conn {
    fn event(&mut self, side: Side, ev: Event, now: Instant, stats: &RequestStats) -> Result<(), Malformed> {
        match ev {
            Event::Headers { stream, end_stream, push, block, start } => {
                let fields = self.decode(side, block, stats)?;
                match side {
                    Side::Client if push => return Err(Malformed),
                    Side::Client => self.client_headers(stream, start, fields, stats)?,
                    // A pushed stream is the server's own, not a request: its block is decoded
                    // only to keep the table in step.
                    Side::Child if push => {}
                    Side::Child => self.child_headers(stream, end_stream, fields, now, stats),
                }
            }
            Event::Data { stream, end_stream: true } if side == Side::Child => {
                self.finish(stream, now, stats)
            }
            Event::Data { .. } => {}
            Event::Reset { stream } => self.finish(stream, now, stats),
            Event::Setting { id: SETTINGS_HEADER_TABLE_SIZE, value } => {
                // A side's setting sizes the table of the blocks the other side sends.
                let allowed = (value as usize).clamp(DEFAULT_TABLE, MAX_TABLE);
                match side {
                    Side::Client => self.child_hpack.set_allowed(allowed),
                    Side::Child => self.client_hpack.set_allowed(allowed),
                }
            }
            Event::Setting { .. } => {}
            Event::GoAway { last_stream } if side == Side::Child => {
                // Streams after the last one the child processed never will be: they end now.
                let mut refused: Vec<u32> =
                    self.streams.keys().copied().filter(|&id| id > last_stream).collect();
                refused.sort_unstable();
                for id in refused {
                    self.finish(id, now, stats);
                }
            }
            Event::GoAway { .. } => {}
        }
        Ok(())
    }

    fn client_headers(
        &mut self,
        stream: u32,
        start: Instant,
        f: Fields,
        stats: &RequestStats,
    ) -> Result<(), Malformed> {
        if stream.is_multiple_of(2) {
            return Err(Malformed);
        }
        if stream <= self.last_client_stream {
            // Trailers of a request (or of one already answered): nothing to count.
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(Malformed);
        }
        self.last_client_stream = stream;
        stats.opened();
        let method = f.method.unwrap_or(Method::OTHER);
        self.streams.insert(stream, Stream { method, start, status: 0, grpc: None });
        Ok(())
    }

    fn child_headers(
        &mut self,
        stream: u32,
        end_stream: bool,
        f: Fields,
        now: Instant,
        stats: &RequestStats,
    ) {
        let Some(s) = self.streams.get_mut(&stream) else { return };
        match f.status {
            // Interim responses (100 Continue, 103 Early Hints) precede the final one.
            Some(status) if (100..200).contains(&status) => {}
            Some(status) => s.status = status,
            None => {}
        }
        if f.grpc.is_some() {
            s.grpc = f.grpc;
        }
        if end_stream {
            self.finish(stream, now, stats);
        }
    }

    fn finish(&mut self, stream: u32, now: Instant, stats: &RequestStats) {
        if let Some(s) = self.streams.remove(&stream) {
            stats.finished(outcome(&s, now));
        }
    }

    fn decode(&mut self, side: Side, block: &[u8], stats: &RequestStats) -> Result<Fields, Malformed> {
        let mut f = Fields::default();
        let methods = &mut self.methods;
        let decoder = match side {
            Side::Client => &mut self.client_hpack,
            Side::Child => &mut self.child_hpack,
        };
        decoder
            .decode(block, &mut |name, value| match (side, name) {
                (Side::Client, b":path") => f.method = Some(methods.method(stats, value)),
                (Side::Child, b":status") => f.status = status(value),
                (Side::Child, b"grpc-status") => f.grpc = Some(GrpcCode::from_status(value)),
                _ => {}
            })
            .map_err(|_| Malformed)?;
        Ok(f)
    }
}

fn status(v: &[u8]) -> Option<u16> {
    match v {
        [a @ b'1'..=b'9', b @ b'0'..=b'9', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::tests::{c, counted, invariants, play, play_every_way, s, Dir};
    use super::*;

    const RPC: &str = "finfocus.v1.CostSourceService/GetProjectedCost";

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &p)
    }

    /// The client's preface and SETTINGS.
    pub fn client_start() -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        b.extend(settings(&[(0x3, 100), (0x4, 65535)]));
        b
    }

    pub fn child_start() -> Vec<u8> {
        let mut b = settings(&[(0x3, 250)]);
        b.extend(frame(SETTINGS, ACK, 0, b""));
        b
    }

    pub fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// `:method GET`, `:scheme http` and `path` as a literal (not indexed).
    pub fn get(path: &str) -> Vec<u8> {
        let mut b = vec![0x82, 0x86, 0x04, path.len() as u8];
        b.extend_from_slice(path.as_bytes());
        b
    }

    fn series(m: &str, code: u16, g: &'static str, n: u64) -> super::super::stats::Series {
        ("h2", m.to_string(), code, g, n)
    }

    /// Blocks made by another HPACK encoder (Python's `hpack`), Huffman-coded and using the
    /// dynamic table: two gRPC calls on one connection, the second referring to the first.
    #[test]
    fn grpc_unary_with_huffman_and_the_dynamic_table() {
        let stats = play_every_way(&grpc_calls());
        assert_eq!(counted(&stats), [series(RPC, 200, "OK", 1), series(RPC, 200, "UNAVAILABLE", 1)]);
        assert_eq!(stats.parse_failures(), 0);
    }

    /// Two gRPC calls on one connection (Huffman strings, the dynamic table), with the child's
    /// SETTINGS arriving before and after the client's preface.
    pub fn grpc_calls() -> Vec<(Dir, Vec<u8>)> {
        let req1 = hex("838644a262535529c96a17ee15ef1d09dc7b6c217716cee62158c454ebb0fd0a44964bc7427f418a089d5c0b8170dc78000f5f8b1d75d0620d263d4c4d65644082497f864d833505b11f40899acac8b24d494f6a7f8469f7dfa7");
        let req2 = hex("8386c2c1c0bf7e8469f7dea7");
        let res1 = hex("885f8b1d75d0620d263d4c4d6564");
        let trl1 = hex("40889acac8b21234da8f820b5f40899acac8b5254207317f8e8c64ea5aa452da87dc66a071d05f");
        let res2 = hex("88c0");
        let trl2 = hex("7f008107");
        let msg = [0u8, 0, 0, 0, 2, 8, 1];
        let mut client = client_start();
        client.extend(frame(HEADERS, END_HEADERS, 1, &req1));
        client.extend(frame(DATA, END_STREAM, 1, &msg));
        let mut child = child_start();
        child.extend(frame(HEADERS, END_HEADERS, 1, &res1));
        child.extend(frame(DATA, 0, 1, &msg));
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trl1));
        let mut client2 = frame(HEADERS, END_HEADERS, 3, &req2);
        client2.extend(frame(DATA, END_STREAM, 3, &msg));
        let mut child2 = frame(HEADERS, END_HEADERS, 3, &res2);
        child2.extend(frame(DATA, 0, 3, &msg));
        child2.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &trl2));
        vec![s(&child[..15]), c(&client), s(&child[15..]), c(&client2), s(&child2)]
    }

    #[test]
    fn interleaved_streams_with_padding_priority_and_continuation() {
        let mut enc = loona_hpack::Encoder::new();
        let mut client = client_start();
        // Stream 1: PADDED and PRIORITY, the block split over two CONTINUATION frames.
        let block = get("/healthz");
        let mut p = vec![3u8, 0, 0, 0, 0, 16];
        p.extend_from_slice(&block[..2]);
        p.extend_from_slice(&[0, 0, 0]);
        client.extend(frame(HEADERS, PADDED | PRIORITY_FLAG | END_STREAM, 1, &p));
        client.extend(frame(CONTINUATION, 0, 1, &block[2..5]));
        client.extend(frame(CONTINUATION, END_HEADERS, 1, &block[5..]));
        client.extend(frame(HEADERS, END_HEADERS, 3, &get("/pkg.S/Upload")));
        client.extend(frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 9]));
        client.extend(frame(DATA, PADDED, 3, &[2, b'x', 0, 0]));
        client.extend(frame(0xbb, 0, 3, b"an extension frame is ignored"));
        client.extend(frame(DATA, END_STREAM, 3, b""));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &get("/pkg.S/Other")));
        let mut child = child_start();
        child.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
        child.extend(frame(HEADERS, END_HEADERS, 3, &enc.encode([(&b":status"[..], &b"200"[..])])));
        child.extend(frame(HEADERS, END_HEADERS, 1, &enc.encode([(&b":status"[..], &b"204"[..])])));
        let mut padded = vec![1u8];
        padded.extend(enc.encode([(&b":status"[..], &b"404"[..]), (&b"x-a"[..], &b"b"[..])]));
        padded.push(0);
        child.extend(frame(HEADERS, END_HEADERS | PADDED, 5, &padded));
        child.extend(frame(DATA, END_STREAM, 1, b""));
        child.extend(frame(DATA, 0, 3, &[7; 100]));
        child.extend(frame(PING, 0, 0, &[1; 8]));
        child.extend(frame(DATA, END_STREAM, 3, &[7; 10]));
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &enc.encode([(&b"x-a"[..], &b"b"[..])])));
        let stats = play_every_way(&[c(&client), s(&child)]);
        assert_eq!(
            counted(&stats),
            [
                series("healthz", 204, "", 1),
                series("pkg.S/Other", 404, "", 1),
                series("pkg.S/Upload", 200, "", 1)
            ]
        );
    }

    #[test]
    fn resets_goaway_and_the_end_of_the_connection() {
        let mut client = client_start();
        for id in [1, 3, 5, 7, 9] {
            client.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &get("/pkg.S/M")));
        }
        // The client cancels stream 1 before any response.
        client.extend(frame(RST_STREAM, 0, 1, &[0, 0, 0, 8]));
        let mut child = child_start();
        child.extend(frame(HEADERS, END_HEADERS, 3, &[0x88]));
        // The child resets stream 3 after its headers, and refuses 9 (beyond its GOAWAY).
        child.extend(frame(RST_STREAM, 0, 3, &[0, 0, 0, 2]));
        child.extend(frame(HEADERS, END_HEADERS, 5, &[0x8d]));
        child.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 7, 0, 0, 0, 0, b'b', b'y', b'e']));
        // Stream 7 (processed) gets headers; stream 5 never ends: both end with the connection.
        child.extend(frame(HEADERS, END_HEADERS, 7, &[0x8c]));
        let stats = play_every_way(&[c(&client), s(&child)]);
        assert_eq!(
            counted(&stats),
            [
                series("pkg.S/M", 0, "", 2),
                series("pkg.S/M", 200, "", 1),
                series("pkg.S/M", 400, "", 1),
                series("pkg.S/M", 404, "", 1)
            ]
        );
        assert_eq!(stats.parse_failures(), 0);
    }

    #[test]
    fn interim_and_trailers_only_responses() {
        let mut enc = loona_hpack::Encoder::new();
        let mut client = client_start();
        client.extend(frame(HEADERS, END_HEADERS, 1, &get(&format!("/{RPC}"))));
        client.extend(frame(HEADERS, END_HEADERS, 3, &get(&format!("/{RPC}"))));
        let mut child = child_start();
        child.extend(frame(HEADERS, END_HEADERS, 1, &enc.encode([(&b":status"[..], &b"100"[..])])));
        let trailers_only: [(&[u8], &[u8]); 3] =
            [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"grpc-status", b"12")];
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &enc.encode(trailers_only)));
        child.extend(frame(HEADERS, END_HEADERS, 1, &enc.encode([(&b":status"[..], &b"200"[..])])));
        child.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &enc.encode([(&b"grpc-status"[..], &b"0"[..])]),
        ));
        // The client's own trailers after the response: decoded, not counted.
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x40, 1, b'x', 1, b'y']));
        let stats =
            play_every_way(&[c(&client[..client.len() - 14]), s(&child), c(&client[client.len() - 14..])]);
        assert_eq!(counted(&stats), [series(RPC, 200, "OK", 1), series(RPC, 200, "UNIMPLEMENTED", 1)]);
    }

    #[test]
    fn push_promise_keeps_the_table_in_step() {
        let mut client = client_start();
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/")));
        let mut child = child_start();
        // The promise adds `x-p: 1` to the child's table; the response refers to it (index 62).
        let mut promise = vec![0, 0, 0, 2];
        promise.extend_from_slice(&[0x40, 3, b'x', b'-', b'p', 1, b'1']);
        child.extend(frame(PUSH_PROMISE, END_HEADERS, 1, &promise));
        child.extend(frame(HEADERS, END_HEADERS, 2, &[0x88]));
        child.extend(frame(DATA, END_STREAM, 2, b"pushed"));
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x89, 0xbe]));
        let stats = play_every_way(&[c(&client), s(&child)]);
        assert_eq!(counted(&stats), [series("other", 204, "", 1)]);
        assert_eq!(stats.parse_failures(), 0);
    }

    #[test]
    fn table_size_follows_settings_and_abuse_stops_counting() {
        // The client allows 8192: the child may grow its table to that.
        let mut client = PREFACE.to_vec();
        client.extend(settings(&[(SETTINGS_HEADER_TABLE_SIZE, 8192)]));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/")));
        let mut child = child_start();
        let grow = [0x3f, 0xe1, 0x3f, 0x88]; // size update to 8192, then :status 200
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &grow));
        let stats = play_every_way(&[c(&client), s(&child)]);
        assert_eq!(counted(&stats), [series("other", 200, "", 1)]);
        // Without that setting the same update is over the limit.
        let mut client = client_start();
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/")));
        let stats = play_every_way(&[c(&client), s(&child)]);
        assert_eq!((stats.parse_failures(), stats.totals().0), (1, 0));
        // A client allowing 4 GiB gets at most MAX_TABLE followed.
        let mut client = PREFACE.to_vec();
        client.extend(settings(&[(SETTINGS_HEADER_TABLE_SIZE, u32::MAX)]));
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/")));
        let mut child = child_start();
        let huge = [0x3f, 0xe1, 0xff, 0x3f, 0x88]; // size update to 1 MiB + 31
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &huge));
        let stats = play(&[c(&client), s(&child)]);
        assert_eq!((stats.parse_failures(), stats.totals().0), (1, 0));
        invariants(&stats);
        // Filling the table with large entries keeps it within its size.
        let stats = RequestStats::new("/healthz");
        let now = Instant::now();
        let mut h = H2::new(now);
        h.client(&client_start(), now, &stats);
        for i in 0..1000u32 {
            let mut block = get("/");
            let value = vec![b'v'; 1000];
            block.extend_from_slice(&[0x40, 4, b'x', b'-', b'k', b'0' + (i % 10) as u8, 0x7f, 0xe9, 0x06]);
            block.extend_from_slice(&value);
            h.client(&frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block), now, &stats);
        }
        assert_eq!(stats.parse_failures(), 0);
        assert_eq!(stats.in_flight(), 1000);
        h.end(now, &stats);
        assert_eq!(stats.in_flight(), 0);
    }

    #[test]
    fn ten_thousand_tiny_headers() {
        let mut block = get("/pkg.S/Many");
        for i in 0..10_000u32 {
            // Literal with incremental indexing, new name: `a: <i%10>`.
            block.extend_from_slice(&[0x40, 1, b'a', 1, b'0' + (i % 10) as u8]);
        }
        let mut client = client_start();
        let mut chunks = block.chunks(16_000);
        client.extend(frame(HEADERS, END_STREAM, 1, chunks.next().unwrap()));
        let rest: Vec<&[u8]> = chunks.collect();
        for (i, piece) in rest.iter().enumerate() {
            let flags = if i + 1 == rest.len() { END_HEADERS } else { 0 };
            client.extend(frame(CONTINUATION, flags, 1, piece));
        }
        let mut child = child_start();
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
        let stats = play(&[c(&client), s(&child)]);
        assert_eq!(counted(&stats), [series("pkg.S/Many", 200, "", 1)]);
        invariants(&stats);
    }

    #[test]
    fn a_hundred_megabyte_header_block_is_bounded() {
        let stats = RequestStats::new("/healthz");
        let now = Instant::now();
        let mut h = H2::new(now);
        h.client(&client_start(), now, &stats);
        h.client(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &get("/ok")), now, &stats);
        let piece = vec![0x40u8; 16_384];
        h.client(&frame(HEADERS, 0, 3, &piece), now, &stats);
        let mut sent = piece.len();
        while sent < 100 << 20 {
            h.client(&frame(CONTINUATION, 0, 3, &[])[..9], now, &stats);
            let header = frame(CONTINUATION, 0, 3, &piece);
            h.client(&header[..9], now, &stats);
            h.client(&piece, now, &stats);
            sent += piece.len();
            assert!(h.client.block.capacity() <= 2 * MAX_BLOCK);
        }
        assert_eq!(stats.parse_failures(), 1);
        assert_eq!(h.client.block.capacity(), 0);
        // The first request was open and left with the counting.
        assert_eq!(stats.in_flight(), 0);
        h.end(now, &stats);
        assert_eq!(stats.totals(), (0, 0));
        // One frame announcing more than the limit stops it at once.
        let mut big = [0u8; 9];
        big[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        big[3] = HEADERS;
        big[4] = END_HEADERS;
        big[8] = 1;
        let stats = play(&[c(&client_start()), c(&big)]);
        assert_eq!(stats.parse_failures(), 1);
    }

    #[test]
    fn thousands_of_huffman_strings_in_one_block() {
        // 2000 one-byte Huffman values (`0x07` is '0' padded with ones) in one block, then a
        // request whose path is Huffman-coded: both counted, nothing refused.
        let mut block = get("/");
        for _ in 0..2000 {
            block.extend_from_slice(&[0x0f, 0x01, 0x81, 0x07]);
        }
        let mut client = client_start();
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        // :method GET, :scheme http, :path "/0" as a literal, Huffman-coded ('/' 011000, '0'
        // 00000, then five ones of padding).
        client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x82, 0x86, 0x04, 0x82, 0x60, 0x1f]));
        let mut child = child_start();
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0x88]));
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0x8d]));
        let stats = play(&[c(&client), s(&child)]);
        assert_eq!(stats.parse_failures(), 0);
        assert_eq!(stats.totals().0, 2);
    }

    #[test]
    fn protocol_errors_stop_counting_once() {
        let start = client_start();
        let with = |extra: &[u8]| {
            let mut b = start.clone();
            b.extend_from_slice(extra);
            b
        };
        for script in [
            vec![c(&with(&frame(CONTINUATION, END_HEADERS, 1, &[0x82])))],
            vec![c(&with(&frame(DATA, 0, 0, b"x")))],
            vec![c(&with(&frame(HEADERS, END_HEADERS, 2, &get("/"))))],
            vec![c(&with(&frame(SETTINGS, 0, 1, b"")))],
            vec![c(&with(&frame(SETTINGS, 0, 0, b"12345")))],
            vec![c(&with(&frame(RST_STREAM, 0, 1, b"123")))],
            vec![c(&with(&frame(GOAWAY, 0, 0, b"123")))],
            vec![c(&with(&frame(HEADERS, PADDED | END_HEADERS, 1, &[9, 0x82])))],
            vec![c(&with(&frame(HEADERS, PADDED | END_HEADERS, 1, &[])))],
            vec![c(&with(&[frame(HEADERS, 0, 1, &[0x82]), frame(DATA, 0, 1, b"")].concat()))],
            vec![c(&with(&[frame(HEADERS, 0, 1, &[0x82]), frame(CONTINUATION, 0, 3, b"")].concat()))],
            vec![c(&with(&frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff])))],
            vec![c(&with(&frame(HEADERS, END_HEADERS, 1, &[0x3f])))],
            vec![c(&with(&frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82])))],
            vec![c(&[PREFACE.as_slice(), &frame(HEADERS, END_HEADERS, 1, &get("/"))].concat())],
            vec![c(&start), s(&frame(HEADERS, END_HEADERS, 1, &[0x88]))],
        ] {
            let stats = play_every_way(&script);
            assert_eq!(stats.parse_failures(), 1, "{script:?}");
            assert!(counted(&stats).is_empty(), "{script:?}");
        }
        // A non-HTTP/2 answer to the preface stops the counting too.
        let stats = play(&[
            c(&with(&frame(HEADERS, END_HEADERS, 1, &get("/")))),
            s(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        ]);
        assert_eq!((stats.parse_failures(), stats.totals().0), (1, 0));
    }

    #[test]
    fn open_streams_are_bounded() {
        let stats = RequestStats::new("/healthz");
        let now = Instant::now();
        let mut h = H2::new(now);
        h.client(&client_start(), now, &stats);
        for i in 0..MAX_STREAMS as u32 {
            h.client(&frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &[0x82, 0x86, 0x84]), now, &stats);
        }
        assert_eq!((stats.in_flight(), stats.parse_failures()), (MAX_STREAMS as i64, 0));
        h.client(&frame(HEADERS, END_HEADERS | END_STREAM, 9999, &[0x82, 0x86, 0x84]), now, &stats);
        assert_eq!((stats.in_flight(), stats.parse_failures()), (0, 1));
        assert!(h.conn.streams.capacity() == 0);
    }

    #[test]
    fn streams_are_requests_only_when_the_client_opens_them() {
        // The child's headers for a stream nobody opened are ignored.
        let mut child = child_start();
        child.extend(frame(HEADERS, END_HEADERS | END_STREAM, 7, &[0x88]));
        let stats = play_every_way(&[c(&client_start()), s(&child)]);
        assert!(counted(&stats).is_empty());
        assert_eq!(stats.parse_failures(), 0);
        let _ = Dir::Client;
    }
}
