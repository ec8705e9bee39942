//! Broadcast's own webhook JSON, schema version 1 (documented in `docs/WEBHOOKS.md`).
//!
//! The envelope follows the Standard Webhooks recommendation (`type`, `timestamp`, `data`).
//! The body is the same on every retry of a delivery: `timestamp` is the bulletin's
//! publication time, not the attempt's.

use broadcast_core::Bulletin;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema_version: u32,
    pub timestamp: DateTime<Utc>,
    pub data: BulletinData<'a>,
}

#[derive(Serialize)]
pub struct BulletinData<'a> {
    pub id: &'a str,
    pub reference: &'a str,
    pub title: &'a str,
    pub threat_level: &'static str,
    pub tlp: &'static str,
    pub summary: &'a str,
    pub affected_products: &'a [String],
    pub remediation: &'a str,
    pub references: &'a [String],
    pub cves: &'a [String],
    pub published_at: Option<DateTime<Utc>>,
    pub url: &'a str,
}

/// The JSON body of a `bulletin.published` webhook.
pub fn bulletin_published(b: &Bulletin, url: &str) -> String {
    let env = Envelope {
        kind: "bulletin.published",
        schema_version: SCHEMA_VERSION,
        timestamp: b.published_at.unwrap_or(b.updated_at),
        data: BulletinData {
            id: b.id.as_str(),
            reference: &b.reference,
            title: &b.content.title,
            threat_level: b.content.threat_level.as_str(),
            tlp: b.content.tlp.as_str(),
            summary: &b.content.summary,
            affected_products: &b.content.affected_products,
            remediation: &b.content.remediation,
            references: &b.content.references,
            cves: &b.content.cves,
            published_at: b.published_at,
            url,
        },
    };
    serde_json::to_string(&env).expect("payload serialises")
}

/// Slack and Teams are third-party platforms: for TLP:AMBER and above they get a notice and a
/// link, never the content.
fn chat_may_carry_content(b: &Bulletin) -> bool {
    b.content.tlp <= broadcast_core::Tlp::Green
}

fn chat_summary(b: &Bulletin) -> String {
    if chat_may_carry_content(b) {
        let mut s: String = b.content.summary.chars().take(600).collect();
        if b.content.summary.chars().count() > 600 {
            s.push('…');
        }
        s
    } else {
        format!("This bulletin is marked {}. Read it, signed in, with the link below.", b.content.tlp)
    }
}

/// A Slack incoming-webhook message (Block Kit, with a plain-text fallback).
pub fn slack_message(b: &Bulletin, url: &str) -> String {
    let title = format!("[{}] {}: {}", b.content.threat_level, b.reference, b.content.title);
    let mut blocks = vec![
        serde_json::json!({ "type": "header", "text": { "type": "plain_text", "text": title.chars().take(150).collect::<String>() } }),
        serde_json::json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": format!("*{}* · Threat level *{}*", b.content.tlp, b.content.threat_level) }] }),
    ];
    let summary = chat_summary(b);
    if !summary.is_empty() {
        blocks.push(
            serde_json::json!({ "type": "section", "text": { "type": "plain_text", "text": summary } }),
        );
    }
    if chat_may_carry_content(b) && !b.content.cves.is_empty() {
        blocks.push(serde_json::json!({ "type": "section", "text": { "type": "plain_text", "text": format!("CVEs: {}", b.content.cves.join(", ")) } }));
    }
    blocks.push(serde_json::json!({ "type": "actions", "elements": [{ "type": "button", "text": { "type": "plain_text", "text": "Read the bulletin" }, "url": url }] }));
    serde_json::json!({ "text": format!("{title} ({})", b.content.tlp), "blocks": blocks }).to_string()
}

/// A Microsoft Teams incoming-webhook message carrying an Adaptive Card.
pub fn teams_message(b: &Bulletin, url: &str) -> String {
    let mut body = vec![
        serde_json::json!({ "type": "TextBlock", "text": format!("{}: {}", b.reference, b.content.title), "weight": "Bolder", "size": "Medium", "wrap": true }),
        serde_json::json!({ "type": "FactSet", "facts": [
            { "title": "Threat level", "value": b.content.threat_level.as_str() },
            { "title": "TLP", "value": b.content.tlp.as_str() },
        ] }),
        serde_json::json!({ "type": "TextBlock", "text": chat_summary(b), "wrap": true }),
    ];
    if chat_may_carry_content(b) && !b.content.cves.is_empty() {
        body.push(serde_json::json!({ "type": "TextBlock", "text": format!("CVEs: {}", b.content.cves.join(", ")), "wrap": true, "isSubtle": true }));
    }
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": body,
                "actions": [{ "type": "Action.OpenUrl", "title": "Read the bulletin", "url": url }],
            },
        }],
    })
    .to_string()
}

/// The body for an endpoint of the given format.
pub fn for_format(format: broadcast_core::EndpointFormat, b: &Bulletin, url: &str) -> String {
    match format {
        broadcast_core::EndpointFormat::Broadcast => bulletin_published(b, url),
        broadcast_core::EndpointFormat::Slack => slack_message(b, url),
        broadcast_core::EndpointFormat::Teams => teams_message(b, url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn sample(tlp: broadcast_core::Tlp) -> Bulletin {
        let mut b = crate::render::sample_context(false).bulletin;
        b.content.tlp = tlp;
        b
    }

    #[test]
    fn broadcast_json_is_versioned() {
        let v: Value =
            serde_json::from_str(&bulletin_published(&sample(broadcast_core::Tlp::Clear), "https://x/b"))
                .unwrap();
        assert_eq!((v["type"].as_str(), v["schema_version"].as_u64()), (Some("bulletin.published"), Some(1)));
        assert_eq!(v["data"]["reference"], "HCB-2026-0001");
    }

    #[test]
    fn slack_and_teams_carry_content_only_up_to_green() {
        let url = "https://broadcast.example/bulletins/HCB-2026-0001";
        let clear: Value =
            serde_json::from_str(&slack_message(&sample(broadcast_core::Tlp::Clear), url)).unwrap();
        assert!(clear["text"].as_str().unwrap().starts_with("[High] HCB-2026-0001"));
        assert!(clear.to_string().contains("Line one."));
        assert_eq!(clear["blocks"].as_array().unwrap().last().unwrap()["elements"][0]["url"], url);
        let amber: Value =
            serde_json::from_str(&slack_message(&sample(broadcast_core::Tlp::Amber), url)).unwrap();
        assert!(!amber.to_string().contains("Line one."), "AMBER content never goes to Slack");
        assert!(amber.to_string().contains("marked TLP:AMBER"));
        let teams: Value =
            serde_json::from_str(&teams_message(&sample(broadcast_core::Tlp::Clear), url)).unwrap();
        let card = &teams["attachments"][0];
        assert_eq!(card["contentType"], "application/vnd.microsoft.card.adaptive");
        assert_eq!(card["content"]["type"], "AdaptiveCard");
        assert_eq!(card["content"]["actions"][0]["url"], url);
        let red: Value =
            serde_json::from_str(&teams_message(&sample(broadcast_core::Tlp::Red), url)).unwrap();
        assert!(!red.to_string().contains("Line one.") && !red.to_string().contains("CVE-2026-0001"));
    }
}
