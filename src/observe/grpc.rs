//! gRPC status codes, and the gRPC-Web response body read for its trailer frame.
//!
//! Runs on a relay thread, inside one connection's observer. A gRPC-Web body is a sequence of
//! frames (a flag byte, a 4-byte big-endian length, the payload); message frames are skipped by
//! their length and never copied, and only the trailer frame (flag bit 0x80), whose payload is
//! HTTP/1-style header lines, is kept, up to `MAX_TRAILER` bytes. `application/grpc-web-text`
//! bodies are base64 and are decoded on the way, a few bytes at a time.

/// The gRPC status codes, by their canonical names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrpcCode {
    Ok,
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

const CODES: [GrpcCode; 17] = [
    GrpcCode::Ok,
    GrpcCode::Cancelled,
    GrpcCode::Unknown,
    GrpcCode::InvalidArgument,
    GrpcCode::DeadlineExceeded,
    GrpcCode::NotFound,
    GrpcCode::AlreadyExists,
    GrpcCode::PermissionDenied,
    GrpcCode::ResourceExhausted,
    GrpcCode::FailedPrecondition,
    GrpcCode::Aborted,
    GrpcCode::OutOfRange,
    GrpcCode::Unimplemented,
    GrpcCode::Internal,
    GrpcCode::Unavailable,
    GrpcCode::DataLoss,
    GrpcCode::Unauthenticated,
];

impl GrpcCode {
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code of a `grpc-status` value. A value that is not one of the 17 codes is
    /// `UNKNOWN`, as gRPC clients read it (so a server cannot grow the label set).
    pub fn from_status(value: &[u8]) -> GrpcCode {
        let value = trim(value);
        if value.is_empty() || value.len() > 2 || !value.iter().all(u8::is_ascii_digit) {
            return GrpcCode::Unknown;
        }
        let n = value.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
        CODES.get(n).copied().unwrap_or(GrpcCode::Unknown)
    }
}

pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The `grpc-status` among `name: value` lines (a gRPC-Web trailer frame, or HTTP/1 trailers).
pub fn status_in_lines(lines: &[u8]) -> Option<GrpcCode> {
    lines.split(|&c| c == b'\n').find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        trim(&line[..colon])
            .eq_ignore_ascii_case(b"grpc-status")
            .then(|| GrpcCode::from_status(&line[colon + 1..]))
    })
}

/// The most of a trailer frame kept: `grpc-status` comes first in practice, and a longer frame
/// is read from its first `MAX_TRAILER` bytes (of its compressed form, and again of its
/// decompressed form).
const MAX_TRAILER: usize = 4096;

/// A gRPC message coding (`grpc-encoding`): the codings a frame with the compressed flag may
/// be in that we can read. connect-go, the plugin SDK's server, compresses a gRPC-Web response
/// (its trailer frame included) with gzip whenever the client accepts it, as finfocus' client
/// does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Coding {
    #[default]
    Identity,
    Gzip,
    /// zlib (RFC 1950), which gRPC calls `deflate`.
    Deflate,
    /// Another coding (snappy, zstd, ...): a compressed frame in it is not read.
    Other,
}

impl Coding {
    pub fn parse(value: &[u8]) -> Coding {
        match trim(value) {
            v if v.eq_ignore_ascii_case(b"identity") => Coding::Identity,
            v if v.eq_ignore_ascii_case(b"gzip") => Coding::Gzip,
            v if v.eq_ignore_ascii_case(b"deflate") => Coding::Deflate,
            _ => Coding::Other,
        }
    }

    /// The first `MAX_TRAILER` bytes of a compressed frame's payload, decompressed; `None`
    /// when that cannot be done.
    fn inflate(self, data: &[u8]) -> Option<Vec<u8>> {
        use miniz_oxide::inflate::{decompress_to_vec_with_limit, decompress_to_vec_zlib_with_limit};
        let out = match self {
            Coding::Gzip => decompress_to_vec_with_limit(gzip_body(data)?, MAX_TRAILER),
            Coding::Deflate => decompress_to_vec_zlib_with_limit(data, MAX_TRAILER),
            Coding::Identity | Coding::Other => return None,
        };
        // Cut short (by the limit, or because only the start was kept): what came out is
        // still the start of the lines.
        Some(out.unwrap_or_else(|e| e.output))
    }
}

/// The deflate stream inside a gzip member (RFC 1952): past the header and its optional fields.
fn gzip_body(data: &[u8]) -> Option<&[u8]> {
    const FHCRC: u8 = 2;
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let (head, mut rest) = (data.get(..10)?, data.get(10..)?);
    if head[..3] != [0x1f, 0x8b, 8] {
        return None;
    }
    let flags = head[3];
    if flags & FEXTRA != 0 {
        let len = usize::from(u16::from_le_bytes([*rest.first()?, *rest.get(1)?]));
        rest = rest.get(2 + len..)?;
    }
    for field in [FNAME, FCOMMENT] {
        if flags & field != 0 {
            rest = rest.get(memchr::memchr(0, rest)? + 1..)?;
        }
    }
    if flags & FHCRC != 0 {
        rest = rest.get(2..)?;
    }
    Some(rest)
}

/// Reads a gRPC-Web response body, fed in order, for the status in its trailer frame.
#[derive(Default)]
pub struct WebBody {
    text: Option<Base64>,
    /// The response's `grpc-encoding`: what a frame with the compressed flag is in.
    coding: Coding,
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u32,
    trailer: bool,
    lines: Vec<u8>,
    status: Option<GrpcCode>,
}

impl WebBody {
    pub fn new(text: bool, coding: Coding) -> WebBody {
        WebBody { text: text.then(Base64::default), coding, ..WebBody::default() }
    }

    pub fn status(&self) -> Option<GrpcCode> {
        self.status
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.status.is_some() {
            return;
        }
        match self.text.take() {
            None => self.frames(bytes),
            Some(mut b64) => {
                let mut decoded = [0u8; 192];
                for piece in bytes.chunks(256) {
                    let n = b64.decode(piece, &mut decoded);
                    self.frames(&decoded[..n]);
                }
                self.text = Some(b64);
            }
        }
    }

    fn frames(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.status.is_none() {
            if self.left == 0 && self.have < 5 {
                let n = (5 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 5 {
                    self.left =
                        u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                    self.trailer = self.header[0] & 0x80 != 0;
                    self.lines.clear();
                    if self.left == 0 {
                        self.frame_done();
                    }
                }
                continue;
            }
            let n = (self.left as usize).min(bytes.len());
            if self.trailer {
                let room = MAX_TRAILER.saturating_sub(self.lines.len());
                self.lines.extend_from_slice(&bytes[..n.min(room)]);
            }
            bytes = &bytes[n..];
            self.left -= n as u32;
            if self.left == 0 {
                self.frame_done();
            }
        }
    }

    fn frame_done(&mut self) {
        if self.trailer {
            let compressed = self.header[0] & 0x01 != 0;
            self.status = match compressed {
                false => status_in_lines(&self.lines),
                true => self.coding.inflate(&self.lines).and_then(|lines| status_in_lines(&lines)),
            };
            self.lines = Vec::new();
        }
        self.have = 0;
        self.trailer = false;
    }
}

/// An incremental base64 decoder (standard alphabet; padding, line breaks and other bytes
/// outside the alphabet are skipped, as gRPC-Web text clients concatenate padded pieces).
#[derive(Default)]
struct Base64 {
    bits: u32,
    nbits: u32,
}

impl Base64 {
    /// Decodes `input` into `out` (which holds at least 3/4 of `input`), returning the length.
    fn decode(&mut self, input: &[u8], out: &mut [u8]) -> usize {
        let mut n = 0;
        for &c in input {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' | b'-' => 62,
                b'/' | b'_' => 63,
                b'=' => {
                    // Padding ends a piece: its leftover bits are not data.
                    self.bits = 0;
                    self.nbits = 0;
                    continue;
                }
                _ => continue,
            };
            self.bits = (self.bits << 6) | u32::from(v);
            self.nbits += 6;
            if self.nbits >= 8 {
                self.nbits -= 8;
                out[n] = (self.bits >> self.nbits) as u8;
                n += 1;
                self.bits &= (1 << self.nbits) - 1;
            }
        }
        n
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    pub fn base64(data: &[u8]) -> Vec<u8> {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[(v >> (18 - 6 * i) & 63) as usize]);
                } else {
                    out.push(b'=');
                }
            }
        }
        out
    }

    #[test]
    fn status_values() {
        assert_eq!(GrpcCode::from_status(b"0"), GrpcCode::Ok);
        assert_eq!(GrpcCode::from_status(b" 14 "), GrpcCode::Unavailable);
        assert_eq!(GrpcCode::from_status(b"16"), GrpcCode::Unauthenticated);
        for bad in [&b"17"[..], b"", b"-1", b"1a", b"999", b"OK"] {
            assert_eq!(GrpcCode::from_status(bad), GrpcCode::Unknown);
        }
        assert_eq!(CODES.iter().map(|c| c.name()).collect::<Vec<_>>().len(), 17);
        assert_eq!(status_in_lines(b"grpc-message: x\r\nGrpc-Status: 5\r\n"), Some(GrpcCode::NotFound));
        assert_eq!(status_in_lines(b"grpc-message: grpc-status: 3\r\n"), None);
    }

    #[test]
    fn web_body_finds_the_trailer_at_every_split() {
        let mut body = frame(0, &[7u8; 1000]);
        body.extend(frame(0, b""));
        body.extend(frame(0x80, b"grpc-status: 7\r\ngrpc-message: no\r\n"));
        for text in [false, true] {
            let wire = if text { base64(&body) } else { body.clone() };
            for split in 0..wire.len() {
                let mut w = WebBody::new(text, Coding::Identity);
                w.feed(&wire[..split]);
                w.feed(&wire[split..]);
                assert_eq!(w.status(), Some(GrpcCode::PermissionDenied), "text {text} split {split}");
            }
            let mut w = WebBody::new(text, Coding::Identity);
            for b in &wire {
                w.feed(std::slice::from_ref(b));
            }
            assert_eq!(w.status(), Some(GrpcCode::PermissionDenied));
            let mut w = WebBody::new(text, Coding::Identity);
            w.feed(&wire[..wire.len() - 8]);
            assert_eq!(w.status(), None);
        }
        // Padded base64 pieces, one per frame, as text clients receive them.
        let mut wire = base64(&frame(0, b"ab"));
        wire.extend(base64(&frame(0x80, b"grpc-status:0\r\n")));
        let mut w = WebBody::new(true, Coding::Identity);
        w.feed(&wire);
        assert_eq!(w.status(), Some(GrpcCode::Ok));
    }

    /// A gzip member as connect-go writes one: the 10-byte header, raw deflate, CRC and size
    /// (not checked by the reader, so zeros here), with the optional fields `flags` asks for.
    fn gzip(data: &[u8], flags: u8) -> Vec<u8> {
        let mut g = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 0xff];
        if flags & 4 != 0 {
            g.extend([3, 0, b'a', b'b', b'c']);
        }
        if flags & 8 != 0 {
            g.extend(b"name\0");
        }
        if flags & 16 != 0 {
            g.extend(b"comment\0");
        }
        if flags & 2 != 0 {
            g.extend([0, 0]);
        }
        g.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
        g.extend([0; 8]);
        g
    }

    #[test]
    fn a_compressed_trailer_frame_is_read_in_its_coding() {
        let lines = b"grpc-status: 0\r\ngrpc-message: \r\n";
        for flags in [0, 2, 4, 8, 16, 30] {
            let mut body = frame(1, &gzip(b"\x0a\x03abc", flags));
            body.extend(frame(0x81, &gzip(lines, flags)));
            for split in [0, 3, 9, body.len() - 2] {
                let mut w = WebBody::new(false, Coding::Gzip);
                w.feed(&body[..split]);
                w.feed(&body[split..]);
                assert_eq!(w.status(), Some(GrpcCode::Ok), "flags {flags} split {split}");
            }
        }
        let zlib = miniz_oxide::deflate::compress_to_vec_zlib(b"grpc-status: 5\r\n", 6);
        let mut w = WebBody::new(false, Coding::Deflate);
        w.feed(&frame(0x81, &zlib));
        assert_eq!(w.status(), Some(GrpcCode::NotFound));
        // A coding we cannot read, or damaged data: no status, and nothing breaks.
        for (coding, payload) in
            [(Coding::Other, gzip(lines, 0)), (Coding::Gzip, b"not gzip at all".to_vec())]
        {
            let mut w = WebBody::new(false, coding);
            w.feed(&frame(0x81, &payload));
            assert_eq!(w.status(), None, "{coding:?}");
        }
        assert_eq!(Coding::parse(b" GZIP "), Coding::Gzip);
        assert_eq!(Coding::parse(b"snappy"), Coding::Other);
    }

    #[test]
    fn a_compressed_trailer_decompresses_to_a_bounded_size() {
        let mut long = b"grpc-status: 14\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 8 << 20));
        let mut w = WebBody::new(false, Coding::Gzip);
        w.feed(&frame(0x81, &gzip(&long, 0)));
        assert_eq!(w.status(), Some(GrpcCode::Unavailable), "read from the start of the lines");
    }

    #[test]
    fn web_body_keeps_a_bounded_trailer() {
        let mut long = b"grpc-status: 2\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1 << 20));
        let mut w = WebBody::new(false, Coding::Identity);
        w.feed(&frame(0x80, &long));
        assert_eq!(w.status(), Some(GrpcCode::Unknown));
        assert!(w.lines.capacity() <= MAX_TRAILER * 2);
    }
}
