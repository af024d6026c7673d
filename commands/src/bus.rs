//! The in-process bus: the embedded mode's stand-in for JetStream. The relay
//! publishes to it exactly as it would to JetStream; in-process subscribers
//! receive every event in global order.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::publish::{EventPublisher, PublishFailure};
use crate::{Position, RecordedEvent};

/// A broadcast of published events. A subscriber that falls more than the
/// capacity behind is told how many it missed (and can re-read them from
/// the store); the bus never blocks the relay.
#[derive(Clone)]
pub struct InProcessBus {
    sender: broadcast::Sender<Arc<RecordedEvent>>,
}

impl InProcessBus {
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RecordedEvent>> {
        self.sender.subscribe()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(4096)
    }
}

#[async_trait]
impl EventPublisher for InProcessBus {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    async fn prepare(&self) -> Result<(), PublishFailure> {
        Ok(())
    }

    async fn last_published(&self) -> Result<Option<Position>, PublishFailure> {
        // The bus keeps nothing across restarts: the relay's checkpoint is
        // the only record.
        Ok(None)
    }

    async fn publish(&self, events: &[RecordedEvent]) -> Result<(), PublishFailure> {
        for event in events {
            // No subscriber is not an error: the log stays in the store.
            let _ = self.sender.send(Arc::new(event.clone()));
        }
        Ok(())
    }
}
