//! The task queue between the run driver and the workers: a JetStream work
//! queue in production (durable; a task not acknowledged in time is
//! delivered again), an in-process channel in the embedded mode (where the
//! driver re-derives every pending task from the runs' state after a
//! restart). Either way a task may arrive twice; workers check the run
//! before they act.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use async_trait::async_trait;
use charter_domain::run::RunId;
use charter_domain::workflow::NodeName;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};

/// One node attempt to execute.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Task {
    pub run: RunId,
    pub node: NodeName,
    pub attempt: u32,
    /// For a node taken back from a worker that went away: the lease that
    /// ran out (0 for a first dispatch), so that the new task is not taken
    /// for a repeat of the old one.
    #[serde(default)]
    pub lease: i64,
    /// When the driver that queued it started: a driver that starts again
    /// (after a crash, say) queues its pending tasks anew rather than have
    /// them taken for repeats of tasks a dead worker held.
    #[serde(default)]
    pub epoch: i64,
}

impl Task {
    fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}/{}",
            self.run, self.node, self.attempt, self.lease, self.epoch
        )
    }
}

/// A task handed to a worker, to acknowledge when its outcome is recorded.
pub struct Delivery {
    pub task: Task,
    ack: Option<jetstream::Message>,
    /// The in-process queue, to put a task back that could not be done.
    again: Option<mpsc::UnboundedSender<Task>>,
}

impl Delivery {
    /// Done with: the queue forgets the task.
    pub async fn ack(self) {
        if let Some(message) = self.ack
            && let Err(error) = message.ack().await
        {
            tracing::warn!(%error, "a task's acknowledgement was lost; it will come back");
        }
    }

    /// Could not be done now (the store was unreachable, say): deliver it
    /// again after `delay`.
    pub async fn retry_later(self, delay: Duration) {
        if let Some(message) = self.ack {
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        } else if let Some(again) = self.again {
            let task = self.task;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = again.send(task);
            });
        }
    }

    /// Still working: the queue waits longer before delivering it again.
    pub async fn progress(&self) {
        if let Some(message) = &self.ack {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }
}

#[async_trait]
pub trait TaskQueue: Send + Sync {
    fn kind(&self) -> &'static str;
    async fn push(&self, task: &Task) -> anyhow::Result<()>;
    /// The next task; `None` once the queue is closed.
    async fn pull(&self) -> Option<Delivery>;
}

/// The embedded queue.
pub struct InProcessQueue {
    sender: mpsc::UnboundedSender<Task>,
    receiver: Mutex<mpsc::UnboundedReceiver<Task>>,
}

impl Default for InProcessQueue {
    fn default() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender,
            receiver: Mutex::new(receiver),
        }
    }
}

#[async_trait]
impl TaskQueue for InProcessQueue {
    fn kind(&self) -> &'static str {
        "in-process"
    }

    async fn push(&self, task: &Task) -> anyhow::Result<()> {
        self.sender
            .send(task.clone())
            .map_err(|_| anyhow::anyhow!("the task queue is closed"))
    }

    async fn pull(&self) -> Option<Delivery> {
        let task = self.receiver.lock().await.recv().await?;
        Some(Delivery {
            task,
            ack: None,
            again: Some(self.sender.clone()),
        })
    }
}

/// The production queue: a work-queue stream and one durable pull
/// consumer that every worker of every process shares.
pub struct JetStreamQueue {
    context: jetstream::Context,
    subject: String,
    messages: Mutex<consumer::pull::Stream>,
}

/// How long a delivered task may go unacknowledged (without progress
/// reports) before JetStream delivers it again.
const ACK_WAIT: Duration = Duration::from_secs(30);

impl JetStreamQueue {
    pub async fn connect(
        client: async_nats::Client,
        stream_name: &str,
        subject: &str,
    ) -> anyhow::Result<Arc<Self>> {
        let context = jetstream::new(client);
        let stream = context
            .get_or_create_stream(stream::Config {
                name: stream_name.to_owned(),
                subjects: vec![subject.to_owned()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating the task stream {stream_name}: {e}"))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                "workers",
                consumer::pull::Config {
                    durable_name: Some("workers".to_owned()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the task consumer: {e}"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(64)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("pulling tasks: {e}"))?;
        Ok(Arc::new(Self {
            context,
            subject: subject.to_owned(),
            messages: Mutex::new(messages),
        }))
    }
}

#[async_trait]
impl TaskQueue for JetStreamQueue {
    fn kind(&self) -> &'static str {
        "jetstream"
    }

    async fn push(&self, task: &Task) -> anyhow::Result<()> {
        let mut headers = HeaderMap::new();
        // A task pushed twice within the duplicate window is kept once.
        headers.insert("Nats-Msg-Id", task.key().as_str());
        let payload = serde_json::to_vec(task)?;
        self.context
            .publish_with_headers(self.subject.clone(), headers, payload.into())
            .await
            .map_err(|e| anyhow::anyhow!("queueing a task: {e}"))?
            .await
            .map_err(|e| anyhow::anyhow!("queueing a task: {e}"))?;
        Ok(())
    }

    async fn pull(&self) -> Option<Delivery> {
        loop {
            let next = self.messages.lock().await.next().await?;
            match next {
                Ok(message) => match serde_json::from_slice::<Task>(&message.payload) {
                    Ok(task) => {
                        return Some(Delivery {
                            task,
                            ack: Some(message),
                            again: None,
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "dropping a task that does not decode");
                        let _ = message.ack_with(AckKind::Term).await;
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "pulling tasks failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
