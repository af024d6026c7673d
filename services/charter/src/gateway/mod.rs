//! The gateway: what every API request goes through, whatever its
//! transport. It authenticates the caller, decides every command and every
//! query with the access index (role grants and the org's Cedar policies),
//! records denials in the audit log, runs commands through the kernel and
//! serves reads from the projections.
//!
//! Isolation is enforced here once for REST and GraphQL alike: a subject
//! sees only its own org, and anything of another org answers exactly as
//! if it did not exist (404, same message), so that no field, filter, id
//! or error message tells one org about another.

pub mod apply;
pub mod commands;
pub mod reads;
pub mod runs;
pub mod views;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use charter_commands::{
    CommandError, CommandHandler, CommandMeta, Handling, Position, StoreError, StreamVersion,
};
use charter_domain::access::AccessRequest;
use charter_domain::audit::{AuditCommand, AuditId, AuditRecord, Denial};
use charter_domain::authorize::Authorizer;
use charter_domain::ids::{InvalidName, JobSpaceName};
use charter_domain::organization::{OrgCommand, OrgState, OrgTree, Organization, check_tree};
use charter_domain::policy::{Policy, PolicyCommand, PolicyId};
use charter_domain::role::{
    Action, BindingCommand, BindingScope, References, ResourceKind, Role, RoleBinding, RoleCommand,
};
use charter_domain::subject::{KeyDigest, Subject, SubjectCommand};
use charter_domain::{Actor, Aggregate, CommandId, DomainEvent, ErrorClass, ErrorCode, OrgName};
use charter_projections::ReadModels;
use charter_projections::access::{AccessIndex, Facts};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::{AuthError, Authenticator, Principal};
use charter_domain::tool::{Tool, ToolCommand, ToolId};
use charter_domain::workflow::{Workflow, WorkflowCommand, WorkflowId};
use commands::{BindingIntent, CommandRequest, Intent, SubjectIntent, ToolIntent};

/// Tools an apply registers, as it leaves them, by org and name.
pub(crate) type DeclaredTools = std::collections::HashMap<
    (OrgName, charter_domain::tool::ToolName),
    charter_domain::tool::ToolState,
>;
use views::DecisionView;

/// Every API error: a class (the HTTP status), a stable code, a message
/// safe to show, and optional machine-readable details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub class: ErrorClass,
    pub code: Cow<'static, str>,
    pub message: String,
    pub details: Option<Box<Value>>,
}

impl ApiError {
    pub fn new(class: ErrorClass, code: &'static str, message: String) -> Self {
        Self {
            class,
            code: Cow::Borrowed(code),
            message,
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    pub fn internal(message: String) -> Self {
        tracing::error!(%message, "internal error");
        Self::new(ErrorClass::Internal, "internal", "internal error".into())
    }

    pub fn invalid_name(error: &InvalidName) -> Self {
        Self::new(ErrorClass::InvalidInput, "invalid_name", error.to_string())
    }

    pub fn not_found(what: &str, name: &str) -> Self {
        Self::new(
            ErrorClass::NotFound,
            "not_found",
            format!("{what} `{name}` not found"),
        )
    }

    /// Any typed error of the lower layers. Internal details stay in the
    /// logs.
    pub fn from_error(error: &(impl ErrorCode + std::fmt::Display)) -> Self {
        if error.class() == ErrorClass::Internal {
            return Self::internal(error.to_string());
        }
        Self::new(error.class(), error.code(), error.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<charter_commands::StoreError> for ApiError {
    fn from(error: charter_commands::StoreError) -> Self {
        Self::from_error(&error)
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        Self::from_error(&error)
    }
}

impl<R: ErrorCode + std::fmt::Display> From<CommandError<R>> for ApiError {
    fn from(error: CommandError<R>) -> Self {
        match &error {
            CommandError::Store(StoreError::WrongExpectedVersion {
                expected, actual, ..
            }) => Self::new(
                ErrorClass::Conflict,
                "wrong_expected_version",
                format!(
                    "the object changed since version {}: it is at version {}; read it again",
                    match expected {
                        charter_commands::ExpectedVersion::Exact(v) => v.0.to_string(),
                        other => format!("{other:?}"),
                    },
                    actual.0
                ),
            )
            .with_details(serde_json::json!({ "actualVersion": actual.0 })),
            _ => Self::from_error(&error),
        }
    }
}

/// The object a request is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub org: OrgName,
    pub kind: ResourceKind,
    /// Its name, or `*` for a listing.
    pub name: String,
    pub job_space: Option<JobSpaceName>,
}

impl Target {
    pub fn new(org: &OrgName, kind: ResourceKind, name: impl Into<String>) -> Self {
        Self {
            org: org.clone(),
            kind,
            name: name.into(),
            job_space: None,
        }
    }

    pub fn in_job_space(mut self, space: Option<JobSpaceName>) -> Self {
        self.job_space = space;
        self
    }
}

/// Who is calling, and through what.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    /// The operation as the transport names it, for the audit log.
    pub operation: String,
}

/// The outcome of one authorization.
enum Verdict {
    Allowed(DecisionView),
    Denied(DecisionView),
    /// The target is in another org than the caller's.
    Invisible,
}

/// What one command did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct CommandReport {
    pub command_id: String,
    /// The events appended, by type (the first outcome's, for a repeat).
    pub events: Vec<String>,
    /// The object's stream version after the command.
    pub version: u64,
    /// The global position of its last event: a read that asks for it
    /// (`minPosition`) sees the command's effect.
    pub position: Option<u64>,
    /// True when this command id had been handled before.
    pub duplicate: bool,
    /// A new API key, shown this once (`IssueApiKey` only).
    pub api_key: Option<String>,
    /// What allowed the command.
    pub decision: DecisionView,
}

/// A command ready for the kernel.
#[derive(Debug, Clone)]
pub(crate) enum Ready {
    Org(OrgName, OrgCommand),
    Subject(charter_domain::subject::SubjectId, SubjectCommand),
    Role(charter_domain::role::RoleId, RoleCommand),
    Binding(charter_domain::role::BindingId, BindingCommand),
    Policy(PolicyId, PolicyCommand),
    Tool(ToolId, ToolCommand),
    Workflow(WorkflowId, WorkflowCommand),
}

/// What the kernel did with a ready command.
pub(crate) struct Ran {
    pub events: Vec<String>,
    pub version: StreamVersion,
    pub position: Option<Position>,
    pub duplicate: bool,
}

/// Objects an apply creates before they are in the access index, so that
/// later documents of the same apply can refer to them.
#[derive(Default)]
pub(crate) struct Pending {
    pub orgs: std::collections::HashMap<OrgName, Option<OrgName>>,
    pub job_spaces: std::collections::HashSet<(OrgName, JobSpaceName)>,
    pub subjects: std::collections::HashSet<(OrgName, String)>,
    pub roles: std::collections::HashSet<(OrgName, String)>,
}

struct Tree<'a> {
    facts: &'a Facts,
    pending: &'a Pending,
}

impl OrgTree for Tree<'_> {
    fn parent_of(&self, org: &OrgName) -> Option<Option<OrgName>> {
        self.pending
            .orgs
            .get(org)
            .cloned()
            .or_else(|| self.facts.parent_of(org))
    }

    fn active_children(&self, org: &OrgName) -> Vec<OrgName> {
        let mut children = self.facts.active_children(org);
        children.extend(
            self.pending
                .orgs
                .iter()
                .filter(|(_, parent)| parent.as_ref() == Some(org))
                .map(|(name, _)| name.clone()),
        );
        children.sort();
        children.dedup();
        children
    }
}

/// The gateway's shared parts.
pub struct Gateway {
    /// Runs' traces as this process has seen them; they wake followers of
    /// one run when that run records an event.
    pub run_traces: Arc<crate::engine::RunTraces>,
    /// Hands the run commands it handles to this process's run driver.
    pub run_feed: crate::engine::RunFeed,
    pub handler: CommandHandler,
    pub read_models: Arc<dyn ReadModels>,
    pub access: Arc<AccessIndex>,
    pub auth: Authenticator,
    /// Longest a read waits for a position it asked for.
    pub read_wait: Duration,
    /// How far each projection run by this process has got: a read that
    /// asks for a position waits on these instead of polling the database.
    pub visible: std::collections::HashMap<&'static str, tokio::sync::watch::Receiver<Position>>,
}

impl Gateway {
    /// The principal behind an `Authorization` header value.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        Ok(self.auth.authenticate(header, &self.access)?)
    }

    fn verdict(
        authorizer: &Authorizer,
        principal: &Principal,
        verb: &str,
        target: &Target,
    ) -> Verdict {
        let subject = match principal {
            Principal::Root => return Verdict::Allowed(DecisionView::root()),
            Principal::Subject(id) if id.org != target.org => return Verdict::Invisible,
            Principal::Subject(id) => id,
        };
        let Ok(verb) = Action::parse(verb) else {
            return Verdict::Denied(DecisionView {
                allowed: false,
                grants: vec![],
                permitted_by: vec![],
                forbidden_by: vec![],
                denied_because: Some("unknown_action".into()),
                decided_by: None,
            });
        };
        let request = AccessRequest {
            org: &target.org,
            subject: &subject.name,
            action: &verb,
            kind: target.kind,
            job_space: target.job_space.as_ref(),
        };
        let decision = authorizer.decide(&request, &target.name);
        let view = DecisionView::from(&decision);
        if decision.allowed {
            Verdict::Allowed(view)
        } else {
            Verdict::Denied(view)
        }
    }

    /// Decides whether the caller may do `verb` on `target`; a denial is
    /// recorded in the audit log and answered with 403, a target in
    /// another org with the same 404 a missing one gets.
    pub async fn authorize(
        &self,
        caller: &Caller,
        verb: &'static str,
        target: &Target,
    ) -> Result<DecisionView, ApiError> {
        let verdict = self
            .access
            .read(|authorizer| Self::verdict(authorizer, &caller.principal, verb, target));
        self.settle(caller, verb, target, verdict).await
    }

    async fn settle(
        &self,
        caller: &Caller,
        verb: &str,
        target: &Target,
        verdict: Verdict,
    ) -> Result<DecisionView, ApiError> {
        match verdict {
            Verdict::Allowed(view) => Ok(view),
            Verdict::Invisible => {
                if let Some(own) = caller.principal.org() {
                    // The prober's own org learns of the attempt; the
                    // other org's name is not kept, only that it was not
                    // theirs.
                    self.record_denial(
                        own,
                        caller,
                        verb,
                        target.kind,
                        "*",
                        None,
                        "other_org",
                        vec![],
                    )
                    .await;
                }
                // Exactly what a missing object answers.
                Err(
                    if target.kind == ResourceKind::Organization || target.name == "*" {
                        ApiError::not_found("organization", target.org.as_str())
                    } else {
                        ApiError::not_found(kind_label(target.kind), &target.name)
                    },
                )
            }
            Verdict::Denied(view) => {
                let reason = if view.forbidden_by.is_empty() {
                    view.denied_because
                        .clone()
                        .unwrap_or_else(|| "no_grant".into())
                } else {
                    "forbidden".to_owned()
                };
                self.record_denial(
                    &target.org,
                    caller,
                    verb,
                    target.kind,
                    &target.name,
                    target.job_space.clone(),
                    &reason,
                    view.forbidden_by.clone(),
                )
                .await;
                Err(ApiError::new(
                    ErrorClass::Forbidden,
                    "forbidden",
                    format!(
                        "{} may not {verb} {} `{}` in org `{}`",
                        caller.principal,
                        kind_label(target.kind),
                        target.name,
                        target.org
                    ),
                )
                .with_details(serde_json::to_value(&view).unwrap_or(Value::Null)))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_denial(
        &self,
        org: &OrgName,
        caller: &Caller,
        verb: &str,
        kind: ResourceKind,
        resource: &str,
        job_space: Option<JobSpaceName>,
        reason: &str,
        forbidden_by: Vec<String>,
    ) {
        let denial = Denial {
            principal: caller.principal.to_string(),
            action: verb.to_owned(),
            kind,
            resource: resource.to_owned(),
            job_space,
            operation: caller.operation.clone(),
            reason: reason.to_owned(),
            forbidden_by,
        };
        let meta = self.meta(caller, org, None);
        let id = AuditId::new(org.clone());
        let handling = Handling {
            expected: None,
            fresh_command_id: true,
        };
        if let Err(error) = self
            .handler
            .handle_at::<AuditRecord>(&id, &AuditCommand::RecordDenial(denial), &meta, handling)
            .await
        {
            tracing::error!(%error, org = %org, "could not record a denial in the audit log");
        }
    }

    fn meta(&self, caller: &Caller, org: &OrgName, command_id: Option<uuid::Uuid>) -> CommandMeta {
        let mut meta = CommandMeta::new("", org.clone(), actor_of(caller));
        if let Some(id) = command_id {
            meta.command_id = CommandId::from_uuid(id);
        }
        meta
    }

    /// The verb and target a command needs permission for.
    fn permission(
        authorizer: &Authorizer,
        facts: &Facts,
        pending: &Pending,
        intent: &Intent,
    ) -> (&'static str, Target) {
        match intent {
            Intent::Org(org, command) => match command {
                OrgCommand::Register { .. } => (
                    "create",
                    Target::new(org, ResourceKind::Organization, org.as_str()),
                ),
                OrgCommand::SetJobSpace { name, .. } => {
                    let exists = facts
                        .org(org)
                        .is_some_and(|o| o.job_spaces.contains_key(name))
                        || pending.job_spaces.contains(&(org.clone(), name.clone()));
                    (
                        if exists { "update" } else { "create" },
                        Target::new(org, ResourceKind::JobSpace, name.as_str())
                            .in_job_space(Some(name.clone())),
                    )
                }
                OrgCommand::RemoveJobSpace { name } => (
                    "delete",
                    Target::new(org, ResourceKind::JobSpace, name.as_str())
                        .in_job_space(Some(name.clone())),
                ),
                _ => (
                    "update",
                    Target::new(org, ResourceKind::Organization, org.as_str()),
                ),
            },
            Intent::Subject(id, intent) => {
                let verb = match intent {
                    SubjectIntent::Plain(SubjectCommand::Create { .. }) => "create",
                    SubjectIntent::Plain(SubjectCommand::Delete) => "delete",
                    _ => "update",
                };
                (
                    verb,
                    Target::new(&id.org, ResourceKind::Subject, id.name.as_str()),
                )
            }
            Intent::Role(id, command) => {
                let verb = match command {
                    RoleCommand::Delete => "delete",
                    RoleCommand::Define { .. }
                        if authorizer.grants().has_role(&id.org, &id.name)
                            || pending
                                .roles
                                .contains(&(id.org.clone(), id.name.to_string())) =>
                    {
                        "update"
                    }
                    RoleCommand::Define { .. } => "create",
                };
                (
                    verb,
                    Target::new(&id.org, ResourceKind::Role, id.name.as_str()),
                )
            }
            Intent::Binding(id, intent) => {
                let (verb, space) = match intent {
                    BindingIntent::Unbind => ("delete", None),
                    BindingIntent::Bind(spec) => (
                        if authorizer.grants().has_binding(&id.org, &id.name) {
                            "update"
                        } else {
                            "create"
                        },
                        match &spec.scope {
                            BindingScope::Org => None,
                            BindingScope::JobSpace(space) => Some(space.clone()),
                        },
                    ),
                };
                (
                    verb,
                    Target::new(&id.org, ResourceKind::RoleBinding, id.name.as_str())
                        .in_job_space(space),
                )
            }
            Intent::Policy(id, command) => {
                let verb = match command {
                    PolicyCommand::Delete => "delete",
                    PolicyCommand::Publish { .. } if authorizer.has_policy(id) => "update",
                    PolicyCommand::Publish { .. } => "create",
                };
                (
                    verb,
                    Target::new(&id.org, ResourceKind::Policy, id.name.as_str()),
                )
            }
            // A new version is something created; approving or revoking
            // one is the approver's right.
            Intent::Tool(id, intent) => (
                match intent {
                    ToolIntent::Register(_) => "create",
                    ToolIntent::Approve(_) | ToolIntent::Revoke(..) => "approve",
                },
                Target::new(&id.org, ResourceKind::Tool, id.name.as_str()),
            ),
            Intent::Workflow(id, _) => (
                "create",
                Target::new(&id.org, ResourceKind::Workflow, id.name.as_str()),
            ),
        }
    }

    /// Checks the rules that span objects (the org tree, references, the
    /// admin lock-out) and fills in what the gateway makes (API keys).
    /// Returns the ready command and, for `IssueApiKey`, the plain key.
    fn prepare(
        authorizer: &Authorizer,
        facts: &Facts,
        pending: &Pending,
        intent: &Intent,
        actor: &Actor,
        force: bool,
    ) -> Result<(Ready, Option<String>), ApiError> {
        Ok(match intent {
            Intent::Org(org, command) => {
                if !matches!(command, OrgCommand::Register { .. })
                    && facts.org(org).is_none()
                    && !pending.orgs.contains_key(org)
                {
                    return Err(ApiError::not_found("organization", org.as_str()));
                }
                check_tree(org, command, &Tree { facts, pending })
                    .map_err(|e| ApiError::from_error(&e))?;
                (Ready::Org(org.clone(), command.clone()), None)
            }
            Intent::Subject(id, intent) => {
                Self::org_exists(facts, pending, &id.org)?;
                match intent {
                    SubjectIntent::Plain(command) => {
                        (Ready::Subject(id.clone(), command.clone()), None)
                    }
                    SubjectIntent::IssueApiKey(key_id) => {
                        let (key, digest) = crate::auth::new_api_key();
                        let digest = KeyDigest::parse(digest)
                            .map_err(|e| ApiError::internal(e.to_string()))?;
                        (
                            Ready::Subject(
                                id.clone(),
                                SubjectCommand::AddApiKey {
                                    key_id: key_id.clone(),
                                    digest,
                                },
                            ),
                            Some(key),
                        )
                    }
                }
            }
            Intent::Role(id, command) => {
                Self::org_exists(facts, pending, &id.org)?;
                (Ready::Role(id.clone(), command.clone()), None)
            }
            Intent::Binding(id, intent) => {
                Self::org_exists(facts, pending, &id.org)?;
                let command = match intent {
                    BindingIntent::Unbind => BindingCommand::Unbind,
                    BindingIntent::Bind(spec) => {
                        let org = &id.org;
                        let references = References {
                            subject_exists: authorizer.grants().has_subject(org, &spec.subject)
                                || pending
                                    .subjects
                                    .contains(&(org.clone(), spec.subject.to_string())),
                            role_exists: authorizer.grants().has_role(org, &spec.role)
                                || pending
                                    .roles
                                    .contains(&(org.clone(), spec.role.to_string())),
                            job_space_exists: match &spec.scope {
                                BindingScope::Org => true,
                                BindingScope::JobSpace(space) => {
                                    facts.org(org).is_some_and(|o: &OrgState| {
                                        o.job_spaces.contains_key(space)
                                    }) || pending.job_spaces.contains(&(org.clone(), space.clone()))
                                }
                            },
                        };
                        BindingCommand::Bind {
                            spec: spec.clone(),
                            references,
                        }
                    }
                };
                (Ready::Binding(id.clone(), command), None)
            }
            Intent::Policy(id, command) => {
                Self::org_exists(facts, pending, &id.org)?;
                if let PolicyCommand::Publish { text } = command
                    && let Err(problems) = charter_domain::policy::check_policy(text)
                {
                    let summary: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    return Err(ApiError::new(
                        ErrorClass::InvalidInput,
                        "invalid_policy",
                        format!("the policy is not valid: {}", summary.join("; ")),
                    )
                    .with_details(serde_json::json!({ "problems": problems })));
                }
                if !force {
                    Self::check_lock_out(authorizer, id, command)?;
                }
                (Ready::Policy(id.clone(), command.clone()), None)
            }
            Intent::Tool(id, intent) => {
                Self::org_exists(facts, pending, &id.org)?;
                (Ready::Tool(id.clone(), intent.command(actor)), None)
            }
            Intent::Workflow(id, spec) => {
                Self::org_exists(facts, pending, &id.org)?;
                (
                    Ready::Workflow(
                        id.clone(),
                        WorkflowCommand::Register {
                            spec: spec.clone(),
                            by: actor.clone(),
                        },
                    ),
                    None,
                )
            }
        })
    }

    fn org_exists(facts: &Facts, pending: &Pending, org: &OrgName) -> Result<(), ApiError> {
        if facts.org(org).is_some() || pending.orgs.contains_key(org) {
            Ok(())
        } else {
            Err(ApiError::not_found("organization", org.as_str()))
        }
    }

    /// Refuses a policy change after which no subject of the org could
    /// still change policies, when some could before.
    fn check_lock_out(
        authorizer: &Authorizer,
        id: &PolicyId,
        command: &PolicyCommand,
    ) -> Result<(), ApiError> {
        let text = match command {
            PolicyCommand::Publish { text } => Some(text.as_str()),
            PolicyCommand::Delete => None,
        };
        let before = authorizer.admins_locked_out(id, text);
        if !before.is_empty() {
            return Err(ApiError::new(
                ErrorClass::FailedPrecondition,
                "would_lock_out_admins",
                format!(
                    "after this change no subject of org `{}` could still change its policies (today: {}); send it again with force to go ahead",
                    id.org,
                    before.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
            .with_details(serde_json::json!({
                "adminsBefore": before.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            })));
        }
        Ok(())
    }

    /// Runs a ready command through the kernel.
    pub(crate) async fn run(
        &self,
        ready: &Ready,
        meta: &CommandMeta,
        handling: Handling,
    ) -> Result<Ran, ApiError> {
        async fn go<A: Aggregate>(
            handler: &CommandHandler,
            id: &A::Id,
            command: &A::Command,
            meta: &CommandMeta,
            handling: Handling,
        ) -> Result<Ran, ApiError> {
            let outcome = handler.handle_at::<A>(id, command, meta, handling).await?;
            Ok(Ran {
                events: outcome
                    .events
                    .iter()
                    .map(|e| e.event_type().to_owned())
                    .collect(),
                version: outcome.stream_version,
                position: outcome.position,
                duplicate: outcome.duplicate,
            })
        }
        let h = &self.handler;
        match ready {
            Ready::Org(id, c) => go::<Organization>(h, id, c, meta, handling).await,
            Ready::Subject(id, c) => go::<Subject>(h, id, c, meta, handling).await,
            Ready::Role(id, c) => go::<Role>(h, id, c, meta, handling).await,
            Ready::Binding(id, c) => go::<RoleBinding>(h, id, c, meta, handling).await,
            Ready::Policy(id, c) => go::<Policy>(h, id, c, meta, handling).await,
            Ready::Tool(id, c) => go::<Tool>(h, id, c, meta, handling).await,
            Ready::Workflow(id, c) => go::<Workflow>(h, id, c, meta, handling).await,
        }
    }

    /// `POST /v1/commands`, `submitCommand`: one authorized command.
    pub async fn submit(
        &self,
        caller: &Caller,
        request: &CommandRequest,
    ) -> Result<CommandReport, ApiError> {
        let intent = commands::parse(request)?;
        let pending = Pending::default();
        let (verdict, verb, target) = self.access.read_all(|authorizer, facts| {
            let (verb, target) = Self::permission(authorizer, facts, &pending, &intent);
            (
                Self::verdict(authorizer, &caller.principal, verb, &target),
                verb,
                target,
            )
        });
        let decision = self.settle(caller, verb, &target, verdict).await?;
        if let Intent::Workflow(id, spec) = &intent {
            self.check_workflow(id, spec, &DeclaredTools::new()).await?;
        }
        let actor = actor_of(caller);
        let (ready, api_key) = self.access.read_all(|authorizer, facts| {
            Self::prepare(authorizer, facts, &pending, &intent, &actor, request.force)
        })?;
        let meta = self.meta(caller, intent.org(), request.command_id);
        let handling = Handling {
            expected: request.expected_version.map(StreamVersion),
            fresh_command_id: request.command_id.is_none(),
        };
        let ran = self.run(&ready, &meta, handling).await?;
        // Changes to who may do what (or who may sign in) are decided on
        // by the next request.
        if let Some(position) = ran.position
            && changes_access(&ready)
        {
            self.access.wait_for(position, self.read_wait).await;
        }
        Ok(CommandReport {
            command_id: meta.command_id.to_string(),
            events: ran.events,
            version: ran.version.0,
            position: ran.position.map(|p| p.0),
            duplicate: ran.duplicate,
            // A repeated command made no key: the first answer had it.
            api_key: if ran.duplicate { None } else { api_key },
            decision,
        })
    }

    /// Checks a workflow definition whole against what it refers to;
    /// every problem is reported, with its path.
    /// Checks a workflow definition against the org's tools and workflows
    /// (and the tools `declared` by the same apply, as it leaves them).
    pub(crate) async fn check_workflow(
        &self,
        id: &WorkflowId,
        spec: &charter_domain::workflow::WorkflowSpec,
        declared: &DeclaredTools,
    ) -> Result<(), ApiError> {
        use charter_domain::workflow::{Known, NodeKind, validate};
        let mut known = Known::default();
        for node in &spec.nodes {
            match node.kind() {
                Some(NodeKind::Tool(name, _))
                    if let Some(state) = declared.get(&(id.org.clone(), name.clone())) =>
                {
                    known.tools.insert(name.clone(), state.clone());
                }
                Some(NodeKind::Tool(name, _)) if !known.tools.contains_key(name) => {
                    let tool = self
                        .handler
                        .load::<Tool>(&charter_domain::ids::Scoped::new(
                            id.org.clone(),
                            name.clone(),
                        ))
                        .await?;
                    if let Some(state) = tool.state.0 {
                        known.tools.insert(name.clone(), state);
                    }
                }
                Some(NodeKind::Workflow(sub)) if !known.workflows.contains_key(&sub.name) => {
                    let flow = self
                        .handler
                        .load::<Workflow>(&charter_domain::ids::Scoped::new(
                            id.org.clone(),
                            sub.name.clone(),
                        ))
                        .await?;
                    if let Some(state) = flow.state.0 {
                        known.workflows.insert(
                            sub.name.clone(),
                            state
                                .versions
                                .iter()
                                .map(|v| v.spec.version.clone())
                                .collect(),
                        );
                    }
                }
                _ => {}
            }
        }
        validate(&id.name, spec, &known).map_err(|problems| {
            ApiError::new(
                ErrorClass::InvalidInput,
                "invalid_workflow",
                format!(
                    "the workflow `{}` has {} problem(s): {}",
                    id.name,
                    problems.len(),
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
            .with_details(serde_json::json!({ "problems": problems }))
        })
    }

    /// Waits until a projection has applied the log through `position`.
    pub async fn wait_visible(
        &self,
        projection: &str,
        position: Option<u64>,
    ) -> Result<(), ApiError> {
        let Some(position) = position else {
            return Ok(());
        };
        if let Some(visible) = self.visible.get(projection) {
            let mut visible = visible.clone();
            let reached =
                tokio::time::timeout(self.read_wait, visible.wait_for(|at| at.0 >= position)).await;
            if matches!(reached, Ok(Ok(_))) {
                return Ok(());
            }
        }
        self.read_models
            .wait_for(projection, Position(position), self.read_wait)
            .await
            .map_err(|e| match e {
                charter_projections::ProjectionError::NotYetVisible(_) => ApiError::new(
                    ErrorClass::Unavailable,
                    "not_yet_visible",
                    format!(
                        "position {position} is not visible yet after {} ms; try again",
                        self.read_wait.as_millis()
                    ),
                ),
                other => ApiError::from_error(&other),
            })
    }
}

/// Whether a command changes what the access index decides: grants,
/// policies, credentials, or a subject's standing. A new subject has no
/// grant until bound, and a display name decides nothing.
fn changes_access(ready: &Ready) -> bool {
    match ready {
        Ready::Org(..) => false,
        Ready::Subject(_, command) => !matches!(
            command,
            SubjectCommand::Create { .. } | SubjectCommand::SetDisplayName { .. }
        ),
        Ready::Role(..) | Ready::Binding(..) | Ready::Policy(..) => true,
        Ready::Tool(..) | Ready::Workflow(..) => false,
    }
}

/// The actor a caller's commands are recorded under.
pub(crate) fn actor_of(caller: &Caller) -> Actor {
    Actor::parse(caller.principal.to_string()).unwrap_or_else(|_| Actor::system())
}

/// How a kind is named in messages.
pub fn kind_label(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::Organization => "organization",
        ResourceKind::Subject => "subject",
        ResourceKind::Role => "role",
        ResourceKind::RoleBinding => "role binding",
        ResourceKind::JobSpace => "job space",
        ResourceKind::Policy => "policy",
        ResourceKind::Tool => "tool",
        ResourceKind::Workflow => "workflow",
        ResourceKind::WorkflowRun => "workflow run",
        ResourceKind::Job => "job",
        ResourceKind::AuditLog => "audit log",
    }
}
