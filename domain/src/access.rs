//! Role-based access decisions from an index that events keep current.
//!
//! The [`GrantIndex`] holds, per org, each subject's bindings and each
//! role's rules, so deciding "may this subject do this action on this kind
//! of resource, here?" is a few hash lookups, not a scan of every rule.
//! It is folded from Role, RoleBinding and Subject events, in log order, and
//! answers with the grants that allowed the request, so that every decision
//! can say why. Org policies (which can add permits and forbids) are layered
//! on top by the gateway; this module knows only roles.

use std::collections::BTreeSet;

// Decisions are lookups: a fast, seeded hasher pays off (the keys are
// names, hashed on every request).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use crate::OrgName;
use crate::ids::{BindingName, JobSpaceName, RoleName, SubjectName};
use crate::role::{
    Action, BindingEvent, BindingId, BindingScope, BindingSpec, ResourceKind, RoleEvent, RoleId,
    RoleSpec,
};
use crate::subject::{SubjectEvent, SubjectId, SubjectKind};

/// What is asked.
#[derive(Debug, Clone, Copy)]
pub struct AccessRequest<'a> {
    pub org: &'a OrgName,
    pub subject: &'a SubjectName,
    pub action: &'a Action,
    pub kind: ResourceKind,
    /// The job space the resource lives in, if any: bindings to that job
    /// space apply as well as org-wide ones.
    pub job_space: Option<&'a JobSpaceName>,
}

/// One binding, and its role, that allowed a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Grant {
    pub binding: BindingName,
    pub role: RoleName,
}

/// The answer, with its reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow { grants: Vec<Grant> },
    Deny { reason: DenyReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// The subject is unknown in this org, or deleted.
    UnknownSubject,
    SubjectDisabled,
    /// No binding of the subject grants the action here.
    NoGrant,
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allow { .. })
    }
}

#[derive(Debug, Default, Clone)]
struct OrgGrants {
    roles: HashMap<RoleName, RoleSpec>,
    bindings: HashMap<BindingName, BindingSpec>,
    by_subject: HashMap<SubjectName, BTreeSet<BindingName>>,
    subjects: HashMap<SubjectName, SubjectKind>,
    disabled: HashSet<SubjectName>,
}

/// Every org's roles, bindings and subjects, indexed for decisions.
#[derive(Debug, Default, Clone)]
pub struct GrantIndex {
    orgs: HashMap<OrgName, OrgGrants>,
}

impl GrantIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn org(&mut self, org: &OrgName) -> &mut OrgGrants {
        self.orgs.entry(org.clone()).or_default()
    }

    pub fn apply_role(&mut self, id: &RoleId, event: &RoleEvent) {
        let org = self.org(&id.org);
        match event {
            RoleEvent::Defined { spec, .. } | RoleEvent::Redefined { spec } => {
                org.roles.insert(id.name.clone(), spec.clone());
            }
            RoleEvent::Deleted {} => {
                org.roles.remove(&id.name);
            }
        }
    }

    pub fn apply_binding(&mut self, id: &BindingId, event: &BindingEvent) {
        let org = self.org(&id.org);
        if let Some(old) = org.bindings.remove(&id.name)
            && let Some(names) = org.by_subject.get_mut(&old.subject)
        {
            names.remove(&id.name);
            if names.is_empty() {
                org.by_subject.remove(&old.subject);
            }
        }
        match event {
            BindingEvent::Bound { spec, .. } | BindingEvent::Rebound { spec } => {
                org.by_subject
                    .entry(spec.subject.clone())
                    .or_default()
                    .insert(id.name.clone());
                org.bindings.insert(id.name.clone(), spec.clone());
            }
            BindingEvent::Unbound {} => {}
        }
    }

    pub fn apply_subject(&mut self, id: &SubjectId, event: &SubjectEvent) {
        let org = self.org(&id.org);
        match event {
            SubjectEvent::Created { kind, .. } => {
                org.subjects.insert(id.name.clone(), *kind);
                org.disabled.remove(&id.name);
            }
            SubjectEvent::Deleted {} => {
                org.subjects.remove(&id.name);
                org.disabled.remove(&id.name);
            }
            SubjectEvent::Disabled {} => {
                org.disabled.insert(id.name.clone());
            }
            SubjectEvent::Enabled {} => {
                org.disabled.remove(&id.name);
            }
            SubjectEvent::DisplayNameSet { .. }
            | SubjectEvent::ApiKeyAdded { .. }
            | SubjectEvent::ApiKeyRevoked { .. } => {}
        }
    }

    /// Whether the subject exists in the org (enabled or not).
    pub fn has_subject(&self, org: &OrgName, subject: &SubjectName) -> bool {
        self.orgs
            .get(org)
            .is_some_and(|o| o.subjects.contains_key(subject))
    }

    /// Whether the role is defined in the org.
    pub fn has_role(&self, org: &OrgName, role: &RoleName) -> bool {
        self.orgs
            .get(org)
            .is_some_and(|o| o.roles.contains_key(role))
    }

    /// Whether the binding exists in the org.
    pub fn has_binding(&self, org: &OrgName, binding: &BindingName) -> bool {
        self.orgs
            .get(org)
            .is_some_and(|o| o.bindings.contains_key(binding))
    }

    /// The org's subjects, enabled or not, in no particular order.
    pub fn subjects(&self, org: &OrgName) -> impl Iterator<Item = &SubjectName> {
        self.orgs
            .get(org)
            .into_iter()
            .flat_map(|o| o.subjects.keys())
    }

    /// Decides a request from the subject's bindings alone.
    pub fn decide(&self, request: &AccessRequest<'_>) -> Decision {
        match self.subject_grants(request) {
            Err(reason) => Decision::Deny { reason },
            Ok((_, grants)) if grants.is_empty() => Decision::Deny {
                reason: DenyReason::NoGrant,
            },
            Ok((_, grants)) => Decision::Allow { grants },
        }
    }

    /// The subject's kind and the grants that allow the request, or why
    /// the subject cannot be granted anything: one pass over its bindings.
    pub fn subject_grants(
        &self,
        request: &AccessRequest<'_>,
    ) -> Result<(SubjectKind, Vec<Grant>), DenyReason> {
        let kind = self.active_subject(request.org, request.subject)?;
        let grants = self
            .bindings_in_scope(request.org, request.subject, request.job_space)
            .filter(|(_, _, role)| role.allows(request.action, request.kind))
            .map(|(name, binding, _)| Grant {
                binding: name.clone(),
                role: binding.role.clone(),
            })
            .collect();
        Ok((kind, grants))
    }

    /// The subject's kind, when it exists in the org and is enabled.
    pub fn active_subject(
        &self,
        org: &OrgName,
        subject: &SubjectName,
    ) -> Result<SubjectKind, DenyReason> {
        let org = self.orgs.get(org).ok_or(DenyReason::UnknownSubject)?;
        let kind = org
            .subjects
            .get(subject)
            .ok_or(DenyReason::UnknownSubject)?;
        if org.disabled.contains(subject) {
            return Err(DenyReason::SubjectDisabled);
        }
        Ok(*kind)
    }

    /// The subject's bindings that apply here (org-wide, or to this job
    /// space) whose role exists, with that role.
    fn bindings_in_scope<'a>(
        &'a self,
        org: &OrgName,
        subject: &SubjectName,
        job_space: Option<&'a JobSpaceName>,
    ) -> impl Iterator<Item = (&'a BindingName, &'a BindingSpec, &'a RoleSpec)> + 'a {
        let org = self.orgs.get(org);
        org.and_then(|org| org.by_subject.get(subject).map(|names| (org, names)))
            .into_iter()
            .flat_map(move |(org, names)| {
                names.iter().filter_map(move |name| {
                    let binding = org.bindings.get(name)?;
                    let in_scope = match &binding.scope {
                        BindingScope::Org => true,
                        BindingScope::JobSpace(space) => job_space == Some(space),
                    };
                    let role = org.roles.get(&binding.role)?;
                    in_scope.then_some((name, binding, role))
                })
            })
    }

    /// The roles bound to the subject that apply here (org-wide, or in
    /// this job space), whatever they allow.
    pub fn roles_in_scope(
        &self,
        org: &OrgName,
        subject: &SubjectName,
        job_space: Option<&JobSpaceName>,
    ) -> Vec<RoleName> {
        self.bindings_in_scope(org, subject, job_space)
            .map(|(_, binding, _)| binding.role.clone())
            .collect()
    }

    /// The names of the roles bound to the subject that apply here,
    /// borrowed (the decision path's allocation-free form).
    pub fn role_names_in_scope<'a>(
        &'a self,
        org: &OrgName,
        subject: &SubjectName,
        job_space: Option<&'a JobSpaceName>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.bindings_in_scope(org, subject, job_space)
            .map(|(_, binding, _)| binding.role.as_str())
    }

    /// Whether the subject may call a tool here, and through which grants.
    pub fn tool_grants(
        &self,
        org: &OrgName,
        subject: &SubjectName,
        tool: &str,
        job_space: Option<&JobSpaceName>,
    ) -> Vec<Grant> {
        if self.active_subject(org, subject).is_err() {
            return vec![];
        }
        self.bindings_in_scope(org, subject, job_space)
            .filter(|(_, _, role)| role.allows_tool(tool))
            .map(|(name, binding, _)| Grant {
                binding: name.clone(),
                role: binding.role.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aggregate;
    use crate::ids::Scoped;
    use crate::organization::DisplayName;
    use crate::role::{BindingCommand, References, Role, RoleBinding, RoleCommand, Rule};
    use crate::subject::{Subject, SubjectCommand, SubjectKind};
    use proptest::prelude::*;

    fn acme() -> OrgName {
        OrgName::parse("acme").unwrap()
    }

    fn rule(actions: &[&str], kinds: &[&str]) -> Rule {
        Rule {
            actions: actions.iter().map(|a| a.parse().unwrap()).collect(),
            resources: kinds.iter().map(|k| k.parse().unwrap()).collect(),
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Role(usize, Option<Vec<Rule>>),
        Bind(usize, usize, usize, Option<usize>),
        Unbind(usize),
        Subject(usize, SubjectCommand),
    }

    const SUBJECTS: [&str; 3] = ["alice", "bob", "bot"];
    const ROLES: [&str; 3] = ["viewer", "editor", "admin"];
    const BINDINGS: [&str; 4] = ["b0", "b1", "b2", "b3"];
    const SPACES: [&str; 2] = ["research", "ops"];

    fn arb_step() -> impl Strategy<Value = Step> {
        let rules = prop::collection::vec(
            (
                prop::sample::subsequence(vec!["*", "get", "update"], 1..=2),
                prop::sample::subsequence(vec!["*", "Organization", "Role"], 1..=2),
            )
                .prop_map(|(a, k)| rule(&a, &k)),
            0..3,
        );
        prop_oneof![
            (0..3usize, prop::option::of(rules)).prop_map(|(r, rules)| Step::Role(r, rules)),
            (0..4usize, 0..3usize, 0..3usize, prop::option::of(0..2usize))
                .prop_map(|(b, s, r, j)| Step::Bind(b, s, r, j)),
            (0..4usize).prop_map(Step::Unbind),
            (
                0..3usize,
                prop::sample::select(vec![
                    SubjectCommand::Create {
                        kind: SubjectKind::User,
                        display_name: DisplayName::parse("X").unwrap()
                    },
                    SubjectCommand::Disable,
                    SubjectCommand::Enable,
                    SubjectCommand::Delete,
                ])
            )
                .prop_map(|(s, c)| Step::Subject(s, c)),
        ]
    }

    proptest! {
        /// The index decides exactly as evaluating every aggregate's
        /// current state would.
        #[test]
        fn the_index_agrees_with_the_aggregates(steps in prop::collection::vec(arb_step(), 0..40)) {
            let mut index = GrantIndex::new();
            let mut roles: HashMap<usize, Role> = HashMap::default();
            let mut bindings: HashMap<usize, RoleBinding> = HashMap::default();
            let mut subjects: HashMap<usize, Subject> = HashMap::default();
            for step in steps {
                match step {
                    Step::Role(r, rules) => {
                        let id = Scoped::new(acme(), RoleName::parse(ROLES[r]).unwrap());
                        let command = match rules {
                            Some(rules) => RoleCommand::Define { spec: RoleSpec { rules, ..RoleSpec::default() } },
                            None => RoleCommand::Delete,
                        };
                        let state = roles.entry(r).or_default();
                        if let Ok(events) = state.decide(&id, &command) {
                            for event in events { state.evolve(&event); index.apply_role(&id, &event); }
                        }
                    }
                    Step::Bind(b, s, r, j) => {
                        let id = Scoped::new(acme(), BindingName::parse(BINDINGS[b]).unwrap());
                        let spec = BindingSpec {
                            subject: SubjectName::parse(SUBJECTS[s]).unwrap(),
                            role: RoleName::parse(ROLES[r]).unwrap(),
                            scope: match j { Some(j) => BindingScope::JobSpace(JobSpaceName::parse(SPACES[j]).unwrap()), None => BindingScope::Org },
                        };
                        let references = References { subject_exists: true, role_exists: true, job_space_exists: true };
                        let state = bindings.entry(b).or_default();
                        if let Ok(events) = state.decide(&id, &BindingCommand::Bind { spec, references }) {
                            for event in events { state.evolve(&event); index.apply_binding(&id, &event); }
                        }
                    }
                    Step::Unbind(b) => {
                        let id = Scoped::new(acme(), BindingName::parse(BINDINGS[b]).unwrap());
                        let state = bindings.entry(b).or_default();
                        if let Ok(events) = state.decide(&id, &BindingCommand::Unbind) {
                            for event in events { state.evolve(&event); index.apply_binding(&id, &event); }
                        }
                    }
                    Step::Subject(s, command) => {
                        let id = Scoped::new(acme(), SubjectName::parse(SUBJECTS[s]).unwrap());
                        let state = subjects.entry(s).or_default();
                        if let Ok(events) = state.decide(&id, &command) {
                            for event in events { state.evolve(&event); index.apply_subject(&id, &event); }
                        }
                    }
                }
            }
            for (s, subject_name) in SUBJECTS.iter().enumerate() {
                let subject = SubjectName::parse(*subject_name).unwrap();
                for action in ["get", "update", "delete"] {
                    let action = Action::parse(action).unwrap();
                    for kind in [ResourceKind::Organization, ResourceKind::Role, ResourceKind::Policy] {
                        for space in [None, Some(JobSpaceName::parse("research").unwrap())] {
                            let request = AccessRequest { org: &acme(), subject: &subject, action: &action, kind, job_space: space.as_ref() };
                            let expected = match subjects.get(&s).and_then(|x| x.0.as_ref()) {
                                None => Decision::Deny { reason: DenyReason::UnknownSubject },
                                Some(state) if state.disabled => Decision::Deny { reason: DenyReason::SubjectDisabled },
                                Some(_) => {
                                    let mut grants: Vec<Grant> = bindings.values().filter_map(|b| b.0.as_ref()).filter(|b| {
                                        b.spec.subject == subject
                                            && match &b.spec.scope { BindingScope::Org => true, BindingScope::JobSpace(j) => space.as_ref() == Some(j) }
                                            && roles.values().filter_map(|r| r.0.as_ref()).any(|r| r.name == b.spec.role && r.spec.allows(&action, kind))
                                    }).map(|b| Grant { binding: b.name.clone(), role: b.spec.role.clone() }).collect();
                                    grants.sort();
                                    if grants.is_empty() { Decision::Deny { reason: DenyReason::NoGrant } } else { Decision::Allow { grants } }
                                }
                            };
                            prop_assert_eq!(index.decide(&request), expected);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn tools_follow_bindings_and_scope() {
        let mut index = GrantIndex::new();
        let alice = SubjectName::parse("alice").unwrap();
        index.apply_subject(
            &Scoped::new(acme(), alice.clone()),
            &SubjectEvent::Created {
                org: acme(),
                name: alice.clone(),
                kind: SubjectKind::Agent,
                display_name: DisplayName::parse("A").unwrap(),
            },
        );
        let role = RoleName::parse("payer").unwrap();
        index.apply_role(
            &Scoped::new(acme(), role.clone()),
            &RoleEvent::Defined {
                org: acme(),
                name: role.clone(),
                spec: RoleSpec {
                    tools: ["payments.*".parse().unwrap()].into(),
                    ..RoleSpec::default()
                },
            },
        );
        let space = JobSpaceName::parse("finance").unwrap();
        let binding = BindingName::parse("alice-payer").unwrap();
        index.apply_binding(
            &Scoped::new(acme(), binding.clone()),
            &BindingEvent::Bound {
                org: acme(),
                name: binding.clone(),
                spec: BindingSpec {
                    subject: alice.clone(),
                    role: role.clone(),
                    scope: BindingScope::JobSpace(space.clone()),
                },
            },
        );
        assert_eq!(
            index.tool_grants(&acme(), &alice, "payments.refund", Some(&space)),
            vec![Grant { binding, role }]
        );
        assert!(
            index
                .tool_grants(&acme(), &alice, "payments.refund", None)
                .is_empty()
        );
        assert!(
            index
                .tool_grants(&acme(), &alice, "search", Some(&space))
                .is_empty()
        );
        let other = OrgName::parse("other").unwrap();
        assert!(
            index
                .tool_grants(&other, &alice, "payments.refund", Some(&space))
                .is_empty()
        );
    }
}
