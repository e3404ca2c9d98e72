//! The large-message arena: messages that do not fit their slot are written into a run of
//! chunks of one region of the mapping (after the slots), recorded in the slot's `ext` word.
//! DESIGN.md section 4b has the layout, the invariant and the crash cases; this file is the
//! protocol, generic over [`ArenaWords`] so that the loom models run it on the heap.
//!
//! - **Bitmap**: bit `c` set = chunk `c` belongs to some slot's run.
//! - **Runs** are recorded in the owning slot's `ext` word ([`Extent`]); a run belongs to
//!   whoever owns the slot, and goes back when the slot does (whoever moves a slot to FREE
//!   first calls [`free`]).
//! - **Allocation** takes the arena lock (a word: `LOCKED | owner entry`), so that two
//!   allocators never take the same free bits. It records the run in the slot *before* it sets
//!   the bits. Freeing and trimming take no lock: they un-record first, then clear the bits.
//! - **Invariant**, outside the lock: every set bit is recorded in some slot (`set ⊆
//!   recorded`). A process can die at any point: inside the lock (it recorded a run and set
//!   some of its bits), the bits it set are recorded, so reaping its slots frees them, which
//!   must happen before its lock is broken ([`break_lock`]); between un-recording and clearing
//!   (a free), bits stay set that no slot records: the reaper's [`sweep`] (under the lock)
//!   clears them. Counters change by what a bit operation actually changed (its previous
//!   value), so two clearers of one bit count it once.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Bytes of one chunk of the arena.
pub const CHUNK: usize = 64 * 1024;
/// Most chunks an arena has (an [`Extent`] packs a chunk index and a count in 16 bits each).
pub const MAX_CHUNKS: u32 = 65535;
/// Bytes of the arena bitmap (one bit per chunk, for up to [`MAX_CHUNKS`]).
pub const BITMAP_BYTES: usize = 8192;
/// The lock word's "held" bit; the low bits name the holder's process entry (0: the server).
pub const LOCKED: u32 = 1 << 31;

/// Where the arena's words live: the mapping in production, the heap under loom.
pub trait ArenaWords {
    /// Chunks in the arena (from this process's own copy of the layout).
    fn arena_chunks(&self) -> u32;
    /// The arena lock: 0, or [`LOCKED`] | the holder's process entry.
    fn arena_lock(&self) -> &AtomicU32;
    /// Word `w` of the arena bitmap (`w < arena_chunks().div_ceil(64)`).
    fn arena_bits(&self, w: usize) -> &AtomicU64;
    /// Chunks allocated (statistics).
    fn arena_used(&self) -> &AtomicU32;
    /// Slots that can record a run.
    fn ext_slots(&self) -> u32;
    /// The `ext` word of slot `slot`: the run it records ([`Extent::pack`]), or 0.
    fn slot_ext(&self, slot: u32) -> &AtomicU32;
    /// The deliberate bug these words run with (loom models only).
    #[cfg(loom)]
    fn arena_mutant(&self) -> ArenaMutant {
        ArenaMutant::None
    }
}

/// A deliberate bug of the arena protocol that the loom models switch on to prove that they
/// catch it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArenaMutant {
    /// The real protocol.
    None,
    /// `alloc` sets the bits before it records the run (a death in between leaks them).
    BitsBeforeRecord,
    /// `free` clears the bits before it un-records the run (another allocator can take them
    /// while they are still recorded here).
    ClearBeforeUnrecord,
    /// `alloc` scans and sets bits without taking the lock.
    NoLock,
    /// `break_lock` breaks a dead holder's lock without reaping its slots first.
    BreakBeforeReap,
}

#[inline(always)]
fn mutated<W: ArenaWords + ?Sized>(_w: &W, _m: ArenaMutant) -> bool {
    #[cfg(loom)]
    return _w.arena_mutant() == _m;
    #[cfg(not(loom))]
    return false;
}

/// A run of chunks: `count` (1..) chunks from chunk `first`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Extent {
    /// The first chunk.
    pub first: u32,
    /// How many chunks.
    pub count: u32,
}

impl Extent {
    /// The `ext` word for this run.
    pub fn pack(self) -> u32 {
        (self.first << 16) | self.count
    }
    /// The run an `ext` word records, if any (any value, a peer's garbage included, decodes
    /// to a run or to none; whether it lies inside the arena is [`Extent::within`]'s question).
    pub fn unpack(word: u32) -> Option<Extent> {
        let count = word & 0xffff;
        (count != 0).then_some(Extent {
            first: word >> 16,
            count,
        })
    }
    /// Whether the run lies inside an arena of `chunks` chunks.
    pub fn within(self, chunks: u32) -> bool {
        self.first
            .checked_add(self.count)
            .is_some_and(|end| end <= chunks)
    }
    /// Byte offset of the run in the arena.
    pub fn offset(self) -> usize {
        self.first as usize * CHUNK
    }
    /// Bytes of the run.
    pub fn bytes(self) -> usize {
        self.count as usize * CHUNK
    }
}

/// Chunks needed for `bytes` bytes.
pub fn chunks_for(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(CHUNK as u64)
}

/// Runs `f(word index, mask)` for each bitmap word that `run` covers.
fn for_words(run: Extent, mut f: impl FnMut(usize, u64)) {
    let (mut c, end) = (run.first, run.first + run.count);
    while c < end {
        let w = (c / 64) as usize;
        let lo = c % 64;
        let hi = (end - w as u32 * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        f(w, mask);
        c = w as u32 * 64 + hi;
    }
}

/// Sets `run`'s bits; returns how many were newly set.
fn set_bits<W: ArenaWords + ?Sized>(w: &W, run: Extent) -> u32 {
    let mut n = 0;
    for_words(run, |i, mask| {
        // SYNC: AcqRel: ordered after the run's record (Release store) in `alloc`.
        let prev = w.arena_bits(i).fetch_or(mask, Ordering::AcqRel);
        n += (mask & !prev).count_ones();
    });
    n
}

/// Clears `run`'s bits; returns how many were set.
fn clear_bits<W: ArenaWords + ?Sized>(w: &W, run: Extent) -> u32 {
    let mut n = 0;
    for_words(run, |i, mask| {
        // SYNC: AcqRel: a later allocator that sees the bit clear (its Acquire scan under the
        // lock) also sees that we are done with the chunk's bytes.
        let prev = w.arena_bits(i).fetch_and(!mask, Ordering::AcqRel);
        n += (mask & prev).count_ones();
    });
    n
}

/// What [`alloc`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Alloc {
    /// The run now recorded in the slot.
    Got(Extent),
    /// The lock is held by process entry `holder`: try again shortly.
    Busy(u32),
    /// No free run of at least `min` chunks: wait for frees.
    Full,
}

/// Takes the arena lock for process entry `owner` without waiting: `Err(holder)` if held.
pub fn try_lock<W: ArenaWords + ?Sized>(w: &W, owner: u32) -> Result<(), u32> {
    // SYNC: Acquire pairs with `unlock`'s Release: the previous holder's bit and record
    // changes are visible to our scan.
    w.arena_lock()
        .compare_exchange(0, LOCKED | owner, Ordering::Acquire, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|held| held & !LOCKED)
}

/// Lets go of the arena lock held by `owner` (no change if another holds it: a reaper broke a
/// lock it believed dead, which only a peer breaking the protocol makes wrong).
pub fn unlock<W: ArenaWords + ?Sized>(w: &W, owner: u32) {
    // SYNC: Release publishes this holder's changes to the next holder's Acquire.
    let _ =
        w.arena_lock()
            .compare_exchange(LOCKED | owner, 0, Ordering::Release, Ordering::Relaxed);
}

/// Allocates for `slot` (owned by the caller, process entry `owner`, recording no run) a free
/// run of at least `min` chunks: the first one of `max` chunks or more (cut to `max`), else the
/// longest one. Records the run in the slot, then sets its bits, all under the arena lock.
pub fn alloc<W: ArenaWords + ?Sized>(w: &W, owner: u32, slot: u32, min: u32, max: u32) -> Alloc {
    let locking = !mutated(w, ArenaMutant::NoLock);
    if locking {
        if let Err(holder) = try_lock(w, owner) {
            return Alloc::Busy(holder);
        }
    }
    let found = find_run(w, min.max(1), max.max(min).max(1));
    let got = match found {
        Some(run) => {
            if mutated(w, ArenaMutant::BitsBeforeRecord) {
                let n = set_bits(w, run);
                w.arena_used().fetch_add(n, Ordering::Relaxed);
                // SYNC: as below.
                w.slot_ext(slot).store(run.pack(), Ordering::Release);
            } else {
                // SYNC: Release: the record precedes the bits (a dead allocator's set bits
                // are always recorded: the module's invariant).
                w.slot_ext(slot).store(run.pack(), Ordering::Release);
                let n = set_bits(w, run);
                w.arena_used().fetch_add(n, Ordering::Relaxed);
            }
            Alloc::Got(run)
        }
        None => Alloc::Full,
    };
    if locking {
        unlock(w, owner);
    }
    got
}

/// The first free run of `max` chunks or more (cut to `max`), else the longest free run of at
/// least `min`; read under the lock.
fn find_run<W: ArenaWords + ?Sized>(w: &W, min: u32, max: u32) -> Option<Extent> {
    let chunks = w.arena_chunks();
    let mut best: Option<Extent> = None;
    let mut start = 0u32;
    let mut c = 0u32;
    while c <= chunks {
        let free = c < chunks && {
            // SYNC: Acquire pairs with a free's AcqRel clear: its bytes are done with.
            let word = w.arena_bits((c / 64) as usize).load(Ordering::Acquire);
            word & (1 << (c % 64)) == 0
        };
        if free {
            if c + 1 - start >= max {
                return Some(Extent {
                    first: start,
                    count: max,
                });
            }
        } else {
            let len = c - start;
            if len >= min && best.is_none_or(|b| len > b.count) {
                best = Some(Extent {
                    first: start,
                    count: len,
                });
            }
            start = c + 1;
        }
        c += 1;
    }
    best
}

/// Frees the run `slot` records, if any (its owner's step before the slot goes FREE; also the
/// reaper's for a dead owner's slot): un-records it, then clears its bits. Returns the chunks
/// freed. A recorded run outside the arena (a peer's garbage) is un-recorded and nothing else.
pub fn free<W: ArenaWords + ?Sized>(w: &W, slot: u32) -> u32 {
    let word = w.slot_ext(slot);
    if word.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let run = if mutated(w, ArenaMutant::ClearBeforeUnrecord) {
        let Some(run) = Extent::unpack(word.load(Ordering::Acquire)) else {
            return 0;
        };
        if run.within(w.arena_chunks()) {
            let n = clear_bits(w, run);
            w.arena_used().fetch_sub(n, Ordering::Relaxed);
        }
        word.store(0, Ordering::Release);
        return run.count;
    } else {
        // SYNC: AcqRel: whoever swaps the record out frees the run, exactly once.
        Extent::unpack(word.swap(0, Ordering::AcqRel))
    };
    let Some(run) = run else { return 0 };
    if !run.within(w.arena_chunks()) {
        return 0;
    }
    let n = clear_bits(w, run);
    w.arena_used().fetch_sub(n, Ordering::Relaxed);
    n
}

/// Gives back all but the first `keep` (>= 1) chunks of the run `slot` records (its owner, after
/// writing a message shorter than its run): shrinks the record, then clears the tail's bits.
pub fn trim<W: ArenaWords + ?Sized>(w: &W, slot: u32, keep: u32) {
    let word = w.slot_ext(slot);
    let Some(run) = Extent::unpack(word.load(Ordering::Relaxed)) else {
        return;
    };
    let keep = keep.max(1);
    if keep >= run.count || !run.within(w.arena_chunks()) {
        return;
    }
    let kept = Extent {
        first: run.first,
        count: keep,
    };
    // SYNC: Release, as in `free`: un-record before clearing.
    word.store(kept.pack(), Ordering::Release);
    let tail = Extent {
        first: run.first + keep,
        count: run.count - keep,
    };
    let n = clear_bits(w, tail);
    w.arena_used().fetch_sub(n, Ordering::Relaxed);
}

/// Breaks the arena lock if process entry `dead` holds it. The caller holds `dead`'s liveness
/// lock (the kernel said it died) and has already reaped every slot of `dead` (so that the
/// runs it recorded under the lock are freed, which must happen before anyone else allocates:
/// bits it recorded but had not set yet look free). `reap_dead` is that reaping, run here
/// first unless a mutant skips it.
pub fn break_lock<W: ArenaWords + ?Sized>(w: &W, dead: u32, reap_dead: impl FnOnce()) -> bool {
    let held = w.arena_lock().load(Ordering::Acquire);
    if held != LOCKED | dead {
        return false;
    }
    if mutated(w, ArenaMutant::BreakBeforeReap) {
        let broke = w
            .arena_lock()
            .compare_exchange(held, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        reap_dead();
        return broke;
    }
    reap_dead();
    // SYNC: AcqRel: the frees of the reaping precede the next holder's scan.
    w.arena_lock()
        .compare_exchange(held, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Clears the bits that no slot records (left by a process that died between un-recording a
/// run and clearing it), under the lock for process entry `owner`. Returns the chunks cleared,
/// or `None` if the lock was busy. (A free running meanwhile outside the lock may have
/// un-recorded a run and not yet cleared it: clearing its bits for it is harmless.)
pub fn sweep<W: ArenaWords + ?Sized>(w: &W, owner: u32) -> Option<u32> {
    try_lock(w, owner).ok()?;
    let chunks = w.arena_chunks();
    let words = chunks.div_ceil(64) as usize;
    let mut leaked = 0;
    for i in 0..words {
        // SYNC: Acquire pairs with `set_bits`/`clear_bits`.
        let set = w.arena_bits(i).load(Ordering::Acquire);
        if set == 0 {
            continue;
        }
        let mut recorded = 0u64;
        for s in 0..w.ext_slots() {
            // SYNC: Acquire pairs with the records' Release stores.
            if let Some(run) = Extent::unpack(w.slot_ext(s).load(Ordering::Acquire)) {
                if run.within(chunks) {
                    for_words(run, |j, mask| {
                        if j == i {
                            recorded |= mask;
                        }
                    });
                }
            }
        }
        let stray = set & !recorded;
        if stray != 0 {
            let prev = w.arena_bits(i).fetch_and(!stray, Ordering::AcqRel);
            let n = (prev & stray).count_ones();
            w.arena_used().fetch_sub(n, Ordering::Relaxed);
            leaked += n;
        }
    }
    unlock(w, owner);
    Some(leaked)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Heap {
        lock: AtomicU32,
        bits: Vec<AtomicU64>,
        used: AtomicU32,
        ext: Vec<AtomicU32>,
        chunks: u32,
    }

    impl Heap {
        fn new(chunks: u32, slots: u32) -> Heap {
            Heap {
                lock: AtomicU32::new(0),
                bits: (0..chunks.div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                used: AtomicU32::new(0),
                ext: (0..slots).map(|_| AtomicU32::new(0)).collect(),
                chunks,
            }
        }
    }

    impl ArenaWords for Heap {
        fn arena_chunks(&self) -> u32 {
            self.chunks
        }
        fn arena_lock(&self) -> &AtomicU32 {
            &self.lock
        }
        fn arena_bits(&self, w: usize) -> &AtomicU64 {
            &self.bits[w]
        }
        fn arena_used(&self) -> &AtomicU32 {
            &self.used
        }
        fn ext_slots(&self) -> u32 {
            self.ext.len() as u32
        }
        fn slot_ext(&self, slot: u32) -> &AtomicU32 {
            &self.ext[slot as usize]
        }
    }

    /// Runs across bitmap words are set and cleared exactly, and the best-fit rule takes the
    /// first run long enough, else the longest. Fails on an off-by-one in the word masks.
    #[test]
    fn runs_across_words_are_allocated_trimmed_and_freed_exactly() {
        let h = Heap::new(200, 4);
        assert_eq!(
            alloc(&h, 1, 0, 1, 70),
            Alloc::Got(Extent {
                first: 0,
                count: 70
            })
        );
        assert_eq!(
            alloc(&h, 1, 1, 1, 100),
            Alloc::Got(Extent {
                first: 70,
                count: 100
            })
        );
        assert_eq!(h.used.load(Ordering::Relaxed), 170);
        // 30 left: asked for 50 at most, at least 10: the longest there is.
        assert_eq!(
            alloc(&h, 1, 2, 10, 50),
            Alloc::Got(Extent {
                first: 170,
                count: 30
            })
        );
        assert_eq!(alloc(&h, 1, 3, 1, 5), Alloc::Full);
        trim(&h, 1, 1);
        assert_eq!(h.used.load(Ordering::Relaxed), 101);
        assert_eq!(
            alloc(&h, 1, 3, 99, 99),
            Alloc::Got(Extent {
                first: 71,
                count: 99
            })
        );
        for s in 0..4 {
            free(&h, s);
        }
        assert_eq!(h.used.load(Ordering::Relaxed), 0);
        assert!(h.bits.iter().all(|b| b.load(Ordering::Relaxed) == 0));
        assert_eq!(
            alloc(&h, 1, 0, 200, 200),
            Alloc::Got(Extent {
                first: 0,
                count: 200
            })
        );
    }

    /// A run whose record was dropped (a death between un-recording and clearing) is cleared by
    /// the sweep, and only that one.
    #[test]
    fn the_sweep_clears_only_unrecorded_bits() {
        let h = Heap::new(128, 2);
        alloc(&h, 1, 0, 1, 10);
        alloc(&h, 1, 1, 1, 10);
        h.ext[1].store(0, Ordering::Relaxed); // died right after un-recording
        assert_eq!(sweep(&h, 0), Some(10));
        assert_eq!(h.used.load(Ordering::Relaxed), 10);
        assert_eq!(h.bits[0].load(Ordering::Relaxed), (1 << 10) - 1);
        // A lock held elsewhere: no sweep.
        try_lock(&h, 5).unwrap();
        assert_eq!(sweep(&h, 0), None);
        assert!(break_lock(&h, 5, || {}));
        assert_eq!(sweep(&h, 0), Some(0));
    }

    /// Garbage in a record never clears bits outside the arena nor panics.
    #[test]
    fn garbage_records_are_ignored() {
        let h = Heap::new(64, 1);
        for garbage in [u32::MAX, 0xffff_0001, 0x0040_0001, 0x0001_ffff] {
            h.ext[0].store(garbage, Ordering::Relaxed);
            assert_eq!(free(&h, 0), 0);
            h.ext[0].store(garbage, Ordering::Relaxed);
            trim(&h, 0, 1);
            assert_eq!(sweep(&h, 0), Some(0));
        }
    }
}
