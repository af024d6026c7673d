//! The `charter` command line: the server, its maintenance tools, and a
//! client of a running server (`apply`, `diff`, `get`, `bench commands`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use charter::config::{Config, Overrides};
use charter::{Application, bench, events_cli, telemetry};
use clap::{Args, Parser, Subcommand};

/// mimalloc instead of the system allocator: the server allocates and frees
/// many small, short-lived values from several threads (JSON, events,
/// requests), which glibc's allocator serves far more slowly.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "charter",
    version,
    about = "Charter: a control plane for AI-driven organizations"
)]
struct Cli {
    /// A TOML configuration file (keys as in `charter.example.toml`).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store: `sqlite://FILE` or `postgres://…` (CHARTER_DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// PostgreSQL schema holding Charter's tables (CHARTER_DATABASE_SCHEMA).
    #[arg(long, global = true, value_name = "NAME")]
    database_schema: Option<String>,
    /// Log filter, e.g. `info` or `charter=debug` (CHARTER_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the platform (HTTP, relay) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply the store's schema migrations.
    Migrate,
    /// Print the event log as JSON lines.
    Events(EventsArgs),
    /// Check manifest files offline: every problem, with its file, document
    /// and field.
    Validate {
        /// A manifest file or a directory of them.
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: PathBuf,
    },
    /// Inspect and rebuild read-model projections.
    #[command(subcommand)]
    Projections(ProjectionsCommand),
    /// Measure the store.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Credentials for the API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Write the generated GraphQL SDL, OpenAPI document and manifest JSON
    /// Schemas.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Send manifests to a running server: created / updated / unchanged
    /// per object.
    Apply(ApplyArgs),
    /// Show what `apply` would change, changing nothing.
    Diff(ApplyArgs),
    /// Read objects back from a running server.
    Get(GetArgs),
    /// Approve or revoke tool versions on a running server.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Start, watch, inspect, approve and cancel workflow runs.
    #[command(subcommand)]
    Run(RunCommand),
}

#[derive(Subcommand)]
enum ToolCommand {
    /// Approve a version, so that it can run.
    Approve {
        name: String,
        version: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a version: it never runs again.
    Revoke {
        name: String,
        version: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum RunCommand {
    /// Start a run of a workflow; prints its id (and, with --watch, its
    /// trace).
    Start {
        workflow: String,
        /// The run's input: a JSON file, or `-` for standard input.
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// The workflow version (the latest when omitted).
        #[arg(long)]
        version: Option<String>,
        /// The job space the run works in.
        #[arg(long)]
        job_space: Option<String>,
        /// Follow the trace until the run ends.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a run's trace as it happens, until it ends (exit status 1
    /// when it failed or was cancelled).
    Watch {
        id: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a run and its nodes.
    Get {
        id: String,
        #[arg(long)]
        org: Option<String>,
        /// json, yaml or table.
        #[arg(short = 'o', long = "output", default_value = "table")]
        output: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the contract a run works under.
    Contract {
        id: String,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Answer an approval node (approve, or reject with --reject).
    Approve {
        id: String,
        node: String,
        #[arg(long)]
        reject: bool,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a run; its running tools stop.
    Cancel {
        id: String,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct ClientArgs {
    /// The server's base URL (CHARTER_SERVER; default http://127.0.0.1:8080).
    #[arg(long, env = "CHARTER_SERVER", value_name = "URL")]
    server: Option<String>,
}

#[derive(Args)]
struct ApplyArgs {
    /// A manifest file or a directory of them.
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    file: PathBuf,
    /// Go ahead even though a policy change would lock every admin out.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct GetArgs {
    /// orgs, subjects, roles, rolebindings, policies, jobspaces or audit.
    kind: String,
    /// One object's name (all of them when omitted).
    name: Option<String>,
    /// The org the objects live in (the credential's own org by default).
    #[arg(long)]
    org: Option<String>,
    /// json, yaml or table.
    #[arg(short = 'o', long = "output", default_value = "table")]
    output: String,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Write every generated schema file under a directory.
    Export {
        #[arg(long, default_value = "schema")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a signed token for a subject (`root` or `org:name`), using the
    /// server's signing key (same configuration as `serve`).
    Issue {
        #[arg(long)]
        subject: String,
        /// How long it is valid: 90s, 15m, 12h, 30d.
        #[arg(long, default_value = "12h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Each projection's generation, position and lag, as JSON lines.
    Status,
    /// Rebuild one projection from the log while the current one serves,
    /// then switch to it.
    Rebuild {
        /// The projection, e.g. `organizations`.
        name: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (CHARTER_LISTEN); port 0 picks a free one.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Publish events to JetStream at this URL (CHARTER_NATS_URL).
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// Do not run migrations at start-up.
    #[arg(long)]
    no_migrate: bool,
}

#[derive(Args)]
struct EventsArgs {
    /// First global position to print (0 prints the whole log).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep printing new events as they commit.
    #[arg(long)]
    follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Append throughput and per-append latency.
    Append {
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 100_000)]
        events: u64,
    },
    /// Catch-up read throughput of the whole log.
    Read {
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// Commands over HTTP against a running server (CHARTER_SERVER, with a
    /// root CHARTER_TOKEN): throughput, latency and projection lag.
    Commands {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 20_000)]
        commands: usize,
        /// 0: every command creates a subject; K: commands rename K shared
        /// subjects (contention).
        #[arg(long, default_value_t = 0)]
        aggregates: usize,
        /// Measure the lag of every Nth command (0: none).
        #[arg(long, default_value_t = 20)]
        lag_every: usize,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Workflow runs over HTTP against a running server (CHARTER_SERVER,
    /// with a root CHARTER_TOKEN): runs per second and start-to-completion
    /// latency of a workflow of `--steps` built-in no-op tool calls.
    Workflow {
        #[arg(long, default_value_t = 3000)]
        runs: usize,
        #[arg(long, default_value_t = 3)]
        steps: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Follow each run's trace (the long-poll) even when the start's
        /// answer already shows the run ended, as a watching client would.
        #[arg(long)]
        follow_trace: bool,
        /// The steps call a process tool (`sh`) instead of the built-in
        /// no-op: the path of real tools, through the workers.
        #[arg(long)]
        process: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One process-tool call through the executor against the bare spawn
    /// of the same program, in process.
    ToolCall {
        #[arg(long, default_value_t = 300)]
        calls: usize,
    },
    /// The whole access decision path, in process (needs no store).
    Policy {
        #[arg(long, default_value_t = 1000)]
        policies: usize,
        #[arg(long, default_value_t = 10_000)]
        bindings: usize,
        #[arg(long, default_value_t = 200_000)]
        decisions: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        database_url: cli.database_url.clone(),
        database_schema: cli.database_schema.clone(),
        log: cli.log.clone(),
        ..match &cli.command {
            Command::Serve(args) => Overrides {
                listen: args.listen.clone(),
                nats_url: args.nats_url.clone(),
                migrate_on_start: args.no_migrate.then_some(false),
                ..Overrides::default()
            },
            _ => Overrides::default(),
        }
    };
    if let Command::Validate { file } = &cli.command {
        return validate(file);
    }
    if let Command::Schema(SchemaCommand::Export { dir }) = &cli.command {
        return match charter::schemas::export(dir) {
            Ok(paths) => {
                for path in paths {
                    println!("wrote {path}");
                }
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("charter: writing schemas into {}: {error}", dir.display());
                ExitCode::FAILURE
            }
        };
    }
    if matches!(
        cli.command,
        Command::Apply(_)
            | Command::Diff(_)
            | Command::Get(_)
            | Command::Tool(_)
            | Command::Run(_)
            | Command::Bench(BenchCommand::Commands { .. })
            | Command::Bench(BenchCommand::Workflow { .. })
            | Command::Bench(BenchCommand::ToolCall { .. })
    ) {
        return client(cli.command);
    }
    if let Command::Bench(BenchCommand::Policy {
        policies,
        bindings,
        decisions,
    }) = &cli.command
    {
        return match charter::bench_policy::run(*policies, *bindings, *decisions) {
            Ok(figures) => {
                println!("{figures}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("charter: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("charter: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("charter: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("charter: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => {
            let shutdown = charter::app::shutdown_signal();
            let app = Application::build(config).await?;
            app.run_until(shutdown).await
        }
        Command::Migrate => {
            let store =
                charter_commands::connect(&config.database_url, config.store_options()).await?;
            store.migrate().await?;
            store.check_ready().await?;
            eprintln!(
                "migrated {} ({})",
                config.database_url_redacted(),
                store.backend()
            );
            Ok(())
        }
        Command::Events(args) => {
            let shutdown = charter::app::shutdown_signal();
            let store =
                charter_commands::connect(&config.database_url, config.store_options()).await?;
            store
                .check_ready()
                .await
                .context("the store is not ready (run `charter migrate` first?)")?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            events_cli::print_events(
                store,
                args.from,
                args.follow,
                args.limit,
                shutdown,
                &mut out,
            )
            .await?;
            Ok(())
        }
        Command::Validate { .. } => Ok(()),
        Command::Projections(command) => projections(command, &config).await,
        Command::Bench(BenchCommand::Append {
            writers,
            batch,
            events,
        }) => {
            let figures = bench::append(&config, writers, batch, events).await?;
            println!("{figures}");
            Ok(())
        }
        Command::Bench(
            BenchCommand::Policy { .. }
            | BenchCommand::Commands { .. }
            | BenchCommand::Workflow { .. }
            | BenchCommand::ToolCall { .. },
        ) => Ok(()),
        Command::Apply(_)
        | Command::Diff(_)
        | Command::Get(_)
        | Command::Tool(_)
        | Command::Run(_)
        | Command::Schema(_) => Ok(()),
        Command::Token(TokenCommand::Issue { subject, ttl }) => {
            let principal: charter::auth::Principal =
                subject.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let ttl = charter::auth::parse_ttl(&ttl).map_err(|e| anyhow::anyhow!(e))?;
            let key = charter::auth::SigningKey::load(&config)?;
            println!("{}", key.issue(&principal, ttl)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Read { events }) => {
            let figures = bench::read(&config, events).await?;
            println!("{figures}");
            Ok(())
        }
    }
}

async fn projections(command: ProjectionsCommand, config: &Config) -> anyhow::Result<()> {
    let store = charter_commands::connect(&config.database_url, config.store_options()).await?;
    store
        .check_ready()
        .await
        .context("the store is not ready (run `charter migrate` first?)")?;
    let models =
        charter_projections::connect(&config.database_url, config.database_schema.as_deref(), 2)
            .await?;
    match command {
        ProjectionsCommand::Status => {
            let head = store.head().await?;
            let known = models.statuses().await?;
            for projector in charter_projections::projectors() {
                let name = projector.name();
                let status = known.iter().find(|s| s.name == name);
                let position = status.map(|s| s.position).unwrap_or_default();
                let lag = store.count_after(position, 10_000_000).await?;
                let line = serde_json::json!({
                    "name": name,
                    "generation": status.map(|s| s.generation),
                    "position": position,
                    "head": head,
                    "lag_events": lag,
                    "rebuilding": status.and_then(|s| s.rebuilding).map(|(generation, position)| {
                        serde_json::json!({"generation": generation, "position": position})
                    }),
                });
                println!("{line}");
            }
            Ok(())
        }
        ProjectionsCommand::Rebuild { name } => {
            let projector = charter_projections::projector(&name).with_context(|| {
                let known: Vec<_> = charter_projections::projectors()
                    .iter()
                    .map(|p| p.name())
                    .collect();
                format!("unknown projection `{name}` (known: {})", known.join(", "))
            })?;
            let report = charter_projections::rebuild(&*store, &*models, &*projector, 1000).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// `charter apply`, `diff`, `get`: a client of a running server.
fn client(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("charter: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let token = std::env::var("CHARTER_TOKEN").ok();
    let outcome = runtime.block_on(async move {
        match command {
            Command::Apply(args) => apply(args, token, false).await,
            Command::Diff(args) => apply(args, token, true).await,
            Command::Get(args) => get(args, token).await,
            Command::Tool(command) => tool(command, token).await,
            Command::Run(command) => run_client(command, token).await,
            Command::Bench(BenchCommand::Commands {
                concurrency,
                commands,
                aggregates,
                lag_every,
                client,
            }) => {
                let plan = charter::bench_commands::Plan {
                    server: client
                        .server
                        .unwrap_or_else(|| charter::client::DEFAULT_SERVER.to_owned()),
                    root_token: token.context("set CHARTER_TOKEN to a root token")?,
                    concurrency,
                    commands,
                    aggregates,
                    lag_every,
                };
                let figures = charter::bench_commands::run(plan).await?;
                println!("{figures}");
                Ok(())
            }
            Command::Bench(BenchCommand::Workflow {
                runs,
                steps,
                concurrency,
                follow_trace,
                process,
                client,
            }) => {
                let plan = charter::bench_workflow::Plan {
                    server: client
                        .server
                        .unwrap_or_else(|| charter::client::DEFAULT_SERVER.to_owned()),
                    root_token: token.context("set CHARTER_TOKEN to a root token")?,
                    runs,
                    steps,
                    concurrency,
                    follow_trace,
                    process,
                };
                let figures = charter::bench_workflow::run(plan).await?;
                println!("{figures}");
                Ok(())
            }
            Command::Bench(BenchCommand::ToolCall { calls }) => {
                let figures = charter::bench_workflow::tool_call(calls).await?;
                println!("{figures}");
                Ok(())
            }
            _ => Ok(()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<charter::client::ServerError>() {
                Some(server) => {
                    eprintln!(
                        "charter: {} ({}, HTTP {})",
                        server.detail, server.code, server.status
                    );
                    if let Some(details) = &server.details {
                        eprintln!(
                            "{}",
                            serde_json::to_string_pretty(details).unwrap_or_default()
                        );
                    }
                }
                None => eprintln!("charter: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn apply(args: ApplyArgs, token: Option<String>, dry_run: bool) -> anyhow::Result<()> {
    let documents = charter::client::read_documents(&args.file)?;
    let client = charter::client::Client::new(args.client.server, token)?;
    let report = client.apply(&documents, dry_run, args.force).await?;
    charter::client::print_apply(&report, dry_run);
    Ok(())
}

async fn get(args: GetArgs, token: Option<String>) -> anyhow::Result<()> {
    let client = charter::client::Client::new(args.client.server, token)?;
    let (segment, in_org) = charter::client::kind_path(&args.kind)?;
    let value = if in_org || args.name.is_some() {
        let org = match (&args.org, in_org) {
            (Some(org), _) => org.clone(),
            (None, false) => args.name.clone().unwrap_or_default(),
            (None, true) => {
                let me = client.get("/v1/whoami", &[]).await?;
                me["org"]
                    .as_str()
                    .map(str::to_owned)
                    .context("root belongs to no org: name one with --org")?
            }
        };
        match (in_org, &args.name) {
            (false, _) => client.get(&format!("/v1/orgs/{org}"), &[]).await?,
            (true, Some(name)) => {
                client
                    .get(&format!("/v1/orgs/{org}/{segment}/{name}"), &[])
                    .await?
            }
            (true, None) => all_pages(&client, &format!("/v1/orgs/{org}/{segment}")).await?,
        }
    } else {
        all_pages(&client, "/v1/orgs").await?
    };
    charter::client::print_objects(&value, &args.output)
}

async fn tool(command: ToolCommand, token: Option<String>) -> anyhow::Result<()> {
    use charter::runs_cli::approve_tool;
    match command {
        ToolCommand::Approve {
            name,
            version,
            org,
            client,
        } => {
            let client = charter::client::Client::new(client.server, token)?;
            let org = client.org(org).await?;
            approve_tool(&client, &org, &name, &version, None).await
        }
        ToolCommand::Revoke {
            name,
            version,
            reason,
            org,
            client,
        } => {
            let client = charter::client::Client::new(client.server, token)?;
            let org = client.org(org).await?;
            approve_tool(&client, &org, &name, &version, Some(reason)).await
        }
    }
}

async fn run_client(command: RunCommand, token: Option<String>) -> anyhow::Result<()> {
    use charter::runs_cli as cli;
    let connect = |client: ClientArgs| charter::client::Client::new(client.server, token.clone());
    match command {
        RunCommand::Start {
            workflow,
            input,
            version,
            job_space,
            watch,
            org,
            client,
        } => {
            let client = connect(client)?;
            let org = client.org(org).await?;
            let input = cli::read_input(input.as_deref())?;
            let id = cli::start(
                &client,
                cli::Start {
                    org: &org,
                    workflow: &workflow,
                    input,
                    version,
                    job_space,
                },
            )
            .await?;
            println!("{id}");
            if watch {
                cli::watch(&client, &org, &id).await?;
            }
            Ok(())
        }
        RunCommand::Watch { id, org, client } => {
            let client = connect(client)?;
            let org = client.org(org).await?;
            cli::watch(&client, &org, &id).await
        }
        RunCommand::Get {
            id,
            org,
            output,
            client,
        } => {
            let client = connect(client)?;
            let org = client.org(org).await?;
            cli::show(&client, &org, &id, &output).await
        }
        RunCommand::Contract { id, org, client } => {
            let client = connect(client)?;
            let org = client.org(org).await?;
            cli::contract(&client, &org, &id).await
        }
        RunCommand::Approve {
            id,
            node,
            reject,
            comment,
            org,
            client,
        } => {
            let client = connect(client)?;
            let org = client.org(org).await?;
            cli::answer(&client, &org, &id, &node, reject, comment).await
        }
        RunCommand::Cancel {
            id,
            reason,
            org,
            client,
        } => {
            let client = connect(client)?;
            let org = client.org(org).await?;
            cli::cancel(&client, &org, &id, reason).await
        }
    }
}

/// Follows `nextCursor` to the end of a listing.
async fn all_pages(
    client: &charter::client::Client,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut items = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = vec![("limit", "500".to_owned())];
        if let Some(cursor) = &after {
            query.push(("after", cursor.clone()));
        }
        let page = client.get(path, &query).await?;
        match &page {
            serde_json::Value::Array(list) => return Ok(serde_json::Value::Array(list.clone())),
            _ => items.extend(page["items"].as_array().cloned().unwrap_or_default()),
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_owned()),
            None => return Ok(serde_json::Value::Array(items)),
        }
    }
}

/// `charter validate`: needs no configuration and no server.
fn validate(path: &std::path::Path) -> ExitCode {
    match charter::manifests::read(path) {
        Ok(manifests) => {
            for manifest in &manifests {
                let org = manifest.org().map(|o| o.as_str()).unwrap_or("-");
                println!("valid {} {org}/{}", manifest.kind(), manifest.name());
            }
            let count = manifests.len();
            let noun = if count == 1 {
                "manifest is"
            } else {
                "manifests are"
            };
            eprintln!("{count} {noun} valid");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for error in &errors {
                eprintln!("{error}");
            }
            let count = errors.len();
            let noun = if count == 1 { "problem" } else { "problems" };
            eprintln!("{count} {noun} found; nothing was applied");
            ExitCode::FAILURE
        }
    }
}
