//! `charter bench policy`: the whole access decision the gateway takes, from
//! a subject, an action and a resource given as strings to allow/deny with
//! its reasons, over a synthetic population of orgs, roles, bindings and
//! Cedar policies kept in the same structures events build.

use std::time::Instant;

use charter_domain::OrgName;
use charter_domain::access::AccessRequest;
use charter_domain::authorize::Authorizer;
use charter_domain::ids::{BindingName, JobSpaceName, PolicyName, RoleName, Scoped, SubjectName};
use charter_domain::organization::DisplayName;
use charter_domain::policy::PolicyEvent;
use charter_domain::role::{
    Action, BindingEvent, BindingScope, BindingSpec, ResourceKind, RoleEvent, RoleSpec, Rule,
};
use charter_domain::subject::{SubjectEvent, SubjectKind};
use serde_json::json;

/// A small deterministic generator, so that every run measures the same
/// population.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ACTIONS: [&str; 6] = ["get", "list", "update", "delete", "approve", "run"];
const ORGS: usize = 100;
const ROLES_PER_ORG: usize = 20;
const SPACES_PER_ORG: usize = 5;

fn name<T: std::str::FromStr>(text: String) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    text.parse::<T>()
        .map_err(|e| anyhow::anyhow!("{text}: {e}"))
}

/// Builds the population: `bindings` role bindings and `policies` Cedar
/// policies spread over 100 orgs.
fn population(
    policies: usize,
    bindings: usize,
    rng: &mut Lcg,
) -> anyhow::Result<(Authorizer, usize)> {
    let mut authorizer = Authorizer::new();
    let subjects_per_org = (bindings / ORGS / 2).max(1);
    for o in 0..ORGS {
        let org: OrgName = name(format!("org{o}"))?;
        for r in 0..ROLES_PER_ORG {
            let id = Scoped::new(org.clone(), name::<RoleName>(format!("role{r}"))?);
            let rules = (0..3)
                .map(|_| -> anyhow::Result<Rule> {
                    let action = if rng.below(5) == 0 {
                        "*"
                    } else {
                        ACTIONS[rng.below(ACTIONS.len())]
                    };
                    let kind = if rng.below(5) == 0 {
                        "*"
                    } else {
                        ResourceKind::ALL[rng.below(ResourceKind::ALL.len())].as_str()
                    };
                    Ok(Rule {
                        actions: [name(action.to_owned())?].into(),
                        resources: [name(kind.to_owned())?].into(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            authorizer.apply_role(
                &id,
                &RoleEvent::Defined {
                    org: org.clone(),
                    name: id.name.clone(),
                    spec: RoleSpec {
                        rules,
                        ..RoleSpec::default()
                    },
                },
            );
        }
        for s in 0..subjects_per_org {
            let id = Scoped::new(org.clone(), name::<SubjectName>(format!("s{s}"))?);
            authorizer.apply_subject(
                &id,
                &SubjectEvent::Created {
                    org: org.clone(),
                    name: id.name.clone(),
                    kind: if s % 3 == 0 {
                        SubjectKind::Agent
                    } else {
                        SubjectKind::User
                    },
                    display_name: DisplayName::parse(format!("Subject {s}"))?,
                },
            );
        }
    }
    for b in 0..bindings {
        let org: OrgName = name(format!("org{}", b % ORGS))?;
        let id = Scoped::new(org.clone(), name::<BindingName>(format!("b{b}"))?);
        let scope = if rng.below(3) == 0 {
            BindingScope::JobSpace(name(format!("space{}", rng.below(SPACES_PER_ORG)))?)
        } else {
            BindingScope::Org
        };
        authorizer.apply_binding(
            &id,
            &BindingEvent::Bound {
                org,
                name: id.name.clone(),
                spec: BindingSpec {
                    subject: name(format!("s{}", rng.below(subjects_per_org)))?,
                    role: name(format!("role{}", rng.below(ROLES_PER_ORG)))?,
                    scope,
                },
            },
        );
    }
    for p in 0..policies {
        let org: OrgName = name(format!("org{}", p % ORGS))?;
        let action = ACTIONS[rng.below(ACTIONS.len())];
        let kind = ResourceKind::ALL[rng.below(ResourceKind::ALL.len())].as_str();
        let text = match rng.below(3) {
            0 => format!(
                "forbid(principal, action == Charter::Action::\"{action}\", resource) when {{ principal.kind == \"agent\" && resource.kind == \"{kind}\" }};"
            ),
            1 => format!(
                "permit(principal, action == Charter::Action::\"{action}\", resource) when {{ resource.kind == \"{kind}\" }};"
            ),
            _ => format!(
                "forbid(principal, action == Charter::Action::\"{action}\", resource in Charter::JobSpace::\"{org}:space{}\") unless {{ principal in Charter::Role::\"{org}:role{}\" }};",
                rng.below(SPACES_PER_ORG),
                rng.below(ROLES_PER_ORG)
            ),
        };
        charter_domain::policy::check_policy(&text)
            .map_err(|problems| anyhow::anyhow!("generated policy is invalid: {problems:?}"))?;
        let id = Scoped::new(org.clone(), name::<PolicyName>(format!("p{p}"))?);
        authorizer
            .apply_policy(
                &id,
                &PolicyEvent::Published {
                    org,
                    name: id.name.clone(),
                    version: 1,
                    text,
                },
            )
            .map_err(|e| anyhow::anyhow!(e))?;
    }
    Ok((authorizer, subjects_per_org))
}

/// Runs `decisions` decisions and returns the figures.
pub fn run(
    policies: usize,
    bindings: usize,
    decisions: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut rng = Lcg(0x00C0_FFEE);
    let (authorizer, subjects_per_org) = population(policies, bindings, &mut rng)?;
    // Requests as the gateway receives them: strings.
    let requests: Vec<(String, String, String, usize, Option<String>, String)> = (0..decisions)
        .map(|i| {
            let org = rng.below(ORGS);
            (
                format!("org{org}"),
                format!("s{}", rng.below(subjects_per_org)),
                ACTIONS[rng.below(ACTIONS.len())].to_owned(),
                rng.below(ResourceKind::ALL.len()),
                (rng.below(2) == 0).then(|| format!("space{}", rng.below(SPACES_PER_ORG))),
                format!("r{i}"),
            )
        })
        .collect();
    let mut latencies = Vec::with_capacity(decisions);
    let mut allowed = 0usize;
    let began = Instant::now();
    for (org, subject, action, kind, space, resource) in &requests {
        let started = Instant::now();
        let org = OrgName::parse(org.as_str())?;
        let subject = SubjectName::parse(subject.as_str())?;
        let action = Action::parse(action)?;
        let space = space.as_deref().map(JobSpaceName::parse).transpose()?;
        let decision = authorizer.decide(
            &AccessRequest {
                org: &org,
                subject: &subject,
                action: &action,
                kind: ResourceKind::ALL[*kind],
                job_space: space.as_ref(),
            },
            resource,
        );
        latencies.push(started.elapsed());
        allowed += usize::from(decision.allowed);
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        let at = latencies[index.clamp(1, latencies.len()) - 1];
        (at.as_secs_f64() * 1e6 * 100.0).round() / 100.0
    };
    eprintln!(
        "{} orgs, {policies} policies, {bindings} bindings; {allowed} of {decisions} allowed",
        ORGS
    );
    Ok(json!({
        "decisions": decisions,
        "decisions_per_sec": (decisions as f64 / elapsed).round(),
        "p50_us": percentile(50.0),
        "p99_us": percentile(99.0),
    }))
}
