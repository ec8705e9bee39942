//! Advisories: what a source said about a vulnerability, normalised.

use crate::ids::AdvisoryId;
use crate::tlp::Tlp;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A CVSS rating as given by a source: the vector when known, and the base score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cvss {
    /// e.g. `CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H`
    pub vector: Option<String>,
    /// Base score, 0.0–10.0.
    pub score: f64,
}

/// An affected product as the source names and identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Affected {
    pub vendor: String,
    pub product: String,
    /// Version or version range as given (`<12.2.8.410`, `all versions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CPE 2.3 name, when the source gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpe: Option<String>,
    /// Package URL, when the source gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purl: Option<String>,
    /// Model numbers and SKUs the source lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

impl Affected {
    pub fn named(vendor: impl Into<String>, product: impl Into<String>) -> Affected {
        Affected { vendor: vendor.into(), product: product.into(), ..Affected::default() }
    }
}

/// One entry of CISA's Known Exploited Vulnerabilities catalog: the CVE, its listing, and
/// the catalog's names for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KevEntry {
    pub cve: String,
    pub listing: KevListing,
    pub vendor: String,
    pub product: String,
    pub name: String,
}

/// A CISA Known Exploited Vulnerabilities listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KevListing {
    pub date_added: chrono::NaiveDate,
    #[serde(default)]
    pub due_date: Option<chrono::NaiveDate>,
    /// "Known" use in ransomware campaigns.
    #[serde(default)]
    pub ransomware: bool,
}

/// The content of one advisory as a feed reports it. Feeds produce these; the store keys
/// them by `(source, external_id)` and keeps each distinct content as a revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdvisoryContent {
    /// The feed id from config that produced it.
    pub source: String,
    /// The source's own identifier (RSS guid, Atom id, CSAF tracking id…).
    pub external_id: String,
    pub title: String,
    /// Plain text summary (feed HTML is reduced to text by the feed parser).
    pub summary: String,
    pub published: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
    pub references: Vec<String>,
    pub cves: Vec<String>,
    pub cvss: Option<Cvss>,
    pub affected: Vec<Affected>,
    pub tlp: Tlp,
    /// Every CVSS vector the source gives (v3.x and v4.0), for triage to parse and score.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cvss_vectors: Vec<String>,
    /// Critical-infrastructure sectors the source says are affected (CISA's note).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sectors: Vec<String>,
    /// Listed in CISA's KEV catalog.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kev: Option<KevListing>,
    /// The source reports exploitation in the wild.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exploited: bool,
    /// What the source says to do (CSAF remediations: "vendor_fix: Update to 4.2"), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remediations: Vec<String>,
    /// Set when a partner organisation reported this as an incident (not a feed advisory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<IncidentReport>,
}

/// Who reported an incident, and what they said beyond the title and description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncidentReport {
    pub org_id: String,
    pub org_name: String,
    /// `low`, `medium`, `high` or `critical`, as the reporter judged it.
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub affected_systems: Vec<String>,
    /// How to reach the reporter (free text: name, phone, email).
    #[serde(default)]
    pub contact: Option<String>,
}

impl AdvisoryContent {
    /// A minimal advisory; handy for tests and for feeds that fill fields one by one.
    pub fn new(source: impl Into<String>, external_id: impl Into<String>, title: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            external_id: external_id.into(),
            title: title.into(),
            summary: String::new(),
            published: None,
            updated: None,
            references: Vec::new(),
            cves: Vec::new(),
            cvss: None,
            affected: Vec::new(),
            tlp: Tlp::Clear,
            cvss_vectors: Vec::new(),
            sectors: Vec::new(),
            kev: None,
            exploited: false,
            remediations: Vec::new(),
            incident: None,
        }
    }

    /// What changed since `old`, in words for an analyst: "CVSS 7.5 → 9.8", "added to KEV",
    /// "new affected product: Acme Pump".
    pub fn changes_since(&self, old: &AdvisoryContent) -> Vec<String> {
        let mut out = Vec::new();
        if old.title != self.title {
            out.push(format!("title changed to “{}”", self.title));
        }
        let score = |c: &AdvisoryContent| c.cvss.as_ref().map(|v| v.score);
        match (score(old), score(self)) {
            (Some(a), Some(b)) if (a - b).abs() > f64::EPSILON => out.push(format!("CVSS {a:.1} → {b:.1}")),
            (None, Some(b)) => out.push(format!("CVSS {b:.1} added")),
            (Some(a), None) => out.push(format!("CVSS {a:.1} removed")),
            _ => {}
        }
        for cve in self.cves.iter().filter(|c| !old.cves.contains(c)) {
            out.push(format!("{cve} added"));
        }
        for a in self.affected.iter().filter(|a| !old.affected.contains(a)) {
            out.push(format!("new affected product: {} {}", a.vendor, a.product).trim_end().to_owned());
        }
        match (&old.kev, &self.kev) {
            (None, Some(_)) => out.push("added to KEV".into()),
            (Some(a), Some(b)) if a.due_date != b.due_date => out.push("KEV due date changed".into()),
            _ => {}
        }
        if !old.exploited && self.exploited {
            out.push("now reported exploited".into());
        }
        if old.summary != self.summary {
            out.push("summary edited".into());
        }
        if old.references.len() != self.references.len() {
            out.push(format!("references {} → {}", old.references.len(), self.references.len()));
        }
        if out.is_empty() {
            out.push("minor changes".into());
        }
        out
    }

    /// Checks the invariants every stored advisory must meet. Feeds call this so that a
    /// malformed item is refused with a reason instead of being stored half-way.
    pub fn validate(&self) -> Result<(), String> {
        if self.source.trim().is_empty() {
            return Err("advisory has no source".into());
        }
        if self.external_id.trim().is_empty() {
            return Err(format!("advisory `{}` has no identifier (guid, id or link)", self.title));
        }
        if self.title.trim().is_empty() {
            return Err(format!("advisory `{}` has no title", self.external_id));
        }
        if let Some(c) = &self.cvss
            && !(0.0..=10.0).contains(&c.score)
        {
            return Err(format!("advisory `{}` has CVSS score {} outside 0–10", self.external_id, c.score));
        }
        Ok(())
    }
}

/// A stored advisory: its content at the latest revision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: AdvisoryId,
    /// 1 for the first content seen, +1 for each change.
    pub revision: i32,
    pub first_seen: DateTime<Utc>,
    pub last_changed: DateTime<Utc>,
    #[serde(flatten)]
    pub content: AdvisoryContent,
}

/// Finds CVE identifiers (`CVE-YYYY-NNNN…`) in free text, upper-cased, de-duplicated, in
/// order of first appearance.
pub fn extract_cve_ids(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i + 13 <= bytes.len() {
        let window = &bytes[i..i + 4];
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if starts_word && window.eq_ignore_ascii_case(b"CVE-") {
            let year = &bytes[i + 4..i + 8];
            if year.iter().all(u8::is_ascii_digit) && bytes[i + 8] == b'-' {
                let mut j = i + 9;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                let digits = j - (i + 9);
                let ends_word = j == bytes.len() || !bytes[j].is_ascii_alphanumeric();
                if (4..=7).contains(&digits) && ends_word {
                    let id = text[i..j].to_ascii_uppercase();
                    if !out.contains(&id) {
                        out.push(id);
                    }
                    i = j;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cves_in_text() {
        let t = "Fixes CVE-2024-1234 and cve-2023-45678; see CVE-2024-1234 again. Not XCVE-2024-1111 or CVE-24-1.";
        assert_eq!(extract_cve_ids(t), vec!["CVE-2024-1234", "CVE-2023-45678"]);
        assert!(extract_cve_ids("").is_empty());
        assert_eq!(extract_cve_ids("CVE-2021-44228"), vec!["CVE-2021-44228"]);
        assert!(extract_cve_ids("CVE-2021-123").is_empty());
    }

    #[test]
    fn changes_read_like_an_analyst_would_say_them() {
        let mut old = AdvisoryContent::new("s", "e", "T");
        old.cvss = Some(Cvss { vector: None, score: 7.5 });
        let mut new = old.clone();
        new.cvss = Some(Cvss { vector: None, score: 9.8 });
        new.kev = Some(KevListing {
            date_added: chrono::NaiveDate::from_ymd_opt(2026, 1, 2).unwrap(),
            due_date: None,
            ransomware: false,
        });
        new.affected.push(Affected::named("Acme", "Pump"));
        assert_eq!(
            new.changes_since(&old),
            ["CVSS 7.5 → 9.8", "new affected product: Acme Pump", "added to KEV"]
        );
        assert_eq!(old.changes_since(&old), ["minor changes"]);
    }

    #[test]
    fn validate_names_the_problem() {
        let mut a = AdvisoryContent::new("rss-1", "guid-1", "Title");
        assert!(a.validate().is_ok());
        a.title = "  ".into();
        assert!(a.validate().unwrap_err().contains("guid-1"));
        let mut b = AdvisoryContent::new("rss-1", "", "A title");
        assert!(b.validate().unwrap_err().contains("no identifier"));
        b.external_id = "x".into();
        b.cvss = Some(Cvss { vector: None, score: 11.0 });
        assert!(b.validate().unwrap_err().contains("outside"));
    }
}
