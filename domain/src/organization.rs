//! The Organization aggregate: an org's name, display name, tags, parent
//! and lifecycle (Requested → Provisioning → Active ⇄ Suspended → Archived).
//!
//! The org's DNS-label name is its identity and never changes; "rename"
//! changes the display name. Rules that need other aggregates (a parent
//! cycle across orgs, active children blocking archive) are checked by the
//! caller from read models and passed in the command; this module never
//! looks anything up.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::ids::{InvalidName, JobSpaceName, check_dns_label};
use crate::upcast::Upcasters;
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode, OrgName};

/// A human-readable name: 1 to 200 characters, no control characters,
/// no leading or trailing spaces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidName> {
        let value = value.into();
        let fail = |reason| {
            Err(InvalidName {
                what: "display name",
                value: value.chars().take(80).collect(),
                reason,
            })
        };
        let chars = value.chars().count();
        if chars == 0 || chars > 200 {
            return fail("must be 1 to 200 characters");
        }
        if value.trim() != value {
            return fail("must not start or end with spaces");
        }
        if value.chars().any(char::is_control) {
            return fail("must not hold control characters");
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DisplayName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// At most this many tags on one org.
pub const MAX_TAGS: usize = 64;

/// An org's tags: keys are DNS labels, values are 0 to 63 printable
/// characters without spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Tags(BTreeMap<String, String>);

impl Tags {
    pub fn parse(
        pairs: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>,
    ) -> Result<Self, InvalidName> {
        let mut map = BTreeMap::new();
        for (key, value) in pairs {
            let (key, value) = (key.into(), value.into());
            check_dns_label("tag key", &key)?;
            if value.chars().count() > 63
                || value.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(InvalidName {
                    what: "tag value",
                    value: value.chars().take(80).collect(),
                    reason: "must be at most 63 characters without spaces",
                });
            }
            map.insert(key, value);
        }
        if map.len() > MAX_TAGS {
            return Err(InvalidName {
                what: "tags",
                value: format!("{} tags", map.len()),
                reason: "at most 64 tags",
            });
        }
        Ok(Self(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(BTreeMap::<String, String>::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Where an org is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Requested,
    Provisioning,
    Active,
    Suspended,
    Archived,
}

impl Lifecycle {
    /// The state's name as the APIs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "Requested",
            Self::Provisioning => "Provisioning",
            Self::Active => "Active",
            Self::Suspended => "Suspended",
            Self::Archived => "Archived",
        }
    }
}

/// The state of a registered org.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgState {
    pub name: OrgName,
    pub display_name: DisplayName,
    pub tags: Tags,
    pub parent: Option<OrgName>,
    pub lifecycle: Lifecycle,
    pub suspension_reason: Option<String>,
    /// The org's job spaces and their display names.
    #[serde(default)]
    pub job_spaces: BTreeMap<JobSpaceName, DisplayName>,
}

/// At most this many job spaces in one org.
pub const MAX_JOB_SPACES: usize = 100;

/// The Organization aggregate; `None` until registered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Organization(pub Option<OrgState>);

#[derive(Debug, Clone, PartialEq)]
pub enum OrgCommand {
    /// Registers the org named by the command's id.
    Register {
        display_name: DisplayName,
        tags: Tags,
        parent: Option<OrgName>,
    },
    /// The provisioner took the org on.
    BeginProvisioning,
    /// The provisioner finished: the org is usable.
    CompleteProvisioning,
    Rename {
        display_name: DisplayName,
    },
    SetTags {
        tags: Tags,
    },
    SetParent {
        parent: Option<OrgName>,
    },
    Suspend {
        reason: String,
    },
    Resume,
    Archive,
    /// Creates a job space, or changes its display name.
    SetJobSpace {
        name: JobSpaceName,
        display_name: DisplayName,
    },
    RemoveJobSpace {
        name: JobSpaceName,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrgEvent {
    Registered {
        name: OrgName,
        display_name: DisplayName,
        tags: Tags,
        parent: Option<OrgName>,
    },
    ProvisioningStarted {},
    Activated {},
    Renamed {
        display_name: DisplayName,
    },
    TagsSet {
        tags: Tags,
    },
    ParentSet {
        parent: Option<OrgName>,
    },
    Suspended {
        reason: String,
    },
    Resumed {},
    Archived {},
    JobSpaceSet {
        name: JobSpaceName,
        display_name: DisplayName,
    },
    JobSpaceRemoved {
        name: JobSpaceName,
    },
}

impl DomainEvent for OrgEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Registered { .. } => "Registered",
            Self::ProvisioningStarted {} => "ProvisioningStarted",
            Self::Activated {} => "Activated",
            Self::Renamed { .. } => "Renamed",
            Self::TagsSet { .. } => "TagsSet",
            Self::ParentSet { .. } => "ParentSet",
            Self::Suspended { .. } => "Suspended",
            Self::Resumed {} => "Resumed",
            Self::Archived {} => "Archived",
            Self::JobSpaceSet { .. } => "JobSpaceSet",
            Self::JobSpaceRemoved { .. } => "JobSpaceRemoved",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            // v1 had no display name; v2 added it (see `register_upcasters`).
            Self::Registered { .. } => 2,
            _ => 1,
        }
    }
}

/// Longest suspension reason kept.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgRejection {
    #[error("organization `{0}` is already registered")]
    AlreadyRegistered(OrgName),
    #[error("organization is not registered")]
    NotRegistered,
    #[error("organization `{0}` is archived and can no longer change")]
    Archived(OrgName),
    #[error("organization cannot be its own parent")]
    OwnParent,
    #[error("cannot {action} an organization that is {state:?}")]
    InvalidTransition {
        action: &'static str,
        state: Lifecycle,
    },
    #[error("suspension reason must be 1 to {MAX_REASON_CHARS} characters")]
    InvalidReason,
    #[error("job space `{0}` does not exist")]
    UnknownJobSpace(JobSpaceName),
    #[error("an organization holds at most {MAX_JOB_SPACES} job spaces")]
    TooManyJobSpaces,
    #[error("parent organization `{0}` does not exist")]
    UnknownParent(OrgName),
    #[error("making `{parent}` the parent would close a cycle of organizations")]
    ParentCycle { parent: OrgName },
    #[error("cannot archive an organization with active child organizations: {}", .0.iter().map(OrgName::as_str).collect::<Vec<_>>().join(", "))]
    HasActiveChildren(Vec<OrgName>),
}

impl ErrorCode for OrgRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::AlreadyRegistered(_) => "org_already_registered",
            Self::NotRegistered => "org_not_found",
            Self::Archived(_) => "org_archived",
            Self::OwnParent => "org_own_parent",
            Self::InvalidTransition { .. } => "org_invalid_transition",
            Self::InvalidReason => "org_invalid_reason",
            Self::UnknownJobSpace(_) => "unknown_job_space",
            Self::TooManyJobSpaces => "too_many_job_spaces",
            Self::UnknownParent(_) => "unknown_parent",
            Self::ParentCycle { .. } => "parent_cycle",
            Self::HasActiveChildren(_) => "org_has_active_children",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::AlreadyRegistered(_) => ErrorClass::AlreadyExists,
            Self::NotRegistered => ErrorClass::NotFound,
            Self::OwnParent
            | Self::InvalidReason
            | Self::TooManyJobSpaces
            | Self::UnknownParent(_)
            | Self::ParentCycle { .. } => ErrorClass::InvalidInput,
            Self::HasActiveChildren(_) => ErrorClass::FailedPrecondition,
            Self::UnknownJobSpace(_) => ErrorClass::NotFound,
            Self::Archived(_) | Self::InvalidTransition { .. } => ErrorClass::FailedPrecondition,
        }
    }
}

/// What the rules that span several orgs need to know of the others.
pub trait OrgTree {
    /// The org's parent, `Some(None)` for a root org, `None` when the org
    /// is not registered.
    fn parent_of(&self, org: &OrgName) -> Option<Option<OrgName>>;
    /// The org's children that are not archived.
    fn active_children(&self, org: &OrgName) -> Vec<OrgName>;
}

/// The rules of the org tree, checked before a command reaches the org:
/// a parent must exist and must not be the org or one of its descendants,
/// and an org with active children cannot be archived.
pub fn check_tree(
    org: &OrgName,
    command: &OrgCommand,
    tree: &impl OrgTree,
) -> Result<(), OrgRejection> {
    match command {
        OrgCommand::Register {
            parent: Some(parent),
            ..
        }
        | OrgCommand::SetParent {
            parent: Some(parent),
        } => {
            if parent == org {
                return Err(OrgRejection::OwnParent);
            }
            let mut current = Some(parent.clone());
            let mut steps = 0usize;
            while let Some(name) = current {
                if name == *org {
                    return Err(OrgRejection::ParentCycle {
                        parent: parent.clone(),
                    });
                }
                current = match tree.parent_of(&name) {
                    Some(next) => next,
                    None if name == *parent => {
                        return Err(OrgRejection::UnknownParent(parent.clone()));
                    }
                    None => None,
                };
                steps += 1;
                if steps > 10_000 {
                    // A cycle among other orgs cannot be created through
                    // these rules; refuse rather than loop if one exists.
                    return Err(OrgRejection::ParentCycle {
                        parent: parent.clone(),
                    });
                }
            }
            Ok(())
        }
        OrgCommand::Archive => {
            let children = tree.active_children(org);
            if children.is_empty() {
                Ok(())
            } else {
                Err(OrgRejection::HasActiveChildren(children))
            }
        }
        _ => Ok(()),
    }
}

impl Aggregate for Organization {
    const KIND: &'static str = "organization";
    type Id = OrgName;
    type Command = OrgCommand;
    type Event = OrgEvent;
    type Rejection = OrgRejection;

    fn decide(&self, name: &OrgName, command: &OrgCommand) -> Result<Vec<OrgEvent>, OrgRejection> {
        use Lifecycle::*;
        let state = match (&self.0, command) {
            (
                None,
                OrgCommand::Register {
                    display_name,
                    tags,
                    parent,
                },
            ) => {
                if parent.as_ref() == Some(name) {
                    return Err(OrgRejection::OwnParent);
                }
                return Ok(vec![OrgEvent::Registered {
                    name: name.clone(),
                    display_name: display_name.clone(),
                    tags: tags.clone(),
                    parent: parent.clone(),
                }]);
            }
            (Some(state), OrgCommand::Register { .. }) => {
                return Err(OrgRejection::AlreadyRegistered(state.name.clone()));
            }
            (None, _) => return Err(OrgRejection::NotRegistered),
            (Some(state), _) => state,
        };
        let transition = |action| OrgRejection::InvalidTransition {
            action,
            state: state.lifecycle,
        };
        if state.lifecycle == Archived {
            return match command {
                OrgCommand::Archive => Ok(vec![]),
                _ => Err(OrgRejection::Archived(state.name.clone())),
            };
        }
        let events = match command {
            OrgCommand::Register { .. } => unreachable!("handled above"),
            OrgCommand::BeginProvisioning => match state.lifecycle {
                Requested => vec![OrgEvent::ProvisioningStarted {}],
                Provisioning => vec![],
                _ => return Err(transition("provision")),
            },
            OrgCommand::CompleteProvisioning => match state.lifecycle {
                Provisioning => vec![OrgEvent::Activated {}],
                Active => vec![],
                _ => return Err(transition("activate")),
            },
            OrgCommand::Rename { display_name } => {
                if *display_name == state.display_name {
                    vec![]
                } else {
                    vec![OrgEvent::Renamed {
                        display_name: display_name.clone(),
                    }]
                }
            }
            OrgCommand::SetTags { tags } => {
                if *tags == state.tags {
                    vec![]
                } else {
                    vec![OrgEvent::TagsSet { tags: tags.clone() }]
                }
            }
            OrgCommand::SetParent { parent } => {
                if parent.as_ref() == Some(&state.name) {
                    return Err(OrgRejection::OwnParent);
                }
                if *parent == state.parent {
                    vec![]
                } else {
                    vec![OrgEvent::ParentSet {
                        parent: parent.clone(),
                    }]
                }
            }
            OrgCommand::Suspend { reason } => {
                let chars = reason.chars().count();
                if chars == 0 || chars > MAX_REASON_CHARS {
                    return Err(OrgRejection::InvalidReason);
                }
                match state.lifecycle {
                    Active => vec![OrgEvent::Suspended {
                        reason: reason.clone(),
                    }],
                    Suspended => vec![],
                    _ => return Err(transition("suspend")),
                }
            }
            OrgCommand::Resume => match state.lifecycle {
                Suspended => vec![OrgEvent::Resumed {}],
                Active => vec![],
                _ => return Err(transition("resume")),
            },
            OrgCommand::Archive => vec![OrgEvent::Archived {}],
            OrgCommand::SetJobSpace { name, display_name } => match state.job_spaces.get(name) {
                Some(current) if current == display_name => vec![],
                None if state.job_spaces.len() >= MAX_JOB_SPACES => {
                    return Err(OrgRejection::TooManyJobSpaces);
                }
                _ => vec![OrgEvent::JobSpaceSet {
                    name: name.clone(),
                    display_name: display_name.clone(),
                }],
            },
            OrgCommand::RemoveJobSpace { name } => {
                if !state.job_spaces.contains_key(name) {
                    return Err(OrgRejection::UnknownJobSpace(name.clone()));
                }
                vec![OrgEvent::JobSpaceRemoved { name: name.clone() }]
            }
        };
        Ok(events)
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &OrgEvent) {
        if let OrgEvent::Registered {
            name,
            display_name,
            tags,
            parent,
        } = event
        {
            self.0 = Some(OrgState {
                name: name.clone(),
                display_name: display_name.clone(),
                tags: tags.clone(),
                parent: parent.clone(),
                lifecycle: Lifecycle::Requested,
                suspension_reason: None,
                job_spaces: BTreeMap::new(),
            });
            return;
        }
        let Some(state) = self.0.as_mut() else {
            return;
        };
        match event {
            OrgEvent::Registered { .. } => {}
            OrgEvent::ProvisioningStarted {} => state.lifecycle = Lifecycle::Provisioning,
            OrgEvent::Activated {} => state.lifecycle = Lifecycle::Active,
            OrgEvent::Renamed { display_name } => state.display_name = display_name.clone(),
            OrgEvent::TagsSet { tags } => state.tags = tags.clone(),
            OrgEvent::ParentSet { parent } => state.parent = parent.clone(),
            OrgEvent::Suspended { reason } => {
                state.lifecycle = Lifecycle::Suspended;
                state.suspension_reason = Some(reason.clone());
            }
            OrgEvent::Resumed {} => {
                state.lifecycle = Lifecycle::Active;
                state.suspension_reason = None;
            }
            OrgEvent::Archived {} => state.lifecycle = Lifecycle::Archived,
            OrgEvent::JobSpaceSet { name, display_name } => {
                state.job_spaces.insert(name.clone(), display_name.clone());
            }
            OrgEvent::JobSpaceRemoved { name } => {
                state.job_spaces.remove(name);
            }
        }
    }
}

/// `Registered` v1 carried no display name; v2 defaults it to the name.
fn registered_v1_to_v2(mut payload: Value) -> Result<Value, String> {
    let object = payload
        .as_object_mut()
        .ok_or_else(|| "payload is not an object".to_owned())?;
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| "payload has no `name`".to_owned())?
        .to_owned();
    object.entry("display_name").or_insert(Value::String(name));
    object
        .entry("tags")
        .or_insert(Value::Object(Default::default()));
    object.entry("parent").or_insert(Value::Null);
    Ok(payload)
}

pub(crate) fn register_upcasters(upcasters: &mut Upcasters) {
    upcasters.register(Organization::KIND, "Registered", 1, registered_v1_to_v2);
}

#[cfg(test)]
mod tree_tests {
    use super::*;
    use std::collections::HashMap;

    struct Tree(HashMap<&'static str, (Option<&'static str>, bool)>);

    impl OrgTree for Tree {
        fn parent_of(&self, org: &OrgName) -> Option<Option<OrgName>> {
            self.0
                .get(org.as_str())
                .map(|(p, _)| p.map(|p| OrgName::parse(p).unwrap()))
        }
        fn active_children(&self, org: &OrgName) -> Vec<OrgName> {
            let mut out: Vec<OrgName> = self
                .0
                .iter()
                .filter(|(_, (p, active))| *p == Some(org.as_str()) && *active)
                .map(|(n, _)| OrgName::parse(*n).unwrap())
                .collect();
            out.sort();
            out
        }
    }

    fn n(s: &str) -> OrgName {
        OrgName::parse(s).unwrap()
    }

    fn tree() -> Tree {
        // holding -> acme -> acme-eu ; other (archived child of acme)
        Tree(HashMap::from([
            ("holding", (None, true)),
            ("acme", (Some("holding"), true)),
            ("acme-eu", (Some("acme"), true)),
            ("old", (Some("acme-eu"), false)),
        ]))
    }

    #[test]
    fn a_parent_must_exist() {
        let cmd = OrgCommand::SetParent {
            parent: Some(n("nowhere")),
        };
        assert_eq!(
            check_tree(&n("acme"), &cmd, &tree()),
            Err(OrgRejection::UnknownParent(n("nowhere")))
        );
    }

    #[test]
    fn a_descendant_cannot_become_the_parent() {
        let cmd = OrgCommand::SetParent {
            parent: Some(n("acme-eu")),
        };
        assert_eq!(
            check_tree(&n("holding"), &cmd, &tree()),
            Err(OrgRejection::ParentCycle {
                parent: n("acme-eu")
            })
        );
        let own = OrgCommand::SetParent {
            parent: Some(n("acme")),
        };
        assert_eq!(
            check_tree(&n("acme"), &own, &tree()),
            Err(OrgRejection::OwnParent)
        );
        let fine = OrgCommand::SetParent {
            parent: Some(n("holding")),
        };
        assert_eq!(check_tree(&n("acme-eu"), &fine, &tree()), Ok(()));
    }

    #[test]
    fn archiving_waits_for_active_children() {
        assert_eq!(
            check_tree(&n("acme"), &OrgCommand::Archive, &tree()),
            Err(OrgRejection::HasActiveChildren(vec![n("acme-eu")]))
        );
        // Its only child is archived.
        assert_eq!(
            check_tree(&n("acme-eu"), &OrgCommand::Archive, &tree()),
            Ok(())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventParts;
    use crate::testing::given;
    use proptest::prelude::*;

    fn name(s: &str) -> OrgName {
        OrgName::parse(s).unwrap()
    }

    fn acme() -> OrgName {
        name("acme")
    }

    fn registered(n: &str) -> OrgEvent {
        OrgEvent::Registered {
            name: name(n),
            display_name: DisplayName::parse(n.to_uppercase()).unwrap(),
            tags: Tags::default(),
            parent: None,
        }
    }

    fn register(n: &str) -> OrgCommand {
        OrgCommand::Register {
            display_name: DisplayName::parse(n.to_uppercase()).unwrap(),
            tags: Tags::default(),
            parent: None,
        }
    }

    fn active(n: &str) -> Vec<OrgEvent> {
        vec![
            registered(n),
            OrgEvent::ProvisioningStarted {},
            OrgEvent::Activated {},
        ]
    }

    #[test]
    fn registers_once() {
        given::<Organization>(&acme(), [])
            .when(register("acme"))
            .then_expect([registered("acme")]);
        given::<Organization>(&acme(), [registered("acme")])
            .when(register("acme"))
            .then_reject(OrgRejection::AlreadyRegistered(name("acme")));
    }

    #[test]
    fn unregistered_org_rejects_everything_but_register() {
        given::<Organization>(&acme(), [])
            .when(OrgCommand::Archive)
            .then_reject(OrgRejection::NotRegistered);
    }

    #[test]
    fn own_parent_is_rejected() {
        given::<Organization>(&name("a"), [])
            .when(OrgCommand::Register {
                display_name: DisplayName::parse("A").unwrap(),
                tags: Tags::default(),
                parent: Some(name("a")),
            })
            .then_reject(OrgRejection::OwnParent);
        given::<Organization>(&name("a"), [registered("a")])
            .when(OrgCommand::SetParent {
                parent: Some(name("a")),
            })
            .then_reject(OrgRejection::OwnParent);
        given::<Organization>(&name("a"), [registered("a")])
            .when(OrgCommand::SetParent {
                parent: Some(name("b")),
            })
            .then_expect([OrgEvent::ParentSet {
                parent: Some(name("b")),
            }]);
    }

    #[test]
    fn lifecycle_follows_its_transitions() {
        let state = given::<Organization>(&acme(), [registered("acme")])
            .when(OrgCommand::BeginProvisioning)
            .then_expect([OrgEvent::ProvisioningStarted {}]);
        assert_eq!(state.0.unwrap().lifecycle, Lifecycle::Provisioning);
        given::<Organization>(&acme(), [registered("acme")])
            .when(OrgCommand::Suspend { reason: "x".into() })
            .then_reject_code("org_invalid_transition");
        given::<Organization>(&acme(), active("acme"))
            .when(OrgCommand::Suspend {
                reason: "billing".into(),
            })
            .then_expect([OrgEvent::Suspended {
                reason: "billing".into(),
            }]);
        let mut suspended = active("acme");
        suspended.push(OrgEvent::Suspended { reason: "b".into() });
        given::<Organization>(&acme(), suspended.clone())
            .when(OrgCommand::Suspend { reason: "b".into() })
            .then_nothing();
        given::<Organization>(&acme(), suspended.clone())
            .when(OrgCommand::Resume)
            .then_expect([OrgEvent::Resumed {}]);
        given::<Organization>(&acme(), active("acme"))
            .when(OrgCommand::Resume)
            .then_nothing();
        given::<Organization>(&acme(), active("acme"))
            .when(OrgCommand::Suspend {
                reason: String::new(),
            })
            .then_reject(OrgRejection::InvalidReason);
    }

    #[test]
    fn archived_orgs_are_frozen() {
        let mut archived = active("acme");
        archived.push(OrgEvent::Archived {});
        given::<Organization>(&acme(), archived.clone())
            .when(OrgCommand::Rename {
                display_name: DisplayName::parse("New").unwrap(),
            })
            .then_reject(OrgRejection::Archived(name("acme")));
        given::<Organization>(&acme(), archived.clone())
            .when(OrgCommand::Archive)
            .then_nothing();
        given::<Organization>(&acme(), archived)
            .when(OrgCommand::Resume)
            .then_reject_code("org_archived");
    }

    #[test]
    fn unchanged_values_emit_nothing() {
        given::<Organization>(&acme(), [registered("acme")])
            .when(OrgCommand::Rename {
                display_name: DisplayName::parse("ACME").unwrap(),
            })
            .then_nothing();
        given::<Organization>(&acme(), [registered("acme")])
            .when(OrgCommand::SetTags {
                tags: Tags::default(),
            })
            .then_nothing();
    }

    #[test]
    fn job_spaces_are_set_and_removed() {
        let research = JobSpaceName::parse("research").unwrap();
        let set = OrgEvent::JobSpaceSet {
            name: research.clone(),
            display_name: DisplayName::parse("Research").unwrap(),
        };
        given::<Organization>(&acme(), active("acme"))
            .when(OrgCommand::SetJobSpace {
                name: research.clone(),
                display_name: DisplayName::parse("Research").unwrap(),
            })
            .then_expect([set.clone()]);
        let mut with_space = active("acme");
        with_space.push(set);
        given::<Organization>(&acme(), with_space.clone())
            .when(OrgCommand::SetJobSpace {
                name: research.clone(),
                display_name: DisplayName::parse("Research").unwrap(),
            })
            .then_nothing();
        let state = given::<Organization>(&acme(), with_space)
            .when(OrgCommand::RemoveJobSpace {
                name: research.clone(),
            })
            .then_expect([OrgEvent::JobSpaceRemoved {
                name: research.clone(),
            }]);
        assert!(state.0.unwrap().job_spaces.is_empty());
        given::<Organization>(&acme(), active("acme"))
            .when(OrgCommand::RemoveJobSpace { name: research })
            .then_reject_code("unknown_job_space");
    }

    #[test]
    fn value_rules() {
        assert!(DisplayName::parse(" x").is_err());
        assert!(DisplayName::parse("a\nb").is_err());
        assert!(DisplayName::parse("x".repeat(201)).is_err());
        assert!(Tags::parse([("tier", "gold")]).is_ok());
        assert!(Tags::parse([("Tier", "gold")]).is_err());
        assert!(Tags::parse([("tier", "go ld")]).is_err());
        assert!(Tags::parse((0..65).map(|i| (format!("k{i}"), "v"))).is_err());
    }

    #[test]
    fn registered_v1_is_upcast_on_read() {
        let upcasters = crate::upcast::domain_upcasters();
        let (version, payload) = upcasters
            .upcast(
                "organization",
                "Registered",
                1,
                serde_json::json!({"name": "acme"}),
            )
            .unwrap();
        assert_eq!(version, 2);
        let event: OrgEvent = EventParts {
            event_type: "Registered".into(),
            schema_version: version,
            payload,
        }
        .to_event()
        .unwrap();
        assert_eq!(
            event,
            OrgEvent::Registered {
                name: name("acme"),
                display_name: DisplayName::parse("acme").unwrap(),
                tags: Tags::default(),
                parent: None
            }
        );
        assert!(
            upcasters
                .upcast("organization", "Registered", 1, serde_json::json!([]))
                .is_err()
        );
    }

    fn arb_command() -> impl Strategy<Value = OrgCommand> {
        let names = prop::sample::select(vec!["acme", "beta", "gamma"]);
        prop_oneof![
            names.clone().prop_map(register),
            Just(OrgCommand::BeginProvisioning),
            Just(OrgCommand::CompleteProvisioning),
            "[A-Z][a-z]{0,8}".prop_map(|s| OrgCommand::Rename {
                display_name: DisplayName::parse(s).unwrap()
            }),
            prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,5}", 0..4).prop_map(|m| {
                OrgCommand::SetTags {
                    tags: Tags::parse(m).unwrap(),
                }
            }),
            prop::option::of(names).prop_map(|p| OrgCommand::SetParent {
                parent: p.map(name)
            }),
            "[a-z ]{0,10}".prop_map(|reason| OrgCommand::Suspend { reason }),
            Just(OrgCommand::Resume),
            Just(OrgCommand::Archive),
            (
                prop::sample::select(vec!["research", "ops"]),
                "[A-Z][a-z]{0,5}"
            )
                .prop_map(|(n, d)| OrgCommand::SetJobSpace {
                    name: JobSpaceName::parse(n).unwrap(),
                    display_name: DisplayName::parse(d).unwrap(),
                }),
            prop::sample::select(vec!["research", "ops"]).prop_map(|n| {
                OrgCommand::RemoveJobSpace {
                    name: JobSpaceName::parse(n).unwrap(),
                }
            }),
        ]
    }

    proptest! {
        /// Whatever commands arrive, the events the aggregate emitted replay
        /// to the very state it reached, and survive the storage round trip.
        #[test]
        fn emitted_events_replay_to_the_same_state(commands in prop::collection::vec(arb_command(), 0..40)) {
            let mut state = Organization::default();
            let mut log = Vec::new();
            for command in &commands {
                if let Ok(events) = state.decide(&acme(), command) {
                    for event in events {
                        state.evolve(&event);
                        let parts = EventParts::from_event(&event).unwrap();
                        let decoded: OrgEvent = parts.to_event().unwrap();
                        prop_assert_eq!(&decoded, &event);
                        log.push(decoded);
                    }
                }
            }
            prop_assert_eq!(Organization::replay(&log), state.clone());
            // An archived org never leaves Archived.
            if let Some(s) = &state.0
                && log.iter().any(|e| matches!(e, OrgEvent::Archived {}))
            {
                prop_assert_eq!(s.lifecycle, Lifecycle::Archived);
            }
        }
    }
}
