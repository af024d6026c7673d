//! Workflows end to end on the real binary: definitions checked whole,
//! runs driven to completion by the engine, approvals, retries, the
//! contract and its breaches, cancellation, the trace; on the embedded
//! default and on PostgreSQL + JetStream.

use std::time::{Duration, Instant};

use charter_tests::TempDir;
use charter_tests::api::{Env, GLOBEX, code, postgres_and_jetstream};
use serde_json::{Value, json};

const ACME: &str = include_str!("../../schema/examples/acme.yaml");
const WORDCOUNT: &str = include_str!("../../schema/examples/tools/text-wordcount.yaml");
const ECHO: &str = include_str!("../../schema/examples/tools/util-echo.yaml");
const UPTIME: &str = include_str!("../../schema/examples/tools/host-uptime.yaml");
const REPORT: &str = include_str!("../../schema/examples/workflows/text-report.yaml");

/// Waits until a run has ended; returns it.
async fn finished(env: &Env, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, run) = env.get(&format!("/v1/orgs/acme/runs/{id}"), token).await;
        if status == 200 && run["status"] != "running" {
            return run;
        }
        assert!(Instant::now() < deadline, "run {id} did not end: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A counter's value on the server's `/metrics` (0 before it counted).
async fn counter(env: &Env, name: &str) -> f64 {
    let metrics = env
        .http
        .get(env.server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until a run's node reaches a status.
async fn node_reaches(env: &Env, token: &str, id: &str, node: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, run) = env.get(&format!("/v1/orgs/acme/runs/{id}"), token).await;
        let found = run["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
            .cloned();
        if found.as_ref().is_some_and(|n| n["status"] == status) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never became {status}: {run}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(env: &Env, token: &str, workflow: &str, input: Value) -> String {
    start_in(env, token, workflow, input, None).await
}

async fn start_in(
    env: &Env,
    token: &str,
    workflow: &str,
    input: Value,
    job_space: Option<&str>,
) -> String {
    let (status, started) = env
        .post(
            token,
            &format!("/v1/orgs/acme/workflows/{workflow}/runs"),
            json!({"input": input, "jobSpace": job_space}),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    started["id"].as_str().unwrap().to_owned()
}

/// The acme org and these tool manifests, with the word count and echo
/// tools approved.
async fn acme_with_tools(env: &Env, root: &str, tools: &[&str]) {
    let (status, body) = env.apply(root, ACME, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = env.apply(root, &tools.join("\n---\n"), "").await;
    assert_eq!(status, 200, "{body}");
    approve_tools(
        env,
        root,
        &[("text.wordcount", "1.0.0"), ("util.echo", "1")],
    )
    .await;
}

/// Approves tool versions in acme.
async fn approve_tools(env: &Env, token: &str, versions: &[(&str, &str)]) {
    for (tool, version) in versions {
        let (status, body) = env
            .post(
                token,
                &format!("/v1/orgs/acme/tools/{tool}/versions/{version}/approve"),
                json!(null),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

/// A run's event types from the GraphQL subscription, until it ends.
async fn subscribe(env: &Env, token: &str, id: &str) -> Vec<String> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = env
        .server
        .url("/graphql")
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let init =
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}});
    socket.send(Message::text(init.to_string())).await.unwrap();
    let query =
        format!(r#"subscription {{ runEvents(org: "acme", id: "{id}") {{ type version }} }}"#);
    let subscribe = json!({"id": "1", "type": "subscribe", "payload": {"query": query}});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .unwrap();
    let mut types = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, socket.next()).await {
        let Ok(Message::Text(text)) = message else {
            continue;
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        match message["type"].as_str() {
            Some("next") => {
                assert!(message["payload"]["errors"].is_null(), "{message}");
                types.push(
                    message["payload"]["data"]["runEvents"]["type"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            Some("complete") => return types,
            Some("error") => panic!("{message}"),
            _ => {}
        }
    }
    panic!("the subscription did not complete: {types:?}");
}

/// A run's event types from the REST WebSocket, until it closes.
async fn watch(env: &Env, token: &str, id: &str) -> Vec<String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let url = env
        .server
        .url(&format!("/v1/orgs/acme/runs/{id}/watch?token={token}"))
        .replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut types = Vec::new();
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_secs(30), socket.next()).await
    {
        match message {
            Message::Text(text) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                types.push(event["type"].as_str().unwrap().to_owned());
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    types
}

/// The first `NodeStarted` event of a trace: the call's checks.
fn first_started(trace: &Value) -> &Value {
    trace
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "NodeStarted")
        .unwrap_or_else(|| panic!("no NodeStarted in {trace}"))
}

/// Waits until the process whose pid a tool wrote is gone.
async fn assert_pid_gone(pidfile: &std::path::Path) {
    let pid: u32 = std::fs::read_to_string(pidfile)
        .expect("the tool wrote its pid")
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(2).map(str::to_owned));
        if state.as_deref().is_none_or(|s| s == "Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled tool {pid} still runs"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn trace_types(trace: &Value) -> Vec<String> {
    trace
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn scenario(env: &Env) {
    let root = env.token("root", "1h");
    let planner = env.token("acme:planner", "1h");
    acme_with_tools(env, &root, &[WORDCOUNT, ECHO, UPTIME]).await;

    // A broken definition: every problem at once, nothing stored.
    let before = env.events();
    let broken = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: broken, org: acme}
spec:
  version: "1"
  nodes:
    - {name: a, needs: [b], tool: text.wordcount}
    - {name: b, needs: [a], tool: text.wordcount}
    - {name: c, tool: nope.tool}
    - {name: d, tool: host.uptime}
    - {name: e, tool: util.echo, when: "input.x >"}
    - {name: f, tool: util.echo, input: {x: "nodes.g.output"}}
    - {name: g, job: {capability: plan}}
"#;
    let (status, body) = env.apply(&root, broken, "").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_workflow", "{body}");
    assert_eq!(
        body["details"]["problems"].as_array().unwrap().len(),
        7,
        "{body}"
    );
    let text = body.to_string();
    for expected in [
        "is part of a cycle",
        "unknown tool `nope.tool`",
        "has no approved version",
        "does not parse",
        "does not run before it",
        "agent job nodes",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in {text}");
    }
    assert_eq!(env.events(), before, "a refused definition stores nothing");

    // A tool and a workflow calling it in one apply: the workflow is
    // checked against the tool as the apply leaves it, registered but not
    // yet approved, and the whole apply is refused for that.
    let together = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: fresh, org: acme}
spec:
  version: "1"
  nodes:
    - {name: a, tool: util.fresh}
---
apiVersion: charter.dev/v1
kind: Tool
metadata: {name: util.fresh, org: acme}
spec:
  version: "1"
  runtime: {builtin: echo}
"#;
    let (status, body) = env.apply(&root, together, "").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_workflow", "{body}");
    let problems = &body["details"]["problems"];
    assert_eq!(problems.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(problems[0]["path"], "spec.nodes[0].tool", "{body}");
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("`util.fresh` has no approved version"),
        "{body}"
    );
    assert_eq!(env.events(), before, "a refused apply stores nothing");

    let (status, body) = env.apply(&root, REPORT, "").await;
    assert_eq!(status, 200, "{body}");

    // A short text runs straight through; the review is skipped.
    let id = start(env, &root, "text-report", json!({"text": "one two three"})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["words"], 3);
    assert_eq!(
        run["output"]["report"],
        json!({"words": 3, "reviewed": false})
    );
    // The first node was taken in hand by a free worker, as the run was
    // started here (the driver left it to the start, and queued nothing);
    // the built-in step its outcome made ready went in that outcome's
    // append.
    let in_hand = counter(env, "charter_engine_tasks_in_hand_total").await;
    assert_eq!(in_hand, 1.0, "nodes taken in hand");
    let queued = counter(env, "charter_engine_tasks_queued_total").await;
    assert_eq!(queued, 0.0, "nodes queued");
    let chained = counter(env, "charter_engine_steps_in_one_append_total").await;
    assert_eq!(chained, 1.0, "steps chained in an append");
    let (status, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    assert_eq!(status, 200);
    let types = trace_types(&trace);
    assert_eq!(types.first().map(String::as_str), Some("Started"));
    assert_eq!(types.last().map(String::as_str), Some("Completed"));
    assert!(types.contains(&"NodeSkipped".to_owned()), "{types:?}");
    // Waiting for more of a run that ended: nothing can come, and the
    // empty answer does not wait its 30 s.
    let last = trace.as_array().unwrap().last().unwrap()["version"].clone();
    let response = env
        .http
        .get(env.server.url(&format!(
            "/v1/orgs/acme/runs/{id}/events?after={last}&waitMs=30000"
        )))
        .bearer_auth(&root)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an ended run's empty trace read answers at once");
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!([]));
    let started = first_started(&trace);
    assert_eq!(started["data"]["checks"]["authorization"]["allowed"], true);
    assert_eq!(started["data"]["checks"]["contract"]["admitted"], true);
    assert_eq!(started["data"]["checks"]["input"]["valid"], true);
    let position = trace.as_array().unwrap().last().unwrap()["position"]
        .as_u64()
        .unwrap();
    let (status, contract) = env
        .get(
            &format!("/v1/orgs/acme/runs/{id}/contract?minPosition={position}"),
            &root,
        )
        .await;
    assert_eq!(status, 200, "{contract}");
    assert_eq!(contract["callsUsed"], 2, "{contract}");
    assert_eq!(contract["maxCalls"], 10);
    assert_eq!(contract["breaches"], 0);
    let tools: Vec<&str> = contract["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["text.wordcount", "util.echo"]);

    // Bad input is refused before anything starts.
    let (status, body) = env
        .post(
            &root,
            "/v1/orgs/acme/workflows/text-report/runs",
            json!({"input": {"txt": "x"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_run_input");

    // A long text waits for an approval, which takes the right to approve.
    let long = vec!["word"; 150].join(" ");
    let id = start(env, &root, "text-report", json!({"text": long})).await;
    node_reaches(env, &root, &id, "review", "awaitingApproval").await;
    let approve = format!("/v1/orgs/acme/runs/{id}/nodes/review/approve");
    let (status, body) = env
        .post(&planner, &approve, json!({"comment": "me?"}))
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = env.post(&root, &approve, json!({"comment": "fine"})).await;
    assert_eq!(status, 200, "{body}");
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["report"]["reviewed"], true);

    // A rejection fails the run.
    let id = start(env, &root, "text-report", json!({"text": long})).await;
    node_reaches(env, &root, &id, "review", "awaitingApproval").await;
    let (status, _) = env
        .post(
            &root,
            &format!("/v1/orgs/acme/runs/{id}/nodes/review/reject"),
            json!({"comment": "no"}),
        )
        .await;
    assert_eq!(status, 200);
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "rejected");

    // The planner may run workflows in its job space but not call the word
    // counter: the call is refused, with the decision on record.
    let (status, _) = env
        .post(
            &planner,
            "/v1/orgs/acme/workflows/text-report/runs",
            json!({"input": {"text": "a b"}}),
        )
        .await;
    assert_eq!(status, 403, "the planner works in its job space only");
    let id = start_in(
        env,
        &planner,
        "text-report",
        json!({"text": "a b"}),
        Some("research"),
    )
    .await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "forbidden", "{run}");
    let (_, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    let started = first_started(&trace);
    assert_eq!(
        started["data"]["checks"]["authorization"]["allowed"], false,
        "{started}"
    );
    assert_eq!(
        started["data"]["checks"]["authorization"]["deniedBecause"],
        "no_grant"
    );

    // A budget used up mid-run: the next call is refused before it starts
    // and the breach is on the contract.
    let thrifty = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: thrifty, org: acme}
spec:
  version: "1"
  budget: {calls: 1}
  nodes:
    - {name: first, tool: util.echo, input: {n: "1"}}
    - {name: second, needs: [first], tool: util.echo, input: {n: "2"}}
"#;
    let (status, body) = env.apply(&root, thrifty, "").await;
    assert_eq!(status, 200, "{body}");
    let id = start(env, &root, "thrifty", json!({})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "contract_breach", "{run}");
    assert_eq!(run["nodes"][0]["status"], "succeeded", "{run}");
    let (_, contract) = env
        .get(
            &format!(
                "/v1/orgs/acme/runs/{id}/contract?minPosition={}",
                run["meta"]["position"]
            ),
            &root,
        )
        .await;
    assert_eq!(contract["breaches"], 1, "{contract}");
    assert_eq!(contract["callsUsed"], 1, "{contract}");

    // A built-in step whose input breaks the tool's schema does not go in
    // the start's append: it is refused before it runs, with the problems
    // on record, and the run fails with the check's code.
    let strict = r#"
apiVersion: charter.dev/v1
kind: Tool
metadata: {name: util.strict, org: acme}
spec:
  version: "1"
  input: {type: object, required: [n], properties: {n: {type: integer}}}
  runtime: {builtin: echo}
"#;
    let (status, body) = env.apply(&root, strict, "").await;
    assert_eq!(status, 200, "{body}");
    approve_tools(env, &root, &[("util.strict", "1")]).await;
    let strict = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: strict, org: acme}
spec:
  version: "1"
  nodes:
    - {name: ok, tool: util.strict, input: {n: "1"}}
    - {name: bad, needs: [ok], tool: util.strict, input: {n: "'one'"}}
"#;
    let (status, body) = env.apply(&root, strict, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, started) = env
        .post(&root, "/v1/orgs/acme/workflows/strict/runs", json!({}))
        .await;
    assert_eq!(status, 200, "{started}");
    assert!(
        !started["events"]
            .as_array()
            .unwrap()
            .contains(&json!("Completed")),
        "{started}"
    );
    let id = started["id"].as_str().unwrap();
    let run = finished(env, &root, id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "input_schema_mismatch", "{run}");
    assert_eq!(run["nodes"][0]["status"], "succeeded", "{run}");
    let (_, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    let refused = trace
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "NodeStarted" && e["data"]["node"] == "bad")
        .unwrap_or_else(|| panic!("no claim of `bad` in {trace}"));
    assert_eq!(
        refused["data"]["checks"]["input"]["valid"], false,
        "{refused}"
    );

    // Failures retry, then fail the run with the tool's own code; a
    // cancelled run stops its running tool.
    let flaky = r#"
apiVersion: charter.dev/v1
kind: Tool
metadata: {name: test.flaky, org: acme}
spec:
  version: "1"
  runtime:
    process:
      command: [sh, -c, "echo broken >&2; exit 3"]
  limits: {timeout: 5s}
---
apiVersion: charter.dev/v1
kind: Tool
metadata: {name: test.sleepy, org: acme}
spec:
  version: "1"
  runtime:
    process:
      command: [sh, -c, "echo $$ > \"$PIDFILE\"; exec sleep 600"]
      env: {PIDFILE: "PIDFILE_PATH"}
  limits: {timeout: 10m}
"#;
    let pidfile = env.dir.0.join("sleepy.pid");
    let flaky = flaky.replace("PIDFILE_PATH", pidfile.to_str().unwrap());
    let (status, body) = env.apply(&root, &flaky, "").await;
    assert_eq!(status, 200, "{body}");
    approve_tools(env, &root, &[("test.flaky", "1"), ("test.sleepy", "1")]).await;
    let flows = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: flaky, org: acme}
spec:
  version: "1"
  nodes:
    - {name: try, tool: test.flaky, retry: {attempts: 2, backoff: 100ms}}
---
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: sleepy, org: acme}
spec:
  version: "1"
  nodes:
    - {name: nap, tool: test.sleepy}
"#;
    let (status, body) = env.apply(&root, flows, "").await;
    assert_eq!(status, 200, "{body}");
    let id = start(env, &root, "flaky", json!({})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "exit_nonzero", "{run}");
    assert_eq!(run["nodes"][0]["attempts"], 2, "{run}");
    // The tool's stderr is quoted in the message, without its newline.
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("the tool exited with status 3 (stderr: broken)"),
        "{run}"
    );
    let (_, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    let failed = trace_types(&trace)
        .iter()
        .filter(|t| *t == "AttemptFailed")
        .count();
    assert_eq!(failed, 2);

    let id = start(env, &root, "sleepy", json!({})).await;
    node_reaches(env, &root, &id, "nap", "running").await;
    let (status, body) = env
        .post(
            &root,
            &format!("/v1/orgs/acme/runs/{id}/cancel"),
            json!({"reason": "not needed"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "cancelled");
    // The sleeping tool is gone.
    assert_pid_gone(&pidfile).await;

    // Cancelling a parent cancels its sub-workflow, and the tool in it.
    std::fs::remove_file(&pidfile).unwrap();
    let nested = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: nested, org: acme}
spec:
  version: "1"
  nodes:
    - {name: inner, workflow: {name: sleepy}}
"#;
    let (status, body) = env.apply(&root, nested, "").await;
    assert_eq!(status, 200, "{body}");
    let id = start(env, &root, "nested", json!({})).await;
    node_reaches(env, &root, &id, "inner", "running").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pidfile.exists() {
        assert!(Instant::now() < deadline, "the inner tool never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = env
        .post(&root, &format!("/v1/orgs/acme/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "cancelled");
    assert_pid_gone(&pidfile).await;

    // An org policy over a call's input: the clerk may echo small numbers
    // only; the decision and the policy that made it are on record.
    let clerk = r#"
apiVersion: charter.dev/v1
kind: Subject
metadata: {name: clerk, org: acme}
spec: {kind: user, displayName: Clerk}
---
apiVersion: charter.dev/v1
kind: Role
metadata: {name: echoer, org: acme}
spec:
  rules: [{actions: [run, get], resources: [WorkflowRun]}]
  tools: ["util.*"]
---
apiVersion: charter.dev/v1
kind: RoleBinding
metadata: {name: clerk-echoer, org: acme}
spec: {subject: clerk, role: echoer}
---
apiVersion: charter.dev/v1
kind: Policy
metadata: {name: small-echoes, org: acme}
spec:
  policy: |
    forbid(principal, action == Charter::Action::"call", resource)
    when { resource.name == "util.echo" && context.numbers.hasTag("n") && context.numbers.getTag("n") > 100 };
---
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: echo-n, org: acme}
spec:
  version: "1"
  input: {type: object, required: [n], properties: {n: {type: integer}}}
  nodes:
    - {name: say, tool: util.echo, input: {n: input.n}}
"#;
    let (status, body) = env.apply(&root, clerk, "").await;
    assert_eq!(status, 200, "{body}");
    let clerk = env.token("acme:clerk", "1h");
    let id = start(env, &clerk, "echo-n", json!({"n": 5})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let id = start(env, &clerk, "echo-n", json!({"n": 500})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["error"]["code"], "forbidden", "{run}");
    let (_, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    let started = first_started(&trace);
    let decision = &started["data"]["checks"]["authorization"];
    assert_eq!(
        decision["forbiddenBy"],
        json!(["small-echoes#0"]),
        "{decision}"
    );

    // Built-in steps one after the other: each is authorized, checked,
    // charged and recorded as if taken alone, and a step the policy
    // forbids stops the run there, with its decision on record.
    let chain = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: echo-chain, org: acme}
spec:
  version: "1"
  input: {type: object, required: [n], properties: {n: {type: integer}}}
  nodes:
    - {name: a, tool: util.echo, input: {n: input.n}}
    - {name: b, needs: [a], tool: util.echo, input: {n: "nodes.a.output.n + 100"}}
    - {name: c, needs: [b], tool: util.echo, input: {n: "nodes.b.output.n + 1"}}
  output: "nodes.c.output.n"
"#;
    let (status, body) = env.apply(&root, chain, "").await;
    assert_eq!(status, 200, "{body}");
    let id = start(env, &clerk, "echo-chain", json!({"n": 1})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["code"], "forbidden", "{run}");
    let (_, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    let claims: Vec<&Value> = trace
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "NodeStarted")
        .collect();
    assert_eq!(claims.len(), 2, "{trace}");
    assert_eq!(claims[0]["data"]["node"], "a");
    assert_eq!(
        claims[0]["data"]["checks"]["authorization"]["allowed"],
        true
    );
    assert_eq!(claims[0]["data"]["checks"]["contract"]["callsUsed"], 1);
    assert_eq!(claims[1]["data"]["node"], "b");
    assert_eq!(
        claims[1]["data"]["checks"]["authorization"]["forbiddenBy"],
        json!(["small-echoes#0"]),
        "{trace}"
    );
    // A run of built-ins alone is done in the append that starts it: the
    // start's answer lists all it recorded.
    let (status, started) = env
        .post(
            &root,
            "/v1/orgs/acme/workflows/echo-chain/runs",
            json!({"input": {"n": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let recorded: Vec<&str> = started["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(recorded.first(), Some(&"Started"), "{started}");
    assert_eq!(recorded.last(), Some(&"Completed"), "{started}");
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], 102, "{run}");
    let (_, trace) = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await;
    let trace = trace.as_array().unwrap();
    let versions: Vec<u64> = trace
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, (1..=trace.len() as u64).collect::<Vec<_>>());
    let steps: Vec<(&str, &str, u64)> = trace
        .iter()
        .filter(|e| e["type"] == "NodeStarted")
        .map(|e| {
            let checks = &e["data"]["checks"];
            assert_eq!(checks["input"]["valid"], true, "{e}");
            assert_eq!(checks["version"], "1", "{e}");
            (
                e["data"]["node"].as_str().unwrap(),
                checks["tool"].as_str().unwrap(),
                checks["contract"]["callsUsed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("a", "util.echo", 1),
            ("b", "util.echo", 2),
            ("c", "util.echo", 3)
        ]
    );
    // They went in one append with the start: on PostgreSQL a position is
    // its transaction's id shifted left by 20, plus the event's place in
    // it.
    let transactions: std::collections::BTreeSet<u64> = trace
        .iter()
        .map(|e| e["position"].as_u64().unwrap() >> 20)
        .collect();
    assert_eq!(transactions.len(), 1, "{trace:?}");
    let position = trace.last().unwrap()["position"].as_u64().unwrap();
    let (_, contract) = env
        .get(
            &format!("/v1/orgs/acme/runs/{id}/contract?minPosition={position}"),
            &root,
        )
        .await;
    assert_eq!(contract["callsUsed"], 3, "{contract}");
    assert_eq!(contract["closed"], true, "{contract}");
    let chained = counter(env, "charter_engine_steps_in_one_append_total").await;
    assert!(chained >= 2.0, "steps in one append: {chained}");

    // A timer, then a sub-workflow: the parent waits for its child's run
    // and takes its output.
    let parent = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: parent, org: acme}
spec:
  version: "1"
  input: {type: object, required: [text]}
  nodes:
    - {name: pause, wait: 200ms}
    - name: child
      needs: [pause]
      workflow: {name: text-report}
      input: {text: input.text}
  output: "nodes.child.output"
"#;
    let (status, body) = env.apply(&root, parent, "").await;
    assert_eq!(status, 200, "{body}");
    let id = start(env, &root, "parent", json!({"text": "one two"})).await;
    let run = finished(env, &root, &id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"]["words"], 2, "{run}");
    let (_, runs) = env
        .get("/v1/orgs/acme/runs?first=100&workflow=text-report", &root)
        .await;
    assert!(
        runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["parent"].as_str().is_some_and(|p| p.starts_with(&id))),
        "the child run names its parent: {runs}"
    );

    // The trace long-poll with `until=end`: one answer, once the run's
    // last event is there, however many came while it waited.
    let id = start(env, &root, "parent", json!({"text": "a b c"})).await;
    let events = format!("/v1/orgs/acme/runs/{id}/events");
    let (status, trace) = env
        .get(&format!("{events}?after=1&until=end&waitMs=30000"), &root)
        .await;
    assert_eq!(status, 200, "{trace}");
    let trace = trace.as_array().unwrap().clone();
    let versions: Vec<u64> = trace
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    let last = *versions.last().unwrap();
    assert_eq!(versions, (2..=last).collect::<Vec<_>>(), "{trace:?}");
    assert_eq!(trace.last().unwrap()["type"], "Completed", "{trace:?}");
    assert!(trace.iter().any(|e| e["type"] == "TimerFired"), "{trace:?}");
    // After the last event there is nothing to wait for.
    let asked = Instant::now();
    let (status, rest) = env
        .get(
            &format!("{events}?after={last}&until=end&waitMs=30000"),
            &root,
        )
        .await;
    assert_eq!((status, rest), (200, json!([])));
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "it did not wait out the 30 s"
    );
    // Nor past the end.
    let (status, rest) = env
        .get(
            &format!("{events}?after={}&until=end&waitMs=30000", last + 5),
            &root,
        )
        .await;
    assert_eq!((status, rest), (200, json!([])));
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    // `limit` still bounds the answer.
    let (_, first) = env
        .get(&format!("{events}?until=end&limit=2&waitMs=30000"), &root)
        .await;
    assert_eq!(first.as_array().unwrap().len(), 2, "{first}");
    let (status, body) = env.get(&format!("{events}?until=never"), &root).await;
    assert_eq!((status, code(&body)), (400, "bad_request"), "{body}");

    // GraphQL: start a run, follow it live over the subscription and over
    // the REST WebSocket, then read it with its trace and contract.
    let answer = env
        .graphql(
            Some(&root),
            r#"mutation { startRun(org: "acme", workflow: "text-report", run: {input: {text: "to be or not"}}) { id position } }"#,
        )
        .await;
    let id = answer["data"]["startRun"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"))
        .to_owned();
    let live = subscribe(env, &root, &id).await;
    assert_eq!(
        live.first().map(String::as_str),
        Some("Started"),
        "{live:?}"
    );
    assert_eq!(
        live.last().map(String::as_str),
        Some("Completed"),
        "{live:?}"
    );
    let watched = watch(env, &root, &id).await;
    assert_eq!(watched, live, "both live traces tell the same story");
    let position = env
        .get(&format!("/v1/orgs/acme/runs/{id}/events"), &root)
        .await
        .1
        .as_array()
        .unwrap()
        .last()
        .unwrap()["position"]
        .as_u64()
        .unwrap();
    let answer = env
        .graphql(
            Some(&root),
            &format!(
                r#"{{ organization(name: "acme", minPosition: {position}) {{ run(id: "{id}") {{ status output nodes {{ name status }} trace {{ type }} contract {{ callsUsed tools {{ name version }} }} }} }} }}"#
            ),
        )
        .await;
    let run = &answer["data"]["organization"]["run"];
    assert_eq!(run["status"], "succeeded", "{answer}");
    assert_eq!(run["output"]["words"], 4);
    assert_eq!(run["contract"]["callsUsed"], 2);
    assert_eq!(run["trace"].as_array().unwrap().len(), live.len());
    let answer = env
        .graphql(
            Some(&root),
            &format!(r#"mutation {{ cancelRun(org: "acme", id: "{id}") {{ events }} }}"#),
        )
        .await;
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "run_ended",
        "{answer}"
    );

    // Another org sees none of it.
    let (status, body) = env.apply(&root, GLOBEX, "").await;
    assert_eq!(status, 200, "{body}");
    let gina = env.token("globex:gina", "1h");
    for path in [
        format!("/v1/orgs/acme/runs/{id}"),
        format!("/v1/orgs/acme/runs/{id}/events"),
        format!("/v1/orgs/acme/runs/{id}/contract"),
        "/v1/orgs/acme/runs".to_owned(),
        "/v1/orgs/acme/workflows/text-report".to_owned(),
    ] {
        let (status, body) = env.get(&path, &gina).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = env
        .post(
            &gina,
            "/v1/orgs/acme/workflows/text-report/runs",
            json!({"input": {"text": "x"}}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = env
        .post(&gina, &format!("/v1/orgs/acme/runs/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);
    let (_, runs) = env.get("/v1/orgs/acme/runs?first=100", &root).await;
    assert!(runs["items"].as_array().unwrap().len() >= 6, "{runs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_the_embedded_default() {
    let env = Env::start(TempDir::new(), vec![]);
    scenario(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_postgres_and_jetstream() {
    let (_schema, _stream, settings) = postgres_and_jetstream("runs");
    let env = Env::start(TempDir::new(), settings);
    scenario(&env).await;
}

/// One worker slot, many runs started at once: a run whose first node
/// calls a process waits for the slot on the queue, one whose nodes call
/// built-ins runs in hand without it, and every run completes.
async fn one_slot(env: &Env) {
    let root = env.token("root", "1h");
    acme_with_tools(env, &root, &[WORDCOUNT, ECHO]).await;
    let echoes = r#"
apiVersion: charter.dev/v1
kind: Workflow
metadata: {name: echoes, org: acme}
spec:
  version: "1"
  nodes:
    - {name: a, tool: util.echo, input: {n: "input.n"}}
    - {name: b, needs: [a], tool: util.echo, input: {n: "nodes.a.output.n + 1"}}
  output: "nodes.b.output.n"
"#;
    for manifest in [REPORT, echoes] {
        let (status, body) = env.apply(&root, manifest, "").await;
        assert_eq!(status, 200, "{body}");
    }
    let mut started = Vec::new();
    for i in 0..6 {
        started.push((
            "text-report",
            i,
            start(env, &root, "text-report", json!({"text": "a b c"})).await,
        ));
        started.push((
            "echoes",
            i,
            start(env, &root, "echoes", json!({"n": i})).await,
        ));
    }
    for (workflow, i, id) in started {
        let run = finished(env, &root, &id).await;
        assert_eq!(run["status"], "succeeded", "{workflow} {i}: {run}");
        match workflow {
            "echoes" => assert_eq!(run["output"], json!(i + 1), "{run}"),
            _ => assert_eq!(run["output"]["words"], 3, "{run}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_slot_serves_many_runs_embedded() {
    let env = Env::start(TempDir::new(), vec![("CHARTER_WORKERS", "1".to_owned())]);
    one_slot(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_slot_serves_many_runs_on_postgres_and_jetstream() {
    let (_schema, _stream, mut settings) = postgres_and_jetstream("oneslot");
    settings.push(("CHARTER_WORKERS", "1".to_owned()));
    let env = Env::start(TempDir::new(), settings);
    one_slot(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_workflow_prints_its_figures() {
    let env = Env::start(TempDir::new(), vec![]);
    let root = env.token("root", "1h");
    for (follow, process) in [(false, false), (true, false), (false, true)] {
        let mut command = charter_tests::charter_command(&env.dir.0);
        command
            .env("CHARTER_SERVER", env.server.url(""))
            .env("CHARTER_TOKEN", &root)
            .args([
                "bench",
                "workflow",
                "--runs",
                "30",
                "--steps",
                "3",
                "--concurrency",
                "4",
            ]);
        if follow {
            command.arg("--follow-trace");
        }
        if process {
            command.arg("--process");
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let figures: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(figures["runs"], 30, "{figures}");
        assert_eq!(figures["failed"], 0, "{figures}");
        assert_eq!(figures["concurrency"], 4);
        assert_eq!(figures["followed_trace"], follow, "{figures}");
        // Built-in steps only: each run is done in its start's commit; a
        // process tool runs in a worker, after the start.
        let at_start = if process { 0 } else { 30 };
        assert_eq!(figures["ended_at_start"], at_start, "{figures}");
        assert_eq!(
            figures["tool"],
            if process { "process" } else { "builtin" },
            "{figures}"
        );
        for key in ["runs_per_sec", "p50_ms", "p99_ms"] {
            assert!(figures[key].as_f64().unwrap() > 0.0, "{key} in {figures}");
        }
    }
}
