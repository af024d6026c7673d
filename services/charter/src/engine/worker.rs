//! Workers: take a task, check the run still wants it, run the constraint
//! checks (the starter's authorization for this tool version, the
//! contract's charge, the input schema), claim the node with the checks on
//! record, execute, and report the outcome as a command. A task that
//! arrives twice, or for a node someone else holds, is dropped. The node
//! an outcome makes ready is taken in hand at once ([`InHand`]); a call of
//! a built-in records its outcome in the append of its claim, followed by
//! the built-in steps it made ready (`Worker::complete_append`); the start of
//! a run chains the built-in steps ready from its start the same way. A
//! process or HTTP call's outcome is recorded with the run's contract, the
//! built-in steps it made ready, and the claim and charge of the next call
//! (checked as any claim), which the same worker then runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use charter_commands::joint::Joint;
use charter_commands::{CommandError, CommandHandler, CommandMeta};
use charter_domain::contract::{
    CallCharge, Contract, ContractCommand, ContractEvent, ContractRejection,
};
use charter_domain::ids::Scoped;
use charter_domain::run::{
    NodeFailure, NodeState, PinnedTool, Run, RunCommand, RunEvent, RunId, RunRejection, RunState,
};
use charter_domain::tool::{Tool, ToolName, ToolSpec};
use charter_domain::workflow::{NodeKind, NodeName, NodeSpec};
use charter_domain::{Actor, Aggregate, ErrorCode};
use charter_executor::{Call, Executor, Failure, Success};
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
/// Most built-in steps a worker records in one append after its own.
const MAX_STEPS_IN_ONE_APPEND: usize = 32;

/// What a worker does next, once an outcome is recorded.
pub(super) enum Next {
    /// A node taken in hand: checked and claimed as any task.
    Task(Task),
    /// A call claimed (and charged) in the append of the outcome before
    /// it: it only has to run.
    Claimed(Box<ClaimedStep>),
}

/// A tool call whose claim is on record, with what running it takes.
pub(super) struct ClaimedStep {
    task: Task,
    tool: ToolName,
    spec: ToolSpec,
    input: Value,
    idempotency_key: String,
    scopes: Vec<String>,
}

impl ClaimedStep {
    fn call(&self) -> Call<'_> {
        Call {
            org: &self.task.run.org,
            tool: &self.tool,
            spec: &self.spec,
            input: &self.input,
            idempotency_key: &self.idempotency_key,
            scopes: &self.scopes,
        }
    }
}

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

/// Node attempts a worker of this process is doing, and those that workers
/// took straight from the append that made them ready (the outcome of the
/// node before), instead of through the queue: the driver queues none of
/// them while they are in hand, and a queued task for one is dropped. Each
/// is still durable: the log holds it as scheduled until its claim is
/// recorded, and a driver starting again queues whatever is pending. A
/// node whose worker failed goes back to the driver, which queues it.
pub struct InHand {
    nodes: Mutex<HashSet<(RunId, NodeName, u32)>>,
    /// Runs this process is appending to (how many appends at once), and
    /// whether the driver passed a node of one by meanwhile.
    appending: Mutex<HashMap<RunId, (u32, bool)>>,
    back: tokio::sync::mpsc::UnboundedSender<(RunId, i64)>,
    /// Runs to look at again, and when; taken by the driver when it starts.
    pub(super) returned: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(RunId, i64)>>>,
}

impl Default for InHand {
    fn default() -> Self {
        let (back, returned) = tokio::sync::mpsc::unbounded_channel();
        Self {
            nodes: Mutex::default(),
            appending: Mutex::default(),
            back,
            returned: Mutex::new(Some(returned)),
        }
    }
}

impl InHand {
    fn nodes(&self) -> std::sync::MutexGuard<'_, HashSet<(RunId, NodeName, u32)>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a node's attempt; false when a worker already has it.
    fn take(&self, run: &RunId, node: &NodeName, attempt: u32) -> bool {
        self.nodes().insert((run.clone(), node.clone(), attempt))
    }

    pub(super) fn release(&self, run: &RunId, node: &NodeName, attempt: u32) {
        self.nodes().remove(&(run.clone(), node.clone(), attempt));
    }

    /// Whether a worker of this process has the node's attempt in hand.
    pub fn holds(&self, run: &RunId, node: &NodeName, attempt: u32) -> bool {
        self.nodes().contains(&(run.clone(), node.clone(), attempt))
    }

    /// A node in hand is not done here: the driver looks at its run again
    /// after `delay_ms`, and queues it.
    pub(super) fn give_back(&self, task: &Task, delay_ms: i64) {
        self.release(&task.run, &task.node, task.attempt);
        let _ = self.back.send((task.run.clone(), now_ms() + delay_ms));
    }

    fn appending_runs(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, (u32, bool)>> {
        self.appending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Held while this process appends to a run and then takes in hand
    /// what the append made ready: the log may hand the append to the
    /// driver before that, and the driver would queue a node about to be
    /// taken. It waits instead, and looks at the run again once the
    /// append and the taking are over.
    pub(super) fn appending(&self, run: &RunId) -> Appending<'_> {
        self.appending_runs().entry(run.clone()).or_default().0 += 1;
        Appending {
            in_hand: self,
            run: run.clone(),
        }
    }

    /// Whether a scheduled node of the run waits for an append of this
    /// process to it (see [`InHand::appending`]); the driver hears of the
    /// run again when that ends.
    pub fn defers(&self, run: &RunId) -> bool {
        match self.appending_runs().get_mut(run) {
            Some((_, passed)) => {
                *passed = true;
                true
            }
            None => false,
        }
    }
}

/// An append to a run under way in this process ([`InHand::appending`]).
pub(super) struct Appending<'a> {
    in_hand: &'a InHand,
    run: RunId,
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        let passed = {
            let mut runs = self.in_hand.appending_runs();
            let Some((count, passed)) = runs.get_mut(&self.run) else {
                return;
            };
            *count -= 1;
            if *count > 0 {
                return;
            }
            let passed = *passed;
            runs.remove(&self.run);
            passed
        };
        if passed {
            let _ = self.in_hand.back.send((self.run.clone(), now_ms()));
        }
    }
}

pub struct Worker {
    pub handler: CommandHandler,
    pub access: Arc<AccessIndex>,
    pub executor: Arc<Executor>,
    pub running: Arc<Running>,
    pub feed: super::RunFeed,
    pub in_hand: Arc<InHand>,
    pub id: String,
    /// True once the process stops: no further node is begun.
    pub stopping: tokio::sync::watch::Receiver<bool>,
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
        // One node attempt is done by one worker of this process at a
        // time (the run refuses a second claim while a lease runs; this
        // keeps a second worker from even trying). A task for an attempt
        // another one has (in hand, or from the queue) comes back a little
        // later: by then it is done, and dropped, or given back, and done.
        if !self.in_hand.take(&task.run, &task.node, task.attempt) {
            delivery.retry_later(Duration::from_millis(500)).await;
            return;
        }
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
        self.in_hand.release(&task.run, &task.node, task.attempt);
        let next = match outcome {
            Ok(next) => {
                delivery.ack().await;
                next
            }
            Err(error) => {
                tracing::warn!(run = %task.run, node = %task.node, %error, "a task failed; it will be retried");
                delivery.retry_later(Duration::from_secs(1)).await;
                None
            }
        };
        self.go_on(next, true).await;
    }

    /// Whether a task's node calls a built-in tool (answered inline, with
    /// no process or connection of its own), as far as this process's
    /// cache knows.
    pub(super) fn is_builtin(&self, task: &Task) -> bool {
        let cache = self.handler.cache();
        let Some((run, _)) = charter_commands::StreamId::for_aggregate::<Run>(&task.run)
            .ok()
            .and_then(|stream| cache.get::<Run>(Run::KIND, &stream))
        else {
            return false;
        };
        let Some(pinned) = run.0.as_deref().and_then(|s| s.plan.tools.get(&task.node)) else {
            return false;
        };
        let tool_id = Scoped::new(task.run.org.clone(), pinned.name.clone());
        charter_commands::StreamId::for_aggregate::<Tool>(&tool_id)
            .ok()
            .and_then(|stream| cache.get::<Tool>(Tool::KIND, &stream))
            .and_then(|(tool, _)| {
                tool.0
                    .as_ref()
                    .and_then(|t| t.runnable(Some(&pinned.version)).ok())
                    .map(|v| Executor::runs_inline(&v.spec))
            })
            .unwrap_or(false)
    }

    /// Runs the tasks taken in hand, one after the other: each outcome may
    /// make the next node ready, taken at once without the trip through the
    /// queue.
    ///
    /// Without a worker slot (`slotted` false) only built-in tools run
    /// here: any other node goes to the queue.
    pub(super) async fn go_on(&self, mut next: Option<Next>, slotted: bool) {
        while let Some(step) = next.take() {
            let task = match step {
                Next::Task(task) => task,
                // Claimed with the outcome before it (only by a worker
                // holding a slot): it runs, whatever else happens.
                Next::Claimed(step) => {
                    match self.run_claimed(*step).await {
                        Ok(following) => next = following,
                        Err(error) => {
                            tracing::warn!(%error, "a claimed call's outcome was not recorded; its node runs again after its lease")
                        }
                    }
                    continue;
                }
            };
            if *self.stopping.borrow() {
                // The node stays scheduled in the store, where the next
                // process (or another one now) finds it.
                self.in_hand.give_back(&task, 0);
                return;
            }
            if !slotted && !self.is_builtin(&task) {
                self.in_hand.give_back(&task, 0);
                return;
            }
            metrics::counter!("charter_engine_tasks_in_hand_total").increment(1);
            let began = std::time::Instant::now();
            let outcome = self.execute(&task).await;
            metrics::histogram!("charter_engine_task_seconds")
                .record(began.elapsed().as_secs_f64());
            match outcome {
                Ok(following) => {
                    self.in_hand.release(&task.run, &task.node, task.attempt);
                    next = following;
                }
                Err(error) => {
                    tracing::warn!(run = %task.run, node = %task.node, %error, "a task failed; it goes onto the queue");
                    self.in_hand.give_back(&task, 1000);
                }
            }
        }
    }

    /// The first node of the run that is ready now, when it calls a tool
    /// and no worker has it yet: taken in hand (from the state this
    /// process just appended), before the driver hears of the append that
    /// made it ready.
    pub(super) fn take_next(&self, run: &RunId) -> Option<Task> {
        let stream = charter_commands::StreamId::for_aggregate::<Run>(run).ok()?;
        let (cached, _) = self.handler.cache().get::<Run>(Run::KIND, &stream)?;
        let state = cached.0.as_deref()?;
        if state.status.is_final() {
            return None;
        }
        let (node, attempt) = ready_tool_node(state, now_ms())?;
        self.in_hand.take(run, &node, attempt).then(|| Task {
            run: run.clone(),
            node,
            attempt,
            lease: 0,
            epoch: 0,
        })
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

    /// Records a node's outcome; answers the node it made ready, taken in
    /// hand.
    async fn report(&self, run: &RunId, command: RunCommand) -> anyhow::Result<Option<Next>> {
        let _appending = self.in_hand.appending(run);
        match self
            .handler
            .handle_new::<Run>(run, &command, &meta(run, Run::KIND))
            .await
        {
            Ok(outcome) => {
                let next = self.take_next(run).map(Next::Task);
                self.feed.send_outcome(run, &outcome, &Actor::system());
                Ok(next)
            }
            Err(error) if superseded(&error) => Ok(None),
            Err(error) => Err(anyhow::anyhow!("recording a node's outcome: {error}")),
        }
    }

    /// The run as this process knows it, when its node still wants this
    /// task: from the kernel's cache first, and from the store before a
    /// task is dropped (a cached state can only be behind).
    async fn wanted(&self, task: &Task) -> anyhow::Result<Option<(Arc<Run>, Value)>> {
        let run = self
            .handler
            .load_unless::<Run>(&task.run, |run| wants(run, task, now_ms()).is_some())
            .await?;
        Ok(wants(&run, task, now_ms()).map(|input| (run, input)))
    }

    /// Does a task; answers the node its outcome made ready, taken in hand.
    async fn execute(&self, task: &Task) -> anyhow::Result<Option<Next>> {
        let Some((run, input)) = self.wanted(task).await? else {
            return Ok(None);
        };
        let Some(state) = run.0.as_deref() else {
            return Ok(None);
        };
        let now = now_ms();
        let Some(spec) = state.plan.spec.nodes.iter().find(|n| n.name == task.node) else {
            return Ok(None);
        };
        match spec.kind() {
            Some(NodeKind::Tool(..)) => self.call_tool(state, spec, task, input).await,
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
                    return Ok(None);
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
                    return self
                        .report(
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
                        .await;
                }
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// The starter's authorization to call a run's pinned tool version:
    /// the decision as the claim records it, and the refusal when it is
    /// not allowed.
    fn authorize(
        &self,
        state: &RunState,
        org: &charter_domain::OrgName,
        pinned: &PinnedTool,
        input: &Value,
    ) -> (Value, Option<(&'static str, String)>) {
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
                        input,
                    )
                })))
            }
            Err(_) => None,
        };
        let authorization = match &decision {
            Some(decision) => serde_json::to_value(decision).unwrap_or(Value::Null),
            None => json!({"allowed": false, "deniedBecause": "unknown_principal"}),
        };
        let forbidden = (!decision.is_some_and(|d| d.allowed)).then(|| {
            (
                "forbidden",
                format!(
                    "{} may not call `{}` at version `{}`",
                    state.started_by, pinned.name, pinned.version
                ),
            )
        });
        (authorization, forbidden)
    }

    /// Completes an append of a run's events and its contract's, decided
    /// so far over `contract` and `run` as they stood: with `chain`, the
    /// built-in steps those events make ready follow, one after the other
    /// ([`Worker::inline_step`], at most `MAX_STEPS_IN_ONE_APPEND`); a run
    /// that ends in the append closes its contract in it. Returns how many
    /// steps it added.
    pub(super) fn complete_append(
        &self,
        id: &RunId,
        states: (&Contract, &Run),
        events: (&mut Vec<ContractEvent>, &mut Vec<RunEvent>),
        chain: bool,
    ) -> u64 {
        self.complete_and_claim(id, states, events, chain, false).0
    }

    /// [`Worker::complete_append`], and then, with `claim_next`, the claim
    /// (and charge) of the call the chain stopped at, when it passes every
    /// check: the worker that made the append runs it next. A step that
    /// fails a check is left to the usual path, which records why.
    fn complete_and_claim(
        &self,
        id: &RunId,
        (contract, run): (&Contract, &Run),
        (contract_events, run_events): (&mut Vec<ContractEvent>, &mut Vec<RunEvent>),
        chain: bool,
        claim_next: bool,
    ) -> (u64, Option<ClaimedStep>) {
        let mut contract = contract.clone();
        for event in contract_events.iter() {
            contract.evolve(event);
        }
        let mut chained = 0;
        let mut claimed = None;
        if chain {
            let mut run = run.clone();
            for event in run_events.iter() {
                run.evolve(event);
            }
            while chained < MAX_STEPS_IN_ONE_APPEND as u64 {
                let Some((more_contract, more_run)) = self.inline_step(id, &run, &contract) else {
                    break;
                };
                for event in &more_contract {
                    contract.evolve(event);
                }
                for event in &more_run {
                    run.evolve(event);
                }
                contract_events.extend(more_contract);
                run_events.extend(more_run);
                chained += 1;
            }
            if claim_next
                && let Some((more_contract, more_run, step)) =
                    self.claim_step(id, &run, &contract, false)
            {
                for event in &more_contract {
                    contract.evolve(event);
                }
                contract_events.extend(more_contract);
                run_events.extend(more_run);
                claimed = Some(step);
            }
        }
        if run_events.iter().any(RunEvent::ends_run) {
            contract_events.extend(
                contract
                    .decide(id, &ContractCommand::Close)
                    .unwrap_or_default(),
            );
        }
        (chained, claimed)
    }

    /// The next step of a run, decided from `run` and `contract` as they
    /// stand inside a worker's append, when it can go in that same append:
    /// a tool node now ready whose pinned version is a built-in (known to
    /// this process's cache), allowed, with a valid input and admitted by
    /// the contract. Its charge, claim and outcome are then what a worker
    /// taking it alone would record; anything else is left to the usual
    /// path, which records why. Built-ins are pure, so deciding again (an
    /// append tried again after a conflict) repeats nothing outside.
    fn inline_step(
        &self,
        id: &RunId,
        run: &Run,
        contract: &Contract,
    ) -> Option<(Vec<ContractEvent>, Vec<RunEvent>)> {
        let (contract_events, mut run_events, step) = self.claim_step(id, run, contract, true)?;
        let result = self.executor.call_inline(&step.call())?;
        let mut claimed = run.clone();
        for event in &run_events {
            claimed.evolve(event);
        }
        run_events.extend(
            claimed
                .decide(id, &outcome_command(&step.task, result))
                .ok()?,
        );
        Some((contract_events, run_events))
    }

    /// The charge and claim of the run's first ready tool node, decided
    /// from `run` and `contract` as they stand inside an append, when its
    /// pinned version is known to this process's cache, runnable and a
    /// built-in or not as `inline` says, the starter may call it with that
    /// input, the input fits the tool's schema and the contract admits the
    /// call; with what running it takes. The checks on record are those a
    /// worker taking the node alone would record.
    fn claim_step(
        &self,
        id: &RunId,
        run: &Run,
        contract: &Contract,
        inline: bool,
    ) -> Option<(Vec<ContractEvent>, Vec<RunEvent>, ClaimedStep)> {
        let state = run.0.as_deref()?;
        let now = now_ms();
        let (node, attempt) = ready_tool_node(state, now)?;
        let task = Task {
            run: id.clone(),
            node,
            attempt,
            lease: 0,
            epoch: 0,
        };
        let input = wants(run, &task, now)?;
        let pinned = state.plan.tools.get(&task.node)?;
        let tool_id = Scoped::new(id.org.clone(), pinned.name.clone());
        let (tool, _) = self.handler.cache().get::<Tool>(
            Tool::KIND,
            &charter_commands::StreamId::for_aggregate::<Tool>(&tool_id).ok()?,
        )?;
        let mut spec = tool
            .0
            .as_ref()?
            .runnable(Some(&pinned.version))
            .ok()?
            .spec
            .clone();
        if Executor::runs_inline(&spec) != inline {
            return None;
        }
        if let Some(timeout) = state
            .plan
            .spec
            .nodes
            .iter()
            .find(|n| n.name == task.node)
            .and_then(|n| n.timeout)
            && timeout < spec.limits.timeout
        {
            spec.limits.timeout = timeout;
        }
        let (authorization, forbidden) = self.authorize(state, &id.org, pinned, &input);
        if forbidden.is_some() {
            return None;
        }
        let step = ClaimedStep {
            idempotency_key: state.idempotency_key(&task.node),
            scopes: state.plan.spec.scopes.iter().cloned().collect(),
            tool: pinned.name.clone(),
            input,
            spec,
            task,
        };
        self.executor.check_input(&step.call()).ok()?;
        let contract_events = contract
            .decide(id, &charge(&step.task, pinned, step.spec.cost, now))
            .ok()?;
        let Some(ContractEvent::CallAdmitted {
            calls_used,
            cost_used,
            ..
        }) = contract_events.first()
        else {
            return None;
        };
        let claim = RunCommand::Claim {
            node: step.task.node.clone(),
            attempt: step.task.attempt,
            worker: self.id.clone(),
            lease_until: now + step.spec.limits.timeout.as_millis() as i64 + LEASE_GRACE_MS,
            checks: json!({
                "tool": pinned.name.as_str(),
                "version": pinned.version.as_str(),
                "authorization": authorization,
                "contract": {"admitted": true, "callsUsed": calls_used, "costUsed": cost_used},
                "input": {"valid": true},
            }),
            now,
        };
        let run_events = run.decide(id, &claim).ok()?;
        Some((contract_events, run_events, step))
    }

    async fn call_tool(
        &self,
        state: &RunState,
        spec: &NodeSpec,
        task: &Task,
        input: Value,
    ) -> anyhow::Result<Option<Next>> {
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
        let tool_id = Scoped::new(org.clone(), pinned.name.clone());
        let runnable = |tool: &Tool| {
            tool.0
                .as_ref()
                .map(|t| t.runnable(Some(&pinned.version)).map(|v| v.spec.clone()))
        };
        // A tool that looks unrunnable is asked of the store before the
        // node fails for it.
        let tool = self
            .handler
            .load_unless::<Tool>(&tool_id, |tool| matches!(runnable(tool), Some(Ok(_))))
            .await?;
        let mut tool_spec = match runnable(&tool) {
            Some(Ok(spec)) => spec,
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
        if let Some(timeout) = spec.timeout
            && timeout < tool_spec.limits.timeout
        {
            tool_spec.limits.timeout = timeout;
        }

        // 1. The starter's authorization for this tool version.
        let (authorization, forbidden) = self.authorize(state, org, pinned, &input);
        let step = ClaimedStep {
            task: task.clone(),
            tool: pinned.name.clone(),
            spec: tool_spec,
            input,
            idempotency_key: state.idempotency_key(&task.node),
            scopes: state.plan.spec.scopes.iter().cloned().collect(),
        };
        // 3. The input schema (pure; recorded only when the contract
        // admits the call).
        let input_check = self.executor.check_input(&step.call());
        // A built-in answers at once: its outcome is recorded with the
        // claim, in the same append.
        let inline = if forbidden.is_none() && input_check.is_ok() {
            self.executor.call_inline(&step.call())
        } else {
            None
        };
        let charge = charge(task, pinned, step.spec.cost, now_ms());
        let lease_until = now_ms() + step.spec.limits.timeout.as_millis() as i64 + LEASE_GRACE_MS;
        let worker = self.id.clone();
        let now = now_ms();
        // 2. The contract, charged in the same append that claims the node
        // (and, for a built-in, records its outcome): a call is never
        // charged without being claimed, nor claimed without being charged.
        let decide = |contract: &Contract, run: &Run| {
            let (mut contract_events, contract_check, refusal) = match &forbidden {
                Some(refusal) => (Vec::new(), Value::Null, Some(refusal.clone())),
                None => {
                    let events = contract
                        .decide(&task.run, &charge)
                        .map_err(Refusal::Contract)?;
                    let (check, refusal) = match events.first() {
                        Some(ContractEvent::CallAdmitted {
                            calls_used,
                            cost_used,
                            ..
                        }) => (
                            json!({"admitted": true, "callsUsed": calls_used, "costUsed": cost_used}),
                            None,
                        ),
                        Some(ContractEvent::Breached { kind, detail, .. }) => (
                            json!({"admitted": false, "breach": kind.as_str(), "detail": detail}),
                            Some(("contract_breach", format!("{}: {detail}", kind.as_str()))),
                        ),
                        _ => (json!({"admitted": true, "repeat": true}), None),
                    };
                    (events, check, refusal)
                }
            };
            let (input_record, refusal) = match (&refusal, &input_check) {
                (Some(_), _) => (Value::Null, refusal),
                (None, Ok(())) => (json!({"valid": true}), None),
                (None, Err(failure)) => (
                    json!({"valid": false, "problems": failure.problems}),
                    Some(("input_schema_mismatch", failure.message.clone())),
                ),
            };
            let claim = RunCommand::Claim {
                node: task.node.clone(),
                attempt: task.attempt,
                worker: worker.clone(),
                lease_until,
                checks: json!({
                    "tool": pinned.name.as_str(),
                    "version": pinned.version.as_str(),
                    "authorization": authorization,
                    "contract": contract_check,
                    "input": input_record,
                }),
                now,
            };
            let mut run_events = run.decide(&task.run, &claim).map_err(Refusal::Run)?;
            // What is already known of the call's outcome follows the claim.
            let outcome = match (&refusal, &inline) {
                (Some((code, message)), _) => Some(fail(code, message.clone())),
                (None, Some(result)) => Some(outcome_command(task, result.clone())),
                (None, None) => None,
            };
            let outcome_known = outcome.is_some();
            if let Some(outcome) = outcome {
                let mut claimed = run.clone();
                for event in &run_events {
                    claimed.evolve(event);
                }
                run_events.extend(claimed.decide(&task.run, &outcome).map_err(Refusal::Run)?);
            }
            // The built-in steps this one made ready go in the same append
            // (a run of built-ins commits once, not once per step).
            let chained = self.complete_append(
                &task.run,
                (contract, run),
                (&mut contract_events, &mut run_events),
                outcome_known,
            );
            let settled = refusal.is_some() || inline.is_some();
            Ok(Joint {
                first: contract_events,
                second: run_events,
                value: (settled, chained),
            })
        };
        let appending = self.in_hand.appending(&task.run);
        let outcome = self
            .handler
            .handle_together::<Contract, Run, _, _>(
                (&task.run, &meta(&task.run, Contract::KIND)),
                (&task.run, &meta(&task.run, Run::KIND)),
                decide,
            )
            .await;
        match outcome {
            Ok(outcome) => {
                let (settled, chained) = outcome.value;
                metrics::counter!("charter_engine_steps_in_one_append_total").increment(chained);
                let next = settled
                    .then(|| self.take_next(&task.run))
                    .flatten()
                    .map(Next::Task);
                self.feed.send(&task.run, &outcome.second, &Actor::system());
                if settled {
                    return Ok(next);
                }
            }
            Err(CommandError::Rejected(Refusal::Run(rejection)))
                if superseded(&CommandError::Rejected(rejection.clone())) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(anyhow::anyhow!("claiming a node: {error}")),
        }
        drop(appending);

        self.run_claimed(step).await
    }

    /// Runs a call whose claim is on record, then records its outcome.
    async fn run_claimed(&self, step: ClaimedStep) -> anyhow::Result<Option<Next>> {
        let task = &step.task;
        let stopped = self.running.register(&task.run, &task.node);
        let outcome = tokio::select! {
            outcome = self.executor.call(step.call()) => Some(outcome),
            _ = stopped => None,
        };
        self.running.forget(&task.run, &task.node);
        match outcome {
            // The run ended while the call ran; nothing to report.
            None => Ok(None),
            Some(result) => {
                self.report_call(&task.run, outcome_command(task, result))
                    .await
            }
        }
    }

    /// Records a call's outcome in one append with the run's contract: the
    /// built-in steps it made ready follow it, and then the claim (and
    /// charge) of the next call, which this worker runs at once (not while
    /// the process stops); the contract is closed there if the run ends.
    async fn report_call(&self, run: &RunId, command: RunCommand) -> anyhow::Result<Option<Next>> {
        let claim_next = !*self.stopping.borrow();
        let _appending = self.in_hand.appending(run);
        let decide = |contract: &Contract, state: &Run| {
            let mut run_events = state.decide(run, &command).map_err(Refusal::Run)?;
            let mut contract_events = Vec::new();
            // A repeated report records nothing, and so adds nothing.
            let (chained, claimed) = if run_events.is_empty() {
                (0, None)
            } else {
                self.complete_and_claim(
                    run,
                    (contract, state),
                    (&mut contract_events, &mut run_events),
                    true,
                    claim_next,
                )
            };
            Ok::<_, Refusal>(Joint {
                first: contract_events,
                second: run_events,
                value: (chained, claimed),
            })
        };
        let outcome = self
            .handler
            .handle_together::<Contract, Run, _, _>(
                (run, &meta(run, Contract::KIND)),
                (run, &meta(run, Run::KIND)),
                decide,
            )
            .await;
        match outcome {
            Ok(outcome) => {
                let (chained, claimed) = outcome.value;
                metrics::counter!("charter_engine_steps_in_one_append_total").increment(chained);
                let next = match claimed {
                    Some(step) => {
                        metrics::counter!("charter_engine_calls_claimed_with_outcome_total")
                            .increment(1);
                        Some(Next::Claimed(Box::new(step)))
                    }
                    None => self.take_next(run).map(Next::Task),
                };
                self.feed.send(run, &outcome.second, &Actor::system());
                Ok(next)
            }
            Err(CommandError::Rejected(Refusal::Run(rejection)))
                if superseded(&CommandError::Rejected(rejection.clone())) =>
            {
                Ok(None)
            }
            Err(error) => Err(anyhow::anyhow!("recording a node's outcome: {error}")),
        }
    }
}

/// Why a joint command on a run and its contract was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(super) enum Refusal {
    #[error(transparent)]
    Contract(ContractRejection),
    #[error(transparent)]
    Run(RunRejection),
}

impl ErrorCode for Refusal {
    fn code(&self) -> &'static str {
        match self {
            Self::Contract(r) => r.code(),
            Self::Run(r) => r.code(),
        }
    }
    fn class(&self) -> charter_domain::ErrorClass {
        match self {
            Self::Contract(r) => r.class(),
            Self::Run(r) => r.class(),
        }
    }
}

/// The contract's charge for the call a task makes.
fn charge(task: &Task, pinned: &PinnedTool, cost: u32, now: i64) -> ContractCommand {
    ContractCommand::Charge {
        call: CallCharge {
            node: task.node.clone(),
            attempt: task.attempt,
            tool: pinned.name.clone(),
            version: pinned.version.clone(),
            cost,
        },
        now,
    }
}

/// The first tool node of the run that is ready at `now` and that no
/// worker has claimed, with its attempt.
fn ready_tool_node(state: &RunState, now: i64) -> Option<(NodeName, u32)> {
    let calls_tool = |node: &NodeName| {
        state
            .plan
            .spec
            .nodes
            .iter()
            .any(|n| n.name == *node && matches!(n.kind(), Some(NodeKind::Tool(..))))
    };
    state
        .due(now)
        .dispatch
        .into_iter()
        .find(|(node, _, lease)| *lease == 0 && calls_tool(node))
        .map(|(node, attempt, _)| (node, attempt))
}

/// The input of the node `task` is for, when the run still wants it run:
/// scheduled at that attempt, or running at it under a lease that ran out.
fn wants(run: &Run, task: &Task, now: i64) -> Option<Value> {
    let state = run.0.as_deref()?;
    if state.status.is_final() {
        return None;
    }
    match state.nodes.get(&task.node) {
        Some(NodeState::Scheduled { attempt, input, .. }) if *attempt == task.attempt => {
            Some(input.clone())
        }
        Some(NodeState::Running {
            attempt,
            input,
            lease_until,
            ..
        }) if *attempt == task.attempt && *lease_until <= now => Some(input.clone()),
        _ => None,
    }
}

/// The command that reports a call's outcome.
fn outcome_command(task: &Task, result: Result<Success, Failure>) -> RunCommand {
    match result {
        Ok(success) => RunCommand::Succeed {
            node: task.node.clone(),
            attempt: task.attempt,
            output: success.output,
            now: now_ms(),
        },
        Err(failure) => RunCommand::Fail {
            node: task.node.clone(),
            attempt: task.attempt,
            failure: NodeFailure {
                code: failure.code.as_str().to_owned(),
                message: match failure.stderr.trim() {
                    "" => failure.message,
                    stderr => format!("{} (stderr: {stderr})", failure.message),
                },
                retryable: failure.retryable,
            },
            now: now_ms(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunId {
        RunId::new(charter_domain::OrgName::parse("acme").unwrap())
    }

    #[test]
    fn the_driver_hears_again_of_a_run_it_deferred_once_its_appends_end() {
        let in_hand = InHand::default();
        let mut returned = in_hand.returned.lock().unwrap().take().unwrap();
        let (busy, other) = (run(), run());
        let first = in_hand.appending(&busy);
        let second = in_hand.appending(&busy);
        assert!(in_hand.defers(&busy));
        assert!(!in_hand.defers(&other), "no append to that run");
        drop(first);
        assert!(in_hand.defers(&busy), "one append still under way");
        assert!(
            returned.try_recv().is_err(),
            "told before the last append ended"
        );
        drop(second);
        assert!(!in_hand.defers(&busy));
        assert_eq!(returned.try_recv().map(|(run, _)| run), Ok(busy.clone()));
        // An append the driver did not wait for tells it nothing.
        drop(in_hand.appending(&busy));
        assert!(returned.try_recv().is_err());
    }
}
