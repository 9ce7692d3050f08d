//! The HTTP/2 observer: every connection starts with the client preface and both sides'
//! SETTINGS, so the rest of the input reaches the frame readers and the HPACK decoders.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

const PREFACE_AND_SETTINGS: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const SETTINGS: &[u8] = b"\0\0\0\x04\0\0\0\0\0";

fuzz_target!(|input: &[u8]| {
    let prologue =
        [common::Record { client: true, data: PREFACE_AND_SETTINGS }, common::Record { client: false, data: SETTINGS }];
    common::check(&prologue, input);
});
