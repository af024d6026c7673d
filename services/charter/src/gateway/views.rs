//! What the APIs answer with: one set of types for REST (serde, OpenAPI
//! schemas) and GraphQL (objects), built from the read models' documents.

use std::sync::Arc;

use async_graphql::SimpleObject;
use charter_domain::access::Grant;
use charter_domain::audit::AuditRecord;
use charter_domain::authorize::AccessDecision;
use charter_domain::organization::OrgState;
use charter_domain::policy::PolicyState;
use charter_domain::role::{BindingScope, BindingState, RoleState};
use charter_domain::subject::SubjectState;
use charter_domain::tool::ToolState;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::ApiError;

/// When a document was created and last changed, and its stream version
/// (the `expectedVersion` to send with a command that must not race).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// Global log position of the last event that changed it.
    pub position: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct JobSpaceView {
    pub org: String,
    pub name: String,
    pub display_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(name = "OrganizationFields")]
pub struct OrgView {
    pub name: String,
    pub display_name: String,
    pub tags: Vec<Tag>,
    pub parent: Option<String>,
    /// `Requested`, `Provisioning`, `Active`, `Suspended` or `Archived`.
    pub lifecycle: String,
    pub suspension_reason: Option<String>,
    pub job_spaces: Vec<JobSpaceView>,
    pub meta: Meta,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct SubjectView {
    pub org: String,
    pub name: String,
    /// `user`, `service_account` or `agent`.
    pub kind: String,
    pub display_name: String,
    pub disabled: bool,
    /// The ids of its API keys (never the keys).
    pub api_keys: Vec<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
pub struct RuleView {
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct RoleView {
    pub org: String,
    pub name: String,
    pub description: String,
    pub rules: Vec<RuleView>,
    pub tools: Vec<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct BindingView {
    pub org: String,
    pub name: String,
    pub subject: String,
    pub role: String,
    /// Omitted: the binding applies in the whole org.
    pub job_space: Option<String>,
    pub meta: Meta,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub org: String,
    pub name: String,
    /// The policy's own version: 1 for the first text, +1 per change.
    pub policy_version: u32,
    /// The Cedar text in force.
    pub text: String,
    pub meta: Meta,
}

/// One version of a tool.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ToolVersionView {
    pub version: String,
    /// `pending` (cannot run until approved), `approved` or `revoked`.
    pub status: String,
    pub description: String,
    /// `process`, `http`, `agent` or `builtin`.
    pub runtime: String,
    /// Cost units one call charges to a contract's budget.
    pub cost: u32,
    /// The version's whole spec, as registered (secrets appear by name
    /// only).
    #[schema(value_type = Object)]
    pub spec: async_graphql::Json<Value>,
    pub registered_by: String,
    pub approved_by: Option<String>,
    pub revoked_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ToolView {
    pub org: String,
    pub name: String,
    /// The latest approved version: what a call without a version runs.
    pub latest_approved: Option<String>,
    /// In the order they were registered.
    pub versions: Vec<ToolVersionView>,
    pub meta: Meta,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntryView {
    pub id: String,
    pub org: String,
    pub at: String,
    pub principal: String,
    pub action: String,
    pub kind: String,
    pub resource: String,
    pub job_space: Option<String>,
    pub operation: String,
    pub reason: String,
    pub forbidden_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
pub struct GrantView {
    pub binding: String,
    pub role: String,
}

impl From<&Grant> for GrantView {
    fn from(grant: &Grant) -> Self {
        Self {
            binding: grant.binding.to_string(),
            role: grant.role.to_string(),
        }
    }
}

/// An access decision and what decided it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    pub allowed: bool,
    /// Role grants (binding and role) that allow it.
    pub grants: Vec<GrantView>,
    /// Org policies (`name#index`) whose `permit` matched.
    pub permitted_by: Vec<String>,
    /// Org policies (`name#index`) whose `forbid` matched: any one denies.
    pub forbidden_by: Vec<String>,
    /// Why it was denied before any policy was consulted, if so.
    pub denied_because: Option<String>,
    /// `builtin:root` when the built-in root decided it.
    pub decided_by: Option<String>,
}

impl DecisionView {
    pub fn root() -> Self {
        Self {
            allowed: true,
            grants: vec![],
            permitted_by: vec![],
            forbidden_by: vec![],
            denied_because: None,
            decided_by: Some("builtin:root".into()),
        }
    }
}

impl From<&AccessDecision> for DecisionView {
    fn from(d: &AccessDecision) -> Self {
        Self {
            allowed: d.allowed,
            grants: d.grants.iter().map(GrantView::from).collect(),
            permitted_by: d.permitted_by.clone(),
            forbidden_by: d.forbidden_by.clone(),
            denied_because: d.denied_because.map(str::to_owned),
            decided_by: None,
        }
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn meta(doc: &Value, position: u64) -> Meta {
    Meta {
        version: doc.get("version").and_then(Value::as_u64).unwrap_or(0),
        created_at: text(doc.get("created_at").unwrap_or(&Value::Null)),
        updated_at: text(doc.get("updated_at").unwrap_or(&Value::Null)),
        position,
    }
}

fn decode<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| ApiError::internal(format!("read model: {e}")))
}

fn state_of<T: DeserializeOwned>(doc: &Value) -> Result<T, ApiError> {
    decode(doc.get("state").cloned().unwrap_or(Value::Null))
}

impl OrgView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: OrgState = decode(doc.clone())?;
        Ok(Self {
            job_spaces: state
                .job_spaces
                .iter()
                .map(|(name, display)| JobSpaceView {
                    org: state.name.to_string(),
                    name: name.to_string(),
                    display_name: display.as_str().to_owned(),
                })
                .collect(),
            name: state.name.to_string(),
            display_name: state.display_name.as_str().to_owned(),
            tags: state
                .tags
                .iter()
                .map(|(k, v)| Tag {
                    key: k.to_owned(),
                    value: v.to_owned(),
                })
                .collect(),
            parent: state.parent.map(|p| p.to_string()),
            lifecycle: state.lifecycle.as_str().to_owned(),
            suspension_reason: state.suspension_reason,
            meta: meta(doc, position),
        })
    }
}

impl SubjectView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: SubjectState = state_of(doc)?;
        Ok(Self {
            org: state.org.to_string(),
            name: state.name.to_string(),
            kind: state.kind.as_str().to_owned(),
            display_name: state.display_name.as_str().to_owned(),
            disabled: state.disabled,
            api_keys: state
                .api_keys
                .keys()
                .map(|k| k.as_str().to_owned())
                .collect(),
            meta: meta(doc, position),
        })
    }
}

impl RoleView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: RoleState = state_of(doc)?;
        // Rules and tool patterns serialize as the manifest writes them.
        let spec = serde_json::to_value(&state.spec)
            .map_err(|e| ApiError::internal(format!("read model: {e}")))?;
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| a.iter().map(text).collect())
                .unwrap_or_default()
        };
        let rules = spec
            .get("rules")
            .and_then(Value::as_array)
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| RuleView {
                        actions: strings(r.get("actions")),
                        resources: strings(r.get("resources")),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            org: state.org.to_string(),
            name: state.name.to_string(),
            description: state.spec.description.clone(),
            rules,
            tools: strings(spec.get("tools")),
            meta: meta(doc, position),
        })
    }
}

impl BindingView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: BindingState = state_of(doc)?;
        Ok(Self {
            org: state.org.to_string(),
            name: state.name.to_string(),
            subject: state.spec.subject.to_string(),
            role: state.spec.role.to_string(),
            job_space: match state.spec.scope {
                BindingScope::Org => None,
                BindingScope::JobSpace(space) => Some(space.to_string()),
            },
            meta: meta(doc, position),
        })
    }
}

impl PolicyView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: PolicyState = state_of(doc)?;
        Ok(Self {
            org: state.org.to_string(),
            name: state.name.to_string(),
            policy_version: state.version,
            text: state.text,
            meta: meta(doc, position),
        })
    }
}

impl ToolView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: ToolState = state_of(doc)?;
        let latest_approved = state
            .runnable(None)
            .ok()
            .map(|v| v.spec.version.to_string());
        let versions = state
            .versions
            .iter()
            .map(|v| ToolVersionView {
                version: v.spec.version.to_string(),
                status: v.status.as_str().to_owned(),
                description: v.spec.description.clone(),
                runtime: v.spec.runtime.kind().to_owned(),
                cost: v.spec.cost,
                spec: async_graphql::Json(serde_json::to_value(&v.spec).unwrap_or(Value::Null)),
                registered_by: v.registered_by.to_string(),
                approved_by: v.approved_by.as_ref().map(ToString::to_string),
                revoked_reason: v.revoked.clone(),
            })
            .collect();
        Ok(Self {
            org: state.org.to_string(),
            name: state.name.to_string(),
            latest_approved,
            versions,
            meta: meta(doc, position),
        })
    }
}

impl AuditEntryView {
    pub fn from_doc(key: &str, org: &str, doc: &Value) -> Result<Self, ApiError> {
        let record: AuditRecord = decode(doc.get("state").cloned().unwrap_or(Value::Null))?;
        let denial = record
            .0
            .ok_or_else(|| ApiError::internal("empty audit record".into()))?;
        Ok(Self {
            id: key
                .split_once(':')
                .map(|(_, id)| id)
                .unwrap_or(key)
                .to_owned(),
            org: org.to_owned(),
            at: text(doc.get("created_at").unwrap_or(&Value::Null)),
            principal: denial.principal,
            action: denial.action,
            kind: denial.kind.as_str().to_owned(),
            resource: denial.resource,
            job_space: denial.job_space.map(|s| s.to_string()),
            operation: denial.operation,
            reason: denial.reason,
            forbidden_by: denial.forbidden_by,
        })
    }
}

/// Milliseconds since the epoch as RFC 3339.
fn instant(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// One version of a workflow.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowVersionView {
    pub version: String,
    pub description: String,
    pub nodes: Vec<String>,
    /// The definition as registered.
    #[schema(value_type = Object)]
    pub spec: async_graphql::Json<Value>,
    pub registered_by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowView {
    pub org: String,
    pub name: String,
    /// What a run started without a version runs.
    pub latest: Option<String>,
    pub versions: Vec<WorkflowVersionView>,
    pub meta: Meta,
}

impl WorkflowView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let state: charter_domain::workflow::WorkflowState = state_of(doc)?;
        Ok(Self {
            org: state.org.to_string(),
            name: state.name.to_string(),
            latest: state.versions.last().map(|v| v.spec.version.to_string()),
            versions: state
                .versions
                .iter()
                .map(|v| WorkflowVersionView {
                    version: v.spec.version.to_string(),
                    description: v.spec.description.clone(),
                    nodes: v.spec.nodes.iter().map(|n| n.name.to_string()).collect(),
                    spec: async_graphql::Json(serde_json::to_value(&v.spec).unwrap_or(Value::Null)),
                    registered_by: v.registered_by.to_string(),
                })
                .collect(),
            meta: meta(doc, position),
        })
    }
}

/// Why a run or a node failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
pub struct FailureView {
    pub code: String,
    pub message: String,
}

/// One node of a run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    pub name: String,
    /// `waiting`, `scheduled`, `running`, `awaitingApproval`, `sleeping`,
    /// `succeeded`, `failed` or `skipped`.
    pub status: String,
    /// Attempts so far.
    pub attempts: u32,
    #[schema(value_type = Object)]
    pub input: Option<async_graphql::Json<Value>>,
    #[schema(value_type = Object)]
    pub output: Option<async_graphql::Json<Value>>,
    pub error: Option<FailureView>,
    /// Why it was skipped.
    pub reason: Option<String>,
    /// When a timer fires, an approval or a retry is due.
    pub due: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
#[graphql(complex, name = "WorkflowRun")]
pub struct RunView {
    /// The run's id (a UUID), which its contract shares.
    pub id: String,
    pub org: String,
    pub workflow: String,
    pub workflow_version: String,
    /// `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    pub started_by: String,
    pub started_at: String,
    pub deadline: String,
    #[schema(value_type = Object)]
    pub input: async_graphql::Json<Value>,
    #[schema(value_type = Object)]
    pub output: Option<async_graphql::Json<Value>>,
    pub error: Option<FailureView>,
    pub nodes: Vec<NodeView>,
    /// `run-id/node` of the run that started this one as a sub-workflow.
    pub parent: Option<String>,
    pub meta: Meta,
}

impl RunView {
    pub fn from_state(state: &charter_domain::run::RunState, meta: Meta) -> Self {
        use charter_domain::run::NodeState;
        let nodes = state
            .plan
            .spec
            .nodes
            .iter()
            .map(|spec| {
                let node = state.nodes.get(&spec.name);
                let mut view = NodeView {
                    name: spec.name.to_string(),
                    status: node.map_or("waiting", NodeState::name).to_owned(),
                    attempts: state.attempts.get(&spec.name).copied().unwrap_or(0),
                    input: None,
                    output: None,
                    error: None,
                    reason: None,
                    due: None,
                };
                match node {
                    Some(NodeState::Scheduled { input, due, .. }) => {
                        view.input = Some(async_graphql::Json(input.clone()));
                        view.due = Some(instant(*due));
                    }
                    Some(NodeState::Running { input, .. }) => {
                        view.input = Some(async_graphql::Json(input.clone()));
                    }
                    Some(NodeState::Succeeded { output }) => {
                        view.output = Some(async_graphql::Json(output.clone()));
                    }
                    Some(NodeState::Failed { code, message }) => {
                        view.error = Some(FailureView {
                            code: code.clone(),
                            message: message.clone(),
                        });
                    }
                    Some(NodeState::Skipped { reason }) => view.reason = Some(reason.clone()),
                    Some(NodeState::Sleeping { fire_at: at })
                    | Some(NodeState::AwaitingApproval { deadline: at }) => {
                        view.due = Some(instant(*at));
                    }
                    _ => {}
                }
                view
            })
            .collect();
        Self {
            id: state.id.id.to_string(),
            org: state.id.org.to_string(),
            workflow: state.plan.workflow.to_string(),
            workflow_version: state.plan.spec.version.to_string(),
            status: state.status.as_str().to_owned(),
            started_by: state.started_by.to_string(),
            started_at: instant(state.started_at),
            deadline: instant(state.deadline),
            input: async_graphql::Json(state.input.clone()),
            output: state.output.clone().map(async_graphql::Json),
            error: state.error.as_ref().map(|e| FailureView {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            nodes,
            parent: state
                .plan
                .parent
                .as_ref()
                .map(|(run, node)| format!("{}/{node}", run.id)),
            meta,
        }
    }

    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let run: charter_domain::run::Run = state_of(doc)?;
        let state = run
            .0
            .ok_or_else(|| ApiError::internal("empty run document".into()))?;
        Ok(Self::from_state(&state, meta(doc, position)))
    }
}

/// A tool version a contract allows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
pub struct AllowedTool {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct ContractView {
    /// The run it governs (the same id).
    pub id: String,
    pub org: String,
    pub workflow: String,
    pub workflow_version: String,
    /// The subject the run acts for.
    pub principal: String,
    pub tools: Vec<AllowedTool>,
    pub max_calls: u32,
    pub max_cost: Option<u64>,
    pub calls_used: u32,
    pub cost_used: u64,
    pub scopes: Vec<String>,
    pub deadline: String,
    /// Calls refused for breaking it.
    pub breaches: u32,
    pub closed: bool,
    pub meta: Meta,
}

impl ContractView {
    pub fn from_doc(doc: &Value, position: u64) -> Result<Self, ApiError> {
        let contract: charter_domain::contract::Contract = state_of(doc)?;
        let state = contract
            .0
            .ok_or_else(|| ApiError::internal("empty contract document".into()))?;
        let terms = &state.terms;
        Ok(Self {
            id: state.id.id.to_string(),
            org: state.id.org.to_string(),
            workflow: terms.workflow.to_string(),
            workflow_version: terms.workflow_version.to_string(),
            principal: terms.principal.clone(),
            tools: terms
                .tools
                .iter()
                .map(|(name, version)| AllowedTool {
                    name: name.to_string(),
                    version: version.to_string(),
                })
                .collect(),
            max_calls: terms.max_calls,
            max_cost: terms.max_cost,
            calls_used: state.calls_used,
            cost_used: state.cost_used,
            scopes: terms.scopes.iter().cloned().collect(),
            deadline: instant(terms.deadline),
            breaches: state.breaches,
            closed: state.closed,
            meta: meta(doc, position),
        })
    }
}

/// One event of a run's trace.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, SimpleObject)]
#[graphql(complex)]
#[serde(rename_all = "camelCase")]
pub struct TraceEventView {
    /// The run stream's version after the event (1 for `Started`).
    pub version: u64,
    pub position: u64,
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub event_type: String,
    pub at: String,
    pub actor: String,
    /// The event's payload, as stored.
    // Kept as its JSON text: served as it is, and shared by every reader
    // of the trace.
    #[schema(value_type = Object)]
    #[graphql(skip)]
    pub data: Arc<RawValue>,
}

#[async_graphql::ComplexObject]
impl TraceEventView {
    /// The event's payload, as stored.
    async fn data(&self) -> async_graphql::Json<Value> {
        async_graphql::Json(serde_json::from_str(self.data.get()).unwrap_or(Value::Null))
    }
}

/// JSON text as a trace event's data (`null` if it is not JSON).
pub fn trace_data(text: String) -> Arc<RawValue> {
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
        .into()
}

impl TraceEventView {
    /// Whether the run records nothing after this event.
    pub fn is_final(&self) -> bool {
        charter_domain::run::ENDING_EVENTS.contains(&self.event_type.as_str())
    }

    pub fn new(
        version: u64,
        position: u64,
        event_type: &str,
        at: chrono::DateTime<chrono::Utc>,
        actor: &str,
        data: Arc<RawValue>,
    ) -> Self {
        Self {
            version,
            position,
            event_type: event_type.to_owned(),
            at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            actor: actor.to_owned(),
            data,
        }
    }

    pub fn from_recorded(event: &charter_commands::RecordedEvent) -> Self {
        Self::new(
            event.version.0,
            event.position.0,
            &event.event_type,
            event.recorded_at,
            event.actor.as_str(),
            Arc::from(event.payload.clone()),
        )
    }
}
