//! The `organizations` projection: one document per organization, with its
//! current state, the stream version it reflects, and when it was created
//! and last changed.
//!
//! The fold is the aggregate's own `evolve`, so the read model can never
//! disagree with what the write side decides on.

use async_trait::async_trait;
use charter_commands::RecordedEvent;
use charter_domain::Aggregate;
use charter_domain::organization::{OrgEvent, OrgState, Organization};
use serde_json::{Value, json};

use crate::{Documents, ProjectionError, Projector};

pub const PROJECTION: &str = "organizations";
pub const COLLECTION: &str = "organizations";

#[derive(Debug, Default, Clone, Copy)]
pub struct OrganizationsProjector;

fn failed(event: &RecordedEvent, reason: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Projector {
        projection: PROJECTION.to_owned(),
        position: event.position,
        reason: reason.to_string(),
    }
}

#[async_trait]
impl Projector for OrganizationsProjector {
    fn name(&self) -> &'static str {
        PROJECTION
    }

    fn wants(&self, event: &RecordedEvent) -> bool {
        event.aggregate_type == Organization::KIND
    }

    fn reads(&self, event: &RecordedEvent) -> Vec<(&'static str, String)> {
        vec![(COLLECTION, event.org.as_str().to_owned())]
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        let org_event: OrgEvent = event.to_domain()?;
        let key = event.org.as_str();
        let current = docs.get(COLLECTION, key).await?;
        let (state, created_at) = match &current {
            Some(doc) => (
                serde_json::from_value::<OrgState>(doc.clone()).map_err(|e| failed(event, e))?,
                doc.get("created_at").cloned().unwrap_or(Value::Null),
            ),
            None => match &org_event {
                OrgEvent::Registered { .. } => {
                    let mut org = Organization::default();
                    org.evolve(&org_event);
                    let state = org
                        .0
                        .ok_or_else(|| failed(event, "registration set no state"))?;
                    docs.put(
                        COLLECTION,
                        key,
                        &event.org,
                        document(&state, event, json!(event.recorded_at))?,
                    );
                    return Ok(());
                }
                _ => return Err(failed(event, "event for an organization never registered")),
            },
        };
        let mut org = Organization(Some(state));
        org.evolve(&org_event);
        let state = org.0.ok_or_else(|| failed(event, "state vanished"))?;
        docs.put(
            COLLECTION,
            key,
            &event.org,
            document(&state, event, created_at)?,
        );
        Ok(())
    }
}

fn document(
    state: &OrgState,
    event: &RecordedEvent,
    created_at: Value,
) -> Result<Value, ProjectionError> {
    let mut doc = serde_json::to_value(state).map_err(|e| failed(event, e))?;
    if let Some(map) = doc.as_object_mut() {
        map.insert("version".into(), json!(event.version.0));
        map.insert("created_at".into(), created_at);
        map.insert("updated_at".into(), json!(event.recorded_at));
    }
    Ok(doc)
}
