//! Incident reports from partner organisations: `POST /api/incidents` with the
//! organisation's own token (`broadcast org incident-token ORG`). A report becomes an
//! advisory marked as an incident (source `incidents`), TLP:AMBER unless stated, and enters
//! triage like any advisory; triage always puts it in front of an analyst. Sending the same
//! `reference` again updates it (a new revision).

use crate::api::{ApiError, JsonBody};
use crate::app::App;
use crate::routes::CurrentOrg;
use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use broadcast_core::{AdvisoryContent, IncidentReport, Tlp, extract_cve_ids};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

/// The request body (also published as JSON Schema in `/api/openapi.json`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncidentBody {
    pub title: String,
    pub description: String,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub tlp: Option<String>,
    #[serde(default)]
    pub occurred_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub affected_systems: Vec<String>,
    #[serde(default)]
    pub cves: Vec<String>,
    #[serde(default)]
    pub contact: Option<String>,
    /// The reporter's own id for the incident; sending it again updates the report.
    #[serde(default)]
    pub reference: Option<String>,
}

pub fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["title", "description"],
        "properties": {
            "title": { "type": "string", "minLength": 1, "maxLength": 200 },
            "description": { "type": "string", "minLength": 1, "maxLength": 20000,
                             "description": "What happened, what is affected, what has been done." },
            "severity": { "enum": ["low", "medium", "high", "critical"] },
            "tlp": { "enum": ["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"], "default": "AMBER" },
            "occurred_at": { "type": "string", "format": "date-time" },
            "affected_systems": { "type": "array", "items": { "type": "string", "maxLength": 200 }, "maxItems": 100 },
            "cves": { "type": "array", "items": { "type": "string", "pattern": "^CVE-[0-9]{4}-[0-9]{4,7}$" } },
            "contact": { "type": "string", "maxLength": 500, "description": "How the CERT reaches the reporter." },
            "reference": { "type": "string", "maxLength": 100, "description": "Your id for the incident; resend it to update the report." },
        },
    })
}

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// Turns a report into the advisory triage sees. Pure; every refusal names the field.
pub fn to_advisory(
    org: &broadcast_core::Organisation,
    b: IncidentBody,
    now: DateTime<Utc>,
) -> Result<AdvisoryContent, ApiError> {
    let title = b.title.trim();
    if title.is_empty() || title.chars().count() > 200 {
        return Err(bad("title: must be 1–200 characters".into()));
    }
    let description = b.description.trim();
    if description.is_empty() || description.chars().count() > 20_000 {
        return Err(bad("description: must be 1–20000 characters".into()));
    }
    if let Some(s) = &b.severity
        && !matches!(s.as_str(), "low" | "medium" | "high" | "critical")
    {
        return Err(bad(format!("severity: `{s}` is not low, medium, high or critical")));
    }
    let tlp = match &b.tlp {
        None => Tlp::Amber,
        Some(t) => t.parse::<Tlp>().map_err(|e| bad(format!("tlp: {e}")))?,
    };
    if b.affected_systems.len() > 100 || b.affected_systems.iter().any(|s| s.chars().count() > 200) {
        return Err(bad("affected_systems: at most 100 entries of at most 200 characters".into()));
    }
    let mut cves = Vec::new();
    for c in &b.cves {
        let found = extract_cve_ids(c);
        if found.len() != 1 || found[0] != c.trim().to_ascii_uppercase() {
            return Err(bad(format!("cves: `{c}` is not a CVE id")));
        }
        cves.push(found[0].clone());
    }
    for c in extract_cve_ids(&format!("{title}\n{description}")) {
        if !cves.contains(&c) {
            cves.push(c);
        }
    }
    if b.contact.as_ref().is_some_and(|c| c.chars().count() > 500) {
        return Err(bad("contact: at most 500 characters".into()));
    }
    let reference = match &b.reference {
        Some(r) if r.trim().is_empty() || r.chars().count() > 100 => {
            return Err(bad("reference: must be 1–100 characters".into()));
        }
        Some(r) => r.trim().to_owned(),
        None => uuid::Uuid::now_v7().simple().to_string(),
    };
    let mut a = AdvisoryContent::new(
        "incidents",
        format!("{}:{reference}", org.id),
        format!("Incident at {}: {title}", org.name),
    );
    a.summary = description.to_owned();
    a.published = Some(b.occurred_at.unwrap_or(now));
    a.cves = cves;
    a.tlp = tlp;
    a.incident = Some(IncidentReport {
        org_id: org.id.to_string(),
        org_name: org.name.clone(),
        severity: b.severity,
        occurred_at: b.occurred_at,
        affected_systems: b.affected_systems,
        contact: b.contact,
    });
    a.validate().map_err(bad)?;
    Ok(a)
}

pub async fn submit(
    State(app): State<App>,
    Extension(CurrentOrg(org)): Extension<CurrentOrg>,
    JsonBody(body): JsonBody<IncidentBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let now = Utc::now();
    let content = to_advisory(&org, body, now)?;
    let u = app.store_advisory(&content, now).await?;
    app.wake_triage.notify_one();
    tracing::info!(org = %org.name, advisory.id = %u.id, change = ?u.change, "incident reported");
    let status = if u.change == broadcast_store::Change::New { StatusCode::CREATED } else { StatusCode::OK };
    Ok((
        status,
        Json(json!({ "advisory_id": u.id, "revision": u.revision, "change": u.change, "tlp": content.tlp })),
    ))
}
