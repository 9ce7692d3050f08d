//! The HTTP endpoint's request-head bound: verdicts at every length, and the head tiny_http
//! gets.
#![no_main]

#[path = "../../src/front/head.rs"]
#[allow(dead_code)]
mod head;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| head::fuzz(data));
