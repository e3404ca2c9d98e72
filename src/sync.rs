//! The synchronization facade: every atomic the protocol touches comes from here.
//!
//! In a normal build these are `std`'s atomics (which is what the mapping holds: an
//! `AtomicU32` has the layout of a `u32`). Under `--cfg loom` they are loom's, so the
//! model checker in `loom-tests/` runs the real protocol code in [`crate::protocol`].
//! `.ci/run` fails if `std::sync::atomic` appears anywhere else in `src/`.

#[cfg(not(loom))]
pub use std::sync::atomic::{
    fence, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

#[cfg(loom)]
pub use loom::sync::atomic::{
    fence, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering,
};

/// The mutex of the async hub's registry (`hub.rs`), which the loom models run too.
#[cfg(not(loom))]
pub use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub use loom::sync::{Mutex, MutexGuard};

/// Hint to the CPU (or to loom) that this thread is spinning.
#[inline]
pub fn spin_hint() {
    #[cfg(not(loom))]
    std::hint::spin_loop();
    #[cfg(loom)]
    loom::thread::yield_now();
}

/// A full fence right after an atomic read-modify-write: Linux's `smp_mb__after_atomic`.
///
/// On x86 every read-modify-write is a `lock`-prefixed instruction, which is already a full
/// barrier (later loads cannot pass it), so the `mfence` that `fence(SeqCst)` emits would only
/// add its cost (10-30 ns here) to the round trip: a compiler fence is enough to keep the
/// compiler from moving the following loads above the RMW. Elsewhere, and under loom (whose
/// model knows nothing of x86), it is `fence(SeqCst)`: the loom models check the protocol
/// with the full fence, and x86 gives the same guarantee for free. Only use it when the last
/// atomic operation before it, on every path, is a read-modify-write.
#[inline(always)]
pub fn fence_after_rmw() {
    #[cfg(all(not(loom), any(target_arch = "x86_64", target_arch = "x86")))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(any(loom, not(any(target_arch = "x86_64", target_arch = "x86"))))]
    fence(Ordering::SeqCst);
}
