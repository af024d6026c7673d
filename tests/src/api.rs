//! A running server and a client for it, shared by the API suites:
//! REST calls that check every error is `application/problem+json`,
//! GraphQL, the CLI with the server's configuration, tokens.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{PgSchema, Server, TempDir, charter_command, test_database_url, test_nats_url};

pub struct Env {
    pub dir: TempDir,
    pub server: Server,
    pub http: reqwest::Client,
    pub extra: Vec<(&'static str, String)>,
}

impl Env {
    fn serve(dir: &TempDir, extra: &[(&'static str, String)]) -> Server {
        let mut command = charter_command(&dir.0);
        for (key, value) in extra {
            command.env(key, value);
        }
        command.env("CHARTER_MAX_BODY_BYTES", "65536");
        Server::start(command)
    }

    pub fn start(dir: TempDir, extra: Vec<(&'static str, String)>) -> Self {
        let server = Self::serve(&dir, &extra);
        Self {
            dir,
            server,
            http: reqwest::Client::new(),
            extra,
        }
    }

    /// Starts the server again on the same data, after it stopped (or was
    /// killed).
    pub fn restart(&mut self) {
        self.server = Self::serve(&self.dir, &self.extra);
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = charter_command(&self.dir.0);
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        command.args(args).output().expect("run charter")
    }

    pub fn token(&self, subject: &str, ttl: &str) -> String {
        let output = self.cli(&["token", "issue", "--subject", subject, "--ttl", ttl]);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, self.server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if status >= 400 {
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json",
                "{path}"
            );
        }
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn apply(&self, token: &str, yaml: &str, query: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/v1/apply{query}"),
            Some(token),
            Some(("application/yaml", yaml.to_owned())),
        )
        .await
    }

    /// POSTs a JSON body (`null` for none).
    pub async fn post(&self, token: &str, path: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::POST,
            path,
            Some(token),
            Some(("application/json", body.to_string())),
        )
        .await
    }

    pub async fn command(&self, token: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::POST,
            "/v1/commands",
            Some(token),
            Some(("application/json", body.to_string())),
        )
        .await
    }

    pub async fn graphql(&self, token: Option<&str>, query: &str) -> Value {
        let mut request = self
            .http
            .post(self.server.url("/graphql"))
            .json(&json!({ "query": query }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// How many events the log holds.
    pub fn events(&self) -> usize {
        let output = self.cli(&["events"]);
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).lines().count()
    }
}

pub fn outcomes(report: &Value) -> Vec<String> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {}/{}",
                i["outcome"].as_str().unwrap(),
                i["kind"].as_str().unwrap(),
                i["name"].as_str().unwrap()
            )
        })
        .collect()
}

pub fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

/// A second org, `globex`, whose `gina` may do anything in it: the other
/// side of the isolation tests.
pub const GLOBEX: &str = r#"
apiVersion: charter.dev/v1
kind: Organization
metadata: {name: globex}
spec: {displayName: Globex}
---
apiVersion: charter.dev/v1
kind: Subject
metadata: {name: gina, org: globex}
spec: {kind: user, displayName: Gina}
---
apiVersion: charter.dev/v1
kind: Role
metadata: {name: admin, org: globex}
spec:
  rules: [{actions: ["*"], resources: ["*"]}]
  tools: ["*"]
---
apiVersion: charter.dev/v1
kind: RoleBinding
metadata: {name: gina-admin, org: globex}
spec: {subject: gina, role: admin}
"#;

/// The settings that put a server on PostgreSQL + JetStream, in a schema
/// and streams of its own; keep the schema and the streams alive as long
/// as the server (they are removed when dropped).
pub fn postgres_and_jetstream(
    label: &str,
) -> (
    PgSchema,
    charter_testkit::ScratchStreams,
    Vec<(&'static str, String)>,
) {
    let schema = PgSchema::new(label);
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let stream = charter_testkit::ScratchStreams::new(&label.to_ascii_uppercase());
    let settings = vec![
        ("CHARTER_DATABASE_URL", test_database_url()),
        ("CHARTER_DATABASE_SCHEMA", schema.name.clone()),
        ("CHARTER_NATS_URL", test_nats_url()),
        ("CHARTER_NATS_STREAM", stream.name.clone()),
        (
            "CHARTER_NATS_SUBJECT_PREFIX",
            format!("{label}{tag}.events"),
        ),
    ];
    (schema, stream, settings)
}
