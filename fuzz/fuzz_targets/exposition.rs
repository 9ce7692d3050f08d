//! The exposition parser and relabeller, and the merge of two regions' pages.
#![no_main]

use libfuzzer_sys::fuzz_target;
use region_supervisor::exposition;

fuzz_target!(|data: &[u8]| exposition::fuzz(data));
