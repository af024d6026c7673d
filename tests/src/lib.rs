//! `charter-tests` drives the real `charter` binary end to end: it starts
//! `charter serve` as a child process on port 0, talks to it over HTTP, and
//! checks what lands in PostgreSQL and JetStream. This library holds the
//! shared harness; the tests live in `tests/`.
//!
//! The binary is found beside the test executable (`target/<profile>/charter`)
//! or at `CHARTER_BIN`; the README's test command builds it first.

pub mod api;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `charter` binary under test.
pub fn charter_bin() -> PathBuf {
    if let Ok(path) = std::env::var("CHARTER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/charter
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    let bin = profile_dir.join("charter");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bins`), or set CHARTER_BIN",
        bin.display()
    );
    bin
}

pub use charter_testkit::{test_database_url, test_nats_url};

/// A `charter` command with a clean environment: no inherited `CHARTER_*`
/// variable leaks into what the test means to configure.
pub fn charter_command(cwd: &Path) -> Command {
    let mut command = Command::new(charter_bin());
    command.current_dir(cwd);
    for (key, _) in std::env::vars() {
        if key.starts_with("CHARTER_") {
            command.env_remove(key);
        }
    }
    command.env("CHARTER_LOG", "info");
    // Several servers run at once during the suite: keep each pool small.
    command.env("CHARTER_DATABASE_MAX_CONNECTIONS", "4");
    command
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(format!("charter-e2e-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `charter serve`.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `charter serve` with `listen` on port 0 and waits until it
    /// reports the address it bound.
    pub fn start(mut command: Command) -> Self {
        command
            .arg("serve")
            .env("CHARTER_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn charter serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let address = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = tx.send(address);
                }
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => Self {
                child,
                address: address.parse().expect("a socket address in the log"),
                log,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "charter serve did not start:\n{}",
                    log.lock().map(|l| l.clone()).unwrap_or_default()
                );
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends a signal and waits (bounded) for the process to exit.
    pub fn signal_and_wait(&mut self, signal: &str) -> ExitStatus {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "charter did not stop on {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A PostgreSQL schema of this test's own, dropped on drop.
pub type PgSchema = charter_testkit::ScratchSchema;
