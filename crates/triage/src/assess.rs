//! Scoring one advisory. See `docs/TRIAGE.md` for the model and its evaluation.

use crate::watchlist::{Category, Kind, Rules, cpe_key, filter_bit, is_word_byte, word_hash};
use aho_corasick::{Anchored, Input};
use broadcast_core::{Advisory, Assessment, ThreatLevel};
use chrono::{DateTime, Utc};

/// How sure a watchlist match is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Confidence {
    /// A name in the text only.
    Keyword,
    /// Vendor and product both named (or a vendor named as an affected product's vendor).
    Probable,
    /// An identifier: CPE or package URL.
    Exact,
}

impl Confidence {
    fn factor(self) -> f64 {
        match self {
            Confidence::Exact => 1.5,
            Confidence::Probable => 1.0,
            Confidence::Keyword => 0.5,
        }
    }
}

/// One watchlist entry found in an advisory.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub entry: usize,
    pub confidence: Confidence,
    pub via: String,
}

/// Keyword-confidence matches together never add more than this: a long text that mentions
/// many health words in passing is still only text.
const KEYWORD_CAP: f64 = 4.0;
/// A sector note that names only "Healthcare and Public Health" adds this much; a note that
/// lists it among n sectors adds this / n.
const SECTOR_WEIGHT: f64 = 3.0;

/// Entries found in `text` at word boundaries (ASCII case-insensitively: the watchlist's
/// patterns are folded the same way), leftmost-longest.
///
/// Matches can only start at a word start, so the automaton is run anchored at word starts
/// whose word begins some pattern (one hash lookup per word decides); most words of an
/// advisory are skipped without touching the automaton.
fn scan(rules: &Rules, text: &str, out: &mut Vec<usize>) {
    let Some(m) = &rules.matcher else { return };
    let bytes = text.as_bytes();
    let mut record = |start: usize, end: usize, pattern: usize| {
        let before_ok = start == 0 || !is_word_byte(bytes[start - 1]);
        let after_ok = end == bytes.len() || !is_word_byte(bytes[end]);
        let idx = rules.pattern_entry[pattern];
        if before_ok && after_ok && !out.contains(&idx) {
            out.push(idx);
        }
        before_ok && after_ok
    };
    let Some(first_words) = &rules.first_words else {
        let lower = text.to_ascii_lowercase();
        for hit in m.find_iter(&lower) {
            record(hit.start(), hit.end(), hit.pattern().as_usize());
        }
        return;
    };
    // Lower-cased windows are built only where a match can start.
    let mut window: Vec<u8> = Vec::new();
    let mut i = 0;
    let mut covered_until = 0;
    while i < bytes.len() {
        if !is_word_byte(bytes[i]) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < bytes.len() && is_word_byte(bytes[j]) {
            j += 1;
        }
        let h = word_hash(&bytes[i..j]);
        let bit = filter_bit(h);
        let maybe = rules.first_word_bits[bit / 64] & (1 << (bit % 64)) != 0;
        if i >= covered_until && maybe && first_words.contains(&h) {
            // One byte past the longest pattern, so the end-of-word check sees it.
            let end = (i + rules.longest + 1).min(bytes.len());
            window.clear();
            window.extend(bytes[i..end].iter().map(u8::to_ascii_lowercase));
            if let Some(hit) = m.find(Input::new(&window).anchored(Anchored::Yes))
                && record(i + hit.start(), i + hit.end(), hit.pattern().as_usize())
            {
                covered_until = i + hit.end();
            }
        }
        i = j;
    }
}

fn contains_word(haystack_lower: &str, needle_lower: &str) -> bool {
    let h = haystack_lower.as_bytes();
    let mut from = 0;
    while let Some(i) = haystack_lower[from..].find(needle_lower) {
        let s = from + i;
        let e = s + needle_lower.len();
        if (s == 0 || !is_word_byte(h[s - 1])) && (e == h.len() || !is_word_byte(h[e])) {
            return true;
        }
        from = s + 1;
        while !haystack_lower.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}

/// Finds every watchlist entry in an advisory, each once at its best confidence.
pub fn find_matches(adv: &Advisory, rules: &Rules) -> Vec<Match> {
    let c = &adv.content;
    let mut best: Vec<Match> = Vec::new();
    let mut add = |m: Match| match best.iter_mut().find(|x| x.entry == m.entry) {
        Some(x) if x.confidence < m.confidence => *x = m,
        Some(_) => {}
        None => best.push(m),
    };

    // Identifiers.
    for a in &c.affected {
        if let Some(cpe) = &a.cpe {
            let lower = cpe.to_ascii_lowercase();
            let hit = cpe_key(cpe)
                .and_then(|k| rules.cpe.get(&k).copied())
                .or_else(|| rules.cpe_prefix.iter().find(|(p, _)| lower.starts_with(p)).map(|x| x.1));
            if let Some(i) = hit {
                add(Match { entry: i, confidence: Confidence::Exact, via: cpe.clone() });
            }
        }
        if let Some(purl) = &a.purl {
            let lower = purl.to_ascii_lowercase();
            if let Some((_, i)) = rules.purl.iter().find(|(p, _)| lower.starts_with(p)) {
                add(Match { entry: *i, confidence: Confidence::Exact, via: purl.clone() });
            }
        }
    }

    // Names: title and summary, affected vendors, affected products.
    let mut in_text = Vec::new();
    scan(rules, &c.title, &mut in_text);
    scan(rules, &c.summary, &mut in_text);
    let mut in_vendor = Vec::new();
    let mut in_product = Vec::new();
    for a in &c.affected {
        scan(rules, &a.vendor, &mut in_vendor);
        scan(rules, &a.product, &mut in_product);
        for m in &a.models {
            scan(rules, m, &mut in_product);
        }
    }
    // Built only if a product entry needs its vendor checked.
    let mut lowered: Option<(String, String)> = None;
    let mut vendor_present = |names: &[String]| {
        let (vendors, text) = lowered.get_or_insert_with(|| {
            let vendors: Vec<String> = c.affected.iter().map(|a| a.vendor.to_lowercase()).collect();
            (vendors.join("\n"), format!("{}\n{}", c.title, c.summary).to_lowercase())
        });
        names.iter().any(|n| contains_word(vendors, n) || contains_word(text, n))
    };
    // Only entries that were hit somewhere: the watchlist may hold tens of thousands.
    let mut hit: Vec<usize> = in_text.iter().chain(&in_vendor).chain(&in_product).copied().collect();
    hit.sort_unstable();
    hit.dedup();
    for i in hit {
        let e = &rules.entries[i];
        let (t, v, p) = (in_text.contains(&i), in_vendor.contains(&i), in_product.contains(&i));
        let m = match e.kind {
            Kind::Vendor if v => {
                Match { entry: i, confidence: Confidence::Probable, via: "affected vendor".into() }
            }
            Kind::Vendor => {
                Match { entry: i, confidence: Confidence::Keyword, via: "named in the text".into() }
            }
            Kind::Product => {
                let vendor_ok = if e.vendor_names.is_empty() { p } else { vendor_present(&e.vendor_names) };
                // General IT must be named as affected, not just mentioned.
                let vendor_ok = vendor_ok && (p || e.entry.category != Category::GeneralIt);
                if vendor_ok {
                    Match {
                        entry: i,
                        confidence: Confidence::Probable,
                        via: "vendor and product named".into(),
                    }
                } else {
                    Match {
                        entry: i,
                        confidence: Confidence::Keyword,
                        via: "product named without its vendor".into(),
                    }
                }
            }
            Kind::Keyword => Match {
                entry: i,
                confidence: Confidence::Keyword,
                via: if t { "in the text".into() } else { "in the affected products".into() },
            },
        };
        add(m);
    }
    best.sort_by(|a, b| b.confidence.cmp(&a.confidence).then(a.entry.cmp(&b.entry)));
    best
}

/// Parsed CVSS: the best score among every vector the advisory carries.
#[derive(Clone, Debug, PartialEq)]
pub struct CvssSignal {
    pub score: f64,
    pub vector: Option<String>,
    pub description: String,
}

/// The advisory's CVSS. Collectors score every v3.x / v4.0 vector with the `cvss` crate at
/// ingest and keep the highest as the headline `cvss`; that is used as is. Without a
/// headline (or without its vector), every vector is parsed and scored here.
pub fn cvss_signal(adv: &Advisory) -> Option<CvssSignal> {
    let c = &adv.content;
    if let Some(head) = &c.cvss
        && let Some(v) = &head.vector
    {
        return Some(CvssSignal {
            score: head.score,
            vector: Some(v.clone()),
            description: describe_vector(v),
        });
    }
    let best = c
        .cvss_vectors
        .iter()
        .filter_map(|v| v.parse::<cvss::Cvss>().ok().map(|p| (p.score(), v)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match best {
        Some((score, v)) => {
            Some(CvssSignal { score, vector: Some(v.clone()), description: describe_vector(v) })
        }
        None => {
            c.cvss.as_ref().map(|x| CvssSignal { score: x.score, vector: None, description: String::new() })
        }
    }
}

/// "network, no privileges, no user interaction" from a v3/v4 vector.
pub fn describe_vector(v: &str) -> String {
    let mut out = Vec::new();
    for part in v.split('/') {
        let d = match part {
            "AV:N" => "network",
            "AV:A" => "adjacent network",
            "AV:L" => "local access",
            "AV:P" => "physical access",
            "PR:N" => "no privileges",
            "PR:L" => "low privileges",
            "PR:H" => "high privileges",
            "UI:N" => "no user interaction",
            "UI:R" | "UI:P" | "UI:A" => "user interaction",
            _ => continue,
        };
        out.push(d);
    }
    out.join(", ")
}

/// The documented threat-level mapping.
///
/// The base level follows the highest CVSS base score ([`ThreatLevel::from_cvss`]: 7.0–10.0
/// High, 4.0–6.9 Medium, 0.1–3.9 Low, 0.0 Information; no score is Information).
/// Exploitation (listed in KEV, or reported by the source) raises it one level, to at most
/// High; exploitation without a score is Medium.
pub fn threat_level(cvss: Option<f64>, exploited: bool) -> ThreatLevel {
    let base = cvss.map(ThreatLevel::from_cvss).unwrap_or(ThreatLevel::Information);
    if !exploited {
        return base;
    }
    match base {
        ThreatLevel::Information => ThreatLevel::Medium,
        ThreatLevel::Low => ThreatLevel::Medium,
        ThreatLevel::Medium | ThreatLevel::High => ThreatLevel::High,
    }
}

/// Assesses the latest revision of an advisory at time `now` (passed in: triage reads no
/// clock). See [`crate`] docs for the model.
pub fn assess(adv: &Advisory, rules: &Rules, now: DateTime<Utc>) -> Assessment {
    let c = &adv.content;
    let matches = find_matches(adv, rules);
    let mut reasons = Vec::new();
    let mut health = 0.0;
    let mut keyword_sum = 0.0;
    for m in &matches {
        let e = &rules.entries[m.entry];
        if e.entry.category == Category::GeneralIt && m.confidence == Confidence::Keyword {
            continue;
        }
        let name = &e.entry.name;
        let cat = e.entry.category.label();
        let contribution = match (e.kind, m.confidence) {
            (Kind::Keyword, _) => e.entry.weight,
            (_, conf) => e.entry.weight * conf.factor(),
        };
        if m.confidence == Confidence::Keyword {
            let room = (KEYWORD_CAP - keyword_sum).max(0.0);
            let used = contribution.min(room);
            keyword_sum += used;
            health += used;
        } else {
            health += contribution;
        }
        reasons.push(match (e.kind, m.confidence) {
            (_, Confidence::Exact) => format!("exact product match: {name} ({})", m.via),
            (Kind::Vendor, Confidence::Probable) => format!("affected vendor: {name} ({cat})"),
            (Kind::Product, Confidence::Probable) => match &e.entry.vendor {
                Some(v) => format!("probable product match: {v} {name} ({cat})"),
                None => format!("probable product match: {name} ({cat})"),
            },
            (Kind::Keyword, _) => format!("keyword: {name} ({cat}) {}", m.via),
            (kind, _) => format!("{} named in the text: {name} ({cat}; weak)", kind.label()),
        });
    }
    let health_sectors: Vec<&String> =
        c.sectors.iter().filter(|s| s.to_lowercase().contains("health")).collect();
    if let Some(s) = health_sectors.first() {
        let n = c.sectors.len().max(1);
        health += SECTOR_WEIGHT / n as f64;
        reasons.push(format!(
            "sector: {s} ({} of {n} sectors listed)",
            if n == 1 { "the only one" } else { "one" }
        ));
    }

    let mut urgency = 0.0;
    if let Some(k) = &c.kev {
        urgency += 2.0;
        let mut r = format!("in KEV since {}", k.date_added);
        if let Some(d) = k.due_date {
            r.push_str(&format!(", remediation due {d}"));
        }
        if k.ransomware {
            r.push_str(", known use in ransomware campaigns");
        }
        reasons.push(r);
    }
    if c.exploited {
        urgency += 1.0;
        reasons.push("exploitation reported by the source".into());
    }
    let cvss = cvss_signal(adv);
    match &cvss {
        Some(s) => {
            urgency += s.score / 10.0;
            let version =
                s.vector.as_deref().and_then(|v| v.split('/').next()).map(|p| p.trim_start_matches("CVSS:"));
            let mut r = format!("CVSS {:.1}", s.score);
            if let Some(v) = version {
                r.push_str(&format!(" (v{v})"));
            }
            if !s.description.is_empty() {
                r.push_str(&format!(": {}", s.description));
            }
            reasons.push(r);
        }
        None => reasons.push("no CVSS score".into()),
    }

    // An update to a years-old advisory does not raise an alarm on its own.
    let old_days = rules.tuning.old_after_days;
    let mut age_factor = 1.0;
    if let Some(first) = c.published {
        let age = (now - first).num_days();
        let newly_in_kev =
            c.kev.as_ref().is_some_and(|k| (now.date_naive() - k.date_added).num_days() <= old_days);
        if age > old_days && !newly_in_kev {
            age_factor = 0.5;
            reasons.push(format!(
                "first published {} ({} days ago): an update to an old issue, scored at half weight",
                first.date_naive(),
                age
            ));
        }
    }

    let exploited = c.exploited || c.kev.is_some();
    let mut relevant = health * age_factor >= rules.tuning.relevance_threshold;
    let mut level = threat_level(cvss.map(|s| s.score), exploited);
    let mut score = ((health + urgency) * age_factor * 100.0).round() / 100.0;
    // A partner's incident report always reaches an analyst, at the top of the queue.
    if let Some(i) = &c.incident {
        relevant = true;
        score += 10.0;
        reasons.insert(
            0,
            format!("incident reported by {}: partner reports always go to an analyst", i.org_name),
        );
        level = match i.severity.as_deref() {
            Some("critical" | "high") => ThreatLevel::High,
            Some("medium") => ThreatLevel::Medium,
            Some("low") => level.max(ThreatLevel::Low),
            _ => level.max(ThreatLevel::Medium),
        };
    }
    if !relevant {
        reasons.insert(
            0,
            format!(
                "not relevant: health score {:.2} below the threshold {:.1}",
                health * age_factor,
                rules.tuning.relevance_threshold
            ),
        );
    }
    Assessment {
        advisory_id: adv.id.clone(),
        advisory_revision: adv.revision,
        relevant,
        threat_level: level,
        score,
        reasons,
    }
}
