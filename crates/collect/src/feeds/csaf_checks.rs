//! The CSAF 2.0 mandatory tests (section 6.1 of the standard) a document must pass before
//! anything of it is stored. Each failure names the test and what failed.
//!
//! Implemented: 6.1.1–6.1.33. 6.1.11 (CWE) is checked against the CWE names in
//! `cwe-names.tsv` (MITRE's CWE list as of 2020, 839 weaknesses) in the one way that cannot
//! misfire on renamed or newer weaknesses: a CWE labelled with *another* weakness's name is
//! refused; unknown ids and old names are read. The OASIS validator's test documents are the
//! test cases (`tests/csaf_mandatory.rs`).

use serde_json::Value;
use std::collections::{HashMap, HashSet};

type Check = Result<(), String>;

/// A CVSS v3 JSON property, its vector metric, and the metric's values with their names.
type Cvss3Property = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

/// CWE names → ids, from MITRE's CWE list (© The MITRE Corporation; see docs/COLLECTORS.md).
static CWE_BY_NAME: std::sync::LazyLock<HashMap<&'static str, &'static str>> =
    std::sync::LazyLock::new(|| {
        include_str!("cwe-names.tsv")
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(id, name)| (name, id))
            .collect()
    });

/// ISO 639-1 language codes.
const ISO_639_1: &str = "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy \
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik \
    io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt \
    my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so \
    sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu";

fn arr(v: &Value, key: &str) -> Vec<Value> {
    v.get(key).and_then(Value::as_array).cloned().unwrap_or_default()
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn fail(test: &str, why: String) -> Check {
    Err(format!("CSAF mandatory test {test} failed: {why}"))
}

/// Every product id defined in the product tree, in definition order (duplicates kept).
fn defined_products(tree: &Value, out: &mut Vec<String>) {
    fn branches(b: &Value, out: &mut Vec<String>) {
        for br in arr(b, "branches") {
            if let Some(id) = br.get("product").and_then(|p| s(p, "product_id")) {
                out.push(id.to_owned());
            }
            branches(&br, out);
        }
    }
    branches(tree, out);
    for p in arr(tree, "full_product_names") {
        if let Some(id) = s(&p, "product_id") {
            out.push(id.to_owned());
        }
    }
    for r in arr(tree, "relationships") {
        if let Some(id) = r.get("full_product_name").and_then(|p| s(p, "product_id")) {
            out.push(id.to_owned());
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

const STATUSES: [&str; 8] = [
    "first_affected",
    "first_fixed",
    "fixed",
    "known_affected",
    "known_not_affected",
    "last_affected",
    "recommended",
    "under_investigation",
];

/// Every product id a document refers to, with where.
fn referenced_products(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let tree = doc.get("product_tree").cloned().unwrap_or(Value::Null);
    for g in arr(&tree, "product_groups") {
        for id in strings(g.get("product_ids")) {
            out.push((id, "product_tree.product_groups".into()));
        }
    }
    for r in arr(&tree, "relationships") {
        for key in ["product_reference", "relates_to_product_reference"] {
            if let Some(id) = s(&r, key) {
                out.push((id.to_owned(), format!("product_tree.relationships.{key}")));
            }
        }
    }
    for (i, v) in arr(doc, "vulnerabilities").iter().enumerate() {
        if let Some(ps) = v.get("product_status") {
            for st in STATUSES {
                for id in strings(ps.get(st)) {
                    out.push((id, format!("vulnerabilities[{i}].product_status.{st}")));
                }
            }
        }
        for key in ["scores", "remediations", "threats", "flags"] {
            let field = if key == "scores" { "products" } else { "product_ids" };
            for x in arr(v, key) {
                for id in strings(x.get(field)) {
                    out.push((id, format!("vulnerabilities[{i}].{key}")));
                }
            }
        }
    }
    out
}

fn referenced_groups(doc: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, v) in arr(doc, "vulnerabilities").iter().enumerate() {
        for key in ["remediations", "threats", "flags"] {
            for x in arr(v, key) {
                for id in strings(x.get("group_ids")) {
                    out.push((id, format!("vulnerabilities[{i}].{key}")));
                }
            }
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
enum Version {
    Int(u64),
    Sem { major: u64, minor: u64, patch: u64, pre: Option<String> },
}

fn version(v: &str) -> Option<Version> {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok().map(Version::Int);
    }
    let core_pre = v.split('+').next()?;
    let (core, pre) = match core_pre.split_once('-') {
        Some((c, p)) => (c, Some(p.to_owned())),
        None => (core_pre, None),
    };
    let parts: Vec<u64> = core.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, minor, patch] => Some(Version::Sem { major: *major, minor: *minor, patch: *patch, pre }),
        _ => None,
    }
}

impl Version {
    fn major(&self) -> u64 {
        match self {
            Version::Int(n) => *n,
            Version::Sem { major, .. } => *major,
        }
    }
    fn pre(&self) -> Option<&str> {
        match self {
            Version::Sem { pre: Some(p), .. } => Some(p),
            _ => None,
        }
    }
    fn is_zero(&self) -> bool {
        self.major() == 0
    }
    /// Ordering key (pre-releases before their release).
    fn key(&self) -> (u64, u64, u64, u8, String) {
        match self {
            Version::Int(n) => (*n, 0, 0, 1, String::new()),
            Version::Sem { major, minor, patch, pre } => {
                (*major, *minor, *patch, u8::from(pre.is_none()), pre.clone().unwrap_or_default())
            }
        }
    }
}

fn strip_build(v: &str) -> &str {
    v.split('+').next().unwrap_or(v)
}

/// 6.1.8 and 6.1.9 for CVSS v2: the required properties, a parsable vector, and the base
/// score it computes to.
fn cvss2_consistent(c: &Value, where_: &str) -> Check {
    for key in ["version", "vectorString", "baseScore"] {
        if c.get(key).is_none() {
            return fail("6.1.8", format!("{where_}: cvss_v2 has no {key}"));
        }
    }
    let vector = s(c, "vectorString").unwrap_or("");
    let Ok(v) = vector.parse::<cvss::v2::Vector>() else {
        return fail("6.1.8", format!("{where_}: `{vector}` is not a CVSS v2 vector"));
    };
    let score = v.score().value();
    let given = c["baseScore"].as_f64().unwrap_or(-1.0);
    if (score - given).abs() > 0.05 {
        return fail("6.1.9", format!("{where_}: baseScore {given} but `{vector}` computes to {score}"));
    }
    Ok(())
}

fn cvss3_consistent(c: &Value, where_: &str) -> Check {
    let Some(vector) = s(c, "vectorString") else {
        return fail("6.1.8", format!("{where_}: cvss_v3 has no vectorString"));
    };
    for key in ["version", "baseScore", "baseSeverity"] {
        if c.get(key).is_none() {
            return fail("6.1.8", format!("{where_}: cvss_v3 has no {key}"));
        }
    }
    let Ok(base) = vector.parse::<cvss::v3::Vector>() else {
        return fail("6.1.8", format!("{where_}: `{vector}` is not a CVSS v3 vector"));
    };
    let declared = s(c, "version").unwrap_or("");
    if !vector.starts_with(&format!("CVSS:{declared}/")) {
        return fail("6.1.8", format!("{where_}: version {declared} does not match `{vector}`"));
    }
    let score = base.base_score().value();
    let given = c["baseScore"].as_f64().unwrap_or(-1.0);
    if (score - given).abs() > 0.05 {
        return fail("6.1.9", format!("{where_}: baseScore {given} but `{vector}` computes to {score}"));
    }
    let severity = base.base_score().severity().to_string().to_ascii_uppercase();
    if s(c, "baseSeverity").is_some_and(|g| !g.eq_ignore_ascii_case(&severity)) {
        return fail(
            "6.1.9",
            format!("{where_}: baseSeverity {} but {score} is {severity}", c["baseSeverity"]),
        );
    }
    // 6.1.10: properties given beside the vector must agree with it.
    let metrics: HashMap<&str, &str> = vector.split('/').skip(1).filter_map(|m| m.split_once(':')).collect();
    let names: [Cvss3Property; 8] = [
        (
            "attackVector",
            "AV",
            &[("N", "NETWORK"), ("A", "ADJACENT_NETWORK"), ("L", "LOCAL"), ("P", "PHYSICAL")],
        ),
        ("attackComplexity", "AC", &[("L", "LOW"), ("H", "HIGH")]),
        ("privilegesRequired", "PR", &[("N", "NONE"), ("L", "LOW"), ("H", "HIGH")]),
        ("userInteraction", "UI", &[("N", "NONE"), ("R", "REQUIRED")]),
        ("scope", "S", &[("U", "UNCHANGED"), ("C", "CHANGED")]),
        ("confidentialityImpact", "C", &[("N", "NONE"), ("L", "LOW"), ("H", "HIGH")]),
        ("integrityImpact", "I", &[("N", "NONE"), ("L", "LOW"), ("H", "HIGH")]),
        ("availabilityImpact", "A", &[("N", "NONE"), ("L", "LOW"), ("H", "HIGH")]),
    ];
    for (prop, metric, values) in names {
        if let (Some(given), Some(code)) = (s(c, prop), metrics.get(metric)) {
            let expected = values.iter().find(|(k, _)| k == code).map(|(_, v)| *v).unwrap_or("");
            if given != expected {
                return fail(
                    "6.1.10",
                    format!("{where_}: {prop} {given} but the vector says {metric}:{code}"),
                );
            }
        }
    }
    Ok(())
}

/// The products of an entry (flag, threat, remediation): its product ids and those of its
/// groups.
fn products_of(x: &Value, groups: &HashMap<String, Vec<String>>) -> Vec<String> {
    let mut out = strings(x.get("product_ids"));
    for g in strings(x.get("group_ids")) {
        out.extend(groups.get(&g).cloned().unwrap_or_default());
    }
    out
}

/// Runs the mandatory tests on a parsed CSAF document.
pub fn mandatory(doc: &Value) -> Check {
    let d = &doc["document"];
    let tree = doc.get("product_tree").cloned().unwrap_or(Value::Null);
    let vulns = arr(doc, "vulnerabilities");
    let group_members: HashMap<String, Vec<String>> = arr(&tree, "product_groups")
        .iter()
        .filter_map(|g| s(g, "group_id").map(|id| (id.to_owned(), strings(g.get("product_ids")))))
        .collect();

    // 6.1.1, 6.1.2
    let mut defined = Vec::new();
    defined_products(&tree, &mut defined);
    let mut seen = HashSet::new();
    for id in &defined {
        if !seen.insert(id.clone()) {
            return fail("6.1.2", format!("product id {id} is defined more than once"));
        }
    }
    for (id, where_) in referenced_products(doc) {
        if !seen.contains(&id) {
            return fail("6.1.1", format!("{where_} refers to product id {id}, which is not defined"));
        }
    }
    // 6.1.3: a relationship must not define a product in terms of itself.
    for r in arr(&tree, "relationships") {
        let own = r.get("full_product_name").and_then(|p| s(p, "product_id"));
        if own.is_some()
            && (s(&r, "product_reference") == own || s(&r, "relates_to_product_reference") == own)
        {
            return fail("6.1.3", format!("product id {} is defined in terms of itself", own.unwrap_or("")));
        }
    }
    // 6.1.4, 6.1.5
    let mut groups = HashSet::new();
    for g in arr(&tree, "product_groups") {
        if let Some(id) = s(&g, "group_id")
            && !groups.insert(id.to_owned())
        {
            return fail("6.1.5", format!("group id {id} is defined more than once"));
        }
    }
    for (id, where_) in referenced_groups(doc) {
        if !groups.contains(&id) {
            return fail("6.1.4", format!("{where_} refers to group id {id}, which is not defined"));
        }
    }
    let mut cves = HashSet::new();
    for (i, v) in vulns.iter().enumerate() {
        // 6.1.6: a product in two contradicting status groups.
        if let Some(ps) = v.get("product_status") {
            let classes: [(&str, &[&str]); 4] = [
                ("affected", &["first_affected", "known_affected", "last_affected"]),
                ("not affected", &["known_not_affected"]),
                ("fixed", &["first_fixed", "fixed"]),
                ("under investigation", &["under_investigation"]),
            ];
            let mut class_of: HashMap<String, &str> = HashMap::new();
            for (class, keys) in classes {
                for k in keys {
                    for id in strings(ps.get(*k)) {
                        if let Some(prev) = class_of.insert(id.clone(), class)
                            && prev != class
                        {
                            return fail(
                                "6.1.6",
                                format!("vulnerabilities[{i}]: product {id} is both {prev} and {class}"),
                            );
                        }
                    }
                }
            }
        }
        // 6.1.7: one score per CVSS version per product.
        let mut scored: HashSet<(String, String)> = HashSet::new();
        for (j, sc) in arr(v, "scores").iter().enumerate() {
            for (key, ver) in [("cvss_v2", "2.0"), ("cvss_v3", "3")] {
                let Some(c) = sc.get(key) else { continue };
                let version = s(c, "version").unwrap_or(ver).to_owned();
                for p in strings(sc.get("products")) {
                    if !scored.insert((p.clone(), version.clone())) {
                        return fail(
                            "6.1.7",
                            format!("vulnerabilities[{i}]: product {p} has two CVSS {version} scores"),
                        );
                    }
                }
                let at = format!("vulnerabilities[{i}].scores[{j}]");
                if key == "cvss_v3" {
                    cvss3_consistent(c, &at)?;
                } else {
                    cvss2_consistent(c, &at)?;
                }
            }
        }
        // 6.1.11: a CWE carrying another weakness's name.
        if let Some(cwe) = v.get("cwe")
            && let (Some(id), Some(name)) = (s(cwe, "id"), s(cwe, "name"))
            && let Some(other) = CWE_BY_NAME.get(name)
            && *other != id
        {
            return fail(
                "6.1.11",
                format!("vulnerabilities[{i}]: {id} is named “{name}”, which is {other}'s name"),
            );
        }
        // 6.1.23
        if let Some(c) = s(v, "cve")
            && !cves.insert(c.to_owned())
        {
            return fail("6.1.23", format!("{c} is used by more than one vulnerability"));
        }
        // 6.1.24: the same party on the same date twice.
        let mut inv = HashSet::new();
        for x in arr(v, "involvements") {
            let key = (s(&x, "party").unwrap_or("").to_owned(), s(&x, "date").unwrap_or("").to_owned());
            if !inv.insert(key.clone()) {
                return fail(
                    "6.1.24",
                    format!("vulnerabilities[{i}]: involvement of {} on {} twice", key.0, key.1),
                );
            }
        }
        // 6.1.29, 6.1.32
        for r in arr(v, "remediations") {
            if strings(r.get("product_ids")).is_empty() && strings(r.get("group_ids")).is_empty() {
                return fail(
                    "6.1.29",
                    format!("vulnerabilities[{i}]: a remediation names no product or group"),
                );
            }
        }
        let mut justified: HashSet<String> = HashSet::new();
        for f in arr(v, "flags") {
            let products = products_of(&f, &group_members);
            if strings(f.get("product_ids")).is_empty() && strings(f.get("group_ids")).is_empty() {
                return fail("6.1.32", format!("vulnerabilities[{i}]: a flag names no product or group"));
            }
            // 6.1.33
            for p in products {
                if !justified.insert(p.clone()) {
                    return fail(
                        "6.1.33",
                        format!("vulnerabilities[{i}]: product {p} has more than one VEX justification flag"),
                    );
                }
            }
        }
    }
    // 6.1.12: a language tag: a known two-letter (ISO 639-1) or a three-letter primary
    // language, then alphanumeric subtags.
    for key in ["lang", "source_lang"] {
        if let Some(l) = s(d, key) {
            let mut parts = l.split('-');
            let primary = parts.next().unwrap_or("").to_ascii_lowercase();
            let known = match primary.len() {
                2 => ISO_639_1.split(' ').any(|c| c == primary),
                3 => primary.bytes().all(|b| b.is_ascii_alphabetic()),
                _ => false,
            };
            let ok = known
                && parts.all(|p| (1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
            if !ok {
                return fail("6.1.12", format!("document.{key} `{l}` is not a language tag"));
            }
        }
    }
    // 6.1.28
    if s(d, "lang").is_some() && s(d, "lang") == s(d, "source_lang") {
        return fail("6.1.28", "document.lang equals document.source_lang: not a translation".into());
    }
    // 6.1.15
    if d["publisher"]["category"] == "translator" && s(d, "source_lang").is_none() {
        return fail("6.1.15", "a translator published it but document.source_lang is missing".into());
    }
    // 6.1.13, 6.1.25: product identification helpers.
    let mut helpers = Vec::new();
    fn collect_helpers(b: &Value, out: &mut Vec<Value>) {
        for br in arr(b, "branches") {
            if let Some(h) = br.get("product").and_then(|p| p.get("product_identification_helper")) {
                out.push(h.clone());
            }
            collect_helpers(&br, out);
        }
    }
    collect_helpers(&tree, &mut helpers);
    for p in arr(&tree, "full_product_names") {
        if let Some(h) = p.get("product_identification_helper") {
            helpers.push(h.clone());
        }
    }
    for r in arr(&tree, "relationships") {
        if let Some(h) = r.get("full_product_name").and_then(|p| p.get("product_identification_helper")) {
            helpers.push(h.clone());
        }
    }
    for h in &helpers {
        if let Some(purl) = s(h, "purl") {
            let ok = purl.strip_prefix("pkg:").and_then(|r| r.split_once('/')).is_some_and(|(ty, rest)| {
                !ty.is_empty() && ty.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b)) && {
                    let name = rest.split(['@', '?', '#']).next().unwrap_or("");
                    !name.is_empty()
                        && !name.ends_with('/')
                        && !name.split('/').next_back().unwrap_or("").is_empty()
                }
            });
            if !ok {
                return fail("6.1.13", format!("`{purl}` is not a valid package URL"));
            }
        }
        for fh in arr(h, "hashes") {
            let mut algs = HashSet::new();
            for x in arr(&fh, "file_hashes") {
                if let Some(a) = s(&x, "algorithm")
                    && !algs.insert(a.to_owned())
                {
                    return fail("6.1.25", format!("hash algorithm {a} used twice for one file"));
                }
            }
        }
    }
    // 6.1.26: the category must not be a profile's name spelt differently.
    let category = s(d, "category").unwrap_or("");
    let profiles = [
        "csaf_base",
        "csaf_security_incident_response",
        "csaf_informational_advisory",
        "csaf_security_advisory",
        "csaf_vex",
    ];
    if !profiles.contains(&category) {
        let norm: String =
            category.chars().filter(|c| !matches!(c, '-' | '_' | ' ')).collect::<String>().to_lowercase();
        let reserved = ["securityincidentresponse", "informationaladvisory", "securityadvisory", "vex"];
        if reserved.contains(&norm.as_str()) || norm.starts_with("csaf") {
            return fail(
                "6.1.26",
                format!(
                    "document.category `{category}` is a profile's name spelt differently, or starts with csaf_"
                ),
            );
        }
    }
    // 6.1.27.x: the profiles' own requirements.
    let notes = arr(d, "notes");
    let has_note = |cats: &[&str]| notes.iter().any(|n| s(n, "category").is_some_and(|c| cats.contains(&c)));
    if matches!(
        category,
        "csaf_security_incident_response"
            | "csaf_informational_advisory"
            | "csaf_security_advisory"
            | "csaf_vex"
    ) {
        if category != "csaf_security_advisory" && category != "csaf_vex" {
            if !has_note(&["description", "details", "general", "summary"]) {
                return fail(
                    "6.1.27.1",
                    format!("a {category} needs a description, details, general or summary note"),
                );
            }
            if !arr(d, "references").iter().any(|r| s(r, "category") == Some("external")) {
                return fail("6.1.27.2", format!("a {category} needs an external reference"));
            }
        }
        if category == "csaf_informational_advisory" && !vulns.is_empty() {
            return fail("6.1.27.3", "an informational advisory has no vulnerabilities".into());
        }
        if matches!(category, "csaf_security_advisory" | "csaf_vex") {
            if doc.get("product_tree").is_none() {
                return fail("6.1.27.4", format!("a {category} needs a product tree"));
            }
            if vulns.is_empty() {
                return fail("6.1.27.11", format!("a {category} needs vulnerabilities"));
            }
            for (i, v) in vulns.iter().enumerate() {
                if arr(v, "notes").is_empty() {
                    return fail("6.1.27.5", format!("vulnerabilities[{i}] has no notes"));
                }
                let Some(ps) = v.get("product_status") else {
                    return fail("6.1.27.6", format!("vulnerabilities[{i}] has no product_status"));
                };
                if category == "csaf_vex" {
                    if !["fixed", "known_affected", "known_not_affected", "under_investigation"]
                        .iter()
                        .any(|k| ps.get(*k).is_some())
                    {
                        return fail("6.1.27.7", format!("vulnerabilities[{i}] has no VEX product status"));
                    }
                    if v.get("cve").is_none() && v.get("ids").is_none() {
                        return fail("6.1.27.8", format!("vulnerabilities[{i}] has neither cve nor ids"));
                    }
                    let flagged: HashSet<String> =
                        arr(v, "flags").iter().flat_map(|f| products_of(f, &group_members)).collect();
                    let threatened: HashSet<String> = arr(v, "threats")
                        .iter()
                        .filter(|t| s(t, "category") == Some("impact"))
                        .flat_map(|t| products_of(t, &group_members))
                        .collect();
                    for p in strings(ps.get("known_not_affected")) {
                        if !flagged.contains(&p) && !threatened.contains(&p) {
                            return fail(
                                "6.1.27.9",
                                format!(
                                    "vulnerabilities[{i}]: {p} is not affected without an impact statement"
                                ),
                            );
                        }
                    }
                    let remediated: HashSet<String> =
                        arr(v, "remediations").iter().flat_map(|r| products_of(r, &group_members)).collect();
                    for p in strings(ps.get("known_affected")) {
                        if !remediated.contains(&p) {
                            return fail(
                                "6.1.27.10",
                                format!("vulnerabilities[{i}]: {p} is affected without an action statement"),
                            );
                        }
                    }
                }
            }
        }
    }
    // 6.1.31: a product_version branch must name one version, not a range.
    fn version_ranges(b: &Value) -> Option<String> {
        for br in arr(b, "branches") {
            // A `vers:` string is a machine-readable range that belongs in
            // product_version_range; CISA publishes them as product_version, and we read
            // those rather than refuse CISA's advisories. Words and operators are refused.
            if s(&br, "category") == Some("product_version")
                && !s(&br, "name").unwrap_or("").starts_with("vers:")
            {
                let name = s(&br, "name").unwrap_or("").to_lowercase();
                let range = ["<", ">"].iter().any(|c| name.contains(c))
                    || name.split_whitespace().any(|w| {
                        ["after", "all", "before", "earlier", "later", "prior", "versions"].contains(&w)
                    });
                if range {
                    return Some(name);
                }
            }
            if let Some(n) = version_ranges(&br) {
                return Some(n);
            }
        }
        None
    }
    if let Some(n) = version_ranges(&tree) {
        return fail("6.1.31", format!("product_version `{n}` is a range (use product_version_range)"));
    }
    revision_history(d)
}

/// 6.1.14, 6.1.16–6.1.22, 6.1.30: the tracking version and revision history.
fn revision_history(d: &Value) -> Check {
    let tracking = &d["tracking"];
    let status = s(tracking, "status").unwrap_or("");
    let doc_version_raw = s(tracking, "version").unwrap_or("");
    let Some(doc_version) = version(doc_version_raw) else {
        return fail(
            "6.1.30",
            format!("tracking.version `{doc_version_raw}` is neither an integer nor semantic version"),
        );
    };
    let mut items: Vec<(String, Version, String)> = Vec::new();
    for r in arr(tracking, "revision_history") {
        let n = s(&r, "number").unwrap_or("");
        let Some(v) = version(n) else {
            return fail(
                "6.1.30",
                format!("revision number `{n}` is neither an integer nor semantic version"),
            );
        };
        items.push((n.to_owned(), v, s(&r, "date").unwrap_or("").to_owned()));
    }
    // 6.1.30: one scheme throughout.
    let int = matches!(doc_version, Version::Int(_));
    if items.iter().any(|(_, v, _)| matches!(v, Version::Int(_)) != int) {
        return fail("6.1.30", "integer and semantic versioning are mixed".into());
    }
    // 6.1.22
    let mut numbers = HashSet::new();
    for (n, _, _) in &items {
        if !numbers.insert(strip_build(n).to_owned()) {
            return fail("6.1.22", format!("revision number {n} appears twice"));
        }
    }
    // 6.1.19
    if let Some((n, _, _)) = items.iter().find(|(_, v, _)| v.pre().is_some()) {
        return fail("6.1.19", format!("revision number {n} is a pre-release"));
    }
    let draft = status == "draft";
    // 6.1.17
    if (doc_version.is_zero() || doc_version.pre().is_some()) && !draft {
        return fail("6.1.17", format!("version {doc_version_raw} needs status draft, not {status}"));
    }
    // 6.1.20
    if !draft && doc_version.pre().is_some() {
        return fail(
            "6.1.20",
            format!("a {status} document's version {doc_version_raw} has a pre-release part"),
        );
    }
    // 6.1.18
    if !draft && let Some((n, _, _)) = items.iter().find(|(_, v, _)| v.is_zero()) {
        return fail("6.1.18", format!("a {status} document has revision {n}"));
    }
    let parse_date = |t: &str| chrono::DateTime::parse_from_rfc3339(t).ok();
    let mut by_date = items.clone();
    by_date.sort_by_key(|(_, v, t)| (parse_date(t), v.key()));
    // 6.1.14
    for w in by_date.windows(2) {
        if w[1].1.key() < w[0].1.key() {
            return fail("6.1.14", format!("revision {} is dated after revision {}", w[0].0, w[1].0));
        }
    }
    // 6.1.16
    if let Some((last, lv, _)) = by_date.last() {
        let same = match (&doc_version, lv) {
            (Version::Int(a), Version::Int(b)) => a == b,
            (
                Version::Sem { major, minor, patch, pre },
                Version::Sem { major: m2, minor: n2, patch: p2, pre: q2 },
            ) => (major, minor, patch) == (m2, n2, p2) && (draft || pre == q2),
            _ => false,
        };
        if !same {
            return fail(
                "6.1.16",
                format!("tracking.version {doc_version_raw} is not the latest revision {last}"),
            );
        }
    }
    // 6.1.21: no gaps in the (major) numbers, starting at 0 or 1.
    let mut majors: Vec<u64> = by_date.iter().map(|(_, v, _)| v.major()).collect();
    majors.dedup();
    if let Some(first) = majors.first()
        && *first > 1
    {
        return fail("6.1.21", format!("the revision history starts at {first}, not 0 or 1"));
    }
    for w in majors.windows(2) {
        if w[1] > w[0] + 1 {
            return fail("6.1.21", format!("the revision history skips from {} to {}", w[0], w[1]));
        }
    }
    Ok(())
}
