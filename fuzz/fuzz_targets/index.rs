#![no_main]
//! See `ringmq_fuzz::shards_checks::index` for the input format and checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq_fuzz::shards_checks::index(data));
