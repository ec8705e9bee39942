//! Row types as the database returns them, and their conversion to core types.
//! Enum and JSON columns are parsed here; a value that does not parse is reported as
//! corrupt data rather than silently defaulted.

use super::{Candidate, OverrideInfo, Result, StoreError, from_json, parse_id};
use broadcast_core::{Advisory, Analyst, Assessment, Bulletin, Contact, Delivery, Endpoint, Organisation};
use chrono::{DateTime, Utc};
use std::str::FromStr;

fn parse_enum<T: FromStr>(what: &str, s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt(format!("{what}: {e}")))
}

#[derive(sqlx::FromRow)]
pub(crate) struct AdvisoryRow {
    pub id: String,
    pub revision: i32,
    pub content: String,
    pub first_seen: DateTime<Utc>,
    pub last_changed: DateTime<Utc>,
}

impl AdvisoryRow {
    pub fn into_advisory(self) -> Result<Advisory> {
        Ok(Advisory {
            id: parse_id(&self.id)?,
            revision: self.revision,
            first_seen: self.first_seen,
            last_changed: self.last_changed,
            content: from_json(&self.content)?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CandidateRow {
    pub id: String,
    pub revision: i32,
    pub content: String,
    pub first_seen: DateTime<Utc>,
    pub last_changed: DateTime<Utc>,
    pub relevant: bool,
    pub threat_level: String,
    pub score: f64,
    pub reasons: String,
    pub override_relevant: Option<bool>,
    pub override_level: Option<String>,
    pub override_reason: Option<String>,
    pub override_by: Option<String>,
    pub override_at: Option<DateTime<Utc>>,
}

impl CandidateRow {
    pub fn into_candidate(self) -> Result<Candidate> {
        let advisory = AdvisoryRow {
            id: self.id,
            revision: self.revision,
            content: self.content,
            first_seen: self.first_seen,
            last_changed: self.last_changed,
        }
        .into_advisory()?;
        let mut assessment = Assessment {
            advisory_id: advisory.id.clone(),
            advisory_revision: advisory.revision,
            relevant: self.relevant,
            threat_level: parse_enum("threat level", &self.threat_level)?,
            score: self.score,
            reasons: from_json(&self.reasons)?,
        };
        let override_info = match (self.override_reason, self.override_at) {
            (Some(reason), Some(at)) => Some(OverrideInfo {
                relevant: self.override_relevant,
                threat_level: self
                    .override_level
                    .as_deref()
                    .map(|l| parse_enum("threat level", l))
                    .transpose()?,
                reason,
                analyst: self.override_by.unwrap_or_default(),
                at,
            }),
            _ => None,
        };
        if let Some(o) = &override_info {
            assessment.relevant = o.relevant.unwrap_or(assessment.relevant);
            assessment.threat_level = o.threat_level.unwrap_or(assessment.threat_level);
            assessment.reasons.insert(0, format!("overridden by {}: {}", o.analyst, o.reason));
        }
        Ok(Candidate { advisory, assessment, override_info })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AnalystRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
}

/// An analyst with one secret-bearing column (`secret`): a password hash or a session's
/// CSRF token.
#[derive(sqlx::FromRow)]
pub(crate) struct AnalystSecretRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub secret: Option<String>,
}

impl AnalystSecretRow {
    pub fn split(self) -> Result<(Analyst, Option<String>)> {
        let a = AnalystRow { id: self.id, name: self.name, role: self.role, created_at: self.created_at };
        Ok((a.into_analyst()?, self.secret))
    }
}

impl AnalystRow {
    pub fn into_analyst(self) -> Result<Analyst> {
        Ok(Analyst {
            id: parse_id(&self.id)?,
            name: self.name,
            role: parse_enum("role", &self.role)?,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct BulletinRow {
    pub id: String,
    pub reference: String,
    pub state: String,
    pub content: String,
    pub advisory_ids: String,
    pub author_id: String,
    pub approver_id: Option<String>,
    pub review_comment: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    pub version: i32,
}

impl BulletinRow {
    pub fn into_bulletin(self) -> Result<Bulletin> {
        Ok(Bulletin {
            id: parse_id(&self.id)?,
            reference: self.reference,
            state: parse_enum("bulletin state", &self.state)?,
            content: from_json(&self.content)?,
            advisory_ids: from_json(&self.advisory_ids)?,
            author: parse_id(&self.author_id)?,
            approver: self.approver_id.as_deref().map(parse_id).transpose()?,
            review_comment: self.review_comment,
            created_at: self.created_at,
            updated_at: self.updated_at,
            published_at: self.published_at,
            version: self.version,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct OrgRow {
    pub id: String,
    pub name: String,
    pub tlp_clearance: String,
    pub min_threat_level: String,
    pub created_at: DateTime<Utc>,
    pub interests: String,
    pub digest_hour: Option<i32>,
}

impl OrgRow {
    pub fn into_org(self) -> Result<Organisation> {
        Ok(Organisation {
            id: parse_id(&self.id)?,
            name: self.name,
            tlp_clearance: parse_enum("TLP clearance", &self.tlp_clearance)?,
            min_threat_level: parse_enum("threat level", &self.min_threat_level)?,
            interests: from_json(&self.interests)?,
            digest_hour: self.digest_hour.map(|h| h.clamp(0, 23) as u8),
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ContactRow {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub unsubscribed: bool,
    pub created_at: DateTime<Utc>,
    pub suppressed_reason: Option<String>,
}

impl ContactRow {
    pub fn into_contact(self) -> Result<Contact> {
        Ok(Contact {
            id: parse_id(&self.id)?,
            org_id: parse_id(&self.org_id)?,
            email: self.email,
            name: self.name,
            unsubscribed: self.unsubscribed,
            suppressed_reason: self.suppressed_reason,
            created_at: self.created_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct EndpointRow {
    pub id: String,
    pub org_id: String,
    pub url: String,
    pub secret: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub format: String,
    pub failing_since: Option<DateTime<Utc>>,
    pub consecutive_failures: i32,
    pub failure_warned_at: Option<DateTime<Utc>>,
}

impl EndpointRow {
    pub fn into_endpoint(self) -> Result<Endpoint> {
        Ok(Endpoint {
            id: parse_id(&self.id)?,
            org_id: parse_id(&self.org_id)?,
            url: self.url,
            secret: self.secret,
            previous_secret: self.previous_secret,
            previous_secret_until: self.previous_secret_until,
            enabled: self.enabled,
            format: parse_enum("endpoint format", &self.format)?,
            created_at: self.created_at,
            failing_since: self.failing_since,
            consecutive_failures: self.consecutive_failures,
            failure_warned_at: self.failure_warned_at,
        })
    }
}

pub(crate) const DELIVERY_COLUMNS: &str = "id, bulletin_id, org_id, channel, recipient_id, address, state, reason, \
     attempts, next_attempt_at, delivered_at, created_at, digest_at";

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    pub id: String,
    pub bulletin_id: String,
    pub org_id: String,
    pub channel: String,
    pub recipient_id: String,
    pub address: String,
    pub state: String,
    pub reason: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub digest_at: Option<DateTime<Utc>>,
}

impl DeliveryRow {
    pub fn into_delivery(self) -> Result<Delivery> {
        Ok(Delivery {
            id: parse_id(&self.id)?,
            bulletin_id: parse_id(&self.bulletin_id)?,
            org_id: parse_id(&self.org_id)?,
            channel: parse_enum("channel", &self.channel)?,
            recipient_id: self.recipient_id,
            address: self.address,
            state: parse_enum("delivery state", &self.state)?,
            reason: self.reason,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            delivered_at: self.delivered_at,
            created_at: self.created_at,
            digest_at: self.digest_at,
        })
    }
}
