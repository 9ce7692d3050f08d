//! The three probes of `SUPERVISOR_PROBE` (SPEC "Lifecycle and restart policy"): `http` asks
//! the health path for a 2xx, `h2` asks an HTTP/2 server to answer a PING, `tcp` only connects.
//!
//! Runs on short-lived probe threads of the supervisor (readiness and liveness, at the child
//! port) and on the `healthcheck` subcommand's threads (at the region port, through the relay).
//! Every probe is one connection, bounded by one deadline, and reads a bounded amount.
//!
//! Why `h2` exists: the real plugin with `FINFOCUS_PLUGIN_WEB_ENABLED=false` serves gRPC only
//! (HTTP/2 with prior knowledge, no HTTP/1.1, no `/healthz`), so the `http` probe never
//! passes. Every HTTP/2 server must answer a PING with a PING ACK (RFC 9113, 6.7), gRPC servers
//! included, and it binds its port only once its data is loaded: an answered PING means ready.
//! No stream is opened, so no HPACK is needed and nothing is counted as a request.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::http_client::{self, left};

/// How readiness and liveness are probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    Http,
    H2,
    Tcp,
}

/// A probe reads at most this much of a health response.
const BODY_LIMIT: usize = 64 * 1024;

impl Probe {
    pub fn parse(s: &str) -> Option<Probe> {
        match s {
            "http" => Some(Probe::Http),
            "h2" => Some(Probe::H2),
            "tcp" => Some(Probe::Tcp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Http => "http",
            Probe::H2 => "h2",
            Probe::Tcp => "tcp",
        }
    }

    /// Probes `addr` once, all of it within `timeout`; `Err` says why it is not healthy.
    pub fn check(self, addr: SocketAddr, health_path: &str, timeout: Duration) -> Result<(), String> {
        match self {
            Probe::Http => {
                let response = http_client::get_at(addr, health_path, timeout, BODY_LIMIT)?;
                if http_client::healthy(&response) {
                    Ok(())
                } else {
                    Err(format!("{health_path} answered HTTP {}", response.status))
                }
            }
            Probe::H2 => h2_ping(addr, timeout),
            Probe::Tcp => connect(addr, timeout).map(drop),
        }
    }
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| http_client::describe(&e))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;
/// The PING's payload: the answer must carry it back.
const OPAQUE: [u8; 8] = *b"rs-probe";
/// The largest frame a server may send before it learns our settings (RFC 9113, 4.2).
const MAX_FRAME: usize = 16_384;

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Client preface, empty SETTINGS and a PING in one write; then frames are read until the
/// PING ACK. The server's SETTINGS are acknowledged, as a client must; anything that is not
/// HTTP/2 ends the probe with what it looked like.
fn h2_ping(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, timeout)?;
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, &[]));
    hello.extend(frame(PING, 0, &OPAQUE));
    write_by(&mut stream, &hello, deadline)?;
    let mut first = true;
    loop {
        let mut head = [0u8; 9];
        read_by(&mut stream, &mut head, deadline).map_err(|e| describe_read(e, first, &head))?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        if first && kind != SETTINGS {
            return Err(not_h2(&head));
        }
        first = false;
        if len > MAX_FRAME {
            return Err(format!("an HTTP/2 frame of {len} bytes, above the {MAX_FRAME} allowed"));
        }
        let mut payload = vec![0u8; len];
        read_by(&mut stream, &mut payload, deadline).map_err(|e| describe_read(e, false, &head))?;
        match kind {
            SETTINGS if flags & ACK == 0 => write_by(&mut stream, &frame(SETTINGS, ACK, &[]), deadline)?,
            PING if flags & ACK != 0 && payload == OPAQUE => {
                // Leave politely: the server logs no broken connection.
                let _ = stream.write_all(&frame(GOAWAY, 0, &[0; 8]));
                return Ok(());
            }
            GOAWAY => return Err(goaway(&payload)),
            _ => {}
        }
    }
}

fn goaway(payload: &[u8]) -> String {
    let code = payload.get(4..8).map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    let debug = String::from_utf8_lossy(payload.get(8..).unwrap_or_default());
    format!("HTTP/2 GOAWAY (error code {code}) {debug}").trim_end().to_string()
}

/// What a server that does not speak HTTP/2 first sent, for the operator.
fn not_h2(head: &[u8]) -> String {
    if head.starts_with(b"HTTP/") {
        "answered HTTP/1.x, not HTTP/2 (use SUPERVISOR_PROBE=http for it)".into()
    } else {
        format!("not an HTTP/2 server (its first bytes: {:?})", String::from_utf8_lossy(head))
    }
}

fn describe_read(e: io::Error, first: bool, head: &[u8]) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof if first && head.iter().any(|&b| b != 0) => not_h2(head),
        io::ErrorKind::UnexpectedEof => "the connection closed before the PING was answered".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "no HTTP/2 PING answer in time".into(),
        _ => http_client::describe(&e),
    }
}

fn write_by(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> Result<(), String> {
    stream.set_write_timeout(Some(left(deadline)?)).map_err(|e| http_client::describe(&e))?;
    stream.write_all(bytes).map_err(|e| http_client::describe(&e))
}

fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        let rest = left(deadline).map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?;
        stream.set_read_timeout(Some(rest))?;
        match stream.read(&mut buf[at..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server on 127.0.0.1 that reads the client's hello and answers `reply`.
    fn serve(reply: impl FnOnce(&mut TcpStream) + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; 24 + 9 + 17];
            s.read_exact(&mut hello).unwrap();
            assert_eq!(&hello[..24], PREFACE);
            reply(&mut s);
            std::thread::sleep(Duration::from_millis(300));
        });
        addr
    }

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn a_ping_ack_after_settings_is_ready() {
        let addr = serve(|s| {
            s.write_all(&frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100])).unwrap();
            s.write_all(&frame(0x8, 0, &[0, 0, 1, 0])).unwrap(); // WINDOW_UPDATE
            s.write_all(&frame(PING, ACK, &OPAQUE)).unwrap();
        });
        assert_eq!(Probe::H2.check(addr, "/healthz", T), Ok(()));
    }

    #[test]
    fn no_ping_ack_in_time_is_not_ready() {
        let addr = serve(|s| s.write_all(&frame(SETTINGS, 0, &[])).unwrap());
        let err = Probe::H2.check(addr, "/healthz", Duration::from_millis(150)).unwrap_err();
        assert!(err.contains("no HTTP/2 PING answer in time") || err == "timed out", "{err}");
    }

    #[test]
    fn an_http1_server_is_named() {
        let addr = serve(|s| s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap());
        let err = Probe::H2.check(addr, "/healthz", T).unwrap_err();
        assert!(err.contains("HTTP/1.x, not HTTP/2"), "{err}");
    }

    #[test]
    fn a_goaway_is_not_ready() {
        let addr = serve(|s| {
            s.write_all(&frame(SETTINGS, 0, &[])).unwrap();
            let mut body = vec![0, 0, 0, 0, 0, 0, 0, 11];
            body.extend_from_slice(b"too_many_pings");
            s.write_all(&frame(GOAWAY, 0, &body)).unwrap();
        });
        let err = Probe::H2.check(addr, "/healthz", T).unwrap_err();
        assert!(err.contains("GOAWAY (error code 11) too_many_pings"), "{err}");
    }

    #[test]
    fn a_wrong_ping_payload_is_not_an_answer() {
        let addr = serve(|s| {
            s.write_all(&frame(SETTINGS, 0, &[])).unwrap();
            s.write_all(&frame(PING, ACK, b"someone!")).unwrap();
        });
        assert!(Probe::H2.check(addr, "/healthz", Duration::from_millis(200)).is_err());
    }

    #[test]
    fn tcp_is_a_connect() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(Probe::Tcp.check(addr, "/", T), Ok(()));
        drop(listener);
        assert_eq!(Probe::Tcp.check(addr, "/", T), Err("connection refused".into()));
    }

    #[test]
    fn names_round_trip() {
        for p in [Probe::Http, Probe::H2, Probe::Tcp] {
            assert_eq!(Probe::parse(p.as_str()), Some(p));
        }
        assert_eq!(Probe::parse("grpc"), None);
    }
}
