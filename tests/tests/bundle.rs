//! `watchdog bundle` against a real fault of the test's own: a task blocked
//! on the test's hanging FUSE mount, started with a secret in its
//! environment and in a `--token=` argument. The archive must hold what
//! the manifest lists (sha256 right), the blocked task's FUSE stack and its
//! mount's line, never the secrets; `watchdog replay` of the archive gives
//! the storage finding.
//!
//! Run as root with one test thread:
//! `WATCHDOG_BIN=target/release/watchdog cargo test --release -p watchdog-tests --test bundle -- --test-threads=1`
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;
use watchdog_tests::containerd::{Containerd, skip_unless_containerd_prereqs};
use watchdog_tests::fuse::{HangingFuse, skip_unless_fuse_prereqs};
use watchdog_tests::{ChildGuard, PYTHON, TmpfsMount, agent_bin, json_records, unpack_bundle};

const ENV_SECRET: &str = "envsecret-7f3a9c";
const ARG_SECRET: &str = "argsecret-c41d2e";

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Every file under `dir`, relative names.
fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, base, out);
        } else {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Starts `watchdog bundle --json` (2 s hang threshold, storage probes
/// only) writing to `out`, and waits for its `ready` record: a fault started
/// after it is a finding (a task already blocked before is in the bundle's
/// D-state tasks instead). Returns the process and a thread that collects
/// the rest of its stdout.
fn start_bundle(
    out: &Path,
    duration: &str,
    stderr: Stdio,
) -> (std::process::Child, std::thread::JoinHandle<Vec<String>>) {
    let mut bundle = Command::new(agent_bin())
        .args([
            "bundle",
            "--duration",
            duration,
            "--hang-threshold",
            "2s",
            "--no-pleg",
            "--no-systemd",
            "--json",
            "--out",
        ])
        .arg(out)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(bundle.stdout.take().unwrap()));
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("\"type\":\"ready\""));
    assert!(ready, "watchdog bundle never got ready");
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect());
    (bundle, rest)
}

/// `watchdog replay --json` of a bundle (it must succeed): its records.
fn replay_records(bundle: &Path) -> Vec<Value> {
    let replay = Command::new(agent_bin())
        .args(["replay", "--json"])
        .arg(bundle)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "replay of {}: {}",
        bundle.display(),
        String::from_utf8_lossy(&replay.stderr)
    );
    json_records(&String::from_utf8_lossy(&replay.stdout))
}

/// A python process that blocks reading the hung FUSE file (extra
/// arguments and environment are the caller's).
fn fuse_reader(fuse: &HangingFuse) -> Command {
    let mut cmd = Command::new(PYTHON);
    cmd.args([
        "-c",
        "import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.read(fd, 16)",
    ])
    .arg(fuse.read_hang_path())
    .stdin(Stdio::null());
    cmd
}

#[test]
fn bundle_of_a_fuse_hang_holds_the_evidence_and_no_secret() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let work = std::env::temp_dir().join(format!("wd-bundle-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    // Declared before the mount: the mount's guard (abort) drops first.
    let mut reader: Option<ChildGuard> = None;
    let fuse = HangingFuse::start();
    let out = work.join("b.tar.gz");
    let (mut bundle, drain) = start_bundle(&out, "8s", Stdio::inherit());
    let mut cmd = fuse_reader(&fuse);
    cmd.arg(format!("--token={ARG_SECRET}"))
        .env("API_TOKEN", ENV_SECRET);
    let child = reader.insert(ChildGuard::spawn(&mut cmd, "reader").unwrap());
    let pid = child.pid();
    let status = bundle.wait().unwrap();
    drain.join().unwrap();
    assert!(status.success(), "watchdog bundle: {status:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&out).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the bundle is readable by root only");

    // Replay straight from the archive.
    let mp = fuse.mount_point().to_string_lossy().into_owned();
    let records = replay_records(&out);
    assert!(
        records.iter().any(|v| v["type"] == "finding"
            && v["cause"] == "storage_hang"
            && v["mount_point"] == mp.as_str()),
        "replay of the bundle lacks the storage finding on {mp}: {records:#?}"
    );

    // Unpack (with tar, as a user would) and check it against its manifest.
    let x = work.join("x");
    fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&out)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let manifest: Value =
        serde_json::from_str(&fs::read_to_string(x.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schema"], 1);
    assert_eq!(manifest["trigger"], "manual");
    let first = Command::new("tar").arg("-tzf").arg(&out).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).lines().next(),
        Some("manifest.json"),
        "the manifest comes first"
    );
    for f in manifest["files"].as_array().unwrap() {
        let name = f["name"].as_str().unwrap();
        if f["error"].is_string() {
            continue;
        }
        let p = x.join(name);
        assert!(p.exists(), "{name} is listed but missing");
        assert_eq!(f["sha256"], sha256(&p).as_str(), "sha256 of {name}");
        assert_eq!(f["size"], fs::metadata(&p).unwrap().len(), "size of {name}");
    }
    // The blocked task: its FUSE wait in the kernel stack, its mount's line.
    let stack = fs::read_to_string(x.join(format!("tasks/{pid}/stack"))).unwrap_or_default();
    assert!(
        stack.contains("fuse")
            || stack.contains("request_wait_answer")
            || stack.contains("folio_wait"),
        "tasks/{pid}/stack: {stack}"
    );
    let mounts = fs::read_to_string(x.join("storage/mountinfo")).unwrap_or_default();
    assert!(mounts.contains(&mp), "storage/mountinfo: {mounts}");
    // Its command line is not read while it is in D (that takes its mmap
    // lock): listed with the reason instead.
    let entry = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == format!("tasks/{pid}/cmdline"))
        .cloned()
        .unwrap_or_else(|| panic!("tasks/{pid}/cmdline not in the manifest"));
    assert!(
        entry["error"]
            .as_str()
            .unwrap_or("")
            .contains("uninterruptible"),
        "{entry}"
    );
    let kernel_cmdline = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "kernel/cmdline")
        .cloned()
        .unwrap();
    assert!(kernel_cmdline["error"].is_null(), "{kernel_cmdline}");
    // No secret anywhere in the archive's files.
    let mut files = Vec::new();
    walk(&x, &x, &mut files);
    for f in &files {
        let data = fs::read(x.join(f)).unwrap();
        let text = String::from_utf8_lossy(&data);
        assert!(
            !text.contains(ENV_SECRET),
            "{f} holds the environment's secret"
        );
        assert!(
            !text.contains(ARG_SECRET),
            "{f} holds the argument's secret"
        );
    }
    // And none in the compressed archive as a whole either (decompressed).
    let all = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc {} | grep -c -a -e {ENV_SECRET} -e {ARG_SECRET}",
            out.display()
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&all.stdout).trim(), "0");
    drop(fuse);
    drop(reader);
    let _ = fs::remove_dir_all(&work);
}

/// A tmpfs of the test's own, filled to the last block.
fn full_tmpfs() -> TmpfsMount {
    let dir = std::env::temp_dir().join(format!("wd-bundle-full-{}", std::process::id()));
    let t = TmpfsMount::new(&dir, "size=64k,mode=0700").expect("a tmpfs of our own");
    // Write until ENOSPC.
    let mut f = fs::File::create(t.path().join("fill")).unwrap();
    let block = [0u8; 4096];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    t
}

/// The bundle's own disk is full: the session still diagnoses (the finding
/// is printed), the bundle fails with a message naming the file and the
/// cause, exit code 2, and no partial archive is left behind.
#[test]
fn bundle_on_a_full_disk_fails_clearly_and_the_diagnosis_goes_on() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let full = full_tmpfs();
    // Declared before the mount: the mount's guard (abort) drops first.
    let _reader: ChildGuard;
    let fuse = HangingFuse::start();
    let out = full.path().join("b.tar.gz");
    let (mut bundle, drain) = start_bundle(&out, "6s", Stdio::piped());
    _reader = ChildGuard::spawn(&mut fuse_reader(&fuse), "reader").unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bundle.stderr.take().unwrap(), &mut stderr).unwrap();
    let status = bundle.wait().unwrap();
    let stdout = drain.join().unwrap();
    assert_eq!(status.code(), Some(2), "exit code; stderr:\n{stderr}");
    let mp = fuse.mount_point().to_string_lossy().into_owned();
    assert!(
        stdout.iter().any(|l| l.contains("\"type\":\"finding\"")
            && l.contains("storage_hang")
            && l.contains(mp.as_str())),
        "the diagnosis must go on while the bundle cannot be written:\n{}",
        stdout.join("\n")
    );
    let want = format!("writing {}", out.display());
    assert!(
        stderr.contains("the bundle could not be written")
            && stderr.contains(&want)
            && stderr.contains("No space left on device"),
        "a clear message naming the file and the cause; got:\n{stderr}"
    );
    assert!(
        !out.exists(),
        "no partial bundle is left at {}",
        out.display()
    );
}

/// kubelet's and containerd's entries in a real journal file (written by
/// systemd's own `systemd-journal-remote`), and a followed socket whose
/// server neither accepts nor reads: the bundle's `pleg/` holds the
/// followed units' lines (redacted, not sshd's), and `systemd/` the
/// socket's queues as sock_diag reports them.
#[test]
fn bundle_holds_the_kubelet_journal_and_the_followed_sockets_queues() {
    if !watchdog_tests::journal::skip_unless_journal_prereqs() {
        return;
    }
    let work = std::env::temp_dir().join(format!("wd-bundle-pleg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let journal = work.join("journal");
    watchdog_tests::journal::JournalWriter::in_dir(&journal).append(&[
        (
            "kubelet.service",
            "kubelet",
            "I0729 11:20:59.245243 9575 kubelet.go:1823] skipping pod synchronization - PLEG is not healthy: pleg was last seen active 3m57.138893648s ago; threshold is 3m0s.",
        ),
        (
            "kubelet.service",
            "kubelet",
            "I0729 11:21:00.000001 9575 server.go:1] flags: --bootstrap-token=tok-5e1f9a --v=2",
        ),
        ("ssh.service", "sshd", "Accepted publickey for root"),
        (
            "containerd.service",
            "containerd",
            "level=error msg=\"failed to start shim: fork/exec /usr/bin/containerd-shim-runc-v2: resource temporarily unavailable\"",
        ),
    ]);

    // A server that accepts one connection and never reads it, and leaves a
    // second waiting for accept.
    let sock = work.join("private");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut c1 = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    std::io::Write::write_all(&mut c1, &[0u8; 40]).unwrap();
    let (_s1, _) = listener.accept().unwrap();
    let _c2 = std::os::unix::net::UnixStream::connect(&sock).unwrap();

    let out = work.join("b.tar.gz");
    let sock_s = sock.to_string_lossy().into_owned();
    let run = Command::new(agent_bin())
        .args(["bundle", "--duration", "3s", "--json"])
        .args(["--kubelet-metrics-url", "off", "--runtime-endpoint", "off"])
        .args(["--kubelet-log", "journal", "--journal-dir"])
        .arg(&journal)
        .args(["--systemd-socket", &sock_s, "--out"])
        .arg(&out)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "watchdog bundle failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let x = work.join("x");
    let manifest = unpack_bundle(&out, &x);
    let entry = |name: &str| {
        manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not in the manifest: {manifest}"))
    };

    let journal_txt = fs::read_to_string(x.join("pleg/kubelet-journal.txt")).unwrap();
    assert!(
        journal_txt.contains("PLEG is not healthy")
            && journal_txt.contains("containerd-shim-runc-v2"),
        "kubelet's and containerd's lines: {journal_txt}"
    );
    assert!(
        !journal_txt.contains("sshd") && !journal_txt.contains("publickey"),
        "another unit's line: {journal_txt}"
    );
    assert!(
        !journal_txt.contains("tok-5e1f9a") && journal_txt.contains("--bootstrap-token=<redacted>"),
        "the token in a log line is masked: {journal_txt}"
    );
    assert_eq!(entry("pleg/kubelet-journal.txt")["redacted"], 1);

    let sockets = fs::read_to_string(x.join("systemd/sockets.txt")).unwrap();
    assert!(
        sockets.contains(&format!(
            "{sock_s}: 1 listening, 1 connections, 40 bytes waiting for the server to read"
        )),
        "the followed socket's queues: {sockets}"
    );
    assert!(
        sockets.contains("1 connections waiting to be accepted"),
        "the accept queue: {sockets}"
    );
    assert!(entry("systemd/sockets.txt")["error"].is_null());
    let _ = fs::remove_dir_all(&work);
}

/// `trace --bundle-dir`: when the storage finding goes active, a bundle of
/// its evidence is written by itself in the directory (made root-only),
/// named by a `bundle` record; one per finding; the bundle replays to the
/// same finding and names its trigger.
#[test]
fn trace_captures_a_bundle_when_a_finding_goes_active() {
    if !skip_unless_fuse_prereqs() {
        return;
    }
    let work = std::env::temp_dir().join(format!("wd-autobundle-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let dir = work.join("bundles");
    let reader: Option<ChildGuard>;
    let fuse = HangingFuse::start();
    let mut trace = Command::new(agent_bin())
        .args([
            "trace",
            "--json",
            "--duration",
            "9s",
            "--hang-threshold",
            "2s",
        ])
        .args(["--no-pleg", "--no-systemd", "--bundle-dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(trace.stdout.take().unwrap()));
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("\"type\":\"ready\"")),
        "watchdog trace never got ready"
    );
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<String>>());
    reader = Some(ChildGuard::spawn(&mut fuse_reader(&fuse), "reader").unwrap());
    assert!(trace.wait().unwrap().success());
    let records = json_records(&rest.join().unwrap().join("\n"));
    let mp = fuse.mount_point().to_string_lossy().into_owned();
    let finding = records
        .iter()
        .find(|v| {
            v["type"] == "finding"
                && v["cause"] == "storage_hang"
                && v["mount_point"] == mp.as_str()
        })
        .unwrap_or_else(|| panic!("no storage finding on {mp}: {records:#?}"));
    let bundles: Vec<&Value> = records.iter().filter(|v| v["type"] == "bundle").collect();
    assert_eq!(
        bundles.len(),
        1,
        "one bundle for the one finding: {bundles:#?}"
    );
    let b = bundles[0];
    assert_eq!(b["status"], "written", "{b}");
    eprintln!("the capture held the agent's thread {} ms", b["took_ms"]);
    assert!(b["took_ms"].is_u64(), "{b}");
    assert_eq!(
        b["finding"], finding["id"],
        "the bundle names its finding: {b}"
    );
    let path = std::path::PathBuf::from(b["path"].as_str().unwrap());
    assert_eq!(path.parent(), Some(dir.as_path()), "{b}");
    // The finding names its bundle: the file to come as it goes active,
    // then written on the records after the capture.
    assert_eq!(finding["status"], "active", "{finding}");
    assert_eq!(finding["bundle"]["status"], "pending", "{finding}");
    assert_eq!(finding["bundle"]["path"], b["path"], "{finding}");
    assert_eq!(
        finding["bundle"]["file"].as_str(),
        path.file_name().and_then(|f| f.to_str()),
        "{finding}"
    );
    let written_at = records.iter().position(|v| v["type"] == "bundle").unwrap();
    for (i, f) in records.iter().enumerate() {
        if f["type"] == "finding" && f["id"] == finding["id"] {
            let want = if i < written_at { "pending" } else { "written" };
            assert_eq!(f["bundle"]["status"], want, "{f}");
            assert_eq!(f["bundle"]["path"], b["path"], "{f}");
        }
    }
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        b["size"].as_u64().unwrap()
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the bundle directory is root-only");

    let listing = Command::new("tar").arg("-tzf").arg(&path).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    assert_eq!(listing.lines().next(), Some("manifest.json"), "{listing}");
    assert!(
        listing.contains("storage/mountinfo") && listing.contains("recording.jsonl"),
        "{listing}"
    );
    let x = work.join("x");
    let manifest = unpack_bundle(&path, &x);
    assert_eq!(
        manifest["trigger"],
        format!("finding {}", finding["id"].as_str().unwrap()),
        "{manifest}"
    );
    assert!(
        replay_records(&path).iter().any(|v| v["type"] == "finding"
            && v["cause"] == "storage_hang"
            && v["mount_point"] == mp.as_str()),
        "the bundle's recording replays to the finding"
    );
    drop(reader);
    drop(fuse);
    let _ = fs::remove_dir_all(&work);
}

/// Removes a file at drop (containerd's dump, written in /tmp).
struct RemoveFile(std::path::PathBuf);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// `watchdog bundle` of a session relisting the test's own containerd
/// (never another one: the endpoint is given): without
/// `--containerd-goroutines` containerd gets no signal (its log has no
/// dump, its dump file is not written); with it, the bundle holds the dump
/// containerd wrote after SIGUSR1, listed in the manifest with its source
/// and sha256.
#[test]
fn bundle_asks_the_tests_own_containerd_for_its_goroutines_only_when_told() {
    if !skip_unless_containerd_prereqs() {
        return;
    }
    let work = std::env::temp_dir().join(format!("wd-bundle-gor-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let ctd = Containerd::start().expect("the test's containerd");
    let pid = ctd.pid();
    // containerd 1.6 writes the dump to <its TMPDIR>/containerd.<pid>.stacks.log.
    let dump = RemoveFile(std::path::PathBuf::from(format!(
        "/tmp/containerd.{pid}.stacks.log"
    )));
    let _ = fs::remove_file(&dump.0);
    let bundle = |out: &Path, opt_in: bool| {
        let mut cmd = Command::new(agent_bin());
        cmd.args([
            "bundle",
            "--duration",
            "2s",
            "--no-storage",
            "--no-systemd",
            "--kubelet-log",
            "off",
            "--kubelet-metrics-url",
            "off",
            "--runtime-endpoint",
            &ctd.endpoint(),
            "--json",
            "--out",
        ])
        .arg(out);
        if opt_in {
            cmd.arg("--containerd-goroutines");
        }
        let o = cmd.stdin(Stdio::null()).output().unwrap();
        assert!(
            o.status.success(),
            "watchdog bundle: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    };

    let plain = work.join("plain.tar.gz");
    bundle(&plain, false);
    let manifest = unpack_bundle(&plain, &work.join("plain"));
    assert!(
        !manifest["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "runtime/containerd-goroutines.txt"),
        "{manifest:#}"
    );
    assert!(
        !ctd.log().contains("goroutine stack dump"),
        "no signal without the option: {}",
        ctd.log_tail()
    );
    assert!(!dump.0.exists(), "no dump without the option");

    let with = work.join("with.tar.gz");
    let stderr = bundle(&with, true);
    let x = work.join("with");
    let manifest = unpack_bundle(&with, &x);
    let entry = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "runtime/containerd-goroutines.txt")
        .unwrap_or_else(|| panic!("no goroutine dump listed: {manifest:#}\n{stderr}"));
    assert!(entry["error"].is_null(), "{entry}");
    assert_eq!(
        entry["source"],
        format!("/proc/{pid}/root/tmp/containerd.{pid}.stacks.log"),
        "{entry}"
    );
    let file = x.join("runtime/containerd-goroutines.txt");
    assert_eq!(entry["sha256"], sha256(&file), "{entry}");
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("goroutine "), "{text}");
    assert!(
        text.contains("github.com/containerd/containerd/cmd/containerd/command.dumpStacks"),
        "a containerd function in the dump: {text}"
    );
    assert!(
        ctd.log().contains("goroutine stack dump written to"),
        "containerd logged its dump: {}",
        ctd.log_tail()
    );
    eprintln!(
        "containerd's goroutine dump: {} bytes, {} goroutines",
        text.len(),
        text.matches("\ngoroutine ").count() + 1
    );
    drop(ctd);
    let _ = fs::remove_dir_all(&work);
}

/// `--sysrq-w` on a kernel without magic SysRq (this one): the manifest
/// says why `kernel/sysrq-w.txt` is missing and the bundle is written. On a
/// kernel with it the test does not write to the shared machine's
/// /proc/sysrq-trigger (the unit tests cover the writing side's limits).
#[test]
fn bundle_says_sysrq_w_is_unavailable_without_magic_sysrq() {
    if !watchdog_tests::skip_unless_root() {
        return;
    }
    if !watchdog_tests::skip_unless(
        !Path::new("/proc/sysrq-trigger").exists(),
        "/proc/sysrq-trigger exists: not triggering sysrq-w on a shared machine",
    ) {
        return;
    }
    let work = std::env::temp_dir().join(format!("wd-bundle-sysrq-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).unwrap();
    let out = work.join("b.tar.gz");
    let o = Command::new(agent_bin())
        .args([
            "bundle",
            "--duration",
            "1s",
            "--no-pleg",
            "--no-systemd",
            "--no-storage",
            "--sysrq-w",
            "--json",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = unpack_bundle(&out, &work.join("x"));
    let entry = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "kernel/sysrq-w.txt")
        .unwrap_or_else(|| panic!("{manifest:#}"));
    assert_eq!(
        entry["error"],
        "unavailable: /proc/sysrq-trigger does not exist (kernel built without CONFIG_MAGIC_SYSRQ)",
        "{entry}"
    );
    let _ = fs::remove_dir_all(&work);
}
