#![no_main]
//! A planted bug: panics on exactly the 4 bytes `RMQ!`. `make fuzz` runs it
//! first and fails unless libFuzzer finds the crash, which proves that the
//! toolchain, instrumentation and crash detection work end to end.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() == 4 && data[0] == b'R' && data[1] == b'M' && data[2] == b'Q' && data[3] == b'!' {
        panic!("canary: the fuzzer found the planted crash");
    }
});
