//! The end-to-end test harness: starts the real `saga-host` binary with real components built
//! from this repo and a real SQLite file in a temporary directory, talks to it over HTTP on
//! loopback, and reads its database to check what was (not) stored.

#![allow(dead_code)]

pub mod exam_flow;
pub mod sagas;
pub mod servers;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long a host may take to start (it compiles components unless the cache has them).
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The `saga-host` binary the tests start: this build's, or `SAGA_TEST_HOST_BIN` (`make soak`
/// runs a copy, so that a rebuild during the campaign does not change what it tests).
pub fn host_binary() -> PathBuf {
    std::env::var_os("SAGA_TEST_HOST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_saga-host")))
}

/// A component built by `make components`, by crate name with underscores ("guest_exam").
pub fn component(name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the components first with `make components` (`make test` does)",
        path.display()
    );
    path
}

/// A participant from examples/ built by `make examples`: ("python-grader", "grader").
pub fn example(dir: &str, name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(dir)
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the examples first with `make examples` (`make test` does)",
        path.display()
    );
    path
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "saga-host-test-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `saga-host serve`.
pub struct Host {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    http: Http,
}

/// Why a host did not start.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<ExitStatus>,
    pub stderr: String,
}

/// A directory with the given components in it.
pub fn components_dir(dir: &TempDir, names: &[&str]) -> PathBuf {
    let paths: Vec<PathBuf> = names.iter().map(|name| component(name)).collect();
    components_dir_of(dir, &paths)
}

/// A directory with these component files in it.
pub fn components_dir_of(dir: &TempDir, files: &[PathBuf]) -> PathBuf {
    let components = dir.path().join("components");
    std::fs::create_dir_all(&components).expect("create the components directory");
    for file in files {
        std::fs::copy(
            file,
            components.join(file.file_name().expect("a file name")),
        )
        .expect("copy a component");
    }
    components
}

impl Host {
    /// Starts a host on a fresh data directory with these components.
    pub fn start(dir: &TempDir, components: &[&str]) -> Host {
        Host::start_with(dir, components, &[])
    }

    pub fn start_with(dir: &TempDir, components: &[&str], args: &[&str]) -> Host {
        let components = components_dir(dir, components);
        Host::launch(dir, &components, args).unwrap_or_else(|failure| {
            panic!(
                "the host did not start ({:?}):\n{}",
                failure.status, failure.stderr
            )
        })
    }

    /// Starts a host on `dir` (its data directory is `dir/data`), reading components from
    /// `components`.
    pub fn launch(dir: &TempDir, components: &Path, args: &[&str]) -> Result<Host, StartFailure> {
        let data = dir.path().join("data");
        let cache = target_dir().join("test-cache");
        let mut child = Command::new(host_binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(&data)
            .arg("--components")
            .arg(components)
            .arg("--cache")
            .arg(&cache)
            .args(args)
            .env("RUST_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the saga-host binary");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = log.clone();
            let stderr = child.stderr.take().expect("stderr is piped");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let (ready, listening) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let listening = line.strip_prefix("saga-host listening on ");
                if let Some(rest) = listening.and_then(|rest| {
                    rest.strip_prefix("http://")
                        .or(rest.strip_prefix("https://"))
                }) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = ready.send(addr);
                }
            }
        });
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(addr) = listening.recv_timeout(Duration::from_millis(50)) {
                let http = Http::new(&addr);
                return Ok(Host {
                    child,
                    addr,
                    data,
                    log,
                    http,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                // Let the stderr reader catch up with the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Err(StartFailure {
                    status: Some(status),
                    stderr: log.lock().expect("log lock").join("\n"),
                });
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return Err(StartFailure {
                    status: None,
                    stderr: log.lock().expect("log lock").join("\n"),
                });
            }
        }
    }

    pub fn http(&self) -> &Http {
        &self.http
    }

    /// The host process's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host's resident memory (VmRSS from /proc), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the host's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in the host's /proc status:\n{status}"));
        kib << 10
    }

    /// What the host logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Stops the host the way an operator would (SIGTERM) and waits for it.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }

    /// Kills the host at once (SIGKILL), as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Rows in each of the host's tables: a bad request must leave them all as they were.
    pub async fn table_counts(&self) -> BTreeMap<&'static str, i64> {
        let mut counts = BTreeMap::new();
        for table in [
            "snapshots",
            "events",
            "staged_snapshots",
            "staged_events",
            "staged_messages",
            "queue",
            "sagas",
        ] {
            counts.insert(
                table,
                self.count(&format!("SELECT COUNT(*) FROM {table}")).await,
            );
        }
        counts
    }

    /// The number a `SELECT COUNT(*) …` on the host's SQLite file answers.
    pub async fn count(&self, query: &str) -> i64 {
        use sqlx::Connection;
        let url = format!(
            "sqlite://{}?mode=ro",
            self.data.join("saga-host.db").display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open the host's SQLite file");
        sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client for one host.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub headers: hyper::HeaderMap,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.body))
    }

    /// A response header, when it is there and readable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The `error` field of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field in {}", self.body))
            .to_string()
    }
}

impl Http {
    pub fn new(addr: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Answer {
        let headers: Vec<(&str, &str)> = content_type
            .map(|c| ("content-type", c))
            .into_iter()
            .collect();
        self.send_with(method, path, &headers, body).await
    }

    pub async fn send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Answer {
        self.try_send_with(method, path, headers, body, Duration::from_secs(60))
            .await
            .unwrap_or_else(|problem| panic!("{method} {path}: {problem}"))
    }

    /// A request that may get no answer (the server may be down or killed meanwhile).
    pub async fn try_send_with(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answer, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("not a valid request: {e}"))?;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("the body could not be read: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            headers,
        })
    }

    /// A JSON POST that may fail (the host may be killed meanwhile): None when it got no answer.
    pub async fn try_post_json(&self, path: &str, body: &Value) -> Option<Answer> {
        let headers = [("content-type", "application/json")];
        let body = body.to_string().into_bytes();
        self.try_send_with("POST", path, &headers, body, Duration::from_secs(30))
            .await
            .ok()
    }

    /// A request to the operator API, with the admin token if given.
    pub async fn admin(&self, method: &str, path: &str, token: Option<&str>) -> Answer {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        self.send_with(method, path, &headers, Vec::new()).await
    }

    /// A JSON request to the operator API, with the admin token if given.
    pub async fn admin_json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Answer {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        headers.extend(authorization.as_deref().map(|a| ("authorization", a)));
        self.send_with(method, path, &headers, body.to_string().into_bytes())
            .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None, Vec::new()).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.send(
            "POST",
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
        )
        .await
    }
}

/// The local PostgreSQL server the tests use (`SAGA_TEST_POSTGRES` overrides it): an
/// administrative URL, on which test databases are created and dropped.
fn postgres_admin_url() -> String {
    std::env::var("SAGA_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh database on the local PostgreSQL server, dropped when this is dropped. Panics with
/// what to do when the server is not there: these tests must run, not pass silently.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub async fn create(label: &str) -> PgDatabase {
        use sqlx::{Connection, Executor};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let admin = postgres_admin_url();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {admin} ({e}). Start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 (.ci/run does), or point SAGA_TEST_POSTGRES at a server"
                )
            });
        let name = format!(
            "saga_host_test_{}_{}_{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("create the test database {name}: {e}"));
        let base = admin
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin);
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Dropped from its own thread: this may run inside a test's async runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to drop the test database");
            runtime.block_on(async move {
                use sqlx::{Connection, Executor};
                if let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            })
        })
        .join();
    }
}

impl PgDatabase {
    /// The number a `SELECT COUNT(*) …` on this database answers.
    pub async fn count(&self, query: &str) -> i64 {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database");
        sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_string()))
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }
}

/// One host of a cluster on `database` and `nats`, on its own data directory, with these
/// component files (and a short lease, so that tests see take-overs quickly).
pub fn cluster_host(
    dir: &TempDir,
    components: &[PathBuf],
    database: &PgDatabase,
    nats: &NatsCluster,
    extra: &[&str],
) -> Host {
    cluster_host_on(dir, components, &database.url, &nats.url, extra)
}

/// One host of a cluster on the database and the NATS broker at these URLs (see
/// `cluster_host`).
pub fn cluster_host_on(
    dir: &TempDir,
    components: &[PathBuf],
    database: &str,
    broker: &str,
    extra: &[&str],
) -> Host {
    let components = components_dir_of(dir, components);
    let mut args = vec!["--database", database, "--broker", broker, "--lease-s", "1"];
    args.extend_from_slice(extra);
    Host::launch(dir, &components, &args).unwrap_or_else(|failure| {
        panic!(
            "a cluster host did not start ({:?}):\n{}",
            failure.status, failure.stderr
        )
    })
}

/// The local NATS server with JetStream (`SAGA_TEST_NATS` overrides it).
fn nats_server() -> String {
    std::env::var("SAGA_TEST_NATS").unwrap_or_else(|_| "127.0.0.1:4222".to_string())
}

/// A cluster name of its own on the local NATS server (so that tests running at once do not
/// share streams); its stream is deleted when this is dropped. Panics with what to do when the
/// server is not there.
pub struct NatsCluster {
    pub url: String,
    name: String,
}

impl NatsCluster {
    pub async fn create(label: &str) -> NatsCluster {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = nats_server();
        if let Err(e) = async_nats::connect(server.as_str()).await {
            panic!(
                "NATS is not reachable at {server} ({e}). Start it with JetStream: \
                 `start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
                 -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server` (.ci/run does), or point \
                 SAGA_TEST_NATS at a server"
            );
        }
        let name = format!(
            "test-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        NatsCluster {
            url: format!("nats://{server}/{name}"),
            name,
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        let stream = format!("SAGA_HOST_{}", self.name);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to delete the test stream");
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(nats_server().as_str()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&stream)
                        .await;
                }
            })
        })
        .join();
    }
}
