//! Org policies: named, versioned Cedar policy sets that can add `permit`
//! and `forbid` rules on top of what roles grant.
//!
//! A policy is accepted only if it parses and validates against the Cedar
//! schema Charter generates from its own model ([`cedar_schema_text`]); a
//! rejected policy reports each problem with its line and column, and the
//! previous version stays in force. Parsing and validation are pure, so
//! they live here with the aggregate.

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::OnceLock;

use cedar_policy::{PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::ids::{PolicyName, Scoped};
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode, OrgName};

/// The actions Charter asks policies about.
pub const ACTIONS: [&str; 10] = [
    "get", "list", "create", "update", "delete", "apply", "approve", "run", "cancel", "call",
];

/// The Cedar schema of Charter's model, in Cedar's schema syntax.
///
/// Principals are subjects, members of their org and of the roles bound to
/// them; resources carry their kind and name and sit in their org and job
/// space; tools are called with the `call` action, whose context carries
/// the call's input: its top-level whole numbers as the tags of
/// `context.numbers`, its strings as those of `context.strings` and its
/// booleans as those of `context.flags`, so a policy can say
/// `context.numbers.hasTag("amount") && context.numbers.getTag("amount") > 1000`.
pub fn cedar_schema_text() -> String {
    let mut text = String::from(
        "namespace Charter {\n  entity Org;\n  entity JobSpace in [Org];\n  entity Role in [Org];\n  entity Subject in [Org, Role] { kind: String };\n  entity Resource in [Org, JobSpace] { kind: String, name: String };\n  entity Tool in [Org] { name: String, version: String };\n  entity Numbers tags Long;\n  entity Strings tags String;\n  entity Flags tags Bool;\n",
    );
    let resource_actions: Vec<String> = ACTIONS
        .iter()
        .filter(|a| **a != "call")
        .map(|a| format!("\"{a}\""))
        .collect();
    let _ = writeln!(
        text,
        "  action {} appliesTo {{ principal: [Subject], resource: [Resource], context: {{}} }};",
        resource_actions.join(", ")
    );
    text.push_str(
        "  action \"call\" appliesTo { principal: [Subject], resource: [Tool], context: { numbers: Numbers, strings: Strings, flags: Flags } };\n}\n",
    );
    text
}

fn schema() -> Result<&'static Schema, String> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| Schema::from_str(&cedar_schema_text()).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// One problem in a policy text, located.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyProblem {
    pub message: String,
    /// 1-based; 0 when the engine gave no location.
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "line {}, column {}: {}",
                self.line, self.column, self.message
            )
        } else {
            f.write_str(&self.message)
        }
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn problems_of(text: &str, diagnostic: &dyn Diagnostic, message: String) -> PolicyProblem {
    let offset = diagnostic
        .labels()
        .and_then(|mut labels| labels.next())
        .map(|label| label.offset());
    let (line, column) = offset.map_or((0, 0), |o| line_column(text, o));
    let help = diagnostic
        .help()
        .map(|h| format!(" ({h})"))
        .unwrap_or_default();
    PolicyProblem {
        message: format!("{message}{help}"),
        line,
        column,
    }
}

/// Parses and validates a policy text against Charter's schema.
pub fn check_policy(text: &str) -> Result<PolicySet, Vec<PolicyProblem>> {
    let set = PolicySet::from_str(text).map_err(|errors| {
        errors
            .iter()
            .map(|e| problems_of(text, e, e.to_string()))
            .collect::<Vec<_>>()
    })?;
    if set.is_empty() {
        return Err(vec![PolicyProblem {
            message: "holds no policy".into(),
            line: 0,
            column: 0,
        }]);
    }
    let schema = schema().map_err(|message| {
        vec![PolicyProblem {
            message: format!("Charter's schema is invalid: {message}"),
            line: 0,
            column: 0,
        }]
    })?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    let problems: Vec<PolicyProblem> = result
        .validation_errors()
        .map(|e| problems_of(text, e, e.to_string()))
        .collect();
    if problems.is_empty() {
        Ok(set)
    } else {
        Err(problems)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyState {
    pub org: OrgName,
    pub name: PolicyName,
    pub version: u32,
    pub text: String,
}

/// The Policy aggregate; `None` until published, and again once deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy(pub Option<PolicyState>);

pub type PolicyId = Scoped<PolicyName>;

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyCommand {
    /// Publishes a new version (the first one creates the policy).
    Publish {
        text: String,
    },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum PolicyEvent {
    Published {
        org: OrgName,
        name: PolicyName,
        version: u32,
        text: String,
    },
    Deleted {},
}

impl DomainEvent for PolicyEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Published { .. } => "Published",
            Self::Deleted {} => "Deleted",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyRejection {
    #[error("policy does not exist")]
    NotFound,
    #[error("the policy is not valid: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<PolicyProblem>),
    #[error("a policy holds at most {} bytes", crate::manifest::MAX_POLICY_BYTES)]
    TooLarge,
}

impl ErrorCode for PolicyRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "policy_not_found",
            Self::Invalid(_) => "invalid_policy",
            Self::TooLarge => "policy_too_large",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound => ErrorClass::NotFound,
            Self::Invalid(_) => ErrorClass::InvalidInput,
            Self::TooLarge => ErrorClass::TooLarge,
        }
    }
}

impl Aggregate for Policy {
    const KIND: &'static str = "policy";
    type Id = PolicyId;
    type Command = PolicyCommand;
    type Event = PolicyEvent;
    type Rejection = PolicyRejection;

    fn decide(
        &self,
        id: &PolicyId,
        command: &PolicyCommand,
    ) -> Result<Vec<PolicyEvent>, PolicyRejection> {
        match command {
            PolicyCommand::Publish { text } => {
                if text.len() > crate::manifest::MAX_POLICY_BYTES {
                    return Err(PolicyRejection::TooLarge);
                }
                if self.0.as_ref().is_some_and(|state| state.text == *text) {
                    return Ok(vec![]);
                }
                check_policy(text).map_err(PolicyRejection::Invalid)?;
                Ok(vec![PolicyEvent::Published {
                    org: id.org.clone(),
                    name: id.name.clone(),
                    version: self.0.as_ref().map_or(1, |state| state.version + 1),
                    text: text.clone(),
                }])
            }
            PolicyCommand::Delete => match self.0 {
                Some(_) => Ok(vec![PolicyEvent::Deleted {}]),
                None => Err(PolicyRejection::NotFound),
            },
        }
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &PolicyEvent) {
        match event {
            PolicyEvent::Published {
                org,
                name,
                version,
                text,
            } => {
                self.0 = Some(PolicyState {
                    org: org.clone(),
                    name: name.clone(),
                    version: *version,
                    text: text.clone(),
                });
            }
            PolicyEvent::Deleted {} => self.0 = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::given;

    fn id() -> PolicyId {
        Scoped::new(
            OrgName::parse("acme").unwrap(),
            PolicyName::parse("guard").unwrap(),
        )
    }

    const AGENTS_NEVER_DELETE: &str = "// Agents never delete anything.\nforbid(principal, action == Charter::Action::\"delete\", resource)\nwhen { principal.kind == \"agent\" };\n";

    #[test]
    fn the_generated_schema_is_valid() {
        schema().unwrap();
        assert!(cedar_schema_text().contains("\"approve\""));
    }

    #[test]
    fn valid_policies_are_published_with_versions() {
        let first = PolicyEvent::Published {
            org: id().org,
            name: id().name,
            version: 1,
            text: AGENTS_NEVER_DELETE.into(),
        };
        given::<Policy>(&id(), [])
            .when(PolicyCommand::Publish {
                text: AGENTS_NEVER_DELETE.into(),
            })
            .then_expect([first.clone()]);
        given::<Policy>(&id(), [first.clone()])
            .when(PolicyCommand::Publish {
                text: AGENTS_NEVER_DELETE.into(),
            })
            .then_nothing();
        let second = "permit(principal, action == Charter::Action::\"get\", resource)\nwhen { resource.kind == \"Organization\" };";
        given::<Policy>(&id(), [first])
            .when(PolicyCommand::Publish {
                text: second.into(),
            })
            .then_expect([PolicyEvent::Published {
                org: id().org,
                name: id().name,
                version: 2,
                text: second.into(),
            }]);
    }

    #[test]
    fn syntax_errors_are_located() {
        let text = "permit(principal, action, resource)\nwhen { principal.kind == };";
        let problems = check_policy(text).unwrap_err();
        assert!(!problems.is_empty());
        assert_eq!(problems[0].line, 2, "{problems:?}");
        assert!(problems[0].column > 1, "{problems:?}");
    }

    #[test]
    fn policies_that_break_the_schema_are_rejected() {
        // An attribute subjects do not have.
        let text =
            "permit(principal, action, resource)\nwhen { principal.department == \"finance\" };";
        let problems = check_policy(text).unwrap_err();
        assert!(problems[0].message.contains("department"), "{problems:?}");
        assert_eq!(problems[0].line, 2, "{problems:?}");
        // An action Charter does not know.
        let text = "permit(principal, action == Charter::Action::\"explode\", resource);";
        assert!(check_policy(text).is_err());
        // Nothing at all.
        assert!(check_policy("// just a comment\n").is_err());
    }

    #[test]
    fn a_rejected_version_leaves_the_previous_one() {
        let first = PolicyEvent::Published {
            org: id().org,
            name: id().name,
            version: 1,
            text: AGENTS_NEVER_DELETE.into(),
        };
        given::<Policy>(&id(), [first])
            .when(PolicyCommand::Publish {
                text: "permit(".into(),
            })
            .then_reject_code("invalid_policy");
    }
}
