//! `charter serve` as a library: [`Application::build`] connects the store,
//! migrates it, picks the publisher (JetStream when a NATS URL is set, the
//! in-process bus otherwise) and binds the listener, reporting the real
//! address so that tests can run the whole thing on port 0.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use charter_commands::{CommandHandler, EventStore};
use charter_projections::access::AccessIndex;

use crate::auth::{Authenticator, SigningKey};
use crate::gateway::Gateway;
use charter_commands::bus::InProcessBus;
use charter_commands::jetstream::{JetStreamConfig, JetStreamPublisher};
use charter_commands::publish::EventPublisher;
use charter_commands::relay::OutboxRelay;
use charter_projections::{ProjectionRunner, ReadModels};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Config;
use crate::http::{AppState, router};

pub struct Application {
    config: Config,
    store: Arc<dyn EventStore>,
    read_models: Arc<dyn ReadModels>,
    listener: TcpListener,
    address: SocketAddr,
    publisher: Arc<dyn EventPublisher>,
    destination: String,
    bus: Option<InProcessBus>,
    signing_key: SigningKey,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        crate::telemetry::metrics();
        let store = charter_commands::connect(&config.database_url, config.store_options())
            .await
            .with_context(|| format!("opening the store {}", config.database_url_redacted()))?;
        if config.migrate_on_start {
            store
                .migrate()
                .await
                .with_context(|| format!("migrating {}", config.database_url_redacted()))?;
        }
        // One reader of the log for the whole process: the relay, the
        // projections and the access index follow it from memory.
        let store: Arc<dyn EventStore> =
            match charter_commands::tail::TailedStore::start(Arc::clone(&store), 20_000).await {
                Ok(tailed) => Arc::new(tailed),
                Err(error) => {
                    tracing::warn!(%error, "the log tail could not start; readers query the store");
                    store
                }
            };
        let read_models = charter_projections::connect(
            &config.database_url,
            config.database_schema.as_deref(),
            4,
        )
        .await
        .context("opening the read models")?;
        let (publisher, destination, bus): (Arc<dyn EventPublisher>, String, _) =
            match &config.nats_url {
                Some(url) => {
                    let mut js = JetStreamConfig::new(url.clone());
                    js.stream = config.nats_stream.clone();
                    js.subject_prefix = config.nats_subject_prefix.clone();
                    let publisher = JetStreamPublisher::connect(js)
                        .await
                        .map_err(|e| anyhow::anyhow!("connecting to NATS at {url}: {e}"))?;
                    (
                        Arc::new(publisher),
                        format!("jetstream:{}", config.nats_stream),
                        None,
                    )
                }
                None => {
                    let bus = InProcessBus::default();
                    (Arc::new(bus.clone()), "in-process".to_owned(), Some(bus))
                }
            };
        let requested = config
            .listen_addr()
            .context("configuration key `listen` is not an address")?;
        let listener = TcpListener::bind(requested)
            .await
            .with_context(|| format!("binding {requested} (configuration key `listen`)"))?;
        let address = listener.local_addr()?;
        let signing_key = SigningKey::load(&config).context("loading the token signing key")?;
        Ok(Self {
            config,
            store,
            read_models,
            listener,
            address,
            publisher,
            destination,
            bus,
            signing_key,
        })
    }

    /// The address actually bound (the real port when `listen` used 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    pub fn store(&self) -> Arc<dyn EventStore> {
        Arc::clone(&self.store)
    }

    pub fn read_models(&self) -> Arc<dyn ReadModels> {
        Arc::clone(&self.read_models)
    }

    /// The in-process bus, in the embedded mode.
    pub fn bus(&self) -> Option<&InProcessBus> {
        self.bus.as_ref()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets
    /// in-flight requests and tool calls finish (at most the configured
    /// grace) and stops the relay.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let relay = OutboxRelay::new(
            Arc::clone(&self.store),
            Arc::clone(&self.publisher),
            &self.destination,
        );
        let published = relay.published();
        let (stop, stopped) = watch::channel(false);
        // The relay stops last: it publishes what the calls in flight
        // record while the process stops.
        let (stop_relay, relay_stopped) = watch::channel(false);
        let relay_task = tokio::spawn(relay.run(wait_for_stop(relay_stopped)));
        // Every projection is known before the server answers, so that a
        // reader waiting for one from the start finds it (its runner would
        // register it too, a moment later).
        for projector in charter_projections::projectors() {
            if let Err(error) = self.read_models.register(projector.name()).await {
                tracing::warn!(projection = projector.name(), %error, "registering a projection");
            }
        }
        let mut visible = std::collections::HashMap::new();
        let projection_tasks: Vec<_> = charter_projections::projectors()
            .into_iter()
            .map(|projector| {
                let name = projector.name();
                let runner = ProjectionRunner::new(
                    Arc::clone(&self.store),
                    Arc::clone(&self.read_models),
                    projector,
                );
                visible.insert(name, runner.visible());
                tokio::spawn(runner.run(wait_for_stop(stopped.clone())))
            })
            .collect();
        // Where the log stood as this process started: the in-memory
        // followers (the access index, the run driver) replay it first.
        let head_at_start = self.store.head().await.unwrap_or_default();
        let access = Arc::new(AccessIndex::new());
        let caught_up = {
            let mut visible = access.visible();
            let started = std::time::Instant::now();
            tokio::spawn(async move {
                if visible.wait_for(|at| *at >= head_at_start).await.is_ok() {
                    tracing::info!(
                        seconds = started.elapsed().as_secs_f64(),
                        position = %head_at_start,
                        "the access index caught up with the log"
                    );
                }
            });
            (access.visible(), head_at_start)
        };
        let access_task = tokio::spawn(
            Arc::clone(&access).follow(Arc::clone(&self.store), wait_for_stop(stopped.clone())),
        );
        let handler = CommandHandler::new(Arc::clone(&self.store));
        // Other processes' appends make cached aggregate states stale.
        let cache_task = tokio::spawn(handler.clone().follow_log(head_at_start));
        let queue: Arc<dyn crate::engine::queue::TaskQueue> = match &self.config.nats_url {
            Some(url) => {
                let client = async_nats::ConnectOptions::new()
                    .name("charter-tasks")
                    .retry_on_initial_connect()
                    .max_reconnects(None)
                    .connect(url.as_str())
                    .await
                    .with_context(|| format!("connecting to NATS at {url} for the task queue"))?;
                let (stream, subject) = self.config.task_stream();
                crate::engine::queue::JetStreamQueue::connect(client, &stream, &subject).await?
            }
            None => Arc::new(crate::engine::queue::InProcessQueue::default()),
        };
        let traces = Arc::new(crate::engine::RunTraces::default());
        let (feed, feed_receiver) = crate::engine::RunFeed::new(Arc::clone(&traces));
        let engine = Arc::new(crate::engine::Engine {
            traces: Arc::clone(&traces),
            feed: feed.clone(),
            feed_receiver: std::sync::Mutex::new(Some(feed_receiver)),
            handler: handler.clone(),
            access: Arc::clone(&access),
            executor: Arc::new(charter_executor::Executor::new(Arc::new(
                charter_executor::SecretDir(self.config.secrets_path()),
            ))),
            queue,
            running: Arc::default(),
            in_hand: Arc::default(),
            workers: self.config.workers,
            shutdown_grace: Duration::from_secs(self.config.shutdown_grace_seconds),
        });
        let engine_tasks = Arc::clone(&engine).spawn(Arc::clone(&self.store), stopped.clone());
        let gateway = Arc::new(Gateway {
            run_traces: traces,
            run_feed: feed,
            handler,
            read_models: Arc::clone(&self.read_models),
            access,
            auth: Authenticator::new(self.signing_key.clone()),
            read_wait: Duration::from_millis(self.config.read_wait_ms),
            visible,
        });
        let upkeep = tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                crate::telemetry::metrics().run_upkeep();
            }
        });
        tracing::info!(
            store = self.store.backend(),
            database = %self.config.database_url_redacted(),
            publisher = self.publisher.kind(),
            "listening on http://{}",
            self.address
        );
        let app = router(AppState {
            store: Arc::clone(&self.store),
            caught_up: Some(caught_up),
        })
        .merge(crate::rest::router(
            Arc::clone(&gateway),
            self.config.max_body_bytes,
        ))
        .merge(crate::graphql::router(gateway, self.config.max_body_bytes))
        .layer(axum::middleware::map_response(
            crate::http::problem_for_plain_errors,
        ));
        let signal_stop = stop.clone();
        let server = axum::serve(self.listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down");
            let _ = signal_stop.send(true);
        });
        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        let mut after_signal = stopped.clone();
        let result = tokio::select! {
            result = server.into_future() => result.map_err(anyhow::Error::from),
            () = async {
                wait_for_stop_ref(&mut after_signal).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(grace_seconds = grace.as_secs(), "requests still open after the grace period; closing");
                Ok(())
            }
        };
        let _ = stop.send(true);
        upkeep.abort();
        cache_task.abort();
        let _ = access_task.await;
        for task in engine_tasks {
            let _ = task.await;
        }
        let _ = stop_relay.send(true);
        let _ = relay_task.await;
        for task in projection_tasks {
            let _ = task.await;
        }
        tracing::info!(published = %*published.borrow(), "stopped");
        result
    }
}

async fn wait_for_stop(mut stopped: watch::Receiver<bool>) {
    wait_for_stop_ref(&mut stopped).await;
}

async fn wait_for_stop_ref(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

/// Installs SIGINT and SIGTERM handlers now, and returns a future that
/// completes when either arrives. Installing before the server announces
/// its address means a signal sent right after the announcement is never
/// lost to the default action (killing the process).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
