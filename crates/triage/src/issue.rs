//! One advisory per real issue: which identifiers make two records the same issue (the
//! store keeps the records per source and joins them by these keys; ADR 0008).

use broadcast_core::AdvisoryContent;

/// The identifiers that say which real issue this record is about. Two records with a
/// key in common are the same issue (see docs/COLLECTORS.md, "One advisory per issue"):
///
/// - the record's own id when it is an advisory id (ICSMA-24-200-01, CVE-2024-1234,
///   GHSA-…, ALAS-2018-1106, cisco-sa-…), not a URL or a bare number;
/// - GHSA ids it names;
/// - its CVE id only when it is about exactly one CVE. A bulletin listing several CVEs
///   (often a bundled component's) does not claim to *be* any of them, so two bulletins
///   sharing a component's CVE never fuse, and nothing merges transitively through them.
pub fn identity_keys(a: &AdvisoryContent) -> Vec<String> {
    let mut keys = Vec::new();
    let own = a.external_id.trim().to_ascii_uppercase();
    let looks_like_id = (6..=64).contains(&own.len())
        && own.starts_with(|c: char| c.is_ascii_alphabetic())
        && own.contains('-')
        && own.bytes().any(|b| b.is_ascii_digit())
        && own.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.' | b'_'));
    if looks_like_id && !own.starts_with("HTTP") {
        keys.push(own);
    }
    let text = format!("{} {} {}", a.external_id, a.title, a.summary);
    for g in find_ghsa_ids(&text) {
        if !keys.contains(&g) {
            keys.push(g);
        }
    }
    if let [only] = a.cves.as_slice()
        && !keys.contains(only)
    {
        keys.push(only.clone());
    }
    keys
}

/// GHSA ids (`GHSA-xxxx-xxxx-xxxx`) in text, upper-cased.
pub fn find_ghsa_ids(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let upper = text.to_ascii_uppercase();
    let b = upper.as_bytes();
    let mut i = 0;
    while let Some(pos) = upper[i..].find("GHSA-") {
        let start = i + pos;
        let end = start + 19;
        if end <= b.len() {
            let cand = &upper[start..end];
            let parts: Vec<&str> = cand[5..].split('-').collect();
            let ok = parts.len() == 3
                && parts.iter().all(|p| p.len() == 4 && p.bytes().all(|c| c.is_ascii_alphanumeric()))
                && b.get(end).is_none_or(|c| !c.is_ascii_alphanumeric());
            if ok && !out.iter().any(|o| o == cand) {
                out.push(cand.to_owned());
            }
        }
        i = start + 5;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keys_follow_the_join_rule() {
        let mut csaf = AdvisoryContent::new("csaf", "ICSMA-24-200-01", "Pump");
        csaf.cves = vec!["CVE-2024-0001".into()];
        assert_eq!(identity_keys(&csaf), ["ICSMA-24-200-01", "CVE-2024-0001"]);
        let mut bundle = AdvisoryContent::new("vendor", "https://vendor.example/sa/10", "OpenSSL update");
        bundle.cves = vec!["CVE-2024-0001".into(), "CVE-2024-0009".into()];
        assert!(identity_keys(&bundle).is_empty(), "URL ids and a CVE list are not identities");
        let mut osv = AdvisoryContent::new("osv", "GHSA-abcd-1234-wxyz", "lib");
        osv.summary = "also GHSA-abcd-1234-wxyz and GHSA-zzzz-9999-yyyy; not GHSA-short".into();
        assert_eq!(identity_keys(&osv), ["GHSA-ABCD-1234-WXYZ", "GHSA-ZZZZ-9999-YYYY"]);
        assert!(
            identity_keys(&AdvisoryContent::new("rss", "12345", "x")).is_empty(),
            "bare numbers are not ids"
        );
        assert_eq!(find_ghsa_ids("ghsa-abcd-1234-wxyzq"), Vec::<String>::new());
    }
}
