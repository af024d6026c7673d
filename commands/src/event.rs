//! The shapes the event store speaks: positions, versions, stream ids, the
//! events it takes and the events it gives back with their metadata.

use std::fmt;
use std::str::FromStr;

use charter_domain::{
    Actor, CausationId, CommandId, CorrelationId, DomainEvent, EventId, EventParts, OrgName,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::StoreError;

/// A place in the global log. Positions grow in the order readers see
/// events; they are not dense (see the PostgreSQL store's module doc).
/// `Position(0)` is before the first event.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    pub const START: Position = Position(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Position {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Position)
    }
}

/// The number of events in a stream; the version of its last event.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(pub u64);

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the writer believes the stream's version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be exactly at this version.
    Exact(StreamVersion),
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// A stream's name: 1 to 200 characters of ASCII letters, digits and
/// `-_.:`, e.g. `organization-acme`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    pub fn parse(value: impl Into<String>) -> Result<Self, StoreError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 200
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Self(value))
        } else {
            Err(StoreError::InvalidName {
                what: "stream id",
                value: value.chars().take(80).collect(),
            })
        }
    }

    /// The stream of one aggregate instance.
    pub fn for_aggregate<A: charter_domain::Aggregate>(id: &A::Id) -> Result<Self, StoreError> {
        Self::parse(A::stream_name(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Checks a type name (aggregate type, event type): 1 to 100 ASCII letters,
/// digits, `_` or `-`. Such names become NATS subject tokens.
pub(crate) fn check_type_name(what: &'static str, value: &str) -> Result<(), StoreError> {
    let ok = !value.is_empty()
        && value.len() <= 100
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            what,
            value: value.chars().take(80).collect(),
        })
    }
}

/// One event to append. Its payload is kept as JSON text: events made
/// from domain events are printed once, straight to it, and stored as
/// they are.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: EventId,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Box<RawValue>,
}

impl PartialEq for NewEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.event_type == other.event_type
            && self.schema_version == other.schema_version
            && self.payload.get() == other.payload.get()
    }
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, payload: Value) -> Self {
        Self {
            event_id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            payload: json_text(&payload),
        }
    }

    /// A domain event as a new stored event.
    pub fn from_domain<E: DomainEvent>(event: &E) -> Result<Self, StoreError> {
        let payload = EventParts::payload_json(event)
            .map_err(|e| StoreError::Serialization(e.to_string()))?;
        Ok(Self {
            event_id: EventId::new(),
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: RawValue::from_string(payload)
                .map_err(|e| StoreError::Serialization(e.to_string()))?,
        })
    }

    /// The payload as a JSON value.
    pub fn payload_value(&self) -> Value {
        serde_json::from_str(self.payload.get()).unwrap_or(Value::Null)
    }
}

/// An appended event's payload as stored (its JSON text), shared with
/// whoever the command's outcome goes to.
#[derive(Debug, Clone)]
pub struct SharedPayload(pub std::sync::Arc<RawValue>);

impl PartialEq for SharedPayload {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// A JSON value as its text.
fn json_text(value: &Value) -> Box<RawValue> {
    // Printing a `Value` cannot fail: its keys are strings.
    serde_json::value::to_raw_value(value)
        .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON"))
}

/// Who and what an append belongs to: the same for every event of it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandMeta {
    pub command_id: CommandId,
    pub aggregate_type: String,
    pub org: OrgName,
    pub actor: Actor,
    pub correlation_id: CorrelationId,
    /// The event or command that caused this command; `None` means the
    /// command itself is the cause of its events.
    pub causation_id: Option<CausationId>,
}

impl CommandMeta {
    /// A command with a fresh id and correlation.
    pub fn new(aggregate_type: impl Into<String>, org: OrgName, actor: Actor) -> Self {
        Self {
            command_id: CommandId::new(),
            aggregate_type: aggregate_type.into(),
            org,
            actor,
            correlation_id: CorrelationId::new(),
            causation_id: None,
        }
    }

    pub fn causation(&self) -> CausationId {
        self.causation_id
            .unwrap_or_else(|| CausationId::from_uuid(self.command_id.as_uuid()))
    }
}

/// A stored event with all of its metadata. The payload stays raw JSON
/// text until someone decodes it: catch-up reads and the relay never pay
/// for a parse they do not need. Copies share one record (every reader
/// of the log in a process gets the same event), so cloning is cheap; the
/// record's fields are read through it.
#[derive(Clone, PartialEq)]
pub struct RecordedEvent(std::sync::Arc<EventRecord>);

impl RecordedEvent {
    pub fn new(record: EventRecord) -> Self {
        Self(std::sync::Arc::new(record))
    }
}

impl std::ops::Deref for RecordedEvent {
    type Target = EventRecord;
    fn deref(&self) -> &EventRecord {
        &self.0
    }
}

impl fmt::Debug for RecordedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for RecordedEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordedEvent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventRecord::deserialize(d).map(Self::new)
    }
}

/// What a recorded event holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventRecord {
    pub position: Position,
    pub event_id: EventId,
    pub stream_id: StreamId,
    pub aggregate_type: String,
    pub version: StreamVersion,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub org: OrgName,
    pub actor: Actor,
    pub command_id: CommandId,
    pub correlation_id: CorrelationId,
    pub causation_id: CausationId,
    pub payload: Box<RawValue>,
}

impl PartialEq for EventRecord {
    fn eq(&self, other: &Self) -> bool {
        self.position == other.position
            && self.event_id == other.event_id
            && self.stream_id == other.stream_id
            && self.aggregate_type == other.aggregate_type
            && self.version == other.version
            && self.event_type == other.event_type
            && self.schema_version == other.schema_version
            && self.recorded_at == other.recorded_at
            && self.org == other.org
            && self.actor == other.actor
            && self.command_id == other.command_id
            && self.correlation_id == other.correlation_id
            && self.causation_id == other.causation_id
            && self.payload.get() == other.payload.get()
    }
}

impl EventRecord {
    /// The payload as a JSON value.
    pub fn payload_value(&self) -> Result<Value, StoreError> {
        serde_json::from_str(self.payload.get()).map_err(|e| StoreError::MalformedEvent {
            position: self.position,
            reason: e.to_string(),
        })
    }

    /// Decodes the payload as a domain event (already upcast by the store).
    pub fn to_domain<E: DomainEvent>(&self) -> Result<E, StoreError> {
        let malformed = |reason: String| StoreError::MalformedEvent {
            position: self.position,
            reason,
        };
        let event_type =
            serde_json::to_string(&self.event_type).map_err(|e| malformed(e.to_string()))?;
        let tagged = format!(r#"{{"type":{event_type},"data":{}}}"#, self.payload.get());
        serde_json::from_str(&tagged).map_err(|e| {
            malformed(format!(
                "event `{}` does not match its schema: {e}",
                self.event_type
            ))
        })
    }
}

/// One stream's share of an append: several of them written by
/// [`crate::EventStore::append_all`] commit together or not at all.
#[derive(Debug, Clone, Copy)]
pub struct StreamAppend<'a> {
    pub stream: &'a StreamId,
    pub expected: ExpectedVersion,
    pub events: &'a [NewEvent],
    pub meta: &'a CommandMeta,
}

/// What an append did (or, for a repeated command id, what it did the first
/// time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    pub stream_id: StreamId,
    /// The version of the first appended event.
    pub first_version: StreamVersion,
    /// The stream's version after the append.
    pub last_version: StreamVersion,
    pub first_position: Position,
    pub last_position: Position,
    /// When the events were recorded (every event of one append carries
    /// the same time).
    pub recorded_at: DateTime<Utc>,
    /// True when the command id had already been appended and nothing new
    /// was written.
    pub duplicate: bool,
}
