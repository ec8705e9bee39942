//! End to end: the real `broadcast` binary, a recorded feed served over HTTP, a real SMTP
//! server (Python's aiosmtpd, an independent implementation), and a local HTTP receiver
//! that verifies every webhook signature. The whole flow runs once on SQLite and once on
//! PostgreSQL, and the assertions are about what recipients see.
//!
//! Needs: `python3 -m aiosmtpd` (`pip install aiosmtpd`; `.ci/run` installs it) and
//! PostgreSQL at `BROADCAST_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! Fixture: `tests/fixtures/medical-advisories.xml` (see `tests/fixtures/PROVENANCE.md`).

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use broadcast_distribute::sign::verify;
use serde_json::{Value, json};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "e2e/browser.rs"]
mod browser;

const FEED: &str = include_str!("../fixtures/medical-advisories.xml");
const SOC_SECRET: &str = "whsec_c29jLXNlY3JldC1mb3ItdGhlLWUyZS10ZXN0cw==";
const FLAKY_SECRET: &str = "whsec_Zmxha3ktc2VjcmV0LWZvci1lMmUtdGVzdHM=";
const ADMIN_TOKEN: &str = "e2e-admin-token-0000000000000000";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// The `broadcast` binary cargo built for this test run (`target/<profile>/broadcast`).
fn broadcast_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BROADCAST_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("broadcast");
    // `cargo test -p broadcast-tests` alone does not rebuild the binary; refuse to test a
    // stale one rather than report on old code.
    if let (Ok(built), Some(newest)) =
        (bin.metadata().and_then(|m| m.modified()), newest_source(&repo().join("crates")))
    {
        assert!(
            built >= newest,
            "{} is older than the source: run `cargo build -p broadcast-server` first (or `cargo test --workspace`)",
            bin.display()
        );
    }
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build -p broadcast-server` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// The newest modification time of any source or migration under `dir`.
fn newest_source(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        let t = if p.is_dir() {
            if p.ends_with("tests") || p.ends_with("target") { None } else { newest_source(&p) }
        } else if p.extension().is_some_and(|x| x == "rs" || x == "sql") {
            p.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, pass or fail.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the webhook receiver saw: one entry per request.
#[derive(Clone, Debug)]
struct Hook {
    path: String,
    id: String,
    body: String,
    signature_valid: bool,
}

async fn start_feed_server() -> String {
    let app = axum::Router::new().route(
        "/advisories.xml",
        get(|h: HeaderMap| async move {
            if h.get(header::IF_NONE_MATCH).is_some_and(|v| v == "\"feed-v1\"") {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            ([(header::ETAG, "\"feed-v1\""), (header::CONTENT_TYPE, "application/rss+xml")], FEED)
                .into_response()
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/advisories.xml")
}

/// A SOC's receiver: verifies the Standard Webhooks signature of every request with the
/// secret registered for that path. `/flaky` answers 503 to its first request.
async fn start_receiver(seen: Arc<Mutex<Vec<Hook>>>) -> String {
    let flaky_calls: Arc<Mutex<std::collections::HashMap<&'static str, usize>>> = Arc::default();
    let handler = move |path: &'static str, secret: &'static str| {
        let seen = seen.clone();
        let flaky_calls = flaky_calls.clone();
        move |h: HeaderMap, body: String| {
            let seen = seen.clone();
            let flaky_calls = flaky_calls.clone();
            async move {
                let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let ts: i64 = get("webhook-timestamp").parse().unwrap_or(0);
                let now = chrono::Utc::now().timestamp();
                let ok = verify(
                    secret,
                    &get("webhook-id"),
                    ts,
                    body.as_bytes(),
                    &get("webhook-signature"),
                    now,
                    300,
                )
                .is_ok();
                seen.lock().unwrap().push(Hook {
                    path: path.into(),
                    id: get("webhook-id"),
                    body,
                    signature_valid: ok,
                });
                if !ok {
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                let first_call = {
                    let mut calls = flaky_calls.lock().unwrap();
                    let n = calls.entry(path).or_insert(0);
                    *n += 1;
                    *n == 1
                };
                match path {
                    "/flaky" if first_call => StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    "/throttled" if first_call => {
                        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response()
                    }
                    "/gone" => StatusCode::GONE.into_response(),
                    _ => StatusCode::NO_CONTENT.into_response(),
                }
            }
        }
    };
    let app = axum::Router::new()
        .route("/soc", post(handler("/soc", SOC_SECRET)))
        .route("/flaky", post(handler("/flaky", FLAKY_SECRET)))
        .route("/throttled", post(handler("/throttled", SOC_SECRET)))
        .route("/gone", post(handler("/gone", SOC_SECRET)))
        .route("/slack", post(handler("/slack", SOC_SECRET)));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

/// aiosmtpd storing messages in `maildir`, on a free port, offering PIPELINING (so the
/// pipelined send is what these tests exercise; a plain `aiosmtpd.handlers.Mailbox`, which
/// does not offer it, is used where the SMTP server is restarted mid-run).
fn start_smtp(maildir: &Path) -> (Proc, u16) {
    let port = free_port();
    (start_smtp_with(maildir, port, "smtp_handlers.PipeliningMailbox"), port)
}

/// aiosmtpd with a handler class on `port`; `tests/fixtures` is on the Python path for ours.
fn start_smtp_with(maildir: &Path, port: u16, handler: &str) -> Proc {
    let child = Command::new("python3")
        .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", handler])
        .env("PYTHONPATH", repo().join("tests/fixtures"))
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with aiosmtpd is needed (pip install aiosmtpd)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start (is it installed? pip install aiosmtpd)");
        std::thread::sleep(Duration::from_millis(50));
    }
    Proc(child)
}

/// Polls `f` until it returns `Some`, failing with `what` after `secs`.
async fn wait_for<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    async fn get(&self, token: &str, path: &str) -> Value {
        let (s, v) = self.call(token, reqwest::Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {v}");
        v
    }
    async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(token, reqwest::Method::POST, path, Some(body)).await
    }
}

fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(broadcast_bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "broadcast {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

async fn whole_flow(store_url: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("maildir");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let feed_url = start_feed_server().await;
    let hooks: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let receiver = start_receiver(hooks.clone()).await;
    let api_port = free_port();
    let base = format!("http://127.0.0.1:{api_port}");

    let seed = dir.path().join("seed.toml");
    std::fs::write(
        &seed,
        format!("[[analysts]]\nname = \"admin\"\nrole = \"admin\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
    )
    .unwrap();
    let config = dir.path().join("broadcast.toml");
    std::fs::write(
        &config,
        format!(
            r#"
seed_file = "{seed}"
[store]
url = "{store_url}"
[api]
listen = "127.0.0.1:{api_port}"
public_url = "{base}"
[security]
link_secret = "e2e-link-secret-e2e-link-secret-0123456789"
[bulletins]
templates_dir = "{templates}"
[triage]
watchlist_file = "{watchlist}"
old_after_days = 3650
[email]
from = "NHS Broadcast <bulletins@broadcast.test>"
list_id = "bulletins.broadcast.test"
transport = "smtp"
[email.smtp]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
[webhook]
# The test receiver is on loopback, which the SSRF guard refuses unless allowed.
allow_networks = ["127.0.0.0/8"]
[delivery]
poll_interval_ms = 200
retry_delays_secs = [1, 1, 1]
[collect]
# The default adds up to 30 s to every run, longer than the test waits for the second one.
jitter_secs = 0
[[feeds]]
type = "rss"
id = "cisa-medical"
url = "{feed_url}"
schedule = "*/2 * * * * *"
"#,
            seed = seed.display(),
            templates = repo().join("bulletin-templates").display(),
            watchlist = repo().join("config/watchlist.toml").display(),
        ),
    )
    .unwrap();

    // Analysts are created by the operator with the CLI; tokens are printed once.
    let alice = cli(&config, &["analyst", "add", "alice", "--role", "approver"]).trim().to_owned();
    let bob = cli(&config, &["analyst", "add", "bob", "--role", "approver"]).trim().to_owned();

    let server = Command::new(broadcast_bin())
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
        .spawn()
        .unwrap();
    let _server = Proc(server);
    let api = Api { base: base.clone(), http: reqwest::Client::new() };
    wait_for("the API", 30, || async {
        api.http.get(format!("{base}/healthz")).send().await.ok().filter(|r| r.status().is_success())
    })
    .await;

    // Subscribers, through the API as an admin.
    let (s, _) = api.post(&alice, "/api/organisations", json!({ "name": "Should Fail" })).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an analyst cannot manage organisations");
    let (s, trust) = api
        .post(
            ADMIN_TOKEN,
            "/api/organisations",
            json!({ "name": "Northshire Hospitals", "tlp_clearance": "AMBER" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{trust}");
    let (s, care) = api
        .post(
            ADMIN_TOKEN,
            "/api/organisations",
            json!({ "name": "Meadowbank Care", "tlp_clearance": "GREEN" }),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{care}");
    let trust_id = trust["id"].as_str().unwrap();
    for (email, name) in [("soc@northshire.nhs.test", "SOC Team"), ("cio@northshire.nhs.test", "CIO")] {
        let (s, v) = api
            .post(
                ADMIN_TOKEN,
                &format!("/api/organisations/{trust_id}/contacts"),
                json!({ "email": email, "name": name }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    api.post(
        ADMIN_TOKEN,
        "/api/organisations/Meadowbank Care/contacts",
        json!({ "email": "it@meadowbank.test" }),
    )
    .await;
    for (path, secret) in
        [("/soc", SOC_SECRET), ("/flaky", FLAKY_SECRET), ("/throttled", SOC_SECRET), ("/gone", SOC_SECRET)]
    {
        let (s, v) = api
            .post(
                ADMIN_TOKEN,
                &format!("/api/organisations/{trust_id}/endpoints"),
                json!({ "url": format!("{receiver}{path}"), "secret": secret }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    // A Slack incoming webhook for the SOC's chat channel.
    let (s, v) = api
        .post(
            ADMIN_TOKEN,
            &format!("/api/organisations/{trust_id}/endpoints"),
            json!({ "url": format!("{receiver}/slack"), "secret": SOC_SECRET, "format": "slack" }),
        )
        .await;
    assert_eq!((s, v["format"].as_str()), (StatusCode::CREATED, Some("slack")), "{v}");
    // Bad input is refused with a reason and stores nothing.
    let (s, v) = api
        .post(ADMIN_TOKEN, "/api/organisations/org_unknown/contacts", json!({ "email": "x@y.test" }))
        .await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (StatusCode::NOT_FOUND, "organisation `org_unknown` not found")
    );
    let (s, v) = api
        .post(
            ADMIN_TOKEN,
            &format!("/api/organisations/{trust_id}/endpoints"),
            json!({ "url": "gopher://soc.test/" }),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(v["error"].as_str().unwrap().contains("gopher://soc.test/"), "{v}");

    // The recorded feed is collected and triaged: candidates appear with reasons.
    let candidates = wait_for("candidates", 30, || async {
        let v = api.get(&alice, "/api/candidates").await;
        let list = v["candidates"].as_array().cloned().unwrap_or_default();
        (list.len() >= 5).then_some(list)
    })
    .await;
    let top = &candidates[0];
    assert_eq!(top["assessment"]["threat_level"], "High");
    let reasons: Vec<&str> =
        top["assessment"]["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("probable product match") || r.starts_with("keyword:")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.starts_with("CVSS ")), "{reasons:?}");
    let adv_id = top["advisory"]["id"].as_str().unwrap().to_owned();
    let adv_title = top["advisory"]["title"].as_str().unwrap().to_owned();
    let adv_cve = top["advisory"]["cves"][0].as_str().unwrap().to_owned();

    // Fetching the same feed again (every 2 s here) stores nothing twice: wait for a later
    // successful run, then check nothing was added.
    let first = api.get(&alice, "/api/feeds").await["feeds"][0]["state"]["last_success"].clone();
    let feeds = wait_for("a second run of the feed", 30, || async {
        let v = api.get(&alice, "/api/feeds").await;
        (v["feeds"][0]["state"]["last_success"] != first).then_some(v)
    })
    .await;
    let state = &feeds["feeds"][0]["state"];
    assert_eq!(state["items_seen"], 18, "{feeds}");
    assert_eq!(state["consecutive_failures"], 0);
    assert_eq!(api.get(&alice, "/api/candidates?all=true").await["candidates"].as_array().unwrap().len(), 18);

    // Draft (AMBER), submit, the author cannot approve, a second analyst does, publish.
    let (s, b) =
        api.post(&alice, "/api/bulletins", json!({ "advisory_ids": [adv_id], "tlp": "AMBER" })).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let reference = b["reference"].as_str().unwrap().to_owned();
    let (s, preview) =
        api.call(&alice, reqwest::Method::GET, &format!("/api/bulletins/{reference}/preview"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(preview["webhook"]["data"]["reference"], reference);
    let (s, v) = api.post(&alice, &format!("/api/bulletins/{reference}/submit"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = api.post(&alice, &format!("/api/bulletins/{reference}/approve"), json!({})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("four-eyes rule: alice wrote this bulletin and cannot approve it"),
        "{v}"
    );
    let (s, v) = api.post(&alice, &format!("/api/bulletins/{reference}/publish"), json!({})).await;
    assert_eq!(s, StatusCode::CONFLICT, "cannot publish before approval: {v}");
    let (s, v) =
        api.post(&bob, &format!("/api/bulletins/{reference}/approve"), json!({ "comment": "Checked" })).await;
    assert_eq!((s, v["bulletin"]["state"].as_str()), (StatusCode::OK, Some("approved")), "{v}");
    let (s, v) = api.post(&alice, &format!("/api/bulletins/{reference}/publish"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["deliveries_created"], 8, "2 trust contacts + 5 endpoints + 1 care-home contact: {v}");

    // Everything reaches a terminal state: delivered, or suppressed for the uncleared org.
    let status = wait_for("deliveries to finish", 60, || async {
        let v = api.get(&alice, &format!("/api/bulletins/{reference}/deliveries")).await;
        (v["counts"]["pending"] == 0).then_some(v)
    })
    .await;
    assert_eq!(status["counts"]["delivered"], 6, "{status}");
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    assert_eq!(status["counts"]["suppressed"], 1, "{status}");
    let rows = status["deliveries"].as_array().unwrap();
    let suppressed = rows.iter().find(|d| d["state"] == "suppressed").unwrap();
    assert_eq!(suppressed["address"], "it@meadowbank.test");
    assert_eq!(suppressed["reason"], "organisation not cleared for TLP:AMBER");
    let flaky = rows.iter().find(|d| d["address"].as_str().unwrap().ends_with("/flaky")).unwrap();
    assert_eq!(
        (flaky["state"].as_str(), flaky["attempts"].as_i64()),
        (Some("delivered"), Some(2)),
        "{flaky}"
    );
    let flaky_id = flaky["id"].as_str().unwrap();
    // 410 Gone: failed for good, and the endpoint is disabled.
    let gone = rows.iter().find(|d| d["address"].as_str().unwrap().ends_with("/gone")).unwrap();
    assert_eq!(gone["state"], "failed");
    assert!(
        gone["reason"].as_str().unwrap().starts_with("HTTP 410")
            && gone["reason"].as_str().unwrap().ends_with("(endpoint disabled)"),
        "{gone}"
    );
    let org = api.get(ADMIN_TOKEN, &format!("/api/organisations/{trust_id}")).await;
    let gone_ep = org["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"].as_str().unwrap().ends_with("/gone"))
        .unwrap();
    assert_eq!(gone_ep["enabled"], false, "{org}");
    // 429 with Retry-After: retried, then delivered.
    let throttled = rows.iter().find(|d| d["address"].as_str().unwrap().ends_with("/throttled")).unwrap();
    assert_eq!(
        (throttled["state"].as_str(), throttled["attempts"].as_i64()),
        (Some("delivered"), Some(2)),
        "{throttled}"
    );
    let t_attempts =
        api.get(&alice, &format!("/api/deliveries/{}/attempts", throttled["id"].as_str().unwrap())).await;
    assert_eq!(t_attempts["attempts"][0]["detail"], "HTTP 429: slow down", "{t_attempts}");
    let attempts = api.get(&alice, &format!("/api/deliveries/{flaky_id}/attempts")).await;
    let outcomes: Vec<&str> =
        attempts["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, vec!["retry", "delivered"], "{attempts}");
    assert!(attempts["attempts"][0]["detail"].as_str().unwrap().starts_with("HTTP 503"), "{attempts}");

    // Monitoring sees the same counts.
    let metrics = api.http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("broadcast_deliveries{state=\"delivered\"} 6\n"), "{metrics}");
    assert!(metrics.contains("broadcast_bulletins{state=\"published\"} 1\n"), "{metrics}");
    assert!(metrics.contains("broadcast_feed_consecutive_failures{feed=\"cisa-medical\"} 0\n"), "{metrics}");

    // The stored states, read by another process through the CLI.
    let stored: Value = serde_json::from_str(&cli(&config, &["deliveries", &reference, "--json"])).unwrap();
    assert_eq!(stored["counts"], status["counts"]);

    // Webhooks: signed, one body per endpoint, the same webhook-id on the retry.
    let hooks_seen = hooks.clone();
    let hooks = hooks.lock().unwrap().clone();
    assert!(hooks.iter().all(|h| h.signature_valid), "{hooks:?}");
    assert_eq!(hooks.iter().filter(|h| h.path == "/soc").count(), 1);
    let flaky_hooks: Vec<&Hook> = hooks.iter().filter(|h| h.path == "/flaky").collect();
    assert_eq!(flaky_hooks.len(), 2);
    assert_eq!(flaky_hooks[0].id, flaky_id);
    assert_eq!(flaky_hooks[1].id, flaky_id, "retries keep the webhook-id");
    assert_eq!(flaky_hooks[0].body, flaky_hooks[1].body, "retries send the same body");
    let soc = hooks.iter().find(|h| h.path == "/soc").unwrap();
    let body: Value = serde_json::from_str(&soc.body).unwrap();
    assert_eq!(body["type"], "bulletin.published");
    assert_eq!(body["schema_version"], 1);
    assert_eq!(body["data"]["reference"], reference);
    assert_eq!(body["data"]["title"], adv_title);
    assert_eq!(body["data"]["tlp"], "AMBER");
    assert_eq!(body["data"]["threat_level"], "High");
    assert!(body["data"]["cves"].as_array().unwrap().iter().any(|c| c == adv_cve.as_str()));
    assert_eq!(body["data"]["url"], format!("{base}/bulletins/{reference}"));
    // Slack gets a Slack message, and for an AMBER bulletin only a notice and the link.
    let slack: Value =
        serde_json::from_str(&hooks.iter().find(|h| h.path == "/slack").unwrap().body).unwrap();
    assert!(slack["text"].as_str().unwrap().starts_with(&format!("[High] {reference}: ")), "{slack}");
    assert!(slack.to_string().contains("marked TLP:AMBER"), "{slack}");
    assert!(!slack.to_string().contains(&adv_cve), "no AMBER content in Slack: {slack}");

    // Replay the flaky delivery through the API: sent again with the same webhook-id.
    let (s, v) = api.post(&alice, &format!("/api/deliveries/{flaky_id}/replay"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    wait_for("the replay", 30, || async {
        let v = api.get(&alice, &format!("/api/deliveries/{flaky_id}/attempts")).await;
        (v["delivery"]["state"] == "delivered" && v["delivery"]["attempts"] == 3).then_some(())
    })
    .await;
    let replayed: Vec<String> =
        hooks_seen.lock().unwrap().iter().filter(|h| h.path == "/flaky").map(|h| h.id.clone()).collect();
    assert_eq!(replayed, vec![flaky_id.to_owned(); 3]);

    // Emails, as the SMTP server received them.
    let files: Vec<PathBuf> =
        std::fs::read_dir(maildir.join("new")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 2, "two trust contacts; the care home was not cleared");
    let mut unsubscribe_link = None;
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let to = msg.to().unwrap().first().unwrap().address().unwrap().to_owned();
        let row = rows
            .iter()
            .find(|d| d["address"] == to.as_str())
            .unwrap_or_else(|| panic!("no delivery for {to}"));
        assert_eq!(row["state"], "delivered");
        assert_eq!(msg.from().unwrap().first().unwrap().address(), Some("bulletins@broadcast.test"));
        let subject = msg.subject().unwrap();
        assert_eq!(subject, format!("[High] {reference}: {adv_title} (TLP:AMBER)"));
        assert_eq!(
            msg.message_id(),
            Some(format!("{}@broadcast.test", row["id"].as_str().unwrap()).as_str())
        );
        let header =
            |name: &str| msg.header_raw(name).unwrap_or_else(|| panic!("{name} missing")).trim().to_owned();
        assert_eq!(header("List-Id"), "<bulletins.broadcast.test>");
        assert_eq!(header("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        let unsub = header("List-Unsubscribe");
        assert!(unsub.starts_with(&format!("<{base}/unsubscribe?token=con_")), "{unsub}");
        let text = msg.body_text(0).unwrap();
        assert!(text.contains(&adv_title) && text.contains(&adv_cve), "{text}");
        assert!(text.contains("TLP:AMBER"), "{text}");
        let html = msg.body_html(0).unwrap();
        assert!(html.contains("<h1") && html.contains("TLP:AMBER"), "{html}");
        assert!(html.contains(&adv_cve), "{html}");
        if to == "cio@northshire.nhs.test" {
            unsubscribe_link = Some(unsub.trim_matches(['<', '>']).to_owned());
        }
    }

    // RFC 8058 one-click unsubscribe with the link from the email.
    let link = unsubscribe_link.unwrap();
    let resp = reqwest::Client::new()
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let org = api.get(ADMIN_TOKEN, &format!("/api/organisations/{trust_id}")).await;
    let cio =
        org["contacts"].as_array().unwrap().iter().find(|c| c["email"] == "cio@northshire.nhs.test").unwrap();
    assert_eq!(cio["unsubscribed"], true);
    let forged = link.replace("token=con_", "token=con_x");
    let resp = reqwest::Client::new().post(&forged).body("List-Unsubscribe=One-Click").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    whole_flow(&format!("sqlite://{}", dir.path().join("broadcast.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_on_postgres() {
    let (admin, url, name) = fresh_postgres("e2e").await;
    whole_flow(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
}

const ALICE: &str = "alice-token-0000000000";
const BOB: &str = "bob-token-00000000000";

/// A `broadcast run` on a throwaway SQLite store, for the fault tests: analysts alice (token
/// `ALICE`) and bob (`BOB`, approver), and one organisation "Trust" cleared for TLP:CLEAR.
struct Rig {
    dir: tempfile::TempDir,
    config: PathBuf,
    base: String,
    api: Api,
    server: Option<Proc>,
}

impl Rig {
    /// `organisation`: TOML lines for the organisation's `contacts` / `endpoints`.
    /// `config`: further config sections; `{dir}` stands for the rig's temporary folder.
    async fn start(organisation: &str, config: &str) -> Rig {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.toml");
        std::fs::write(
            &seed,
            format!(
                "[[analysts]]\nname = \"alice\"\nrole = \"analyst\"\ntoken = \"{ALICE}\"\n\
                 [[analysts]]\nname = \"bob\"\nrole = \"approver\"\ntoken = \"{BOB}\"\n\
                 [[organisations]]\nname = \"Trust\"\ntlp_clearance = \"CLEAR\"\n{organisation}\n"
            ),
        )
        .unwrap();
        let api_port = free_port();
        let base = format!("http://127.0.0.1:{api_port}");
        let config_path = dir.path().join("broadcast.toml");
        std::fs::write(
            &config_path,
            format!(
                r#"
seed_file = "{seed}"
{no_feeds}
[store]
url = "sqlite://{db}"
[api]
listen = "127.0.0.1:{api_port}"
public_url = "{base}"
[security]
link_secret = "fault-test-link-secret-0123456789abcdef"
[bulletins]
templates_dir = "{templates}"
[triage]
watchlist_file = "{watchlist}"
{config}
"#,
                seed = seed.display(),
                db = dir.path().join("broadcast.db").display(),
                templates = repo().join("bulletin-templates").display(),
                watchlist = repo().join("config/watchlist.toml").display(),
                config = config.replace("{dir}", &dir.path().display().to_string()),
                no_feeds = if config.contains("[[feeds]]") { "" } else { "feeds = []" },
            ),
        )
        .unwrap();
        let api = Api { base: base.clone(), http: reqwest::Client::new() };
        let mut rig = Rig { dir, config: config_path, base, api, server: None };
        rig.run().await;
        rig
    }

    /// Starts `broadcast run` and waits for its API.
    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(broadcast_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.server = Some(Proc(child));
        let base = self.base.clone();
        wait_for("the API", 30, || async {
            self.api.http.get(format!("{base}/healthz")).send().await.ok().filter(|r| r.status().is_success())
        })
        .await;
    }

    /// SIGKILL: no shutdown, leases left behind.
    fn kill_nine(&mut self) {
        let mut server = self.server.take().expect("running");
        server.0.kill().unwrap();
        server.0.wait().unwrap();
    }

    /// Drafts a High bulletin as alice, has bob approve it, publishes it; its reference.
    async fn publish(&self, title: &str) -> String {
        let (s, b) =
            self.api.post(ALICE, "/api/bulletins", json!({ "title": title, "threat_level": "High" })).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
        let reference = b["reference"].as_str().unwrap().to_owned();
        for (who, action) in [(ALICE, "submit"), (BOB, "approve"), (ALICE, "publish")] {
            let (s, v) = self.api.post(who, &format!("/api/bulletins/{reference}/{action}"), json!({})).await;
            assert_eq!(s, StatusCode::OK, "{action}: {v}");
        }
        reference
    }

    async fn deliveries(&self, reference: &str) -> Value {
        self.api.get(ALICE, &format!("/api/bulletins/{reference}/deliveries")).await
    }

    /// Waits until no delivery of the bulletin is pending; its deliveries.
    async fn finished(&self, reference: &str, secs: u64) -> Value {
        wait_for("every delivery to finish", secs, || async {
            let v = self.deliveries(reference).await;
            (v["counts"]["pending"] == 0).then_some(v)
        })
        .await
    }
}

/// kill -9 during a fan-out to 10,000 endpoints, then restart: every endpoint gets the
/// bulletin, duplicates are no more than the deliveries in flight at the kill, and a
/// duplicate carries the same webhook-id as the original.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_during_fan_out_loses_nothing() {
    const N: usize = 10_000;
    const CONCURRENCY: usize = 64;
    // The receiver counts requests per webhook-id, verifying every signature.
    let seen: Arc<Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let bad_signatures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (seen2, bad2) = (seen.clone(), bad_signatures.clone());
    let app = axum::Router::new().route(
        "/hook/{n}",
        post(move |h: HeaderMap, body: String| {
            let (seen, bad) = (seen2.clone(), bad2.clone());
            async move {
                let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let ts: i64 = get("webhook-timestamp").parse().unwrap_or(0);
                let now = chrono::Utc::now().timestamp();
                let sig = verify(
                    SOC_SECRET,
                    &get("webhook-id"),
                    ts,
                    body.as_bytes(),
                    &get("webhook-signature"),
                    now,
                    300,
                );
                if sig.is_err() {
                    bad.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                *seen.lock().unwrap().entry(get("webhook-id")).or_insert(0) += 1;
                StatusCode::NO_CONTENT
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let endpoints: String = (0..N)
        .map(|n| format!("  {{ url = \"{receiver}/hook/{n}\", secret = \"{SOC_SECRET}\" }},\n"))
        .collect();
    let mut rig = Rig::start(
        &format!("endpoints = [\n{endpoints}]"),
        &format!(
            "[email]\ntransport = \"file\"\nfile_dir = \"{{dir}}/mail\"\n\
             [webhook]\nallow_networks = [\"127.0.0.0/8\"]\n\
             [delivery]\nconcurrency = {CONCURRENCY}\nper_host_concurrency = {CONCURRENCY}\nlease_secs = 5\npoll_interval_ms = 200\n"
        ),
    )
    .await;
    let reference = rig.publish("Fan-out under fire").await;

    // Kill -9 once a good part of the fan-out is through.
    wait_for("the fan-out to get going", 60, || async {
        (seen.lock().unwrap().len() >= N / 5).then_some(())
    })
    .await;
    rig.kill_nine();
    let at_kill = seen.lock().unwrap().len();
    assert!(at_kill < N, "the kill must land mid-fan-out ({at_kill} of {N} done)");

    rig.run().await;
    let status = rig.finished(&reference, 120).await;
    assert_eq!(status["counts"]["delivered"], N, "{}", status["counts"]);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), N, "every endpoint got the bulletin");
    let duplicates = seen.values().sum::<usize>() - N;
    assert!(
        duplicates <= CONCURRENCY,
        "{duplicates} duplicates; at most the {CONCURRENCY} in flight at the kill"
    );
    assert_eq!(bad_signatures.load(std::sync::atomic::Ordering::SeqCst), 0);
    eprintln!(
        "kill -9 after {at_kill} of {N}: all {N} delivered after restart, {duplicates} duplicates (same webhook-id)"
    );
}

/// `[email]` for a plain-SMTP relay on `port`.
fn smtp_config(port: u16) -> String {
    format!(
        "[email]\nfrom = \"NHS Broadcast <bulletins@broadcast.test>\"\nlist_id = \"bulletins.broadcast.test\"\n\
         transport = \"smtp\"\n[email.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout_secs = 5\n"
    )
}

/// The SMTP server (aiosmtpd) is stopped mid-fan-out and started again on the same port:
/// every email is delivered afterwards, each exactly once per recipient address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_server_restart_mid_run_loses_nothing() {
    const N: usize = 300;
    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let (smtp, smtp_port) = start_smtp(&maildir);
    let contacts: String =
        (0..N).map(|n| format!("  {{ email = \"reader{n:03}@trust.nhs.test\" }},\n")).collect();
    let rig = Rig::start(
        &format!("contacts = [\n{contacts}]"),
        &format!(
            "{}[delivery]\npoll_interval_ms = 200\nretry_delays_secs = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    let reference = rig.publish("Mail under fire").await;
    let received = || std::fs::read_dir(maildir.join("new")).map(|d| d.count()).unwrap_or(0);
    wait_for("the first emails", 60, || async { (received() >= 20).then_some(()) }).await;
    drop(smtp); // stops aiosmtpd
    // Deliveries now fail with connection errors and are scheduled for retry.
    wait_for("retries while the SMTP server is down", 60, || async {
        let v = rig.deliveries(&reference).await;
        let deliveries = v["deliveries"].as_array().unwrap();
        deliveries.iter().any(|d| d["state"] == "pending" && d["attempts"].as_i64() > Some(0)).then_some(())
    })
    .await;
    let before_restart = received();
    assert!(before_restart < N, "the SMTP server stopped mid-run ({before_restart} of {N} received)");
    let _smtp = start_smtp_with(&maildir, smtp_port, "aiosmtpd.handlers.Mailbox");
    let status = rig.finished(&reference, 120).await;
    assert_eq!(status["counts"]["delivered"], N, "{}", status["counts"]);
    let mut recipients = std::collections::HashSet::new();
    for f in std::fs::read_dir(maildir.join("new")).unwrap() {
        let raw = std::fs::read(f.unwrap().path()).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        recipients.insert(msg.to().unwrap().first().unwrap().address().unwrap().to_owned());
    }
    assert_eq!(recipients.len(), N, "every reader got the bulletin");
    eprintln!(
        "SMTP stopped after {before_restart} of {N}; all {N} delivered after its restart ({} files)",
        received()
    );
}

/// A real SMTP server refuses one address with 550: after three hard bounces the address is
/// suppressed, and the next bulletin is not sent to it (recorded as suppressed, with why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_hard_bounces_suppress_the_address() {
    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let smtp_port = free_port();
    let _smtp = start_smtp_with(&maildir, smtp_port, "smtp_handlers.RejectNobody");
    let rig = Rig::start(
        "contacts = [{ email = \"nobody@trust.nhs.test\" }, { email = \"reader@trust.nhs.test\" }]",
        &format!(
            "{}[delivery]\npoll_interval_ms = 200\nsuppress_after_hard_bounces = 3\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    let mut nobody = Vec::new();
    for n in 1..=4 {
        let reference = rig.publish(&format!("Bulletin {n}")).await;
        let status = rig.finished(&reference, 60).await;
        let rows = status["deliveries"].as_array().unwrap().clone();
        let reader = rows.iter().find(|d| d["address"] == "reader@trust.nhs.test").unwrap();
        assert_eq!(reader["state"], "delivered", "bulletin {n}: the good address is unaffected");
        nobody.push(rows.iter().find(|d| d["address"] == "nobody@trust.nhs.test").unwrap().clone());
    }
    for (n, row) in nobody.iter().take(3).enumerate() {
        assert_eq!(row["state"], "failed", "bulletin {}: {row}", n + 1);
        assert!(row["reason"].as_str().unwrap().starts_with("550 "), "{row}");
        assert_eq!(row["attempts"], 1, "a hard bounce is not retried");
    }
    assert_eq!(nobody[3]["state"], "suppressed", "{}", nobody[3]);
    let reason = nobody[3]["reason"].as_str().unwrap();
    assert!(reason.starts_with("address suppressed after 3 hard bounces (last: 550 "), "{reason}");
    let org = rig.api.get(ALICE, "/api/organisations/Trust").await;
    let c =
        org["contacts"].as_array().unwrap().iter().find(|c| c["email"] == "nobody@trust.nhs.test").unwrap();
    assert!(c["suppressed_reason"].as_str().is_some(), "{c}");
}

/// One bulletin to twenty healthy endpoints and four bad ones — answering 500, hanging past
/// the timeout, slow but within it, and 410 Gone — on the same host. The healthy ones are all
/// delivered before the hanging one's first attempt has even timed out; the slow one is
/// delivered; 410 disables its endpoint at once; the 500 endpoint is retried, its
/// organisation is emailed a warning, and once it has failed for the configured period it is
/// disabled and they are emailed a notice (read from a real SMTP server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_never_hold_up_healthy_ones() {
    const HEALTHY: usize = 20;
    let app = axum::Router::new()
        .route("/ok/{n}", post(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                StatusCode::NO_CONTENT
            }),
        )
        .route(
            "/hang",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                StatusCode::NO_CONTENT
            }),
        )
        .route("/error", post(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "database is down") }))
        .route("/gone", post(|| async { (StatusCode::GONE, "unsubscribed") }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });

    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let mut endpoints: Vec<String> = (0..HEALTHY).map(|n| format!("{receiver}/ok/{n}")).collect();
    for bad in ["slow", "hang", "error", "gone"] {
        endpoints.push(format!("{receiver}/{bad}"));
    }
    let endpoints: String =
        endpoints.iter().map(|u| format!("  {{ url = \"{u}\", secret = \"{SOC_SECRET}\" }},\n")).collect();
    let rig = Rig::start(
        &format!("contacts = [{{ email = \"soc-lead@trust.nhs.test\" }}]\nendpoints = [\n{endpoints}]"),
        &format!(
            "{}[webhook]\nallow_networks = [\"127.0.0.0/8\"]\ntimeout_secs = 3\n\
             [delivery]\npoll_interval_ms = 200\nretry_delays_secs = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n\
             warn_endpoint_after_failures = 2\ndisable_endpoint_after_secs = 4\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    let reference = rig.publish("Bad neighbours").await;
    let status = rig.finished(&reference, 120).await;
    let rows = status["deliveries"].as_array().unwrap().clone();
    let row = |suffix: &str| {
        rows.iter().find(|d| d["address"].as_str().unwrap().ends_with(suffix)).unwrap().clone()
    };
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap()).unwrap();

    // The hanging endpoint's first attempt ended (timed out) after every healthy delivery.
    let hang = row("/hang");
    let hang_attempts =
        rig.api.get(ALICE, &format!("/api/deliveries/{}/attempts", hang["id"].as_str().unwrap())).await;
    let first = &hang_attempts["attempts"][0];
    assert!(first["detail"].as_str().unwrap().contains("timed out"), "{first}");
    let first_ended =
        time(&first["started_at"]) + chrono::Duration::milliseconds(first["duration_ms"].as_i64().unwrap());
    for n in 0..HEALTHY {
        let d = row(&format!("/ok/{n}"));
        assert_eq!(d["state"], "delivered", "{d}");
        assert_eq!(d["attempts"], 1, "{d}");
        assert!(time(&d["delivered_at"]) < first_ended, "healthy {n} waited for the hanging endpoint: {d}");
    }
    let slow = row("/slow");
    assert_eq!(slow["state"], "delivered", "slow but within the timeout: {slow}");

    let gone = row("/gone");
    assert_eq!(gone["state"], "failed", "{gone}");
    assert_eq!(gone["attempts"], 1, "410 is not retried: {gone}");

    // 500: retried until the endpoint was disabled for failing continuously.
    let error = row("/error");
    assert_eq!(error["state"], "suppressed", "{error}");
    assert!(error["attempts"].as_i64().unwrap() >= 2, "{error}");
    let reason = error["reason"].as_str().unwrap();
    assert!(reason.starts_with("endpoint disabled: failing continuously since"), "{reason}");
    assert!(reason.contains("HTTP 500: database is down"), "{reason}");
    let org = rig.api.get(ALICE, "/api/organisations/Trust").await;
    let enabled = |suffix: &str| {
        org["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["url"].as_str().unwrap().ends_with(suffix))
            .unwrap()["enabled"]
            .clone()
    };
    assert_eq!(enabled("/gone"), false, "410 disables the endpoint");
    assert_eq!(enabled("/error"), false);
    assert_eq!(enabled("/ok/0"), true);
    assert_eq!(enabled("/slow"), true);

    // The organisation's contact got the bulletin, a warning and a notice about /error.
    let mails = wait_for("the warning and the notice about /error", 30, || async {
        let mut subjects_and_bodies = Vec::new();
        for f in std::fs::read_dir(maildir.join("new")).ok()? {
            let raw = std::fs::read(f.ok()?.path()).ok()?;
            let msg = mail_parser::MessageParser::default().parse(&raw)?;
            subjects_and_bodies.push((msg.subject()?.to_owned(), msg.body_text(0)?.into_owned()));
        }
        let about_error = |s: &str| {
            subjects_and_bodies
                .iter()
                .any(|(subject, body)| subject.contains(s) && body.contains(&format!("{receiver}/error")))
        };
        (about_error("is failing") && about_error("has been disabled")).then_some(subjects_and_bodies)
    })
    .await;
    let warnings = mails.iter().filter(|(s, b)| s.contains("is failing") && b.contains("/error")).count();
    assert_eq!(warnings, 1, "warned once per failure streak");
    let audit = cli(&rig.config, &["audit", "list"]);
    assert!(audit.contains("endpoint.warn") && audit.contains("endpoint.disable"), "{audit}");
}

/// Through a real SMTP server: no connection carries more than
/// `email.smtp.max_messages_per_connection` messages, and no more than `max_connections` are
/// used at once — 25 emails with a limit of 5 need at least five connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_connections_carry_at_most_the_configured_messages() {
    const N: usize = 25;
    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let contacts: String =
        (0..N).map(|n| format!("  {{ email = \"reader{n:02}@trust.nhs.test\" }},\n")).collect();
    let rig = Rig::start(
        &format!("contacts = [\n{contacts}]"),
        &format!(
            "{}max_connections = 2\nmax_messages_per_connection = 5\n[delivery]\npoll_interval_ms = 200\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    let reference = rig.publish("Counted connections").await;
    let status = rig.finished(&reference, 60).await;
    assert_eq!(status["counts"]["delivered"], N, "{}", status["counts"]);
    // aiosmtpd stamps each message with the client's address and port: one port, one connection.
    let mut per_connection: std::collections::HashMap<String, usize> = Default::default();
    for f in std::fs::read_dir(maildir.join("new")).unwrap() {
        let raw = std::fs::read(f.unwrap().path()).unwrap();
        let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
        let peer = msg.header_raw("X-Peer").expect("aiosmtpd adds X-Peer").trim().to_owned();
        *per_connection.entry(peer).or_default() += 1;
    }
    assert_eq!(per_connection.values().sum::<usize>(), N);
    assert!(per_connection.values().all(|&n| n <= 5), "{per_connection:?}");
    assert!(per_connection.len() >= N / 5, "{per_connection:?}");
}

/// DKIM: every message is signed, the signature covers List-Id, List-Unsubscribe and
/// List-Unsubscribe-Post (RFC 8058), and it verifies at the receiver (dkimpy on the message
/// as aiosmtpd stored it, with the published public key). Changing the unsubscribe link
/// breaks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signature_verifies_at_the_receiver() {
    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let key = repo().join("tests/fixtures/dkim/test-rsa.pem");
    let rig = Rig::start(
        "contacts = [{ email = \"reader@trust.nhs.test\" }]",
        &format!(
            "{}[email.dkim]\nselector = \"bc2026\"\nalgorithm = \"rsa\"\nprivate_key_file = \"{}\"\n\
             [delivery]\npoll_interval_ms = 200\n",
            smtp_config(smtp_port),
            key.display()
        ),
    )
    .await;
    let reference = rig.publish("Signed").await;
    let status = rig.finished(&reference, 60).await;
    assert_eq!(status["counts"]["delivered"], 1, "{}", status["counts"]);
    let file = std::fs::read_dir(maildir.join("new")).unwrap().next().unwrap().unwrap().path();
    let raw = std::fs::read_to_string(&file).unwrap();
    assert!(raw.contains("d=broadcast.test; s=bc2026"), "{raw}");
    let verify = |path: &Path| {
        Command::new("python3")
            .arg(repo().join("tests/fixtures/dkim_verify.py"))
            .arg(path)
            .arg(repo().join("tests/fixtures/dkim/test-rsa.pub.b64"))
            .output()
            .expect("python3 with dkimpy is needed (pip install dkimpy)")
    };
    let out = verify(&file);
    let signed = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(out.status.success(), "DKIM does not verify: {signed} {}", String::from_utf8_lossy(&out.stderr));
    for h in ["from", "to", "subject", "message-id", "list-id", "list-unsubscribe", "list-unsubscribe-post"] {
        assert!(signed.trim().split(':').any(|x| x == h), "{h} not signed: {signed}");
    }
    // A forwarder that rewrites the unsubscribe link breaks the signature.
    let tampered = mail.path().join("tampered.eml");
    std::fs::write(&tampered, raw.replacen("/unsubscribe?token=", "/unsubscribe?token=x", 1)).unwrap();
    assert!(!verify(&tampered).status.success(), "a changed List-Unsubscribe must fail DKIM");
}

/// Daily digest: an organisation on a digest gets its webhooks at once but its emails held
/// for the digest; the process is killed while they wait, the clock reaches the digest hour,
/// and after the restart exactly one email carries all three bulletins (never skipped, never
/// twice), each row delivered with one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_digest_survives_a_restart_and_is_sent_once() {
    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let (_smtp, smtp_port) = start_smtp(&maildir);
    let seen: Arc<Mutex<Vec<Hook>>> = Arc::default();
    let receiver = start_receiver(seen.clone()).await;
    let mut rig = Rig::start(
        &format!(
            "digest_hour = 7\ncontacts = [{{ email = \"duty-manager@trust.nhs.test\", name = \"Duty Manager\" }}]\n\
             endpoints = [{{ url = \"{receiver}/soc\", secret = \"{SOC_SECRET}\" }}]"
        ),
        &format!(
            "{}[webhook]\nallow_networks = [\"127.0.0.0/8\"]\n[delivery]\npoll_interval_ms = 200\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    let mut references = Vec::new();
    for title in ["Pump gateway flaw", "PACS viewer update", "VPN appliance exploited"] {
        references.push(rig.publish(title).await);
    }
    let now = chrono::Utc::now();
    for reference in &references {
        let status = wait_for("the webhook to be delivered", 60, || async {
            let v = rig.deliveries(reference).await;
            let rows = v["deliveries"].as_array().unwrap().clone();
            rows.iter().any(|d| d["channel"] == "webhook" && d["state"] == "delivered").then_some(rows)
        })
        .await;
        let email = status.iter().find(|d| d["channel"] == "email").unwrap();
        assert_eq!(email["state"], "pending", "held for the digest: {email}");
        assert_eq!(email["attempts"], 0, "{email}");
        let at = chrono::DateTime::parse_from_rfc3339(email["digest_at"].as_str().unwrap()).unwrap().to_utc();
        assert!(at > now && at - now <= chrono::Duration::hours(24), "{email}");
        assert_eq!(at.format("%H:%M").to_string(), "07:00", "{email}");
    }
    assert!(std::fs::read_dir(maildir.join("new")).map(|d| d.count()).unwrap_or(0) == 0, "no email yet");

    // Killed while the digest waits; meanwhile the clock reaches the digest hour (the rows'
    // due time is moved to now, as if the hours had passed).
    rig.kill_nine();
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", rig.dir.path().join("broadcast.db").display()))
            .await
            .unwrap();
    let moved = sqlx::query("UPDATE deliveries SET next_attempt_at = $1 WHERE digest_at IS NOT NULL")
        .bind(chrono::Utc::now())
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 3);
    db.close().await;
    rig.run().await;

    for reference in &references {
        let status = rig.finished(reference, 60).await;
        let email = status["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["channel"] == "email")
            .unwrap()
            .clone();
        assert_eq!(email["state"], "delivered", "{email}");
        assert_eq!(email["attempts"], 1, "{email}");
    }
    let files: Vec<_> = std::fs::read_dir(maildir.join("new")).unwrap().map(|f| f.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "one digest, not one email per bulletin");
    let raw = std::fs::read(&files[0]).unwrap();
    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert!(msg.subject().unwrap().starts_with("Broadcast daily digest"), "{:?}", msg.subject());
    assert!(msg.subject().unwrap().contains("3 bulletins"), "{:?}", msg.subject());
    let text = msg.body_text(0).unwrap();
    for title in ["Pump gateway flaw", "PACS viewer update", "VPN appliance exploited"] {
        assert!(text.contains(title), "{title} missing from the digest:\n{text}");
    }
    assert!(msg.header_raw("List-Unsubscribe").is_some());
    assert_eq!(seen.lock().unwrap().len(), 3, "webhooks were not held");
}

/// A fresh PostgreSQL database for one test; its URL.
async fn fresh_postgres(tag: &str) -> (sqlx::PgPool, String, String) {
    let admin_url = std::env::var("BROADCAST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!(
        "bc_{tag}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
    );
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is needed for this test: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    let base = admin_url.rsplit_once('/').map(|(b, _)| b).unwrap().to_owned();
    (admin, format!("{base}/{name}"), name)
}

/// Two nodes on one PostgreSQL, both with the collector role and the same feed every two
/// seconds: the feed never runs on both at once (the source sees at most one request at a
/// time, although each takes a second to answer), and it keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_run_a_feed_at_the_same_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (now, max, total) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let app = {
        let (now, max, total) = (now.clone(), max.clone(), total.clone());
        axum::Router::new().route(
            "/slow.xml",
            get(move || {
                let (now, max, total) = (now.clone(), max.clone(), total.clone());
                async move {
                    total.fetch_add(1, Ordering::SeqCst);
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    ([(header::CONTENT_TYPE, "application/rss+xml")], FEED)
                }
            }),
        )
    };
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let feed_url = format!("http://{}/slow.xml", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let (admin, db_url, name) = fresh_postgres("lease").await;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for n in 0..2 {
        let config = dir.path().join(format!("node{n}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
[store]
url = "{db_url}"
[roles]
api = false
worker = false
[security]
link_secret = "lease-test-link-secret-0123456789abcdef"
[bulletins]
templates_dir = "{templates}"
[triage]
watchlist_file = "{watchlist}"
[collect]
jitter_secs = 0
lease_secs = 5
[[feeds]]
type = "rss"
id = "slow"
url = "{feed_url}"
schedule = "*/2 * * * * *"
"#,
                templates = repo().join("bulletin-templates").display(),
                watchlist = repo().join("config/watchlist.toml").display(),
            ),
        )
        .unwrap();
        if n == 0 {
            cli(&config, &["migrate"]);
        }
        let child = Command::new(broadcast_bin())
            .arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        nodes.push(Proc(child));
    }
    wait_for("four runs of the feed", 30, || async { (total.load(Ordering::SeqCst) >= 4).then_some(()) })
        .await;
    drop(nodes);
    assert_eq!(max.load(Ordering::SeqCst), 1, "the feed ran on two nodes at once");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&admin)
        .await
        .unwrap();
}

/// A webhook endpoint is disabled while the SMTP relay is down: the notice to its
/// organisation is owed, not lost, and arrives once the relay is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disable_notice_survives_an_smtp_outage() {
    let mail = tempfile::tempdir().unwrap();
    let maildir = mail.path().join("maildir");
    let smtp_port = free_port(); // nothing listens yet
    let dead = free_port(); // nor here: the endpoint fails every attempt
    let rig = Rig::start(
        &format!(
            "contacts = [{{ email = \"soc-lead@trust.nhs.test\" }}]\n\
             endpoints = [{{ url = \"http://127.0.0.1:{dead}/hook\", secret = \"{SOC_SECRET}\" }}]"
        ),
        &format!(
            "{}[webhook]\nallow_networks = [\"127.0.0.0/8\"]\n[delivery]\npoll_interval_ms = 200\n\
             retry_delays_secs = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n\
             warn_endpoint_after_failures = 3\ndisable_endpoint_after_secs = 2\nnotice_retry_secs = 1\n",
            smtp_config(smtp_port)
        ),
    )
    .await;
    rig.publish("Endpoint going dark").await;
    wait_for("the failing endpoint to be disabled", 60, || async {
        let orgs = rig.api.get(ALICE, "/api/organisations").await;
        let key = orgs["organisations"][0]["id"].as_str().unwrap().to_owned();
        let org = rig.api.get(ALICE, &format!("/api/organisations/{key}")).await;
        (org["endpoints"][0]["enabled"] == false).then_some(())
    })
    .await;
    assert!(!maildir.join("new").exists(), "no SMTP server yet: nothing can have arrived");
    let _smtp = start_smtp_with(&maildir, smtp_port, "aiosmtpd.handlers.Mailbox");
    let notice = wait_for("the disable notice once SMTP is back", 60, || async {
        for f in std::fs::read_dir(maildir.join("new")).ok()? {
            let raw = std::fs::read(f.ok()?.path()).ok()?;
            let msg = mail_parser::MessageParser::default().parse(&raw)?;
            if msg.subject().unwrap_or("").contains("has been disabled") {
                return Some(msg.body_text(0).unwrap_or_default().into_owned());
            }
        }
        None
    })
    .await;
    assert!(notice.contains(&format!("http://127.0.0.1:{dead}/hook")), "{notice}");
    assert!(notice.contains("failing continuously since"), "{notice}");
}
