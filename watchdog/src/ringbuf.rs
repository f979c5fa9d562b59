//! Ring buffer -> decoded events. The reader never blocks the kernel side: it
//! drains the ring buffer and hands each event to a bounded channel with
//! `try_send`; a full channel drops the event and counts it.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
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

/// Raw records in the order the kernel submitted them: the events ring
/// buffer, or a fake in tests. The fd says when the kernel woke the reader.
///
/// # Safety
///
/// The fd is owned by the implementor: it stays open, and is the same fd,
/// for as long as the value lives (the reader registers it with tokio).
pub unsafe trait Records: AsRawFd {
    /// Hands the oldest record available now to `f`; `None` when there is none.
    fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T>;
}

// SAFETY: the ring buffer owns its map fd.
unsafe impl Records for RingBuf<MapData> {
    fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
        self.next().map(|item| f(&item))
    }
}

/// The kernel's events for the session loop, in submission order: a
/// non-blocking reader of the ring buffer in front of a bounded queue.
///
/// It is drained on every wakeup, every [`DRAIN_EVERY`], at every
/// [`Reader::next`], and by [`Reader::catch_up`], which a poll calls before
/// it samples anything, so that evidence already in the kernel is never
/// reported after a poll that came later.
pub struct Reader<R: Records = RingBuf<MapData>> {
    fd: AsyncFd<R>,
    tx: LossySender<Event>,
    rx: mpsc::Receiver<Event>,
    counters: Arc<Counters>,
}

impl<R: Records> Reader<R> {
    /// A reader of `records` with a queue of `queue` decoded events (beyond
    /// it events are dropped and counted).
    pub fn new(records: R, queue: usize, counters: Arc<Counters>) -> std::io::Result<Self> {
        // SAFETY: `Records` implementors own their fd, which stays open for as
        // long as the AsyncFd (which owns them) lives.
        let fd =
            unsafe { AsyncFd::register_with_interest(records, tokio::io::Interest::READABLE) }?;
        let (tx, rx) = mpsc::channel(queue);
        let tx = LossySender::with_drops(tx, counters.userspace_drops.clone());
        Ok(Self {
            fd,
            tx,
            rx,
            counters,
        })
    }

    /// The oldest event not yet taken, waiting for the kernel to wake the
    /// reader or for the next [`DRAIN_EVERY`]. Cancel-safe: nothing is lost
    /// when a `select!` drops it.
    pub async fn next(&mut self) -> std::io::Result<Event> {
        // A flood of ready events must not starve the other tasks.
        tokio::task::coop::consume_budget().await;
        loop {
            drain(self.fd.get_mut(), &self.tx, &self.counters);
            if let Ok(ev) = self.rx.try_recv() {
                return Ok(ev);
            }
            // A wakeup, or DRAIN_EVERY without one: drain at the loop's top.
            if let Ok(guard) = tokio::time::timeout(DRAIN_EVERY, self.fd.readable_mut()).await {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &self.tx, &self.counters);
                guard.clear_ready();
            }
        }
    }

    /// Every event the kernel has submitted until now, queued ones first,
    /// without waiting: what a poll hands to the engine before it samples.
    pub fn catch_up(&mut self) -> impl Iterator<Item = Event> + '_ {
        drain(self.fd.get_mut(), &self.tx, &self.counters);
        std::iter::from_fn(|| self.rx.try_recv().ok())
    }
}

/// Everything in `rb` now, decoded into `tx`; a full queue drops the event
/// and counts it.
fn drain(rb: &mut impl Records, tx: &LossySender<Event>, counters: &Counters) {
    while let Some(decoded) = rb.next_with(decode) {
        match decoded {
            Ok(ev) => {
                counters.events.fetch_add(1, Ordering::Relaxed);
                // A full queue drops and counts; the reader owns the
                // receiver, so it is never closed.
                tx.send(ev);
            }
            Err(e) => {
                if counters.decode_errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("undecodable ring-buffer record: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, os::unix::net::UnixDatagram};

    use watchdog_common::{
        COMM_LEN, EventHeader, EventKind, ForkFailureEvent, ForkSyscall, decode::as_bytes,
    };

    use super::*;

    /// Records the kernel submitted without waking the reader (a quiet
    /// submit, or an adaptive wakeup it skipped): the fd never becomes
    /// readable, only draining finds them.
    struct Quiet {
        records: VecDeque<Vec<u8>>,
        fd: UnixDatagram,
        _peer: UnixDatagram,
    }

    impl AsRawFd for Quiet {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            self.fd.as_raw_fd()
        }
    }

    // SAFETY: the socket is owned by the value.
    unsafe impl Records for Quiet {
        fn next_with<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> Option<T> {
            self.records.pop_front().map(|r| f(&r))
        }
    }

    fn reader(queue: usize) -> Reader<Quiet> {
        let (fd, _peer) = UnixDatagram::pair().unwrap();
        let quiet = Quiet {
            records: VecDeque::new(),
            fd,
            _peer,
        };
        Reader::new(quiet, queue, Arc::default()).unwrap()
    }

    fn submit(r: &mut Reader<Quiet>, pid: u32) {
        let ev = ForkFailureEvent {
            header: EventHeader::new(
                EventKind::ForkFailure,
                size_of::<ForkFailureEvent>(),
                u64::from(pid),
            ),
            tid: pid,
            pid,
            uid: 0,
            gid: 0,
            syscall: ForkSyscall::Clone as u32,
            ret: -11,
            clone_flags: 0,
            cgroup_id: 1,
            pids_cgroup_id: 2,
            comm: [0; COMM_LEN],
        };
        r.fd.get_mut().records.push_back(as_bytes(&ev).to_vec());
    }

    fn pids(events: impl Iterator<Item = Event>) -> Vec<u32> {
        events
            .map(|e| match e {
                Event::ForkFailure(f) => f.pid,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    /// The flake of issue 11: a poll reported a fork failure from
    /// `pids.events` while the kernel still held the event that names the
    /// failing process. Catching up must hand over everything the kernel
    /// has, queued events first, without waiting for a wakeup or a timer.
    #[tokio::test]
    async fn catch_up_hands_over_what_the_kernel_holds_in_order() {
        let mut r = reader(16);
        submit(&mut r, 1);
        submit(&mut r, 2);
        let first = r.next().await.unwrap();
        assert!(matches!(first, Event::ForkFailure(f) if f.pid == 1));
        // 2 is queued; 3 and 4 sit in the kernel, no wakeup announced them.
        submit(&mut r, 3);
        submit(&mut r, 4);
        assert_eq!(pids(r.catch_up()), [2, 3, 4]);
        assert_eq!(pids(r.catch_up()), [] as [u32; 0]);
        assert_eq!(Counters::get(&r.counters.events), 4);
        assert_eq!(Counters::get(&r.counters.userspace_drops), 0);
    }

    #[tokio::test]
    async fn next_finds_events_without_a_wakeup() {
        let mut r = reader(16);
        submit(&mut r, 7);
        let ev = tokio::time::timeout(DRAIN_EVERY / 2, r.next())
            .await
            .expect("a quiet event is found without waiting for the timer")
            .unwrap();
        assert!(matches!(ev, Event::ForkFailure(f) if f.pid == 7));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_exactly() {
        let mut r = reader(2);
        for pid in 1..=5 {
            submit(&mut r, pid);
        }
        r.fd.get_mut().records.push_back(vec![0; 16]);
        assert_eq!(pids(r.catch_up()), [1, 2]);
        assert_eq!(Counters::get(&r.counters.events), 5);
        assert_eq!(Counters::get(&r.counters.userspace_drops), 3);
        assert_eq!(Counters::get(&r.counters.decode_errors), 1);
    }
}
