//! Every file of the corpus's `rss/` folder (copied into `fixtures/rss-corpus/`, see
//! PROVENANCE.md) either parses, with readable text, or fails with an error that says what
//! the body is. Plus the XML attacks a feed could carry.

use broadcast_collect::feeds::rss::parse_feed;
use broadcast_core::Tlp;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rss-corpus");

enum Expect {
    /// Items, refused, and a text the first item's title must contain.
    Items(usize, usize, &'static str),
    Error(&'static str),
}

#[test]
fn every_corpus_feed_parses_or_fails_clearly() {
    use Expect::*;
    let cvrf = Error("a CVRF 1.x document, not a feed: CVRF is not read on purpose");
    let cases: &[(&str, Expect)] = &[
        ("rss_0.91_encoding_2.xml", Items(1, 0, "Comitê completa 150 dias")),
        ("rss_0.91_missing_id.xml", Items(1, 0, "Oferta de Empleo Público")),
        ("rss_1.0_iso8859.xml", Items(1, 0, "Glasfaserförderung")),
        ("rss_2.0_encoding_1.xml", Items(1, 0, "Revolução nas telas")),
        (
            "rss_2.0_invalid_1.xml",
            Error("not a readable RSS, Atom or JSON feed: the document ends inside <channel> (truncated?)"),
        ),
        ("AtomEscapedHTMLInPreTag.xml", Items(1, 0, "Test entry")),
        ("AtomWithITunesInCDATA.xml", Items(1, 0, "How to set up a podcast RSS feed")),
        // Its items are fine but `</rss>` is missing: a truncated body is refused whole (and
        // fetched again next run) rather than half-read and remembered as seen.
        ("InvalidDateFormat.xml", Error("the document ends inside <rss> (truncated?)")),
        ("encoding.rss", Items(40, 0, "Mãe de utente")),
        ("heise.atom", Items(15, 0, "WildFly 10")),
        ("incomplete-fields.atom", Items(0, 1, "")),
        ("missing-fields.atom", Items(0, 1, "")),
        ("unrecognized.rss", Error("the server sent an HTML page (“Document Moved”), not a feed")),
        // ISO-8859-1 with no XML declaration, and `<rss>` without a version.
        ("uolNoticias.rss", Items(15, 0, "simulações de 2º turno")),
        ("alas2-2_rss.xml", Items(1, 0, "ALAS-2018-939 (critical): kernel")),
        ("rss_1.0_debian.xml", Items(1, 0, "Debian 11")),
        ("cvrf_example_a.xml", cvrf),
        ("cvrf_example_vulnerabilities.xml", Error("a CVRF 1.x document")),
        ("broken-cvrf.xml", Error("a CVRF 1.x document")),
        ("cvrf-openEuler-SA-2022-1693.xml", Error("a CVRF 1.x document")),
        ("cvrf-opensuse-su-2015-0225-1.xml", Error("a CVRF 1.x document")),
        ("cvrf-suse-su-2019-1608-1.xml", Error("a CVRF 1.x document")),
    ];
    let files = std::fs::read_dir(DIR).unwrap().count();
    assert_eq!(files, cases.len(), "every fixture has an expectation");
    for (file, expect) in cases {
        let body = std::fs::read(format!("{DIR}/{file}")).unwrap();
        let got = parse_feed("corpus", Tlp::Clear, &body);
        match (expect, got) {
            (Items(n, refused, title), Ok(p)) => {
                assert_eq!((p.items.len(), p.refused.len()), (*n, *refused), "{file}: {:?}", p.refused);
                if let Some(first) = p.items.first() {
                    assert!(first.title.contains(title), "{file}: title `{}`", first.title);
                    assert!(!first.title.contains('\u{fffd}'), "{file}: mojibake in `{}`", first.title);
                }
                for why in &p.refused {
                    assert!(why.starts_with("entry 1: "), "{file}: refusal names the entry: {why}");
                }
            }
            (Error(msg), Err(e)) => assert!(e.0.contains(msg), "{file}: {e}"),
            (Items(..), Err(e)) => panic!("{file} should parse: {e}"),
            (Error(msg), Ok(p)) => panic!("{file} should fail with `{msg}`, parsed {} items", p.items.len()),
        }
    }
}

#[test]
fn entity_declarations_are_refused_and_nothing_expands() {
    let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<rss version="2.0"><channel><title>&lol3;</title><item><title>&lol3;</title></item></channel></rss>"#;
    let err = parse_feed("x", Tlp::Clear, laughs).unwrap_err();
    assert!(err.0.contains("declares DTD entities: refused"), "{err}");
    // An external entity (file read) is refused the same way.
    let xxe = br#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<rss version="2.0"><channel><title>t</title><item><title>&x;</title></item></channel></rss>"#;
    assert!(parse_feed("x", Tlp::Clear, xxe).unwrap_err().0.contains("DTD entities"));
    // A plain DOCTYPE without entities is harmless and still read.
    let plain = br#"<?xml version="1.0"?><!DOCTYPE rss><rss version="2.0"><channel><title>t</title>
<item><title>CVE-2026-0001 fixed</title><guid>g</guid></item></channel></rss>"#;
    assert_eq!(parse_feed("x", Tlp::Clear, plain).unwrap().items.len(), 1);
    assert!(parse_feed("x", Tlp::Clear, b"   ").unwrap_err().0.contains("empty body"));
}
