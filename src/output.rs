//! The supervisor's stdout: one writer thread owns fd 1; everybody else sends it whole lines.
//!
//! Because only this thread writes, and it writes whole batches of whole lines, lines of
//! different regions can never interleave. Everything goes through one FIFO, so a region's
//! "exited" event always follows that region's last lines. Memory is bounded two ways:
//! a region needs one of `LINE_TOKENS` tokens to queue a batch of lines (the writer hands the
//! token back once the batch is written), so when stdout is slow or blocked a region waits,
//! (a token is an empty buffer: the region keeps it to tag its next lines into, so buffers go
//! round without a single allocation in steady state),
//! which blocks only that region's own pipe (its thread still answers its mailbox meanwhile);
//! the supervisor's own events never wait, and are dropped and counted only past
//! `MAX_QUEUED_EVENTS` unwritten ones. A stdout that is gone (EPIPE) loses lines too, and
//! counts them.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use serde_json::Value;

use crate::time::rfc3339;

/// Batches of region lines queued at most. With read-sized batches (one read of a child's
/// pipe each) this bounds the memory a slow stdout can pin to about 1.3 MiB.
const LINE_TOKENS: usize = 16;
/// A returned line buffer keeps at most this much capacity.
const MAX_KEPT_BUFFER: usize = 256 * 1024;
/// Supervisor events queued at most (about 200 bytes each) before further ones are dropped.
const MAX_QUEUED_EVENTS: usize = 10_000;
/// Kernel buffer asked for stdout when it is a pipe.
const STDOUT_PIPE_SIZE: usize = 1 << 20;
/// The writer gathers queued batches into one `writev` of at most about this much.
const WRITE_CHUNK: usize = 256 * 1024;

enum Batch {
    /// Whole, tagged lines of a region, each ending in '\n'; `lines` of them. Holds a token.
    Lines { bytes: Vec<u8>, lines: u64 },
    /// One supervisor event line.
    Event(Vec<u8>),
    /// Answered once everything queued before it has been written.
    Flush(Sender<()>),
}

struct Output {
    tx: Sender<Batch>,
    /// Free line tokens (empty buffers); a region takes one before queueing a batch of lines.
    tokens: Receiver<Vec<u8>>,
    tokens_back: Sender<Vec<u8>>,
    queued_events: AtomicUsize,
    events_dropped: AtomicU64,
    lines_lost: AtomicU64,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Starts the writer thread. Before this (and in unit tests) events go straight to stdout.
pub fn start() -> JoinHandle<()> {
    let (tx, rx) = unbounded();
    let (tokens_back, tokens) = bounded(LINE_TOKENS);
    for _ in 0..LINE_TOKENS {
        tokens_back.send(Vec::new()).expect("room for every token");
    }
    let out = Output {
        tx,
        tokens,
        tokens_back,
        queued_events: AtomicUsize::new(0),
        events_dropped: AtomicU64::new(0),
        lines_lost: AtomicU64::new(0),
    };
    if OUTPUT.set(out).is_err() {
        panic!("output::start called twice");
    }
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || writer(rx))
        .expect("cannot start the stdout thread")
}

/// The line tokens: a region receives one (selecting on this together with its mailbox)
/// before `send_lines`, and keeps the empty buffer it is for its next lines.
pub fn line_tokens() -> Option<&'static Receiver<Vec<u8>>> {
    OUTPUT.get().map(|o| &o.tokens)
}

/// Queues tagged lines; the caller has just received a token from `line_tokens`.
pub fn send_lines(bytes: Vec<u8>, lines: u64) {
    if let Some(out) = OUTPUT.get() {
        // Unbounded channel: never blocks; the token bounds what is queued.
        let _ = out.tx.send(Batch::Lines { bytes, lines });
    }
}

/// Waits (at most `limit`) until everything queued so far is written.
pub fn flush(limit: Duration) {
    let Some(out) = OUTPUT.get() else { return };
    let (tx, rx) = bounded(1);
    if out.tx.send(Batch::Flush(tx)).is_ok() {
        let _ = rx.recv_timeout(limit);
    }
}

/// Lines that could not be written (stdout closed) or events dropped (queue full).
pub fn losses() -> (u64, u64) {
    OUTPUT
        .get()
        .map_or((0, 0), |o| (o.lines_lost.load(Ordering::Relaxed), o.events_dropped.load(Ordering::Relaxed)))
}

fn writer(rx: Receiver<Batch>) {
    // SAFETY: fd 1 stays open for the life of the process; ManuallyDrop never closes it.
    let mut stdout = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    // When stdout is a pipe (Docker's log reader, a shell pipeline), a larger buffer absorbs
    // bursts and halves the wake-ups on both sides.
    crate::sys::grow_pipe(1, STDOUT_PIPE_SIZE);
    let out = OUTPUT.get().expect("set before the thread starts");
    let mut batches: Vec<(bool, Vec<u8>)> = Vec::new(); // (holds a line token, bytes)
    let mut replies = Vec::new();
    let mut broken = false;
    while let Ok(first) = rx.recv() {
        let gathered = gather(first, &rx, &mut batches, &mut replies);
        if !broken && gathered.size > 0 {
            if let Err(e) = write_all_vectored(&mut stdout, &batches) {
                // Typically EPIPE (Rust ignores SIGPIPE): nobody reads our stdout any more.
                // Keep draining so no region blocks forever, and count what is lost.
                broken = true;
                eprintln!("region-supervisor: stdout is not writable ({e}); counting lost lines");
            }
        }
        if broken {
            out.lines_lost.fetch_add(gathered.lines, Ordering::Relaxed);
        }
        out.queued_events.fetch_sub(gathered.events, Ordering::Relaxed);
        give_back(out, &mut batches);
        for reply in replies.drain(..) {
            let _ = reply.send(());
        }
    }
}

/// What one round of the writer took from the queue.
struct Gathered {
    lines: u64,
    size: usize,
    events: usize,
}

/// Takes `first` and what else is queued, up to a chunk, so one writev writes it all without
/// copying: bytes into `batches`, flush requests into `replies`.
fn gather(
    first: Batch,
    rx: &Receiver<Batch>,
    batches: &mut Vec<(bool, Vec<u8>)>,
    replies: &mut Vec<Sender<()>>,
) -> Gathered {
    let mut g = Gathered { lines: 0, size: 0, events: 0 };
    let mut next = Some(first);
    while let Some(batch) = next.take() {
        match batch {
            Batch::Lines { bytes, lines } => {
                g.size += bytes.len();
                g.lines += lines;
                batches.push((true, bytes));
            }
            Batch::Event(bytes) => {
                g.size += bytes.len();
                g.lines += 1;
                g.events += 1;
                batches.push((false, bytes));
            }
            Batch::Flush(reply) => replies.push(reply),
        }
        if g.size < WRITE_CHUNK {
            next = rx.try_recv().ok();
        }
    }
    g
}

/// Returns the written line buffers to the regions (each is a token of the bounded pool).
fn give_back(out: &Output, batches: &mut Vec<(bool, Vec<u8>)>) {
    for (token, mut buf) in batches.drain(..) {
        if token {
            buf.clear();
            // A buffer that grew for an odd burst is not kept that large.
            buf.shrink_to(MAX_KEPT_BUFFER);
            let _ = out.tokens_back.send(buf);
        }
    }
}

fn write_all_vectored(out: &mut File, batches: &[(bool, Vec<u8>)]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice> = batches.iter().map(|(_, b)| IoSlice::new(b)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Logs one supervisor event as a JSON line: time, level, region (when about one), message,
/// then `fields` in order.
/// The level of one of the supervisor's own events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

pub fn event(level: Level, region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    let level = level.as_str();
    let mut line = format!("{{\"time\":\"{}\",\"level\":\"{level}\"", rfc3339(SystemTime::now()));
    if let Some(r) = region {
        line.push_str(",\"region\":");
        line.push_str(&Value::from(r).to_string());
    }
    line.push_str(",\"message\":");
    line.push_str(&Value::from(message).to_string());
    for (k, v) in fields {
        line.push_str(&format!(",{}:{v}", Value::from(*k)));
    }
    line.push_str("}\n");
    match OUTPUT.get() {
        Some(out) => {
            if out.queued_events.fetch_add(1, Ordering::Relaxed) >= MAX_QUEUED_EVENTS {
                out.queued_events.fetch_sub(1, Ordering::Relaxed);
                out.events_dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = out.tx.send(Batch::Event(line.into_bytes()));
            }
        }
        None => {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

pub fn info(region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    event(Level::Info, region, message, fields)
}

pub fn warn(region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    event(Level::Warn, region, message, fields)
}

pub fn error(region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    event(Level::Error, region, message, fields)
}
