//! Cedar policies compiled into plain checks over a request's facts.
//!
//! Most org policies say simple things: match on the principal's kind or
//! roles, on the resource's kind, name or job space. Evaluating those with
//! the Cedar engine means building an entity store for every request,
//! which costs more than the decision. A policy whose scope and conditions
//! use only those facts (`==` on the attributes Charter's schema defines,
//! `in` on orgs, roles and job spaces, `&&`, `||`, `!`, `true`/`false`) is
//! compiled here from Cedar's own JSON form of the policy; the answer is
//! the same the engine would give (a property test holds the two side by
//! side). A set holding any policy outside that subset is left to the
//! engine, whole.

use serde_json::Value;

/// What a compiled policy can look at.
pub(crate) struct Facts<'a> {
    pub org: &'a str,
    pub subject: &'a str,
    pub subject_kind: &'a str,
    /// The roles bound to the subject that apply here.
    pub roles: &'a [&'a str],
    pub resource_kind: &'a str,
    pub resource_name: &'a str,
    pub job_space: Option<&'a str>,
}

/// An entity a policy names.
#[derive(Debug, Clone, PartialEq)]
enum Entity {
    Org(String),
    /// `org:role`
    Role(String),
    /// `org:space`
    JobSpace(String),
    /// `org:subject`
    Subject(String),
    /// `org:Kind:name`
    Resource(String),
    /// Any other type (never matches a Charter principal or resource).
    Other,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Bool(bool),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    /// `principal.kind == "…"`
    PrincipalKind(String),
    /// `resource.kind == "…"`
    ResourceKind(String),
    /// `resource.name == "…"`
    ResourceName(String),
    /// `principal in E` / `principal in [E, …]`
    PrincipalIn(Vec<Entity>),
    /// `resource in E` / `resource in [E, …]`
    ResourceIn(Vec<Entity>),
    PrincipalIs(Entity),
    ResourceIs(Entity),
}

/// One compiled policy.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Compiled {
    /// `name#index`, as decisions report it.
    pub id: String,
    condition: Expr,
}

fn entity(value: &Value) -> Option<Entity> {
    let value = value.get("__entity").unwrap_or(value);
    let kind = value.get("type")?.as_str()?;
    let id = value.get("id")?.as_str()?.to_owned();
    Some(match kind {
        "Charter::Org" => Entity::Org(id),
        "Charter::Role" => Entity::Role(id),
        "Charter::JobSpace" => Entity::JobSpace(id),
        "Charter::Subject" => Entity::Subject(id),
        "Charter::Resource" => Entity::Resource(id),
        _ => Entity::Other,
    })
}

fn entities(value: &Value) -> Option<Vec<Entity>> {
    match value.get("Set") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| entity(item.get("Value").unwrap_or(item)))
            .collect(),
        _ => entity(value).map(|e| vec![e]),
    }
}

fn var(value: &Value) -> Option<&str> {
    value.get("Var")?.as_str()
}

fn string(value: &Value) -> Option<String> {
    value.get("Value")?.as_str().map(str::to_owned)
}

fn expr(value: &Value) -> Option<Expr> {
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    let (op, body) = object.iter().next()?;
    let pair = || Some((body.get("left")?, body.get("right")?));
    Some(match op.as_str() {
        "Value" => Expr::Bool(body.as_bool()?),
        "&&" => {
            let (l, r) = pair()?;
            Expr::And(Box::new(expr(l)?), Box::new(expr(r)?))
        }
        "||" => {
            let (l, r) = pair()?;
            Expr::Or(Box::new(expr(l)?), Box::new(expr(r)?))
        }
        "!" => Expr::Not(Box::new(expr(body.get("arg")?)?)),
        "==" => {
            let (l, r) = pair()?;
            // `principal == E`, `resource == E`
            if let Some(v) = var(l) {
                let e = entity(r.get("Value")?)?;
                return Some(match v {
                    "principal" => Expr::PrincipalIs(e),
                    "resource" => Expr::ResourceIs(e),
                    _ => return None,
                });
            }
            let attr = l.get(".")?;
            let on = var(attr.get("left")?)?;
            let name = attr.get("attr")?.as_str()?;
            let literal = string(r)?;
            match (on, name) {
                ("principal", "kind") => Expr::PrincipalKind(literal),
                ("resource", "kind") => Expr::ResourceKind(literal),
                ("resource", "name") => Expr::ResourceName(literal),
                _ => return None,
            }
        }
        "in" => {
            let (l, r) = pair()?;
            let targets = entities(r.get("Value").unwrap_or(r))?;
            match var(l)? {
                "principal" => Expr::PrincipalIn(targets),
                "resource" => Expr::ResourceIn(targets),
                _ => return None,
            }
        }
        _ => return None,
    })
}

fn scope(value: &Value, var: &str) -> Option<Expr> {
    let op = value.get("op")?.as_str()?;
    let single = |e: Entity| match var {
        "principal" => Expr::PrincipalIs(e),
        _ => Expr::ResourceIs(e),
    };
    Some(match op {
        "All" => Expr::Bool(true),
        "==" => single(entity(value.get("entity")?)?),
        "in" => {
            let e = entity(value.get("entity")?)?;
            match var {
                "principal" => Expr::PrincipalIn(vec![e]),
                _ => Expr::ResourceIn(vec![e]),
            }
        }
        _ => return None,
    })
}

/// Compiles one policy (Cedar's JSON form), or `None` when it uses
/// anything outside the subset.
pub(crate) fn compile(id: String, json: &Value) -> Option<Compiled> {
    let mut condition = Expr::And(
        Box::new(scope(json.get("principal")?, "principal")?),
        Box::new(scope(json.get("resource")?, "resource")?),
    );
    for clause in json.get("conditions")?.as_array()? {
        let body = expr(clause.get("body")?)?;
        let body = match clause.get("kind")?.as_str()? {
            "when" => body,
            "unless" => Expr::Not(Box::new(body)),
            _ => return None,
        };
        condition = Expr::And(Box::new(condition), Box::new(body));
    }
    Some(Compiled { id, condition })
}

fn principal_in(e: &Entity, f: &Facts<'_>) -> bool {
    match e {
        Entity::Org(org) => org == f.org,
        Entity::Role(id) => id
            .split_once(':')
            .is_some_and(|(org, role)| org == f.org && f.roles.contains(&role)),
        Entity::Subject(id) => principal_is(e, f) && !id.is_empty(),
        _ => false,
    }
}

fn principal_is(e: &Entity, f: &Facts<'_>) -> bool {
    match e {
        Entity::Subject(id) => id
            .split_once(':')
            .is_some_and(|(org, name)| org == f.org && name == f.subject),
        _ => false,
    }
}

fn resource_is(e: &Entity, f: &Facts<'_>) -> bool {
    match e {
        Entity::Resource(id) => {
            let mut parts = id.splitn(3, ':');
            parts.next() == Some(f.org)
                && parts.next() == Some(f.resource_kind)
                && parts.next() == Some(f.resource_name)
        }
        _ => false,
    }
}

fn resource_in(e: &Entity, f: &Facts<'_>) -> bool {
    match e {
        Entity::Org(org) => org == f.org,
        Entity::JobSpace(id) => id
            .split_once(':')
            .is_some_and(|(org, space)| org == f.org && f.job_space == Some(space)),
        Entity::Resource(_) => resource_is(e, f),
        _ => false,
    }
}

fn eval(expr: &Expr, f: &Facts<'_>) -> bool {
    match expr {
        Expr::Bool(b) => *b,
        Expr::And(l, r) => eval(l, f) && eval(r, f),
        Expr::Or(l, r) => eval(l, f) || eval(r, f),
        Expr::Not(e) => !eval(e, f),
        Expr::PrincipalKind(k) => f.subject_kind == k,
        Expr::ResourceKind(k) => f.resource_kind == k,
        Expr::ResourceName(n) => f.resource_name == n,
        Expr::PrincipalIn(es) => es.iter().any(|e| principal_in(e, f)),
        Expr::ResourceIn(es) => es.iter().any(|e| resource_in(e, f)),
        Expr::PrincipalIs(e) => principal_is(e, f),
        Expr::ResourceIs(e) => resource_is(e, f),
    }
}

impl Compiled {
    pub(crate) fn matches(&self, facts: &Facts<'_>) -> bool {
        eval(&self.condition, facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn compiled(text: &str) -> Option<Compiled> {
        let policy = cedar_policy::Policy::from_str(text).unwrap();
        compile("p#0".into(), &policy.to_json().unwrap())
    }

    #[test]
    fn the_subset_compiles_and_the_rest_does_not() {
        assert!(compiled(r#"forbid(principal, action, resource) when { principal.kind == "agent" && resource.kind == "Role" };"#).is_some());
        assert!(compiled(r#"permit(principal in Charter::Role::"a:b", action, resource in Charter::JobSpace::"a:s") unless { resource.name == "x" || !(principal.kind == "user") };"#).is_some());
        assert!(compiled(r#"permit(principal, action, resource) when { principal in [Charter::Role::"a:b", Charter::Role::"a:c"] };"#).is_some());
        assert!(
            compiled(r#"permit(principal, action, resource) when { resource.name like "x*" };"#)
                .is_none()
        );
        assert!(
            compiled(r#"permit(principal, action, resource) when { resource has name };"#)
                .is_none()
        );
        assert!(compiled(r#"permit(principal is Charter::Subject, action, resource);"#).is_none());
    }
}
