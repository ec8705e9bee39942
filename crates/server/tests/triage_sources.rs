//! Triage on what real sources give, with the shipped watchlist: NVD configurations (CPEs)
//! and KEV fields, CSAF product trees, and storm control over stored candidates.
//! Fixtures: crates/collect/tests/fixtures (see PROVENANCE.md there).

use broadcast_core::{Advisory, AdvisoryContent, AdvisoryId, Affected, ThreatLevel};
use broadcast_server::config::Settings;
use chrono::{Duration, TimeZone, Utc};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn rules() -> broadcast_triage::Rules {
    let mut s = Settings::load(None).unwrap();
    s.triage.watchlist_file = repo().join("config/watchlist.toml").display().to_string();
    s.triage_rules().unwrap()
}

/// The application on a fresh SQLite store in `dir`, with the shipped watchlist.
async fn app_in(dir: &std::path::Path) -> broadcast_server::app::App {
    let mut s = Settings::load(None).unwrap();
    s.store.url = format!("sqlite://{}", dir.join("b.db").display());
    s.triage.watchlist_file = repo().join("config/watchlist.toml").display().to_string();
    s.bulletins.templates_dir = repo().join("bulletin-templates").display().to_string();
    broadcast_server::app::App::open(s).await.unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("crates/collect/tests/fixtures").join(name)).unwrap()
}

fn advisory(content: AdvisoryContent) -> Advisory {
    let t = content.published.unwrap_or_else(Utc::now);
    Advisory { id: AdvisoryId::from_suffix("t"), revision: 1, first_seen: t, last_changed: t, content }
}

#[test]
fn nvd_configurations_match_exactly_and_kev_raises_the_level() {
    let record: serde_json::Value = serde_json::from_slice(&fixture("nvd-CVE-2023-4966.json")).unwrap();
    let adv = advisory(broadcast_collect::feeds::nvd::parse_cve("nvd", &record).unwrap());
    let now = Utc.with_ymd_and_hms(2023, 10, 20, 0, 0, 0).unwrap();
    let v = broadcast_triage::assess(&adv, &rules(), now);
    assert!(v.relevant, "{:?}", v.reasons);
    assert!(
        v.reasons[0].starts_with(
            "exact product match: NetScaler (cpe:2.3:a:citrix:netscaler_application_delivery_controller"
        ),
        "{:?}",
        v.reasons
    );
    assert!(
        v.reasons.iter().any(|r| r == "in KEV since 2023-10-18, remediation due 2023-11-08"),
        "{:?}",
        v.reasons
    );
    assert_eq!(v.threat_level, ThreatLevel::High);
}

#[test]
fn csaf_product_trees_match_as_probable() {
    let adv = advisory(
        broadcast_collect::feeds::csaf::parse_document("csaf", &fixture("icsma-24-200-01.json")).unwrap(),
    );
    let v = broadcast_triage::assess(&adv, &rules(), adv.content.updated.unwrap());
    assert!(v.relevant);
    assert_eq!(v.reasons[0], "affected vendor: Philips (medical device)");
    assert!(v.reasons.iter().any(|r| r.starts_with("sector: Healthcare and Public Health (the only one")));
    let industrial = advisory(
        broadcast_collect::feeds::csaf::parse_document("csaf", &fixture("icsa-17-089-01.json")).unwrap(),
    );
    let v = broadcast_triage::assess(&industrial, &rules(), industrial.content.updated.unwrap());
    assert!(!v.relevant, "{:?}", v.reasons);
    assert!(v.reasons[0].starts_with("not relevant: health score 0.75"), "{:?}", v.reasons);
}

/// Storm control end to end through the store: 300 revised advisories for one product in an
/// hour come back as one group with the worst on top; another vendor's stays on its own.
#[tokio::test]
async fn a_burst_is_one_grouped_candidate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap();
    for i in 0..300 {
        let mut c = AdvisoryContent::new(
            "nvd",
            format!("CVE-2026-{:04}", 1000 + i),
            format!("Flaw {i} in Baxter Sigma Spectrum infusion pump"),
        );
        c.affected.push(Affected::named("Baxter", "Sigma Spectrum"));
        c.cvss = Some(broadcast_core::Cvss { vector: None, score: if i == 123 { 9.9 } else { 5.0 } });
        c.published = Some(t0);
        app.store.upsert_advisory(&c, t0 + Duration::seconds(i * 10)).await.unwrap();
    }
    let mut other = AdvisoryContent::new("csaf", "ICSMA-26-001", "Philips IntelliVue monitor flaw");
    other.affected.push(Affected::named("Philips", "IntelliVue"));
    other.published = Some(t0);
    app.store.upsert_advisory(&other, t0).await.unwrap();
    for adv in app.store.advisories_to_assess(1000).await.unwrap() {
        let v = broadcast_triage::assess(&adv, &app.rules, t0 + Duration::hours(1));
        app.store.save_assessment(&v, t0).await.unwrap();
    }
    let list = app
        .store
        .list_candidates(&broadcast_store::CandidateFilter { include_irrelevant: false, limit: Some(5000) })
        .await
        .unwrap();
    assert_eq!(list.len(), 301);
    let groups = app.group_candidates(&list);
    assert_eq!(groups.len(), 2, "{:?}", groups.iter().map(|g| (&g.key, g.count)).collect::<Vec<_>>());
    let burst = groups.iter().find(|g| g.key == "baxter/sigma spectrum").unwrap();
    assert_eq!(burst.count, 300);
    assert_eq!(burst.top.level, ThreatLevel::High, "the CVSS 9.9 item is on top");
    assert!(groups.iter().any(|g| g.key == "philips/intellivue" && g.count == 1));
}

fn rec(source: &str, ext: &str, cves: &[&str], text: &str) -> AdvisoryContent {
    let mut a = AdvisoryContent::new(source, ext, format!("{source} {ext}"));
    a.cves = cves.iter().map(|c| c.to_string()).collect();
    a.summary = text.into();
    a
}

/// One advisory per real issue, as the collector stores records: CISA's CSAF and RSS
/// records of one advisory and NVD's record of its CVE are one issue; two vendor bulletins
/// that merely bundle the same library's CVEs never fuse (with each other or with it); a
/// record naming a GHSA id and a CVE merges the two issues it proves are one.
#[tokio::test]
async fn records_join_one_issue_without_runaway_merges() {
    let dir = tempfile::tempdir().unwrap();
    let app = app_in(dir.path()).await;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap();
    let put = |c: AdvisoryContent| {
        let app = app.clone();
        async move { app.store_advisory(&c, t0).await.unwrap().id }
    };
    let members = |id: broadcast_core::AdvisoryId| {
        let app = app.clone();
        async move {
            let mut m: Vec<String> =
                app.store.issue_members(&id).await.unwrap().into_iter().map(|a| a.content.source).collect();
            m.sort();
            m
        }
    };
    let csaf = put(rec("csaf", "ICSMA-24-200-01", &["CVE-2024-0001"], "")).await;
    put(rec("rss", "ICSMA-24-200-01", &["CVE-2024-0001"], "")).await;
    put(rec("nvd", "CVE-2024-0001", &["CVE-2024-0001"], "")).await;
    assert_eq!(members(csaf.clone()).await, ["csaf", "nvd", "rss"]);
    let a =
        put(rec("vendor-a", "VSA-2024-10", &["CVE-2024-0001", "CVE-2024-0009", "CVE-2024-0010"], "")).await;
    let b = put(rec("vendor-b", "XSA-2024-3", &["CVE-2024-0009", "CVE-2024-0011"], "")).await;
    let n9 = put(rec("nvd", "CVE-2024-0009", &["CVE-2024-0009"], "")).await;
    assert_eq!(members(a).await, ["vendor-a"]);
    assert_eq!(members(b).await, ["vendor-b"]);
    assert_eq!(members(n9).await, ["nvd"]);
    assert_eq!(members(csaf).await, ["csaf", "nvd", "rss"], "no runaway merge through a bundle");
    let ghsa = put(rec("osv", "GHSA-abcd-1234-wxyz", &[], "lib flaw")).await;
    let n5 = put(rec("nvd", "CVE-2024-0005", &["CVE-2024-0005"], "")).await;
    assert_eq!(members(ghsa.clone()).await, ["osv"]);
    put(rec("vendor-c", "https://c.example/1", &["CVE-2024-0005"], "see GHSA-abcd-1234-wxyz")).await;
    assert_eq!(members(ghsa).await, ["nvd", "osv", "vendor-c"]);
    assert_eq!(members(n5).await, ["nvd", "osv", "vendor-c"]);
}
