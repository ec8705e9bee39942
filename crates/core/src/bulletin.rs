//! Bulletins and their state machine.
//!
//! ```text
//! draft ──submit──▶ in_review ──approve──▶ approved ──publish──▶ published ──supersede──▶ superseded
//!   ▲                  │  │                   │                      │
//!   └──recall──────────┘  └─reject─▶ rejected─┘(reopen → draft)      │
//!  withdraw: from draft, in_review, approved or published ──────────▶ withdrawn
//! ```
//!
//! The four-eyes rule: the analyst who approves a bulletin is never its author. It is
//! checked here, and again by the store's compare-and-set, so no client can skip it.

use crate::assessment::ThreatLevel;
use crate::ids::{AdvisoryId, AnalystId, BulletinId};
use crate::tlp::Tlp;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a bulletin is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulletinState {
    Draft,
    InReview,
    Approved,
    Published,
    Rejected,
    Withdrawn,
    Superseded,
}

impl BulletinState {
    pub const ALL: [BulletinState; 7] = [
        BulletinState::Draft,
        BulletinState::InReview,
        BulletinState::Approved,
        BulletinState::Published,
        BulletinState::Rejected,
        BulletinState::Withdrawn,
        BulletinState::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BulletinState::Draft => "draft",
            BulletinState::InReview => "in_review",
            BulletinState::Approved => "approved",
            BulletinState::Published => "published",
            BulletinState::Rejected => "rejected",
            BulletinState::Withdrawn => "withdrawn",
            BulletinState::Superseded => "superseded",
        }
    }

    /// The state an action leads to from this one, or `None` if the action is not legal here.
    pub fn next(self, action: Action) -> Option<BulletinState> {
        use Action as A;
        use BulletinState as S;
        match (self, action) {
            (S::Draft, A::Submit) => Some(S::InReview),
            (S::InReview, A::Recall) => Some(S::Draft),
            (S::InReview, A::Approve) => Some(S::Approved),
            (S::InReview, A::Reject) => Some(S::Rejected),
            (S::Rejected, A::Reopen) => Some(S::Draft),
            (S::Approved, A::Publish) => Some(S::Published),
            (S::Published, A::Supersede) => Some(S::Superseded),
            (S::Draft | S::InReview | S::Approved | S::Published, A::Withdraw) => Some(S::Withdrawn),
            _ => None,
        }
    }

    /// Only drafts may be edited; everything after is what a reviewer saw.
    pub fn is_editable(self) -> bool {
        self == BulletinState::Draft
    }
}

impl fmt::Display for BulletinState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BulletinState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        BulletinState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a bulletin state"))
    }
}

/// Something an analyst does to a bulletin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Submit,
    Recall,
    Approve,
    Reject,
    Reopen,
    Publish,
    Withdraw,
    Supersede,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Submit,
        Action::Recall,
        Action::Approve,
        Action::Reject,
        Action::Reopen,
        Action::Publish,
        Action::Withdraw,
        Action::Supersede,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Submit => "submit",
            Action::Recall => "recall",
            Action::Approve => "approve",
            Action::Reject => "reject",
            Action::Reopen => "reopen",
            Action::Publish => "publish",
            Action::Withdraw => "withdraw",
            Action::Supersede => "supersede",
        }
    }

    /// Actions that are a reviewer's judgement; the author may not take them.
    pub fn needs_second_pair_of_eyes(self) -> bool {
        matches!(self, Action::Approve | Action::Reject)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot {action} a bulletin that is {from}")]
    Illegal { from: BulletinState, action: Action },
    #[error("four-eyes rule: {actor} wrote this bulletin and cannot {action} it; another analyst must")]
    FourEyes { actor: AnalystId, action: Action },
}

/// What an analyst writes: everything that goes out to recipients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulletinContent {
    pub title: String,
    pub threat_level: ThreatLevel,
    pub tlp: Tlp,
    pub summary: String,
    pub affected_products: Vec<String>,
    pub remediation: String,
    pub references: Vec<String>,
    pub cves: Vec<String>,
}

impl BulletinContent {
    /// A bulletin with a title, level and marking, and nothing else yet.
    pub fn new(title: impl Into<String>, threat_level: ThreatLevel, tlp: Tlp) -> BulletinContent {
        BulletinContent {
            title: title.into(),
            threat_level,
            tlp,
            summary: String::new(),
            affected_products: Vec::new(),
            remediation: String::new(),
            references: Vec::new(),
            cves: Vec::new(),
        }
    }

    /// Checks what must be true before a bulletin can be stored.
    pub fn validate(&self) -> Result<(), String> {
        if self.title.trim().is_empty() {
            return Err("bulletin title is empty".into());
        }
        if self.title.chars().count() > 300 {
            return Err("bulletin title is longer than 300 characters".into());
        }
        if let Some(r) = self.references.iter().find(|r| !is_web_url(r)) {
            return Err(format!("reference `{r}` is not an http(s) link"));
        }
        Ok(())
    }
}

/// An `http://` or `https://` link with a host and nothing that could break out of an
/// attribute: the only links a bulletin may carry (feeds can send `javascript:` and worse).
pub fn is_web_url(s: &str) -> bool {
    let lower = s.get(..8).map(str::to_ascii_lowercase).unwrap_or_default();
    let rest = if lower.starts_with("https://") {
        &s[8..]
    } else if lower.starts_with("http://") {
        &s[7..]
    } else {
        return false;
    };
    !rest.is_empty()
        && !rest.starts_with('/')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '<' | '>' | '`'))
}

/// A bulletin as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bulletin {
    pub id: BulletinId,
    /// Human reference, e.g. `HCB-2026-0042`.
    pub reference: String,
    pub state: BulletinState,
    #[serde(flatten)]
    pub content: BulletinContent,
    pub advisory_ids: Vec<AdvisoryId>,
    pub author: AnalystId,
    pub approver: Option<AnalystId>,
    pub review_comment: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// Bumped on every change; used for compare-and-set by the store.
    pub version: i32,
}

impl Bulletin {
    /// Decides the state `action` by `actor` leads to, enforcing the four-eyes rule.
    pub fn check(&self, action: Action, actor: &AnalystId) -> Result<BulletinState, TransitionError> {
        let next = self.state.next(action).ok_or(TransitionError::Illegal { from: self.state, action })?;
        if action.needs_second_pair_of_eyes() && *actor == self.author {
            return Err(TransitionError::FourEyes { actor: actor.clone(), action });
        }
        Ok(next)
    }
}

/// Formats the human reference of the `seq`-th bulletin of `year`.
pub fn reference(prefix: &str, year: i32, seq: i64) -> String {
    format!("{prefix}-{year}-{seq:04}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_links_are_references() {
        for ok in ["https://www.cisa.gov/x", "HTTP://vendor.example/a?b=c", "https://h"] {
            assert!(is_web_url(ok), "{ok}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "https://",
            "https:///x",
            "ftp://x",
            "https://a b",
            "https://x\"onmouseover=",
            "//x",
            "",
        ] {
            assert!(!is_web_url(bad), "{bad}");
        }
        let mut c = BulletinContent::new("t", ThreatLevel::High, Tlp::Clear);
        c.references = vec!["https://ok.example".into(), "javascript:x".into()];
        assert!(c.validate().unwrap_err().contains("`javascript:x` is not an http(s) link"));
    }
    use chrono::TimeZone;

    fn bulletin(state: BulletinState) -> Bulletin {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        Bulletin {
            id: BulletinId::from_suffix("1"),
            reference: reference("HCB", 2026, 42),
            state,
            content: BulletinContent::new("t", ThreatLevel::High, Tlp::Clear),
            advisory_ids: vec![],
            author: AnalystId::from_suffix("alice"),
            approver: None,
            review_comment: None,
            created_at: t,
            updated_at: t,
            published_at: None,
            version: 1,
        }
    }

    /// The full table of legal transitions. Every (state, action) pair not listed here must
    /// be refused.
    const LEGAL: &[(BulletinState, Action, BulletinState)] = {
        use Action as A;
        use BulletinState as S;
        &[
            (S::Draft, A::Submit, S::InReview),
            (S::Draft, A::Withdraw, S::Withdrawn),
            (S::InReview, A::Recall, S::Draft),
            (S::InReview, A::Approve, S::Approved),
            (S::InReview, A::Reject, S::Rejected),
            (S::InReview, A::Withdraw, S::Withdrawn),
            (S::Rejected, A::Reopen, S::Draft),
            (S::Approved, A::Publish, S::Published),
            (S::Approved, A::Withdraw, S::Withdrawn),
            (S::Published, A::Withdraw, S::Withdrawn),
            (S::Published, A::Supersede, S::Superseded),
        ]
    };

    #[test]
    fn every_pair_of_state_and_action() {
        let bob = AnalystId::from_suffix("bob");
        let mut legal_seen = 0;
        for state in BulletinState::ALL {
            for action in Action::ALL {
                let expected = LEGAL.iter().find(|(s, a, _)| *s == state && *a == action).map(|t| t.2);
                let got = bulletin(state).check(action, &bob);
                match expected {
                    Some(to) => {
                        assert_eq!(got, Ok(to), "{state} + {action}");
                        legal_seen += 1;
                    }
                    None => assert_eq!(
                        got,
                        Err(TransitionError::Illegal { from: state, action }),
                        "{state} + {action} must be illegal"
                    ),
                }
            }
        }
        assert_eq!(legal_seen, LEGAL.len());
    }

    #[test]
    fn author_cannot_approve_or_reject() {
        let b = bulletin(BulletinState::InReview);
        let alice = b.author.clone();
        for action in [Action::Approve, Action::Reject] {
            let err = b.check(action, &alice).unwrap_err();
            assert!(matches!(err, TransitionError::FourEyes { .. }));
            assert!(err.to_string().contains("four-eyes"));
        }
        // The author may still do the author's actions.
        assert_eq!(b.check(Action::Recall, &alice), Ok(BulletinState::Draft));
        assert_eq!(bulletin(BulletinState::Draft).check(Action::Submit, &alice), Ok(BulletinState::InReview));
        assert_eq!(
            bulletin(BulletinState::Approved).check(Action::Publish, &alice),
            Ok(BulletinState::Published)
        );
    }

    #[test]
    fn only_drafts_are_editable() {
        for s in BulletinState::ALL {
            assert_eq!(s.is_editable(), s == BulletinState::Draft);
        }
    }

    #[test]
    fn states_round_trip_and_references_format() {
        for s in BulletinState::ALL {
            assert_eq!(s.as_str().parse::<BulletinState>().unwrap(), s);
        }
        assert!("live".parse::<BulletinState>().is_err());
        assert_eq!(reference("HCB", 2026, 42), "HCB-2026-0042");
        assert_eq!(reference("HCB", 2026, 12345), "HCB-2026-12345");
    }

    #[test]
    fn content_validation() {
        let mut c = bulletin(BulletinState::Draft).content;
        assert!(c.validate().is_ok());
        c.title = " ".into();
        assert!(c.validate().is_err());
    }
}
