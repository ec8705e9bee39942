//! Webhook delivery with reqwest, signed per Standard Webhooks.

use crate::sign::sign;
use crate::{Channel, DeliveryError, Receipt, excerpt};
use serde::Deserialize;
use std::time::Duration;

fn default_timeout() -> u64 {
    15
}
fn default_connect() -> u64 {
    5
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whole-request timeout per attempt.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_connect")]
    pub connect_timeout_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings { timeout_secs: default_timeout(), connect_timeout_secs: default_connect() }
    }
}

/// One webhook request.
#[derive(Clone, Debug)]
pub struct WebhookMessage {
    /// `webhook-id`: the delivery id, identical on every retry.
    pub id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub timestamp: i64,
}

pub struct WebhookChannel {
    client: reqwest::Client,
}

impl WebhookChannel {
    /// Needs a rustls crypto provider installed. Redirects are never followed: a receiver
    /// that moved must be re-registered, not chased.
    pub fn new(s: &WebhookSettings) -> Result<WebhookChannel, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("Broadcast-Webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(s.timeout_secs))
            .connect_timeout(Duration::from_secs(s.connect_timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(WebhookChannel { client })
    }
}

impl Channel for WebhookChannel {
    type Message = WebhookMessage;

    async fn deliver(&self, m: &WebhookMessage) -> Result<Receipt, DeliveryError> {
        let signature = sign(&m.secret, &m.id, m.timestamp, m.body.as_bytes())
            .map_err(|e| DeliveryError::Permanent(format!("endpoint secret unusable: {e}")))?;
        let resp = self
            .client
            .post(&m.url)
            .header("content-type", "application/json")
            .header("webhook-id", &m.id)
            .header("webhook-timestamp", m.timestamp.to_string())
            .header("webhook-signature", signature)
            .body(m.body.clone())
            .send()
            .await
            .map_err(|e| DeliveryError::Transient(excerpt(&describe(&e), 500)))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let detail = format!("HTTP {}: {}", status.as_u16(), excerpt(text.trim(), 200));
        match status.as_u16() {
            200..=299 => Ok(Receipt { detail }),
            408 | 429 | 500..=599 => Err(DeliveryError::Transient(detail)),
            _ => Err(DeliveryError::Permanent(detail)),
        }
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("timed out: {}", broadcast_core::error_chain(e))
    } else {
        broadcast_core::error_chain(e)
    }
}
