//! Logs and metrics. Logs go to stderr through `tracing` (text or JSON);
//! metrics are kept by one process-wide Prometheus recorder and named
//! `charter_<area>_<what>_<unit>`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::Config;

/// Installs the log subscriber once; later calls (tests starting several
/// applications in one process) keep the first.
pub fn init_tracing(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = if config.log_format == "json" {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

/// Latency buckets, in seconds, for every `*_seconds` histogram.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The process-wide metrics recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!("charter_store_appends_total", "Appends committed");
    metrics::describe_counter!("charter_store_appended_events_total", "Events committed");
    metrics::describe_counter!(
        "charter_store_append_conflicts_total",
        "Appends refused for a wrong expected version"
    );
    metrics::describe_counter!(
        "charter_store_duplicate_commands_total",
        "Appends of a command id already appended (answered with the first outcome)"
    );
    metrics::describe_histogram!(
        "charter_store_append_duration_seconds",
        metrics::Unit::Seconds,
        "Time of one append call"
    );
    metrics::describe_gauge!(
        "charter_relay_lag_events",
        "Committed events not yet published"
    );
    metrics::describe_gauge!(
        "charter_relay_lag_seconds",
        "Age of the last published event when it was published"
    );
    metrics::describe_counter!("charter_relay_published_events_total", "Events published");
    metrics::describe_histogram!(
        "charter_engine_event_delay_seconds",
        metrics::Unit::Seconds,
        "From a run event's commit to the run driver seeing it"
    );
    metrics::describe_counter!("charter_engine_tasks_queued_total", "Node tasks queued");
    metrics::describe_counter!(
        "charter_engine_steps_in_one_append_total",
        "Built-in steps recorded in the append of the step before them"
    );
    metrics::describe_histogram!(
        "charter_engine_task_seconds",
        metrics::Unit::Seconds,
        "One task's work in a worker: checks, claim, call and report"
    );
    metrics::describe_counter!(
        "charter_relay_failures_total",
        "Relay pauses after a failure"
    );
    // Make the series exist from the start, so that dashboards and the
    // readiness of scrapes do not depend on traffic.
    for backend in ["postgres", "sqlite"] {
        metrics::counter!("charter_store_appends_total", "backend" => backend).increment(0);
        metrics::counter!("charter_store_append_conflicts_total", "backend" => backend)
            .increment(0);
        // Registering the histogram makes it render (empty) before traffic.
        let _ = metrics::histogram!("charter_store_append_duration_seconds", "backend" => backend);
    }
    metrics::gauge!("charter_relay_lag_events").set(0.0);
}
