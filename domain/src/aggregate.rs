//! The shape every aggregate takes: a pure `decide` and a pure `evolve`.
//!
//! Commands and events are enums. Events are stored as a type name, a schema
//! version and a JSON payload ([`EventParts`]); this module converts between
//! the enum and those parts so that the stores never see a domain type.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ErrorCode;

/// An event enum of one aggregate. Serialized adjacently tagged:
/// `#[serde(tag = "type", content = "data")]`.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// The variant's stored name, e.g. `Registered`.
    fn event_type(&self) -> &'static str;

    /// The schema version this code writes for the variant. Older stored
    /// versions are upgraded by upcasters before they reach the aggregate.
    fn schema_version(&self) -> u32 {
        1
    }
}

/// A consistency boundary: one stream of events, one state.
pub trait Aggregate:
    Default + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
    /// The aggregate type as stored and published, e.g. `organization`.
    const KIND: &'static str;
    /// The identity of one instance; its `Display` is the stream suffix.
    type Id: std::fmt::Display + Clone + Send + Sync;
    type Command: std::fmt::Debug + Send + Sync;
    type Event: DomainEvent;
    type Rejection: std::error::Error + ErrorCode + Clone + PartialEq + Send + Sync + 'static;

    /// Decides what a command to the instance `id` means against the
    /// current state. Returning no events means the command is already
    /// satisfied.
    fn decide(
        &self,
        id: &Self::Id,
        command: &Self::Command,
    ) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Folds one event into the state. Must accept every event `decide` emits.
    fn evolve(&mut self, event: &Self::Event);

    /// Whether the instance exists (a deleted or never created one does
    /// not): its state serializes to something other than `null`.
    fn exists(&self) -> bool {
        serde_json::to_value(self).is_ok_and(|v| !v.is_null())
    }

    /// Replays a history from the initial state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        let mut state = Self::default();
        for event in events {
            state.evolve(event);
        }
        state
    }

    /// The stream that holds one instance: `<kind>-<id>`.
    fn stream_name(id: &Self::Id) -> String {
        format!("{}-{}", Self::KIND, id)
    }
}

/// An event as storable parts.
#[derive(Debug, Clone, PartialEq)]
pub struct EventParts {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
}

/// Why stored parts could not become a domain event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventDecodeError {
    #[error("event could not be serialized: {0}")]
    Serialize(String),
    #[error("event `{event_type}` does not match its schema: {reason}")]
    Payload { event_type: String, reason: String },
}

impl EventParts {
    /// Splits an event into its stored parts.
    pub fn from_event<E: DomainEvent>(event: &E) -> Result<Self, EventDecodeError> {
        let value =
            serde_json::to_value(event).map_err(|e| EventDecodeError::Serialize(e.to_string()))?;
        let (tag, payload) = match value {
            Value::Object(mut map) => (
                map.remove("type"),
                map.remove("data").unwrap_or(Value::Null),
            ),
            other => {
                return Err(EventDecodeError::Serialize(format!(
                    "expected an adjacently tagged object, got {other}"
                )));
            }
        };
        // The serde tag is what decoding matches on, so it must be the
        // stored type: a mismatch would write events nobody can read.
        if tag.as_ref().and_then(Value::as_str) != Some(event.event_type()) {
            return Err(EventDecodeError::Serialize(format!(
                "event_type() says `{}` but the serde tag is {tag:?}",
                event.event_type()
            )));
        }
        Ok(Self {
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload,
        })
    }

    /// The event's payload alone as JSON text (`null` for a variant
    /// without data), printed straight from the event: the text of what
    /// [`EventParts::from_event`] gives as `payload`, without building it.
    pub fn payload_json<E: DomainEvent>(event: &E) -> Result<String, EventDecodeError> {
        let serialize = |e: serde_json::Error| EventDecodeError::Serialize(e.to_string());
        let text = serde_json::to_string(event).map_err(serialize)?;
        let tag = serde_json::to_string(event.event_type()).map_err(serialize)?;
        // Adjacently tagged: the tag first, then the data, if any.
        let rest = text
            .strip_prefix("{\"type\":")
            .and_then(|rest| rest.strip_prefix(tag.as_str()));
        match rest {
            Some("}") => Ok("null".to_owned()),
            Some(rest) => rest
                .strip_prefix(",\"data\":")
                .and_then(|data| data.strip_suffix('}'))
                .map(str::to_owned)
                .ok_or_else(|| {
                    EventDecodeError::Serialize(format!(
                        "expected an adjacently tagged object, got {text}"
                    ))
                }),
            None => Err(EventDecodeError::Serialize(format!(
                "event_type() says `{}` but the event serializes as {text}",
                event.event_type()
            ))),
        }
    }

    /// Rebuilds the domain event; the payload must already be upcast.
    pub fn to_event<E: DomainEvent>(&self) -> Result<E, EventDecodeError> {
        let mut map = serde_json::Map::with_capacity(2);
        map.insert("type".into(), Value::String(self.event_type.clone()));
        if !self.payload.is_null() {
            map.insert("data".into(), self.payload.clone());
        }
        serde_json::from_value(Value::Object(map)).map_err(|e| EventDecodeError::Payload {
            event_type: self.event_type.clone(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Sample {
        Said { text: String },
        Pinged,
        Mislabelled,
    }

    impl DomainEvent for Sample {
        fn event_type(&self) -> &'static str {
            match self {
                Sample::Said { .. } => "Said",
                Sample::Pinged => "Pinged",
                Sample::Mislabelled => "Other",
            }
        }
    }

    #[test]
    fn payload_json_is_the_stored_payload_printed() {
        let said = Sample::Said {
            text: "a \"quoted\" } and ünïcode".into(),
        };
        for event in [said, Sample::Pinged] {
            assert_eq!(
                EventParts::payload_json(&event).unwrap(),
                EventParts::from_event(&event).unwrap().payload.to_string()
            );
        }
        assert_eq!(EventParts::payload_json(&Sample::Pinged).unwrap(), "null");
        assert!(EventParts::payload_json(&Sample::Mislabelled).is_err());
    }
}
