//! The read side against both backends: projections follow the log, apply
//! each batch exactly once with its checkpoint, and rebuild while serving.
//! Each test owns a PostgreSQL schema or a SQLite file.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use charter_commands::postgres::PostgresStore;
use charter_commands::sqlite::SqliteStore;
use charter_commands::store::{StoreOptions, wait_for_position};
use charter_commands::{CommandHandler, CommandMeta, EventStore, Position, RecordedEvent};
use charter_domain::organization::{DisplayName, OrgCommand, Organization, Tags};
use charter_domain::{Actor, Aggregate, OrgName};
use charter_projections::organizations::{COLLECTION, OrganizationsProjector, PROJECTION};
use charter_projections::{
    BatchOutcome, Documents, ProjectionError, ProjectionRunner, Projector, ReadModels, rebuild,
};
use charter_testkit::{ScratchFile, ScratchSchema, test_database_url};
use serde_json::json;
use tokio::sync::watch;

/// A store and its read models; the schema or file goes away on drop.
struct Backend {
    store: Arc<dyn EventStore>,
    models: Arc<dyn ReadModels>,
    /// Held only so that it cleans up when the backend is dropped.
    _scratch: (Option<ScratchSchema>, Option<ScratchFile>),
}

async fn postgres() -> Backend {
    let schema = ScratchSchema::new("p");
    let store = PostgresStore::connect(
        &test_database_url(),
        StoreOptions {
            schema: Some(schema.name.clone()),
            max_connections: 4,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let models = charter_projections::connect(&test_database_url(), Some(&schema.name), 4)
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        models,
        _scratch: (Some(schema), None),
    }
}

async fn sqlite() -> Backend {
    let file = ScratchFile::new("charter-rm");
    let store = SqliteStore::open(&file.url(), StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let models = charter_projections::connect(&file.url(), None, 4)
        .await
        .unwrap();
    Backend {
        store: Arc::new(store),
        models,
        _scratch: (None, Some(file)),
    }
}

fn org(name: &str) -> OrgName {
    OrgName::parse(name).unwrap()
}

fn meta(name: &str) -> CommandMeta {
    CommandMeta::new(
        Organization::KIND,
        org(name),
        Actor::parse("user:root").unwrap(),
    )
}

async fn register(kernel: &CommandHandler, name: &str) -> Position {
    kernel
        .handle::<Organization>(
            &org(name),
            &OrgCommand::Register {
                display_name: DisplayName::parse(name.to_uppercase()).unwrap(),
                tags: Tags::default(),
                parent: None,
            },
            &meta(name),
        )
        .await
        .unwrap()
        .position
        .unwrap()
}

struct Running {
    visible: watch::Receiver<Position>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn wait(&mut self, position: Position) {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.visible.wait_for(|p| *p >= position),
        )
        .await
        .expect("the projection never reached the position")
        .unwrap();
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.await.unwrap();
    }
}

fn start(backend: &Backend, projector: Arc<dyn Projector>) -> Running {
    let runner = ProjectionRunner::new(
        Arc::clone(&backend.store),
        Arc::clone(&backend.models),
        projector,
    )
    .with_batch(7);
    let visible = runner.visible();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    Running {
        visible,
        stop,
        task,
    }
}

async fn organizations_follow_the_log(backend: Backend) {
    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let mut running = start(&backend, Arc::new(OrganizationsProjector));
    register(&kernel, "acme").await;
    register(&kernel, "beta").await;
    let renamed = kernel
        .handle::<Organization>(
            &org("acme"),
            &OrgCommand::Rename {
                display_name: DisplayName::parse("Acme Corp").unwrap(),
            },
            &meta("acme"),
        )
        .await
        .unwrap()
        .position
        .unwrap();
    running.wait(renamed).await;
    let acme = backend
        .models
        .get(PROJECTION, COLLECTION, "acme")
        .await
        .unwrap()
        .expect("acme is projected");
    assert_eq!(acme.doc["display_name"], "Acme Corp");
    assert_eq!(acme.doc["lifecycle"], "requested");
    assert_eq!(acme.doc["version"], 2);
    assert_eq!(acme.position, renamed);
    assert!(acme.doc["created_at"].is_string());
    // An org's list holds its documents and nobody else's.
    let listed = backend
        .models
        .list(PROJECTION, COLLECTION, Some(&org("acme")), None, 10)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, "acme");
    let after = backend
        .models
        .list(PROJECTION, COLLECTION, Some(&org("acme")), Some("acme"), 10)
        .await
        .unwrap();
    assert!(after.is_empty());
    // Read-your-writes from another process's point of view.
    backend
        .models
        .wait_for(PROJECTION, renamed, Duration::from_secs(5))
        .await
        .unwrap();
    let err = backend
        .models
        .wait_for(
            PROJECTION,
            Position(renamed.0 + 1_000_000_000),
            Duration::from_millis(50),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::NotYetVisible(_)), "{err:?}");
    let statuses = backend.models.statuses().await.unwrap();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].position, renamed);
    running.stop().await;
}

/// Counts every event into one document, so a double application shows.
/// When `fail` is set it fails on every third event, after staging writes.
struct Counter {
    fail: AtomicBool,
}

#[async_trait]
impl Projector for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn wants(&self, _: &RecordedEvent) -> bool {
        true
    }

    async fn apply(
        &self,
        event: &RecordedEvent,
        docs: &mut dyn Documents,
    ) -> Result<(), ProjectionError> {
        let count = docs
            .get("counts", "all")
            .await?
            .and_then(|d| d["count"].as_u64())
            .unwrap_or(0);
        docs.put("counts", "all", &event.org, json!({"count": count + 1}));
        if self.fail.load(Ordering::SeqCst) && count % 3 == 2 {
            return Err(ProjectionError::Projector {
                projection: "counter".into(),
                position: event.position,
                reason: "induced failure".into(),
            });
        }
        Ok(())
    }
}

async fn count(backend: &Backend) -> Option<u64> {
    backend
        .models
        .get("counter", "counts", "all")
        .await
        .unwrap()
        .and_then(|d| d.doc["count"].as_u64())
}

async fn batches_apply_exactly_once(backend: Backend) {
    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let mut last = Position::START;
    for i in 0..5 {
        last = register(&kernel, &format!("o{i}")).await;
    }
    assert!(
        wait_for_position(&*backend.store, last, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let events = backend.store.read_all(Position::START, 100).await.unwrap();
    assert_eq!(events.len(), 5);
    let counter = Counter {
        fail: AtomicBool::new(true),
    };
    let generation = backend.models.register("counter").await.unwrap();
    // A failure mid-batch rolls the whole batch back, checkpoint included.
    let err = backend
        .models
        .apply_batch(&counter, generation, &events, true)
        .await
        .unwrap_err();
    assert!(matches!(err, ProjectionError::Projector { .. }), "{err:?}");
    assert_eq!(count(&backend).await, None);
    assert_eq!(
        backend
            .models
            .checkpoint("counter", generation)
            .await
            .unwrap(),
        Position::START
    );
    // Fixed, it applies once; the same batch again (a crash between commit
    // and the runner moving on) changes nothing.
    counter.fail.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let outcome = backend
            .models
            .apply_batch(&counter, generation, &events, true)
            .await
            .unwrap();
        assert_eq!(outcome, BatchOutcome::Applied(last));
        assert_eq!(count(&backend).await, Some(5));
    }
    // Overlapping batches apply only what is new.
    let more = register(&kernel, "late").await;
    assert!(
        wait_for_position(&*backend.store, more, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let all = backend.store.read_all(Position::START, 100).await.unwrap();
    backend
        .models
        .apply_batch(&counter, generation, &all, true)
        .await
        .unwrap();
    assert_eq!(count(&backend).await, Some(6));
    // A generation that is not active writes nothing.
    assert_eq!(
        backend
            .models
            .apply_batch(&counter, generation + 1, &all, true)
            .await
            .unwrap(),
        BatchOutcome::Superseded { active: generation }
    );
}

async fn rebuild_switches_while_serving(backend: Backend) {
    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let mut running = start(&backend, Arc::new(OrganizationsProjector));
    let mut last = Position::START;
    for i in 0..20 {
        last = register(&kernel, &format!("org{i}")).await;
    }
    running.wait(last).await;
    let before = backend
        .models
        .get(PROJECTION, COLLECTION, "org7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.models.statuses().await.unwrap()[0].generation, 1);

    let report = rebuild(
        &*backend.store,
        &*backend.models,
        &OrganizationsProjector,
        6,
    )
    .await
    .unwrap();
    assert_eq!(report.generation, 2);
    assert_eq!(report.events, 20);
    let after = backend
        .models
        .get(PROJECTION, COLLECTION, "org7")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, before, "a rebuild reproduces the same documents");
    let statuses = backend.models.statuses().await.unwrap();
    assert_eq!(statuses[0].generation, 2);
    assert_eq!(statuses[0].rebuilding, None);

    // The live runner carries on in the new generation.
    let newer = register(&kernel, "newcomer").await;
    running.wait(newer).await;
    backend
        .models
        .wait_for(PROJECTION, newer, Duration::from_secs(30))
        .await
        .unwrap();
    let newcomer = backend
        .models
        .get(PROJECTION, COLLECTION, "newcomer")
        .await
        .unwrap();
    assert!(newcomer.is_some(), "the runner did not follow the switch");
    running.stop().await;
}

async fn access_index_follows_grants_and_policies(backend: Backend) {
    use charter_domain::ids::{BindingName, PolicyName, RoleName, SubjectName};
    use charter_domain::policy::{Policy, PolicyCommand};
    use charter_domain::role::{
        Action, BindingCommand, BindingScope, BindingSpec, References, ResourceKind, Role,
        RoleBinding, RoleCommand, RoleSpec, Rule,
    };
    use charter_domain::subject::{Subject, SubjectCommand, SubjectKind};
    use charter_domain::{Scoped, access::AccessRequest};
    use charter_projections::access::AccessIndex;

    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let index = Arc::new(AccessIndex::new());
    let mut visible = index.visible();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(
        Arc::clone(&index).follow(Arc::clone(&backend.store), async move {
            let _ = stopped.wait_for(|s| *s).await;
        }),
    );
    let acme = org("acme");
    let m = |kind: &str| CommandMeta::new(kind, acme.clone(), Actor::parse("user:root").unwrap());
    let bot = SubjectName::parse("bot").unwrap();
    kernel
        .handle::<Subject>(
            &Scoped::new(acme.clone(), bot.clone()),
            &SubjectCommand::Create {
                kind: SubjectKind::Agent,
                display_name: DisplayName::parse("Bot").unwrap(),
            },
            &m(Subject::KIND),
        )
        .await
        .unwrap();
    let admin = RoleName::parse("admin").unwrap();
    kernel
        .handle::<Role>(
            &Scoped::new(acme.clone(), admin.clone()),
            &RoleCommand::Define {
                spec: RoleSpec {
                    rules: vec![Rule {
                        actions: ["*".parse().unwrap()].into(),
                        resources: ["*".parse().unwrap()].into(),
                    }],
                    ..RoleSpec::default()
                },
            },
            &m(Role::KIND),
        )
        .await
        .unwrap();
    let bound = kernel
        .handle::<RoleBinding>(
            &Scoped::new(acme.clone(), BindingName::parse("bot-admin").unwrap()),
            &BindingCommand::Bind {
                spec: BindingSpec {
                    subject: bot.clone(),
                    role: admin.clone(),
                    scope: BindingScope::Org,
                },
                references: References {
                    subject_exists: true,
                    role_exists: true,
                    job_space_exists: true,
                },
            },
            &m(RoleBinding::KIND),
        )
        .await
        .unwrap()
        .position
        .unwrap();
    let wait = |visible: &mut watch::Receiver<Position>, position: Position| {
        let mut visible = visible.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                visible.wait_for(|p| *p >= position),
            )
            .await
            .expect("the access index never caught up")
            .unwrap();
        }
    };
    wait(&mut visible, bound).await;
    let delete = Action::parse("delete").unwrap();
    let ask = |index: &AccessIndex| {
        index.read(|a| {
            a.decide(
                &AccessRequest {
                    org: &acme,
                    subject: &bot,
                    action: &delete,
                    kind: ResourceKind::Role,
                    job_space: None,
                },
                "admin",
            )
        })
    };
    assert!(ask(&index).allowed);
    let published = kernel
        .handle::<Policy>(
            &Scoped::new(acme.clone(), PolicyName::parse("agents-never-delete").unwrap()),
            &PolicyCommand::Publish {
                text: "forbid(principal, action == Charter::Action::\"delete\", resource) when { principal.kind == \"agent\" };".into(),
            },
            &m(Policy::KIND),
        )
        .await
        .unwrap()
        .position
        .unwrap();
    wait(&mut visible, published).await;
    let decision = ask(&index);
    assert!(!decision.allowed);
    assert_eq!(
        decision.forbidden_by,
        vec!["agents-never-delete#0".to_owned()]
    );
    let _ = stop.send(true);
    task.await.unwrap();
}

/// The directory folds a batch's events of one document together: the
/// documents come out the same whatever the batches were, deletes and
/// re-creations included.
async fn directory_documents_do_not_depend_on_batches(backend: Backend) {
    use charter_domain::Scoped;
    use charter_domain::ids::{RoleName, SubjectName};
    use charter_domain::role::{Role, RoleCommand, RoleSpec};
    use charter_domain::subject::{Subject, SubjectCommand, SubjectKind};
    use charter_projections::directory::{DIRECTORY, DirectoryProjector, ROLES, SUBJECTS};

    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let acme = org("acme");
    let m = |kind: &str| CommandMeta::new(kind, acme.clone(), Actor::parse("user:root").unwrap());
    let mut last = Position::START;
    for round in 0..3 {
        for n in 0..4 {
            let role = Scoped::new(acme.clone(), RoleName::parse(format!("role{n}")).unwrap());
            let subject = Scoped::new(acme.clone(), SubjectName::parse(format!("sub{n}")).unwrap());
            let define = RoleCommand::Define {
                spec: RoleSpec {
                    description: format!("round {round}"),
                    ..RoleSpec::default()
                },
            };
            last = kernel
                .handle::<Role>(&role, &define, &m(Role::KIND))
                .await
                .unwrap()
                .position
                .unwrap_or(last);
            if n % 2 == 0 && round < 2 {
                // Deleted, then made again in the next round.
                last = kernel
                    .handle::<Role>(&role, &RoleCommand::Delete, &m(Role::KIND))
                    .await
                    .unwrap()
                    .position
                    .unwrap_or(last);
            }
            let command = if round == 0 {
                SubjectCommand::Create {
                    kind: SubjectKind::Agent,
                    display_name: DisplayName::parse(format!("Sub {n}")).unwrap(),
                }
            } else {
                SubjectCommand::SetDisplayName {
                    display_name: DisplayName::parse(format!("Sub {n} r{round}")).unwrap(),
                }
            };
            last = kernel
                .handle::<Subject>(&subject, &command, &m(Subject::KIND))
                .await
                .unwrap()
                .position
                .unwrap_or(last);
        }
    }
    wait_for_position(&*backend.store, last, Duration::from_secs(60))
        .await
        .unwrap();
    // One projector for every rebuild: folding one event per batch, it
    // takes each document's state from those it kept, and the documents
    // must come out as folding them all at once without any.
    let projector = DirectoryProjector::default();
    let documents = |batch: usize| {
        let (backend, projector) = (&backend, &projector);
        async move {
            rebuild(&*backend.store, &*backend.models, projector, batch)
                .await
                .unwrap();
            let mut all = Vec::new();
            for collection in [ROLES, SUBJECTS] {
                all.extend(
                    backend
                        .models
                        .list(DIRECTORY, collection, None, None, 1000)
                        .await
                        .unwrap(),
                );
            }
            all
        }
    };
    let one_by_one = documents(1).await;
    assert_eq!(projector.kept_states(), 4 + 4, "a state kept per document");
    let all_at_once = documents(10_000).await;
    assert_eq!(one_by_one.len(), 4 + 4, "four subjects, four roles");
    assert_eq!(one_by_one, all_at_once);
    assert_eq!(documents(3).await, one_by_one);
    assert_eq!(
        DirectoryProjector::default().kept_states(),
        0,
        "a new projector knows nothing"
    );
}

/// Events a projection ignores move its checkpoint too: in this process at
/// once, in the database once the log goes quiet (a reader elsewhere that
/// waits for a position is never left waiting).
async fn ignored_events_move_the_checkpoint(backend: Backend) {
    use charter_commands::{ExpectedVersion, NewEvent, StreamId};
    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let mut running = start(&backend, Arc::new(OrganizationsProjector));
    let first = register(&kernel, "acme").await;
    running.wait(first).await;
    let mut last = first;
    for n in 0..30 {
        let stream = StreamId::parse(format!("other-{n}")).unwrap();
        let outcome = backend
            .store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                &[NewEvent::new("Happened", json!({"n": n}))],
                &CommandMeta::new("other", org("acme"), Actor::system()),
            )
            .await
            .unwrap();
        last = outcome.last_position;
    }
    running.wait(last).await;
    backend
        .models
        .wait_for(PROJECTION, last, Duration::from_secs(30))
        .await
        .expect("the checkpoint reached the last ignored event");
    running.stop().await;
}

/// Two processes applying one projection in turn: each may start a batch
/// from the documents it wrote last only while nobody else has written
/// since, so neither ever writes over the other's changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_written_elsewhere_are_read_again() {
    use charter_domain::Scoped;
    use charter_domain::ids::SubjectName;
    use charter_domain::subject::{Subject, SubjectCommand, SubjectKind};
    use charter_projections::directory::{DIRECTORY, DirectoryProjector, SUBJECTS};

    let backend = postgres().await;
    let schema = backend._scratch.0.as_ref().unwrap().name.clone();
    let other = charter_projections::connect(&test_database_url(), Some(&schema), 2)
        .await
        .unwrap();
    let kernel = CommandHandler::new(Arc::clone(&backend.store));
    let acme = org("acme");
    let bot = Scoped::new(acme.clone(), SubjectName::parse("bot").unwrap());
    let m = || {
        CommandMeta::new(
            Subject::KIND,
            acme.clone(),
            Actor::parse("user:root").unwrap(),
        )
    };
    let mut last = Position::START;
    for n in 0..4 {
        // Each key adds to what came before: a batch that started from a
        // stale document would lose one.
        let command = if n == 0 {
            SubjectCommand::Create {
                kind: SubjectKind::Agent,
                display_name: DisplayName::parse("Bot").unwrap(),
            }
        } else {
            SubjectCommand::AddApiKey {
                key_id: charter_domain::subject::ApiKeyId::parse(format!("benchkey{n}")).unwrap(),
                digest: charter_domain::subject::KeyDigest::parse(format!("{n}").repeat(64))
                    .unwrap(),
            }
        };
        last = kernel
            .handle::<Subject>(&bot, &command, &m())
            .await
            .unwrap()
            .position
            .unwrap();
    }
    wait_for_position(&*backend.store, last, Duration::from_secs(60))
        .await
        .unwrap();
    let events: Vec<RecordedEvent> = backend
        .store
        .read_all(Position::START, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.aggregate_type == Subject::KIND)
        .collect();
    assert_eq!(events.len(), 4);
    let generation = backend.models.register(DIRECTORY).await.unwrap();
    other.register(DIRECTORY).await.unwrap();
    // One, the other, one, the other: each batch one event of the same
    // document.
    for (n, event) in events.iter().enumerate() {
        let models = if n % 2 == 0 { &backend.models } else { &other };
        let outcome = models
            .apply_batch(
                &DirectoryProjector::default(),
                generation,
                std::slice::from_ref(event),
                true,
            )
            .await
            .unwrap();
        assert_eq!(outcome, BatchOutcome::Applied(event.position));
    }
    let doc = backend
        .models
        .get(DIRECTORY, SUBJECTS, "acme:bot")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(doc.doc["version"], json!(4));
    let keys = doc.doc["state"]["api_keys"].as_object().unwrap();
    assert_eq!(keys.len(), 3, "{}", doc.doc);
}

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::postgres().await).await;
                }
            )*
        }
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
    };
}

on_both!(
    organizations_follow_the_log,
    batches_apply_exactly_once,
    rebuild_switches_while_serving,
    access_index_follows_grants_and_policies,
    directory_documents_do_not_depend_on_batches,
    ignored_events_move_the_checkpoint,
);
