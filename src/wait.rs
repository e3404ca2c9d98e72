//! Waiting policies: how long to spin before parking, and the production [`Waiting`].
//!
//! `shared/MEASURED.md`: waking a parked vCPU costs ~45 µs on this machine type, a spinning
//! hand-off ~0.2 µs, and one PAUSE ~25 ns. So the spin is budgeted in time (default 50 µs, the
//! cost of one wake-up: spinning longer than a wake costs cannot save more than it burns), and
//! after 5 µs it yields between bursts, so that a peer sharing our core can run.

use crate::protocol::{Poll, Waiting};
use crate::stats::clock;
use crate::sync::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How a caller or a worker waits for its peer.
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
        if spent >= PURE_SPIN || queued == SPIN_BURST {
            std::thread::yield_now();
        }
    }
}

/// Checks between two readings of the clock (~1.6 µs of PAUSEs here).
const SPIN_BURST: u32 = 64;

/// How long to spin before yielding between bursts.
const PURE_SPIN: Duration = Duration::from_micros(5);

/// Longest single park: how often a parked caller re-checks that the server lives.
pub(crate) const PARK_SLICE: Duration = Duration::from_millis(50);

/// The production [`Waiting`] for a call: a deadline, a spin budget and a liveness check.
///
/// The deadline is `timeout` after the call began, but the clock is read only when a wait
/// first needs it (a park, or the deadline check): the call's start is a TSC reading
/// ([`clock::ticks`], ~10 ns against ~25 ns for `Instant::now`), converted with the server's
/// calibration of that counter when needed. Most calls never read the clock.
pub(crate) struct CallWait<'a> {
    begun: u64,
    ns_per_tick_q32: &'a AtomicU64,
    timeout: Duration,
    deadline: Option<Instant>,
    spin: Duration,
    parks: u32,
    alive: &'a dyn Fn() -> bool,
}

impl<'a> CallWait<'a> {
    /// A wait for a call that began at `begun` ([`clock::ticks`]) and may last `timeout`;
    /// `ns_per_tick_q32` (the header's, read only if the deadline is needed: it shares a line
    /// with the `served` counter that workers bump at every call) converts ticks to
    /// nanoseconds (0 when unknown: the deadline then counts from the first clock reading).
    pub(crate) fn new(
        mode: WaitMode,
        begun: u64,
        ns_per_tick_q32: &'a AtomicU64,
        timeout: Duration,
        alive: &'a dyn Fn() -> bool,
    ) -> Self {
        CallWait {
            begun,
            ns_per_tick_q32,
            timeout,
            deadline: None,
            spin: mode.spin_budget(),
            parks: 0,
            alive,
        }
    }

    /// The call's deadline: `timeout` after `begun`, in `Instant`s (read once).
    fn deadline(&mut self) -> Instant {
        let (begun, timeout) = (self.begun, self.timeout);
        let q32 = self.ns_per_tick_q32.load(Ordering::Relaxed);
        *self.deadline.get_or_insert_with(|| {
            let now = Instant::now();
            // A counter that reads earlier on this core than where the call began (cores'
            // counters a few ticks apart) counts as no time spent.
            let ticks = clock::ticks().wrapping_sub(begun);
            let spent = if ticks > u64::MAX / 2 {
                Duration::ZERO
            } else {
                Duration::from_nanos(clock::to_ns(ticks, q32)).min(timeout)
            };
            let begun = now.checked_sub(spent).unwrap_or(now);
            begun.checked_add(timeout).unwrap_or_else(far_future)
        })
    }
}

/// An instant no call waits for (30 years from now): the deadline of an unbounded timeout.
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

impl Waiting for CallWait<'_> {
    fn spin(&mut self, poll: &mut dyn FnMut() -> Poll) -> bool {
        spin_until(self.spin, poll)
    }

    fn next_park(&mut self) -> Option<Duration> {
        let left = self.deadline().checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        Some(left.min(PARK_SLICE))
    }

    fn peer_alive(&mut self) -> bool {
        // The first park of a call skips the check (it reads /proc): a live server answers
        // most calls within one slice, and a dead one is found at the next.
        self.parks += 1;
        self.parks == 1 || (self.alive)()
    }
}
