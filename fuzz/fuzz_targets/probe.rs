//! The probe's HTTP response parser, read whole and one byte at a time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use region_supervisor::http_client;

fuzz_target!(|data: &[u8]| http_client::fuzz(data));
