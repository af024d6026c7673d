//! `charter serve` as a user runs it: the embedded default, configuration
//! errors, readiness, signals, and the PostgreSQL + JetStream path.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use charter_commands::postgres::PostgresStore;
use charter_commands::store::{StoreOptions, wait_for_position};
use charter_commands::{
    CommandMeta, EventStore, ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId,
};
use charter_domain::{Actor, OrgName};
use charter_tests::{PgSchema, Server, TempDir, charter_command, test_database_url, test_nats_url};
use serde_json::{Value, json};

#[tokio::test]
async fn embedded_default_serves_and_stops_cleanly() {
    let dir = TempDir::new();
    let mut server = Server::start(charter_command(&dir.0));
    let http = reqwest::Client::new();

    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["store"], "sqlite");
    assert!(
        dir.0.join("charter.db").exists(),
        "the embedded store lives in the working directory"
    );

    let metrics = http.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    for series in [
        "charter_store_appends_total",
        "charter_store_append_conflicts_total",
        "charter_store_append_duration_seconds",
        "charter_relay_lag_events",
    ] {
        assert!(
            text.contains(series),
            "{series} missing from /metrics:\n{text}"
        );
    }

    let missing = http.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = missing.json().await.unwrap();
    assert_eq!(problem["code"], "route_not_found");

    let status = server.signal_and_wait("TERM");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert!(server.log().contains("stopped"));
}

#[tokio::test]
async fn sigint_stops_the_server() {
    let dir = TempDir::new();
    let mut server = Server::start(charter_command(&dir.0));
    let status = server.signal_and_wait("INT");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
}

#[test]
fn invalid_configuration_names_the_key() {
    let dir = TempDir::new();
    let run = |configure: &dyn Fn(&mut std::process::Command)| {
        let mut command = charter_command(&dir.0);
        configure(&mut command);
        let output = command.arg("serve").output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{output:?}");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&|c| {
        c.env("CHARTER_LISTEN", "not-an-address");
    });
    assert!(stderr.contains("`listen`"), "{stderr}");
    let stderr = run(&|c| {
        c.env("CHARTER_DATABASE_URL", "mysql://somewhere");
    });
    assert!(stderr.contains("`database_url`"), "{stderr}");
    let stderr = run(&|c| {
        c.env("CHARTER_LOG", "info,[[[");
    });
    assert!(stderr.contains("`log`"), "{stderr}");
    std::fs::write(
        dir.0.join("charter.toml"),
        "listen = \"127.0.0.1:0\"\nnats_ulr = \"x\"\n",
    )
    .unwrap();
    let stderr = run(&|c| {
        c.args(["--config", "charter.toml"]);
    });
    assert!(stderr.contains("nats_ulr"), "{stderr}");
    let stderr = run(&|c| {
        c.args(["--config", "missing.toml"]);
    });
    assert!(stderr.contains("missing.toml"), "{stderr}");
    // Nothing was created by a refused start.
    assert!(!dir.0.join("charter.db").exists());
}

#[tokio::test]
async fn readiness_fails_while_the_store_is_unreachable() {
    let dir = TempDir::new();
    let mut command = charter_command(&dir.0);
    command
        .env(
            "CHARTER_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/unreachable",
        )
        .env("CHARTER_MIGRATE_ON_START", "false");
    let server = Server::start(command);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let problem: Value = ready.json().await.unwrap();
    assert_eq!(problem["code"], "store_unavailable");
}

fn meta() -> CommandMeta {
    CommandMeta::new(
        "organization",
        OrgName::parse("acme").unwrap(),
        Actor::parse("user:e2e").unwrap(),
    )
}

/// The production path: `charter serve` on PostgreSQL publishes every event
/// to JetStream in order, and `charter events` prints and follows the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_jetstream_end_to_end() {
    let dir = TempDir::new();
    let schema = PgSchema::new("e2e");
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let stream_name = charter_testkit::ScratchStreams::new("E2E");
    let prefix = format!("e2e{tag}.events");
    let configure = |command: &mut std::process::Command| {
        command
            .env("CHARTER_DATABASE_URL", test_database_url())
            .env("CHARTER_DATABASE_SCHEMA", &schema.name)
            .env("CHARTER_NATS_URL", test_nats_url())
            .env("CHARTER_NATS_STREAM", &stream_name.name)
            .env("CHARTER_NATS_SUBJECT_PREFIX", &prefix);
    };
    let mut command = charter_command(&dir.0);
    configure(&mut command);
    let mut server = Server::start(command);
    let ready = reqwest::get(server.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);

    // Another process appends to the same store.
    let store = PostgresStore::connect(
        &test_database_url(),
        StoreOptions {
            schema: Some(schema.name.clone()),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let mut appended = Vec::new();
    for i in 0..20 {
        let events: Vec<_> = (0..3)
            .map(|n| NewEvent::new("Tagged", json!({"i": i, "n": n})))
            .collect();
        let outcome = store
            .append(
                &StreamId::parse(format!("organization-o{i}")).unwrap(),
                ExpectedVersion::NoStream,
                &events,
                &meta(),
            )
            .await
            .unwrap();
        appended.push(outcome);
    }
    let last = appended.last().unwrap().last_position;
    // Other suites' open transactions may hold the read horizon back a moment.
    assert!(
        wait_for_position(&store, last, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let log = store.read_all(Position::START, 1000).await.unwrap();
    assert_eq!(log.len(), 60);

    // Every event reaches JetStream, in order, once.
    let client = async_nats::connect(test_nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        if let Ok(mut stream) = js.get_stream(stream_name.name.as_str()).await
            && stream.info().await.unwrap().state.messages >= 60
        {
            break stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events never reached JetStream:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.state.messages, 60);
    for (seq, stored) in (info.state.first_sequence..).zip(&log) {
        let message = stream.get_raw_message(seq).await.unwrap();
        let event: RecordedEvent = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(&event, stored);
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}.acme.organization.Tagged")
        );
        assert_eq!(
            message.headers.get("Nats-Msg-Id").unwrap().as_str(),
            stored.event_id.to_string()
        );
    }

    // `charter events` prints the log as JSON lines.
    let mut events = charter_command(&dir.0);
    configure(&mut events);
    let output = events.args(["events", "--from", "0"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed: Vec<RecordedEvent> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(printed, log);
    // From a position on: that event and the ones after it.
    let mut events = charter_command(&dir.0);
    configure(&mut events);
    let from = log[10].position.to_string();
    let output = events
        .args(["events", "--from", &from, "--limit", "5"])
        .output()
        .unwrap();
    let printed: Vec<RecordedEvent> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(printed, log[10..15]);

    // `--follow` prints what commits after it started.
    let mut follow = charter_command(&dir.0);
    configure(&mut follow);
    let mut follower = follow
        .args([
            "events",
            "--from",
            &log[59].position.to_string(),
            "--follow",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first: RecordedEvent =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
    assert_eq!(first, log[59]);
    let late = store
        .append(
            &StreamId::parse("organization-late").unwrap(),
            ExpectedVersion::NoStream,
            &[NewEvent::new("Tagged", json!({"late": true}))],
            &meta(),
        )
        .await
        .unwrap();
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("--follow did not print a new commit");
    let followed: RecordedEvent = serde_json::from_str(&line).unwrap();
    assert_eq!(followed.position, late.last_position);
    let _ = std::process::Command::new("kill")
        .args(["-INT", &follower.id().to_string()])
        .status();
    let status = follower.wait().unwrap();
    assert!(status.success(), "{status:?}");

    assert!(server.signal_and_wait("TERM").success());
    drop(Arc::new(store));
}

/// A server started on a long log is not ready until its access index has
/// replayed it: until then `/readyz` answers 503 `catching_up` (it would
/// decide on facts older than what it already stored), then 200, and the
/// log says when it caught up. (The 503 itself is pinned down by the
/// handler's own test: a local log replays too fast to be caught at it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_access_index_to_catch_up() {
    let dir = TempDir::new();
    let output = charter_command(&dir.0)
        .args(["bench", "append", "--writers", "1", "--batch", "1000"])
        .args(["--events", "100000"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let mut server = Server::start(charter_command(&dir.0));
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut waited = 0;
    loop {
        let ready = http.get(server.url("/readyz")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert_eq!(ready.status(), 503);
        let problem: Value = ready.json().await.unwrap();
        assert_eq!(problem["code"], "catching_up", "{problem}");
        assert!(
            problem["details"]["at"].as_u64() < problem["details"]["head"].as_u64(),
            "{problem}"
        );
        waited += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up: {problem}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Ready once the index was through the log's head at the start.
    let log = server.log();
    let caught = log
        .lines()
        .find(|line| line.contains("the access index caught up with the log"))
        .unwrap_or_else(|| panic!("no catch-up line after {waited} waits:\n{log}"));
    assert!(!caught.contains("position=0 "), "{caught}");
    assert!(server.signal_and_wait("TERM").success());
}
