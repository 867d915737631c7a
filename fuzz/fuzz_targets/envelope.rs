#![no_main]
//! See `ringmq_fuzz::wire_checks::envelope` for the input format and the checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq_fuzz::wire_checks::envelope(data));
