//! CSAF 2.0 documents (OASIS Common Security Advisory Framework) mapped to advisories.
//!
//! This module parses one document. Finding documents (provider metadata, ROLIE feeds,
//! directory distributions) and checking their hashes and signatures is the provider feed's
//! job. The mapping keeps what triage and analysts need: the product tree (vendor, product,
//! version, CPE, PURL, model numbers), CVEs, every CVSS vector (v3.x from `scores`, v4.0
//! where CISA publishes it only as a calculator link), references, TLP, the "Critical
//! infrastructure sectors" note, and reported exploitation.

use crate::ParseError;
use crate::text::html_to_text;
use broadcast_core::{AdvisoryContent, Affected, Cvss, Tlp};
use chrono::{DateTime, Utc};
use serde_json::Value;

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn time(v: Option<&str>, what: &str) -> Result<Option<DateTime<Utc>>, ParseError> {
    match v {
        None => Ok(None),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|d| Some(d.with_timezone(&Utc)))
            .map_err(|e| ParseError(format!("{what} `{t}` is not an RFC 3339 date-time: {e}"))),
    }
}

/// Parses one CSAF 2.0 JSON document. Documents missing what CSAF requires of every
/// document are refused with the reason, never half-read.
pub fn parse_document(source: &str, body: &[u8]) -> Result<AdvisoryContent, ParseError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| ParseError(format!("not JSON: {e}")))?;
    let d = doc.get("document").ok_or_else(|| ParseError("not a CSAF document: no `document`".into()))?;
    match s(d, "csaf_version") {
        Some("2.0") => {}
        Some(v) => return Err(ParseError(format!("CSAF version `{v}` is not supported (2.0 is)"))),
        None => return Err(ParseError("document.csaf_version is missing".into())),
    }
    let tracking = d.get("tracking").ok_or_else(|| ParseError("document.tracking is missing".into()))?;
    let id = s(tracking, "id")
        .filter(|x| !x.trim().is_empty())
        .ok_or_else(|| ParseError("document.tracking.id is missing".into()))?;
    let title = s(d, "title")
        .filter(|x| !x.trim().is_empty())
        .ok_or_else(|| ParseError(format!("{id}: document.title is missing")))?;
    if s(d, "category").is_none_or(|c| c.trim().is_empty()) {
        return Err(ParseError(format!("{id}: document.category is missing")));
    }
    if d.get("publisher").is_none() {
        return Err(ParseError(format!("{id}: document.publisher is missing")));
    }
    let published = time(s(tracking, "initial_release_date"), "tracking.initial_release_date")?;
    let updated = time(s(tracking, "current_release_date"), "tracking.current_release_date")?;
    super::csaf_checks::mandatory(&doc).map_err(|e| ParseError(format!("{id}: {e}")))?;

    let mut a = AdvisoryContent::new(source, id.trim(), html_to_text(title));
    a.published = published;
    a.updated = updated;
    a.tlp = s(d.get("distribution").and_then(|x| x.get("tlp")).unwrap_or(&Value::Null), "label")
        .and_then(|l| l.parse().ok())
        .unwrap_or(Tlp::Clear);

    let mut summary: Vec<String> = Vec::new();
    for n in arr(d, "notes") {
        let (cat, text, note_title) =
            (s(n, "category"), s(n, "text").unwrap_or(""), s(n, "title").unwrap_or(""));
        if note_title.eq_ignore_ascii_case("Critical infrastructure sectors") {
            a.sectors = split_sectors(text);
        } else if matches!(cat, Some("summary" | "description")) && !text.trim().is_empty() {
            summary.push(html_to_text(text));
        }
    }
    let mut refs: Vec<String> = Vec::new();
    let push_ref = |u: &str, refs: &mut Vec<String>| {
        if !u.is_empty() && !refs.iter().any(|r| r == u) {
            refs.push(u.to_owned());
        }
    };
    for r in arr(d, "references") {
        push_ref(s(r, "url").unwrap_or(""), &mut refs);
    }

    // Product tree: product id -> affected product.
    let mut products: Vec<(String, Affected)> = Vec::new();
    if let Some(tree) = doc.get("product_tree") {
        for b in arr(tree, "branches") {
            walk(b, &mut Affected::default(), &mut products);
        }
        for p in arr(tree, "full_product_names") {
            if let Some(pid) = s(p, "product_id") {
                let mut af =
                    Affected { product: s(p, "name").unwrap_or("").to_owned(), ..Affected::default() };
                helper(p, &mut af);
                products.push((pid.to_owned(), af));
            }
        }
    }

    let mut vuln_text: Vec<String> = Vec::new();
    let mut affected_ids: Vec<String> = Vec::new();
    for v in arr(&doc, "vulnerabilities") {
        if let Some(cve) = s(v, "cve")
            && !a.cves.iter().any(|c| c == cve)
        {
            a.cves.push(cve.to_owned());
        }
        for n in arr(v, "notes") {
            if matches!(s(n, "category"), Some("description" | "summary"))
                && let Some(t) = s(n, "text")
            {
                let t = html_to_text(t);
                if !t.is_empty() && !vuln_text.contains(&t) {
                    vuln_text.push(t);
                }
            }
        }
        for r in arr(v, "remediations") {
            let details = html_to_text(s(r, "details").unwrap_or(""));
            if details.is_empty() {
                continue;
            }
            let category = s(r, "category").unwrap_or("remediation").replace('_', " ");
            let mut line = format!("{category}: {details}");
            if let Some(url) = s(r, "url") {
                line.push_str(&format!(" ({url})"));
            }
            if !a.remediations.contains(&line) {
                a.remediations.push(line);
            }
        }
        for sc in arr(v, "scores") {
            for key in ["cvss_v3", "cvss_v4"] {
                if let Some(vec) = sc.get(key).and_then(|c| s(c, "vectorString")) {
                    add_vector(&mut a.cvss_vectors, vec);
                }
            }
        }
        for r in arr(v, "references") {
            let url = s(r, "url").unwrap_or("");
            // CISA publishes CVSS v4 vectors only as FIRST calculator links.
            if let Some(i) = url.find("#CVSS:") {
                add_vector(&mut a.cvss_vectors, &url[i + 1..]);
            } else {
                push_ref(url, &mut refs);
            }
        }
        for t in arr(v, "threats") {
            if s(t, "category") == Some("exploit_status") {
                let details = s(t, "details").unwrap_or("").to_ascii_lowercase();
                let negated =
                    ["no known", "not known", "no public", "not been"].iter().any(|n| details.contains(n));
                if !negated && details.contains("exploit") {
                    a.exploited = true;
                }
            }
        }
        if let Some(status) = v.get("product_status") {
            for key in ["known_affected", "first_affected", "last_affected", "under_investigation"] {
                for pid in arr(status, key).iter().filter_map(Value::as_str) {
                    if !affected_ids.iter().any(|x| x == pid) {
                        affected_ids.push(pid.to_owned());
                    }
                }
            }
        }
    }
    // Affected products: those named in a product status, or every product when the
    // document lists none.
    for (pid, af) in &products {
        if (affected_ids.is_empty() || affected_ids.contains(pid)) && !a.affected.contains(af) {
            a.affected.push(af.clone());
        }
    }
    let mut text = summary;
    text.extend(vuln_text.into_iter().take(8));
    a.summary = text.join("\n\n");
    a.references = refs;
    a.cvss = a
        .cvss_vectors
        .iter()
        .filter_map(|v| {
            v.parse::<cvss::Cvss>().ok().map(|c| Cvss { vector: Some(v.clone()), score: c.score() })
        })
        .max_by(|x, y| x.score.total_cmp(&y.score));
    a.validate().map_err(ParseError)?;
    Ok(a)
}

fn add_vector(list: &mut Vec<String>, v: &str) {
    let v = v.trim();
    if v.parse::<cvss::Cvss>().is_ok() && !list.iter().any(|x| x == v) {
        list.push(v.to_owned());
    }
}

/// "Critical Manufacturing, Energy, Healthcare and Public Health, and Water and Wastewater
/// Systems" → sectors. CISA's sector names that contain "and" or commas are kept whole.
fn split_sectors(text: &str) -> Vec<String> {
    const WHOLE: [&str; 4] = [
        "Healthcare and Public Health",
        "Water and Wastewater Systems",
        "Food and Agriculture",
        "Nuclear Reactors, Materials, and Waste",
    ];
    let mut protected = text.to_owned();
    for (i, name) in WHOLE.iter().enumerate() {
        protected = protected.replace(name, &format!("\u{1}{i}\u{1}"));
    }
    protected
        .split([',', ';'])
        .flat_map(|part| part.split(" and "))
        .map(|p| {
            let mut p = p.trim().trim_start_matches("and ").trim().to_owned();
            for (i, name) in WHOLE.iter().enumerate() {
                p = p.replace(&format!("\u{1}{i}\u{1}"), name);
            }
            p
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// Walks a CSAF branch, carrying vendor / product / version down to each product.
fn walk(branch: &Value, ctx: &mut Affected, out: &mut Vec<(String, Affected)>) {
    let name = s(branch, "name").unwrap_or("");
    let mut here = ctx.clone();
    match s(branch, "category") {
        Some("vendor") => here.vendor = name.to_owned(),
        Some("product_name") | Some("product_family") => {
            here.product =
                if here.product.is_empty() { name.to_owned() } else { format!("{} {name}", here.product) }
        }
        Some("product_version") | Some("product_version_range") => here.version = Some(name.to_owned()),
        _ => {}
    }
    if let Some(p) = branch.get("product") {
        let mut af = here.clone();
        if af.product.is_empty() {
            af.product = s(p, "name").unwrap_or("").to_owned();
        }
        helper(p, &mut af);
        if let Some(pid) = s(p, "product_id") {
            out.push((pid.to_owned(), af));
        }
    }
    for b in arr(branch, "branches") {
        walk(b, &mut here, out);
    }
}

fn helper(p: &Value, af: &mut Affected) {
    if let Some(h) = p.get("product_identification_helper") {
        af.cpe = s(h, "cpe").map(str::to_owned);
        af.purl = s(h, "purl").map(str::to_owned);
        for key in ["model_numbers", "skus"] {
            af.models.extend(arr(h, key).iter().filter_map(Value::as_str).map(str::to_owned));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACS: &[u8] = include_bytes!("../../tests/fixtures/icsma-24-200-01.json");
    const ICSA: &[u8] = include_bytes!("../../tests/fixtures/icsa-17-089-01.json");
    const OASIS_CISCO: &[u8] = include_bytes!("../../tests/fixtures/cisco-sa-20180328-smi2.json");

    #[test]
    fn maps_a_cisa_medical_advisory() {
        let a = parse_document("cisa-csaf", PACS).unwrap();
        assert_eq!(a.external_id, "ICSMA-24-200-01");
        assert_eq!(a.title, "Philips Vue PACS");
        assert_eq!(a.sectors, vec!["Healthcare and Public Health"]);
        assert_eq!(a.tlp, Tlp::Clear);
        assert_eq!(a.affected[0].vendor, "Philips");
        assert_eq!(a.affected[0].product, "Vue PACS");
        assert_eq!(a.affected[0].version.as_deref(), Some("<12.2.8.410"));
        assert!(a.cves.contains(&"CVE-2020-36518".to_owned()));
        assert!(a.cvss_vectors.iter().any(|v| v.starts_with("CVSS:4.0/")), "{:?}", a.cvss_vectors);
        assert!(a.cvss_vectors.iter().any(|v| v.starts_with("CVSS:3.1/")));
        assert!(a.cvss.as_ref().unwrap().score >= 9.0);
        assert!(a.summary.starts_with("Successful exploitation"), "{}", a.summary);
        assert!(!a.references.iter().any(|r| r.contains("first.org/cvss/calculator")));
        assert!(!a.exploited);
        assert_eq!(a.published.unwrap().to_rfc3339(), "2024-07-18T06:00:00+00:00");
        // Remediations, each once although every vulnerability repeats them.
        assert_eq!(a.remediations[0], "mitigation: Philips recommends the following mitigations:");
        assert!(
            a.remediations.iter().any(|r| r.starts_with("vendor fix: For CVE-2023-40704 and CVE-2023-40539"))
        );
        assert_eq!(a.remediations.len(), 6, "{:#?}", a.remediations);
    }

    #[test]
    fn splits_sector_lists() {
        let a = parse_document("cisa-csaf", ICSA).unwrap();
        assert_eq!(
            a.sectors,
            vec![
                "Critical Manufacturing",
                "Energy",
                "Healthcare and Public Health",
                "Water and Wastewater Systems"
            ]
        );
    }

    #[test]
    fn sector_names_with_and_and_commas_stay_whole() {
        assert_eq!(
            split_sectors("Energy, Nuclear Reactors, Materials, and Waste, and Food and Agriculture"),
            vec!["Energy", "Nuclear Reactors, Materials, and Waste", "Food and Agriculture"]
        );
    }

    #[test]
    fn reads_identification_helpers() {
        let a = parse_document("oasis", OASIS_CISCO).unwrap();
        assert!(a.affected.iter().any(|p| p.vendor == "Cisco"), "{:?}", a.affected);
    }

    #[test]
    fn refuses_what_is_not_csaf() {
        let e = parse_document("x", br#"{"document": {"csaf_version": "1.2"}}"#).unwrap_err();
        assert!(e.0.contains("1.2"), "{e}");
        let e = parse_document("x", br#"{"document": {"csaf_version": "2.0", "tracking": {"id": "A-1"}}}"#)
            .unwrap_err();
        assert_eq!(e.0, "A-1: document.title is missing");
        assert!(parse_document("x", b"<html>").unwrap_err().0.starts_with("not JSON"));
        let bad_date =
            br#"{"document": {"csaf_version": "2.0", "title": "t", "category": "csaf_base", "publisher": {},
            "tracking": {"id": "A-2", "initial_release_date": "yesterday"}}}"#;
        assert!(parse_document("x", bad_date).unwrap_err().0.contains("yesterday"));
    }
}
