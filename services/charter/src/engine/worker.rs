//! Workers: take a task, check the run still wants it, run the constraint
//! checks (the starter's authorization for this tool version, the
//! contract's charge, the input schema), claim the node with the checks on
//! record, execute, and report the outcome as a command. A task that
//! arrives twice, or for a node someone else holds, is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use charter_commands::{CommandError, CommandHandler, CommandMeta};
use charter_domain::contract::{CallCharge, Contract, ContractCommand, ContractEvent};
use charter_domain::ids::Scoped;
use charter_domain::run::{NodeFailure, NodeState, Run, RunCommand, RunId, RunRejection, RunState};
use charter_domain::tool::Tool;
use charter_domain::workflow::{NodeKind, NodeName, NodeSpec};
use charter_domain::{Actor, Aggregate, ErrorCode};
use charter_executor::{Call, Executor};
use charter_projections::access::AccessIndex;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::queue::{Delivery, Task};
use super::start::{StartRequest, now_ms, start_run};
use crate::auth::Principal;
use crate::gateway::views::DecisionView;

/// How long past a call's own timeout a claim holds before another worker
/// may take the node over.
const LEASE_GRACE_MS: i64 = 5_000;

/// The calls running in this process, so that a cancelled or failed run
/// can stop them.
#[derive(Default)]
pub struct Running {
    calls: Mutex<HashMap<(RunId, NodeName), oneshot::Sender<()>>>,
}

impl Running {
    fn register(&self, run: &RunId, node: &NodeName) -> oneshot::Receiver<()> {
        let (stop, stopped) = oneshot::channel();
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((run.clone(), node.clone()), stop);
        stopped
    }

    fn forget(&self, run: &RunId, node: &NodeName) {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(run.clone(), node.clone()));
    }

    /// Stops every call of a run (dropping a call kills its processes).
    pub fn cancel_run(&self, run: &RunId) {
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stopping: Vec<(RunId, NodeName)> =
            calls.keys().filter(|(r, _)| r == run).cloned().collect();
        for key in stopping {
            if let Some(stop) = calls.remove(&key) {
                let _ = stop.send(());
            }
        }
    }
}

pub struct Worker {
    pub handler: CommandHandler,
    pub access: Arc<AccessIndex>,
    pub executor: Arc<Executor>,
    pub running: Arc<Running>,
    pub feed: super::RunFeed,
    pub id: String,
}

fn meta(run: &RunId, kind: &str) -> CommandMeta {
    CommandMeta::new(kind, run.org.clone(), Actor::system())
}

/// Whether a rejection only says someone else got there first.
fn superseded(error: &CommandError<RunRejection>) -> bool {
    matches!(
        error,
        CommandError::Rejected(
            RunRejection::NotRunning { .. } | RunRejection::LeaseHeld(_) | RunRejection::Ended(_)
        )
    )
}

impl Worker {
    pub async fn handle(&self, delivery: Delivery) {
        let task = delivery.task.clone();
        let began = std::time::Instant::now();
        let work = self.execute(&task);
        tokio::pin!(work);
        // Long calls tell the queue they are alive.
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                () = tokio::time::sleep(Duration::from_secs(10)) => delivery.progress().await,
            }
        };
        metrics::histogram!("charter_engine_task_seconds").record(began.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => delivery.ack().await,
            Err(error) => {
                tracing::warn!(run = %task.run, node = %task.node, %error, "a task failed; it will be retried");
                delivery.retry_later(Duration::from_secs(1)).await;
            }
        }
    }

    /// Claims a node; false when someone else holds it or it is done.
    async fn claim(&self, run: &RunId, claim: RunCommand) -> anyhow::Result<bool> {
        match self
            .feed
            .handle(&self.handler, run, &claim, &meta(run, Run::KIND))
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if superseded(&error) => Ok(false),
            Err(error) => Err(anyhow::anyhow!("claiming a node: {error}")),
        }
    }

    async fn report(&self, run: &RunId, command: RunCommand) -> anyhow::Result<()> {
        match self
            .feed
            .handle(&self.handler, run, &command, &meta(run, Run::KIND))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if superseded(&error) => Ok(()),
            Err(error) => Err(anyhow::anyhow!("recording a node's outcome: {error}")),
        }
    }

    async fn execute(&self, task: &Task) -> anyhow::Result<()> {
        let loaded = self.handler.load::<Run>(&task.run).await?;
        let Some(state) = loaded.state.0 else {
            return Ok(());
        };
        if state.status.is_final() {
            return Ok(());
        }
        let now = now_ms();
        let input = match state.nodes.get(&task.node) {
            Some(NodeState::Scheduled { attempt, input, .. }) if *attempt == task.attempt => {
                input.clone()
            }
            Some(NodeState::Running {
                attempt,
                input,
                lease_until,
                ..
            }) if *attempt == task.attempt && *lease_until <= now => input.clone(),
            _ => return Ok(()),
        };
        let Some(spec) = state.plan.spec.nodes.iter().find(|n| n.name == task.node) else {
            return Ok(());
        };
        match spec.kind() {
            Some(NodeKind::Tool(..)) => self.call_tool(&state, spec, task, input).await,
            Some(NodeKind::Workflow(sub)) => {
                let child = RunId::new(task.run.org.clone());
                let claim = RunCommand::Claim {
                    node: task.node.clone(),
                    attempt: task.attempt,
                    worker: format!("run:{}", child.id),
                    lease_until: state.deadline,
                    checks: json!({"subWorkflow": child.to_string()}),
                    now,
                };
                if !self.claim(&task.run, claim).await? {
                    return Ok(());
                }
                let started = start_run(
                    &self.handler,
                    &self.feed,
                    &self.access,
                    StartRequest {
                        run: child,
                        workflow: &sub.name,
                        version: state.plan.workflows.get(&task.node),
                        input,
                        by: state.started_by.clone(),
                        parent: Some((task.run.clone(), task.node.clone())),
                        job_space: state.plan.job_space.clone(),
                    },
                )
                .await;
                if let Err(error) = started {
                    self.report(
                        &task.run,
                        RunCommand::Fail {
                            node: task.node.clone(),
                            attempt: task.attempt,
                            failure: NodeFailure {
                                code: error.code.to_string(),
                                message: error.message,
                                retryable: false,
                            },
                            now: now_ms(),
                        },
                    )
                    .await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn call_tool(
        &self,
        state: &RunState,
        spec: &NodeSpec,
        task: &Task,
        input: Value,
    ) -> anyhow::Result<()> {
        let org = &task.run.org;
        let fail = |code: &str, message: String| RunCommand::Fail {
            node: task.node.clone(),
            attempt: task.attempt,
            failure: NodeFailure {
                code: code.to_owned(),
                message,
                retryable: false,
            },
            now: now_ms(),
        };
        let Some(pinned) = state.plan.tools.get(&task.node) else {
            return self
                .report(
                    &task.run,
                    fail(
                        "tool_not_pinned",
                        "the run has no tool version for this node".into(),
                    ),
                )
                .await;
        };
        let tool = self
            .handler
            .load::<Tool>(&Scoped::new(org.clone(), pinned.name.clone()))
            .await?
            .state
            .0;
        let version = match tool.as_ref().map(|t| t.runnable(Some(&pinned.version))) {
            Some(Ok(version)) => version.clone(),
            Some(Err(rejection)) => {
                return self
                    .report(&task.run, fail(rejection.code(), rejection.to_string()))
                    .await;
            }
            None => {
                return self
                    .report(
                        &task.run,
                        fail(
                            "tool_not_found",
                            format!("tool `{}` does not exist", pinned.name),
                        ),
                    )
                    .await;
            }
        };
        let mut tool_spec = version.spec.clone();
        if let Some(timeout) = spec.timeout
            && timeout < tool_spec.limits.timeout
        {
            tool_spec.limits.timeout = timeout;
        }

        // 1. The starter's authorization for this tool version.
        let principal: Result<Principal, _> = state.started_by.as_str().parse();
        let decision = match &principal {
            Ok(Principal::Root) => Some(DecisionView::root()),
            Ok(Principal::Subject(id)) => {
                Some(DecisionView::from(&self.access.read(|authorizer| {
                    authorizer.decide_call(
                        org,
                        &id.name,
                        pinned.name.as_str(),
                        pinned.version.as_str(),
                        state.plan.job_space.as_ref(),
                        &input,
                    )
                })))
            }
            Err(_) => None,
        };
        let authorization = match &decision {
            Some(decision) => serde_json::to_value(decision).unwrap_or(Value::Null),
            None => json!({"allowed": false, "deniedBecause": "unknown_principal"}),
        };
        let mut refusal = None;
        if !decision.is_some_and(|d| d.allowed) {
            refusal = Some((
                "forbidden",
                format!(
                    "{} may not call `{}` at version `{}`",
                    state.started_by, pinned.name, pinned.version
                ),
            ));
        }
        // 2. The contract.
        let mut contract = Value::Null;
        if refusal.is_none() {
            let charge = ContractCommand::Charge {
                call: CallCharge {
                    node: task.node.clone(),
                    attempt: task.attempt,
                    tool: pinned.name.clone(),
                    version: pinned.version.clone(),
                    cost: tool_spec.cost,
                },
                now: now_ms(),
            };
            let outcome = self
                .handler
                .handle::<Contract>(&task.run, &charge, &meta(&task.run, Contract::KIND))
                .await
                .map_err(|e| anyhow::anyhow!("charging the contract: {e}"))?;
            contract = match outcome.events.first() {
                Some(ContractEvent::CallAdmitted {
                    calls_used,
                    cost_used,
                    ..
                }) => json!({"admitted": true, "callsUsed": calls_used, "costUsed": cost_used}),
                Some(ContractEvent::Breached { kind, detail, .. }) => {
                    refusal = Some(("contract_breach", format!("{}: {detail}", kind.as_str())));
                    json!({"admitted": false, "breach": kind.as_str(), "detail": detail})
                }
                _ => json!({"admitted": true, "repeat": true}),
            };
        }
        // 3. The input schema.
        let idempotency_key = state.idempotency_key(&task.node);
        let scopes: Vec<String> = state.plan.spec.scopes.iter().cloned().collect();
        let call = Call {
            org,
            tool: &pinned.name,
            spec: &tool_spec,
            input: &input,
            idempotency_key: &idempotency_key,
            scopes: &scopes,
        };
        let mut input_check = Value::Null;
        if refusal.is_none() {
            input_check = match self.executor.check_input(&call) {
                Ok(()) => json!({"valid": true}),
                Err(failure) => {
                    refusal = Some(("input_schema_mismatch", failure.message.clone()));
                    json!({"valid": false, "problems": failure.problems})
                }
            };
        }
        let checks = json!({
            "tool": pinned.name.as_str(),
            "version": pinned.version.as_str(),
            "authorization": authorization,
            "contract": contract,
            "input": input_check,
        });
        let claim = RunCommand::Claim {
            node: task.node.clone(),
            attempt: task.attempt,
            worker: self.id.clone(),
            lease_until: now_ms() + tool_spec.limits.timeout.as_millis() as i64 + LEASE_GRACE_MS,
            checks,
            now: now_ms(),
        };
        if !self.claim(&task.run, claim).await? {
            return Ok(());
        }
        if let Some((code, message)) = refusal {
            return self.report(&task.run, fail(code, message)).await;
        }

        let stopped = self.running.register(&task.run, &task.node);
        let outcome = tokio::select! {
            outcome = self.executor.call(call) => Some(outcome),
            _ = stopped => None,
        };
        self.running.forget(&task.run, &task.node);
        let command = match outcome {
            // The run ended while the call ran; nothing to report.
            None => return Ok(()),
            Some(Ok(success)) => RunCommand::Succeed {
                node: task.node.clone(),
                attempt: task.attempt,
                output: success.output,
                now: now_ms(),
            },
            Some(Err(failure)) => RunCommand::Fail {
                node: task.node.clone(),
                attempt: task.attempt,
                failure: NodeFailure {
                    code: failure.code.as_str().to_owned(),
                    message: if failure.stderr.is_empty() {
                        failure.message
                    } else {
                        format!("{} (stderr: {})", failure.message, failure.stderr)
                    },
                    retryable: failure.retryable,
                },
                now: now_ms(),
            },
        };
        self.report(&task.run, command).await
    }
}
