//! `Application` in-process (port 0, its own SQLite file): appends made
//! through its store show in `/metrics`, and the relay publishes them on
//! the in-process bus.

use std::time::Duration;

use charter::Application;
use charter::Config;
use charter_commands::{CommandMeta, ExpectedVersion, NewEvent, StreamId};
use charter_domain::{Actor, OrgName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_show_in_metrics_and_on_the_bus() {
    let file = charter_testkit::ScratchFile::new("charter-app");
    let config = Config {
        database_url: file.url(),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    let app = Application::build(config).await.unwrap();
    let address = app.local_addr();
    assert_ne!(address.port(), 0);
    let store = app.store();
    let mut bus = app
        .bus()
        .expect("embedded mode uses the in-process bus")
        .subscribe();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let meta = CommandMeta::new(
        "organization",
        OrgName::parse("acme").unwrap(),
        Actor::parse("user:t").unwrap(),
    );
    let outcome = store
        .append(
            &StreamId::parse("organization-acme").unwrap(),
            ExpectedVersion::NoStream,
            &[NewEvent::new(
                "Registered",
                serde_json::json!({"name": "acme"}),
            )],
            &meta,
        )
        .await
        .unwrap();
    let conflict = store
        .append(
            &StreamId::parse("organization-acme").unwrap(),
            ExpectedVersion::NoStream,
            &[NewEvent::new(
                "Registered",
                serde_json::json!({"name": "acme"}),
            )],
            &CommandMeta {
                command_id: charter_domain::CommandId::new(),
                ..meta.clone()
            },
        )
        .await;
    assert!(conflict.is_err());

    let published = tokio::time::timeout(Duration::from_secs(30), bus.recv())
        .await
        .expect("the relay published")
        .unwrap();
    assert_eq!(published.position, outcome.last_position);

    let text = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
    };
    assert!(value("charter_store_appends_total{backend=\"sqlite\"}") >= 1.0);
    assert!(value("charter_store_append_conflicts_total{backend=\"sqlite\"}") >= 1.0);
    assert!(value("charter_store_append_duration_seconds_count{backend=\"sqlite\"}") >= 2.0);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
