use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio_rustls::{TlsAcceptor, rustls};

use super::*;

const PAGE: &str = include_str!("fixtures/kubelet-metrics.txt");
const CA: &str = include_str!("fixtures/ca.pem");
const CERT: &str = include_str!("fixtures/kubelet-cert.pem");
const KEY: &str = include_str!("fixtures/kubelet-key.pem");
const TOKEN: &str = "test-token-5e7d";
const AT: Time = Time(1_785_000_042_000);

#[test]
fn realistic_page() {
    let m = parse(PAGE, AT).unwrap();
    assert_eq!(m.at, AT);
    assert_eq!(m.pleg_last_seen, Some(Time(1_785_000_040_500)));
    let d = m.relist_duration.as_ref().unwrap();
    assert_eq!(d.count, 84403.0);
    assert!((d.sum_s - 2461.3379201).abs() < 1e-6);
    assert_eq!(d.buckets.len(), 12);
    assert!(d.buckets.last().unwrap().0.is_infinite());
    assert!(d.buckets.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(m.relist_interval.as_ref().unwrap().count, 84402.0);
    let cs = &m.runtime_operations["container_status"];
    assert_eq!(cs.count, 161234.0);
    assert!((cs.sum_s - 4012.7).abs() < 1e-9);
    assert_eq!(cs.errors, 7.0);
    assert_eq!(m.runtime_operations["list_containers"].errors, 0.0);
    assert_eq!(m.runtime_operations["stop_container"].errors, 3.0);
    assert_eq!(m.runtime_operations.len(), 7);
    assert_eq!(m.unparseable_lines, 0);
}

#[test]
fn truncated_page_is_an_error() {
    let mid = PAGE[PAGE.len() / 2..].find('\n').unwrap() + PAGE.len() / 2;
    let cut = &PAGE[..mid + 10];
    let e = parse(cut, AT).unwrap_err();
    assert!(matches!(e, MetricsError::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    // Cut at a line end but in the middle of a histogram: no +Inf bucket.
    let i = PAGE
        .find("kubelet_pleg_relist_duration_seconds_bucket{le=\"1\"}")
        .unwrap();
    let e = parse(&PAGE[..i], AT).unwrap_err();
    assert_eq!(
        e,
        MetricsError::NoInfBucket {
            metric: PLEG_RELIST_DURATION.into(),
            labels: "{}".into()
        },
        "{e}"
    );
    assert_eq!(parse("", AT).unwrap_err(), MetricsError::Empty);
}

#[test]
fn wrong_type_is_an_error_naming_the_line() {
    let bad = PAGE.replace(
        "# TYPE kubelet_pleg_last_seen_seconds gauge",
        "# TYPE kubelet_pleg_last_seen_seconds histogram",
    );
    let e = parse(&bad, AT).unwrap_err();
    let MetricsError::WrongType {
        metric,
        expected,
        found,
        line,
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(*metric, PLEG_LAST_SEEN);
    assert_eq!(*expected, "gauge");
    assert_eq!(found, "histogram");
    assert_eq!(
        PAGE.lines().nth(line - 1).unwrap(),
        "# TYPE kubelet_pleg_last_seen_seconds gauge"
    );
    assert!(e.to_string().contains("expected gauge"), "{e}");
}

#[test]
fn bad_sample_lines_are_counted() {
    let bad = PAGE.replace(
        "kubelet_runtime_operations_errors_total{operation_type=\"stop_container\"} 3",
        "kubelet_runtime_operations_errors_total{operation_type=\"stop_container\"} three\nkubelet_pleg_relist_duration_seconds_sum{",
    );
    let m = parse(&bad, AT).unwrap();
    assert_eq!(m.unparseable_lines, 2);
    assert_eq!(m.runtime_operations["stop_container"].errors, 0.0);
    assert_eq!(m.runtime_operations["container_status"].errors, 7.0);
}

#[test]
fn not_a_kubelet_page() {
    let e = parse("# TYPE up gauge\nup 1\n", AT).unwrap_err();
    assert_eq!(e, MetricsError::NoPlegMetrics);
    let e = parse("<html>404 page not found</html>\n", AT).unwrap_err();
    assert_eq!(e, MetricsError::NoPlegMetrics);
}

#[test]
fn huge_page_parses_in_one_pass() {
    // 200k unrelated lines around the real page: only our families are kept.
    let mut big = String::with_capacity(12 << 20);
    for i in 0..200_000 {
        big.push_str(&format!(
            "container_fs_usage_bytes{{id=\"/kubepods/pod{i}\"}} {i}\n"
        ));
    }
    big.push_str(PAGE);
    let t = std::time::Instant::now();
    let m = parse(&big, AT).unwrap();
    assert_eq!(m.runtime_operations.len(), 7);
    eprintln!("parsed {} bytes in {:?}", big.len(), t.elapsed());
}

// ---------------------------------------------------------------------------
// Scrape over HTTPS from an in-process server
// ---------------------------------------------------------------------------

fn tls_acceptor() -> TlsAcceptor {
    let certs = pem::parse_many(CERT)
        .unwrap()
        .into_iter()
        .map(|p| rustls::pki_types::CertificateDer::from(p.into_contents()))
        .collect();
    let key =
        rustls::pki_types::PrivateKeyDer::Pkcs8(pem::parse(KEY).unwrap().into_contents().into());
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    TlsAcceptor::from(Arc::new(cfg))
}

async fn serve(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {TOKEN}") {
        return Ok(Response::builder()
            .status(401)
            .body(Full::new(Bytes::from_static(b"Unauthorized")))
            .unwrap());
    }
    let body = match req.uri().path() {
        "/metrics" => PAGE.to_owned(),
        "/truncated" => PAGE[..PAGE.len() - 7].to_owned(),
        "/wrongtype" => PAGE.replace("histogram", "summary"),
        "/huge" => "x".repeat(300 * 1024),
        "/hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            String::new()
        }
        _ => {
            return Ok(Response::builder()
                .status(404)
                .body(Full::new(Bytes::from_static(b"404 page not found")))
                .unwrap());
        }
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

async fn https_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls_acceptor();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service_fn(serve))
                    .await;
            });
        }
    });
    addr
}

fn tmp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("watchdog-metrics-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn cfg(addr: SocketAddr, path: &str) -> ScrapeConfig {
    ScrapeConfig {
        url: format!("https://{addr}{path}"),
        ca: Some(tmp_file("ca.pem", CA)),
        token: Some(tmp_file("token", TOKEN)),
        timeout: Duration::from_secs(2),
        max_page: 256 * 1024,
        ..ScrapeConfig::default()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn scrape_over_https_with_ca_and_token() {
    let addr = https_server().await;
    let s = Scraper::new(cfg(addr, "/metrics")).unwrap();
    let m = s.scrape().await.unwrap();
    assert_eq!(m.pleg_last_seen, Some(Time(1_785_000_040_500)));
    assert_eq!(m.runtime_operations["container_status"].errors, 7.0);
}

#[tokio::test(flavor = "current_thread")]
async fn scrape_errors_are_clear() {
    let addr = https_server().await;
    let err = |path: &'static str| async move {
        Scraper::new(cfg(addr, path))
            .unwrap()
            .scrape()
            .await
            .unwrap_err()
    };
    let e = err("/truncated").await;
    assert!(matches!(e, MetricsError::Truncated { .. }), "{e}");
    let e = err("/wrongtype").await;
    assert!(e.to_string().contains("expected histogram"), "{e}");
    let e = err("/huge").await;
    assert_eq!(e, MetricsError::TooLarge { limit: 256 * 1024 });
    let e = err("/nothing").await;
    assert!(matches!(e, MetricsError::Status { status: 404, .. }), "{e}");
    // A server that never answers: the timeout fires, the caller goes on.
    let t = std::time::Instant::now();
    let e = err("/hang").await;
    assert!(matches!(e, MetricsError::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    // Wrong token.
    let mut c = cfg(addr, "/metrics");
    c.token = Some(tmp_file("bad-token", "nope"));
    let e = Scraper::new(c).unwrap().scrape().await.unwrap_err();
    assert!(
        e.to_string().contains("401") && e.to_string().contains("token"),
        "{e}"
    );

    // No CA: the test CA is not trusted.
    let mut c = cfg(addr, "/metrics");
    c.ca = Some(tmp_file("other-ca.pem", CERT));
    let e = Scraper::new(c).unwrap().scrape().await.unwrap_err();
    assert!(matches!(e, MetricsError::Request { .. }), "{e}");
    eprintln!("untrusted certificate: {e}");
    // ...unless verification is off (kubelet's self-signed serving cert).
    let mut c = cfg(addr, "/metrics");
    c.ca = None;
    c.insecure = true;
    Scraper::new(c).unwrap().scrape().await.unwrap();

    // Nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let e = Scraper::new(cfg(dead_addr, "/metrics"))
        .unwrap()
        .scrape()
        .await
        .unwrap_err();
    eprintln!("nothing listening: {e}");
    assert!(e.to_string().to_lowercase().contains("refused"), "{e}");
}

#[test]
fn bad_config_is_reported() {
    let mut c = ScrapeConfig {
        ca: Some(PathBuf::from("/nonexistent/ca.pem")),
        ..ScrapeConfig::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let e = Scraper::new(c.clone()).err().unwrap();
    assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    c.ca = Some(tmp_file("not-pem", "hello"));
    let e = Scraper::new(c.clone()).err().unwrap();
    assert!(e.to_string().contains("CERTIFICATE"), "{e}");
    c.ca = None;
    c.url = "not a url".into();
    assert!(Scraper::new(c).is_err());
}

#[test]
fn a_kubelet_before_1_14_is_named_as_unsupported() {
    let page = "# HELP kubelet_pleg_relist_latency_microseconds Latency in microseconds for relisting pods in PLEG.\n# TYPE kubelet_pleg_relist_latency_microseconds summary\nkubelet_pleg_relist_latency_microseconds{quantile=\"0.5\"} 2412\nkubelet_pleg_relist_latency_microseconds_sum 2.11960799e+09\nkubelet_pleg_relist_latency_microseconds_count 905125\n";
    let e = parse(page, AT).unwrap_err();
    assert_eq!(e, MetricsError::UnsupportedKubelet);
    assert!(e.to_string().contains("kubelet 1.14 and later"), "{e}");
}

#[test]
fn process_start_is_read() {
    let page = "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 1.6e+09\n# TYPE kubelet_pleg_last_seen_seconds gauge\nkubelet_pleg_last_seen_seconds 1.7e+09\n";
    let m = parse(page, AT).unwrap();
    assert_eq!(m.process_start, Some(Time::from_millis(1_600_000_000_000)));
}

/// kubelet 1.26+ with the EventedPLEG gate: its stream's connection
/// counters (`_count` names, counter type; `_total` added by an OpenMetrics
/// exporter), as kubelet's legacy registry writes them.
#[test]
fn evented_pleg_connection_counters() {
    let evented = "# HELP kubelet_evented_pleg_connection_error_count [ALPHA] The number of errors encountered during the establishment of streaming connection with the CRI runtime.\n\
# TYPE kubelet_evented_pleg_connection_error_count counter\n\
kubelet_evented_pleg_connection_error_count 4\n\
# HELP kubelet_evented_pleg_connection_success_count [ALPHA] The number of times a streaming client was obtained to receive CRI Events.\n\
# TYPE kubelet_evented_pleg_connection_success_count counter\n\
kubelet_evented_pleg_connection_success_count 1\n";
    let m = parse(&format!("{PAGE}{evented}"), AT).unwrap();
    assert_eq!(m.evented_connection_errors, Some(4.0));
    assert_eq!(m.evented_connections, Some(1.0));
    let total = evented
        .replace("error_count 4", "error_count_total 6")
        .replace("success_count 1", "success_count_total 2");
    let m = parse(&format!("{PAGE}{total}"), AT).unwrap();
    assert_eq!(m.evented_connection_errors, Some(6.0));
    assert_eq!(m.evented_connections, Some(2.0));
    // Declared as something else: the page is not trusted.
    let wrong = evented.replace(
        "# TYPE kubelet_evented_pleg_connection_error_count counter",
        "# TYPE kubelet_evented_pleg_connection_error_count gauge",
    );
    assert!(matches!(
        parse(&format!("{PAGE}{wrong}"), AT),
        Err(MetricsError::WrongType { .. })
    ));
    // The realistic page has none: not known.
    let m = parse(PAGE, AT).unwrap();
    assert_eq!(m.evented_connections, None);
}
