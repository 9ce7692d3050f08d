//! A forwarder: takes one client connection with a complete head from the front, passes that
//! head to tiny_http over a new internal connection, copies the answer back, and returns the
//! connection to the front (for the client's next request, or to be closed).
//!
//! Runs on each of the front's forwarder threads; owns the connection only for the length of
//! one request. Every blocking step waits at most `SLICE` at a time, so the request's deadline
//! and a stop are noticed promptly whatever the client or tiny_http does.
//!
//! Descriptors: before the internal connection is opened, three descriptors are taken from the
//! budget (`accept.rs`): our end, tiny_http's accepted end, and the duplicate tiny_http makes
//! of it (and unwraps: it must never meet a full descriptor table because of us). When none
//! are left, the client gets 503 and the connection is closed; it can try again at once.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::head::{self, Head, Refusal, HEAD_LIMIT};
use crate::accept::Permit;
use crate::sys::{self, EventFd};

/// Descriptors an internal connection costs (see the module doc).
pub const BACKEND_FDS: usize = 3;
/// The longest single wait of a blocking read or write.
const SLICE: Duration = Duration::from_millis(100);
/// How long a refusal of ours may take to be written.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// A client connection and its share of the descriptor budget: held by the front while it
/// waits for a request, by a forwarder while one is answered.
pub struct Conn {
    pub fd: OwnedFd,
    pub _permit: Permit,
}

/// One request for a forwarder: the connection and what the front learned of its head.
pub struct Job {
    pub conn: Conn,
    pub head: Head,
}

/// A connection given back to the front.
pub enum Back {
    /// Answered; the client may send another request.
    Again(Conn),
    /// Answered (or refused); close it gracefully.
    Close(Conn),
    /// Broken or cut short: already closed.
    Gone,
}

/// How one request ended.
enum Outcome {
    Answered,
    /// Nothing was sent to the client yet: it gets this refusal.
    Refused(Refusal),
    /// The client went away, or the answer stopped half way: close at once.
    Broken,
}

pub struct Forwarder {
    pub backend: UnixAddr,
    pub answer_timeout: Duration,
    pub stop: Arc<AtomicBool>,
    pub back: Sender<Back>,
    pub wake: Arc<EventFd>,
}

impl Forwarder {
    pub fn run(self, jobs: Receiver<Job>) {
        let mut buf = vec![0u8; HEAD_LIMIT];
        let mut head = Vec::with_capacity(HEAD_LIMIT + 64);
        // Ends when the front has ended (it holds the senders).
        while let Ok(job) = jobs.recv() {
            let back = self.exchange(job, &mut buf, &mut head);
            if self.back.send(back).is_ok() {
                self.wake.wake();
            }
        }
    }

    fn exchange(&self, job: Job, buf: &mut [u8], head: &mut Vec<u8>) -> Back {
        let Conn { fd, _permit } = job.conn;
        let mut client = TcpStream::from(fd);
        let ready = client.set_nonblocking(false).is_ok()
            && client.set_read_timeout(Some(SLICE)).is_ok()
            && client.set_write_timeout(Some(SLICE)).is_ok();
        let outcome = if ready { self.serve(&mut client, job.head, buf, head) } else { Outcome::Broken };
        let keep = match outcome {
            Outcome::Answered => job.head.keep_alive && !self.stop.load(Ordering::Relaxed),
            Outcome::Refused(why) => {
                let deadline = Instant::now() + REFUSAL_TIME;
                if !self.send_all(&mut client, why.response().as_bytes(), deadline) {
                    return Back::Gone;
                }
                false
            }
            Outcome::Broken => {
                // A cut answer must not look complete: the client sees a reset, not a FIN.
                sys::reset_on_close(&client);
                return Back::Gone;
            }
        };
        if client.set_nonblocking(true).is_err() {
            return Back::Gone;
        }
        let conn = Conn { fd: client.into(), _permit };
        if keep {
            Back::Again(conn)
        } else {
            Back::Close(conn)
        }
    }

    fn serve(&self, client: &mut TcpStream, h: Head, buf: &mut [u8], head: &mut Vec<u8>) -> Outcome {
        let deadline = Instant::now() + self.answer_timeout;
        let Some(_fds) = Permit::take(BACKEND_FDS, 0) else { return Outcome::Refused(Refusal::Unavailable) };
        // The front saw the whole head in the socket: these reads do not wait.
        if !self.read_exact(client, &mut buf[..h.len], deadline) {
            return Outcome::Broken;
        }
        head::for_backend(&buf[..h.len], head);
        let Ok(mut backend) = UnixStream::connect_addr(&self.backend) else {
            return Outcome::Refused(Refusal::Unavailable);
        };
        let ready =
            backend.set_read_timeout(Some(SLICE)).is_ok() && backend.set_write_timeout(Some(SLICE)).is_ok();
        if !ready || !self.send_all(&mut backend, head, deadline) {
            return Outcome::Refused(Refusal::Unavailable);
        }
        let _ = backend.shutdown(Shutdown::Write);
        let mut sent = false;
        loop {
            match self.receive(&mut backend, buf, deadline) {
                Some(0) if sent => return Outcome::Answered,
                Some(n) if n > 0 => {
                    if !self.send_all(client, &buf[..n], deadline) {
                        return Outcome::Broken;
                    }
                    sent = true;
                }
                _ if sent => return Outcome::Broken,
                _ => return Outcome::Refused(Refusal::Unavailable),
            }
        }
    }

    /// Whether to give up on the current request.
    fn give_up(&self, deadline: Instant) -> bool {
        self.stop.load(Ordering::Relaxed) || Instant::now() >= deadline
    }

    /// Writes all of `bytes`; false if the peer failed, or the deadline or a stop came first.
    fn send_all(&self, to: &mut impl Write, mut bytes: &[u8], deadline: Instant) -> bool {
        while !bytes.is_empty() {
            match to.write(bytes) {
                Ok(0) => return false,
                Ok(n) => bytes = &bytes[n..],
                Err(e) if waited(&e) && !self.give_up(deadline) => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// One read: `Some(0)` at end of stream, `None` on failure, deadline or stop.
    fn receive(&self, from: &mut impl Read, buf: &mut [u8], deadline: Instant) -> Option<usize> {
        loop {
            match from.read(buf) {
                Ok(n) => return Some(n),
                Err(e) if waited(&e) && !self.give_up(deadline) => {}
                Err(_) => return None,
            }
        }
    }

    fn read_exact(&self, from: &mut impl Read, mut buf: &mut [u8], deadline: Instant) -> bool {
        while !buf.is_empty() {
            match self.receive(from, buf, deadline) {
                Some(n) if n > 0 => buf = &mut buf[n..],
                _ => return false,
            }
        }
        true
    }
}

/// A timed-out or interrupted wait: try again (if time is left).
fn waited(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}
