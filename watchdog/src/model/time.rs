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
}
