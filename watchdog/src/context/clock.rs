//! The kernel's event stamps (CLOCK_MONOTONIC nanoseconds) as the wall-clock
//! times the observations carry.
use crate::model::Time;

/// Converts the kernel's CLOCK_MONOTONIC event stamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    /// realtime - monotonic, in nanoseconds.
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a local timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl MonotonicClock {
    pub fn new() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Self {
            offset_ns: real - mono,
        }
    }

    pub fn to_time(self, ktime_ns: u64) -> Time {
        let real = i128::from(ktime_ns) + self.offset_ns;
        Time((real.max(0) / 1_000_000) as u64)
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_conversion_is_near_now() {
        let c = MonotonicClock::new();
        let t = c.to_time(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        assert!(Time::now().millis_since(t) < 1000);
    }
}
