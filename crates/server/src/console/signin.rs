//! Signing in and out, and the limit on failed sign-ins.

use super::{ConsoleError, ConsoleResult, FormData, LOGIN_COOKIE, SESSION_COOKIE, SESSION_HOURS};
use crate::app::App;
use crate::routes::CurrentSession;
use axum::Extension;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use chrono::Utc;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins allowed per account name in [`WINDOW`], and per client address.
pub const PER_ACCOUNT: usize = 5;
pub const PER_ADDRESS: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// Counts failed sign-ins per account and per client address over a sliding window. Per
/// node: with several API nodes each keeps its own count (documented limit).
#[derive(Default)]
pub struct SignInLimiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl SignInLimiter {
    /// How long until `key` may try again, if it is over `limit`.
    fn blocked(&self, key: &str, limit: usize, now: Instant) -> Option<Duration> {
        let mut map = self.failures.lock().expect("limiter lock");
        let q = map.get_mut(key)?;
        while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
            q.pop_front();
        }
        if q.len() >= limit { q.front().map(|t| WINDOW.saturating_sub(now.duration_since(*t))) } else { None }
    }

    fn fail(&self, key: &str, now: Instant) {
        let mut map = self.failures.lock().expect("limiter lock");
        if map.len() > 100_000 {
            // Bounded memory under a spray of names: forget entries whose window has passed.
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        map.entry(key.to_owned()).or_default().push_back(now);
    }

    fn clear(&self, key: &str) {
        self.failures.lock().expect("limiter lock").remove(key);
    }
}

#[derive(Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    next: String,
}

/// Only local console paths are followed after signing in (no open redirect).
fn safe_next(next: &str) -> &str {
    if next.starts_with("/console") && !next.starts_with("//") && !next.contains('\\') {
        next
    } else {
        "/console/queue"
    }
}

fn login_page(app: &App, next: &str, error: Option<String>, status: StatusCode) -> ConsoleResult {
    let token = crate::auth::generate_token();
    let ctx = minijinja::context! { csrf => &token, next => safe_next(next), error => error };
    let mut resp = super::render("login.html", ctx)?;
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::SET_COOKIE, super::set_cookie(app, LOGIN_COOKIE, &token, "/console/login", 3600));
    Ok(resp)
}

pub async fn page(State(app): State<App>, Query(q): Query<LoginQuery>) -> ConsoleResult {
    login_page(&app, &q.next, None, StatusCode::OK)
}

pub async fn submit(State(app): State<App>, req: Request) -> ConsoleResult {
    let addr = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
    let double_submit = super::cookie(req.headers(), LOGIN_COOKIE).unwrap_or_default();
    let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .map_err(|_| ConsoleError::BadRequest("the sign-in form is too large".into()))?;
    let form = FormData(super::parse_form(&bytes));
    let next = form.get("next").to_owned();
    if double_submit.is_empty() || !crate::auth::same_secret(form.get("csrf"), &double_submit) {
        return login_page(
            &app,
            &next,
            Some("The sign-in form expired. Please try again.".into()),
            StatusCode::FORBIDDEN,
        );
    }
    let name = form.get("name").trim().to_owned();
    let password = form.get("password").to_owned();
    let now = Instant::now();
    let account_key = format!("account:{}", name.to_lowercase());
    let address_key = format!("address:{}", addr.as_deref().unwrap_or("unknown"));
    let limiter = &app.signins;
    if let Some(wait) = limiter
        .blocked(&account_key, PER_ACCOUNT, now)
        .or_else(|| limiter.blocked(&address_key, PER_ADDRESS, now))
    {
        tracing::warn!(user = %name, client = ?addr, "sign-in refused: too many failures");
        let minutes = wait.as_secs().div_ceil(60).max(1);
        return login_page(
            &app,
            &next,
            Some(format!("Too many failed sign-ins. Try again in {minutes} minute(s).")),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let creds = app.store.analyst_credentials(&name).await?;
    let hash = creds.as_ref().and_then(|(_, h)| h.clone());
    // Hash even for an unknown name, so timing does not tell which names exist.
    let ok = tokio::task::spawn_blocking(move || match hash {
        Some(h) => crate::auth::verify_password(&password, &h),
        None => {
            let _ = crate::auth::verify_password(&password, DUMMY_HASH);
            false
        }
    })
    .await
    .map_err(|e| ConsoleError::Internal(e.into()))?;
    let analyst = match (ok, creds) {
        (true, Some((a, _))) => a,
        _ => {
            limiter.fail(&account_key, now);
            limiter.fail(&address_key, now);
            tracing::info!(user = %name, client = ?addr, "sign-in failed");
            return login_page(&app, &next, Some("Wrong name or password.".into()), StatusCode::UNAUTHORIZED);
        }
    };
    limiter.clear(&account_key);
    let token = crate::auth::generate_token();
    let csrf = crate::auth::generate_token();
    let at = Utc::now();
    app.store
        .create_session(
            &crate::auth::hash_token(&token),
            &analyst.id,
            &csrf,
            at,
            at + chrono::Duration::hours(SESSION_HOURS),
        )
        .await?;
    app.store
        .append_audit(
            analyst.id.as_str(),
            "user.signin",
            analyst.id.as_str(),
            serde_json::json!({ "client": addr }),
            at,
        )
        .await?;
    tracing::info!(user = %analyst.name, client = ?addr, "signed in");
    let mut resp = Redirect::to(safe_next(&next)).into_response();
    let h = resp.headers_mut();
    h.append(header::SET_COOKIE, super::set_cookie(&app, SESSION_COOKIE, &token, "/", SESSION_HOURS * 3600));
    h.append(header::SET_COOKIE, super::set_cookie(&app, LOGIN_COOKIE, "", "/console/login", 0));
    Ok(resp)
}

pub async fn logout(
    State(app): State<App>,
    Extension(s): Extension<CurrentSession>,
    headers: axum::http::HeaderMap,
) -> ConsoleResult {
    if let Some(v) = super::cookie(&headers, SESSION_COOKIE) {
        app.store.delete_session(&crate::auth::hash_token(&v)).await?;
    }
    app.store
        .append_audit(
            s.analyst.id.as_str(),
            "user.signout",
            s.analyst.id.as_str(),
            serde_json::json!({}),
            Utc::now(),
        )
        .await?;
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().insert(header::SET_COOKIE, super::set_cookie(&app, SESSION_COOKIE, "", "/", 0));
    Ok(resp)
}

/// A valid argon2id hash of a random password, checked against when the name is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0vY4vDr6wKJLvXnsd4NBNmFxd9XgR1C8XGbkB5+Tmfo";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_after_the_limit_and_expire() {
        let l = SignInLimiter::default();
        let t = Instant::now();
        for _ in 0..PER_ACCOUNT {
            assert!(l.blocked("account:amy", PER_ACCOUNT, t).is_none());
            l.fail("account:amy", t);
        }
        let wait = l.blocked("account:amy", PER_ACCOUNT, t).expect("blocked after the limit");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(1));
        assert!(l.blocked("account:bob", PER_ACCOUNT, t).is_none(), "other accounts unaffected");
        assert!(l.blocked("account:amy", PER_ACCOUNT, t + WINDOW).is_none(), "window passed");
        l.fail("account:amy", t);
        l.clear("account:amy");
        assert!(l.blocked("account:amy", PER_ACCOUNT, t).is_none());
    }

    #[test]
    fn only_console_paths_are_followed() {
        assert_eq!(safe_next("/console/bulletins/HCB-1"), "/console/bulletins/HCB-1");
        for bad in ["https://evil.example/", "//evil.example", "/api/me", "/console\\..\\x", ""] {
            assert_eq!(safe_next(bad), "/console/queue", "{bad}");
        }
    }

    #[test]
    fn the_dummy_hash_is_a_valid_hash() {
        assert!(argon2::PasswordHash::new(DUMMY_HASH).is_ok());
    }
}
