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
use charter_domain::OrgName;
use charter_domain::authorize::Authorizer;
use charter_domain::ids::Scoped;
use charter_domain::organization::{Lifecycle, OrgEvent, OrgState, OrgTree, Organization};
use charter_domain::policy::Policy;
use charter_domain::role::{Role, RoleBinding};
use charter_domain::subject::{ApiKeyId, Subject, SubjectEvent, SubjectId};
use std::collections::{BTreeMap, HashMap};
use tokio::sync::watch;

use crate::ProjectionError;

/// Facts the gateway looks up on every request besides grants: which
/// API key belongs to whom, and each org's current state (its job spaces,
/// parent and lifecycle), for references and tree checks.
#[derive(Default)]
pub struct Facts {
    keys: HashMap<String, SubjectId>,
    subject_keys: HashMap<SubjectId, BTreeMap<ApiKeyId, String>>,
    orgs: HashMap<OrgName, Organization>,
}

impl Facts {
    /// The subject holding the API key whose SHA-256 digest (hex) is given.
    pub fn key_owner(&self, digest: &str) -> Option<&SubjectId> {
        self.keys.get(digest)
    }

    /// An org's current state, when registered.
    pub fn org(&self, org: &OrgName) -> Option<&OrgState> {
        self.orgs.get(org).and_then(|o| o.0.as_ref())
    }

    /// The orgs whose parent is `org` and that are not archived.
    pub fn active_children(&self, org: &OrgName) -> Vec<OrgName> {
        let mut children: Vec<OrgName> = self
            .orgs
            .values()
            .filter_map(|o| o.0.as_ref())
            .filter(|o| o.parent.as_ref() == Some(org) && o.lifecycle != Lifecycle::Archived)
            .map(|o| o.name.clone())
            .collect();
        children.sort();
        children
    }

    fn apply_subject(&mut self, id: &SubjectId, event: &SubjectEvent) {
        match event {
            SubjectEvent::ApiKeyAdded { key_id, digest } => {
                self.keys.insert(digest.as_str().to_owned(), id.clone());
                self.subject_keys
                    .entry(id.clone())
                    .or_default()
                    .insert(key_id.clone(), digest.as_str().to_owned());
            }
            SubjectEvent::ApiKeyRevoked { key_id } => {
                if let Some(keys) = self.subject_keys.get_mut(id)
                    && let Some(digest) = keys.remove(key_id)
                {
                    self.keys.remove(&digest);
                }
            }
            SubjectEvent::Deleted {} => {
                for digest in self
                    .subject_keys
                    .remove(id)
                    .unwrap_or_default()
                    .into_values()
                {
                    self.keys.remove(&digest);
                }
            }
            _ => {}
        }
    }
}

impl OrgTree for Facts {
    fn parent_of(&self, org: &OrgName) -> Option<Option<OrgName>> {
        self.org(org).map(|o| o.parent.clone())
    }

    fn active_children(&self, org: &OrgName) -> Vec<OrgName> {
        Facts::active_children(self, org)
    }
}

struct Index {
    authorizer: Authorizer,
    facts: Facts,
}

/// The shared, event-fed authorizer.
pub struct AccessIndex {
    index: RwLock<Index>,
    visible: watch::Sender<Position>,
}

impl Default for AccessIndex {
    fn default() -> Self {
        Self {
            index: RwLock::new(Index {
                authorizer: Authorizer::new(),
                facts: Facts::default(),
            }),
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
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard.authorizer)
    }

    /// Runs `f` with the authorizer and the facts (a read lock held briefly).
    pub fn read_all<T>(&self, f: impl FnOnce(&Authorizer, &Facts) -> T) -> T {
        let guard = self
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard.authorizer, &guard.facts)
    }

    /// Waits until the index has applied the log through `position`, at
    /// most `timeout`; false when it did not get there in time.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut visible = self.visible();
        tokio::time::timeout(timeout, visible.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
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
        let mut guard = self
            .index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Index { authorizer, facts } = &mut *guard;
        for event in events {
            match event.aggregate_type.as_str() {
                Organization::KIND => {
                    let org_event: OrgEvent = event.to_domain()?;
                    facts
                        .orgs
                        .entry(event.org.clone())
                        .or_default()
                        .evolve(&org_event);
                }
                Role::KIND => authorizer.apply_role(&id_of::<_, Role>(event)?, &event.to_domain()?),
                RoleBinding::KIND => {
                    authorizer.apply_binding(&id_of::<_, RoleBinding>(event)?, &event.to_domain()?)
                }
                Subject::KIND => {
                    let id = id_of::<_, Subject>(event)?;
                    let subject_event = event.to_domain()?;
                    authorizer.apply_subject(&id, &subject_event);
                    facts.apply_subject(&id, &subject_event);
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
        drop(guard);
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
                        *self.index.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Index {
                            authorizer: Authorizer::new(),
                            facts: Facts::default(),
                        };
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
