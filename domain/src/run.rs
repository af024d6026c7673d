//! Workflow runs: one execution of one definition version under one
//! contract. The run's stream is its execution trace.
//!
//! [`Run`] is a state machine over the nodes of a [`RunPlan`]. Every
//! command that changes a node also advances the run in the same decision
//! ([`RunState::advance`]): nodes whose needs are done (succeeded or
//! skipped) are skipped (a false `when`) or started (a tool call or sub-workflow is
//! scheduled for a worker, an approval is requested, a timer is set), within
//! the run's concurrency; when every node is done the run completes, when
//! one fails for good the run fails. Time comes in with the command (`now`,
//! milliseconds since the epoch), so deciding stays pure. Repeated reports
//! (a worker that reports twice, a redelivered task) change nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::Expression;
use crate::ids::{Actor, JobSpaceName};
use crate::tool::{ToolName, ToolVersion};
use crate::workflow::{NodeKind, NodeName, NodeSpec, WorkflowName, WorkflowSpec};
use crate::{Aggregate, DomainEvent, ErrorClass, ErrorCode};

crate::ids::org_uuid_id!(
    /// A run's identity: `org:uuid`. Its contract has the same identity.
    RunId,
    "run id"
);

/// A tool version a run's node calls, fixed when the run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedTool {
    pub name: ToolName,
    pub version: ToolVersion,
}

/// What a run executes: one definition version, with every tool version
/// and sub-workflow version resolved when it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPlan {
    pub workflow: WorkflowName,
    pub spec: WorkflowSpec,
    #[serde(default)]
    pub tools: BTreeMap<NodeName, PinnedTool>,
    #[serde(default)]
    pub workflows: BTreeMap<NodeName, ToolVersion>,
    /// The run and node that started this one, for a sub-workflow.
    #[serde(default)]
    pub parent: Option<(RunId, NodeName)>,
    /// The job space the run works in: its calls are authorized there.
    #[serde(default)]
    pub job_space: Option<JobSpaceName>,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
    pub fn is_final(self) -> bool {
        self != Self::Running
    }
}

/// Where a node stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "status",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum NodeState {
    /// Its needs are not done yet (or the run is at its concurrency). A
    /// skipped need counts as done: a `when` can test
    /// `nodes.x.status == 'skipped'`.
    Waiting,
    /// Ready for a worker from `due` on.
    Scheduled {
        attempt: u32,
        due: i64,
        input: Value,
    },
    /// A worker runs it; another may take over after `lease_until`.
    Running {
        attempt: u32,
        input: Value,
        worker: String,
        lease_until: i64,
    },
    /// Waiting for a subject to approve, until `deadline`.
    AwaitingApproval {
        deadline: i64,
    },
    /// A timer that fires at `fire_at`.
    Sleeping {
        fire_at: i64,
    },
    Succeeded {
        output: Value,
    },
    Failed {
        code: String,
        message: String,
    },
    Skipped {
        reason: String,
    },
}

impl NodeState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Scheduled { .. } => "scheduled",
            Self::Running { .. } => "running",
            Self::AwaitingApproval { .. } => "awaitingApproval",
            Self::Sleeping { .. } => "sleeping",
            Self::Succeeded { .. } => "succeeded",
            Self::Failed { .. } => "failed",
            Self::Skipped { .. } => "skipped",
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(
            self,
            Self::Succeeded { .. } | Self::Failed { .. } | Self::Skipped { .. }
        )
    }

    /// Whether the node holds one of the run's concurrency slots.
    fn is_active(&self) -> bool {
        matches!(
            self,
            Self::Scheduled { .. }
                | Self::Running { .. }
                | Self::AwaitingApproval { .. }
                | Self::Sleeping { .. }
        )
    }
}

/// What a run's driver has to do now; see [`RunState::due`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Node, attempt and the lease that ran out (0 for a first dispatch).
    pub dispatch: Vec<(NodeName, u32, i64)>,
    pub tick: bool,
    /// When something is next due.
    pub next: i64,
}

/// A failure a worker reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFailure {
    pub code: String,
    pub message: String,
    /// Whether another attempt may succeed (the node's `nonRetryable`
    /// codes override it).
    pub retryable: bool,
}

/// What was checked before a call, as recorded with it.
pub type Checks = Value;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub id: RunId,
    /// Shared: states are cloned often (each decision works on a copy),
    /// the plan never changes.
    pub plan: Arc<RunPlan>,
    pub input: Value,
    pub started_by: Actor,
    pub started_at: i64,
    pub deadline: i64,
    pub status: RunStatus,
    pub nodes: BTreeMap<NodeName, NodeState>,
    /// Attempts made per node (for the trace and the idempotency key).
    pub attempts: BTreeMap<NodeName, u32>,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<NodeFailure>,
}

/// The Run aggregate; `None` until started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run(pub Option<Box<RunState>>);

#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    Start {
        plan: Arc<RunPlan>,
        input: Value,
        by: Actor,
        now: i64,
    },
    /// A worker takes a scheduled node (or one whose lease ran out).
    /// While a lease runs nobody claims the node again, its holder
    /// neither.
    Claim {
        node: NodeName,
        attempt: u32,
        worker: String,
        lease_until: i64,
        checks: Checks,
        now: i64,
    },
    Succeed {
        node: NodeName,
        attempt: u32,
        output: Value,
        now: i64,
    },
    Fail {
        node: NodeName,
        attempt: u32,
        failure: NodeFailure,
        now: i64,
    },
    /// A subject allowed to approve the run answers an approval node.
    Answer {
        node: NodeName,
        approved: bool,
        by: Actor,
        comment: String,
        now: i64,
    },
    /// Time passed: timers fire, approvals and the deadline expire.
    Tick {
        now: i64,
    },
    Cancel {
        by: Actor,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all_fields = "camelCase")]
pub enum RunEvent {
    Started {
        id: RunId,
        plan: Arc<RunPlan>,
        input: Value,
        by: Actor,
        at: i64,
        deadline: i64,
    },
    NodeScheduled {
        node: NodeName,
        attempt: u32,
        due: i64,
        input: Value,
    },
    NodeStarted {
        node: NodeName,
        attempt: u32,
        worker: String,
        lease_until: i64,
        checks: Checks,
        at: i64,
    },
    NodeSucceeded {
        node: NodeName,
        attempt: u32,
        output: Value,
        at: i64,
    },
    AttemptFailed {
        node: NodeName,
        attempt: u32,
        failure: NodeFailure,
        /// When the next attempt is due; `None`: no more attempts.
        retry_at: Option<i64>,
        at: i64,
    },
    NodeFailed {
        node: NodeName,
        code: String,
        message: String,
    },
    NodeSkipped {
        node: NodeName,
        reason: String,
    },
    ApprovalRequested {
        node: NodeName,
        message: String,
        deadline: i64,
    },
    Approved {
        node: NodeName,
        by: Actor,
        comment: String,
        at: i64,
    },
    Rejected {
        node: NodeName,
        by: Actor,
        comment: String,
        at: i64,
    },
    TimerStarted {
        node: NodeName,
        fire_at: i64,
    },
    TimerFired {
        node: NodeName,
        at: i64,
    },
    Completed {
        output: Value,
        at: i64,
    },
    Failed {
        code: String,
        message: String,
        at: i64,
    },
    Cancelled {
        by: Actor,
        reason: String,
    },
}

/// The types of the events after which a run records nothing more.
pub const ENDING_EVENTS: [&str; 3] = ["Completed", "Failed", "Cancelled"];

impl RunEvent {
    /// Whether the run records nothing after this event.
    pub fn ends_run(&self) -> bool {
        matches!(
            self,
            Self::Completed { .. } | Self::Failed { .. } | Self::Cancelled { .. }
        )
    }
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Started { .. } => "Started",
            Self::NodeScheduled { .. } => "NodeScheduled",
            Self::NodeStarted { .. } => "NodeStarted",
            Self::NodeSucceeded { .. } => "NodeSucceeded",
            Self::AttemptFailed { .. } => "AttemptFailed",
            Self::NodeFailed { .. } => "NodeFailed",
            Self::NodeSkipped { .. } => "NodeSkipped",
            Self::ApprovalRequested { .. } => "ApprovalRequested",
            Self::Approved { .. } => "Approved",
            Self::Rejected { .. } => "Rejected",
            Self::TimerStarted { .. } => "TimerStarted",
            Self::TimerFired { .. } => "TimerFired",
            Self::Completed { .. } => "Completed",
            Self::Failed { .. } => "Failed",
            Self::Cancelled { .. } => "Cancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunRejection {
    #[error("run does not exist")]
    NotFound,
    #[error("run already started")]
    AlreadyStarted,
    #[error("the run has ended ({0})")]
    Ended(&'static str),
    #[error("node `{0}` is not in this run")]
    UnknownNode(NodeName),
    #[error("node `{node}` is {state}, not running attempt {attempt}")]
    NotRunning {
        node: NodeName,
        attempt: u32,
        state: &'static str,
    },
    #[error("node `{0}` is running under a lease that has not run out")]
    LeaseHeld(NodeName),
    #[error("node `{0}` is not waiting for an approval")]
    NotAwaitingApproval(NodeName),
    #[error("a cancellation needs a reason of at most 500 characters")]
    BadReason,
}

impl ErrorCode for RunRejection {
    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "run_not_found",
            Self::AlreadyStarted => "run_already_started",
            Self::Ended(_) => "run_ended",
            Self::UnknownNode(_) => "unknown_node",
            Self::NotRunning { .. } => "node_not_running",
            Self::LeaseHeld(_) => "lease_held",
            Self::NotAwaitingApproval(_) => "not_awaiting_approval",
            Self::BadReason => "invalid_reason",
        }
    }
    fn class(&self) -> ErrorClass {
        match self {
            Self::NotFound | Self::UnknownNode(_) => ErrorClass::NotFound,
            Self::AlreadyStarted => ErrorClass::AlreadyExists,
            Self::BadReason => ErrorClass::InvalidInput,
            Self::LeaseHeld(_) => ErrorClass::Conflict,
            Self::Ended(_) | Self::NotRunning { .. } | Self::NotAwaitingApproval(_) => {
                ErrorClass::FailedPrecondition
            }
        }
    }
}

impl RunState {
    fn spec_of(&self, node: &NodeName) -> Option<&NodeSpec> {
        self.plan.spec.nodes.iter().find(|n| &n.name == node)
    }

    /// `nodes` as expressions see it: `{name: {status, output}}`.
    pub fn expression_nodes(&self) -> Value {
        let mut nodes = Map::new();
        for (name, state) in &self.nodes {
            let output = match state {
                NodeState::Succeeded { output } => output.clone(),
                _ => Value::Null,
            };
            nodes.insert(
                name.to_string(),
                serde_json::json!({"status": state.name(), "output": output}),
            );
        }
        Value::Object(nodes)
    }

    /// The key every attempt of a node's call carries, so that a tool can
    /// recognise a repeat.
    pub fn idempotency_key(&self, node: &NodeName) -> String {
        format!("{}/{}", self.id, node)
    }

    /// What is due in the run at `now`, for whoever drives it: the nodes
    /// to hand to a worker (scheduled and due, or running under a lease
    /// that ran out, with that lease), whether time has passed for a timer,
    /// an approval or the deadline (send `Tick`), and when to look again.
    pub fn due(&self, now: i64) -> Due {
        let mut due = Due {
            dispatch: Vec::new(),
            tick: now >= self.deadline,
            next: self.deadline,
        };
        for (node, state) in &self.nodes {
            match state {
                NodeState::Scheduled {
                    attempt, due: at, ..
                } if *at <= now => {
                    due.dispatch.push((node.clone(), *attempt, 0));
                }
                NodeState::Running {
                    attempt,
                    lease_until,
                    ..
                } if *lease_until <= now => {
                    due.dispatch.push((node.clone(), *attempt, *lease_until));
                }
                NodeState::Sleeping { fire_at: at }
                | NodeState::AwaitingApproval { deadline: at }
                    if *at <= now =>
                {
                    due.tick = true;
                }
                NodeState::Scheduled { due: at, .. }
                | NodeState::Running {
                    lease_until: at, ..
                }
                | NodeState::Sleeping { fire_at: at }
                | NodeState::AwaitingApproval { deadline: at } => due.next = due.next.min(*at),
                _ => {}
            }
        }
        due
    }

    /// What follows from the state at `now`: the events that skip, start
    /// or end nodes whose time has come, and end the run when it is done.
    pub fn advance(&self, now: i64) -> Vec<RunEvent> {
        let mut state = self.clone();
        let mut events = Vec::new();
        let push = |state: &mut RunState, events: &mut Vec<RunEvent>, event: RunEvent| {
            state.apply(&event);
            events.push(event);
        };
        if state.status.is_final() {
            return events;
        }
        if now >= state.deadline {
            push(
                &mut state,
                &mut events,
                RunEvent::Failed {
                    code: "deadline_exceeded".into(),
                    message: "the run passed its contract's deadline".into(),
                    at: now,
                },
            );
            return events;
        }
        // Timers and approvals whose time has come.
        let due: Vec<(NodeName, RunEvent)> = state
            .nodes
            .iter()
            .filter_map(|(name, node)| match node {
                NodeState::Sleeping { fire_at } if *fire_at <= now => Some((
                    name.clone(),
                    RunEvent::TimerFired {
                        node: name.clone(),
                        at: now,
                    },
                )),
                NodeState::AwaitingApproval { deadline } if *deadline <= now => Some((
                    name.clone(),
                    RunEvent::NodeFailed {
                        node: name.clone(),
                        code: "approval_timed_out".into(),
                        message: "nobody answered the approval in time".into(),
                    },
                )),
                _ => None,
            })
            .collect();
        for (_, event) in due {
            push(&mut state, &mut events, event);
        }
        // A node that failed for good fails the run.
        if let Some((name, code, message)) = state.nodes.iter().find_map(|(n, s)| match s {
            NodeState::Failed { code, message } => Some((n.clone(), code.clone(), message.clone())),
            _ => None,
        }) {
            push(
                &mut state,
                &mut events,
                RunEvent::Failed {
                    code: code.clone(),
                    message: format!("node `{name}` failed: {message}"),
                    at: now,
                },
            );
            return events;
        }
        // Start what is ready, in definition order, within the run's
        // concurrency; skip what cannot run.
        loop {
            let mut progressed = false;
            let plan = Arc::clone(&state.plan);
            for spec in &plan.spec.nodes {
                if state.nodes.get(&spec.name) != Some(&NodeState::Waiting) {
                    continue;
                }
                let needs: Vec<&NodeState> = spec
                    .needs
                    .iter()
                    .filter_map(|n| state.nodes.get(n))
                    .collect();
                if !needs.iter().all(|s| s.is_done()) {
                    continue;
                }
                let variables = (state.input.clone(), state.expression_nodes());
                let vars = [("input", &variables.0), ("nodes", &variables.1)];
                if let Some(when) = &spec.when {
                    match Expression::parse(when).and_then_eval_bool(&vars) {
                        Ok(true) => {}
                        Ok(false) => {
                            push(
                                &mut state,
                                &mut events,
                                RunEvent::NodeSkipped {
                                    node: spec.name.clone(),
                                    reason: format!("`{when}` is false"),
                                },
                            );
                            progressed = true;
                            continue;
                        }
                        Err(message) => {
                            push(
                                &mut state,
                                &mut events,
                                RunEvent::NodeFailed {
                                    node: spec.name.clone(),
                                    code: "expression_failed".into(),
                                    message: format!("`when` failed: {message}"),
                                },
                            );
                            return state.finish_failed(events, now);
                        }
                    }
                }
                let active = state.nodes.values().filter(|s| s.is_active()).count();
                if active >= state.plan.spec.concurrency as usize {
                    continue;
                }
                let event = match spec.kind() {
                    Some(NodeKind::Approval(approval)) => RunEvent::ApprovalRequested {
                        node: spec.name.clone(),
                        message: approval.message.clone(),
                        deadline: now.saturating_add(approval.timeout.as_millis() as i64),
                    },
                    Some(NodeKind::Wait(wait)) => RunEvent::TimerStarted {
                        node: spec.name.clone(),
                        fire_at: now.saturating_add(wait.as_millis() as i64),
                    },
                    _ => match node_input(spec, &vars) {
                        Ok(input) => RunEvent::NodeScheduled {
                            node: spec.name.clone(),
                            attempt: 1,
                            due: now,
                            input,
                        },
                        Err(message) => {
                            push(
                                &mut state,
                                &mut events,
                                RunEvent::NodeFailed {
                                    node: spec.name.clone(),
                                    code: "expression_failed".into(),
                                    message,
                                },
                            );
                            return state.finish_failed(events, now);
                        }
                    },
                };
                push(&mut state, &mut events, event);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if state.nodes.values().all(NodeState::is_done) {
            match state.run_output() {
                Ok(output) => push(
                    &mut state,
                    &mut events,
                    RunEvent::Completed { output, at: now },
                ),
                Err(message) => push(
                    &mut state,
                    &mut events,
                    RunEvent::Failed {
                        code: "expression_failed".into(),
                        message: format!("the run's `output` failed: {message}"),
                        at: now,
                    },
                ),
            }
        }
        events
    }

    fn finish_failed(&self, mut events: Vec<RunEvent>, now: i64) -> Vec<RunEvent> {
        let mut state = self.clone();
        let more = state.advance(now);
        for event in &more {
            state.apply(event);
        }
        events.extend(more);
        events
    }

    fn run_output(&self) -> Result<Value, String> {
        match &self.plan.spec.output {
            Some(source) => {
                let nodes = self.expression_nodes();
                Expression::parse(source)
                    .map_err(|e| e.to_string())?
                    .eval(&[("input", &self.input), ("nodes", &nodes)])
            }
            None => Ok(Value::Object(
                self.nodes
                    .iter()
                    .filter_map(|(name, state)| match state {
                        NodeState::Succeeded { output } => Some((name.to_string(), output.clone())),
                        _ => None,
                    })
                    .collect(),
            )),
        }
    }

    fn apply(&mut self, event: &RunEvent) {
        let set = |state: &mut RunState, node: &NodeName, to: NodeState| {
            if let Some(slot) = state.nodes.get_mut(node) {
                *slot = to;
            }
        };
        match event {
            RunEvent::Started { .. } => {}
            RunEvent::NodeScheduled {
                node,
                attempt,
                due,
                input,
            } => {
                self.attempts.insert(node.clone(), *attempt);
                set(
                    self,
                    node,
                    NodeState::Scheduled {
                        attempt: *attempt,
                        due: *due,
                        input: input.clone(),
                    },
                );
            }
            RunEvent::NodeStarted {
                node,
                attempt,
                worker,
                lease_until,
                ..
            } => {
                let input = self.pending_input(node);
                set(
                    self,
                    node,
                    NodeState::Running {
                        attempt: *attempt,
                        input,
                        worker: worker.clone(),
                        lease_until: *lease_until,
                    },
                );
            }
            RunEvent::NodeSucceeded { node, output, .. } => set(
                self,
                node,
                NodeState::Succeeded {
                    output: output.clone(),
                },
            ),
            RunEvent::AttemptFailed {
                node,
                attempt,
                retry_at,
                ..
            } => {
                if let Some(due) = retry_at {
                    let input = self.pending_input(node);
                    self.attempts.insert(node.clone(), attempt + 1);
                    set(
                        self,
                        node,
                        NodeState::Scheduled {
                            attempt: attempt + 1,
                            due: *due,
                            input,
                        },
                    );
                }
            }
            RunEvent::NodeFailed {
                node,
                code,
                message,
            } => set(
                self,
                node,
                NodeState::Failed {
                    code: code.clone(),
                    message: message.clone(),
                },
            ),
            RunEvent::NodeSkipped { node, reason } => set(
                self,
                node,
                NodeState::Skipped {
                    reason: reason.clone(),
                },
            ),
            RunEvent::ApprovalRequested { node, deadline, .. } => set(
                self,
                node,
                NodeState::AwaitingApproval {
                    deadline: *deadline,
                },
            ),
            RunEvent::Approved {
                node, by, comment, ..
            } => set(
                self,
                node,
                NodeState::Succeeded {
                    output: serde_json::json!({"approved": true, "by": by.as_str(), "comment": comment}),
                },
            ),
            RunEvent::Rejected {
                node, by, comment, ..
            } => set(
                self,
                node,
                NodeState::Failed {
                    code: "rejected".into(),
                    message: format!("rejected by {by}: {comment}"),
                },
            ),
            RunEvent::TimerStarted { node, fire_at } => {
                set(self, node, NodeState::Sleeping { fire_at: *fire_at })
            }
            RunEvent::TimerFired { node, .. } => set(
                self,
                node,
                NodeState::Succeeded {
                    output: Value::Object(Map::new()),
                },
            ),
            RunEvent::Completed { output, .. } => {
                self.status = RunStatus::Succeeded;
                self.output = Some(output.clone());
            }
            RunEvent::Failed { code, message, .. } => {
                self.status = RunStatus::Failed;
                self.error = Some(NodeFailure {
                    code: code.clone(),
                    message: message.clone(),
                    retryable: false,
                });
            }
            RunEvent::Cancelled { reason, .. } => {
                self.status = RunStatus::Cancelled;
                self.error = Some(NodeFailure {
                    code: "cancelled".into(),
                    message: reason.clone(),
                    retryable: false,
                });
            }
        }
    }

    /// The input a scheduled or running node was given.
    fn pending_input(&self, node: &NodeName) -> Value {
        match self.nodes.get(node) {
            Some(NodeState::Scheduled { input, .. } | NodeState::Running { input, .. }) => {
                input.clone()
            }
            _ => Value::Null,
        }
    }

    fn running(&self, node: &NodeName, attempt: u32) -> Result<&NodeState, RunRejection> {
        let state = self
            .nodes
            .get(node)
            .ok_or_else(|| RunRejection::UnknownNode(node.clone()))?;
        match state {
            NodeState::Scheduled { attempt: a, .. } | NodeState::Running { attempt: a, .. }
                if *a == attempt =>
            {
                Ok(state)
            }
            other => Err(RunRejection::NotRunning {
                node: node.clone(),
                attempt,
                state: other.name(),
            }),
        }
    }
}

/// Evaluates a node's input mapping (an empty mapping gives `{}`).
fn node_input(spec: &NodeSpec, vars: &[(&str, &Value)]) -> Result<Value, String> {
    let mut input = Map::new();
    for (field, source) in &spec.input {
        let value = Expression::parse(source)
            .map_err(|e| format!("input `{field}` does not parse: {e}"))?
            .eval(vars)
            .map_err(|e| format!("input `{field}` failed: {e}"))?;
        input.insert(field.clone(), value);
    }
    Ok(Value::Object(input))
}

trait EvalBool {
    fn and_then_eval_bool(self, vars: &[(&str, &Value)]) -> Result<bool, String>;
}

impl EvalBool for Result<Expression, crate::expr::SyntaxError> {
    fn and_then_eval_bool(self, vars: &[(&str, &Value)]) -> Result<bool, String> {
        self.map_err(|e| e.to_string())?.eval_bool(vars)
    }
}

impl Aggregate for Run {
    const KIND: &'static str = "workflow_run";
    type Id = RunId;
    type Command = RunCommand;
    type Event = RunEvent;
    type Rejection = RunRejection;

    fn decide(&self, id: &RunId, command: &RunCommand) -> Result<Vec<RunEvent>, RunRejection> {
        let state = match (command, &self.0) {
            (
                RunCommand::Start {
                    plan,
                    input,
                    by,
                    now,
                },
                None,
            ) => {
                let started = RunEvent::Started {
                    id: id.clone(),
                    plan: plan.clone(),
                    input: input.clone(),
                    by: by.clone(),
                    at: *now,
                    deadline: now.saturating_add(plan.spec.budget.wall_time.as_millis() as i64),
                };
                let mut run = Run::default();
                run.evolve(&started);
                let mut events = vec![started];
                if let Some(state) = &run.0 {
                    events.extend(state.advance(*now));
                }
                return Ok(events);
            }
            (RunCommand::Start { .. }, Some(_)) => return Err(RunRejection::AlreadyStarted),
            (_, None) => return Err(RunRejection::NotFound),
            (_, Some(state)) => state,
        };
        // Reports about a run that has ended change nothing; anything else
        // is refused.
        if state.status.is_final() {
            return match command {
                RunCommand::Succeed { .. } | RunCommand::Fail { .. } | RunCommand::Tick { .. } => {
                    Ok(vec![])
                }
                RunCommand::Cancel { .. } if state.status == RunStatus::Cancelled => Ok(vec![]),
                _ => Err(RunRejection::Ended(state.status.as_str())),
            };
        }
        let mut events = Vec::new();
        let now = match command {
            RunCommand::Start { .. } => unreachable!("handled above"),
            RunCommand::Claim {
                node,
                attempt,
                worker,
                lease_until,
                checks,
                now,
            } => {
                // One holder at a time, whoever asks: a node whose lease
                // has not run out is not claimed again, not even by its
                // holder (the workers of one process may share a name).
                if let NodeState::Running {
                    lease_until: held, ..
                } = state.running(node, *attempt)?
                    && *held > *now
                {
                    return Err(RunRejection::LeaseHeld(node.clone()));
                }
                events.push(RunEvent::NodeStarted {
                    node: node.clone(),
                    attempt: *attempt,
                    worker: worker.clone(),
                    lease_until: *lease_until,
                    checks: checks.clone(),
                    at: *now,
                });
                *now
            }
            RunCommand::Succeed {
                node,
                attempt,
                output,
                now,
            } => {
                if matches!(state.nodes.get(node), Some(NodeState::Succeeded { .. })) {
                    return Ok(vec![]);
                }
                state.running(node, *attempt)?;
                events.push(RunEvent::NodeSucceeded {
                    node: node.clone(),
                    attempt: *attempt,
                    output: output.clone(),
                    at: *now,
                });
                *now
            }
            RunCommand::Fail {
                node,
                attempt,
                failure,
                now,
            } => {
                if state.nodes.get(node).is_some_and(NodeState::is_done) {
                    return Ok(vec![]);
                }
                state.running(node, *attempt)?;
                let spec = state
                    .spec_of(node)
                    .ok_or_else(|| RunRejection::UnknownNode(node.clone()))?;
                let retry = &spec.retry;
                let again = failure.retryable
                    && !retry.non_retryable.contains(&failure.code)
                    && *attempt < retry.attempts;
                let retry_at =
                    again.then(|| now + retry.delay_before(attempt + 1).as_millis() as i64);
                events.push(RunEvent::AttemptFailed {
                    node: node.clone(),
                    attempt: *attempt,
                    failure: failure.clone(),
                    retry_at,
                    at: *now,
                });
                if retry_at.is_none() {
                    events.push(RunEvent::NodeFailed {
                        node: node.clone(),
                        code: failure.code.clone(),
                        message: failure.message.clone(),
                    });
                }
                *now
            }
            RunCommand::Answer {
                node,
                approved,
                by,
                comment,
                now,
            } => {
                match state.nodes.get(node) {
                    None => return Err(RunRejection::UnknownNode(node.clone())),
                    Some(NodeState::AwaitingApproval { .. }) => {}
                    Some(_) => return Err(RunRejection::NotAwaitingApproval(node.clone())),
                }
                let comment: String = comment.chars().take(1000).collect();
                events.push(if *approved {
                    RunEvent::Approved {
                        node: node.clone(),
                        by: by.clone(),
                        comment,
                        at: *now,
                    }
                } else {
                    RunEvent::Rejected {
                        node: node.clone(),
                        by: by.clone(),
                        comment,
                        at: *now,
                    }
                });
                *now
            }
            RunCommand::Tick { now } => *now,
            RunCommand::Cancel { by, reason } => {
                if reason.chars().count() > 500 {
                    return Err(RunRejection::BadReason);
                }
                return Ok(vec![RunEvent::Cancelled {
                    by: by.clone(),
                    reason: if reason.trim().is_empty() {
                        "cancelled".into()
                    } else {
                        reason.clone()
                    },
                }]);
            }
        };
        let mut next = (**state).clone();
        for event in &events {
            next.apply(event);
        }
        events.extend(next.advance(now));
        Ok(events)
    }

    fn exists(&self) -> bool {
        self.0.is_some()
    }

    fn evolve(&mut self, event: &RunEvent) {
        if let RunEvent::Started {
            id,
            plan,
            input,
            by,
            at,
            deadline,
        } = event
        {
            let nodes = plan
                .spec
                .nodes
                .iter()
                .map(|n| (n.name.clone(), NodeState::Waiting))
                .collect();
            self.0 = Some(Box::new(RunState {
                id: id.clone(),
                plan: Arc::clone(plan),
                input: input.clone(),
                started_by: by.clone(),
                started_at: *at,
                deadline: *deadline,
                status: RunStatus::Running,
                nodes,
                attempts: BTreeMap::new(),
                output: None,
                error: None,
            }));
            return;
        }
        if let Some(state) = self.0.as_mut() {
            state.apply(event);
        }
    }
}

#[cfg(test)]
mod tests;
