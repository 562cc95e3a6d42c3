//! The host process: wires storage, broker, runtime, registry, orchestrator and HTTP together,
//! loads the components, delivers queued messages, and serves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::broker::{Broker, Deliver, Delivery, Kind, Outcome, RetryPolicy};
use crate::ends::SagaEnds;
use crate::handler::{self, Handled, Handlers, Invocation};
use crate::runtime::registry::Registry;
use crate::runtime::{CallEnv, Runtime, RuntimeConfig};
use crate::saga::{Orchestrator, Runner, SagaConfig};
use crate::storage::{Consumed, Storage, Transaction};

/// Everything the host is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub components_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; none: a SQLite file in the data directory.
    pub database_url: Option<String>,
    pub runtime: RuntimeConfig,
    pub sagas: SagaConfig,
    /// How often, and how far apart, a failing delivery is tried before it is dead-lettered.
    pub delivery: RetryPolicy,
    pub max_body_bytes: usize,
    /// How long one HTTP request may take before it is answered 504.
    pub request_timeout: Duration,
    /// Largest component the admin API accepts.
    pub max_component_bytes: usize,
    /// The bearer token of the operator API (`/admin`, `/sagas`); none: `/admin` is off.
    pub admin_token: Option<String>,
    /// How often to look for changed files in the components directory; none: never.
    pub watch: Option<Duration>,
    /// `nats://…` to share the work with other hosts through NATS JetStream; none: the
    /// in-process broker.
    pub broker_url: Option<String>,
    /// How long a host may stay silent before the others count it dead and take its sagas over
    /// (with the NATS broker).
    pub lease: Duration,
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

pub struct Host {
    pub config: Config,
    pub storage: Storage,
    pub broker: Broker,
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub orchestrator: Arc<Orchestrator>,
    pub handlers: Handlers,
    /// Which component file provides which service.
    pub(crate) sources: std::sync::Mutex<crate::deploy::Sources>,
    /// Deploys happen one at a time.
    pub(crate) deploying: tokio::sync::Mutex<()>,
    /// Kept here: the orchestrator and broker only hold weak references to it.
    _env: Arc<CallEnv>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("{0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("the WebAssembly engine could not start: {0}")]
    Engine(String),
    #[error("{0}")]
    Component(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started host.
pub struct Running {
    pub host: Arc<Host>,
    pub addr: SocketAddr,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
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

impl Host {
    /// Opens storage, loads every component of the components directory (any failure stops the
    /// start with the file and the cause), delivers what is queued, and starts serving.
    pub async fn start(config: Config) -> Result<Running, StartError> {
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
        let handlers = Handlers::new(
            runtime.clone(),
            broker.clone(),
            env.clone(),
            ends,
            config.sagas.lock_wait,
        );
        let host = Arc::new(Host {
            config: config.clone(),
            storage,
            broker: broker.clone(),
            runtime,
            registry,
            orchestrator,
            handlers,
            sources: Default::default(),
            deploying: tokio::sync::Mutex::new(()),
            _env: env,
        });
        broker.set_consumer(Arc::new(Consumer(Arc::downgrade(&host))));

        host.load_components()
            .await
            .map_err(|e| StartError::Component(e.to_string()))?;
        let (timers, queued) = if host.broker.is_shared() {
            // Sagas of hosts that are alive stay theirs, and so do the messages they are handing
            // on; joining takes over (and keeps taking over) what dead hosts left.
            (crate::cluster::join(&host, &host_id).await?, 0)
        } else {
            // Alone on its database: every saga with a timer and every queued message is its.
            (
                host.orchestrator.take_over(i64::MAX).await?,
                host.broker.recover().await?,
            )
        };
        if queued + timers > 0 {
            tracing::info!(
                queued,
                timers,
                "resuming what was left: queued messages and saga timers"
            );
        }
        tokio::spawn(prune_consumed(Arc::downgrade(&host)));
        if let Some(every) = config.watch {
            tokio::spawn(Host::watch_components(Arc::downgrade(&host), every));
        }

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let app = crate::http::router(host.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.await;
                })
                .await
        });
        Ok(Running {
            host,
            addr,
            shutdown,
            server,
        })
    }

    /// Hands a queued message to the orchestrator (replies) or to its service's handler.
    async fn deliver(&self, delivery: Delivery) -> Outcome {
        if delivery.message.kind == Kind::Reply {
            return self.orchestrator.on_reply(delivery).await;
        }
        let Some(service) = self.registry.service(&delivery.consumer) else {
            return Outcome::Retry(format!("service {} is not loaded", delivery.consumer));
        };
        let message = delivery.message;
        let Some((request, scope, access)) = handler::request_for(&service, &message) else {
            // The loaded version no longer handles this topic: say so to whoever waits for a
            // reply rather than retrying for ever.
            let problem = format!(
                "service {} has no handler for {:?}",
                service.name(),
                message.topic
            );
            tracing::warn!(message_id = %message.id, "{problem}; the message is dropped");
            let reply = self.broker.address_reply(
                &message,
                500,
                serde_json::Value::String(problem).to_string(),
            );
            let tx = Transaction {
                ack: delivery.queued,
                consumed: vec![Consumed {
                    consumer: delivery.consumer.clone(),
                    message_id: message.id.to_string(),
                    reply: reply.clone(),
                }],
                messages: reply.into_iter().collect(),
                ..Transaction::default()
            };
            return match self.broker.commit(tx).await {
                Ok(()) => Outcome::Done,
                Err(crate::storage::StorageError::Duplicate(_)) => {
                    self.broker
                        .settle_duplicate(
                            delivery.queued,
                            &delivery.consumer,
                            &message.id.to_string(),
                        )
                        .await
                }
                Err(error) => Outcome::Retry(error.to_string()),
            };
        };
        let invocation = Invocation {
            service,
            user: request.user.clone(),
            request,
            scope,
            access,
            message: Some((delivery.queued, message)),
        };
        match self.handlers.run(invocation).await {
            Ok(Handled::Answered(Ok(_)) | Handled::Duplicate) => Outcome::Done,
            Ok(Handled::Answered(Err(error))) if error.status < 500 => Outcome::Done,
            Ok(Handled::Answered(Err(error))) => Outcome::Retry(error.message),
            Ok(Handled::Failed(error)) => Outcome::Retry(error.to_string()),
            Err(error) => Outcome::Retry(error.to_string()),
        }
    }
}

/// How long consumed-message records are kept: longer than any redelivery takes.
const CONSUMED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Forgets old consumed-message records, hourly, while the host runs.
async fn prune_consumed(host: Weak<Host>) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every_hour.tick().await;
        let Some(host) = host.upgrade() else { return };
        let before = crate::storage::now_ms() - CONSUMED_RETENTION.as_millis() as i64;
        match host.storage.prune_consumed(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "forgot old consumed-message records"),
            Err(error) => tracing::warn!(%error, "could not prune consumed-message records"),
        }
    }
}

/// The broker's consumer; weak, so that a stopped host is freed even with messages in flight.
struct Consumer(Weak<Host>);

impl Deliver for Consumer {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Outcome> {
        let host = self.0.upgrade();
        async move {
            match host {
                Some(host) => host.deliver(delivery).await,
                None => Outcome::Stopping,
            }
        }
        .boxed()
    }

    fn saga_ended(&self, id: String) -> BoxFuture<'static, ()> {
        let host = self.0.upgrade();
        async move {
            if let Some(host) = host
                && let Ok(id) = id.parse()
            {
                host.orchestrator.ended_elsewhere(id).await;
            }
        }
        .boxed()
    }
}
