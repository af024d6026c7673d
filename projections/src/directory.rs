//! The `directory` projection: one document per subject, role, role
//! binding, policy, tool, workflow, workflow run and contract, and the `audit` projection: one document per denied request.
//!
//! Each document is `{"state": <the aggregate's state>, "version",
//! "created_at", "updated_at"}`, folded with the aggregate's own `evolve`,
//! so the read side can never disagree with what the write side decides
//! on. An object whose state folds back to nothing (deleted) loses its
//! document. Keys are `org:name` (`org:uuid` for audit records, which sort
//! in time order), and every document is scoped to its org.

use std::marker::PhantomData;

use async_trait::async_trait;
use charter_commands::RecordedEvent;
use charter_domain::Aggregate;
use charter_domain::audit::AuditRecord;
use charter_domain::contract::Contract;
use charter_domain::policy::Policy;
use charter_domain::role::{Role, RoleBinding};
use charter_domain::run::Run;
use charter_domain::subject::Subject;
use charter_domain::tool::Tool;
use charter_domain::workflow::Workflow;
use serde_json::{Value, json};

use crate::{Documents, ProjectionError, Projector};

pub const DIRECTORY: &str = "directory";
pub const AUDIT: &str = "audit";

pub const SUBJECTS: &str = "subjects";
pub const ROLES: &str = "roles";
pub const BINDINGS: &str = "rolebindings";
pub const POLICIES: &str = "policies";
pub const TOOLS: &str = "tools";
pub const WORKFLOWS: &str = "workflows";
pub const RUNS: &str = "runs";
pub const CONTRACTS: &str = "contracts";
pub const DENIALS: &str = "denials";

fn failed(
    projection: &str,
    event: &RecordedEvent,
    reason: impl std::fmt::Display,
) -> ProjectionError {
    ProjectionError::Projector {
        projection: projection.to_owned(),
        position: event.position,
        reason: reason.to_string(),
    }
}

/// Folds one aggregate's events into one collection.
struct Fold<A>(PhantomData<A>);

/// The document key of an event of `A`: its stream's id.
fn key_of<A: Aggregate>(event: &RecordedEvent) -> Option<String> {
    event
        .stream_id
        .as_str()
        .strip_prefix(A::KIND)
        .and_then(|rest| rest.strip_prefix('-'))
        .map(str::to_owned)
}

impl<A: Aggregate> Fold<A> {
    async fn apply(
        projection: &str,
        collection: &str,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        let domain_event: A::Event = event.to_domain()?;
        let key = key_of::<A>(event)
            .ok_or_else(|| failed(projection, event, "stream of another aggregate"))?;
        let current = docs.get(collection, &key).await?;
        let (mut state, created_at) = match current {
            Some(mut doc) => (
                serde_json::from_value::<A>(
                    doc.get_mut("state").map(Value::take).unwrap_or(Value::Null),
                )
                .map_err(|e| failed(projection, event, e))?,
                doc.get_mut("created_at")
                    .map(Value::take)
                    .unwrap_or(Value::Null),
            ),
            None => (A::default(), json!(event.recorded_at)),
        };
        state.evolve(&domain_event);
        let state = serde_json::to_value(&state).map_err(|e| failed(projection, event, e))?;
        if state.is_null() {
            docs.delete(collection, &key);
        } else {
            docs.put(
                collection,
                &key,
                &event.org,
                json!({
                    "state": state,
                    "version": event.version.0,
                    "created_at": created_at,
                    "updated_at": event.recorded_at,
                }),
            );
        }
        Ok(())
    }
}

/// Subjects, roles, role bindings, policies, tools, workflows, runs and
/// contracts.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectoryProjector;

#[async_trait]
impl Projector for DirectoryProjector {
    fn name(&self) -> &'static str {
        DIRECTORY
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        matches!(
            event.aggregate_type.as_str(),
            Subject::KIND
                | Role::KIND
                | RoleBinding::KIND
                | Policy::KIND
                | Tool::KIND
                | Workflow::KIND
                | Run::KIND
                | Contract::KIND
        )
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        match event.aggregate_type.as_str() {
            Subject::KIND => Fold::<Subject>::apply(DIRECTORY, SUBJECTS, event, docs).await,
            Role::KIND => Fold::<Role>::apply(DIRECTORY, ROLES, event, docs).await,
            RoleBinding::KIND => Fold::<RoleBinding>::apply(DIRECTORY, BINDINGS, event, docs).await,
            Policy::KIND => Fold::<Policy>::apply(DIRECTORY, POLICIES, event, docs).await,
            Tool::KIND => Fold::<Tool>::apply(DIRECTORY, TOOLS, event, docs).await,
            Workflow::KIND => Fold::<Workflow>::apply(DIRECTORY, WORKFLOWS, event, docs).await,
            Run::KIND => Fold::<Run>::apply(DIRECTORY, RUNS, event, docs).await,
            Contract::KIND => Fold::<Contract>::apply(DIRECTORY, CONTRACTS, event, docs).await,
            _ => Ok(()),
        }
    }

    fn reads(&self, event: &RecordedEvent) -> Vec<(&'static str, String)> {
        let read = match event.aggregate_type.as_str() {
            Subject::KIND => key_of::<Subject>(event).map(|k| (SUBJECTS, k)),
            Role::KIND => key_of::<Role>(event).map(|k| (ROLES, k)),
            RoleBinding::KIND => key_of::<RoleBinding>(event).map(|k| (BINDINGS, k)),
            Policy::KIND => key_of::<Policy>(event).map(|k| (POLICIES, k)),
            Tool::KIND => key_of::<Tool>(event).map(|k| (TOOLS, k)),
            Workflow::KIND => key_of::<Workflow>(event).map(|k| (WORKFLOWS, k)),
            Run::KIND => key_of::<Run>(event).map(|k| (RUNS, k)),
            Contract::KIND => key_of::<Contract>(event).map(|k| (CONTRACTS, k)),
            _ => None,
        };
        read.into_iter().collect()
    }
}

/// Denied requests, per org, in time order.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditProjector;

#[async_trait]
impl Projector for AuditProjector {
    fn name(&self) -> &'static str {
        AUDIT
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == AuditRecord::KIND
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        Fold::<AuditRecord>::apply(AUDIT, DENIALS, event, docs).await
    }

    fn reads(&self, event: &RecordedEvent) -> Vec<(&'static str, String)> {
        key_of::<AuditRecord>(event)
            .map(|k| (DENIALS, k))
            .into_iter()
            .collect()
    }
}
