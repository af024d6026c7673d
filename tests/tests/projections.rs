//! `charter serve` keeps the read models current, and `charter projections`
//! reports and rebuilds them, on the embedded default.

use std::sync::Arc;
use std::time::Duration;

use charter_commands::sqlite::SqliteStore;
use charter_commands::store::StoreOptions;
use charter_commands::{CommandHandler, CommandMeta};
use charter_domain::organization::{DisplayName, OrgCommand, Organization, Tags};
use charter_domain::{Actor, Aggregate, OrgName};
use charter_projections::organizations::{COLLECTION, PROJECTION};
use charter_tests::{Server, TempDir, charter_command};
use serde_json::Value;

fn status_lines(dir: &TempDir) -> Vec<Value> {
    let output = charter_command(&dir.0)
        .args(["projections", "status"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_projects_and_the_cli_rebuilds() {
    let dir = TempDir::new();
    let mut server = Server::start(charter_command(&dir.0));
    let url = format!("sqlite://{}", dir.0.join("charter.db").display());

    // Another process writes through the command kernel.
    let store = Arc::new(
        SqliteStore::open(&url, StoreOptions::default())
            .await
            .unwrap(),
    );
    let kernel = CommandHandler::new(store);
    let mut last = None;
    for name in ["acme", "beta", "gamma"] {
        let org = OrgName::parse(name).unwrap();
        let meta = CommandMeta::new(
            Organization::KIND,
            org.clone(),
            Actor::parse("user:root").unwrap(),
        );
        let outcome = kernel
            .handle::<Organization>(
                &org,
                &OrgCommand::Register {
                    display_name: DisplayName::parse(name.to_uppercase()).unwrap(),
                    tags: Tags::default(),
                    parent: None,
                },
                &meta,
            )
            .await
            .unwrap();
        last = outcome.position;
    }
    let last = last.unwrap();
    let models = charter_projections::connect(&url, None, 1).await.unwrap();
    models
        .wait_for(PROJECTION, last, Duration::from_secs(30))
        .await
        .expect("the server's projection caught up");
    let beta = models
        .get(PROJECTION, COLLECTION, "beta")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(beta.doc["display_name"], "BETA");

    let status = status_lines(&dir);
    let names: Vec<&str> = status.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["organizations", "directory", "audit"]);
    assert_eq!(status[0]["generation"], 1);
    assert_eq!(status[0]["position"], last.0);
    assert_eq!(status[0]["lag_events"], 0);

    // Rebuild while the server keeps serving; it follows the switch.
    let output = charter_command(&dir.0)
        .args(["projections", "rebuild", "organizations"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["generation"], 2);
    assert_eq!(report["events"], 3);
    assert_eq!(status_lines(&dir)[0]["generation"], 2);
    assert_eq!(
        models
            .get(PROJECTION, COLLECTION, "beta")
            .await
            .unwrap()
            .unwrap(),
        beta
    );

    let unknown = charter_command(&dir.0)
        .args(["projections", "rebuild", "nope"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown projection `nope`"));

    assert!(server.signal_and_wait("TERM").success());
}
