//! Every HTTP route is registered here, through one table, with the least role it needs.
//!
//! The table is the single source of three things: the router, the access check (a guard
//! layer on every route, so no handler can forget it), and the OpenAPI document served at
//! `/api/openapi.json`. A route cannot exist without an entry, so the document and the role
//! walk test (`every_route_enforces_its_role`) cover every route there is.

use crate::app::App;
use axum::Router;
use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use broadcast_core::{Analyst, Role};
use serde_json::{Map, Value, json};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (health, metrics, unsubscribe, the sign-in page, static files).
    Public,
    /// A signed-in user with at least this role.
    Least(Role),
    /// A partner organisation, with its incident-API token (not an analyst's).
    Partner,
}

/// Which part of the server a route belongs to: how it authenticates and how it refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// JSON API: `Authorization: Bearer <token>`; refusals are JSON 401/403.
    Api,
    /// The analyst console: a session cookie, and a CSRF token on every POST; no session
    /// redirects to the sign-in page, a too-low role is a 403 page.
    Console,
}

#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub surface: Surface,
    pub summary: &'static str,
    /// The JSON Schema of the request body, when the route documents one.
    pub body_schema: Option<Value>,
}

/// The signed-in user a guard let through, for handlers to read.
#[derive(Clone, Debug)]
pub struct CurrentUser(pub Analyst);

/// The partner organisation a guard let through (incident reports).
#[derive(Clone, Debug)]
pub struct CurrentOrg(pub broadcast_core::Organisation);

/// The console session a guard let through (the CSRF token goes into every form).
#[derive(Clone, Debug)]
pub struct CurrentSession {
    pub analyst: Analyst,
    pub csrf: String,
}

pub struct Routes {
    router: Router<App>,
    specs: Vec<RouteSpec>,
    app: App,
}

impl Routes {
    pub fn new(app: App) -> Routes {
        Routes { router: Router::new(), specs: Vec::new(), app }
    }

    /// Registers one route with its access rule.
    pub fn add<H, T>(
        mut self,
        surface: Surface,
        method: Method,
        path: &'static str,
        access: Access,
        summary: &'static str,
        handler: H,
    ) -> Routes
    where
        H: Handler<T, App>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a standard method");
        let spec = RouteSpec { method, path, access, surface, summary, body_schema: None };
        let guard_state = (self.app.clone(), spec.clone());
        let route = on(filter, handler).route_layer(axum::middleware::from_fn_with_state(guard_state, guard));
        self.router = self.router.route(path, route);
        self.specs.push(spec);
        self
    }

    /// Documents the body of the route added last (its JSON Schema, for the OpenAPI document).
    pub fn body(mut self, schema: Value) -> Routes {
        if let Some(last) = self.specs.last_mut() {
            last.body_schema = Some(schema);
        }
        self
    }

    /// The router, with `/api/openapi.json` describing every route registered.
    pub fn finish(self) -> (Router<App>, Vec<RouteSpec>) {
        let mut specs = self.specs;
        let openapi_spec = RouteSpec {
            method: Method::GET,
            path: "/api/openapi.json",
            access: Access::Public,
            surface: Surface::Api,
            summary: "This OpenAPI 3.1 document.",
            body_schema: None,
        };
        specs.push(openapi_spec);
        let doc = openapi(&specs);
        let router = self.router.route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc) }
            }),
        );
        (router, specs)
    }
}

/// The access check in front of every route.
async fn guard(State((app, spec)): State<(App, RouteSpec)>, mut req: Request, next: Next) -> Response {
    if spec.surface == Surface::Console {
        let least = match spec.access {
            Access::Least(r) => r,
            Access::Public | Access::Partner => Role::Analyst,
        };
        return crate::console::guard(app, spec, least, req, next).await;
    }
    let least = match spec.access {
        Access::Public => return next.run(req).await,
        Access::Partner => return partner(app, req, next).await,
        Access::Least(least) => least,
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let analyst = match token {
        None => None,
        Some(t) => match app.store.analyst_by_token_hash(&crate::auth::hash_token(t)).await {
            Ok(a) => a,
            Err(e) => return crate::api::ApiError::from(e).into_response(),
        },
    };
    let Some(a) = analyst else {
        return crate::api::ApiError::Unauthorized.into_response();
    };
    if a.role < least {
        return crate::api::ApiError::Forbidden(format!(
            "{} (role {}) may not use {} {}: it needs the {least} role",
            a.name, a.role, spec.method, spec.path
        ))
        .into_response();
    }
    req.extensions_mut().insert(CurrentUser(a));
    next.run(req).await
}

fn bearer(req: &Request) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// Partner routes take an organisation's incident token; an analyst's token is refused
/// with a 403 that says which token is needed.
async fn partner(app: App, mut req: Request, next: Next) -> Response {
    let Some(token) = bearer(&req) else {
        return crate::api::ApiError::Unauthorized.into_response();
    };
    let hash = crate::auth::hash_token(&token);
    match app.store.org_by_incident_token(&hash).await {
        Ok(Some(org)) => {
            req.extensions_mut().insert(CurrentOrg(org));
            next.run(req).await
        }
        Ok(None) => match app.store.analyst_by_token_hash(&hash).await {
            Ok(Some(a)) => crate::api::ApiError::Forbidden(format!(
                "{} is an analyst: incident reports take the organisation's incident token (broadcast org incident-token)",
                a.name
            ))
            .into_response(),
            Ok(None) => crate::api::ApiError::Unauthorized.into_response(),
            Err(e) => crate::api::ApiError::from(e).into_response(),
        },
        Err(e) => crate::api::ApiError::from(e).into_response(),
    }
}

/// The OpenAPI 3.1 document for the JSON API and the public endpoints (the console's HTML
/// pages are not an API and are left out).
pub fn openapi(specs: &[RouteSpec]) -> Value {
    let mut paths = Map::new();
    for s in specs.iter().filter(|s| s.surface == Surface::Api) {
        let params: Vec<Value> = s
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|p| p.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": s.summary,
            "operationId": operation_id(&s.method, s.path),
            "parameters": params,
            "responses": { "200": { "description": "Success (201 for a creation)." } },
        });
        match s.access {
            Access::Public => op["security"] = json!([]),
            Access::Least(role) => {
                op["security"] = json!([{ "bearerAuth": [] }]);
                op["x-minimum-role"] = json!(role.as_str());
                op["responses"]["401"] = json!({ "description": "Missing or unknown API token." });
                op["responses"]["403"] =
                    json!({ "description": format!("The token's user has a role below {role}.") });
            }
            Access::Partner => {
                op["security"] = json!([{ "bearerAuth": [] }]);
                op["x-minimum-role"] = json!("partner");
                op["responses"]["401"] = json!({ "description": "Missing or unknown incident token." });
                op["responses"]["403"] = json!({ "description": "An analyst's token: this route takes an organisation's incident token." });
            }
        }
        if matches!(s.method, Method::POST | Method::PUT) && s.path.starts_with("/api/") {
            let schema = s.body_schema.clone().unwrap_or_else(|| json!({ "type": "object" }));
            op["requestBody"] = json!({
                "required": s.body_schema.is_some(),
                "content": { "application/json": { "schema": schema } },
            });
            op["responses"]["422"] =
                json!({ "description": "The body or a parameter is not valid; the message names it." });
        }
        let entry = paths.entry(s.path.to_owned()).or_insert_with(|| json!({}));
        entry[s.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Broadcast API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Threat-bulletin broadcast: candidates, bulletins under the four-eyes rule, organisations, endpoints and deliveries. Errors are JSON `{\"error\": \"…\"}`.",
        },
        "components": { "securitySchemes": { "bearerAuth": { "type": "http", "scheme": "bearer" } } },
        "paths": paths,
    })
}

fn operation_id(method: &Method, path: &str) -> String {
    let mut id = method.as_str().to_ascii_lowercase();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "api") {
        id.push('_');
        id.extend(seg.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }));
    }
    id.replace("__", "_").trim_end_matches('_').to_owned()
}
