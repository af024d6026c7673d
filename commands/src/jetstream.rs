//! Publishing to NATS JetStream. Each event goes to
//! `<prefix>.<org>.<aggregate_type>.<event_type>` in the stream (by default
//! `CHARTER_EVENTS` on `charter.events.>`), with `Nats-Msg-Id` set to the
//! event id so JetStream drops a repeat, and `Charter-Position` so that the
//! relay can read, after any outage, which prefix of the log the stream
//! already holds. Publishes are pipelined: up to `max_in_flight` acks are
//! awaited at once, in order.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use async_trait::async_trait;

use crate::publish::{EventPublisher, PublishFailure, subject_for};
use crate::{Position, RecordedEvent};

pub const DEFAULT_STREAM: &str = "CHARTER_EVENTS";
pub const DEFAULT_SUBJECT_PREFIX: &str = "charter.events";
pub const POSITION_HEADER: &str = "Charter-Position";

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
    pub max_in_flight: usize,
    /// JetStream's duplicate window: a repeated `Nats-Msg-Id` within it is
    /// dropped.
    pub duplicate_window: Duration,
}

impl JetStreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: DEFAULT_STREAM.to_owned(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            max_in_flight: 512,
            duplicate_window: Duration::from_secs(600),
        }
    }
}

pub struct JetStreamPublisher {
    client: async_nats::Client,
    context: jetstream::Context,
    config: JetStreamConfig,
}

fn failure(acked: usize, error: impl std::fmt::Display) -> PublishFailure {
    PublishFailure {
        acked,
        reason: error.to_string(),
    }
}

impl JetStreamPublisher {
    /// Returns at once even while NATS is unreachable: the client keeps
    /// trying in the background, and publishing fails until it connects.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, PublishFailure> {
        let client = async_nats::ConnectOptions::new()
            .name("charter-relay")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connect(config.url.as_str())
            .await
            .map_err(|e| failure(0, e))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .max_ack_inflight(config.max_in_flight.max(1) * 2)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self {
            client,
            context,
            config,
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: self.config.duplicate_window,
            ..Default::default()
        }
    }
}

#[async_trait]
impl EventPublisher for JetStreamPublisher {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    async fn prepare(&self) -> Result<(), PublishFailure> {
        self.context
            .get_or_create_stream(self.stream_config())
            .await
            .map_err(|e| failure(0, e))?;
        Ok(())
    }

    async fn last_published(&self) -> Result<Option<Position>, PublishFailure> {
        let mut stream = self
            .context
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| failure(0, e))?;
        let last = stream
            .info()
            .await
            .map_err(|e| failure(0, e))?
            .state
            .last_sequence;
        if last == 0 {
            return Ok(None);
        }
        let message = match stream.get_raw_message(last).await {
            Ok(message) => message,
            // Deleted by a limit or by hand: nothing to learn from it.
            Err(error) => {
                tracing::debug!(%error, "last stream message unreadable");
                return Ok(None);
            }
        };
        Ok(message
            .headers
            .get(POSITION_HEADER)
            .and_then(|value| value.as_str().parse::<u64>().ok())
            .map(Position))
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), PublishFailure> {
        let mut pending: VecDeque<PublishAckFuture> = VecDeque::new();
        let mut acked = 0;
        let max_payload = self.client.server_info().max_payload;
        for event in events {
            let payload = serde_json::to_vec(event).map_err(|e| failure(acked, e))?;
            if max_payload > 0 && payload.len() > max_payload {
                // It can never be published: settle what is in flight, then
                // say so loudly instead of letting the server reject it
                // without explanation.
                while let Some(ack) = pending.pop_front() {
                    ack.await.map_err(|e| failure(acked, e))?;
                    acked += 1;
                }
                return Err(failure(
                    acked,
                    format!(
                        "event at position {} is {} bytes as a message; this NATS server \
                         accepts at most {max_payload}: raise its max_payload or lower \
                         max_event_bytes",
                        event.position,
                        payload.len()
                    ),
                ));
            }
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.event_id.to_string().as_str());
            headers.insert(POSITION_HEADER, event.position.to_string().as_str());
            let ack = self
                .context
                .publish_with_headers(
                    subject_for(&self.config.subject_prefix, event),
                    headers,
                    payload.into(),
                )
                .await
                .map_err(|e| failure(acked, e))?;
            pending.push_back(ack);
            if pending.len() >= self.config.max_in_flight
                && let Some(ack) = pending.pop_front()
            {
                ack.await.map_err(|e| failure(acked, e))?;
                acked += 1;
            }
        }
        while let Some(ack) = pending.pop_front() {
            ack.await.map_err(|e| failure(acked, e))?;
            acked += 1;
        }
        Ok(())
    }
}
