//! The NVD feed against a local server that behaves like the CVE API 2.0: last-modified
//! windows of at most 120 days, paging by startIndex, the apiKey header, resuming from the
//! cursor after a failure, and the per-run request cap. Records are the real page in
//! `fixtures/nvd-page.json`, with their lastModified spread over 222 days.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use broadcast_collect::Runner;
use broadcast_collect::feeds::nvd::{NvdConfig, NvdFeed};
use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One request the double saw: window start and end, startIndex, apiKey header.
type Seen = (DateTime<Utc>, DateTime<Utc>, usize, Option<String>);

#[derive(Default)]
struct Nvd {
    records: Vec<(DateTime<Utc>, Value)>,
    seen: Vec<Seen>,
    fail_from: Option<DateTime<Utc>>,
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn serve(nvd: Arc<Mutex<Nvd>>) -> String {
    async fn cves(
        State(nvd): State<Arc<Mutex<Nvd>>>,
        h: HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> axum::response::Response {
        let mut n = nvd.lock().unwrap();
        let (from, to) = (t(&q["lastModStartDate"]), t(&q["lastModEndDate"]));
        let (index, per): (usize, usize) =
            (q["startIndex"].parse().unwrap(), q["resultsPerPage"].parse().unwrap());
        n.seen.push((from, to, index, h.get("apikey").map(|v| v.to_str().unwrap().to_owned())));
        if (to - from).num_days() > 120 {
            return (StatusCode::NOT_FOUND, "window larger than 120 days").into_response();
        }
        if n.fail_from.is_some_and(|f| from >= f) {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        let hits: Vec<&Value> =
            n.records.iter().filter(|(m, _)| *m >= from && *m <= to).map(|(_, v)| v).collect();
        let page: Vec<&Value> = hits.iter().skip(index).take(per).copied().collect();
        axum::Json(json!({ "resultsPerPage": page.len(), "startIndex": index, "totalResults": hits.len(),
                           "format": "NVD_CVE", "version": "2.0", "vulnerabilities": page }))
        .into_response()
    }
    let app = axum::Router::new().route("/rest/json/cves/2.0", axum::routing::get(cves)).with_state(nvd);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/rest/json/cves/2.0")
}

fn dataset(now: DateTime<Utc>) -> Vec<(DateTime<Utc>, Value)> {
    let page: Value = serde_json::from_slice(include_bytes!("fixtures/nvd-page.json")).unwrap();
    page["vulnerabilities"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| (now - Duration::days(6 * i as i64) - Duration::hours(1), v.clone()))
        .collect()
}

fn feed(url: &str, extra: &str) -> NvdFeed {
    let cfg: NvdConfig = toml::from_str(&format!(
        "id = \"nvd\"\nurl = \"{url}\"\nresults_per_page = 10\nbackfill_days = 250\nrequests_per_30s = 1000\n{extra}"
    ))
    .unwrap();
    NvdFeed::new(&cfg).unwrap()
}

#[tokio::test]
async fn windows_pages_and_the_api_key() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = t("2025-06-01T12:00:00Z");
    let nvd = Arc::new(Mutex::new(Nvd { records: dataset(now), ..Nvd::default() }));
    let url = serve(nvd.clone()).await;
    let runner = Runner::new(Default::default()).unwrap();
    let windows = Mutex::new(Vec::new());
    let run = feed(&url, "api_key = \"secret-key\"")
        .run_with(&runner, None, now, &|done, total| windows.lock().unwrap().push((done, total)))
        .await
        .unwrap();
    assert_eq!(*windows.lock().unwrap(), [(1, 3), (2, 3), (3, 3)], "progress per 120-day window");
    assert_eq!(run.parsed.items.len(), 38, "every record in the 250 days: {:?}", run.parsed.refused);
    assert!(run.parsed.refused.is_empty());
    assert_eq!(run.cursor.as_deref(), Some("2025-06-01T12:00:00.000Z"));
    let seen = nvd.lock().unwrap().seen.clone();
    assert!(seen.iter().all(|s| s.3.as_deref() == Some("secret-key")), "apiKey on every request");
    assert!(seen.iter().all(|s| (s.1 - s.0).num_days() <= 120));
    assert_eq!(seen[0].0, now - Duration::days(250), "the first run starts backfill_days back");
    // Pages: startIndex 0, 10, … within a window, then the next window from 0.
    let first_window: Vec<usize> = seen.iter().filter(|s| s.0 == seen[0].0).map(|s| s.2).collect();
    assert_eq!(first_window, [0, 10]);
    assert_eq!(run.requests, seen.len());
}

#[tokio::test]
async fn a_failure_keeps_finished_windows_and_the_next_run_resumes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = t("2025-06-01T12:00:00Z");
    let nvd = Arc::new(Mutex::new(Nvd {
        records: dataset(now),
        fail_from: Some(now - Duration::days(130)),
        ..Nvd::default()
    }));
    let url = serve(nvd.clone()).await;
    let runner = Runner::new(Default::default()).unwrap();
    let f = feed(&url, "");
    let partial = f.run(&runner, None, now).await.unwrap();
    let window_end = now - Duration::days(130);
    assert_eq!(
        partial.cursor.as_deref(),
        Some(window_end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).as_str())
    );
    assert_eq!(partial.remaining_windows, 2);
    assert!(partial.parsed.refused[0].contains("stopped at window"), "{:?}", partial.parsed.refused);
    let first = partial.parsed.items.len();
    assert!(first > 0 && first < 38);
    // The service is back; a restart resumes from the stored cursor.
    nvd.lock().unwrap().fail_from = None;
    nvd.lock().unwrap().seen.clear();
    let rest = f.run(&runner, partial.cursor.as_deref(), now).await.unwrap();
    assert_eq!(first + rest.parsed.items.len(), 38, "nothing lost, nothing twice");
    assert!(nvd.lock().unwrap().seen.iter().all(|s| s.0 >= window_end), "no window before the cursor again");

    // The per-run cap stops between windows and says what is left.
    let capped = feed(&url, "max_requests_per_run = 2").run(&runner, None, now).await.unwrap();
    assert_eq!((capped.requests, capped.remaining_windows), (2, 2));
}
