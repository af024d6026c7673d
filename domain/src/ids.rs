//! Typed identifiers and names. Each is parsed once at the edge; past it,
//! nothing is a bare `String` or `Uuid`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

/// Why a name or identifier did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} `{value}`: {reason}")]
pub struct InvalidName {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl crate::ErrorCode for InvalidName {
    fn code(&self) -> &'static str {
        "invalid_name"
    }
    fn class(&self) -> crate::ErrorClass {
        crate::ErrorClass::InvalidInput
    }
}

/// Checks the DNS-label rules (RFC 1123): 1 to 63 characters of lower-case
/// ASCII letters, digits and `-`, starting and ending with a letter or digit.
pub fn check_dns_label(what: &'static str, value: &str) -> Result<(), InvalidName> {
    let fail = |reason| {
        Err(InvalidName {
            what,
            value: value.chars().take(80).collect(),
            reason,
        })
    };
    if value.is_empty() {
        return fail("must not be empty");
    }
    if value.len() > 63 {
        return fail("must be at most 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("may hold only lower-case letters, digits and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail("must start and end with a letter or digit");
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses a DNS label.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
                let value = value.into();
                check_dns_label($what, &value)?;
                Ok(Self(value))
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

        impl FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// An organization's name: a DNS label, unique, and the org's identity.
    OrgName,
    "organization name"
);
label_type!(
    /// A subject's name (user, service account, agent), unique in its org.
    SubjectName,
    "subject name"
);
label_type!(
    /// A role's name, unique in its org.
    RoleName,
    "role name"
);
label_type!(
    /// A role binding's name, unique in its org.
    BindingName,
    "role binding name"
);
label_type!(
    /// A job space's name, unique in its org.
    JobSpaceName,
    "job space name"
);
label_type!(
    /// A policy's name, unique in its org.
    PolicyName,
    "policy name"
);

/// The identity of an object that lives inside one org: `org:name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scoped<N> {
    pub org: OrgName,
    pub name: N,
}

impl<N> Scoped<N> {
    pub fn new(org: OrgName, name: N) -> Self {
        Self { org, name }
    }
}

impl<N: FromStr<Err = InvalidName>> FromStr for Scoped<N> {
    type Err = InvalidName;

    /// Parses `org:name`, the form `Display` writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (org, name) = s.split_once(':').ok_or_else(|| InvalidName {
            what: "scoped name",
            value: s.chars().take(80).collect(),
            reason: "must be `org:name`",
        })?;
        Ok(Self {
            org: OrgName::parse(org)?,
            name: name.parse()?,
        })
    }
}

impl<N: fmt::Display> fmt::Display for Scoped<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.org, self.name)
    }
}

macro_rules! uuid_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUID v7) identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_type!(
    /// One event's identity; also its `Nats-Msg-Id` on JetStream.
    EventId
);
uuid_type!(
    /// One command's identity: the same command id takes effect once.
    CommandId
);
uuid_type!(
    /// Ties together every command and event of one user request.
    CorrelationId
);
uuid_type!(
    /// The command or event that directly caused this one.
    CausationId
);

/// Who issued a command: a subject reference such as `user:alice`,
/// `agent:planner` or `system:relay`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Actor(String);

impl Actor {
    /// Parses `kind:name`: 1 to 200 printable characters without spaces.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        let fail = |reason| {
            Err(InvalidName {
                what: "actor",
                value: value.chars().take(80).collect(),
                reason,
            })
        };
        if value.is_empty() || value.len() > 200 {
            return fail("must be 1 to 200 characters");
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return fail("must not hold spaces or control characters");
        }
        Ok(Self(value))
    }

    /// The actor Charter itself uses for commands it issues.
    pub fn system() -> Self {
        Self("system:charter".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Actor {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(s).map_err(serde::de::Error::custom)
    }
}

/// `Display`, `FromStr` and serde for newtypes over a `String` that have
/// `fn parse(&str) -> Result<Self, InvalidName>`: they travel as plain
/// strings and are checked whenever they are read.
macro_rules! parsed_name {
    ($($ty:ident),*) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = $crate::ids::InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::parse(&<String as serde::Deserialize>::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
pub(crate) use parsed_name;

/// An identity within one org made of the org and a time-ordered UUID,
/// written `org:uuid`: `new`, `Display` and `FromStr`.
macro_rules! org_uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
        )]
        pub struct $name {
            pub org: $crate::OrgName,
            pub id: uuid::Uuid,
        }

        impl $name {
            /// A new id in `org`.
            pub fn new(org: $crate::OrgName) -> Self {
                Self {
                    org,
                    id: uuid::Uuid::now_v7(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}:{}", self.org, self.id)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::ids::InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let invalid = || $crate::ids::InvalidName {
                    what: $what,
                    value: s.chars().take(80).collect(),
                    reason: "must be `org:uuid`",
                };
                let (org, id) = s.split_once(':').ok_or_else(invalid)?;
                Ok(Self {
                    org: $crate::OrgName::parse(org)?,
                    id: uuid::Uuid::parse_str(id).map_err(|_| invalid())?,
                })
            }
        }
    };
}
pub(crate) use org_uuid_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        assert!(OrgName::parse("acme").is_ok());
        assert!(OrgName::parse("a-1").is_ok());
        assert!(OrgName::parse("").is_err());
        assert!(OrgName::parse("-a").is_err());
        assert!(OrgName::parse("a-").is_err());
        assert!(OrgName::parse("Acme").is_err());
        assert!(OrgName::parse("a.b").is_err());
        assert!(OrgName::parse("a".repeat(64)).is_err());
        assert!(OrgName::parse("a".repeat(63)).is_ok());
        assert!(serde_json::from_str::<OrgName>("\"no_way\"").is_err());
    }

    #[test]
    fn actors() {
        assert!(Actor::parse("user:alice").is_ok());
        assert!(Actor::parse("user alice").is_err());
        assert!(Actor::parse("").is_err());
    }
}
