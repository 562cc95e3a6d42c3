//! The host process: builds the parts — storage, broker, runtime, registry, orchestrator,
//! handlers, deployer, cluster membership, the HTTP front — and wires them together, loads the
//! components, resumes what was left, routes queued messages to their consumer, and serves.
//! This is the only module that knows every part.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::Instrument;

use crate::broker::{Broker, Consume, Delivery, Kind, Outcome, RetryPolicy};
use crate::cluster::Membership;
use crate::deploy::{ClusterLink, Deployer};
use crate::ends::SagaEnds;
use crate::handler::{self, Handled, Handlers, Invocation};
use crate::http::{Api, Settings};
use crate::runtime::registry::{Fetch, Registry};
use crate::runtime::{CallEnv, Runtime, RuntimeConfig};
use crate::saga::{Orchestrator, Runner, SagaConfig};
use crate::storage::{Consumed, Executions, Keys, Queue, Storage, StorageError};
use crate::telemetry;
use crate::tls::{TlsFiles, TlsListener};

/// Everything the host is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    pub data_dir: PathBuf,
    pub components_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; none: a SQLite file in the data directory.
    pub database_url: Option<String>,
    pub runtime: RuntimeConfig,
    pub sagas: SagaConfig,
    /// How often, and how far apart, a failing delivery is tried before it is dead-lettered.
    pub delivery: RetryPolicy,
    /// How the HTTP front behaves (body and component sizes, timeout, admin token).
    pub http: Settings,
    /// How often to look for changed files in the components directory; none: never.
    pub watch: Option<Duration>,
    /// `nats://…` to share the work with other hosts through NATS JetStream; none: the
    /// in-process broker.
    pub broker_url: Option<String>,
    /// How long a host may stay silent before the others count it dead and take its sagas over
    /// (with the NATS broker).
    pub lease: Duration,
    /// How long an ended saga and its history are kept.
    pub history_retention: Duration,
    /// How long a request's idempotency key and its answer are kept.
    pub idempotency_retention: Duration,
}

impl Config {
    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("saga-host.db").display()
            )
        })
    }
}

/// Why the host did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("the WebAssembly engine could not start: {0}")]
    Engine(String),
    #[error("{0}")]
    Component(String),
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started host.
pub struct Running {
    pub addr: SocketAddr,
    registry: Arc<Registry>,
    /// Keeps the parts the broker reaches only weakly alive while the host runs.
    _router: Arc<Router>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// The services loaded, by name.
    pub fn services(&self) -> Vec<String> {
        self.registry.current().by_name.keys().cloned().collect()
    }

    /// Waits for the server to stop (on a signal, when `stop` was not called).
    pub async fn stopped(self) -> std::io::Result<()> {
        let Running {
            server, shutdown, ..
        } = self;
        let result = server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        drop(shutdown);
        result
    }

    /// Stops serving: no new requests; requests in flight finish.
    pub async fn stop(self) -> std::io::Result<()> {
        let _ = self.shutdown.send(());
        self.server
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Opens storage, loads every component of the components directory (any failure stops the
/// start with the file and the cause), resumes what was left, and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    // Checked before anything is opened: a bad certificate changes nothing.
    let tls = (config.tls.as_ref())
        .map(|files| files.server_config(std::time::SystemTime::now()))
        .transpose()
        .map_err(StartError::Tls)?;
    let parts = assemble(&config).await?;
    parts
        .broker
        .set_consumer(Arc::new(Consumer(Arc::downgrade(&parts.router))));
    parts
        .deployer
        .load_components()
        .await
        .map_err(|e| StartError::Component(e.to_string()))?;
    resume(
        &config,
        &parts.host_id,
        &parts.storage,
        &parts.broker,
        &parts.orchestrator,
    )
    .await?;
    tokio::spawn(prune(
        parts.storage.clone(),
        Retention {
            history: config.history_retention,
            idempotency: config.idempotency_retention,
        },
        Arc::downgrade(&parts.orchestrator),
    ));
    if let Some(every) = config.watch {
        tokio::spawn(Deployer::watch(Arc::downgrade(&parts.deployer), every));
    }
    let registry = parts.api.registry.clone();
    let (addr, shutdown, server) = serve(config.listen, tls, parts.api).await?;
    Ok(Running {
        addr,
        registry,
        _router: parts.router,
        shutdown,
        server,
    })
}

/// A host's parts, wired together but not yet consuming, loaded or serving: `start` finishes
/// them into a serving host, the test harness into an in-process one.
pub(crate) struct Parts {
    pub host_id: String,
    pub storage: Storage,
    pub broker: Broker,
    pub orchestrator: Arc<Orchestrator>,
    pub deployer: Arc<Deployer>,
    pub router: Arc<Router>,
    pub api: Arc<Api>,
}

/// Opens storage and the broker and builds every part on them.
pub(crate) async fn assemble(config: &Config) -> Result<Parts, StartError> {
    let storage = Storage::open(&config.database_url()).await?;
    let broker = Broker::connect(
        storage.clone(),
        config.delivery.clone(),
        config.broker_url.as_deref(),
    )
    .await?;
    let host_id = uuid::Uuid::new_v4().to_string();
    let runtime = Arc::new(
        Runtime::new(config.runtime.clone()).map_err(|e| StartError::Engine(e.to_string()))?,
    );
    let registry = Arc::new(Registry::new(broker.clone()));
    let ends = SagaEnds::default();
    let orchestrator = Orchestrator::new(
        host_id.clone(),
        runtime.clone(),
        registry.clone(),
        broker.clone(),
        storage.clone(),
        ends.clone(),
        config.sagas.clone(),
    );
    let env = Arc::new(CallEnv {
        storage: storage.clone(),
        broker: broker.clone(),
        sagas: Arc::new(Runner(orchestrator.clone())),
    });
    orchestrator.set_env(&env);
    let handlers = Arc::new(Handlers::new(
        runtime.clone(),
        broker.clone(),
        env,
        ends,
        config.sagas.lock_wait,
    ));
    let router = Arc::new(Router {
        orchestrator: orchestrator.clone(),
        registry: registry.clone(),
        handlers: handlers.clone(),
        broker: broker.clone(),
    });
    let deployer = Arc::new(Deployer::new(
        runtime,
        registry.clone(),
        storage.clone(),
        &config.data_dir,
        config.components_dir.clone(),
    ));
    share_deploys(config, &host_id, &broker, &registry, &deployer);
    let api = Arc::new(Api {
        handlers,
        orchestrator: orchestrator.clone(),
        deployer: deployer.clone(),
        registry,
        storage: storage.clone(),
        broker: broker.clone(),
        settings: config.http.clone(),
    });
    Ok(Parts {
        host_id,
        storage,
        broker,
        orchestrator,
        deployer,
        router,
        api,
    })
}

/// Sagas resuming on a version this host does not have loaded get it from the deployer; on a
/// cluster, the deployer shares deploys with the other hosts through the database and NATS
/// (`deploy/cluster.rs`), and follows theirs.
fn share_deploys(
    config: &Config,
    host_id: &str,
    broker: &Broker,
    registry: &Registry,
    deployer: &Arc<Deployer>,
) {
    registry.set_fetch(Arc::downgrade(deployer) as Weak<dyn Fetch>);
    if !broker.is_shared() {
        return;
    }
    let announcer = broker.clone();
    deployer.join_cluster(ClusterLink {
        host: host_id.to_string(),
        lease: config.lease,
        announce: Arc::new(move |note: String| {
            let broker = announcer.clone();
            async move { broker.announce_deployed(note).await }.boxed()
        }),
    });
    let (notes, follow) = tokio::sync::mpsc::unbounded_channel();
    broker.listen_for_deploys(notes);
    let every = config.lease;
    tokio::spawn(Deployer::follow_cluster(
        Arc::downgrade(deployer),
        follow,
        every,
    ));
}

/// Takes up what was left: alone on its database, every saga with a timer and every queued
/// message is this host's; in a cluster, sagas and messages of hosts that are alive stay theirs,
/// and joining takes over (and keeps taking over) what dead hosts left.
async fn resume(
    config: &Config,
    host_id: &str,
    storage: &Storage,
    broker: &Broker,
    orchestrator: &Arc<Orchestrator>,
) -> Result<(), StartError> {
    let (timers, queued) = if broker.is_shared() {
        let membership = Membership {
            id: host_id.to_string(),
            storage: storage.clone(),
            broker: broker.clone(),
            orchestrator: Arc::downgrade(orchestrator),
            lease: config.lease,
        };
        (membership.join().await?, 0)
    } else {
        (
            orchestrator.take_over(i64::MAX).await?,
            broker.recover().await?,
        )
    };
    if queued + timers > 0 {
        tracing::info!(
            queued,
            timers,
            "resuming what was left: queued messages and saga timers"
        );
    }
    Ok(())
}

type Server = tokio::task::JoinHandle<std::io::Result<()>>;

async fn serve(
    listen: SocketAddr,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    api: Arc<Api>,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>, Server), StartError> {
    let listen_error = |source| StartError::Listen {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    // Each connection gets a clone of the router, which is an `Arc`. Handing axum the `Router`
    // itself would have it call `with_state(())` on every connection: the whole routing table
    // rebuilt, route by route (47 K instructions by callgrind, a `POST /exams` on a connection
    // of its own costing 1.30 M).
    let app = crate::http::router(api).into_make_service();
    let stopped = async move {
        let _ = stop.await;
    };
    let server = match tls {
        Some(tls) => {
            let listener = TlsListener::new(listener, tls).map_err(listen_error)?;
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .into_future(),
            )
        }
        None => tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .into_future(),
        ),
    };
    Ok((addr, shutdown, server))
}

/// Where a queued message goes: replies to the orchestrator, everything else to its service's
/// handler.
pub(crate) struct Router {
    orchestrator: Arc<Orchestrator>,
    registry: Arc<Registry>,
    handlers: Arc<Handlers>,
    broker: Broker,
}

impl Router {
    /// Delivers a message in a span of its own, in the trace of the work that sent it.
    pub(crate) async fn route(&self, delivery: Delivery) -> Outcome {
        let message = &delivery.message;
        let span = tracing::debug_span!(
            "deliver",
            consumer = delivery.consumer,
            topic = message.topic,
            message_id = %message.id,
            saga_id = message.saga.as_ref().map(|saga| tracing::field::display(saga.id)),
            attempts = delivery.attempts,
        );
        telemetry::continue_trace(&span, message.trace.as_deref());
        self.deliver(delivery).instrument(span).await
    }

    async fn deliver(&self, delivery: Delivery) -> Outcome {
        if delivery.message.kind == Kind::Reply {
            return self.orchestrator.on_reply(delivery).await;
        }
        let Some(service) = self.registry.service(&delivery.consumer) else {
            return Outcome::Retry(format!("service {} is not loaded", delivery.consumer));
        };
        let Some((request, scope, access)) = handler::request_for(&service, &delivery.message)
        else {
            let problem = format!(
                "service {} has no handler for {:?}",
                service.name(),
                delivery.message.topic
            );
            return self.refuse(delivery, problem).await;
        };
        let invocation = Invocation {
            service,
            user: request.user.clone(),
            request,
            scope,
            access,
            message: Some((delivery.queued, delivery.message)),
        };
        match self.handlers.run(invocation).await {
            Ok(Handled::Answered(Ok(_)) | Handled::Duplicate) => Outcome::Done,
            Ok(Handled::Answered(Err(error))) if error.status < 500 => Outcome::Done,
            Ok(Handled::Answered(Err(error))) => Outcome::Retry(error.message),
            Ok(Handled::Failed(error)) => Outcome::Retry(error.to_string()),
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }

    /// A message the loaded version of its service no longer handles: whoever waits for a reply
    /// is told why, rather than the message being retried for ever.
    async fn refuse(&self, delivery: Delivery, problem: String) -> Outcome {
        tracing::warn!(message_id = %delivery.message.id, "{problem}; the message is dropped");
        let payload = serde_json::Value::String(problem).to_string();
        let consumed = Consumed {
            consumer: delivery.consumer,
            message_id: delivery.message.id.to_string(),
            reply: self.broker.address_reply(&delivery.message, 500, payload),
        };
        self.broker.acknowledge(delivery.queued, consumed).await
    }
}

/// The broker's consumer; weak, so that a stopped host is freed even with messages in flight.
struct Consumer(Weak<Router>);

impl Consume for Consumer {
    fn consume(&self, delivery: Delivery) -> BoxFuture<'static, Outcome> {
        let router = self.0.upgrade();
        async move {
            match router {
                Some(router) => router.route(delivery).await,
                None => Outcome::Stopping,
            }
        }
        .boxed()
    }

    fn saga_ended(&self, id: String) -> BoxFuture<'static, ()> {
        let router = self.0.upgrade();
        async move {
            if let Some(router) = router
                && let Ok(id) = id.parse()
            {
                router.orchestrator.ended_elsewhere(id).await;
            }
        }
        .boxed()
    }
}

/// How long consumed-message records are kept: longer than any redelivery takes.
const CONSUMED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Ended sagas forgotten per round at most, so that one round never holds the writer long.
const PRUNE_BATCH: u32 = 10_000;

/// How long what the host keeps about finished work is kept.
struct Retention {
    /// Sagas that ended, with their history.
    history: Duration,
    /// Requests' idempotency keys, with their answers.
    idempotency: Duration,
}

/// Forgets, hourly while the host runs, old consumed-message records, idempotency keys past
/// their retention, and the sagas (with their history) that ended longer ago than theirs. A
/// saga that has not ended is never forgotten.
async fn prune(storage: Storage, retention: Retention, host: Weak<Orchestrator>) {
    // The first round a minute after the start, out of the way of the start's own work.
    let first = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut every_hour = tokio::time::interval_at(first, Duration::from_secs(3600));
    loop {
        every_hour.tick().await;
        if host.strong_count() == 0 {
            return;
        }
        let now = crate::storage::now_ms();
        let before = now - CONSUMED_RETENTION.as_millis() as i64;
        match storage.prune_consumed(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "forgot old consumed-message records"),
            Err(error) => tracing::warn!(%error, "could not prune consumed-message records"),
        }
        let before = now - retention.idempotency.as_millis() as i64;
        match storage.prune_keys(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "forgot idempotency keys past their retention"),
            Err(error) => tracing::warn!(%error, "could not prune idempotency keys"),
        }
        let before = now - retention.history.as_millis() as i64;
        loop {
            match storage.prune_ended_sagas(before, PRUNE_BATCH).await {
                Ok(0) => break,
                Ok(pruned) => {
                    tracing::info!(pruned, "forgot sagas that ended before their retention");
                    if pruned < PRUNE_BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not prune ended sagas");
                    break;
                }
            }
        }
    }
}
