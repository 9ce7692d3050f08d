//! The HTTP endpoint's request-head bound: verdicts at every length, and the head tiny_http
//! gets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use region_supervisor::front::head;

fuzz_target!(|data: &[u8]| head::fuzz(data));
