//! The host process: wires storage, broker, runtime, registry, orchestrator and HTTP together,
//! loads the components, delivers queued messages, and serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::broker::{Broker, Deliver, Delivery, Kind, Outcome};
use crate::handler::{Handled, Handlers, Invocation};
use crate::runtime::bindings::types as wit;
use crate::runtime::registry::Registry;
use crate::runtime::{Access, CallEnv, CallLimits, Runtime, RuntimeConfig, Scope, ServiceVersion};
use crate::saga::{Orchestrator, Runner, SagaEnds};
use crate::storage::{Storage, Transaction};

/// Everything the host is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub components_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`; none: a SQLite file in the data directory.
    pub database_url: Option<String>,
    pub runtime: RuntimeConfig,
    pub call_limits: CallLimits,
    /// How long a write waits for aggregates held by a running saga.
    pub lock_wait: Duration,
    pub max_body_bytes: usize,
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
    /// Kept here: the orchestrator and broker only hold weak references to it.
    _env: Arc<CallEnv>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
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
        let broker = Broker::new(storage.clone());
        let runtime = Arc::new(
            Runtime::new(config.runtime.clone()).map_err(|e| StartError::Engine(e.to_string()))?,
        );
        let registry = Arc::new(Registry::new(broker.clone()));
        let ends = SagaEnds::default();
        let orchestrator = Arc::new(Orchestrator::new(
            runtime.clone(),
            registry.clone(),
            broker.clone(),
            storage.clone(),
            ends.clone(),
            config.lock_wait,
        ));
        let env = Arc::new(CallEnv {
            storage: storage.clone(),
            broker: broker.clone(),
            sagas: Arc::new(Runner(orchestrator.clone())),
            limits: config.call_limits.clone(),
        });
        orchestrator.set_env(&env);
        let handlers = Handlers::new(
            runtime.clone(),
            broker.clone(),
            env.clone(),
            ends,
            config.lock_wait,
        );
        let host = Arc::new(Host {
            config: config.clone(),
            storage,
            broker: broker.clone(),
            runtime,
            registry,
            orchestrator,
            handlers,
            _env: env,
        });
        broker.set_consumer(Arc::new(Consumer(Arc::downgrade(&host))));

        for path in component_files(&config.components_dir)? {
            let bytes = std::fs::read(&path).map_err(|e| {
                StartError::Component(format!("{}: cannot read it: {e}", path.display()))
            })?;
            let version = host.load(bytes, path.display().to_string()).await?;
            tracing::info!(
                service = version.name(),
                digest = version.short_digest(),
                file = %path.display(),
                "component loaded"
            );
        }
        let queued = host.broker.recover().await?;
        if queued > 0 {
            tracing::info!(queued, "delivering messages left from the last run");
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

    /// Loads a component and installs it, replacing the current version of its service.
    pub async fn load(
        &self,
        bytes: Vec<u8>,
        source: String,
    ) -> Result<Arc<ServiceVersion>, StartError> {
        let version = self
            .runtime
            .load(bytes, source.clone())
            .await
            .map_err(|e| StartError::Component(e.to_string()))?;
        for aggregate in version.manifest.aggregates.values() {
            for field in &aggregate.indexes {
                self.storage
                    .ensure_index(version.name(), &aggregate.name, field)
                    .await?;
            }
        }
        self.registry
            .install(version.clone())
            .await
            .map_err(|conflict| StartError::Component(format!("{source}: {conflict}")))?;
        Ok(version)
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
        let Some((handler, trigger)) = service.handler_for(message.kind, &message.topic) else {
            // The loaded version no longer handles this topic: say so to whoever waits for a
            // reply rather than retrying for ever.
            let problem = format!(
                "service {} has no handler for {:?}",
                service.name(),
                message.topic
            );
            tracing::warn!(message_id = %message.id, "{problem}; the message is dropped");
            let mut tx = Transaction {
                ack: Some(delivery.seq),
                ..Transaction::default()
            };
            tx.messages.extend(self.broker.address_reply(
                &message,
                500,
                serde_json::Value::String(problem).to_string(),
            ));
            return match self.broker.commit(tx).await {
                Ok(()) | Err(crate::storage::StorageError::Duplicate(_)) => Outcome::Done,
                Err(error) => Outcome::Retry(error.to_string()),
            };
        };
        // A saga step's command is part of the saga: its writes are staged under it.
        let scope = match (message.header("saga"), message.header("step")) {
            (Some(saga), Some(_)) if message.kind != Kind::Event => Scope::Saga(saga.to_string()),
            _ => Scope::Direct,
        };
        let access = if matches!(trigger, wit::Trigger::BrokerQuery(_)) {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let user = message.header("user").map(str::to_string);
        let request = wit::Request {
            handler: handler.to_string(),
            trigger: trigger.clone(),
            payload: message.payload.clone(),
            params: Vec::new(),
            query: Vec::new(),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| wit::Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            user: user.clone(),
        };
        let invocation = Invocation {
            service,
            request,
            scope,
            access,
            user,
            message: Some((delivery.seq, message)),
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

/// `*.wasm` files of the components directory, in name order.
fn component_files(dir: &Path) -> Result<Vec<PathBuf>, StartError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        StartError::Component(format!(
            "components directory {}: {e}; build the bundled components with `make components` or pass --components DIR",
            dir.display()
        ))
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(StartError::Component(format!(
            "components directory {} has no .wasm files; build the bundled components with `make components`",
            dir.display()
        )));
    }
    Ok(files)
}

/// The broker's consumer; weak, so that a stopped host is freed even with messages in flight.
struct Consumer(Weak<Host>);

impl Deliver for Consumer {
    fn deliver(&self, delivery: Delivery) -> BoxFuture<'static, Outcome> {
        let host = self.0.upgrade();
        async move {
            match host {
                Some(host) => host.deliver(delivery).await,
                // Stopped: the message stays queued for the next start.
                None => Outcome::Done,
            }
        }
        .boxed()
    }
}
