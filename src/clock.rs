//! The latency clock: the time-stamp counter on x86 (about 9 ns to read here, against 22 ns
//! for `clock_gettime`; three reads per call sit on the round trip's path), `CLOCK_MONOTONIC`
//! nanoseconds elsewhere. The TSC is one clock for all cores on the machines Linux trusts it
//! as a clocksource on (`constant_tsc`, `nonstop_tsc`); elsewhere the queueing times between
//! two processes may be skewed by the TSC offset between cores.

use std::time::{Duration, Instant};

/// The clock now, in ticks.
#[inline]
pub(crate) fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` has no preconditions; it reads a counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(target_arch = "x86")]
    {
        // SAFETY: as above.
        unsafe { core::arch::x86::_rdtsc() }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    {
        crate::sys::monotonic_ns()
    }
}

/// The 32-bit stamp a client stores in its slot for a call that began at `ticks`:
/// ticks / 64 (wraps after about 100 s at 2.5 GHz; queueing times are measured modulo that).
#[inline]
pub(crate) fn stamp(ticks: u64) -> u32 {
    (ticks >> 6) as u32
}

/// Ticks from stamp `then` to `now_ticks`; 0 if `then` is later (a client on a core whose
/// counter runs slightly ahead, or a peer's garbage).
#[inline]
pub(crate) fn since_stamp(then: u32, now_ticks: u64) -> u64 {
    let d = ((now_ticks >> 6) as u32).wrapping_sub(then);
    if d > u32::MAX / 2 {
        0
    } else {
        u64::from(d) << 6
    }
}

/// Nanoseconds per tick times 2^32, measured against `Instant` over `window`.
pub(crate) fn calibrate(window: Duration) -> u64 {
    if cfg!(not(any(target_arch = "x86_64", target_arch = "x86"))) {
        return 1 << 32;
    }
    let (t0, k0) = paired();
    while t0.elapsed() < window {
        std::hint::spin_loop();
    }
    let (t1, k1) = paired();
    let ns = t1.saturating_duration_since(t0).as_nanos() as u64;
    let dk = k1.wrapping_sub(k0).max(1);
    (((ns as u128) << 32) / dk as u128).min(u64::MAX as u128) as u64
}

/// An `Instant` and the counter at the same moment: the reading of `Instant::now` between two
/// counter reads that lie closest together, of a few tries. A thread preempted between the
/// two clocks' readings (a loaded machine) would otherwise pair one clock's reading with the
/// other's from milliseconds later, and skew the factor by as much as the window itself.
fn paired() -> (Instant, u64) {
    let mut best = (Instant::now(), ticks(), u64::MAX);
    for _ in 0..8 {
        let before = ticks();
        let at = Instant::now();
        let width = ticks().wrapping_sub(before);
        if width < best.2 {
            best = (at, before.wrapping_add(width / 2), width);
        }
    }
    (best.0, best.1)
}

/// `ticks` in nanoseconds, with the factor from [`calibrate`].
#[inline]
pub(crate) fn to_ns(ticks: u64, ns_per_tick_q32: u64) -> u64 {
    ((ticks as u128 * ns_per_tick_q32 as u128) >> 32).min(u64::MAX as u128) as u64
}

/// Ticks in `d`, with the factor from [`calibrate`] (a factor of 0 counts as 1 ns per tick).
pub(crate) fn ticks_for(d: Duration, ns_per_tick_q32: u64) -> u64 {
    let q32 = if ns_per_tick_q32 == 0 {
        1 << 32
    } else {
        ns_per_tick_q32
    };
    ((d.as_nanos() << 32) / q32 as u128).min(u64::MAX as u128) as u64
}

#[cfg(all(test, not(loom), any(target_arch = "x86_64", target_arch = "x86")))]
mod tests {
    use super::*;

    #[test]
    fn a_calibrated_factor_turns_ticks_into_the_instant_clocks_time() {
        let q32 = calibrate(Duration::from_millis(5));
        let (t0, k0) = paired();
        // Time for the clocks to run apart if the factor were wrong; nothing waits on it.
        std::thread::sleep(Duration::from_millis(30));
        let (t1, k1) = paired();
        let by_instant = t1.duration_since(t0).as_nanos() as f64;
        let by_ticks = to_ns(k1.wrapping_sub(k0), q32) as f64;
        let ratio = by_ticks / by_instant;
        assert!(
            (0.95..1.05).contains(&ratio),
            "the factor gave {by_ticks} ns for {by_instant} ns by Instant"
        );
    }
}
