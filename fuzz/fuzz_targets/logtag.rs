//! The log tagger: arbitrary child output in arbitrary chunks, checked line by line against
//! the batch model of the tagging rules (`logtag::properties`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use region_supervisor::logtag;

fuzz_target!(|data: &[u8]| logtag::properties::fuzz(data));
