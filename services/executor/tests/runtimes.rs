//! The runtimes against real processes and a real HTTP server: limits,
//! scrubbing, secrets, and every typed failure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use charter_domain::OrgName;
use charter_domain::tool::{SecretName, ToolName, ToolSpec};
use charter_executor::{Call, Executor, Failure, FailureCode, Secrets, Success};
use serde_json::{Value, json};

struct Fixed(HashMap<String, String>);

impl Secrets for Fixed {
    fn get(&self, org: &OrgName, name: &SecretName) -> Option<String> {
        self.0.get(&format!("{org}/{name}")).cloned()
    }
}

fn executor() -> Executor {
    let mut secrets = HashMap::new();
    secrets.insert("acme/api-token".to_owned(), "s3cr3t-value-42".to_owned());
    Executor::new(Arc::new(Fixed(secrets)))
}

fn spec(value: Value) -> ToolSpec {
    let mut base = json!({"version": "1.0.0", "limits": {"timeout": "10s"}});
    for (k, v) in value.as_object().unwrap() {
        base[k] = v.clone();
    }
    let spec: ToolSpec = serde_json::from_value(base).unwrap();
    spec.check().unwrap();
    spec
}

fn shell(script: &str) -> Value {
    json!({"process": {"command": ["sh", "tool.sh"], "script": {"file": "tool.sh", "source": script}}})
}

async fn call(spec: &ToolSpec, input: Value) -> Result<Success, Failure> {
    let org = OrgName::parse("acme").unwrap();
    let tool = ToolName::parse("test.tool").unwrap();
    executor()
        .call(Call {
            org: &org,
            tool: &tool,
            spec,
            input: &input,
            idempotency_key: "run-1/node-a",
            scopes: &["crm:read".to_owned()],
        })
        .await
}

async fn fails(spec: &ToolSpec, input: Value) -> Failure {
    match call(spec, input).await {
        Ok(success) => panic!("expected a failure, got {success:?}"),
        Err(failure) => failure,
    }
}

/// Waits until a process is gone (or a zombie nobody reaps yet).
async fn gone(pid: u32) -> bool {
    for _ in 0..50 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) if stat.split_whitespace().nth(2) == Some("Z") => return true,
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

const WORDCOUNT: &str = r#"
import json, sys
data = json.load(sys.stdin)
print(json.dumps({"words": len(data["text"].split())}))
"#;

#[tokio::test]
async fn a_python_tool_answers_json_that_matches_its_schema() {
    let spec = spec(json!({
        "input": {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}},
        "output": {"type": "object", "required": ["words"], "properties": {"words": {"type": "integer"}}},
        "runtime": {"process": {"command": ["python3", "main.py"], "script": {"file": "main.py", "source": WORDCOUNT}}},
        "limits": {"timeout": "10s", "memoryMb": 256}
    }));
    let success = call(&spec, json!({"text": "one two three"})).await.unwrap();
    assert_eq!(success.output, json!({"words": 3}));

    let failure = fails(&spec, json!({"text": 7})).await;
    assert_eq!(failure.code, FailureCode::InputSchemaMismatch);
    assert_eq!(failure.problems[0].path, "/text");
    assert!(!failure.retryable);
}

#[tokio::test]
async fn the_environment_holds_only_what_the_manifest_lists() {
    let spec = spec(json!({
        "runtime": {"process": {
            "command": ["python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"],
            "env": {"GREETING": "hello"},
            "secrets": {"API_TOKEN": "api-token"}
        }}
    }));
    let success = call(&spec, json!({})).await.unwrap();
    let env = success.output.as_object().unwrap();
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["CHARTER_IDEMPOTENCY_KEY"], "run-1/node-a");
    assert_eq!(env["CHARTER_TOOL"], "test.tool");
    assert_eq!(env["CHARTER_DATA_SCOPES"], "crm:read");
    // The secret reached the tool, and its value never leaves it.
    assert_eq!(env["API_TOKEN"], "[redacted]");
    let home = env["HOME"].as_str().unwrap();
    assert!(home.contains("charter-tool-"), "{home}");
    assert_eq!(env["TMPDIR"], env["HOME"]);
    assert!(
        !std::path::Path::new(home).exists(),
        "the working directory is removed after the call"
    );
    let allowed = [
        "GREETING",
        "API_TOKEN",
        "PATH",
        "HOME",
        "TMPDIR",
        "PWD",
        "SHLVL",
        "_",
        "LC_CTYPE",
        "CHARTER_TOOL",
        "CHARTER_TOOL_VERSION",
        "CHARTER_IDEMPOTENCY_KEY",
        "CHARTER_DATA_SCOPES",
    ];
    for key in env.keys() {
        assert!(allowed.contains(&key.as_str()), "leaked variable {key}");
    }
}

#[tokio::test]
async fn a_missing_secret_is_a_typed_failure_before_anything_runs() {
    let spec = spec(json!({
        "runtime": {"process": {"command": ["true"], "secrets": {"TOKEN": "nope"}}}
    }));
    let failure = fails(&spec, json!({})).await;
    assert_eq!(failure.code, FailureCode::SecretMissing);
    assert!(failure.message.contains("nope"));
}

#[tokio::test]
async fn a_tool_that_hangs_is_killed_with_everything_it_started() {
    let spec = spec(json!({
        "runtime": shell("sleep 1000 &\necho \"child $!\" >&2\nsleep 1000\n"),
        "limits": {"timeout": "300ms"}
    }));
    let failure = fails(&spec, json!({})).await;
    assert_eq!(failure.code, FailureCode::Timeout);
    assert!(failure.retryable);
    let pid: u32 = failure
        .stderr
        .trim()
        .strip_prefix("child ")
        .unwrap_or_else(|| panic!("stderr: {:?}", failure.stderr))
        .parse()
        .unwrap();
    assert!(
        gone(pid).await,
        "the background child {pid} outlived the call"
    );
}

#[tokio::test]
async fn a_tool_that_floods_its_output_is_stopped() {
    let spec = spec(json!({
        "runtime": {"process": {"command": ["yes"]}},
        "limits": {"timeout": "20s", "outputBytes": 4096}
    }));
    let failure = fails(&spec, json!({})).await;
    assert_eq!(failure.code, FailureCode::OutputTooLarge);
    assert!(failure.message.contains("stdout"), "{}", failure.message);
    let spec = self::spec(json!({
        "runtime": shell("yes err >&2"),
        "limits": {"timeout": "20s", "outputBytes": 4096}
    }));
    let failure = fails(&spec, json!({})).await;
    assert_eq!(failure.code, FailureCode::OutputTooLarge);
    assert!(failure.message.contains("stderr"), "{}", failure.message);
    assert!(failure.stderr.len() <= 2100);
}

#[tokio::test]
async fn exit_status_output_and_schema_failures_are_typed() {
    let failure = fails(
        &spec(json!({"runtime": shell("echo 'bad thing' >&2\nexit 3")})),
        json!({}),
    )
    .await;
    assert_eq!(failure.code, FailureCode::ExitNonZero);
    assert_eq!(failure.status, Some(3));
    assert!(failure.stderr.contains("bad thing"), "{:?}", failure.stderr);

    let failure = fails(&spec(json!({"runtime": shell("echo hello")})), json!({})).await;
    assert_eq!(failure.code, FailureCode::OutputNotJson);
    assert!(!failure.retryable);

    let failure = fails(&spec(json!({"runtime": shell("true")})), json!({})).await;
    assert_eq!(failure.code, FailureCode::OutputNotJson);
    assert!(failure.message.contains("nothing"));

    let failure = fails(
        &spec(json!({
            "runtime": shell("echo '{\"count\": \"many\"}'"),
            "output": {"type": "object", "properties": {"count": {"type": "integer"}}}
        })),
        json!({}),
    )
    .await;
    assert_eq!(failure.code, FailureCode::OutputSchemaMismatch);
    assert_eq!(failure.problems[0].path, "/count");

    let failure = fails(
        &spec(json!({"runtime": {"process": {"command": ["/no/such/program"]}}})),
        json!({}),
    )
    .await;
    assert_eq!(failure.code, FailureCode::ExitNonZero);
    assert_eq!(failure.status, Some(127));
}

#[tokio::test]
async fn cpu_and_memory_limits_hold() {
    let failure = fails(
        &spec(json!({
            "runtime": shell("while :; do :; done"),
            "limits": {"timeout": "20s", "cpu": "1s"}
        })),
        json!({}),
    )
    .await;
    assert_eq!(failure.code, FailureCode::CpuLimitExceeded);

    let failure = fails(
        &spec(json!({
            "runtime": {"process": {"command": ["python3", "-c", "x = bytearray(512 * 1024 * 1024)\nprint('{}')"]}},
            "limits": {"timeout": "20s", "memoryMb": 128}
        })),
        json!({}),
    )
    .await;
    assert_eq!(failure.code, FailureCode::ExitNonZero);
    assert!(
        failure.stderr.contains("MemoryError"),
        "{:?}",
        failure.stderr
    );
}

#[tokio::test]
async fn dropping_a_call_kills_its_processes() {
    let pidfile = tempfile::NamedTempFile::new().unwrap();
    let spec = spec(json!({
        "runtime": {"process": {
            "command": ["sh", "-c", "echo $$ > \"$PIDFILE\"; exec sleep 1000"],
            "env": {"PIDFILE": pidfile.path().to_str().unwrap()}
        }},
        "limits": {"timeout": "60s"}
    }));
    let cancelled = tokio::time::timeout(Duration::from_millis(500), call(&spec, json!({}))).await;
    assert!(
        cancelled.is_err(),
        "the call should still have been running"
    );
    let pid: u32 = std::fs::read_to_string(pidfile.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone(pid).await, "process {pid} outlived its cancelled call");
}

#[tokio::test]
async fn builtins_answer_in_process() {
    let success = call(
        &spec(json!({"runtime": {"builtin": "noop"}})),
        json!({"a": 1}),
    )
    .await
    .unwrap();
    assert_eq!(success.output, json!({}));
    let success = call(
        &spec(json!({"runtime": {"builtin": "echo"}})),
        json!({"a": 1}),
    )
    .await
    .unwrap();
    assert_eq!(success.output, json!({"a": 1}));
    let failure = fails(
        &spec(json!({"runtime": {"agent": {"capability": "summarize"}}})),
        json!({}),
    )
    .await;
    assert_eq!(failure.code, FailureCode::AgentRuntime);
}

#[tokio::test]
async fn http_tools_send_json_and_secrets_and_type_their_failures() {
    use axum::Json;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, post};

    let app = axum::Router::new()
        .route(
            "/refund",
            post(|headers: HeaderMap, Json(body): Json<Value>| async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                Json(json!({"refunded": body["amount"], "token": token, "key": key}))
            }),
        )
        .route(
            "/broken",
            post(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .route("/text", post(|| async { "not json" }))
        .route("/big", post(|| async { "x".repeat(10_000) }))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "{}"
            }),
        )
        .route(
            "/lookup",
            get(
                |axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                    Json(json!({"query": q}))
                },
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoint = |path: &str, extra: Value| {
        let mut http = json!({"url": format!("http://{address}{path}"), "secrets": {"Authorization": "api-token"}});
        for (k, v) in extra.as_object().unwrap() {
            http[k] = v.clone();
        }
        spec(json!({"runtime": {"http": http}, "limits": {"timeout": "1s", "outputBytes": 4096}}))
    };

    let success = call(&endpoint("/refund", json!({})), json!({"amount": 12}))
        .await
        .unwrap();
    assert_eq!(success.output["refunded"], 12);
    assert_eq!(success.output["token"], "[redacted]");
    assert_eq!(success.output["key"], "run-1/node-a");

    let success = call(
        &endpoint("/lookup", json!({"method": "GET"})),
        json!({"id": 7, "q": "a b"}),
    )
    .await
    .unwrap();
    assert_eq!(success.output["query"], "id=7&q=a+b");

    let failure = fails(&endpoint("/broken", json!({})), json!({})).await;
    assert_eq!(failure.code, FailureCode::HttpStatus);
    assert_eq!(failure.status, Some(502));
    assert!(failure.retryable);
    assert_eq!(failure.stderr, "upstream down");

    let failure = fails(&endpoint("/text", json!({})), json!({})).await;
    assert_eq!(failure.code, FailureCode::OutputNotJson);
    let failure = fails(&endpoint("/big", json!({})), json!({})).await;
    assert_eq!(failure.code, FailureCode::OutputTooLarge);
    let failure = fails(&endpoint("/slow", json!({})), json!({})).await;
    assert_eq!(failure.code, FailureCode::Timeout);

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let spec = spec(json!({"runtime": {"http": {"url": format!("http://{dead}/x")}}}));
    let failure = fails(&spec, json!({})).await;
    assert_eq!(failure.code, FailureCode::Unreachable);
    assert!(failure.retryable);
}
