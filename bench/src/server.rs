//! Starts the release `saga-host` binary for a run, on a fresh data directory, and stops it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

pub struct Server {
    child: Child,
    pub addr: String,
    data: PathBuf,
}

/// The directory of the running executable: target/release, where `saga-host` is too.
fn release_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .context("the executable has a directory")?
        .to_path_buf())
}

pub fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A component built by `make components`, by crate name with underscores.
pub fn component(name: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_dir().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    if !path.exists() {
        bail!("{} is missing: run `make components`", path.display());
    }
    Ok(path)
}

/// A participant from examples/ built by `make examples`.
pub fn example(dir: &str, name: &str) -> anyhow::Result<PathBuf> {
    let path = workspace_dir().join(format!("examples/{dir}/{name}.wasm"));
    if !path.exists() {
        bail!("{} is missing: run `make examples`", path.display());
    }
    Ok(path)
}

impl Server {
    /// Starts the release host with these components on a fresh data directory.
    pub fn start(components: &[PathBuf], extra_args: &[&str]) -> anyhow::Result<Server> {
        let binary = release_dir()?.join("saga-host");
        if !binary.exists() {
            bail!(
                "{} is missing: run `cargo build --release -p saga-host` (make bench does)",
                binary.display()
            );
        }
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let data = std::env::temp_dir().join(format!(
            "saga-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data);
        let components_dir = data.join("components");
        std::fs::create_dir_all(&components_dir)?;
        for component in components {
            let name = component.file_name().context("a component file name")?;
            std::fs::copy(component, components_dir.join(name))?;
        }
        let mut child = Command::new(&binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data")
            .arg(&data)
            .arg("--components")
            .arg(&components_dir)
            .args(extra_args)
            // The default log filter, as `make run` has it; the log goes to a file, which a
            // host that does not start is reported with.
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(data.join("host.log"))?)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let (ready, listening) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("saga-host listening on http://") {
                    let _ = ready.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        let addr = match listening.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(waited) => {
                // Its output closed: it is ending. Otherwise it is stopped here.
                if waited == mpsc::RecvTimeoutError::Timeout {
                    let _ = child.kill();
                }
                let ended = match child.wait() {
                    Ok(status) if waited == mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited ({status}) before it listened")
                    }
                    _ => "did not listen within 120 s".to_string(),
                };
                let log = std::fs::read_to_string(data.join("host.log")).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&data);
                bail!("{} {ended}; its log:\n{log}", binary.display());
            }
        };
        Ok(Server { child, addr, data })
    }

    /// The host process's id (for its CPU time and memory in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host's SQLite database file.
    pub fn database(&self) -> PathBuf {
        self.data.join("saga-host.db")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
