//! The `directory` projection: one document per subject, role, role
//! binding, policy, tool, workflow, workflow run and contract, and the `audit` projection: one document per denied request.
//!
//! Each document is `{"state": <the aggregate's state>, "version",
//! "created_at", "updated_at"}`, folded with the aggregate's own `evolve`,
//! so the read side can never disagree with what the write side decides
//! on. An object whose state folds back to nothing (deleted) loses its
//! document. Keys are `org:name` (`org:uuid` for audit records, which sort
//! in time order), and every document is scoped to its org.

use std::any::Any;
use std::collections::HashMap;
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

/// How many folded states [`States`] keeps.
const KEPT_STATES: usize = 2048;

/// The states this projector last folded documents to, each with the
/// stream version it is at. A stream's events never change, so a document
/// found at that version holds that state, whoever wrote it: it need not
/// be decoded again. One projector serves one store (the same stream
/// version means the same state only within one log), which is why the
/// projector is made anew per store and is not `Clone`.
#[derive(Default)]
struct States {
    by_doc: std::sync::Mutex<KeptStates>,
}

/// A state by `(collection, key)`, with the stream version it is at.
type KeptStates = HashMap<(&'static str, String), (u64, Box<dyn Any + Send>)>;

impl States {
    fn lock(&self) -> std::sync::MutexGuard<'_, KeptStates> {
        self.by_doc
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state of the document at `version`, when it is the one kept
    /// (taken: a batch that fails leaves nothing behind).
    fn take<A: Aggregate>(&self, collection: &'static str, key: &str, version: u64) -> Option<A> {
        let mut by_doc = self.lock();
        let id = (collection, key.to_owned());
        match by_doc.get(&id) {
            Some((at, _)) if *at == version => {}
            _ => return None,
        }
        let (_, state) = by_doc.remove(&id)?;
        state.downcast::<A>().ok().map(|state| *state)
    }

    fn keep<A: Aggregate>(&self, collection: &'static str, key: String, version: u64, state: A) {
        let mut by_doc = self.lock();
        if by_doc.len() >= KEPT_STATES {
            by_doc.clear();
        }
        by_doc.insert((collection, key), (version, Box::new(state)));
    }

    fn forget(&self, collection: &'static str, key: &str) {
        self.lock().remove(&(collection, key.to_owned()));
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
        collection: &'static str,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        Self::apply_many(projection, collection, &[event], docs, None).await
    }

    /// Folds events of one document (in order) into it, reading and
    /// writing the document once: the same document as folding them one
    /// by one. With `states`, a document's state is taken from there
    /// when it is kept at the document's version, and kept after.
    async fn apply_many(
        projection: &str,
        collection: &'static str,
        events: &[&RecordedEvent],
        docs: &mut dyn Documents,
        states: Option<&States>,
    ) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let key = key_of::<A>(first)
            .ok_or_else(|| failed(projection, first, "stream of another aggregate"))?;
        let (mut state, mut created_at) = match docs.take(collection, &key).await? {
            Some(mut doc) => {
                let kept = doc
                    .get("version")
                    .and_then(Value::as_u64)
                    .and_then(|version| states?.take::<A>(collection, &key, version));
                let state = match kept {
                    Some(state) => state,
                    None => serde_json::from_value::<A>(
                        doc.get_mut("state").map(Value::take).unwrap_or(Value::Null),
                    )
                    .map_err(|e| failed(projection, first, e))?,
                };
                let created_at = doc
                    .get_mut("created_at")
                    .map(Value::take)
                    .unwrap_or(Value::Null);
                (state, created_at)
            }
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
            if let Some(states) = states {
                states.forget(collection, &key);
            }
            docs.delete(collection, &key);
            return Ok(());
        }
        let value = serde_json::to_value(&state).map_err(|e| failed(projection, last, e))?;
        docs.put(
            collection,
            &key,
            &last.org,
            json!({
                "state": value,
                "version": last.version.0,
                "created_at": created_at,
                "updated_at": last.recorded_at,
            }),
        );
        if let Some(states) = states {
            states.keep(collection, key, last.version.0, state);
        }
        Ok(())
    }
}

/// Subjects, roles, role bindings, policies, tools, workflows, runs and
/// contracts. It keeps the states it folded, by document and stream
/// version, so that a document it wrote is not decoded again: make one
/// per store (one stream version means one state only within one log).
#[derive(Default)]
pub struct DirectoryProjector {
    states: States,
}

impl DirectoryProjector {
    /// How many folded states it keeps.
    pub fn kept_states(&self) -> usize {
        self.states.lock().len()
    }
}

impl std::fmt::Debug for DirectoryProjector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryProjector")
            .field("kept_states", &self.kept_states())
            .finish()
    }
}

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
        let mut by_stream: HashMap<&str, Vec<&RecordedEvent>> = HashMap::new();
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
        let states = Some(&self.states);
        for stream in order {
            let group = &by_stream[stream];
            match group[0].aggregate_type.as_str() {
                Subject::KIND => {
                    Fold::<Subject>::apply_many(DIRECTORY, SUBJECTS, group, docs, states).await?
                }
                Role::KIND => {
                    Fold::<Role>::apply_many(DIRECTORY, ROLES, group, docs, states).await?
                }
                RoleBinding::KIND => {
                    Fold::<RoleBinding>::apply_many(DIRECTORY, BINDINGS, group, docs, states)
                        .await?
                }
                Policy::KIND => {
                    Fold::<Policy>::apply_many(DIRECTORY, POLICIES, group, docs, states).await?
                }
                Tool::KIND => {
                    Fold::<Tool>::apply_many(DIRECTORY, TOOLS, group, docs, states).await?
                }
                Workflow::KIND => {
                    Fold::<Workflow>::apply_many(DIRECTORY, WORKFLOWS, group, docs, states).await?
                }
                Run::KIND => Fold::<Run>::apply_many(DIRECTORY, RUNS, group, docs, states).await?,
                Contract::KIND => {
                    Fold::<Contract>::apply_many(DIRECTORY, CONTRACTS, group, docs, states).await?
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
