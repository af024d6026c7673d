//! Durable runs: the server is killed (SIGKILL) in the middle of several
//! runs and started again; every run completes, no node that had completed
//! runs again, a node that was in flight runs again only under the same
//! idempotency key, and every node succeeds exactly once in its trace.
//! And a server told to stop (SIGTERM) lets the calls in flight finish and
//! record their outcomes before it exits, so nothing runs twice and no
//! run waits for a lease after the restart. On PostgreSQL + JetStream (the
//! production path) and on the embedded default.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
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

/// The log's node events: each one's type and node, as `org:run/node`.
fn node_events(env: &Env) -> Vec<(String, String)> {
    let output = env.cli(&["events"]);
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|e| {
            let run = e["stream_id"].as_str()?.strip_prefix("workflow_run-")?;
            let node = e["payload"]["node"].as_str()?;
            Some((
                e["event_type"].as_str()?.to_owned(),
                format!("{run}/{node}"),
            ))
        })
        .collect()
}

/// The nodes of these types in the log, as `org:run/node`.
fn nodes_in_log(env: &Env, types: &[&str]) -> BTreeSet<String> {
    node_events(env)
        .into_iter()
        .filter(|(kind, _)| types.contains(&kind.as_str()))
        .map(|(_, node)| node)
        .collect()
}

/// The org, a process tool that logs each call's key to `steps` (approved)
/// and a workflow calling it.
async fn set_up(env: &Env, root: &str, tool: &str, name: &str, flow: &str, steps: &Path) {
    let (status, body) = env.apply(root, ACME, "").await;
    assert_eq!(status, 200, "{body}");
    let tool = tool.replace("STEPS_PATH", steps.to_str().unwrap());
    let (status, body) = env.apply(root, &tool, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env
        .call(
            Method::POST,
            &format!("/v1/orgs/acme/tools/{name}/versions/1/approve"),
            Some(root),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.apply(root, flow, "").await;
    assert_eq!(status, 200, "{body}");
}

/// Starts `count` runs of a workflow; their ids.
async fn start_runs(env: &Env, root: &str, workflow: &str, count: usize) -> Vec<String> {
    let mut runs = Vec::new();
    for _ in 0..count {
        let (status, started) = env
            .call(
                Method::POST,
                &format!("/v1/orgs/acme/workflows/{workflow}/runs"),
                Some(root),
                Some(("application/json", json!({"input": {}}).to_string())),
            )
            .await;
        assert_eq!(status, 200, "{started}");
        runs.push(started["id"].as_str().unwrap().to_owned());
    }
    runs
}

/// Waits until every run has ended, and checks it succeeded.
async fn all_succeed(env: &Env, root: &str, runs: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    for id in runs {
        loop {
            let (status, run) = env.get(&format!("/v1/orgs/acme/runs/{id}"), root).await;
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
}

async fn scenario(mut env: Env) {
    let root = env.token("root", "1h");
    let steps = env.dir.0.join("steps.log");
    set_up(&env, &root, CHAIN, "test.step", FLOW, &steps).await;
    let runs = start_runs(&env, &root, "chain", 8).await;
    // Let some nodes finish and others be in flight, then crash.
    tokio::time::sleep(Duration::from_millis(900)).await;
    env.server.signal_and_wait("KILL");
    let done_before = nodes_in_log(&env, &["NodeSucceeded"]);
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
    all_succeed(&env, &root, &runs, Duration::from_secs(90)).await;

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

async fn stopping(mut env: Env) {
    let root = env.token("root", "1h");
    let steps = env.dir.0.join("steps.log");
    set_up(&env, &root, SLOW, "test.slow", SLOW_FLOW, &steps).await;
    let runs = start_runs(&env, &root, "slow", 3).await;
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
    let claimed = nodes_in_log(&env, &["NodeStarted"]);
    let ended = nodes_in_log(&env, &["NodeSucceeded", "NodeFailed"]);
    for id in &runs {
        assert!(claimed.contains(&format!("acme:{id}/a")), "{claimed:?}");
    }
    assert_eq!(claimed, ended, "calls left unrecorded by the stop");

    env.restart();
    all_succeed(&env, &root, &runs, Duration::from_secs(30)).await;
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
