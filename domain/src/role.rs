//! Roles and role bindings: who may do what, where.
//!
//! A [`Role`] is an org's named set of rules (actions on resource kinds,
//! with `*` wildcards) and the tools its holders may call. A
//! [`RoleBinding`] attaches one subject to one role in the whole org or in
//! one job space. That a bound subject, role or job space exists is a fact
//! about other aggregates: the caller looks it up and states it in the
//! command ([`References`]); the rule that it must exist lives here.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{BindingName, InvalidName, JobSpaceName, RoleName, Scoped, SubjectName};
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode, OrgName};

/// The kinds of resource a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Organization,
    Subject,
    Role,
    RoleBinding,
    JobSpace,
    Policy,
    Tool,
    Workflow,
    WorkflowRun,
    Job,
    AuditLog,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 11] = [
        Self::Organization,
        Self::Subject,
        Self::Role,
        Self::RoleBinding,
        Self::JobSpace,
        Self::Policy,
        Self::Tool,
        Self::Workflow,
        Self::WorkflowRun,
        Self::Job,
        Self::AuditLog,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Organization => "Organization",
            Self::Subject => "Subject",
            Self::Role => "Role",
            Self::RoleBinding => "RoleBinding",
            Self::JobSpace => "JobSpace",
            Self::Policy => "Policy",
            Self::Tool => "Tool",
            Self::Workflow => "Workflow",
            Self::WorkflowRun => "WorkflowRun",
            Self::Job => "Job",
            Self::AuditLog => "AuditLog",
        }
    }
}

/// Parses a `*`-or-exact pattern over a value type.
fn parse_pattern<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, InvalidName>,
) -> Result<Option<T>, InvalidName> {
    if value == "*" {
        Ok(None)
    } else {
        parse(value).map(Some)
    }
}

/// An action name: 1 to 63 lower-case letters, digits, `-` or `_`,
/// starting with a letter (`get`, `list`, `update`, `approve`, …).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Action(String);

impl Action {
    pub fn parse(value: &str) -> Result<Self, InvalidName> {
        let ok = !value.is_empty()
            && value.len() <= 63
            && value.starts_with(|c: char| c.is_ascii_lowercase())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(InvalidName {
                what: "action",
                value: value.chars().take(80).collect(),
                reason: "must be a lower-case word such as `get` or `update`, or `*`",
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `*` (every action) or one action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionPattern(Option<Action>);

impl ActionPattern {
    pub fn matches(&self, action: &Action) -> bool {
        self.0.as_ref().is_none_or(|a| a == action)
    }
}

impl FromStr for ActionPattern {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pattern(s, Action::parse).map(Self)
    }
}

impl fmt::Display for ActionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_ref().map_or("*", Action::as_str))
    }
}

/// `*` (every kind) or one resource kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KindPattern(Option<ResourceKind>);

impl KindPattern {
    pub fn matches(&self, kind: ResourceKind) -> bool {
        self.0.is_none_or(|k| k == kind)
    }
}

impl FromStr for KindPattern {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_pattern(s, |s| {
            ResourceKind::ALL
                .into_iter()
                .find(|k| k.as_str() == s)
                .ok_or_else(|| InvalidName {
                    what: "resource kind",
                    value: s.chars().take(80).collect(),
                    reason: "unknown kind (Organization, Subject, Role, RoleBinding, JobSpace, Policy, Tool, Workflow, WorkflowRun, Job, AuditLog or *)",
                })
        })
        .map(Self)
    }
}

impl fmt::Display for KindPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.map_or("*", ResourceKind::as_str))
    }
}

/// A tool name pattern: `*`, an exact name such as `payments.refund`, or a
/// prefix ending in `.*` such as `payments.*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ToolPattern(String);

impl ToolPattern {
    pub fn matches(&self, tool: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => self.0 == tool,
        }
    }
}

impl FromStr for ToolPattern {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.strip_suffix(".*").unwrap_or(s);
        let ok = s == "*"
            || (!body.is_empty()
                && body.len() <= 120
                && body.split('.').all(|part| {
                    !part.is_empty()
                        && part.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                        })
                }));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidName {
                what: "tool pattern",
                value: s.chars().take(80).collect(),
                reason: "must be `*`, a dotted tool name, or a dotted prefix ending in `.*`",
            })
        }
    }
}

impl fmt::Display for ToolPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! string_serde {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
string_serde!(ActionPattern, KindPattern, ToolPattern);

/// One rule: these actions on these kinds of resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub actions: BTreeSet<ActionPattern>,
    pub resources: BTreeSet<KindPattern>,
}

impl Rule {
    pub fn matches(&self, action: &Action, kind: ResourceKind) -> bool {
        self.actions.iter().any(|a| a.matches(action))
            && self.resources.iter().any(|k| k.matches(kind))
    }
}

/// Limits on a role's size.
pub const MAX_RULES: usize = 100;
pub const MAX_TOOLS: usize = 100;

/// What a role grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleSpec {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub tools: BTreeSet<ToolPattern>,
}

impl RoleSpec {
    /// Whether any rule allows `action` on `kind`.
    pub fn allows(&self, action: &Action, kind: ResourceKind) -> bool {
        self.rules.iter().any(|r| r.matches(action, kind))
    }

    /// Whether the role may call `tool`.
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|t| t.matches(tool))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleState {
    pub org: OrgName,
    pub name: RoleName,
    pub spec: RoleSpec,
}

/// The Role aggregate; `None` until defined, and again once deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Role(pub Option<RoleState>);

pub type RoleId = Scoped<RoleName>;

#[derive(Debug, Clone, PartialEq)]
pub enum RoleCommand {
    /// Creates the role, or replaces what it grants.
    Define {
        spec: RoleSpec,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum RoleEvent {
    Defined {
        org: OrgName,
        name: RoleName,
        spec: RoleSpec,
    },
    Redefined {
        spec: RoleSpec,
    },
    Deleted {},
}

impl DomainEvent for RoleEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Defined { .. } => "Defined",
            Self::Redefined { .. } => "Redefined",
            Self::Deleted {} => "Deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleRejection {
    #[error("role does not exist")]
    NotFound,
    #[error("a role holds at most {MAX_RULES} rules and {MAX_TOOLS} tool patterns")]
    TooLarge,
    #[error("rule {0} needs at least one action and one resource kind")]
    EmptyRule(usize),
    #[error("description must be at most 1000 characters")]
    DescriptionTooLong,
}

impl ErrorCode for RoleRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "role_not_found",
            Self::TooLarge => "role_too_large",
            Self::EmptyRule(_) => "role_empty_rule",
            Self::DescriptionTooLong => "role_description_too_long",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound => ErrorClass::NotFound,
            _ => ErrorClass::InvalidInput,
        }
    }
}

fn check_spec(spec: &RoleSpec) -> Result<(), RoleRejection> {
    if spec.rules.len() > MAX_RULES || spec.tools.len() > MAX_TOOLS {
        return Err(RoleRejection::TooLarge);
    }
    if spec.description.chars().count() > 1000 {
        return Err(RoleRejection::DescriptionTooLong);
    }
    if let Some(index) = spec
        .rules
        .iter()
        .position(|r| r.actions.is_empty() || r.resources.is_empty())
    {
        return Err(RoleRejection::EmptyRule(index));
    }
    Ok(())
}

impl Aggregate for Role {
    const KIND: &'static str = "role";
    type Id = RoleId;
    type Command = RoleCommand;
    type Event = RoleEvent;
    type Rejection = RoleRejection;

    fn decide(&self, id: &RoleId, command: &RoleCommand) -> Result<Vec<RoleEvent>, RoleRejection> {
        match (command, &self.0) {
            (RoleCommand::Define { spec }, None) => {
                check_spec(spec)?;
                Ok(vec![RoleEvent::Defined {
                    org: id.org.clone(),
                    name: id.name.clone(),
                    spec: spec.clone(),
                }])
            }
            (RoleCommand::Define { spec }, Some(state)) => {
                check_spec(spec)?;
                if *spec == state.spec {
                    Ok(vec![])
                } else {
                    Ok(vec![RoleEvent::Redefined { spec: spec.clone() }])
                }
            }
            (RoleCommand::Delete, None) => Err(RoleRejection::NotFound),
            (RoleCommand::Delete, Some(_)) => Ok(vec![RoleEvent::Deleted {}]),
        }
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &RoleEvent) {
        match event {
            RoleEvent::Defined { org, name, spec } => {
                self.0 = Some(RoleState {
                    org: org.clone(),
                    name: name.clone(),
                    spec: spec.clone(),
                });
            }
            RoleEvent::Redefined { spec } => {
                if let Some(state) = self.0.as_mut() {
                    state.spec = spec.clone();
                }
            }
            RoleEvent::Deleted {} => self.0 = None,
        }
    }
}

/// Where a binding applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "scope", content = "job_space", rename_all = "snake_case")]
pub enum BindingScope {
    /// Everywhere in the org.
    Org,
    /// Only in one job space of the org.
    JobSpace(JobSpaceName),
}

/// What a binding says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BindingSpec {
    pub subject: SubjectName,
    pub role: RoleName,
    pub scope: BindingScope,
}

/// Facts about other aggregates, looked up by the caller when it builds
/// the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct References {
    pub subject_exists: bool,
    pub role_exists: bool,
    /// Ignored for org-wide bindings.
    pub job_space_exists: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingState {
    pub org: OrgName,
    pub name: BindingName,
    pub spec: BindingSpec,
}

/// The RoleBinding aggregate; `None` until bound, and again once removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleBinding(pub Option<BindingState>);

pub type BindingId = Scoped<BindingName>;

#[derive(Debug, Clone, PartialEq)]
pub enum BindingCommand {
    /// Creates the binding, or changes what it binds.
    Bind {
        spec: BindingSpec,
        references: References,
    },
    Unbind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum BindingEvent {
    Bound {
        org: OrgName,
        name: BindingName,
        spec: BindingSpec,
    },
    Rebound {
        spec: BindingSpec,
    },
    Unbound {},
}

impl DomainEvent for BindingEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Bound { .. } => "Bound",
            Self::Rebound { .. } => "Rebound",
            Self::Unbound {} => "Unbound",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingRejection {
    #[error("role binding does not exist")]
    NotFound,
    #[error("subject `{0}` does not exist in this org")]
    UnknownSubject(SubjectName),
    #[error("role `{0}` does not exist in this org")]
    UnknownRole(RoleName),
    #[error("job space `{0}` does not exist in this org")]
    UnknownJobSpace(JobSpaceName),
}

impl ErrorCode for BindingRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "role_binding_not_found",
            Self::UnknownSubject(_) => "unknown_subject",
            Self::UnknownRole(_) => "unknown_role",
            Self::UnknownJobSpace(_) => "unknown_job_space",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound => ErrorClass::NotFound,
            _ => ErrorClass::InvalidInput,
        }
    }
}

impl Aggregate for RoleBinding {
    const KIND: &'static str = "role_binding";
    type Id = BindingId;
    type Command = BindingCommand;
    type Event = BindingEvent;
    type Rejection = BindingRejection;

    fn decide(
        &self,
        id: &BindingId,
        command: &BindingCommand,
    ) -> Result<Vec<BindingEvent>, BindingRejection> {
        match (command, &self.0) {
            (BindingCommand::Bind { spec, references }, current) => {
                if !references.subject_exists {
                    return Err(BindingRejection::UnknownSubject(spec.subject.clone()));
                }
                if !references.role_exists {
                    return Err(BindingRejection::UnknownRole(spec.role.clone()));
                }
                if let BindingScope::JobSpace(space) = &spec.scope
                    && !references.job_space_exists
                {
                    return Err(BindingRejection::UnknownJobSpace(space.clone()));
                }
                Ok(match current {
                    None => vec![BindingEvent::Bound {
                        org: id.org.clone(),
                        name: id.name.clone(),
                        spec: spec.clone(),
                    }],
                    Some(state) if state.spec == *spec => vec![],
                    Some(_) => vec![BindingEvent::Rebound { spec: spec.clone() }],
                })
            }
            (BindingCommand::Unbind, None) => Err(BindingRejection::NotFound),
            (BindingCommand::Unbind, Some(_)) => Ok(vec![BindingEvent::Unbound {}]),
        }
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &BindingEvent) {
        match event {
            BindingEvent::Bound { org, name, spec } => {
                self.0 = Some(BindingState {
                    org: org.clone(),
                    name: name.clone(),
                    spec: spec.clone(),
                });
            }
            BindingEvent::Rebound { spec } => {
                if let Some(state) = self.0.as_mut() {
                    state.spec = spec.clone();
                }
            }
            BindingEvent::Unbound {} => self.0 = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventParts;
    use crate::testing::given;
    use proptest::prelude::*;

    fn org() -> OrgName {
        OrgName::parse("acme").unwrap()
    }

    fn role_id() -> RoleId {
        Scoped::new(org(), RoleName::parse("editor").unwrap())
    }

    fn rule(actions: &[&str], resources: &[&str]) -> Rule {
        Rule {
            actions: actions.iter().map(|a| a.parse().unwrap()).collect(),
            resources: resources.iter().map(|r| r.parse().unwrap()).collect(),
        }
    }

    fn spec() -> RoleSpec {
        RoleSpec {
            description: "edits things".into(),
            rules: vec![
                rule(&["get", "list"], &["*"]),
                rule(&["update"], &["Organization", "Role"]),
            ],
            tools: ["payments.*".parse().unwrap(), "search".parse().unwrap()].into(),
        }
    }

    fn action(a: &str) -> Action {
        Action::parse(a).unwrap()
    }

    #[test]
    fn rules_match_with_wildcards() {
        let spec = spec();
        assert!(spec.allows(&action("get"), ResourceKind::Policy));
        assert!(spec.allows(&action("update"), ResourceKind::Role));
        assert!(!spec.allows(&action("update"), ResourceKind::Policy));
        assert!(!spec.allows(&action("delete"), ResourceKind::Organization));
        assert!(spec.allows_tool("payments.refund"));
        assert!(spec.allows_tool("search"));
        assert!(!spec.allows_tool("search.deep"));
        assert!(!spec.allows_tool("paymentsx"));
        let admin = RoleSpec {
            rules: vec![rule(&["*"], &["*"])],
            ..RoleSpec::default()
        };
        assert!(admin.allows(&action("approve"), ResourceKind::WorkflowRun));
    }

    #[test]
    fn patterns_parse_and_round_trip() {
        assert!("Organization".parse::<KindPattern>().is_ok());
        assert!("Organisation".parse::<KindPattern>().is_err());
        assert!("Get".parse::<ActionPattern>().is_err());
        assert!("payments..refund".parse::<ToolPattern>().is_err());
        assert!("payments.*".parse::<ToolPattern>().is_ok());
        assert!("pay*".parse::<ToolPattern>().is_err());
        let json = serde_json::to_string(&spec()).unwrap();
        let back: RoleSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec());
        assert!(
            serde_json::from_str::<RoleSpec>(
                r#"{"rules":[{"actions":["get"],"resources":["Nope"]}]}"#
            )
            .is_err()
        );
    }

    #[test]
    fn roles_are_defined_redefined_and_deleted() {
        let defined = RoleEvent::Defined {
            org: org(),
            name: role_id().name,
            spec: spec(),
        };
        given::<Role>(&role_id(), [])
            .when(RoleCommand::Define { spec: spec() })
            .then_expect([defined.clone()]);
        given::<Role>(&role_id(), [defined.clone()])
            .when(RoleCommand::Define { spec: spec() })
            .then_nothing();
        let narrower = RoleSpec {
            tools: BTreeSet::new(),
            ..spec()
        };
        given::<Role>(&role_id(), [defined.clone()])
            .when(RoleCommand::Define {
                spec: narrower.clone(),
            })
            .then_expect([RoleEvent::Redefined { spec: narrower }]);
        given::<Role>(&role_id(), [])
            .when(RoleCommand::Delete)
            .then_reject(RoleRejection::NotFound);
        given::<Role>(&role_id(), [defined])
            .when(RoleCommand::Delete)
            .then_expect([RoleEvent::Deleted {}]);
        let empty_rule = RoleSpec {
            rules: vec![rule(&[], &["*"])],
            ..RoleSpec::default()
        };
        given::<Role>(&role_id(), [])
            .when(RoleCommand::Define { spec: empty_rule })
            .then_reject(RoleRejection::EmptyRule(0));
    }

    fn binding_id() -> BindingId {
        Scoped::new(org(), BindingName::parse("alice-editor").unwrap())
    }

    fn binding(scope: BindingScope) -> BindingSpec {
        BindingSpec {
            subject: SubjectName::parse("alice").unwrap(),
            role: RoleName::parse("editor").unwrap(),
            scope,
        }
    }

    const ALL_KNOWN: References = References {
        subject_exists: true,
        role_exists: true,
        job_space_exists: true,
    };

    #[test]
    fn bindings_need_what_they_name() {
        given::<RoleBinding>(&binding_id(), [])
            .when(BindingCommand::Bind {
                spec: binding(BindingScope::Org),
                references: References {
                    subject_exists: false,
                    ..ALL_KNOWN
                },
            })
            .then_reject_code("unknown_subject");
        given::<RoleBinding>(&binding_id(), [])
            .when(BindingCommand::Bind {
                spec: binding(BindingScope::Org),
                references: References {
                    role_exists: false,
                    ..ALL_KNOWN
                },
            })
            .then_reject_code("unknown_role");
        let space = JobSpaceName::parse("research").unwrap();
        given::<RoleBinding>(&binding_id(), [])
            .when(BindingCommand::Bind {
                spec: binding(BindingScope::JobSpace(space.clone())),
                references: References {
                    job_space_exists: false,
                    ..ALL_KNOWN
                },
            })
            .then_reject_code("unknown_job_space");
        // An org-wide binding does not care about job spaces.
        let bound = BindingEvent::Bound {
            org: org(),
            name: binding_id().name,
            spec: binding(BindingScope::Org),
        };
        given::<RoleBinding>(&binding_id(), [])
            .when(BindingCommand::Bind {
                spec: binding(BindingScope::Org),
                references: References {
                    job_space_exists: false,
                    ..ALL_KNOWN
                },
            })
            .then_expect([bound.clone()]);
        given::<RoleBinding>(&binding_id(), [bound.clone()])
            .when(BindingCommand::Bind {
                spec: binding(BindingScope::Org),
                references: ALL_KNOWN,
            })
            .then_nothing();
        given::<RoleBinding>(&binding_id(), [bound.clone()])
            .when(BindingCommand::Bind {
                spec: binding(BindingScope::JobSpace(space.clone())),
                references: ALL_KNOWN,
            })
            .then_expect([BindingEvent::Rebound {
                spec: binding(BindingScope::JobSpace(space)),
            }]);
        given::<RoleBinding>(&binding_id(), [bound])
            .when(BindingCommand::Unbind)
            .then_expect([BindingEvent::Unbound {}]);
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        let actions = prop::collection::btree_set(
            prop::sample::select(vec!["*", "get", "list", "update"])
                .prop_map(|a| a.parse().unwrap()),
            1..3,
        );
        let kinds = prop::collection::btree_set(
            prop::sample::select(vec!["*", "Organization", "Role", "Policy"])
                .prop_map(|k| k.parse().unwrap()),
            1..3,
        );
        (actions, kinds).prop_map(|(actions, resources)| Rule { actions, resources })
    }

    proptest! {
        /// A rule allows exactly the pairs its patterns name.
        #[test]
        fn rule_matching_is_pattern_membership(rule in arb_rule(), a in prop::sample::select(vec!["get", "list", "update", "delete"]), k in prop::sample::select(ResourceKind::ALL.to_vec())) {
            let action = Action::parse(a).unwrap();
            let action_ok = rule.actions.iter().any(|p| p.to_string() == "*" || p.to_string() == a);
            let kind_ok = rule.resources.iter().any(|p| p.to_string() == "*" || p.to_string() == k.as_str());
            prop_assert_eq!(rule.matches(&action, k), action_ok && kind_ok);
        }

        #[test]
        fn role_events_replay(specs in prop::collection::vec(prop::collection::vec(arb_rule(), 0..4), 0..10), deletes in prop::collection::vec(any::<bool>(), 10)) {
            let mut state = Role::default();
            let mut log = Vec::new();
            for (rules, delete) in specs.into_iter().zip(deletes) {
                let command = if delete { RoleCommand::Delete } else { RoleCommand::Define { spec: RoleSpec { rules, ..RoleSpec::default() } } };
                if let Ok(events) = state.decide(&role_id(), &command) {
                    for event in events {
                        state.evolve(&event);
                        let decoded: RoleEvent = EventParts::from_event(&event).unwrap().to_event().unwrap();
                        prop_assert_eq!(&decoded, &event);
                        log.push(decoded);
                    }
                }
            }
            prop_assert_eq!(Role::replay(&log), state);
        }
    }
}
