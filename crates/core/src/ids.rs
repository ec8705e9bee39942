//! Prefixed, readable identifiers (`adv_…`, `dlv_…`).
//!
//! The random part is made by the caller (the store), so this crate stays free of
//! randomness; an id only knows its prefix and how to check it.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An identifier string did not have the expected shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not a valid {kind} id (expected `{prefix}_…`)")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub value: String,
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$m])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with, without the underscore.
            pub const PREFIX: &'static str = $prefix;

            /// Builds an id from a random or unique suffix chosen by the caller.
            pub fn from_suffix(suffix: &str) -> Self {
                Self(format!("{}_{}", $prefix, suffix))
            }

            /// Parses an id, checking its prefix and characters.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                let ok = value
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| {
                        !rest.is_empty()
                            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    });
                if ok {
                    Ok(Self(value.to_owned()))
                } else {
                    Err(IdError { kind: $kind, prefix: $prefix, value: value.to_owned() })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
    };
}

id_type!(/// An advisory: one real issue, possibly reported by several sources.
    AdvisoryId, "adv", "advisory");
id_type!(/// A bulletin. Bulletins also carry a human reference such as `HCB-2026-0042`.
    BulletinId, "blt", "bulletin");
id_type!(/// A subscribing organisation.
    OrgId, "org", "organisation");
id_type!(/// An email contact of an organisation.
    ContactId, "con", "contact");
id_type!(/// A webhook endpoint of an organisation.
    EndpointId, "ep", "endpoint");
id_type!(/// One outbox row: a bulletin to one recipient over one channel.
    DeliveryId, "dlv", "delivery");
id_type!(/// An analyst (a user of the API, CLI or console).
    AnalystId, "usr", "analyst");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_checks_prefix_and_characters() {
        assert!(AdvisoryId::parse("adv_01HXYZ").is_ok());
        let err = AdvisoryId::parse("blt_01HXYZ").unwrap_err();
        assert_eq!(err.kind, "advisory");
        assert!(err.to_string().contains("blt_01HXYZ"));
        assert!(AdvisoryId::parse("adv_").is_err());
        assert!(AdvisoryId::parse("adv_a b").is_err());
        assert!(AdvisoryId::parse("adv_<script>").is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = DeliveryId::from_suffix("abc123");
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"dlv_abc123\"");
        let back: DeliveryId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<DeliveryId>("\"org_abc\"").is_err());
    }
}
