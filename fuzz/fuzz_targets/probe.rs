//! The probe's HTTP response parser, read whole and one byte at a time.
#![no_main]

#[path = "../../src/http_client.rs"]
#[allow(dead_code)]
mod http_client;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| http_client::fuzz(data));
