//! Where a component call runs, and how much CPU a long one may take from the others.
//!
//! A call starts on the task that makes it; most calls end within a millisecond there. A call
//! that keeps computing — its CPU time passes `LONG_CALL` — is moved to a pool of threads of its
//! own, where it finishes without holding up the async threads that serve everything else. On an
//! otherwise idle host the pool's calls get all the CPU there is. While short calls are in
//! flight, the calls that are long for their service — past `UNUSUAL` times its typical call
//! (`TypicalCpu`, and never less than `LONG_CALL`) — are paced: together they compute at most one
//! epoch tick in `SHARE_OF` ticks (a tenth of one core), each taking its turn. One service's
//! unusual computations — or endless loops, until `cpu-ms` stops them — therefore cannot take the
//! host's cores from the others, while a service whose every call is heavy (an interpreter's,
//! several milliseconds each) shares the cores fairly with the rest instead of being starved by
//! its own next calls.
//!
//! A short call's CPU time is the time its future spent being polled: the monotonic clock is read
//! around each poll (a call is polled a few times: once, and again after each wait on the host
//! and each yield at an epoch tick). Neither the host's waits nor the time a yielded call spends
//! queued behind other tasks count, so a busy host does not mistake its short calls for long
//! ones. Once moved, a call may wait for its turn, so from then on its threads' own CPU clocks are
//! read around each poll: a long call is never stopped by `cpu-ms` for the time it spent paused.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// CPU time after which a call counts as a long computation and is moved to the pool.
pub const LONG_CALL: Duration = Duration::from_millis(5);

/// While short calls are in flight, the paced calls together compute one epoch tick in this many.
const SHARE_OF: u32 = 10;

/// A call is paced once its CPU time passes this many times its service's typical call.
const UNUSUAL: u32 = 4;

/// A call is paced past this CPU time, however heavy its service's calls usually are.
const PACED_PAST_AT_MOST: Duration = Duration::from_millis(100);

/// The CPU time a service version's calls typically take: a moving average of the calls that
/// ended normally (one stopped by a limit would teach it its own endless loop).
#[derive(Default)]
pub struct TypicalCpu(AtomicU64);

impl TypicalCpu {
    /// Counts a call that ended normally.
    pub fn record(&self, used: Duration) {
        let typical = self.0.load(Ordering::Relaxed) as i64;
        let used = used.as_nanos().min(i64::MAX as u128) as i64;
        // A lost update between two calls ending at once costs nothing worth a lock.
        self.0
            .store((typical + (used - typical) / 8) as u64, Ordering::Relaxed);
    }

    /// The CPU time past which a call of this service is paced.
    pub fn paced_past(&self) -> Duration {
        let typical = Duration::from_nanos(self.0.load(Ordering::Relaxed));
        (typical * UNUSUAL).clamp(LONG_CALL, PACED_PAST_AT_MOST)
    }
}

/// The CPU time of one call, and whether it has become long.
pub struct Meter {
    /// Set once the call has computed for longer than `LONG_CALL`.
    long: AtomicBool,
    /// Set once it runs in the pool.
    moved: AtomicBool,
    /// Its CPU time when it became long, in nanoseconds.
    before_ns: AtomicU64,
    /// CPU time measured in the pool since, in nanoseconds.
    pooled_ns: AtomicU64,
    /// Time spent in the polls that ended while it was short, in nanoseconds.
    polled_ns: AtomicU64,
    /// When the poll under way began, in nanoseconds since `created`; `NOT_POLLED` between polls.
    poll_started_ns: AtomicU64,
    created: Instant,
    /// The CPU time past which it is paced (`TypicalCpu::paced_past` when it started).
    paced_past: Duration,
}

const NOT_POLLED: u64 = u64::MAX;

impl Meter {
    /// The meter of a call paced once its CPU time passes `paced_past`.
    pub fn new(paced_past: Duration) -> Self {
        Meter {
            long: AtomicBool::new(false),
            moved: AtomicBool::new(false),
            before_ns: AtomicU64::new(0),
            pooled_ns: AtomicU64::new(0),
            polled_ns: AtomicU64::new(0),
            poll_started_ns: AtomicU64::new(NOT_POLLED),
            created: Instant::now(),
            paced_past,
        }
    }

    /// Notes the call's CPU time at an epoch tick (it runs inside a poll); returns the CPU time
    /// used so far.
    pub fn tick(&self) -> Duration {
        let used = self.cpu_time();
        if !self.is_long() && used > LONG_CALL {
            self.before_ns
                .store(used.as_nanos() as u64, Ordering::Relaxed);
            self.long.store(true, Ordering::Relaxed);
        }
        used
    }

    /// The call's CPU time so far.
    pub fn cpu_time(&self) -> Duration {
        if self.is_long() {
            return Duration::from_nanos(
                self.before_ns.load(Ordering::Relaxed) + self.pooled_ns.load(Ordering::Relaxed),
            );
        }
        let started = self.poll_started_ns.load(Ordering::Relaxed);
        let current = if started == NOT_POLLED {
            0
        } else {
            self.since_created_ns().saturating_sub(started)
        };
        Duration::from_nanos(self.polled_ns.load(Ordering::Relaxed) + current)
    }

    /// Polls `call` once, timing the poll.
    fn timed_poll<F: Future + ?Sized>(
        &self,
        call: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<F::Output> {
        let started = self.since_created_ns();
        self.poll_started_ns.store(started, Ordering::Relaxed);
        let polled = call.poll(cx);
        let ended = self.since_created_ns();
        self.poll_started_ns.store(NOT_POLLED, Ordering::Relaxed);
        self.polled_ns
            .fetch_add(ended.saturating_sub(started), Ordering::Relaxed);
        polled
    }

    fn since_created_ns(&self) -> u64 {
        self.created.elapsed().as_nanos() as u64
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
    /// pool, past its pacing threshold, while short calls are in flight; then long enough for the
    /// other long calls to have their turn and for all of them to stay within their share.
    /// The pause ends early when the short calls are done.
    pub fn pause(&self, meter: &Meter) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        if !self.busy()
            || !meter.moved.load(Ordering::Relaxed)
            || meter.cpu_time() <= meter.paced_past
        {
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

/// A long call in the pool, its threads' CPU clocks read around each poll, within the span it
/// was moved from (so that what it logs there says whose call it is).
struct Metered<F> {
    call: Pin<Box<F>>,
    meter: Arc<Meter>,
    span: tracing::Span,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _within = this.span.enter();
        let started = thread_cpu_ns();
        let polled = this.call.as_mut().poll(cx);
        let used = thread_cpu_ns().saturating_sub(started);
        this.meter.pooled_ns.fetch_add(used, Ordering::Relaxed);
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
            std::future::poll_fn(|cx| match meter.timed_poll(call.as_mut(), cx) {
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
            span: tracing::Span::current(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_paced_past_a_multiple_of_its_typical_call_within_bounds() {
        let typical = TypicalCpu::default();
        assert_eq!(typical.paced_past(), LONG_CALL, "no call seen yet");
        for _ in 0..100 {
            typical.record(Duration::from_millis(10));
        }
        let paced_past = typical.paced_past();
        assert!(
            paced_past > Duration::from_millis(39) && paced_past <= Duration::from_millis(40),
            "{paced_past:?}"
        );
        for _ in 0..100 {
            typical.record(Duration::from_secs(2));
        }
        assert_eq!(typical.paced_past(), PACED_PAST_AT_MOST);
        for _ in 0..200 {
            typical.record(Duration::from_micros(50));
        }
        assert_eq!(typical.paced_past(), LONG_CALL, "a light service again");
    }

    #[tokio::test]
    async fn waiting_is_not_computing_but_computing_in_a_poll_is() {
        let pool = Pool::new(Arc::default());

        let meter = Arc::new(Meter::new(LONG_CALL));
        let started = Instant::now();
        pool.run(tokio::time::sleep(Duration::from_millis(50)), &meter)
            .await;
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(
            meter.cpu_time() < Duration::from_millis(5),
            "a call that waited 50 ms counted {:?} of CPU",
            meter.cpu_time()
        );
        assert!(!meter.is_long());

        let meter = Arc::new(Meter::new(LONG_CALL));
        let spin = async {
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(20) {
                std::hint::spin_loop();
            }
        };
        pool.run(spin, &meter).await;
        assert!(
            meter.cpu_time() >= Duration::from_millis(20),
            "a call that computed 20 ms counted {:?}",
            meter.cpu_time()
        );
    }
}
