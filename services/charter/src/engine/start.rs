//! Starting a run: the definition version, its input checked against the
//! workflow's input schema, every tool and sub-workflow version pinned, the
//! contract issued (the tools its starter may call, the budgets, scopes and
//! deadline), then the run itself, with the built-in steps ready from its
//! start, in one append. Used by the gateway and, for sub-workflows, by
//! workers.

use std::collections::BTreeMap;

use charter_commands::joint::Joint;
use charter_commands::{CommandHandler, CommandMeta, Position};
use charter_domain::contract::{Contract, ContractCommand, Terms};
use charter_domain::ids::{JobSpaceName, Scoped};
use charter_domain::run::{PinnedTool, Run, RunCommand, RunId, RunPlan};
use charter_domain::tool::{CompiledSchema, Tool, ToolVersion};
use charter_domain::workflow::{NodeKind, NodeName, Workflow, WorkflowName};
use charter_domain::{Actor, Aggregate, ErrorClass, OrgName};
use charter_projections::access::AccessIndex;
use serde_json::{Value, json};

use super::worker::Refusal;
use crate::auth::Principal;
use crate::gateway::ApiError;

/// Milliseconds since the epoch, as runs count time.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct StartRequest<'a> {
    pub run: RunId,
    pub workflow: &'a WorkflowName,
    pub version: Option<&'a ToolVersion>,
    pub input: Value,
    pub by: Actor,
    pub parent: Option<(RunId, NodeName)>,
    pub job_space: Option<JobSpaceName>,
}

/// What a start appended.
pub struct Started {
    pub run: RunId,
    pub position: Option<Position>,
    pub events: Vec<String>,
}

pub async fn start_run(
    handler: &CommandHandler,
    feed: &super::RunFeed,
    access: &AccessIndex,
    request: StartRequest<'_>,
) -> Result<Started, ApiError> {
    let org: &OrgName = &request.run.org;
    // Definitions and tools as this process knows them; the store is asked
    // before anything is refused for what they lack.
    let workflow = handler
        .load_unless::<Workflow>(&Scoped::new(org.clone(), request.workflow.clone()), |w| {
            w.0.as_ref()
                .is_some_and(|w| w.version(request.version).is_some())
        })
        .await?;
    let workflow = workflow
        .0
        .as_ref()
        .ok_or_else(|| ApiError::not_found("workflow", request.workflow.as_str()))?;
    let version = workflow.version(request.version).ok_or_else(|| {
        ApiError::not_found(
            "workflow version",
            request.version.map_or("latest", |v| v.as_str()),
        )
    })?;
    let spec = &version.spec;
    let schema = CompiledSchema::compile(&spec.input)
        .map_err(|e| ApiError::internal(format!("the workflow's input schema: {e}")))?;
    if let Err(problems) = schema.check(&request.input) {
        return Err(ApiError::new(
            ErrorClass::InvalidInput,
            "invalid_run_input",
            format!(
                "the input does not match the workflow's input schema: {}",
                problems
                    .iter()
                    .take(3)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
        .with_details(json!({ "problems": problems })));
    }

    let principal: Principal = request
        .by
        .as_str()
        .parse()
        .map_err(|e: String| ApiError::internal(e))?;
    let mut tools = BTreeMap::new();
    let mut workflows = BTreeMap::new();
    for node in &spec.nodes {
        match node.kind() {
            Some(NodeKind::Tool(name, pinned)) => {
                let tool = handler
                    .load_unless::<Tool>(&Scoped::new(org.clone(), name.clone()), |t| {
                        t.0.as_ref().is_some_and(|t| t.runnable(pinned).is_ok())
                    })
                    .await?;
                let state = tool
                    .0
                    .as_ref()
                    .ok_or_else(|| ApiError::not_found("tool", name.as_str()))?;
                let version = state.runnable(pinned).map_err(|e| {
                    ApiError::new(
                        ErrorClass::FailedPrecondition,
                        "tool_not_runnable",
                        format!("node `{}`: tool `{name}`: {e}", node.name),
                    )
                })?;
                let version = version.spec.version.clone();
                tools.insert(
                    node.name.clone(),
                    PinnedTool {
                        name: name.clone(),
                        version,
                    },
                );
            }
            Some(NodeKind::Workflow(sub)) => {
                let child = handler
                    .load_unless::<Workflow>(&Scoped::new(org.clone(), sub.name.clone()), |w| {
                        w.0.as_ref()
                            .is_some_and(|w| w.version(sub.version.as_ref()).is_some())
                    })
                    .await?;
                let child = child
                    .0
                    .as_ref()
                    .and_then(|w| {
                        w.version(sub.version.as_ref())
                            .map(|v| v.spec.version.clone())
                    })
                    .ok_or_else(|| ApiError::not_found("workflow", sub.name.as_str()))?;
                workflows.insert(node.name.clone(), child);
            }
            _ => {}
        }
    }
    let now = now_ms();
    let plan = RunPlan {
        workflow: request.workflow.clone(),
        spec: spec.clone(),
        tools,
        workflows,
        parent: request.parent,
        job_space: request.job_space,
    };
    let may_call = |tool: &PinnedTool| match &principal {
        Principal::Root => true,
        Principal::Subject(id) => access.read(|authorizer| {
            authorizer
                .decide_call(
                    org,
                    &id.name,
                    tool.name.as_str(),
                    tool.version.as_str(),
                    plan.job_space.as_ref(),
                    // What a call may carry is decided per call.
                    &Value::Null,
                )
                .allowed
        }),
    };
    let terms = Terms::for_run(&plan, request.by.as_str(), may_call, now);
    let meta = |kind: &str| CommandMeta::new(kind, org.clone(), request.by.clone());
    let issue = ContractCommand::Issue {
        terms: Box::new(terms),
    };
    let start = RunCommand::Start {
        plan: std::sync::Arc::new(plan),
        input: request.input,
        by: request.by.clone(),
        now,
    };
    // The contract and the run begin in one append, with the built-in
    // steps ready from the start (each charged, claimed with its checks
    // and recorded, as a worker would; built-ins are pure, so deciding
    // again after a conflict repeats nothing outside). The first node that
    // is not a built-in is handed over after.
    let worker = feed.worker();
    // The driver leaves the first node to the hand-over below.
    let appending = worker
        .as_ref()
        .map(|worker| worker.in_hand.appending(&request.run));
    let outcome = handler
        .handle_together::<Contract, Run, _, _>(
            (&request.run, &meta(Contract::KIND)),
            (&request.run, &meta(Run::KIND)),
            |contract: &Contract, run: &Run| {
                let mut first = contract
                    .decide(&request.run, &issue)
                    .map_err(Refusal::Contract)?;
                let mut second = run.decide(&request.run, &start).map_err(Refusal::Run)?;
                let chained = worker.as_ref().map_or(0, |worker| {
                    worker.complete_append(
                        &request.run,
                        (contract, run),
                        (&mut first, &mut second),
                        true,
                    )
                });
                Ok::<_, Refusal>(Joint {
                    first,
                    second,
                    value: chained,
                })
            },
        )
        .await?;
    metrics::counter!("charter_engine_steps_in_one_append_total").increment(outcome.value);
    feed.send_and_hand_over(&request.run, &outcome.second, &request.by);
    drop(appending);
    Ok(Started {
        run: request.run,
        position: outcome.second.position,
        events: outcome
            .second
            .events
            .iter()
            .map(|e| charter_domain::DomainEvent::event_type(e).to_owned())
            .collect(),
    })
}
