//! The first bytes of a D-Bus message (binary header or SASL line) that a
//! runtime process sent, as the probe copied them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watchdog::model::dbus::{Message, parse_sasl_slot};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let _ = Message::parse(kind % 3, bytes);
    let _ = parse_sasl_slot(bytes, u64::from(kind));
});
