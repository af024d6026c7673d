//! The whole access decision: roles grant, org policies can add permits,
//! and any matching `forbid` wins.
//!
//! Layout decides speed more than the engine does: role grants come from
//! the [`GrantIndex`] (lookups), and each org's policies are compiled into
//! one Cedar policy set per action, so a request is evaluated only against
//! its own org's policies for its own action, and not at all when there are
//! none. Every decision names what decided it: the grants, the permitting
//! policies, the forbidding policies.

use std::collections::{HashMap, HashSet};

/// Maps looked up on every decision.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{
    ActionConstraint, Context, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid,
    PolicyId as CedarPolicyId, PolicySet, Request, RestrictedExpression,
};
use serde::Serialize;

use crate::OrgName;
use crate::access::{AccessRequest, DenyReason, Grant, GrantIndex};
use crate::compiled::{Compiled, Facts};
use crate::ids::{JobSpaceName, PolicyName, SubjectName};
use crate::policy::{ACTIONS, PolicyEvent, PolicyId};
use crate::role::{Action, BindingEvent, BindingId, ResourceKind, RoleEvent, RoleId};
use crate::subject::{SubjectEvent, SubjectId, SubjectKind};

/// What was decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessDecision {
    pub allowed: bool,
    /// Role grants that allow the request.
    pub grants: Vec<Grant>,
    /// Org policies (`name#index`) whose `permit` matched.
    pub permitted_by: Vec<String>,
    /// Org policies (`name#index`) whose `forbid` matched; any one denies.
    pub forbidden_by: Vec<String>,
    /// Why a request was denied before policies were consulted, if so.
    pub denied_because: Option<&'static str>,
}

struct Types {
    org: EntityTypeName,
    job_space: EntityTypeName,
    role: EntityTypeName,
    subject: EntityTypeName,
    resource: EntityTypeName,
    tool: EntityTypeName,
    numbers: EntityTypeName,
    strings: EntityTypeName,
    flags: EntityTypeName,
    action: EntityTypeName,
}

fn types() -> &'static Types {
    static TYPES: OnceLock<Types> = OnceLock::new();
    TYPES.get_or_init(|| {
        let t = |name: &str| {
            EntityTypeName::from_str(name).unwrap_or_else(|e| unreachable!("type {name}: {e}"))
        };
        Types {
            org: t("Charter::Org"),
            job_space: t("Charter::JobSpace"),
            role: t("Charter::Role"),
            subject: t("Charter::Subject"),
            resource: t("Charter::Resource"),
            tool: t("Charter::Tool"),
            numbers: t("Charter::Numbers"),
            strings: t("Charter::Strings"),
            flags: t("Charter::Flags"),
            action: t("Charter::Action"),
        }
    })
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

/// One action's policies in one org, split by effect: with role grants
/// only forbids can change the answer, without them only permits can.
#[derive(Default)]
struct ActionPolicies {
    permits: PolicySet,
    forbids: PolicySet,
    /// The same sets compiled into plain checks, when every policy in the
    /// set is within the compiled subset (`None`: ask the engine).
    permits_fast: Option<Vec<Compiled>>,
    forbids_fast: Option<Vec<Compiled>>,
}

/// One org's policies, compiled per action.
#[derive(Default)]
struct OrgPolicies {
    sources: FastMap<PolicyName, PolicySet>,
    by_action: FastMap<&'static str, ActionPolicies>,
}

impl OrgPolicies {
    fn compile(&mut self) {
        self.by_action.clear();
        let mut names: Vec<&PolicyName> = self.sources.keys().collect();
        names.sort();
        for name in names {
            let Some(set) = self.sources.get(name) else {
                continue;
            };
            for (index, policy) in set.policies().enumerate() {
                let renamed = policy.new_id(CedarPolicyId::new(format!("{name}#{index}")));
                let actions: Vec<&'static str> = match policy.action_constraint() {
                    ActionConstraint::Any => ACTIONS.to_vec(),
                    ActionConstraint::Eq(action) => ACTIONS
                        .iter()
                        .copied()
                        .filter(|a| action.id().unescaped() == *a)
                        .collect(),
                    ActionConstraint::In(list) => ACTIONS
                        .iter()
                        .copied()
                        .filter(|a| list.iter().any(|u| u.id().unescaped() == *a))
                        .collect(),
                };
                let fast = renamed
                    .to_json()
                    .ok()
                    .and_then(|json| crate::compiled::compile(format!("{name}#{index}"), &json));
                for action in actions {
                    let bucket = self
                        .by_action
                        .entry(action)
                        .or_insert_with(|| ActionPolicies {
                            permits_fast: Some(Vec::new()),
                            forbids_fast: Some(Vec::new()),
                            ..ActionPolicies::default()
                        });
                    let (set, fast_set) = match renamed.effect() {
                        Effect::Permit => (&mut bucket.permits, &mut bucket.permits_fast),
                        Effect::Forbid => (&mut bucket.forbids, &mut bucket.forbids_fast),
                    };
                    // Ids are unique by construction, so adding cannot clash.
                    let _ = set.add(renamed.clone());
                    match (&fast, fast_set.as_mut()) {
                        (Some(compiled), Some(list)) => list.push(compiled.clone()),
                        _ => *fast_set = None,
                    }
                }
            }
        }
    }
}

/// Decides requests from role grants and org policies, kept current by
/// events.
#[derive(Default)]
pub struct Authorizer {
    grants: GrantIndex,
    policies: FastMap<OrgName, OrgPolicies>,
    engine: cedar_policy::Authorizer,
}

impl Authorizer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn grants(&self) -> &GrantIndex {
        &self.grants
    }

    pub fn apply_role(&mut self, id: &RoleId, event: &RoleEvent) {
        self.grants.apply_role(id, event);
    }

    pub fn apply_binding(&mut self, id: &BindingId, event: &BindingEvent) {
        self.grants.apply_binding(id, event);
    }

    pub fn apply_subject(&mut self, id: &SubjectId, event: &SubjectEvent) {
        self.grants.apply_subject(id, event);
    }

    /// Folds a policy event. Published texts were validated by the
    /// aggregate; one that no longer parses is dropped (and logged by the
    /// caller), never half-applied.
    pub fn apply_policy(&mut self, id: &PolicyId, event: &PolicyEvent) -> Result<(), String> {
        let org = self.policies.entry(id.org.clone()).or_default();
        let outcome = match event {
            PolicyEvent::Published { text, .. } => match PolicySet::from_str(text) {
                Ok(set) => {
                    org.sources.insert(id.name.clone(), set);
                    Ok(())
                }
                Err(error) => {
                    org.sources.remove(&id.name);
                    Err(format!("policy {id} no longer parses: {error}"))
                }
            },
            PolicyEvent::Deleted {} => {
                org.sources.remove(&id.name);
                Ok(())
            }
        };
        org.compile();
        outcome
    }

    /// Whether the org has a policy of that name in force.
    pub fn has_policy(&self, id: &PolicyId) -> bool {
        self.policies
            .get(&id.org)
            .is_some_and(|org| org.sources.contains_key(&id.name))
    }

    /// The org's subjects who may change its policies today, when the
    /// policy `id` taking the text `text` (`None`: being deleted) would
    /// leave none who could; empty when the change locks nobody out. A
    /// text that does not parse locks nobody out (the aggregate refuses
    /// it, with its location).
    pub fn admins_locked_out(&self, id: &PolicyId, text: Option<&str>) -> Vec<SubjectName> {
        let mut changed = OrgPolicies::default();
        if let Some(current) = self.policies.get(&id.org) {
            changed.sources = current.sources.clone();
        }
        match text {
            Some(text) => match PolicySet::from_str(text) {
                Ok(set) => {
                    changed.sources.insert(id.name.clone(), set);
                }
                Err(_) => return vec![],
            },
            None => {
                changed.sources.remove(&id.name);
            }
        }
        changed.compile();
        let update = Action::parse("update").unwrap_or_else(|e| unreachable!("{e}"));
        let empty = ActionPolicies::default();
        let after = changed.by_action.get("update").unwrap_or(&empty);
        let mut subjects: Vec<&SubjectName> = self.grants.subjects(&id.org).collect();
        subjects.sort();
        let mut admins = Vec::new();
        for subject in subjects {
            let request = AccessRequest {
                org: &id.org,
                subject,
                action: &update,
                kind: ResourceKind::Policy,
                job_space: None,
            };
            if self.decide_with(&request, id.name.as_str(), after).allowed {
                return vec![];
            }
            if self.decide(&request, id.name.as_str()).allowed {
                admins.push(subject.clone());
            }
        }
        admins
    }

    /// Decides whether `request.subject` may do `request.action` on the
    /// resource `resource_name` of kind `request.kind`.
    pub fn decide(&self, request: &AccessRequest<'_>, resource_name: &str) -> AccessDecision {
        self.decide_with(request, resource_name, self.action_policies(request))
    }

    /// The request's org's policies for its action.
    fn action_policies(&self, request: &AccessRequest<'_>) -> &ActionPolicies {
        static NONE: OnceLock<ActionPolicies> = OnceLock::new();
        self.policies
            .get(request.org)
            .and_then(|org| org.by_action.get(request.action.as_str()))
            .unwrap_or_else(|| NONE.get_or_init(ActionPolicies::default))
    }

    fn decide_with(
        &self,
        request: &AccessRequest<'_>,
        resource_name: &str,
        policies: &ActionPolicies,
    ) -> AccessDecision {
        self.decide_in(request, resource_name, policies, true)
    }

    /// The decision with only the engine, for tests that hold the compiled
    /// checks against it.
    #[cfg(test)]
    fn decide_by_engine(&self, request: &AccessRequest<'_>, resource_name: &str) -> AccessDecision {
        self.decide_in(request, resource_name, self.action_policies(request), false)
    }

    fn decide_in(
        &self,
        request: &AccessRequest<'_>,
        resource_name: &str,
        policies: &ActionPolicies,
        compiled: bool,
    ) -> AccessDecision {
        let denied = |reason: DenyReason| AccessDecision {
            allowed: false,
            grants: vec![],
            permitted_by: vec![],
            forbidden_by: vec![],
            denied_because: Some(match reason {
                DenyReason::UnknownSubject => "unknown_subject",
                DenyReason::SubjectDisabled => "subject_disabled",
                DenyReason::NoGrant => "no_grant",
            }),
        };
        let (kind, grants) = match self.grants.subject_grants(request) {
            Ok(found) => found,
            Err(reason) => return denied(reason),
        };
        let decision =
            |grants: Vec<Grant>, permitted_by: Vec<String>, forbidden_by: Vec<String>| {
                let allowed =
                    forbidden_by.is_empty() && (!grants.is_empty() || !permitted_by.is_empty());
                AccessDecision {
                    allowed,
                    denied_because: (!allowed && forbidden_by.is_empty()).then_some("no_grant"),
                    grants,
                    permitted_by,
                    forbidden_by,
                }
            };
        // Nothing any policy says can change the answer: skip the engine.
        if grants.is_empty() && policies.permits.is_empty() {
            return decision(grants, vec![], vec![]);
        }
        if !grants.is_empty() && policies.forbids.is_empty() {
            return decision(grants, vec![], vec![]);
        }
        // Sets compiled into plain checks are decided here, without the
        // engine and its per-request entity store.
        let permits_fast = if grants.is_empty() {
            policies.permits_fast.as_ref()
        } else {
            Some(&EMPTY_FAST)
        };
        let forbids_fast = if policies.forbids.is_empty() {
            Some(&EMPTY_FAST)
        } else {
            policies.forbids_fast.as_ref()
        };
        if let (true, Some(permits), Some(forbids)) = (compiled, permits_fast, forbids_fast) {
            let role_names: Vec<&str> = self
                .grants
                .role_names_in_scope(request.org, request.subject, request.job_space)
                .collect();
            let facts = Facts {
                org: request.org.as_str(),
                subject: request.subject.as_str(),
                subject_kind: kind.as_str(),
                roles: &role_names,
                resource_kind: request.kind.as_str(),
                resource_name,
                job_space: request.job_space.map(|s| s.as_str()),
            };
            let matching = |list: &Vec<Compiled>| -> Vec<String> {
                let mut ids: Vec<String> = list
                    .iter()
                    .filter(|p| p.matches(&facts))
                    .map(|p| p.id.clone())
                    .collect();
                ids.sort();
                ids
            };
            let permitted_by = matching(permits);
            if grants.is_empty() && permitted_by.is_empty() {
                return decision(grants, permitted_by, vec![]);
            }
            let forbidden_by = matching(forbids);
            return decision(grants, permitted_by, forbidden_by);
        }
        let evaluation = (|| {
            let (entities, principal, action, resource) =
                self.request_entities(request, kind, resource_name)?;
            let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
            let cedar_request = Request::new(principal, action, resource, Context::empty(), None)
                .map_err(|e| e.to_string())?;
            let permitted_by = if grants.is_empty() {
                self.matching(&policies.permits, &cedar_request, &entities)
            } else {
                vec![]
            };
            if grants.is_empty() && permitted_by.is_empty() {
                return Ok((permitted_by, vec![]));
            }
            let forbidden_by = if policies.forbids.is_empty() {
                vec![]
            } else {
                self.matching(&policies.forbids, &cedar_request, &entities)
            };
            Ok::<_, String>((permitted_by, forbidden_by))
        })();
        match evaluation {
            Ok((permitted_by, forbidden_by)) => decision(grants, permitted_by, forbidden_by),
            // A request the engine cannot evaluate is denied, never allowed
            // by accident.
            Err(_) => AccessDecision {
                allowed: false,
                grants,
                permitted_by: vec![],
                forbidden_by: vec![],
                denied_because: Some("policy_evaluation_failed"),
            },
        }
    }

    /// Decides whether a subject may call one version of a tool with this
    /// input. Role grants come from the roles' tool patterns; the org's
    /// `call` policies see the tool as a `Charter::Tool` entity with its
    /// name and version, in its org, and the input's top-level scalars as
    /// the tags of `context.numbers`, `context.strings` and
    /// `context.flags`. A forbid always wins.
    pub fn decide_call(
        &self,
        org: &OrgName,
        subject: &SubjectName,
        tool: &str,
        version: &str,
        job_space: Option<&JobSpaceName>,
        input: &serde_json::Value,
    ) -> AccessDecision {
        let call = Action::parse("call").unwrap_or_else(|e| unreachable!("{e}"));
        let request = AccessRequest {
            org,
            subject,
            action: &call,
            kind: ResourceKind::Tool,
            job_space,
        };
        let verdict = |grants: Vec<Grant>, permitted_by: Vec<String>, forbidden_by: Vec<String>| {
            let allowed =
                forbidden_by.is_empty() && (!grants.is_empty() || !permitted_by.is_empty());
            AccessDecision {
                allowed,
                denied_because: (!allowed && forbidden_by.is_empty()).then_some("no_grant"),
                grants,
                permitted_by,
                forbidden_by,
            }
        };
        let kind = match self.grants.subject_grants(&request) {
            Ok((kind, _)) => kind,
            Err(reason) => {
                return AccessDecision {
                    allowed: false,
                    grants: vec![],
                    permitted_by: vec![],
                    forbidden_by: vec![],
                    denied_because: Some(match reason {
                        DenyReason::UnknownSubject => "unknown_subject",
                        DenyReason::SubjectDisabled => "subject_disabled",
                        DenyReason::NoGrant => "no_grant",
                    }),
                };
            }
        };
        let grants = self.grants.tool_grants(org, subject, tool, job_space);
        let policies = self.action_policies(&request);
        if grants.is_empty() && policies.permits.is_empty() {
            return verdict(grants, vec![], vec![]);
        }
        if !grants.is_empty() && policies.forbids.is_empty() {
            return verdict(grants, vec![], vec![]);
        }
        let evaluation = (|| {
            let (mut entities, principal, action, _) =
                self.request_entities(&request, kind, tool)?;
            let t = types();
            let resource = uid(&t.tool, &format!("{org}:{tool}"));
            entities.push(
                Entity::new(
                    resource.clone(),
                    HashMap::from([
                        (
                            "name".to_owned(),
                            RestrictedExpression::new_string(tool.to_owned()),
                        ),
                        (
                            "version".to_owned(),
                            RestrictedExpression::new_string(version.to_owned()),
                        ),
                    ]),
                    HashSet::from([uid(&t.org, org.as_str())]),
                )
                .map_err(|e| e.to_string())?,
            );
            // The input's top-level scalars, by type, as tags.
            let mut numbers = Vec::new();
            let mut strings = Vec::new();
            let mut flags = Vec::new();
            for (key, value) in input.as_object().into_iter().flatten() {
                match value {
                    serde_json::Value::Number(n) => {
                        if let Some(n) = n.as_i64() {
                            numbers.push((key.clone(), RestrictedExpression::new_long(n)));
                        }
                    }
                    serde_json::Value::String(s) => {
                        strings.push((key.clone(), RestrictedExpression::new_string(s.clone())));
                    }
                    serde_json::Value::Bool(b) => {
                        flags.push((key.clone(), RestrictedExpression::new_bool(*b)));
                    }
                    _ => {}
                }
            }
            let mut context = Vec::with_capacity(3);
            for (name, kind, tags) in [
                ("numbers", &t.numbers, numbers),
                ("strings", &t.strings, strings),
                ("flags", &t.flags, flags),
            ] {
                let holder = uid(kind, "call");
                entities.push(
                    Entity::new_with_tags(holder.clone(), [], [], tags)
                        .map_err(|e| e.to_string())?,
                );
                context.push((
                    name.to_owned(),
                    RestrictedExpression::new_entity_uid(holder),
                ));
            }
            let context = Context::from_pairs(context).map_err(|e| e.to_string())?;
            let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
            let cedar_request = Request::new(principal, action, resource, context, None)
                .map_err(|e| e.to_string())?;
            let permitted_by = if grants.is_empty() {
                self.matching(&policies.permits, &cedar_request, &entities)
            } else {
                vec![]
            };
            let forbidden_by = self.matching(&policies.forbids, &cedar_request, &entities);
            Ok::<_, String>((permitted_by, forbidden_by))
        })();
        match evaluation {
            Ok((permitted_by, forbidden_by)) => verdict(grants, permitted_by, forbidden_by),
            Err(_) => AccessDecision {
                allowed: false,
                grants,
                permitted_by: vec![],
                forbidden_by: vec![],
                denied_because: Some("policy_evaluation_failed"),
            },
        }
    }

    /// The ids of the policies in `set` that match; an evaluation error
    /// counts as a match, so that a failing forbid still denies.
    fn matching(&self, set: &PolicySet, request: &Request, entities: &Entities) -> Vec<String> {
        let response = self.engine.is_authorized(request, set, entities);
        let mut ids: Vec<String> = response
            .diagnostics()
            .reason()
            .map(ToString::to_string)
            .collect();
        if response.diagnostics().errors().next().is_some()
            && !ids.iter().any(|i| i == "policy_error")
        {
            let forbids = set.policies().all(|p| p.effect() == Effect::Forbid);
            if forbids {
                ids.push("policy_error".to_owned());
            }
        }
        ids.sort();
        ids
    }

    fn request_entities(
        &self,
        request: &AccessRequest<'_>,
        kind: SubjectKind,
        resource_name: &str,
    ) -> Result<(Vec<Entity>, EntityUid, EntityUid, EntityUid), String> {
        let t = types();
        let org = request.org.as_str();
        let org_uid = uid(&t.org, org);
        let mut entities = Vec::with_capacity(6);
        entities.push(Entity::with_uid(org_uid.clone()));
        let mut resource_parents = HashSet::from([org_uid.clone()]);
        if let Some(space) = request.job_space {
            let space_uid = uid(&t.job_space, &scoped(org, space));
            entities.push(Entity::new_no_attrs(
                space_uid.clone(),
                HashSet::from([org_uid.clone()]),
            ));
            resource_parents.insert(space_uid);
        }
        let mut principal_parents = HashSet::from([org_uid.clone()]);
        for role in self
            .grants
            .roles_in_scope(request.org, request.subject, request.job_space)
        {
            let role_uid = uid(&t.role, &format!("{org}:{role}"));
            entities.push(Entity::new_no_attrs(
                role_uid.clone(),
                HashSet::from([org_uid.clone()]),
            ));
            principal_parents.insert(role_uid);
        }
        let kind_name = kind.as_str();
        let principal = uid(&t.subject, &format!("{org}:{}", request.subject));
        entities.push(
            Entity::new(
                principal.clone(),
                HashMap::from([(
                    "kind".to_owned(),
                    RestrictedExpression::new_string(kind_name.to_owned()),
                )]),
                principal_parents,
            )
            .map_err(|e| e.to_string())?,
        );
        let resource = uid(
            &t.resource,
            &format!("{org}:{}:{resource_name}", request.kind.as_str()),
        );
        entities.push(
            Entity::new(
                resource.clone(),
                HashMap::from([
                    (
                        "kind".to_owned(),
                        RestrictedExpression::new_string(request.kind.as_str().to_owned()),
                    ),
                    (
                        "name".to_owned(),
                        RestrictedExpression::new_string(resource_name.to_owned()),
                    ),
                ]),
                resource_parents,
            )
            .map_err(|e| e.to_string())?,
        );
        let action = uid(&t.action, request.action.as_str());
        Ok((entities, principal, action, resource))
    }
}

/// No policies, compiled.
static EMPTY_FAST: Vec<Compiled> = Vec::new();

fn scoped(org: &str, space: &JobSpaceName) -> String {
    format!("{org}:{space}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{BindingName, RoleName, Scoped, SubjectName};
    use crate::organization::DisplayName;
    use crate::role::{Action, BindingScope, BindingSpec, ResourceKind, RoleSpec, Rule};

    fn org(name: &str) -> OrgName {
        OrgName::parse(name).unwrap()
    }

    fn subject(authorizer: &mut Authorizer, org_name: &str, name: &str, kind: SubjectKind) {
        let id = Scoped::new(org(org_name), SubjectName::parse(name).unwrap());
        authorizer.apply_subject(
            &id,
            &SubjectEvent::Created {
                org: id.org.clone(),
                name: id.name.clone(),
                kind,
                display_name: DisplayName::parse("X").unwrap(),
            },
        );
    }

    fn admin_role(authorizer: &mut Authorizer, org_name: &str) {
        let id = Scoped::new(org(org_name), RoleName::parse("admin").unwrap());
        authorizer.apply_role(
            &id,
            &RoleEvent::Defined {
                org: id.org.clone(),
                name: id.name.clone(),
                spec: RoleSpec {
                    rules: vec![Rule {
                        actions: ["*".parse().unwrap()].into(),
                        resources: ["*".parse().unwrap()].into(),
                    }],
                    ..RoleSpec::default()
                },
            },
        );
    }

    fn bind(authorizer: &mut Authorizer, org_name: &str, who: &str) {
        let id = Scoped::new(
            org(org_name),
            BindingName::parse(format!("{who}-admin")).unwrap(),
        );
        authorizer.apply_binding(
            &id,
            &BindingEvent::Bound {
                org: id.org.clone(),
                name: id.name.clone(),
                spec: BindingSpec {
                    subject: SubjectName::parse(who).unwrap(),
                    role: RoleName::parse("admin").unwrap(),
                    scope: BindingScope::Org,
                },
            },
        );
    }

    fn publish(authorizer: &mut Authorizer, org_name: &str, name: &str, text: &str) {
        crate::policy::check_policy(text).unwrap();
        let id = Scoped::new(org(org_name), PolicyName::parse(name).unwrap());
        authorizer
            .apply_policy(
                &id,
                &PolicyEvent::Published {
                    org: id.org.clone(),
                    name: id.name.clone(),
                    version: 1,
                    text: text.to_owned(),
                },
            )
            .unwrap();
    }

    fn ask(
        authorizer: &Authorizer,
        org_name: &str,
        who: &str,
        action: &str,
        kind: ResourceKind,
    ) -> AccessDecision {
        let org = org(org_name);
        let subject = SubjectName::parse(who).unwrap();
        let action = Action::parse(action).unwrap();
        authorizer.decide(
            &AccessRequest {
                org: &org,
                subject: &subject,
                action: &action,
                kind,
                job_space: None,
            },
            "thing",
        )
    }

    #[test]
    fn calls_are_granted_by_tool_patterns_and_policies_see_the_version() {
        let mut authorizer = Authorizer::default();
        subject(&mut authorizer, "acme", "bot", SubjectKind::Agent);
        subject(&mut authorizer, "acme", "eve", SubjectKind::User);
        let id = Scoped::new(org("acme"), RoleName::parse("admin").unwrap());
        authorizer.apply_role(
            &id,
            &RoleEvent::Defined {
                org: id.org.clone(),
                name: id.name.clone(),
                spec: RoleSpec {
                    tools: ["text.*".parse().unwrap()].into(),
                    ..RoleSpec::default()
                },
            },
        );
        bind(&mut authorizer, "acme", "bot");
        let acme = org("acme");
        let bot = SubjectName::parse("bot").unwrap();
        let eve = SubjectName::parse("eve").unwrap();
        let decision = authorizer.decide_call(
            &acme,
            &bot,
            "text.count",
            "1",
            None,
            &serde_json::Value::Null,
        );
        assert!(decision.allowed, "{decision:?}");
        assert_eq!(decision.grants[0].role.as_str(), "admin");
        assert!(
            !authorizer
                .decide_call(
                    &acme,
                    &bot,
                    "payments.refund",
                    "1",
                    None,
                    &serde_json::Value::Null
                )
                .allowed
        );
        assert!(
            !authorizer
                .decide_call(
                    &acme,
                    &eve,
                    "text.count",
                    "1",
                    None,
                    &serde_json::Value::Null
                )
                .allowed
        );
        publish(
            &mut authorizer,
            "acme",
            "no-v2",
            "@id(\"no-v2\")\nforbid(principal, action == Charter::Action::\"call\", resource)\nwhen { resource.name == \"text.count\" && resource.version == \"2\" };\n@id(\"eve-calls\")\npermit(principal == Charter::Subject::\"acme:eve\", action == Charter::Action::\"call\", resource);",
        );
        assert!(
            authorizer
                .decide_call(
                    &acme,
                    &bot,
                    "text.count",
                    "1",
                    None,
                    &serde_json::Value::Null
                )
                .allowed
        );
        let decision = authorizer.decide_call(
            &acme,
            &bot,
            "text.count",
            "2",
            None,
            &serde_json::Value::Null,
        );
        assert!(!decision.allowed);
        assert_eq!(decision.forbidden_by.len(), 1, "{decision:?}");
        let decision = authorizer.decide_call(
            &acme,
            &eve,
            "text.count",
            "1",
            None,
            &serde_json::Value::Null,
        );
        assert!(decision.allowed, "{decision:?}");
        assert_eq!(decision.permitted_by.len(), 1);
    }

    #[test]
    fn call_policies_see_the_input() {
        let mut authorizer = Authorizer::default();
        subject(&mut authorizer, "acme", "bot", SubjectKind::Agent);
        let id = Scoped::new(org("acme"), RoleName::parse("admin").unwrap());
        authorizer.apply_role(
            &id,
            &RoleEvent::Defined {
                org: id.org.clone(),
                name: id.name.clone(),
                spec: RoleSpec {
                    tools: ["payments.*".parse().unwrap()].into(),
                    ..RoleSpec::default()
                },
            },
        );
        bind(&mut authorizer, "acme", "bot");
        publish(
            &mut authorizer,
            "acme",
            "big-refunds",
            "forbid(principal, action == Charter::Action::\"call\", resource)\nwhen { resource.name == \"payments.refund\" && context.numbers.hasTag(\"amount\") && context.numbers.getTag(\"amount\") > 1000 }\nunless { principal in Charter::Role::\"acme:finance\" };\nforbid(principal, action == Charter::Action::\"call\", resource)\nwhen { context.strings.hasTag(\"region\") && context.strings.getTag(\"region\") == \"embargoed\" };",
        );
        let acme = org("acme");
        let bot = SubjectName::parse("bot").unwrap();
        let ask = |input: serde_json::Value| {
            authorizer
                .decide_call(&acme, &bot, "payments.refund", "1", None, &input)
                .allowed
        };
        assert!(ask(serde_json::json!({"amount": 20})));
        assert!(!ask(serde_json::json!({"amount": 5000})));
        assert!(
            ask(serde_json::json!({"amount": "5000"})),
            "a string is no number"
        );
        assert!(!ask(
            serde_json::json!({"amount": 1, "region": "embargoed"})
        ));
        assert!(ask(serde_json::Value::Null));
    }

    fn world() -> Authorizer {
        let mut a = Authorizer::new();
        for o in ["acme", "beta"] {
            admin_role(&mut a, o);
            subject(&mut a, o, "alice", SubjectKind::User);
            subject(&mut a, o, "bot", SubjectKind::Agent);
            subject(&mut a, o, "carol", SubjectKind::User);
            bind(&mut a, o, "alice");
            bind(&mut a, o, "bot");
        }
        a
    }

    #[test]
    fn roles_allow_without_policies() {
        let a = world();
        let d = ask(&a, "acme", "alice", "delete", ResourceKind::Role);
        assert!(d.allowed);
        assert_eq!(d.grants.len(), 1);
        let d = ask(&a, "acme", "carol", "get", ResourceKind::Role);
        assert!(!d.allowed);
        assert_eq!(d.denied_because, Some("no_grant"));
        let d = ask(&a, "acme", "nobody", "get", ResourceKind::Role);
        assert_eq!(d.denied_because, Some("unknown_subject"));
    }

    #[test]
    fn a_forbid_wins_over_roles_in_its_org_only() {
        let mut a = world();
        publish(
            &mut a,
            "acme",
            "agents-never-delete",
            "forbid(principal, action == Charter::Action::\"delete\", resource) when { principal.kind == \"agent\" };",
        );
        let d = ask(&a, "acme", "bot", "delete", ResourceKind::Role);
        assert!(!d.allowed);
        assert_eq!(d.forbidden_by, vec!["agents-never-delete#0".to_owned()]);
        assert!(ask(&a, "acme", "bot", "update", ResourceKind::Role).allowed);
        assert!(ask(&a, "acme", "alice", "delete", ResourceKind::Role).allowed);
        // Another org's policies never apply.
        assert!(ask(&a, "beta", "bot", "delete", ResourceKind::Role).allowed);
        // Deleting the policy lifts the forbid.
        let id = Scoped::new(
            org("acme"),
            PolicyName::parse("agents-never-delete").unwrap(),
        );
        a.apply_policy(&id, &PolicyEvent::Deleted {}).unwrap();
        assert!(ask(&a, "acme", "bot", "delete", ResourceKind::Role).allowed);
    }

    #[test]
    fn a_permit_adds_access_and_roles_are_groups() {
        let mut a = world();
        publish(
            &mut a,
            "acme",
            "everyone-reads-orgs",
            "permit(principal, action == Charter::Action::\"get\", resource) when { resource.kind == \"Organization\" };",
        );
        let d = ask(&a, "acme", "carol", "get", ResourceKind::Organization);
        assert!(d.allowed);
        assert!(d.grants.is_empty());
        assert_eq!(d.permitted_by, vec!["everyone-reads-orgs#0".to_owned()]);
        assert!(!ask(&a, "acme", "carol", "get", ResourceKind::Role).allowed);
        publish(
            &mut a,
            "acme",
            "only-admins-approve",
            "forbid(principal, action == Charter::Action::\"approve\", resource) unless { principal in Charter::Role::\"acme:admin\" };",
        );
        assert!(ask(&a, "acme", "alice", "approve", ResourceKind::WorkflowRun).allowed);
        // Without any grant, nothing needs forbidding: denied for that.
        let d = ask(&a, "acme", "carol", "approve", ResourceKind::WorkflowRun);
        assert!(!d.allowed);
        assert_eq!(d.denied_because, Some("no_grant"));
        // With a grant that allows approving, the forbid decides.
        let approver = Scoped::new(org("acme"), RoleName::parse("approver").unwrap());
        a.apply_role(
            &approver,
            &RoleEvent::Defined {
                org: org("acme"),
                name: approver.name.clone(),
                spec: RoleSpec {
                    rules: vec![Rule {
                        actions: ["approve".parse().unwrap()].into(),
                        resources: ["*".parse().unwrap()].into(),
                    }],
                    ..RoleSpec::default()
                },
            },
        );
        let binding = Scoped::new(org("acme"), BindingName::parse("carol-approver").unwrap());
        a.apply_binding(
            &binding,
            &BindingEvent::Bound {
                org: org("acme"),
                name: binding.name.clone(),
                spec: BindingSpec {
                    subject: SubjectName::parse("carol").unwrap(),
                    role: approver.name.clone(),
                    scope: BindingScope::Org,
                },
            },
        );
        let d = ask(&a, "acme", "carol", "approve", ResourceKind::WorkflowRun);
        assert!(!d.allowed);
        assert_eq!(d.grants.len(), 1);
        assert_eq!(d.forbidden_by, vec!["only-admins-approve#0".to_owned()]);
    }

    #[test]
    fn a_policy_that_leaves_no_admin_is_caught() {
        let a = world();
        let id = |name: &str| Scoped::new(org("acme"), PolicyName::parse(name).unwrap());
        let freeze = r#"forbid(principal, action == Charter::Action::"update", resource);"#;
        let names = |v: Vec<SubjectName>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(a.admins_locked_out(&id("freeze"), Some(freeze))),
            ["alice", "bot"]
        );
        // Agents only: alice can still change policies.
        let agents = r#"forbid(principal, action == Charter::Action::"update", resource) when { principal.kind == "agent" };"#;
        assert!(a.admins_locked_out(&id("agents"), Some(agents)).is_empty());
        // A text that does not parse is for the aggregate to refuse.
        assert!(
            a.admins_locked_out(&id("freeze"), Some("not cedar"))
                .is_empty()
        );
        // Deleting the only forbid gives access back, it takes none.
        let mut frozen = world();
        publish(&mut frozen, "acme", "freeze", freeze);
        assert!(frozen.admins_locked_out(&id("freeze"), None).is_empty());
    }

    mod compiled_equals_engine {
        use super::*;
        use crate::policy::PolicyEvent;
        use proptest::prelude::*;

        const ACTIONS: [&str; 4] = ["get", "update", "delete", "run"];
        const KINDS: [&str; 4] = ["Role", "Job", "Policy", "Subject"];

        fn policy_text(template: usize, a: usize, k: usize, r: usize, sp: usize) -> String {
            let (action, kind) = (ACTIONS[a], KINDS[k]);
            match template {
                0 => format!(
                    "forbid(principal, action == Charter::Action::\"{action}\", resource) when {{ principal.kind == \"agent\" && resource.kind == \"{kind}\" }};"
                ),
                1 => format!(
                    "permit(principal, action == Charter::Action::\"{action}\", resource) when {{ resource.kind == \"{kind}\" || resource.name == \"r{r}\" }};"
                ),
                2 => format!(
                    "forbid(principal, action == Charter::Action::\"{action}\", resource in Charter::JobSpace::\"acme:space{sp}\") unless {{ principal in Charter::Role::\"acme:role{r}\" }};"
                ),
                3 => format!(
                    "permit(principal in Charter::Role::\"acme:role{r}\", action in [Charter::Action::\"{action}\", Charter::Action::\"get\"], resource in Charter::Org::\"acme\");"
                ),
                4 => format!(
                    "forbid(principal == Charter::Subject::\"acme:s{r}\", action, resource == Charter::Resource::\"acme:{kind}:r{sp}\");"
                ),
                5 => format!(
                    "permit(principal, action, resource) when {{ !(principal.kind == \"user\") && principal in [Charter::Role::\"acme:role{r}\", Charter::Role::\"other:role{r}\"] }};"
                ),
                // Outside the compiled subset: the whole set falls back.
                _ => format!(
                    "forbid(principal, action == Charter::Action::\"{action}\", resource) when {{ resource.name like \"r{r}*\" }};"
                ),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn same_decisions(
                policies in proptest::collection::vec((0usize..7, 0usize..4, 0usize..4, 0usize..3, 0usize..2), 0..8),
                bindings in proptest::collection::vec((0usize..3, 0usize..3, proptest::option::of(0usize..2)), 0..6),
                requests in proptest::collection::vec((0usize..3, 0usize..4, 0usize..4, 0usize..3, proptest::option::of(0usize..2)), 1..20),
            ) {
                let mut authorizer = Authorizer::new();
                for s in 0..3 {
                    subject(&mut authorizer, "acme", &format!("s{s}"), if s == 0 { SubjectKind::Agent } else { SubjectKind::User });
                }
                for (r, role_action) in ACTIONS.iter().take(3).enumerate() {
                    let id = Scoped::new(org("acme"), RoleName::parse(format!("role{r}")).unwrap());
                    let rules = vec![Rule {
                        actions: [role_action.parse().unwrap()].into(),
                        resources: ["*".parse().unwrap()].into(),
                    }];
                    authorizer.apply_role(&id, &RoleEvent::Defined { org: id.org.clone(), name: id.name.clone(), spec: RoleSpec { rules, ..RoleSpec::default() } });
                }
                for (i, (s, r, space)) in bindings.iter().enumerate() {
                    let id = Scoped::new(org("acme"), BindingName::parse(format!("b{i}")).unwrap());
                    let scope = match space {
                        Some(sp) => BindingScope::JobSpace(JobSpaceName::parse(format!("space{sp}")).unwrap()),
                        None => BindingScope::Org,
                    };
                    authorizer.apply_binding(&id, &BindingEvent::Bound { org: id.org.clone(), name: id.name.clone(), spec: BindingSpec {
                        subject: SubjectName::parse(format!("s{s}")).unwrap(),
                        role: RoleName::parse(format!("role{r}")).unwrap(),
                        scope,
                    }});
                }
                for (i, (t, a, k, r, sp)) in policies.iter().enumerate() {
                    let id = Scoped::new(org("acme"), PolicyName::parse(format!("p{i}")).unwrap());
                    authorizer.apply_policy(&id, &PolicyEvent::Published { org: id.org.clone(), name: id.name.clone(), version: 1, text: policy_text(*t, *a, *k, *r, *sp) }).unwrap();
                }
                for (s, a, k, name, space) in requests {
                    let subject = SubjectName::parse(format!("s{s}")).unwrap();
                    let action = Action::parse(ACTIONS[a]).unwrap();
                    let kind = ResourceKind::ALL.into_iter().find(|x| x.as_str() == KINDS[k]).unwrap();
                    let space = space.map(|sp| JobSpaceName::parse(format!("space{sp}")).unwrap());
                    let acme = org("acme");
                    let request = AccessRequest { org: &acme, subject: &subject, action: &action, kind, job_space: space.as_ref() };
                    let resource = format!("r{name}");
                    prop_assert_eq!(authorizer.decide(&request, &resource), authorizer.decide_by_engine(&request, &resource));
                }
            }
        }
    }
}
