//! sock_diag netlink replies (unix socket queues and peers).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let _ = watchdog::dbus::sock_diag::parse_messages(data, &mut out);
});
