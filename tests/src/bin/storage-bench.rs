//! Overhead and detection delay of the storage-hang probes (run as root).
//!
//! Workloads, each in a fresh child process (this binary with the hidden
//! `--run-workload KIND N`), timed inside the child:
//! - `getppid`: N x syscall(SYS_getppid) (untracked syscall: the watched
//!   path costs one WATCHED lookup and one syscall-table lookup);
//! - `stat`: N x stat() of a file on the root file system (a tracked
//!   syscall: a watched task pays the in-flight insert with the path, and
//!   the delete at exit);
//! - `pingpong`: N round trips over two pipes between two processes (every
//!   one a context switch: the sched_switch program's cost).
//!
//! Each runs unwatched (this binary's name) and watched (exec'd through a
//! symlink named `runc`, a default --watch-comm), under the conditions:
//! - `baseline`: no agent;
//! - `floor`: `watchdog bench-floor --enter` (empty programs on sys_enter and
//!   sys_exit: the kernel's own cost of any syscall hook);
//! - `agent`: the agent as shipped, `watchdog trace --json`;
//! - `no_storage`: the same with `--no-storage`;
//! - `old_design`: an agent binary of the raw `sys_enter`/`sys_exit` design
//!   (an older build, given by `WATCHDOG_OLD_BIN`; skipped without it), with
//!   `trace --json --fork-probe off`, so that one run compares the designs.
//!
//! Then the detection delay: a `runc`-named stat on a hung FUSE mount with
//! `--hang-threshold 2s`; delay = finding received - call started - threshold.
//! Prints a table and one final line of JSON.
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use watchdog_tests::fuse::HangingFuse;
use watchdog_tests::*;

const ALL_CONDITIONS: [&str; 5] = ["baseline", "floor", "agent", "no_storage", "old_design"];

fn workload(kind: &str, n: u64) -> Duration {
    match kind {
        "getppid" => {
            let t = Instant::now();
            for _ in 0..n {
                // SAFETY: plain syscall without arguments.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            t.elapsed()
        }
        "stat" => {
            let p = CString::new("/proc/self/exe").unwrap();
            // A file on the root fs: this binary's own path.
            let exe = std::fs::read_link("/proc/self/exe").unwrap();
            let p2 = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or(p);
            // SAFETY: zeroed stat buffer, valid C string.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let t = Instant::now();
            for _ in 0..n {
                unsafe { libc::stat(p2.as_ptr(), &mut st) };
            }
            t.elapsed()
        }
        "pingpong" => pingpong(n),
        other => panic!("unknown workload {other}"),
    }
}

fn pingpong(n: u64) -> Duration {
    let mut a = [0i32; 2];
    let mut b = [0i32; 2];
    // SAFETY: pipe/fork/read/write on our own fds; the child only loops and
    // _exits. Both pinned to one CPU: otherwise the time depends on whether
    // the scheduler put them on the same CPU (measured: 0.5 s vs 4 s).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(libc::pipe(a.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(b.as_mut_ptr()), 0);
        let pid = libc::fork();
        assert!(pid >= 0);
        let mut byte = [0u8; 1];
        if pid == 0 {
            for _ in 0..n {
                if libc::read(a[0], byte.as_mut_ptr().cast(), 1) != 1 {
                    break;
                }
                libc::write(b[1], byte.as_ptr().cast(), 1);
            }
            libc::_exit(0);
        }
        let t = Instant::now();
        for _ in 0..n {
            libc::write(a[1], byte.as_ptr().cast(), 1);
            libc::read(b[0], byte.as_mut_ptr().cast(), 1);
        }
        let d = t.elapsed();
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        for fd in [a[0], a[1], b[0], b[1]] {
            libc::close(fd);
        }
        d
    }
}

/// Runs a workload in a fresh process (through `exe`, which sets its name).
fn run_child(exe: &Path, kind: &str, n: u64) -> f64 {
    let out = Command::new(exe)
        .args(["--run-workload", kind, &n.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run workload");
    assert!(out.status.success(), "workload {kind} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("workload prints seconds")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn old_bin() -> Option<PathBuf> {
    std::env::var_os("WATCHDOG_OLD_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn start_condition(cond: &str) -> Option<Agent> {
    let mut bin = agent_bin();
    let args: &[&str] = match cond {
        "baseline" => return None,
        "floor" => &["bench-floor", "--enter"],
        "agent" => &["trace", "--json"],
        "no_storage" => &["trace", "--json", "--no-storage"],
        "old_design" => {
            bin = old_bin().expect("old_design runs only with WATCHDOG_OLD_BIN");
            &["trace", "--json", "--fork-probe", "off"]
        }
        _ => unreachable!(),
    };
    Some(Agent::start_with(&bin, args, Duration::from_secs(20)))
}

fn detection_delay(reps: usize, names: &Path) -> Vec<f64> {
    let mut out = Vec::new();
    for _ in 0..reps {
        let mut kids: Vec<ChildGuard> = Vec::new();
        let fuse = HangingFuse::start();
        let agent = Agent::start(&["trace", "--json", "--hang-threshold", "2s"]);
        let mp = fuse.mount_point().to_string_lossy().into_owned();
        let started = unix_ns(SystemTime::now());
        let mut cmd = Command::new(names.join("runc"));
        cmd.args(["--run-workload", "stat-path", "1"])
            .arg(fuse.hang_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        kids.push(ChildGuard::spawn(&mut cmd, "runc stat on hung FUSE").unwrap());
        let rec = agent
            .wait_for_record(
                |v| v["cause"] == "storage_hang" && v["mount_point"] == mp.as_str(),
                Duration::from_secs(10),
            )
            .unwrap_or_else(|| panic!("no finding\n{}", agent.report()));
        out.push(secs_since_unix_ns(rec.wall, started) - 2.0);
        drop(agent);
        drop(fuse);
        drop(kids);
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--run-workload") {
        let kind = args[2].as_str();
        if kind == "stat-path" {
            // Blocks on the hung mount (detection-delay run).
            let p = CString::new(args[4].as_bytes()).unwrap();
            // SAFETY: zeroed buffer, valid C string.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            unsafe { libc::stat(p.as_ptr(), &mut st) };
            return;
        }
        let n: u64 = args[3].parse().unwrap();
        println!("{}", workload(kind, n).as_secs_f64());
        return;
    }
    assert!(is_root(), "run as root");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let names = std::env::temp_dir().join(format!("wd-sbench-{}", std::process::id()));
    std::fs::create_dir_all(&names).unwrap();
    let me = std::fs::read_link("/proc/self/exe").unwrap();
    let watched_exe = names.join("runc");
    std::os::unix::fs::symlink(&me, &watched_exe).unwrap();
    let unwatched_exe: PathBuf = me.clone();

    let only = std::env::var("ONLY").ok();
    let conditions: Vec<&str> = ALL_CONDITIONS
        .iter()
        .copied()
        .filter(|c| *c != "old_design" || old_bin().is_some())
        .collect();
    if old_bin().is_none() {
        eprintln!(
            "old_design not measured: set WATCHDOG_OLD_BIN to an agent binary of that design"
        );
    }
    let workloads: [(&str, u64); 3] = [
        ("getppid", 5_000_000),
        ("stat", 1_000_000),
        ("pingpong", 100_000),
    ];
    // results[cond][workload][watched] = runs
    let mut results: Vec<Vec<[Vec<f64>; 2]>> =
        vec![vec![[Vec::new(), Vec::new()]; workloads.len()]; conditions.len()];
    for round in 0..rounds {
        for ci in 0..conditions.len() {
            let ci = (ci + round) % conditions.len();
            let agent = start_condition(conditions[ci]);
            std::thread::sleep(Duration::from_millis(300));
            for (wi, (kind, n)) in workloads.iter().enumerate() {
                if only.as_deref().is_some_and(|o| o != *kind) {
                    continue;
                }
                for (w, exe) in [&unwatched_exe, &watched_exe].iter().enumerate() {
                    if *kind == "pingpong" && w == 1 {
                        continue;
                    }
                    results[ci][wi][w].push(run_child(exe, kind, *n));
                }
            }
            drop(agent);
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }
    let mut table = Vec::new();
    print!("{:<10} {:<10} {:>10}", "workload", "task", "baseline");
    for c in &conditions[1..] {
        print!(" {c:>16}");
    }
    println!();
    for (wi, (kind, n)) in workloads.iter().enumerate() {
        for (w, who) in ["unwatched", "watched"].iter().enumerate() {
            if (*kind == "pingpong" && w == 1) || only.as_deref().is_some_and(|o| o != *kind) {
                continue;
            }
            let meds: Vec<f64> = (0..conditions.len())
                .map(|ci| median(&mut results[ci][wi][w].clone()))
                .collect();
            let base = meds[0];
            let cell = |m: f64| format!("{:.3}s {:.3}x", m, m / base);
            print!("{:<10} {:<10} {:>10}", kind, who, format!("{base:.3}s"));
            for m in &meds[1..] {
                print!(" {:>16}", cell(*m));
            }
            println!();
            let per = |f: &dyn Fn(f64) -> f64| {
                conditions
                    .iter()
                    .zip(&meds)
                    .map(|(c, m)| ((*c).to_owned(), json!(f(*m))))
                    .collect::<serde_json::Map<String, Value>>()
            };
            table.push(json!({
                "workload": kind, "n": n, "task": who,
                "median_s": per(&|m| m),
                "ratio": per(&|m| m / base),
                "runs": (0..conditions.len()).map(|ci| (conditions[ci].to_owned(), json!(results[ci][wi][w]))).collect::<serde_json::Map<String, Value>>(),
            }));
        }
    }
    let delays = if only.is_some() {
        Vec::new()
    } else {
        detection_delay(3, &names)
    };
    println!(
        "detection delay past a 2 s threshold: {:?} s (poll interval 1 s)",
        delays
            .iter()
            .map(|d| (d * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    let _ = std::fs::remove_dir_all(&names);
    println!(
        "{}",
        json!({"type": "storage_bench", "rounds": rounds, "overhead": table, "detection_delay_s": delays})
    );
}
