//! The exposition parser and relabeller, and the merge of two regions' pages.
#![no_main]

#[path = "../../src/exposition.rs"]
#[allow(dead_code)]
mod exposition;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| exposition::fuzz(data));
