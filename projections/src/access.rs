//! The access index: an in-memory [`Authorizer`] that follows the log, so
//! that every request is decided from lookups kept current by events rather
//! than from queries. It is a read model like the others, held in memory:
//! on start it catches up from the beginning of the log, then follows new
//! commits; `visible()` tells how far it got (read-your-writes for grants).

use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use charter_commands::store::Subscription;
use charter_commands::{EventStore, Position, RecordedEvent};
use charter_domain::Aggregate;
use charter_domain::authorize::Authorizer;
use charter_domain::ids::Scoped;
use charter_domain::policy::Policy;
use charter_domain::role::{Role, RoleBinding};
use charter_domain::subject::Subject;
use tokio::sync::watch;

use crate::ProjectionError;

/// The shared, event-fed authorizer.
pub struct AccessIndex {
    authorizer: RwLock<Authorizer>,
    visible: watch::Sender<Position>,
}

impl Default for AccessIndex {
    fn default() -> Self {
        Self {
            authorizer: RwLock::new(Authorizer::new()),
            visible: watch::channel(Position::START).0,
        }
    }
}

fn id_of<N: FromStr<Err = charter_domain::ids::InvalidName>, A: Aggregate>(
    event: &RecordedEvent,
) -> Result<Scoped<N>, ProjectionError> {
    let malformed = |reason: String| ProjectionError::Projector {
        projection: "access".into(),
        position: event.position,
        reason,
    };
    let suffix = event
        .stream_id
        .as_str()
        .strip_prefix(A::KIND)
        .and_then(|rest| rest.strip_prefix('-'))
        .ok_or_else(|| malformed(format!("stream `{}` is not a {}", event.stream_id, A::KIND)))?;
    Scoped::from_str(suffix).map_err(|e| malformed(e.to_string()))
}

impl AccessIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` with the current authorizer (a read lock held briefly).
    pub fn read<T>(&self, f: impl FnOnce(&Authorizer) -> T) -> T {
        let guard = self
            .authorizer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    /// How far the index has applied the log.
    pub fn visible(&self) -> watch::Receiver<Position> {
        self.visible.subscribe()
    }

    /// Applies a batch of events in log order. Events of other aggregates
    /// are skipped; a malformed event is an error and nothing after it in
    /// the batch is applied.
    pub fn apply(&self, events: &[RecordedEvent]) -> Result<(), ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut authorizer = self
            .authorizer
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for event in events {
            match event.aggregate_type.as_str() {
                Role::KIND => authorizer.apply_role(&id_of::<_, Role>(event)?, &event.to_domain()?),
                RoleBinding::KIND => {
                    authorizer.apply_binding(&id_of::<_, RoleBinding>(event)?, &event.to_domain()?)
                }
                Subject::KIND => {
                    authorizer.apply_subject(&id_of::<_, Subject>(event)?, &event.to_domain()?);
                }
                Policy::KIND => {
                    if let Err(reason) =
                        authorizer.apply_policy(&id_of::<_, Policy>(event)?, &event.to_domain()?)
                    {
                        tracing::error!(position = %event.position, %reason, "policy dropped from the access index");
                    }
                }
                _ => {}
            }
        }
        drop(authorizer);
        self.visible.send_replace(last.position);
        Ok(())
    }

    /// Follows the log from its start until `shutdown`; a failure pauses
    /// and the index is rebuilt from the start (it is cheap to rebuild, and
    /// a half-applied index must never answer).
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn EventStore>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let run = async {
                let mut subscription = Subscription::new(Arc::clone(&store), Position::START, 1000);
                loop {
                    let events = subscription.next_batch().await?;
                    self.apply(&events)?;
                }
                #[allow(unreachable_code)]
                Ok::<(), ProjectionError>(())
            };
            tokio::select! {
                result = run => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "access index paused; rebuilding");
                        *self.authorizer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Authorizer::new();
                        self.visible.send_replace(Position::START);
                    }
                }
                () = &mut shutdown => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                () = &mut shutdown => return,
            }
        }
    }
}
