//! Seed files: organisations, contacts, endpoints and analysts in TOML, applied idempotently.

use crate::auth::hash_token;
use anyhow::{Context, Result, bail};
use broadcast_core::{Role, ThreatLevel, Tlp};
use broadcast_store::{Store, StoreError};
use chrono::Utc;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    #[serde(default)]
    pub analysts: Vec<SeedAnalyst>,
    #[serde(default)]
    pub organisations: Vec<SeedOrg>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedAnalyst {
    pub name: String,
    pub role: String,
    /// A fixed token (demo use). Without one the analyst gets no token until
    /// `broadcast analyst token NAME` makes one.
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedOrg {
    pub name: String,
    #[serde(default)]
    pub tlp_clearance: Option<String>,
    #[serde(default)]
    pub min_threat_level: Option<String>,
    /// Vendors and products the organisation runs (empty: every bulletin).
    #[serde(default)]
    pub interests: Vec<String>,
    /// Email its contacts one digest a day at this hour (UTC) instead of at once.
    #[serde(default)]
    pub digest_hour: Option<u8>,
    #[serde(default)]
    pub contacts: Vec<SeedContact>,
    #[serde(default)]
    pub endpoints: Vec<SeedEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedContact {
    pub email: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedEndpoint {
    pub url: String,
    pub secret: String,
}

/// What a seed run added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    pub analysts: usize,
    pub organisations: usize,
    pub contacts: usize,
    pub endpoints: usize,
}

/// Reads and checks a seed file completely before anything is written.
pub fn read(path: &Path) -> Result<SeedFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read seed file {}", path.display()))?;
    let seed: SeedFile = toml::from_str(&text).with_context(|| format!("seed file {}", path.display()))?;
    for a in &seed.analysts {
        a.role
            .parse::<Role>()
            .map_err(|e| anyhow::anyhow!("seed file {}: analyst {}: {e}", path.display(), a.name))?;
    }
    for o in &seed.organisations {
        let at = |e: String| anyhow::anyhow!("seed file {}: organisation `{}`: {e}", path.display(), o.name);
        if let Some(t) = &o.tlp_clearance {
            t.parse::<Tlp>().map_err(|e| at(e.to_string()))?;
        }
        if let Some(l) = &o.min_threat_level {
            l.parse::<ThreatLevel>().map_err(|e| at(e.to_string()))?;
        }
        for c in &o.contacts {
            broadcast_core::validate_email(&c.email).map_err(at)?;
        }
        for e in &o.endpoints {
            crate::validate_webhook_url(&e.url).map_err(at)?;
            broadcast_distribute::sign::validate_secret(&e.secret).map_err(|x| at(x.to_string()))?;
        }
    }
    Ok(seed)
}

pub async fn apply(store: &Store, seed: &SeedFile) -> Result<SeedReport> {
    let now = Utc::now();
    let mut report = SeedReport::default();
    for a in &seed.analysts {
        let role: Role = a.role.parse().map_err(anyhow::Error::msg)?;
        match store.analyst_by_name(&a.name).await {
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => {
                let hash = a
                    .token
                    .as_deref()
                    .map(hash_token)
                    .unwrap_or_else(|| hash_token(&crate::auth::generate_token()));
                store.create_analyst(&a.name, role, &hash, now).await?;
                report.analysts += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for o in &seed.organisations {
        let org = match store.get_organisation(&o.name).await {
            Ok(org) => org,
            Err(StoreError::NotFound { .. }) => {
                let tlp =
                    o.tlp_clearance.as_deref().map(str::parse::<Tlp>).transpose()?.unwrap_or(Tlp::Green);
                let level = o
                    .min_threat_level
                    .as_deref()
                    .map(str::parse::<ThreatLevel>)
                    .transpose()?
                    .unwrap_or(ThreatLevel::Information);
                report.organisations += 1;
                let mut org = store.create_organisation(&o.name, tlp, level, now).await?;
                if !o.interests.is_empty() {
                    org =
                        store.set_organisation_interests(org.id.as_str(), &o.interests, "seed", now).await?;
                }
                if o.digest_hour.is_some() {
                    org = store.set_organisation_digest(org.id.as_str(), o.digest_hour, "seed", now).await?;
                }
                org
            }
            Err(e) => return Err(e.into()),
        };
        let contacts = store.list_contacts(&org.id).await?;
        for c in &o.contacts {
            if !contacts.iter().any(|x| x.email.eq_ignore_ascii_case(&c.email)) {
                store.add_contact(org.id.as_str(), &c.email, &c.name, now).await?;
                report.contacts += 1;
            }
        }
        let endpoints = store.list_endpoints(&org.id).await?;
        for e in &o.endpoints {
            if !endpoints.iter().any(|x| x.url == e.url) {
                store.add_endpoint(org.id.as_str(), &e.url, &e.secret, now).await?;
                report.endpoints += 1;
            }
        }
    }
    if report == SeedReport::default() && seed.analysts.is_empty() && seed.organisations.is_empty() {
        bail!("seed file is empty");
    }
    Ok(report)
}
