//! `charter bench commands`: drives a running server over HTTP with real,
//! authorized commands and measures throughput, latency, and the lag from a
//! command's response to its effect being visible in a query.
//!
//! Set-up (as root, `CHARTER_TOKEN`): a fresh org `bench-<id>` with a
//! subject `bencher` whose role may create and update subjects, and an API
//! key for it; the commands then run as `bencher`, so every one of them is
//! authenticated and authorized like any client's. With `--aggregates 0`
//! each command creates a new subject (a new stream); with `--aggregates K`
//! the commands rename K shared subjects, so tasks contend on the same
//! streams and the server must retry conflicts rather than fail them.
//! Every `--lag-every`th command is followed by polling its subject until
//! the query shows the change.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub server: String,
    pub root_token: String,
    pub concurrency: usize,
    pub commands: usize,
    pub aggregates: usize,
    pub lag_every: usize,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let response = http.post(url).bearer_auth(token).json(body).send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("HTTP {status}: {body}");
    }
    Ok(body)
}

/// Applies a benchmark's manifests with the root token.
pub(crate) async fn apply_as_root(
    http: &reqwest::Client,
    base: &str,
    root_token: &str,
    manifests: String,
) -> anyhow::Result<()> {
    let response = http
        .post(format!("{base}/v1/apply"))
        .bearer_auth(root_token)
        .header("content-type", "application/yaml")
        .body(manifests)
        .send()
        .await
        .with_context(|| format!("cannot reach the server at {base}"))?;
    if !response.status().is_success() {
        bail!(
            "setting up the benchmark failed (is CHARTER_TOKEN a root token?): {}",
            response.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

/// An API key for the benchmark's `bencher` subject.
pub(crate) async fn issue_key(
    http: &reqwest::Client,
    base: &str,
    root_token: &str,
    org: &str,
) -> anyhow::Result<Arc<str>> {
    let issued = post(
        http,
        &format!("{base}/v1/commands"),
        root_token,
        &json!({"kind": "Subject", "org": org, "name": "bencher",
                "command": {"type": "IssueApiKey", "keyId": "bench001"}}),
    )
    .await?;
    Ok(issued["apiKey"]
        .as_str()
        .context("the server gave no API key")?
        .into())
}

/// Runs the benchmark and returns its JSON figures.
pub async fn run(plan: Plan) -> anyhow::Result<Value> {
    if plan.concurrency == 0 || plan.commands == 0 {
        bail!("--concurrency and --commands must be at least 1");
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = plan.server.trim_end_matches('/').to_owned();
    let org = format!("bench-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let setup = format!(
        "apiVersion: charter.dev/v1
kind: Organization
metadata: {{name: {org}}}
spec: {{displayName: Benchmark}}
---
apiVersion: charter.dev/v1
kind: Subject
metadata: {{name: bencher, org: {org}}}
spec: {{kind: service_account, displayName: Benchmark driver}}
---
apiVersion: charter.dev/v1
kind: Role
metadata: {{name: subject-admin, org: {org}}}
spec:
  rules: [{{actions: [create, update, get, list], resources: [Subject]}}]
---
apiVersion: charter.dev/v1
kind: RoleBinding
metadata: {{name: bencher-admin, org: {org}}}
spec: {{subject: bencher, role: subject-admin}}
"
    );
    apply_as_root(&http, &base, &plan.root_token, setup).await?;
    let key = issue_key(&http, &base, &plan.root_token, &org).await?;
    for k in 0..plan.aggregates {
        post(
            &http,
            &format!("{base}/v1/commands"),
            &key,
            &json!({"kind": "Subject", "org": org, "name": format!("shared{k}"),
                    "command": {"type": "Create", "kind": "agent", "displayName": "shared"}}),
        )
        .await?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..plan.concurrency {
        let (http, base, org, key, next, failed, plan) = (
            http.clone(),
            base.clone(),
            org.clone(),
            Arc::clone(&key),
            Arc::clone(&next),
            Arc::clone(&failed),
            plan.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut lags = Vec::new();
            let url = format!("{base}/v1/commands");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= plan.commands {
                    break;
                }
                let (name, body) = if plan.aggregates == 0 {
                    let name = format!("s{i}");
                    let body = json!({"kind": "Subject", "org": org, "name": name,
                        "command": {"type": "Create", "kind": "agent", "displayName": format!("subject {i}")}});
                    (name, body)
                } else {
                    let name = format!("shared{}", i % plan.aggregates);
                    let body = json!({"kind": "Subject", "org": org, "name": name,
                        "command": {"type": "SetDisplayName", "displayName": format!("name {i}")}});
                    (name, body)
                };
                let sent = Instant::now();
                let (version, position) = match post(&http, &url, &key, &body).await {
                    Ok(report) => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        (
                            report["version"].as_u64().unwrap_or(u64::MAX),
                            report["position"].as_u64().unwrap_or(0),
                        )
                    }
                    Err(error) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("command {i} failed: {error}");
                        }
                        continue;
                    }
                };
                if plan.lag_every > 0 && i % plan.lag_every == 0 {
                    // Visible once a query asking for the command's
                    // position answers with the subject at (or past) the
                    // version the command produced.
                    let answered = Instant::now();
                    let get = format!(
                        "{base}/v1/orgs/{org}/subjects/{name}?minPosition={position}"
                    );
                    loop {
                        let seen = match http.get(&get).bearer_auth(&*key).send().await {
                            Ok(r) if r.status().is_success() => r
                                .json::<Value>()
                                .await
                                .ok()
                                .and_then(|v| v["meta"]["version"].as_u64())
                                .is_some_and(|v| v >= version),
                            _ => false,
                        };
                        if seen || answered.elapsed() > Duration::from_secs(10) {
                            lags.push(answered.elapsed().as_secs_f64() * 1000.0);
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            (latencies, lags)
        }));
    }
    let mut latencies = Vec::with_capacity(plan.commands);
    let mut lags = Vec::new();
    for task in tasks {
        let (l, g) = task.await?;
        latencies.extend(l);
        lags.extend(g);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    lags.sort_by(f64::total_cmp);
    let ok = latencies.len();
    let round = |v: f64| (v * 100.0).round() / 100.0;
    Ok(json!({
        "commands": ok,
        "failed": failed.load(Ordering::Relaxed),
        "concurrency": plan.concurrency,
        "aggregates": plan.aggregates,
        "org": org,
        "seconds": round(elapsed),
        "lag_samples": lags.len(),
        "projection_lag_p50_ms": round(percentile(&lags, 50.0)),
        "commands_per_sec": (ok as f64 / elapsed).round(),
        "p50_ms": round(percentile(&latencies, 50.0)),
        "p99_ms": round(percentile(&latencies, 99.0)),
        "projection_lag_p99_ms": round(percentile(&lags, 99.0)),
    }))
}
