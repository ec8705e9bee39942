//! # broadcast-triage
//!
//! Pure policy: [`assess`] decides whether an advisory matters to health and care, how
//! urgent it is, and why; [`draft_bulletin`] turns assessed advisories into a bulletin draft.
//! No I/O, no clock, no environment: the server feeds it and stores what it returns.
//!
//! This is triage v0: a watchlist of vendors, products and keywords matched in one
//! Aho-Corasick pass over the advisory's text and affected products, with word boundaries,
//! and a threat level that follows the CVSS score.
//!
//! ```
//! use broadcast_triage::{Rules, Watchlist, assess};
//! # use broadcast_core::*;
//! let rules = Rules::new(&Watchlist { vendors: vec!["Philips".into()], ..Default::default() }).unwrap();
//! # let mut c = AdvisoryContent::new("f", "1", "Philips IntelliVue flaw");
//! # c.cvss = Some(Cvss { vector: None, score: 9.1 });
//! # let adv = Advisory { id: AdvisoryId::from_suffix("a"), revision: 1, first_seen: chrono::DateTime::UNIX_EPOCH, last_changed: chrono::DateTime::UNIX_EPOCH, content: c };
//! let verdict = assess(&adv, &rules);
//! assert!(verdict.relevant);
//! assert_eq!(verdict.threat_level, ThreatLevel::High);
//! ```
#![forbid(unsafe_code)]

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use broadcast_core::{Advisory, Assessment, BulletinContent, ThreatLevel, Tlp};
use serde::Deserialize;

/// What the operator watches for, from config.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Watchlist {
    #[serde(default)]
    pub vendors: Vec<String>,
    #[serde(default)]
    pub products: Vec<String>,
    #[serde(default)]
    pub keywords: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Vendor,
    Product,
    Keyword,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Vendor => "vendor",
            Kind::Product => "product",
            Kind::Keyword => "keyword",
        }
    }
    fn weight(self) -> f64 {
        match self {
            Kind::Vendor => 2.0,
            Kind::Product => 3.0,
            Kind::Keyword => 1.0,
        }
    }
}

/// A watchlist entry that cannot be used, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("watchlist {list}[{index}]: {why}")]
pub struct RulesError {
    pub list: &'static str,
    pub index: usize,
    pub why: String,
}

/// A compiled watchlist, ready to assess advisories.
pub struct Rules {
    matcher: Option<AhoCorasick>,
    entries: Vec<(Kind, String)>,
}

impl Rules {
    pub fn new(w: &Watchlist) -> Result<Rules, RulesError> {
        let mut entries = Vec::new();
        for (list, kind, items) in [
            ("vendors", Kind::Vendor, &w.vendors),
            ("products", Kind::Product, &w.products),
            ("keywords", Kind::Keyword, &w.keywords),
        ] {
            for (index, item) in items.iter().enumerate() {
                let t = item.trim();
                if t.chars().count() < 2 {
                    return Err(RulesError {
                        list,
                        index,
                        why: format!("`{item}` is too short to match on"),
                    });
                }
                entries.push((kind, t.to_owned()));
            }
        }
        let matcher = if entries.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(entries.iter().map(|(_, p)| p.as_str()))
                    .map_err(|e| RulesError { list: "all", index: 0, why: e.to_string() })?,
            )
        };
        Ok(Rules { matcher, entries })
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// Watchlist entries found in `text` at word boundaries, in order of first appearance.
fn find_matches(rules: &Rules, text: &str) -> Vec<usize> {
    let Some(m) = &rules.matcher else { return Vec::new() };
    let bytes = text.as_bytes();
    let mut found: Vec<usize> = Vec::new();
    for hit in m.find_iter(text) {
        let before_ok = hit.start() == 0 || !is_word_byte(bytes[hit.start() - 1]);
        let after_ok = hit.end() == bytes.len() || !is_word_byte(bytes[hit.end()]);
        let idx = hit.pattern().as_usize();
        if before_ok && after_ok && !found.contains(&idx) {
            found.push(idx);
        }
    }
    found
}

/// Assesses the latest revision of an advisory.
///
/// Relevance: any watchlist match. Score: the sum of match weights (product 3, vendor 2,
/// keyword 1) plus CVSS/10. Threat level: from the CVSS base score (see
/// [`ThreatLevel::from_cvss`]); without a score it is Information until an analyst decides.
pub fn assess(adv: &Advisory, rules: &Rules) -> Assessment {
    let c = &adv.content;
    let mut text = format!("{}\n{}", c.title, c.summary);
    for a in &c.affected {
        text.push('\n');
        text.push_str(&a.vendor);
        text.push(' ');
        text.push_str(&a.product);
    }
    let matches = find_matches(rules, &text);
    let mut reasons = Vec::new();
    let mut score = 0.0;
    for idx in &matches {
        let (kind, name) = &rules.entries[*idx];
        reasons.push(format!("matched watchlist {} `{}`", kind.label(), name));
        score += kind.weight();
    }
    let relevant = !matches.is_empty();
    if !relevant {
        reasons.push("no watchlist vendor, product or keyword matched".to_owned());
    }
    let threat_level = match &c.cvss {
        Some(cvss) => {
            score += cvss.score / 10.0;
            reasons.push(match &cvss.vector {
                Some(v) => format!("CVSS {:.1} ({v})", cvss.score),
                None => format!("CVSS {:.1}", cvss.score),
            });
            ThreatLevel::from_cvss(cvss.score)
        }
        None => {
            reasons.push("no CVSS score: threat level left at Information for an analyst to set".to_owned());
            ThreatLevel::Information
        }
    };
    Assessment {
        advisory_id: adv.id.clone(),
        advisory_revision: adv.revision,
        relevant,
        threat_level,
        score: (score * 100.0).round() / 100.0,
        reasons,
    }
}

/// Drafts a bulletin from one or more assessed advisories: the worst threat level, the
/// most restrictive TLP, and the union of CVEs, products and references.
pub fn draft_bulletin(items: &[(Advisory, Option<Assessment>)]) -> BulletinContent {
    let level = items
        .iter()
        .filter_map(|(_, a)| a.as_ref().map(|a| a.threat_level))
        .max()
        .unwrap_or(ThreatLevel::Information);
    let tlp = items.iter().map(|(a, _)| a.content.tlp).max().unwrap_or(Tlp::Clear);
    let title = match items {
        [] => "New bulletin".to_owned(),
        [(a, _)] => a.content.title.clone(),
        [(a, _), rest @ ..] => format!("{} and {} related advisories", a.content.title, rest.len()),
    };
    let mut cves = Vec::new();
    let mut references = Vec::new();
    let mut affected = Vec::new();
    let mut summary = Vec::new();
    for (a, _) in items {
        for cve in &a.content.cves {
            if !cves.contains(cve) {
                cves.push(cve.clone());
            }
        }
        for r in &a.content.references {
            if !references.contains(r) {
                references.push(r.clone());
            }
        }
        for p in &a.content.affected {
            let name = format!("{} {}", p.vendor, p.product).trim().to_owned();
            if !affected.contains(&name) {
                affected.push(name);
            }
        }
        if !a.content.summary.is_empty() {
            summary.push(a.content.summary.clone());
        }
    }
    BulletinContent {
        title,
        threat_level: level,
        tlp,
        summary: summary.join("\n\n"),
        affected_products: affected,
        remediation: "Apply the vendor's updates or mitigations as soon as possible, and check exposed \
                      systems for signs of compromise."
            .to_owned(),
        references,
        cves,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_core::{AdvisoryContent, AdvisoryId, Affected, Cvss};
    use chrono::TimeZone;

    fn adv(title: &str, summary: &str, cvss: Option<f64>) -> Advisory {
        let mut c = AdvisoryContent::new("f", title, title);
        c.summary = summary.into();
        c.cvss = cvss.map(|score| Cvss { vector: None, score });
        let t = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Advisory { id: AdvisoryId::from_suffix("x"), revision: 3, first_seen: t, last_changed: t, content: c }
    }

    fn rules() -> Rules {
        Rules::new(&Watchlist {
            vendors: vec!["Philips".into(), "Baxter".into()],
            products: vec!["IntelliVue".into(), "Citrix NetScaler".into()],
            keywords: vec!["infusion pump".into(), "DICOM".into()],
        })
        .unwrap()
    }

    #[test]
    fn matches_with_reasons_and_cvss_level() {
        let a = adv("Philips IntelliVue patient monitors", "Network flaw; CVE-2026-1", Some(9.8));
        let v = assess(&a, &rules());
        assert!(v.relevant);
        assert_eq!(v.threat_level, ThreatLevel::High);
        assert_eq!(v.advisory_revision, 3);
        assert_eq!(
            v.reasons,
            vec!["matched watchlist vendor `Philips`", "matched watchlist product `IntelliVue`", "CVSS 9.8"]
        );
        assert!((v.score - 5.98).abs() < 1e-9, "{}", v.score);
    }

    #[test]
    fn word_boundaries_and_case() {
        let r = rules();
        // "Philipsburg" is not Philips; "dicom" in lower case still matches DICOM.
        let v = assess(&adv("Philipsburg water utility", "uses dicom gateway", None), &r);
        assert_eq!(v.reasons[0], "matched watchlist keyword `DICOM`");
        assert_eq!(v.reasons.len(), 2);
        assert!(!assess(&adv("IntelliVuePlus", "", None), &r).relevant);
        // Multi-word entries match across the text.
        assert!(assess(&adv("Flaw in Baxter infusion pump", "", Some(5.0)), &r).relevant);
    }

    #[test]
    fn affected_products_are_matched_too() {
        let mut a = adv("Advisory ICSMA-26-001", "", Some(6.5));
        a.content.affected.push(Affected { vendor: "Baxter".into(), product: "Sigma Spectrum".into() });
        let v = assess(&a, &rules());
        assert!(v.relevant);
        assert_eq!(v.threat_level, ThreatLevel::Medium);
    }

    #[test]
    fn irrelevant_and_unscored() {
        let v = assess(&adv("Kernel update", "", None), &rules());
        assert!(!v.relevant);
        assert_eq!(v.threat_level, ThreatLevel::Information);
        assert_eq!(v.score, 0.0);
        assert!(v.reasons[0].contains("no watchlist"));
        assert!(v.reasons[1].contains("no CVSS"));
        // An empty watchlist matches nothing.
        assert!(!assess(&adv("Philips", "", None), &Rules::new(&Watchlist::default()).unwrap()).relevant);
    }

    #[test]
    fn bad_entries_are_named() {
        let err = Rules::new(&Watchlist { keywords: vec!["ok".into(), " ".into()], ..Default::default() })
            .err()
            .unwrap();
        assert_eq!((err.list, err.index), ("keywords", 1));
    }

    #[test]
    fn drafts_take_the_worst_and_the_union() {
        let r = rules();
        let mut a = adv("Philips IntelliVue", "First.", Some(5.0));
        a.content.cves = vec!["CVE-2026-1".into()];
        a.content.references = vec!["https://a".into()];
        let mut b = adv("Baxter pump", "Second.", Some(9.0));
        b.content.cves = vec!["CVE-2026-1".into(), "CVE-2026-2".into()];
        b.content.tlp = Tlp::Amber;
        let (va, vb) = (assess(&a, &r), assess(&b, &r));
        let d = draft_bulletin(&[(a, Some(va)), (b, Some(vb))]);
        assert_eq!(d.title, "Philips IntelliVue and 1 related advisories");
        assert_eq!(d.threat_level, ThreatLevel::High);
        assert_eq!(d.tlp, Tlp::Amber);
        assert_eq!(d.cves, vec!["CVE-2026-1", "CVE-2026-2"]);
        assert_eq!(d.summary, "First.\n\nSecond.");
        assert!(d.validate().is_ok());
    }
}
