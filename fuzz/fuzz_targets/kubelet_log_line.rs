//! kubelet's (and the runtimes') log lines, from a file or the journal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watchdog::sources::kubelet::log::{parse_go_duration, parse_line, parse_pleg_message};

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = parse_line(&line);
    let _ = parse_pleg_message(&line);
    let _ = parse_go_duration(&line);
});
