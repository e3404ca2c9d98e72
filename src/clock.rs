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
    let (t0, k0) = (Instant::now(), ticks());
    while t0.elapsed() < window {
        std::hint::spin_loop();
    }
    let (ns, k1) = (t0.elapsed().as_nanos() as u64, ticks());
    let dk = k1.wrapping_sub(k0).max(1);
    (((ns as u128) << 32) / dk as u128).min(u64::MAX as u128) as u64
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
