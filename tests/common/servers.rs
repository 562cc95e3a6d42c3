//! Servers of a test's own — a PostgreSQL cluster (`initdb`, `pg_ctl`) and a `nats-server -js` —
//! on free loopback ports, in temporary directories, for tests that stop and start them (the
//! machine's shared servers are never touched). Each is stopped by what started it (its data
//! directory, its process id) when dropped, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// How long a server may take to start or stop.
const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on loopback (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The path of a program the test needs; panics saying what is missing.
fn program(name: &str, what: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: this test needs {what}"))
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + SERVER_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {SERVER_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PostgreSQL cluster of the test's own. The server refuses to run as root, so when the test
/// is root its commands run as the `postgres` user.
pub struct Postgres {
    dir: TempDir,
    pub port: u16,
    running: bool,
}

impl Postgres {
    /// A new cluster (`initdb`, trust authentication on loopback), started.
    pub fn start() -> Postgres {
        let dir = TempDir::new("postgres");
        let mut postgres = Postgres {
            dir,
            port: free_port(),
            running: false,
        };
        if as_root() {
            postgres.run(
                Command::new("chown")
                    .args(["-R", "postgres:postgres"])
                    .arg(postgres.dir.path()),
            );
        }
        let initdb = program("initdb", "PostgreSQL's server programs (initdb, pg_ctl)");
        let data = postgres.data();
        postgres.run(
            postgres
                .as_owner(&initdb)
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
                .arg(&data),
        );
        postgres.start_server();
        postgres
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub fn start_server(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.data().display()
        );
        let mut start = self.pg_ctl();
        start
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("start");
        self.run(&mut start);
        self.running = true;
        wait_for_port(self.port, "PostgreSQL");
    }

    /// Stops the server the way an operator restarting it would (`pg_ctl stop -m fast`: open
    /// connections are ended).
    pub fn stop_server(&mut self) {
        let mut stop = self.pg_ctl();
        stop.args(["-m", "fast", "stop"]);
        self.run(&mut stop);
        self.running = false;
    }

    fn pg_ctl(&self) -> Command {
        let pg_ctl = program("pg_ctl", "PostgreSQL's server programs (initdb, pg_ctl)");
        let mut command = self.as_owner(&pg_ctl);
        command
            .args(["-w", "-t", &SERVER_TIMEOUT.as_secs().to_string(), "-D"])
            .arg(self.data());
        command
    }

    fn as_owner(&self, binary: &Path) -> Command {
        if as_root() {
            let mut command = Command::new(program(
                "runuser",
                "runuser (util-linux) to run PostgreSQL as its own user",
            ));
            command.args(["-u", "postgres", "--"]).arg(binary);
            command
        } else {
            Command::new(binary)
        }
    }

    fn run(&self, command: &mut Command) {
        let output = command
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{command:?} did not run: {e}"));
        assert!(
            output.status.success(),
            "{command:?} failed ({}):\n{}{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let mut stop = self.pg_ctl();
            let _ = stop
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether the test runs as root (PostgreSQL's commands then run as `postgres`).
pub fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

/// A `nats-server -js` of the test's own, on a free loopback port with its store in a temporary
/// directory; stopped by its process id (and restartable on the same port and store).
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: TempDir,
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a server; `extra` are further arguments (such as `--user`, `--pass`).
    pub fn start(extra: &[&str]) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: TempDir::new("nats"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.start_again();
        server
    }

    /// A broker URL for the host: this server, cluster name `name`.
    pub fn url(&self, name: &str) -> String {
        format!("nats://127.0.0.1:{}/{name}", self.port)
    }

    /// Starts the server (again) on its port and store.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the NATS server is already running");
        let nats_server = program("nats-server", "nats-server (NATS with JetStream)");
        let child = Command::new(nats_server)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }

    /// Kills the server (SIGKILL, by its process id) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
