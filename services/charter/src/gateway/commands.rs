//! Commands as clients send them (`POST /v1/commands`, `submitCommand`):
//! a kind, an org, an object name and a `{"type": …}` body per kind, turned
//! into the aggregates' own commands. Facts a command needs from elsewhere
//! (a binding's references, a new API key) are filled in by the gateway,
//! never taken from the client.

use std::collections::BTreeSet;

use charter_domain::Actor;
use charter_domain::ids::{BindingName, JobSpaceName, PolicyName, RoleName, Scoped, SubjectName};
use charter_domain::organization::{DisplayName, OrgCommand, Tags};
use charter_domain::policy::PolicyCommand;
use charter_domain::role::{BindingScope, BindingSpec, RoleCommand, RoleSpec, Rule, ToolPattern};
use charter_domain::subject::{ApiKeyId, SubjectCommand, SubjectKind};
use charter_domain::tool::{ToolCommand, ToolName, ToolSpec, ToolVersion};
use charter_domain::workflow::{WorkflowName, WorkflowSpec};
use charter_domain::{ErrorClass, OrgName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;

/// One command, addressed to one object.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandRequest {
    /// The command's id: the same id submitted again takes effect once and
    /// answers with the first outcome. Generated when omitted.
    #[serde(default)]
    pub command_id: Option<uuid::Uuid>,
    /// `Organization`, `JobSpace`, `Subject`, `Role`, `RoleBinding`,
    /// `Policy`, `Tool` or `Workflow`.
    pub kind: String,
    /// The org the object lives in (for `Organization`, the org itself).
    pub org: String,
    /// The object's name; omitted for `Organization`.
    #[serde(default)]
    pub name: Option<String>,
    /// The object's stream version the client last saw: when the object
    /// has changed since, the command is refused with 409.
    #[serde(default)]
    pub expected_version: Option<u64>,
    /// Go ahead even though the change would lock every admin out.
    #[serde(default)]
    pub force: bool,
    /// The command itself: `{"type": "<Command>", …fields}`; see the
    /// `commands` section of the API guide for each kind's commands.
    #[schema(value_type = Object)]
    pub command: Value,
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum OrgWire {
    Register {
        display_name: DisplayName,
        #[serde(default)]
        tags: Tags,
        #[serde(default)]
        parent: Option<OrgName>,
    },
    BeginProvisioning,
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
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum JobSpaceWire {
    Set { display_name: DisplayName },
    Remove,
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum SubjectWire {
    Create {
        kind: SubjectKind,
        display_name: DisplayName,
    },
    SetDisplayName {
        display_name: DisplayName,
    },
    Disable,
    Enable,
    /// The server makes the key and answers with it, once.
    IssueApiKey {
        key_id: ApiKeyId,
    },
    RevokeApiKey {
        key_id: ApiKeyId,
    },
    Delete,
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum RoleWire {
    Define {
        #[serde(default)]
        description: String,
        #[serde(default)]
        rules: Vec<Rule>,
        #[serde(default)]
        tools: BTreeSet<ToolPattern>,
    },
    Delete,
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum BindingWire {
    Bind {
        subject: SubjectName,
        role: RoleName,
        #[serde(default)]
        job_space: Option<JobSpaceName>,
    },
    Unbind,
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum PolicyWire {
    Publish { policy: String },
    Delete,
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum ToolWire {
    Register {
        spec: Box<ToolSpec>,
    },
    Approve {
        version: ToolVersion,
    },
    Revoke {
        version: ToolVersion,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(
    tag = "type",
    content = "data",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum WorkflowWire {
    Register { spec: Box<WorkflowSpec> },
}

/// A tool command before the gateway names who sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolIntent {
    Register(Box<ToolSpec>),
    Approve(ToolVersion),
    Revoke(ToolVersion, String),
}

impl ToolIntent {
    /// The aggregate's command, sent by `by`.
    pub fn command(&self, by: &Actor) -> ToolCommand {
        let by = by.clone();
        match self {
            Self::Register(spec) => ToolCommand::Register {
                spec: spec.clone(),
                by,
            },
            Self::Approve(version) => ToolCommand::Approve {
                version: version.clone(),
                by,
            },
            Self::Revoke(version, reason) => ToolCommand::Revoke {
                version: version.clone(),
                reason: reason.clone(),
                by,
            },
        }
    }
}

/// A subject command before the gateway fills in what only it may make.
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectIntent {
    Plain(SubjectCommand),
    IssueApiKey(ApiKeyId),
}

/// A binding command before the gateway looks up its references.
#[derive(Debug, Clone, PartialEq)]
pub enum BindingIntent {
    Bind(BindingSpec),
    Unbind,
}

/// A command addressed to its aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum Intent {
    Org(OrgName, OrgCommand),
    Subject(Scoped<SubjectName>, SubjectIntent),
    Role(Scoped<RoleName>, RoleCommand),
    Binding(Scoped<BindingName>, BindingIntent),
    Policy(Scoped<PolicyName>, PolicyCommand),
    Tool(Scoped<ToolName>, ToolIntent),
    /// Registers a workflow version (checked whole before it is stored).
    Workflow(Scoped<WorkflowName>, Box<WorkflowSpec>),
}

impl Intent {
    pub fn org(&self) -> &OrgName {
        match self {
            Self::Org(org, _) => org,
            Self::Subject(id, _) => &id.org,
            Self::Role(id, _) => &id.org,
            Self::Binding(id, _) => &id.org,
            Self::Policy(id, _) => &id.org,
            Self::Tool(id, _) => &id.org,
            Self::Workflow(id, _) => &id.org,
        }
    }

    /// The command's type as written by clients.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Org(_, c) => match c {
                OrgCommand::Register { .. } => "Register",
                OrgCommand::BeginProvisioning => "BeginProvisioning",
                OrgCommand::CompleteProvisioning => "CompleteProvisioning",
                OrgCommand::Rename { .. } => "Rename",
                OrgCommand::SetTags { .. } => "SetTags",
                OrgCommand::SetParent { .. } => "SetParent",
                OrgCommand::Suspend { .. } => "Suspend",
                OrgCommand::Resume => "Resume",
                OrgCommand::Archive => "Archive",
                OrgCommand::SetJobSpace { .. } => "SetJobSpace",
                OrgCommand::RemoveJobSpace { .. } => "RemoveJobSpace",
            },
            Self::Subject(_, c) => match c {
                SubjectIntent::IssueApiKey(_) => "IssueApiKey",
                SubjectIntent::Plain(c) => match c {
                    SubjectCommand::Create { .. } => "Create",
                    SubjectCommand::SetDisplayName { .. } => "SetDisplayName",
                    SubjectCommand::Disable => "Disable",
                    SubjectCommand::Enable => "Enable",
                    SubjectCommand::AddApiKey { .. } => "AddApiKey",
                    SubjectCommand::RevokeApiKey { .. } => "RevokeApiKey",
                    SubjectCommand::Delete => "Delete",
                },
            },
            Self::Role(_, c) => match c {
                RoleCommand::Define { .. } => "Define",
                RoleCommand::Delete => "Delete",
            },
            Self::Binding(_, c) => match c {
                BindingIntent::Bind(_) => "Bind",
                BindingIntent::Unbind => "Unbind",
            },
            Self::Policy(_, c) => match c {
                PolicyCommand::Publish { .. } => "Publish",
                PolicyCommand::Delete => "Delete",
            },
            Self::Tool(_, c) => match c {
                ToolIntent::Register(_) => "Register",
                ToolIntent::Approve(_) => "Approve",
                ToolIntent::Revoke(..) => "Revoke",
            },
            Self::Workflow(..) => "Register",
        }
    }
}

fn body<T: DeserializeOwned>(kind: &str, value: &Value) -> Result<T, ApiError> {
    let invalid = |path: &str, message: String| {
        ApiError::new(
            ErrorClass::InvalidInput,
            "invalid_command",
            format!("{kind} command, at `{path}`: {message}"),
        )
        .with_details(serde_json::json!({ "path": path }))
    };
    let Value::Object(mut fields) = value.clone() else {
        return Err(invalid("command", "must be an object with a `type`".into()));
    };
    let Some(Value::String(tag)) = fields.remove("type") else {
        return Err(invalid(
            "command.type",
            "missing; the command's name".into(),
        ));
    };
    // Written with the tag first, so that the decoder reads the fields in
    // one pass and knows the path of every problem.
    let text = if fields.is_empty() {
        serde_json::json!({ "type": tag }).to_string()
    } else {
        format!(
            "{{\"type\":{},\"data\":{}}}",
            Value::String(tag),
            Value::Object(fields)
        )
    };
    let mut decoder = serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(&mut decoder).map_err(|e| {
        let path = e.path().to_string();
        let path = match path.strip_prefix("data") {
            Some(rest) => format!("command{rest}"),
            None if path == "." => "command".to_owned(),
            None => format!("command.{path}"),
        };
        invalid(&path, e.into_inner().to_string())
    })
}

fn name<N: std::str::FromStr<Err = charter_domain::ids::InvalidName>>(
    name: Option<&str>,
) -> Result<N, ApiError> {
    let name = name.ok_or_else(|| {
        ApiError::new(
            ErrorClass::InvalidInput,
            "invalid_command",
            "`name` is required for this kind".into(),
        )
    })?;
    name.parse()
        .map_err(|e: charter_domain::ids::InvalidName| ApiError::invalid_name(&e))
}

/// Turns a request into an intent; every field is checked here.
pub fn parse(request: &CommandRequest) -> Result<Intent, ApiError> {
    let org = OrgName::parse(&request.org).map_err(|e| ApiError::invalid_name(&e))?;
    let name = request.name.as_deref();
    let kind = request.kind.as_str();
    Ok(match kind {
        "Organization" => {
            if name.is_some_and(|n| n != org.as_str()) {
                return Err(ApiError::new(
                    ErrorClass::InvalidInput,
                    "invalid_command",
                    "an organization's name is its org; leave `name` out".into(),
                ));
            }
            let command = match body::<OrgWire>(kind, &request.command)? {
                OrgWire::Register {
                    display_name,
                    tags,
                    parent,
                } => OrgCommand::Register {
                    display_name,
                    tags,
                    parent,
                },
                OrgWire::BeginProvisioning => OrgCommand::BeginProvisioning,
                OrgWire::CompleteProvisioning => OrgCommand::CompleteProvisioning,
                OrgWire::Rename { display_name } => OrgCommand::Rename { display_name },
                OrgWire::SetTags { tags } => OrgCommand::SetTags { tags },
                OrgWire::SetParent { parent } => OrgCommand::SetParent { parent },
                OrgWire::Suspend { reason } => OrgCommand::Suspend { reason },
                OrgWire::Resume => OrgCommand::Resume,
                OrgWire::Archive => OrgCommand::Archive,
            };
            Intent::Org(org, command)
        }
        "JobSpace" => {
            let space: JobSpaceName = self::name(name)?;
            let command = match body::<JobSpaceWire>(kind, &request.command)? {
                JobSpaceWire::Set { display_name } => OrgCommand::SetJobSpace {
                    name: space,
                    display_name,
                },
                JobSpaceWire::Remove => OrgCommand::RemoveJobSpace { name: space },
            };
            Intent::Org(org, command)
        }
        "Subject" => {
            let id = Scoped::new(org, self::name(name)?);
            let intent = match body::<SubjectWire>(kind, &request.command)? {
                SubjectWire::Create { kind, display_name } => {
                    SubjectIntent::Plain(SubjectCommand::Create { kind, display_name })
                }
                SubjectWire::SetDisplayName { display_name } => {
                    SubjectIntent::Plain(SubjectCommand::SetDisplayName { display_name })
                }
                SubjectWire::Disable => SubjectIntent::Plain(SubjectCommand::Disable),
                SubjectWire::Enable => SubjectIntent::Plain(SubjectCommand::Enable),
                SubjectWire::IssueApiKey { key_id } => SubjectIntent::IssueApiKey(key_id),
                SubjectWire::RevokeApiKey { key_id } => {
                    SubjectIntent::Plain(SubjectCommand::RevokeApiKey { key_id })
                }
                SubjectWire::Delete => SubjectIntent::Plain(SubjectCommand::Delete),
            };
            Intent::Subject(id, intent)
        }
        "Role" => {
            let id = Scoped::new(org, self::name(name)?);
            let command = match body::<RoleWire>(kind, &request.command)? {
                RoleWire::Define {
                    description,
                    rules,
                    tools,
                } => RoleCommand::Define {
                    spec: RoleSpec {
                        description,
                        rules,
                        tools,
                    },
                },
                RoleWire::Delete => RoleCommand::Delete,
            };
            Intent::Role(id, command)
        }
        "RoleBinding" => {
            let id = Scoped::new(org, self::name(name)?);
            let intent = match body::<BindingWire>(kind, &request.command)? {
                BindingWire::Bind {
                    subject,
                    role,
                    job_space,
                } => BindingIntent::Bind(BindingSpec {
                    subject,
                    role,
                    scope: match job_space {
                        Some(space) => BindingScope::JobSpace(space),
                        None => BindingScope::Org,
                    },
                }),
                BindingWire::Unbind => BindingIntent::Unbind,
            };
            Intent::Binding(id, intent)
        }
        "Policy" => {
            let id = Scoped::new(org, self::name(name)?);
            let command = match body::<PolicyWire>(kind, &request.command)? {
                PolicyWire::Publish { policy } => PolicyCommand::Publish { text: policy },
                PolicyWire::Delete => PolicyCommand::Delete,
            };
            Intent::Policy(id, command)
        }
        "Tool" => {
            let id = Scoped::new(org, self::name(name)?);
            let intent = match body::<ToolWire>(kind, &request.command)? {
                ToolWire::Register { spec } => ToolIntent::Register(spec),
                ToolWire::Approve { version } => ToolIntent::Approve(version),
                ToolWire::Revoke { version, reason } => ToolIntent::Revoke(version, reason),
            };
            Intent::Tool(id, intent)
        }
        "Workflow" => {
            let id = Scoped::new(org, self::name(name)?);
            let WorkflowWire::Register { spec } = body::<WorkflowWire>(kind, &request.command)?;
            Intent::Workflow(id, spec)
        }
        other => {
            return Err(ApiError::new(
                ErrorClass::InvalidInput,
                "unknown_kind",
                format!(
                    "unknown kind `{}` (known: Organization, JobSpace, Subject, Role, RoleBinding, Policy, Tool, Workflow)",
                    other.chars().take(60).collect::<String>()
                ),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(kind: &str, name: Option<&str>, command: Value) -> CommandRequest {
        CommandRequest {
            command_id: None,
            kind: kind.into(),
            org: "acme".into(),
            name: name.map(str::to_owned),
            expected_version: None,
            force: false,
            command,
        }
    }

    #[test]
    fn every_kind_parses() {
        let cases = [
            request(
                "Organization",
                None,
                json!({"type": "Register", "displayName": "Acme"}),
            ),
            request("Organization", None, json!({"type": "Archive"})),
            request(
                "JobSpace",
                Some("research"),
                json!({"type": "Set", "displayName": "R&D"}),
            ),
            request(
                "Subject",
                Some("bob"),
                json!({"type": "Create", "kind": "agent", "displayName": "Bob"}),
            ),
            request(
                "Subject",
                Some("bob"),
                json!({"type": "IssueApiKey", "keyId": "cikey001"}),
            ),
            request(
                "Role",
                Some("viewer"),
                json!({"type": "Define", "rules": [{"actions": ["get"], "resources": ["*"]}]}),
            ),
            request(
                "RoleBinding",
                Some("b"),
                json!({"type": "Bind", "subject": "bob", "role": "viewer"}),
            ),
            request("Policy", Some("p"), json!({"type": "Delete"})),
            request(
                "Tool",
                Some("text.count"),
                json!({"type": "Register", "spec": {"version": "1", "runtime": {"builtin": "noop"}}}),
            ),
            request(
                "Tool",
                Some("text.count"),
                json!({"type": "Approve", "version": "1"}),
            ),
        ];
        for case in &cases {
            parse(case).unwrap_or_else(|e| panic!("{case:?}: {e:?}"));
        }
    }

    #[test]
    fn bad_commands_say_where() {
        let error = parse(&request(
            "Organization",
            None,
            json!({"type": "Register", "displayName": "Acme", "parnet": "x"}),
        ))
        .unwrap_err();
        assert_eq!(error.code, "invalid_command");
        let error = parse(&request(
            "Role",
            Some("r"),
            json!({"type": "Define", "rules": [{"actions": [1]}]}),
        ))
        .unwrap_err();
        assert!(
            error.message.contains("command.rules[0].actions"),
            "{}",
            error.message
        );
        let error = parse(&request("Widget", Some("w"), json!({"type": "Make"}))).unwrap_err();
        assert_eq!(error.code, "unknown_kind");
        let error = parse(&request("Role", None, json!({"type": "Delete"}))).unwrap_err();
        assert_eq!(error.code, "invalid_command");
        let error = parse(&request(
            "Role",
            Some("Bad Name"),
            json!({"type": "Delete"}),
        ))
        .unwrap_err();
        assert_eq!(error.code, "invalid_name");
    }
}
