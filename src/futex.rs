//! A tiny futex module: wait and wake on a 32-bit word inside the shared mapping.
//!
//! The futex is *shared* (no `FUTEX_PRIVATE_FLAG`): the kernel keys it by the physical page,
//! so a waiter in one process is woken by a waker in another. Interrupted and spurious
//! wake-ups are normal returns; every caller loops on its own condition.

use crate::sync::AtomicU32;
use rustix::thread::futex;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout` (forever with `None`).
///
/// Returns when woken, when the word no longer holds `expected`, on a signal, or on timeout;
/// the caller cannot tell which and must re-check its condition.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    // EAGAIN (value changed), EINTR and ETIMEDOUT are all "re-check the condition".
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes at most `n` waiters parked on `word`. Returns how many were woken.
pub fn wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}
