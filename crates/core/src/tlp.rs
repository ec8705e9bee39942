//! Traffic Light Protocol 2.0 markings (FIRST TLP 2.0).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A TLP 2.0 marking. Ordered from least to most restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Tlp {
    #[default]
    #[serde(rename = "CLEAR")]
    Clear,
    #[serde(rename = "GREEN")]
    Green,
    #[serde(rename = "AMBER")]
    Amber,
    #[serde(rename = "AMBER+STRICT")]
    AmberStrict,
    #[serde(rename = "RED")]
    Red,
}

/// A string that is not a TLP marking.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a TLP marking (expected CLEAR, GREEN, AMBER, AMBER+STRICT or RED)")]
pub struct TlpError(pub String);

impl Tlp {
    pub const ALL: [Tlp; 5] = [Tlp::Clear, Tlp::Green, Tlp::Amber, Tlp::AmberStrict, Tlp::Red];

    pub fn as_str(self) -> &'static str {
        match self {
            Tlp::Clear => "CLEAR",
            Tlp::Green => "GREEN",
            Tlp::Amber => "AMBER",
            Tlp::AmberStrict => "AMBER+STRICT",
            Tlp::Red => "RED",
        }
    }

    /// Whether a recipient cleared up to `clearance` may receive material marked `self`.
    /// CLEAR and GREEN go to any subscriber; AMBER, AMBER+STRICT and RED need clearance.
    pub fn may_go_to(self, clearance: Tlp) -> bool {
        self <= Tlp::Green || self <= clearance
    }

    /// RED material never travels in an email body; recipients get a notice with a link.
    pub fn allowed_in_email_body(self) -> bool {
        self != Tlp::Red
    }
}

impl fmt::Display for Tlp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLP:{}", self.as_str())
    }
}

impl FromStr for Tlp {
    type Err = TlpError;
    /// Accepts `AMBER`, `TLP:AMBER`, any case, and the TLP 1.0 `WHITE` (= CLEAR).
    fn from_str(s: &str) -> Result<Self, TlpError> {
        let up = s.trim().to_ascii_uppercase();
        let bare = up.strip_prefix("TLP:").unwrap_or(&up);
        match bare {
            "CLEAR" | "WHITE" => Ok(Tlp::Clear),
            "GREEN" => Ok(Tlp::Green),
            "AMBER" => Ok(Tlp::Amber),
            "AMBER+STRICT" => Ok(Tlp::AmberStrict),
            "RED" => Ok(Tlp::Red),
            _ => Err(TlpError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_forms() {
        for t in Tlp::ALL {
            assert_eq!(t.as_str().parse::<Tlp>().unwrap(), t);
            assert_eq!(t.to_string().parse::<Tlp>().unwrap(), t);
        }
        assert_eq!("tlp:white".parse::<Tlp>().unwrap(), Tlp::Clear);
        assert_eq!("amber+strict".parse::<Tlp>().unwrap(), Tlp::AmberStrict);
        let err = "PURPLE".parse::<Tlp>().unwrap_err();
        assert!(err.to_string().contains("PURPLE"));
    }

    #[test]
    fn clearance_rules() {
        // CLEAR and GREEN go to anyone.
        assert!(Tlp::Clear.may_go_to(Tlp::Clear));
        assert!(Tlp::Green.may_go_to(Tlp::Clear));
        // AMBER needs AMBER clearance or higher.
        assert!(!Tlp::Amber.may_go_to(Tlp::Green));
        assert!(Tlp::Amber.may_go_to(Tlp::Amber));
        assert!(!Tlp::AmberStrict.may_go_to(Tlp::Amber));
        assert!(Tlp::AmberStrict.may_go_to(Tlp::Red));
        assert!(!Tlp::Red.may_go_to(Tlp::AmberStrict));
        assert!(!Tlp::Red.allowed_in_email_body());
        assert!(Tlp::AmberStrict.allowed_in_email_body());
    }

    #[test]
    fn serde_uses_tlp2_names() {
        assert_eq!(serde_json::to_string(&Tlp::AmberStrict).unwrap(), "\"AMBER+STRICT\"");
        assert_eq!(serde_json::from_str::<Tlp>("\"RED\"").unwrap(), Tlp::Red);
    }
}
