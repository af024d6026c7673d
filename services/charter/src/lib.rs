//! The `charter` process: configuration, authentication, the gateway that
//! authorizes every command and query, the HTTP surface (REST under `/v1`
//! with its OpenAPI document, GraphQL with subscriptions, WebSocket run
//! traces, `/healthz`, `/readyz`, `/metrics`), the outbox relay, projection
//! runners and workflow engine (run driver, task queue, workers) it starts,
//! the command-line tools (`serve`, `migrate`, `events`, `token`, `apply`,
//! `diff`, `get`, `tool`, `run`, `projections`, `schema`, `bench`) and
//! telemetry.
//!
//! It wires the crates below it together and must hold no business rule:
//! decisions live in `charter-domain`, storage in `charter-commands`.
//! As roles grow, each moves into its own crate beside this one (the tool
//! executor already has, in `services/executor`) and this binary keeps
//! only the wiring.

pub mod app;
pub mod auth;
pub mod bench;
pub mod bench_commands;
pub mod bench_policy;
pub mod bench_workflow;
pub mod client;
pub mod config;
pub mod engine;
pub mod events_cli;
pub mod gateway;
pub mod graphql;
pub mod http;
pub mod manifests;
pub mod rest;
pub mod runs_cli;
pub mod schemas;
pub mod telemetry;
pub mod watch;

pub use app::Application;
pub use config::Config;
