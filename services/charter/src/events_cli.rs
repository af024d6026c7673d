//! `charter events`: the global log as JSON lines on stdout, one event per
//! line with all of its metadata, optionally following new commits.

use std::io::Write;
use std::sync::Arc;

use charter_commands::store::Subscription;
use charter_commands::{EventStore, Position};

/// Prints events with a position at or after `from`. With `follow`, keeps
/// printing new commits until `stop` completes. A closed stdout (`| head`)
/// ends quietly.
pub async fn print_events(
    store: Arc<dyn EventStore>,
    from: u64,
    follow: bool,
    limit: Option<u64>,
    stop: impl std::future::Future<Output = ()>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut subscription = Subscription::new(store.clone(), Position(from.saturating_sub(1)), 1000);
    let mut position = subscription.position();
    let mut printed = 0u64;
    tokio::pin!(stop);
    loop {
        let batch = if follow {
            tokio::select! {
                batch = subscription.next_batch() => batch?,
                () = &mut stop => return Ok(printed),
            }
        } else {
            let batch = store.read_all(position, 1000).await?;
            let Some(last) = batch.last() else {
                return Ok(printed);
            };
            position = last.position;
            batch
        };
        for event in &batch {
            if limit.is_some_and(|limit| printed >= limit) {
                return Ok(printed);
            }
            let line = serde_json::to_string(event)?;
            if let Err(error) = writeln!(out, "{line}") {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(printed);
                }
                return Err(error.into());
            }
            printed += 1;
        }
        if let Err(error) = out.flush() {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(printed);
            }
            return Err(error.into());
        }
    }
}
