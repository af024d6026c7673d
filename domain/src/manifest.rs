//! Manifests: how people declare organizations and who may do what in them.
//!
//! A manifest is a Kubernetes-style object (`apiVersion: charter.dev/v1`,
//! `kind`, `metadata.name`, `metadata.org`, `spec`). This module turns
//! already-decoded documents (YAML and JSON are read at the edge) into typed
//! manifests, reporting every problem at once with its document and field
//! path, and plans the commands that bring an aggregate to what a manifest
//! declares: none when it already matches, so applying twice changes
//! nothing.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::Actor;
use crate::ids::{BindingName, JobSpaceName, PolicyName, RoleName, SubjectName};
use crate::organization::{DisplayName, OrgCommand, Organization, Tags};
use crate::role::{
    BindingCommand, BindingScope, BindingSpec, References, Role, RoleBinding, RoleCommand,
    RoleSpec, Rule, ToolPattern,
};
use crate::subject::{Subject, SubjectCommand, SubjectKind};
use crate::tool::{Tool, ToolCommand, ToolName, ToolRejection, ToolSpec};
use crate::workflow::{WorkflowName, WorkflowSpec};
use crate::{ErrorClass, ErrorCode, OrgName};

pub const API_VERSION: &str = "charter.dev/v1";

/// Where a manifest problem is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("document {document}: {path}: {message}")]
pub struct ManifestError {
    /// 0-based index of the document in its file or request.
    pub document: usize,
    /// The field, e.g. `spec.rules[0].resources[1]` (`.` for the whole).
    pub path: String,
    pub message: String,
}

impl ErrorCode for ManifestError {
    fn code(&self) -> &'static str {
        "invalid_manifest"
    }
    fn class(&self) -> ErrorClass {
        ErrorClass::InvalidInput
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata<N> {
    pub name: N,
    /// The org the object lives in (not used by `Organization`).
    #[serde(default)]
    pub org: Option<OrgName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OrganizationSpec {
    pub display_name: DisplayName,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub parent: Option<OrgName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectSpec {
    pub kind: SubjectKind,
    pub display_name: DisplayName,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleManifestSpec {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub tools: BTreeSet<ToolPattern>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBindingSpec {
    pub subject: SubjectName,
    pub role: RoleName,
    /// Omitted: the binding applies in the whole org.
    #[serde(default)]
    pub job_space: Option<JobSpaceName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpaceSpec {
    pub display_name: DisplayName,
}

/// Largest policy text accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// The policy set, in the Cedar language.
    pub policy: String,
}

/// One document as written, for one kind: decoded field by field so that
/// errors know their path.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Object<N, S> {
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata<N>,
    spec: S,
}

/// One typed manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all_fields = "camelCase")]
pub enum Manifest {
    Organization {
        api_version: String,
        metadata: Metadata<OrgName>,
        spec: OrganizationSpec,
    },
    Subject {
        api_version: String,
        metadata: Metadata<SubjectName>,
        spec: SubjectSpec,
    },
    Role {
        api_version: String,
        metadata: Metadata<RoleName>,
        spec: RoleManifestSpec,
    },
    RoleBinding {
        api_version: String,
        metadata: Metadata<BindingName>,
        spec: RoleBindingSpec,
    },
    JobSpace {
        api_version: String,
        metadata: Metadata<JobSpaceName>,
        spec: JobSpaceSpec,
    },
    Policy {
        api_version: String,
        metadata: Metadata<PolicyName>,
        spec: PolicySpec,
    },
    /// One version of a tool.
    Tool {
        api_version: String,
        metadata: Metadata<ToolName>,
        spec: Box<ToolSpec>,
    },
    /// One version of a workflow.
    Workflow {
        api_version: String,
        metadata: Metadata<WorkflowName>,
        spec: Box<WorkflowSpec>,
    },
}

pub const KINDS: [&str; 8] = [
    "Organization",
    "Subject",
    "Role",
    "RoleBinding",
    "JobSpace",
    "Policy",
    "Tool",
    "Workflow",
];

impl Manifest {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Organization { .. } => "Organization",
            Self::Subject { .. } => "Subject",
            Self::Role { .. } => "Role",
            Self::RoleBinding { .. } => "RoleBinding",
            Self::JobSpace { .. } => "JobSpace",
            Self::Policy { .. } => "Policy",
            Self::Tool { .. } => "Tool",
            Self::Workflow { .. } => "Workflow",
        }
    }

    /// The org the object belongs to (an organization belongs to itself).
    pub fn org(&self) -> Option<&OrgName> {
        match self {
            Self::Organization { metadata, .. } => Some(&metadata.name),
            Self::Subject { metadata, .. } => metadata.org.as_ref(),
            Self::Role { metadata, .. } => metadata.org.as_ref(),
            Self::RoleBinding { metadata, .. } => metadata.org.as_ref(),
            Self::JobSpace { metadata, .. } => metadata.org.as_ref(),
            Self::Policy { metadata, .. } => metadata.org.as_ref(),
            Self::Tool { metadata, .. } => metadata.org.as_ref(),
            Self::Workflow { metadata, .. } => metadata.org.as_ref(),
        }
    }

    /// The object's name as written.
    pub fn name(&self) -> &str {
        match self {
            Self::Organization { metadata, .. } => metadata.name.as_str(),
            Self::Subject { metadata, .. } => metadata.name.as_str(),
            Self::Role { metadata, .. } => metadata.name.as_str(),
            Self::RoleBinding { metadata, .. } => metadata.name.as_str(),
            Self::JobSpace { metadata, .. } => metadata.name.as_str(),
            Self::Policy { metadata, .. } => metadata.name.as_str(),
            Self::Tool { metadata, .. } => metadata.name.as_str(),
            Self::Workflow { metadata, .. } => metadata.name.as_str(),
        }
    }

    fn api_version(&self) -> &str {
        match self {
            Self::Organization { api_version, .. }
            | Self::Subject { api_version, .. }
            | Self::Role { api_version, .. }
            | Self::RoleBinding { api_version, .. }
            | Self::JobSpace { api_version, .. }
            | Self::Policy { api_version, .. }
            | Self::Tool { api_version, .. }
            | Self::Workflow { api_version, .. } => api_version,
        }
    }
}

/// Parses every document, reporting every problem at once.
pub fn parse_documents(documents: &[Value]) -> Result<Vec<Manifest>, Vec<ManifestError>> {
    let mut manifests = Vec::with_capacity(documents.len());
    let mut errors = Vec::new();
    for (document, value) in documents.iter().enumerate() {
        match parse_document(document, value) {
            Ok(manifest) => manifests.push(manifest),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(manifests)
    } else {
        Err(errors)
    }
}

fn parse_document(document: usize, value: &Value) -> Result<Manifest, ManifestError> {
    let error = |path: &str, message: String| ManifestError {
        document,
        path: path.to_owned(),
        message,
    };
    let Some(object) = value.as_object() else {
        return Err(error(".", "a manifest must be a mapping".into()));
    };
    match object.get("kind").and_then(Value::as_str) {
        None => {
            return Err(error(
                "kind",
                "missing; one of the manifest kinds is required".into(),
            ));
        }
        Some(kind) if !KINDS.contains(&kind) => {
            return Err(error(
                "kind",
                format!("unknown kind `{kind}` (known: {})", KINDS.join(", ")),
            ));
        }
        Some(_) => {}
    }
    macro_rules! decode {
        ($variant:ident) => {{
            let object: Object<_, _> = serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                error(&path, e.into_inner().to_string())
            })?;
            Manifest::$variant {
                api_version: object.api_version,
                metadata: object.metadata,
                spec: object.spec,
            }
        }};
    }
    let manifest = match object.get("kind").and_then(Value::as_str) {
        Some("Organization") => decode!(Organization),
        Some("Subject") => decode!(Subject),
        Some("Role") => decode!(Role),
        Some("RoleBinding") => decode!(RoleBinding),
        Some("JobSpace") => decode!(JobSpace),
        Some("Tool") => decode!(Tool),
        Some("Workflow") => decode!(Workflow),
        _ => decode!(Policy),
    };
    if manifest.api_version() != API_VERSION {
        return Err(error(
            "apiVersion",
            format!("must be `{API_VERSION}`, not `{}`", manifest.api_version()),
        ));
    }
    let needs_org = !matches!(manifest, Manifest::Organization { .. });
    if needs_org && manifest.org().is_none() {
        return Err(error(
            "metadata.org",
            "missing; the org this object lives in".into(),
        ));
    }
    if let Manifest::Organization { metadata, .. } = &manifest
        && metadata
            .org
            .as_ref()
            .is_some_and(|org| *org != metadata.name)
    {
        return Err(error(
            "metadata.org",
            "an organization's org is itself; leave it out".into(),
        ));
    }
    if let Manifest::Policy { spec, .. } = &manifest {
        if spec.policy.trim().is_empty() || spec.policy.len() > MAX_POLICY_BYTES {
            return Err(error(
                "spec.policy",
                format!("must hold 1 to {MAX_POLICY_BYTES} bytes of policy text"),
            ));
        }
        if let Err(problems) = crate::policy::check_policy(&spec.policy) {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return Err(error("spec.policy", problems.join("; ")));
        }
    }
    if let Manifest::Tool { spec, .. } = &manifest
        && let Err(rejection) = spec.check()
    {
        return Err(match rejection {
            ToolRejection::InvalidSpec { path, message } => error(&format!("spec.{path}"), message),
            other => error("spec", other.to_string()),
        });
    }
    Ok(manifest)
}

/// The command that brings a tool to its manifest: registering the
/// version, unless it is already registered with this very spec.
pub fn plan_tool(current: &Tool, spec: &ToolSpec, by: &Actor) -> Vec<ToolCommand> {
    let registered = current
        .0
        .as_ref()
        .and_then(|state| state.version(&spec.version))
        .is_some_and(|v| v.spec == *spec);
    if registered {
        vec![]
    } else {
        vec![ToolCommand::Register {
            spec: Box::new(spec.clone()),
            by: by.clone(),
        }]
    }
}

/// The commands that bring an organization to its manifest.
pub fn plan_organization(current: &Organization, spec: &OrganizationSpec) -> Vec<OrgCommand> {
    let Some(state) = &current.0 else {
        return vec![OrgCommand::Register {
            display_name: spec.display_name.clone(),
            tags: spec.tags.clone(),
            parent: spec.parent.clone(),
        }];
    };
    let mut commands = Vec::new();
    if state.display_name != spec.display_name {
        commands.push(OrgCommand::Rename {
            display_name: spec.display_name.clone(),
        });
    }
    if state.tags != spec.tags {
        commands.push(OrgCommand::SetTags {
            tags: spec.tags.clone(),
        });
    }
    if state.parent != spec.parent {
        commands.push(OrgCommand::SetParent {
            parent: spec.parent.clone(),
        });
    }
    commands
}

/// The command that brings an org's job space to its manifest.
pub fn plan_job_space(
    current: &Organization,
    name: &JobSpaceName,
    spec: &JobSpaceSpec,
) -> Vec<OrgCommand> {
    let unchanged = current
        .0
        .as_ref()
        .and_then(|state| state.job_spaces.get(name))
        .is_some_and(|display| *display == spec.display_name);
    if unchanged {
        vec![]
    } else {
        vec![OrgCommand::SetJobSpace {
            name: name.clone(),
            display_name: spec.display_name.clone(),
        }]
    }
}

/// The commands that bring a subject to its manifest.
pub fn plan_subject(current: &Subject, spec: &SubjectSpec) -> Vec<SubjectCommand> {
    let mut commands = Vec::new();
    let disabled = match &current.0 {
        None => {
            commands.push(SubjectCommand::Create {
                kind: spec.kind,
                display_name: spec.display_name.clone(),
            });
            false
        }
        Some(state) => {
            if state.display_name != spec.display_name {
                commands.push(SubjectCommand::SetDisplayName {
                    display_name: spec.display_name.clone(),
                });
            }
            state.disabled
        }
    };
    match (disabled, spec.disabled) {
        (false, true) => commands.push(SubjectCommand::Disable),
        (true, false) => commands.push(SubjectCommand::Enable),
        _ => {}
    }
    commands
}

/// The command that brings a role to its manifest.
pub fn plan_role(current: &Role, spec: &RoleManifestSpec) -> Vec<RoleCommand> {
    let desired = RoleSpec {
        description: spec.description.clone(),
        rules: spec.rules.clone(),
        tools: spec.tools.clone(),
    };
    match &current.0 {
        Some(state) if state.spec == desired => vec![],
        _ => vec![RoleCommand::Define { spec: desired }],
    }
}

/// The command that brings a role binding to its manifest.
pub fn plan_binding(
    current: &RoleBinding,
    spec: &RoleBindingSpec,
    references: References,
) -> Vec<BindingCommand> {
    let desired = BindingSpec {
        subject: spec.subject.clone(),
        role: spec.role.clone(),
        scope: match &spec.job_space {
            Some(space) => BindingScope::JobSpace(space.clone()),
            None => BindingScope::Org,
        },
    };
    match &current.0 {
        Some(state) if state.spec == desired => vec![],
        _ => vec![BindingCommand::Bind {
            spec: desired,
            references,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Aggregate;
    use proptest::prelude::*;
    use serde_json::json;

    fn org_doc(name: &str) -> Value {
        json!({
            "apiVersion": "charter.dev/v1",
            "kind": "Organization",
            "metadata": {"name": name},
            "spec": {"displayName": "Acme Corp", "tags": {"tier": "gold"}}
        })
    }

    #[test]
    fn every_kind_parses() {
        let docs = vec![
            org_doc("acme"),
            json!({"apiVersion": "charter.dev/v1", "kind": "Subject",
                   "metadata": {"name": "alice", "org": "acme"},
                   "spec": {"kind": "user", "displayName": "Alice"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Role",
                   "metadata": {"name": "editor", "org": "acme"},
                   "spec": {"rules": [{"actions": ["get", "update"], "resources": ["Organization"]}],
                            "tools": ["payments.*"]}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "RoleBinding",
                   "metadata": {"name": "alice-editor", "org": "acme"},
                   "spec": {"subject": "alice", "role": "editor", "jobSpace": "research"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "JobSpace",
                   "metadata": {"name": "research", "org": "acme"},
                   "spec": {"displayName": "Research"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Policy",
                   "metadata": {"name": "base", "org": "acme"},
                   "spec": {"policy": "permit(principal, action == Charter::Action::\"get\", resource);"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Tool",
                   "metadata": {"name": "payments.refund", "org": "acme"},
                   "spec": {"version": "1.0.0", "runtime": {"http": {"url": "https://pay.example/refund"}}}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Workflow",
                   "metadata": {"name": "refunds", "org": "acme"},
                   "spec": {"version": "1", "nodes": [{"name": "refund", "tool": "payments.refund"}]}}),
        ];
        let manifests = parse_documents(&docs).unwrap();
        let kinds: Vec<_> = manifests.iter().map(Manifest::kind).collect();
        assert_eq!(kinds, KINDS);
        assert!(
            manifests
                .iter()
                .all(|m| m.org().map(OrgName::as_str) == Some("acme"))
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let docs = vec![
            json!({"apiVersion": "charter.dev/v1", "kind": "Gadget", "metadata": {"name": "x"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Organization",
                   "metadata": {"name": "Not_A_Label"}, "spec": {"displayName": "X"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Role",
                   "metadata": {"name": "r", "org": "acme"},
                   "spec": {"rules": [{"actions": ["get"], "resources": ["Organization", "Gizmo"]}]}}),
            json!({"apiVersion": "charter.dev/v2", "kind": "Organization",
                   "metadata": {"name": "ok"}, "spec": {"displayName": "X"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Subject",
                   "metadata": {"name": "alice"}, "spec": {"kind": "user", "displayName": "A"}}),
            json!({"apiVersion": "charter.dev/v1", "kind": "Subject",
                   "metadata": {"name": "bob", "org": "acme"},
                   "spec": {"kind": "user", "displayName": "B", "colour": "red"}}),
            json!("just a string"),
            org_doc("fine"),
        ];
        let errors = parse_documents(&docs).unwrap_err();
        let found: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.document, e.path.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (0, "kind"),
                (1, "metadata.name"),
                (2, "spec.rules[0].resources[1]"),
                (3, "apiVersion"),
                (4, "metadata.org"),
                (5, "spec.colour"),
                (6, "."),
            ]
        );
        assert!(errors[0].message.contains("Gadget"));
        assert!(
            errors[5].message.contains("colour"),
            "{}",
            errors[5].message
        );
    }

    #[test]
    fn applying_twice_plans_nothing() {
        let acme = OrgName::parse("acme").unwrap();
        let manifests = parse_documents(&[org_doc("acme")]).unwrap();
        let Manifest::Organization { spec, .. } = &manifests[0] else {
            panic!("an organization");
        };
        let mut org = Organization::default();
        let first = plan_organization(&org, spec);
        assert_eq!(first.len(), 1);
        for command in &first {
            for event in org.decide(&acme, command).unwrap() {
                org.evolve(&event);
            }
        }
        assert!(plan_organization(&org, spec).is_empty());
    }

    proptest! {
        /// Whatever an organization looks like, applying a manifest's plan
        /// brings it to the manifest, after which the plan is empty.
        #[test]
        fn org_plans_converge(
            start_name in "[A-Z][a-z]{0,5}",
            start_tags in prop::collection::btree_map("[a-z]{1,4}", "[a-z]{0,3}", 0..3),
            name in "[A-Z][a-z]{0,5}",
            tags in prop::collection::btree_map("[a-z]{1,4}", "[a-z]{0,3}", 0..3),
            parent in prop::option::of(prop::sample::select(vec!["root", "other"])),
            registered in any::<bool>(),
        ) {
            let acme = OrgName::parse("acme").unwrap();
            let mut org = Organization::default();
            if registered {
                let register = OrgCommand::Register {
                    display_name: DisplayName::parse(start_name).unwrap(),
                    tags: Tags::parse(start_tags).unwrap(),
                    parent: None,
                };
                for event in org.decide(&acme, &register).unwrap() {
                    org.evolve(&event);
                }
            }
            let spec = OrganizationSpec {
                display_name: DisplayName::parse(name).unwrap(),
                tags: Tags::parse(tags).unwrap(),
                parent: parent.map(|p| OrgName::parse(p).unwrap()),
            };
            for command in plan_organization(&org, &spec) {
                for event in org.decide(&acme, &command).unwrap() {
                    org.evolve(&event);
                }
            }
            prop_assert!(plan_organization(&org, &spec).is_empty());
            let state = org.0.unwrap();
            prop_assert_eq!(state.display_name, spec.display_name);
            prop_assert_eq!(state.tags, spec.tags);
            prop_assert_eq!(state.parent, spec.parent);
        }
    }
}
