//! The supervisor's stdout: one writer thread owns fd 1; everybody else sends it whole lines.
//!
//! Because only this thread writes, and it writes whole batches of whole lines, lines of
//! different regions can never interleave. The queue is bounded: when stdout is slow or
//! blocked, a region thread waits to hand over its batch (which in turn blocks only that
//! region's own pipe, and the thread still answers its mailbox meanwhile), while the
//! supervisor's own events are never allowed to block it: when the queue is full they are
//! dropped and counted. A stdout that is gone (EPIPE) loses lines too, and counts them.

use std::fs::File;
use std::io::{IoSlice, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, Sender};
use serde_json::Value;

/// Batches the queue holds before senders wait. With read-sized batches (at most
/// `logtag::READ_SIZE` of input each) this bounds the memory stdout can pin.
const QUEUE_BATCHES: usize = 16;
/// The writer gathers queued batches into one `writev` of at most about this much.
const WRITE_CHUNK: usize = 256 * 1024;

pub enum Batch {
    /// Whole, tagged lines, each ending in '\n'; `lines` of them.
    Lines { bytes: Vec<u8>, lines: u64 },
    /// Answered once everything queued before it has been written.
    Flush(Sender<()>),
}

struct Output {
    tx: Sender<Batch>,
    events_dropped: AtomicU64,
    lines_lost: AtomicU64,
}

static OUTPUT: OnceLock<Output> = OnceLock::new();

/// Starts the writer thread. Before this (and in unit tests) events go straight to stdout.
pub fn start() -> JoinHandle<()> {
    let (tx, rx) = bounded(QUEUE_BATCHES);
    let out = Output { tx, events_dropped: AtomicU64::new(0), lines_lost: AtomicU64::new(0) };
    if OUTPUT.set(out).is_err() {
        panic!("output::start called twice");
    }
    std::thread::Builder::new()
        .name("stdout".into())
        .spawn(move || writer(rx))
        .expect("cannot start the stdout thread")
}

/// Where region threads hand their lines over (they `select!` on it with their mailbox).
pub fn sender() -> Option<&'static Sender<Batch>> {
    OUTPUT.get().map(|o| &o.tx)
}

/// Waits (at most `limit`) until everything queued so far is written.
pub fn flush(limit: Duration) {
    let Some(out) = OUTPUT.get() else { return };
    let (tx, rx) = bounded(1);
    if out.tx.send_timeout(Batch::Flush(tx), limit).is_ok() {
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
    let lost = &OUTPUT.get().expect("set before the thread starts").lines_lost;
    let mut batches: Vec<Vec<u8>> = Vec::new();
    let mut replies = Vec::new();
    let mut broken = false;
    while let Ok(first) = rx.recv() {
        // Gather what is queued (up to a chunk) and write it with one writev: no copying.
        let (mut lines, mut size) = (0, 0);
        let mut next = Some(first);
        while let Some(batch) = next.take() {
            match batch {
                Batch::Lines { bytes, lines: n } => {
                    size += bytes.len();
                    lines += n;
                    batches.push(bytes);
                }
                Batch::Flush(reply) => replies.push(reply),
            }
            if size < WRITE_CHUNK {
                next = rx.try_recv().ok();
            }
        }
        if !broken && size > 0 {
            if let Err(e) = write_all_vectored(&mut stdout, &batches) {
                // Typically EPIPE (Rust ignores SIGPIPE): nobody reads our stdout any more.
                // Keep draining so no region blocks forever, and count what is lost.
                broken = true;
                eprintln!("region-supervisor: stdout is not writable ({e}); counting lost lines");
            }
        }
        if broken {
            lost.fetch_add(lines, Ordering::Relaxed);
        }
        batches.clear();
        for reply in replies.drain(..) {
            let _ = reply.send(());
        }
    }
}

fn write_all_vectored(out: &mut File, batches: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice> = batches.iter().map(|b| IoSlice::new(b)).collect();
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
pub fn event(level: &str, region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
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
            let batch = Batch::Lines { bytes: line.into_bytes(), lines: 1 };
            if out.tx.try_send(batch).is_err() {
                out.events_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            let _ = std::io::stdout().lock().write_all(line.as_bytes());
        }
    }
}

pub fn info(region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    event("info", region, message, fields)
}

pub fn warn(region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    event("warn", region, message, fields)
}

pub fn error(region: Option<&str>, message: &str, fields: &[(&str, Value)]) {
    event("error", region, message, fields)
}

/// `2026-11-22T06:41:50.123Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, public-domain algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_329_710_123);
        assert_eq!(rfc3339(t), "2026-11-22T06:41:50.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
