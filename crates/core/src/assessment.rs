//! Assessments: triage's verdict on one revision of an advisory.

use crate::ids::AdvisoryId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How urgent a bulletin is for subscribers. Ordered from least to most urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ThreatLevel {
    Information,
    Low,
    Medium,
    High,
}

/// A string that is not a threat level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a threat level (expected High, Medium, Low or Information)")]
pub struct ThreatLevelError(pub String);

impl ThreatLevel {
    pub const ALL: [ThreatLevel; 4] =
        [ThreatLevel::Information, ThreatLevel::Low, ThreatLevel::Medium, ThreatLevel::High];

    pub fn as_str(self) -> &'static str {
        match self {
            ThreatLevel::Information => "Information",
            ThreatLevel::Low => "Low",
            ThreatLevel::Medium => "Medium",
            ThreatLevel::High => "High",
        }
    }

    /// The level a CVSS base score implies, following the CVSS v3 qualitative scale with
    /// Critical folded into High: 7.0–10.0 High, 4.0–6.9 Medium, 0.1–3.9 Low, 0.0 Information.
    pub fn from_cvss(score: f64) -> ThreatLevel {
        if score >= 7.0 {
            ThreatLevel::High
        } else if score >= 4.0 {
            ThreatLevel::Medium
        } else if score > 0.0 {
            ThreatLevel::Low
        } else {
            ThreatLevel::Information
        }
    }
}

impl fmt::Display for ThreatLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ThreatLevel {
    type Err = ThreatLevelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Ok(ThreatLevel::High),
            "medium" => Ok(ThreatLevel::Medium),
            "low" => Ok(ThreatLevel::Low),
            "information" | "info" => Ok(ThreatLevel::Information),
            _ => Err(ThreatLevelError(s.to_owned())),
        }
    }
}

/// Triage's verdict on one revision of an advisory, with the reasons an analyst reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Assessment {
    pub advisory_id: AdvisoryId,
    pub advisory_revision: i32,
    pub relevant: bool,
    pub threat_level: ThreatLevel,
    /// Relevance score; higher is more relevant. Candidates are sorted by it.
    pub score: f64,
    pub reasons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cvss_boundaries() {
        assert_eq!(ThreatLevel::from_cvss(10.0), ThreatLevel::High);
        assert_eq!(ThreatLevel::from_cvss(7.0), ThreatLevel::High);
        assert_eq!(ThreatLevel::from_cvss(6.9), ThreatLevel::Medium);
        assert_eq!(ThreatLevel::from_cvss(4.0), ThreatLevel::Medium);
        assert_eq!(ThreatLevel::from_cvss(3.9), ThreatLevel::Low);
        assert_eq!(ThreatLevel::from_cvss(0.1), ThreatLevel::Low);
        assert_eq!(ThreatLevel::from_cvss(0.0), ThreatLevel::Information);
    }

    #[test]
    fn ordering_and_parsing() {
        assert!(ThreatLevel::High > ThreatLevel::Medium);
        assert!(ThreatLevel::Low > ThreatLevel::Information);
        for l in ThreatLevel::ALL {
            assert_eq!(l.as_str().parse::<ThreatLevel>().unwrap(), l);
        }
        assert!("severe".parse::<ThreatLevel>().unwrap_err().to_string().contains("severe"));
    }
}
