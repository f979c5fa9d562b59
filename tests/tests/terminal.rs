//! What a person sees when running `watchdog trace` by hand on a node
//! without kubelet, Docker or an apiserver: one line per source on stdout,
//! saying why it is unavailable, and nothing on stderr (no log line that
//! repeats the source line, no library error retried every few seconds).
use std::collections::HashMap;
use std::process::{Command, Stdio};

use watchdog_tests::*;

#[test]
fn sources_unavailable_give_one_line_each_and_a_quiet_stderr() {
    if !skip_unless_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wd-terminal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let docker = format!("unix://{}/docker.sock", dir.display());
    // Long enough for the retrying sources (kubelet metrics every 2 s, the
    // runtime's backoff) to fail several times.
    let out = Command::new(agent_bin())
        .args(["trace", "--duration", "7s", "--poll-interval", "250ms"])
        .args(["--kubelet-metrics-url", "https://127.0.0.1:1/metrics"])
        .args(["--kubelet-scrape-interval", "1s"])
        .args(["--docker-host", &docker])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run watchdog trace");
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stderr.trim().is_empty(),
        "stderr must stay empty without --log; got:\n{stderr}"
    );
    let mut per_source: HashMap<String, Vec<&str>> = HashMap::new();
    for line in stdout.lines() {
        // "[hh:mm:ss] source  <name> <target>: <STATE>: <why>"
        let Some(rest) = line.split_once("] source  ").map(|(_, r)| r) else {
            continue;
        };
        let key = rest.split(": ").next().unwrap_or(rest).to_owned();
        per_source.entry(key).or_default().push(line);
    }
    for want in ["runtime relist", "kubelet metrics"] {
        let lines: Vec<&&str> = per_source
            .iter()
            .filter(|(k, _)| k.starts_with(want))
            .flat_map(|(_, v)| v)
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "one line for the {want} source, got {lines:?}\n{stdout}"
        );
        assert!(
            lines[0].contains("UNAVAILABLE"),
            "the line says it is unavailable and why: {}",
            lines[0]
        );
    }
    assert!(
        per_source.keys().any(|k| k.contains(&docker)),
        "the runtime line names the socket it tried: {per_source:?}"
    );
    for (k, v) in &per_source {
        assert_eq!(v.len(), 1, "source {k} printed {} times: {v:#?}", v.len());
    }
}
