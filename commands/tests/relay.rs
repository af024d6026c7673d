//! The outbox relay against real publishers: a private `nats-server -js`
//! (started on a free port with its own store directory, stopped and
//! restarted by the test; the machine's shared server is never touched) and
//! the in-process bus.

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use charter_commands::bus::InProcessBus;
use charter_commands::jetstream::{JetStreamConfig, JetStreamPublisher, POSITION_HEADER};
use charter_commands::publish::EventPublisher;
use charter_commands::relay::{OutboxRelay, checkpoint_name};
use charter_commands::sqlite::SqliteStore;
use charter_commands::store::StoreOptions;
use charter_commands::{
    CommandMeta, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId,
};
use charter_domain::{Actor, OrgName};
use serde_json::json;
use support::PgSchema;
use tokio::sync::watch;

fn nats_server_binary() -> String {
    if let Ok(path) = std::env::var("CHARTER_NATS_SERVER_BIN") {
        return path;
    }
    for candidate in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    "nats-server".to_owned()
}

/// A JetStream server of this test's own.
struct PrivateNats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
}

impl PrivateNats {
    fn start() -> Self {
        Self::start_with_config("")
    }

    /// Starts with extra server configuration (nats-server's config syntax).
    fn start_with_config(config: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("charter-nats-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = (!config.is_empty()).then(|| {
            let path = dir.join("nats.conf");
            std::fs::write(&path, config).unwrap();
            path
        });
        let mut nats = Self {
            child: None,
            port,
            dir,
            config,
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let mut command = Command::new(nats_server_binary());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server must be installed for this test (see README: Testing)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server the way an operator would (SIGTERM) and waits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            if tokio::task::block_in_place(|| wait_with_deadline(&mut child)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn wait_with_deadline(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn append_some(store: &dyn EventStore, prefix: &str, appends: usize) -> Position {
    let mut last = Position::START;
    for i in 0..appends {
        let events: Vec<_> = (0..2)
            .map(|n| NewEvent::new("Tagged", json!({"i": i, "n": n})))
            .collect();
        let meta = CommandMeta::new(
            "organization",
            OrgName::parse("acme").unwrap(),
            Actor::parse("user:tester").unwrap(),
        );
        last = store
            .append(
                &StreamId::parse(format!("{prefix}-{i}")).unwrap(),
                ExpectedVersion::NoStream,
                &events,
                &meta,
            )
            .await
            .unwrap()
            .last_position;
    }
    last
}

async fn wait_published(published: &mut watch::Receiver<Position>, target: Position) {
    tokio::time::timeout(
        Duration::from_secs(90),
        published.wait_for(|p| *p >= target),
    )
    .await
    .unwrap_or_else(|_| panic!("relay never published through {target}"))
    .unwrap();
}

fn start_relay(
    store: Arc<dyn EventStore>,
    publisher: Arc<JetStreamPublisher>,
) -> (
    watch::Receiver<Position>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let relay = OutboxRelay::new(store, publisher, "jetstream:CHARTER_EVENTS")
        .with_backoff(Duration::from_millis(20), Duration::from_millis(300))
        .with_batch(64);
    let published = relay.published();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    (published, stop, task)
}

/// Everything in the stream, in stream order.
async fn stream_contents(url: &str) -> Vec<(RecordedEvent, String, String)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("CHARTER_EVENTS").await.unwrap();
    let info = stream.info().await.unwrap();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let event: RecordedEvent = serde_json::from_slice(&message.payload).unwrap();
        let msg_id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let position = message
            .headers
            .get(POSITION_HEADER)
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        assert_eq!(
            message.subject.as_str(),
            format!("charter.events.acme.organization.{}", event.event_type)
        );
        out.push((event, msg_id, position));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_outage_loses_nothing_and_duplicates_nothing() {
    let schema = PgSchema::new(4).await;
    let store: Arc<dyn EventStore> = Arc::clone(&schema.store) as Arc<dyn EventStore>;
    let mut nats = PrivateNats::start();
    let publisher = Arc::new(
        JetStreamPublisher::connect(JetStreamConfig::new(nats.url()))
            .await
            .unwrap(),
    );
    let (mut published, stop, task) = start_relay(Arc::clone(&store), Arc::clone(&publisher));

    let before = append_some(&*store, "before", 25).await;
    wait_published(&mut published, before).await;

    // NATS goes away while events keep being appended.
    nats.stop();
    let during = append_some(&*store, "during", 50).await;
    // The relay cannot have published what it cannot reach.
    assert!(*published.borrow() < during);
    nats.restart();
    let after = append_some(&*store, "after", 25).await;
    wait_published(&mut published, after).await;
    let _ = stop.send(true);
    task.await.unwrap();

    let logged = store.read_all(Position::START, 10_000).await.unwrap();
    assert_eq!(logged.len(), 200);
    let streamed = stream_contents(&nats.url()).await;
    assert_eq!(streamed.len(), logged.len(), "every event exactly once");
    for ((event, msg_id, position), stored) in streamed.iter().zip(&logged) {
        assert_eq!(event, stored, "in global order");
        assert_eq!(*msg_id, stored.event_id.to_string());
        assert_eq!(*position, stored.position.to_string());
    }

    // A relay that lost its checkpoint resumes after what the stream holds
    // instead of publishing everything again.
    store
        .save_checkpoint(
            &checkpoint_name("jetstream:CHARTER_EVENTS"),
            Position::START,
        )
        .await
        .unwrap();
    let (mut published, stop, task) = start_relay(Arc::clone(&store), publisher);
    let more = append_some(&*store, "resumed", 5).await;
    wait_published(&mut published, more).await;
    let _ = stop.send(true);
    task.await.unwrap();
    let streamed = stream_contents(&nats.url()).await;
    assert_eq!(streamed.len(), 210);
    let logged = store.read_all(Position::START, 10_000).await.unwrap();
    assert!(streamed.iter().map(|s| &s.0).eq(logged.iter()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_bus_receives_every_event_in_order() {
    let file = charter_testkit::ScratchFile::new("charter-relay");
    let store: Arc<dyn EventStore> = Arc::new(
        SqliteStore::open(&file.url(), StoreOptions::default())
            .await
            .unwrap(),
    );
    store.migrate().await.unwrap();
    let bus = InProcessBus::new(1024);
    let mut receiver = bus.subscribe();
    let relay = OutboxRelay::new(Arc::clone(&store), Arc::new(bus), "in-process");
    let mut published = relay.published();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let last = append_some(&*store, "bus", 30).await;
    wait_published(&mut published, last).await;
    let logged = store.read_all(Position::START, 1000).await.unwrap();
    for stored in &logged {
        let received = receiver.recv().await.unwrap();
        assert_eq!(&*received, stored);
    }
    let _ = stop.send(true);
    task.await.unwrap();
    // The checkpoint survived in the store.
    assert_eq!(
        store
            .load_checkpoint(&checkpoint_name("in-process"))
            .await
            .unwrap(),
        Some(last)
    );
}

/// An event larger than the server's `max_payload` can never be published:
/// the relay stops before it, with a reason naming the limit, and never
/// skips it (that would break the order every consumer relies on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_server_cannot_take_stops_the_relay_loudly() {
    let schema = PgSchema::new(4).await;
    let store: Arc<dyn EventStore> = Arc::clone(&schema.store) as Arc<dyn EventStore>;
    let nats = PrivateNats::start_with_config("max_payload: 4096\n");
    let publisher = Arc::new(
        JetStreamPublisher::connect(JetStreamConfig::new(nats.url()))
            .await
            .unwrap(),
    );
    let (mut published, stop, task) = start_relay(Arc::clone(&store), Arc::clone(&publisher));
    let small = append_some(&*store, "small", 3).await;
    wait_published(&mut published, small).await;
    let meta = CommandMeta::new(
        "organization",
        OrgName::parse("acme").unwrap(),
        Actor::parse("user:tester").unwrap(),
    );
    let big = store
        .append(
            &StreamId::parse("big-1").unwrap(),
            ExpectedVersion::NoStream,
            &[NewEvent::new("Tagged", json!({"blob": "x".repeat(8000)}))],
            &meta,
        )
        .await
        .unwrap();
    let after = append_some(&*store, "after", 2).await;
    assert!(
        charter_commands::store::wait_for_position(&*store, after, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let logged = store.read_all(small, 100).await.unwrap();
    assert_eq!(logged.len(), 5);
    let failure = publisher.publish(&logged[..1]).await.unwrap_err();
    assert_eq!(failure.acked, 0);
    assert!(failure.reason.contains("max_payload"), "{}", failure.reason);
    // The relay stays at the last event before the big one.
    assert_eq!(*published.borrow(), small);
    let _ = stop.send(true);
    task.await.unwrap();
    assert!(big.last_position < after);
    assert_eq!(stream_contents(&nats.url()).await.len(), 6);
}
