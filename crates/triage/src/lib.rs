//! # broadcast-triage
//!
//! Pure policy: [`assess`] decides whether an advisory matters to health and care, how
//! urgent it is, and why; [`group::group`] folds bursts into one candidate;
//! [`draft_bulletin`] turns assessed advisories into a bulletin draft. No I/O, no clock, no
//! environment: the server passes `now` and the compiled [`Rules`], and stores the result.
//!
//! ## The model (details and evaluation in `docs/TRIAGE.md`)
//!
//! - **Matches.** Every watchlist name and alias is found in one Aho-Corasick pass per field
//!   (title and summary, affected vendors, affected products and models), case-insensitively
//!   at word boundaries; CPEs and package URLs match exactly. Each entry counts once, at its
//!   best confidence: *exact* (identifier, weight × 1.5), *probable* (vendor and product both
//!   named, or the vendor named as an affected product's vendor; weight × 1), *keyword* (a
//!   name in the text only; vendors and products at half weight, keyword entries at their
//!   weight; all keyword-level matches together capped at 4). General-IT entries count only
//!   at exact or probable confidence.
//! - **Sector.** A "Healthcare and Public Health" sector adds 3 divided by the number of
//!   sectors listed (an advisory for every sector is not a health advisory).
//! - **Age.** An advisory first published more than `old_after_days` before `now` counts at
//!   half weight unless it was added to KEV within that time.
//! - **Relevant** when the age-adjusted health score reaches `relevance_threshold` (3).
//! - **Score** for ranking: (health + urgency) × age, where urgency is KEV 2, reported
//!   exploitation 1, and the CVSS score / 10.
//! - **Threat level**: see [`threat_level`].
//!
//! ```
//! use broadcast_triage::{Rules, Tuning, Watchlist, assess};
//! # use broadcast_core::*;
//! let watchlist: Watchlist = toml::from_str(r#"
//!     [[vendor]]
//!     name = "Philips"
//!     category = "medical_device"
//!     weight = 3
//! "#).unwrap();
//! let rules = Rules::new(&watchlist, Tuning::default()).unwrap();
//! # let t = chrono::DateTime::UNIX_EPOCH;
//! # let mut c = AdvisoryContent::new("f", "1", "Philips IntelliVue flaw");
//! # c.affected.push(Affected::named("Philips", "IntelliVue"));
//! # c.cvss = Some(Cvss { vector: None, score: 9.1 });
//! # let adv = Advisory { id: AdvisoryId::from_suffix("a"), revision: 1, first_seen: t, last_changed: t, content: c };
//! let verdict = assess(&adv, &rules, t);
//! assert!(verdict.relevant);
//! assert_eq!(verdict.threat_level, ThreatLevel::High);
//! assert_eq!(verdict.reasons[0], "affected vendor: Philips (medical device)");
//! ```
#![forbid(unsafe_code)]

mod assess;
pub mod eval;
pub mod group;
pub mod issue;
mod watchlist;

pub use assess::{
    Confidence, CvssSignal, Match, assess, cvss_signal, describe_vector, find_matches, threat_level,
};
pub use watchlist::{Category, Entry, Kind, Rules, RulesError, Tuning, Watchlist};

use broadcast_core::{Advisory, Assessment, BulletinContent, ThreatLevel, Tlp};

/// The key storm control groups by: the first affected vendor and product, lower-cased. An
/// advisory that names no product in structured form (most RSS items) is its own group:
/// folding unrelated items from one feed together would hide them.
pub fn group_key(adv: &Advisory) -> String {
    match adv.content.affected.first() {
        Some(a) if !(a.vendor.trim().is_empty() && a.product.trim().is_empty()) => {
            format!("{}/{}", a.vendor.trim(), a.product.trim()).to_lowercase()
        }
        _ => format!("advisory:{}", adv.id),
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
    let mut remediations: Vec<String> = Vec::new();
    let mut summary = Vec::new();
    for (a, _) in items {
        for cve in &a.content.cves {
            if !cves.contains(cve) {
                cves.push(cve.clone());
            }
        }
        // Only web links: a feed's `javascript:` or `data:` "reference" never reaches a bulletin.
        for r in a.content.references.iter().filter(|r| broadcast_core::is_web_url(r)) {
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
        for r in &a.content.remediations {
            if !remediations.contains(r) {
                remediations.push(r.clone());
            }
        }
    }
    // The sources' own remediations when they give any; otherwise the standing advice.
    let remediation = if remediations.is_empty() {
        "Apply the vendor's updates or mitigations as soon as possible, and check exposed systems for signs of \
         compromise."
            .to_owned()
    } else {
        remediations.iter().map(|r| format!("- {r}")).collect::<Vec<_>>().join("\n")
    };
    BulletinContent {
        title,
        threat_level: level,
        tlp,
        summary: summary.join("\n\n"),
        affected_products: affected,
        remediation,
        references,
        cves,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broadcast_core::{AdvisoryContent, AdvisoryId, Affected, Cvss, KevListing};
    use chrono::{DateTime, TimeZone, Utc};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap()
    }

    fn adv(title: &str, summary: &str, cvss: Option<f64>) -> Advisory {
        let mut c = AdvisoryContent::new("f", title, title);
        c.summary = summary.into();
        c.cvss = cvss.map(|score| Cvss { vector: None, score });
        c.published = Some(now() - chrono::Duration::days(3));
        Advisory {
            id: AdvisoryId::from_suffix("x"),
            revision: 3,
            first_seen: now(),
            last_changed: now(),
            content: c,
        }
    }

    fn rules() -> Rules {
        let w: Watchlist = toml::from_str(
            r#"
            [[vendor]]
            name = "Philips"
            category = "medical_device"
            aliases = ["Philips Healthcare"]
            weight = 3
            [[vendor]]
            name = "Baxter"
            category = "medical_device"
            weight = 3
            [[product]]
            name = "IntelliVue"
            vendor = "Philips"
            category = "medical_device"
            weight = 4
            cpe = ["cpe:2.3:h:philips:intellivue"]
            [[product]]
            name = "Exchange Server"
            vendor = "Microsoft"
            category = "general_it"
            weight = 3
            purl = ["pkg:nuget/microsoft.exchange"]
            [[keyword]]
            name = "infusion pump"
            category = "device_kind"
            aliases = ["syringe pump"]
            weight = 2
            [[keyword]]
            name = "DICOM"
            category = "healthcare_protocol"
            weight = 2
            [[keyword]]
            name = "hospital"
            category = "healthcare"
            weight = 1
        "#,
        )
        .unwrap();
        Rules::new(&w, Tuning::default()).unwrap()
    }

    #[test]
    fn confidences_exact_probable_keyword() {
        let r = rules();
        let mut a = adv("Monitor flaw", "", Some(9.8));
        a.content.affected.push(Affected {
            vendor: "Philips".into(),
            product: "IntelliVue MX40".into(),
            cpe: Some("cpe:2.3:h:philips:intellivue:b.0:*:*:*:*:*:*:*".into()),
            ..Affected::default()
        });
        let m = find_matches(&a, &r);
        assert_eq!(m[0].confidence, Confidence::Exact);
        assert_eq!(m[1].confidence, Confidence::Probable);
        let v = assess(&a, &r, now());
        assert_eq!(
            v.reasons[0],
            "exact product match: IntelliVue (cpe:2.3:h:philips:intellivue:b.0:*:*:*:*:*:*:*)"
        );
        assert_eq!(v.reasons[1], "affected vendor: Philips (medical device)");
        assert!(v.relevant);
        assert_eq!(v.threat_level, ThreatLevel::High);

        // Vendor and product named in text: probable. Product alone: keyword, half weight.
        let v = assess(&adv("Philips Healthcare IntelliVue", "", None), &r, now());
        assert!(
            v.reasons.iter().any(|x| x == "probable product match: Philips IntelliVue (medical device)"),
            "{:?}",
            v.reasons
        );
        let v = assess(&adv("IntelliVue gateway", "", None), &r, now());
        assert!(!v.relevant);
        assert!(
            v.reasons.iter().any(|x| x == "product named in the text: IntelliVue (medical device; weak)"),
            "{:?}",
            v.reasons
        );
    }

    #[test]
    fn word_boundaries_aliases_and_case() {
        let r = rules();
        assert!(find_matches(&adv("Philipsburg water", "", None), &r).is_empty());
        let m = find_matches(&adv("a syringe pump and a dicom viewer", "", None), &r);
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|x| x.confidence == Confidence::Keyword));
    }

    #[test]
    fn general_it_needs_more_than_a_mention() {
        let r = rules();
        assert!(
            find_matches(&adv("runs next to Exchange Server", "", None), &r)[0].confidence
                == Confidence::Keyword
        );
        assert!(assess(&adv("runs next to Exchange Server", "", Some(9.0)), &r, now()).score < 1.0 + 1e-9);
        let mut a = adv("Mail flaw", "", Some(9.0));
        a.content.affected.push(Affected {
            purl: Some("pkg:nuget/Microsoft.Exchange.Core@15".into()),
            ..Affected::default()
        });
        let v = assess(&a, &r, now());
        assert!(v.relevant, "{:?}", v.reasons);
        assert!(v.reasons[0].starts_with("exact product match: Exchange Server"));
    }

    #[test]
    fn sectors_count_by_how_many_are_listed() {
        let r = rules();
        let mut only = adv("Gateway", "", Some(5.0));
        only.content.sectors = vec!["Healthcare and Public Health".into()];
        let v = assess(&only, &r, now());
        assert!(v.relevant);
        assert!(
            v.reasons.contains(
                &"sector: Healthcare and Public Health (the only one of 1 sectors listed)".to_owned()
            )
        );
        let mut many = only.clone();
        many.content.sectors = ["Energy", "Healthcare and Public Health", "Water and Wastewater Systems"]
            .map(String::from)
            .to_vec();
        assert!(!assess(&many, &r, now()).relevant);
    }

    #[test]
    fn keyword_mentions_are_capped() {
        let r = rules();
        let v = assess(&adv("hospital hospital", "infusion pump DICOM syringe pump", None), &r, now());
        // 1 + 2 + 2 = 5, capped at 4: relevant, but no more.
        assert!(v.relevant);
        assert!((v.score - 4.0).abs() < 1e-9, "{}", v.score);
    }

    #[test]
    fn drafts_use_the_sources_remediations() {
        let mut a = adv("Acme pump", "s", None);
        let plain = draft_bulletin(&[(a.clone(), None)]);
        assert!(plain.remediation.starts_with("Apply the vendor's updates"), "{}", plain.remediation);
        a.content.remediations =
            vec!["vendor fix: Update to 4.2".into(), "mitigation: Block port 104".into()];
        let d = draft_bulletin(&[(a.clone(), None), (a, None)]);
        assert_eq!(d.remediation, "- vendor fix: Update to 4.2\n- mitigation: Block port 104");
    }

    #[test]
    fn partner_incidents_always_reach_an_analyst() {
        let r = rules();
        let mut a = adv("Ransomware on the pharmacy file server", "Files encrypted overnight.", None);
        let quiet = assess(&a, &r, now());
        assert!(!quiet.relevant, "as plain text it would not be relevant: {:?}", quiet.reasons);
        a.content.incident = Some(broadcast_core::IncidentReport {
            org_id: "org_x".into(),
            org_name: "Riverside GP".into(),
            severity: Some("high".into()),
            occurred_at: None,
            affected_systems: vec![],
            contact: None,
        });
        let v = assess(&a, &r, now());
        assert!(v.relevant);
        assert_eq!(v.threat_level, ThreatLevel::High);
        assert!(v.score >= quiet.score + 10.0);
        assert!(v.reasons[0].starts_with("incident reported by Riverside GP"), "{:?}", v.reasons);
        a.content.incident.as_mut().unwrap().severity = None;
        assert_eq!(assess(&a, &r, now()).threat_level, ThreatLevel::Medium, "unstated: at least medium");
    }

    #[test]
    fn kev_exploitation_and_cvss_reasons() {
        let r = rules();
        let mut a = adv("Baxter infusion pump", "", None);
        // No headline score: every vector is parsed and scored, the highest kept.
        a.content.cvss_vectors = vec![
            "CVSS:4.0/AV:A/AC:L/AT:N/PR:N/UI:N/VC:N/VI:N/VA:H/SC:N/SI:N/SA:N".into(),
            "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H".into(),
            "CVSS:9.9/garbage".into(),
        ];
        a.content.kev = Some(KevListing {
            date_added: chrono::NaiveDate::from_ymd_opt(2026, 5, 20).unwrap(),
            due_date: chrono::NaiveDate::from_ymd_opt(2026, 6, 10),
            ransomware: true,
        });
        let v = assess(&a, &r, now());
        assert!(
            v.reasons.contains(
                &"in KEV since 2026-05-20, remediation due 2026-06-10, known use in ransomware campaigns"
                    .to_owned()
            ),
            "{:?}",
            v.reasons
        );
        assert!(
            v.reasons.contains(&"CVSS 9.8 (v3.1): network, no privileges, no user interaction".to_owned()),
            "{:?}",
            v.reasons
        );
        assert_eq!(v.threat_level, ThreatLevel::High);
    }

    #[test]
    fn an_update_to_an_old_advisory_does_not_alarm_on_its_own() {
        let r = rules();
        let mut old = adv("Baxter infusion pump", "", Some(9.8));
        old.content.published = Some(now() - chrono::Duration::days(4 * 365));
        let fresh = assess(&adv("Baxter infusion pump", "", Some(9.8)), &r, now());
        let v = assess(&old, &r, now());
        assert!(fresh.relevant && !v.relevant, "{:?}", v.reasons);
        assert!(v.reasons.iter().any(|x| x.contains("an update to an old issue")));
        assert!(v.score < fresh.score / 1.9);
        // ...unless it has just been added to KEV.
        old.content.kev =
            Some(KevListing { date_added: now().date_naive(), due_date: None, ransomware: false });
        assert!(assess(&old, &r, now()).relevant);
    }

    #[test]
    fn threat_level_boundaries() {
        use ThreatLevel::*;
        assert_eq!(threat_level(Some(10.0), false), High);
        assert_eq!(threat_level(Some(7.0), false), High);
        assert_eq!(threat_level(Some(6.9), false), Medium);
        assert_eq!(threat_level(Some(4.0), false), Medium);
        assert_eq!(threat_level(Some(3.9), false), Low);
        assert_eq!(threat_level(Some(0.1), false), Low);
        assert_eq!(threat_level(Some(0.0), false), Information);
        assert_eq!(threat_level(None, false), Information);
        assert_eq!(threat_level(None, true), Medium);
        assert_eq!(threat_level(Some(3.9), true), Medium);
        assert_eq!(threat_level(Some(4.0), true), High);
        assert_eq!(threat_level(Some(9.0), true), High);
    }

    #[test]
    fn bad_entries_are_named() {
        let bad =
            |t: &str| Rules::new(&toml::from_str::<Watchlist>(t).unwrap(), Tuning::default()).err().unwrap();
        let e = bad("[[keyword]]\nname = \"x\"\ncategory = \"healthcare\"");
        assert_eq!((e.list, e.name.as_str()), ("keyword", "x"));
        let e = bad("[[product]]\nname = \"Foo\"\ncategory = \"health_it\"\ncpe = [\"philips:foo\"]");
        assert!(e.why.contains("philips:foo"));
        let e = bad("[[vendor]]\nname = \"Foo\"\ncategory = \"health_it\"\nweight = -1");
        assert!(e.why.contains("weight"));
        assert!(toml::from_str::<Watchlist>("[[vendor]]\nname = \"Foo\"\ncategory = \"space\"").is_err());
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
        let (va, vb) = (assess(&a, &r, now()), assess(&b, &r, now()));
        let d = draft_bulletin(&[(a, Some(va)), (b, Some(vb))]);
        assert_eq!(d.title, "Philips IntelliVue and 1 related advisories");
        assert_eq!(d.threat_level, ThreatLevel::High);
        assert_eq!(d.tlp, Tlp::Amber);
        assert_eq!(d.cves, vec!["CVE-2026-1", "CVE-2026-2"]);
        assert_eq!(d.summary, "First.\n\nSecond.");
        assert!(d.validate().is_ok());
    }
}
