//! `charter tool …` and `charter run …`: approving tools, starting runs,
//! watching their traces live, answering approvals, cancelling. Clients of
//! a running server, like `apply` and `get`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};

use crate::client::Client;

/// Reads a run's input: a JSON file, `-` for standard input, or `{}`.
pub fn read_input(path: Option<&Path>) -> anyhow::Result<Value> {
    let text = match path {
        None => return Ok(json!({})),
        Some(path) if path == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            text
        }
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
    };
    serde_json::from_str(&text).context("the input must be one JSON value")
}

pub async fn approve_tool(
    client: &Client,
    org: &str,
    name: &str,
    version: &str,
    revoke: Option<String>,
) -> anyhow::Result<()> {
    let (verb, body) = match revoke {
        Some(reason) => ("revoke", json!({"reason": reason})),
        None => ("approve", Value::Null),
    };
    let report = client
        .post(
            &format!("/v1/orgs/{org}/tools/{name}/versions/{version}/{verb}"),
            &body,
        )
        .await?;
    let changed = report["events"].as_array().is_some_and(|e| !e.is_empty());
    let done = if verb == "approve" {
        "approved"
    } else {
        "revoked"
    };
    println!(
        "tool {name} {version} {}",
        if changed { done } else { "unchanged" }
    );
    Ok(())
}

pub struct Start<'a> {
    pub org: &'a str,
    pub workflow: &'a str,
    pub input: Value,
    pub version: Option<String>,
    pub job_space: Option<String>,
}

pub async fn start(client: &Client, start: Start<'_>) -> anyhow::Result<String> {
    let started = client
        .post(
            &format!("/v1/orgs/{}/workflows/{}/runs", start.org, start.workflow),
            &json!({"input": start.input, "version": start.version, "jobSpace": start.job_space}),
        )
        .await?;
    let id = started["id"]
        .as_str()
        .context("the server did not name the run")?
        .to_owned();
    Ok(id)
}

/// One trace event as a line: time, type, node and what matters.
fn describe(event: &Value) -> String {
    let data = &event["data"];
    let kind = event["type"].as_str().unwrap_or("?");
    let at = event["at"].as_str().unwrap_or("");
    let at = at.get(11..23).unwrap_or(at);
    let node = data["node"].as_str().unwrap_or("");
    let detail = match kind {
        "Started" => format!(
            "workflow {} version {}",
            data["plan"]["workflow"].as_str().unwrap_or("?"),
            data["plan"]["spec"]["version"].as_str().unwrap_or("?")
        ),
        "NodeScheduled" => format!("attempt {} input {}", data["attempt"], data["input"]),
        "NodeStarted" => {
            let checks = &data["checks"];
            let allowed = checks["authorization"]["allowed"].as_bool();
            match allowed {
                Some(allowed) => format!(
                    "attempt {} by {} (authorized: {allowed}, contract: {}, input: {})",
                    data["attempt"],
                    data["worker"].as_str().unwrap_or("?"),
                    checks["contract"]["admitted"],
                    checks["input"]["valid"]
                ),
                None => format!("attempt {}", data["attempt"]),
            }
        }
        "NodeSucceeded" => format!("output {}", data["output"]),
        "AttemptFailed" => format!(
            "{}: {}{}",
            data["failure"]["code"].as_str().unwrap_or("?"),
            data["failure"]["message"].as_str().unwrap_or(""),
            if data["retryAt"].is_null() {
                String::new()
            } else {
                " (will retry)".to_owned()
            }
        ),
        "NodeFailed" | "Failed" => format!(
            "{}: {}",
            data["code"].as_str().unwrap_or("?"),
            data["message"].as_str().unwrap_or("")
        ),
        "NodeSkipped" => data["reason"].as_str().unwrap_or("").to_owned(),
        "ApprovalRequested" => format!(
            "{} (charter run approve <id> {node})",
            data["message"].as_str().unwrap_or("")
        ),
        "Approved" | "Rejected" => format!(
            "by {} {}",
            data["by"].as_str().unwrap_or("?"),
            data["comment"].as_str().unwrap_or("")
        ),
        "Completed" => format!("output {}", data["output"]),
        "Cancelled" => format!(
            "by {}: {}",
            data["by"].as_str().unwrap_or("?"),
            data["reason"].as_str().unwrap_or("")
        ),
        _ => String::new(),
    };
    format!("{at}  {kind:<18} {node:<12} {detail}")
        .trim_end()
        .to_owned()
}

/// Prints a run's trace as it happens, until the run ends. Fails when the
/// run did not succeed.
pub async fn watch(client: &Client, org: &str, id: &str) -> anyhow::Result<()> {
    let mut after = 0u64;
    loop {
        let events = client
            .get(
                &format!("/v1/orgs/{org}/runs/{id}/events"),
                &[("after", after.to_string()), ("waitMs", "10000".to_owned())],
            )
            .await?;
        for event in events.as_array().into_iter().flatten() {
            println!("{}", describe(event));
            after = event["version"].as_u64().unwrap_or(after);
            match event["type"].as_str() {
                Some("Completed") => return Ok(()),
                Some("Failed") => anyhow::bail!("run {id} failed"),
                Some("Cancelled") => anyhow::bail!("run {id} was cancelled"),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn answer(
    client: &Client,
    org: &str,
    id: &str,
    node: &str,
    reject: bool,
    comment: Option<String>,
) -> anyhow::Result<()> {
    let verb = if reject { "reject" } else { "approve" };
    client
        .post(
            &format!("/v1/orgs/{org}/runs/{id}/nodes/{node}/{verb}"),
            &json!({"comment": comment}),
        )
        .await?;
    println!("{node} {}", if reject { "rejected" } else { "approved" });
    Ok(())
}

pub async fn cancel(
    client: &Client,
    org: &str,
    id: &str,
    reason: Option<String>,
) -> anyhow::Result<()> {
    client
        .post(
            &format!("/v1/orgs/{org}/runs/{id}/cancel"),
            &json!({"reason": reason}),
        )
        .await?;
    println!("run {id} cancelled");
    Ok(())
}

pub async fn show(client: &Client, org: &str, id: &str, output: &str) -> anyhow::Result<()> {
    let run = client
        .get(&format!("/v1/orgs/{org}/runs/{id}"), &[])
        .await?;
    if output != "table" {
        return crate::client::print_objects(&run, output);
    }
    println!(
        "run {}  {} v{}  {}",
        run["id"].as_str().unwrap_or("?"),
        run["workflow"].as_str().unwrap_or("?"),
        run["workflowVersion"].as_str().unwrap_or("?"),
        run["status"].as_str().unwrap_or("?")
    );
    for node in run["nodes"].as_array().into_iter().flatten() {
        println!(
            "  {:<16} {:<17} attempts {}",
            node["name"].as_str().unwrap_or("?"),
            node["status"].as_str().unwrap_or("?"),
            node["attempts"]
        );
    }
    if !run["output"].is_null() {
        println!("output {}", run["output"]);
    }
    if !run["error"].is_null() {
        println!(
            "error {}: {}",
            run["error"]["code"].as_str().unwrap_or("?"),
            run["error"]["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

pub async fn contract(client: &Client, org: &str, id: &str) -> anyhow::Result<()> {
    let contract = client
        .get(&format!("/v1/orgs/{org}/runs/{id}/contract"), &[])
        .await?;
    crate::client::print_objects(&contract, "yaml")
}
