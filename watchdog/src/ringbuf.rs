//! Ring buffer -> decoded events. The reader never blocks the kernel side: it
//! drains the ring buffer and hands each event to a bounded channel with
//! `try_send`; a full channel drops the event and counts it.
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use watchdog_common::decode::{Event, decode};

use crate::sources::LossySender;

/// Counters of every hop after the kernel (kernel drops are read from the
/// DROPS map, see `Probes::kernel_drops`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the ring buffer and decoded.
    pub events: AtomicU64,
    /// Decoded events dropped because the channel to the engine was full
    /// (counted by the channel's [`LossySender`]).
    pub userspace_drops: Arc<AtomicU64>,
    /// Records that did not decode (wrong kind or size: a probe/agent mismatch).
    pub decode_errors: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// How often the ring buffer is drained without a wakeup (some probes
/// submit quiet events that do not wake the reader).
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Drain `rb` into `tx` until the receiver goes away: on every wakeup, and
/// every [`DRAIN_EVERY`].
pub async fn forward(
    rb: RingBuf<MapData>,
    tx: mpsc::Sender<Event>,
    counters: Arc<Counters>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open for as long as
    // the AsyncFd (which owns the ring buffer) lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(rb, tokio::io::Interest::READABLE) }?;
    let tx = LossySender::with_drops(tx, counters.userspace_drops.clone());
    loop {
        match tokio::time::timeout(DRAIN_EVERY, fd.readable_mut()).await {
            Ok(guard) => {
                let mut guard = guard?;
                let open = drain(guard.get_inner_mut(), &tx, &counters);
                guard.clear_ready();
                if !open {
                    return Ok(());
                }
            }
            Err(_) => {
                if !drain(fd.get_mut(), &tx, &counters) {
                    return Ok(());
                }
            }
        }
    }
}

/// Everything in the ring buffer now; false when the receiver is gone.
fn drain(rb: &mut RingBuf<MapData>, tx: &LossySender<Event>, counters: &Counters) -> bool {
    while let Some(item) = rb.next() {
        match decode(&item) {
            Ok(ev) => {
                counters.events.fetch_add(1, Ordering::Relaxed);
                if !tx.send(ev) {
                    return false;
                }
            }
            Err(e) => {
                if counters.decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("undecodable ring-buffer record: {e}");
                }
            }
        }
    }
    true
}
