//! A CSAF provider served over HTTP: a ROLIE feed, and provider-metadata.json pointing to a
//! directory distribution. Real CISA documents with their real `.sha512` files; a tampered
//! document, one without a hash file and one that is not CSAF are refused with reasons; the
//! second run fetches nothing it already has; a backfill goes in steps.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use broadcast_collect::feeds::csaf_provider::{CsafConfig, CsafProvider};
use broadcast_collect::{Runner, RunnerConfig, Validators};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/csaf-provider");
const DOCS: [&str; 3] = ["icsma-18-025-01.json", "icsma-19-113-01.json", "icsma-20-233-01.json"];

#[derive(Default)]
struct Site {
    files: HashMap<String, Vec<u8>>,
    hits: HashMap<String, usize>,
}

type Shared = Arc<Mutex<Site>>;

async fn serve(site: Shared) -> String {
    async fn file(State(site): State<Shared>, Path(path): Path<String>) -> axum::response::Response {
        let mut s = site.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        match s.files.get(&path) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
    let app = axum::Router::new().route("/{*path}", axum::routing::get(file)).with_state(site);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}/{name}")).unwrap()
}

fn entry(base: &str, path: &str, updated: &str, hash: Option<&str>) -> serde_json::Value {
    let mut links = vec![serde_json::json!({ "rel": "self", "href": format!("{base}/{path}") })];
    if let Some(h) = hash {
        links.push(serde_json::json!({ "rel": "hash", "href": format!("{base}/{path}.{h}") }));
    }
    serde_json::json!({ "id": path, "title": path, "updated": updated,
        "content": { "src": format!("{base}/{path}"), "type": "application/json" }, "link": links })
}

fn provider(url: &str, max: usize) -> CsafProvider {
    let cfg: CsafConfig =
        toml::from_str(&format!("id = \"csaf\"\nurl = \"{url}\"\nmax_documents_per_run = {max}")).unwrap();
    CsafProvider::new(&cfg).unwrap()
}

fn doc_hits(site: &Shared) -> usize {
    site.lock()
        .unwrap()
        .hits
        .iter()
        .filter(|(p, _)| p.ends_with(".json") && !p.contains("feed"))
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn rolie_feed_with_hash_checks_and_incremental_runs() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let site: Shared = Arc::default();
    let base = serve(site.clone()).await;
    let mut entries = Vec::new();
    {
        let mut s = site.lock().unwrap();
        for (i, d) in DOCS.iter().enumerate() {
            s.files.insert(format!("white/{d}"), read(d));
            s.files.insert(format!("white/{d}.sha512"), read(&format!("{d}.sha512")));
            entries.push(entry(
                &base,
                &format!("white/{d}"),
                &format!("2024-10-0{}T06:00:00Z", i + 1),
                Some("sha512"),
            ));
        }
        // Tampered after hashing: one byte changed.
        let mut bad = read(DOCS[0]);
        bad[100] ^= 1;
        s.files.insert("white/tampered.json".into(), bad);
        s.files.insert("white/tampered.json.sha512".into(), read(&format!("{}.sha512", DOCS[0])));
        entries.push(entry(&base, "white/tampered.json", "2024-10-04T06:00:00Z", Some("sha512")));
        // No hash file at all.
        s.files.insert("white/unhashed.json".into(), read(DOCS[1]));
        entries.push(entry(&base, "white/unhashed.json", "2024-10-05T06:00:00Z", None));
        // Hashed correctly, but not CSAF 2.0.
        let not_csaf = br#"{"document":{"csaf_version":"1.0","title":"old"}}"#.to_vec();
        use sha2::Digest;
        s.files.insert(
            "white/old.json.sha256".into(),
            hex::encode(sha2::Sha256::digest(&not_csaf)).into_bytes(),
        );
        s.files.insert("white/old.json".into(), not_csaf);
        entries.push(entry(&base, "white/old.json", "2024-10-06T06:00:00Z", Some("sha256")));
        let feed = serde_json::json!({ "feed": { "id": "t", "entry": entries } });
        s.files.insert("white/feed.json".into(), serde_json::to_vec(&feed).unwrap());
    }
    let runner = Runner::new(RunnerConfig::default()).unwrap();
    let p = provider(&format!("{base}/white/feed.json"), 100);
    let progress = Mutex::new(Vec::new());
    let report = |d: usize, t: usize| progress.lock().unwrap().push((d, t));
    let run = p.run(&runner, &Validators::default(), None, &report).await.unwrap().unwrap();
    let ids: Vec<&str> = run.parsed.items.iter().map(|a| a.external_id.as_str()).collect();
    assert_eq!(ids, ["ICSMA-18-025-01", "ICSMA-19-113-01", "ICSMA-20-233-01"]);
    assert_eq!(run.parsed.items[0].source, "csaf");
    assert_eq!(run.parsed.refused.len(), 3, "{:#?}", run.parsed.refused);
    assert!(run.parsed.refused[0].contains("tampered.json: SHA-512 mismatch"), "{}", run.parsed.refused[0]);
    assert!(
        run.parsed.refused[1].contains("unhashed.json: no .sha512 or .sha256 file"),
        "{}",
        run.parsed.refused[1]
    );
    assert!(
        run.parsed.refused[2].contains("old.json: not valid CSAF: CSAF version `1.0`"),
        "{}",
        run.parsed.refused[2]
    );
    assert_eq!(run.cursor.as_deref(), Some("2024-10-06T06:00:00.000000Z"));
    assert_eq!(progress.lock().unwrap().last(), Some(&(6, 6)));
    assert_eq!(doc_hits(&site), 6);

    // Nothing new: the listing is read, no document is fetched.
    let again =
        p.run(&runner, &Validators::default(), run.cursor.as_deref(), &report).await.unwrap().unwrap();
    assert_eq!((again.parsed.items.len(), again.fetched), (0, 0));
    assert_eq!(doc_hits(&site), 6);

    // CISA updates one advisory: only it is fetched.
    {
        let mut s = site.lock().unwrap();
        let feed: serde_json::Value = serde_json::from_slice(&s.files["white/feed.json"]).unwrap();
        let mut entries = feed["feed"]["entry"].as_array().unwrap().clone();
        entries[1]["updated"] = "2024-11-01T06:00:00Z".into();
        let feed = serde_json::json!({ "feed": { "id": "t", "entry": entries } });
        s.files.insert("white/feed.json".into(), serde_json::to_vec(&feed).unwrap());
    }
    let third =
        p.run(&runner, &Validators::default(), again.cursor.as_deref(), &report).await.unwrap().unwrap();
    let ids: Vec<&str> = third.parsed.items.iter().map(|a| a.external_id.as_str()).collect();
    assert_eq!(ids, ["ICSMA-19-113-01"]);
    assert_eq!(doc_hits(&site), 7);
    assert_eq!(third.cursor.as_deref(), Some("2024-11-01T06:00:00.000000Z"));
}

#[tokio::test]
async fn provider_metadata_to_a_directory_backfills_in_steps() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let site: Shared = Arc::default();
    let base = serve(site.clone()).await;
    {
        let mut s = site.lock().unwrap();
        let mut changes = String::new();
        for (i, d) in DOCS.iter().enumerate() {
            s.files.insert(format!("csaf/white/2024/{d}"), read(d));
            s.files.insert(format!("csaf/white/2024/{d}.sha512"), read(&format!("{d}.sha512")));
            changes.push_str(&format!("\"2024/{d}\",\"2024-0{}-01T00:00:00Z\"\n", 9 - i));
        }
        s.files.insert("csaf/white/changes.csv".into(), changes.into_bytes());
        let meta = serde_json::json!({
            "canonical_url": format!("{base}/.well-known/csaf/provider-metadata.json"),
            "distributions": [ { "directory_url": format!("{base}/csaf/white") },
                               { "rolie": { "feeds": [ { "tlp_label": "AMBER", "url": format!("{base}/csaf/amber/feed.json") } ] } } ],
            "metadata_version": "2.0", "role": "csaf_provider",
            "publisher": { "category": "vendor", "name": "Test", "namespace": "https://t.example" },
        });
        s.files.insert(".well-known/csaf/provider-metadata.json".into(), serde_json::to_vec(&meta).unwrap());
    }
    let runner = Runner::new(RunnerConfig::default()).unwrap();
    let p = provider(&format!("{base}/.well-known/csaf/provider-metadata.json"), 2);
    let first = p.run(&runner, &Validators::default(), None, &|_, _| {}).await.unwrap().unwrap();
    // Oldest first: changes.csv lists them newest first.
    let ids: Vec<&str> = first.parsed.items.iter().map(|a| a.external_id.as_str()).collect();
    assert_eq!(ids, ["ICSMA-20-233-01", "ICSMA-19-113-01"]);
    assert_eq!((first.remaining, first.parsed.refused.len()), (1, 0));
    assert!(!site.lock().unwrap().hits.contains_key("csaf/amber/feed.json"), "TLP:AMBER feed not followed");
    let second =
        p.run(&runner, &Validators::default(), first.cursor.as_deref(), &|_, _| {}).await.unwrap().unwrap();
    let ids: Vec<&str> = second.parsed.items.iter().map(|a| a.external_id.as_str()).collect();
    assert_eq!((ids, second.remaining), (vec!["ICSMA-18-025-01"], 0));
}

/// With the provider's OpenPGP key configured, each document needs a signature that verifies
/// with it: CISA's real signature (made with CISA's key, not the configured one), a missing
/// `.asc` and a file that is not a signature are all refused; signed documents are read.
#[tokio::test]
async fn openpgp_signatures_are_checked_when_a_key_is_configured() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let site: Shared = Arc::default();
    let base = serve(site.clone()).await;
    let mut changes = String::new();
    {
        let mut s = site.lock().unwrap();
        for (i, d) in DOCS.iter().enumerate() {
            s.files.insert(format!("w/{d}"), read(d));
            s.files.insert(format!("w/{d}.sha512"), read(&format!("{d}.sha512")));
            s.files.insert(format!("w/{d}.asc"), read(&format!("{d}.test.asc")));
            changes.push_str(&format!("{d},2024-01-0{}T00:00:00Z\n", i + 1));
        }
        // The same document under other names: signed by CISA's own key, unsigned, and with
        // something that is not a signature.
        let others: [(&str, Option<Vec<u8>>); 3] = [
            ("cisa-signed.json", Some(read("icsma-18-025-01.json.cisa.asc"))),
            ("unsigned.json", None),
            ("garbage.json", Some(b"-----BEGIN PGP SIGNATURE-----\nnope\n".to_vec())),
        ];
        for (name, asc) in others {
            s.files.insert(format!("w/{name}"), read(DOCS[0]));
            s.files.insert(format!("w/{name}.sha512"), read(&format!("{}.sha512", DOCS[0])));
            if let Some(a) = asc {
                s.files.insert(format!("w/{name}.asc"), a);
            }
            changes.push_str(&format!("{name},2024-02-01T00:00:00Z\n"));
        }
        s.files.insert("w/changes.csv".into(), changes.into_bytes());
    }
    let cfg: CsafConfig = toml::from_str(&format!(
        "id = \"csaf\"\nurl = \"{base}/w/changes.csv\"\nopenpgp_key_file = \"{FIX}/test-provider-key.asc\""
    ))
    .unwrap();
    let p = CsafProvider::new(&cfg).unwrap();
    let runner = Runner::new(RunnerConfig::default()).unwrap();
    let run = p.run(&runner, &Validators::default(), None, &|_, _| {}).await.unwrap().unwrap();
    assert_eq!(run.parsed.items.len(), 3, "{:#?}", run.parsed.refused);
    let refused = run.parsed.refused.join("\n");
    assert!(
        refused.contains("cisa-signed.json: the OpenPGP signature does not verify with the provider's key"),
        "{refused}"
    );
    assert!(refused.contains("unsigned.json: no OpenPGP signature (.asc)"), "{refused}");
    assert!(refused.contains("garbage.json: the .asc file is not an OpenPGP signature"), "{refused}");

    // A key file that is not a key is a configuration error naming the key.
    let bad: CsafConfig = toml::from_str(&format!(
        "id = \"c\"\nurl = \"https://p.example/feed.json\"\nopenpgp_key_file = \"{FIX}/icsma-18-025-01.json\""
    ))
    .unwrap();
    let err = CsafProvider::new(&bad).err().unwrap();
    assert_eq!(err.key, "openpgp_key_file");
    assert!(err.why.contains("not an armored OpenPGP public key"), "{}", err.why);
}
