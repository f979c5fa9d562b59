//! kubelet's `/metrics` page: any text parses to metrics or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watchdog::{model::Time, sources::kubelet::metrics::parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = std::str::from_utf8(data) {
        let _ = parse(page, Time(1_785_000_000_000));
    }
});
