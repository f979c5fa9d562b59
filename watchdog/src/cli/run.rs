//! `watchdog run`: the node agent for the DaemonSet. Every probe and signal,
//! the engine, and all outputs: records on stdout (JSON lines by default,
//! for the container log), Prometheus `/metrics`, Kubernetes node conditions
//! and Events. Settings come from `--config FILE` (validated at start) and
//! flags, which override the file. Each output degrades on its own: an
//! unreachable apiserver is logged and retried, the rest keeps running.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    agent::{self, TraceOptions},
    config::{Config, Toggle},
    model::Time,
    sinks::{
        Fanout, Sink,
        json::JsonLines,
        kubernetes::{self, KubeOptions},
        metrics::{self, Metrics},
        terminal::Terminal,
    },
};

#[derive(clap::Args)]
pub struct Args {
    /// TOML settings (see the README's configuration section).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus metrics on HOST:PORT ("" disables); overrides metrics.addr.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// This node's name (default: node_name, then $NODE_NAME, then the hostname).
    #[arg(long)]
    node_name: Option<String>,
    /// Record every engine input to FILE for `watchdog replay`.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Records on stdout as text instead of JSON lines.
    #[arg(long)]
    text: bool,
    /// Do not talk to the apiserver, whatever the config says.
    #[arg(long)]
    no_kubernetes: bool,
    /// Stop after this long (tests, benchmarks); default: until SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
}

/// Whether `auto` finds a cluster to talk to.
fn in_cluster_or_kubeconfig() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || std::env::var_os("KUBECONFIG").is_some()
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(m) = a.metrics_addr {
        cfg.metrics.addr = m;
    }
    if let Some(n) = a.node_name {
        cfg.node_name = Some(n);
    }
    if a.record.is_some() {
        cfg.record = a.record;
    }
    if a.no_kubernetes {
        cfg.kubernetes.enabled = Toggle::Off;
    }
    let origin = a
        .config
        .as_deref()
        .unwrap_or(std::path::Path::new("(flags)"));
    cfg.validate(origin)?;
    let node = cfg
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
        .or_else(crate::sources::kubelet::node::hostname);
    // Bind now: a taken port stops the agent with a clear message.
    let metrics_listener = match cfg
        .metrics_addr()
        .map_err(|e| anyhow::anyhow!("metrics.addr: {e}"))?
    {
        Some(addr) => Some((addr, metrics::bind(addr)?)),
        None => None,
    };
    let kube_wanted = match cfg.kubernetes.enabled {
        Toggle::On => true,
        Toggle::Off => false,
        Toggle::Auto => in_cluster_or_kubeconfig(),
    };
    let stdout = std::io::stdout();
    let output: Box<dyn Sink> = if a.text {
        Box::new(Terminal::new(stdout.lock()))
    } else {
        Box::new(JsonLines::new(stdout.lock()))
    };
    let p = &cfg.pleg;
    let pleg_args = super::trace::PlegArgs {
        no_pleg: !p.enabled,
        kubelet_metrics_url: p.kubelet_metrics_url.clone(),
        kubelet_ca: p.kubelet_ca.clone(),
        kubelet_insecure_tls: p.kubelet_insecure_tls,
        kubelet_token: p.kubelet_token.clone(),
        kubelet_scrape_interval: p.kubelet_scrape_interval,
        kubelet_log: p.kubelet_log.clone(),
        journal_dir: p.journal_dirs.clone(),
        node_name: node.clone(),
        runtime_endpoint: p.runtime_endpoint.clone(),
        docker_host: p.docker_host.clone(),
        relist_interval: p.relist_interval,
        runtime_call_timeout: p.runtime_call_timeout,
        relist_concurrency: p.relist_concurrency,
        pleg_threshold: p.threshold,
        evented_pleg: p.evented,
        runtime_request_timeout: p.runtime_request_timeout,
    };
    // Checked by cfg.validate above: these do not fail.
    let (pleg_sources, pleg) = pleg_args.build().map_err(|e| e.in_file(origin))?;
    let mut engine = cfg.engine();
    engine.pleg = pleg;
    let storage = cfg.storage_options().map_err(|e| e.in_file(origin))?;
    let mut opts = TraceOptions {
        storage,
        dbus: cfg.systemd.options(),
        pleg_sources,
        duration: a.duration,
        poll_interval: cfg.poll_interval,
        engine,
        fork_probe: cfg.probes.fork_probe,
        arm_percent: cfg.probes.arm_percent,
        disarm_after: cfg.probes.disarm_after,
        record: cfg.record.clone(),
        remediation: cfg.remediation.policy(),
        remediation_journal: cfg.remediation.journal.clone(),
        node_name: node.clone(),
        ..TraceOptions::default()
    };
    agent::block_on(async move {
        let mut sinks = Fanout(vec![output]);
        if let Some((addr, listener)) = metrics_listener {
            let (m, registry) = Metrics::new();
            sinks.0.push(Box::new(m));
            tokio::spawn(metrics::serve(listener, registry));
            opts.outputs.push(format!("metrics http://{addr}/metrics"));
        }
        if kube_wanted {
            match kube_outputs(&cfg, node.as_deref()).await {
                Ok((sink, what, client)) => {
                    sinks.0.push(sink);
                    opts.outputs.push(what);
                    match node.as_deref() {
                        Some(node) => cluster_remediation(&cfg, &mut opts, client, node).await,
                        None => no_cluster_remediation(&cfg, &mut opts, "no node name".into()),
                    }
                }
                Err(e) => {
                    tracing::error!("Kubernetes outputs disabled: {e:#}");
                    opts.outputs.push(format!("kubernetes UNAVAILABLE: {e:#}"));
                    no_cluster_remediation(&cfg, &mut opts, format!("{e:#}"));
                }
            }
        } else {
            no_cluster_remediation(&cfg, &mut opts, "Kubernetes is off".into());
            opts.outputs.push(
                "kubernetes off (not in a cluster and no KUBECONFIG; kubernetes.enabled = true forces it)"
                    .into(),
            );
        }
        match cfg.bundle.dir.clone() {
            None => agent::session(opts, &mut sinks).await,
            Some(dir) => {
                opts.outputs.push(format!("bundles {}", dir.display()));
                // A replayable recording only when `record` is set (the
                // agent runs for weeks: no file of our own).
                let auto_opts = super::trace::auto_bundles(
                    &opts,
                    dir,
                    cfg.bundle.min_interval,
                    cfg.bundle.max_total_mib,
                    opts.record.clone(),
                    super::trace::OptIns {
                        containerd_goroutines: cfg.bundle.containerd_goroutines,
                        sysrq_w: cfg.bundle.sysrq_w,
                    },
                );
                let mut auto = crate::bundle::auto::AutoBundle::new(&mut sinks, auto_opts);
                agent::session(opts, &mut auto).await
            }
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Remediation in a cluster: the node's labels for the policy's exclusions,
/// and the cluster-wide budget (Leases, breaker) that every action runs
/// under, with the cluster-visible actions (cordon, taint, escalate,
/// evict_pod).
async fn cluster_remediation(
    cfg: &Config,
    opts: &mut TraceOptions,
    client: kube::Client,
    node: &str,
) {
    use crate::remediation::{
        Mode,
        cluster::budget,
        coordinator::{BudgetSlot, ClusterBudget},
    };
    if cfg.remediation.mode == Mode::Off {
        return;
    }
    let timeout = cfg.kubernetes.timeout;
    match budget::node_labels(client.clone(), node, timeout).await {
        Ok(labels) => opts.remediation.node_labels = Some(labels),
        Err(e) => tracing::warn!(
            "remediation: node {node}'s labels could not be read ({e}); node-label exclusions refuse every action"
        ),
    }
    opts.remediation.cluster = true;
    if cfg.remediation.mode == Mode::Enforce {
        match budget::inherited(client.clone(), node, timeout).await {
            Ok(found) => opts.remediation_inherited = found,
            Err(e) => tracing::warn!(
                "remediation: could not read what an earlier agent left on node {node} ({e})"
            ),
        }
    }
    let (b, driver): (ClusterBudget, _) = budget::build(
        client,
        node,
        &cfg.remediation.cluster,
        timeout,
        cfg.remediation.step_timeout,
        &cfg.remediation.exclude_node_labels,
    );
    tokio::spawn(driver);
    opts.remediation_budget = BudgetSlot::new(Box::new(b));
    opts.outputs.push(format!(
        "remediation budget: cluster Leases (at most {} nodes, {} % of the pool)",
        cfg.remediation.cluster.max_nodes, cfg.remediation.cluster.max_percent
    ));
}

/// `run` in enforce without an apiserver: the budget's rules for an
/// unreachable apiserver (nothing cluster-visible; node-local actions only
/// when `local_when_apiserver_down` says so), never the node's own budget.
fn no_cluster_remediation(cfg: &Config, opts: &mut TraceOptions, why: String) {
    use crate::remediation::{Mode, cluster::budget, coordinator::BudgetSlot};
    if cfg.remediation.mode != Mode::Enforce {
        return;
    }
    let (b, driver) = budget::unreachable(
        &cfg.remediation.cluster,
        cfg.remediation.step_timeout,
        format!("no apiserver: {why}"),
    );
    tokio::spawn(driver);
    opts.remediation_budget = BudgetSlot::new(Box::new(b));
}

async fn kube_outputs(
    cfg: &Config,
    node: Option<&str>,
) -> anyhow::Result<(Box<dyn Sink>, String, kube::Client)> {
    let node = node.ok_or_else(|| {
        anyhow::anyhow!("no node name: set node_name, --node-name or $NODE_NAME (the downward API's spec.nodeName)")
    })?;
    let client = tokio::time::timeout(cfg.kubernetes.timeout, kube::Client::try_default())
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "building the client timed out after {:?}",
                cfg.kubernetes.timeout
            )
        })?
        .map_err(|e| anyhow::anyhow!("no cluster configuration (in-cluster or kubeconfig): {e}"))?;
    let opts = KubeOptions {
        node: node.to_owned(),
        conditions: cfg.kubernetes.conditions,
        events: cfg.kubernetes.events,
        timeout: cfg.kubernetes.timeout,
        resync: cfg.kubernetes.resync,
        events_per_minute: cfg.kubernetes.events_per_minute,
    };
    let (sink, exporter) = kubernetes::kubernetes(client.clone(), opts, Time::now());
    tokio::spawn(exporter.run());
    Ok((
        Box::new(sink),
        format!(
            "kubernetes node {node}: conditions {}, events {}",
            if cfg.kubernetes.conditions {
                "on"
            } else {
                "off"
            },
            if cfg.kubernetes.events { "on" } else { "off" }
        ),
        client,
    ))
}
