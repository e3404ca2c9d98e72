//! The large-message arena: messages that do not fit their slot are written into a run of
//! chunks of one region of the mapping (after the slots), recorded in the slot's `ext` word.
//! DESIGN.md section 4b has the layout and the crash cases; this file is the protocol,
//! generic over [`ArenaWords`] so that the loom models run it on the heap.
//!
//! - **The records are the truth.** A chunk is in use exactly when some slot's `ext` word
//!   records a run that covers it; there is no separate bitmap to keep in step. Freeing a run
//!   is one atomic swap of the record to 0, cutting it one store: a process that dies at any
//!   point leaves either its record (which the reaper frees with its slot) or nothing.
//! - **A run belongs to whoever owns the slot** and goes back when the slot does (whoever
//!   moves a slot to FREE first calls [`free`]).
//! - **Allocation** takes the arena lock (a word: `LOCKED | owner entry`) so that two
//!   allocators never pick the same free chunks: under it, the allocator reads every slot's
//!   record, finds a free run and records it in its own slot with one store. A free that runs
//!   meanwhile (outside the lock) only makes the allocator's view more conservative. A process
//!   that dies holding the lock has recorded its run or not; either way the next allocator's
//!   reading is right, so the reaper may break the lock ([`break_lock`]) as soon as the kernel
//!   says the holder died, before or after it reaps the dead process's slots.
//! - Cost: an allocation reads one word per slot (the slots' header lines; with the default 32
//!   slots, about a microsecond), which a message of more than a slot's 32 KiB dwarfs.

use crate::sync::{AtomicU32, Ordering};

/// Bytes of one chunk of the arena.
pub const CHUNK: usize = 64 * 1024;
/// Most chunks an arena has (an [`Extent`] packs a chunk index and a count in 16 bits each).
pub const MAX_CHUNKS: u32 = 65535;
/// The lock word's "held" bit; the low bits name the holder's process entry (0: the server).
pub const LOCKED: u32 = 1 << 31;

/// Where the arena's words live: the mapping in production, the heap under loom.
pub trait ArenaWords {
    /// Chunks in the arena (from this process's own copy of the layout).
    fn arena_chunks(&self) -> u32;
    /// The arena lock: 0, or [`LOCKED`] | the holder's process entry.
    fn arena_lock(&self) -> &AtomicU32;
    /// Records that can hold a run: the slots' `ext` words (records `0..slots`), then, in a
    /// mapping, the workers' records (`layout::WORKERS_OFFSET`).
    fn ext_slots(&self) -> u32;
    /// Record `slot`: the `ext` word of that slot (or a worker's record past the slots): the
    /// run it records ([`Extent::pack`]), or 0.
    fn slot_ext(&self, slot: u32) -> &AtomicU32;
    /// The request that has waited long for room and now goes first ([`want`]), if these
    /// words have such a word.
    fn arena_want(&self) -> Option<&AtomicU32> {
        None
    }
    /// Whether the [`want`] word was renewed within [`WANT_FRESH`] (words without a clock:
    /// always).
    fn arena_want_fresh(&self) -> bool {
        true
    }
    /// Renews the [`want`] word's time (its holder, while it waits).
    fn renew_arena_want(&self) {}
    /// The deliberate bug these words run with (loom models only).
    #[cfg(loom)]
    fn arena_mutant(&self) -> ArenaMutant {
        ArenaMutant::None
    }
    /// Called between the steps of every change (loom models only): a model "kills" the
    /// calling thread there by panicking, to check every point a process can die at.
    #[cfg(loom)]
    fn crash_point(&self) {}
}

/// A deliberate bug of the arena protocol that the loom models switch on to prove that they
/// catch it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArenaMutant {
    /// The real protocol.
    None,
    /// `alloc` reads the records and records its run without taking the lock.
    NoLock,
    /// `alloc` lets go of the lock before it records its run.
    UnlockBeforeRecord,
    /// `break_lock` breaks the lock whoever holds it, not only the dead holder's.
    BreakAnyHolder,
    /// `break_lock` never breaks a lock (a dead holder's stays held for good).
    KeepDeadLock,
    /// `hold` clears the record it moves a run from before it records the run in the other.
    HoldClearsFirst,
    /// A [`Purpose::ReplyReusing`] allocation gives the reused run back before it takes the
    /// lock (as a free followed by an allocation would).
    ReuseFreedFirst,
}

/// A point where a process may die (a no-op outside the loom models).
#[inline(always)]
fn crash<W: ArenaWords + ?Sized>(_w: &W) {
    #[cfg(loom)]
    _w.crash_point();
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
    // SYNC: Acquire pairs with `unlock`'s Release: the previous holder's record is visible
    // to our reading.
    w.arena_lock()
        .compare_exchange(0, LOCKED | owner, Ordering::Acquire, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|held| held & !LOCKED)
}

/// Lets go of the arena lock held by `owner` (no change if another holds it: a reaper broke a
/// lock it believed dead, which only a peer breaking the protocol makes wrong).
pub fn unlock<W: ArenaWords + ?Sized>(w: &W, owner: u32) {
    // SYNC: Release publishes this holder's record to the next holder's Acquire.
    let _ =
        w.arena_lock()
            .compare_exchange(LOCKED | owner, 0, Ordering::Release, Ordering::Relaxed);
}

/// Words of the largest occupancy map [`alloc`] builds (one bit per chunk).
const MAP_WORDS: usize = (MAX_CHUNKS as usize).div_ceil(64);

/// Whom an allocation is for, which decides how much of the free room it may take.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Purpose {
    /// A worker's reply (and the loom models' plain allocations): any free run.
    Reply,
    /// A client's request: only a run that leaves free, in one piece, room for the largest
    /// message recorded (its own included). Then a worker serving any request finds room for a
    /// reply as long as that request once the replies already written are read (the requests
    /// of queued callers can no longer take all of it: DESIGN.md section 4b, "Room for
    /// replies"). A request alone in the arena may take any run.
    Request,
    /// A worker's reply that may take the run that record `.0` holds: its request's, done with
    /// (in the slot's own record, or moved to the worker's). That record counts as free for
    /// this allocation only and, once the reply's run is recorded, is cleared in the same hold
    /// of the lock (the slot's own is simply overwritten): no other allocation can take that
    /// room in between, so a reply no longer than its request always finds room.
    ReplyReusing(u32),
}

/// Allocates for `slot` (owned by the caller, process entry `owner`, recording no run) a free
/// run of at least `min` chunks: the first one of `max` chunks or more (cut to `max`), else the
/// longest one; records it in the slot, all under the arena lock. As [`alloc_for`] a reply.
pub fn alloc<W: ArenaWords + ?Sized>(w: &W, owner: u32, slot: u32, min: u32, max: u32) -> Alloc {
    alloc_for(w, owner, slot, min, max, Purpose::Reply)
}

/// [`alloc`], for `purpose`: a [`Purpose::Request`] takes only a run that keeps room for
/// replies, else it is [`Alloc::Full`] (and waits, like any allocation that finds no room).
/// For [`Purpose::ReplyReusing`]`(slot)` the slot may record the run to reuse.
pub fn alloc_for<W: ArenaWords + ?Sized>(
    w: &W,
    owner: u32,
    slot: u32,
    min: u32,
    max: u32,
    purpose: Purpose,
) -> Alloc {
    if let Purpose::ReplyReusing(record) = purpose {
        if mutated(w, ArenaMutant::ReuseFreedFirst) {
            w.slot_ext(record).store(0, Ordering::Release);
        }
    }
    let locking = !mutated(w, ArenaMutant::NoLock);
    if locking {
        if let Err(holder) = try_lock(w, owner) {
            return Alloc::Busy(holder);
        }
    }
    crash(w);
    let chunks = w.arena_chunks().min(MAX_CHUNKS);
    let words = chunks.div_ceil(64) as usize;
    let mut used = [0u64; MAP_WORDS];
    // The longest run recorded: the room a request must leave for its reply.
    let mut largest = 0u32;
    let reuse = match purpose {
        Purpose::ReplyReusing(record) => Some(record),
        _ => None,
    };
    for s in 0..w.ext_slots() {
        if Some(s) == reuse {
            continue;
        }
        // SYNC: Acquire pairs with the Release store of a record (made under the lock, which
        // we hold now, or before the lock was last let go).
        let Some(run) = Extent::unpack(w.slot_ext(s).load(Ordering::Acquire)) else {
            continue;
        };
        if !run.within(chunks) {
            continue;
        }
        largest = largest.max(run.count);
        mark(&mut used, run);
    }
    let (min, max) = (min.max(1), max.max(min).max(1));
    let mut found = match purpose {
        Purpose::Request if largest > 0 => {
            find_request_run(&used[..words], chunks, min, max, largest)
        }
        _ => find_run(&used[..words], chunks, min, max),
    };
    if let (Purpose::Request, Some(run)) = (purpose, found) {
        // Another request has waited long and goes first: leave it a run for itself and its
        // reply, or wait.
        if let Some(need) = wanted_by_other(w, slot) {
            if !leaves_free_run(
                &used[..words],
                chunks,
                run,
                need.saturating_mul(2).min(chunks),
            ) {
                found = None;
            }
        }
    }
    let early_unlock = locking && mutated(w, ArenaMutant::UnlockBeforeRecord);
    if early_unlock {
        unlock(w, owner);
    }
    let got = match found {
        Some(run) => {
            // SYNC: Release: the next allocator (after our unlock) sees the record.
            w.slot_ext(slot).store(run.pack(), Ordering::Release);
            if let Some(record) = reuse.filter(|&r| r != slot) {
                // The reused run is the reply's now (or free, where the reply is shorter):
                // cleared while we hold the lock, after the reply's run is recorded, so that
                // no allocator sees its chunks unrecorded while we hold them.
                // SYNC: Release, as a free: our reads of the old run happen before an
                // allocator that reads the cleared record hands its chunks out.
                w.slot_ext(record).store(0, Ordering::Release);
            }
            Alloc::Got(run)
        }
        None => Alloc::Full,
    };
    crash(w);
    if locking && !early_unlock {
        unlock(w, owner);
    }
    got
}

/// The free runs of the occupancy map `used` of `chunks` chunks, in order.
fn free_runs(used: &[u64], chunks: u32) -> impl Iterator<Item = Extent> + '_ {
    let mut c = 0u32;
    std::iter::from_fn(move || {
        let is_free = |c: u32| used[(c / 64) as usize] & (1 << (c % 64)) == 0;
        while c < chunks && !is_free(c) {
            c += 1;
        }
        let first = c;
        while c < chunks && is_free(c) {
            c += 1;
        }
        (c > first).then_some(Extent {
            first,
            count: c - first,
        })
    })
}

/// In the occupancy map `used` of `chunks` chunks: the first free run of `max` chunks or more
/// (cut to `max`), else the longest free run of at least `min`.
fn find_run(used: &[u64], chunks: u32, min: u32, max: u32) -> Option<Extent> {
    let mut best: Option<Extent> = None;
    for run in free_runs(used, chunks) {
        if run.count >= max {
            return Some(Extent { count: max, ..run });
        }
        if run.count >= min && best.is_none_or(|b| run.count > b.count) {
            best = Some(run);
        }
    }
    best
}

/// [`find_run`] for a request while other runs are recorded, the longest of `largest`
/// chunks: a run of `g` chunks (`min <= g <= max`, as many as the rule allows) after which a
/// free run of at least `largest` and `g` chunks is left. Either from a run other than the
/// longest free one, which then stays whole (if it is long enough), or from the start of the
/// longest free one, keeping the rest (at least half of it, and `largest`).
fn find_request_run(used: &[u64], chunks: u32, min: u32, max: u32, largest: u32) -> Option<Extent> {
    let longest = free_runs(used, chunks).fold(None, |b: Option<Extent>, r| {
        if b.is_none_or(|b| r.count > b.count) {
            Some(r)
        } else {
            b
        }
    })?;
    if longest.count < largest {
        return None;
    }
    // From another run: the first one of `max` or more, else the longest other one.
    let mut best: Option<Extent> = None;
    for run in free_runs(used, chunks).filter(|r| r.first != longest.first) {
        let take = run.count.min(max);
        if take >= min && best.is_none_or(|b| take > b.count) {
            best = Some(Extent { count: take, ..run });
        }
    }
    // From the longest one: what leaves `largest` and as much as it takes.
    let take = max.min(longest.count - largest).min(longest.count / 2);
    if take >= min && best.is_none_or(|b| take > b.count) {
        best = Some(Extent {
            count: take,
            ..longest
        });
    }
    best
}

/// Bits of a [`want`] word below the wanting slot (its chunk count).
const WANT_SLOT_SHIFT: u32 = 16;

/// How long a [`want`] word holds without its holder renewing it (every wait slice, 10 ms):
/// a holder that paused or hung loses its priority after this.
pub const WANT_FRESH: std::time::Duration = std::time::Duration::from_millis(250);

/// The chunks the request of another slot than `slot` waits for with priority ([`want`]).
fn wanted_by_other<W: ArenaWords + ?Sized>(w: &W, slot: u32) -> Option<u32> {
    let v = w.arena_want()?.load(Ordering::Relaxed);
    (v != 0 && v >> WANT_SLOT_SHIFT != slot + 1 && w.arena_want_fresh()).then_some(v & 0xffff)
}

/// Marks the chunks of `run` (within the map) in the occupancy map `used`.
fn mark(used: &mut [u64], run: Extent) {
    for c in run.first..run.first + run.count {
        used[(c / 64) as usize] |= 1 << (c % 64);
    }
}

/// Whether, with `run` taken too, a free run of `need` chunks is left in `used`.
fn leaves_free_run(used: &[u64], chunks: u32, run: Extent, need: u32) -> bool {
    let mut after = [0u64; MAP_WORDS];
    after[..used.len()].copy_from_slice(used);
    mark(&mut after, run);
    let left = free_runs(&after[..used.len()], chunks).any(|r| r.count >= need.max(1));
    left
}

/// Priority for a request of `slot` that has waited long for a run of `chunks`: while its
/// word names it, other requests are placed only where they leave a free run of twice that
/// (the request and its reply), so that a stream of smaller requests cannot starve a larger
/// one. One request at a time holds it (a CAS from 0); it lets go once it has its run or gives
/// up ([`unwant`]), and the reaper clears a word whose slot is no longer being written
/// ([`clear_stale_want`]). Only advice for placement: the records stay the only truth about
/// what is in use. Returns whether this request holds it now.
pub fn want<W: ArenaWords + ?Sized>(w: &W, slot: u32, chunks: u32) -> bool {
    let Some(word) = w.arena_want() else {
        return false;
    };
    let mine = ((slot + 1) << WANT_SLOT_SHIFT) | chunks.min(0xffff);
    let v = word.load(Ordering::Relaxed);
    if v != 0 && w.arena_want_fresh() {
        return false;
    }
    // Renewed first, so that the word is fresh once it names us (a stale holder's is taken).
    w.renew_arena_want();
    word.compare_exchange(v, mine, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
}

/// Lets go of the priority [`want`] gave `slot`.
pub fn unwant<W: ArenaWords + ?Sized>(w: &W, slot: u32) {
    if let Some(word) = w.arena_want() {
        let v = word.load(Ordering::Relaxed);
        if v >> WANT_SLOT_SHIFT == slot + 1 {
            let _ = word.compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

/// Renews the priority [`want`] gave `slot`, while it still waits.
pub fn renew_want<W: ArenaWords + ?Sized>(w: &W, slot: u32) {
    if let Some(word) = w.arena_want() {
        if word.load(Ordering::Relaxed) >> WANT_SLOT_SHIFT == slot + 1 {
            w.renew_arena_want();
        }
    }
}

/// Clears the [`want`] word if the slot it names is not `writing` (a request waiting for room
/// is being written: its slot CLAIMED), as one left by a process that died or a caller that
/// did not let go. Returns whether it cleared it.
pub fn clear_stale_want<W: ArenaWords + ?Sized>(w: &W, writing: impl Fn(u32) -> bool) -> bool {
    let Some(word) = w.arena_want() else {
        return false;
    };
    let v = word.load(Ordering::Relaxed);
    let slot = (v >> WANT_SLOT_SHIFT).wrapping_sub(1);
    v != 0
        && !(slot < w.ext_slots() && writing(slot))
        && word
            .compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// Whether a run of `min` chunks would be free if only the records of the slots `keeps` picks
/// held their runs: read without the lock, so only advice (a worker deciding whether its wait
/// for room can end without the requests that wait for it).
pub fn fits_with_only<W: ArenaWords + ?Sized>(
    w: &W,
    min: u32,
    keeps: impl Fn(u32) -> bool,
) -> bool {
    let chunks = w.arena_chunks().min(MAX_CHUNKS);
    let mut used = [0u64; MAP_WORDS];
    for s in (0..w.ext_slots()).filter(|&s| keeps(s)) {
        let Some(run) = Extent::unpack(w.slot_ext(s).load(Ordering::Relaxed)) else {
            continue;
        };
        if run.within(chunks) {
            mark(&mut used, run);
        }
    }
    let fits =
        free_runs(&used[..chunks.div_ceil(64) as usize], chunks).any(|r| r.count >= min.max(1));
    fits
}

/// Frees the run `slot` records, if any (its owner's step before the slot goes FREE; also the
/// reaper's for a dead owner's slot): one swap of the record to 0. Returns the run's chunks
/// (0 if none).
pub fn free<W: ArenaWords + ?Sized>(w: &W, slot: u32) -> u32 {
    let word = w.slot_ext(slot);
    if word.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    // SYNC: AcqRel: our reads and writes of the run happen before an allocator that reads
    // the cleared record (Acquire) hands the chunks to someone else.
    let run = Extent::unpack(word.swap(0, Ordering::AcqRel));
    crash(w);
    run.map_or(0, |r| r.count)
}

/// Moves the run that record `from` holds, if any, into record `to` (which holds none): a
/// worker keeps its request's run in its own record while the reply takes the slot's
/// (`ServerBuilder::serve_in_place`). One store of `to`, then one swap of `from` to 0: in
/// between, an allocator sees the run recorded twice, which only makes its view more
/// conservative; at no point is the run recorded nowhere. No lock: the caller owns both
/// records (and a server that dies in between takes the whole arena with it). Returns the run.
pub fn hold<W: ArenaWords + ?Sized>(w: &W, from: u32, to: u32) -> Option<Extent> {
    let word = w.slot_ext(from).load(Ordering::Relaxed);
    let run = Extent::unpack(word)?;
    if mutated(w, ArenaMutant::HoldClearsFirst) {
        w.slot_ext(from).store(0, Ordering::Release);
        crash(w);
        w.slot_ext(to).store(word, Ordering::Release);
        return Some(run);
    }
    // SYNC: Release, as an allocation's record: an allocator that reads `from` cleared (its
    // Acquire) also reads this record.
    w.slot_ext(to).store(word, Ordering::Release);
    crash(w);
    // SYNC: Release: the record in `to` (and our use of the run so far) is ordered before the
    // cleared `from` that an allocator may read.
    w.slot_ext(from).store(0, Ordering::Release);
    Some(run)
}

/// Gives back all but the first `keep` (>= 1) chunks of the run `slot` records (its owner, after
/// writing a message shorter than its run): one store of the shorter record. Returns the chunks
/// given back.
pub fn trim<W: ArenaWords + ?Sized>(w: &W, slot: u32, keep: u32) -> u32 {
    let word = w.slot_ext(slot);
    let Some(run) = Extent::unpack(word.load(Ordering::Relaxed)) else {
        return 0;
    };
    let keep = keep.max(1);
    if keep >= run.count || !run.within(w.arena_chunks()) {
        return 0;
    }
    let kept = Extent {
        first: run.first,
        count: keep,
    };
    // SYNC: Release, as in `free`: the tail's bytes are done with.
    word.store(kept.pack(), Ordering::Release);
    crash(w);
    run.count - keep
}

/// Breaks the arena lock if process entry `dead` holds it (the caller holds `dead`'s liveness
/// lock: the kernel said it died). Whatever it recorded before it died stays recorded until
/// its slots are reaped, so the next allocator's reading is right either way.
pub fn break_lock<W: ArenaWords + ?Sized>(w: &W, dead: u32) -> bool {
    let held = w.arena_lock().load(Ordering::Acquire);
    if mutated(w, ArenaMutant::KeepDeadLock) {
        return false;
    }
    let target = if mutated(w, ArenaMutant::BreakAnyHolder) {
        if held & LOCKED == 0 {
            return false;
        }
        held
    } else if held == LOCKED | dead {
        held
    } else {
        return false;
    };
    // SYNC: AcqRel: the dead holder's record (if it made one) is ordered before the next
    // holder's reading.
    w.arena_lock()
        .compare_exchange(target, 0, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Chunks recorded by the slots now (statistics; each run counted once per slot recording it).
pub fn in_use<W: ArenaWords + ?Sized>(w: &W) -> u64 {
    let chunks = w.arena_chunks();
    (0..w.ext_slots())
        .filter_map(|s| Extent::unpack(w.slot_ext(s).load(Ordering::Relaxed)))
        .filter(|run| run.within(chunks))
        .map(|run| u64::from(run.count))
        .sum()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct Heap {
        lock: AtomicU32,
        ext: Vec<AtomicU32>,
        chunks: u32,
    }

    impl Heap {
        fn new(chunks: u32, slots: u32) -> Heap {
            Heap {
                lock: AtomicU32::new(0),
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
        fn ext_slots(&self) -> u32 {
            self.ext.len() as u32
        }
        fn slot_ext(&self, slot: u32) -> &AtomicU32 {
            &self.ext[slot as usize]
        }
    }

    /// Runs across bitmap words are found exactly, and the rule takes the first run long
    /// enough, else the longest. Fails on an off-by-one in the occupancy map.
    #[test]
    fn runs_across_words_are_allocated_trimmed_and_freed_exactly() {
        let h = Heap::new(200, 4);
        let got = |first, count| Alloc::Got(Extent { first, count });
        assert_eq!(alloc(&h, 1, 0, 1, 70), got(0, 70));
        assert_eq!(alloc(&h, 1, 1, 1, 100), got(70, 100));
        assert_eq!(in_use(&h), 170);
        // 30 left: asked for 50 at most, at least 10: the longest there is.
        assert_eq!(alloc(&h, 1, 2, 10, 50), got(170, 30));
        assert_eq!(alloc(&h, 1, 3, 1, 5), Alloc::Full);
        trim(&h, 1, 1);
        assert_eq!(in_use(&h), 101);
        assert_eq!(alloc(&h, 1, 3, 99, 99), got(71, 99));
        for s in 0..4 {
            free(&h, s);
        }
        assert_eq!(in_use(&h), 0);
        assert_eq!(alloc(&h, 1, 0, 200, 200), got(0, 200));
        // A lock held by a dead entry is broken; a live one's is not.
        free(&h, 0);
        try_lock(&h, 5).unwrap();
        assert_eq!(alloc(&h, 1, 0, 1, 1), Alloc::Busy(5));
        assert!(!break_lock(&h, 6));
        assert!(break_lock(&h, 5));
        assert_eq!(alloc(&h, 1, 0, 1, 1), got(0, 1));
    }

    /// A request leaves a free run as long as the longest run recorded (and as its own), taken
    /// from another free run or from the start of the longest; alone, it takes any run; a reply
    /// takes any room. Fails if a request may take the room a reply as long as its request
    /// needs.
    #[test]
    fn a_request_leaves_room_for_the_largest_reply_and_a_reply_takes_any_room() {
        let h = Heap::new(128, 6);
        let got = |first, count| Alloc::Got(Extent { first, count });
        let request = |slot, min, max| alloc_for(&h, 1, slot, min, max, Purpose::Request);
        // Alone: the first run long enough, as any allocation.
        assert_eq!(request(0, 41, 128), got(0, 128));
        trim(&h, 0, 41);
        // 87 free in one run, 41 recorded: at most half of it, and 41 left.
        assert_eq!(request(1, 40, 128), got(41, 43));
        trim(&h, 1, 41);
        // 46 free: taking 40 would leave 6, too little for a 41-chunk reply.
        assert_eq!(request(2, 40, 128), Alloc::Full);
        // A reply takes what there is.
        assert_eq!(alloc(&h, 0, 3, 40, 128), got(82, 46));
        trim(&h, 3, 41);
        assert_eq!(request(2, 1, 1), Alloc::Full, "5 free, 41 must stay");
        // With the first request gone, [0, 41) is the longest free run: it must stay whole,
        // and the 5 at the end are too few.
        free(&h, 0);
        assert_eq!(request(2, 40, 128), Alloc::Full);
        // A small request takes the short run and keeps the long one whole.
        assert_eq!(request(2, 1, 8), got(123, 5));
        free(&h, 1);
        free(&h, 3);
        // Left: [0, 123) free, 5 recorded: half of the longest run.
        assert_eq!(request(4, 1, 128), got(0, 61));
        free(&h, 2);
        free(&h, 4);
        assert_eq!(in_use(&h), 0);
    }

    /// Garbage in a record never counts chunks outside the arena nor panics, and a record
    /// outside the arena does not block allocation.
    #[test]
    fn garbage_records_are_ignored() {
        let h = Heap::new(64, 2);
        for garbage in [u32::MAX, 0xffff_0001, 0x0040_0001, 0x0001_ffff] {
            h.ext[0].store(garbage, Ordering::Relaxed);
            assert_eq!(in_use(&h), 0);
            trim(&h, 0, 1);
            assert_eq!(
                alloc(&h, 1, 1, 64, 64),
                Alloc::Got(Extent {
                    first: 0,
                    count: 64
                })
            );
            free(&h, 1);
            free(&h, 0);
        }
    }
}
