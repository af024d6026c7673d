//! Live run traces: a run's events as they happen, starting with those
//! already recorded. The WebSocket endpoint and the GraphQL subscription
//! share [`follow_run`]; it wakes on the engine's notices for that run
//! (looking again each second as a fallback) and ends after the run's last
//! event.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use charter_domain::run::RunId;
use futures::Stream;

use crate::gateway::runs::TraceRead;
use crate::gateway::views::TraceEventView;
use crate::gateway::{ApiError, Gateway};

/// A run's trace from `after` on, live, ending with its last event.
pub fn follow_run(
    gateway: Arc<Gateway>,
    run: RunId,
    after: u64,
) -> impl Stream<Item = Result<Arc<TraceEventView>, ApiError>> + Send + 'static {
    futures::stream::unfold(
        (
            gateway,
            run,
            after,
            Vec::<Arc<TraceEventView>>::new(),
            false,
        ),
        |(gateway, run, mut after, mut pending, done)| async move {
            if done {
                return None;
            }
            while pending.is_empty() {
                let wait = std::time::Duration::from_secs(30);
                match gateway
                    .trace_waiting(
                        &run,
                        TraceRead {
                            after,
                            limit: 500,
                            wait,
                            until_end: false,
                        },
                    )
                    .await
                {
                    Ok(events) => {
                        // Nothing after `after` in a run that ended: the
                        // stream is over.
                        if events.is_empty() && matches!(gateway.has_ended(&run).await, Ok(true)) {
                            return None;
                        }
                        pending = events;
                        pending.reverse();
                    }
                    Err(error) => return Some((Err(error), (gateway, run, after, pending, true))),
                }
            }
            let event = pending.pop()?;
            after = event.version;
            let done = event.is_final();
            Some((Ok(event), (gateway, run, after, pending, done)))
        },
    )
}

/// Streams a run's trace to a WebSocket, one JSON text message per event.
pub async fn stream_run(gateway: Arc<Gateway>, run: RunId, mut socket: WebSocket) {
    use futures::StreamExt;
    let events = follow_run(gateway, run, 0);
    futures::pin_mut!(events);
    loop {
        tokio::select! {
            next = events.next() => match next {
                Some(Ok(event)) => {
                    let text = serde_json::to_string(&event).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(Err(error)) => {
                    let text = serde_json::json!({"error": error.code, "detail": error.message}).to_string();
                    let _ = socket.send(Message::Text(text.into())).await;
                    break;
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                // The client went away.
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
