//! NVD CVE API 2.0 records mapped to advisories.
//!
//! This module maps records and pages; the incremental feed (date windows, paging, rate
//! limits, resuming) wraps it. NVD gives no title, so the title is the CVE id and the first
//! sentence of the description. Vulnerable CPEs from `configurations` become affected
//! products (vendor and product from the CPE, so triage can match them exactly), and CISA's
//! KEV fields, which NVD carries, become the KEV listing.

use crate::ParseError;
use broadcast_core::{AdvisoryContent, Affected, Cvss, KevListing};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// NVD times have no zone (`2023-10-10T14:15:10.753`) and are UTC.
fn nvd_time(t: Option<&str>) -> Option<DateTime<Utc>> {
    let t = t?;
    NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
        .map(|n| n.and_utc())
        .ok()
        .or_else(|| DateTime::parse_from_rfc3339(t).ok().map(|d| d.with_timezone(&Utc)))
}

/// `microsoft_exchange` → `microsoft exchange`.
fn cpe_name(part: &str) -> String {
    part.replace("\\", "").replace('_', " ")
}

/// Maps one CVE record (`{"cve": {...}}` as in a page, or the bare `cve` object).
pub fn parse_cve(source: &str, record: &Value) -> Result<AdvisoryContent, ParseError> {
    let c = record.get("cve").unwrap_or(record);
    let id = s(c, "id").ok_or_else(|| ParseError("NVD record without `id`".into()))?;
    let description = arr(c, "descriptions")
        .iter()
        .find(|d| s(d, "lang") == Some("en"))
        .and_then(|d| s(d, "value"))
        .unwrap_or("")
        .trim()
        .to_owned();
    let first_sentence: String = description.split(". ").next().unwrap_or("").chars().take(140).collect();
    let title = if first_sentence.is_empty() {
        id.to_owned()
    } else {
        format!("{id}: {}", first_sentence.trim_end_matches('.'))
    };
    let mut a = AdvisoryContent::new(source, id, title);
    a.summary = description;
    a.published = nvd_time(s(c, "published"));
    a.updated = nvd_time(s(c, "lastModified"));
    a.cves = vec![id.to_owned()];
    a.references = arr(c, "references").iter().filter_map(|r| s(r, "url")).map(str::to_owned).collect();
    if let Some(metrics) = c.get("metrics") {
        for key in ["cvssMetricV40", "cvssMetricV31", "cvssMetricV30"] {
            for m in arr(metrics, key) {
                if let Some(v) = m.get("cvssData").and_then(|d| s(d, "vectorString"))
                    && !a.cvss_vectors.iter().any(|x| x == v)
                    && v.parse::<cvss::Cvss>().is_ok()
                {
                    a.cvss_vectors.push(v.to_owned());
                }
            }
        }
    }
    a.cvss = a
        .cvss_vectors
        .iter()
        .filter_map(|v| {
            v.parse::<cvss::Cvss>().ok().map(|p| Cvss { vector: Some(v.clone()), score: p.score() })
        })
        .max_by(|x, y| x.score.total_cmp(&y.score));
    for cfg in arr(c, "configurations") {
        for node in arr(cfg, "nodes") {
            for m in arr(node, "cpeMatch") {
                if m.get("vulnerable").and_then(Value::as_bool) != Some(true) {
                    continue;
                }
                let Some(criteria) = s(m, "criteria") else { continue };
                let parts: Vec<&str> = criteria.split(':').collect();
                if parts.len() < 5 {
                    continue;
                }
                let mut version: Vec<String> = Vec::new();
                for (k, label) in [
                    ("versionStartIncluding", ">="),
                    ("versionStartExcluding", ">"),
                    ("versionEndIncluding", "<="),
                    ("versionEndExcluding", "<"),
                ] {
                    if let Some(v) = s(m, k) {
                        version.push(format!("{label}{v}"));
                    }
                }
                if version.is_empty() && parts.len() > 5 && parts[5] != "*" && parts[5] != "-" {
                    version.push(parts[5].to_owned());
                }
                let af = Affected {
                    vendor: cpe_name(parts[3]),
                    product: cpe_name(parts[4]),
                    version: (!version.is_empty()).then(|| version.join(" ")),
                    cpe: Some(criteria.to_owned()),
                    ..Affected::default()
                };
                if !a.affected.iter().any(|x| x.cpe == af.cpe && x.version == af.version) {
                    a.affected.push(af);
                }
            }
        }
    }
    if let Some(added) = s(c, "cisaExploitAdd").and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) {
        a.kev = Some(KevListing {
            date_added: added,
            due_date: s(c, "cisaActionDue").and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()),
            ransomware: false,
        });
    }
    a.validate().map_err(ParseError)?;
    Ok(a)
}

/// Maps a CVE API 2.0 response page. Records that cannot be mapped are refused with the
/// reason; the rest of the page is kept.
pub fn parse_page(source: &str, body: &[u8]) -> Result<crate::Parsed, ParseError> {
    let page: Value = serde_json::from_slice(body).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let vulns = page
        .get("vulnerabilities")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError("not an NVD CVE API 2.0 response: no `vulnerabilities`".into()))?;
    let mut out = crate::Parsed::default();
    for (n, v) in vulns.iter().enumerate() {
        match parse_cve(source, v) {
            Ok(a) => out.items.push(a),
            Err(e) => out.refused.push(format!("record {}: {e}", n + 1)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_citrix_bleed_with_cpes_and_kev() {
        let v: Value =
            serde_json::from_slice(include_bytes!("../../tests/fixtures/nvd-CVE-2023-4966.json")).unwrap();
        let a = parse_cve("nvd", &v).unwrap();
        assert_eq!(a.external_id, "CVE-2023-4966");
        assert!(a.title.starts_with("CVE-2023-4966: Sensitive information disclosure"), "{}", a.title);
        assert!(a.title.contains("NetScaler") && a.title.chars().count() <= 160, "{}", a.title);
        let k = a.kev.as_ref().unwrap();
        assert_eq!(k.date_added.to_string(), "2023-10-18");
        assert_eq!(k.due_date.unwrap().to_string(), "2023-11-08");
        assert!(
            a.affected
                .iter()
                .any(|p| p.vendor == "citrix" && p.product == "netscaler application delivery controller")
        );
        assert!(a.affected.iter().all(|p| p.cpe.as_deref().is_some_and(|c| c.starts_with("cpe:2.3:"))));
        assert!(a.cvss.as_ref().unwrap().score >= 9.0);
        assert_eq!(a.published.unwrap().to_rfc3339(), "2023-10-10T14:15:10.977+00:00");
    }

    #[test]
    fn maps_a_real_page() {
        let p = parse_page("nvd", include_bytes!("../../tests/fixtures/nvd-page.json")).unwrap();
        assert_eq!(p.items.len(), 38);
        assert!(p.refused.is_empty(), "{:?}", p.refused);
        assert!(p.items.iter().all(|a| a.external_id.starts_with("CVE-")));
        assert!(parse_page("nvd", b"{\"format\": \"NVD_CVE\"}").unwrap_err().0.contains("vulnerabilities"));
    }
}
