//! The Subject aggregate: a user, a service account or an AI agent that
//! belongs to one org, can be disabled, and holds API keys.
//!
//! API keys are generated and hashed at the edge; only the key's id and
//! its SHA-256 digest ever reach a command or an event, never the key.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::{InvalidName, Scoped, SubjectName};
use crate::organization::DisplayName;
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode, OrgName};

/// What kind of principal a subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    User,
    ServiceAccount,
    Agent,
}

impl SubjectKind {
    /// As written in manifests and seen by policies (`principal.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::ServiceAccount => "service_account",
            Self::Agent => "agent",
        }
    }
}

/// The public identifier of an API key: 8 to 32 lower-case letters or
/// digits. The key itself is made by the gateway and shown once; only its
/// digest is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ApiKeyId(String);

impl ApiKeyId {
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        let ok = (8..=32).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(value))
        } else {
            Err(InvalidName {
                what: "API key id",
                value: value.chars().take(40).collect(),
                reason: "must be 8 to 32 lower-case letters or digits",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ApiKeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest of an API key, as 64 lower-case hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct KeyDigest(String);

impl KeyDigest {
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        if value.len() == 64
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(Self(value))
        } else {
            Err(InvalidName {
                what: "key digest",
                value: String::new(),
                reason: "must be 64 lower-case hex digits",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for KeyDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// At most this many live API keys per subject.
pub const MAX_API_KEYS: usize = 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectState {
    pub org: OrgName,
    pub name: SubjectName,
    pub kind: SubjectKind,
    pub display_name: DisplayName,
    pub disabled: bool,
    pub api_keys: BTreeMap<ApiKeyId, KeyDigest>,
}

/// The Subject aggregate; `None` until created, and again once deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subject(pub Option<SubjectState>);

#[derive(Debug, Clone, PartialEq)]
pub enum SubjectCommand {
    Create {
        kind: SubjectKind,
        display_name: DisplayName,
    },
    SetDisplayName {
        display_name: DisplayName,
    },
    Disable,
    Enable,
    AddApiKey {
        key_id: ApiKeyId,
        digest: KeyDigest,
    },
    RevokeApiKey {
        key_id: ApiKeyId,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SubjectEvent {
    Created {
        org: OrgName,
        name: SubjectName,
        kind: SubjectKind,
        display_name: DisplayName,
    },
    DisplayNameSet {
        display_name: DisplayName,
    },
    Disabled {},
    Enabled {},
    ApiKeyAdded {
        key_id: ApiKeyId,
        digest: KeyDigest,
    },
    ApiKeyRevoked {
        key_id: ApiKeyId,
    },
    Deleted {},
}

impl DomainEvent for SubjectEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Created { .. } => "Created",
            Self::DisplayNameSet { .. } => "DisplayNameSet",
            Self::Disabled {} => "Disabled",
            Self::Enabled {} => "Enabled",
            Self::ApiKeyAdded { .. } => "ApiKeyAdded",
            Self::ApiKeyRevoked { .. } => "ApiKeyRevoked",
            Self::Deleted {} => "Deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectRejection {
    #[error("subject `{0}` already exists")]
    AlreadyExists(SubjectName),
    #[error("subject does not exist")]
    NotFound,
    #[error("subject `{0}` is disabled")]
    Disabled(SubjectName),
    #[error("API key `{0}` already exists")]
    KeyExists(String),
    #[error("API key `{0}` does not exist")]
    KeyNotFound(String),
    #[error("a subject holds at most {MAX_API_KEYS} API keys")]
    TooManyKeys,
}

impl ErrorCode for SubjectRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyExists(_) => "subject_already_exists",
            Self::NotFound => "subject_not_found",
            Self::Disabled(_) => "subject_disabled",
            Self::KeyExists(_) => "api_key_exists",
            Self::KeyNotFound(_) => "api_key_not_found",
            Self::TooManyKeys => "too_many_api_keys",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::AlreadyExists(_) | Self::KeyExists(_) => ErrorClass::AlreadyExists,
            Self::NotFound | Self::KeyNotFound(_) => ErrorClass::NotFound,
            Self::Disabled(_) => ErrorClass::FailedPrecondition,
            Self::TooManyKeys => ErrorClass::InvalidInput,
        }
    }
}

/// A subject's identity: its org and its name.
pub type SubjectId = Scoped<SubjectName>;

impl Aggregate for Subject {
    const KIND: &'static str = "subject";
    type Id = SubjectId;
    type Command = SubjectCommand;
    type Event = SubjectEvent;
    type Rejection = SubjectRejection;

    fn decide(
        &self,
        id: &SubjectId,
        command: &SubjectCommand,
    ) -> Result<Vec<SubjectEvent>, SubjectRejection> {
        let state = match (&self.0, command) {
            (None, SubjectCommand::Create { kind, display_name }) => {
                return Ok(vec![SubjectEvent::Created {
                    org: id.org.clone(),
                    name: id.name.clone(),
                    kind: *kind,
                    display_name: display_name.clone(),
                }]);
            }
            (Some(_), SubjectCommand::Create { .. }) => {
                return Err(SubjectRejection::AlreadyExists(id.name.clone()));
            }
            (None, _) => return Err(SubjectRejection::NotFound),
            (Some(state), _) => state,
        };
        let events = match command {
            SubjectCommand::Create { .. } => unreachable!("handled above"),
            SubjectCommand::SetDisplayName { display_name } => {
                if *display_name == state.display_name {
                    vec![]
                } else {
                    vec![SubjectEvent::DisplayNameSet {
                        display_name: display_name.clone(),
                    }]
                }
            }
            SubjectCommand::Disable if state.disabled => vec![],
            SubjectCommand::Disable => vec![SubjectEvent::Disabled {}],
            SubjectCommand::Enable if !state.disabled => vec![],
            SubjectCommand::Enable => vec![SubjectEvent::Enabled {}],
            SubjectCommand::AddApiKey { key_id, digest } => {
                if state.disabled {
                    return Err(SubjectRejection::Disabled(state.name.clone()));
                }
                match state.api_keys.get(key_id) {
                    Some(existing) if existing == digest => vec![],
                    Some(_) => return Err(SubjectRejection::KeyExists(key_id.as_str().to_owned())),
                    None if state.api_keys.len() >= MAX_API_KEYS => {
                        return Err(SubjectRejection::TooManyKeys);
                    }
                    None => vec![SubjectEvent::ApiKeyAdded {
                        key_id: key_id.clone(),
                        digest: digest.clone(),
                    }],
                }
            }
            SubjectCommand::RevokeApiKey { key_id } => {
                if !state.api_keys.contains_key(key_id) {
                    return Err(SubjectRejection::KeyNotFound(key_id.as_str().to_owned()));
                }
                vec![SubjectEvent::ApiKeyRevoked {
                    key_id: key_id.clone(),
                }]
            }
            SubjectCommand::Delete => vec![SubjectEvent::Deleted {}],
        };
        Ok(events)
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &SubjectEvent) {
        if let SubjectEvent::Created {
            org,
            name,
            kind,
            display_name,
        } = event
        {
            self.0 = Some(SubjectState {
                org: org.clone(),
                name: name.clone(),
                kind: *kind,
                display_name: display_name.clone(),
                disabled: false,
                api_keys: BTreeMap::new(),
            });
            return;
        }
        if let SubjectEvent::Deleted {} = event {
            self.0 = None;
            return;
        }
        let Some(state) = self.0.as_mut() else { return };
        match event {
            SubjectEvent::Created { .. } | SubjectEvent::Deleted {} => {}
            SubjectEvent::DisplayNameSet { display_name } => {
                state.display_name = display_name.clone();
            }
            SubjectEvent::Disabled {} => state.disabled = true,
            SubjectEvent::Enabled {} => state.disabled = false,
            SubjectEvent::ApiKeyAdded { key_id, digest } => {
                state.api_keys.insert(key_id.clone(), digest.clone());
            }
            SubjectEvent::ApiKeyRevoked { key_id } => {
                state.api_keys.remove(key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventParts;
    use crate::testing::given;
    use proptest::prelude::*;

    fn id() -> SubjectId {
        Scoped::new(
            OrgName::parse("acme").unwrap(),
            SubjectName::parse("alice").unwrap(),
        )
    }

    fn created() -> SubjectEvent {
        SubjectEvent::Created {
            org: id().org,
            name: id().name,
            kind: SubjectKind::User,
            display_name: DisplayName::parse("Alice").unwrap(),
        }
    }

    fn key(n: u32) -> (ApiKeyId, KeyDigest) {
        (
            ApiKeyId::parse(format!("key{n:08}")).unwrap(),
            KeyDigest::parse(format!("{n:064x}")).unwrap(),
        )
    }

    #[test]
    fn creates_once() {
        given::<Subject>(&id(), [])
            .when(SubjectCommand::Create {
                kind: SubjectKind::User,
                display_name: DisplayName::parse("Alice").unwrap(),
            })
            .then_expect([created()]);
        given::<Subject>(&id(), [created()])
            .when(SubjectCommand::Create {
                kind: SubjectKind::Agent,
                display_name: DisplayName::parse("A").unwrap(),
            })
            .then_reject_code("subject_already_exists");
        given::<Subject>(&id(), [])
            .when(SubjectCommand::Disable)
            .then_reject(SubjectRejection::NotFound);
    }

    #[test]
    fn api_keys_follow_their_rules() {
        let (k1, d1) = key(1);
        given::<Subject>(&id(), [created()])
            .when(SubjectCommand::AddApiKey {
                key_id: k1.clone(),
                digest: d1.clone(),
            })
            .then_expect([SubjectEvent::ApiKeyAdded {
                key_id: k1.clone(),
                digest: d1.clone(),
            }]);
        let with_key = [
            created(),
            SubjectEvent::ApiKeyAdded {
                key_id: k1.clone(),
                digest: d1.clone(),
            },
        ];
        // The same key again changes nothing; another digest under the same
        // id is refused.
        given::<Subject>(&id(), with_key.clone())
            .when(SubjectCommand::AddApiKey {
                key_id: k1.clone(),
                digest: d1.clone(),
            })
            .then_nothing();
        given::<Subject>(&id(), with_key.clone())
            .when(SubjectCommand::AddApiKey {
                key_id: k1.clone(),
                digest: key(2).1,
            })
            .then_reject_code("api_key_exists");
        given::<Subject>(&id(), with_key.clone())
            .when(SubjectCommand::RevokeApiKey { key_id: k1.clone() })
            .then_expect([SubjectEvent::ApiKeyRevoked { key_id: k1.clone() }]);
        given::<Subject>(&id(), [created()])
            .when(SubjectCommand::RevokeApiKey { key_id: k1 })
            .then_reject_code("api_key_not_found");
        // A disabled subject gets no new key.
        given::<Subject>(&id(), [created(), SubjectEvent::Disabled {}])
            .when(SubjectCommand::AddApiKey {
                key_id: key(3).0,
                digest: key(3).1,
            })
            .then_reject_code("subject_disabled");
        // At most MAX_API_KEYS.
        let mut full = vec![created()];
        for n in 0..MAX_API_KEYS as u32 {
            let (key_id, digest) = key(n + 10);
            full.push(SubjectEvent::ApiKeyAdded { key_id, digest });
        }
        given::<Subject>(&id(), full)
            .when(SubjectCommand::AddApiKey {
                key_id: key(99).0,
                digest: key(99).1,
            })
            .then_reject(SubjectRejection::TooManyKeys);
    }

    #[test]
    fn key_values_are_parsed() {
        assert!(ApiKeyId::parse("short").is_err());
        assert!(ApiKeyId::parse("UPPERCASE1").is_err());
        assert!(KeyDigest::parse("abc").is_err());
        assert!(KeyDigest::parse("A".repeat(64)).is_err());
        // A digest never prints its value in an error.
        let err = KeyDigest::parse("secret-looking-value").unwrap_err();
        assert!(!err.to_string().contains("secret"));
    }

    #[test]
    fn disable_and_enable_are_idempotent() {
        given::<Subject>(&id(), [created()])
            .when(SubjectCommand::Enable)
            .then_nothing();
        given::<Subject>(&id(), [created(), SubjectEvent::Disabled {}])
            .when(SubjectCommand::Disable)
            .then_nothing();
        let state = given::<Subject>(&id(), [created(), SubjectEvent::Disabled {}])
            .when(SubjectCommand::Enable)
            .then_expect([SubjectEvent::Enabled {}]);
        assert!(!state.0.unwrap().disabled);
    }

    #[test]
    fn deleted_subjects_can_be_created_again() {
        let state = given::<Subject>(&id(), [created()])
            .when(SubjectCommand::Delete)
            .then_expect([SubjectEvent::Deleted {}]);
        assert_eq!(state, Subject(None));
        given::<Subject>(&id(), [created(), SubjectEvent::Deleted {}])
            .when(SubjectCommand::Create {
                kind: SubjectKind::User,
                display_name: DisplayName::parse("Alice").unwrap(),
            })
            .then_expect([created()]);
    }

    fn arb_command() -> impl Strategy<Value = SubjectCommand> {
        prop_oneof![
            Just(SubjectCommand::Create {
                kind: SubjectKind::Agent,
                display_name: DisplayName::parse("Bot").unwrap()
            }),
            "[A-Z][a-z]{0,6}".prop_map(|s| SubjectCommand::SetDisplayName {
                display_name: DisplayName::parse(s).unwrap()
            }),
            Just(SubjectCommand::Disable),
            Just(SubjectCommand::Enable),
            (0u32..30).prop_map(|n| {
                let (key_id, digest) = key(n);
                SubjectCommand::AddApiKey { key_id, digest }
            }),
            (0u32..30).prop_map(|n| SubjectCommand::RevokeApiKey { key_id: key(n).0 }),
            Just(SubjectCommand::Delete),
        ]
    }

    proptest! {
        #[test]
        fn emitted_events_replay_to_the_same_state(commands in prop::collection::vec(arb_command(), 0..60)) {
            let mut state = Subject::default();
            let mut log = Vec::new();
            for command in commands {
                if let Ok(events) = state.decide(&id(), &command) {
                    for event in events {
                        state.evolve(&event);
                        let decoded: SubjectEvent = EventParts::from_event(&event).unwrap().to_event().unwrap();
                        prop_assert_eq!(&decoded, &event);
                        log.push(decoded);
                    }
                }
                if let Some(s) = &state.0 {
                    prop_assert!(s.api_keys.len() <= MAX_API_KEYS);
                }
            }
            prop_assert_eq!(Subject::replay(&log), state);
        }
    }
}
