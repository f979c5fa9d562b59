//! The real-workload benchmark: what users of the node feel (run as root, by
//! `cargo xtask bench`).
//!
//! A `redis-server` of our own (Debian's, no persistence, a free loopback
//! port, pinned to CPU 1) serves `redis-benchmark -c 8 -n N -t get,set --csv`
//! (pinned to CPU 0). Requests per second of SET and GET are compared under
//! the conditions, alternated in rounds with the order rotated each round:
//! - `baseline`: no agent;
//! - `default`: the agent as shipped, `watchdog trace --json`;
//! - `old-design`: the raw-syscall design (storage and D-Bus tracking on
//!   `raw_tp/sys_enter` + `raw_tp/sys_exit`): an agent binary built before
//!   the redesign (`--old-design-bin`, or `$WATCHDOG_OLD_BIN`) with
//!   `trace --json`, or, without one, this agent's raw-syscall D-Bus fallback
//!   ([`OLD_DESIGN_ARGS`], or `--old-design-args`); the bench checks in the
//!   agent's `ready` record that this condition really attached both syscall
//!   hooks and reports a problem otherwise, so it can never silently measure
//!   something else.
//!
//! Each agent is started afresh per run and measured only after its `ready`
//! record; its VmRSS and CPU time are sampled at the end of the run.
//! Prints a table of medians, min-max spread and ratios to `baseline`, the
//! per-round ratios (each run over the baseline run of its round), then
//! one final line of JSON with every number. Everything started here is an
//! RAII guard: cleaned up on panic, and on SIGINT/SIGTERM (checked between
//! runs, then unwound).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use watchdog_tests::redis::{self, BenchmarkRun, RedisServer, TestResult};
use watchdog_tests::{bench::*, *};

/// The agent as shipped.
const DEFAULT_ARGS: &[&str] = &["trace", "--json"];
/// Without an old binary: this agent's opt-in for raw-syscall programs (the
/// D-Bus fallback for kernels without the socket tracepoints), which puts the
/// same `sys_enter`/`sys_exit` programs with the same watched-process test on
/// every syscall of the node (the check on the `ready` record fails the run
/// if they are not attached).
const OLD_DESIGN_ARGS: &[&str] = &["trace", "--json", "--dbus-requests", "syscalls"];
/// The hooks that define the old design (probe `hook` names in `ready`).
const OLD_DESIGN_HOOKS: [&str; 2] = ["raw_tp/sys_enter", "raw_tp/sys_exit"];

const SERVER_CPU: usize = 1;
const CLIENT_CPU: usize = 0;
const CLIENTS: u32 = 8;
const TESTS: &str = "get,set";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Condition {
    Baseline,
    Default,
    OldDesign,
}

impl Condition {
    const ALL: [Condition; 3] = [
        Condition::Baseline,
        Condition::Default,
        Condition::OldDesign,
    ];

    fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "baseline",
            Condition::Default => "default",
            Condition::OldDesign => "old-design",
        }
    }
}

struct Opts {
    rounds: usize,
    requests: u64,
    bin: PathBuf,
    old_design_bin: Option<PathBuf>,
    old_design_args: Vec<String>,
}

impl Opts {
    fn args(&self, cond: Condition) -> Vec<String> {
        match cond {
            Condition::Baseline => Vec::new(),
            Condition::Default => DEFAULT_ARGS.iter().map(|s| s.to_string()).collect(),
            Condition::OldDesign if self.old_design_bin.is_some() => {
                DEFAULT_ARGS.iter().map(|s| s.to_string()).collect()
            }
            Condition::OldDesign => self.old_design_args.clone(),
        }
    }

    fn bin(&self, cond: Condition) -> &PathBuf {
        match (cond, &self.old_design_bin) {
            (Condition::OldDesign, Some(b)) => b,
            _ => &self.bin,
        }
    }
}

const USAGE: &str = "\
usage: redis-bench [--rounds N] [--requests N] [--old-design-bin PATH] [--old-design-args ARGS] [--bin PATH]
  --rounds N              rounds of baseline/default/old-design, order rotated (default 5)
  --requests N            requests per test (GET, SET) per run (default 200000: about 5 s
                          per run on a 2-vCPU VM)
  --old-design-bin PATH   an agent binary of the raw sys_enter/sys_exit design (an older build),
                          run with \"trace --json\" (default: $WATCHDOG_OLD_BIN)
  --old-design-args ARGS  without such a binary: this agent's arguments for the raw-syscall
                          programs, space-separated (default: the D-Bus syscall fallback)
  --bin PATH              agent binary (default: $WATCHDOG_BIN, else target/release/watchdog)";

fn usage_exit(msg: &str) -> ! {
    BenchArgs::new("redis-bench", USAGE).exit(msg)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        rounds: 5,
        requests: 200_000,
        bin: PathBuf::new(),
        old_design_bin: std::env::var_os("WATCHDOG_OLD_BIN")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        old_design_args: OLD_DESIGN_ARGS.iter().map(|s| s.to_string()).collect(),
    };
    let mut bin = None;
    let mut args = BenchArgs::new("redis-bench", USAGE);
    while let Some(a) = args.next_flag() {
        match a.as_str() {
            "--rounds" => o.rounds = args.number("--rounds").max(1) as usize,
            "--requests" => o.requests = args.number("--requests").max(1),
            "--old-design-args" => {
                o.old_design_args = args
                    .value("--old-design-args", "arguments")
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
            }
            "--bin" => bin = Some(PathBuf::from(args.value("--bin", "a path"))),
            "--old-design-bin" => {
                o.old_design_bin = Some(PathBuf::from(args.value("--old-design-bin", "a path")));
            }
            "-h" | "--help" => args.help(),
            other => args.exit(&format!("unknown argument {other:?}")),
        }
    }
    o.bin = bin.unwrap_or_else(agent_bin);
    o
}

#[derive(Default)]
struct CondRuns {
    /// One entry per completed run, in order, with its round.
    runs: Vec<(usize, Vec<TestResult>)>,
    rss_kib: Vec<u64>,
    /// Agent CPU seconds during each redis-benchmark run.
    agent_cpu_s: Vec<f64>,
    /// Syscall hooks the agent attached (from its first `ready` record).
    syscall_hooks: Option<Vec<String>>,
    errors: Vec<String>,
    notes: Vec<String>,
}

impl CondRuns {
    fn rps(&self, test: &str) -> Vec<f64> {
        self.runs
            .iter()
            .filter_map(|(_, r)| r.iter().find(|t| t.test == test).map(|t| t.rps))
            .collect()
    }

    /// This condition's throughput over the baseline's in the same round,
    /// for every round both completed: slow drifts of the machine (other
    /// tenants, CPU frequency) cancel out of these.
    fn paired_ratios(&self, base: &CondRuns, test: &str) -> Vec<f64> {
        let rps = |ts: &[TestResult]| ts.iter().find(|t| t.test == test).map(|t| t.rps);
        self.runs
            .iter()
            .filter_map(|(round, ts)| {
                let (_, b) = base.runs.iter().find(|(r, _)| r == round)?;
                Some(rps(ts)? / rps(b)?)
            })
            .collect()
    }
}

/// Attached probes of a `ready` record whose hook is a syscall hook.
fn syscall_hooks(ready: &Value) -> Vec<String> {
    let mut hooks: Vec<String> = ready["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["status"] == "attached")
        .filter_map(|p| p["hook"].as_str())
        .filter(|h| h.contains("sys_enter") || h.contains("sys_exit") || h.contains("syscalls"))
        .map(str::to_string)
        .collect();
    hooks.sort();
    hooks.dedup();
    hooks
}

fn run_condition(
    o: &Opts,
    cond: Condition,
    round: usize,
    server: &mut RedisServer,
    runs: &mut CondRuns,
) {
    check_interrupted();
    let name = cond.name();
    let agent = match cond {
        Condition::Baseline => None,
        _ => match Agent::try_start_with(o.bin(cond), &o.args(cond)[..], Duration::from_secs(30)) {
            Ok(a) => {
                if runs.syscall_hooks.is_none() {
                    let ready = a
                        .records()
                        .into_iter()
                        .find(|v| v["type"] == "ready")
                        .unwrap_or_default();
                    runs.syscall_hooks = Some(syscall_hooks(&ready));
                }
                Some(a)
            }
            Err(e) => {
                eprintln!("  {name}: agent did not start: {e}");
                runs.errors.push(format!("{name}: {}", first_line(&e)));
                return;
            }
        },
    };
    // Let the agent finish its start-up work (first scans) before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let pid = agent.as_ref().map(Agent::pid);
    let cpu0 = pid.and_then(cpu_s);
    let run = BenchmarkRun {
        port: server.port(),
        cpu: CLIENT_CPU,
        clients: CLIENTS,
        requests: o.requests,
        tests: TESTS.into(),
        timeout: Duration::from_secs(60 + o.requests / 1000),
    };
    let t = Instant::now();
    let result = run.run();
    let wall = t.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (cpu0, pid.and_then(cpu_s)) {
        runs.agent_cpu_s.push(b - a);
    }
    if let Some(rss) = pid.and_then(proc_rss_kib) {
        runs.rss_kib.push(rss);
    }
    assert!(
        server.is_running(),
        "redis-server exited during a run:\n{}",
        server.log_tail()
    );
    match result {
        Ok(r) => {
            let show = r
                .iter()
                .map(|t| format!("{} {:.0}/s", t.test, t.rps))
                .collect::<Vec<_>>()
                .join("  ");
            eprintln!("  {name:<10} {show}  ({wall:.1} s)");
            runs.runs.push((round, r));
        }
        Err(e) => {
            eprintln!("  {name}: {e}");
            runs.errors.push(format!("{name}: {}", first_line(&e)));
        }
    }
    if let Some(agent) = agent {
        let run = agent.stop_full();
        if run.killed || !run.status.is_some_and(|s| s.success()) {
            let e = format!(
                "{name}: agent did not exit cleanly on SIGINT (status {:?}, killed {})",
                run.status, run.killed
            );
            eprintln!("  {e}\n{}", run.report());
            runs.errors.push(e);
        }
        let noise = run.of_type("finding").len() + run.of_type("warning").len();
        if noise > 0 {
            // Not ours (redis hits no limit): another user of the machine may
            // have; the throughput numbers still stand.
            runs.notes.push(format!(
                "{name}: {noise} findings/warnings during a run (not caused by redis)"
            ));
        }
    }
}

/// Whether `cpu` is in this process's affinity mask (what taskset may use).
fn cpu_allowed(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
            && libc::CPU_ISSET(cpu, &set)
    }
}

fn stats_json(v: &[f64], base: f64) -> Value {
    json!({
        "rps_median": num(median(v)),
        "rps_min": num(min(v)),
        "rps_max": num(max(v)),
        "ratio_median": num(median(v) / base),
        "runs_rps": v.iter().map(|x| num(*x)).collect::<Vec<_>>(),
    })
}

fn main() {
    install_signal_handlers();
    if !is_root() {
        eprintln!("redis-bench: must run as root (the agent loads eBPF programs)");
        std::process::exit(2);
    }
    let o = parse_args();
    if !o.bin.is_file() {
        usage_exit(&format!("{} does not exist", o.bin.display()));
    }
    let version = match redis::server_version().and_then(|v| {
        redis::benchmark_available()?;
        Ok(v)
    }) {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "redis-bench: {e}: install Debian's redis-server and redis-tools \
                 (`cargo xtask setup` does)"
            );
            std::process::exit(2);
        }
    };
    if let Some(cpu) = [CLIENT_CPU, SERVER_CPU]
        .into_iter()
        .find(|c| !cpu_allowed(*c))
    {
        eprintln!(
            "redis-bench: needs CPUs {CLIENT_CPU} (client) and {SERVER_CPU} (server); \
             CPU {cpu} is not in this process's affinity mask"
        );
        std::process::exit(2);
    }
    eprintln!("redis-bench: agent {}, {version}", o.bin.display());

    let mut server = RedisServer::start(SERVER_CPU).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "redis-bench: redis-server pid {} on 127.0.0.1:{} (CPU {SERVER_CPU}), \
         redis-benchmark on CPU {CLIENT_CPU}, {CLIENTS} clients, {} requests per test",
        server.pid(),
        server.port(),
        o.requests
    );
    // Warm-up (connections, allocator, CPU frequency); not measured.
    BenchmarkRun {
        port: server.port(),
        cpu: CLIENT_CPU,
        clients: CLIENTS,
        requests: (o.requests / 10).max(1000),
        tests: TESTS.into(),
        timeout: Duration::from_secs(120),
    }
    .run()
    .unwrap_or_else(|e| panic!("warm-up: {e}"));

    let mut runs: Vec<(Condition, CondRuns)> = Condition::ALL
        .iter()
        .map(|c| (*c, CondRuns::default()))
        .collect();
    for round in 0..o.rounds {
        let order = round_order(&Condition::ALL, round, o.rounds, Condition::name);
        for cond in order {
            let r = &mut runs.iter_mut().find(|(c, _)| *c == cond).expect("all").1;
            run_condition(&o, cond, round, &mut server, r);
        }
    }
    drop(server);

    // ----- checks on what was measured -----
    let get = |cond: Condition| &runs.iter().find(|(c, _)| *c == cond).expect("all").1;
    let mut errors: Vec<String> = runs.iter().flat_map(|(_, r)| r.errors.clone()).collect();
    let mut notes: Vec<String> = runs.iter().flat_map(|(_, r)| r.notes.clone()).collect();
    let old_hooks = get(Condition::OldDesign).syscall_hooks.clone();
    if let Some(h) = &old_hooks
        && !OLD_DESIGN_HOOKS.iter().all(|x| h.iter().any(|y| y == x))
    {
        errors.push(format!(
            "old-design (`{}`) attached syscall hooks {h:?}, not {OLD_DESIGN_HOOKS:?}: it does \
             not measure the raw-syscall design; pass the agent's flag for it with \
             --old-design-args",
            o.old_design_args.join(" ")
        ));
    }
    if o.args(Condition::Default) == o.args(Condition::OldDesign)
        && get(Condition::Default).syscall_hooks == old_hooks
    {
        notes.push(
            "`default` is the old raw-syscall design on this agent (same arguments, same \
             hooks): the two rows measure the same probes, their difference is noise"
                .into(),
        );
    }

    // ----- report -----
    let base_set = median(&get(Condition::Baseline).rps("SET"));
    let base_get = median(&get(Condition::Baseline).rps("GET"));
    println!();
    println!(
        "redis GET/SET, {CLIENTS} clients over loopback, {} requests per test, {} rounds \
         (server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}); requests/s median (min-max)",
        o.requests, o.rounds
    );
    println!(
        "{:<11} {:>24} {:>7} {:>24} {:>7} {:>12}",
        "condition", "SET req/s", "x base", "GET req/s", "x base", "agent RSS"
    );
    let cell = |v: &[f64]| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.0} ({:.0}-{:.0})", median(v), min(v), max(v))
        }
    };
    let mut conds = serde_json::Map::new();
    for (cond, r) in &runs {
        let (set, get_) = (r.rps("SET"), r.rps("GET"));
        let rss = r.rss_kib.iter().max().copied();
        println!(
            "{:<11} {:>24} {:>6.3}x {:>24} {:>6.3}x {:>12}",
            cond.name(),
            cell(&set),
            median(&set) / base_set,
            cell(&get_),
            median(&get_) / base_get,
            rss.map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
        );
        conds.insert(
            cond.name().into(),
            json!({
                "args": o.args(*cond),
                "syscall_hooks": r.syscall_hooks,
                "set": stats_json(&set, base_set),
                "get": stats_json(&get_, base_get),
                "rss_kib_max": rss,
                "rss_kib_samples": r.rss_kib,
                "agent_cpu_s": r.agent_cpu_s.iter().map(|x| num(*x)).collect::<Vec<_>>(),
                "set_paired_ratios": r.paired_ratios(get(Condition::Baseline), "SET").iter().map(|x| num(*x)).collect::<Vec<_>>(),
                "get_paired_ratios": r.paired_ratios(get(Condition::Baseline), "GET").iter().map(|x| num(*x)).collect::<Vec<_>>(),
                "runs": r.runs.iter().map(|(_, run)| run.iter().map(|t| json!({
                    "test": t.test, "rps": num(t.rps),
                    "avg_ms": t.avg_ms.map(num), "p50_ms": t.p50_ms.map(num), "p99_ms": t.p99_ms.map(num),
                })).collect::<Vec<_>>()).collect::<Vec<_>>(),
            }),
        );
    }
    println!(
        "per-round ratios to the baseline of the same round (drifts of the machine cancel): \
         median (min-max)"
    );
    let ratio_cell = |v: &[f64]| {
        if v.is_empty() {
            "n/a".to_string()
        } else {
            format!("{:.3}x ({:.3}-{:.3})", median(v), min(v), max(v))
        }
    };
    for (cond, r) in &runs {
        if *cond == Condition::Baseline {
            continue;
        }
        let base = get(Condition::Baseline);
        println!(
            "{:<11} SET {:>24}   GET {:>24}",
            cond.name(),
            ratio_cell(&r.paired_ratios(base, "SET")),
            ratio_cell(&r.paired_ratios(base, "GET")),
        );
    }
    for (cond, r) in &runs {
        if *cond == Condition::Baseline {
            continue;
        }
        println!(
            "{}: `watchdog {}`; syscall hooks attached: {}; agent CPU per run {:.3} s (median)",
            cond.name(),
            o.args(*cond).join(" "),
            r.syscall_hooks.as_ref().map_or(
                "unknown (never started)".into(),
                |h| if h.is_empty() {
                    "none".into()
                } else {
                    h.join(", ")
                }
            ),
            median(&r.agent_cpu_s),
        );
    }
    for e in &errors {
        println!("problem: {e}");
    }
    for n in &notes {
        println!("note: {n}");
    }
    println!(
        "{}",
        json!({
            "type": "redis_bench",
            "agent": o.bin.display().to_string(),
            "redis": version,
            "rounds": o.rounds,
            "requests": o.requests,
            "clients": CLIENTS,
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "conditions": conds,
            "errors": errors,
            "notes": notes,
        })
    );
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
