//! The probe's HTTP response parser, read whole and one byte at a time.
#![no_main]

#[path = "../../src/probe.rs"]
#[allow(dead_code)]
mod probe;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| probe::fuzz(data));
