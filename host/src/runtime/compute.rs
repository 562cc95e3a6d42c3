//! Where a component call runs, and how much CPU a long one may take from the others.
//!
//! A call starts on the task that makes it; most calls end within a millisecond there. A call
//! that keeps computing — its CPU time passes `LONG_CALL` — is moved to a pool of threads of its
//! own, where it finishes without holding up the async threads that serve everything else. On an
//! otherwise idle host the pool's calls get all the CPU there is; while short calls are in
//! flight they are paced: together they compute at most one epoch tick in `SHARE_OF` ticks (a
//! tenth of one core), each taking its turn. One service's long computations — or endless loops,
//! until `cpu-ms` stops them — therefore cannot take the host's cores from the others.
//!
//! A short call's CPU time is estimated as its wall time less the time it waited on the host
//! (no clock read on the hot path). Once moved, a call may wait for its turn, so from then on its
//! threads' own CPU clocks are read around each poll: a long call is never stopped by `cpu-ms`
//! for the time it spent paused.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

/// CPU time after which a call counts as a long computation and is moved to the pool.
pub const LONG_CALL: Duration = Duration::from_millis(5);

/// While short calls are in flight, the long calls together compute one epoch tick in this many.
const SHARE_OF: u32 = 10;

/// The CPU time of one call, and whether it has become long.
#[derive(Default)]
pub struct Meter {
    /// Set once the call has computed for longer than `LONG_CALL`.
    long: AtomicBool,
    /// Set once it runs in the pool.
    moved: AtomicBool,
    /// Its estimated CPU time when it became long, in nanoseconds.
    before_ns: AtomicU64,
    /// CPU time measured in the pool since, in nanoseconds.
    pooled_ns: AtomicU64,
}

impl Meter {
    /// Notes the call's CPU time at an epoch tick, given its estimate while it is short; returns
    /// the CPU time used so far.
    pub fn tick(&self, estimate: Duration) -> Duration {
        if self.long.load(Ordering::Relaxed) {
            return self.cpu_time(estimate);
        }
        if estimate > LONG_CALL {
            self.before_ns
                .store(estimate.as_nanos() as u64, Ordering::Relaxed);
            self.long.store(true, Ordering::Relaxed);
        }
        estimate
    }

    /// The call's CPU time so far, given its estimate while it is short.
    pub fn cpu_time(&self, estimate: Duration) -> Duration {
        if self.long.load(Ordering::Relaxed) {
            Duration::from_nanos(
                self.before_ns.load(Ordering::Relaxed) + self.pooled_ns.load(Ordering::Relaxed),
            )
        } else {
            estimate
        }
    }

    fn is_long(&self) -> bool {
        self.long.load(Ordering::Relaxed)
    }
}

/// The host is busy while a short call runs and for this many epoch ticks after one ended: the
/// work of a request lies between its component calls too (commits, messages, HTTP).
const BUSY_AFTER_TICKS: u64 = 3;

/// Tells a long call in the pool whether to pause between slices.
#[derive(Clone)]
pub struct Pacer {
    /// Calls running on the tasks that made them (not in the pool), not waiting for a saga.
    short_calls: Arc<AtomicUsize>,
    /// The epoch tick when a short call last started or ended.
    last_short: Arc<AtomicU64>,
    /// Calls in the pool.
    long_calls: Arc<AtomicUsize>,
    /// Epoch ticks since the runtime started.
    ticks: Arc<AtomicU64>,
}

impl Pacer {
    /// What the call of `meter` waits for before its next slice: nothing, unless it runs in the
    /// pool while short calls are in flight; then long enough for the other long calls to have
    /// their turn and for all of them to stay within their share.
    /// The pause ends early when the short calls are done.
    pub fn pause(&self, meter: &Meter) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        if !self.busy() || !meter.moved.load(Ordering::Relaxed) {
            return None;
        }
        let long_calls = self.long_calls.load(Ordering::Relaxed).max(1) as u32;
        let ticks = SHARE_OF * long_calls - 1;
        let pacer = self.clone();
        Some(Box::pin(async move {
            for _ in 0..ticks {
                tokio::time::sleep(super::EPOCH_TICK).await;
                if !pacer.busy() {
                    break;
                }
            }
        }))
    }

    fn busy(&self) -> bool {
        let now = self.ticks.load(Ordering::Relaxed);
        self.short_calls.load(Ordering::Relaxed) > 0
            || now.saturating_sub(self.last_short.load(Ordering::Relaxed)) <= BUSY_AFTER_TICKS
    }

    /// Notes that a short call starts or ends now.
    fn short_call_moved(&self) {
        self.last_short
            .store(self.ticks.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Stops counting the call of `meter` as a short call while it waits for something long (a
    /// saga it started), if it is one: a call that waits takes no CPU from anyone.
    pub fn waiting(&self, meter: &Meter) -> Option<Waiting> {
        if meter.moved.load(Ordering::Relaxed) {
            return None;
        }
        self.short_call_moved();
        self.short_calls.fetch_sub(1, Ordering::Relaxed);
        Some(Waiting(self.clone()))
    }
}

/// A short call waiting; counted again when dropped.
pub struct Waiting(Pacer);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.short_calls.fetch_add(1, Ordering::Relaxed);
        self.0.short_call_moved();
    }
}

/// Counts a short call until it ends or moves to the pool.
struct ShortCall<'a>(&'a Pacer);

impl<'a> ShortCall<'a> {
    fn start(pacer: &'a Pacer) -> Self {
        pacer.short_calls.fetch_add(1, Ordering::Relaxed);
        pacer.short_call_moved();
        ShortCall(pacer)
    }
}

impl Drop for ShortCall<'_> {
    fn drop(&mut self) {
        self.0.short_calls.fetch_sub(1, Ordering::Relaxed);
        self.0.short_call_moved();
    }
}

/// Counts a long call while it lasts.
struct LongCall<'a>(&'a AtomicUsize);

impl<'a> LongCall<'a> {
    fn start(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        LongCall(count)
    }
}

impl Drop for LongCall<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A long call in the pool, its threads' CPU clocks read around each poll.
struct Metered<F> {
    call: Pin<Box<F>>,
    meter: Arc<Meter>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = thread_cpu_ns();
        let polled = self.call.as_mut().poll(cx);
        let used = thread_cpu_ns().saturating_sub(started);
        self.meter.pooled_ns.fetch_add(used, Ordering::Relaxed);
        polled
    }
}

/// The pool for long calls, started on the first one.
pub struct Pool {
    runtime: OnceLock<tokio::runtime::Runtime>,
    pacer: Pacer,
}

impl Pool {
    /// A pool whose pacing reads the time from `ticks`, the engine's epoch ticks.
    pub fn new(ticks: Arc<AtomicU64>) -> Self {
        Pool {
            runtime: OnceLock::new(),
            pacer: Pacer {
                short_calls: Arc::default(),
                last_short: Arc::default(),
                long_calls: Arc::default(),
                ticks,
            },
        }
    }

    /// What epoch callbacks consult to pace long calls.
    pub fn pacer(&self) -> Pacer {
        self.pacer.clone()
    }

    /// Runs `call` here until it completes or its meter says it is long, then on the pool.
    pub async fn run<F>(&self, call: F, meter: &Arc<Meter>) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let mut call: Pin<Box<F>> = Box::pin(call);
        let here = {
            let _short = ShortCall::start(&self.pacer);
            std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
                Poll::Ready(output) => Poll::Ready(Some(output)),
                Poll::Pending if meter.is_long() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            })
            .await
        };
        if let Some(output) = here {
            return output;
        }
        meter.moved.store(true, Ordering::Relaxed);
        let _long = LongCall::start(&self.pacer.long_calls);
        let task = self.runtime().spawn(Metered {
            call,
            meter: meter.clone(),
        });
        // Whoever waits for the call gives up (a request timeout): so does the pool.
        let _abort = AbortOnDrop(task.abort_handle());
        match task.await {
            Ok(output) => output,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("a long component call was cancelled: {error}"),
        }
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores)
                .thread_name("long-calls")
                .enable_all()
                .build()
                .expect("the pool for long component calls starts")
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Dropped from async code too: do not wait for the calls still running there.
            runtime.shutdown_background();
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The calling thread's CPU time, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write; the clock exists on every Unix we build for.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
