//! The command-line tools: `charter migrate` and `charter bench`.

use charter_tests::{PgSchema, TempDir, charter_command, test_database_url};
use serde_json::Value;

fn last_json_line(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {line}"))
}

#[test]
fn migrate_prepares_an_embedded_store() {
    let dir = TempDir::new();
    let output = charter_command(&dir.0)
        .env("CHARTER_DATABASE_URL", "sqlite://fresh.db")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(dir.0.join("fresh.db").exists());
    // Again: nothing to do, still fine.
    let again = charter_command(&dir.0)
        .env("CHARTER_DATABASE_URL", "sqlite://fresh.db")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
    // An empty log prints nothing.
    let events = charter_command(&dir.0)
        .env("CHARTER_DATABASE_URL", "sqlite://fresh.db")
        .args(["events", "--from", "0"])
        .output()
        .unwrap();
    assert!(events.status.success(), "{events:?}");
    assert!(events.stdout.is_empty());
}

#[test]
fn events_refuses_an_unmigrated_store() {
    let dir = TempDir::new();
    let output = charter_command(&dir.0)
        .env("CHARTER_DATABASE_URL", "sqlite://empty.db")
        .args(["events", "--from", "0"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("charter migrate"), "{stderr}");
}

#[test]
fn bench_append_and_read_print_their_figures() {
    let dir = TempDir::new();
    let schema = PgSchema::new("e2e");
    for url in ["sqlite://bench.db".to_owned(), test_database_url()] {
        let output = charter_command(&dir.0)
            .env("CHARTER_DATABASE_URL", &url)
            .env("CHARTER_DATABASE_SCHEMA", &schema.name)
            .args([
                "bench",
                "append",
                "--writers",
                "2",
                "--batch",
                "10",
                "--events",
                "400",
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let figures = last_json_line(&output.stdout);
        let backend = if url.starts_with("sqlite") {
            "sqlite"
        } else {
            "postgres"
        };
        assert_eq!(figures["backend"], backend);
        assert_eq!(figures["writers"], 2);
        assert_eq!(figures["batch"], 10);
        assert_eq!(figures["events"], 400);
        for key in ["events_per_sec", "p50_ms", "p99_ms"] {
            assert!(figures[key].as_f64().unwrap() > 0.0, "{key} in {figures}");
        }
        let output = charter_command(&dir.0)
            .env("CHARTER_DATABASE_URL", &url)
            .args(["bench", "read", "--events", "3000"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let figures = last_json_line(&output.stdout);
        assert_eq!(figures["backend"], backend);
        assert_eq!(figures["events"], 3000);
        assert!(figures["events_per_sec"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn validate_checks_manifests_offline() {
    let dir = TempDir::new();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/examples");
    let output = charter_command(&dir.0)
        .args(["validate", "-f"])
        .arg(&examples)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("valid Organization acme/acme"), "{stdout}");
    assert!(
        stdout.contains("valid RoleBinding acme/planner-research"),
        "{stdout}"
    );

    std::fs::write(
        dir.0.join("broken.yaml"),
        "apiVersion: charter.dev/v1\nkind: Role\nmetadata: {name: r, org: acme}\nspec:\n  rules:\n    - actions: [get]\n      resources: [Gizmo]\n",
    )
    .unwrap();
    let output = charter_command(&dir.0)
        .args(["validate", "-f", "broken.yaml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("broken.yaml: document 0: spec.rules[0].resources[0]"),
        "{stderr}"
    );
    assert!(stderr.contains("Gizmo"), "{stderr}");
}

#[test]
fn bench_tool_call_prints_its_figures() {
    let dir = TempDir::new();
    let output = charter_command(&dir.0)
        .args(["bench", "tool-call", "--calls", "5"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let figures = last_json_line(&output.stdout);
    assert_eq!(figures["calls"], 5);
    for key in ["bare_spawn_p50_ms", "tool_call_p50_ms"] {
        assert!(figures[key].as_f64().unwrap() > 0.0, "{key} in {figures}");
    }
}

#[test]
fn bench_policy_prints_its_figures() {
    let dir = TempDir::new();
    let output = charter_command(&dir.0)
        .args([
            "bench",
            "policy",
            "--policies",
            "100",
            "--bindings",
            "1000",
            "--decisions",
            "2000",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let figures = last_json_line(&output.stdout);
    assert_eq!(figures["decisions"], 2000);
    for key in ["decisions_per_sec", "p50_us", "p99_us"] {
        assert!(figures[key].as_f64().unwrap() > 0.0, "{key} in {figures}");
    }
}
