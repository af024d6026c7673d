//! Runs' traces as this process has seen them, so that whoever follows a
//! run (the trace long-poll, the WebSocket, the GraphQL subscription) is
//! answered from memory and woken for that run only.
//!
//! The driver records every run event it folds, whichever way it came:
//! from this process's own appends at once (with the store's own position
//! and time, see [`charter_commands::AppendOutcome`]), or from the log. A
//! trace is kept only while it is whole (every version from the first, in
//! order); a reader asking for anything a trace does not hold reads the
//! store, which is always the truth. Traces of runs that ended are dropped,
//! oldest first, once there are more than `capacity`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use charter_domain::run::RunId;
use tokio::sync::watch;

use crate::gateway::views::TraceEventView;

/// One run's trace.
struct Trace {
    /// Versions 1, 2, … in order.
    events: Vec<Arc<TraceEventView>>,
    /// The last version recorded.
    version: watch::Sender<u64>,
}

impl Trace {
    fn new() -> Self {
        Self {
            events: Vec::new(),
            version: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct Inner {
    runs: HashMap<RunId, Trace>,
    /// Runs that ended, in the order they did.
    ended: VecDeque<RunId>,
}

pub struct RunTraces {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Default for RunTraces {
    /// A trace held costs about 15 KB (three tool calls); past this many,
    /// a follower of a run that ended long ago reads the store.
    fn default() -> Self {
        Self::new(2_048)
    }
}

impl RunTraces {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the event at `event.version` to the run's trace when it is the
    /// next one (a repeat or an event after a gap changes nothing; the gap
    /// is filled by the log, in order), and wakes the run's followers.
    pub fn record(&self, run: &RunId, event: TraceEventView) {
        let mut inner = self.lock();
        let trace = inner.runs.entry(run.clone()).or_insert_with(Trace::new);
        let next = trace.events.len() as u64 + 1;
        if event.version != next {
            return;
        }
        trace.events.push(Arc::new(event));
        trace.version.send_replace(next);
    }

    /// The last version of the run's trace held here (0 for none).
    pub fn recorded(&self, run: &RunId) -> u64 {
        self.lock()
            .runs
            .get(run)
            .map_or(0, |trace| trace.events.len() as u64)
    }

    /// The run ended: its trace may be dropped once it is among the oldest
    /// ended ones beyond the capacity.
    pub fn ended(&self, run: &RunId) {
        let mut inner = self.lock();
        inner.ended.push_back(run.clone());
        while inner.runs.len() > self.capacity {
            let Some(oldest) = inner.ended.pop_front() else {
                break;
            };
            // A follower still waiting keeps its receiver; it reads the
            // store from now on.
            inner.runs.remove(&oldest);
        }
    }

    /// Wakes when the run records a new version (the value is that
    /// version, or 0 before this process has seen any).
    pub fn subscribe(&self, run: &RunId) -> watch::Receiver<u64> {
        let mut inner = self.lock();
        if let Some(trace) = inner.runs.get(run) {
            return trace.version.subscribe();
        }
        // Someone follows a run before its first event got here: keep a
        // place for it (dropped with the ended runs, or when it stays
        // empty past the capacity).
        if inner.runs.len() > self.capacity {
            inner
                .runs
                .retain(|_, t| !t.events.is_empty() || t.version.receiver_count() > 0);
        }
        inner
            .runs
            .entry(run.clone())
            .or_insert_with(Trace::new)
            .version
            .subscribe()
    }

    /// The events after version `after` (at most `limit`), when this
    /// process holds the run's trace through its last recorded version;
    /// `None` when the store must answer.
    pub fn after(&self, run: &RunId, after: u64, limit: usize) -> Option<Vec<Arc<TraceEventView>>> {
        let inner = self.lock();
        let trace = inner.runs.get(run)?;
        if trace.events.is_empty() {
            return None;
        }
        let from = usize::try_from(after).ok()?;
        Some(
            trace
                .events
                .iter()
                .skip(from)
                .take(limit)
                .map(Arc::clone)
                .collect(),
        )
    }

    /// The last version of the run's trace held here, and whether that
    /// event ended the run; `None` when this process holds no trace of it.
    pub fn progress(&self, run: &RunId) -> Option<(u64, bool)> {
        let inner = self.lock();
        let last = inner.runs.get(run)?.events.last()?;
        Some((last.version, last.is_final()))
    }

    /// How many runs' traces are held.
    pub fn len(&self) -> usize {
        self.lock().runs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(version: u64) -> TraceEventView {
        typed(version, "NodeScheduled")
    }

    fn typed(version: u64, event_type: &str) -> TraceEventView {
        TraceEventView {
            version,
            position: version * 10,
            event_type: event_type.into(),
            at: "2026-01-01T00:00:00.000Z".into(),
            actor: "system".into(),
            data: crate::gateway::views::trace_data(format!(r#"{{"n":{version}}}"#)),
        }
    }

    fn run() -> RunId {
        RunId::new(charter_domain::OrgName::parse("acme").unwrap())
    }

    #[test]
    fn keeps_a_whole_trace_in_order() {
        let traces = RunTraces::new(10);
        let id = run();
        assert!(traces.after(&id, 0, 10).is_none(), "unknown: ask the store");
        traces.record(&id, event(1));
        traces.record(&id, event(3));
        traces.record(&id, event(2));
        traces.record(&id, event(2));
        traces.record(&id, event(3));
        let all = traces.after(&id, 0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
        let rest = traces.after(&id, 2, 10).unwrap();
        assert_eq!(rest.iter().map(|e| e.version).collect::<Vec<_>>(), [3]);
        assert!(traces.after(&id, 3, 10).unwrap().is_empty());
        assert_eq!(traces.after(&id, 0, 1).unwrap().len(), 1);
    }

    #[test]
    fn progress_tells_whether_the_run_ended() {
        let traces = RunTraces::new(10);
        let id = run();
        assert_eq!(traces.progress(&id), None);
        let _follower = traces.subscribe(&id);
        assert_eq!(traces.progress(&id), None, "a place kept, no events");
        traces.record(&id, event(1));
        assert_eq!(traces.progress(&id), Some((1, false)));
        traces.record(&id, typed(2, "Completed"));
        assert_eq!(traces.progress(&id), Some((2, true)));
        let other = run();
        traces.record(&other, typed(1, "Cancelled"));
        assert_eq!(traces.progress(&other), Some((1, true)));
    }

    #[test]
    fn a_trace_that_did_not_start_at_the_first_event_is_never_served() {
        let traces = RunTraces::new(10);
        let id = run();
        traces.record(&id, event(4));
        assert!(traces.after(&id, 0, 10).is_none());
        assert!(traces.after(&id, 3, 10).is_none());
    }

    #[tokio::test]
    async fn followers_wake_for_their_run() {
        let traces = RunTraces::new(10);
        let (id, other) = (run(), run());
        let mut follower = traces.subscribe(&id);
        traces.record(&other, event(1));
        assert!(!follower.has_changed().unwrap());
        traces.record(&id, event(1));
        follower.changed().await.unwrap();
        assert_eq!(*follower.borrow(), 1);
    }

    #[test]
    fn ended_runs_go_oldest_first_beyond_the_capacity() {
        let traces = RunTraces::new(3);
        let ids: Vec<RunId> = (0..5).map(|_| run()).collect();
        for id in &ids {
            traces.record(id, event(1));
        }
        for id in &ids[..3] {
            traces.ended(id);
        }
        assert_eq!(traces.len(), 3);
        assert!(traces.after(&ids[0], 0, 10).is_none());
        assert!(traces.after(&ids[1], 0, 10).is_none());
        assert!(traces.after(&ids[2], 0, 10).is_some());
        assert!(traces.after(&ids[4], 0, 10).is_some(), "running runs stay");
    }
}
