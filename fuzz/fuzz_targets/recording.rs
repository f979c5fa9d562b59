//! Recordings (and the recordings inside bundles): what `watchdog replay`
//! reads from someone else's node. One that reads is fed to the engine, as a
//! replay does: that must not panic either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watchdog::{diagnosis::Engine, recording::Line};

fuzz_target!(|data: &[u8]| {
    let Ok(r) = watchdog::recording::read_from(data, std::path::Path::new("fuzz.jsonl")) else {
        return;
    };
    let mut engine = Engine::new(r.header.engine.clone());
    for input in r.inputs.into_iter().take(1000) {
        match input {
            Line::Observe(o) => {
                let _ = engine.observe(&o);
            }
            Line::Tick(t) => {
                let _ = engine.tick(t);
            }
            Line::Recording(_) => return,
        }
    }
});
