//! # broadcast-distribute
//!
//! Getting a bulletin to a recipient: [`render`] (minijinja templates loaded at run time from
//! `bulletin-templates/`), [`sign`] (Standard Webhooks), the [`Channel`] trait with the
//! [`email::EmailChannel`] (lettre) and [`webhook::WebhookChannel`] (reqwest), and the
//! [`retry::RetryPolicy`].
//!
//! A channel never touches the database. The server claims outbox rows, hands each to the
//! channel, and records the [`Receipt`] or [`DeliveryError`] it gets back. Errors say whether
//! trying again could help ([`DeliveryError::Transient`]) or not ([`DeliveryError::Permanent`]).
#![forbid(unsafe_code)]

pub mod email;
pub mod payload;
pub mod render;
pub mod retry;
pub mod sign;
pub mod smtp_pool;
pub mod ssrf;
pub mod webhook;

use std::future::Future;

/// What a receiving server said when it accepted a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// e.g. `250 2.0.0 Ok: queued` or `HTTP 200: {"ok":true}` (truncated).
    pub detail: String,
}

/// Why a delivery attempt failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Might work later: timeouts, connection failures, 4xx SMTP replies, HTTP 5xx/429/408.
    #[error("{0}")]
    Transient(String),
    /// Will not work by retrying: 5xx SMTP replies, bad addresses, HTTP 4xx.
    #[error("{0}")]
    Permanent(String),
    /// The receiver asked us to wait (429 or 503 with `Retry-After`): retry no sooner than
    /// `retry_after` (already bounded by [`RETRY_AFTER_BOUNDS`]).
    #[error("{detail}")]
    Throttled { detail: String, retry_after: std::time::Duration },
    /// The receiver says the endpoint is gone for good (HTTP 410): stop sending to it.
    #[error("{0}")]
    Gone(String),
}

/// A `Retry-After` is honoured between these bounds: a receiver cannot make us hammer it,
/// nor park a delivery for days.
pub const RETRY_AFTER_BOUNDS: (std::time::Duration, std::time::Duration) =
    (std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));

impl DeliveryError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent(_) | DeliveryError::Gone(_))
    }
}

/// A way of delivering one message to one recipient.
pub trait Channel {
    type Message;
    fn deliver(&self, msg: &Self::Message) -> impl Future<Output = Result<Receipt, DeliveryError>> + Send;
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
