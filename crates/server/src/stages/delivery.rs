//! Delivery workers: claim due outbox rows with a lease, send each through its channel,
//! record every attempt, and schedule retries. A row whose worker dies returns to the
//! queue when its lease expires, so nothing is lost; the webhook id and Message-ID come
//! from the delivery id, so a resend after a crash is recognisable as the same message.
//!
//! Isolation: the worker is a pipeline, not a batch. It keeps rows claimed ahead (up to
//! `delivery.batch_size`) and starts the next as soon as a slot frees, so a slow or dead
//! endpoint never holds up the rest; each host and each endpoint has its own concurrency cap,
//! and a row whose host or endpoint is at its cap is handed back for a moment without
//! counting an attempt. First attempts are claimed, and started, before retries.

use crate::app::App;
use crate::stages::sleep_or_shutdown;
use anyhow::Result;
use broadcast_core::{
    Bulletin, ChannelKind, Contact, ContactId, Delivery, DeliveryId, Endpoint, EndpointFormat,
    EndpointHealthAction, EndpointId,
};
use broadcast_distribute::email::{EmailChannel, EmailMessage};
use broadcast_distribute::render::{DigestContext, DigestItem, EmailContext};
use broadcast_distribute::retry::RetryPolicy;
use broadcast_distribute::webhook::{WebhookChannel, WebhookMessage};
use broadcast_distribute::{Channel, DeliveryError, Receipt, payload};
use broadcast_store::{AttemptOutcome, AttemptRecord};
use chrono::Utc;
use rand::Rng;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub struct Worker {
    app: App,
    id: String,
    email: Arc<EmailChannel>,
    webhook: Arc<WebhookChannel>,
    policy: RetryPolicy,
    cache: Mutex<Cache>,
    /// Concurrency caps per webhook host and per endpoint.
    caps: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    recorder: Recorder,
    /// Work only one task of this worker may do at a time: a digest being sent (`digest:…`),
    /// a failing endpoint's warning (`warn:…`).
    in_flight: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Holds a key of [`Worker::in_flight`] until dropped.
struct InFlight {
    set: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// `None` if another task holds `key`.
    fn take(set: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>, key: String) -> Option<Self> {
        set.lock().expect("in-flight lock").insert(key.clone()).then(|| InFlight { set: set.clone(), key })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.lock().expect("in-flight lock").remove(&self.key);
    }
}

/// A claimed delivery's recipient, read with its batch.
enum Recipient {
    Contact(Contact),
    Endpoint(Endpoint),
}

type Reply = oneshot::Sender<Result<(), String>>;

/// Group commit for attempts: deliveries finishing at about the same time are recorded in
/// one transaction. Each sender waits for its own commit, so a delivery's slot is freed only
/// once its attempt is durable — the rows in flight stay bounded by the concurrency.
struct Recorder {
    tx: mpsc::UnboundedSender<(DeliveryId, AttemptRecord, Reply)>,
}

/// Most attempts written in one transaction.
const RECORD_BATCH: usize = 512;

impl Recorder {
    fn start(store: broadcast_store::Store) -> Recorder {
        let (tx, mut rx) = mpsc::unbounded_channel::<(DeliveryId, AttemptRecord, Reply)>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < RECORD_BATCH {
                    match rx.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let (items, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|(id, rec, reply)| ((id, rec), reply)).unzip();
                match store.record_attempts(&items).await {
                    Ok(results) => {
                        for (reply, r) in replies.into_iter().zip(results) {
                            let _ = reply.send(r.map_err(|e| e.to_string()));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(why.clone()));
                        }
                    }
                }
            }
        });
        Recorder { tx }
    }

    async fn record(&self, id: DeliveryId, rec: AttemptRecord) -> Result<(), String> {
        let (reply, done) = oneshot::channel();
        self.tx.send((id, rec, reply)).map_err(|_| "the attempt recorder has stopped".to_owned())?;
        done.await.map_err(|_| "the attempt recorder has stopped".to_owned())?
    }
}

/// So a fan-out of thousands reads each bulletin and organisation once. Bulletins are
/// immutable once published (a withdrawal cancels their rows), so caching them is safe.
#[derive(Default)]
struct Cache {
    bulletins: HashMap<String, Arc<Bulletin>>,
    /// The same bulletins as template values, made once each.
    values: HashMap<String, minijinja::Value>,
    /// Webhook bodies by bulletin and format: the same bytes for every endpoint of a format.
    payloads: HashMap<(String, EndpointFormat), String>,
    orgs: HashMap<String, String>,
}

/// How long a delivery waits for its host's or endpoint's cap before it is deferred.
const CAP_WAIT: Duration = Duration::from_millis(50);

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
            recorder: Recorder::start(app.store.clone()),
            in_flight: Arc::default(),
            app,
            cache: Mutex::new(Cache::default()),
            caps: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A permit from the cap named `key` (created with `size` slots), if one frees within
    /// [`CAP_WAIT`]: a delivery finishing (recording its attempt) frees it in milliseconds,
    /// while a slow or dead receiver keeps it — then the row is deferred instead.
    async fn try_cap(&self, key: String, size: usize) -> Option<OwnedSemaphorePermit> {
        let sem = self
            .caps
            .lock()
            .expect("cap map lock")
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(size)))
            .clone();
        match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => tokio::time::timeout(CAP_WAIT, sem.acquire_owned()).await.ok()?.ok(),
        }
    }

    /// Returns a claimed row to the queue, due now, without counting an attempt.
    async fn hand_back(&self, d: &Delivery) {
        if let Err(e) = self.app.store.defer_delivery(&d.id, d.next_attempt_at).await {
            tracing::error!(delivery.id = %d.id, error = %e, "could not hand a delivery back");
        }
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
    async fn deliver_one(&self, d: Delivery, recipient: Option<Recipient>) -> bool {
        let s = &self.app.settings.delivery;
        let _caps = if d.channel == ChannelKind::Webhook {
            let host = url::Url::parse(&d.address)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            let host_cap = self.try_cap(format!("host:{host}"), s.per_host_concurrency).await;
            let endpoint_cap = match &host_cap {
                Some(_) => self.try_cap(format!("ep:{}", d.recipient_id), s.per_endpoint_concurrency).await,
                None => None,
            };
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
        // Whether a success has a failure streak to clear (unknown: assume so).
        let had_streak = match &recipient {
            Some(Recipient::Endpoint(e)) => e.consecutive_failures > 0 || e.failing_since.is_some(),
            _ => true,
        };
        // A digest email carries every pending row of its contact and digest time.
        // Rows of one digest claimed in the same batch: the first sends it for all of them.
        let _digest_guard = match d.digest_at {
            Some(at) => {
                match InFlight::take(&self.in_flight, format!("digest:{}:{}", d.recipient_id, at.timestamp()))
                {
                    Some(guard) => Some(guard),
                    None => return true,
                }
            }
            None => None,
        };
        let group = match d.digest_at {
            Some(at) => match self.claim_digest(&d, at).await {
                Some(group) => group,
                None => return true,
            },
            None => vec![d.clone()],
        };
        let result = self.attempt(&d, recipient, &group, &self.cache).await;
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
        // The error that counts against a webhook endpoint's health (None: it answered well).
        let rec_outcome: Option<String> = match &outcome {
            AttemptOutcome::Delivered => None,
            AttemptOutcome::Retry { error, .. } | AttemptOutcome::Failed { error } => Some(error.clone()),
        }
        .filter(|e| !e.starts_with("endpoint disabled"));
        let rec = AttemptRecord { started_at, duration_ms, outcome, detail };
        for row in &group {
            if let Err(e) = self.recorder.record(row.id.clone(), rec.clone()).await {
                // The lease expires and the row is tried again: at worst a duplicate with the
                // same webhook-id / Message-ID, never a loss.
                tracing::error!(delivery.id = %row.id, error = %e, "could not record attempt");
            }
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
        // A webhook endpoint's failure streak: warn its organisation, then disable it.
        if d.channel == ChannelKind::Webhook
            && gone.is_none()
            && let Ok(eid) = d.recipient_id.parse::<EndpointId>()
        {
            match &rec_outcome {
                Some(error) => self.endpoint_failed(&eid, error).await,
                None if !had_streak => {}
                None => {
                    if let Err(e) = self.app.store.note_endpoint_result(&eid, true, Utc::now()).await {
                        tracing::error!(endpoint.id = %eid, error = %e, "could not note endpoint health");
                    }
                }
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

    /// After a failed webhook attempt: extend the endpoint's failure streak, warn its
    /// organisation once the streak is long enough, and disable it (with a notice) once it
    /// has lasted `delivery.disable_endpoint_after_secs`.
    async fn endpoint_failed(&self, eid: &EndpointId, error: &str) {
        let s = &self.app.settings.delivery;
        let now = Utc::now();
        let ep = match self.app.store.note_endpoint_result(eid, false, now).await {
            Ok(ep) => ep,
            Err(e) => {
                tracing::error!(endpoint.id = %eid, error = %e, "could not note endpoint health");
                return;
            }
        };
        let period = chrono::Duration::seconds(s.disable_endpoint_after_secs as i64);
        let since = ep.failing_since.unwrap_or(now);
        match ep.health_action(now, s.warn_endpoint_after_failures, period) {
            EndpointHealthAction::Nothing => {}
            EndpointHealthAction::Warn => {
                // Sent first and marked once someone has it (or there is nobody to tell), so a
                // failed send is tried again at the next failure; one task at a time here.
                if let Some(_guard) = InFlight::take(&self.in_flight, format!("warn:{eid}")) {
                    let subject = format!(
                        "Action needed: your Broadcast webhook endpoint is failing ({})",
                        host_of(&ep.url)
                    );
                    let text = format!(
                        "Your webhook endpoint\n\n  {url}\n\nhas failed the last {n} delivery attempts, since {since} UTC.\nLast error: {error}\n\nBroadcast keeps retrying. If it is still failing at {deadline} UTC it will be\ndisabled, and bulletins will no longer reach it until it is enabled again.\n",
                        url = ep.url,
                        n = ep.consecutive_failures,
                        since = since.format("%Y-%m-%d %H:%M"),
                        deadline = (since + period).format("%Y-%m-%d %H:%M"),
                    );
                    let (eligible, sent) = self.notify_org(&ep, "warning", &subject, &text).await;
                    if (sent > 0 || eligible == 0)
                        && let Ok(true) = self.app.store.mark_endpoint_warned(eid, error, now).await
                    {
                        tracing::warn!(endpoint.id = %eid, failures = ep.consecutive_failures, sent, "endpoint failing: organisation warned");
                    }
                }
            }
            EndpointHealthAction::Disable => {
                let reason = format!(
                    "failing continuously since {} UTC ({} attempts); last error: {error}",
                    since.format("%Y-%m-%d %H:%M"),
                    ep.consecutive_failures
                );
                match self.app.store.disable_failing_endpoint(eid, &reason, now).await {
                    Ok(true) => {
                        tracing::warn!(endpoint.id = %eid, reason = %reason, "failing endpoint disabled");
                        // The notice is owed in the store (same transaction as the disabling)
                        // and sent from there: a failed send is tried again, across restarts.
                        self.send_disable_notices().await;
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(endpoint.id = %eid, error = %e, "could not disable endpoint"),
                }
            }
        }
    }

    /// Sends every disable notice that is due; one that could not be sent to anyone who could
    /// get it is tried again after `delivery.notice_retry_secs`.
    pub async fn send_disable_notices(&self) {
        let now = Utc::now();
        let due = match self.app.store.due_disable_notices(now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "could not read due disable notices");
                return;
            }
        };
        for (ep, reason) in due {
            let Some(_guard) = InFlight::take(&self.in_flight, format!("disabled:{}", ep.id)) else {
                continue;
            };
            let subject = format!("Your Broadcast webhook endpoint has been disabled ({})", host_of(&ep.url));
            let text = format!(
                "Your webhook endpoint\n\n  {url}\n\nhas been disabled: it has been {reason}.\n\nBulletins no longer reach it. Once it works again, ask your Broadcast\nadministrator to enable it and replay what it missed.\n",
                url = ep.url,
            );
            let (eligible, sent) = self.notify_org(&ep, "disabled", &subject, &text).await;
            let wait = self.app.settings.delivery.notice_retry_secs.max(1);
            let retry =
                (sent == 0 && eligible > 0).then(|| Utc::now() + chrono::Duration::seconds(wait as i64));
            if retry.is_some() {
                tracing::warn!(endpoint.id = %ep.id, retry_in_secs = wait, "disable notice not sent: will try again");
            }
            if let Err(e) = self.app.store.disable_notice_done(&ep.id, retry).await {
                tracing::error!(endpoint.id = %ep.id, error = %e, "could not record the disable notice");
            }
        }
    }

    /// Emails an organisation's contacts (not unsubscribed or suppressed) about one of its
    /// endpoints. The Message-ID is stable per endpoint, kind and failure streak.
    /// Returns how many contacts could be told and how many were.
    async fn notify_org(&self, ep: &Endpoint, kind: &str, subject: &str, text: &str) -> (usize, usize) {
        let contacts = match self.app.store.list_contacts(&ep.org_id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(org.id = %ep.org_id, error = %e, "could not list contacts for a notice");
                return (1, 0);
            }
        };
        let eligible: Vec<&Contact> =
            contacts.iter().filter(|c| !c.unsubscribed && c.suppressed_reason.is_none()).collect();
        let streak = ep.failing_since.map(|t| t.timestamp()).unwrap_or_default();
        let mut sent = 0;
        for c in &eligible {
            let msg = EmailMessage {
                delivery_id: format!("notice-{kind}-{}-{streak}-{}", ep.id, c.id),
                to: c.email.clone(),
                to_name: c.name.clone(),
                rendered: broadcast_distribute::render::notice_email(subject, text),
                unsubscribe_url: self.app.unsubscribe_url(c.id.as_str()),
            };
            match self.email.deliver(&msg).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    tracing::error!(contact.id = %c.id, error = %e, "could not send endpoint {kind} notice")
                }
            }
        }
        if sent == 0 {
            tracing::warn!(org.id = %ep.org_id, endpoint.id = %ep.id, "no contact could be sent the endpoint {kind} notice");
        }
        (eligible.len(), sent)
    }

    /// The contacts and endpoints of a claimed batch, read in two queries rather than one
    /// per delivery. A recipient missing here is read again when it is delivered.
    async fn recipients(&self, rows: &[Delivery]) -> HashMap<String, Recipient> {
        let contacts: Vec<ContactId> = rows
            .iter()
            .filter(|d| d.channel == ChannelKind::Email)
            .filter_map(|d| d.recipient_id.parse().ok())
            .collect();
        let endpoints: Vec<EndpointId> = rows
            .iter()
            .filter(|d| d.channel == ChannelKind::Webhook)
            .filter_map(|d| d.recipient_id.parse().ok())
            .collect();
        let mut out = HashMap::new();
        match self.app.store.get_contacts(&contacts).await {
            Ok(cs) => out.extend(cs.into_iter().map(|c| (c.id.to_string(), Recipient::Contact(c)))),
            Err(e) => tracing::warn!(error = %e, "could not read a batch of contacts"),
        }
        match self.app.store.get_endpoints(&endpoints).await {
            Ok(es) => out.extend(es.into_iter().map(|e| (e.id.to_string(), Recipient::Endpoint(e)))),
            Err(e) => tracing::warn!(error = %e, "could not read a batch of endpoints"),
        }
        out
    }

    /// Leases the rest of `d`'s digest. `None` if `d` itself is no longer pending (another
    /// worker sent that digest, or it was cancelled meanwhile).
    async fn claim_digest(&self, d: &Delivery, at: chrono::DateTime<Utc>) -> Option<Vec<Delivery>> {
        let lease = Duration::from_secs(self.app.settings.delivery.lease_secs);
        match self.app.store.claim_digest(&self.id, &d.recipient_id, at, Utc::now(), lease).await {
            Ok(group) if group.iter().any(|g| g.id == d.id) => Some(group),
            Ok(_) => None,
            Err(e) => {
                tracing::error!(delivery.id = %d.id, error = %e, "could not claim a digest");
                Some(vec![d.clone()])
            }
        }
    }

    /// One email with every bulletin of the group. Its Message-ID comes from the group's
    /// oldest delivery and size, so a resend after a crash carries the same one.
    async fn send_digest(
        &self,
        contact: &Contact,
        organisation: String,
        at: chrono::DateTime<Utc>,
        group: &[Delivery],
        unsubscribe_url: String,
        cache: &Mutex<Cache>,
    ) -> Result<Receipt, DeliveryError> {
        let mut items = Vec::with_capacity(group.len());
        for row in group {
            let b = self.bulletin(row.bulletin_id.as_str(), cache).await?;
            items.push(DigestItem {
                bulletin_url: self.app.bulletin_url(&b.reference),
                body_allowed: b.content.tlp.allowed_in_email_body(),
                bulletin: (*b).clone(),
            });
        }
        let highest = items.iter().map(|i| i.bulletin.content.threat_level).max().map(|l| l.to_string());
        let ctx = DigestContext {
            organisation,
            recipient_name: contact.name.clone(),
            unsubscribe_url: unsubscribe_url.clone(),
            date: at.format("%Y-%m-%d").to_string(),
            highest,
            items,
        };
        let rendered = self
            .app
            .renderer
            .render_digest(&ctx)
            .map_err(|e| DeliveryError::Transient(format!("rendering: {e}")))?;
        let first = group.first().map(|g| g.id.to_string()).unwrap_or_default();
        let msg = EmailMessage {
            delivery_id: format!("digest-{first}-{}", group.len()),
            to: contact.email.clone(),
            to_name: contact.name.clone(),
            rendered,
            unsubscribe_url,
        };
        self.email.deliver(&msg).await
    }

    /// A published bulletin, read once per worker.
    async fn bulletin(&self, id: &str, cache: &Mutex<Cache>) -> Result<Arc<Bulletin>, DeliveryError> {
        if let Some(b) = cache.lock().await.bulletins.get(id) {
            return Ok(b.clone());
        }
        let b = Arc::new(self.app.store.get_bulletin(id).await.map_err(store_err)?);
        cache.lock().await.bulletins.insert(id.to_owned(), b.clone());
        Ok(b)
    }

    /// A published bulletin as a template value, made once per worker.
    async fn bulletin_value(&self, id: &str, b: &Bulletin, cache: &Mutex<Cache>) -> minijinja::Value {
        let mut c = cache.lock().await;
        c.values
            .entry(id.to_owned())
            .or_insert_with(|| broadcast_distribute::render::bulletin_value(b))
            .clone()
    }

    async fn attempt(
        &self,
        d: &Delivery,
        recipient: Option<Recipient>,
        group: &[Delivery],
        cache: &Mutex<Cache>,
    ) -> Result<Receipt, DeliveryError> {
        {
            let mut c = cache.lock().await;
            if c.bulletins.len() > 1000 || c.orgs.len() > 10_000 {
                *c = Cache::default();
            }
        }
        let (bulletin, org_name) = {
            let b = self.bulletin(d.bulletin_id.as_str(), cache).await?;
            let mut c = cache.lock().await;
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
                let contact = match recipient {
                    Some(Recipient::Contact(c)) => c,
                    _ => self.app.store.get_contact(&cid).await.map_err(store_err)?,
                };
                if contact.unsubscribed {
                    return Err(DeliveryError::Permanent("contact unsubscribed".into()));
                }
                if let Some(why) = &contact.suppressed_reason {
                    return Err(DeliveryError::Permanent(format!("not sent: {why}")));
                }
                let unsubscribe_url = self.app.unsubscribe_url(contact.id.as_str());
                if let Some(at) = d.digest_at {
                    return self.send_digest(&contact, org_name, at, group, unsubscribe_url, cache).await;
                }
                let ctx = EmailContext {
                    bulletin: self.bulletin_value(d.bulletin_id.as_str(), &bulletin, cache).await,
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
                let ep = match recipient {
                    Some(Recipient::Endpoint(e)) => e,
                    _ => self.app.store.get_endpoint(&eid).await.map_err(store_err)?,
                };
                if !ep.enabled {
                    return Err(DeliveryError::Permanent("endpoint disabled".into()));
                }
                let now = Utc::now();
                let msg = WebhookMessage {
                    id: d.id.to_string(),
                    url: ep.url.clone(),
                    secrets: ep.signing_secrets(now).into_iter().map(str::to_owned).collect(),
                    body: cache
                        .lock()
                        .await
                        .payloads
                        .entry((d.bulletin_id.to_string(), ep.format))
                        .or_insert_with(|| payload::for_format(ep.format, &bulletin, &bulletin_url))
                        .clone(),
                    timestamp: now.timestamp(),
                };
                self.webhook.deliver(&msg).await
            }
        }
    }
}

/// Rows of one claim, with their recipients.
type ClaimedBatch = (Vec<Delivery>, HashMap<String, Recipient>);

/// How often a worker looks for owed disable notices.
const NOTICE_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Rows claimed but not yet started: first attempts go before retries, and a row that waited
/// here for half its lease is handed back rather than sent late (another worker may take it
/// once the lease ends, and two sends would then be in flight).
struct Claimed {
    firsts: VecDeque<(Delivery, Option<Recipient>, Instant)>,
    retries: VecDeque<(Delivery, Option<Recipient>, Instant)>,
}

impl Claimed {
    fn len(&self) -> usize {
        self.firsts.len() + self.retries.len()
    }

    fn push(&mut self, d: Delivery, r: Option<Recipient>) {
        let q = if d.attempts == 0 { &mut self.firsts } else { &mut self.retries };
        q.push_back((d, r, Instant::now()));
    }

    fn pop(&mut self) -> Option<(Delivery, Option<Recipient>, Instant)> {
        self.firsts.pop_front().or_else(|| self.retries.pop_front())
    }

    fn drain(&mut self) -> impl Iterator<Item = Delivery> + '_ {
        self.firsts.drain(..).chain(self.retries.drain(..)).map(|(d, _, _)| d)
    }
}

/// Runs a worker until shutdown: keeps up to `delivery.concurrency` deliveries in flight and
/// up to `delivery.batch_size` more claimed ahead, so a slot that frees starts its next
/// delivery at once and claims are few and large (each is a write transaction); when nothing
/// is due it waits for a publish (woken at once) or the next due retry.
pub async fn run(app: App, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let worker = Arc::new(Worker::new(app.clone())?);
    tracing::info!(worker.id = %worker.id, "delivery worker started");
    let s = app.settings.delivery.clone();
    let slots = Arc::new(Semaphore::new(s.concurrency));
    let slot_freed = Arc::new(Notify::new());
    let poll = Duration::from_millis(s.poll_interval_ms);
    let ahead = (s.batch_size.max(1) as usize).max(s.concurrency);
    let stale = Duration::from_secs(s.lease_secs.max(2) / 2);
    let mut claimed = Claimed { firsts: VecDeque::new(), retries: VecDeque::new() };
    // Whether the last claim found fewer due rows than it asked for: then claim again only when
    // woken by a publish, or when the wait below ends.
    let mut dry = false;
    // The claim running, if any (how many rows it asked for, and its task), and whether a
    // publish woke the worker meanwhile: that claim may have run before the publish committed,
    // so coming back short does not mean nothing is due.
    let mut claiming: Option<(usize, JoinHandle<Result<ClaimedBatch>>)> = None;
    let mut woken_while_claiming = false;
    // Owed disable notices (a send failed, or the process stopped) are looked at every minute.
    let mut last_notice_sweep: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let sweep_every = NOTICE_SWEEP_EVERY.min(Duration::from_secs(s.notice_retry_secs.max(1)));
        if last_notice_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
            last_notice_sweep = Some(Instant::now());
            let w = worker.clone();
            tokio::spawn(async move { w.send_disable_notices().await });
        }
        let notified = app.wake_delivery.notified();
        let freed = slot_freed.notified();
        // Start what was claimed, as far as slots allow.
        while claimed.len() > 0 {
            let Ok(permit) = slots.clone().try_acquire_owned() else { break };
            let Some((d, recipient, at)) = claimed.pop() else { break };
            if at.elapsed() > stale {
                worker.hand_back(&d).await;
                continue;
            }
            let (w, freed_tx) = (worker.clone(), slot_freed.clone());
            tokio::spawn(async move {
                w.deliver_one(d, recipient).await;
                drop(permit);
                freed_tx.notify_one();
            });
        }
        // Claim more once half of what was claimed ahead has started. The claim (a write
        // transaction) and the read of its recipients run in their own task, so slots that
        // free meanwhile start the rows already queued instead of waiting on the claim.
        if !dry && claiming.is_none() && claimed.len() <= ahead / 2 {
            let want = ahead - claimed.len();
            let w = worker.clone();
            claiming = Some((
                want,
                tokio::spawn(async move {
                    let rows = w.claim(want as i64).await?;
                    let recipients = w.recipients(&rows).await;
                    Ok((rows, recipients))
                }),
            ));
        }
        let wait = if claiming.is_some() || claimed.len() > 0 || slots.available_permits() == 0 {
            // Busy: a claim ending or a slot freeing wakes this loop; the timer only bounds the wait.
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
            // (A branch whose condition is false is never polled, so the `expect` cannot fire.)
            joined = async { (&mut claiming.as_mut().expect("a claim is running").1).await },
                if claiming.is_some() => {
                let want = claiming.take().map_or(0, |(want, _)| want);
                let woken = std::mem::take(&mut woken_while_claiming);
                // A claim that panicked is reported like one that failed.
                match joined.unwrap_or_else(|e| Err(anyhow::anyhow!("the claim task failed: {e}"))) {
                    Ok((rows, mut recipients)) => {
                        dry = rows.len() < want && !woken;
                        for d in rows {
                            let recipient = recipients.remove(d.recipient_id.as_str());
                            claimed.push(d, recipient);
                        }
                    }
                    Err(e) => {
                        dry = true;
                        tracing::error!(error = %e, "claiming deliveries failed")
                    }
                }
            }
            _ = notified => {
                dry = false;
                woken_while_claiming = claiming.is_some();
            }
            _ = freed => {}
            stop = sleep_or_shutdown(wait, &mut shutdown) => {
                if stop { break }
                dry = false;
            }
        }
    }
    // Rows claimed but not started go back to the queue now, for this or another worker,
    // rather than when their leases end (a claim still running is waited for first).
    if let Some((_, task)) = claiming
        && let Ok(Ok((rows, _))) = task.await
    {
        for d in rows {
            claimed.push(d, None);
        }
    }
    for d in claimed.drain() {
        worker.hand_back(&d).await;
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

fn host_of(url: &str) -> String {
    url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_else(|| url.to_owned())
}

fn store_err(e: broadcast_store::StoreError) -> DeliveryError {
    DeliveryError::Transient(format!("store: {e}"))
}
