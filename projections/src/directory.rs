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
        Self::apply_many(projection, collection, &[event], docs).await
    }

    /// Folds events of one document (in order) into it, reading and
    /// writing the document once: the same document as folding them one
    /// by one.
    async fn apply_many(
        projection: &str,
        collection: &str,
        events: &[&RecordedEvent],
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let key = key_of::<A>(first)
            .ok_or_else(|| failed(projection, first, "stream of another aggregate"))?;
        let (mut state, mut created_at) = match docs.take(collection, &key).await? {
            Some(mut doc) => (
                serde_json::from_value::<A>(
                    doc.get_mut("state").map(Value::take).unwrap_or(Value::Null),
                )
                .map_err(|e| failed(projection, first, e))?,
                doc.get_mut("created_at")
                    .map(Value::take)
                    .unwrap_or(Value::Null),
            ),
            None => (A::default(), Value::Null),
        };
        for event in events {
            // A document made anew (first, or after a delete) is created
            // by the event that makes it.
            if !state.exists() {
                created_at = json!(event.recorded_at);
            }
            let domain_event: A::Event = event.to_domain()?;
            state.evolve(&domain_event);
        }
        docs.at(last.position);
        if !state.exists() {
            docs.delete(collection, &key);
            return Ok(());
        }
        let state = serde_json::to_value(&state).map_err(|e| failed(projection, last, e))?;
        docs.put(
            collection,
            &key,
            &last.org,
            json!({
                "state": state,
                "version": last.version.0,
                "created_at": created_at,
                "updated_at": last.recorded_at,
            }),
        );
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
        self.apply_all(&[event], docs).await
    }

    /// Events of one document are folded together, each document read
    /// and written once per batch.
    async fn apply_all(
        &self,
        events: &[&RecordedEvent],
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        let mut order: Vec<&str> = Vec::new();
        let mut by_stream: std::collections::HashMap<&str, Vec<&RecordedEvent>> =
            std::collections::HashMap::new();
        for event in events {
            let stream = event.stream_id.as_str();
            by_stream
                .entry(stream)
                .or_insert_with(|| {
                    order.push(stream);
                    Vec::new()
                })
                .push(event);
        }
        for stream in order {
            let group = &by_stream[stream];
            match group[0].aggregate_type.as_str() {
                Subject::KIND => {
                    Fold::<Subject>::apply_many(DIRECTORY, SUBJECTS, group, docs).await?
                }
                Role::KIND => Fold::<Role>::apply_many(DIRECTORY, ROLES, group, docs).await?,
                RoleBinding::KIND => {
                    Fold::<RoleBinding>::apply_many(DIRECTORY, BINDINGS, group, docs).await?
                }
                Policy::KIND => {
                    Fold::<Policy>::apply_many(DIRECTORY, POLICIES, group, docs).await?
                }
                Tool::KIND => Fold::<Tool>::apply_many(DIRECTORY, TOOLS, group, docs).await?,
                Workflow::KIND => {
                    Fold::<Workflow>::apply_many(DIRECTORY, WORKFLOWS, group, docs).await?
                }
                Run::KIND => Fold::<Run>::apply_many(DIRECTORY, RUNS, group, docs).await?,
                Contract::KIND => {
                    Fold::<Contract>::apply_many(DIRECTORY, CONTRACTS, group, docs).await?
                }
                _ => {}
            }
        }
        Ok(())
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
