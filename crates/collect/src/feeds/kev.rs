//! CISA's Known Exploited Vulnerabilities catalog
//! (<https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json>).
//!
//! The catalog is not a list of advisories: each entry marks a CVE as exploited in the wild,
//! with the date CISA added it, the remediation due date and known ransomware use. The feed
//! returns the entries; the store applies each to every advisory naming the CVE (a new
//! revision, "added to KEV", so triage looks at it again) and remembers it for advisories
//! that arrive later. A malformed entry is refused with its reason; the rest are used.

use crate::{ConfigError, Feed, FeedRequest, ParseError, Parsed};
use broadcast_core::{KevEntry, KevListing, extract_cve_ids};
use chrono::NaiveDate;
use serde::Deserialize;

fn default_schedule() -> String {
    // CISA updates the catalog a few times a week; hourly is plenty and polite.
    "0 7 * * * *".into()
}
fn default_url() -> String {
    "https://www.cisa.gov/sites/default/files/feeds/known_exploited_vulnerabilities.json".into()
}

/// `type = "kev"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KevConfig {
    pub id: String,
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "crate::yes")]
    pub enabled: bool,
}

pub struct KevFeed {
    id: String,
    url: url::Url,
}

impl KevFeed {
    pub fn new(cfg: &KevConfig) -> Result<Self, ConfigError> {
        Ok(KevFeed { id: cfg.id.clone(), url: crate::feed_url(&cfg.id, &cfg.url, true)? })
    }
}

impl Feed for KevFeed {
    fn id(&self) -> &str {
        &self.id
    }
    fn request(&self) -> FeedRequest {
        FeedRequest { url: self.url.clone(), headers: vec![("accept".into(), "application/json".into())] }
    }
    fn parse(&self, body: &[u8]) -> Result<Parsed, ParseError> {
        parse_catalog(body)
    }
}

#[derive(Deserialize)]
struct Catalog {
    #[serde(rename = "catalogVersion")]
    catalog_version: Option<String>,
    vulnerabilities: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    #[serde(rename = "cveID")]
    cve_id: String,
    #[serde(default)]
    vendor_project: String,
    #[serde(default)]
    product: String,
    #[serde(default)]
    vulnerability_name: String,
    date_added: String,
    #[serde(default)]
    due_date: Option<String>,
    #[serde(default)]
    known_ransomware_campaign_use: Option<String>,
}

fn date(what: &str, cve: &str, s: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|e| format!("{cve}: {what} `{s}` is not YYYY-MM-DD: {e}"))
}

/// Parses the catalog JSON. Not JSON, or no `vulnerabilities` array, is an error (nothing is
/// applied); a bad entry is refused with the reason.
pub fn parse_catalog(body: &[u8]) -> Result<Parsed, ParseError> {
    let catalog: Catalog = serde_json::from_slice(body).map_err(|e| {
        ParseError(format!("not a KEV catalog (expected JSON with a `vulnerabilities` array): {e}"))
    })?;
    let mut out = Parsed::default();
    for (i, raw) in catalog.vulnerabilities.into_iter().enumerate() {
        let e: Entry = match serde_json::from_value(raw) {
            Ok(e) => e,
            Err(err) => {
                out.refused.push(format!("entry {i}: {err}"));
                continue;
            }
        };
        let cve = e.cve_id.trim().to_ascii_uppercase();
        if extract_cve_ids(&cve) != [cve.clone()] {
            out.refused.push(format!("entry {i}: `{}` is not a CVE id", e.cve_id));
            continue;
        }
        let listing = (|| -> Result<KevListing, String> {
            Ok(KevListing {
                date_added: date("dateAdded", &cve, &e.date_added)?,
                due_date: e
                    .due_date
                    .as_deref()
                    .filter(|d| !d.trim().is_empty())
                    .map(|d| date("dueDate", &cve, d))
                    .transpose()?,
                ransomware: e
                    .known_ransomware_campaign_use
                    .as_deref()
                    .is_some_and(|k| k.eq_ignore_ascii_case("known")),
            })
        })();
        match listing {
            Ok(listing) => out.kev.push(KevEntry {
                cve,
                listing,
                vendor: e.vendor_project.trim().to_owned(),
                product: e.product.trim().to_owned(),
                name: e.vulnerability_name.trim().to_owned(),
            }),
            Err(why) => out.refused.push(why),
        }
    }
    if out.kev.is_empty() && !out.refused.is_empty() {
        return Err(ParseError(format!(
            "KEV catalog {}: no usable entry ({} refused, first: {})",
            catalog.catalog_version.unwrap_or_default(),
            out.refused.len(),
            out.refused[0]
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_become_listings_and_bad_ones_are_named() {
        let body = br#"{"catalogVersion":"t","count":3,"vulnerabilities":[
            {"cveID":"CVE-2024-1234","vendorProject":"Acme","product":"Pump","vulnerabilityName":"Acme Pump RCE",
             "dateAdded":"2024-09-10","dueDate":"2024-10-01","knownRansomwareCampaignUse":"Known"},
            {"cveID":"cve-2023-0001","dateAdded":"2023-01-02","knownRansomwareCampaignUse":"Unknown"},
            {"cveID":"CVE-2024-9","dateAdded":"2024-01-01"},
            {"cveID":"CVE-2024-5555","dateAdded":"10/09/2024"}
        ]}"#;
        let p = parse_catalog(body).unwrap();
        assert_eq!(p.kev.len(), 2);
        assert_eq!(p.kev[0].cve, "CVE-2024-1234");
        assert_eq!(p.kev[0].listing.due_date, NaiveDate::from_ymd_opt(2024, 10, 1));
        assert!(p.kev[0].listing.ransomware);
        assert_eq!(p.kev[1].cve, "CVE-2023-0001", "upper-cased");
        assert!(!p.kev[1].listing.ransomware);
        assert_eq!(p.refused.len(), 2);
        assert!(p.refused[0].contains("`CVE-2024-9` is not a CVE id"), "{:?}", p.refused);
        assert!(p.refused[1].contains("CVE-2024-5555: dateAdded `10/09/2024`"), "{:?}", p.refused);
    }

    #[test]
    fn not_a_catalog_is_an_error() {
        for body in [&b"<html>maintenance</html>"[..], br#"{"title":"x"}"#, b""] {
            let err = parse_catalog(body).unwrap_err();
            assert!(err.0.contains("not a KEV catalog"), "{err}");
        }
        let err = parse_catalog(br#"{"vulnerabilities":[{"cveID":"x","dateAdded":"y"}]}"#).unwrap_err();
        assert!(err.0.contains("no usable entry"), "{err}");
    }
}
