//! Subscribing organisations, their contacts and webhook endpoints, and analysts.

use crate::assessment::ThreatLevel;
use crate::ids::{AnalystId, ContactId, EndpointId, OrgId};
use crate::tlp::Tlp;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An organisation that receives bulletins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Organisation {
    pub id: OrgId,
    pub name: String,
    /// The most restrictive TLP this organisation is cleared to receive.
    pub tlp_clearance: Tlp,
    /// Bulletins below this level are not sent (recorded as suppressed).
    pub min_threat_level: ThreatLevel,
    pub created_at: DateTime<Utc>,
}

/// A person at an organisation who receives bulletins by email.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub org_id: OrgId,
    pub email: String,
    pub name: String,
    pub unsubscribed: bool,
    pub created_at: DateTime<Utc>,
}

/// A webhook endpoint of an organisation (usually its SOC's SIEM or SOAR).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: EndpointId,
    pub org_id: OrgId,
    pub url: String,
    /// Standard Webhooks secret, `whsec_<base64>`. Never logged.
    #[serde(skip_serializing)]
    pub secret: String,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
}

/// Checks an email address well enough to refuse obvious mistakes; the SMTP server has
/// the last word.
pub fn validate_email(email: &str) -> Result<(), String> {
    let e = email.trim();
    let ok = e.len() <= 254
        && !e.contains(char::is_whitespace)
        && !e.contains(['<', '>', ',', ';'])
        && e.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
        });
    if ok { Ok(()) } else { Err(format!("`{email}` is not an email address")) }
}

/// What an analyst may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads candidates, writes and submits bulletins, publishes approved ones.
    Analyst,
    /// Also approves and rejects other analysts' bulletins.
    Approver,
    /// Also manages organisations, contacts, endpoints and users.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
    pub fn can_review(self) -> bool {
        self >= Role::Approver
    }
    pub fn can_administer(self) -> bool {
        self == Role::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "analyst" => Ok(Role::Analyst),
            "approver" => Ok(Role::Approver),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("`{s}` is not a role (expected analyst, approver or admin)")),
        }
    }
}

/// A user of the API, CLI or console.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Analyst {
    pub id: AnalystId,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_validation() {
        assert!(validate_email("soc@trust.nhs.uk").is_ok());
        for bad in ["", "nobody", "a@b", "a b@c.uk", "@c.uk", "x@.uk", "x@c.uk.", "a@b.uk, c@d.uk"] {
            let err = validate_email(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn roles() {
        assert!(!Role::Analyst.can_review());
        assert!(Role::Approver.can_review());
        assert!(Role::Admin.can_review());
        assert!(!Role::Approver.can_administer());
        assert_eq!("approver".parse::<Role>().unwrap(), Role::Approver);
        assert!("root".parse::<Role>().unwrap_err().contains("root"));
    }
}
