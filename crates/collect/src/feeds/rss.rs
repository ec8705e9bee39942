//! RSS 0.9x / 1.0 / 2.0, Atom and JSON Feed, parsed by feed-rs.
//!
//! Each entry becomes one advisory keyed by its guid / Atom id, or by its link when it has
//! none (feed-rs would otherwise invent an id from link + title, and an edited title would
//! then look like a new advisory). An entry with neither id, link nor title is refused.

use super::xmlfeed::Entry;
use crate::text::{find_cvss, html_to_text};
use crate::{ConfigError, Feed, FeedRequest, ParseError, Parsed};
use broadcast_core::{AdvisoryContent, Tlp, extract_cve_ids};
use serde::Deserialize;

fn default_schedule() -> String {
    "0 */15 * * * *".into()
}

/// `type = "rss"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RssConfig {
    pub id: String,
    /// `https://…`, `http://…` or `file:///…`.
    pub url: String,
    /// Cron, seconds first. Default: every 15 minutes.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default = "crate::yes")]
    pub enabled: bool,
    /// TLP to mark this feed's advisories with. Default CLEAR (public feeds).
    #[serde(default)]
    pub tlp: Tlp,
}

pub struct RssFeed {
    id: String,
    url: url::Url,
    tlp: Tlp,
}

impl RssFeed {
    pub fn new(cfg: &RssConfig) -> Result<Self, ConfigError> {
        let url = crate::feed_url(&cfg.id, &cfg.url, true)?;
        Ok(RssFeed { id: cfg.id.clone(), url, tlp: cfg.tlp })
    }
}

impl Feed for RssFeed {
    fn id(&self) -> &str {
        &self.id
    }

    fn request(&self) -> FeedRequest {
        FeedRequest {
            url: self.url.clone(),
            headers: vec![(
                "accept".into(),
                "application/rss+xml, application/atom+xml, application/feed+json, application/xml;q=0.9, */*;q=0.5"
                    .into(),
            )],
        }
    }

    fn parse(&self, body: &[u8]) -> Result<Parsed, ParseError> {
        parse_feed(&self.id, self.tlp, body)
    }
}

/// What is checked before a body reaches the XML parser: things that are not feeds get an
/// error that says what they are, and DTD entity declarations are refused (no expansion
/// tricks). Encodings are [`utf8`]'s business.
fn preflight(body: &[u8]) -> Result<(), ParseError> {
    // The prolog (declaration, DOCTYPE, comments) and the root element's start tag: all
    // that the checks below need, so a large feed costs no more than a small one.
    let root = body
        .windows(2)
        .take(64 * 1024)
        .position(|w| w[0] == b'<' && w[1].is_ascii_alphabetic())
        .unwrap_or(body.len().min(64 * 1024));
    let head_len = body.len().min(root + 512);
    let head = String::from_utf8_lossy(&body[..head_len]);
    let trimmed = head.trim_start_matches('\u{feff}').trim_start();
    // ASCII lower-casing keeps byte offsets, so positions found in `lower` index `trimmed`.
    let lower = trimmed.to_ascii_lowercase();
    if lower.is_empty() {
        return Err(ParseError("empty body: not a feed".into()));
    }
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") || lower.starts_with("<head") {
        let title = match (lower.find("<title>"), lower.find("</title>")) {
            (Some(a), Some(b)) if a + 7 <= b => format!(" (“{}”)", trimmed[a + 7..b].trim()),
            _ => String::new(),
        };
        return Err(ParseError(format!(
            "the server sent an HTML page{title}, not a feed: has the feed moved, or does it need a login?"
        )));
    }
    if lower.contains("<cvrfdoc") || lower.contains(":cvrfdoc") {
        return Err(ParseError(
            "a CVRF 1.x document, not a feed: CVRF is not read on purpose (its publishers, MSRC and SUSE among them, publish CSAF 2.0 now; configure their CSAF provider, type = \"csaf\")".into(),
        ));
    }
    if lower.contains("<!entity") {
        return Err(ParseError("the document declares DTD entities: refused (no entity expansion)".into()));
    }
    Ok(())
}

/// Parses an RSS/Atom/JSON Feed body into advisories from source `source`.
pub fn parse_feed(source: &str, tlp: Tlp, body: &[u8]) -> Result<Parsed, ParseError> {
    preflight(body)?;
    let entries = if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        json_feed_entries(body)?
    } else {
        super::xmlfeed::entries(&utf8(body)?)?
    };
    let mut parsed = Parsed::default();
    for (n, entry) in entries.into_iter().enumerate() {
        let item = advisory(source, tlp, entry);
        match item.validate() {
            Ok(()) => parsed.items.push(item),
            Err(why) => parsed.refused.push(format!("entry {}: {why}", n + 1)),
        }
    }
    Ok(parsed)
}

/// The body as UTF-8 text: transcoded when it declares another encoding (ISO-8859-1,
/// Windows-1252…), and read as Windows-1252 when it is not UTF-8 and declares nothing (the
/// usual culprit: ISO-8859-1 feeds without an XML declaration).
fn utf8(body: &[u8]) -> Result<std::borrow::Cow<'_, str>, ParseError> {
    let prolog_end = body.iter().take(512).position(|&b| b == b'>').unwrap_or(0);
    let prolog = String::from_utf8_lossy(&body[..prolog_end]).to_ascii_lowercase();
    let label = prolog.split_once("encoding=").map(|(_, rest)| {
        rest.trim_start_matches(['"', '\'']).split(['"', '\'', ' ', '?']).next().unwrap_or("").to_owned()
    });
    if let Some(enc) = label.as_deref().and_then(|l| encoding_rs::Encoding::for_label(l.as_bytes()))
        && enc != encoding_rs::UTF_8
    {
        let (text, _, _) = enc.decode(body);
        return Ok(std::borrow::Cow::Owned(text.into_owned()));
    }
    match std::str::from_utf8(body) {
        Ok(t) => Ok(std::borrow::Cow::Borrowed(t.trim_start_matches('\u{feff}'))),
        Err(_) => Ok(std::borrow::Cow::Owned(encoding_rs::WINDOWS_1252.decode(body).0.into_owned())),
    }
}

/// One entry as an advisory: markup reduced to text, keyed by its id (else its first link,
/// else its title), CVEs and CVSS found in the text and categories.
fn advisory(source: &str, tlp: Tlp, entry: Entry) -> AdvisoryContent {
    let title = entry.title.as_deref().map(html_to_text).unwrap_or_default();
    let summary = html_to_text(entry.summary.as_deref().or(entry.content.as_deref()).unwrap_or(""));
    let id =
        if entry.id.trim().is_empty() { entry.links.first().cloned().unwrap_or_default() } else { entry.id };
    let external_id = if !id.trim().is_empty() {
        id.trim().to_owned()
    } else if !title.is_empty() {
        format!("title:{title}")
    } else {
        String::new()
    };
    let mut haystack = format!("{title}\n{summary}");
    for c in &entry.categories {
        haystack.push('\n');
        haystack.push_str(c);
    }
    let mut item = AdvisoryContent::new(source, external_id, title);
    item.summary = summary;
    item.published = entry.published.or(entry.updated);
    item.updated = entry.updated;
    item.references = entry.links;
    item.cves = extract_cve_ids(&haystack);
    item.cvss = find_cvss(&haystack);
    item.tlp = tlp;
    item
}

/// JSON Feed, read by feed-rs, as the same entries the XML reader gives.
fn json_feed_entries(body: &[u8]) -> Result<Vec<Entry>, ParseError> {
    // No invented ids (feed-rs would hash link and title): an entry without an id is keyed
    // by its link, as in RSS.
    let parser = feed_rs::parser::Builder::new().id_generator(|_, _, _| String::new()).build();
    let feed =
        parser.parse(body).map_err(|e| ParseError(format!("not a readable RSS, Atom or JSON feed: {e}")))?;
    Ok(feed
        .entries
        .into_iter()
        .map(|e| Entry {
            id: e.id,
            title: e.title.map(|t| t.content),
            summary: e.summary.map(|s| s.content),
            content: e.content.and_then(|c| c.body),
            links: e.links.into_iter().map(|l| l.href).collect(),
            published: e.published,
            updated: e.updated,
            categories: e.categories.into_iter().map(|c| c.term).collect(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALAS: &[u8] = include_bytes!("../../tests/fixtures/alas-ami-mock_rss.xml");
    const TRUNCATED: &[u8] = include_bytes!("../../tests/fixtures/rss_2.0_invalid_1.xml");
    const HTML_PAGE: &[u8] = include_bytes!("../../tests/fixtures/unrecognized.rss");

    #[test]
    fn parses_a_real_vendor_feed() {
        let p = parse_feed("alas", Tlp::Clear, ALAS).unwrap();
        assert_eq!(p.items.len(), 97);
        assert!(p.refused.is_empty());
        let first = &p.items[0];
        assert!(first.title.starts_with("ALAS-"), "{}", first.title);
        assert!(first.external_id.starts_with("https://alas.aws.amazon.com/"), "{}", first.external_id);
        assert!(!first.cves.is_empty());
        assert!(first.published.is_some());
        // Ids are unique within the feed.
        let mut ids: Vec<_> = p.items.iter().map(|i| i.external_id.clone()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 97);
    }

    #[test]
    fn same_body_parses_the_same() {
        let a = parse_feed("alas", Tlp::Clear, ALAS).unwrap();
        let b = parse_feed("alas", Tlp::Clear, ALAS).unwrap();
        assert_eq!(a.items, b.items);
    }

    #[test]
    fn broken_bodies_fail_with_a_reason() {
        let e = parse_feed("x", Tlp::Clear, TRUNCATED).unwrap_err();
        assert!(e.0.contains("not a readable"), "{e}");
        let e = parse_feed("x", Tlp::Clear, HTML_PAGE).unwrap_err();
        assert!(e.0.contains("an HTML page") && e.0.contains("not a feed"), "{e}");
        assert!(parse_feed("x", Tlp::Clear, b"").is_err());
    }

    #[test]
    fn entries_without_guid_use_link_and_html_is_reduced_to_text() {
        let body = br#"<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>
            <item><title>Widget &lt;b&gt;flaw&lt;/b&gt;</title><link>https://v.example/a</link>
              <description>&lt;p&gt;Fixes CVE-2026-1111 &amp;amp; more. CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H&lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt;</description></item>
            <item><description>no title, no link</description></item>
            </channel></rss>"#;
        let p = parse_feed("v", Tlp::Amber, body).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.refused.len(), 1, "{:?}", p.refused);
        let it = &p.items[0];
        assert_eq!(it.external_id, "https://v.example/a");
        assert_eq!(it.title, "Widget flaw");
        assert!(it.summary.starts_with("Fixes CVE-2026-1111 & more."), "{}", it.summary);
        assert!(!it.summary.contains("alert"));
        assert_eq!(it.cves, vec!["CVE-2026-1111"]);
        assert_eq!(it.cvss.as_ref().map(|c| c.score), Some(9.8));
        assert_eq!(it.tlp, Tlp::Amber);
    }
}
