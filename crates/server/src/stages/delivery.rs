//! Delivery workers: claim due outbox rows with a lease, send each through its channel,
//! record every attempt, and schedule retries. A row whose worker dies returns to the
//! queue when its lease expires, so nothing is lost; the webhook id and Message-ID come
//! from the delivery id, so a resend after a crash is recognisable as the same message.
//!
//! Isolation: the worker is a pipeline, not a batch. It claims more rows as soon as a slot
//! frees, so a slow or dead endpoint never holds up the rest; each host and each endpoint
//! has its own concurrency cap, and a row whose host or endpoint is at its cap is handed
//! back for a moment without counting an attempt. First attempts are claimed before
//! retries.

use crate::app::App;
use crate::stages::sleep_or_shutdown;
use anyhow::Result;
use broadcast_core::{Bulletin, ChannelKind, ContactId, Delivery, EndpointId};
use broadcast_distribute::email::{EmailChannel, EmailMessage};
use broadcast_distribute::render::EmailContext;
use broadcast_distribute::retry::RetryPolicy;
use broadcast_distribute::webhook::{WebhookChannel, WebhookMessage};
use broadcast_distribute::{Channel, DeliveryError, Receipt, payload};
use broadcast_store::{AttemptOutcome, AttemptRecord};
use chrono::Utc;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, watch};

pub struct Worker {
    app: App,
    id: String,
    email: Arc<EmailChannel>,
    webhook: Arc<WebhookChannel>,
    policy: RetryPolicy,
    cache: Mutex<Cache>,
    /// Concurrency caps per webhook host and per endpoint.
    caps: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// So a fan-out of thousands reads each bulletin and organisation once. Bulletins are
/// immutable once published (a withdrawal cancels their rows), so caching them is safe.
#[derive(Default)]
struct Cache {
    bulletins: HashMap<String, Arc<Bulletin>>,
    orgs: HashMap<String, String>,
}

/// How long a row whose host or endpoint is at its cap waits before it is due again.
const DEFER: Duration = Duration::from_millis(250);

impl Worker {
    pub fn new(app: App) -> Result<Worker> {
        let id = format!("{}-{}-{:04x}", hostname(), std::process::id(), rand::rng().random::<u16>());
        Ok(Worker {
            email: Arc::new(app.email_channel()?),
            webhook: Arc::new(app.webhook_channel()?),
            policy: app.settings.retry_policy(),
            id,
            app,
            cache: Mutex::new(Cache::default()),
            caps: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A permit from the cap named `key` (created with `size` slots), if one is free now.
    fn try_cap(&self, key: String, size: usize) -> Option<OwnedSemaphorePermit> {
        let sem = self
            .caps
            .lock()
            .expect("cap map lock")
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(size)))
            .clone();
        sem.try_acquire_owned().ok()
    }

    /// Claims up to `limit` due rows.
    async fn claim(&self, limit: i64) -> Result<Vec<Delivery>> {
        let s = &self.app.settings.delivery;
        Ok(self
            .app
            .store
            .claim_due_deliveries(&self.id, Utc::now(), Duration::from_secs(s.lease_secs), limit)
            .await?)
    }

    /// Delivers one claimed row, unless its host or endpoint is at its cap, in which case
    /// the row is handed back (no attempt counted) and `false` is returned.
    async fn deliver_one(&self, d: Delivery) -> bool {
        let s = &self.app.settings.delivery;
        let _caps = if d.channel == ChannelKind::Webhook {
            let host = url::Url::parse(&d.address)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let host_cap = self.try_cap(format!("host:{host}"), s.per_host_concurrency);
            let endpoint_cap = host_cap
                .as_ref()
                .and_then(|_| self.try_cap(format!("ep:{}", d.recipient_id), s.per_endpoint_concurrency));
            match (host_cap, endpoint_cap) {
                (Some(h), Some(e)) => Some((h, e)),
                _ => {
                    let at = Utc::now() + chrono::Duration::from_std(DEFER).unwrap_or_default();
                    if let Err(e) = self.app.store.defer_delivery(&d.id, at).await {
                        tracing::error!(delivery.id = %d.id, error = %e, "could not defer delivery");
                    }
                    return false;
                }
            }
        } else {
            None
        };
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = self.attempt(&d, &self.cache).await;
        let duration_ms = clock.elapsed().as_millis() as i64;
        let attempts_made = d.attempts as u32 + 1;
        let mut gone: Option<String> = None;
        let mut hard_bounce: Option<String> = None;
        let (outcome, detail) = match result {
            Ok(Receipt { detail }) => (AttemptOutcome::Delivered, detail),
            Err(DeliveryError::Permanent(e)) => {
                if d.channel == ChannelKind::Email && e.starts_with('5') {
                    hard_bounce = Some(e.clone());
                }
                (AttemptOutcome::Failed { error: e.clone() }, e)
            }
            Err(DeliveryError::Gone(e)) => {
                gone = Some(e.clone());
                (AttemptOutcome::Failed { error: format!("{e} (endpoint disabled)") }, e)
            }
            Err(DeliveryError::Throttled { detail, retry_after }) => {
                match self.policy.next_delay(attempts_made, rand::rng().random()) {
                    Some(wait) => {
                        let wait = wait.max(retry_after);
                        let at = Utc::now()
                            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(60));
                        let error = format!("{detail} (Retry-After {}s)", retry_after.as_secs());
                        (AttemptOutcome::Retry { at, error }, detail)
                    }
                    None => (
                        AttemptOutcome::Failed {
                            error: format!("gave up after {attempts_made} attempts: {detail}"),
                        },
                        detail,
                    ),
                }
            }
            Err(DeliveryError::Transient(e)) => match self
                .policy
                .next_delay(attempts_made, rand::rng().random())
            {
                Some(wait) => {
                    let at = Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(60));
                    (AttemptOutcome::Retry { at, error: e.clone() }, e)
                }
                None => (
                    AttemptOutcome::Failed { error: format!("gave up after {attempts_made} attempts: {e}") },
                    e,
                ),
            },
        };
        match &outcome {
            AttemptOutcome::Delivered => {
                tracing::debug!(delivery.id = %d.id, channel = %d.channel, duration_ms, "delivered")
            }
            AttemptOutcome::Retry { at, error } => {
                tracing::info!(delivery.id = %d.id, channel = %d.channel, attempt = attempts_made, retry_at = %at, error = %error, "delivery will be retried")
            }
            AttemptOutcome::Failed { error } => {
                tracing::warn!(delivery.id = %d.id, channel = %d.channel, attempt = attempts_made, error = %error, "delivery failed")
            }
        }
        let rec = AttemptRecord { started_at, duration_ms, outcome, detail };
        if let Err(e) = self.app.store.record_attempt(&d.id, &rec).await {
            // The lease expires and the row is tried again: at worst a duplicate with the
            // same webhook-id / Message-ID, never a loss.
            tracing::error!(delivery.id = %d.id, error = %e, "could not record attempt");
        }
        // Count hard bounces only once this failure is on record.
        if let Some(reply) = hard_bounce
            && let Ok(cid) = d.recipient_id.parse::<ContactId>()
        {
            let threshold = self.app.settings.delivery.suppress_after_hard_bounces;
            match self.app.store.record_hard_bounce(&cid, &reply, threshold, Utc::now()).await {
                Ok(true) => {
                    tracing::warn!(contact.id = %cid, "address suppressed after repeated hard bounces")
                }
                Ok(false) => {}
                Err(err) => tracing::error!(contact.id = %cid, error = %err, "could not record hard bounce"),
            }
        }
        // The receiver said the endpoint is gone: stop sending to it at all. Only after this
        // attempt is on record, or disabling would suppress the in-flight delivery itself.
        if let Some(reason) = gone
            && let Ok(eid) = d.recipient_id.parse::<broadcast_core::EndpointId>()
        {
            match self.app.store.set_endpoint_enabled(&eid, false, "system", &reason, Utc::now()).await {
                Ok(_) => tracing::warn!(endpoint.id = %eid, reason = %reason, "endpoint disabled"),
                Err(err) => tracing::error!(endpoint.id = %eid, error = %err, "could not disable endpoint"),
            }
        }
        true
    }

    async fn attempt(&self, d: &Delivery, cache: &Mutex<Cache>) -> Result<Receipt, DeliveryError> {
        {
            let mut c = cache.lock().await;
            if c.bulletins.len() > 1000 || c.orgs.len() > 10_000 {
                *c = Cache::default();
            }
        }
        let store_err = |e: broadcast_store::StoreError| DeliveryError::Transient(format!("store: {e}"));
        let (bulletin, org_name) = {
            let mut c = cache.lock().await;
            let b = match c.bulletins.get(d.bulletin_id.as_str()) {
                Some(b) => b.clone(),
                None => {
                    let b = Arc::new(
                        self.app.store.get_bulletin(d.bulletin_id.as_str()).await.map_err(store_err)?,
                    );
                    c.bulletins.insert(d.bulletin_id.to_string(), b.clone());
                    b
                }
            };
            let org = match c.orgs.get(d.org_id.as_str()) {
                Some(o) => o.clone(),
                None => {
                    let o = self.app.store.get_organisation(d.org_id.as_str()).await.map_err(store_err)?.name;
                    c.orgs.insert(d.org_id.to_string(), o.clone());
                    o
                }
            };
            (b, org)
        };
        let bulletin_url = self.app.bulletin_url(&bulletin.reference);
        match d.channel {
            ChannelKind::Email => {
                let cid: ContactId =
                    d.recipient_id.parse().map_err(|e| DeliveryError::Permanent(format!("{e}")))?;
                let contact = self.app.store.get_contact(&cid).await.map_err(store_err)?;
                if contact.unsubscribed {
                    return Err(DeliveryError::Permanent("contact unsubscribed".into()));
                }
                if let Some(why) = &contact.suppressed_reason {
                    return Err(DeliveryError::Permanent(format!("not sent: {why}")));
                }
                let unsubscribe_url = self.app.unsubscribe_url(contact.id.as_str());
                let ctx = EmailContext {
                    bulletin: (*bulletin).clone(),
                    organisation: org_name,
                    recipient_name: contact.name.clone(),
                    unsubscribe_url: unsubscribe_url.clone(),
                    bulletin_url,
                    body_allowed: bulletin.content.tlp.allowed_in_email_body(),
                };
                let rendered = self
                    .app
                    .renderer
                    .render_email("bulletin", &ctx)
                    .map_err(|e| DeliveryError::Transient(format!("rendering: {e}")))?;
                let msg = EmailMessage {
                    delivery_id: d.id.to_string(),
                    to: contact.email.clone(),
                    to_name: contact.name.clone(),
                    rendered,
                    unsubscribe_url,
                };
                self.email.deliver(&msg).await
            }
            ChannelKind::Webhook => {
                let eid: EndpointId =
                    d.recipient_id.parse().map_err(|e| DeliveryError::Permanent(format!("{e}")))?;
                let ep = self.app.store.get_endpoint(&eid).await.map_err(store_err)?;
                if !ep.enabled {
                    return Err(DeliveryError::Permanent("endpoint disabled".into()));
                }
                let now = Utc::now();
                let msg = WebhookMessage {
                    id: d.id.to_string(),
                    url: ep.url.clone(),
                    secrets: ep.signing_secrets(now).into_iter().map(str::to_owned).collect(),
                    body: payload::for_format(ep.format, &bulletin, &bulletin_url),
                    timestamp: now.timestamp(),
                };
                self.webhook.deliver(&msg).await
            }
        }
    }
}

/// Runs a worker until shutdown: keeps up to `delivery.concurrency` deliveries in flight,
/// claiming more as soon as a slot frees; when nothing is due it waits for a publish (woken
/// at once) or the next due retry.
pub async fn run(app: App, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let worker = Arc::new(Worker::new(app.clone())?);
    tracing::info!(worker.id = %worker.id, "delivery worker started");
    let s = app.settings.delivery.clone();
    let slots = Arc::new(Semaphore::new(s.concurrency));
    let slot_freed = Arc::new(Notify::new());
    let poll = Duration::from_millis(s.poll_interval_ms);
    loop {
        if *shutdown.borrow() {
            break;
        }
        let notified = app.wake_delivery.notified();
        let freed = slot_freed.notified();
        let free = slots.available_permits();
        let mut claimed = 0;
        if free > 0 {
            match worker.claim((free as i64).min(s.batch_size)).await {
                Ok(rows) => {
                    claimed = rows.len();
                    for d in rows {
                        let permit = slots.clone().acquire_owned().await.expect("semaphore never closed");
                        let (w, freed_tx) = (worker.clone(), slot_freed.clone());
                        tokio::spawn(async move {
                            w.deliver_one(d).await;
                            drop(permit);
                            freed_tx.notify_one();
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "claiming deliveries failed"),
            }
        }
        if claimed > 0 && slots.available_permits() > 0 {
            continue;
        }
        let wait = if slots.available_permits() == 0 {
            poll
        } else {
            match app.store.next_due_at().await {
                // Rows due now but leased elsewhere or deferred: look again shortly, not in a spin.
                Ok(Some(t)) => {
                    (t - Utc::now()).to_std().unwrap_or(Duration::ZERO).clamp(Duration::from_millis(50), poll)
                }
                _ => poll,
            }
        };
        tokio::select! {
            _ = notified => {}
            _ = freed => {}
            stop = sleep_or_shutdown(wait, &mut shutdown) => if stop { break },
        }
    }
    // Let deliveries in flight finish and record their attempts.
    let _ = slots.acquire_many(s.concurrency as u32).await;
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}
