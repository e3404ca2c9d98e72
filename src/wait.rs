//! Waiting policies: how long to spin before parking, and the production [`Waiting`].
//!
//! `shared/MEASURED.md`: waking a parked vCPU costs ~45 µs on this machine type, a spinning
//! hand-off ~0.2 µs, and one PAUSE ~25 ns. So the spin is budgeted in time (default 50 µs, the
//! cost of one wake-up: spinning longer than a wake costs cannot save more than it burns), and
//! after 5 µs it yields between bursts, so that a peer sharing our core can run.

use crate::clock;
use crate::protocol::{Poll, Waiting};
use crate::sync::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a caller or a worker waits for its peer.
///
/// Set it on each side, on the builders:
///
/// ```
/// use shmrpc::{Client, Request, Server, WaitMode};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), shmrpc::Error> {
/// # let name = format!("doc-waitmode-{}", std::process::id());
/// let _server = Server::builder(&name)
///     .wait_mode(WaitMode::Park) // no CPU while idle; each hand-off pays a wake-up
///     .serve(|req: Request<'_, u32>| req.to_native())?;
/// let client = Client::builder(&name)
///     .wait_mode(WaitMode::Adaptive { spin: Duration::from_micros(20) })
///     .connect::<u32, u32>()?;
/// assert_eq!(*client.request(&5)?, 5);
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin (then yield) for up to `spin`, then park on the futex. The default, with 50 µs.
    Adaptive {
        /// Longest time to spin before parking.
        spin: Duration,
    },
    /// Park on the futex at once: no CPU burnt while waiting, at the cost of a wake-up.
    Park,
}

impl Default for WaitMode {
    fn default() -> Self {
        WaitMode::Adaptive {
            spin: Duration::from_micros(50),
        }
    }
}

impl WaitMode {
    fn spin_budget(self) -> Duration {
        match self {
            WaitMode::Adaptive { spin } => spin,
            WaitMode::Park => Duration::ZERO,
        }
    }
}

/// Spins on `poll` for up to `budget`, checking it after every PAUSE: a hand-off takes a few
/// hundred nanoseconds, so exponential backoff (whose bursts reach 64 PAUSEs, 1.6 µs here)
/// would add up to a burst's length to every call. The spinner yields between bursts after
/// [`PURE_SPIN`], or at once when a whole burst saw the call still queued (its server is busy
/// with other calls: with more spinners than cores, spinning would take the CPU it needs).
///
/// The clock is first read after the first burst, not before it: most waits end within it, and
/// a reading costs ~25 ns here (`Instant::now`), a tenth of a round trip. The budget therefore
/// counts from the end of the first burst (64 checks).
pub(crate) fn spin_until(budget: Duration, poll: &mut dyn FnMut() -> Poll) -> bool {
    spin_bursts(budget, poll, None)
}

/// The loop of [`spin_until`]. `nap`, if given, is asked after every burst that did not end
/// the wait, and says whether it slept instead of letting the loop spin on (a caller beside
/// the server's lone worker, [`CallWait`]'s `spin`).
fn spin_bursts(
    budget: Duration,
    poll: &mut dyn FnMut() -> Poll,
    mut nap: Option<&mut dyn FnMut() -> bool>,
) -> bool {
    if budget.is_zero() {
        return poll() == Poll::Ready;
    }
    let mut start: Option<Instant> = None;
    loop {
        let mut queued = 0;
        for _ in 0..SPIN_BURST {
            match poll() {
                Poll::Ready => return true,
                Poll::Queued => queued += 1,
                Poll::Busy => {}
            }
            std::hint::spin_loop();
        }
        let spent = start.get_or_insert_with(Instant::now).elapsed();
        if spent >= budget {
            return poll() == Poll::Ready;
        }
        if nap.as_mut().is_some_and(|nap| nap()) {
            continue;
        }
        if spent >= PURE_SPIN || queued == SPIN_BURST {
            std::thread::yield_now();
        }
    }
}

/// Whether this process may run on more than one CPU (read once): only then can a caller that
/// naps beside the worker wake elsewhere.
fn may_nap() -> bool {
    static MANY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MANY.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// How long a caller on the CPU of the lone active worker sleeps before it looks again (the
/// timer slack of a normal thread adds up to 50 µs). Measured with `SHMRPC_BENCH_THROUGHPUT`
/// (8 calling threads, 1 worker, 2 vCPUs): 1 µs 58-66 % of the best throughput, 50 µs 76 %,
/// 100 µs 83-85 %, 200 µs 87-88 % but single rounds down to 1 %.
const ON_WORKER_CPU_NAP: Duration = Duration::from_micros(100);

/// Checks between two readings of the clock (~1.6 µs of PAUSEs here).
const SPIN_BURST: u32 = 64;

/// How long to spin before yielding between bursts.
const PURE_SPIN: Duration = Duration::from_micros(5);

/// Longest single park: how often a parked caller re-checks that the server lives.
pub(crate) const PARK_SLICE: Duration = Duration::from_millis(50);

/// The park slice of blocking callers: [`PARK_SLICE`], unless the environment variable
/// `SHMRPC_TEST_PARK_SLICE_MS` (read once) sets another, for tests that must tell a wake-up
/// from the end of a slice. Read at connect (`connection.rs`), so that a first park
/// allocates nothing (reading the environment allocates on Windows).
pub(crate) fn caller_park_slice() -> Duration {
    static SLICE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *SLICE.get_or_init(|| {
        std::env::var("SHMRPC_TEST_PARK_SLICE_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(PARK_SLICE, |ms| Duration::from_millis(ms.max(1)))
    })
}

/// A call's deadline: `timeout` after the call began. The start is a TSC reading
/// ([`clock::ticks`], ~10 ns against ~25 ns for `Instant::now` here), and the deadline is
/// converted to an `Instant` only when a wait first needs it (a park, a deadline check), with
/// the server's calibration of that counter (`Header::ns_per_tick_q32`, read only then: it
/// shares a line with the `served` counter that workers bump at every call). Most calls never
/// read the clock.
#[derive(Debug)]
pub(crate) struct Deadline {
    begun: u64,
    timeout: Duration,
    at: Option<Instant>,
}

impl Deadline {
    /// A deadline `timeout` from now.
    #[inline]
    pub(crate) fn after(timeout: Duration) -> Self {
        Deadline {
            begun: clock::ticks(),
            timeout,
            at: None,
        }
    }

    /// A deadline at `at` (a wait that began now).
    pub(crate) fn at(at: Instant) -> Self {
        Deadline {
            begun: clock::ticks(),
            timeout: at.saturating_duration_since(Instant::now()),
            at: Some(at),
        }
    }

    /// When the call began ([`clock::ticks`]).
    #[inline]
    pub(crate) fn begun(&self) -> u64 {
        self.begun
    }

    /// Time since the call began, by the counter and `ns_per_tick_q32` (0 if unknown).
    pub(crate) fn elapsed(&self, ns_per_tick_q32: &AtomicU64) -> Duration {
        // A counter that reads earlier on this core than where the call began (cores'
        // counters a few ticks apart) counts as no time spent.
        ticks_to_duration(
            clock::ticks().wrapping_sub(self.begun),
            // Relaxed: a value written once by the server at start (and clamped).
            ns_per_tick_q32.load(Ordering::Relaxed),
        )
    }

    /// The deadline as an `Instant` (converted at the first call, then remembered).
    pub(crate) fn get(&mut self, ns_per_tick_q32: &AtomicU64) -> Instant {
        if let Some(at) = self.at {
            return at;
        }
        let now = Instant::now();
        let left = self.timeout.saturating_sub(self.elapsed(ns_per_tick_q32));
        let at = now.checked_add(left).unwrap_or_else(far_future);
        self.at = Some(at);
        at
    }
}

/// `ticks` of the latency clock (a difference of two readings) as a duration, with the
/// factor of `clock::calibrate` from a mapping header. The factor comes from the server, so it
/// is clamped to a counter between 100 MHz and 100 GHz: a zero or garbage factor can neither
/// make time stand still nor make it run faster than a 100 MHz counter would (26 times too
/// fast for this machine's 2.6 GHz TSC; a deadline is converted once, over the time before a
/// call's first wait, so that moves it by microseconds). A difference above 2^63 (the later
/// reading was smaller: cores' counters a few ticks apart) counts as no time.
pub(crate) fn ticks_to_duration(ticks: u64, ns_per_tick_q32: u64) -> Duration {
    if ticks > u64::MAX / 2 {
        return Duration::ZERO;
    }
    let q32 = ns_per_tick_q32.clamp(MIN_NS_PER_TICK_Q32, MAX_NS_PER_TICK_Q32);
    Duration::from_nanos(clock::to_ns(ticks, q32))
}

/// Longest a spin budget is stretched for a wait known to be long ([`stretched`]).
pub(crate) const MAX_STRETCH: Duration = Duration::from_millis(2);

/// A spin budget of `spin` stretched by `expected`, the time the awaited work is expected to
/// take (up to [`MAX_STRETCH`] more); `spin` itself (no stretch) in a parking mode
/// (`spin == 0`). For a wait whose length is known to be long (large messages: the peer is
/// copying), parking saves little CPU but adds a wake-up (~45 µs here) to every call; spinning
/// for about the expected time costs at most about what the call itself costs.
#[inline]
pub(crate) fn stretched(spin: Duration, expected: Duration) -> Duration {
    if spin.is_zero() {
        return spin;
    }
    spin.saturating_add(expected.min(MAX_STRETCH))
}

/// 0.01 ns per tick, times 2^32.
const MIN_NS_PER_TICK_Q32: u64 = (1 << 32) / 100;

/// 10 ns per tick, times 2^32 (off x86 the "ticks" are nanoseconds: factor 1).
const MAX_NS_PER_TICK_Q32: u64 = 10 << 32;

/// The production [`Waiting`] for a call: a deadline, a spin budget and a liveness check.
pub(crate) struct CallWait<'a> {
    deadline: Deadline,
    ns_per_tick_q32: &'a AtomicU64,
    worker_cpus: &'a AtomicU64,
    spin: Duration,
    parks: u32,
    alive: &'a dyn Fn() -> bool,
}

impl<'a> CallWait<'a> {
    /// A wait for a call with `deadline`; `ns_per_tick_q32` is the mapping header's.
    #[inline]
    pub(crate) fn new(
        mode: WaitMode,
        deadline: Deadline,
        ns_per_tick_q32: &'a AtomicU64,
        worker_cpus: &'a AtomicU64,
        alive: &'a dyn Fn() -> bool,
    ) -> Self {
        // The spin does not read the clock for the deadline (parking does): a budget longer
        // than the whole timeout would overrun it, and spin for ever with `Duration::MAX`.
        let spin = mode.spin_budget().min(deadline.timeout);
        CallWait {
            deadline,
            ns_per_tick_q32,
            worker_cpus,
            spin,
            parks: 0,
            alive,
        }
    }

    /// Spins longer for a reply expected to take about `expected` (see [`stretched`]), never
    /// longer than the whole timeout.
    pub(crate) fn stretch(&mut self, expected: Duration) {
        self.spin = stretched(self.spin, expected).min(self.deadline.timeout);
    }

    /// Spins at most `max`: a wait that must end by then (the spin does not look at the
    /// deadline; parking does).
    pub(crate) fn limit_spin(&mut self, max: Duration) {
        self.spin = self.spin.min(max);
    }
}

/// An instant no call waits for (30 years from now): the deadline of an unbounded timeout.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl Waiting for CallWait<'_> {
    fn spin(&mut self, poll: &mut dyn FnMut() -> Poll) -> bool {
        let (cpus, q32, deadline) = (self.worker_cpus, self.ns_per_tick_q32, &mut self.deadline);
        // The server's only active worker last ran on this CPU, and a whole burst went by
        // without our call completing: the worker cannot run while we hold its CPU, and the
        // fair scheduler would share it with us (and with every other caller placed here) for
        // whole time slices. Sleep instead (never past the call's deadline); on waking, the
        // scheduler places us on an idle CPU if there is one. Not in a process that may use
        // one CPU only: the worker could not run elsewhere anyway, and yielding serves it
        // better than a 100 µs sleep.
        let mut nap = || {
            if !may_nap() {
                return false;
            }
            let me = crate::sys::current_cpu();
            // Relaxed: a hint; a stale value costs one nap or one burst of spinning.
            if me >= 64 || cpus.load(Ordering::Relaxed) != 1 << me {
                return false;
            }
            let left = deadline.get(q32).saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(ON_WORKER_CPU_NAP.min(left));
            true
        };
        spin_bursts(self.spin, poll, Some(&mut nap))
    }

    fn next_park(&mut self) -> Option<Duration> {
        let left = self
            .deadline
            .get(self.ns_per_tick_q32)
            .checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(left.min(caller_park_slice()))
    }

    fn peer_alive(&mut self) -> bool {
        // The first park of a call skips the check (a system call, `F_OFD_GETLK`): a live server answers
        // most calls within one slice, and a dead one is found at the next.
        self.parks += 1;
        self.parks == 1 || (self.alive)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2.5 GHz: 0.4 ns per tick, times 2^32.
    const Q32: u64 = (4 << 32) / 10;

    #[test]
    fn ticks_convert_with_the_servers_factor() {
        assert_eq!(
            ticks_to_duration(2_500_000, Q32),
            Duration::from_nanos(999_999)
        );
        // The later reading was smaller (cores' counters a few ticks apart): no time.
        assert_eq!(
            ticks_to_duration(0u64.wrapping_sub(40), Q32),
            Duration::ZERO
        );
    }

    #[test]
    fn a_peers_garbage_factor_neither_stops_time_nor_overflows() {
        // Zero: clamped to a 100 GHz counter, so a second's worth of ticks still counts.
        assert!(ticks_to_duration(1_000_000_000, 0) >= Duration::from_millis(9));
        // The largest factor and the largest forward difference: saturates, no panic.
        let huge = ticks_to_duration(u64::MAX / 2, u64::MAX);
        assert_eq!(huge, Duration::from_nanos(u64::MAX));
    }

    #[test]
    fn a_deadline_counts_from_its_start_whatever_the_factor() {
        let timeout = Duration::from_secs(3600);
        let before = Instant::now();
        let q32 = AtomicU64::new(Q32);
        let at = Deadline::after(timeout).get(&q32);
        assert!(
            at >= before + timeout - Duration::from_millis(100) && at <= Instant::now() + timeout
        );
        // A garbage factor is clamped (10 ns a tick at most): 1 ms looks like 26 ms here, not
        // like the whole timeout, and nothing panics.
        let q32 = AtomicU64::new(u64::MAX);
        let mut d = Deadline::after(timeout);
        std::thread::sleep(Duration::from_millis(1));
        assert!(
            d.elapsed(&q32) < Duration::from_secs(1),
            "{:?}",
            d.elapsed(&q32)
        );
        assert!(d.get(&q32) > Instant::now() + timeout - Duration::from_secs(1));
        // An unbounded timeout is far away, not an overflow.
        let mut d = Deadline::after(Duration::MAX);
        assert!(d.get(&q32) > Instant::now() + Duration::from_secs(86_400 * 365));
    }
}
