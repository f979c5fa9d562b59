//! /proc/*/mountinfo: mount points and sources are chosen by users.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = watchdog::context::mounts::parse(&text);
});
