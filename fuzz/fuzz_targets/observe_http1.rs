//! The HTTP/1 observer: every connection starts with a request method, so the rest of the
//! input reaches the HTTP/1 parsers (heads, chunked framing, gRPC-Web bodies).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let prologue = [common::Record { client: true, data: b"POST" }];
    common::check(&prologue, input);
});
