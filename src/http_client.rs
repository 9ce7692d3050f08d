//! A small, strict HTTP/1.1 client for GETs to the children on 127.0.0.1.
//!
//! Runs on short-lived probe threads (readiness and liveness), on scrape threads and in the
//! `healthcheck` subcommand. One request per connection (`Connection: close`). Every step is
//! bounded: one deadline covers connect, write and read, and the body is capped, so a child
//! that hangs or babbles costs at most the timeout and `max_body` bytes.
//! Bodies may be Content-Length, chunked, or delimited by close.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Response head plus body; headers beyond what we need are checked and dropped.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Longest status line plus headers we accept.
const MAX_HEAD: usize = 16 * 1024;

/// The health verdict, for the readiness and liveness probes and the `healthcheck` subcommand
/// alike: a 2xx answer of the health path.
pub fn healthy(r: &Response) -> bool {
    (200..300).contains(&r.status)
}

/// `GET path` on `port` of 127.0.0.1, all of it within `timeout`.
pub fn get(port: u16, path: &str, timeout: Duration, max_body: usize) -> Result<Response, String> {
    get_at(SocketAddr::from(([127, 0, 0, 1], port)), path, timeout, max_body)
}

/// `get` at any address (the `healthcheck` subcommand goes through the relay's address).
pub fn get_at(addr: SocketAddr, path: &str, timeout: Duration, max_body: usize) -> Result<Response, String> {
    let deadline = Instant::now() + timeout;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| describe(&e))?;
    let _ = stream.set_nodelay(true);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: region-supervisor\r\n\
         Accept: text/plain;version=0.0.4;q=0.9,*/*;q=0.1\r\nConnection: close\r\n\r\n"
    );
    stream.set_write_timeout(Some(left(deadline)?)).map_err(|e| describe(&e))?;
    stream.write_all(request.as_bytes()).map_err(|e| describe(&e))?;
    let mut reader = Deadline { stream, deadline };
    parse_response(&mut reader, max_body)
}

/// Reads with a shrinking timeout, so the whole exchange fits the deadline.
struct Deadline {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = left(self.deadline).map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;
        self.stream.set_read_timeout(Some(rest))?;
        self.stream.read(buf)
    }
}

/// What is left of the time to `deadline`, or `timed out`.
pub fn left(deadline: Instant) -> Result<Duration, String> {
    let rest = deadline.saturating_duration_since(Instant::now());
    if rest.is_zero() {
        Err("timed out".into())
    } else {
        Ok(rest)
    }
}

pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

/// Parses one response from `r`, which is read to its end only when the body is delimited by
/// close. Public for the fuzz and unit tests.
pub fn parse_response(r: &mut impl Read, max_body: usize) -> Result<Response, String> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = read_head(r, &mut buf)?;
    let head = parse_head(&buf[..head_end])?;
    let rest = buf.split_off(head_end + 4);
    let body = read_body(r, &head, rest, max_body)?;
    Ok(Response { status: head.status, body })
}

/// What the head of a response says: its status and how its body is delimited.
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
}

/// Reads into `buf` until it holds the whole head; returns where the blank line that ends it
/// starts (the body may follow in `buf`).
fn read_head(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<usize, String> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Ok(i);
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let mut chunk = [0u8; 2048];
        let n = r.read(&mut chunk).map_err(|e| describe(&e))?;
        if n == 0 {
            return Err(if buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed inside the response head".into()
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses the status line and the headers (without the blank line that ends them).
fn parse_head(head: &[u8]) -> Result<Head, String> {
    let head = std::str::from_utf8(head).map_err(|_| "response head is not text")?;
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').ok_or("malformed header line")?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.parse().map_err(|_| "bad Content-Length")?;
            if length.is_some_and(|old| old != n) {
                return Err("conflicting Content-Length".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
            if !chunked {
                return Err(format!("unsupported Transfer-Encoding {value:?}"));
            }
        }
    }
    Ok(Head { status, length, chunked })
}

/// Reads the body `head` announces; `rest` holds bytes already read past the head.
fn read_body(r: &mut impl Read, head: &Head, rest: Vec<u8>, max_body: usize) -> Result<Vec<u8>, String> {
    let status = head.status;
    if status == 204 || status == 304 || (100..200).contains(&status) {
        Ok(Vec::new())
    } else if head.chunked {
        read_chunked(r, rest, max_body)
    } else if let Some(n) = head.length {
        read_sized(r, rest, n, max_body)
    } else {
        read_to_close(r, rest, max_body)
    }
}

/// Reads a Content-Length body of `n` bytes; `rest` holds bytes already read past the head.
fn read_sized(r: &mut impl Read, mut rest: Vec<u8>, n: usize, max_body: usize) -> Result<Vec<u8>, String> {
    if n > max_body {
        return Err(format!("body of {n} bytes is over the {max_body}-byte limit"));
    }
    while rest.len() < n {
        let want = n - rest.len();
        let got = read_some(r, &mut rest, want)?;
        if got == 0 {
            return Err("connection closed inside the body".into());
        }
    }
    rest.truncate(n);
    Ok(rest)
}

/// Reads a body delimited by close; `rest` holds bytes already read past the head.
fn read_to_close(r: &mut impl Read, mut rest: Vec<u8>, max_body: usize) -> Result<Vec<u8>, String> {
    loop {
        if rest.len() > max_body {
            return Err(format!("body is over the {max_body}-byte limit"));
        }
        if read_some(r, &mut rest, 16 * 1024)? == 0 {
            return Ok(rest);
        }
    }
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err("not an HTTP/1.x response".into());
    }
    match parts.next().map(|c| (c.len(), c.parse::<u16>())) {
        Some((3, Ok(code))) if (100..600).contains(&code) => Ok(code),
        _ => Err("malformed status line".into()),
    }
}

/// Reads at most `want` (at most 64 KiB) more bytes straight onto the end of `into`.
fn read_some(r: &mut impl Read, into: &mut Vec<u8>, want: usize) -> Result<usize, String> {
    let len = into.len();
    into.resize(len + want.clamp(1, 64 * 1024), 0);
    let n = r.read(&mut into[len..]).map_err(|e| describe(&e));
    into.truncate(len + *n.as_ref().unwrap_or(&0));
    n
}

/// Decodes a chunked body; `have` holds bytes already read past the head.
fn read_chunked(r: &mut impl Read, mut have: Vec<u8>, max_body: usize) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let line_end = loop {
            if let Some(i) = find(&have[pos..], b"\r\n") {
                break pos + i;
            }
            if have.len() - pos > 1024 {
                return Err("chunk size line too long".into());
            }
            if read_some(r, &mut have, 4096)? == 0 {
                return Err("connection closed inside a chunked body".into());
            }
        };
        let size_text = std::str::from_utf8(&have[pos..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        pos = line_end + 2;
        if size == 0 {
            return Ok(body); // trailers, if any, are not needed
        }
        if body.len() + size > max_body {
            return Err(format!("body is over the {max_body}-byte limit"));
        }
        while have.len() < pos + size + 2 {
            let want = pos + size + 2 - have.len();
            if read_some(r, &mut have, want)? == 0 {
                return Err("connection closed inside a chunk".into());
            }
        }
        if &have[pos + size..pos + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&have[pos..pos + size]);
        pos += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The fuzz check (`fuzz/`, and `corpus_regression` below): the first byte sets the body
/// limit, the rest is what the child answers. Read whole or one byte per read, the result is
/// the same, and a body never passes its limit.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let [limit, answer @ ..] = data else { return };
    let max_body = usize::from(*limit) * 16;
    let whole = parse_response(&mut &answer[..], max_body);
    let trickled = parse_response(&mut Trickle(answer), max_body);
    assert_eq!(whole, trickled);
    if let Ok(r) = whole {
        assert!(r.body.len() <= max_body && (100..=999).contains(&r.status), "{r:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored fuzz corpus (`tests/corpus/probe/`) through the fuzz check.
    #[test]
    fn corpus_regression() {
        crate::corpus::replay("probe", fuzz);
    }

    fn parse(raw: &str) -> Result<Response, String> {
        parse_response(&mut raw.as_bytes(), 1024)
    }

    #[test]
    fn content_length_body() {
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello extra").unwrap();
        assert_eq!(r, Response { status: 200, body: b"hello".to_vec() });
    }

    #[test]
    fn chunked_body() {
        let r = parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!(r.unwrap().body, b"abcde");
    }

    #[test]
    fn close_delimited_body() {
        let r = parse("HTTP/1.0 503 Service Unavailable\r\n\r\nnot yet").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"not yet"[..]));
    }

    #[test]
    fn rejects_garbage_and_oversize() {
        for bad in [
            "",
            "SSH-2.0-OpenSSH\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refused_port_is_described() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(port, "/healthz", Duration::from_secs(1), 1024).unwrap_err();
        assert_eq!(e, "connection refused");
    }
}
