//! The synchronization facade: every atomic the protocol touches comes from here.
//!
//! In a normal build these are `std`'s atomics (which is what the mapping holds: an
//! `AtomicU32` has the layout of a `u32`). Under `--cfg loom` they are loom's, so the
//! model checker in `loom-tests/` runs the real protocol code in [`crate::protocol`].
//! `.ci/run` fails if `std::sync::atomic` appears anywhere else in `src/`.

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// Hint to the CPU (or to loom) that this thread is spinning.
#[inline]
pub fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}
