//! The console's pages and form actions.

use super::{ConsoleError, ConsoleResult, FormData, render};
use crate::app::{App, DraftOverrides};
use crate::routes::CurrentSession;
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use broadcast_core::{
    Action, AdvisoryId, BulletinContent, BulletinState, DeliveryState, EndpointId, ThreatLevel, Tlp,
};
use broadcast_distribute::Channel;
use broadcast_store::CandidateFilter;
use chrono::Utc;
use minijinja::Value;
use minijinja::value::Serde;
use serde::Deserialize;
use serde_json::json;

/// What every page gets: the user (for the menu) and the CSRF token (for every form).
fn base(s: &CurrentSession) -> Value {
    minijinja::context! {
        user => Serde(json!({ "name": s.analyst.name, "role": s.analyst.role, "id": s.analyst.id })),
        csrf => &s.csrf,
        is_admin => s.analyst.role.can_administer(),
        can_review => s.analyst.role.can_review(),
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, ConsoleError>
where
    T::Err: std::fmt::Display,
{
    s.trim().parse().map_err(|e: T::Err| ConsoleError::BadRequest(format!("{what}: {e}")))
}

/// A link from a feed is clickable only when it is http(s); anything else (`javascript:`,
/// `data:`) is shown as text.
fn link(url: &str) -> serde_json::Value {
    json!({ "url": url, "safe": broadcast_core::is_web_url(url.trim()) })
}

fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
}

fn url_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("../../console/static/console.css"))
}

pub async fn js() -> Response {
    static_file("text/javascript; charset=utf-8", include_str!("../../console/static/console.js"))
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    r
}

pub async fn home() -> Response {
    see_other("/console/queue")
}

// ----- queue and advisories -------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct QueueQuery {
    #[serde(default)]
    level: String,
    #[serde(default)]
    vendor: String,
    #[serde(default)]
    source: String,
    /// `new`, `updated` or empty.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    q: String,
    /// Include advisories triage found not relevant.
    #[serde(default)]
    all: Option<String>,
}

pub async fn queue(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Query(q): Query<QueueQuery>,
) -> ConsoleResult {
    let all = q.all.is_some();
    let list =
        app.store.list_candidates(&CandidateFilter { include_irrelevant: all, limit: Some(5000) }).await?;
    let mut sources: Vec<String> = list.iter().map(|c| c.advisory.content.source.clone()).collect();
    sources.sort();
    sources.dedup();
    let level = if q.level.is_empty() { None } else { Some(parse::<ThreatLevel>("threat level", &q.level)?) };
    let (vendor, needle) = (q.vendor.trim().to_lowercase(), q.q.trim().to_lowercase());
    let collapsed = app.collapse_issues(list).await?;
    // Storm control: bursts of issues for one vendor/product, shown above the list.
    let representatives: Vec<_> = collapsed.iter().map(|(c, _, _)| c.clone()).collect();
    let bursts: Vec<serde_json::Value> = app
        .group_candidates(&representatives)
        .into_iter()
        .filter(|g| g.count > 1)
        .map(|g| {
            let vendor = url_part(g.key.split('/').next().unwrap_or(""));
            json!({ "label": g.key.replace('/', " "), "count": g.count, "vendor": vendor, "top": g.top.id })
        })
        .collect();
    let rows: Vec<serde_json::Value> = collapsed
        .iter()
        .filter(|(c, _, _)| level.is_none_or(|l| c.assessment.threat_level == l))
        .filter(|(c, _, also)| {
            q.source.is_empty() || c.advisory.content.source == q.source || also.iter().any(|(_, s)| *s == q.source)
        })
        .map(|(c, _, also)| (c, also))
        .filter(|(c, _)| match q.kind.as_str() {
            "new" => c.advisory.revision == 1,
            "updated" => c.advisory.revision > 1,
            _ => true,
        })
        .filter(|(c, _)| {
            vendor.is_empty()
                || c.advisory.content.affected.iter().any(|a| a.vendor.to_lowercase().contains(&vendor))
                || c.advisory.content.title.to_lowercase().contains(&vendor)
        })
        .filter(|(c, _)| {
            let a = &c.advisory.content;
            needle.is_empty()
                || a.title.to_lowercase().contains(&needle)
                || a.summary.to_lowercase().contains(&needle)
                || a.external_id.to_lowercase().contains(&needle)
                || a.cves.iter().any(|v| v.to_lowercase().contains(&needle))
        })
        .take(500)
        .map(|(c, also)| {
            let a = &c.advisory;
            let mut also_sources: Vec<&str> = also.iter().map(|(_, s)| s.as_str()).collect();
            also_sources.sort_unstable();
            also_sources.dedup();
            let mut vendors: Vec<&str> = a.content.affected.iter().map(|x| x.vendor.as_str()).collect();
            vendors.dedup();
            json!({
                "id": a.id, "title": a.content.title, "source": a.content.source, "revision": a.revision,
                "level": c.assessment.threat_level, "score": format!("{:.1}", c.assessment.score),
                "relevant": c.assessment.relevant, "reasons": c.assessment.reasons,
                "vendors": vendors.join(", "), "cves": a.content.cves, "changed": a.last_changed.format("%Y-%m-%d %H:%M").to_string(),
                "kev": a.content.kev.is_some(), "overridden": c.override_info.is_some(),
                "incident": a.content.incident.is_some(), "also": also_sources,
            })
        })
        .collect();
    let ctx = minijinja::context! {
        rows => Serde(rows), bursts => Serde(bursts), sources => sources, levels => ThreatLevel::ALL.map(|l| l.as_str()),
        f => Serde(json!({ "level": q.level, "vendor": q.vendor, "source": q.source, "kind": q.kind, "q": q.q, "all": all })),
        ..base(&s)
    };
    render("queue.html", ctx)
}

pub async fn advisory(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> ConsoleResult {
    let id: AdvisoryId = parse("advisory id", &id)?;
    let adv = app.store.get_advisory(&id).await?;
    let revisions = app.store.advisory_revisions(&id).await?;
    let candidate = app.store.candidate(&id).await?;
    let history: Vec<serde_json::Value> = revisions
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let what = if i == 0 { vec!["first seen".to_owned()] } else { r.content.changes_since(&revisions[i - 1].content) };
            json!({ "revision": r.revision, "at": r.collected_at.format("%Y-%m-%d %H:%M").to_string(), "changes": what })
        })
        .collect();
    // Every source's record of this issue (merged by the join rule), and records that
    // merely mention the same CVEs (e.g. bulletins bundling the component).
    let same_issue: Vec<serde_json::Value> = app
        .store
        .issue_members(&id)
        .await?
        .into_iter()
        .filter(|m| m.id != adv.id)
        .map(|m| json!({ "id": m.id, "title": m.content.title, "source": m.content.source, "external_id": m.content.external_id }))
        .collect();
    let mut related = Vec::new();
    if !adv.content.cves.is_empty() {
        let all = app
            .store
            .list_candidates(&CandidateFilter { include_irrelevant: true, limit: Some(5000) })
            .await?;
        for c in all {
            if c.advisory.id != adv.id
                && !same_issue.iter().any(|m| m["id"] == c.advisory.id.to_string())
                && c.advisory.content.cves.iter().any(|v| adv.content.cves.contains(v))
            {
                related.push(json!({ "id": c.advisory.id, "title": c.advisory.content.title, "source": c.advisory.content.source }));
            }
        }
    }
    let refs: Vec<_> = adv.content.references.iter().map(|r| link(r)).collect();
    let ctx = minijinja::context! {
        a => Serde(&adv), refs => Serde(refs), history => Serde(history), related => Serde(related),
        same_issue => Serde(same_issue),
        assessment => candidate.as_ref().map(|c| Serde(&c.assessment)),
        override_info => candidate.as_ref().and_then(|c| c.override_info.as_ref()).map(Serde),
        levels => ThreatLevel::ALL.map(|l| l.as_str()), tlps => Tlp::ALL.map(|t| t.as_str()),
        ..base(&s)
    };
    render("advisory.html", ctx)
}

pub async fn draft(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> ConsoleResult {
    let id: AdvisoryId = parse("advisory id", &id)?;
    let b = app.draft_bulletin(&s.analyst.id, &[id], DraftOverrides::default()).await?;
    tracing::info!(bulletin.reference = %b.reference, analyst = %s.analyst.name, "bulletin drafted in the console");
    Ok(see_other(&format!("/console/bulletins/{}/edit", b.reference)))
}

pub async fn override_triage(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
    Path(id): Path<String>,
) -> ConsoleResult {
    let id: AdvisoryId = parse("advisory id", &id)?;
    let relevant = match f.get("relevant") {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    };
    let level = match f.get("threat_level") {
        "" => None,
        l => Some(parse::<ThreatLevel>("threat level", l)?),
    };
    app.store.override_assessment(&id, relevant, level, f.get("reason"), &s.analyst.id, Utc::now()).await?;
    Ok(see_other(&format!("/console/advisories/{id}")))
}

// ----- bulletins --------------------------------------------------------------------------

#[derive(Deserialize, Default)]
pub struct StateQuery {
    #[serde(default)]
    state: String,
}

pub async fn bulletins(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Query(q): Query<StateQuery>,
) -> ConsoleResult {
    let state = if q.state.is_empty() { None } else { Some(parse::<BulletinState>("state", &q.state)?) };
    let list = app.store.list_bulletins(state).await?;
    let ctx = minijinja::context! {
        bulletins => Serde(&list), states => BulletinState::ALL.map(|x| x.as_str()), state => q.state,
        ..base(&s)
    };
    render("bulletins.html", ctx)
}

/// The actions this user may take on a bulletin in its state, and why approve is missing.
fn actions(b: &broadcast_core::Bulletin, s: &CurrentSession) -> (Vec<&'static str>, Option<String>) {
    let mut out = Vec::new();
    let mut note = None;
    // Superseding is done by publishing a successor, not from this page.
    for a in Action::ALL.into_iter().filter(|a| *a != Action::Supersede) {
        if b.state.next(a).is_none() {
            continue;
        }
        if a.needs_second_pair_of_eyes() {
            if !s.analyst.role.can_review() {
                note = Some("Waiting for an approver to review it.".to_owned());
                continue;
            }
            if b.author == s.analyst.id {
                note = Some(
                    "You wrote this bulletin: another approver must review it (four-eyes rule).".to_owned(),
                );
                continue;
            }
        }
        out.push(a.as_str());
    }
    (out, note)
}

pub async fn bulletin(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Path(key): Path<String>,
) -> ConsoleResult {
    let b = app.store.get_bulletin(&key).await?;
    let events = app.store.bulletin_events(&b.id).await?;
    let analysts = app.store.list_analysts().await?;
    let name = |id: &str| {
        analysts.iter().find(|a| a.id.as_str() == id).map(|a| a.name.clone()).unwrap_or_else(|| id.to_owned())
    };
    let history: Vec<_> = events
        .iter()
        .map(|e| json!({ "action": e.action, "who": name(&e.actor_id), "to": e.to_state, "comment": e.comment, "at": e.at.format("%Y-%m-%d %H:%M:%S").to_string() }))
        .collect();
    let counts = app.store.delivery_counts(&b.id).await?;
    let failures: Vec<_> = if b.state == BulletinState::Published || b.state == BulletinState::Withdrawn {
        app.store
            .deliveries_for_bulletin(&b.id)
            .await?
            .into_iter()
            .filter(|d| d.state == DeliveryState::Failed || (d.state == DeliveryState::Pending && d.attempts > 0))
            .take(50)
            .map(|d| {
                let state = if d.state == DeliveryState::Pending { "retrying" } else { d.state.as_str() };
                json!({ "id": d.id, "address": d.address, "state": state, "attempts": d.attempts, "reason": d.reason })
            })
            .collect()
    } else {
        Vec::new()
    };
    let (acts, note) = actions(&b, &s);
    let refs: Vec<_> = b.content.references.iter().map(|r| link(r)).collect();
    let ctx = minijinja::context! {
        b => Serde(&b), author => name(b.author.as_str()), history => Serde(history), actions => acts, review_note => note,
        total => counts.values().sum::<i64>(), counts => counts, failures => Serde(failures), refs => Serde(refs),
        editable => b.state.is_editable(),
        ..base(&s)
    };
    render("bulletin.html", ctx)
}

pub async fn edit_page(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Path(key): Path<String>,
) -> ConsoleResult {
    let b = app.store.get_bulletin(&key).await?;
    if !b.state.is_editable() {
        return Err(ConsoleError::Conflict(format!(
            "{} is {}: only drafts can be edited",
            b.reference, b.state
        )));
    }
    let preview = preview_of(&app, &b)?;
    let ctx = minijinja::context! {
        b => Serde(&b), preview => Serde(preview),
        levels => ThreatLevel::ALL.map(|l| l.as_str()), tlps => Tlp::ALL.map(|t| t.as_str()),
        ..base(&s)
    };
    render("edit.html", ctx)
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

fn content_from(f: &FormData) -> Result<BulletinContent, ConsoleError> {
    Ok(BulletinContent {
        title: f.get("title").trim().to_owned(),
        threat_level: parse("threat level", f.get("threat_level"))?,
        tlp: parse("TLP", f.get("tlp"))?,
        summary: f.get("summary").replace("\r\n", "\n").trim().to_owned(),
        affected_products: lines(f.get("affected_products")),
        remediation: f.get("remediation").replace("\r\n", "\n").trim().to_owned(),
        references: lines(f.get("references")),
        cves: f
            .get("cves")
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|c| !c.is_empty())
            .map(|c| c.to_ascii_uppercase())
            .collect(),
    })
}

pub async fn edit_save(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
    Path(key): Path<String>,
) -> ConsoleResult {
    let content = content_from(&f)?;
    let version = match f.get("version") {
        "" => None,
        v => Some(parse::<i32>("version", v)?),
    };
    let b = app.store.update_bulletin_content(&key, &content, &s.analyst.id, version, Utc::now()).await?;
    if f.get("then") == "submit" {
        app.act_on_bulletin(&s.analyst, &b.reference, Action::Submit, None, None).await?;
    }
    Ok(see_other(&format!("/console/bulletins/{}", b.reference)))
}

fn preview_of(app: &App, b: &broadcast_core::Bulletin) -> Result<serde_json::Value, ConsoleError> {
    let ctx = app.preview_context(b);
    let email = app.renderer.render_email("bulletin", &ctx).map_err(|e| ConsoleError::Internal(e.into()))?;
    let webhook: serde_json::Value =
        serde_json::from_str(&broadcast_distribute::payload::bulletin_published(b, &ctx.bulletin_url))
            .map_err(|e| ConsoleError::Internal(e.into()))?;
    Ok(json!({
        "subject": email.subject, "html": email.html, "text": email.text,
        "webhook": serde_json::to_string_pretty(&webhook).unwrap_or_default(),
    }))
}

/// The editor's live preview: the form as it stands, rendered, nothing saved.
pub async fn live_preview(
    State(app): State<App>,
    Extension(f): Extension<FormData>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ConsoleError> {
    let mut b = app.store.get_bulletin(&key).await?;
    match content_from(&f) {
        Ok(c) => {
            b.content = c;
            Ok(Json(preview_of(&app, &b)?))
        }
        Err(e) => {
            let msg = match e {
                ConsoleError::BadRequest(m) => m,
                other => return Err(other),
            };
            Ok(Json(json!({ "error": msg })))
        }
    }
}

/// The saved bulletin's email HTML, for the sandboxed preview frame: no script may run in
/// it, and it may be framed only by the console.
pub async fn email_html(State(app): State<App>, Path(key): Path<String>) -> ConsoleResult {
    let b = app.store.get_bulletin(&key).await?;
    let p = preview_of(&app, &b)?;
    let mut r = axum::response::Html(p["html"].as_str().unwrap_or_default().to_owned()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("SAMEORIGIN"));
    Ok(r)
}

pub async fn progress(
    State(app): State<App>,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ConsoleError> {
    let b = app.store.get_bulletin(&key).await?;
    let counts = app.store.delivery_counts(&b.id).await?;
    let total: i64 = counts.values().sum();
    Ok(Json(json!({ "state": b.state, "counts": counts, "total": total })))
}

async fn act(app: App, s: CurrentSession, f: FormData, key: String, action: Action) -> ConsoleResult {
    app.act_on_bulletin(&s.analyst, &key, action, Some(f.get("comment")), None).await?;
    Ok(see_other(&format!("/console/bulletins/{key}")))
}

macro_rules! act_handler {
    ($($name:ident => $action:expr),*) => {$(
        pub async fn $name(
            State(app): State<App>,
            Extension(s): Extension<CurrentSession>,
            Extension(f): Extension<FormData>,
            Path(key): Path<String>,
        ) -> ConsoleResult {
            act(app, s, f, key, $action).await
        }
    )*};
}

act_handler!(
    act_submit => Action::Submit,
    act_recall => Action::Recall,
    act_reopen => Action::Reopen,
    act_publish => Action::Publish,
    act_withdraw => Action::Withdraw,
    act_approve => Action::Approve,
    act_reject => Action::Reject
);

// ----- organisations ----------------------------------------------------------------------

pub async fn organisations(State(app): State<App>, Extension(s): Extension<CurrentSession>) -> ConsoleResult {
    let orgs = app.store.list_organisations().await?;
    let ctx = minijinja::context! {
        orgs => Serde(&orgs), levels => ThreatLevel::ALL.map(|l| l.as_str()), tlps => Tlp::ALL.map(|t| t.as_str()),
        ..base(&s)
    };
    render("organisations.html", ctx)
}

pub async fn org_create(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
) -> ConsoleResult {
    let tlp = parse::<Tlp>("TLP clearance", f.get("tlp_clearance"))?;
    let level = parse::<ThreatLevel>("minimum threat level", f.get("min_threat_level"))?;
    let org = app
        .store
        .create_organisation_by(s.analyst.id.as_str(), f.get("name"), tlp, level, Utc::now())
        .await?;
    Ok(see_other(&format!("/console/organisations/{}", org.id)))
}

async fn org_page(
    app: &App,
    s: &CurrentSession,
    key: &str,
    notice: Option<serde_json::Value>,
) -> ConsoleResult {
    let org = app.store.get_organisation(key).await?;
    let contacts = app.store.list_contacts(&org.id).await?;
    let endpoints: Vec<_> = app
        .store
        .list_endpoints(&org.id)
        .await?
        .into_iter()
        // Never the secrets.
        .map(|e| json!({
            "id": e.id, "url": e.url, "enabled": e.enabled, "format": e.format,
            "failures": e.consecutive_failures, "failing_since": e.failing_since.map(|t| t.format("%Y-%m-%d %H:%M").to_string()),
        }))
        .collect();
    let ctx = minijinja::context! {
        org => Serde(&org), contacts => Serde(&contacts), endpoints => Serde(endpoints), notice => notice.map(Serde),
        ..base(s)
    };
    render("organisation.html", ctx)
}

pub async fn organisation(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Path(key): Path<String>,
) -> ConsoleResult {
    org_page(&app, &s, &key, None).await
}

pub async fn contact_add(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
    Path(key): Path<String>,
) -> ConsoleResult {
    app.store.add_contact_by(s.analyst.id.as_str(), &key, f.get("email"), f.get("name"), Utc::now()).await?;
    Ok(see_other(&format!("/console/organisations/{}", url_part(&key))))
}

pub async fn endpoint_add(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
    Path(key): Path<String>,
) -> ConsoleResult {
    let format = match f.get("format") {
        "" => Default::default(),
        x => parse::<broadcast_core::EndpointFormat>("format", x)?,
    };
    let (ep, secret) = app.register_endpoint(s.analyst.id.as_str(), &key, f.get("url"), None, format).await?;
    // The secret is shown once, here.
    org_page(&app, &s, &key, Some(json!({ "ok": true, "text": format!("Endpoint added. Its signing secret, shown only now: {secret}"), "endpoint": ep.id }))).await
}

/// Sends a signed `broadcast.test` event to the endpoint now and shows what it answered.
pub async fn endpoint_test(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Path(id): Path<String>,
) -> ConsoleResult {
    let id: EndpointId = parse("endpoint id", &id)?;
    let ep = app.store.get_endpoint(&id).await?;
    let now = Utc::now();
    let msg_id = format!("test_{}", uuid::Uuid::now_v7().simple());
    let body = json!({
        "type": "broadcast.test",
        "timestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": { "message": "Test message from Broadcast: this endpoint is reachable and verifies signatures.", "endpoint_id": ep.id },
    })
    .to_string();
    let msg = broadcast_distribute::webhook::WebhookMessage {
        id: msg_id.clone(),
        url: ep.url.clone(),
        secrets: ep.signing_secrets(now).into_iter().map(str::to_owned).collect(),
        body,
        timestamp: now.timestamp(),
    };
    let channel = app.webhook_channel().map_err(ConsoleError::Internal)?;
    let (ok, text) = match channel.deliver(&msg).await {
        Ok(r) => (true, format!("Test sent to {}: {}", ep.url, r.detail)),
        Err(e) => (false, format!("Test to {} failed: {e}", ep.url)),
    };
    app.store
        .append_audit(
            s.analyst.id.as_str(),
            "endpoint.test",
            ep.id.as_str(),
            json!({ "ok": ok, "result": text, "webhook_id": msg_id }),
            now,
        )
        .await?;
    org_page(&app, &s, ep.org_id.as_str(), Some(json!({ "ok": ok, "text": text, "endpoint": ep.id }))).await
}

async fn endpoint_switch(
    app: App,
    s: CurrentSession,
    f: FormData,
    id: String,
    enabled: bool,
) -> ConsoleResult {
    let id: EndpointId = parse("endpoint id", &id)?;
    let reason = match f.get("reason").trim() {
        "" => format!("{} by {}", if enabled { "enabled" } else { "disabled" }, s.analyst.name),
        r => r.to_owned(),
    };
    let ep = app.store.set_endpoint_enabled(&id, enabled, s.analyst.id.as_str(), &reason, Utc::now()).await?;
    Ok(see_other(&format!("/console/organisations/{}", ep.org_id)))
}

pub async fn endpoint_enable(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
    Path(id): Path<String>,
) -> ConsoleResult {
    endpoint_switch(app, s, f, id, true).await
}

pub async fn endpoint_disable(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
    Path(id): Path<String>,
) -> ConsoleResult {
    endpoint_switch(app, s, f, id, false).await
}

// ----- feeds, audit, users ----------------------------------------------------------------

pub async fn feeds(State(app): State<App>, Extension(s): Extension<CurrentSession>) -> ConsoleResult {
    let states = app.store.list_feed_states().await?;
    let now = Utc::now();
    let rows: Vec<_> = app
        .settings
        .feeds
        .iter()
        .map(|f| {
            let st = states.iter().find(|x| x.feed_id == f.id());
            let fmt = |t: Option<chrono::DateTime<Utc>>| t.map(|t| t.format("%Y-%m-%d %H:%M").to_string());
            let stale_hours = st.and_then(|x| x.last_success).map(|t| (now - t).num_hours());
            let health = match st {
                _ if !f.enabled() => "disabled",
                None => "never run",
                Some(x) if x.consecutive_failures > 0 => "failing",
                Some(_) => "ok",
            };
            json!({
                "id": f.id(), "schedule": f.schedule_expr(), "health": health,
                "last_success": fmt(st.and_then(|x| x.last_success)), "last_attempt": fmt(st.and_then(|x| x.last_attempt)),
                "last_error": st.and_then(|x| x.last_error.clone()), "failures": st.map(|x| x.consecutive_failures).unwrap_or(0),
                "items": st.map(|x| x.items_seen).unwrap_or(0), "stale_hours": stale_hours,
            })
        })
        .collect();
    render("feeds.html", minijinja::context! { feeds => Serde(rows), ..base(&s) })
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    after: i64,
    #[serde(default)]
    verify: Option<String>,
}

pub async fn audit(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Query(q): Query<AuditQuery>,
) -> ConsoleResult {
    let entries = app.store.audit_entries(q.after.max(0), 200).await?;
    let next = if entries.len() == 200 { entries.last().map(|e| e.seq) } else { None };
    let check = if q.verify.is_some() {
        let c = app.store.verify_audit().await?;
        Some(match c.broken {
            None => {
                json!({ "ok": true, "text": format!("Audit log intact: {} entries, every hash chains.", c.entries) })
            }
            Some((seq, why)) => {
                json!({ "ok": false, "text": format!("Audit log broken at entry {seq}: {why}.") })
            }
        })
    } else {
        None
    };
    render(
        "audit.html",
        minijinja::context! { entries => Serde(&entries), next => next, check => check.map(Serde), after => q.after, ..base(&s) },
    )
}

pub async fn users(State(app): State<App>, Extension(s): Extension<CurrentSession>) -> ConsoleResult {
    let list = app.store.list_analysts().await?;
    render("users.html", minijinja::context! { users => Serde(&list), ..base(&s) })
}

pub async fn user_add(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    Extension(f): Extension<FormData>,
) -> ConsoleResult {
    let role = parse::<broadcast_core::Role>("role", f.get("role"))?;
    let password = f.get("password").to_owned();
    let hash = tokio::task::spawn_blocking(move || crate::auth::hash_password(&password))
        .await
        .map_err(|e| ConsoleError::Internal(e.into()))?
        .map_err(ConsoleError::BadRequest)?;
    // No API token yet: `broadcast analyst token NAME` issues one.
    let a = app
        .store
        .create_analyst(
            f.get("name"),
            role,
            &crate::auth::hash_token(&crate::auth::generate_token()),
            Utc::now(),
        )
        .await?;
    app.store.set_analyst_password(&a.name, Some(&hash), s.analyst.id.as_str(), Utc::now()).await?;
    Ok(see_other("/console/users"))
}
