//! Durable runs: the server is killed (SIGKILL) in the middle of several
//! runs and started again; every run completes, no node that had completed
//! runs again, a node that was in flight runs again only under the same
//! idempotency key, and every node succeeds exactly once in its trace.
//! And a server told to stop (SIGTERM) lets the calls in flight finish and
//! record their outcomes before it exits, so nothing runs twice and no
//! run waits for a lease after the restart. On PostgreSQL + JetStream (the
//! production path) and on the embedded default.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use charter_tests::TempDir;
use charter_tests::api::{Env, postgres_and_jetstream};
use reqwest::Method;
use serde_json::{Value, json};

const ACME: &str = include_str!("../../schema/examples/acme.yaml");

const CHAIN: &str = r#"
apiVersion: charter.dev/v1
kind: Tool
metadata: {name: test.step, org: acme}
spec:
  version: "1"
  runtime:
    process:
      command: [sh, -c, "printf '%s\n' \"$CHARTER_IDEMPOTENCY_KEY\" >> \"$STEPS\"; sleep 0.3; echo '{}'"]
      env: {STEPS: "STEPS_PATH"}
  limits: {timeout: 2s}
"#;

const FLOW: &str = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: chain, org: acme}
spec:
  version: "1"
  nodes:
    - {name: a, tool: test.step}
    - {name: b, needs: [a], tool: test.step}
    - {name: c, needs: [b], tool: test.step}
    - {name: d, needs: [c], tool: test.step}
"#;

/// Executions per idempotency key (`org:run/node`).
fn executions(path: &std::path::Path) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        *counts.entry(line.trim().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The nodes with a `NodeSucceeded` in the log, as `org:run/node`.
fn succeeded_in_log(env: &Env) -> BTreeSet<String> {
    let output = env.cli(&["events"]);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["event_type"] == "NodeSucceeded")
        .map(|e| {
            let stream = e["stream_id"].as_str().unwrap_or_default();
            let run = stream.strip_prefix("workflow_run-").unwrap_or(stream);
            format!(
                "{run}/{}",
                e["payload"]["node"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

async fn scenario(mut env: Env) {
    let root = env.token("root", "1h");
    let steps = env.dir.0.join("steps.log");
    let (status, body) = env.apply(&root, ACME, "").await;
    assert_eq!(status, 200, "{body}");
    let tool = CHAIN.replace("STEPS_PATH", steps.to_str().unwrap());
    let (status, body) = env.apply(&root, &tool, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .call(
            Method::POST,
            "/v1/orgs/acme/tools/test.step/versions/1/approve",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.apply(&root, FLOW, "").await;
    assert_eq!(status, 200, "{body}");

    let mut runs = Vec::new();
    for _ in 0..8 {
        let (status, started) = env
            .call(
                Method::POST,
                "/v1/orgs/acme/workflows/chain/runs",
                Some(&root),
                Some(("application/json", json!({"input": {}}).to_string())),
            )
            .await;
        assert_eq!(status, 200, "{started}");
        runs.push(started["id"].as_str().unwrap().to_owned());
    }
    // Let some nodes finish and others be in flight, then crash.
    tokio::time::sleep(Duration::from_millis(900)).await;
    env.server.signal_and_wait("KILL");
    let done_before = succeeded_in_log(&env);
    // Tools started before the crash may still be finishing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran_before = executions(&steps);
    assert!(
        !done_before.is_empty(),
        "some nodes should have completed before the crash"
    );
    assert!(
        done_before.len() < runs.len() * 4,
        "some nodes should still have been pending at the crash"
    );

    env.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    for id in &runs {
        loop {
            let (status, run) = env.get(&format!("/v1/orgs/acme/runs/{id}"), &root).await;
            if status == 200 && run["status"] != "running" {
                assert_eq!(run["status"], "succeeded", "{run}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not complete: {run}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let ran_after = executions(&steps);
    for key in &done_before {
        assert_eq!(
            ran_after.get(key),
            ran_before.get(key),
            "{key} had completed before the crash and ran again"
        );
    }
    for id in &runs {
        let (_, trace) = env
            .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
            .await;
        for node in ["a", "b", "c", "d"] {
            let succeeded = trace
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "NodeSucceeded" && e["data"]["node"] == node)
                .count();
            assert_eq!(succeeded, 1, "run {id} node {node}: {trace}");
            let key = format!("acme:{id}/{node}");
            let times = ran_after.get(&key).copied().unwrap_or(0);
            assert!(
                (1..=2).contains(&times),
                "{key} ran {times} times (every run of a node carries its one key)"
            );
        }
    }
    // Every line in the log is one of the runs' keys: nothing ran under
    // another key.
    let known: BTreeSet<String> = runs
        .iter()
        .flat_map(|id| ["a", "b", "c", "d"].map(|n| format!("acme:{id}/{n}")))
        .collect();
    for key in ran_after.keys() {
        assert!(known.contains(key), "unexpected key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_crash_on_postgres_and_jetstream() {
    let (_schema, _stream, settings) = postgres_and_jetstream("durable");
    scenario(Env::start(TempDir::new(), settings)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_crash_on_the_embedded_default() {
    scenario(Env::start(TempDir::new(), vec![])).await;
}

const SLOW: &str = r#"
apiVersion: charter.dev/v1
kind: Tool
metadata: {name: test.slow, org: acme}
spec:
  version: "1"
  runtime:
    process:
      command: [sh, -c, "printf '%s\n' \"$CHARTER_IDEMPOTENCY_KEY\" >> \"$STEPS\"; sleep 1.5; echo '{}'"]
      env: {STEPS: "STEPS_PATH"}
  limits: {timeout: 60s}
"#;

const SLOW_FLOW: &str = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: slow, org: acme}
spec:
  version: "1"
  nodes:
    - {name: a, tool: test.slow}
    - {name: b, needs: [a], tool: test.slow}
"#;

/// Nodes claimed (`NodeStarted`) and nodes ended (succeeded or failed) in
/// the log, as `org:run/node`.
fn claimed_and_ended(env: &Env) -> (BTreeSet<String>, BTreeSet<String>) {
    let output = env.cli(&["events"]);
    assert!(output.status.success(), "{output:?}");
    let (mut claimed, mut ended) = (BTreeSet::new(), BTreeSet::new());
    for event in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
    {
        let stream = event["stream_id"].as_str().unwrap_or_default();
        let Some(run) = stream.strip_prefix("workflow_run-") else {
            continue;
        };
        let key = format!(
            "{run}/{}",
            event["payload"]["node"].as_str().unwrap_or_default()
        );
        match event["event_type"].as_str() {
            Some("NodeStarted") => claimed.insert(key),
            Some("NodeSucceeded" | "NodeFailed") => ended.insert(key),
            _ => false,
        };
    }
    (claimed, ended)
}

async fn stopping(mut env: Env) {
    let root = env.token("root", "1h");
    let steps = env.dir.0.join("steps.log");
    let (status, body) = env.apply(&root, ACME, "").await;
    assert_eq!(status, 200, "{body}");
    let tool = SLOW.replace("STEPS_PATH", steps.to_str().unwrap());
    let (status, body) = env.apply(&root, &tool, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .call(
            Method::POST,
            "/v1/orgs/acme/tools/test.slow/versions/1/approve",
            Some(&root),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.apply(&root, SLOW_FLOW, "").await;
    assert_eq!(status, 200, "{body}");
    let mut runs = Vec::new();
    for _ in 0..3 {
        let (status, started) = env
            .call(
                Method::POST,
                "/v1/orgs/acme/workflows/slow/runs",
                Some(&root),
                Some(("application/json", json!({"input": {}}).to_string())),
            )
            .await;
        assert_eq!(status, 200, "{started}");
        runs.push(started["id"].as_str().unwrap().to_owned());
    }
    // Every run's first call is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while executions(&steps).len() < runs.len() {
        assert!(Instant::now() < deadline, "the first calls did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = env.server.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}\n{}", env.server.log());

    // Each call that was claimed before the stop ended and is on record:
    // none is left to wait for its lease (a minute here).
    let (claimed, ended) = claimed_and_ended(&env);
    for id in &runs {
        assert!(claimed.contains(&format!("acme:{id}/a")), "{claimed:?}");
    }
    assert_eq!(claimed, ended, "calls left unrecorded by the stop");

    env.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &runs {
        loop {
            let (status, run) = env.get(&format!("/v1/orgs/acme/runs/{id}"), &root).await;
            if status == 200 && run["status"] != "running" {
                assert_eq!(run["status"], "succeeded", "{run}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not complete after the restart: {run}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Nothing ran twice.
    let ran = executions(&steps);
    for id in &runs {
        for node in ["a", "b"] {
            let key = format!("acme:{id}/{node}");
            assert_eq!(ran.get(&key), Some(&1), "{key} in {ran:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_finishes_its_calls_on_postgres_and_jetstream() {
    let (_schema, _stream, settings) = postgres_and_jetstream("stopping");
    stopping(Env::start(TempDir::new(), settings)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_finishes_its_calls_on_the_embedded_default() {
    stopping(Env::start(TempDir::new(), vec![])).await;
}
