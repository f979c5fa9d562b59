//! What the benchmark binaries share: interruption by a signal (so that
//! every guard unwinds and cleans up), statistics and number formatting.
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::{clk_tck, proc_cpu_ticks};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP only mark the run interrupted.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Panics (so that every guard unwinds and cleans up) if we were signalled.
pub fn check_interrupted() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted by a signal; cleaning up");
    }
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// A number for the JSON report, rounded to 6 decimals (null if not finite).
pub fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1e6).round() / 1e6)
    } else {
        Value::Null
    }
}

/// CPU seconds a process has used so far.
pub fn cpu_s(pid: u32) -> Option<f64> {
    proc_cpu_ticks(pid).map(|t| t as f64 / clk_tck() as f64)
}

pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// The conditions of round `round` (0-based) of `rounds`, rotated by one each
/// round so that none always runs first; prints the order.
pub fn round_order<T: Copy>(
    all: &[T],
    round: usize,
    rounds: usize,
    name: impl Fn(T) -> &'static str,
) -> Vec<T> {
    let mut order = all.to_vec();
    order.rotate_left(round % all.len().max(1));
    let names: Vec<&str> = order.iter().map(|c| name(*c)).collect();
    eprintln!("round {}/{rounds}: {}", round + 1, names.join(", "));
    order
}

/// A bench's command line: flags and their values, read in order. A missing
/// or bad value prints the message and the usage and exits 2.
pub struct BenchArgs {
    bench: &'static str,
    usage: &'static str,
    it: std::iter::Skip<std::env::Args>,
}

impl BenchArgs {
    pub fn new(bench: &'static str, usage: &'static str) -> Self {
        Self {
            bench,
            usage,
            it: std::env::args().skip(1),
        }
    }

    /// The next flag.
    pub fn next_flag(&mut self) -> Option<String> {
        self.it.next()
    }

    /// The number after `flag` (`_` separators allowed).
    pub fn number(&mut self, flag: &str) -> u64 {
        self.it
            .next()
            .and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or_else(|| self.exit(&format!("{flag} needs a number")))
    }

    /// The value after `flag`; `what` names it in the error.
    pub fn value(&mut self, flag: &str, what: &str) -> String {
        self.it
            .next()
            .unwrap_or_else(|| self.exit(&format!("{flag} needs {what}")))
    }

    /// `--help`: the usage on stdout, exit 0.
    pub fn help(&self) -> ! {
        println!("{}", self.usage);
        std::process::exit(0)
    }

    /// A bad command line: the message and the usage on stderr, exit 2.
    pub fn exit(&self, msg: &str) -> ! {
        eprintln!("{}: {msg}\n{}", self.bench, self.usage);
        std::process::exit(2)
    }
}
