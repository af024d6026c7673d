//! Workflow runs through the gateway: start, cancel, answer approvals,
//! read the trace and the contract. Starting names the workflow (`run` on
//! `WorkflowRun` named after it), and so do cancelling (`cancel`) and
//! answering an approval (`approve`), so that an org's policies can say who
//! may do what with which workflow. Reading a run names the run.

use std::sync::Arc;

use charter_commands::{StreamId, StreamVersion};
use charter_domain::ids::JobSpaceName;
use charter_domain::run::{Run, RunCommand, RunId};
use charter_domain::tool::ToolVersion;
use charter_domain::workflow::{NodeName, WorkflowName};
use charter_projections::directory::{CONTRACTS, DIRECTORY};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::reads::parse_org;
use super::views::{ContractView, TraceEventView};
use super::{ApiError, Caller, Gateway, Target, actor_of};
use crate::engine::start::{StartRequest, now_ms, start_run};
use charter_domain::role::ResourceKind;

/// `POST /v1/orgs/{org}/workflows/{name}/runs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, async_graphql::InputObject)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRunRequest {
    /// The run's input; it must match the workflow's input schema.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<async_graphql::Json<Value>>,
    /// The workflow version; omitted: the latest.
    #[serde(default)]
    pub version: Option<String>,
    /// The job space the run works in: starting it and its calls are
    /// authorized there.
    #[serde(default)]
    pub job_space: Option<String>,
}

/// What starting a run did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct RunStarted {
    /// The run's id; its contract has the same.
    pub id: String,
    pub events: Vec<String>,
    /// Reads that ask for it (`minPosition`) see the run.
    pub position: Option<u64>,
}

/// What a command to a run did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, async_graphql::SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct RunChanged {
    pub id: String,
    pub events: Vec<String>,
    pub position: Option<u64>,
}

fn run_id(org: &charter_domain::OrgName, id: &str) -> Result<RunId, ApiError> {
    let uuid = uuid::Uuid::parse_str(id).map_err(|_| ApiError::not_found("workflow run", id))?;
    Ok(RunId {
        org: org.clone(),
        id: uuid,
    })
}

/// How a run's trace is read: its events after `after` (a stream
/// version), at most `limit`. With `wait`, an empty answer waits up to
/// that long for the next event; with `until_end` as well, the answer
/// waits for the run's last event (or for `limit` events).
#[derive(Debug, Clone, Copy)]
pub struct TraceRead {
    pub after: u64,
    pub limit: usize,
    pub wait: std::time::Duration,
    pub until_end: bool,
}

impl Gateway {
    pub async fn start_workflow_run(
        &self,
        caller: &Caller,
        org: &str,
        workflow: &str,
        request: &StartRunRequest,
    ) -> Result<RunStarted, ApiError> {
        let org = parse_org(org)?;
        let name = WorkflowName::parse(workflow).map_err(|e| ApiError::invalid_name(&e))?;
        let job_space = request
            .job_space
            .as_deref()
            .map(JobSpaceName::parse)
            .transpose()
            .map_err(|e| ApiError::invalid_name(&e))?;
        self.authorize(
            caller,
            "run",
            &Target::new(&org, ResourceKind::WorkflowRun, name.as_str())
                .in_job_space(job_space.clone()),
        )
        .await?;
        if let Some(space) = &job_space {
            let known = self.access.read_all(|_, facts| {
                facts
                    .org(&org)
                    .is_some_and(|o| o.job_spaces.contains_key(space))
            });
            if !known {
                return Err(ApiError::not_found("job space", space.as_str()));
            }
        }
        let version = request
            .version
            .as_deref()
            .map(ToolVersion::parse)
            .transpose()
            .map_err(|e| ApiError::invalid_name(&e))?;
        let input = request
            .input
            .as_ref()
            .map_or_else(|| Value::Object(Default::default()), |j| j.0.clone());
        let started = start_run(
            &self.handler,
            &self.run_feed,
            &self.access,
            StartRequest {
                run: RunId::new(org),
                workflow: &name,
                version: version.as_ref(),
                input,
                by: actor_of(caller),
                parent: None,
                job_space,
            },
        )
        .await?;
        Ok(RunStarted {
            id: started.run.id.to_string(),
            events: started.events,
            position: started.position.map(|p| p.0),
        })
    }

    /// Loads a run the caller may act on with `verb` (named after its
    /// workflow); another org's run is not there.
    async fn run_for(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        verb: &'static str,
    ) -> Result<RunId, ApiError> {
        let org = parse_org(org)?;
        // Authorize on the org first, so that another org's runs are never
        // even looked up.
        self.authorize(
            caller,
            "get",
            &Target::new(&org, ResourceKind::WorkflowRun, id),
        )
        .await?;
        let id = run_id(&org, id)?;
        // What a run is of never changes once it exists.
        let run = self
            .handler
            .load_unless::<Run>(&id, |run| run.0.is_some())
            .await?;
        let run = run
            .0
            .as_ref()
            .ok_or_else(|| ApiError::not_found("workflow run", &id.id.to_string()))?;
        self.authorize(
            caller,
            verb,
            &Target::new(&org, ResourceKind::WorkflowRun, run.plan.workflow.as_str()),
        )
        .await?;
        Ok(id)
    }

    async fn command_run(
        &self,
        caller: &Caller,
        id: &RunId,
        command: RunCommand,
    ) -> Result<RunChanged, ApiError> {
        let meta = self.meta(caller, &id.org, None);
        let outcome = self
            .run_feed
            .handle(&self.handler, id, &command, &meta)
            .await?;
        Ok(RunChanged {
            id: id.id.to_string(),
            events: outcome
                .events
                .iter()
                .map(|e| charter_domain::DomainEvent::event_type(e).to_owned())
                .collect(),
            position: outcome.position.map(|p| p.0),
        })
    }

    /// Cancels a run; its running tools are stopped.
    pub async fn cancel_run(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        reason: &str,
    ) -> Result<RunChanged, ApiError> {
        let id = self.run_for(caller, org, id, "cancel").await?;
        self.command_run(
            caller,
            &id,
            RunCommand::Cancel {
                by: actor_of(caller),
                reason: reason.to_owned(),
            },
        )
        .await
    }

    /// Approves or rejects an approval node.
    pub async fn answer_approval(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        node: &str,
        approved: bool,
        comment: &str,
    ) -> Result<RunChanged, ApiError> {
        let run = self.run_for(caller, org, id, "approve").await?;
        let node = NodeName::parse(node).map_err(|e| ApiError::invalid_name(&e))?;
        self.command_run(
            caller,
            &run,
            RunCommand::Answer {
                node,
                approved,
                by: actor_of(caller),
                comment: comment.to_owned(),
                now: now_ms(),
            },
        )
        .await
    }

    /// A run's trace, read as `read` says.
    pub async fn run_trace(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        read: TraceRead,
    ) -> Result<Vec<Arc<TraceEventView>>, ApiError> {
        let run = self.run_for(caller, org, id, "get").await?;
        self.trace_waiting(&run, read).await
    }

    /// The trace after `after`, waiting up to `wait` (at most 30 s) for
    /// the run's next event when there is none yet (an ended run has none
    /// to come: the empty answer is at once), or, with `until_end`,
    /// until the run's last event is there or `limit` events are. It wakes
    /// when this process records an event of the run (a periodic look
    /// covers one missed), and reads the trace this process holds, or the
    /// stream when it holds none.
    pub(crate) async fn trace_waiting(
        &self,
        run: &RunId,
        read: TraceRead,
    ) -> Result<Vec<Arc<TraceEventView>>, ApiError> {
        let TraceRead {
            after,
            limit,
            wait,
            until_end,
        } = read;
        use tokio::time::{Instant, timeout_at};
        let limit = limit.clamp(1, 1000);
        let deadline = Instant::now() + wait.min(std::time::Duration::from_secs(30));
        let mut signal = self.run_traces.subscribe(run);
        loop {
            signal.mark_unchanged();
            let look_again = deadline.min(Instant::now() + std::time::Duration::from_secs(1));
            // Following a run held here: read nothing out until it is
            // worth answering.
            if until_end
                && let Some((last, ended)) = self.run_traces.progress(run)
                && !ended
                && last.saturating_sub(after) < limit as u64
                && Instant::now() < deadline
            {
                let _ = timeout_at(look_again, signal.wait_for(|version| *version > last)).await;
                continue;
            }
            let events = self.trace_after(run, after, limit).await?;
            let seen = events.last().map_or(after, |event| event.version);
            let answer = match events.last() {
                _ if Instant::now() >= deadline => true,
                // Nothing after `after`, and nothing can come when the run
                // has ended: no use waiting.
                None => self.has_ended(run).await?,
                Some(last) => !until_end || last.is_final() || events.len() >= limit,
            };
            if answer {
                return Ok(events);
            }
            let _ = timeout_at(look_again, signal.wait_for(|version| *version > seen)).await;
        }
    }

    /// Whether the run has recorded its last event: as the trace held
    /// here says, or else as the store does.
    pub(crate) async fn has_ended(&self, run: &RunId) -> Result<bool, ApiError> {
        if let Some((_, ended)) = self.run_traces.progress(run) {
            return Ok(ended);
        }
        let loaded = self.handler.load::<Run>(run).await?;
        Ok(loaded
            .state
            .0
            .as_ref()
            .is_some_and(|state| state.status.is_final()))
    }

    pub(crate) async fn trace_after(
        &self,
        run: &RunId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<TraceEventView>>, ApiError> {
        let limit = limit.clamp(1, 1000);
        if let Some(events) = self.run_traces.after(run, after, limit) {
            return Ok(events);
        }
        let stream = StreamId::for_aggregate::<Run>(run)?;
        let events = match self
            .handler
            .store()
            .read_stream(&stream, StreamVersion(after), limit)
            .await
        {
            Ok(events) => events,
            Err(charter_commands::StoreError::StreamNotFound(_)) => vec![],
            Err(error) => return Err(error.into()),
        };
        Ok(events
            .iter()
            .map(|event| Arc::new(TraceEventView::from_recorded(event)))
            .collect())
    }

    /// Checks that the caller may watch a run, and names it.
    pub async fn watchable_run(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
    ) -> Result<RunId, ApiError> {
        self.run_for(caller, org, id, "get").await
    }

    /// A run's contract.
    pub async fn run_contract(
        &self,
        caller: &Caller,
        org: &str,
        id: &str,
        min_position: Option<u64>,
    ) -> Result<ContractView, ApiError> {
        let run = self.run_for(caller, org, id, "get").await?;
        self.wait_visible(DIRECTORY, min_position).await?;
        let doc = self
            .read_models
            .get(DIRECTORY, CONTRACTS, &run.to_string())
            .await
            .map_err(|e| ApiError::from_error(&e))?
            .filter(|d| d.org == run.org)
            .ok_or_else(|| ApiError::not_found("contract", &run.id.to_string()))?;
        ContractView::from_doc(&doc.doc, doc.position.0)
    }
}
