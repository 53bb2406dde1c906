//! Validated names: node ids, cluster names and endpoint names.
//!
//! All three share one syntax, `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`, chosen so that a name can be
//! used as an etcd key segment, a log field and an HAProxy comment without quoting. The only way
//! to obtain one of these types is through [`FromStr`]/[`TryFrom`], which serde also goes through,
//! so holding a `NodeId` proves the syntax was checked.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Why a string is not a valid name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The string was empty.
    #[error("{kind} is empty")]
    Empty {
        /// Which kind of name was being parsed.
        kind: &'static str,
    },
    /// The string was longer than [`MAX_NAME_LEN`].
    #[error("{kind} is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// Which kind of name was being parsed.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The string contained a character outside the allowed set.
    #[error(
        "{kind} {shown:?} has {bad:?} at position {pos}: names use A-Z a-z 0-9 . _ - and start with a letter or digit"
    )]
    BadChar {
        /// Which kind of name was being parsed.
        kind: &'static str,
        /// The offending string, truncated for display.
        shown: String,
        /// The first offending character.
        bad: char,
        /// Its character position.
        pos: usize,
    },
}

/// Checks `s` against the shared name syntax.
pub fn validate_name(kind: &'static str, s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty { kind });
    }
    for (pos, c) in s.chars().enumerate() {
        let ok = c.is_ascii_alphanumeric() || (pos > 0 && matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(NameError::BadChar {
                kind,
                shown: s.chars().take(80).collect(),
                bad: c,
                pos,
            });
        }
    }
    if s.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { kind, len: s.len() });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $ty(String);

        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                validate_name($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                validate_name($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                s.parse()
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A node's identity in its cluster: the last segment of its record key.
    NodeId,
    "node id"
);
name_type!(
    /// A cluster name: one registry namespace under the prefix.
    ClusterName,
    "cluster name"
);
name_type!(
    /// The name of one of a node's endpoints (`p2p`, `api`, `health`, ...).
    EndpointName,
    "endpoint name"
);

impl EndpointName {
    /// The endpoint peers dial: the advertised address.
    pub fn p2p() -> Self {
        Self("p2p".to_owned())
    }
    /// The agent's health server.
    pub fn health() -> Self {
        Self("health".to_owned())
    }
}

impl Default for ClusterName {
    fn default() -> Self {
        Self("default".to_owned())
    }
}

/// A node's slot: a small stable 1-based integer claimed under `slots/{n}`.
///
/// Slot `n` names the node in the load balancer (`s<n>`) and selects its per-node port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Slot(u32);

/// Highest slot number accepted; far above any real fleet, low enough that `port_base + n` and
/// HAProxy server names stay small.
pub const MAX_SLOT: u32 = 65_535;

/// A slot number outside `1..=MAX_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("slot {0} is outside 1..={MAX_SLOT}")]
pub struct SlotError(pub u64);

impl Slot {
    /// Makes a slot, checking the range.
    pub fn new(n: u32) -> Result<Self, SlotError> {
        if (1..=MAX_SLOT).contains(&n) {
            Ok(Self(n))
        } else {
            Err(SlotError(n.into()))
        }
    }
    /// The slot number.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Slot {
    type Error = SlotError;
    fn try_from(n: u32) -> Result<Self, SlotError> {
        Self::new(n)
    }
}

impl From<Slot> for u32 {
    fn from(s: Slot) -> u32 {
        s.0
    }
}

impl FromStr for Slot {
    type Err = SlotError;
    /// Parses the canonical decimal form only (`3`, never `03` or `+3`): a slot is the name of
    /// the key `slots/{n}`, and a key spelled otherwise is not that slot's key — taking it for
    /// slot 3 would make a claim compare `slots/3` against a key it never read.
    fn from_str(s: &str) -> Result<Self, SlotError> {
        let n: u64 = s.parse().map_err(|_| SlotError(0))?;
        if n.to_string() != s {
            return Err(SlotError(0));
        }
        u32::try_from(n)
            .map_err(|_| SlotError(n))
            .and_then(Self::new)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!("a".parse::<NodeId>().is_ok());
        assert!("node-3.eu_1".parse::<NodeId>().is_ok());
        assert!("x".repeat(63).parse::<NodeId>().is_ok());
        assert!(matches!(
            "x".repeat(64).parse::<NodeId>(),
            Err(NameError::TooLong { .. })
        ));
        assert!(matches!("".parse::<NodeId>(), Err(NameError::Empty { .. })));
        for bad in [
            "-a", ".a", "_a", "a b", "a/b", "a\nb", "é", "a#", "a:b", "a{b",
        ] {
            assert!(bad.parse::<NodeId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_goes_through_validation() {
        assert!(serde_json::from_str::<NodeId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<NodeId>("\"bad id\"").is_err());
        assert!(serde_json::from_str::<Slot>("0").is_err());
        assert!(serde_json::from_str::<Slot>("65536").is_err());
        assert_eq!(serde_json::from_str::<Slot>("7").ok(), Slot::new(7).ok());
    }

    #[test]
    fn only_canonical_slot_numbers_parse() {
        assert_eq!("3".parse::<Slot>().ok(), Slot::new(3).ok());
        assert_eq!("65535".parse::<Slot>().ok(), Slot::new(MAX_SLOT).ok());
        for bad in ["03", "+3", "003", " 3", "3 ", "0", "-1", "65536", "", "3a"] {
            assert!(bad.parse::<Slot>().is_err(), "{bad:?} accepted");
        }
    }
}
