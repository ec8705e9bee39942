//! Turning feed HTML into plain text, and finding CVSS vectors in text.
//!
//! Feed content is untrusted. We never keep its markup: tags are dropped, entities decoded,
//! whitespace folded. Whatever shows it later (email, console) escapes it again.

/// Reduces an HTML fragment to readable plain text. `<script>` and `<style>` contents are
/// dropped; block elements become line breaks.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let Some(gt) = after.find('>') else {
            // A stray '<' that never closes is text.
            out.push('<');
            rest = after;
            continue;
        };
        let tag = after[..gt].trim_start_matches('/').to_ascii_lowercase();
        let name: String = tag.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
        rest = &after[gt + 1..];
        if name.is_empty() && !after.starts_with('/') && !after.starts_with('!') {
            // "a < b" style text, not a tag.
            out.push('<');
            rest = after;
            continue;
        }
        if (name == "script" || name == "style") && !after.starts_with('/') {
            let close = format!("</{name}");
            match rest.to_ascii_lowercase().find(&close) {
                Some(i) => {
                    let tail = &rest[i..];
                    rest = tail.find('>').map(|j| &tail[j + 1..]).unwrap_or("");
                }
                None => rest = "",
            }
            out.push(' ');
            continue;
        }
        if matches!(
            name.as_str(),
            "br" | "p"
                | "div"
                | "li"
                | "tr"
                | "h1"
                | "h2"
                | "h3"
                | "h4"
                | "h5"
                | "h6"
                | "pre"
                | "ul"
                | "ol"
                | "table"
        ) {
            out.push('\n');
        } else {
            out.push(' ');
        }
    }
    out.push_str(rest);
    fold_whitespace(&decode_entities(&out))
}

/// Decodes HTML character references: the common named ones and all numeric ones.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find(';').filter(|&e| e <= 10);
        let decoded = end.and_then(|e| {
            let ent = &after[..e];
            let ch = if let Some(num) = ent.strip_prefix('#') {
                let n = if let Some(hex) = num.strip_prefix(['x', 'X']) {
                    u32::from_str_radix(hex, 16).ok()
                } else {
                    num.parse().ok()
                };
                n.and_then(char::from_u32)
            } else {
                match ent {
                    "amp" => Some('&'),
                    "lt" => Some('<'),
                    "gt" => Some('>'),
                    "quot" => Some('"'),
                    "apos" => Some('\''),
                    "nbsp" => Some(' '),
                    "ndash" => Some('–'),
                    "mdash" => Some('—'),
                    "hellip" => Some('…'),
                    "rsquo" => Some('’'),
                    "lsquo" => Some('‘'),
                    "rdquo" => Some('”'),
                    "ldquo" => Some('“'),
                    "copy" => Some('©'),
                    "reg" => Some('®'),
                    "trade" => Some('™'),
                    _ => None,
                }
            };
            ch.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &after[e + 1..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Folds runs of spaces and tabs into one space and runs of blank lines into one break,
/// trimming each line.
pub fn fold_whitespace(s: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    for line in s.lines() {
        let folded = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if folded.is_empty() {
            if lines.last().is_some_and(|l| !l.is_empty()) {
                lines.push(String::new());
            }
        } else {
            lines.push(folded);
        }
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.join("\n")
}

/// Finds the first CVSS v3.x or v4.0 vector in text and scores it.
pub fn find_cvss(text: &str) -> Option<broadcast_core::Cvss> {
    let mut from = 0;
    while let Some(i) = text[from..].find("CVSS:") {
        let start = from + i;
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '/' | '.')))
            .map(|e| start + e)
            .unwrap_or(text.len());
        let vector = text[start..end].trim_end_matches(['.', '/']);
        if let Ok(parsed) = vector.parse::<cvss::Cvss>() {
            return Some(broadcast_core::Cvss { vector: Some(vector.to_owned()), score: parsed.score() });
        }
        from = start + 5;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_markup_and_decodes() {
        assert_eq!(html_to_text("<p>Foo &amp; Bar</p><p>Second&nbsp;para</p>"), "Foo & Bar\n\nSecond para");
        assert_eq!(html_to_text("a <b>bold</b> move"), "a bold move");
        assert_eq!(html_to_text("x<script>alert(1)</script>y"), "x y");
        assert_eq!(html_to_text("<img src=x onerror=alert(1)>Caption"), "Caption");
        assert_eq!(html_to_text("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        assert_eq!(html_to_text("unclosed <b"), "unclosed <b");
        assert_eq!(html_to_text("&#x41;&#66;&unknown; &"), "AB&unknown; &");
        assert_eq!(html_to_text("<STYLE>p{}</STYLE>ok"), "ok");
    }

    #[test]
    fn folds_whitespace() {
        assert_eq!(fold_whitespace("  a \t b \n\n\n c  \n\n"), "a b\n\nc");
    }

    #[test]
    fn finds_and_scores_cvss() {
        let c = find_cvss("Score CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H. More").unwrap();
        assert_eq!(c.vector.as_deref(), Some("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"));
        assert!((c.score - 9.8).abs() < 1e-9);
        assert!(find_cvss("CVSS:9.9/nonsense").is_none());
        assert!(find_cvss("no vector here").is_none());
    }
}
