//! # broadcast-core
//!
//! The vocabulary of Broadcast: identifiers, advisories, assessments, bulletins and their
//! state machine, TLP markings, subscribers and deliveries.
//!
//! This crate does no I/O, reads no clock and no environment: every time is passed in.
//! That keeps the rules here deterministic and cheap to test, and lets every other crate
//! share one meaning for each word.
#![forbid(unsafe_code)]

pub mod advisory;
pub mod assessment;
pub mod bulletin;
pub mod delivery;
pub mod ids;
pub mod subscriber;
pub mod tlp;

pub use advisory::{
    Advisory, AdvisoryContent, Affected, Cvss, IncidentReport, KevEntry, KevListing, extract_cve_ids,
};
pub use assessment::{Assessment, ThreatLevel, ThreatLevelError};
pub use bulletin::{
    Action, Bulletin, BulletinContent, BulletinState, TransitionError, is_web_url, reference,
};
pub use delivery::{ChannelKind, Delivery, DeliveryState};
pub use ids::{AdvisoryId, AnalystId, BulletinId, ContactId, DeliveryId, EndpointId, IdError, OrgId};
pub use subscriber::{
    Analyst, Contact, Endpoint, EndpointFormat, EndpointHealthAction, Organisation, Role, validate_email,
};
pub use tlp::{Tlp, TlpError};

/// Formats an error with its chain of causes ("connect failed: connection refused"). Many
/// libraries put the useful part in a source error and a vague message on top.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.ends_with(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}
