//! What the host process costs, read from /proc: its CPU time (utime + stime), its read and write
//! system calls, its resident memory (VmRSS now, VmHWM its peak), and a sampler of VmRSS during a
//! measured window.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;

/// The host's CPU time so far (user + system), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let fields = stat(pid)?;
    let total = fields.get(14)? + fields.get(15)?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
}

/// The process's minor page faults so far (minflt), from /proc/PID/stat.
pub fn minor_faults(pid: u32) -> anyhow::Result<u64> {
    stat(pid)?.get(10)
}

/// The numeric fields of /proc/PID/stat, by their number in proc(5).
struct Stat(Vec<String>);

impl Stat {
    fn get(&self, field: usize) -> anyhow::Result<u64> {
        self.0
            .get(field - 3)
            .with_context(|| format!("/proc/PID/stat has field {field}"))?
            .parse::<u64>()
            .with_context(|| format!("/proc/PID/stat's field {field} is a number"))
    }
}

fn stat(pid: u32) -> anyhow::Result<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it
    // (the state, field 3, comes first).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/PID/stat has a command name")?;
    Ok(Stat(rest.split_whitespace().map(str::to_owned).collect()))
}

/// Clock ticks per second, the unit of /proc/PID/stat's times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
pub fn status_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("/proc/{pid}/status has no {field}"))
}

/// The process's read and write system calls so far, all threads (syscr and syscw of
/// /proc/PID/io: read, pread, readv… and write, pwrite, writev…, on files, sockets and eventfds
/// alike).
pub fn io_calls(pid: u32) -> anyhow::Result<IoCalls> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("read /proc/{pid}/io"))?;
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .with_context(|| format!("/proc/{pid}/io has no {name}"))
    };
    Ok(IoCalls {
        reads: field("syscr")?,
        writes: field("syscw")?,
    })
}

#[derive(Clone, Copy, Default)]
pub struct IoCalls {
    pub reads: u64,
    pub writes: u64,
}

impl IoCalls {
    pub fn since(self, before: IoCalls) -> IoCalls {
        IoCalls {
            reads: self.reads.saturating_sub(before.reads),
            writes: self.writes.saturating_sub(before.writes),
        }
    }
}

pub fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Samples the host's VmRSS every 100 ms until stopped; answers the largest sample.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, peak) = (stop.clone(), peak.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(kb) = status_kb(pid, "VmRSS") {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        RssSampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The largest VmRSS sampled, in kB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
