//! The command-line client: `charter apply`, `diff` and `get` talk to a
//! running server over REST, with the server from `--server` or
//! `CHARTER_SERVER` and the credential from `CHARTER_TOKEN`.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// Where the server is unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// A server and a credential.
pub struct Client {
    server: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A failed request, as the server explained it.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct ServerError {
    pub status: u16,
    pub code: String,
    pub detail: String,
    pub details: Option<Value>,
}

impl Client {
    pub fn new(server: Option<String>, token: Option<String>) -> anyhow::Result<Self> {
        let server = server
            .unwrap_or_else(|| DEFAULT_SERVER.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !server.starts_with("http://") {
            bail!("the server must be an http:// URL, not `{server}`");
        }
        Ok(Self {
            server,
            token: token.filter(|t| !t.trim().is_empty()),
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()?,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.server))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let text = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        Err(ServerError {
            status: status.as_u16(),
            code: text("code"),
            detail: text("detail"),
            details: body.get("details").cloned(),
        }
        .into())
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.server)).json(body))
            .await
    }

    /// The org a command acts in: the one given, else the credential's own.
    pub async fn org(&self, given: Option<String>) -> anyhow::Result<String> {
        if let Some(org) = given {
            return Ok(org);
        }
        let me = self.get("/v1/whoami", &[]).await?;
        me["org"]
            .as_str()
            .map(str::to_owned)
            .context("root belongs to no org: name one with --org")
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.server)).query(query))
            .await
    }

    pub async fn apply(
        &self,
        documents: &[Value],
        dry_run: bool,
        force: bool,
    ) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(documents)?;
        self.send(
            self.http
                .post(format!("{}/v1/apply", self.server))
                .query(&[("dryRun", dry_run), ("force", force)])
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }
}

/// The manifest documents of a file or of every manifest file in a
/// directory, checked offline first so that a typo never reaches the
/// server.
pub fn read_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    if let Err(errors) = crate::manifests::read(path) {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!("{}\nnothing was applied", lines.join("\n"));
    }
    let mut documents = Vec::new();
    for file in crate::manifests::files(path).map_err(|e| anyhow::anyhow!("{e}"))? {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        documents.extend(
            crate::manifests::documents(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
                .into_iter()
                .filter(|d| !d.is_null()),
        );
    }
    Ok(documents)
}

/// One line per object: `created Role acme/editor`.
pub fn print_apply(report: &Value, dry_run: bool) {
    for item in report["items"].as_array().into_iter().flatten() {
        let s = |k: &str| item[k].as_str().unwrap_or("");
        let outcome = s("outcome");
        let commands: Vec<&str> = item["commands"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if dry_run {
            let mark = match outcome {
                "created" => "+ would create",
                "updated" => "~ would update",
                _ => "= unchanged",
            };
            let how = if commands.is_empty() {
                String::new()
            } else {
                format!(" ({})", commands.join(", "))
            };
            println!("{mark} {} {}/{}{how}", s("kind"), s("org"), s("name"));
        } else {
            println!("{outcome} {} {}/{}", s("kind"), s("org"), s("name"));
        }
    }
}

/// The REST path of a kind (`orgs`, `roles`, …) and whether it lives in
/// an org.
pub fn kind_path(kind: &str) -> anyhow::Result<(&'static str, bool)> {
    Ok(match kind.to_ascii_lowercase().as_str() {
        "org" | "orgs" | "organization" | "organizations" => ("orgs", false),
        "subject" | "subjects" => ("subjects", true),
        "role" | "roles" => ("roles", true),
        "rolebinding" | "rolebindings" | "binding" | "bindings" => ("rolebindings", true),
        "policy" | "policies" => ("policies", true),
        "jobspace" | "jobspaces" => ("jobspaces", true),
        "audit" | "auditlog" => ("audit", true),
        "tool" | "tools" => ("tools", true),
        "workflow" | "workflows" => ("workflows", true),
        "run" | "runs" | "workflowrun" | "workflowruns" => ("runs", true),
        other => bail!(
            "unknown kind `{other}` (orgs, subjects, roles, rolebindings, policies, jobspaces, tools, workflows, runs, audit)"
        ),
    })
}

/// Prints objects as a table (name and a few columns), JSON or YAML.
pub fn print_objects(value: &Value, output: &str) -> anyhow::Result<()> {
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(value)?),
        "yaml" => print!("{}", serde_saphyr::to_string(value)?),
        "table" => {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Object(map) if map.contains_key("items") => {
                    map["items"].as_array().into_iter().flatten().collect()
                }
                other => vec![other],
            };
            let columns: &[&str] = match items.first() {
                Some(first) if first.get("lifecycle").is_some() => {
                    &["name", "displayName", "lifecycle", "parent"]
                }
                Some(first) if first.get("disabled").is_some() => {
                    &["name", "kind", "displayName", "disabled"]
                }
                Some(first) if first.get("rules").is_some() => &["name", "description"],
                Some(first) if first.get("subject").is_some() && first.get("role").is_some() => {
                    &["name", "subject", "role", "jobSpace"]
                }
                Some(first) if first.get("policyVersion").is_some() => &["name", "policyVersion"],
                Some(first) if first.get("principal").is_some() => {
                    &["at", "principal", "action", "kind", "resource", "reason"]
                }
                Some(first)
                    if first.get("latestApproved").is_some()
                        || first
                            .get("versions")
                            .is_some_and(|v| v[0].get("status").is_some()) =>
                {
                    &["name", "latestApproved"]
                }
                Some(first) if first.get("startedBy").is_some() => {
                    &["id", "workflow", "status", "startedBy", "startedAt"]
                }
                Some(first) if first.get("versions").is_some() => &["name", "latest"],
                _ => &["name", "displayName"],
            };
            let cell = |item: &Value, column: &str| match &item[column] {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let widths: Vec<usize> = columns
                .iter()
                .map(|c| {
                    items
                        .iter()
                        .map(|i| cell(i, c).chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let line = |cells: Vec<String>| {
                cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned()
            };
            println!(
                "{}",
                line(columns.iter().map(|c| c.to_ascii_uppercase()).collect())
            );
            for item in items {
                println!("{}", line(columns.iter().map(|c| cell(item, c)).collect()));
            }
        }
        other => bail!("unknown output `{other}` (json, yaml or table)"),
    }
    Ok(())
}
