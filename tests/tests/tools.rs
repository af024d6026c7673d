//! Tools end to end on the real binary: registering versions by manifest,
//! approval and revocation by subjects allowed to, immutability of a
//! version, the typed errors, and isolation between orgs; on the embedded
//! default and on PostgreSQL + JetStream.

use charter_tests::TempDir;
use charter_tests::api::{Env, GLOBEX, code, outcomes, postgres_and_jetstream};
use serde_json::{Value, json};

const ACME: &str = include_str!("../../schema/examples/acme.yaml");
const WORDCOUNT: &str = include_str!("../../schema/examples/tools/text-wordcount.yaml");
const UPTIME: &str = include_str!("../../schema/examples/tools/host-uptime.yaml");
const ECHO: &str = include_str!("../../schema/examples/tools/util-echo.yaml");

async fn scenario(env: &Env) {
    let root = env.token("root", "1h");
    let (status, _) = env.apply(&root, ACME, "").await;
    assert_eq!(status, 200);
    let (status, _) = env.apply(&root, GLOBEX, "").await;
    assert_eq!(status, 200);
    let tools = [WORDCOUNT, UPTIME, ECHO].join("\n---\n");

    // Registered by manifest, once.
    let (status, report) = env.apply(&root, &tools, "").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        outcomes(&report),
        [
            "created Tool/text.wordcount",
            "created Tool/host.uptime",
            "created Tool/util.echo"
        ]
    );
    let before = env.events();
    let (status, report) = env.apply(&root, &tools, "").await;
    assert_eq!(status, 200);
    assert!(
        outcomes(&report).iter().all(|o| o.starts_with("unchanged")),
        "{report}"
    );
    assert_eq!(env.events(), before, "a repeated apply appends nothing");
    let position = report["position"].as_u64().unwrap_or(0);

    let (status, list) = env
        .get(
            &format!("/v1/orgs/acme/tools?minPosition={position}"),
            &root,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["host.uptime", "text.wordcount", "util.echo"]);
    let wordcount = &list["items"][1];
    assert_eq!(wordcount["versions"][0]["status"], "pending");
    assert_eq!(wordcount["latestApproved"], Value::Null);
    assert_eq!(wordcount["versions"][0]["runtime"], "process");
    assert_eq!(wordcount["versions"][0]["registeredBy"], "root");

    // Approving takes the right to approve.
    let approve = "/v1/orgs/acme/tools/text.wordcount/versions/1.0.0/approve";
    let planner = env.token("acme:planner", "1h");
    let (status, body) = env.post(&planner, approve, json!(null)).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(code(&body), "forbidden");
    let (status, body) = env.post(&root, approve, json!(null)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!(["VersionApproved"]));
    let position = body["position"].as_u64().unwrap();
    let (status, body) = env.post(&root, approve, json!(null)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]), "approving twice changes nothing");
    let (status, tool) = env
        .get(
            &format!("/v1/orgs/acme/tools/text.wordcount?minPosition={position}"),
            &root,
        )
        .await;
    assert_eq!(status, 200, "{tool}");
    assert_eq!(tool["latestApproved"], "1.0.0");
    assert_eq!(tool["versions"][0]["approvedBy"], "root");
    assert_eq!(tool["versions"][0]["spec"]["limits"]["timeout"], "10s");

    let (status, body) = env
        .post(
            &root,
            "/v1/orgs/acme/tools/text.wordcount/versions/9.9.9/approve",
            json!(null),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(code(&body), "tool_version_not_found");

    // A version never changes; a broken spec says where.
    let changed = WORDCOUNT.replace("cost: 1", "cost: 5");
    let before = env.events();
    let (status, body) = env.apply(&root, &changed, "").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(code(&body), "tool_version_immutable");
    let broken = ECHO.replace("builtin: echo", "builtin: echo\n  input: {type: 12}");
    let (status, body) = env.apply(&root, &broken, "").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_manifest");
    assert_eq!(body["details"]["errors"][0]["path"], "spec.input", "{body}");
    let (status, body) = env
        .command(
            &root,
            json!({"kind": "Tool", "org": "acme", "name": "util.echo",
                   "command": {"type": "Register", "spec": {"version": "2", "runtime": {"http": {"url": "ftp://x"}}}}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_tool");
    assert_eq!(env.events(), before, "rejected requests store nothing");

    // A new version is one more version.
    let next = WORDCOUNT.replace("version: 1.0.0", "version: 1.1.0");
    let (status, report) = env.apply(&root, &next, "").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(outcomes(&report), ["updated Tool/text.wordcount"]);

    // Revoking needs a reason, and is final.
    let revoke = "/v1/orgs/acme/tools/text.wordcount/versions/1.0.0/revoke";
    let (status, body) = env.post(&root, revoke, json!({"reason": " "})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(code(&body), "invalid_reason");
    let (status, body) = env.post(&root, revoke, json!({"reason": "leaks"})).await;
    assert_eq!(status, 200, "{body}");
    let position = body["position"].as_u64().unwrap();
    let (status, body) = env.post(&root, approve, json!(null)).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(code(&body), "tool_version_revoked");

    // GraphQL sees the same, and another org sees nothing of it.
    let answer = env
        .graphql(
            Some(&root),
            &format!(
                r#"{{ organization(name: "acme", minPosition: {position}) {{ tools(first: 10) {{ items {{ name latestApproved versions {{ version status revokedReason }} }} }} }} }}"#
            ),
        )
        .await;
    let items = &answer["data"]["organization"]["tools"]["items"];
    assert_eq!(items[1]["name"], "text.wordcount", "{answer}");
    assert_eq!(items[1]["latestApproved"], Value::Null, "{answer}");
    assert_eq!(items[1]["versions"][0]["status"], "revoked");
    assert_eq!(items[1]["versions"][0]["revokedReason"], "leaks");
    assert_eq!(items[1]["versions"][1]["status"], "pending");

    let gina = env.token("globex:gina", "1h");
    let (status, body) = env
        .get(
            &format!("/v1/orgs/acme/tools/text.wordcount?minPosition={position}"),
            &gina,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (missing_status, missing) = env.get("/v1/orgs/globex/tools/text.wordcount", &gina).await;
    assert_eq!(missing_status, 404);
    assert_eq!(body, missing, "invisible answers exactly like missing");
    let (status, _) = env.post(&gina, approve, json!(null)).await;
    assert_eq!(status, 404, "another org's tool is not there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_on_the_embedded_default() {
    let env = Env::start(TempDir::new(), vec![]);
    scenario(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_on_postgres_and_jetstream() {
    let (_schema, _stream, settings) = postgres_and_jetstream("tools");
    let env = Env::start(TempDir::new(), settings);
    scenario(&env).await;
}
