//! kubelet's `/metrics`: scrape it over HTTPS (CA, service-account bearer
//! token, timeout, size cap) and read the PLEG and runtime metrics with a
//! Prometheus text parser (`prometheus-parse`).
//!
//! Only the lines of the five metric families used here are handed to the
//! parser, so a large page costs one pass over its bytes and little memory;
//! the page itself is capped at [`MAX_PAGE`].
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use http_body_util::{BodyExt, Limited};
use prometheus_parse::{LineInfo, Scrape, Value};

use crate::{
    model::{
        Observation, Time,
        kubelet::{Histogram, KubeletMetrics, RuntimeOperation, SourceKind},
    },
    sources::{Call, Source, StartError, Step, Supervision},
};

pub const PLEG_LAST_SEEN: &str = "kubelet_pleg_last_seen_seconds";
pub const PLEG_RELIST_DURATION: &str = "kubelet_pleg_relist_duration_seconds";
pub const PLEG_RELIST_INTERVAL: &str = "kubelet_pleg_relist_interval_seconds";
pub const RUNTIME_OPS_DURATION: &str = "kubelet_runtime_operations_duration_seconds";
pub const RUNTIME_OPS_ERRORS: &str = "kubelet_runtime_operations_errors_total";
/// Evented PLEG (kubelet 1.26+, feature gate EventedPLEG): connections of
/// kubelet's CRI event stream, and failures to establish one. Counters
/// despite their `_count` names (an OpenMetrics exporter adds `_total`).
pub const EVENTED_CONNECTIONS: &str = "kubelet_evented_pleg_connection_success_count";
pub const EVENTED_CONNECTION_ERRORS: &str = "kubelet_evented_pleg_connection_error_count";
/// When kubelet's process started (the Go client's process collector).
pub const PROCESS_START: &str = "process_start_time_seconds";
/// kubelet before 1.14 exposed PLEG as microsecond summaries only.
const LEGACY_PLEG: [&str; 2] = [
    "kubelet_pleg_relist_latency_microseconds",
    "kubelet_pleg_relist_interval_microseconds",
];

/// The families read, and the type kubelet declares for each.
const FAMILIES: [(&str, &str); 8] = [
    (EVENTED_CONNECTIONS, "counter"),
    (EVENTED_CONNECTION_ERRORS, "counter"),
    (PROCESS_START, "gauge"),
    (PLEG_LAST_SEEN, "gauge"),
    (PLEG_RELIST_DURATION, "histogram"),
    (PLEG_RELIST_INTERVAL, "histogram"),
    (RUNTIME_OPS_DURATION, "histogram"),
    (RUNTIME_OPS_ERRORS, "counter"),
];

/// The largest page accepted (kubelet's /metrics is usually well under 1 MiB).
pub const MAX_PAGE: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("empty page")]
    Empty,
    #[error(
        "page truncated: it ends in the middle of line {line} ({tail:?}); was the connection cut?"
    )]
    Truncated { line: usize, tail: String },
    #[error("{metric} is declared as {found} on line {line}, expected {expected}")]
    WrongType {
        metric: &'static str,
        expected: &'static str,
        found: String,
        line: usize,
    },
    #[error("histogram {metric}{labels} has no +Inf bucket (truncated page?)")]
    NoInfBucket { metric: String, labels: String },
    #[error(
        "none of the PLEG metrics ({PLEG_LAST_SEEN}, {PLEG_RELIST_DURATION}) is on the page: is this kubelet's /metrics?"
    )]
    NoPlegMetrics,
    #[error(
        "this page has only the PLEG metrics of kubelet before 1.14 ({}); watchdog reads the seconds-based PLEG metrics of kubelet 1.14 and later ({PLEG_LAST_SEEN} from 1.20 on)",
        LEGACY_PLEG.join(", ")
    )]
    UnsupportedKubelet,
    #[error("page larger than the {limit} byte limit")]
    TooLarge { limit: usize },
    #[error("page is not UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("HTTP {status} from {url}{hint}")]
    Status {
        status: u16,
        url: String,
        hint: &'static str,
    },
    #[error("no answer from {url} within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: {message}")]
    Request { url: String, message: String },
    #[error("kubelet client configuration: {0}")]
    Config(String),
}

fn family_of(name: &str) -> Option<usize> {
    FAMILIES.iter().position(|(f, kind)| {
        name == *f
            || name.strip_prefix(f).is_some_and(|s| match *kind {
                "histogram" => matches!(s, "_bucket" | "_sum" | "_count"),
                "counter" => s == "_total",
                _ => false,
            })
    })
}

/// The metric name a line is about (sample or `# HELP`/`# TYPE` comment).
fn line_metric(line: &str) -> Option<&str> {
    let l = line.trim_start();
    let l = l
        .strip_prefix("# TYPE ")
        .or_else(|| l.strip_prefix("# HELP "))
        .unwrap_or(l);
    l.split(|c: char| c == '{' || c.is_whitespace()).next()
}

fn is_number(v: &str) -> bool {
    let v = v.to_ascii_lowercase();
    v == "nan" || v.parse::<f64>().is_ok()
}

/// Reads the PLEG and runtime-operation metrics from a kubelet `/metrics`
/// page scraped at `at`.
///
/// Errors on pages that cannot be trusted (truncated, a family declared with
/// another type, a histogram without its `+Inf` bucket, no PLEG metric at
/// all); single unreadable sample lines are counted in `unparseable_lines`.
pub fn parse(page: &str, at: Time) -> Result<KubeletMetrics, MetricsError> {
    if page.trim().is_empty() {
        return Err(MetricsError::Empty);
    }
    if !page.ends_with('\n') {
        let line = page.lines().count();
        let last = page.lines().last().unwrap_or("");
        let tail: String = last
            .chars()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return Err(MetricsError::Truncated { line, tail });
    }
    let mut wanted: Vec<String> = Vec::new();
    let mut unparseable = 0u64;
    let mut legacy = false;
    for (i, line) in page.lines().enumerate() {
        let Some(name) = line_metric(line) else {
            continue;
        };
        legacy |= LEGACY_PLEG.iter().any(|l| name.starts_with(l));
        let Some(fam) = family_of(name) else { continue };
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("# TYPE ") {
            let found = rest.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (metric, expected) = FAMILIES[fam];
            if rest.split_whitespace().next() == Some(metric) && found != expected {
                return Err(MetricsError::WrongType {
                    metric,
                    expected,
                    found,
                    line: i + 1,
                });
            }
        } else if !trimmed.starts_with('#') {
            let ok = match LineInfo::parse(line) {
                LineInfo::Sample { value, .. } => is_number(value),
                _ => false,
            };
            if !ok {
                unparseable += 1;
                continue;
            }
        }
        wanted.push(line.to_owned());
    }
    let scrape = Scrape::parse_at(wanted.into_iter().map(Ok), chrono_at(at)).map_err(|e| {
        MetricsError::Request {
            url: String::new(),
            message: e.to_string(),
        }
    })?;

    let mut m = KubeletMetrics {
        at,
        pleg_last_seen: None,
        process_start: None,
        relist_duration: None,
        relist_interval: None,
        runtime_operations: BTreeMap::new(),
        unparseable_lines: unparseable,
        evented_connections: None,
        evented_connection_errors: None,
    };
    // _sum and _count samples come out untyped, keyed by their labels.
    let mut sums: BTreeMap<(String, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for s in &scrape.samples {
        let op = s.labels.get("operation_type").unwrap_or("").to_owned();
        match (s.metric.as_str(), &s.value) {
            (PLEG_LAST_SEEN, Value::Gauge(v) | Value::Untyped(v)) => {
                m.pleg_last_seen =
                    (v.is_finite() && *v > 0.0).then(|| Time::from_millis((v * 1000.0) as u64));
            }
            (PROCESS_START, Value::Gauge(v) | Value::Untyped(v)) => {
                m.process_start =
                    (v.is_finite() && *v > 0.0).then(|| Time::from_millis((v * 1000.0) as u64));
            }
            (RUNTIME_OPS_ERRORS, Value::Counter(v) | Value::Untyped(v)) => {
                m.runtime_operations.entry(op).or_default().errors = *v;
            }
            (name, Value::Counter(v) | Value::Untyped(v))
                if v.is_finite()
                    && (name.strip_suffix("_total").unwrap_or(name) == EVENTED_CONNECTIONS) =>
            {
                m.evented_connections = Some(*v);
            }
            (name, Value::Counter(v) | Value::Untyped(v))
                if v.is_finite()
                    && (name.strip_suffix("_total").unwrap_or(name)
                        == EVENTED_CONNECTION_ERRORS) =>
            {
                m.evented_connection_errors = Some(*v);
            }
            (metric, Value::Histogram(buckets)) => {
                if !buckets.iter().any(|b| b.less_than.is_infinite()) {
                    return Err(MetricsError::NoInfBucket {
                        metric: metric.to_owned(),
                        labels: format!("{{{}}}", s.labels),
                    });
                }
                let mut b: Vec<(f64, f64)> =
                    buckets.iter().map(|h| (h.less_than, h.count)).collect();
                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                let h = Histogram {
                    count: b.last().map_or(0.0, |x| x.1),
                    sum_s: 0.0,
                    buckets: b,
                };
                match metric {
                    PLEG_RELIST_DURATION => m.relist_duration = Some(h),
                    PLEG_RELIST_INTERVAL => m.relist_interval = Some(h),
                    RUNTIME_OPS_DURATION => {
                        let e = m.runtime_operations.entry(op).or_default();
                        e.count = h.count;
                    }
                    _ => {}
                }
            }
            (name, Value::Untyped(v)) => {
                if let Some(base) = name.strip_suffix("_sum") {
                    sums.entry((base.to_owned(), op)).or_default().0 = Some(*v);
                } else if let Some(base) = name.strip_suffix("_count") {
                    sums.entry((base.to_owned(), op)).or_default().1 = Some(*v);
                }
            }
            _ => {}
        }
    }
    for ((base, op), (sum, count)) in sums {
        let sum = sum.unwrap_or(0.0);
        match base.as_str() {
            PLEG_RELIST_DURATION => {
                if let Some(h) = &mut m.relist_duration {
                    h.sum_s = sum;
                    h.count = count.unwrap_or(h.count);
                }
            }
            PLEG_RELIST_INTERVAL => {
                if let Some(h) = &mut m.relist_interval {
                    h.sum_s = sum;
                    h.count = count.unwrap_or(h.count);
                }
            }
            RUNTIME_OPS_DURATION => {
                let e: &mut RuntimeOperation = m.runtime_operations.entry(op).or_default();
                e.sum_s = sum;
                if let Some(c) = count {
                    e.count = c;
                }
            }
            _ => {}
        }
    }
    if m.pleg_last_seen.is_none() && m.relist_duration.is_none() {
        return Err(if legacy {
            MetricsError::UnsupportedKubelet
        } else {
            MetricsError::NoPlegMetrics
        });
    }
    Ok(m)
}

fn chrono_at(at: Time) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(at.0 as i64).unwrap_or_default()
}

/// Where and how to scrape kubelet.
#[derive(Clone, Debug)]
pub struct ScrapeConfig {
    /// e.g. `https://127.0.0.1:10250/metrics`. Use an IP literal: a host name
    /// is resolved on tokio's blocking pool, which the agent never uses.
    pub url: String,
    /// CA bundle (PEM) that signed kubelet's serving certificate.
    pub ca: Option<PathBuf>,
    /// Skip certificate verification (kubelet's self-signed serving cert).
    pub insecure: bool,
    /// Bearer token file (the pod's service-account token), re-read every minute.
    pub token: Option<PathBuf>,
    pub timeout: Duration,
    pub interval: Duration,
    pub max_page: usize,
}

/// The service-account token and CA mounted into every pod.
pub const SA_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

impl Default for ScrapeConfig {
    fn default() -> Self {
        Self {
            url: "https://127.0.0.1:10250/metrics".into(),
            ca: None,
            insecure: false,
            token: None,
            timeout: Duration::from_secs(5),
            interval: Duration::from_secs(5),
            max_page: MAX_PAGE,
        }
    }
}

/// A client for kubelet's metrics endpoint (kube's HTTP stack: rustls, token
/// file, CA).
pub struct Scraper {
    client: kube::Client,
    cfg: ScrapeConfig,
    path: String,
}

/// DER certificates of a PEM bundle, with an error naming the file.
pub fn read_ca(path: &std::path::Path) -> Result<Vec<Vec<u8>>, MetricsError> {
    let pem = std::fs::read(path)
        .map_err(|e| MetricsError::Config(format!("cannot read CA {}: {e}", path.display())))?;
    let certs: Vec<Vec<u8>> = pem::parse_many(&pem)
        .map_err(|e| MetricsError::Config(format!("CA {} is not PEM: {e}", path.display())))?
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect();
    if certs.is_empty() {
        return Err(MetricsError::Config(format!(
            "CA {} holds no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

impl Scraper {
    /// Builds the client (reads the CA now; the token at each request, cached
    /// a minute). Needs a tokio runtime.
    pub fn new(cfg: ScrapeConfig) -> Result<Self, MetricsError> {
        let uri: http::Uri = cfg.url.parse().map_err(|e| {
            MetricsError::Config(format!("bad kubelet metrics URL {:?}: {e}", cfg.url))
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(MetricsError::Config(format!(
                "kubelet metrics URL {:?} needs a scheme and host",
                cfg.url
            )));
        };
        let base: http::Uri = format!("{scheme}://{authority}")
            .parse()
            .map_err(|e| MetricsError::Config(format!("{e}")))?;
        let path = uri
            .path_and_query()
            .map_or("/metrics".to_owned(), |p| p.as_str().to_owned());
        let mut kc = kube::Config::new(base);
        kc.connect_timeout = Some(cfg.timeout);
        kc.read_timeout = Some(cfg.timeout);
        kc.write_timeout = Some(cfg.timeout);
        kc.accept_invalid_certs = cfg.insecure;
        kc.default_retry = false;
        if let Some(ca) = &cfg.ca {
            kc.root_cert = Some(read_ca(ca)?);
            kc.root_cert_file = Some(ca.clone());
        }
        if let Some(t) = &cfg.token {
            if let Err(e) = std::fs::metadata(t) {
                return Err(MetricsError::Config(format!(
                    "token file {}: {e}",
                    t.display()
                )));
            }
            kc.auth_info.token_file = Some(t.to_string_lossy().into_owned());
        }
        let client =
            kube::Client::try_from(kc).map_err(|e| MetricsError::Config(format!("{e}")))?;
        Ok(Self { client, cfg, path })
    }

    /// One scrape: the page's text (capped, with the timeout over the whole
    /// request including the body).
    pub async fn fetch(&self) -> Result<String, MetricsError> {
        let url = self.cfg.url.clone();
        let req = http::Request::get(self.path.as_str())
            .header(http::header::ACCEPT, "text/plain;version=0.0.4")
            .body(kube::client::Body::empty())
            .map_err(|e| MetricsError::Config(e.to_string()))?;
        let limit = self.cfg.max_page;
        let work = async {
            let resp = self
                .client
                .send(req)
                .await
                .map_err(|e| MetricsError::Request {
                    url: url.clone(),
                    message: error_chain(&e),
                })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(MetricsError::Status {
                    status: status.as_u16(),
                    url: url.clone(),
                    hint: match status.as_u16() {
                        401 => " (token missing or rejected)",
                        403 => " (the service account needs get on nodes/metrics)",
                        _ => "",
                    },
                });
            }
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        MetricsError::TooLarge { limit }
                    } else {
                        MetricsError::Request {
                            url: url.clone(),
                            message: format!("reading the body: {e}"),
                        }
                    }
                })?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|e| MetricsError::NotUtf8 {
                offset: e.utf8_error().valid_up_to(),
            })
        };
        match tokio::time::timeout(self.cfg.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(MetricsError::Timeout {
                url,
                timeout: self.cfg.timeout,
            }),
        }
    }

    /// Scrape and parse.
    pub async fn scrape(&self) -> Result<KubeletMetrics, MetricsError> {
        let page = self.fetch().await?;
        parse(&page, Time::now())
    }

    pub fn url(&self) -> &str {
        &self.cfg.url
    }
}

/// How far beyond the scrape's own timeout the supervision deadline lies (the
/// scrape's `Timeout` error, naming the URL, speaks first).
const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// kubelet's metrics as a supervised source: a scrape every `interval`.
pub struct MetricsSource {
    cfg: ScrapeConfig,
}

impl MetricsSource {
    pub fn new(cfg: ScrapeConfig) -> Self {
        Self { cfg }
    }
}

impl Source for MetricsSource {
    type Client = Scraper;

    fn supervision(&self) -> Supervision {
        Supervision {
            kind: SourceKind::KubeletMetrics,
            target: self.cfg.url.clone(),
            deadline: Some(self.cfg.timeout + DEADLINE_SLACK),
            interval: self.cfg.interval,
            max_backoff: Duration::from_secs(60),
        }
    }

    async fn start(&mut self) -> Result<Scraper, StartError> {
        Scraper::new(self.cfg.clone()).map_err(|e| StartError::Retry(e.to_string()))
    }

    async fn call(&mut self, scraper: &mut Scraper) -> Call {
        match scraper.scrape().await {
            Ok(m) => Call::Answered(
                Step::available(format!("scraping every {:?}", self.cfg.interval))
                    .with(Observation::KubeletMetrics(Box::new(m))),
            ),
            Err(e) => Call::Failed(e.to_string()),
        }
    }
}

/// An error and its sources, `a: b: c` (hyper/rustls hide the cause otherwise).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
