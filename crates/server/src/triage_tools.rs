//! `broadcast triage eval` and `broadcast bench triage`: measuring triage.

use anyhow::{Context, Result, bail};
use broadcast_core::{Advisory, AdvisoryContent, AdvisoryId, Affected};
use broadcast_triage::eval::Confusion;
use broadcast_triage::{Rules, assess};
use chrono::Utc;
use std::path::Path;
use std::time::Instant;

/// One labelled document and triage's verdict on it.
pub struct Row {
    pub file: String,
    pub label: bool,
    pub predicted: bool,
    pub title: String,
    pub id: String,
    pub score: f64,
    pub reasons: Vec<String>,
}

/// Reads a labels CSV (columns: a document path — `file`, `path` or `document` — and a 0/1
/// label — `label` or `label_health`; paths relative to the CSV's folder), assesses each
/// CSAF document as of its own release date, and returns the confusion matrix and rows.
pub fn evaluate(labels: &Path, rules: &Rules) -> Result<(Confusion, Vec<Row>)> {
    let mut reader =
        csv::Reader::from_path(labels).with_context(|| format!("cannot read {}", labels.display()))?;
    let headers = reader.headers()?.clone();
    let col =
        |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim().to_ascii_lowercase().as_str()));
    let file_col = col(&["file", "path", "document"])
        .with_context(|| format!("{}: no `file`, `path` or `document` column", labels.display()))?;
    let label_col = col(&["label", "label_health"])
        .with_context(|| format!("{}: no `label` or `label_health` column", labels.display()))?;
    let base = labels.parent().unwrap_or(Path::new("."));
    let mut confusion = Confusion::default();
    let mut rows = Vec::new();
    for (n, rec) in reader.records().enumerate() {
        let rec = rec.with_context(|| format!("{}: row {}", labels.display(), n + 2))?;
        let file = rec.get(file_col).unwrap_or("").trim().to_owned();
        let label = match rec.get(label_col).map(str::trim) {
            Some("1") | Some("true") => true,
            Some("0") | Some("false") => false,
            other => {
                bail!("{}: row {}: label `{}` is not 0 or 1", labels.display(), n + 2, other.unwrap_or(""))
            }
        };
        let path = find_document(base, &file)
            .with_context(|| format!("{}: row {}: document `{file}` not found", labels.display(), n + 2))?;
        let body = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let content = broadcast_collect::feeds::csaf::parse_document("eval", &body)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let at = content.updated.or(content.published).unwrap_or_else(Utc::now);
        let adv = Advisory {
            id: AdvisoryId::from_suffix(&format!("eval{n}")),
            revision: 1,
            first_seen: at,
            last_changed: at,
            content,
        };
        let v = assess(&adv, rules, at);
        confusion.add(label, v.relevant);
        rows.push(Row {
            file,
            label,
            predicted: v.relevant,
            title: adv.content.title.clone(),
            id: adv.content.external_id.clone(),
            score: v.score,
            reasons: v.reasons,
        });
    }
    if rows.is_empty() {
        bail!("{}: no labelled documents", labels.display());
    }
    Ok((confusion, rows))
}

/// Documents are named by file; the labels may sit beside them or above per-prefix folders
/// (`icsma/…`, `icsa/…`), as in the corpus.
fn find_document(base: &Path, file: &str) -> Option<std::path::PathBuf> {
    let direct = base.join(file);
    if direct.is_file() {
        return Some(direct);
    }
    let prefix = file.split('-').next()?;
    let nested = base.join(prefix).join(file);
    nested.is_file().then_some(nested)
}

pub fn print_report(labels: &Path, c: &Confusion, rows: &[Row]) {
    let pos = rows.iter().filter(|r| r.label).count();
    println!(
        "triage evaluation of {} documents ({} labelled relevant, {} not) from {}",
        rows.len(),
        pos,
        rows.len() - pos,
        labels.display()
    );
    println!("precision {:.3}   recall {:.3}   F1 {:.3}", c.precision(), c.recall(), c.f1());
    println!();
    println!("                        predicted relevant   predicted not");
    println!("labelled relevant       {:>18}   {:>13}", c.true_positive, c.false_negative);
    println!("labelled not relevant   {:>18}   {:>13}", c.false_positive, c.true_negative);
    for (heading, pick) in [
        ("misses (labelled relevant, predicted not)", true),
        ("false alarms (labelled not relevant, predicted relevant)", false),
    ] {
        let list: Vec<&Row> = rows.iter().filter(|r| r.label == pick && r.predicted != pick).collect();
        println!();
        println!("{heading}: {}", list.len());
        for r in list {
            println!("  {}  {}  score {:.2}", r.id, r.title, r.score);
            println!("      {}", r.reasons.join("; "));
        }
    }
}

/// Deterministic pseudo-random numbers for synthetic benchmark data.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn pick<'a>(&mut self, xs: &'a [String]) -> &'a str {
        &xs[(self.next() as usize) % xs.len()]
    }
}

fn word(r: &mut Lcg) -> String {
    const SYL: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ra", "to", "vi", "zen", "qua", "dor", "pel", "sar", "tek", "mon", "bri",
        "cal", "dex", "fu", "gor", "hal", "ix", "jor", "lun", "pra",
    ];
    let n = 2 + r.next() % 3;
    (0..n).map(|_| SYL[(r.next() % 24) as usize]).collect()
}

/// Loads every CSAF document under `dir` (recursively), for benchmarks on real text.
fn load_corpus(dir: &Path, out: &mut Vec<AdvisoryContent>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            load_corpus(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json")
            && let Ok(body) = std::fs::read(&p)
            && let Ok(c) = broadcast_collect::feeds::csaf::parse_document("bench", &body)
        {
            out.push(c);
        }
    }
    Ok(())
}

/// Assesses `advisories` advisories against a watchlist of `entries` entries on one thread
/// and prints the time taken (loading and generating data not counted).
///
/// With `corpus`, the advisories are the CSAF documents found there, repeated, and the
/// watchlist is `base` (the configured one) padded with synthetic product names. Without,
/// both are synthetic: advisory text from a vocabulary of common words, watchlist names from
/// a vocabulary of name-like words, one word in five shared between them, and one advisory
/// in four naming a watchlist entry.
pub fn bench(
    advisories: usize,
    entries: usize,
    corpus: Option<&Path>,
    base: Option<&broadcast_triage::Watchlist>,
) -> Result<()> {
    let mut r = Lcg(0x5eed);
    let common: Vec<String> = (0..5000).map(|_| word(&mut r)).collect();
    let names_vocab: Vec<String> =
        (0..20000)
            .map(|i| {
                if i % 5 == 0 { common[i % common.len()].clone() } else { format!("{}{}", word(&mut r), "x") }
            })
            .collect();
    let mut w = base.cloned().unwrap_or_default();
    let cats = ["medical_device", "health_it", "device_kind", "general_it"];
    let mut i = w.vendor.len() + w.product.len() + w.keyword.len();
    while i < entries {
        let name = format!("{} {}", r.pick(&names_vocab), r.pick(&names_vocab));
        let cat = cats[i % cats.len()];
        let entry: broadcast_triage::Entry = toml::from_str(&format!(
            "name = \"{name}\"\ncategory = \"{cat}\"\nweight = {}\naliases = [\"{}{i}\"]",
            1 + i % 4,
            r.pick(&names_vocab)
        ))?;
        match i % 3 {
            0 => w.vendor.push(entry),
            1 => w.product.push(entry),
            _ => w.keyword.push(entry),
        }
        i += 1;
    }
    let names: Vec<String> =
        w.vendor.iter().chain(&w.product).chain(&w.keyword).map(|e| e.name.clone()).collect();
    let rules = Rules::new(&w, broadcast_triage::Tuning::default())?;
    let now = Utc::now();
    let source: Vec<AdvisoryContent> = match corpus {
        Some(dir) => {
            let mut docs = Vec::new();
            load_corpus(dir, &mut docs)?;
            if docs.is_empty() {
                bail!("no CSAF documents under {}", dir.display());
            }
            docs
        }
        None => (0..1000)
            .map(|k| {
                let mut text: Vec<String> = (0..60).map(|_| r.pick(&common).to_owned()).collect();
                if k % 4 == 0 {
                    text.insert(10, r.pick(&names).to_owned());
                }
                let mut c = AdvisoryContent::new("bench", format!("b{k}"), text[..8].join(" "));
                c.summary = text[8..].join(" ");
                c.affected.push(Affected::named(r.pick(&names_vocab), r.pick(&names_vocab)));
                c.cvss_vectors.push("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H".into());
                c.published = Some(now);
                c
            })
            .collect(),
    };
    let mut items = Vec::with_capacity(advisories);
    let mut bytes = 0usize;
    for k in 0..advisories {
        let c = source[k % source.len()].clone();
        bytes += c.title.len() + c.summary.len();
        items.push(Advisory {
            id: AdvisoryId::from_suffix(&format!("b{k}")),
            revision: 1,
            first_seen: now,
            last_changed: now,
            content: c,
        });
    }
    let start = Instant::now();
    let mut relevant = 0usize;
    for adv in &items {
        if assess(adv, &rules, now).relevant {
            relevant += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "triage ({}): {advisories} advisories ({:.1} MB of text) against {} watchlist entries on one thread: \
         {secs:.3} s ({:.0} advisories/s, {:.1} MB/s); {relevant} relevant",
        if corpus.is_some() { "real CSAF text" } else { "synthetic" },
        bytes as f64 / 1e6,
        rules.len(),
        advisories as f64 / secs,
        bytes as f64 / 1e6 / secs
    );
    Ok(())
}
