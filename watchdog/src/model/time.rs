//! Wall-clock instants as milliseconds since the Unix epoch. The engine never
//! reads a clock; callers pass `Time`s in (the live agent from the system
//! clock, tests and replay from recorded data).
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    pub fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub fn from_system(t: SystemTime) -> Self {
        Self(
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        )
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    pub fn millis_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn secs_since(self, earlier: Time) -> f64 {
        self.millis_since(earlier) as f64 / 1000.0
    }

    pub fn plus_millis(self, ms: u64) -> Self {
        Self(self.0 + ms)
    }

    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.to_system()).to_string()
    }

    /// Local-looking `HH:MM:SS` (UTC) for terminal output.
    pub fn hms(self) -> String {
        let s = self.rfc3339();
        s.get(11..19).unwrap_or(&s).to_owned()
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.rfc3339())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s)
            .map(Self::from_system)
            .map_err(|e| serde::de::Error::custom(format!("bad RFC 3339 time {s:?}: {e}")))
    }
}

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
    fn serializes_as_rfc3339_and_back() {
        let t = Time(1_785_000_000_123);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, "\"2026-07-25T17:20:00.123Z\"");
        assert_eq!(serde_json::from_str::<Time>(&json).unwrap(), t);
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    }

    #[test]
    fn monotonic_conversion_is_near_now() {
        let c = MonotonicClock::new();
        let t = c.to_time(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        assert!(Time::now().millis_since(t) < 1000);
    }
}
