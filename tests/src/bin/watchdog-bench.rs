//! Overhead and detection-latency benchmark of the watchdog agent (run as
//! root, by `cargo xtask bench`).
//!
//! Workloads, each run in a fresh child process (this binary with the hidden
//! `--run-workload KIND N`) so that the bench's own threads and memory do not
//! change what a fork costs; only the loop is timed:
//! - syscall-heavy: N x `syscall(SYS_getppid)` (default 20 million);
//! - fork-heavy: N x `fork()` + `waitpid()` of a child that `_exit(0)`s
//!   (default 5000).
//!
//! Conditions, alternated in rounds with the order rotated each round:
//! - `baseline`: no agent;
//! - `floor`: `watchdog bench-floor` (an empty program on the same sys_exit
//!   hook: the kernel's floor for any syscall hook);
//! - `trace`: the full agent with the fork probe attached for the whole
//!   session, `watchdog trace --json --fork-probe always` (its worst case);
//! - `auto`: the agent as shipped, `watchdog trace --json` (`--fork-probe
//!   auto`: on a healthy node only the task_newtask probe is attached).
//!
//! Then the detection latency, for `--fork-probe always` and `auto`: per
//! repetition a fresh pids cgroup (max 16), a fresh agent, and a python
//! process forking in the cgroup until EAGAIN; latency = receive time of the
//! finding line - the workload's CLOCK_REALTIME timestamp taken just before
//! the fork() call that failed (an upper bound: the failure is a few us later).
//!
//! Prints a table, then one final line of JSON with every number.
//! Everything started here is an RAII guard: cleaned up on panic, and on
//! SIGINT/SIGTERM (checked between phases, then unwound).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use watchdog_tests::{bench::*, *};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Baseline,
    Floor,
    Trace,
    Auto,
}

impl Condition {
    const ALL: [Condition; 4] = [
        Condition::Baseline,
        Condition::Floor,
        Condition::Trace,
        Condition::Auto,
    ];

    fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "baseline",
            Condition::Floor => "floor",
            Condition::Trace => "trace",
            Condition::Auto => "auto",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Condition::Baseline => &[],
            Condition::Floor => &["bench-floor"],
            Condition::Trace => &["trace", "--json", "--fork-probe", "always"],
            Condition::Auto => &["trace", "--json"],
        }
    }

    fn is_trace(self) -> bool {
        matches!(self, Condition::Trace | Condition::Auto)
    }
}

struct Opts {
    rounds: usize,
    syscalls: u64,
    forks: u32,
    latency_reps: usize,
    latency: bool,
    overhead: bool,
    bin: PathBuf,
}

const USAGE: &str = "\
usage: watchdog-bench [--rounds N] [--syscalls N] [--forks N] [--latency-reps N]
                      [--no-latency] [--no-overhead] [--quick] [--bin PATH]
  --rounds N        rounds of baseline/floor/trace/auto, order rotated (default 5)
  --syscalls N      getppid() calls per syscall-heavy run (default 20000000)
  --forks N         fork()+waitpid() per fork-heavy run (default 5000)
  --latency-reps N  detection-latency repetitions per fork-probe mode (default 5)
  --quick           1 round, 2M syscalls, 500 forks, 2 latency reps (smoke run)
  --bin PATH        agent binary (default: $WATCHDOG_BIN, else target/release/watchdog)";

fn parse_args() -> Opts {
    let mut o = Opts {
        rounds: 5,
        syscalls: 20_000_000,
        forks: 5000,
        latency_reps: 5,
        latency: true,
        overhead: true,
        bin: PathBuf::new(),
    };
    let mut bin = None;
    let mut args = BenchArgs::new("watchdog-bench", USAGE);
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--rounds" => o.rounds = args.number("--rounds").max(1) as usize,
            "--syscalls" => o.syscalls = args.number("--syscalls"),
            "--forks" => o.forks = args.number("--forks") as u32,
            "--latency-reps" => o.latency_reps = args.number("--latency-reps") as usize,
            "--no-latency" => o.latency = false,
            "--no-overhead" => o.overhead = false,
            "--quick" => {
                o.rounds = 1;
                o.syscalls = 2_000_000;
                o.forks = 500;
                o.latency_reps = 2;
            }
            "--bin" => bin = Some(PathBuf::from(args.value("--bin", "a path"))),
            "-h" | "--help" => args.help(),
            other => args.exit(&format!("unknown argument {other:?}")),
        }
    }
    o.bin = match bin {
        Some(b) => b,
        None => agent_bin(),
    };
    o
}

fn usage_exit(msg: &str) -> ! {
    BenchArgs::new("watchdog-bench", USAGE).exit(msg)
}

// ---------------------------------------------------------------------------
// Workloads
// ---------------------------------------------------------------------------

/// Runs one workload in a fresh child process (`--run-workload KIND N`) and
/// returns the time its loop took, as the child measured it.
fn workload_in_child(kind: &str, n: u64) -> Duration {
    let exe = std::env::current_exe().expect("own executable");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--run-workload", kind, &n.to_string()])
        .stdout(std::process::Stdio::piped());
    let mut child = ChildGuard::spawn(&mut cmd, kind).unwrap_or_else(|e| panic!("{e}"));
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.take_stdout().expect("piped"), &mut out)
        .expect("read workload output");
    let status = child.wait_timeout(Duration::from_secs(600));
    assert!(
        status.is_some_and(|s| s.success()),
        "{kind} workload failed: {status:?} {out:?}"
    );
    let ns: u64 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{kind} workload printed {out:?}"));
    Duration::from_nanos(ns)
}

/// The hidden `--run-workload KIND N` mode: run the loop, print its ns.
fn run_workload_mode(args: &[String]) -> ! {
    let n: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let d = match args.first().map(String::as_str) {
        Some("getppid") => getppid_loop(n),
        Some("fork") => fork_loop(n as u32),
        other => usage_exit(&format!("unknown workload {other:?}")),
    };
    println!("{}", d.as_nanos());
    std::process::exit(0);
}

fn getppid_loop(n: u64) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: getppid has no arguments and cannot fail.
        std::hint::black_box(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    t.elapsed()
}

fn fork_loop(n: u32) -> Duration {
    let t = Instant::now();
    for i in 0..n {
        // SAFETY: the child only calls _exit (async-signal-safe), so forking a
        // multi-threaded process is fine.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe { libc::_exit(0) };
        }
        assert!(
            pid > 0,
            "fork #{i} failed: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: waiting for our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    }
    t.elapsed()
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

#[derive(Default)]
struct CondRuns {
    getppid_s: Vec<f64>,
    fork_s: Vec<f64>,
    /// Agent CPU seconds during each workload run.
    agent_cpu_getppid_s: Vec<f64>,
    agent_cpu_fork_s: Vec<f64>,
    rss_kib: Vec<u64>,
    startup_s: Vec<f64>,
    summaries: Vec<Value>,
    errors: Vec<String>,
    notes: Vec<String>,
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

fn run_condition(o: &Opts, cond: Condition, runs: &mut CondRuns) {
    check_interrupted();
    let agent = match cond {
        Condition::Baseline => None,
        _ => {
            let t = Instant::now();
            match Agent::try_start_with(&o.bin, cond.args(), Duration::from_secs(30)) {
                Ok(a) => {
                    runs.startup_s.push(t.elapsed().as_secs_f64());
                    Some(a)
                }
                Err(e) => {
                    eprintln!("  {}: agent did not start: {e}", cond.name());
                    runs.errors.push(first_line(&e));
                    return;
                }
            }
        }
    };
    // Let the agent finish its start-up work before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let pid = agent.as_ref().map(Agent::pid);
    let cpu0 = pid.and_then(cpu_s);
    let g = workload_in_child("getppid", o.syscalls);
    let cpu1 = pid.and_then(cpu_s);
    check_interrupted();
    let f = workload_in_child("fork", o.forks as u64);
    let cpu2 = pid.and_then(cpu_s);
    runs.getppid_s.push(g.as_secs_f64());
    runs.fork_s.push(f.as_secs_f64());
    if let (Some(a), Some(b), Some(c)) = (cpu0, cpu1, cpu2) {
        runs.agent_cpu_getppid_s.push(b - a);
        runs.agent_cpu_fork_s.push(c - b);
    }
    if let Some(rss) = pid.and_then(proc_rss_kib) {
        runs.rss_kib.push(rss);
    }
    eprintln!(
        "  {:<8} getppid x{}: {:.3} s ({:.1} ns/call)   fork x{}: {:.3} s ({:.1} us/fork)",
        cond.name(),
        o.syscalls,
        g.as_secs_f64(),
        g.as_secs_f64() * 1e9 / o.syscalls.max(1) as f64,
        o.forks,
        f.as_secs_f64(),
        f.as_secs_f64() * 1e6 / o.forks.max(1) as f64,
    );
    if let Some(agent) = agent {
        let run = agent.stop_full();
        if run.killed || !run.status.is_some_and(|s| s.success()) {
            let e = format!(
                "{}: agent did not exit cleanly on SIGINT (status {:?}, killed {})",
                cond.name(),
                run.status,
                run.killed
            );
            eprintln!("  {e}\n{}", run.report());
            runs.errors.push(e);
        }
        if cond.is_trace() {
            let name = cond.name();
            match run.summary() {
                Some(s) => runs.summaries.push(s.clone()),
                None => runs
                    .errors
                    .push(format!("{name}: no summary record at the end")),
            }
            let noise = run.of_type("finding").len() + run.of_type("warning").len();
            if noise > 0 {
                // Not ours (the workloads never hit a limit): another user of
                // this machine may have; the overhead numbers still stand.
                eprintln!("  note: {noise} findings/warnings during the overhead runs");
                runs.notes.push(format!(
                    "{name}: {noise} findings/warnings during the overhead runs"
                ));
            }
            let armed = run
                .of_type("probe")
                .iter()
                .filter(|v| v["status"] == "attached")
                .count();
            if cond == Condition::Auto && armed > 0 {
                eprintln!("  note: the fork probe was attached {armed} times in auto mode");
                runs.notes.push(format!(
                    "auto: the fork probe was attached {armed} times during the overhead runs \
                     (its numbers include the probe)"
                ));
            }
        }
    }
}

struct Latency {
    mode: Condition,
    samples_ms: Vec<f64>,
    missed: usize,
    errors: Vec<String>,
    rss_kib: Vec<u64>,
    /// Agent CPU seconds summed over the repetitions.
    agent_cpu_s: Option<f64>,
    agent_wall_s: f64,
    summaries: Vec<Value>,
}

/// Each repetition: a fresh pids cgroup (max 16) and a fresh agent (so that
/// `auto` starts with the fork probe in standby every time), 1.5 s for the
/// agent to see the cgroup at rest, then the fork loop.
fn run_latency(o: &Opts, mode: Condition) -> Latency {
    let mut l = Latency {
        mode,
        samples_ms: Vec::new(),
        missed: 0,
        errors: Vec::new(),
        rss_kib: Vec::new(),
        agent_cpu_s: None,
        agent_wall_s: 0.0,
        summaries: Vec::new(),
    };
    if let Err(e) = pids_hierarchy() {
        l.errors.push(format!("no pids cgroup hierarchy: {e}"));
        return l;
    }
    let name = mode.name();
    for rep in 0..o.latency_reps {
        check_interrupted();
        let cg = PidsCgroup::new(16);
        let path = cg.path_in_hierarchy();
        let agent = match Agent::try_start_with(&o.bin, mode.args(), Duration::from_secs(30)) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("latency ({name}): agent did not start: {e}");
                l.errors.push(first_line(&e));
                return l;
            }
        };
        std::thread::sleep(Duration::from_millis(1500));
        let t0 = Instant::now();
        let cpu0 = cpu_s(agent.pid());
        let w = fork_until_eagain(
            &ForkOpts::default()
                .in_cgroup(&cg)
                .failures(100_000)
                .time_limit(Duration::from_secs(15)),
        );
        let Some(eagain_ns) = w.wait_first_eagain(Duration::from_secs(15)) else {
            l.errors.push(format!(
                "latency ({name}) rep {rep}: workload never got EAGAIN: {:?}",
                w.output()
            ));
            continue;
        };
        let found = agent.wait_for_record(
            |v| {
                v["type"] == "finding"
                    && v["cause"] == "pid_exhaustion"
                    && v["cgroup"] == path.as_str()
            },
            Duration::from_secs(10),
        );
        match found {
            Some(rec) => {
                let ms = secs_since_unix_ns(rec.wall, eagain_ns) * 1e3;
                eprintln!("  rep {rep}: {path}: first EAGAIN -> finding received {ms:.1} ms");
                l.samples_ms.push(ms);
            }
            None => {
                eprintln!("  rep {rep}: {path}: no finding within 10 s of the first EAGAIN");
                l.missed += 1;
            }
        }
        if let Some(rss) = proc_rss_kib(agent.pid()) {
            l.rss_kib.push(rss);
        }
        if let (Some(a), Some(b)) = (cpu0, cpu_s(agent.pid())) {
            *l.agent_cpu_s.get_or_insert(0.0) += b - a;
        }
        l.agent_wall_s += t0.elapsed().as_secs_f64();
        drop(w);
        drop(cg);
        let run = agent.stop_full();
        match run.summary() {
            Some(s) => l.summaries.push(s.clone()),
            None => l.errors.push(format!(
                "latency ({name}) rep {rep}: no summary record at the end"
            )),
        }
    }
    l
}

// ---------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------

fn workload_json(
    n: u64,
    conds: &[(Condition, &CondRuns)],
    pick: fn(&CondRuns) -> &Vec<f64>,
) -> Value {
    let base = conds
        .iter()
        .find(|(c, _)| *c == Condition::Baseline)
        .map(|(_, r)| pick(r).clone())
        .unwrap_or_default();
    let (bmed, bmin) = (median(&base), min(&base));
    let mut obj = serde_json::Map::new();
    obj.insert("n".into(), json!(n));
    for (c, r) in conds {
        let v = pick(r);
        obj.insert(
            c.name().into(),
            json!({
                "median_s": num(median(v)),
                "min_s": num(min(v)),
                "per_op_ns_median": num(median(v) * 1e9 / n.max(1) as f64),
                "ratio_median": num(median(v) / bmed),
                "ratio_min": num(min(v) / bmin),
                "runs_s": v.iter().map(|x| num(*x)).collect::<Vec<_>>(),
            }),
        );
    }
    Value::Object(obj)
}

fn print_table(o: &Opts, conds: &[(Condition, &CondRuns)]) {
    println!();
    println!(
        "{:<22} {:<9} {:>10} {:>10} {:>11} {:>9} {:>9} {:>12}",
        "workload", "condition", "median", "min", "per op", "x median", "x min", "agent CPU"
    );
    type Pick = fn(&CondRuns) -> &Vec<f64>;
    let rows: [(String, u64, &str, Pick, Pick); 2] = [
        (
            format!("getppid x{}", o.syscalls),
            o.syscalls,
            "ns",
            |r| &r.getppid_s,
            |r| &r.agent_cpu_getppid_s,
        ),
        (
            format!("fork+wait x{}", o.forks),
            o.forks as u64,
            "us",
            |r| &r.fork_s,
            |r| &r.agent_cpu_fork_s,
        ),
    ];
    for (label, n, unit, pick, cpu) in rows {
        let base = conds
            .iter()
            .find(|(c, _)| *c == Condition::Baseline)
            .map(|(_, r)| pick(r).clone())
            .unwrap_or_default();
        for (c, r) in conds {
            let v = pick(r);
            if v.is_empty() {
                println!("{label:<22} {:<9} {:>10}", c.name(), "n/a");
                continue;
            }
            let per = median(v) * if unit == "ns" { 1e9 } else { 1e6 } / n.max(1) as f64;
            let cpu_v = cpu(r);
            let cpu_txt = if cpu_v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.3} s", median(cpu_v))
            };
            println!(
                "{label:<22} {:<9} {:>8.3} s {:>8.3} s {:>8.1} {unit} {:>8.3}x {:>8.3}x {:>12}",
                c.name(),
                median(v),
                min(v),
                per,
                median(v) / median(&base),
                min(v) / min(&base),
                cpu_txt
            );
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().is_some_and(|a| a == "--run-workload") {
        run_workload_mode(&argv[1..]);
    }
    install_signal_handlers();
    if !is_root() {
        eprintln!("watchdog-bench: must run as root (it loads eBPF programs and creates cgroups)");
        std::process::exit(2);
    }
    let o = parse_args();
    eprintln!("watchdog-bench: agent {}", o.bin.display());
    if !Path::new(&o.bin).is_file() {
        eprintln!("watchdog-bench: {} does not exist", o.bin.display());
        std::process::exit(2);
    }

    let mut runs: Vec<(Condition, CondRuns)> = Condition::ALL
        .iter()
        .map(|c| (*c, CondRuns::default()))
        .collect();
    if o.overhead {
        // Warm up caches and the CPU frequency; not measured.
        workload_in_child("getppid", o.syscalls / 10);
        workload_in_child("fork", o.forks as u64 / 10);
        for round in 0..o.rounds {
            let order = round_order(&Condition::ALL, round, o.rounds, Condition::name);
            for cond in order {
                let r = &mut runs
                    .iter_mut()
                    .find(|(c, _)| *c == cond)
                    .expect("all conditions")
                    .1;
                run_condition(&o, cond, r);
            }
        }
    }

    let mut latency = Vec::new();
    if o.latency {
        for mode in [Condition::Trace, Condition::Auto] {
            check_interrupted();
            eprintln!(
                "detection latency, `{}`: {} repetitions, pids cgroup max 16",
                mode.args().join(" "),
                o.latency_reps
            );
            latency.push(run_latency(&o, mode));
        }
    }

    // ----- report -----
    let conds: Vec<(Condition, &CondRuns)> = runs.iter().map(|(c, r)| (*c, r)).collect();
    if o.overhead {
        print_table(&o, &conds);
    }
    let get = |cond: Condition| {
        &runs
            .iter()
            .find(|(c, _)| *c == cond)
            .expect("all conditions")
            .1
    };
    println!();
    for l in &latency {
        println!(
            "detection latency, fork probe {:<6} (first EAGAIN -> finding line received): \
             median {:.1} ms, max {:.1} ms, min {:.1} ms over {} reps ({} missed)",
            if l.mode == Condition::Trace {
                "always"
            } else {
                "auto"
            },
            median(&l.samples_ms),
            max(&l.samples_ms),
            min(&l.samples_ms),
            l.samples_ms.len(),
            l.missed
        );
    }
    let mut agents = serde_json::Map::new();
    for cond in [Condition::Floor, Condition::Trace, Condition::Auto] {
        let r = get(cond);
        let lat = latency.iter().find(|l| l.mode == cond);
        let rss: Vec<u64> = r
            .rss_kib
            .iter()
            .chain(lat.iter().flat_map(|l| l.rss_kib.iter()))
            .copied()
            .collect();
        if !rss.is_empty() {
            println!(
                "agent `{}`: VmRSS max {} KiB",
                cond.args().join(" "),
                rss.iter().max().copied().unwrap_or(0)
            );
        }
        if !r.agent_cpu_getppid_s.is_empty() {
            println!(
                "agent `{}`: CPU per run: getppid {:.3} s, fork {:.3} s (median); start-up {:.2} s",
                cond.args().join(" "),
                median(&r.agent_cpu_getppid_s),
                median(&r.agent_cpu_fork_s),
                median(&r.startup_s)
            );
        }
        if let Some(l) = lat
            && let Some(c) = l.agent_cpu_s
        {
            println!(
                "agent `{}`: CPU from fork loop start to finding {:.3} s over {:.1} s (all reps)",
                cond.args().join(" "),
                c,
                l.agent_wall_s
            );
        }
        agents.insert(
            cond.name().into(),
            json!({
                "args": cond.args(),
                "rss_kib_max": rss.iter().max(),
                "rss_kib_samples": rss,
                "cpu_s_getppid_median": num(median(&r.agent_cpu_getppid_s)),
                "cpu_s_fork_median": num(median(&r.agent_cpu_fork_s)),
                "startup_s_median": num(median(&r.startup_s)),
                "summaries": r.summaries,
            }),
        );
    }
    let mut errors: Vec<String> = runs.iter().flat_map(|(_, r)| r.errors.clone()).collect();
    errors.extend(latency.iter().flat_map(|l| l.errors.iter().cloned()));
    for e in &errors {
        println!("problem: {e}");
    }
    let notes: Vec<String> = runs.iter().flat_map(|(_, r)| r.notes.clone()).collect();
    for n in &notes {
        println!("note: {n}");
    }

    let mut lat_json = serde_json::Map::new();
    for l in &latency {
        lat_json.insert(
            if l.mode == Condition::Trace {
                "always"
            } else {
                "auto"
            }
            .into(),
            json!({
                "reps": o.latency_reps,
                "median": num(median(&l.samples_ms)),
                "max": num(max(&l.samples_ms)),
                "min": num(min(&l.samples_ms)),
                "samples": l.samples_ms.iter().map(|x| num(*x)).collect::<Vec<_>>(),
                "missed": l.missed,
                "agent_cpu_s": l.agent_cpu_s.map(num),
                "agent_wall_s": num(l.agent_wall_s),
                "summaries": l.summaries,
            }),
        );
    }
    let out = json!({
        "type": "bench",
        "agent": o.bin.display().to_string(),
        "rounds": o.rounds,
        "getppid": workload_json(o.syscalls, &conds, |r| &r.getppid_s),
        "fork": workload_json(o.forks as u64, &conds, |r| &r.fork_s),
        "latency_ms": lat_json,
        "agents": agents,
        "errors": errors,
        "notes": notes,
    });
    println!("{out}");
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
