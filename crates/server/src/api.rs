//! The JSON HTTP API (and the unsubscribe endpoint recipients reach from their email).
//!
//! Authentication: `Authorization: Bearer <token>`, tokens stored hashed. Roles are checked
//! here for every action; the four-eyes rule is enforced by the core state machine and the
//! store, never by the client. Errors map to status codes in [`ApiError`], and a 5xx is
//! logged once with an opaque body.

use crate::app::App;
use crate::auth::{hash_token, verify_unsubscribe_token};
use crate::routes::{Access, CurrentUser, Routes, Surface};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use broadcast_core::{
    Action, AdvisoryId, Analyst, BulletinContent, BulletinState, ContactId, DeliveryId, Role, ThreatLevel,
    Tlp, TransitionError,
};
use broadcast_store::{CandidateFilter, StoreError};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

/// Every way a request can fail, and its status code.
#[derive(Debug)]
pub enum ApiError {
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    Internal(anyhow::Error),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Conflict(_) => ApiError::Conflict(e.to_string()),
            StoreError::Invalid { .. } => ApiError::BadRequest(e.to_string()),
            StoreError::Transition(TransitionError::FourEyes { .. }) => ApiError::Forbidden(e.to_string()),
            StoreError::Transition(TransitionError::Illegal { .. }) => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl From<crate::app::RegisterError> for ApiError {
    fn from(e: crate::app::RegisterError) -> Self {
        match e {
            crate::app::RegisterError::Invalid(m) => ApiError::BadRequest(m),
            crate::app::RegisterError::Store(e) => e.into(),
        }
    }
}

impl From<crate::app::ActError> for ApiError {
    fn from(e: crate::app::ActError) -> Self {
        match e {
            crate::app::ActError::Forbidden(m) => ApiError::Forbidden(m),
            crate::app::ActError::Store(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, msg) = match self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "missing or invalid API token".to_owned()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            ApiError::BadRequest(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m),
            ApiError::Internal(e) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(error = %format!("{e:#}"), error.id = %id, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("internal error (reference {id})"))
            }
        };
        let mut resp = (status, Json(json!({ "error": msg }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
        }
        resp
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The analyst a request is authenticated as.
pub struct Authed(pub Analyst);

impl FromRequestParts<App> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        if let Some(CurrentUser(a)) = parts.extensions.get::<CurrentUser>() {
            return Ok(Authed(a.clone()));
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let analyst =
            app.store.analyst_by_token_hash(&hash_token(token)).await?.ok_or(ApiError::Unauthorized)?;
        Ok(Authed(analyst))
    }
}

fn require(a: &Analyst, ok: bool, what: &str) -> ApiResult<()> {
    if ok { Ok(()) } else { Err(ApiError::Forbidden(format!("{} (role {}) may not {what}", a.name, a.role))) }
}

/// An optional JSON body: empty means the type's defaults (a transition without a comment,
/// a rotation with the default overlap); anything else must parse.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("request body: {e}")))
    }
}

/// The four-eyes refusal, naming the analyst rather than their id.
pub fn four_eyes(name: &str, action: Action) -> String {
    format!("four-eyes rule: {name} wrote this bulletin and cannot {action} it; another analyst must")
}

/// JSON bodies that fail to parse are a 422 naming the problem, like every other bad input.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// The whole HTTP surface: the JSON API, the public pages and the console.
pub fn router(app: App) -> Router {
    let (router, _) = routes(app.clone()).finish();
    router.layer(tower_http::limit::RequestBodyLimitLayer::new(1024 * 1024)).with_state(app)
}

/// Every route with the least role it needs (see `crate::routes`). Roles finer than a
/// route (approving needs a reviewer, the four-eyes rule) are checked again inside.
pub fn routes(app: App) -> Routes {
    use Access::{Least, Public};
    use Method as M;
    use Surface::Api;
    let (analyst, admin) = (Least(Role::Analyst), Least(Role::Admin));
    let r = Routes::new(app)
        .add(Api, M::GET, "/healthz", Public, "Liveness: the store answers.", healthz)
        .add(Api, M::GET, "/metrics", Public, "Prometheus metrics (aggregate counts and feed health).", metrics)
        .add(Api, M::GET, "/api/me", analyst, "The user the token belongs to.", me)
        .add(Api, M::GET, "/api/candidates", analyst, "Triage candidates, worst first, with storm groups.", candidates)
        .add(Api, M::GET, "/api/advisories/{id}", analyst, "One advisory with its assessment and revisions.", advisory)
        .add(Api, M::POST, "/api/advisories/{id}/override", analyst, "Correct triage's verdict, with a reason.", override_assessment)
        .add(Api, M::GET, "/api/audit", admin, "The hash-chained audit log.", audit_log)
        .add(Api, M::GET, "/api/bulletins", analyst, "Bulletins, optionally by state.", list_bulletins)
        .add(Api, M::POST, "/api/bulletins", analyst, "Draft a bulletin from advisories.", create_bulletin)
        .add(Api, M::GET, "/api/bulletins/{key}", analyst, "One bulletin and its history.", get_bulletin)
        .add(Api, M::PUT, "/api/bulletins/{key}", analyst, "Edit a draft (optimistic `version`).", edit_bulletin)
        .add(Api, M::GET, "/api/bulletins/{key}/preview", analyst, "The email (HTML and text) and webhook body.", preview)
        .add(Api, M::GET, "/api/bulletins/{key}/deliveries", analyst, "Delivery counts by state and every outbox row.", deliveries)
        .add(Api, M::POST, "/api/bulletins/{key}/{action}", analyst, "submit, recall, approve, reject, reopen, publish or withdraw (approve and reject need an approver other than the author).", transition)
        .add(Api, M::GET, "/api/deliveries/{id}/attempts", analyst, "One delivery and every attempt.", attempts)
        .add(Api, M::POST, "/api/deliveries/{id}/replay", analyst, "Send one delivery again (same id).", replay_delivery)
        .add(Api, M::POST, "/api/endpoints/{id}/replay", admin, "Send an endpoint's failed deliveries since a time again.", replay_endpoint)
        .add(Api, M::POST, "/api/endpoints/{id}/enable", admin, "Enable an endpoint.", enable_endpoint)
        .add(Api, M::POST, "/api/endpoints/{id}/disable", admin, "Disable an endpoint (pending deliveries suppressed).", disable_endpoint)
        .add(Api, M::POST, "/api/endpoints/{id}/rotate", admin, "New signing secret, the old one kept for an overlap.", rotate_endpoint)
        .add(Api, M::GET, "/api/organisations", analyst, "Subscribing organisations.", list_orgs)
        .add(Api, M::POST, "/api/organisations", admin, "Add an organisation.", create_org)
        .add(Api, M::GET, "/api/organisations/{key}", analyst, "One organisation with contacts and endpoints.", get_org)
        .add(Api, M::POST, "/api/organisations/{key}/contacts", admin, "Add a contact.", add_contact)
        .add(Api, M::PUT, "/api/organisations/{key}/interests", admin, "Set the vendors and products it runs.", set_interests)
        .add(Api, M::PUT, "/api/organisations/{key}/digest", admin, "Daily digest hour, or immediate.", set_digest)
        .add(Api, M::POST, "/api/organisations/{key}/endpoints", admin, "Register a webhook endpoint (secret shown once).", add_endpoint)
        .add(Api, M::GET, "/api/feeds", analyst, "Feeds and their health.", feeds)
        .add(Api, M::POST, "/api/incidents", Access::Partner, "A partner organisation reports an incident (its incident token); it enters triage, TLP:AMBER unless stated.", crate::incidents::submit)
        .body(crate::incidents::schema())
        .add(Api, M::GET, "/api/webhooks/public-key", Public, "The ed25519 key `v1a` signatures verify with.", webhook_public_key)
        .add(Api, M::GET, "/unsubscribe", Public, "The unsubscribe page an email links to.", unsubscribe_page)
        .add(Api, M::POST, "/unsubscribe", Public, "One-click unsubscribe (RFC 8058).", unsubscribe_post);
    crate::console::routes(r)
}

async fn healthz(State(app): State<App>) -> ApiResult<Json<Value>> {
    app.store.list_feed_states().await?;
    Ok(Json(json!({ "status": "ok" })))
}

/// The ed25519 public key (`whpk_…`) receivers verify `v1a` signatures with; 404 when no
/// signing key is configured. Public on purpose: it is what receivers need, and not a secret.
async fn webhook_public_key(State(app): State<App>) -> ApiResult<Json<Value>> {
    let key = app.settings.webhook.signing_key.as_deref().ok_or_else(|| {
        ApiError::NotFound("no webhook signing key is configured (webhook.signing_key)".into())
    })?;
    let key = broadcast_distribute::sign::AsymmetricKey::parse(key)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("webhook.signing_key: {e}")))?;
    Ok(Json(json!({ "public_key": key.public_key(), "scheme": "v1a" })))
}

/// Prometheus text format. Aggregate counts and feed health only: no advisory, bulletin or
/// subscriber content.
async fn metrics(State(app): State<App>) -> ApiResult<Response> {
    use std::fmt::Write;
    let m = app.store.metrics().await?;
    let feeds = app.store.list_feed_states().await?;
    let mut out = String::new();
    let mut family = |name: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let label = |k: &str, v: &str| format!("{{{k}=\"{}\"}}", v.replace('\\', "\\\\").replace('"', "\\\""));
    family(
        "broadcast_deliveries",
        "Outbox rows by state.",
        m.deliveries.iter().map(|(s, n)| (label("state", s), *n as f64)).collect(),
    );
    family(
        "broadcast_bulletins",
        "Bulletins by state.",
        m.bulletins.iter().map(|(s, n)| (label("state", s), *n as f64)).collect(),
    );
    family("broadcast_advisories", "Advisories stored.", vec![(String::new(), m.advisories as f64)]);
    family(
        "broadcast_relevant_candidates",
        "Advisories triage (or an analyst) found relevant.",
        vec![(String::new(), m.relevant_candidates as f64)],
    );
    family(
        "broadcast_feed_consecutive_failures",
        "Failed runs of a feed since its last success.",
        feeds.iter().map(|f| (label("feed", &f.feed_id), f.consecutive_failures as f64)).collect(),
    );
    family(
        "broadcast_feed_last_success_timestamp_seconds",
        "Unix time of a feed's last successful run.",
        feeds
            .iter()
            .filter_map(|f| f.last_success.map(|t| (label("feed", &f.feed_id), t.timestamp() as f64)))
            .collect(),
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

async fn me(Authed(a): Authed) -> Json<Analyst> {
    Json(a)
}

#[derive(Deserialize)]
struct CandidateQuery {
    #[serde(default)]
    all: bool,
    limit: Option<i64>,
}

async fn candidates(
    State(app): State<App>,
    _: Authed,
    Query(q): Query<CandidateQuery>,
) -> ApiResult<Json<Value>> {
    let list = app
        .store
        .list_candidates(&CandidateFilter {
            include_irrelevant: q.all,
            limit: q.limit.map(|l| l.clamp(1, 5000)),
        })
        .await?;
    let groups = app.group_candidates(&list);
    // One row per real issue; the other sources' records are listed with it.
    let rows: Vec<Value> = app
        .collapse_issues(list)
        .await?
        .into_iter()
        .map(|(c, issue, also)| {
            let mut v = json!(c);
            v["issue"] = json!(issue);
            v["also_reported_by"] = json!(
                also.iter().map(|(id, source)| json!({ "id": id, "source": source })).collect::<Vec<_>>()
            );
            v
        })
        .collect();
    Ok(Json(json!({ "candidates": rows, "groups": groups })))
}

fn parse<T: std::str::FromStr>(s: &str) -> ApiResult<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| ApiError::BadRequest(e.to_string()))
}

async fn advisory(State(app): State<App>, _: Authed, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id: AdvisoryId = parse(&id)?;
    let adv = app.store.get_advisory(&id).await?;
    let revisions = app.store.advisory_revisions(&id).await?;
    // Each revision with what changed since the one before, in words.
    let revisions: Vec<Value> = revisions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = json!(r);
            v["changes"] = json!(match i {
                0 => vec!["first seen".to_owned()],
                _ => r.content.changes_since(&revisions[i - 1].content),
            });
            v
        })
        .collect();
    let candidate = app.store.candidate(&id).await?;
    let (assessment, override_info) = match candidate {
        Some(c) => (Some(c.assessment), c.override_info),
        None => (None, None),
    };
    let sources: Vec<Value> = app
        .store
        .issue_members(&id)
        .await?
        .into_iter()
        .filter(|a| a.id != id)
        .map(|a| json!({ "id": a.id, "source": a.content.source, "external_id": a.content.external_id, "title": a.content.title }))
        .collect();
    Ok(Json(json!({
        "advisory": adv, "assessment": assessment, "override": override_info, "revisions": revisions,
        "same_issue": sources,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideBody {
    relevant: Option<bool>,
    threat_level: Option<String>,
    reason: String,
}

/// An analyst corrects triage's verdict on the advisory's current revision; the reason is
/// required, stored and audited.
async fn override_assessment(
    State(app): State<App>,
    Authed(a): Authed,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<OverrideBody>,
) -> ApiResult<Json<Value>> {
    let id: AdvisoryId = parse(&id)?;
    let level = req.threat_level.as_deref().map(parse::<ThreatLevel>).transpose()?;
    let c = app.store.override_assessment(&id, req.relevant, level, &req.reason, &a.id, Utc::now()).await?;
    tracing::info!(advisory.id = %id, analyst = %a.name, relevant = ?req.relevant, level = ?level, "triage overridden");
    Ok(Json(json!(c)))
}

#[derive(Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: i64,
    limit: Option<i64>,
}

async fn audit_log(
    State(app): State<App>,
    Authed(a): Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    require(&a, a.role.can_administer(), "read the audit log")?;
    let entries = app.store.audit_entries(q.after, q.limit.unwrap_or(200).clamp(1, 1000)).await?;
    Ok(Json(json!({ "entries": entries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBulletin {
    #[serde(default)]
    advisory_ids: Vec<String>,
    title: Option<String>,
    threat_level: Option<String>,
    tlp: Option<String>,
    summary: Option<String>,
    remediation: Option<String>,
}

async fn create_bulletin(
    State(app): State<App>,
    Authed(a): Authed,
    JsonBody(req): JsonBody<NewBulletin>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ids: Vec<AdvisoryId> = req.advisory_ids.iter().map(|s| parse(s)).collect::<ApiResult<_>>()?;
    let overrides = crate::app::DraftOverrides {
        title: req.title,
        threat_level: req.threat_level.as_deref().map(parse::<ThreatLevel>).transpose()?,
        tlp: req.tlp.as_deref().map(parse::<Tlp>).transpose()?,
        summary: req.summary,
        remediation: req.remediation,
    };
    let b = app.draft_bulletin(&a.id, &ids, overrides).await?;
    tracing::info!(bulletin.id = %b.id, bulletin.reference = %b.reference, analyst = %a.name, "bulletin drafted");
    Ok((StatusCode::CREATED, Json(json!(b))))
}

#[derive(Deserialize)]
struct BulletinQuery {
    state: Option<String>,
}

async fn list_bulletins(
    State(app): State<App>,
    _: Authed,
    Query(q): Query<BulletinQuery>,
) -> ApiResult<Json<Value>> {
    let state = q.state.as_deref().map(parse::<BulletinState>).transpose()?;
    Ok(Json(json!({ "bulletins": app.store.list_bulletins(state).await? })))
}

async fn get_bulletin(State(app): State<App>, _: Authed, Path(key): Path<String>) -> ApiResult<Json<Value>> {
    let b = app.store.get_bulletin(&key).await?;
    let events = app.store.bulletin_events(&b.id).await?;
    Ok(Json(json!({ "bulletin": b, "history": events })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBulletin {
    title: String,
    threat_level: ThreatLevel,
    tlp: Tlp,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    affected_products: Vec<String>,
    #[serde(default)]
    remediation: String,
    #[serde(default)]
    references: Vec<String>,
    #[serde(default)]
    cves: Vec<String>,
    /// The version the editor started from; a concurrent change makes the edit a conflict.
    version: Option<i32>,
}

async fn edit_bulletin(
    State(app): State<App>,
    Authed(a): Authed,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<EditBulletin>,
) -> ApiResult<Json<Value>> {
    let content = BulletinContent {
        title: req.title,
        threat_level: req.threat_level,
        tlp: req.tlp,
        summary: req.summary,
        affected_products: req.affected_products,
        remediation: req.remediation,
        references: req.references,
        cves: req.cves,
    };
    let b = app.store.update_bulletin_content(&key, &content, &a.id, req.version, Utc::now()).await?;
    Ok(Json(json!(b)))
}

/// What the email (HTML and text) and the webhook body will look like.
async fn preview(State(app): State<App>, _: Authed, Path(key): Path<String>) -> ApiResult<Json<Value>> {
    let b = app.store.get_bulletin(&key).await?;
    let ctx = app.preview_context(&b);
    let email = app.renderer.render_email("bulletin", &ctx).map_err(|e| ApiError::Internal(e.into()))?;
    let webhook: Value =
        serde_json::from_str(&broadcast_distribute::payload::bulletin_published(&b, &ctx.bulletin_url))
            .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Json(json!({ "email": email, "webhook": webhook })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransitionBody {
    comment: Option<String>,
    version: Option<i32>,
}

async fn transition(
    State(app): State<App>,
    Authed(a): Authed,
    Path((key, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    let action = Action::ALL
        .into_iter()
        .find(|x| x.as_str() == action)
        .ok_or_else(|| ApiError::NotFound(format!("no bulletin action `{action}`")))?;
    let body: TransitionBody = optional_json(&body)?;
    let t = app.act_on_bulletin(&a, &key, action, body.comment.as_deref(), body.version).await?;
    Ok(Json(json!(t)))
}

async fn deliveries(State(app): State<App>, _: Authed, Path(key): Path<String>) -> ApiResult<Json<Value>> {
    let b = app.store.get_bulletin(&key).await?;
    let counts = app.store.delivery_counts(&b.id).await?;
    let rows = app.store.deliveries_for_bulletin(&b.id).await?;
    Ok(Json(json!({ "bulletin": b.reference, "counts": counts, "deliveries": rows })))
}

async fn attempts(State(app): State<App>, _: Authed, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id: DeliveryId = parse(&id)?;
    let d = app.store.get_delivery(&id).await?;
    Ok(Json(json!({ "delivery": d, "attempts": app.store.delivery_attempts(&id).await? })))
}

/// Sends one delivery again (same id, so receivers can de-duplicate).
async fn replay_delivery(
    State(app): State<App>,
    Authed(a): Authed,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: DeliveryId = parse(&id)?;
    let d = app.store.replay_delivery(&id, a.id.as_str(), Utc::now()).await?;
    app.wake_delivery.notify_one();
    Ok(Json(json!(d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaySince {
    since: chrono::DateTime<Utc>,
}

/// Sends every failed delivery of an endpoint since a time again.
async fn replay_endpoint(
    State(app): State<App>,
    Authed(a): Authed,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<ReplaySince>,
) -> ApiResult<Json<Value>> {
    require(&a, a.role.can_administer(), "replay an endpoint's deliveries")?;
    let id: broadcast_core::EndpointId = parse(&id)?;
    let ids = app.store.replay_failed_for_endpoint(&id, req.since, a.id.as_str(), Utc::now()).await?;
    app.wake_delivery.notify_one();
    Ok(Json(json!({ "replayed": ids })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    reason: Option<String>,
}

async fn enable_endpoint(
    State(app): State<App>,
    a: Authed,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    set_endpoint_state(app, a, id, true, body).await
}

async fn disable_endpoint(
    State(app): State<App>,
    a: Authed,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    set_endpoint_state(app, a, id, false, body).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// Hours the old secret keeps signing alongside the new one (default 24).
    overlap_hours: Option<i64>,
}

/// A new signing secret, shown once; the old one keeps signing during the overlap.
async fn rotate_endpoint(
    State(app): State<App>,
    Authed(a): Authed,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    require(&a, a.role.can_administer(), "rotate endpoint secrets")?;
    let id: broadcast_core::EndpointId = parse(&id)?;
    let body: RotateBody = optional_json(&body)?;
    let hours = body.overlap_hours.unwrap_or(24);
    if !(0..=24 * 30).contains(&hours) {
        return Err(ApiError::BadRequest(format!("overlap_hours {hours} must be between 0 and 720")));
    }
    let secret = broadcast_distribute::sign::secret_from_bytes(&crate::auth::random_secret_bytes());
    let until = Utc::now() + chrono::Duration::hours(hours);
    let ep = app.store.rotate_endpoint_secret(&id, &secret, until, a.id.as_str(), Utc::now()).await?;
    let mut v = json!(ep);
    v["secret"] = json!(secret);
    Ok(Json(v))
}

async fn set_endpoint_state(
    app: App,
    Authed(a): Authed,
    id: String,
    enabled: bool,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    require(&a, a.role.can_administer(), "enable or disable endpoints")?;
    let id: broadcast_core::EndpointId = parse(&id)?;
    let state = if enabled { "enable" } else { "disable" };
    let body: ReasonBody = optional_json(&body)?;
    let reason = body.reason.unwrap_or_else(|| format!("{state}d by {}", a.name));
    let ep = app.store.set_endpoint_enabled(&id, enabled, a.id.as_str(), &reason, Utc::now()).await?;
    Ok(Json(json!(ep)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    name: String,
    tlp_clearance: Option<String>,
    min_threat_level: Option<String>,
}

async fn create_org(
    State(app): State<App>,
    Authed(a): Authed,
    JsonBody(req): JsonBody<NewOrg>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&a, a.role.can_administer(), "manage organisations")?;
    let tlp = req.tlp_clearance.as_deref().map(parse::<Tlp>).transpose()?.unwrap_or(Tlp::Green);
    let level = req
        .min_threat_level
        .as_deref()
        .map(parse::<ThreatLevel>)
        .transpose()?
        .unwrap_or(ThreatLevel::Information);
    let org = app.store.create_organisation_by(a.id.as_str(), &req.name, tlp, level, Utc::now()).await?;
    Ok((StatusCode::CREATED, Json(json!(org))))
}

async fn list_orgs(State(app): State<App>, _: Authed) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "organisations": app.store.list_organisations().await? })))
}

async fn get_org(State(app): State<App>, _: Authed, Path(key): Path<String>) -> ApiResult<Json<Value>> {
    let org = app.store.get_organisation(&key).await?;
    let contacts = app.store.list_contacts(&org.id).await?;
    let endpoints = app.store.list_endpoints(&org.id).await?;
    Ok(Json(json!({ "organisation": org, "contacts": contacts, "endpoints": endpoints })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Digest {
    /// Hour of the day (UTC) for the daily digest; null: every bulletin at once.
    hour: Option<u8>,
}

/// Puts an organisation's email contacts on a daily digest, or back to immediate.
async fn set_digest(
    State(app): State<App>,
    Authed(a): Authed,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<Digest>,
) -> ApiResult<Json<Value>> {
    require(&a, a.role.can_administer(), "manage organisations")?;
    let org = app.store.set_organisation_digest(&key, req.hour, a.id.as_str(), Utc::now()).await?;
    Ok(Json(json!(org)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Interests {
    interests: Vec<String>,
}

/// Sets the vendors and products an organisation runs (empty list: every bulletin).
async fn set_interests(
    State(app): State<App>,
    Authed(a): Authed,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<Interests>,
) -> ApiResult<Json<Value>> {
    require(&a, a.role.can_administer(), "manage organisations")?;
    let org = app.store.set_organisation_interests(&key, &req.interests, a.id.as_str(), Utc::now()).await?;
    Ok(Json(json!(org)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewContact {
    email: String,
    #[serde(default)]
    name: String,
}

async fn add_contact(
    State(app): State<App>,
    Authed(a): Authed,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<NewContact>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&a, a.role.can_administer(), "manage contacts")?;
    let c = app.store.add_contact_by(a.id.as_str(), &key, &req.email, &req.name, Utc::now()).await?;
    Ok((StatusCode::CREATED, Json(json!(c))))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    secret: Option<String>,
    /// broadcast (default), slack or teams.
    format: Option<String>,
}

async fn add_endpoint(
    State(app): State<App>,
    Authed(a): Authed,
    Path(key): Path<String>,
    JsonBody(req): JsonBody<NewEndpoint>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    require(&a, a.role.can_administer(), "manage endpoints")?;
    let format =
        req.format.as_deref().map(parse::<broadcast_core::EndpointFormat>).transpose()?.unwrap_or_default();
    let (ep, secret) = app.register_endpoint(a.id.as_str(), &key, &req.url, req.secret, format).await?;
    // The secret is shown once, here; it is never returned again.
    let mut v = json!(ep);
    v["secret"] = json!(secret);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn feeds(State(app): State<App>, _: Authed) -> ApiResult<Json<Value>> {
    let states = app.store.list_feed_states().await?;
    let feeds: Vec<Value> = app
        .settings
        .feeds
        .iter()
        .map(|f| {
            let st = states.iter().find(|s| s.feed_id == f.id());
            // Staleness: seconds since the last successful run (null: never succeeded).
            let stale = st.and_then(|s| s.last_success).map(|t| (Utc::now() - t).num_seconds());
            json!({ "id": f.id(), "enabled": f.enabled(), "schedule": f.schedule_expr(), "state": st, "stale_secs": stale })
        })
        .collect();
    Ok(Json(json!({ "feeds": feeds })))
}

#[derive(Deserialize)]
struct UnsubscribeQuery {
    token: String,
}

use broadcast_distribute::render::escape_html as escape;

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{t}</title></head><body style=\"font-family:sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem\">\
         <h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    ))
}

/// The link in an email. A GET only asks (link scanners fetch links); the button POSTs.
async fn unsubscribe_page(State(app): State<App>, Query(q): Query<UnsubscribeQuery>) -> Response {
    let Some(id) = verify_unsubscribe_token(&app.settings.security.link_secret, &q.token) else {
        return (
            StatusCode::BAD_REQUEST,
            page("Link not valid", "<p>This unsubscribe link is not valid.</p>"),
        )
            .into_response();
    };
    let email = match id.parse::<ContactId>() {
        Ok(cid) => app.store.get_contact(&cid).await.map(|c| c.email).unwrap_or_default(),
        Err(_) => String::new(),
    };
    page(
        "Unsubscribe from Broadcast bulletins",
        &format!(
            "<p>Stop sending security bulletins to <strong>{}</strong>?</p>\
             <form method=\"post\" action=\"/unsubscribe?token={}\"><button type=\"submit\">Unsubscribe</button></form>",
            escape(&email),
            escape(&q.token)
        ),
    )
    .into_response()
}

/// RFC 8058 one-click (`List-Unsubscribe=One-Click` form body) and the page's button.
async fn unsubscribe_post(State(app): State<App>, Query(q): Query<UnsubscribeQuery>) -> Response {
    let Some(id) = verify_unsubscribe_token(&app.settings.security.link_secret, &q.token) else {
        return (
            StatusCode::BAD_REQUEST,
            page("Link not valid", "<p>This unsubscribe link is not valid.</p>"),
        )
            .into_response();
    };
    let Ok(cid) = id.parse::<ContactId>() else {
        return (
            StatusCode::BAD_REQUEST,
            page("Link not valid", "<p>This unsubscribe link is not valid.</p>"),
        )
            .into_response();
    };
    match app.store.unsubscribe_contact(&cid, Utc::now()).await {
        Ok(c) => {
            tracing::info!(contact.id = %c.id, "contact unsubscribed");
            page(
                "Unsubscribed",
                &format!("<p><strong>{}</strong> will receive no more bulletins.</p>", escape(&c.email)),
            )
            .into_response()
        }
        Err(StoreError::NotFound { .. }) => {
            (StatusCode::NOT_FOUND, page("Not found", "<p>This address is no longer subscribed.</p>"))
                .into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}
