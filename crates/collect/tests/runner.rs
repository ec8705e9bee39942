//! The runner against a real HTTP server on loopback serving recorded feed bodies.

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use broadcast_collect::{FeedConfig, FetchError, FetchOutcome, Runner, RunnerConfig, Validators};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

const ALAS: &str = include_str!("fixtures/alas-ami-mock_rss.xml");
const BROKEN: &str = include_str!("fixtures/rss_2.0_invalid_1.xml");

async fn serve(hits: Arc<AtomicUsize>) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let app = axum::Router::new()
        .route(
            "/feed.xml",
            get(move |headers: HeaderMap| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == "\"v1\"") {
                        return StatusCode::NOT_MODIFIED.into_response();
                    }
                    ([(header::ETAG, "\"v1\""), (header::CONTENT_TYPE, "application/rss+xml")], ALAS)
                        .into_response()
                }
            }),
        )
        .route("/broken.xml", get(|| async { BROKEN }))
        .route("/big.xml", get(|| async { "x".repeat(300_000) }))
        // 64 KB on the wire, 64 MB once decompressed.
        .route(
            "/bomb.xml",
            get(|| async {
                (
                    [(header::CONTENT_ENCODING, "gzip"), (header::CONTENT_TYPE, "application/rss+xml")],
                    include_bytes!("fixtures/zeros-64mb.xml.gz").as_slice(),
                )
            }),
        )
        .route("/down.xml", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn feed(url: &str) -> Box<dyn broadcast_collect::Feed> {
    let cfg: FeedConfig = toml::from_str(&format!("type = \"rss\"\nid = \"t\"\nurl = \"{url}\"")).unwrap();
    let broadcast_collect::Source::Feed(f) = cfg.build().unwrap() else { panic!("an rss feed") };
    f
}

#[tokio::test]
async fn conditional_get_uses_etag() {
    let hits = Arc::new(AtomicUsize::new(0));
    let base = serve(hits.clone()).await;
    let runner = Runner::new(RunnerConfig::default()).unwrap();
    let f = feed(&format!("{base}/feed.xml"));
    let FetchOutcome::Fetched { parsed, validators, bytes, pages, .. } =
        runner.run(f.as_ref(), &Validators::default()).await.unwrap()
    else {
        panic!("expected a body")
    };
    assert_eq!(parsed.items.len(), 97);
    assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
    assert_eq!((bytes, pages), (ALAS.len(), 1));
    let again = runner.run(f.as_ref(), &validators).await.unwrap();
    assert!(matches!(again, FetchOutcome::NotModified));
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn failures_name_the_url_and_the_cause() {
    let base = serve(Arc::new(AtomicUsize::new(0))).await;
    let runner = Runner::new(RunnerConfig { max_body_bytes: 200_000, ..RunnerConfig::default() }).unwrap();
    let err =
        runner.run(feed(&format!("{base}/broken.xml")).as_ref(), &Validators::default()).await.unwrap_err();
    assert!(matches!(err, FetchError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("/broken.xml"), "{err}");
    let err =
        runner.run(feed(&format!("{base}/big.xml")).as_ref(), &Validators::default()).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { limit: 200_000, .. }), "{err}");
    // The cap applies to the decompressed body: a gzip bomb stops at the limit.
    let err =
        runner.run(feed(&format!("{base}/bomb.xml")).as_ref(), &Validators::default()).await.unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { limit: 200_000, .. }), "{err}");
    let err =
        runner.run(feed(&format!("{base}/down.xml")).as_ref(), &Validators::default()).await.unwrap_err();
    assert_eq!(err.to_string(), format!("{base}/down.xml: HTTP 503"));
    // Nothing listens on port 9 of loopback.
    let err =
        runner.run(feed("http://127.0.0.1:9/feed.xml").as_ref(), &Validators::default()).await.unwrap_err();
    assert!(matches!(err, FetchError::Network { .. }), "{err}");
}

#[tokio::test]
async fn file_sources_skip_unchanged_files() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("feed.xml");
    std::fs::write(&path, ALAS).unwrap();
    let runner = Runner::new(RunnerConfig::default()).unwrap();
    let f = feed(&format!("file://{}", path.display()));
    let FetchOutcome::Fetched { validators, parsed, .. } =
        runner.run(f.as_ref(), &Validators::default()).await.unwrap()
    else {
        panic!("expected a body")
    };
    assert_eq!(parsed.items.len(), 97);
    assert!(matches!(runner.run(f.as_ref(), &validators).await.unwrap(), FetchOutcome::NotModified));
    let missing = feed(&format!("file://{}", dir.path().join("nope.xml").display()));
    let err = runner.run(missing.as_ref(), &Validators::default()).await.unwrap_err();
    assert!(err.to_string().contains("nope.xml"), "{err}");
}
