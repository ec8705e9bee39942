//! The analyst console: server-rendered pages (minijinja templates compiled into the
//! binary, auto-escaped), one stylesheet and one small script, no build step.
//!
//! Security model:
//! - a session is a random cookie value (`HttpOnly`, `SameSite=Strict`, `Secure` on https and
//!   loopback) known to the store only by its SHA-256;
//! - every POST carries the session's CSRF token (form field `csrf` or `X-CSRF-Token`),
//!   checked in the guard before any handler runs; the sign-in form uses a double-submit
//!   token of its own;
//! - failed sign-ins are limited per account and per client address;
//! - every page is sent with a Content-Security-Policy that allows no inline script, and
//!   advisory text (untrusted) is only ever inserted auto-escaped; links from feeds are
//!   clickable only when they are http(s);
//! - the email preview is shown in a sandboxed frame without scripts.

mod pages;
pub mod signin;

use crate::app::App;
use crate::routes::{Access, CurrentSession, RouteSpec, Routes, Surface};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use broadcast_core::{Role, TransitionError};
use broadcast_store::StoreError;
use minijinja::Environment;
use std::collections::HashMap;
use std::sync::LazyLock;

pub use signin::SignInLimiter;

pub const SESSION_COOKIE: &str = "broadcast_session";
const LOGIN_COOKIE: &str = "broadcast_login";
/// A session lasts at most this long.
pub const SESSION_HOURS: i64 = 12;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    macro_rules! t {
        ($($name:literal),*) => {
            $(env.add_template($name, include_str!(concat!("../../console/templates/", $name)))
                .expect(concat!("console template ", $name));)*
        };
    }
    t!(
        "base.html",
        "login.html",
        "error.html",
        "queue.html",
        "advisory.html",
        "bulletins.html",
        "bulletin.html",
        "edit.html",
        "organisations.html",
        "organisation.html",
        "feeds.html",
        "audit.html",
        "users.html"
    );
    env
});

/// The console's routes. Reading is for every signed-in user; approving needs an approver
/// (checked again, with the four-eyes rule, when the action runs); organisations,
/// endpoints, users and the audit log need an admin.
pub fn routes(r: Routes) -> Routes {
    use Access::{Least, Public};
    use Method as M;
    use Surface::Console as C;
    let (analyst, approver, admin) = (Least(Role::Analyst), Least(Role::Approver), Least(Role::Admin));
    r.add(C, M::GET, "/console/static/console.css", Public, "Stylesheet.", pages::css)
        .add(C, M::GET, "/console/static/console.js", Public, "Script.", pages::js)
        .add(C, M::GET, "/console/login", Public, "Sign-in page.", signin::page)
        .add(C, M::POST, "/console/login", Public, "Sign in.", signin::submit)
        .add(C, M::POST, "/console/logout", analyst, "Sign out.", signin::logout)
        .add(C, M::GET, "/console", analyst, "Home: the queue.", pages::home)
        .add(C, M::GET, "/console/queue", analyst, "Candidate queue.", pages::queue)
        .add(C, M::GET, "/console/advisories/{id}", analyst, "Advisory.", pages::advisory)
        .add(C, M::POST, "/console/advisories/{id}/draft", analyst, "Draft a bulletin.", pages::draft)
        .add(
            C,
            M::POST,
            "/console/advisories/{id}/override",
            analyst,
            "Correct triage.",
            pages::override_triage,
        )
        .add(C, M::GET, "/console/bulletins", analyst, "Bulletins.", pages::bulletins)
        .add(C, M::GET, "/console/bulletins/{key}", analyst, "Bulletin.", pages::bulletin)
        .add(C, M::GET, "/console/bulletins/{key}/edit", analyst, "Bulletin editor.", pages::edit_page)
        .add(C, M::POST, "/console/bulletins/{key}/edit", analyst, "Save a draft.", pages::edit_save)
        .add(C, M::POST, "/console/bulletins/{key}/preview", analyst, "Live preview.", pages::live_preview)
        .add(C, M::GET, "/console/bulletins/{key}/email.html", analyst, "Email preview.", pages::email_html)
        .add(C, M::GET, "/console/bulletins/{key}/progress", analyst, "Delivery progress.", pages::progress)
        .add(C, M::POST, "/console/bulletins/{key}/act/submit", analyst, "Submit.", pages::act_submit)
        .add(C, M::POST, "/console/bulletins/{key}/act/recall", analyst, "Recall.", pages::act_recall)
        .add(C, M::POST, "/console/bulletins/{key}/act/reopen", analyst, "Reopen.", pages::act_reopen)
        .add(C, M::POST, "/console/bulletins/{key}/act/publish", analyst, "Publish.", pages::act_publish)
        .add(C, M::POST, "/console/bulletins/{key}/act/withdraw", analyst, "Withdraw.", pages::act_withdraw)
        .add(C, M::POST, "/console/bulletins/{key}/act/approve", approver, "Approve.", pages::act_approve)
        .add(C, M::POST, "/console/bulletins/{key}/act/reject", approver, "Reject.", pages::act_reject)
        .add(C, M::GET, "/console/organisations", analyst, "Organisations.", pages::organisations)
        .add(C, M::POST, "/console/organisations", admin, "Add an organisation.", pages::org_create)
        .add(C, M::GET, "/console/organisations/{key}", analyst, "Organisation.", pages::organisation)
        .add(C, M::POST, "/console/organisations/{key}/contacts", admin, "Add a contact.", pages::contact_add)
        .add(
            C,
            M::POST,
            "/console/organisations/{key}/endpoints",
            admin,
            "Add an endpoint.",
            pages::endpoint_add,
        )
        .add(C, M::POST, "/console/endpoints/{id}/test", admin, "Send a test webhook.", pages::endpoint_test)
        .add(
            C,
            M::POST,
            "/console/endpoints/{id}/enable",
            admin,
            "Enable an endpoint.",
            pages::endpoint_enable,
        )
        .add(
            C,
            M::POST,
            "/console/endpoints/{id}/disable",
            admin,
            "Disable an endpoint.",
            pages::endpoint_disable,
        )
        .add(C, M::GET, "/console/feeds", analyst, "Feeds and their health.", pages::feeds)
        .add(C, M::GET, "/console/audit", admin, "Audit log.", pages::audit)
        .add(C, M::GET, "/console/users", admin, "Users.", pages::users)
        .add(C, M::POST, "/console/users", admin, "Add a user.", pages::user_add)
}

/// The fields of a console form, parsed once by the guard (which checked its CSRF token).
#[derive(Clone, Debug, Default)]
pub struct FormData(pub HashMap<String, String>);

impl FormData {
    pub fn get(&self, k: &str) -> &str {
        self.0.get(k).map(String::as_str).unwrap_or("")
    }
}

pub fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// A cookie's value from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `Set-Cookie` for a console cookie.
pub fn set_cookie(app: &App, name: &str, value: &str, path: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if secure_cookies(&app.settings.api.public_url) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    ))
    .expect("cookie values are URL-safe")
}

/// Cookies are `Secure` whenever browsers keep them: on https, and on plain http to this
/// machine (browsers treat loopback as a secure context). Only a plain-http public URL on
/// another host gets cookies without it — the console would not work otherwise; the server
/// logs a warning at start-up for that setup.
pub fn secure_cookies(public_url: &str) -> bool {
    match url::Url::parse(public_url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) => match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        Err(_) => false,
    }
}

/// The console half of the access check (see `crate::routes`).
pub async fn guard(app: App, spec: RouteSpec, least: Role, req: Request, next: Next) -> Response {
    let mut resp = check(app, spec, least, req, next).await;
    let h = resp.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.entry(header::X_FRAME_OPTIONS).or_insert(HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    resp
}

async fn check(app: App, spec: RouteSpec, least: Role, mut req: Request, next: Next) -> Response {
    if spec.access == Access::Public {
        return next.run(req).await;
    }
    let session = match cookie(req.headers(), SESSION_COOKIE) {
        Some(v) => match app.store.session(&crate::auth::hash_token(&v), chrono::Utc::now()).await {
            Ok(s) => s,
            Err(e) => return ConsoleError::from(e).into_response(),
        },
        None => None,
    };
    let Some((analyst, csrf)) = session else {
        let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/console");
        let next_path = if req.method() == Method::GET { path } else { "/console" };
        let target = format!(
            "/console/login?next={}",
            url::form_urlencoded::byte_serialize(next_path.as_bytes()).collect::<String>()
        );
        return Redirect::to(&target).into_response();
    };
    if analyst.role < least {
        return ConsoleError::Forbidden(format!(
            "{} (role {}) cannot use this page: it needs the {least} role.",
            analyst.name, analyst.role
        ))
        .into_response();
    }
    if req.method() == Method::POST {
        let header_token = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let (parts, body) = req.into_parts();
        let bytes = match axum::body::to_bytes(body, 1024 * 1024).await {
            Ok(b) => b,
            Err(_) => {
                return ConsoleError::BadRequest("the form is larger than 1 MiB".into()).into_response();
            }
        };
        let form = parse_form(&bytes);
        let sent = header_token.or_else(|| form.get("csrf").cloned()).unwrap_or_default();
        if !crate::auth::same_secret(&sent, &csrf) {
            return ConsoleError::Forbidden(
                "This form has expired or did not come from this console (CSRF check failed). Reload the page and try again."
                    .into(),
            )
            .into_response();
        }
        req = Request::from_parts(parts, Body::from(bytes));
        req.extensions_mut().insert(FormData(form));
    }
    req.extensions_mut().insert(crate::routes::CurrentUser(analyst.clone()));
    req.extensions_mut().insert(CurrentSession { analyst, csrf });
    next.run(req).await
}

/// Renders a console template.
pub fn render(name: &str, ctx: minijinja::Value) -> Result<Response, ConsoleError> {
    let t = TEMPLATES.get_template(name).map_err(|e| ConsoleError::Internal(e.into()))?;
    let html = t.render(ctx).map_err(|e| ConsoleError::Internal(e.into()))?;
    Ok(Html(html).into_response())
}

/// Every way a console page can fail; shown as a page with the reason.
#[derive(Debug)]
pub enum ConsoleError {
    Forbidden(String),
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    Internal(anyhow::Error),
}

impl From<StoreError> for ConsoleError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ConsoleError::NotFound(e.to_string()),
            StoreError::Conflict(_) => ConsoleError::Conflict(e.to_string()),
            StoreError::Invalid { .. } => ConsoleError::BadRequest(e.to_string()),
            StoreError::Transition(TransitionError::FourEyes { .. }) => {
                ConsoleError::Forbidden(e.to_string())
            }
            StoreError::Transition(TransitionError::Illegal { .. }) => ConsoleError::Conflict(e.to_string()),
            other => ConsoleError::Internal(other.into()),
        }
    }
}

impl From<crate::app::RegisterError> for ConsoleError {
    fn from(e: crate::app::RegisterError) -> Self {
        match e {
            crate::app::RegisterError::Invalid(m) => ConsoleError::BadRequest(m),
            crate::app::RegisterError::Store(e) => e.into(),
        }
    }
}

impl From<crate::app::ActError> for ConsoleError {
    fn from(e: crate::app::ActError) -> Self {
        match e {
            crate::app::ActError::Forbidden(m) => ConsoleError::Forbidden(m),
            crate::app::ActError::Store(e) => e.into(),
        }
    }
}

impl From<crate::api::ApiError> for ConsoleError {
    fn from(e: crate::api::ApiError) -> Self {
        use crate::api::ApiError as A;
        match e {
            A::Unauthorized => ConsoleError::Forbidden("not signed in".into()),
            A::Forbidden(m) => ConsoleError::Forbidden(m),
            A::NotFound(m) => ConsoleError::NotFound(m),
            A::BadRequest(m) => ConsoleError::BadRequest(m),
            A::Conflict(m) => ConsoleError::Conflict(m),
            A::Internal(e) => ConsoleError::Internal(e),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title, msg) = match self {
            ConsoleError::Forbidden(m) => (StatusCode::FORBIDDEN, "Not allowed", m),
            ConsoleError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
            ConsoleError::BadRequest(m) => (StatusCode::UNPROCESSABLE_ENTITY, "Please check the form", m),
            ConsoleError::Conflict(m) => (StatusCode::CONFLICT, "Not possible now", m),
            ConsoleError::Internal(e) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(error = %format!("{e:#}"), error.id = %id, "console request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    format!("internal error (reference {id})"),
                )
            }
        };
        let ctx = minijinja::context! { title => title, message => &msg, status => status.as_u16() };
        let body = TEMPLATES
            .get_template("error.html")
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|_| format!("{title}: {msg}"));
        (status, Html(body)).into_response()
    }
}

pub type ConsoleResult = Result<Response, ConsoleError>;
