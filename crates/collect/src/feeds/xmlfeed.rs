//! A streaming RSS 0.9x/1.0/2.0 and Atom reader on quick-xml: one pass over the events, no
//! tree, only the fields advisories use. (feed-rs, which we used before, builds a full model
//! first and was the ceiling on collection speed; it still reads JSON Feed.)

use crate::ParseError;
use chrono::{DateTime, Utc};
use quick_xml::events::Event;

/// One RSS item or Atom entry, as text from the feed (markup not yet reduced).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub title: Option<String>,
    pub summary: Option<String>,
    pub content: Option<String>,
    pub links: Vec<String>,
    pub published: Option<DateTime<Utc>>,
    pub updated: Option<DateTime<Utc>>,
    pub categories: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Field {
    Id,
    Title,
    Summary,
    Content,
    Link,
    Published,
    Updated,
    Category,
}

fn date(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_rfc2822(s))
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            // RFC 822 with a two-digit year or a zone name chrono does not know, and dates
            // without a zone (taken as UTC).
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").ok().map(|n| n.and_utc())
        })
}

/// What the element called `local` (with its qualified `qname`) is inside an entry.
fn field(qname: &str, local: &str, atom: bool) -> Option<Field> {
    Some(match (qname, local) {
        ("content:encoded", _) => Field::Content,
        (_, "guid") | (_, "id") if qname == local => Field::Id,
        (_, "title") if !qname.starts_with("media:") => Field::Title,
        (_, "description") | (_, "summary") if qname == local => Field::Summary,
        (_, "content") if atom && qname == local => Field::Content,
        (_, "link") if qname == local => Field::Link,
        (_, "pubDate") | (_, "published") | (_, "issued") => Field::Published,
        ("dc:date", _) => Field::Published,
        (_, "updated") | (_, "modified") => Field::Updated,
        (_, "category") if qname == local => Field::Category,
        _ => return None,
    })
}

fn resolve_ref(name: &str, out: &mut String) {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => num.parse().ok(),
        };
        if let Some(c) = code.and_then(char::from_u32) {
            out.push(c);
            return;
        }
    }
    match name {
        "amp" => out.push('&'),
        "lt" => out.push('<'),
        "gt" => out.push('>'),
        "quot" => out.push('"'),
        "apos" => out.push('\''),
        // An HTML entity in a feed (not XML, but common): keep it for the HTML reduction.
        other => {
            out.push('&');
            out.push_str(other);
            out.push(';');
        }
    }
}

/// Reads the entries of an RSS or Atom document (UTF-8). Errors name what is wrong.
pub fn entries(xml: &str) -> Result<Vec<Entry>, ParseError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut out = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut root: Option<String> = None;
    let mut atom = false;
    let mut entry: Option<Entry> = None;
    let mut entry_depth = 0;
    // The field being read, the depth it opened at, and its text so far.
    let mut current: Option<(Field, usize, String)> = None;
    loop {
        let ev = reader.read_event().map_err(|e| {
            ParseError(format!(
                "not a readable RSS, Atom or JSON feed: XML error at byte {}: {e}",
                reader.buffer_position()
            ))
        })?;
        match ev {
            Event::Start(e) => {
                let qname = e.name().into_inner().to_owned();
                let local = e.local_name().into_inner().to_owned();
                if root.is_none() {
                    match local.as_str() {
                        "rss" | "RDF" => {}
                        "feed" => atom = true,
                        other => {
                            return Err(ParseError(format!(
                                "not a readable RSS, Atom or JSON feed: the root element is <{other}>"
                            )));
                        }
                    }
                    root = Some(local.clone());
                }
                stack.push(qname.clone());
                let depth = stack.len();
                if let Some((_, _, text)) = current.as_mut() {
                    // Markup inside a field (Atom xhtml, unescaped HTML): kept as tags for the
                    // HTML reduction.
                    text.push('<');
                    text.push_str(&qname);
                    text.push('>');
                    continue;
                }
                if entry.is_none() && (local == "item" || (atom && local == "entry")) {
                    entry = Some(Entry::default());
                    entry_depth = depth;
                    if let Some(about) = e.try_get_attribute("rdf:about").ok().flatten()
                        && let Ok(v) = about.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    {
                        entry.as_mut().expect("set").id = v.trim().to_owned();
                    }
                    continue;
                }
                if entry.is_some()
                    && depth == entry_depth + 1
                    && let Some(f) = field(&qname, &local, atom)
                {
                    if f == Field::Link && atom {
                        // Atom links are attributes; the alternate (or unlabelled) one first.
                        push_atom_link(&e, entry.as_mut().expect("set"));
                        current = None;
                        continue;
                    }
                    if f == Field::Category
                        && let Some(term) = e.try_get_attribute("term").ok().flatten()
                        && let Ok(v) = term.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    {
                        entry.as_mut().expect("set").categories.push(v.into_owned());
                    }
                    current = Some((f, depth, String::new()));
                }
            }
            Event::Empty(e) => {
                if let Some((_, _, text)) = current.as_mut() {
                    text.push('<');
                    text.push_str(e.name().into_inner());
                    text.push_str("/>");
                    continue;
                }
                let local = e.local_name().into_inner().to_owned();
                if let Some(en) = entry.as_mut()
                    && stack.len() == entry_depth
                {
                    match local.as_str() {
                        "link" if atom || e.name().into_inner() == "atom:link" => push_atom_link(&e, en),
                        "category" => {
                            if let Some(term) = e.try_get_attribute("term").ok().flatten()
                                && let Ok(v) = term.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            {
                                en.categories.push(v.into_owned());
                            }
                        }
                        _ => {}
                    }
                }
            }
            Event::End(e) => {
                let depth = stack.len();
                stack.pop();
                match current.take() {
                    Some((f, d, text)) if d == depth => {
                        if let Some(en) = entry.as_mut() {
                            store(en, f, text);
                        }
                    }
                    Some((f, d, mut text)) => {
                        text.push_str("</");
                        text.push_str(e.name().into_inner());
                        text.push('>');
                        current = Some((f, d, text));
                    }
                    None => {
                        if entry.is_some() && depth == entry_depth {
                            out.push(entry.take().expect("set"));
                        }
                    }
                }
            }
            Event::Text(t) => {
                if let Some((_, _, text)) = current.as_mut() {
                    text.push_str(&t.into_inner());
                }
            }
            Event::CData(c) => {
                if let Some((_, _, text)) = current.as_mut() {
                    text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                if let Some((_, _, text)) = current.as_mut() {
                    resolve_ref(&r.into_inner(), text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if root.is_none() {
        return Err(ParseError("not a readable RSS, Atom or JSON feed: no root element".into()));
    }
    if let Some(open) = stack.last() {
        return Err(ParseError(format!(
            "not a readable RSS, Atom or JSON feed: the document ends inside <{open}> (truncated?)"
        )));
    }
    Ok(out)
}

fn push_atom_link(e: &quick_xml::events::BytesStart<'_>, en: &mut Entry) {
    let attr = |k: &str| {
        e.try_get_attribute(k)
            .ok()
            .flatten()
            .and_then(|a| a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok())
            .map(|v| v.into_owned())
    };
    let Some(href) = attr("href") else { return };
    match attr("rel").as_deref() {
        None | Some("alternate") => en.links.insert(0, href),
        Some(_) => en.links.push(href),
    }
}

fn store(en: &mut Entry, f: Field, text: String) {
    match f {
        Field::Id => {
            if en.id.is_empty() || !text.trim().is_empty() {
                en.id = text.trim().to_owned();
            }
        }
        Field::Title => en.title = Some(text),
        Field::Summary => {
            if en.summary.is_none() {
                en.summary = Some(text);
            }
        }
        Field::Content => en.content = Some(text),
        Field::Link => {
            let t = text.trim();
            if !t.is_empty() {
                en.links.push(t.to_owned());
            }
        }
        Field::Published => {
            if en.published.is_none() {
                en.published = date(&text);
            }
        }
        Field::Updated => en.updated = date(&text),
        Field::Category => {
            let t = text.trim();
            if !t.is_empty() {
                en.categories.push(t.to_owned());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_atom_and_rdf_entries() {
        let rss = r#"<?xml version="1.0"?><rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"
          xmlns:dc="http://purl.org/dc/elements/1.1/"><channel><title>c</title><link>https://c.example/</link>
          <item><title>A &amp; B &#8211; <![CDATA[<b>bold</b>]]></title><link>https://e.example/1</link>
            <guid isPermaLink="false">g-1</guid><description>d</description><content:encoded>full</content:encoded>
            <pubDate>Not a date</pubDate><dc:date>2024-09-10T06:00:00Z</dc:date><category>Medical</category></item>
          <item><title>no guid</title><link> https://e.example/2 </link><pubDate>Tue, 10 Sep 2024 06:00:00 +0000</pubDate></item>
        </channel></rss>"#;
        let e = entries(rss).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].title.as_deref(), Some("A & B \u{2013} <b>bold</b>"));
        assert_eq!((e[0].id.as_str(), e[0].links[0].as_str()), ("g-1", "https://e.example/1"));
        assert_eq!((e[0].summary.as_deref(), e[0].content.as_deref()), (Some("d"), Some("full")));
        assert_eq!(
            e[0].published.unwrap().to_rfc3339(),
            "2024-09-10T06:00:00+00:00",
            "a bad date is skipped"
        );
        assert_eq!(e[0].categories, ["Medical"]);
        assert_eq!((e[1].id.as_str(), e[1].links[0].as_str()), ("", "https://e.example/2"));
        let atom = r#"<feed xmlns="http://www.w3.org/2005/Atom"><title>f</title><link href="https://f.example/"/>
          <entry><id>urn:1</id><title type="html">&lt;i&gt;x&lt;/i&gt;</title><link rel="self" href="https://f.example/self"/>
            <link href="https://f.example/1"/><updated>2024-01-02T03:04:05Z</updated><category term="ics"/>
            <content type="xhtml"><div xmlns="http://www.w3.org/1999/xhtml"><p>para</p></div></content></entry></feed>"#;
        let e = entries(atom).unwrap();
        assert_eq!(e[0].id, "urn:1");
        assert_eq!(e[0].title.as_deref(), Some("<i>x</i>"));
        assert_eq!(e[0].links, ["https://f.example/1", "https://f.example/self"], "alternate first");
        assert_eq!(e[0].categories, ["ics"]);
        assert!(e[0].content.as_deref().unwrap().contains("<p>para</p>"));
        let rdf = r#"<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">
          <channel rdf:about="https://d.example/"><title>d</title></channel>
          <item rdf:about="https://d.example/news/1"><title>n</title><link>https://d.example/news/1</link></item></rdf:RDF>"#;
        assert_eq!(entries(rdf).unwrap()[0].id, "https://d.example/news/1");
        let err = entries("<html><body>x</body></html>").unwrap_err();
        assert!(err.0.contains("the root element is <html>"), "{err}");
        let err = entries("<rss><channel><item><title>x").unwrap_err();
        assert!(err.0.contains("truncated"), "{err}");
        assert!(entries("<rss><channel></item></channel></rss>").unwrap_err().0.contains("XML error"));
    }
}
