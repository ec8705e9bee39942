//! Every route, with every role: the route table is what builds the router, so walking the
//! table walks every route the server has. Also: every console POST refuses a missing CSRF
//! token, and the OpenAPI document lists every API route and nothing else.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use broadcast_core::Role;
use broadcast_server::app::App;
use broadcast_server::config::Settings;
use broadcast_server::routes::{Access, RouteSpec, Surface};
use chrono::Utc;
use std::path::{Path, PathBuf};
use tower::ServiceExt;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

const PASSWORD: &str = "a long enough password";

async fn app(dir: &Path) -> App {
    let mut s = Settings::load(None).unwrap();
    s.store.url = format!("sqlite://{}", dir.join("b.db").display());
    s.triage.watchlist_file = repo().join("config/watchlist.toml").display().to_string();
    s.bulletins.templates_dir = repo().join("bulletin-templates").display().to_string();
    s.security.link_secret = "x".repeat(40);
    s.feeds = Vec::new();
    let app = App::open(s).await.unwrap();
    for role in [Role::Analyst, Role::Approver, Role::Admin] {
        let token = format!("token-{role}");
        app.store
            .create_analyst(role.as_str(), role, &broadcast_server::auth::hash_token(&token), Utc::now())
            .await
            .unwrap();
    }
    let hash = broadcast_server::auth::hash_password(PASSWORD).unwrap();
    app.store.set_analyst_password("admin", Some(&hash), "test", Utc::now()).await.unwrap();
    app
}

/// A fresh console session for `role` (signing out in one request must not end the next).
async fn session(app: &App, role: Role) -> (String, String) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let a = app.store.analyst_by_name(role.as_str()).await.unwrap();
    let (cookie, csrf) = (format!("session-{role}-{n}"), format!("csrf-{role}-{n}"));
    let now = Utc::now();
    app.store
        .create_session(
            &broadcast_server::auth::hash_token(&cookie),
            &a.id,
            &csrf,
            now,
            now + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    (cookie, csrf)
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(|seg| if seg.starts_with('{') { "no-such-thing" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

struct Outcome {
    status: StatusCode,
    location: String,
}

async fn call(app: &App, spec: &RouteSpec, who: Option<Role>, with_csrf: bool) -> Outcome {
    let router = broadcast_server::api::router(app.clone());
    let mut req = Request::builder().method(spec.method.clone()).uri(concrete(spec.path));
    let mut body = String::new();
    match (spec.surface, who) {
        (Surface::Api, Some(role)) => {
            req = req.header(header::AUTHORIZATION, format!("Bearer token-{role}"));
        }
        (Surface::Console, Some(role)) => {
            let (cookie, csrf) = session(app, role).await;
            req = req.header(header::COOKIE, format!("broadcast_session={cookie}"));
            if with_csrf {
                body = format!("csrf={csrf}");
            }
        }
        (_, None) => {}
    }
    if spec.path == "/console/login" && spec.method == Method::POST {
        // The sign-in form's own double-submit token and a real password.
        req = req.header(header::COOKIE, "broadcast_login=login-token");
        body = format!("csrf=login-token&name=admin&password={}", PASSWORD.replace(' ', "+"));
    }
    if spec.method != Method::GET {
        req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    }
    let resp = router.oneshot(req.body(Body::from(body)).unwrap()).await.unwrap();
    let location =
        resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    Outcome { status: resp.status(), location }
}

#[tokio::test]
async fn every_route_enforces_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (_, specs) = broadcast_server::api::routes(app.clone()).finish();
    assert!(specs.len() > 60, "the table holds the API and the console: {}", specs.len());
    let mut checked = 0;
    for spec in &specs {
        let route = format!("{} {}", spec.method, spec.path);
        for who in [None, Some(Role::Analyst), Some(Role::Approver), Some(Role::Admin)] {
            let o = call(&app, spec, who, true).await;
            let to_login =
                o.status == StatusCode::SEE_OTHER && o.location.starts_with("/console/login?next=");
            match (spec.access, who) {
                (Access::Public, _) => {
                    assert!(
                        o.status != StatusCode::UNAUTHORIZED
                            && o.status != StatusCode::FORBIDDEN
                            && !to_login,
                        "{route} is public, yet {who:?} got {}",
                        o.status
                    );
                }
                (Access::Partner, None) => {
                    assert_eq!(o.status, StatusCode::UNAUTHORIZED, "{route} without a token")
                }
                (Access::Partner, Some(role)) => {
                    assert_eq!(
                        o.status,
                        StatusCode::FORBIDDEN,
                        "{route} takes an incident token, not {role}'s"
                    )
                }
                (Access::Least(_), None) => match spec.surface {
                    Surface::Api => assert_eq!(o.status, StatusCode::UNAUTHORIZED, "{route} without a token"),
                    Surface::Console => {
                        assert!(to_login, "{route} without a session: {} {}", o.status, o.location)
                    }
                },
                (Access::Least(least), Some(role)) if role < least => {
                    assert_eq!(o.status, StatusCode::FORBIDDEN, "{route} needs {least}; {role} got through");
                }
                (Access::Least(_), Some(role)) => {
                    assert!(
                        o.status != StatusCode::UNAUTHORIZED
                            && o.status != StatusCode::FORBIDDEN
                            && !to_login,
                        "{route}: {role} is allowed, yet got {} {}",
                        o.status,
                        o.location
                    );
                    if spec.surface == Surface::Console && spec.method == Method::POST {
                        let forged = call(&app, spec, who, false).await;
                        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{route} without a CSRF token");
                    }
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, specs.len() * 4);
    // Partner routes with an organisation's incident token get through the guard.
    let org = app
        .store
        .create_organisation(
            "Partner Trust",
            broadcast_core::Tlp::Amber,
            broadcast_core::ThreatLevel::Information,
            Utc::now(),
        )
        .await
        .unwrap();
    app.store
        .set_org_incident_token(
            org.id.as_str(),
            &broadcast_server::auth::hash_token("partner-token"),
            "test",
            Utc::now(),
        )
        .await
        .unwrap();
    for spec in specs.iter().filter(|s| s.access == Access::Partner) {
        let resp = broadcast_server::api::router(app.clone())
            .oneshot(
                Request::builder()
                    .method(spec.method.clone())
                    .uri(concrete(spec.path))
                    .header(header::AUTHORIZATION, "Bearer partner-token")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(
            resp.status() != StatusCode::UNAUTHORIZED && resp.status() != StatusCode::FORBIDDEN,
            "{} {} refused the partner: {}",
            spec.method,
            spec.path,
            resp.status()
        );
    }
}

async fn post_incident(app: &App, token: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    let resp = broadcast_server::api::router(app.clone())
        .oneshot(
            Request::post("/api/incidents")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let v = serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
    (status, v)
}

/// A partner reports an incident with its own token: it is stored as an incident advisory,
/// TLP:AMBER unless stated, and triage puts it in front of an analyst. Bad reports are
/// refused naming the field; resending the same reference updates the report.
#[tokio::test]
async fn partners_report_incidents_that_enter_triage() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let org = app
        .store
        .create_organisation(
            "Riverside GP",
            broadcast_core::Tlp::Amber,
            broadcast_core::ThreatLevel::Information,
            Utc::now(),
        )
        .await
        .unwrap();
    app.store
        .set_org_incident_token(
            "Riverside GP",
            &broadcast_server::auth::hash_token("bit_riverside"),
            "test",
            Utc::now(),
        )
        .await
        .unwrap();
    let report = serde_json::json!({
        "title": "Ransomware on the practice file server",
        "description": "Files encrypted overnight; exploited CVE-2024-1709 on the remote-support server.",
        "severity": "high", "affected_systems": ["EMIS Web client PCs"], "contact": "Practice manager, 01234 567890",
        "reference": "RGP-7",
    });
    let (s, v) = post_incident(&app, "bit_riverside", report.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["tlp"], "AMBER", "AMBER unless stated");
    let id: broadcast_core::AdvisoryId = v["advisory_id"].as_str().unwrap().parse().unwrap();
    let adv = app.store.get_advisory(&id).await.unwrap();
    assert_eq!(adv.content.source, "incidents");
    assert_eq!(adv.content.title, "Incident at Riverside GP: Ransomware on the practice file server");
    assert_eq!(adv.content.cves, ["CVE-2024-1709"]);
    let inc = adv.content.incident.as_ref().unwrap();
    assert_eq!((inc.org_id.as_str(), inc.severity.as_deref()), (org.id.as_str(), Some("high")));
    broadcast_server::stages::triage::assess_pending(&app).await.unwrap();
    let c = app.store.candidate(&id).await.unwrap().expect("assessed");
    assert!(c.assessment.relevant);
    assert_eq!(c.assessment.threat_level, broadcast_core::ThreatLevel::High);
    assert!(
        c.assessment.reasons[0].starts_with("incident reported by Riverside GP"),
        "{:?}",
        c.assessment.reasons
    );

    // The same reference again, updated: a new revision of the same advisory.
    let mut update = report.clone();
    update["description"] = "Contained; two PCs rebuilt.".into();
    let (s, v) = post_incident(&app, "bit_riverside", update).await;
    assert_eq!((s, v["revision"].as_i64()), (StatusCode::OK, Some(2)), "{v}");
    assert_eq!(v["advisory_id"], id.to_string());

    for (body, field) in [
        (serde_json::json!({ "title": "x" }), "description"),
        (serde_json::json!({ "title": "", "description": "d" }), "title"),
        (serde_json::json!({ "title": "t", "description": "d", "severity": "apocalyptic" }), "severity"),
        (serde_json::json!({ "title": "t", "description": "d", "tlp": "BLUE" }), "tlp"),
        (serde_json::json!({ "title": "t", "description": "d", "cves": ["CVE-12"] }), "cves"),
        (serde_json::json!({ "title": "t", "description": "d", "colour": "red" }), "colour"),
    ] {
        let (s, v) = post_incident(&app, "bit_riverside", body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{field}: {v}");
    }
    let (s, _) = post_incident(&app, "bit_wrong", report.clone()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = post_incident(&app, "token-admin", report).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(v["error"].as_str().unwrap().contains("incident token"), "{v}");
}

#[tokio::test]
async fn the_openapi_document_lists_every_api_route() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let (_, specs) = broadcast_server::api::routes(app.clone()).finish();
    let resp = broadcast_server::api::router(app.clone())
        .oneshot(Request::get("/api/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: serde_json::Value =
        serde_json::from_slice(&axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let api: Vec<&RouteSpec> = specs.iter().filter(|s| s.surface == Surface::Api).collect();
    for s in &api {
        let op = &doc["paths"][s.path][s.method.as_str().to_ascii_lowercase()];
        assert!(op.is_object(), "{} {} is not in /api/openapi.json", s.method, s.path);
        assert_eq!(op["summary"], s.summary);
        match s.access {
            Access::Public => assert_eq!(op["security"], serde_json::json!([])),
            Access::Least(role) => assert_eq!(op["x-minimum-role"], role.as_str()),
            Access::Partner => assert_eq!(op["x-minimum-role"], "partner"),
        }
        if let Some(schema) = &s.body_schema {
            assert_eq!(&op["requestBody"]["content"]["application/json"]["schema"], schema, "{}", s.path);
        }
        let params = s.path.matches('{').count();
        assert_eq!(op["parameters"].as_array().unwrap().len(), params, "{}", s.path);
    }
    let operations: usize =
        doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(operations, api.len(), "the document has operations no route serves");
    assert!(
        !doc["paths"].as_object().unwrap().keys().any(|p| p.starts_with("/console")),
        "console pages are not API"
    );
}

async fn sign_in(app: &App, name: &str, password: &str) -> axum::response::Response {
    let body = format!("csrf=t&name={name}&password={}", password.replace(' ', "+"));
    broadcast_server::api::router(app.clone())
        .oneshot(
            Request::post("/console/login")
                .header(header::COOKIE, "broadcast_login=t")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap()
}

/// Five wrong passwords lock the account for the window, even against the right one; other
/// accounts are unaffected; the session cookie is HttpOnly and SameSite=Strict; pages carry
/// a script-tight Content-Security-Policy.
#[tokio::test]
async fn sign_in_is_rate_limited_and_cookies_are_locked_down() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let ok = sign_in(&app, "admin", PASSWORD).await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    let cookie = ok.headers().get(header::SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    assert!(cookie.starts_with("broadcast_session=bct_"), "{cookie}");
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200", "Secure"] {
        assert!(cookie.contains(attr), "{attr} missing: {cookie}");
    }
    assert!(broadcast_server::console::secure_cookies("https://broadcast.example"));
    assert!(
        broadcast_server::console::secure_cookies("http://127.0.0.1:8080"),
        "loopback is a secure context"
    );
    assert!(broadcast_server::console::secure_cookies("http://localhost:8080"));
    assert!(!broadcast_server::console::secure_cookies("http://broadcast.example"), "plain http elsewhere");
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = broadcast_server::api::router(app.clone())
        .oneshot(Request::get("/console/queue").header(header::COOKIE, &session).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-eval"), "{csp}");
    assert!(!csp.split(';').any(|d| d.contains("script-src") && d.contains("unsafe-inline")), "{csp}");
    assert_eq!(page.headers().get(header::X_FRAME_OPTIONS).unwrap(), "DENY");

    for _ in 0..5 {
        assert_eq!(sign_in(&app, "admin", "wrong password!!").await.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = sign_in(&app, "admin", PASSWORD).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS, "the right password is refused while locked");
    let text =
        String::from_utf8(axum::body::to_bytes(locked.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("Too many failed sign-ins"), "{text}");
    // Another account from the same address still signs in (address limit is higher).
    let hash = broadcast_server::auth::hash_password(PASSWORD).unwrap();
    app.store.set_analyst_password("analyst", Some(&hash), "test", Utc::now()).await.unwrap();
    assert_eq!(sign_in(&app, "analyst", PASSWORD).await.status(), StatusCode::SEE_OTHER);
    // A forged sign-in form (no matching double-submit cookie) is refused.
    let forged = broadcast_server::api::router(app.clone())
        .oneshot(
            Request::post("/console/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!("csrf=t&name=analyst&password={}", PASSWORD.replace(' ', "+"))))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
}

/// The queue as an analyst sees it: one row per real issue (the other source named), and a
/// burst of candidates for one product folded into a notice above the list.
#[tokio::test]
async fn the_queue_folds_issues_and_shows_bursts() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path()).await;
    let now = Utc::now();
    let rec = |source: &str, ext: &str, title: &str, cve: &str| {
        let mut a = broadcast_core::AdvisoryContent::new(source, ext, title);
        a.summary = "Baxter infusion pump remote code execution".into();
        a.cves = vec![cve.to_owned()];
        a.published = Some(now);
        a.affected = vec![broadcast_core::Affected::named("Baxter", "Sigma Spectrum")];
        a
    };
    // Stored as the collector stores them: joined to their issue by triage's keys.
    app.store_advisory(&rec("cisa-csaf", "ICSMA-26-001-01", "Baxter Sigma Spectrum", "CVE-2026-1000"), now)
        .await
        .unwrap();
    app.store_advisory(
        &rec("cisa-rss", "ICSMA-26-001-01", "Baxter Sigma Spectrum (RSS)", "CVE-2026-1000"),
        now,
    )
    .await
    .unwrap();
    for n in 1..6 {
        app.store_advisory(
            &rec(
                "vendor",
                &format!("BAX-2026-{n:02}"),
                &format!("Baxter pump issue {n}"),
                &format!("CVE-2026-200{n}"),
            ),
            now,
        )
        .await
        .unwrap();
    }
    broadcast_server::stages::triage::assess_pending(&app).await.unwrap();
    let (cookie, _) = session(&app, Role::Analyst).await;
    let resp = broadcast_server::api::router(app.clone())
        .oneshot(
            Request::get("/console/queue")
                .header(header::COOKIE, format!("broadcast_session={cookie}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let html =
        String::from_utf8(axum::body::to_bytes(resp.into_body(), 1 << 22).await.unwrap().to_vec()).unwrap();
    let rows = html.matches("class=\"adv\"").count();
    assert_eq!(rows, 6, "7 records, 6 issues: the CSAF and RSS records of ICSMA-26-001-01 are one row");
    assert!(html.contains("also: cisa-"), "the other source is named on the row");
    assert!(html.contains("id=\"bursts\""), "a burst for baxter/sigma spectrum is shown");
    assert!(html.contains("<strong>6</strong> issues for baxter sigma spectrum"), "{html}");
}
