//! What both targets share: a connection played from fuzz input through the observer.
//!
//! The input is read as the corpus format of `tests/corpus/observe/` (records of a direction
//! byte, a 4-byte big-endian length and the data; a short or unknown record ends the input as
//! one last client chunk), so the stored corpus seeds the fuzzer. Each connection is played
//! twice, as recorded and one byte at a time: both must give the same metrics page, and neither
//! may panic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use region_supervisor::observe::{write_metrics, Observer, RequestStats};

pub struct Record<'a> {
    pub client: bool,
    pub data: &'a [u8],
}

pub fn records(mut input: &[u8]) -> Vec<Record<'_>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let client = match input[0] {
            b'c' => true,
            b's' => false,
            _ => {
                out.push(Record { client: true, data: input });
                break;
            }
        };
        let Some(len) = input.get(1..5).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
            out.push(Record { client: true, data: &input[1..] });
            break;
        };
        let end = (5 + len).min(input.len());
        out.push(Record { client, data: &input[5..end] });
        input = &input[end..];
    }
    out
}

fn play(prologue: &[Record], records: &[Record], bytewise: bool) -> String {
    let stats = Arc::new(RequestStats::new("/healthz"));
    let mut o = Observer::new(stats.clone());
    let t0 = Instant::now();
    for (i, r) in prologue.iter().chain(records).enumerate() {
        let now = t0 + Duration::from_millis(i as u64);
        let pieces: Vec<&[u8]> = if bytewise { r.data.chunks(1).collect() } else { vec![r.data] };
        for p in pieces {
            if r.client {
                o.client(p, now)
            } else {
                o.child(p, now)
            }
        }
    }
    o.end(t0 + Duration::from_secs(3600));
    let mut page = String::new();
    write_metrics(&[("fuzz", &stats)], &mut page);
    // Whatever happened, every request ended: nothing is left in flight.
    assert!(page.contains("supervisor_region_requests_in_flight{region=\"fuzz\"} 0\n"), "{page}");
    page
}

pub fn check(prologue: &[Record], input: &[u8]) {
    let records = records(input);
    let whole = play(prologue, &records, false);
    let bytewise = play(prologue, &records, true);
    assert_eq!(whole, bytewise);
}
