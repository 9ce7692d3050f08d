//! One relayed connection: the bidirectional copy between a client and the region's child,
//! with every transition of its two directions explicit.
//!
//! Runs on the region's relay thread, which owns the connection and both sockets. A direction
//! (`Flow`) reads from its source into the thread's shared buffer and writes to its
//! destination at once; only the part a full destination did not take is kept, in a buffer of
//! at most one read's size, and the source is not read again until that is written. So an idle
//! connection holds no buffer, a busy one at most one per direction.
//!
//! Ends of stream are passed on, never merged: the source's end of file becomes a shutdown of
//! writing on the destination once everything before it was written, and the other direction
//! flows on (a half-close). Both directions ended: both sockets are closed, with nothing left
//! unread, so the close sends no reset. A reset read from one side is passed on as a reset
//! (SO_LINGER 0 and close). When the child has finished sending and then stops taking bytes
//! (it closed while the client was still sending), the client is not reset: it gets every byte
//! the child sent and a FIN, and what it still sends is read and dropped until it closes or
//! [`LINGER`] runs out (a "lingering close").

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::sys;

/// How long a connection whose one direction has ended may stay idle before it is closed: the
/// bound on sockets left half-closed (CLOSE_WAIT on our side, FIN_WAIT2 on the peer's).
pub const HALF_CLOSED_IDLE: Duration = Duration::from_secs(30);
/// How long a closing client's remaining bytes are read and dropped before the close.
pub const LINGER: Duration = Duration::from_secs(2);

/// Which socket of a connection.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    Client,
    Child,
}

/// One direction of the copy.
#[derive(Default)]
struct Flow {
    /// Bytes read but not yet written; empty unless the destination was full.
    pending: Vec<u8>,
    /// The source reached end of file.
    eof: bool,
    /// The end of file was passed on (shutdown of writing on the destination).
    shut: bool,
}

/// What the owner must do after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep the connection; its wanted events may have changed.
    Go,
    /// Both directions ended cleanly: close both sockets (the close passes on the last end).
    Done,
    /// One side reset or failed: close both, the other with a reset.
    Reset,
    /// The child is gone but the client is still sending: drop the child, linger the client.
    Linger,
}

/// Byte counts of a step, for the region's counters and the request observer.
pub trait Watch {
    fn client_bytes(&mut self, bytes: &[u8]);
    fn child_bytes(&mut self, bytes: &[u8]);
}

pub struct Duplex {
    pub client: OwnedFd,
    pub child: OwnedFd,
    /// client -> child
    up: Flow,
    /// child -> client
    down: Flow,
    /// Last time a byte moved; for the half-closed bound.
    pub last_moved: Instant,
    /// No byte has moved, in either direction, and neither side has ended.
    untouched: bool,
}

impl Duplex {
    /// `client` has TCP_NODELAY already (accepted sockets inherit it from the listener).
    pub fn new(client: OwnedFd, child: OwnedFd, now: Instant) -> Duplex {
        sys::set_nodelay(&child);
        Duplex { client, child, up: Flow::default(), down: Flow::default(), last_moved: now, untouched: true }
    }

    /// The events wanted on `side` now (read when its source may be read, write when bytes
    /// wait for it).
    pub fn wanted(&self, side: Side) -> u32 {
        let (reading, writing) = match side {
            Side::Client => (&self.up, &self.down),
            Side::Child => (&self.down, &self.up),
        };
        let mut events = 0;
        if !reading.eof && reading.pending.is_empty() {
            events |= sys::WANT_READ;
        }
        if !writing.pending.is_empty() {
            events |= sys::WANT_WRITE;
        }
        events
    }

    /// Nothing has passed yet: the client connected and has not sent its first byte.
    pub fn untouched(&self) -> bool {
        self.untouched
    }

    /// Exactly one direction has ended: the connection counts against [`HALF_CLOSED_IDLE`].
    pub fn half_closed(&self) -> bool {
        self.up.shut != self.down.shut
    }

    /// Handles readiness of `side`: reads what it has for the other side, writes what waits
    /// for it.
    pub fn on_ready(
        &mut self,
        side: Side,
        readable: bool,
        writable: bool,
        buf: &mut [u8],
        watch: &mut dyn Watch,
        now: Instant,
    ) -> Step {
        if writable {
            let step = self.flush(side);
            if step != Step::Go {
                return step;
            }
        }
        if readable {
            let step = self.pump(side, buf, watch, now);
            if step != Step::Go {
                return step;
            }
        }
        self.settle()
    }

    /// One read from `src` and its write onward. (One read per readiness report keeps a busy
    /// connection from starving the region's others.)
    fn pump(&mut self, src: Side, buf: &mut [u8], watch: &mut dyn Watch, now: Instant) -> Step {
        let (from, to) = self.fds(src);
        let flow = self.flow(src);
        if flow.eof || !flow.pending.is_empty() {
            return Step::Go;
        }
        match sys::read(from, buf) {
            Ok(0) => {
                self.untouched = false;
                self.flow(src).eof = true;
                Step::Go
            }
            Ok(n) => {
                self.untouched = false;
                self.last_moved = now;
                match src {
                    Side::Client => watch.client_bytes(&buf[..n]),
                    Side::Child => watch.child_bytes(&buf[..n]),
                }
                let written = match sys::send(to, &buf[..n]) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(_) => return self.write_failed(src),
                };
                if written < n {
                    self.flow(src).pending.extend_from_slice(&buf[written..n]);
                }
                Step::Go
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Go,
            Err(_) => Step::Reset,
        }
    }

    /// Writes what waits for `dst`.
    fn flush(&mut self, dst: Side) -> Step {
        let src = dst.other();
        let (_, to) = self.fds(src);
        let flow = self.flow(src);
        if flow.pending.is_empty() {
            return Step::Go;
        }
        match sys::send(to, &flow.pending) {
            Ok(w) => {
                flow.pending.drain(..w);
                if flow.pending.is_empty() {
                    // Give the memory back: an idle connection holds no buffer.
                    flow.pending = Vec::new();
                }
                Step::Go
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Go,
            Err(_) => self.write_failed(src),
        }
    }

    /// A write of the flow from `src` failed: its destination is gone.
    fn write_failed(&mut self, src: Side) -> Step {
        if src == Side::Client && self.down.eof {
            // The child finished its answer and closed: the client keeps that answer.
            Step::Linger
        } else {
            Step::Reset
        }
    }

    /// Passes on ends of stream whose bytes are all written; says when both are done. The end
    /// that completes the pair is left to the owner's close, which sends the same FIN: its
    /// destination is the other direction's source, already read to its end, so nothing unread
    /// turns the close into a reset (one shutdown(2) fewer per connection).
    fn settle(&mut self) -> Step {
        for src in [Side::Client, Side::Child] {
            let (_, to) = self.fds(src);
            let other_shut = self.flow(src.other()).shut;
            let flow = self.flow(src);
            if flow.eof && !flow.shut && flow.pending.is_empty() {
                if !other_shut {
                    sys::shutdown_write(to);
                }
                flow.shut = true;
            }
        }
        if self.up.shut && self.down.shut {
            Step::Done
        } else {
            Step::Go
        }
    }

    /// The client side once the child is dropped: whatever of the child's answer still waits
    /// is written (best effort), then the client gets its FIN.
    pub fn into_client(self) -> OwnedFd {
        if !self.down.pending.is_empty() {
            let _ = sys::send(self.client.as_raw_fd(), &self.down.pending);
        }
        sys::shutdown_write(self.client.as_raw_fd());
        self.client
    }

    fn fds(&self, src: Side) -> (RawFd, RawFd) {
        match src {
            Side::Client => (self.client.as_raw_fd(), self.child.as_raw_fd()),
            Side::Child => (self.child.as_raw_fd(), self.client.as_raw_fd()),
        }
    }

    fn flow(&mut self, src: Side) -> &mut Flow {
        match src {
            Side::Client => &mut self.up,
            Side::Child => &mut self.down,
        }
    }
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Client => Side::Child,
            Side::Child => Side::Client,
        }
    }
}

/// Closes both sockets of a connection that failed, the surviving peer with a reset.
pub fn reset(d: Duplex) {
    sys::reset_on_close(&d.client);
    sys::reset_on_close(&d.child);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::os::fd::{FromRawFd, IntoRawFd};

    struct Count(usize, usize);
    impl Watch for Count {
        fn client_bytes(&mut self, b: &[u8]) {
            self.0 += b.len();
        }
        fn child_bytes(&mut self, b: &[u8]) {
            self.1 += b.len();
        }
    }

    /// A connected pair: (our end, their end).
    fn pair() -> (OwnedFd, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let theirs = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        ours.set_nonblocking(true).unwrap();
        // SAFETY: the descriptor was just released by `into_raw_fd`; nothing else owns it.
        (unsafe { OwnedFd::from_raw_fd(ours.into_raw_fd()) }, theirs)
    }

    /// Drives the duplex until `until` holds or 10 s pass, as the relay's loop would.
    fn drive(d: &mut Duplex, w: &mut Count, until: impl Fn(&Duplex, &Step) -> bool) -> Step {
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut step = Step::Go;
            for side in [Side::Client, Side::Child] {
                let wanted = d.wanted(side);
                step = d.on_ready(
                    side,
                    wanted & sys::WANT_READ != 0,
                    wanted & sys::WANT_WRITE != 0,
                    &mut buf,
                    w,
                    Instant::now(),
                );
                if step != Step::Go {
                    break;
                }
            }
            if until(d, &step) || Instant::now() > deadline {
                return step;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn half_close_is_passed_on_and_the_answer_still_flows() {
        let (c, mut client) = pair();
        let (k, mut child) = pair();
        let mut d = Duplex::new(c, k, Instant::now());
        let mut w = Count(0, 0);
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        drive(&mut d, &mut w, |d, _| d.up.shut);
        let mut got = Vec::new();
        child.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"request", "the child reads the request, then end of file");
        assert!(d.half_closed());
        child.write_all(b"answer").unwrap();
        child.shutdown(Shutdown::Write).unwrap();
        let step = drive(&mut d, &mut w, |_, s| *s == Step::Done);
        assert_eq!(step, Step::Done);
        drop(d);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"answer");
        assert_eq!((w.0, w.1), (7, 6));
    }

    #[test]
    fn a_reset_is_passed_on() {
        let (c, client) = pair();
        let (k, mut child) = pair();
        let mut d = Duplex::new(c, k, Instant::now());
        let mut w = Count(0, 0);
        sys::reset_on_close(&client);
        drop(client);
        let step = drive(&mut d, &mut w, |_, s| *s != Step::Go);
        assert_eq!(step, Step::Reset);
        reset(d);
        let mut buf = [0u8; 8];
        let e = child.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn a_full_destination_holds_at_most_one_read() {
        let (c, mut client) = pair();
        let (k, _child) = pair();
        let mut d = Duplex::new(c, k, Instant::now());
        let mut w = Count(0, 0);
        let data = vec![7u8; 64 << 20];
        let writer = std::thread::spawn(move || {
            let _ = client.write_all(&data);
        });
        // The child never reads: the copy stops with one read's worth pending.
        drive(&mut d, &mut w, |d, _| {
            !d.up.pending.is_empty() && d.wanted(Side::Client) & sys::WANT_READ == 0
        });
        assert!(d.up.pending.len() <= 4096);
        assert_eq!(d.wanted(Side::Child) & sys::WANT_WRITE, sys::WANT_WRITE);
        drop(d);
        let _ = writer.join();
    }
}
