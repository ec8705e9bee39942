//! The running application: the store, the configured parts, and the wake-ups between
//! stages. Stages hand work to each other through the database; a `Notify` only shortens
//! the wait (DESIGN.md §1).

use crate::config::Settings;
use anyhow::{Context, Result};
use broadcast_core::{AdvisoryId, AnalystId, Bulletin, ThreatLevel, Tlp};
use broadcast_distribute::email::EmailChannel;
use broadcast_distribute::render::EmailContext;
use broadcast_distribute::render::Renderer;
use broadcast_distribute::webhook::WebhookChannel;
use broadcast_store::{Store, StoreError};
use broadcast_triage::Rules;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Clone)]
pub struct App {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub renderer: Arc<Renderer>,
    pub rules: Arc<Rules>,
    pub wake_triage: Arc<Notify>,
    pub wake_delivery: Arc<Notify>,
    /// Failed console sign-ins, per account and client address.
    pub signins: Arc<crate::console::SignInLimiter>,
    /// This process, as a lease holder (feeds) among the nodes sharing the store.
    pub node: Arc<str>,
}

impl App {
    /// Connects to the store and applies pending migrations.
    pub async fn open(settings: Settings) -> Result<App> {
        let url = settings.store_url();
        let store =
            Store::connect(&url).await.with_context(|| format!("cannot open store {}", redact(&url)))?;
        store.migrate().await.context("cannot migrate the store")?;
        let renderer = Renderer::from_dir(settings.path(&settings.bulletins.templates_dir))?;
        let rules = settings.triage_rules()?;
        Ok(App {
            settings: Arc::new(settings),
            store,
            renderer: Arc::new(renderer),
            rules: Arc::new(rules),
            wake_triage: Arc::new(Notify::new()),
            wake_delivery: Arc::new(Notify::new()),
            signins: Arc::default(),
            node: Arc::from(format!("node-{}", uuid::Uuid::now_v7().simple()).as_str()),
        })
    }

    /// The email channel, with relative paths resolved.
    pub fn email_channel(&self) -> Result<EmailChannel> {
        Ok(EmailChannel::new(&self.settings.email_settings())?)
    }

    pub fn webhook_channel(&self) -> Result<WebhookChannel> {
        WebhookChannel::new(&self.settings.webhook).map_err(anyhow::Error::msg)
    }

    /// Checks a webhook URL an organisation registers: http(s), a host, no credentials, and
    /// — for IP literals — the SSRF guard now (hostnames are checked each time they resolve).
    pub fn check_endpoint_url(&self, raw: &str) -> Result<(), String> {
        crate::validate_webhook_url(raw)?;
        let policy = broadcast_distribute::ssrf::AddressPolicy::new(&self.settings.webhook.allow_networks)?;
        let url = url::Url::parse(raw.trim()).map_err(|e| e.to_string())?;
        policy.check_url(&url).map_err(|e| e.to_string())
    }

    /// Public link to a bulletin.
    pub fn bulletin_url(&self, reference: &str) -> String {
        format!("{}/bulletins/{reference}", self.settings.api.public_url.trim_end_matches('/'))
    }

    /// A contact's one-click unsubscribe link.
    pub fn unsubscribe_url(&self, contact_id: &str) -> String {
        format!(
            "{}/unsubscribe?token={}",
            self.settings.api.public_url.trim_end_matches('/'),
            crate::auth::unsubscribe_token(&self.settings.security.link_secret, contact_id)
        )
    }
}

impl App {
    /// Stores an advisory as collected, joined to its real issue by triage's identity keys.
    pub async fn store_advisory(
        &self,
        content: &broadcast_core::AdvisoryContent,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<broadcast_store::Upserted, StoreError> {
        let keys = broadcast_triage::issue::identity_keys(content);
        self.store.upsert_advisory_keyed(content, &keys, now).await
    }
}

/// Why a bulletin action was refused: the user may not (role, four-eyes), or the store said
/// no (illegal transition, concurrent edit, not found).
#[derive(Debug)]
pub enum ActError {
    Forbidden(String),
    Store(StoreError),
}

impl App {
    /// Takes a bulletin action for `analyst` — the one path the API, the console and the CLI
    /// share: the role check, the store's four-eyes rule named for people, the log line, and
    /// waking the delivery workers after a publish.
    pub async fn act_on_bulletin(
        &self,
        analyst: &broadcast_core::Analyst,
        key: &str,
        action: broadcast_core::Action,
        comment: Option<&str>,
        version: Option<i32>,
    ) -> Result<broadcast_store::Transitioned, ActError> {
        if action.needs_second_pair_of_eyes() && !analyst.role.can_review() {
            return Err(ActError::Forbidden(format!(
                "{} (role {}) may not {action} bulletins",
                analyst.name, analyst.role
            )));
        }
        let comment = comment.map(str::trim).filter(|c| !c.is_empty());
        let t = self
            .store
            .transition_bulletin(key, action, &analyst.id, comment, version, chrono::Utc::now())
            .await
            .map_err(|e| match e {
                StoreError::Transition(broadcast_core::TransitionError::FourEyes { action, .. }) => {
                    ActError::Forbidden(crate::api::four_eyes(&analyst.name, action))
                }
                other => ActError::Store(other),
            })?;
        tracing::info!(
            bulletin.id = %t.bulletin.id, bulletin.reference = %t.bulletin.reference, action = %action,
            analyst = %analyst.name, deliveries = t.deliveries_created, "bulletin {}", t.bulletin.state
        );
        if t.deliveries_created > 0 {
            self.wake_delivery.notify_waiters();
            self.wake_delivery.notify_one();
        }
        Ok(t)
    }
}

/// Why an endpoint could not be registered.
#[derive(Debug)]
pub enum RegisterError {
    /// The URL or the secret is not acceptable; the message says why.
    Invalid(String),
    Store(StoreError),
}

impl App {
    /// Registers a webhook endpoint for an organisation — the one path the API, the console
    /// and the CLI share: the URL through the SSRF policy, the given secret checked or a new
    /// one made, audited as `actor`'s. Returns the endpoint and its secret (to show once).
    pub async fn register_endpoint(
        &self,
        actor: &str,
        org: &str,
        url: &str,
        secret: Option<String>,
        format: broadcast_core::EndpointFormat,
    ) -> Result<(broadcast_core::Endpoint, String), RegisterError> {
        let url = url.trim();
        self.check_endpoint_url(url).map_err(RegisterError::Invalid)?;
        let secret = match secret {
            Some(s) => {
                broadcast_distribute::sign::validate_secret(&s)
                    .map_err(|e| RegisterError::Invalid(e.to_string()))?;
                s
            }
            None => broadcast_distribute::sign::secret_from_bytes(&crate::auth::random_secret_bytes()),
        };
        let ep = self
            .store
            .add_endpoint_by(actor, org, url, &secret, format, chrono::Utc::now())
            .await
            .map_err(RegisterError::Store)?;
        Ok((ep, secret))
    }
}

/// A candidate standing for its issue: the issue id and the other records
/// `(advisory id, source)` of the same issue.
pub type IssueRow = (broadcast_store::Candidate, String, Vec<(String, String)>);

/// What an analyst may set when drafting, over what triage proposes.
#[derive(Debug, Default)]
pub struct DraftOverrides {
    pub title: Option<String>,
    pub threat_level: Option<ThreatLevel>,
    pub tlp: Option<Tlp>,
    pub summary: Option<String>,
    pub remediation: Option<String>,
}

impl App {
    /// Drafts a bulletin from advisories (triage proposes the content) with the analyst's
    /// overrides, under the next human reference.
    pub async fn draft_bulletin(
        &self,
        author: &AnalystId,
        ids: &[AdvisoryId],
        o: DraftOverrides,
    ) -> Result<Bulletin, StoreError> {
        let mut items = Vec::new();
        for id in ids {
            items.push((self.store.get_advisory(id).await?, self.store.latest_assessment(id).await?));
        }
        let mut content = broadcast_triage::draft_bulletin(&items);
        content.title = o.title.unwrap_or(content.title);
        content.threat_level = o.threat_level.unwrap_or(content.threat_level);
        content.tlp = o.tlp.unwrap_or(content.tlp);
        content.summary = o.summary.unwrap_or(content.summary);
        content.remediation = o.remediation.unwrap_or(content.remediation);
        self.store
            .create_bulletin(
                &content,
                ids,
                author,
                &self.settings.bulletins.reference_prefix,
                chrono::Utc::now(),
            )
            .await
    }

    /// One row per real issue: of the candidates that are records of the same issue, the
    /// highest-scored stays (the list keeps its order) and lists the others as
    /// `(advisory id, source)`.
    pub async fn collapse_issues(
        &self,
        list: Vec<broadcast_store::Candidate>,
    ) -> Result<Vec<IssueRow>, StoreError> {
        let ids: Vec<AdvisoryId> = list.iter().map(|c| c.advisory.id.clone()).collect();
        let issues = self.store.issue_ids(&ids).await?;
        let mut out: Vec<IssueRow> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for c in list {
            let id = c.advisory.id.to_string();
            let issue = issues.get(&id).cloned().unwrap_or_else(|| id.clone());
            match index.get(&issue) {
                Some(&i) => {
                    let other = (id, c.advisory.content.source.clone());
                    let keep = &mut out[i];
                    if c.assessment.score > keep.0.assessment.score {
                        let prev = std::mem::replace(&mut keep.0, c);
                        keep.2.push((prev.advisory.id.to_string(), prev.advisory.content.source.clone()));
                    } else {
                        keep.2.push(other);
                    }
                }
                None => {
                    index.insert(issue.clone(), out.len());
                    out.push((c, issue, Vec::new()));
                }
            }
        }
        // The list was sorted by score; a replaced representative may have moved up.
        out.sort_by(|a, b| b.0.assessment.score.total_cmp(&a.0.assessment.score));
        Ok(out)
    }

    /// Storm control: candidates folded into groups per vendor/product (see
    /// `broadcast_triage::group`), worst first.
    pub fn group_candidates(
        &self,
        list: &[broadcast_store::Candidate],
    ) -> Vec<broadcast_triage::group::Group> {
        let items = list
            .iter()
            .map(|c| broadcast_triage::group::Item {
                id: c.advisory.id.to_string(),
                key: broadcast_triage::group_key(&c.advisory),
                level: c.assessment.threat_level,
                score: c.assessment.score,
                changed_at: c.advisory.last_changed,
            })
            .collect();
        let t = &self.settings.triage;
        broadcast_triage::group::group(
            items,
            chrono::Duration::minutes(t.storm_window_minutes),
            t.storm_min_burst,
        )
    }

    /// The context a preview renders with: a sample recipient, the real links.
    pub fn preview_context(&self, b: &Bulletin) -> EmailContext {
        EmailContext {
            bulletin: b.clone(),
            organisation: "Example Organisation".into(),
            recipient_name: "Recipient".into(),
            unsubscribe_url: format!(
                "{}/unsubscribe?token=preview",
                self.settings.api.public_url.trim_end_matches('/')
            ),
            bulletin_url: self.bulletin_url(&b.reference),
            body_allowed: b.content.tlp.allowed_in_email_body(),
        }
    }
}

/// Hides a password in a database URL for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
