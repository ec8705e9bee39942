//! Deliveries: one outbox row per (bulletin, recipient, channel).

use crate::ids::{BulletinId, DeliveryId, OrgId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How a bulletin travels to a recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Email,
    Webhook,
}

impl ChannelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Email => "email",
            ChannelKind::Webhook => "webhook",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "email" => Ok(ChannelKind::Email),
            "webhook" => Ok(ChannelKind::Webhook),
            _ => Err(format!("`{s}` is not a channel (expected email or webhook)")),
        }
    }
}

/// Where a delivery is. `Pending` rows are the queue; the rest are terminal and carry a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt (first or retry).
    Pending,
    /// Accepted by the SMTP server or the webhook endpoint.
    Delivered,
    /// Given up: a permanent error, or retries exhausted.
    Failed,
    /// Deliberately not sent: unsubscribed, filtered out, or not cleared for the TLP.
    Suppressed,
    /// The bulletin was withdrawn before this was sent.
    Cancelled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 5] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Suppressed,
        DeliveryState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Suppressed => "suppressed",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != DeliveryState::Pending
    }
}

impl fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeliveryState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a delivery state"))
    }
}

/// One outbox row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: DeliveryId,
    pub bulletin_id: BulletinId,
    pub org_id: OrgId,
    pub channel: ChannelKind,
    /// The contact id (email) or endpoint id (webhook).
    pub recipient_id: String,
    /// The address (email) or URL (webhook) at the time of publishing.
    pub address: String,
    pub state: DeliveryState,
    /// Why the row is in a terminal state other than delivered, or the last error.
    pub reason: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    /// For an organisation on daily digests: the digest this email goes out in. Every row of
    /// one contact with the same `digest_at` is sent as one email.
    #[serde(default)]
    pub digest_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in DeliveryState::ALL {
            assert_eq!(s.as_str().parse::<DeliveryState>().unwrap(), s);
            assert_eq!(s.is_terminal(), s != DeliveryState::Pending);
        }
        assert!("lost".parse::<DeliveryState>().is_err());
        assert_eq!("webhook".parse::<ChannelKind>().unwrap(), ChannelKind::Webhook);
        assert!("pigeon".parse::<ChannelKind>().unwrap_err().contains("pigeon"));
    }
}
