//! Waiting, one way for every privileged test: never a fixed sleep that
//! stands for "until X happened", always X itself, with a deadline.
//!
//! - [`until`]: look at a condition until it holds; on timeout the error
//!   says what was awaited, for how long, and what was last seen.
//! - [`on_condvar`]: the same for state a reader thread updates and signals
//!   (agent records, workload output), without polling.
//! - [`for_log`]: a line in a fixture's log.
//! - [`ticks_after`]: the barrier for absence checks: the agent's own poll
//!   clock in its `--record` file (see `Agent::wait_for_poll_after`).
use std::fmt;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often [`until`] looks again.
pub const POLL: Duration = Duration::from_millis(10);

/// A wait that ran out: what was awaited, for how long, and what was last
/// seen instead.
#[derive(Debug)]
pub struct TimedOut {
    pub what: String,
    pub waited: Duration,
    pub last: String,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} did not happen within {:?}; last seen: {}",
            self.what, self.waited, self.last
        )
    }
}

impl std::error::Error for TimedOut {}

impl From<TimedOut> for String {
    fn from(t: TimedOut) -> Self {
        t.to_string()
    }
}

/// Looks at `check` every [`POLL`] until it gives `Ok`, or `timeout` has
/// passed (it is looked at once more at the deadline). `Err(seen)` is what it
/// saw instead, reported on timeout.
pub fn until<T, S: fmt::Debug>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<T, S>,
) -> Result<T, TimedOut> {
    until_every(what, timeout, POLL, check)
}

/// [`until`], looking every `every` (for checks that cost something, such as
/// a command).
pub fn until_every<T, S: fmt::Debug>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, S>,
) -> Result<T, TimedOut> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let seen = match check() {
            Ok(v) => return Ok(v),
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut {
                what: what.to_owned(),
                waited: now - started,
                last: format!("{seen:?}"),
            });
        }
        thread::sleep(every.min(deadline - now));
    }
}

/// Waits on `pair`'s condition variable (which whoever changes the state
/// notifies) until `f` gives `Some`, or `timeout` has passed. `f` sees the
/// state under the lock, first right away and then after every change.
pub fn on_condvar<G, T>(
    pair: &(Mutex<G>, Condvar),
    timeout: Duration,
    mut f: impl FnMut(&mut G) -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let (m, cv) = pair;
    let mut g = lock(m);
    loop {
        if let Some(v) = f(&mut g) {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        g = cv
            .wait_timeout(g, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Waits up to `timeout` for `needle` to appear in `log` (a fixture's output,
/// appended by a reader thread).
pub fn for_log(log: &Mutex<String>, needle: &str, timeout: Duration) -> bool {
    until(&format!("{needle:?} in the log"), timeout, || {
        lock(log).contains(needle).then_some(()).ok_or(())
    })
    .is_ok()
}

/// The agent's poll clock (ms since the epoch) in its recording: every
/// `{"tick": "<RFC 3339 UTC>"}` line after `since`, in order. A poll writes its tick after
/// it has handed the kernel's pending events and its limit samples to the
/// engine, so a tick later than `since` proves the agent evaluated past it.
pub fn ticks_after(recording: &Path, since: SystemTime) -> Vec<u64> {
    let since = since
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    std::fs::read_to_string(recording)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["tick"].as_str().and_then(rfc3339_ms))
        // Strictly later: the poll began in a later millisecond than `since`.
        .filter(|&t| t > since)
        .collect()
}

/// Milliseconds since the epoch of a UTC time as the agent writes it
/// (`2026-12-04T15:53:07.651Z`, fraction optional).
fn rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let num = |v: &str| v.parse::<i64>().ok();
    let mut d = date.splitn(3, '-').map(num);
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(num);
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms = match frac.len() {
        0 => 0,
        n => num(&frac[..n.min(3)])? * 10_i64.pow(3 - n.min(3) as u32),
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + ms).ok()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_reports_what_it_last_saw() {
        let mut n = 0;
        let e = until("n to reach 1000", Duration::from_millis(30), || {
            n += 1;
            Err::<(), _>(n)
        })
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("n to reach 1000 did not happen within")
        );
        assert_eq!(e.last, n.to_string());
        assert_eq!(until("now", Duration::ZERO, || Ok::<_, ()>(7)).unwrap(), 7);
    }

    #[test]
    fn ticks_are_read_from_a_recording() {
        let path = std::env::temp_dir().join(format!("wd-ticks-{}.jsonl", std::process::id()));
        std::fs::write(
            &path,
            "{\"recording\":{}}\n{\"tick\":\"1970-01-01T00:00:01.000Z\"}\n{\"observe\":{}}\n\
             {\"tick\":\"1970-01-01T00:00:02Z\"}\n{\"tick\":\"1970-01-01T00:00:03.001Z\"}\n",
        )
        .unwrap();
        let since = UNIX_EPOCH + Duration::from_millis(2000);
        assert_eq!(ticks_after(&path, since), [3001]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn agent_times_parse() {
        assert_eq!(
            rfc3339_ms("2026-12-04T15:53:07.651Z"),
            Some(1_796_399_587_651)
        );
        assert_eq!(rfc3339_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(rfc3339_ms("2000-02-29T00:00:00.5Z"), Some(951_782_400_500));
        assert_eq!(rfc3339_ms("2000-02-29 00:00:00"), None);
    }
}
