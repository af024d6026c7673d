//! GraphQL at `/graphql` (GraphiQL on GET, subscriptions over a WebSocket
//! with the `graphql-transport-ws` or `graphql-ws` protocol): organizations
//! with filters and cursor pagination, their subjects, roles, bindings, job
//! spaces, policies, tools, workflows and runs (with trace and contract),
//! `checkAccess`, the audit log; the mutations `apply`, `submitCommand`,
//! `startRun`, `cancelRun` and `answerApproval`; the subscription
//! `runEvents`, a run's live trace. Every resolver goes through the gateway, so REST and
//! GraphQL authorize and isolate alike; errors carry `extensions.code`.
//! Depth and complexity are limited (each list field costs its page size
//! times what it selects).

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, Json, Object, Schema, SimpleObject};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use charter_domain::role::ResourceKind;

use crate::auth::Principal;
use crate::gateway::apply::{ApplyOptions, ApplyReport};
use crate::gateway::commands::CommandRequest;
use crate::gateway::reads::{self, AccessQuestion, DirectoryFilter, OrgFilter, PageArgs};
use crate::gateway::runs::{RunChanged, RunStarted, StartRunRequest};
use crate::gateway::views::{
    AuditEntryView, BindingView, DecisionView, JobSpaceView, Meta, OrgView, PolicyView, RoleView,
    RunView, SubjectView, Tag, ToolView, TraceEventView, WorkflowView,
};
use crate::gateway::{ApiError, Caller, CommandReport, Gateway};

/// Deepest query accepted.
pub const MAX_DEPTH: usize = 12;
/// Costliest query accepted (a field costs 1, a list its page size times
/// its selection).
pub const MAX_COMPLEXITY: usize = 20_000;

pub type CharterSchema = Schema<Query, Mutation, Subscription>;

/// The request's authentication outcome, put in the context.
struct Auth(Result<Principal, ApiError>);

fn error(e: ApiError) -> async_graphql::Error {
    let status = crate::http::status_for(e.class).as_u16();
    let details = e.details.clone();
    async_graphql::Error::new(e.message.clone()).extend_with(|_, ext| {
        ext.set("code", e.code.to_string());
        ext.set("status", status);
        if let Some(details) = &details
            && let Ok(value) = async_graphql::Value::from_json((**details).clone())
        {
            ext.set("details", value);
        }
    })
}

fn caller(ctx: &Context<'_>, operation: &str) -> async_graphql::Result<Caller> {
    let auth = ctx.data::<Auth>()?;
    match &auth.0 {
        Ok(principal) => Ok(Caller {
            principal: principal.clone(),
            operation: format!("graphql {operation}"),
        }),
        Err(e) => Err(error(e.clone())),
    }
}

fn gateway<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a Arc<Gateway>> {
    ctx.data::<Arc<Gateway>>()
}

fn page(first: Option<i32>, after: Option<String>, min_position: Option<u64>) -> PageArgs {
    PageArgs {
        limit: first.map(|n| usize::try_from(n).unwrap_or(0)),
        after,
        min_position,
    }
}

macro_rules! page_type {
    ($name:ident, $item:ty) => {
        #[derive(SimpleObject)]
        pub struct $name {
            pub items: Vec<$item>,
            /// Pass as `after` for the next page; null on the last page.
            pub next_cursor: Option<String>,
        }
    };
}

page_type!(OrganizationPage, Organization);
page_type!(SubjectPage, SubjectView);
page_type!(RolePage, RoleView);
page_type!(RoleBindingPage, BindingView);
page_type!(PolicyPage, PolicyView);
page_type!(ToolPage, ToolView);
page_type!(WorkflowPage, WorkflowView);
page_type!(RunPage, RunView);
page_type!(AuditPage, AuditEntryView);

/// An organization, with what lives in it, and the log position its
/// query asked to see (its nested lists wait for it too).
pub struct Organization(OrgView, Option<u64>);

#[Object]
impl Organization {
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn display_name(&self) -> &str {
        &self.0.display_name
    }
    async fn tags(&self) -> &[Tag] {
        &self.0.tags
    }
    async fn parent(&self) -> Option<&str> {
        self.0.parent.as_deref()
    }
    /// `Requested`, `Provisioning`, `Active`, `Suspended` or `Archived`.
    async fn lifecycle(&self) -> &str {
        &self.0.lifecycle
    }
    async fn suspension_reason(&self) -> Option<&str> {
        self.0.suspension_reason.as_deref()
    }
    async fn meta(&self) -> &Meta {
        &self.0.meta
    }

    /// Needs `list` on `JobSpace`.
    async fn job_spaces(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<JobSpaceView>> {
        let caller = caller(ctx, "Organization.jobSpaces")?;
        gateway(ctx)?
            .list_job_spaces(&caller, &self.0.name, None)
            .await
            .map_err(error)
    }

    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn subjects(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<SubjectPage> {
        let caller = caller(ctx, "Organization.subjects")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::Subject,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::subject_item,
                reads::keep_subject,
                |v: &SubjectView| v.name.clone(),
            )
            .await
            .map_err(error)?;
        Ok(SubjectPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn roles(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<RolePage> {
        let caller = caller(ctx, "Organization.roles")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::Role,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::role_item,
                reads::keep_any,
                |v: &RoleView| v.name.clone(),
            )
            .await
            .map_err(error)?;
        Ok(RolePage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn role_bindings(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<RoleBindingPage> {
        let caller = caller(ctx, "Organization.roleBindings")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::RoleBinding,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::binding_item,
                reads::keep_binding,
                |v: &BindingView| v.name.clone(),
            )
            .await
            .map_err(error)?;
        Ok(RoleBindingPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn policies(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PolicyPage> {
        let caller = caller(ctx, "Organization.policies")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::Policy,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::policy_item,
                reads::keep_any,
                |v: &PolicyView| v.name.clone(),
            )
            .await
            .map_err(error)?;
        Ok(PolicyPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    /// The org's tools and their versions.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn tools(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<ToolPage> {
        let caller = caller(ctx, "Organization.tools")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::Tool,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::tool_item,
                reads::keep_any,
                |v: &ToolView| v.name.clone(),
            )
            .await
            .map_err(error)?;
        Ok(ToolPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    /// One tool of the org.
    async fn tool(&self, ctx: &Context<'_>, name: String) -> async_graphql::Result<ToolView> {
        let caller = caller(ctx, "Organization.tool")?;
        gateway(ctx)?
            .get_directory(
                &caller,
                &self.0.name,
                ResourceKind::Tool,
                &name,
                self.1,
                reads::tool_item,
            )
            .await
            .map_err(error)
    }

    /// The org's workflows and their versions.
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn workflows(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<WorkflowPage> {
        let caller = caller(ctx, "Organization.workflows")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::Workflow,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::workflow_item,
                reads::keep_any,
                |v: &WorkflowView| v.name.clone(),
            )
            .await
            .map_err(error)?;
        Ok(WorkflowPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    /// The org's workflow runs (filter by `status` and `workflow`).
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn runs(
        &self,
        ctx: &Context<'_>,
        filter: Option<DirectoryFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<RunPage> {
        let caller = caller(ctx, "Organization.runs")?;
        let p = gateway(ctx)?
            .list_directory(
                &caller,
                &self.0.name,
                ResourceKind::WorkflowRun,
                &filter.unwrap_or_default(),
                &page(first, after, self.1),
                reads::run_item,
                reads::keep_run,
                |v: &RunView| v.id.clone(),
            )
            .await
            .map_err(error)?;
        Ok(RunPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }

    /// One run, by id.
    async fn run(&self, ctx: &Context<'_>, id: String) -> async_graphql::Result<RunView> {
        let caller = caller(ctx, "Organization.run")?;
        gateway(ctx)?
            .get_directory(
                &caller,
                &self.0.name,
                ResourceKind::WorkflowRun,
                &id,
                self.1,
                reads::run_item,
            )
            .await
            .map_err(error)
    }
}

#[async_graphql::ComplexObject]
impl RunView {
    /// The run's execution trace, oldest first.
    #[graphql(complexity = "500 * child_complexity")]
    async fn trace(
        &self,
        ctx: &Context<'_>,
        after: Option<u64>,
    ) -> async_graphql::Result<Vec<TraceEventView>> {
        let caller = caller(ctx, "WorkflowRun.trace")?;
        gateway(ctx)?
            .run_trace(
                &caller,
                &self.org,
                &self.id,
                crate::gateway::runs::TraceRead {
                    after: after.unwrap_or(0),
                    limit: 500,
                    wait: std::time::Duration::ZERO,
                    until_end: false,
                },
            )
            .await
            .map(|events| events.iter().map(|e| TraceEventView::clone(e)).collect())
            .map_err(error)
    }

    /// The contract the run works under.
    async fn contract(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<crate::gateway::views::ContractView> {
        let caller = caller(ctx, "WorkflowRun.contract")?;
        gateway(ctx)?
            .run_contract(&caller, &self.org, &self.id, Some(self.meta.position))
            .await
            .map_err(error)
    }
}

#[derive(SimpleObject)]
pub struct Me {
    /// `root` or `org:subject`.
    pub principal: String,
    pub org: Option<String>,
}

pub struct Query;

#[Object]
impl Query {
    /// Who the credential names.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Me> {
        let caller = caller(ctx, "me")?;
        Ok(Me {
            principal: caller.principal.to_string(),
            org: caller.principal.org().map(ToString::to_string),
        })
    }

    /// The organizations the caller can see (its own; all, for root).
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn organizations(
        &self,
        ctx: &Context<'_>,
        filter: Option<OrgFilter>,
        first: Option<i32>,
        after: Option<String>,
        min_position: Option<u64>,
    ) -> async_graphql::Result<OrganizationPage> {
        let caller = caller(ctx, "organizations")?;
        let filter = filter.unwrap_or_default();
        let p = gateway(ctx)?
            .list_orgs(&caller, &filter, &page(first, after, min_position))
            .await
            .map_err(error)?;
        Ok(OrganizationPage {
            items: p
                .items
                .into_iter()
                .map(|o| Organization(o, min_position))
                .collect(),
            next_cursor: p.next_cursor,
        })
    }

    /// One organization.
    async fn organization(
        &self,
        ctx: &Context<'_>,
        name: String,
        min_position: Option<u64>,
    ) -> async_graphql::Result<Organization> {
        let caller = caller(ctx, "organization")?;
        gateway(ctx)?
            .get_org(&caller, &name, min_position)
            .await
            .map(|o| Organization(o, min_position))
            .map_err(error)
    }

    /// May this subject do this action on this resource, and which
    /// grants and policies decide it?
    async fn check_access(
        &self,
        ctx: &Context<'_>,
        question: AccessQuestion,
    ) -> async_graphql::Result<DecisionView> {
        let caller = caller(ctx, "checkAccess")?;
        gateway(ctx)?
            .check_access(&caller, &question)
            .await
            .map_err(error)
    }

    /// An org's denied requests (needs `list` on `AuditLog`).
    #[graphql(complexity = "first.unwrap_or(50).max(1) as usize * child_complexity")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        org: String,
        first: Option<i32>,
        after: Option<String>,
        min_position: Option<u64>,
    ) -> async_graphql::Result<AuditPage> {
        let caller = caller(ctx, "auditLog")?;
        let p = gateway(ctx)?
            .audit(&caller, &org, &page(first, after, min_position))
            .await
            .map_err(error)?;
        Ok(AuditPage {
            items: p.items,
            next_cursor: p.next_cursor,
        })
    }
}

pub struct Mutation;

#[Object]
impl Mutation {
    /// Applies manifests (YAML or JSON text): created / updated /
    /// unchanged per object.
    async fn apply(
        &self,
        ctx: &Context<'_>,
        manifests: String,
        dry_run: Option<bool>,
        force: Option<bool>,
    ) -> async_graphql::Result<ApplyReport> {
        let caller = caller(ctx, "apply")?;
        let documents = crate::manifests::documents(&manifests).map_err(|message| {
            error(ApiError::new(
                charter_domain::ErrorClass::Malformed,
                "malformed_body",
                format!("not valid YAML or JSON: {message}"),
            ))
        })?;
        gateway(ctx)?
            .apply(
                &caller,
                &documents,
                ApplyOptions {
                    dry_run: dry_run.unwrap_or(false),
                    force: force.unwrap_or(false),
                },
            )
            .await
            .map_err(error)
    }

    /// Submits one command, as `POST /v1/commands` takes it.
    async fn submit_command(
        &self,
        ctx: &Context<'_>,
        command: Json<serde_json::Value>,
    ) -> async_graphql::Result<CommandReport> {
        let caller = caller(ctx, "submitCommand")?;
        let request: CommandRequest = serde_json::from_value(command.0).map_err(|e| {
            error(ApiError::new(
                charter_domain::ErrorClass::InvalidInput,
                "invalid_body",
                e.to_string(),
            ))
        })?;
        gateway(ctx)?.submit(&caller, &request).await.map_err(error)
    }

    /// Starts a run of a workflow.
    async fn start_run(
        &self,
        ctx: &Context<'_>,
        org: String,
        workflow: String,
        run: Option<StartRunRequest>,
    ) -> async_graphql::Result<RunStarted> {
        let caller = caller(ctx, "startRun")?;
        gateway(ctx)?
            .start_workflow_run(&caller, &org, &workflow, &run.unwrap_or_default())
            .await
            .map_err(error)
    }

    /// Cancels a run; its running tools are stopped.
    async fn cancel_run(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: String,
        reason: Option<String>,
    ) -> async_graphql::Result<RunChanged> {
        let caller = caller(ctx, "cancelRun")?;
        gateway(ctx)?
            .cancel_run(&caller, &org, &id, reason.as_deref().unwrap_or(""))
            .await
            .map_err(error)
    }

    /// Approves (or rejects) an approval node of a run.
    async fn answer_approval(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: String,
        node: String,
        approved: bool,
        comment: Option<String>,
    ) -> async_graphql::Result<RunChanged> {
        let caller = caller(ctx, "answerApproval")?;
        gateway(ctx)?
            .answer_approval(
                &caller,
                &org,
                &id,
                &node,
                approved,
                comment.as_deref().unwrap_or(""),
            )
            .await
            .map_err(error)
    }
}

pub struct Subscription;

#[async_graphql::Subscription]
impl Subscription {
    /// A run's live trace: every event already recorded, then each new one
    /// as it happens; the stream ends after the run's last event.
    async fn run_events(
        &self,
        ctx: &Context<'_>,
        org: String,
        id: String,
    ) -> async_graphql::Result<
        impl futures::Stream<Item = async_graphql::Result<TraceEventView>> + use<>,
    > {
        use futures::StreamExt;
        let caller = caller(ctx, "runEvents")?;
        let gateway = Arc::clone(gateway(ctx)?);
        let run = gateway
            .watchable_run(&caller, &org, &id)
            .await
            .map_err(error)?;
        Ok(crate::watch::follow_run(gateway, run, 0)
            .map(|event| event.map(|e| TraceEventView::clone(&e)).map_err(error)))
    }
}

/// The schema, without its per-request data.
pub fn schema(gateway: Option<Arc<Gateway>>) -> CharterSchema {
    let mut builder = Schema::build(Query, Mutation, Subscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY);
    if let Some(gateway) = gateway {
        builder = builder.data(gateway);
    }
    builder.finish()
}

/// The SDL, as exported into `schema/`.
pub fn sdl() -> String {
    schema(None).sdl()
}

#[derive(Clone)]
struct GraphqlState {
    gateway: Arc<Gateway>,
    schema: CharterSchema,
}

async fn graphql(
    State(state): State<GraphqlState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "unreadable_body"
            };
            return graphql_failure(status, code, &rejection.body_text());
        }
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return graphql_failure(
                axum::http::StatusCode::BAD_REQUEST,
                "malformed_body",
                &format!("not a GraphQL request (JSON with `query`): {e}"),
            );
        }
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let auth = Auth(state.gateway.authenticate(header));
    let mut response = state.schema.execute(request.data(auth)).await;
    for error in &mut response.errors {
        code_request_error(error);
    }
    axum::Json(response).into_response()
}

/// Gives an error the engine raised before running the request (the query
/// does not parse, breaks the schema or passes a limit) its
/// `extensions.code`; the resolvers' errors carry theirs already.
fn code_request_error(error: &mut async_graphql::ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_some() {
        return;
    }
    let code = if error.message.trim_start().starts_with("-->") {
        "query_parse_failed"
    } else if error.message.contains("too complex") {
        "query_too_complex"
    } else if error.message.contains("nested too deep") {
        "query_too_deep"
    } else {
        "invalid_query"
    };
    extensions.set("code", code);
    extensions.set("status", 400);
}

fn graphql_failure(status: axum::http::StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({
            "errors": [{"message": message, "extensions": {"code": code, "status": status.as_u16()}}]
        })),
    )
        .into_response()
}

/// GraphiQL for a browser; a WebSocket upgrade carries subscriptions.
async fn graphiql(
    State(state): State<GraphqlState>,
    headers: HeaderMap,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return Html(include_str!("graphiql.html")).into_response();
    };
    use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, WebSocketProtocols, WsMessage};
    use futures::{SinkExt, StreamExt};
    let protocol = headers
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        })
        .unwrap_or(WebSocketProtocols::GraphQLWS);
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| async move {
            let (mut sink, stream) = socket.split();
            let input = stream
                .take_while(|m| futures::future::ready(m.is_ok()))
                .filter_map(|m| async move {
                    match m {
                        Ok(axum::extract::ws::Message::Text(text)) => {
                            Some(text.as_str().as_bytes().to_vec())
                        }
                        Ok(axum::extract::ws::Message::Binary(bytes)) => Some(bytes.to_vec()),
                        _ => None,
                    }
                })
                .boxed();
            let gateway = Arc::clone(&state.gateway);
            let mut output = async_graphql::http::WebSocket::new(state.schema, input, protocol)
                .on_connection_init(move |payload| async move {
                    // The credential comes with the upgrade request or, from
                    // browsers, in the init payload.
                    let credential = from_header.or_else(|| {
                        payload
                            .get("Authorization")
                            .or_else(|| payload.get("authorization"))
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                    });
                    let mut data = async_graphql::Data::default();
                    data.insert(Auth(gateway.authenticate(credential.as_deref())));
                    Ok(data)
                });
            while let Some(message) = output.next().await {
                let sent = match message {
                    WsMessage::Text(text) => {
                        sink.send(axum::extract::ws::Message::Text(text.into()))
                            .await
                    }
                    WsMessage::Close(code, reason) => {
                        let _ = sink
                            .send(axum::extract::ws::Message::Close(Some(
                                axum::extract::ws::CloseFrame {
                                    code,
                                    reason: reason.into(),
                                },
                            )))
                            .await;
                        break;
                    }
                };
                if sent.is_err() {
                    break;
                }
            }
        })
}

pub fn router(gateway: Arc<Gateway>, max_body_bytes: usize) -> Router {
    let schema = schema(Some(Arc::clone(&gateway)));
    Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .with_state(GraphqlState { gateway, schema })
}
