//! Upcasting: upgrading an event payload stored under an older schema
//! version to the version the code reads today.
//!
//! An upcaster is a pure function from one version's payload to the next.
//! The chain is applied step by step (v1 → v2 → v3) on every read, so stored
//! rows are never rewritten. This module must not touch storage.

use std::collections::HashMap;

use serde_json::Value;

/// One step: the payload of `event_type` at `from_version` to `from_version + 1`.
pub type UpcastFn = fn(Value) -> Result<Value, String>;

/// Why an event could not be upgraded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpcastError {
    #[error("no upcaster for `{aggregate_type}/{event_type}` from schema version {version}")]
    Missing {
        aggregate_type: String,
        event_type: String,
        version: u32,
    },
    #[error(
        "upcasting `{aggregate_type}/{event_type}` from schema version {version} failed: {reason}"
    )]
    Failed {
        aggregate_type: String,
        event_type: String,
        version: u32,
        reason: String,
    },
}

/// The registered upcasters and the current version of each event type.
#[derive(Debug, Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, String, u32), UpcastFn>,
    /// aggregate type → event type → current version; looked up on every
    /// read, so keyed for borrowed lookups.
    current: HashMap<String, HashMap<String, u32>>,
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step `from_version` → `from_version + 1`.
    pub fn register(
        &mut self,
        aggregate_type: &str,
        event_type: &str,
        from_version: u32,
        step: UpcastFn,
    ) -> &mut Self {
        self.steps.insert(
            (
                aggregate_type.to_owned(),
                event_type.to_owned(),
                from_version,
            ),
            step,
        );
        let current = self
            .current
            .entry(aggregate_type.to_owned())
            .or_default()
            .entry(event_type.to_owned())
            .or_insert(1);
        *current = (*current).max(from_version + 1);
        self
    }

    /// The version `upcast` brings this event type to (1 if none registered).
    pub fn current_version(&self, aggregate_type: &str, event_type: &str) -> u32 {
        self.current
            .get(aggregate_type)
            .and_then(|types| types.get(event_type))
            .copied()
            .unwrap_or(1)
    }

    /// True when nothing is registered for this aggregate type, so reads can
    /// skip the lookup.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Brings a payload from `version` to the current version. A version
    /// newer than any this code knows is returned unchanged.
    pub fn upcast(
        &self,
        aggregate_type: &str,
        event_type: &str,
        mut version: u32,
        mut payload: Value,
    ) -> Result<(u32, Value), UpcastError> {
        let target = self.current_version(aggregate_type, event_type);
        while version < target {
            let key = (aggregate_type.to_owned(), event_type.to_owned(), version);
            let step = self.steps.get(&key).ok_or_else(|| UpcastError::Missing {
                aggregate_type: aggregate_type.to_owned(),
                event_type: event_type.to_owned(),
                version,
            })?;
            payload = step(payload).map_err(|reason| UpcastError::Failed {
                aggregate_type: aggregate_type.to_owned(),
                event_type: event_type.to_owned(),
                version,
                reason,
            })?;
            version += 1;
        }
        Ok((version, payload))
    }
}

/// Every upcaster the domain defines.
pub fn domain_upcasters() -> Upcasters {
    let mut upcasters = Upcasters::new();
    crate::organization::register_upcasters(&mut upcasters);
    upcasters
}
