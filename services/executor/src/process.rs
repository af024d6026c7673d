//! The local process runtime.
//!
//! The tool starts through `/bin/sh`, which sets its resource limits
//! (`ulimit`: CPU time, address space, file size, no core files) and then
//! `exec`s the program, so the limits hold for it and everything it starts.
//! It leads a process group of its own; the group is killed when the call
//! times out, floods its output, ends, or is dropped, so nothing it started
//! outlives the call. Its environment holds only what the manifest lists,
//! its secrets, and `HOME`/`TMPDIR` pointing at a fresh working directory
//! that is removed afterwards.

use std::process::Stdio;

use charter_domain::tool::ProcessRuntime;
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::{Call, Failure, FailureCode, redact, tail};

/// The `PATH` a tool gets when its manifest sets none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Largest file a tool may write, in 512-byte blocks (64 MiB).
const FILE_BLOCKS: u64 = 131_072;

/// Kills the process group when the call is over, however it ends.
struct Group(Option<Pid>);

impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            // Already gone is fine: the group had nothing left.
            let _ = kill_process_group(pid, Signal::KILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which pipe went past its cap.
#[derive(Debug, Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

/// Reads a pipe up to `cap` bytes; past that it reports the flood and
/// stops reading.
async fn capture(
    mut pipe: impl AsyncRead + Unpin,
    cap: usize,
    which: Pipe,
    flood: mpsc::Sender<Pipe>,
) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                if kept.len() + n > cap {
                    let room = cap - kept.len();
                    kept.extend_from_slice(&buffer[..room]);
                    let _ = flood.send(which).await;
                    return kept;
                }
                kept.extend_from_slice(&buffer[..n]);
            }
        }
    }
}

/// How the process ended.
enum End {
    Exited(std::process::ExitStatus),
    TimedOut,
    Flooded(Pipe),
}

pub(crate) async fn run(
    call: &Call<'_>,
    process: &ProcessRuntime,
    secrets: &[(String, String)],
) -> Result<(Value, String), Failure> {
    let spawn_failed = |what: &str, e: std::io::Error| {
        Failure::new(FailureCode::SpawnFailed, format!("{what}: {e}"))
    };
    let workdir = tempfile::Builder::new()
        .prefix("charter-tool-")
        .tempdir()
        .map_err(|e| spawn_failed("could not make the working directory", e))?;
    if let Some(script) = &process.script {
        let path = workdir.path().join(&script.file);
        std::fs::write(&path, &script.source)
            .map_err(|e| spawn_failed("could not write the script", e))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| spawn_failed("could not make the script executable", e))?;
    }
    let limits = &call.spec.limits;
    let cpu_seconds = limits.cpu_time().as_millis().div_ceil(1000).max(1);
    // The soft limit sends SIGXCPU, which names the cause; the hard one,
    // a second later, kills a process that ignores it.
    let hard_cpu = cpu_seconds + 1;
    let memory_kib = u64::from(limits.memory_mb) * 1024;
    let prelude = format!(
        "ulimit -c 0 && ulimit -S -t {cpu_seconds} && ulimit -H -t {hard_cpu} && ulimit -v {memory_kib} && ulimit -f {FILE_BLOCKS} || {{ echo 'charter: could not set the resource limits' >&2; exit 125; }}; exec \"$@\""
    );
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(prelude)
        .arg("charter-tool")
        .args(&process.command)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", workdir.path())
        .env("TMPDIR", workdir.path())
        .env("CHARTER_TOOL", call.tool.as_str())
        .env("CHARTER_TOOL_VERSION", call.spec.version.as_str())
        .env("CHARTER_IDEMPOTENCY_KEY", call.idempotency_key)
        .env("CHARTER_DATA_SCOPES", call.scopes.join(","))
        .envs(process.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(workdir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| spawn_failed("could not start the tool", e))?;
    let mut group = Group(
        child
            .id()
            .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?)),
    );

    let input = serde_json::to_vec(call.input).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A tool that does not read its input closes the pipe early; that
        // is its business, so write errors are ignored.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        });
    }
    let cap = limits.output_bytes as usize;
    let (flood_tx, mut flood_rx) = mpsc::channel(2);
    let stdout = child
        .stdout
        .take()
        .map(|pipe| tokio::spawn(capture(pipe, cap, Pipe::Stdout, flood_tx.clone())));
    let stderr = child
        .stderr
        .take()
        .map(|pipe| tokio::spawn(capture(pipe, cap, Pipe::Stderr, flood_tx)));

    let end = tokio::select! {
        status = child.wait() => match status {
            Ok(status) => End::Exited(status),
            Err(e) => return Err(spawn_failed("could not wait for the tool", e)),
        },
        () = tokio::time::sleep(limits.timeout.as_duration()) => End::TimedOut,
        Some(pipe) = flood_rx.recv() => End::Flooded(pipe),
    };
    // A tool that floods its output dies of the pipe closed on it, and both
    // may be seen at once: the flood, signalled before the pipe closed, is
    // the cause.
    let end = match (end, flood_rx.try_recv()) {
        (End::Exited(_), Ok(pipe)) => End::Flooded(pipe),
        (end, _) => end,
    };
    // Whatever the tool left running goes now; its pipes close with it.
    group.kill();
    let _ = child.kill().await;
    let stdout = match stdout {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let stderr = match stderr {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let stderr = tail(&redact(&String::from_utf8_lossy(&stderr), secrets));

    let status = match end {
        End::TimedOut => {
            return Err(Failure::new(
                FailureCode::Timeout,
                format!("the tool ran past its timeout of {}", limits.timeout),
            )
            .with_stderr(stderr));
        }
        End::Flooded(pipe) => {
            let which = match pipe {
                Pipe::Stdout => "stdout",
                Pipe::Stderr => "stderr",
            };
            return Err(Failure::new(
                FailureCode::OutputTooLarge,
                format!("the tool wrote more than {cap} bytes to {which}; the rest was dropped"),
            )
            .with_stderr(stderr));
        }
        End::Exited(status) => status,
    };
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let cpu = signal == Signal::XCPU.as_raw();
        return Err(Failure::new(
            if cpu {
                FailureCode::CpuLimitExceeded
            } else {
                FailureCode::Killed
            },
            if cpu {
                format!("the tool used up its CPU time of {cpu_seconds}s")
            } else {
                format!("the tool was killed by signal {signal}")
            },
        )
        .with_status(128 + signal)
        .with_stderr(stderr));
    }
    let code = status.code().unwrap_or(-1);
    if code != 0 {
        return Err(Failure::new(
            FailureCode::ExitNonZero,
            format!("the tool exited with status {code}"),
        )
        .with_status(code)
        .with_stderr(stderr));
    }
    let text = redact(&String::from_utf8_lossy(&stdout), secrets);
    match serde_json::from_str::<Value>(&text) {
        Ok(output) => Ok((output, stderr)),
        Err(e) => Err(Failure::new(
            FailureCode::OutputNotJson,
            if text.trim().is_empty() {
                "the tool printed nothing; it must print one JSON value".to_owned()
            } else {
                format!("the tool's output is not one JSON value: {e}")
            },
        )
        .with_stderr(stderr)),
    }
}
