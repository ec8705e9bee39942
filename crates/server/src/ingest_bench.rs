//! `broadcast bench ingest DIR`: every file under DIR read by the parser its format needs,
//! then everything parsed stored (advisories upserted, KEV listings applied) in a throwaway
//! store. Prints documents/s and MB/s per format, parse and store separately, and what was
//! refused and why (counted per reason), so the corpus doubles as a parser check.

use crate::app::App;
use crate::config::Settings;
use anyhow::{Context, Result};
use broadcast_collect::feeds::{csaf, csaf_provider, kev, nvd, rss};
use broadcast_core::{AdvisoryContent, KevEntry, Tlp};
use chrono::Utc;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Stats {
    files: usize,
    bytes: usize,
    parse: Duration,
    documents: usize,
    refused_files: usize,
    refused_items: usize,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// What a file is, from its name and (for JSON) its top-level keys.
fn kind(path: &Path, json: Option<&Value>) -> &'static str {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "xml" | "rss" | "atom" | "rdf" => "rss/atom",
        "json" => match json {
            Some(v) if v.get("document").is_some() => "csaf",
            Some(v) if v.get("catalogVersion").is_some() => "kev",
            Some(v) if v.get("vulnerabilities").is_some() => "nvd",
            Some(v) if v.get("cve").is_some() || v.get("descriptions").is_some() => "nvd-record",
            Some(v) if v.get("feed").is_some() => "rolie",
            Some(v) if v.get("CVE_Items").is_some() => "nvd-1.1 (not read)",
            Some(v) if v.get("affected").is_some() || v.get("modified").is_some() => "osv (not read)",
            Some(v) if v.get("$schema").is_some() || v.get("$id").is_some() => "schema (not data)",
            Some(_) => "other json",
            None => "not json",
        },
        _ if name == "changes.csv" || name == "index.txt" => "csaf directory",
        _ => "other (skipped)",
    }
}

pub async fn ingest(mut settings: Settings, dir: &Path, store_url: Option<String>) -> Result<()> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.sort();
    let mut stats: BTreeMap<&'static str, Stats> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut items: Vec<AdvisoryContent> = Vec::new();
    let mut listings: Vec<KevEntry> = Vec::new();
    let bodies: Vec<(PathBuf, Vec<u8>)> =
        files.into_iter().map(|p| std::fs::read(&p).map(|b| (p, b))).collect::<std::io::Result<_>>()?;
    let total_bytes: usize = bodies.iter().map(|(_, b)| b.len()).sum();
    let wall = Instant::now();
    for (path, body) in &bodies {
        let t = Instant::now();
        let json: Option<Value> = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_slice(body).ok()
        } else {
            None
        };
        let k = kind(path, json.as_ref());
        let source = "bench";
        let mut refuse = |why: String| {
            if std::env::var_os("BENCH_VERBOSE").is_some() {
                eprintln!("{}: {why}", path.display());
            }
            // Group by what failed, not by which document: "CSAF mandatory test 6.1.14",
            // or the message's first clause.
            let short: String = match why.find("CSAF mandatory test ") {
                Some(at) => why[at..].split(" failed").next().unwrap_or(&why).to_owned(),
                None => why.split(':').next().unwrap_or(&why).chars().take(80).collect(),
            };
            *reasons.entry(format!("{k}: {short}")).or_default() += 1;
        };
        // Documents read and items refused, or why the whole file was refused.
        let outcome: Option<Result<(usize, usize), broadcast_collect::ParseError>> = match k {
            "rss/atom" => Some(rss::parse_feed(source, Tlp::Clear, body).map(|p| {
                let counts = (p.items.len(), p.refused.len());
                items.extend(p.items);
                counts
            })),
            "csaf" => Some(csaf::parse_document(source, body).map(|a| {
                items.push(a);
                (1, 0)
            })),
            "nvd" => Some(nvd::parse_page(source, body).map(|p| {
                let counts = (p.items.len(), p.refused.len());
                items.extend(p.items);
                counts
            })),
            "nvd-record" => Some(nvd::parse_cve(source, json.as_ref().expect("json")).map(|a| {
                items.push(a);
                (1, 0)
            })),
            "kev" => Some(kev::parse_catalog(body).map(|p| {
                let counts = (p.kev.len(), p.refused.len());
                listings.extend(p.kev);
                counts
            })),
            "rolie" | "csaf directory" => {
                let url =
                    url::Url::from_file_path(path.canonicalize()?).map_err(|_| anyhow::anyhow!("path"))?;
                Some(csaf_provider::list_documents(&url, body).map(|d| (d.len(), 0)))
            }
            _ => None,
        };
        let (docs, refused_file, refused_items) = match outcome {
            None => (0, false, 0),
            Some(Ok((n, r))) => (n, false, r),
            Some(Err(e)) => {
                refuse(e.0);
                (0, true, 0)
            }
        };
        let s = stats.entry(k).or_default();
        s.files += 1;
        s.bytes += body.len();
        s.parse += t.elapsed();
        s.documents += docs;
        s.refused_files += usize::from(refused_file);
        s.refused_items += refused_items;
    }
    let parse_wall = wall.elapsed();

    // Store everything parsed, as the collector would.
    let tmp = tempfile::tempdir()?;
    settings.store.url =
        store_url.unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("ingest.db").display()));
    let app = App::open(settings).await.context("opening the benchmark store")?;
    let t = Instant::now();
    let mut stored = 0;
    for a in &items {
        match app.store_advisory(a, Utc::now()).await {
            Ok(_) => stored += 1,
            Err(e) => *reasons.entry(format!("store: {e}")).or_default() += 1,
        }
    }
    let upsert = t.elapsed();
    let t = Instant::now();
    let applied = app.store.apply_kev(&listings, Utc::now()).await?;
    let kev_time = t.elapsed();
    let total = wall.elapsed();

    println!(
        "{:<22} {:>6} {:>9} {:>10} {:>9} {:>11} {:>9}",
        "format", "files", "MB", "documents", "parse ms", "documents/s", "MB/s"
    );
    for (k, s) in &stats {
        let secs = s.parse.as_secs_f64().max(1e-9);
        println!(
            "{:<22} {:>6} {:>9.2} {:>10} {:>9.1} {:>11.0} {:>9.1}",
            k,
            s.files,
            s.bytes as f64 / 1e6,
            s.documents,
            s.parse.as_secs_f64() * 1000.0,
            s.documents as f64 / secs,
            s.bytes as f64 / 1e6 / secs
        );
    }
    println!(
        "parse: {} files, {:.2} MB in {:.0} ms ({:.1} MB/s)",
        bodies.len(),
        total_bytes as f64 / 1e6,
        parse_wall.as_secs_f64() * 1000.0,
        total_bytes as f64 / 1e6 / parse_wall.as_secs_f64()
    );
    println!(
        "store ({:?}): {stored} advisories upserted in {:.0} ms ({:.0}/s); {} KEV listings applied in {:.0} ms ({} advisories marked)",
        app.store.kind(),
        upsert.as_secs_f64() * 1000.0,
        stored as f64 / upsert.as_secs_f64().max(1e-9),
        applied.new_entries + applied.changed_entries,
        kev_time.as_secs_f64() * 1000.0,
        applied.advisories.len()
    );
    println!("total: parsed and stored in {:.2} s", total.as_secs_f64());
    if !reasons.is_empty() {
        println!("refused (files or items), by reason:");
        for (why, n) in &reasons {
            println!("  {n:>4}  {why}");
        }
    }
    app.store.close().await;
    Ok(())
}

/// RSS/Atom parsing alone, repeated, for the comparison with Python's feedparser
/// (`scripts/bench-feedparser.py`): feeds/s and MB/s over the same files.
pub fn rss_only(dir: &Path, rounds: usize) -> Result<()> {
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    files.retain(|p| {
        p.extension().is_some_and(|e| matches!(e.to_str(), Some("xml" | "rss" | "atom" | "rdf")))
    });
    files.sort();
    let bodies: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<std::io::Result<_>>()?;
    let bytes: usize = bodies.iter().map(Vec::len).sum();
    let t = Instant::now();
    let mut entries = 0;
    for _ in 0..rounds {
        for b in &bodies {
            if let Ok(p) = rss::parse_feed("bench", Tlp::Clear, b) {
                entries += p.items.len();
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let feeds = bodies.len() * rounds;
    println!(
        "broadcast rss: {} files x {rounds} rounds: {:.0} feeds/s, {:.1} MB/s ({} entries, {:.2} s)",
        bodies.len(),
        feeds as f64 / secs,
        (bytes * rounds) as f64 / 1e6 / secs,
        entries,
        secs
    );
    Ok(())
}
