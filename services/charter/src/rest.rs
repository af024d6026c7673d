//! REST under `/v1`, and its OpenAPI 3.1 document (generated from these
//! handlers and types) at `/openapi.json`, browsable at `/docs`.
//!
//! Handlers only translate: the gateway authenticates, authorizes, runs and
//! reads. Every error is an `application/problem+json` document with a
//! stable `code`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use charter_domain::ErrorClass;
use charter_domain::role::ResourceKind;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

use crate::gateway::apply::{ApplyItem, ApplyOptions, ApplyReport};
use crate::gateway::commands::CommandRequest;
use crate::gateway::reads::{self, AccessQuestion, DirectoryFilter, OrgFilter, Page, PageArgs};
use crate::gateway::runs::{RunChanged, RunStarted, StartRunRequest, TraceRead};
use crate::gateway::views::{
    AllowedTool, AuditEntryView, BindingView, ContractView, DecisionView, FailureView, GrantView,
    JobSpaceView, Meta, NodeView, OrgView, PolicyView, RoleView, RuleView, RunView, SubjectView,
    Tag, ToolVersionView, ToolView, TraceEventView, WorkflowVersionView, WorkflowView,
};
use crate::gateway::{ApiError, Caller, CommandReport, Gateway};
use crate::http::Problem;

/// An error, as every endpoint answers it (`application/problem+json`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProblemDocument {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable and machine-readable: `unauthenticated`, `forbidden`,
    /// `not_found`, `invalid_manifest`, `invalid_policy`,
    /// `wrong_expected_version`, `payload_too_large`, …
    pub code: String,
    pub detail: String,
    /// Specifics: field paths, policy locations, deciding policies.
    #[schema(value_type = Object)]
    pub details: Option<serde_json::Value>,
}

/// Who the credential names.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    /// `root` or `org:subject`.
    pub principal: String,
    pub org: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AtPosition {
    /// Wait (a bounded time) until the read model has applied the log
    /// through this position.
    pub min_position: Option<u64>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `charter token issue`, or a subject's API key (`chk_…`).",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Charter API",
        version = "1",
        description = "Organizations, subjects, roles, role bindings, job spaces, policies, tools and workflows: declared by manifests or changed by commands, every request authorized."
    ),
    paths(
        apply, submit_command, whoami, list_orgs, get_org, list_job_spaces,
        list_subjects, get_subject, list_roles, get_role, list_bindings, get_binding,
        list_policies, get_policy, list_tools, get_tool, approve_tool, revoke_tool,
        list_workflows, get_workflow, start_run, list_runs, get_run, cancel_run,
        approve_node, reject_node, run_events, run_contract,
        audit_log, check_access
    ),
    components(schemas(
        ProblemDocument, WhoAmI, ApplyReport, ApplyItem, CommandRequest, CommandReport,
        OrgView, JobSpaceView, SubjectView, RoleView, RuleView, BindingView, PolicyView,
        ToolView, ToolVersionView, RevokeRequest, WorkflowView, WorkflowVersionView,
        RunView, NodeView, FailureView, ContractView, AllowedTool, TraceEventView,
        StartRunRequest, RunStarted, RunChanged, Remark, TraceUntil,
        AuditEntryView, DecisionView, GrantView, Meta, Tag, AccessQuestion
    )),
    modifiers(&Security),
    security(("bearer" = [])),
    tags((name = "charter", description = "The Charter control plane"))
)]
pub struct ApiDoc;

/// The OpenAPI document, as served and as exported into `schema/`.
pub fn openapi_json() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

type Shared = Arc<Gateway>;

fn caller(gateway: &Gateway, headers: &HeaderMap, operation: &str) -> Result<Caller, Problem> {
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let principal = gateway.authenticate(header).map_err(Problem::from)?;
    Ok(Caller {
        principal,
        operation: operation.to_owned(),
    })
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|rejection| {
        let status = rejection.status();
        Problem {
            status,
            code: if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large".into()
            } else {
                "unreadable_body".into()
            },
            detail: rejection.body_text(),
            details: None,
        }
    })
}

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

type Answer = Result<Response, Problem>;

/// Apply manifests: YAML (several documents) or JSON (one object or an
/// array). Prints, per object, created / updated / unchanged.
#[utoipa::path(
    post, path = "/v1/apply", tag = "charter",
    params(ApplyOptions),
    request_body(content = String, content_type = "application/yaml", description = "One or more manifests"),
    responses(
        (status = 200, description = "Applied (or planned, with dryRun)", body = ApplyReport),
        (status = 400, description = "Not YAML or JSON", body = ProblemDocument),
        (status = 401, body = ProblemDocument), (status = 403, body = ProblemDocument),
        (status = 409, description = "Stale version, or a policy that would lock every admin out", body = ProblemDocument),
        (status = 413, body = ProblemDocument),
        (status = 422, description = "Invalid manifest (with field paths) or policy (with line and column)", body = ProblemDocument),
    )
)]
async fn apply(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Query(options): Query<ApplyOptions>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let caller = caller(&gateway, &headers, "POST /v1/apply")?;
    let body = body_bytes(body)?;
    let text = std::str::from_utf8(&body).map_err(|_| {
        Problem::from(ApiError::new(
            ErrorClass::Malformed,
            "malformed_body",
            "the body is not UTF-8 text".into(),
        ))
    })?;
    let documents = crate::manifests::documents(text).map_err(|message| {
        Problem::from(ApiError::new(
            ErrorClass::Malformed,
            "malformed_body",
            format!("not valid YAML or JSON: {message}"),
        ))
    })?;
    let report = gateway.apply(&caller, &documents, options).await?;
    Ok(json(&report))
}

/// Submit one command. The same `commandId` takes effect once.
#[utoipa::path(
    post, path = "/v1/commands", tag = "charter",
    request_body = CommandRequest,
    responses(
        (status = 200, body = CommandReport),
        (status = 400, body = ProblemDocument), (status = 401, body = ProblemDocument),
        (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
        (status = 409, body = ProblemDocument), (status = 413, body = ProblemDocument),
        (status = 422, body = ProblemDocument),
    )
)]
async fn submit_command(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let caller = caller(&gateway, &headers, "POST /v1/commands")?;
    let body = body_bytes(body)?;
    let request: CommandRequest = parse_json(&body)?;
    let report = gateway.submit(&caller, &request).await?;
    Ok(json(&report))
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let class = if inner.is_syntax() || inner.is_eof() {
            ErrorClass::Malformed
        } else {
            ErrorClass::InvalidInput
        };
        let code = if class == ErrorClass::Malformed {
            "malformed_body"
        } else {
            "invalid_body"
        };
        Problem::from(
            ApiError::new(class, code, format!("at `{path}`: {inner}"))
                .with_details(serde_json::json!({ "path": path })),
        )
    })
}

/// Who the credential names.
#[utoipa::path(get, path = "/v1/whoami", tag = "charter",
    responses((status = 200, body = WhoAmI), (status = 401, body = ProblemDocument)))]
async fn whoami(State(gateway): State<Shared>, headers: HeaderMap) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/whoami")?;
    Ok(json(&WhoAmI {
        principal: caller.principal.to_string(),
        org: caller.principal.org().map(ToString::to_string),
    }))
}

/// The organizations the caller can see, filtered and paged.
#[utoipa::path(get, path = "/v1/orgs", tag = "charter", params(OrgFilter, PageArgs),
    responses((status = 200, body = Page<OrgView>), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 422, body = ProblemDocument)))]
async fn list_orgs(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Query(filter): Query<OrgFilter>,
    Query(page): Query<PageArgs>,
) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/orgs")?;
    Ok(json(&gateway.list_orgs(&caller, &filter, &page).await?))
}

/// One organization.
#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "charter",
    params(("org" = String, Path, description = "The org's name"), AtPosition),
    responses((status = 200, body = OrgView), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument)))]
async fn get_org(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(at): Query<AtPosition>,
) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/orgs/{org}")?;
    Ok(json(
        &gateway.get_org(&caller, &org, at.min_position).await?,
    ))
}

/// An org's job spaces.
#[utoipa::path(get, path = "/v1/orgs/{org}/jobspaces", tag = "charter",
    params(("org" = String, Path), AtPosition),
    responses((status = 200, body = Vec<JobSpaceView>), (status = 403, body = ProblemDocument),
              (status = 404, body = ProblemDocument)))]
async fn list_job_spaces(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(at): Query<AtPosition>,
) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/orgs/{org}/jobspaces")?;
    Ok(json(
        &gateway
            .list_job_spaces(&caller, &org, at.min_position)
            .await?,
    ))
}

macro_rules! directory_endpoints {
    ($list:ident, $get:ident, $segment:literal, $kind:expr, $view:ty, $make:path, $keep:path, $what:literal) => {
        directory_endpoints!($list, $get, $segment, $kind, $view, name, $make, $keep, $what);
    };
    ($list:ident, $get:ident, $segment:literal, $kind:expr, $view:ty, $field:ident, $make:path, $keep:path, $what:literal) => {
        #[doc = concat!("An org's ", $what, ", filtered and paged.")]
        #[utoipa::path(get, path = concat!("/v1/orgs/{org}/", $segment), tag = "charter",
            params(("org" = String, Path), DirectoryFilter, PageArgs),
            responses((status = 200, body = Page<$view>), (status = 401, body = ProblemDocument),
                      (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument)))]
        async fn $list(
            State(gateway): State<Shared>,
            headers: HeaderMap,
            Path(org): Path<String>,
            Query(filter): Query<DirectoryFilter>,
            Query(page): Query<PageArgs>,
        ) -> Answer {
            let caller = caller(&gateway, &headers, concat!("GET /v1/orgs/{org}/", $segment))?;
            let page = gateway
                .list_directory(&caller, &org, $kind, &filter, &page, $make, $keep, |v: &$view| v.$field.clone())
                .await?;
            Ok(json(&page))
        }

        #[doc = concat!("One of an org's ", $what, ".")]
        #[utoipa::path(get, path = concat!("/v1/orgs/{org}/", $segment, "/{name}"), tag = "charter",
            params(("org" = String, Path), ("name" = String, Path), AtPosition),
            responses((status = 200, body = $view), (status = 401, body = ProblemDocument),
                      (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument)))]
        async fn $get(
            State(gateway): State<Shared>,
            headers: HeaderMap,
            Path((org, name)): Path<(String, String)>,
            Query(at): Query<AtPosition>,
        ) -> Answer {
            let caller = caller(&gateway, &headers, concat!("GET /v1/orgs/{org}/", $segment, "/{name}"))?;
            let item = gateway
                .get_directory(&caller, &org, $kind, &name, at.min_position, $make)
                .await?;
            Ok(json(&item))
        }
    };
}

directory_endpoints!(
    list_subjects,
    get_subject,
    "subjects",
    ResourceKind::Subject,
    SubjectView,
    reads::subject_item,
    reads::keep_subject,
    "subjects"
);
directory_endpoints!(
    list_roles,
    get_role,
    "roles",
    ResourceKind::Role,
    RoleView,
    reads::role_item,
    reads::keep_any,
    "roles"
);
directory_endpoints!(
    list_bindings,
    get_binding,
    "rolebindings",
    ResourceKind::RoleBinding,
    BindingView,
    reads::binding_item,
    reads::keep_binding,
    "role bindings"
);
directory_endpoints!(
    list_policies,
    get_policy,
    "policies",
    ResourceKind::Policy,
    PolicyView,
    reads::policy_item,
    reads::keep_any,
    "policies"
);

directory_endpoints!(
    list_tools,
    get_tool,
    "tools",
    ResourceKind::Tool,
    ToolView,
    reads::tool_item,
    reads::keep_any,
    "tools"
);

/// Why a version is revoked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub reason: String,
}

fn tool_command(org: String, name: String, command: serde_json::Value) -> CommandRequest {
    CommandRequest {
        command_id: None,
        kind: "Tool".into(),
        org,
        name: Some(name),
        expected_version: None,
        force: false,
        command,
    }
}

/// Approve a tool version, so that it can run (needs `approve` on the
/// tool). Approving an approved version changes nothing.
#[utoipa::path(post, path = "/v1/orgs/{org}/tools/{name}/versions/{version}/approve", tag = "charter",
    params(("org" = String, Path), ("name" = String, Path), ("version" = String, Path)),
    responses((status = 200, body = CommandReport), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 409, body = ProblemDocument)))]
async fn approve_tool(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path((org, name, version)): Path<(String, String, String)>,
) -> Answer {
    let caller = caller(
        &gateway,
        &headers,
        "POST /v1/orgs/{org}/tools/{name}/versions/{version}/approve",
    )?;
    let request = tool_command(
        org,
        name,
        serde_json::json!({"type": "Approve", "version": version}),
    );
    Ok(json(&gateway.submit(&caller, &request).await?))
}

/// Revoke a tool version: it never runs again (needs `approve` on the
/// tool).
#[utoipa::path(post, path = "/v1/orgs/{org}/tools/{name}/versions/{version}/revoke", tag = "charter",
    params(("org" = String, Path), ("name" = String, Path), ("version" = String, Path)),
    request_body = RevokeRequest,
    responses((status = 200, body = CommandReport), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 422, body = ProblemDocument)))]
async fn revoke_tool(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path((org, name, version)): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let caller = caller(
        &gateway,
        &headers,
        "POST /v1/orgs/{org}/tools/{name}/versions/{version}/revoke",
    )?;
    let body = body_bytes(body)?;
    let revoke: RevokeRequest = parse_json(&body)?;
    let request = tool_command(
        org,
        name,
        serde_json::json!({"type": "Revoke", "version": version, "reason": revoke.reason}),
    );
    Ok(json(&gateway.submit(&caller, &request).await?))
}

directory_endpoints!(
    list_workflows,
    get_workflow,
    "workflows",
    ResourceKind::Workflow,
    WorkflowView,
    reads::workflow_item,
    reads::keep_any,
    "workflows"
);

directory_endpoints!(
    list_runs,
    get_run,
    "runs",
    ResourceKind::WorkflowRun,
    RunView,
    id,
    reads::run_item,
    reads::keep_run,
    "workflow runs"
);

/// Start a run of a workflow (needs `run` on `WorkflowRun` named after the
/// workflow). Its contract is issued first.
#[utoipa::path(post, path = "/v1/orgs/{org}/workflows/{name}/runs", tag = "charter",
    params(("org" = String, Path), ("name" = String, Path)),
    request_body = StartRunRequest,
    responses((status = 200, body = RunStarted), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 409, body = ProblemDocument), (status = 422, body = ProblemDocument)))]
async fn start_run(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path((org, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let caller = caller(
        &gateway,
        &headers,
        "POST /v1/orgs/{org}/workflows/{name}/runs",
    )?;
    let body = body_bytes(body)?;
    let request: StartRunRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRunRequest::default()
    } else {
        parse_json(&body)?
    };
    Ok(json(
        &gateway
            .start_workflow_run(&caller, &org, &name, &request)
            .await?,
    ))
}

/// Why a run is cancelled, or what an approver says.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Remark {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub comment: Option<String>,
}

fn remark(body: Result<Bytes, BytesRejection>) -> Result<Remark, Problem> {
    let body = body_bytes(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(Remark::default())
    } else {
        parse_json(&body)
    }
}

/// Cancel a run (needs `cancel` on its workflow); its running tools stop.
#[utoipa::path(post, path = "/v1/orgs/{org}/runs/{id}/cancel", tag = "charter",
    params(("org" = String, Path), ("id" = String, Path)),
    request_body = Remark,
    responses((status = 200, body = RunChanged), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 409, body = ProblemDocument)))]
async fn cancel_run(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let caller = caller(&gateway, &headers, "POST /v1/orgs/{org}/runs/{id}/cancel")?;
    let remark = remark(body)?;
    let reason = remark.reason.unwrap_or_default();
    Ok(json(
        &gateway.cancel_run(&caller, &org, &id, &reason).await?,
    ))
}

async fn answer(
    gateway: Shared,
    headers: HeaderMap,
    (org, id, node): (String, String, String),
    body: Result<Bytes, BytesRejection>,
    approved: bool,
) -> Answer {
    let operation = if approved {
        "POST /v1/orgs/{org}/runs/{id}/nodes/{node}/approve"
    } else {
        "POST /v1/orgs/{org}/runs/{id}/nodes/{node}/reject"
    };
    let caller = caller(&gateway, &headers, operation)?;
    let comment = remark(body)?.comment.unwrap_or_default();
    Ok(json(
        &gateway
            .answer_approval(&caller, &org, &id, &node, approved, &comment)
            .await?,
    ))
}

/// Approve an approval node (needs `approve` on the run's workflow).
#[utoipa::path(post, path = "/v1/orgs/{org}/runs/{id}/nodes/{node}/approve", tag = "charter",
    params(("org" = String, Path), ("id" = String, Path), ("node" = String, Path)),
    request_body = Remark,
    responses((status = 200, body = RunChanged), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 409, body = ProblemDocument)))]
async fn approve_node(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    answer(gateway, headers, path, body, true).await
}

/// Reject an approval node: the run fails (needs `approve`).
#[utoipa::path(post, path = "/v1/orgs/{org}/runs/{id}/nodes/{node}/reject", tag = "charter",
    params(("org" = String, Path), ("id" = String, Path), ("node" = String, Path)),
    request_body = Remark,
    responses((status = 200, body = RunChanged), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 409, body = ProblemDocument)))]
async fn reject_node(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path(path): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    answer(gateway, headers, path, body, false).await
}

/// Where a trace read starts, and how long it may wait.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TraceQuery {
    /// Events after this stream version (0: from the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many (1 to 1000, default 500).
    #[serde(default)]
    pub limit: Option<usize>,
    /// When nothing is there yet, wait up to this long (at most 30000)
    /// for the next event; a run that ended has none to come, and answers
    /// at once.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// `end`: wait (up to `waitMs`) until the run's last event is there,
    /// or `limit` events are, and answer them all at once.
    #[serde(default)]
    pub until: Option<TraceUntil>,
}

/// How long a trace read waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum TraceUntil {
    /// The run's last event (`Completed`, `Failed` or `Cancelled`).
    End,
}

/// A run's execution trace: its events, oldest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{id}/events", tag = "charter",
    params(("org" = String, Path), ("id" = String, Path), TraceQuery),
    responses((status = 200, body = Vec<TraceEventView>), (status = 400, body = ProblemDocument),
              (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument)))]
async fn run_events(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
    Query(query): Query<TraceQuery>,
) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/orgs/{org}/runs/{id}/events")?;
    Ok(json(
        &gateway
            .run_trace(
                &caller,
                &org,
                &id,
                TraceRead {
                    after: query.after,
                    limit: query.limit.unwrap_or(500),
                    wait: std::time::Duration::from_millis(query.wait_ms.unwrap_or(0)),
                    until_end: query.until == Some(TraceUntil::End),
                },
            )
            .await?,
    ))
}

/// A run's contract: what it may call, its budgets and what it used.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{id}/contract", tag = "charter",
    params(("org" = String, Path), ("id" = String, Path), AtPosition),
    responses((status = 200, body = ContractView), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument)))]
async fn run_contract(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
    Query(at): Query<AtPosition>,
) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/orgs/{org}/runs/{id}/contract")?;
    Ok(json(
        &gateway
            .run_contract(&caller, &org, &id, at.min_position)
            .await?,
    ))
}

/// A run's live trace over a WebSocket: every event already recorded, then
/// each new one as it happens, one JSON text message each; the socket
/// closes after the run's last event. The credential may come as
/// `?token=` for clients that cannot set headers.
async fn watch_run(
    State(gateway): State<Shared>,
    mut headers: HeaderMap,
    Path((org, id)): Path<(String, String)>,
    Query(token): Query<WatchToken>,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Answer {
    if let Some(token) = token.token
        && !headers.contains_key(header::AUTHORIZATION)
        && let Ok(value) = format!("Bearer {token}").parse()
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    let caller = caller(&gateway, &headers, "GET /v1/orgs/{org}/runs/{id}/watch")?;
    let run = gateway.watchable_run(&caller, &org, &id).await?;
    Ok(upgrade.on_upgrade(move |socket| crate::watch::stream_run(gateway, run, socket)))
}

#[derive(Debug, Default, Deserialize)]
pub struct WatchToken {
    token: Option<String>,
}

/// An org's denied requests (needs `list` on `AuditLog`).
#[utoipa::path(get, path = "/v1/orgs/{org}/audit", tag = "charter",
    params(("org" = String, Path), PageArgs),
    responses((status = 200, body = Page<AuditEntryView>), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument)))]
async fn audit_log(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    Path(org): Path<String>,
    Query(page): Query<PageArgs>,
) -> Answer {
    let caller = caller(&gateway, &headers, "GET /v1/orgs/{org}/audit")?;
    Ok(json(&gateway.audit(&caller, &org, &page).await?))
}

/// May this subject do this action on this resource, and what decides it?
#[utoipa::path(post, path = "/v1/check-access", tag = "charter",
    request_body = AccessQuestion,
    responses((status = 200, body = DecisionView), (status = 401, body = ProblemDocument),
              (status = 403, body = ProblemDocument), (status = 404, body = ProblemDocument),
              (status = 422, body = ProblemDocument)))]
async fn check_access(
    State(gateway): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let caller = caller(&gateway, &headers, "POST /v1/check-access")?;
    let body = body_bytes(body)?;
    let question: AccessQuestion = parse_json(&body)?;
    Ok(json(&gateway.check_access(&caller, &question).await?))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// A self-contained page that renders the OpenAPI document: no script
/// from elsewhere, so it works offline.
async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

pub fn router(gateway: Arc<Gateway>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/apply", post(apply))
        .route("/v1/commands", post(submit_command))
        .route("/v1/whoami", get(whoami))
        .route("/v1/orgs", get(list_orgs))
        .route("/v1/orgs/{org}", get(get_org))
        .route("/v1/orgs/{org}/jobspaces", get(list_job_spaces))
        .route("/v1/orgs/{org}/subjects", get(list_subjects))
        .route("/v1/orgs/{org}/subjects/{name}", get(get_subject))
        .route("/v1/orgs/{org}/roles", get(list_roles))
        .route("/v1/orgs/{org}/roles/{name}", get(get_role))
        .route("/v1/orgs/{org}/rolebindings", get(list_bindings))
        .route("/v1/orgs/{org}/rolebindings/{name}", get(get_binding))
        .route("/v1/orgs/{org}/policies", get(list_policies))
        .route("/v1/orgs/{org}/policies/{name}", get(get_policy))
        .route("/v1/orgs/{org}/tools", get(list_tools))
        .route("/v1/orgs/{org}/tools/{name}", get(get_tool))
        .route(
            "/v1/orgs/{org}/tools/{name}/versions/{version}/approve",
            post(approve_tool),
        )
        .route(
            "/v1/orgs/{org}/tools/{name}/versions/{version}/revoke",
            post(revoke_tool),
        )
        .route("/v1/orgs/{org}/workflows", get(list_workflows))
        .route("/v1/orgs/{org}/workflows/{name}", get(get_workflow))
        .route("/v1/orgs/{org}/workflows/{name}/runs", post(start_run))
        .route("/v1/orgs/{org}/runs", get(list_runs))
        .route("/v1/orgs/{org}/runs/{name}", get(get_run))
        .route("/v1/orgs/{org}/runs/{name}/cancel", post(cancel_run))
        .route(
            "/v1/orgs/{org}/runs/{name}/nodes/{node}/approve",
            post(approve_node),
        )
        .route(
            "/v1/orgs/{org}/runs/{name}/nodes/{node}/reject",
            post(reject_node),
        )
        .route("/v1/orgs/{org}/runs/{name}/events", get(run_events))
        .route("/v1/orgs/{org}/runs/{name}/contract", get(run_contract))
        .route("/v1/orgs/{org}/runs/{name}/watch", get(watch_run))
        .route("/v1/orgs/{org}/audit", get(audit_log))
        .route("/v1/check-access", post(check_access))
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(gateway)
}
