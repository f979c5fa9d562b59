//! A `redis-server` of our own and `redis-benchmark` runs against it, for the
//! real-workload benchmark (`redis-bench`). Both come from Debian
//! (`redis-server`, `redis-tools`; `cargo xtask setup` installs them).
//!
//! The server listens on a free loopback port only, keeps nothing on disk
//! (`--save '' --appendonly no`) and has its working directory and log in a
//! private temporary directory; [`RedisServer`]'s `Drop` SIGKILLs it (a
//! [`ChildGuard`]) and removes that directory.
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::ChildGuard;

pub const REDIS_SERVER: &str = "redis-server";
pub const REDIS_BENCHMARK: &str = "redis-benchmark";
pub const TASKSET: &str = "taskset";

/// The first line of `redis-server --version`, or why it could not run.
pub fn server_version() -> Result<String, String> {
    let out = Command::new(REDIS_SERVER)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{REDIS_SERVER}: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// Whether `redis-benchmark` can be started (it has no `--version` before
/// redis 7; `--help` exits non-zero on some versions, so only spawning counts).
pub fn benchmark_available() -> Result<(), String> {
    Command::new(REDIS_BENCHMARK)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
        .map_err(|e| format!("{REDIS_BENCHMARK}: {e}"))
}

/// Our own `redis-server`, pinned to one CPU with `taskset -c CPU`.
pub struct RedisServer {
    child: Option<ChildGuard>,
    port: u16,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts it on a free loopback port and waits (up to 10 s) until it
    /// answers `PING`. Retries with another port if the one picked was taken
    /// in between.
    pub fn start(cpu: usize) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_loopback_port()?;
            match Self::start_on(cpu, port) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_on(cpu: usize, port: u16) -> Result<Self, String> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wd-redis-bench-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        // From here on, Drop removes the directory (and the server, once set).
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        let log = server.dir.join("redis.log");
        let mut cmd = Command::new(TASKSET);
        cmd.args(["-c", &cpu.to_string(), REDIS_SERVER])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&server.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let label = format!("redis-server on 127.0.0.1:{port} (CPU {cpu})");
        server.child = Some(ChildGuard::spawn(&mut cmd, &label).map_err(|e| e.to_string())?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if server.ping() {
                return Ok(server);
            }
            if let Some(st) = server.child.as_mut().and_then(ChildGuard::try_wait) {
                return Err(format!("{label} exited ({st}):\n{}", server.log_tail()));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{label} did not answer PING within 10 s:\n{}",
                    server.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(ChildGuard::pid).unwrap_or(0)
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().is_none())
    }

    /// `PING` over a fresh connection, with 500 ms timeouts.
    pub fn ping(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// The last lines of the server's log (for error messages).
    pub fn log_tail(&self) -> String {
        let s = fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        drop(self.child.take());
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A port the kernel just gave us on 127.0.0.1 (free a moment ago).
fn free_loopback_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// One test's line of `redis-benchmark --csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct TestResult {
    /// `SET`, `GET`, ...
    pub test: String,
    pub rps: f64,
    /// Latencies in ms (redis 7 prints them; `None` with older versions).
    pub avg_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Parses `redis-benchmark --csv`: redis 7 prints a header
/// (`"test","rps","avg_latency_ms",...`) then one line per test; redis 6
/// prints `"SET","85470.09"` lines without a header.
pub fn parse_csv(out: &str) -> Result<Vec<TestResult>, String> {
    let fields = |l: &str| -> Vec<String> {
        l.trim()
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut header: Option<Vec<String>> = None;
    let mut res = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let f = fields(line);
        if f.first().is_some_and(|c| c == "test") {
            header = Some(f);
            continue;
        }
        let col = |name: &str, default: Option<usize>| -> Option<f64> {
            let i = match &header {
                Some(h) => h.iter().position(|c| c == name)?,
                None => default?,
            };
            f.get(i)?.parse().ok()
        };
        let rps = col("rps", Some(1))
            .ok_or_else(|| format!("redis-benchmark: no requests/s in {line:?}"))?;
        res.push(TestResult {
            test: f[0].clone(),
            rps,
            avg_ms: col("avg_latency_ms", None),
            p50_ms: col("p50_latency_ms", None),
            p99_ms: col("p99_latency_ms", None),
        });
    }
    if res.is_empty() {
        return Err(format!("redis-benchmark printed no results: {out:?}"));
    }
    Ok(res)
}

/// What one `redis-benchmark` run is asked to do.
#[derive(Clone, Debug)]
pub struct BenchmarkRun {
    pub port: u16,
    /// Pinned with `taskset -c CPU`.
    pub cpu: usize,
    pub clients: u32,
    pub requests: u64,
    /// `-t` (e.g. `get,set`).
    pub tests: String,
    /// Killed (and an error returned) past this.
    pub timeout: Duration,
}

impl BenchmarkRun {
    /// `taskset -c CPU redis-benchmark -h 127.0.0.1 -p PORT -c C -n N -t T --csv`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(TASKSET);
        cmd.args(["-c", &self.cpu.to_string(), REDIS_BENCHMARK])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-c", &self.clients.to_string()])
            .args(["-n", &self.requests.to_string()])
            .args(["-t", &self.tests, "--csv"]);
        cmd
    }

    /// Runs it to completion (a [`ChildGuard`]: killed on timeout or panic)
    /// and parses its results.
    pub fn run(&self) -> Result<Vec<TestResult>, String> {
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            ChildGuard::spawn(&mut cmd, "redis-benchmark").map_err(|e| e.to_string())?;
        let out = reader(child.take_stdout());
        let err = reader(child.child_mut().stderr.take());
        let status = child.wait_timeout(self.timeout);
        child.kill_group();
        let (out, err) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        match status {
            None => Err(format!(
                "redis-benchmark did not finish within {:?}; stderr: {err:?}",
                self.timeout
            )),
            Some(s) if !s.success() => {
                Err(format!("redis-benchmark failed ({s}): {err:?} {out:?}"))
            }
            Some(_) => parse_csv(&out),
        }
    }
}

fn reader(r: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis7_csv() {
        // Real output of Debian 12's redis-benchmark 7.0.15.
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET\",\"85470.09\",\"0.063\",\"0.024\",\"0.055\",\"0.103\",\"0.223\",\"2.023\"\n\
                   \"GET\",\"83333.34\",\"0.060\",\"0.024\",\"0.055\",\"0.095\",\"0.199\",\"5.607\"\n";
        let r = parse_csv(out).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            TestResult {
                test: "SET".into(),
                rps: 85470.09,
                avg_ms: Some(0.063),
                p50_ms: Some(0.055),
                p99_ms: Some(0.223),
            }
        );
        assert_eq!(r[1].test, "GET");
        assert_eq!(r[1].rps, 83333.34);
        assert_eq!(r[1].p99_ms, Some(0.199));
    }

    #[test]
    fn parses_headerless_csv() {
        let r = parse_csv("\"SET\",\"85470.09\"\n\"GET\",\"83333.34\"\n").unwrap();
        assert_eq!(r[1].test, "GET");
        assert_eq!(r[1].rps, 83333.34);
        assert_eq!(r[1].p50_ms, None);
    }

    #[test]
    fn rejects_empty_or_garbled_output() {
        assert!(parse_csv("").is_err());
        assert!(parse_csv("Could not connect to Redis at 127.0.0.1:1\n").is_err());
    }
}
