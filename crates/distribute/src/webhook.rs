//! Webhook delivery with reqwest, signed per Standard Webhooks.

use crate::sign::{AsymmetricKey, sign};
use crate::ssrf::{AddressPolicy, GuardedResolver, Refused};
use crate::{Channel, DeliveryError, Receipt, excerpt};
use serde::Deserialize;
use std::sync::Arc;
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
    /// Networks webhooks may reach although they are loopback, private, link-local and so
    /// on (CIDR or single addresses). Empty by default: only public addresses.
    #[serde(default)]
    pub allow_networks: Vec<String>,
    /// Optional ed25519 signing key (`whsk_…`, see `broadcast webhook keygen`): every request
    /// then also carries a `v1a` signature that receivers check with the public key served
    /// at `/api/webhooks/public-key`. Prefer `BROADCAST_WEBHOOK__SIGNING_KEY` in the
    /// environment to writing it in a file.
    #[serde(default)]
    pub signing_key: Option<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            timeout_secs: default_timeout(),
            connect_timeout_secs: default_connect(),
            allow_networks: Vec::new(),
            signing_key: None,
        }
    }
}

/// One webhook request.
#[derive(Clone, Debug)]
pub struct WebhookMessage {
    /// `webhook-id`: the delivery id, identical on every retry.
    pub id: String,
    pub url: String,
    /// Every secret that signs this request: the endpoint's current secret, and during a
    /// rotation's overlap the previous one too. Each adds a `v1,` signature.
    pub secrets: Vec<String>,
    pub body: String,
    /// `webhook-timestamp`: Unix seconds of this attempt.
    pub timestamp: i64,
}

pub struct WebhookChannel {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    asymmetric: Option<AsymmetricKey>,
}

impl WebhookChannel {
    /// Needs a rustls crypto provider installed. Redirects are never followed (a receiver
    /// that moved must be re-registered, not chased), no proxy is used, and every address is
    /// checked by the SSRF guard as it is dialled.
    pub fn new(s: &WebhookSettings) -> Result<WebhookChannel, String> {
        let policy = Arc::new(AddressPolicy::new(&s.allow_networks)?);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .no_proxy()
            .user_agent(concat!("Broadcast-Webhooks/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(s.timeout_secs))
            .connect_timeout(Duration::from_secs(s.connect_timeout_secs))
            .redirect(reqwest::redirect::Policy::none())
            // Endpoints are many distinct hosts, each sent to rarely: keep an idle connection
            // only briefly, so a fan-out to thousands of hosts does not hold thousands of
            // sockets open (shared hosts such as Slack's still reuse theirs within a fan-out).
            .pool_idle_timeout(Duration::from_secs(20))
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let asymmetric = match &s.signing_key {
            Some(k) => Some(AsymmetricKey::parse(k).map_err(|e| format!("webhook.signing_key: {e}"))?),
            None => None,
        };
        Ok(WebhookChannel { client, policy, asymmetric })
    }
}

impl Channel for WebhookChannel {
    type Message = WebhookMessage;

    async fn deliver(&self, m: &WebhookMessage) -> Result<Receipt, DeliveryError> {
        let url = url::Url::parse(&m.url)
            .map_err(|e| DeliveryError::Permanent(format!("`{}` is not a URL: {e}", m.url)))?;
        self.policy.check_url(&url).map_err(|r| DeliveryError::Permanent(r.to_string()))?;
        let signature = m
            .secrets
            .iter()
            .map(|secret| sign(secret, &m.id, m.timestamp, m.body.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DeliveryError::Permanent(format!("endpoint secret unusable: {e}")))?
            .into_iter()
            .chain(self.asymmetric.as_ref().map(|k| k.sign(&m.id, m.timestamp, m.body.as_bytes())))
            .collect::<Vec<_>>()
            .join(" ");
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &m.id)
            .header("webhook-timestamp", m.timestamp.to_string())
            .header("webhook-signature", signature)
            .body(m.body.clone())
            .send()
            .await
            .map_err(|e| match refused(&e) {
                // A policy refusal will not change by retrying.
                Some(r) => DeliveryError::Permanent(r.to_string()),
                None => DeliveryError::Transient(excerpt(&describe(&e), 500)),
            })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let text = resp.text().await.unwrap_or_default();
        let detail = format!("HTTP {}: {}", status.as_u16(), excerpt(text.trim(), 200));
        match (status.as_u16(), retry_after) {
            (200..=299, _) => Ok(Receipt { detail }),
            (429 | 503, Some(wait)) => Err(DeliveryError::Throttled { detail, retry_after: wait }),
            (408 | 429 | 500..=599, _) => Err(DeliveryError::Transient(detail)),
            (410, _) => Err(DeliveryError::Gone(detail)),
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

/// The SSRF refusal inside a reqwest error, if that is what stopped the request.
fn refused(e: &reqwest::Error) -> Option<Refused> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(inner) = src {
        if let Some(r) = inner.downcast_ref::<Refused>() {
            return Some(r.clone());
        }
        src = inner.source();
    }
    None
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`, clamped to
/// [`crate::RETRY_AFTER_BOUNDS`].
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let v = value.trim();
    let secs = match v.parse::<u64>() {
        Ok(s) => s,
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
            (at.with_timezone(&chrono::Utc) - now).num_seconds().max(0) as u64
        }
    };
    let (lo, hi) = crate::RETRY_AFTER_BOUNDS;
    Some(Duration::from_secs(secs).clamp(lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_forms_and_bounds() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 10, 21, 7, 0, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now),
            Some(Duration::from_secs(28 * 60))
        );
        assert_eq!(parse_retry_after("0", now), Some(Duration::from_secs(1)), "at least a second");
        assert_eq!(parse_retry_after("999999", now), Some(Duration::from_secs(3600)), "at most an hour");
        assert_eq!(parse_retry_after("Tue, 20 Oct 2026 07:00:00 GMT", now), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
