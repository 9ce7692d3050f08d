//! Request metrics of relayed connections: a pure, synchronous observer that the relay feeds a
//! copy of every chunk it relays, in order, per direction.
//!
//! Runs on the relay thread of the connection's region; an `Observer` belongs to one connection
//! and is never shared, its region's `RequestStats` are (see `stats.rs`). The observer never
//! changes, holds back or reorders the relayed bytes: it reads them as they pass, and whatever
//! they contain it returns at once, without I/O and without panicking.
//!
//! A connection is recognised by its first client bytes: an HTTP/1.x request line
//! (`http1.rs`), or the HTTP/2 prior-knowledge preface (`h2.rs`); anything else is plain TCP,
//! after which every call returns at once. Bytes the child sends before that decision (an
//! HTTP/2 server's SETTINGS, say) are kept, up to `MAX_EARLY`, and read once it is made. When
//! a connection's bytes stop making sense, its counting stops (one parse failure), never its
//! relaying.
//!
//! Until the relay calls it, the module is compiled with `dead_code` allowed (`main.rs`).

mod grpc;
mod h2;
mod hpack;
mod http1;
mod stats;

use std::sync::Arc;
use std::time::Instant;

pub use stats::{write_metrics, RequestStats};

use h2::{H2, PREFACE};
use http1::Http1;

/// Child bytes kept while the connection's protocol is not known yet; past this it is
/// relayed as plain TCP (a protocol where the server speaks first).
const MAX_EARLY: usize = 1024;

/// One relayed connection's observer.
pub struct Observer {
    stats: Arc<RequestStats>,
    state: State,
}

enum State {
    Sniffing(Box<Sniff>),
    Http1(Box<Http1>),
    H2(Box<H2>),
    /// Plain TCP, or a connection already ended: nothing more to read.
    Plain,
}

/// The first client bytes (as many as it takes to decide), and child bytes sent before them.
struct Sniff {
    first: [u8; PREFACE.len()],
    have: usize,
    first_at: Option<Instant>,
    early: Vec<u8>,
    early_at: Option<Instant>,
}

impl Observer {
    pub fn new(stats: Arc<RequestStats>) -> Observer {
        if cfg!(feature = "bench-uncounted") {
            return Observer { stats, state: State::Plain };
        }
        let sniff =
            Sniff { first: [0; PREFACE.len()], have: 0, first_at: None, early: Vec::new(), early_at: None };
        Observer { stats, state: State::Sniffing(Box::new(sniff)) }
    }

    /// Bytes read from the client (about to be written to the child), in order.
    pub fn client(&mut self, bytes: &[u8], now: Instant) {
        match &mut self.state {
            State::Plain => {}
            State::Http1(h) => h.client(bytes, now, &self.stats),
            State::H2(h) => h.client(bytes, now, &self.stats),
            State::Sniffing(_) => self.sniff(bytes, now),
        }
    }

    /// Bytes read from the child (about to be written to the client), in order.
    pub fn child(&mut self, bytes: &[u8], now: Instant) {
        match &mut self.state {
            State::Plain => {}
            State::Http1(h) => h.child(bytes, now, &self.stats),
            State::H2(h) => h.child(bytes, now, &self.stats),
            State::Sniffing(s) => {
                if s.early.len() + bytes.len() > MAX_EARLY {
                    self.state = State::Plain;
                    return;
                }
                s.early_at.get_or_insert(now);
                s.early.extend_from_slice(bytes);
            }
        }
    }

    /// The connection ended (either way): requests still open end with code 0, in-flight drops.
    pub fn end(&mut self, now: Instant) {
        match &mut self.state {
            State::Http1(h) => h.end(now, &self.stats),
            State::H2(h) => h.end(now, &self.stats),
            State::Sniffing(_) | State::Plain => {}
        }
        self.state = State::Plain;
    }

    fn sniff(&mut self, bytes: &[u8], now: Instant) {
        let State::Sniffing(s) = &mut self.state else { return };
        if bytes.is_empty() {
            return;
        }
        s.first_at.get_or_insert(now);
        let before = s.have;
        let n = (s.first.len() - s.have).min(bytes.len());
        s.first[s.have..s.have + n].copy_from_slice(&bytes[..n]);
        s.have += n;
        let seen = &s.first[..s.have];
        let decided = if PREFACE.starts_with(seen) {
            (s.have == PREFACE.len()).then(|| State::H2(Box::new(H2::new(now))))
        } else {
            match http1::looks_like_request(seen) {
                Some(true) => Some(State::Http1(Box::new(Http1::new()))),
                Some(false) => None,
                None => Some(State::Plain),
            }
        };
        let Some(state) = decided else { return };
        let State::Sniffing(s) = std::mem::replace(&mut self.state, state) else { return };
        // Replayed in the order and at the times they passed: the child's early bytes came
        // first, then the client's earlier chunks, then this one.
        if let Some(at) = s.early_at {
            self.child(&s.early, at);
        }
        self.client(&s.first[..before], s.first_at.unwrap_or(now));
        self.client(bytes, now);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// Which side sent a recorded chunk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Dir {
        Client,
        Child,
    }

    /// A recorded connection: chunks in the order they passed, each 1 ms after the previous.
    pub type Script = Vec<(Dir, Vec<u8>)>;

    /// Plays `script` through a fresh observer (each chunk cut where `cut` says), ends the
    /// connection, and returns the region's metrics page and stats.
    pub fn play_cut(
        script: &[(Dir, Vec<u8>)],
        cut: &mut dyn FnMut(usize, &[u8]) -> Vec<usize>,
    ) -> (String, Arc<RequestStats>) {
        let stats = Arc::new(RequestStats::new("/healthz"));
        let mut o = Observer::new(stats.clone());
        let t0 = Instant::now();
        for (i, (dir, bytes)) in script.iter().enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            let mut at = 0;
            let mut cuts = cut(i, bytes);
            cuts.push(bytes.len());
            for c in cuts {
                let c = c.clamp(at, bytes.len());
                match dir {
                    Dir::Client => o.client(&bytes[at..c], now),
                    Dir::Child => o.child(&bytes[at..c], now),
                }
                at = c;
            }
        }
        o.end(t0 + Duration::from_millis(script.len() as u64));
        let mut page = String::new();
        write_metrics(&[("r", &stats)], &mut page);
        (page, stats)
    }

    pub fn play(script: &[(Dir, Vec<u8>)]) -> Arc<RequestStats> {
        play_cut(script, &mut |_, _| Vec::new()).1
    }

    /// Plays `script` whole, split at every position of every chunk, one byte at a time and in
    /// random pieces; every way gives the same page. Returns the stats of the whole play.
    pub fn play_every_way(script: &[(Dir, Vec<u8>)]) -> Arc<RequestStats> {
        let (page, stats) = play_cut(script, &mut |_, _| Vec::new());
        for (i, (_, bytes)) in script.iter().enumerate() {
            for at in 1..bytes.len() {
                let (p, _) = play_cut(script, &mut |j, _| if j == i { vec![at] } else { Vec::new() });
                assert_eq!(p, page, "chunk {i} split at {at}");
            }
        }
        let (p, _) = play_cut(script, &mut |_, b| (1..b.len()).collect());
        assert_eq!(p, page, "one byte at a time");
        let mut rng = fastrand::Rng::with_seed(0x2545_F491_4F6C_DD1D);
        for round in 0..20 {
            let (p, _) = play_cut(script, &mut |_, b| {
                let mut cuts: Vec<usize> = (0..rng.usize(..6)).map(|_| rng.usize(..b.len() + 1)).collect();
                cuts.sort_unstable();
                cuts
            });
            assert_eq!(p, page, "random pieces, round {round}");
        }
        invariants(&stats);
        stats
    }

    /// What holds after any connection ended: nothing in flight, every request timed once.
    pub fn invariants(stats: &RequestStats) {
        assert_eq!(stats.in_flight(), 0);
        let (requests, timed) = stats.totals();
        assert_eq!(requests, timed);
        assert!(stats.parse_failures() <= 1);
    }

    /// `(protocol, method, code, grpc_code, count)` of every counted series.
    pub fn counted(stats: &RequestStats) -> Vec<stats::Series> {
        stats.requests()
    }

    pub fn c(bytes: &[u8]) -> (Dir, Vec<u8>) {
        (Dir::Client, bytes.to_vec())
    }

    pub fn s(bytes: &[u8]) -> (Dir, Vec<u8>) {
        (Dir::Child, bytes.to_vec())
    }

    #[test]
    fn plain_tcp_is_not_counted() {
        for first in [&b"\x16\x03\x01\x02\x00"[..], b"SSH-2.0-OpenSSH\r\n", b"get / HTTP/1.1\r\n", b"\0"] {
            let stats =
                play_every_way(&[c(first), s(b"HTTP/1.1 200 OK\r\n\r\n"), c(b"GET / HTTP/1.1\r\n\r\n")]);
            assert!(counted(&stats).is_empty());
            assert_eq!(stats.parse_failures(), 0);
        }
        // A server that speaks first, at length, makes the connection plain too.
        let stats =
            play(&[s(&[b'x'; MAX_EARLY + 1]), c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 200 OK\r\n\r\n")]);
        assert!(counted(&stats).is_empty());
    }

    /// The first bytes, held while the protocol was not known, keep the time they came at.
    #[test]
    fn sniffed_bytes_keep_their_times() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let stats =
            play_every_way(&[c(b"PO"), c(b"ST /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"), s(ok), s(ok)]);
        assert_eq!(stats.totals(), (2, 2));
        let mut preface = PREFACE.to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        preface.extend_from_slice(&[0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
        let stats = play_every_way(&[c(&preface[..10]), c(&preface[10..]), s(&[0, 0, 0, 4, 0, 0, 0, 0, 0])]);
        assert_eq!(stats.totals(), (1, 1));
    }

    #[test]
    fn connection_that_never_spoke() {
        let stats = play(&[]);
        assert!(counted(&stats).is_empty());
        let stats = play(&[c(b"PRI * HTTP/2.0\r\n")]);
        assert!(counted(&stats).is_empty());
        invariants(&stats);
    }

    /// Random bytes, and random mixes of valid pieces, never panic and keep the invariants.
    #[test]
    fn property_random_bytes() {
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        let pieces: [&[u8]; 14] = [
            b"GET / HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"Content-Length: 3\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"\r\n",
            b"5\r\nhello\r\n0\r\n\r\n",
            b"abc",
            PREFACE,
            &[0, 0, 0, 4, 0, 0, 0, 0, 0],
            &[0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84],
            &[0, 0, 2, 1, 5, 0, 0, 0, 1, 0x88, 0xc0],
            &[0, 0, 0, 0, 1, 0, 0, 0, 1],
            &[0, 0, 4, 3, 0, 0, 0, 0, 1, 0, 0, 0, 8],
            &[0xff, 0xff, 0xff, 0x01],
        ];
        for round in 0..3000 {
            let mut script = Vec::new();
            for _ in 0..rng.usize(..12) {
                let dir = if rng.usize(..2) == 0 { Dir::Client } else { Dir::Child };
                let bytes: Vec<u8> = if rng.usize(..3) == 0 {
                    (0..rng.usize(..64)).map(|_| rng.u8(..)).collect()
                } else {
                    let mut b = Vec::new();
                    for _ in 0..1 + rng.usize(..4) {
                        b.extend_from_slice(pieces[rng.usize(..pieces.len())]);
                    }
                    b
                };
                script.push((dir, bytes));
            }
            let stats = play(&script);
            invariants(&stats);
            if round % 100 == 0 {
                let (p, _) = play_cut(&script, &mut |_, b| (1..b.len()).collect());
                assert_eq!(p, play_cut(&script, &mut |_, _| Vec::new()).0);
            }
        }
    }

    /// The stored corpus (`tests/corpus/observe/`, format in its README): each file gives the
    /// counts in its `.expect` beside it, whole and one byte at a time.
    #[test]
    fn corpus_regression() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/observe");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("corpus folder")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "bin"))
            .collect();
        files.sort();
        assert!(files.len() >= 24, "corpus has {} files", files.len());
        for path in files {
            let script =
                corpus::read(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            let (page, stats) = play_cut(&script, &mut |_, _| Vec::new());
            invariants(&stats);
            let want = std::fs::read_to_string(path.with_extension("expect")).unwrap();
            assert_eq!(corpus::summary(&stats), want, "{path:?}");
            let (bytewise, _) = play_cut(&script, &mut |_, b| (1..b.len()).collect());
            assert_eq!(bytewise, page, "{path:?} one byte at a time");
        }
    }

    /// Writes the corpus files and their `.expect` counts (run after a deliberate change of
    /// behaviour, then review the diff): `OBSERVE_CORPUS_WRITE=1 cargo test write_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_corpus() {
        if std::env::var_os("OBSERVE_CORPUS_WRITE").is_none() {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/observe");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, script) in corpus::scripts() {
            std::fs::write(dir.join(format!("{name}.bin")), corpus::write(&script)).unwrap();
            std::fs::write(dir.join(format!("{name}.expect")), corpus::summary(&play(&script))).unwrap();
        }
    }

    /// The corpus files' format: records of a direction byte (`c` client, `s` child), a 4-byte
    /// big-endian length, and that many bytes.
    pub mod corpus {
        use super::*;

        pub fn read(mut b: &[u8]) -> Result<Script, String> {
            let mut script = Vec::new();
            while !b.is_empty() {
                if b.len() < 5 {
                    return Err("truncated record header".into());
                }
                let dir = match b[0] {
                    b'c' => Dir::Client,
                    b's' => Dir::Child,
                    other => return Err(format!("bad direction {other:#x}")),
                };
                let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
                let body = b.get(5..5 + len).ok_or("truncated record")?;
                script.push((dir, body.to_vec()));
                b = &b[5 + len..];
            }
            Ok(script)
        }

        pub fn write(script: &[(Dir, Vec<u8>)]) -> Vec<u8> {
            let mut out = Vec::new();
            for (dir, bytes) in script {
                out.push(if *dir == Dir::Client { b'c' } else { b's' });
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            out
        }

        /// The connections the corpus holds: valid, truncated and hostile ones.
        pub fn scripts() -> Vec<(&'static str, Script)> {
            use super::super::grpc::tests::{base64, frame as web};
            use super::super::h2::tests::{child_start, client_start, frame, get, grpc_calls, hex, settings};
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".as_slice();
            let h2 = |client: &[Vec<u8>], child: &[Vec<u8>]| -> Script {
                let mut cl = client_start();
                client.iter().for_each(|f| cl.extend(f));
                let mut ch = child_start();
                child.iter().for_each(|f| ch.extend(f));
                vec![(Dir::Client, cl), (Dir::Child, ch)]
            };
            let mut web_body = web(0, b"\x08\x01");
            web_body.extend(web(0x80, b"grpc-status: 5\r\ngrpc-message: none\r\n"));
            let web_res = |ct: &str, body: &[u8]| {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            };
            let web_req = b"POST /pkg.v1.S/Get HTTP/1.1\r\nContent-Type: application/grpc-web+proto\r\nContent-Length: 5\r\n\r\n\0\0\0\0\0";
            let mut rng = fastrand::Rng::with_seed(0xDEAD_BEEF_CAFE_F00D);
            let random: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
            let mut tiny = get("/pkg.S/Many");
            for i in 0..10_000u32 {
                tiny.extend_from_slice(&[0x40, 1, b'a', 1, b'0' + (i % 10) as u8]);
            }
            let tiny_frames: Vec<Vec<u8>> = tiny
                .chunks(16_000)
                .enumerate()
                .map(|(i, piece)| {
                    let last = (i + 1) * 16_000 >= tiny.len();
                    let flags = if last { 0x4 } else { 0 };
                    if i == 0 {
                        frame(0x1, flags | 0x1, 1, piece)
                    } else {
                        frame(0x9, flags, 1, piece)
                    }
                })
                .collect();
            let mut flood = vec![frame(0x1, 0, 1, &[0x40; 16_000])];
            for _ in 0..20 {
                flood.push(frame(0x9, 0, 1, &[0x40; 16_000]));
            }
            let mut huffman_flood = get("/");
            huffman_flood.extend([0x0f, 0x01, 0x81, 0x07].repeat(1500));
            let mut head_70k = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
            head_70k.resize(70 * 1024, b'x');
            head_70k.extend_from_slice(b"\r\n\r\n");
            let grpc = grpc_calls();
            vec![
                ("http1_keepalive", vec![
                    c(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n"),
                    s(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
                    c(b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"),
                    s(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                ]),
                ("http1_pipelined", vec![
                    c(b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n"),
                    s(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"),
                    s(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"),
                ]),
                ("http1_chunked", vec![
                    c(b"POST /pkg.S/Up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
                    s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nX-T: 1\r\n\r\n"),
                ]),
                ("http1_no_body", vec![
                    c(b"HEAD / HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\n"),
                    s(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n"),
                ]),
                ("http1_continue", vec![
                    c(b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"),
                    s(b"HTTP/1.1 100 Continue\r\n\r\n"),
                    c(b"hi"),
                    s(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
                ]),
                ("http1_close_delimited", vec![c(b"GET / HTTP/1.0\r\n\r\n"), s(b"HTTP/1.0 200 OK\r\n\r\nbody until the end")]),
                ("http1_connect_unary", vec![
                    c(b"POST /finfocus.v1.CostSourceService/GetProjectedCost HTTP/1.1\r\nContent-Type: application/proto\r\nContent-Length: 2\r\n\r\n\x08\x01"),
                    s(b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: 0\r\n\r\n"),
                ]),
                ("http1_connect_streaming", vec![
                    c(&[b"POST /pkg.v1.S/Watch HTTP/1.1\r\nContent-Type: application/connect+proto\r\nContent-Length: 5\r\n\r\n".as_slice(), &web(0, b"")].concat()),
                    s(&[b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n".as_slice(), &web(2, b"{}"), b"\r\n0\r\n\r\n"].concat()),
                ]),
                ("http1_grpc_web", vec![c(web_req), s(&web_res("application/grpc-web+proto", &web_body))]),
                ("http1_grpc_web_text", vec![c(web_req), s(&web_res("application/grpc-web-text", &base64(&web_body)))]),
                ("http1_grpc_web_trailers_only", vec![
                    c(web_req),
                    s(b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc-web\r\nGrpc-Status: 14\r\nContent-Length: 0\r\n\r\n"),
                ]),
                ("http1_upgrade", vec![
                    c(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
                    s(b"HTTP/1.1 101 Switching Protocols\r\n\r\n\x81\x02hi"),
                    c(b"\x81\x82\x00\x00\x00\x00hi"),
                ]),
                ("h2_grpc_huffman", grpc),
                ("h2_streams", h2(
                    &[frame(0x1, 0x5, 1, &get("/healthz")), frame(0x1, 0x4, 3, &get("/pkg.S/M")), frame(0x0, 0x1, 3, b"body")],
                    &[frame(0x1, 0x4, 3, &[0x88]), frame(0x1, 0x5, 1, &[0x89]), frame(0x0, 0x1, 3, b"done")],
                )),
                ("h2_reset_goaway", h2(
                    &[frame(0x1, 0x5, 1, &get("/a")), frame(0x1, 0x5, 3, &get("/b")), frame(0x1, 0x5, 5, &get("/c")), frame(0x3, 0, 1, &[0, 0, 0, 8])],
                    &[frame(0x1, 0x4, 3, &[0x8e]), frame(0x7, 0, 0, &[0, 0, 0, 3, 0, 0, 0, 0])],
                )),
                ("h2_padded_priority", h2(
                    &[frame(0x1, 0x8 | 0x20 | 0x1, 1, &[[2u8, 0, 0, 0, 0, 7].as_slice(), &get("/p")[..3], &[0, 0]].concat()), frame(0x9, 0x4, 1, &get("/p")[3..])],
                    &[frame(0x1, 0x8 | 0x5, 1, &[1, 0x88, 0])],
                )),
                ("h2_table_grow", {
                    let mut cl = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                    cl.extend(settings(&[(1, 16384)]));
                    cl.extend(frame(0x1, 0x5, 1, &get("/")));
                    let mut ch = child_start();
                    ch.extend(frame(0x1, 0x5, 1, &[0x3f, 0xe1, 0x7f, 0x88]));
                    vec![(Dir::Client, cl), (Dir::Child, ch)]
                }),
                ("h2_tiny_headers", h2(&tiny_frames, &[frame(0x1, 0x5, 1, &[0x88])])),
                ("h2_no_response", h2(&[frame(0x1, 0x5, 1, &get("/pkg.S/Slow"))], &[])),
                ("truncated_http1_head", vec![c(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHo"), s(ok)]),
                ("truncated_http1_body", vec![c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")]),
                ("truncated_h2_frame", {
                    let mut s = h2(&[frame(0x1, 0x5, 1, &get("/pkg.S/M"))], &[]);
                    let keep = s[0].1.len() - 3;
                    s[0].1.truncate(keep);
                    s
                }),
                ("truncated_h2_preface", vec![c(b"PRI * HTTP/2.0\r\n\r\nS")]),
                ("hostile_two_lengths", vec![c(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd"), s(ok)]),
                ("hostile_huge_head", vec![c(&head_70k), s(ok)]),
                ("hostile_bad_chunk", vec![c(b"GET / HTTP/1.1\r\n\r\n"), s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n")]),
                ("hostile_h2_table_size", h2(&[frame(0x1, 0x5, 1, &[[0x3fu8, 0xe1, 0xff, 0x3f].as_slice(), &get("/")].concat())], &[])),
                ("hostile_h2_block_flood", h2(&flood, &[])),
                ("hostile_h2_bad_hpack", h2(&[frame(0x1, 0x5, 1, &[0x3f])], &[])),
                ("hostile_h2_huffman_flood", h2(&[frame(0x1, 0x5, 1, &huffman_flood)], &[])),
                ("hostile_h2_even_stream", h2(&[frame(0x1, 0x5, 2, &get("/"))], &[])),
                ("hostile_h2_continuation_alone", h2(&[frame(0x9, 0x4, 1, &get("/"))], &[])),
                ("hostile_h2_bad_answer", vec![c(&client_start()), s(b"HTTP/1.1 400 Bad Request\r\n\r\n")]),
                ("plain_random", vec![c(&random[..2048]), s(&random[2048..])]),
                ("plain_tls_hello", vec![c(&hex("160301002a010000260303")), s(&hex("160303003d020000"))]),
            ]
        }

        /// One line per counted series, then the parse failures.
        pub fn summary(stats: &RequestStats) -> String {
            let mut s = String::new();
            for (p, m, code, g, n) in counted(stats) {
                s.push_str(&format!("{p} {m} {code} {} {n}\n", if g.is_empty() { "-" } else { g }));
            }
            s.push_str(&format!("parse_failures {}\n", stats.parse_failures()));
            s
        }
    }
}
