//! Waiting policies: how long to spin before parking, and the production [`Waiting`].
//!
//! `shared/MEASURED.md`: waking a parked vCPU costs ~45 µs on this machine type, a spinning
//! hand-off ~0.2 µs, and one PAUSE ~25 ns. So the spin is budgeted in time (default 50 µs, the
//! cost of one wake-up: spinning longer than a wake costs cannot save more than it burns), and
//! after 5 µs it yields between bursts, so that a peer sharing our core can run.

use crate::protocol::{Poll, Waiting};
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
pub(crate) fn spin_until(budget: Duration, poll: &mut dyn FnMut() -> Poll) -> bool {
    if budget.is_zero() {
        return poll() == Poll::Ready;
    }
    let start = Instant::now();
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
        let spent = start.elapsed();
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
pub(crate) struct CallWait<'a> {
    deadline: Instant,
    spin: Duration,
    parks: u32,
    alive: &'a dyn Fn() -> bool,
}

impl<'a> CallWait<'a> {
    pub(crate) fn new(mode: WaitMode, deadline: Instant, alive: &'a dyn Fn() -> bool) -> Self {
        CallWait {
            deadline,
            spin: mode.spin_budget(),
            parks: 0,
            alive,
        }
    }
}

impl Waiting for CallWait<'_> {
    fn spin(&mut self, poll: &mut dyn FnMut() -> Poll) -> bool {
        spin_until(self.spin, poll)
    }

    fn next_park(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
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
