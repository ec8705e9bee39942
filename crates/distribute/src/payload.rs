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
