//! The log tagger: arbitrary child output in arbitrary chunks, checked line by line against
//! the batch model of the tagging rules (`logtag::properties`).
#![no_main]

#[path = "../../src/logtag/mod.rs"]
#[allow(dead_code)]
mod logtag;
#[path = "../../src/time.rs"]
#[allow(dead_code, unused_imports, unused_macros)]
mod time;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| logtag::properties::fuzz(data));
