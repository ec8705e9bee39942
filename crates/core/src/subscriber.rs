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
    /// Vendors and products this organisation runs. Empty: every bulletin. Otherwise a
    /// bulletin goes to it only if one of these names appears in its title or affected
    /// products (see [`Organisation::interested_in`]).
    #[serde(default)]
    pub interests: Vec<String>,
    /// `None`: each bulletin is emailed as soon as it is published. `Some(h)`: its contacts
    /// get one digest email a day at `h`:00 UTC with every bulletin published since the last
    /// one. Webhooks are always immediate (machines want them at once).
    #[serde(default)]
    pub digest_hour: Option<u8>,
    pub created_at: DateTime<Utc>,
}

impl Organisation {
    /// When an email published at `now` is sent: `None` at once, or the next digest time
    /// strictly after `now`.
    pub fn next_digest_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        use chrono::{Datelike, Duration, TimeZone};
        let hour = u32::from(self.digest_hour?.min(23));
        let today =
            Utc.with_ymd_and_hms(now.year(), now.month(), now.day(), hour, 0, 0).single().unwrap_or(now);
        Some(if today > now { today } else { today + Duration::days(1) })
    }

    /// Whether a bulletin concerns this organisation's interests: case-insensitive, at word
    /// boundaries, in the title or the affected products. No interests means everything.
    pub fn interested_in(&self, b: &crate::BulletinContent) -> bool {
        if self.interests.is_empty() {
            return true;
        }
        let mut text = b.title.to_lowercase();
        for p in &b.affected_products {
            text.push('\n');
            text.push_str(&p.to_lowercase());
        }
        self.interests.iter().any(|i| contains_word(&text, &i.trim().to_lowercase()))
    }
}

fn contains_word(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    haystack.match_indices(needle).any(|(i, m)| {
        !word(haystack[..i].chars().next_back()) && !word(haystack[i + m.len()..].chars().next())
    })
}

/// A person at an organisation who receives bulletins by email.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub org_id: OrgId,
    pub email: String,
    pub name: String,
    pub unsubscribed: bool,
    /// Set when the address kept hard-bouncing: no more email goes to it.
    #[serde(default)]
    pub suppressed_reason: Option<String>,
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
    /// After a rotation, the old secret also signs until `previous_secret_until`, so the
    /// receiver can switch over without missing a message. Never serialised.
    #[serde(skip_serializing)]
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub format: EndpointFormat,
    pub created_at: DateTime<Utc>,
    /// The first failure of the current streak of failed attempts, if failing.
    pub failing_since: Option<DateTime<Utc>>,
    /// Failed attempts in a row (any success resets it).
    pub consecutive_failures: i32,
    /// When the organisation was warned during this streak.
    pub failure_warned_at: Option<DateTime<Utc>>,
}

/// What to do about an endpoint after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointHealthAction {
    Nothing,
    /// Email the organisation that its endpoint is failing (once per streak).
    Warn,
    /// Failing continuously for longer than allowed: disable it and email a notice.
    Disable,
}

impl Endpoint {
    /// After a failed attempt: warn once the streak reaches `warn_after` failures, disable
    /// once it has lasted `disable_after` (and has at least `warn_after` failures, so a single
    /// failure after a long quiet spell never disables an endpoint by itself).
    pub fn health_action(
        &self,
        now: DateTime<Utc>,
        warn_after: u32,
        disable_after: chrono::Duration,
    ) -> EndpointHealthAction {
        if !self.enabled || (self.consecutive_failures as i64) < warn_after as i64 {
            return EndpointHealthAction::Nothing;
        }
        match self.failing_since {
            Some(since) if now - since >= disable_after => EndpointHealthAction::Disable,
            _ if self.failure_warned_at.is_none() => EndpointHealthAction::Warn,
            _ => EndpointHealthAction::Nothing,
        }
    }
}

impl Endpoint {
    /// The secrets that sign a request sent at `now`: the current one, and the previous one
    /// during its overlap.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_until)
            && now < until
        {
            out.push(prev);
        }
        out
    }
}

/// The body an endpoint receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EndpointFormat {
    /// Broadcast's own JSON (schema in docs/API.md), for SIEM and SOAR.
    #[default]
    Broadcast,
    /// A Slack incoming-webhook message.
    Slack,
    /// A Microsoft Teams incoming-webhook message (Adaptive Card).
    Teams,
}

impl EndpointFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointFormat::Broadcast => "broadcast",
            EndpointFormat::Slack => "slack",
            EndpointFormat::Teams => "teams",
        }
    }
}

impl FromStr for EndpointFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "broadcast" => Ok(EndpointFormat::Broadcast),
            "slack" => Ok(EndpointFormat::Slack),
            "teams" => Ok(EndpointFormat::Teams),
            _ => Err(format!("`{s}` is not an endpoint format (expected broadcast, slack or teams)")),
        }
    }
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
    fn rotation_signs_with_both_secrets_during_the_overlap() {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut ep = Endpoint {
            id: EndpointId::from_suffix("e"),
            org_id: OrgId::from_suffix("o"),
            url: "https://soc.example/hook".into(),
            secret: "whsec_new".into(),
            previous_secret: Some("whsec_old".into()),
            previous_secret_until: Some(t + chrono::Duration::hours(24)),
            enabled: true,
            format: EndpointFormat::Broadcast,
            created_at: t,
            failing_since: None,
            consecutive_failures: 0,
            failure_warned_at: None,
        };
        assert_eq!(ep.signing_secrets(t), vec!["whsec_new", "whsec_old"]);
        assert_eq!(ep.signing_secrets(t + chrono::Duration::hours(24)), vec!["whsec_new"]);
        ep.previous_secret_until = None;
        assert_eq!(ep.signing_secrets(t), vec!["whsec_new"]);
        assert_eq!("teams".parse::<EndpointFormat>().unwrap(), EndpointFormat::Teams);
        assert!("fax".parse::<EndpointFormat>().unwrap_err().contains("fax"));

        // Health: warn once at the threshold, disable after the period, never for one failure.
        use EndpointHealthAction::*;
        let day = chrono::Duration::days(1);
        ep.consecutive_failures = 1;
        ep.failing_since = Some(t - day * 30);
        assert_eq!(ep.health_action(t, 3, day), Nothing, "one failure after a quiet month");
        ep.consecutive_failures = 3;
        ep.failing_since = Some(t - chrono::Duration::minutes(20));
        assert_eq!(ep.health_action(t, 3, day), Warn);
        ep.failure_warned_at = Some(t);
        assert_eq!(ep.health_action(t, 3, day), Nothing, "warned once per streak");
        assert_eq!(ep.health_action(t + day, 3, day), Disable);
        ep.enabled = false;
        assert_eq!(ep.health_action(t + day, 3, day), Nothing, "already disabled");
    }

    #[test]
    fn interests_filter_by_title_and_affected_products() {
        use chrono::TimeZone;
        let mut org = Organisation {
            id: OrgId::from_suffix("o"),
            name: "Riverside GP".into(),
            tlp_clearance: Tlp::Green,
            min_threat_level: ThreatLevel::Information,
            interests: vec![],
            digest_hour: None,
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        };
        // Digest times: the next 07:00 UTC strictly after publishing.
        let at = |h, m| Utc.with_ymd_and_hms(2026, 3, 31, h, m, 0).unwrap();
        assert_eq!(org.next_digest_after(at(6, 59)), None, "immediate by default");
        org.digest_hour = Some(7);
        assert_eq!(org.next_digest_after(at(6, 59)), Some(at(7, 0)));
        assert_eq!(org.next_digest_after(at(7, 0)), Some(Utc.with_ymd_and_hms(2026, 4, 1, 7, 0, 0).unwrap()));
        assert_eq!(
            org.next_digest_after(at(23, 30)),
            Some(Utc.with_ymd_and_hms(2026, 4, 1, 7, 0, 0).unwrap())
        );
        org.digest_hour = None;
        let mut b = crate::BulletinContent::new("Flaw in EMIS Web", ThreatLevel::High, Tlp::Clear);
        b.affected_products = vec!["Philips IntelliVue MX40".into()];
        assert!(org.interested_in(&b), "no interests: everything");
        org.interests = vec!["emis".into()];
        assert!(org.interested_in(&b));
        org.interests = vec!["IntelliVue".into(), "Baxter".into()];
        assert!(org.interested_in(&b), "affected products count");
        org.interests = vec!["Baxter".into(), "EM".into()];
        assert!(!org.interested_in(&b), "whole words only");
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
