//! The workflow engine: the saga that drives runs, and the workers that
//! execute their nodes.
//!
//! The driver follows the log and keeps every active run's state in memory
//! (folded with the aggregate's own `evolve`). From the state alone it
//! knows what to do: queue the nodes that are scheduled and due, wake up
//! when a retry, timer, approval or deadline comes due (and send the run a
//! `Tick`), take a node back when its worker's lease runs out, stop the
//! calls of a run that ended, close its contract, cancel its sub-workflows
//! still running, and report a finished sub-workflow to its parent (that
//! last part beside its loop, so that one run's end never holds up the
//! others). Because it acts on state, not on single events, a restart is
//! just another catch-up: every pending node is queued again, and workers
//! drop what is already done. Every run event it folds is recorded in the
//! run's in-memory trace ([`traces`]), which followers read.
//!
//! A node made ready by an append of this process need not wait for the
//! queue: the worker that recorded the outcome before it, or a free worker
//! when the run was started here, takes it in hand at once (before the
//! driver hears of the append), and the driver queues only what no worker
//! holds. The log keeps such a node scheduled until its claim is recorded,
//! so a crash loses nothing: a driver starting again queues it, and with
//! several processes the others' drivers queue it as they queue every
//! node (a worker finding it claimed drops it). Built-in steps (pure, no
//! process) go further: the worker records the ones its step made ready in
//! its own append, each with its checks, charge and claim.
//!
//! The driver forgets an ended run once the log has delivered the run's
//! last event, so that its memory follows the active runs only.

pub mod queue;
pub mod start;
pub mod traces;
pub mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use charter_commands::store::Subscription;
use charter_commands::{CommandHandler, CommandMeta, EventStore, Position};
use charter_domain::contract::{Contract, ContractCommand};
use charter_domain::run::{
    Due, ENDING_EVENTS, NodeFailure, NodeState, Run, RunCommand, RunEvent, RunId, RunStatus,
};
use charter_domain::{Actor, Aggregate, DomainEvent};
use charter_executor::Executor;
use charter_projections::access::AccessIndex;

use queue::{Task, TaskQueue};
pub use traces::RunTraces;

use crate::gateway::views::TraceEventView;
use start::now_ms;
use worker::{InHand, Running, Worker};

/// This process's own run appends, handed to its driver at once instead
/// of after the trip through the log tail (which waits for every older
/// transaction in the database). The tail still delivers them; the driver
/// folds each stream version once, whichever way it came first. Appends
/// of other processes arrive by the tail alone.
#[derive(Clone)]
pub struct RunFeed {
    driver: tokio::sync::mpsc::UnboundedSender<Fed>,
    /// Recorded at once, so that a follower asking right after the append
    /// that started a run finds its trace.
    traces: Arc<RunTraces>,
    /// This process's workers and their free slots, once they run: a run
    /// started here has its first node taken in hand when a slot is free.
    /// (Weak: the workers hold the feed.)
    workers: Arc<std::sync::OnceLock<(std::sync::Weak<Worker>, Arc<tokio::sync::Semaphore>)>>,
}

/// A node taken in hand: its worker, its task, and the worker slot it
/// holds (none for a built-in taken without one).
type Handed = (Arc<Worker>, Task, Option<tokio::sync::OwnedSemaphorePermit>);

/// One run event as appended by this process, with what the store gave it.
pub struct Fed {
    pub run: RunId,
    pub version: u64,
    pub position: u64,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
    pub actor: Actor,
    pub event: RunEvent,
    /// Its payload as stored, when the append shared it.
    pub payload: Option<Arc<serde_json::value::RawValue>>,
}

impl Fed {
    /// The event as its trace shows it (the same as read from the store).
    fn view(&self) -> TraceEventView {
        let data = self.payload.clone().unwrap_or_else(|| {
            crate::gateway::views::trace_data(
                charter_domain::EventParts::payload_json(&self.event)
                    .unwrap_or_else(|_| "null".to_owned()),
            )
        });
        TraceEventView::new(
            self.version,
            self.position,
            self.event.event_type(),
            self.recorded_at,
            self.actor.as_str(),
            data,
        )
    }
}

/// What the driver reads the feed from.
pub type RunFeedReceiver = tokio::sync::mpsc::UnboundedReceiver<Fed>;

impl RunFeed {
    pub fn new(traces: Arc<RunTraces>) -> (Self, RunFeedReceiver) {
        let (driver, receiver) = tokio::sync::mpsc::unbounded_channel();
        (
            Self {
                driver,
                traces,
                workers: Arc::default(),
            },
            receiver,
        )
    }

    /// Hands the events of the append that started a run to the driver,
    /// and a free worker of this process takes its first ready node in
    /// hand (taken before the driver hears of the start, so that it does
    /// not queue it; set going after, so that the node's events follow the
    /// start's). A node calling a built-in tool needs no free worker slot
    /// (slots bound the calls that run processes or go out to the network);
    /// the nodes after it then run here only while they call built-ins too.
    pub fn send_and_hand_over(
        &self,
        id: &RunId,
        share: &charter_commands::joint::Share<RunEvent>,
        actor: &Actor,
    ) {
        let handed = self.take_first(id);
        self.send(id, share, actor);
        if let Some((worker, task, slot)) = handed {
            tokio::spawn(async move {
                let slotted = slot.is_some();
                worker.go_on(Some(worker::Next::Task(task)), slotted).await;
                drop(slot);
            });
        }
    }

    /// This process's workers, once they run.
    fn worker(&self) -> Option<Arc<Worker>> {
        self.workers.get()?.0.upgrade()
    }

    fn take_first(&self, run: &RunId) -> Option<Handed> {
        let (worker, slots) = self.workers.get()?;
        let worker = worker.upgrade()?;
        let slot = Arc::clone(slots).try_acquire_owned().ok();
        let task = worker.take_next(run)?;
        if slot.is_none() && !worker.is_builtin(&task) {
            // Back to the driver, which queues it (it may have seen the
            // start in the log already, and passed the node by as held).
            worker.in_hand.give_back(&task, 0);
            return None;
        }
        Some((worker, task, slot))
    }

    /// Hands the events one append of a run's stream recorded to the
    /// driver: their last version and position, when and by whom.
    pub fn send(
        &self,
        id: &RunId,
        share: &charter_commands::joint::Share<RunEvent>,
        actor: &Actor,
    ) {
        let (Some(last_position), Some(recorded_at)) = (share.position, share.recorded_at) else {
            return;
        };
        let count = share.events.len() as u64;
        if count == 0 {
            return;
        }
        let first_version = share.stream_version.0 + 1 - count;
        let first_position = last_position.0 + 1 - count;
        for (offset, event) in share.events.iter().enumerate() {
            let fed = Fed {
                run: id.clone(),
                version: first_version + offset as u64,
                position: first_position + offset as u64,
                recorded_at,
                actor: actor.clone(),
                event: event.clone(),
                payload: share.payloads.get(offset).map(|p| Arc::clone(&p.0)),
            };
            self.traces.record(id, fed.view());
            let _ = self.driver.send(fed);
        }
    }

    /// Handles a run command (its id made just now, as every run command
    /// of the engine and the gateway is), and hands what it appended to
    /// the driver.
    pub async fn handle(
        &self,
        handler: &CommandHandler,
        id: &RunId,
        command: &RunCommand,
        meta: &CommandMeta,
    ) -> Result<
        charter_commands::CommandOutcome<RunEvent>,
        charter_commands::CommandError<charter_domain::run::RunRejection>,
    > {
        let outcome = handler.handle_new::<Run>(id, command, meta).await?;
        self.send_outcome(id, &outcome, &meta.actor);
        Ok(outcome)
    }

    /// Hands what one run command appended to the driver.
    pub fn send_outcome(
        &self,
        id: &RunId,
        outcome: &charter_commands::CommandOutcome<RunEvent>,
        actor: &Actor,
    ) {
        if outcome.duplicate {
            return;
        }
        self.send(
            id,
            &charter_commands::joint::Share {
                stream_id: outcome.stream_id.clone(),
                events: outcome.events.clone(),
                stream_version: outcome.stream_version,
                position: outcome.position,
                recorded_at: outcome.recorded_at,
                payloads: outcome.payloads.clone(),
            },
            actor,
        );
    }
}

pub struct Engine {
    pub traces: Arc<RunTraces>,
    pub feed: RunFeed,
    /// Taken by the driver when it starts.
    pub feed_receiver: std::sync::Mutex<Option<RunFeedReceiver>>,
    pub handler: CommandHandler,
    pub access: Arc<AccessIndex>,
    pub executor: Arc<Executor>,
    pub queue: Arc<dyn TaskQueue>,
    pub running: Arc<Running>,
    /// Nodes this process's workers took without the queue.
    pub in_hand: Arc<InHand>,
    /// Tasks executed at once by this process.
    pub workers: usize,
    /// How long a stopping process waits for the calls in flight to end
    /// and record their outcomes.
    pub shutdown_grace: std::time::Duration,
}

/// What the driver remembers between batches.
struct Driver {
    runs: HashMap<RunId, Run>,
    /// Tasks queued by this process (a task is queued once per attempt,
    /// and again when its lease ran out).
    queued: HashSet<Task>,
    timers: BTreeMap<i64, HashSet<RunId>>,
    /// The last stream version folded per run (kept after a run ends, so
    /// that its late deliveries are recognised, until the log has
    /// delivered its last event).
    versions: HashMap<RunId, u64>,
    /// When this driver started (part of every task it queues).
    epoch: i64,
    /// Tasks whose push failed, to queue again.
    failed_pushes: (
        tokio::sync::mpsc::UnboundedSender<Task>,
        tokio::sync::mpsc::UnboundedReceiver<Task>,
    ),
}

impl Default for Driver {
    fn default() -> Self {
        Self {
            runs: HashMap::new(),
            queued: HashSet::new(),
            timers: BTreeMap::new(),
            versions: HashMap::new(),
            epoch: 0,
            failed_pushes: tokio::sync::mpsc::unbounded_channel(),
        }
    }
}

impl Driver {
    /// The last stream version folded of a run.
    fn folded(&self, id: &RunId) -> u64 {
        self.versions.get(id).copied().unwrap_or(0)
    }

    /// Folds one event of a run unless that version is already folded;
    /// says whether it was.
    fn fold(&mut self, id: &RunId, version: u64, event: &RunEvent) -> bool {
        let known = self.versions.get(id).copied().unwrap_or(0);
        if version != known + 1 {
            return false;
        }
        self.versions.insert(id.clone(), version);
        self.runs.entry(id.clone()).or_default().evolve(event);
        true
    }

    /// The log delivered the last event of a run that ended and is done
    /// with: nothing more of it can come, so nothing of it is kept.
    fn forget_ended(&mut self, id: &RunId, version: u64) {
        if !self.runs.contains_key(id) && self.folded(id) == version {
            self.versions.remove(id);
        }
    }
}

fn run_id_of(stream: &str) -> Option<RunId> {
    stream
        .strip_prefix(Run::KIND)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|id| id.parse().ok())
}

impl Engine {
    /// Starts the driver and the workers; they stop once `stop` is true.
    /// Then no task is taken any more, and the calls in flight have up to
    /// `shutdown_grace` to end and record their outcomes (the workers'
    /// task ends when they have); a node taken in hand but not begun is
    /// left scheduled, for the next process to queue.
    pub fn spawn(
        self: Arc<Self>,
        store: Arc<dyn EventStore>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let shutdown = stopped(stop.clone());
        let mut tasks = vec![tokio::spawn(
            Arc::clone(&self).drive(store, stopped(stop.clone())),
        )];
        let id = format!("worker-{}", uuid::Uuid::now_v7().simple());
        let worker = Arc::new(Worker {
            handler: self.handler.clone(),
            access: Arc::clone(&self.access),
            executor: Arc::clone(&self.executor),
            running: Arc::clone(&self.running),
            feed: self.feed.clone(),
            in_hand: Arc::clone(&self.in_hand),
            id,
            stopping: stop.clone(),
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(self.workers.max(1)));
        let _ = self
            .feed
            .workers
            .set((Arc::downgrade(&worker), Arc::clone(&slots)));
        let queue = Arc::clone(&self.queue);
        let (workers, grace) = (self.workers.max(1), self.shutdown_grace);
        tasks.push(tokio::spawn(async move {
            let pull = async {
                loop {
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        return;
                    };
                    let Some(delivery) = queue.pull().await else {
                        return;
                    };
                    let worker = Arc::clone(&worker);
                    tokio::spawn(async move {
                        worker.handle(delivery).await;
                        drop(slot);
                    });
                }
            };
            tokio::select! {
                () = pull => {}
                () = shutdown => {}
            }
            // Every slot back is every call in flight ended and recorded.
            let busy = workers.saturating_sub(slots.available_permits());
            if busy == 0 {
                return;
            }
            tracing::info!(busy, "waiting for the tool calls in flight");
            let all = u32::try_from(workers).unwrap_or(u32::MAX);
            if tokio::time::timeout(grace, slots.acquire_many(all))
                .await
                .is_err()
            {
                tracing::warn!(
                    grace_seconds = grace.as_secs(),
                    "tool calls still running after the grace period are stopped; \
                     their nodes run again once their leases end"
                );
            }
        }));
        tasks
    }

    async fn drive(
        self: Arc<Self>,
        store: Arc<dyn EventStore>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut feed = self
            .feed_receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let mut returned = self
            .in_hand
            .returned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        loop {
            let mut driver = Driver {
                epoch: now_ms(),
                ..Driver::default()
            };
            let mut subscription = Subscription::new(Arc::clone(&store), Position::START, 1000);
            let failed = loop {
                let wake = driver.timers.first_key_value().map(|(at, _)| *at);
                let sleep = async {
                    match wake {
                        Some(at) => {
                            let wait = (at - now_ms()).max(0) as u64;
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    batch = subscription.next_batch() => {
                        let events = match batch {
                            Ok(events) => events,
                            Err(error) => break error.to_string(),
                        };
                        let mut touched = HashSet::new();
                        let mut ended = Vec::new();
                        for event in &events {
                            if event.aggregate_type != Run::KIND {
                                continue;
                            }
                            let Some(id) = run_id_of(event.stream_id.as_str()) else { continue };
                            let delay = chrono::Utc::now() - event.recorded_at;
                            metrics::histogram!("charter_engine_event_delay_seconds")
                                .record(delay.num_microseconds().unwrap_or(0) as f64 / 1e6);
                            if ENDING_EVENTS.contains(&event.event_type.as_str()) {
                                ended.push((id.clone(), event.version.0));
                            }
                            // This process's own appends were fed already:
                            // they need no decoding.
                            if driver.folded(&id) >= event.version.0 {
                                continue;
                            }
                            let domain: RunEvent = match event.to_domain() {
                                Ok(domain) => domain,
                                Err(error) => {
                                    tracing::warn!(%error, "a run event does not decode; skipping it");
                                    continue;
                                }
                            };
                            if driver.fold(&id, event.version.0, &domain) {
                                self.traces.record(&id, TraceEventView::from_recorded(event));
                                touched.insert(id);
                            }
                        }
                        for id in touched {
                            self.act(&mut driver, &id).await;
                        }
                        for (id, version) in ended {
                            driver.forget_ended(&id, version);
                        }
                    }
                    Some(fed) = async {
                        match feed.as_mut() {
                            Some(feed) => feed.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        let mut touched = HashSet::new();
                        let mut next = Some(fed);
                        while let Some(fed) = next {
                            if driver.fold(&fed.run, fed.version, &fed.event) {
                                // Appends of one run sent from two tasks at
                                // once may have reached the trace out of
                                // order (and been passed by); the driver
                                // folds in order, and fills the gap.
                                if self.traces.recorded(&fed.run) < fed.version {
                                    self.traces.record(&fed.run, fed.view());
                                }
                                touched.insert(fed.run);
                            }
                            next = feed.as_mut().and_then(|f| f.try_recv().ok());
                        }
                        for id in touched {
                            self.act(&mut driver, &id).await;
                        }
                    }
                    Some((run, at)) = async {
                        match returned.as_mut() {
                            Some(returned) => returned.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        // A node a worker had in hand goes onto the queue.
                        driver.timers.entry(at).or_default().insert(run);
                    }
                    Some(task) = driver.failed_pushes.1.recv() => {
                        driver.queued.remove(&task);
                        driver.timers.entry(now_ms() + 1000).or_default().insert(task.run);
                    }
                    () = sleep => {
                        let now = now_ms();
                        let due: Vec<i64> = driver.timers.range(..=now).map(|(at, _)| *at).collect();
                        let mut ids = HashSet::new();
                        for at in due {
                            ids.extend(driver.timers.remove(&at).unwrap_or_default());
                        }
                        for id in ids {
                            self.act(&mut driver, &id).await;
                        }
                    }
                    () = &mut shutdown => return,
                }
            };
            tracing::warn!(error = %failed, "the run driver stopped; starting over");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Does what a run's state asks for now, and sets its next wake-up.
    async fn act(self: &Arc<Self>, driver: &mut Driver, id: &RunId) {
        let now = now_ms();
        let Some(state) = driver.runs.get(id).and_then(|r| r.0.as_deref()) else {
            return;
        };
        if state.status.is_final() {
            self.running.cancel_run(id);
            self.traces.ended(id);
            driver.queued.retain(|task| task.run != *id);
            // What follows a run's end (closing its contract, ending its
            // sub-workflows, telling its parent) runs beside the driver,
            // which goes on with the other runs meanwhile.
            if let Some(Run(Some(state))) = driver.runs.remove(id) {
                let engine = Arc::clone(self);
                tokio::spawn(async move { engine.finish(&state).await });
            }
            return;
        }
        let Due {
            dispatch,
            tick,
            mut next,
        } = state.due(now);
        for (node, attempt, lease) in dispatch {
            // A lease that ran out means its worker is gone: another takes
            // the node over.
            self.queue_task(driver, id, &node, attempt, lease).await;
        }
        if tick {
            let outcome = self
                .feed
                .handle(
                    &self.handler,
                    id,
                    &RunCommand::Tick { now },
                    &CommandMeta::new(Run::KIND, id.org.clone(), Actor::system()),
                )
                .await;
            if let Err(error) = outcome {
                tracing::warn!(run = %id, %error, "a run's tick failed; trying again soon");
                next = next.min(now + 1000);
            }
        }
        driver.timers.entry(next).or_default().insert(id.clone());
    }

    async fn queue_task(
        &self,
        driver: &mut Driver,
        id: &RunId,
        node: &charter_domain::workflow::NodeName,
        attempt: u32,
        lease: i64,
    ) {
        if lease == 0 && (self.in_hand.holds(id, node, attempt) || self.in_hand.defers(id)) {
            return;
        }
        let task = Task {
            run: id.clone(),
            node: node.clone(),
            attempt,
            lease,
            epoch: driver.epoch,
        };
        if !driver.queued.insert(task.clone()) {
            return;
        }
        metrics::counter!("charter_engine_tasks_queued_total").increment(1);
        // Pushes run beside the driver, so that it never waits for the
        // queue's acknowledgements one by one; a push that fails comes back
        // to the driver, which queues the task again a moment later.
        let queue = Arc::clone(&self.queue);
        let failed = driver.failed_pushes.0.clone();
        tokio::spawn(async move {
            if let Err(error) = queue.push(&task).await {
                tracing::warn!(run = %task.run, node = %task.node, %error, "a task could not be queued; trying again soon");
                let _ = failed.send(task);
            }
        });
    }

    /// A run ended: its contract closes, and a sub-workflow's parent node
    /// learns the outcome.
    async fn finish(&self, state: &charter_domain::run::RunState) {
        let system = |kind: &str| CommandMeta::new(kind, state.id.org.clone(), Actor::system());
        // A run that ended in a worker's append closed its contract there;
        // closing it again would only read the store to find it closed.
        let closed = charter_commands::StreamId::for_aggregate::<Contract>(&state.id)
            .ok()
            .and_then(|stream| {
                self.handler
                    .cache()
                    .get::<Contract>(Contract::KIND, &stream)
            })
            .is_some_and(|(contract, _)| contract.0.as_ref().is_some_and(|c| c.closed));
        if !closed
            && let Err(error) = self
                .handler
                .handle_new::<Contract>(&state.id, &ContractCommand::Close, &system(Contract::KIND))
                .await
        {
            tracing::debug!(run = %state.id, %error, "closing a contract");
        }
        // Sub-workflows still running end with their parent.
        for node in state.nodes.values() {
            let NodeState::Running { worker, .. } = node else {
                continue;
            };
            let Some(child) = worker
                .strip_prefix("run:")
                .and_then(|id| uuid::Uuid::parse_str(id).ok())
            else {
                continue;
            };
            let child = RunId {
                org: state.id.org.clone(),
                id: child,
            };
            let cancel = RunCommand::Cancel {
                by: Actor::system(),
                reason: format!("its parent run {} {}", state.id.id, state.status.as_str()),
            };
            if let Err(error) = self
                .feed
                .handle(&self.handler, &child, &cancel, &system(Run::KIND))
                .await
            {
                tracing::debug!(run = %child, %error, "cancelling a sub-workflow");
            }
        }
        let Some((parent, node)) = &state.plan.parent else {
            return;
        };
        let Ok(loaded) = self.handler.load::<Run>(parent).await else {
            return;
        };
        let Some(attempt) = loaded
            .state
            .0
            .as_ref()
            .and_then(|p| p.attempts.get(node).copied())
        else {
            return;
        };
        let now = now_ms();
        let command = match state.status {
            RunStatus::Succeeded => RunCommand::Succeed {
                node: node.clone(),
                attempt,
                output: state.output.clone().unwrap_or_default(),
                now,
            },
            _ => RunCommand::Fail {
                node: node.clone(),
                attempt,
                failure: NodeFailure {
                    code: "sub_workflow_failed".into(),
                    message: format!(
                        "run {} {}: {}",
                        state.id,
                        state.status.as_str(),
                        state.error.as_ref().map_or("", |e| e.message.as_str())
                    ),
                    retryable: false,
                },
                now,
            },
        };
        if let Err(error) = self
            .feed
            .handle(&self.handler, parent, &command, &system(Run::KIND))
            .await
        {
            tracing::debug!(run = %parent, %error, "reporting a sub-workflow");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed() -> RunEvent {
        RunEvent::Completed {
            output: serde_json::Value::Null,
            at: 0,
        }
    }

    #[test]
    fn an_ended_run_is_forgotten_once_the_log_delivered_its_last_event() {
        let mut driver = Driver::default();
        let org = charter_domain::OrgName::parse("acme").unwrap();
        let (done, running) = (RunId::new(org.clone()), RunId::new(org));
        assert!(driver.fold(&done, 1, &completed()));
        assert!(driver.fold(&running, 1, &completed()));
        // Still held (the driver has not finished it): kept.
        driver.forget_ended(&done, 1);
        assert_eq!(driver.folded(&done), 1);
        driver.runs.remove(&done);
        // A delivery of an earlier version says nothing yet.
        driver.forget_ended(&done, 0);
        assert_eq!(driver.folded(&done), 1);
        driver.forget_ended(&done, 1);
        driver.forget_ended(&running, 1);
        assert_eq!(driver.folded(&done), 0);
        assert!(!driver.versions.contains_key(&done));
        assert_eq!(driver.folded(&running), 1, "a run the driver holds stays");
        // Repeats of its events are recognised while it is remembered.
        assert!(!driver.fold(&running, 1, &completed()));
    }
}
