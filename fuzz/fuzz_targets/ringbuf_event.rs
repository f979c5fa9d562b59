//! Ring-buffer records as the kernel programs write them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = watchdog_common::decode::decode(data);
});
