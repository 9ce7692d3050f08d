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
/// is read from its first `MAX_TRAILER` bytes.
const MAX_TRAILER: usize = 4096;

/// Reads a gRPC-Web response body, fed in order, for the status in its trailer frame.
#[derive(Default)]
pub struct WebBody {
    text: Option<Base64>,
    header: [u8; 5],
    have: usize,
    /// Payload bytes of the current frame still to come.
    left: u32,
    trailer: bool,
    lines: Vec<u8>,
    status: Option<GrpcCode>,
}

impl WebBody {
    pub fn new(text: bool) -> WebBody {
        WebBody { text: text.then(Base64::default), ..WebBody::default() }
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
            self.status = status_in_lines(&self.lines);
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
                let mut w = WebBody::new(text);
                w.feed(&wire[..split]);
                w.feed(&wire[split..]);
                assert_eq!(w.status(), Some(GrpcCode::PermissionDenied), "text {text} split {split}");
            }
            let mut w = WebBody::new(text);
            for b in &wire {
                w.feed(std::slice::from_ref(b));
            }
            assert_eq!(w.status(), Some(GrpcCode::PermissionDenied));
            let mut w = WebBody::new(text);
            w.feed(&wire[..wire.len() - 8]);
            assert_eq!(w.status(), None);
        }
        // Padded base64 pieces, one per frame, as text clients receive them.
        let mut wire = base64(&frame(0, b"ab"));
        wire.extend(base64(&frame(0x80, b"grpc-status:0\r\n")));
        let mut w = WebBody::new(true);
        w.feed(&wire);
        assert_eq!(w.status(), Some(GrpcCode::Ok));
    }

    #[test]
    fn web_body_keeps_a_bounded_trailer() {
        let mut long = b"grpc-status: 2\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1 << 20));
        let mut w = WebBody::new(false);
        w.feed(&frame(0x80, &long));
        assert_eq!(w.status(), Some(GrpcCode::Unknown));
        assert!(w.lines.capacity() <= MAX_TRAILER * 2);
    }
}
