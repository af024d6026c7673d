//! `charter bench workflow`: drives a running server over HTTP with real,
//! authorized workflow runs and measures runs per second and the latency
//! from a run's start request to its completion (its `Completed` event).
//!
//! Set-up (as root, `CHARTER_TOKEN`): a fresh org with a service account
//! that may run workflows and call `bench.*` tools, an API key for it, the
//! built-in no-op tool `bench.noop` (approved) and a workflow of `--steps`
//! sequential calls to it. With `process`, the tool is a process instead
//! (`sh -c 'cat >/dev/null; echo {}'`), so that every step goes the way of
//! real tools: queued or taken in hand, claimed and charged in one append,
//! run by a worker, its outcome recorded in another. Each of `--concurrency` tasks then starts a run
//! and, unless the start's answer already lists the run's last event (a
//! run of built-in steps only is done in the start's own commit), follows
//! its trace until it completes (the server's long-poll with `until=end`,
//! woken by commits, answers once the run's last event is there), then
//! starts the next. With `follow_trace` every run's trace is followed, as
//! a client watching it would. Every run is durable: each step is
//! scheduled, claimed, charged to the run's contract and recorded.
//!
//! `charter bench tool-call` measures, in process, what the executor adds
//! to a bare process spawn: limits, scrubbing, pipes, schema checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::bench_commands::{apply_as_root, issue_key, percentile, post};

#[derive(Debug, Clone)]
pub struct Plan {
    pub server: String,
    pub root_token: String,
    pub runs: usize,
    pub steps: usize,
    pub concurrency: usize,
    /// Follow each run's trace even when the start's answer shows it ended.
    pub follow_trace: bool,
    /// Steps call a process tool rather than the built-in no-op.
    pub process: bool,
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub async fn run(plan: Plan) -> anyhow::Result<Value> {
    if plan.runs == 0 || plan.concurrency == 0 || plan.steps == 0 || plan.steps > 50 {
        bail!("--runs and --concurrency must be at least 1, --steps 1 to 50");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency * 2)
        .timeout(Duration::from_secs(60))
        .build()?;
    let base = plan.server.trim_end_matches('/').to_owned();
    let org = format!("bench-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let nodes: Vec<String> = (1..=plan.steps)
        .map(|i| {
            if i == 1 {
                "    - {name: s1, tool: bench.noop}".to_owned()
            } else {
                format!(
                    "    - {{name: s{i}, needs: [s{}], tool: bench.noop}}",
                    i - 1
                )
            }
        })
        .collect();
    let runtime = if plan.process {
        "{process: {command: [sh, -c, \"cat > /dev/null; echo '{}'\"]}}"
    } else {
        "{builtin: noop}"
    };
    let setup = format!(
        "apiVersion: charter.dev/v1
kind: Organization
metadata: {{name: {org}}}
spec: {{displayName: Workflow benchmark}}
---
apiVersion: charter.dev/v1
kind: Subject
metadata: {{name: bencher, org: {org}}}
spec: {{kind: service_account, displayName: Benchmark driver}}
---
apiVersion: charter.dev/v1
kind: Role
metadata: {{name: runner, org: {org}}}
spec:
  rules: [{{actions: [run, get, list], resources: [WorkflowRun]}}]
  tools: [\"bench.*\"]
---
apiVersion: charter.dev/v1
kind: RoleBinding
metadata: {{name: bencher-runner, org: {org}}}
spec: {{subject: bencher, role: runner}}
---
apiVersion: charter.dev/v1
kind: Tool
metadata: {{name: bench.noop, org: {org}}}
spec:
  version: \"1\"
  runtime: {runtime}
"
    );
    apply_as_root(&http, &base, &plan.root_token, setup).await?;
    post(
        &http,
        &format!("{base}/v1/orgs/{org}/tools/bench.noop/versions/1/approve"),
        &plan.root_token,
        &Value::Null,
    )
    .await?;
    let flow = format!(
        "apiVersion: charter.dev/v1
kind: Workflow
metadata: {{name: steps, org: {org}}}
spec:
  version: \"1\"
  concurrency: 1
  nodes:
{}
",
        nodes.join("\n")
    );
    apply_as_root(&http, &base, &plan.root_token, flow).await?;
    let key = issue_key(&http, &base, &plan.root_token, &org).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let ended_at_start = Arc::new(AtomicU64::new(0));
    let follow_trace = plan.follow_trace;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..plan.concurrency {
        let (http, base, org, key, next, failed, runs) = (
            http.clone(),
            base.clone(),
            org.clone(),
            Arc::clone(&key),
            Arc::clone(&next),
            Arc::clone(&failed),
            plan.runs,
        );
        let ended_at_start = Arc::clone(&ended_at_start);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let start_url = format!("{base}/v1/orgs/{org}/workflows/steps/runs");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    break;
                }
                let sent = Instant::now();
                let outcome = async {
                    let started = post(&http, &start_url, &key, &json!({"input": {}})).await?;
                    let id = started["id"].as_str().context("no run id")?.to_owned();
                    let last = started["events"]
                        .as_array()
                        .and_then(|events| events.last())
                        .and_then(Value::as_str);
                    if let Some(end @ ("Completed" | "Failed" | "Cancelled")) = last {
                        ended_at_start.fetch_add(1, Ordering::Relaxed);
                        if end != "Completed" {
                            bail!("run {id} ended at its start: {end}");
                        }
                        if !follow_trace {
                            return Ok(());
                        }
                    }
                    let events_url = format!("{base}/v1/orgs/{org}/runs/{id}/events");
                    let mut after = 0u64;
                    loop {
                        let response = http
                            .get(&events_url)
                            .bearer_auth(&*key)
                            .query(&[
                                ("after", after.to_string()),
                                ("waitMs", "10000".into()),
                                ("until", "end".into()),
                            ])
                            .send()
                            .await?;
                        let events: Value = response.json().await?;
                        for event in events.as_array().into_iter().flatten() {
                            after = event["version"].as_u64().unwrap_or(after);
                            match event["type"].as_str() {
                                Some("Completed") => return Ok(()),
                                Some("Failed" | "Cancelled") => {
                                    bail!("run {id} ended: {}", event["data"])
                                }
                                _ => {}
                            }
                        }
                        if sent.elapsed() > Duration::from_secs(60) {
                            bail!("run {id} did not complete within 60 s");
                        }
                    }
                }
                .await;
                match outcome {
                    Ok(()) => latencies.push(sent.elapsed().as_secs_f64() * 1000.0),
                    Err(error) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("run {i} failed: {error:#}");
                        }
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(plan.runs);
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let ok = latencies.len();
    Ok(json!({
        "steps": plan.steps,
        "failed": failed.load(Ordering::Relaxed),
        "org": org,
        "seconds": round(elapsed),
        "runs": ok,
        "concurrency": plan.concurrency,
        "ended_at_start": ended_at_start.load(Ordering::Relaxed),
        "followed_trace": follow_trace,
        "tool": if plan.process { "process" } else { "builtin" },
        "runs_per_sec": round(ok as f64 / elapsed),
        "p50_ms": round(percentile(&latencies, 50.0)),
        "p99_ms": round(percentile(&latencies, 99.0)),
    }))
}

/// One process-tool call through the executor against the same program
/// spawned bare, `calls` times each.
pub async fn tool_call(calls: usize) -> anyhow::Result<Value> {
    use charter_domain::OrgName;
    use charter_domain::tool::{ToolName, ToolSpec};
    use charter_executor::{Call, Executor, SecretDir};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    if calls == 0 {
        bail!("--calls must be at least 1");
    }
    let program = ["sh", "-c", "cat > /dev/null; echo '{}'"];
    let spec: ToolSpec = serde_json::from_value(json!({
        "version": "1",
        "input": {"type": "object"},
        "output": {"type": "object"},
        "runtime": {"process": {"command": program}},
        "limits": {"timeout": "10s"}
    }))?;
    let executor = Executor::new(Arc::new(SecretDir(std::env::temp_dir())));
    let org = OrgName::parse("bench")?;
    let tool = ToolName::parse("bench.cat")?;
    let input = json!({"text": "hello"});
    let mut bare = Vec::with_capacity(calls);
    let mut through = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(program[0])
            .args(&program[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input.to_string().as_bytes()).await?;
        }
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            stdout.read_to_string(&mut out).await?;
        }
        child.wait().await?;
        let _: Value = serde_json::from_str(&out)?;
        bare.push(started.elapsed().as_secs_f64() * 1000.0);

        let started = Instant::now();
        executor
            .call(Call {
                org: &org,
                tool: &tool,
                spec: &spec,
                input: &input,
                idempotency_key: "bench",
                scopes: &[],
            })
            .await
            .map_err(|f| anyhow::anyhow!("the tool call failed: {f}"))?;
        through.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    bare.sort_by(f64::total_cmp);
    through.sort_by(f64::total_cmp);
    let (b50, t50) = (percentile(&bare, 50.0), percentile(&through, 50.0));
    Ok(json!({
        "calls": calls,
        "bare_spawn_p50_ms": round(b50),
        "bare_spawn_p99_ms": round(percentile(&bare, 99.0)),
        "tool_call_p50_ms": round(t50),
        "tool_call_p99_ms": round(percentile(&through, 99.0)),
        "overhead_p50_ms": round(t50 - b50),
    }))
}
