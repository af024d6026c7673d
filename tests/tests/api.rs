//! The API end to end, on the real binary: authentication, authorization
//! of every command and query, isolation between orgs on every read path,
//! the audit log, `checkAccess`, read-your-writes, and the bad-input list,
//! over REST and GraphQL. The same scenario runs on the embedded default
//! (SQLite + in-process bus) and on PostgreSQL + JetStream.

use std::time::Duration;

use charter_tests::api::{Env, code, outcomes, postgres_and_jetstream};
use charter_tests::{TempDir, charter_command, test_nats_url};
use reqwest::Method;
use serde_json::{Value, json};

const ACME: &str = include_str!("../../schema/examples/acme.yaml");

const GLOBEX: &str = r#"
apiVersion: charter.dev/v1
kind: Organization
metadata:
  name: globex
spec:
  displayName: Globex
  tags: {tier: silver}
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
---
apiVersion: charter.dev/v1
kind: RoleBinding
metadata: {name: gina-admin, org: globex}
spec: {subject: gina, role: admin}
---
apiVersion: charter.dev/v1
kind: Policy
metadata: {name: secret-rules, org: globex}
spec:
  policy: |
    permit(principal, action == Charter::Action::"get", resource);
"#;

async fn scenario(env: &Env) {
    let root = env.token("root", "1h");

    // --- Authentication.
    let (status, body) = env.call(Method::GET, "/v1/orgs", None, None).await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"));
    let (status, body) = env.get("/v1/orgs", "not-a-token").await;
    assert_eq!((status, code(&body)), (401, "invalid_credential"));
    let forged = {
        let mut t = root.clone();
        t.replace_range(t.len() - 4.., "AAAA");
        t
    };
    let (status, _) = env.get("/v1/orgs", &forged).await;
    assert_eq!(status, 401);

    // --- Declaring two orgs; applying twice changes nothing.
    let (status, report) = env.apply(&root, ACME, "").await;
    assert_eq!(status, 200, "{report}");
    assert!(
        outcomes(&report).iter().all(|o| o.starts_with("created")),
        "{report}"
    );
    let (status, report) = env.apply(&root, GLOBEX, "").await;
    assert_eq!(status, 200, "{report}");
    let applied = report["position"].as_u64().unwrap();
    let events = env.events();
    let (status, again) = env.apply(&root, ACME, "").await;
    assert_eq!(status, 200);
    assert!(
        outcomes(&again).iter().all(|o| o.starts_with("unchanged")),
        "{again}"
    );
    assert!(again["position"].is_null());
    assert_eq!(env.events(), events, "a repeated apply appended nothing");

    let alice = env.token("acme:alice", "1h");
    let planner = env.token("acme:planner", "1h");
    let gina = env.token("globex:gina", "1h");

    // --- Isolation: alice (acme admin) sees nothing of globex, through
    // any read path, and a globex object answers exactly like a missing one.
    let (status, orgs) = env
        .get(&format!("/v1/orgs?minPosition={applied}"), &alice)
        .await;
    assert_eq!(status, 200);
    let names: Vec<&str> = orgs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    for filter in ["?tag=tier=silver", "?name=glo", "?parent=acme", "?after=a"] {
        let (status, page) = env.get(&format!("/v1/orgs{filter}"), &alice).await;
        assert_eq!(status, 200);
        assert!(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["name"] == "acme"),
            "{filter}: {page}"
        );
    }
    let (_, as_root) = env
        .get(
            &format!("/v1/orgs?tag=tier=silver&minPosition={applied}"),
            &root,
        )
        .await;
    assert_eq!(as_root["items"][0]["name"], "globex");
    assert_eq!(as_root["items"].as_array().unwrap().len(), 1);
    for (path, what) in [
        ("/v1/orgs/{}", "organization `{}` not found"),
        ("/v1/orgs/{}/roles", "organization `{}` not found"),
        ("/v1/orgs/{}/subjects", "organization `{}` not found"),
        ("/v1/orgs/{}/rolebindings", "organization `{}` not found"),
        ("/v1/orgs/{}/policies", "organization `{}` not found"),
        ("/v1/orgs/{}/jobspaces", "organization `{}` not found"),
        ("/v1/orgs/{}/audit", "organization `{}` not found"),
        ("/v1/orgs/{}/roles/admin", "role `admin` not found"),
        ("/v1/orgs/{}/subjects/gina", "subject `gina` not found"),
        (
            "/v1/orgs/{}/policies/secret-rules",
            "policy `secret-rules` not found",
        ),
    ] {
        let (real_status, real) = env.get(&path.replace("{}", "globex"), &alice).await;
        let (none_status, none) = env.get(&path.replace("{}", "nosuch"), &root).await;
        assert_eq!(real_status, 404, "{path}: {real}");
        assert_eq!(none_status, 404, "{path}: {none}");
        assert_eq!(code(&real), "not_found");
        assert_eq!(real["detail"], what.replace("{}", "globex"), "{path}");
        assert!(!real.to_string().contains("secret-rules") || path.contains("secret-rules"));
    }
    // Commands and questions about another org answer the same way.
    let (status, body) = env
        .command(&alice, json!({"kind": "Role", "org": "globex", "name": "admin", "command": {"type": "Delete"}}))
        .await;
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, _) = env
        .call(
            Method::POST,
            "/v1/check-access",
            Some(&alice),
            Some((
                "application/json",
                json!({"subject": "gina", "action": "get", "org": "globex", "kind": "Role"})
                    .to_string(),
            )),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = env.apply(&alice, GLOBEX, "").await;
    assert_eq!(status, 404);
    // GraphQL, every path.
    let data = env
        .graphql(Some(&alice), &format!("{{ organizations(minPosition: {applied}) {{ items {{ name roles {{ items {{ name }} }} }} }} }}"))
        .await;
    assert_eq!(
        data["data"]["organizations"]["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(data["data"]["organizations"]["items"][0]["name"], "acme");
    let data = env
        .graphql(
            Some(&alice),
            r#"{ organization(name: "globex") { name policies { items { text } } } }"#,
        )
        .await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "not_found",
        "{data}"
    );
    assert!(!data.to_string().contains("permit("));
    let data = env
        .graphql(
            Some(&alice),
            r#"{ auditLog(org: "globex") { items { principal } } }"#,
        )
        .await;
    assert_eq!(data["errors"][0]["extensions"]["code"], "not_found");
    // Gina sees globex only.
    let (_, orgs) = env
        .get(&format!("/v1/orgs?minPosition={applied}"), &gina)
        .await;
    assert_eq!(orgs["items"][0]["name"], "globex");
    assert_eq!(orgs["items"].as_array().unwrap().len(), 1);

    // --- Authorization: the planner (an agent, researcher in one job
    // space) may not delete a role; the denial is audited.
    let (status, body) = env
        .command(
            &planner,
            json!({"kind": "Role", "org": "acme", "name": "admin", "command": {"type": "Delete"}}),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    assert_eq!(body["details"]["deniedBecause"], "no_grant");
    let (status, _) = env.get("/v1/orgs/acme/audit", &planner).await;
    assert_eq!(status, 403, "the planner may not read the audit log");
    // Denials are recorded as events; the audit projection follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let audit = loop {
        let (status, audit) = env.get("/v1/orgs/acme/audit?limit=500", &alice).await;
        assert_eq!(status, 200);
        let found = audit["items"].as_array().unwrap().iter().any(|e| {
            e["principal"] == "acme:planner" && e["action"] == "delete" && e["resource"] == "admin"
        });
        if found {
            break audit;
        }
        assert!(std::time::Instant::now() < deadline, "{audit}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let entries = audit["items"].as_array().unwrap();
    // Alice's probes of globex are in her own org's log, without globex's name.
    assert!(
        entries
            .iter()
            .any(|e| e["principal"] == "acme:alice" && e["reason"] == "other_org")
    );
    assert!(!audit.to_string().contains("globex"));
    let (_, globex_audit) = env.get("/v1/orgs/globex/audit", &gina).await;
    assert!(!globex_audit.to_string().contains("acme"), "{globex_audit}");

    // checkAccess names what decides: a role grant, or a forbid.
    let ask = |subject: &str, action: &str, kind: &str, space: Option<&str>| {
        json!({"subject": subject, "action": action, "org": "acme", "kind": kind, "name": "x", "jobSpace": space}).to_string()
    };
    let (status, decision) = env
        .call(
            Method::POST,
            "/v1/check-access",
            Some(&alice),
            Some(("application/json", ask("alice", "delete", "Role", None))),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(decision["allowed"], true);
    assert_eq!(decision["grants"][0]["role"], "admin");
    let (_, decision) = env
        .call(
            Method::POST,
            "/v1/check-access",
            Some(&alice),
            Some((
                "application/json",
                ask("planner", "get", "Job", Some("research")),
            )),
        )
        .await;
    assert_eq!(decision["allowed"], true, "{decision}");
    // The planner may not ask about others, only about itself.
    let (status, _) = env
        .call(
            Method::POST,
            "/v1/check-access",
            Some(&planner),
            Some(("application/json", ask("alice", "get", "Role", None))),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = env
        .call(
            Method::POST,
            "/v1/check-access",
            Some(&planner),
            Some(("application/json", ask("planner", "get", "Role", None))),
        )
        .await;
    assert_eq!(status, 200);
    // Bind the planner as admin too: the agents-never-delete forbid wins.
    let (status, _) = env
        .command(&alice, json!({"kind": "RoleBinding", "org": "acme", "name": "planner-admin", "command": {"type": "Bind", "subject": "planner", "role": "admin"}}))
        .await;
    assert_eq!(status, 200);
    let data = env
        .graphql(Some(&alice), r#"{ checkAccess(question: {subject: "planner", action: "delete", org: "acme", kind: "Role", name: "admin"}) { allowed grants { role } forbiddenBy } }"#)
        .await;
    let decision = &data["data"]["checkAccess"];
    assert_eq!(decision["allowed"], false, "{data}");
    assert_eq!(decision["forbiddenBy"][0], "agents-never-delete#0");
    assert_eq!(decision["grants"][0]["role"], "admin");
    let (status, body) = env
        .command(&planner, json!({"kind": "Role", "org": "acme", "name": "researcher", "command": {"type": "Delete"}}))
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["details"]["forbiddenBy"][0], "agents-never-delete#0");

    // --- Read-your-writes: a command's position, asked for, is visible.
    let (status, report) = env
        .command(&alice, json!({"kind": "Organization", "org": "acme", "command": {"type": "SetTags", "tags": {"tier": "platinum"}}}))
        .await;
    assert_eq!(status, 200, "{report}");
    let position = report["position"].as_u64().unwrap();
    let (status, org) = env
        .get(&format!("/v1/orgs/acme?minPosition={position}"), &alice)
        .await;
    assert_eq!(status, 200);
    assert_eq!(org["tags"][0]["value"], "platinum");
    assert!(org["meta"]["position"].as_u64().unwrap() >= position);

    // --- Bad input; nothing stored changes.
    let (_, admin_before) = env
        .get(
            &format!("/v1/orgs/acme/roles/admin?minPosition={applied}"),
            &alice,
        )
        .await;
    let events_before = env.events();
    let (status, body) = env
        .call(
            Method::POST,
            "/v1/commands",
            Some(&alice),
            Some(("application/json", "{\"kind\": ".into())),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "malformed_body"));
    let (status, body) = env.apply(&alice, "kind: [unclosed", "").await;
    assert_eq!((status, code(&body)), (400, "malformed_body"), "{body}");
    let (status, body) = env
        .apply(
            &alice,
            "apiVersion: charter.dev/v1\nkind: Widget\nmetadata: {name: w, org: acme}\nspec: {}\n",
            "",
        )
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_manifest"));
    assert_eq!(body["details"]["errors"][0]["path"], "kind");
    let (status, body) = env
        .apply(&alice, "apiVersion: charter.dev/v1\nkind: Role\nmetadata: {name: Bad_Name, org: acme}\nspec: {rules: [{actions: [get], resources: [Nope]}]}\n", "")
        .await;
    assert_eq!(status, 422);
    assert!(
        body["details"]["errors"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("metadata.name"),
        "{body}"
    );
    let (status, body) = env
        .apply(&alice, "apiVersion: charter.dev/v1\nkind: RoleBinding\nmetadata: {name: b, org: acme}\nspec: {subject: alice, role: ghost}\n", "")
        .await;
    assert_eq!((status, code(&body)), (422, "unknown_role"), "{body}");
    let (status, body) = env
        .apply(&alice, "apiVersion: charter.dev/v1\nkind: Policy\nmetadata: {name: broken, org: acme}\nspec:\n  policy: |\n    permit(principal, action, resource)\n    when { principal.nope };\n", "")
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_manifest"));
    assert!(
        body["detail"].as_str().unwrap().contains("line 2"),
        "{body}"
    );
    let (status, body) = env
        .command(&alice, json!({"kind": "Policy", "org": "acme", "name": "broken", "command": {"type": "Publish", "policy": "permit(principal action resource);"}}))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_policy"));
    assert_eq!(body["details"]["problems"][0]["line"], 1, "{body}");
    let (status, body) = env
        .command(&alice, json!({"kind": "Role", "org": "acme", "name": "admin", "command": {"type": "Define", "rulez": []}}))
        .await;
    assert_eq!((status, code(&body)), (422, "invalid_command"), "{body}");
    let (status, body) = env
        .command(
            &alice,
            json!({"kind": "Gadget", "org": "acme", "name": "x", "command": {"type": "Make"}}),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "unknown_kind"));
    let (status, _) = env.get("/v1/orgs/acme/roles?limit=0", &alice).await;
    assert_eq!(status, 422);
    let (status, body) = env.get("/v1/orgs/acme/roles?limit=abc", &alice).await;
    assert_eq!((status, code(&body)), (400, "bad_request"));
    let huge = format!(
        "{{\"kind\": \"Role\", \"pad\": \"{}\"}}",
        "x".repeat(70_000)
    );
    let (status, body) = env
        .call(
            Method::POST,
            "/v1/commands",
            Some(&alice),
            Some(("application/json", huge)),
        )
        .await;
    assert_eq!((status, code(&body)), (413, "payload_too_large"));
    // A parent cycle.
    let (status, _) = env
        .apply(&root, "apiVersion: charter.dev/v1\nkind: Organization\nmetadata: {name: sub}\nspec: {displayName: Sub, parent: acme}\n", "")
        .await;
    assert_eq!(status, 200);
    let (status, body) = env
        .command(&alice, json!({"kind": "Organization", "org": "acme", "command": {"type": "SetParent", "parent": "sub"}}))
        .await;
    assert_eq!((status, code(&body)), (422, "parent_cycle"), "{body}");
    let (status, body) = env
        .command(
            &alice,
            json!({"kind": "Organization", "org": "acme", "command": {"type": "Archive"}}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (409, "org_has_active_children"),
        "{body}"
    );
    // Two admins editing the same role from the same version: one wins.
    let version = admin_before["meta"]["version"].as_u64().unwrap();
    let edit = |description: &str| {
        json!({"kind": "Role", "org": "acme", "name": "admin", "expectedVersion": version,
        "command": {"type": "Define", "description": description, "rules": [{"actions": ["*"], "resources": ["*"]}], "tools": ["*"]}})
    };
    let (first, first_report) = env.command(&alice, edit("first edit")).await;
    let (second, body) = env.command(&alice, edit("second edit")).await;
    assert_eq!((first, second), (200, 409));
    assert_eq!(code(&body), "wrong_expected_version");
    // The same command id twice takes effect once.
    let id = uuid::Uuid::now_v7();
    let rename = json!({"commandId": id, "kind": "Organization", "org": "acme", "command": {"type": "Rename", "displayName": "Acme Inc"}});
    let (_, once) = env.command(&alice, rename.clone()).await;
    let events_after_once = env.events();
    let (status, twice) = env.command(&alice, rename).await;
    assert_eq!(status, 200);
    assert_eq!(twice["duplicate"], true);
    assert_eq!(twice["position"], once["position"]);
    assert_eq!(env.events(), events_after_once);
    // Only the accepted commands (and the audit of nothing) were stored:
    // one role edit, one rename, plus the sub org from root.
    let at = first_report["position"].as_u64().unwrap();
    let (_, admin_after) = env
        .get(
            &format!("/v1/orgs/acme/roles/admin?minPosition={at}"),
            &alice,
        )
        .await;
    assert_eq!(admin_after["description"], "first edit");
    assert!(env.events() >= events_before + 3);

    // --- A policy that would lock every admin out needs force.
    let lockout = "apiVersion: charter.dev/v1\nkind: Policy\nmetadata: {name: freeze, org: acme}\nspec:\n  policy: |\n    forbid(principal, action == Charter::Action::\"update\", resource);\n";
    let (status, body) = env.apply(&alice, lockout, "").await;
    assert_eq!(
        (status, code(&body)),
        (409, "would_lock_out_admins"),
        "{body}"
    );
    let (status, plan) = env.apply(&alice, lockout, "?dryRun=true&force=true").await;
    assert_eq!(status, 200);
    assert_eq!(plan["items"][0]["outcome"], "created");
    let (_, missing) = env.get("/v1/orgs/acme/policies/freeze", &alice).await;
    assert_eq!(code(&missing), "not_found", "a dry run writes nothing");
    let (status, _) = env.apply(&alice, lockout, "?force=true").await;
    assert_eq!(status, 200);

    // --- API keys: shown once, work as credentials, revocable.
    let (status, issued) = env
        .command(&root, json!({"kind": "Subject", "org": "globex", "name": "gina", "command": {"type": "IssueApiKey", "keyId": "laptop01"}}))
        .await;
    assert_eq!(status, 200);
    let key = issued["apiKey"].as_str().unwrap().to_owned();
    assert!(key.starts_with("chk_"));
    let (status, me) = env.get("/v1/whoami", &key).await;
    assert_eq!(
        (status, me["principal"].as_str()),
        (200, Some("globex:gina"))
    );
    let at = issued["position"].as_u64().unwrap();
    let (_, subject) = env
        .get(
            &format!("/v1/orgs/globex/subjects/gina?minPosition={at}"),
            &key,
        )
        .await;
    assert_eq!(subject["apiKeys"][0], "laptop01");
    assert!(
        !subject.to_string().contains(&key[4..]),
        "the key is never read back"
    );
    let (status, _) = env
        .command(&gina, json!({"kind": "Subject", "org": "globex", "name": "gina", "command": {"type": "RevokeApiKey", "keyId": "laptop01"}}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = env.get("/v1/whoami", &key).await;
    assert_eq!((status, code(&body)), (401, "invalid_credential"));

    // --- A disabled subject's token stops working.
    let (status, _) = env
        .command(&root, json!({"kind": "Subject", "org": "acme", "name": "planner", "command": {"type": "Disable"}}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = env.get("/v1/whoami", &planner).await;
    assert_eq!((status, code(&body)), (401, "inactive_subject"));

    // --- GraphQL limits and errors.
    let data = env.graphql(None, "{ me { principal } }").await;
    assert_eq!(data["errors"][0]["extensions"]["code"], "unauthenticated");
    let data = env
        .graphql(
            Some(&root),
            "{ organizations(first: 500) { items { subjects(first: 500) { items { name } } } } }",
        )
        .await;
    assert!(
        data["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("complex"),
        "{data}"
    );
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "query_too_complex",
        "{data}"
    );
    let deep = format!(
        "{{ {}__typename{} }}",
        "organizations { items { ".repeat(8),
        " } }".repeat(8)
    );
    let data = env.graphql(Some(&root), &deep).await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "query_too_deep",
        "{data}"
    );
    // A query that does not parse, and one that breaks the schema.
    let data = env
        .graphql(Some(&root), "{ organizations { items { name } ")
        .await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "query_parse_failed",
        "{data}"
    );
    let data = env
        .graphql(
            Some(&root),
            r#"mutation { startRun(org: "acme", workflow: "x", inptu: {}) { id } }"#,
        )
        .await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "invalid_query",
        "{data}"
    );
    let data = env
        .graphql(Some(&alice), r#"mutation { submitCommand(command: {kind: "Role", org: "acme", name: "viewer", command: {type: "Define", rules: [{actions: ["get"], resources: ["*"]}]}}) { events position } }"#)
        .await;
    assert_eq!(
        data["data"]["submitCommand"]["events"][0], "Defined",
        "{data}"
    );
    let data = env
        .graphql(
            Some(&alice),
            r#"mutation { apply(manifests: "kind: Nope") { items { outcome } } }"#,
        )
        .await;
    assert_eq!(
        data["errors"][0]["extensions"]["code"], "invalid_manifest",
        "{data}"
    );
    assert_eq!(data["errors"][0]["extensions"]["status"], 422);

    // --- Paging through a listing with a cursor.
    let mut last = 0;
    for n in 0..7 {
        let (status, created) = env
            .command(&alice, json!({"kind": "Subject", "org": "acme", "name": format!("bot{n}"), "command": {"type": "Create", "kind": "agent", "displayName": "Bot"}}))
            .await;
        assert_eq!(status, 200);
        last = created["position"].as_u64().unwrap();
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = env
            .get(
                &format!("/v1/orgs/acme/subjects?kind=agent&limit=3&minPosition={last}{after}"),
                &alice,
            )
            .await;
        assert_eq!(status, 200);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["name"].as_str().unwrap().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(cursor) => after = format!("&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "bot0", "bot1", "bot2", "bot3", "bot4", "bot5", "bot6", "planner"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_the_embedded_default() {
    let env = Env::start(TempDir::new(), vec![]);
    scenario(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_on_postgres_and_jetstream() {
    let (_schema, stream, settings) = postgres_and_jetstream("api");
    let env = Env::start(TempDir::new(), settings);
    scenario(&env).await;
    // Every event reached JetStream.
    let client = async_nats::connect(test_nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let events = env.events() as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut info = js.get_stream(stream.name.as_str()).await.unwrap();
        let messages = info.info().await.unwrap().state.messages;
        if messages == events {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{messages} of {events} events published"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tokens_expire_and_the_cli_applies_and_reads() {
    let env = Env::start(TempDir::new(), vec![]);
    let short = env.token("root", "1s");
    let (status, _) = env.get("/v1/whoami", &short).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = env.get("/v1/whoami", &short).await;
    assert_eq!((status, code(&body)), (401, "token_expired"));

    let root = env.token("root", "1h");
    let examples =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/examples/acme.yaml");
    let examples = examples.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut command = charter_command(&env.dir.0);
        command
            .env("CHARTER_SERVER", env.server.url(""))
            .env("CHARTER_TOKEN", &root);
        let output = command.args(args).output().unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["diff", "-f", examples]);
    assert!(ok, "{err}");
    assert!(
        out.contains("+ would create Organization acme/acme"),
        "{out}"
    );
    let (ok, out, err) = run(&["apply", "-f", examples]);
    assert!(ok, "{err}");
    assert!(out.lines().all(|l| l.starts_with("created ")), "{out}");
    let (ok, out, _) = run(&["apply", "-f", examples]);
    assert!(ok);
    assert!(out.lines().all(|l| l.starts_with("unchanged ")), "{out}");
    let (ok, out, _) = run(&["get", "roles", "--org", "acme"]);
    assert!(ok);
    assert!(out.contains("researcher"), "{out}");
    let (ok, out, _) = run(&["get", "orgs", "acme", "-o", "json"]);
    assert!(ok);
    let org: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(org["displayName"], "Acme Corp");
    let (ok, out, _) = run(&[
        "get",
        "rolebindings",
        "planner-research",
        "--org",
        "acme",
        "-o",
        "yaml",
    ]);
    assert!(ok);
    assert!(out.contains("jobSpace: research"), "{out}");
    let (ok, _, err) = run(&["get", "roles", "--org", "nosuch"]);
    assert!(!ok);
    assert!(err.contains("not_found"), "{err}");
    // No credential: a clear refusal.
    let output = charter_command(&env.dir.0)
        .env("CHARTER_SERVER", env.server.url(""))
        .args(["get", "orgs"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unauthenticated"));
    // /docs and /openapi.json are served.
    let docs = reqwest::get(env.server.url("/docs")).await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("/openapi.json"));
    let spec: Value = reqwest::get(env.server.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    let graphiql = reqwest::get(env.server.url("/graphql")).await.unwrap();
    assert_eq!(graphiql.status(), 200);
}
