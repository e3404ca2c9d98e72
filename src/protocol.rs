//! The slot protocol and the wake protocol, written once and run both in production (over the
//! mapping and the futex) and under loom (over heap atomics and a modelled parker).
//!
//! # The slot state word
//!
//! Each slot is an SPSC channel between one client call and the server, driven by one
//! `AtomicU32` ([`State`]): bits 0..3 are the state, bit 3 is [`State::WAITER`] (the client is
//! parked on this word and wants a futex wake), bits 4..14 the *owner*: the process entry of
//! the client that claimed the slot (1..=1023; 0 while FREE), written by the claim itself, and
//! bits 14..32 an 18-bit generation counter, bumped each time the slot becomes FREE again. The
//! owner and the counter together are the call's *generation* (`gen` in this module: the 28
//! bits above the waiter bit), so that a late transition made for an earlier call, or by
//! another process, can never match the word of the current one.
//!
//! Every transition is a compare-and-swap on the whole word (none is a blind store), so a
//! caller whose slot is no longer its own fails and learns it, instead of rolling back the
//! word of the slot's new owner.
//!
//! | from | to | who | method | publishes |
//! |---|---|---|---|---|
//! | FREE g | CLAIMED g' | client | [`try_claim`] | g' = g with the caller's owner entry |
//! | CLAIMED g | REQUEST g | client | [`publish_request`] | request bytes and slot fields |
//! | REQUEST g | SERVING g | worker | [`begin_serving`] | (acquires the request) |
//! | SERVING g | REPLY g | worker | [`finish`] | reply bytes and status |
//! | SERVING g | ACCEPTED g | worker | [`finish`] | one-way: the message was taken |
//! | REQUEST g | ABANDONED g | client | [`abandon`] | the client gave up before a worker took it |
//! | SERVING g | ORPHANED g | client | [`abandon`] | the client gave up while a worker serves it |
//! | ABANDONED g | FREE g+1 | any worker | [`begin_serving`] | (a ready bit led it there) |
//! | ORPHANED g | FREE g+1 | the serving worker | [`finish`] | (after the handler returned) |
//! | ACCEPTED g | FREE g+1 | worker | [`release`] | (after the one-way handler ran) |
//! | REPLY g | FREE g+1 | client | [`release`] | the client is done reading the reply |
//! | CLAIMED g | FREE g+1 | client | [`release`] | the request did not fit |
//! | CLAIMED g, REQUEST g, REPLY g | FREE g+1 | holder of the dead owner's lock | [`reap`] | the owner process died |
//! | SERVING g | ORPHANED g | holder of the dead owner's lock | [`reap`] | the owner process died |
//! | REQUEST g, SERVING g | + WAITER | client | [`wait_done`] | the client is about to park |
//!
//! # The ready bitmap
//!
//! A client that publishes slot `i` sets bit `i` of the ready bitmap; a worker takes a bit with
//! `fetch_and`, so that exactly one worker sees each publication ([`take_ready`]), then moves
//! the slot REQUEST -> SERVING with a compare-and-swap that also fails for a stale bit.
//!
//! # Wake protocol
//!
//! Every wait spins first, then announces itself (a waiter count or the WAITER bit), re-checks
//! its condition, and only then parks on a futex word with the value it last saw. Every waker
//! changes the condition first and then looks for announced waiters; it makes the wake system
//! call only when there is one. Each side separates its write from its read of the other's
//! word with a `fence(SeqCst)` (the store-load pattern), so at least one of the two sees the
//! other: the waiter does not sleep, or the waker wakes it. Fences rather than `SeqCst`
//! accesses: loom models `SeqCst` fences exactly but treats `SeqCst` accesses as `AcqRel`, and
//! on x86 a locked RMW followed by a fence costs about what a `SeqCst` RMW does.

use crate::sync::{fence, fence_after_rmw, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// The packed slot state word: `counter << 14 | owner << 4 | waiter << 3 | kind`; the
/// generation ([`State::gen`]) is `counter << 10 | owner`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct State(pub u32);

impl State {
    /// Free: any client may claim it.
    pub const FREE: u32 = 0;
    /// A client owns it and is writing the request.
    pub const CLAIMED: u32 = 1;
    /// The request is published; a worker may take it.
    pub const REQUEST: u32 = 2;
    /// A worker is running the handler.
    pub const SERVING: u32 = 3;
    /// The reply is published; the client owns the slot and reads it.
    pub const REPLY: u32 = 4;
    /// The client gave up before a worker took the call: the first worker that a ready bit
    /// leads here frees the slot ([`begin_serving`]).
    pub const ABANDONED: u32 = 5;
    /// A one-way message was taken; the worker owns the slot until its handler returns.
    pub const ACCEPTED: u32 = 6;
    /// The client gave up while a worker served the call: that worker still owns the slot
    /// and frees it when its handler returns ([`finish`]); no other worker touches it, even
    /// one that a stale or forged ready bit leads here. (Were this ABANDONED, such a worker
    /// would free the slot under the serving one, whose reply would then land in the slot's
    /// next call.)
    pub const ORPHANED: u32 = 7;
    /// The client is parked on this word and needs a futex wake on the next transition.
    pub const WAITER: u32 = 1 << 3;
    const KIND_MASK: u32 = 0b111;
    const GEN_SHIFT: u32 = 4;
    /// Bits of the owner entry at the bottom of a generation.
    pub const OWNER_BITS: u32 = 10;
    /// The owner bits of a generation.
    pub const OWNER_MASK: u32 = (1 << Self::OWNER_BITS) - 1;
    /// The largest owner entry (entry 0 means "no owner").
    pub const MAX_OWNER: u32 = Self::OWNER_MASK;

    /// The word for `kind` at generation `gen` (without WAITER).
    #[inline]
    pub fn new(kind: u32, gen: u32) -> State {
        State((gen << Self::GEN_SHIFT) | kind)
    }
    /// The state, without waiter bit and generation.
    #[inline]
    pub fn kind(self) -> u32 {
        self.0 & Self::KIND_MASK
    }
    /// The generation: the 18-bit counter and the owner entry (28 bits).
    #[inline]
    pub fn gen(self) -> u32 {
        self.0 >> Self::GEN_SHIFT
    }
    /// The owner entry of the call in this slot (0 when FREE).
    #[inline]
    pub fn owner(self) -> u32 {
        self.gen() & Self::OWNER_MASK
    }
    /// Whether the slot holds a call of its owner's (CLAIMED, REQUEST, SERVING, REPLY): what
    /// the reaper takes back from a dead owner and what counts toward a process's share.
    #[inline]
    pub fn held_by_owner(self) -> bool {
        matches!(
            self.kind(),
            Self::CLAIMED | Self::REQUEST | Self::SERVING | Self::REPLY
        )
    }
    /// Whether a client announced that it parks on this word.
    #[inline]
    pub fn has_waiter(self) -> bool {
        self.0 & Self::WAITER != 0
    }
    /// The generation of the FREE word that follows `gen`: the next counter, no owner.
    #[inline]
    pub fn next_gen(gen: u32) -> u32 {
        (gen | Self::OWNER_MASK).wrapping_add(1) & (u32::MAX >> Self::GEN_SHIFT)
    }
    /// `gen` (of a FREE word) claimed by `owner`.
    #[inline]
    pub fn claimed_gen(gen: u32, owner: u32) -> u32 {
        (gen & !Self::OWNER_MASK) | (owner & Self::OWNER_MASK)
    }
}

/// Where the protocol's words live: in the mapping in production, on the heap under loom.
pub trait Words {
    /// Number of slots.
    fn slot_count(&self) -> u32;
    /// The state word of slot `i` (`i < slot_count()`).
    fn slot_state(&self, i: u32) -> &AtomicU32;
    /// Word `w` of the ready bitmap (`w < slot_count().div_ceil(64)`).
    fn ready_word(&self, w: usize) -> &AtomicU64;
    /// The server lifecycle word (`layout::server_state`).
    fn server_state(&self) -> &AtomicU32;
    /// Futex word the workers park on.
    fn server_seq(&self) -> &AtomicU32;
    /// Count of workers parked or about to park.
    fn server_sleepers(&self) -> &AtomicU32;
    /// Futex word of callers waiting for a free slot.
    fn free_seq(&self) -> &AtomicU32;
    /// Count of callers parked or about to park for a free slot.
    fn free_waiters(&self) -> &AtomicU32;
    /// The share of `free_waiters` that process entry `owner` (1..=`State::MAX_OWNER`)
    /// announced: what [`heal_free_waits`] takes back when that process dies.
    fn owner_waiters(&self, owner: u32) -> &AtomicU32;
    /// Of `free_waiters`, the callers that have parked at least once (queued): while any is
    /// counted, freed slots are theirs ([`claim_if`]).
    fn queued_waiters(&self) -> &AtomicU32;
    /// The share of `queued_waiters` that process entry `owner` queued.
    fn owner_queued(&self, owner: u32) -> &AtomicU32;
    /// The async doorbell (`layout::Header::async_bell`).
    fn async_bell(&self) -> &AtomicU32;
    /// Gives back the arena run that slot `slot` records, if any (`arena::free`): called by
    /// whoever is about to move the slot to FREE, before it does. The loom models of the slot
    /// protocol have no arena (the arena's own models check it).
    fn drop_extent(&self, _slot: u32) {}
    /// Whether slot `slot` records an arena run (read by the slot's owner, or by the reaper
    /// for a dead owner's slot). The loom models of the slot protocol have none.
    fn has_extent(&self, _slot: u32) -> bool {
        false
    }
    /// The deliberate bug these words run with (loom models only).
    #[cfg(loom)]
    fn mutant(&self) -> Mutant {
        Mutant::None
    }
}

/// A deliberate bug that the loom models switch on (through `Words::mutant`) to prove that
/// they catch it. Only `--cfg loom` builds can select one; elsewhere `mutated` is `false`
/// and the compiler removes every branch on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mutant {
    /// The real protocol.
    None,
    /// `try_claim` loads FREE and then stores CLAIMED instead of a compare-and-swap.
    ClaimByStore,
    /// `publish_request` publishes with `Relaxed` (the REQUEST store and the ready bit)
    /// instead of `Release`/`SeqCst`.
    PublishRelaxed,
    /// `finish` publishes the reply with `Relaxed` instead of `Release`.
    FinishRelaxed,
    /// `publish_request` never wakes a parked worker.
    NoWorkerWake,
    /// `shutdown` wakes parked clients without clearing their WAITER bit.
    ShutdownKeepsWaiter,
    /// `take_ready` takes a bit with a load and a store instead of `fetch_and`.
    TakeByLoad,
    /// `release` frees a slot without bumping its generation.
    NoGeneration,
    /// `bell_arm` reads the bell instead of setting its sleeper bit.
    BellArmByLoad,
    /// `publish_request` stores REQUEST instead of a compare-and-swap from CLAIMED.
    PublishByStore,
    /// `release` stores FREE instead of a compare-and-swap from the state it releases.
    ReleaseByStore,
    /// `reap` reclaims the slots of an owner whose liveness is unknown.
    ReclaimUnknown,
    /// `reap` frees a dead owner's slot with a store instead of a CAS from what it observed.
    ReapByStore,
    /// `shutdown` does not bump `server_seq` nor wake the workers parked on it.
    ShutdownNoWorkerWake,
    /// `heal_free_waits` zeroes the whole count instead of taking back the dead entry's share.
    HealEverything,
    /// `reap` and `release` give back the slot's arena run before anything proves the slot
    /// still theirs (then CAS to FREE), instead of first taking the slot into CLAIMED.
    RunFreedFirst,
    /// `hub::Registry::register` registers a waker without checking, under the entry's lock,
    /// whether the call already completed.
    RegisterWithoutCheck,
    /// A caller that has not queued takes a free slot even while others are queued for one.
    BargePastQueue,
    /// A waiter leaving the wait for a free slot does not wake another for a slot still free.
    NoPassOn,
    /// `take_ready` ignores its start and always takes the lowest ready bit first.
    LowestFirst,
    /// `abandon` marks a call being served ABANDONED (which any worker frees) instead of
    /// ORPHANED (which only its serving worker frees).
    AbandonServingAsQueued,
}

/// Whether the words `w` run with the deliberate bug `m` (always `false` outside loom).
#[inline(always)]
pub(crate) fn mutated<W: Words + ?Sized>(_w: &W, _m: Mutant) -> bool {
    #[cfg(loom)]
    return _w.mutant() == _m;
    #[cfg(not(loom))]
    return false;
}

/// How a thread sleeps on a word and is woken: the futex in production, a modelled parker
/// under loom.
pub trait Park {
    /// Sleeps while `*word == expected`, at most `timeout`; may return spuriously.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes at most `n` threads sleeping on `word`.
    fn wake(&self, word: &AtomicU32, n: u32);
}

/// What a waiting caller does between checks: how long to spin, how long each park lasts,
/// whether its deadline passed and whether the peer still lives.
pub trait Waiting {
    /// Spins (or yields) until `poll()` is `Ready` or the spin budget is spent; returns whether
    /// it became ready.
    fn spin(&mut self, poll: &mut dyn FnMut() -> Poll) -> bool;
    /// How long the next park may last, or `None` when the deadline has passed.
    fn next_park(&mut self) -> Option<Duration>;
    /// Whether the peer this call waits for is still alive (checked once per park).
    fn peer_alive(&mut self) -> bool;
}

/// What a spinning waiter sees at one check.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Poll {
    /// The condition holds: stop waiting.
    Ready,
    /// The peer is working on it (the call is being served): worth spinning.
    Busy,
    /// The peer has not started (the request waits for a worker, or no slot is free): the
    /// worker is busy elsewhere, so spinning only takes CPU from it.
    Queued,
}

/// Why a wait ended without its condition.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WaitError {
    /// The deadline passed.
    Timeout,
    /// The server stopped or died.
    Gone,
}

#[inline]
fn server_running<W: Words + ?Sized>(w: &W) -> bool {
    w.server_state().load(Ordering::Acquire) == crate::layout::server_state::RUNNING
}

// ---------------------------------------------------------------------------------------------
// Client side: claim, publish, wait, abandon, release.

/// Tries to claim a FREE slot for process entry `owner`, scanning from `start`. Returns the
/// slot and the call's generation (which names `owner`).
pub fn try_claim<W: Words + ?Sized>(w: &W, owner: u32, start: u32) -> Option<(u32, u32)> {
    let n = w.slot_count();
    for k in 0..n {
        let i = (start.wrapping_add(k)) % n;
        let word = w.slot_state(i);
        let s = State(word.load(Ordering::Relaxed));
        if s.kind() != State::FREE {
            continue;
        }
        let gen = State::claimed_gen(s.gen(), owner);
        let claimed = State::new(State::CLAIMED, gen);
        if mutated(w, Mutant::ClaimByStore) {
            word.store(claimed.0, Ordering::SeqCst);
            return Some((i, gen));
        }
        // SYNC: Acquire pairs with the Release CAS to FREE in `release`, so the previous
        // owner's reads of this slot happen before our writes to it. The owner is recorded by
        // this very CAS: there is no moment at which the slot is taken but its owner unknown.
        if word
            .compare_exchange(s.0, claimed.0, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some((i, gen));
        }
    }
    None
}

/// Claims a free slot, waiting (spin, then park on `free_seq`) while all are busy.
pub fn claim<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    owner: u32,
    start: u32,
    waiting: &mut dyn Waiting,
) -> Result<(u32, u32), WaitError> {
    claim_if(w, park, owner, start, waiting, &|| true)
}

/// [`claim`], taking a slot only while `may_claim()` (the caller's process is within its
/// share of slots, or nobody else waits: `Client`'s rule). A waiter that is woken for a freed
/// slot but may not take it passes the wake-up on to the next waiter, so that the slot goes
/// to a caller that may.
///
/// Freed slots go to the callers already queued for one: a caller takes a free slot on its
/// way in only while nobody is queued ([`queue_empty`]); otherwise it announces itself, queues
/// and parks like the others, so that threads that keep calling cannot take every freed slot
/// from a waiter that the kernel wakes a few microseconds later.
pub fn claim_if<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    owner: u32,
    start: u32,
    waiting: &mut dyn Waiting,
    may_claim: &dyn Fn() -> bool,
) -> Result<(u32, u32), WaitError> {
    if queue_empty(w) && may_claim() {
        if let Some(c) = try_claim(w, owner, start) {
            return Ok(c);
        }
    }
    claim_slow(w, park, owner, start, waiting, may_claim)
}

/// Whether some slot is FREE.
fn any_free<W: Words + ?Sized>(w: &W) -> bool {
    (0..w.slot_count())
        .any(|i| State(w.slot_state(i).load(Ordering::Relaxed)).kind() == State::FREE)
}

/// Process entry `owner` announces one more caller waiting for a free slot: its own share
/// first, then the total, so that a process killed between the two leaves its share at most
/// one above what it added to the total (and [`heal_free_waits`] at worst takes one too many,
/// which the saturating decrement of [`retract_free_wait`] absorbs: the count can fall short
/// for a while, costing a waiter at most one park slice, but never stays too high).
pub fn announce_free_wait<W: Words + ?Sized>(w: &W, owner: u32) {
    w.owner_waiters(owner).fetch_add(1, Ordering::Relaxed);
    w.free_waiters().fetch_add(1, Ordering::Relaxed);
}

/// Undoes one [`announce_free_wait`] of `owner`: the total first (never below zero), then its
/// share.
pub fn retract_free_wait<W: Words + ?Sized>(w: &W, owner: u32) {
    saturating_sub(w.free_waiters(), 1);
    saturating_sub(w.owner_waiters(owner), 1);
}

/// An announced waiter of process entry `owner` joins the queue (it is about to park for the
/// first time, or it is an async helper with futures queued): from now on freed slots are for
/// the queued, and callers that have not queued leave them alone. Always after the waiter's
/// [`announce_free_wait`], so that `queued_waiters <= free_waiters` (a freed slot that found
/// nobody announced, and so woke nobody, is never left to the queue: see `claim_slow`).
pub fn queue_free_wait<W: Words + ?Sized>(w: &W, owner: u32) {
    w.owner_queued(owner).fetch_add(1, Ordering::Relaxed);
    // SYNC: SeqCst RMW, ordered after the announcement's RMWs and before the park; read by
    // the SeqCst load in `queue_empty` of a caller that has not queued.
    w.queued_waiters().fetch_add(1, Ordering::SeqCst);
}

/// Undoes one [`queue_free_wait`] of `owner`; always before the waiter's
/// [`retract_free_wait`].
pub fn unqueue_free_wait<W: Words + ?Sized>(w: &W, owner: u32) {
    saturating_sub(w.queued_waiters(), 1);
    saturating_sub(w.owner_queued(owner), 1);
}

/// Leaves the wait for a free slot: the place in the queue (if taken), then the announcement.
fn leave_free_wait<W: Words + ?Sized>(w: &W, owner: u32, queued: bool) {
    if queued {
        unqueue_free_wait(w, owner);
    }
    retract_free_wait(w, owner);
}

/// Whether no caller is queued for a free slot: only then may a caller that has not queued
/// take one ([`claim_if`]).
#[inline]
pub fn queue_empty<W: Words + ?Sized>(w: &W) -> bool {
    // SYNC: SeqCst pairs with the SeqCst RMW of `queue_free_wait`: see `claim_slow`.
    mutated(w, Mutant::BargePastQueue) || w.queued_waiters().load(Ordering::SeqCst) == 0
}

/// Takes back from `free_waiters` (and `queued_waiters`) whatever process entry `owner` still
/// announced (it died counted); returns how much. Only the holder of `owner`'s liveness lock
/// may call it: then nobody else changes that share meanwhile.
pub fn heal_free_waits<W: Words + ?Sized>(w: &W, owner: u32) -> u32 {
    let queued = w.owner_queued(owner).swap(0, Ordering::Relaxed);
    if queued > 0 {
        saturating_sub(w.queued_waiters(), queued);
    }
    let left = w.owner_waiters(owner).swap(0, Ordering::Relaxed);
    if mutated(w, Mutant::HealEverything) {
        w.free_waiters().store(0, Ordering::Relaxed);
    } else if left > 0 {
        saturating_sub(w.free_waiters(), left);
    }
    left
}

fn saturating_sub(word: &AtomicU32, n: u32) {
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

#[cold]
fn claim_slow<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    owner: u32,
    start: u32,
    waiting: &mut dyn Waiting,
    may_claim: &dyn Fn() -> bool,
) -> Result<(u32, u32), WaitError> {
    let mut got = None;
    if waiting.spin(&mut || {
        got = if queue_empty(w) && may_claim() {
            try_claim(w, owner, start)
        } else {
            None
        };
        if got.is_some() {
            Poll::Ready
        } else {
            Poll::Queued
        }
    }) {
        return Ok(got.expect("spin reported success"));
    }
    // Announced for the whole wait (so that every slot freed meanwhile wakes someone), and
    // queued from the first park on.
    announce_free_wait(w, owner);
    // SYNC: announce, fence, look for a free slot; pairs with the fence in `notify_free`
    // (free, fence, read `free_waiters`) and in `shutdown` (STOPPED, fence, ...). The
    // announcement ends with an RMW on `free_waiters`.
    fence_after_rmw();
    let mut queued = false;
    let out = loop {
        if !server_running(w) || !waiting.peer_alive() {
            break Err(WaitError::Gone);
        }
        let Some(slice) = waiting.next_park() else {
            break Err(WaitError::Timeout);
        };
        // SYNC: Acquire pairs with the Release bump in `notify_free`/`shutdown`: a waiter that
        // reads a bumped value also sees the freed slot or the STOPPED state.
        let seq = w.free_seq().load(Ordering::Acquire);
        // A caller that has not queued leaves a free slot to the queue: whoever freed it saw
        // the queue's announcements (`queued_waiters <= free_waiters`) and woke one of them.
        // If nobody is queued it takes the slot: its freer may have seen nobody and woken
        // nobody. (Of several callers that announced at once and found the same free slot,
        // the first to look sees no one queued: each queues only after its own look.)
        if may_claim() && (queued || queue_empty(w)) {
            if let Some(c) = try_claim(w, owner, start) {
                break Ok(c);
            }
        }
        if !server_running(w) {
            break Err(WaitError::Gone);
        }
        if !queued {
            queue_free_wait(w, owner);
            queued = true;
            // From now on any free slot is ours to take. One freed after the look above
            // bumps `free_seq` (its freer sees our announcement), so the park below returns at
            // once; one we saw and left was freed for the queue, whose woken waiter takes it
            // or passes it on when it leaves.
        }
        park.wait(w.free_seq(), seq, Some(slice));
        // A woken waiter tries to claim before it looks at its deadline, so a wake for a freed
        // slot is used here or the slot was taken by another claimer. It tries while still
        // announced: a process over its share that looks meanwhile must still see someone
        // waiting, or it could take the slot this wake-up was for.
        if may_claim() {
            if let Some(c) = try_claim(w, owner, start) {
                break Ok(c);
            }
        } else if any_free(w) {
            // Woken for a slot we may not take: hand the wake-up to the next waiter.
            notify_free(w, park);
        }
    };
    leave_free_wait(w, owner, queued);
    // SYNC: leave (RMWs), fence, look for free slots; pairs with the fence in `notify_free`.
    fence_after_rmw();
    // Another slot may be free whose wake-up reached nobody (it was sent while every queued
    // waiter was between two parks, and this one took another slot), or was ours and goes
    // unused (the deadline passed): pass it on, so that no queued waiter sleeps beside it.
    if !mutated(w, Mutant::NoPassOn) && any_free(w) {
        notify_free(w, park);
    }
    out
}

/// Publishes the request in `slot` (CLAIMED -> REQUEST at `gen`) and wakes a worker if one
/// sleeps. Returns `false`, having changed nothing, if the slot is no longer this call's (a
/// peer broke the protocol and the slot went to someone else): the caller must not touch it
/// again.
#[must_use]
pub fn publish_request<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    slot: u32,
    gen: u32,
) -> bool {
    // SYNC: Release publishes the request bytes and slot fields; pairs with the Acquire CAS in
    // `begin_serving`.
    let order = if mutated(w, Mutant::PublishRelaxed) {
        Ordering::Relaxed
    } else {
        Ordering::Release
    };
    let word = w.slot_state(slot);
    let request = State::new(State::REQUEST, gen).0;
    if mutated(w, Mutant::PublishByStore) {
        word.store(request, order);
    } else if word
        .compare_exchange(
            State::new(State::CLAIMED, gen).0,
            request,
            order,
            Ordering::Relaxed,
        )
        .is_err()
    {
        return false;
    }
    // SYNC: Release (the bit also publishes the request to the worker whose AcqRel
    // `fetch_and` in `take_ready` takes it).
    w.ready_word(slot as usize / 64)
        .fetch_or(1u64 << (slot % 64), order);
    // SYNC: set the bit, fence, read the sleepers; pairs with the fence in `worker_park`
    // (announce, fence, read the bitmap). The bit was set by an RMW: `fence_after_rmw`.
    fence_after_rmw();
    if w.server_sleepers().load(Ordering::Relaxed) > 0 && !mutated(w, Mutant::NoWorkerWake) {
        // SYNC: Release pairs with the Acquire load of `server_seq` in `worker_park`.
        w.server_seq().fetch_add(1, Ordering::Release);
        park.wake(w.server_seq(), 1);
    }
    true
}

/// Whether a state word means the call is complete: the reply is there, or the one-way
/// message was accepted (the worker may even have run the handler and freed the slot already,
/// which bumps the generation: only the worker frees a slot while its client waits).
#[inline]
fn is_done(s: State, gen: u32) -> bool {
    s.gen() != gen || matches!(s.kind(), State::REPLY | State::ACCEPTED)
}

/// The state a completed call reports: a slot freed after ACCEPTED reads as ACCEPTED.
#[inline]
fn done_state(s: State, gen: u32) -> State {
    if s.gen() == gen {
        s
    } else {
        State::new(State::ACCEPTED, gen)
    }
}

/// Waits until the call in `slot` is complete (REPLY or ACCEPTED at `gen`).
///
/// On `Err`, the call is still in flight: the caller must [`abandon`] it.
pub fn wait_done<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    slot: u32,
    gen: u32,
    waiting: &mut dyn Waiting,
) -> Result<State, WaitError> {
    let word = w.slot_state(slot);
    // SYNC: Acquire pairs with the Release in `finish`: the reply bytes are visible.
    let s = State(word.load(Ordering::Acquire));
    if is_done(s, gen) {
        return Ok(done_state(s, gen));
    }
    wait_done_slow(w, park, slot, gen, waiting)
}

#[cold]
fn wait_done_slow<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    slot: u32,
    gen: u32,
    waiting: &mut dyn Waiting,
) -> Result<State, WaitError> {
    let word = w.slot_state(slot);
    // SYNC (all loads below): Acquire pairs with the Release in `finish`.
    let mut last = State(0);
    if waiting.spin(&mut || {
        last = State(word.load(Ordering::Acquire));
        if is_done(last, gen) {
            Poll::Ready
        } else if last.kind() == State::REQUEST {
            Poll::Queued
        } else {
            Poll::Busy
        }
    }) {
        return Ok(done_state(last, gen));
    }
    loop {
        let s = State(word.load(Ordering::Acquire));
        if is_done(s, gen) {
            return Ok(done_state(s, gen));
        }
        if !matches!(s.kind(), State::REQUEST | State::SERVING) {
            // Only a peer that breaks the protocol moves our slot elsewhere.
            return Err(WaitError::Gone);
        }
        let Some(slice) = waiting.next_park() else {
            return Err(WaitError::Timeout);
        };
        let parked = State(s.0 | State::WAITER);
        // The WAITER bit is set on the word `finish` CASes, so `finish` reads it in the same
        // modification order: no fence needed against the reply.
        if !s.has_waiter()
            && word
                .compare_exchange(s.0, parked.0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            continue;
        }
        // SYNC: announce (WAITER), fence, re-check the server state; pairs with the fence in
        // `shutdown` (store STOPPED, fence, read every slot word).
        fence(Ordering::SeqCst);
        if !server_running(w) || !waiting.peer_alive() {
            return Err(WaitError::Gone);
        }
        park.wait(word, parked.0, Some(slice));
    }
}

/// Gives up the call in `slot`: REQUEST -> ABANDONED (a worker that takes its ready bit frees
/// the slot) or SERVING -> ORPHANED (the serving worker frees it when its handler returns).
/// If the call completed meanwhile, returns its state instead (the caller then owns a REPLY,
/// or nothing to do for ACCEPTED).
pub fn abandon<W: Words + ?Sized>(w: &W, slot: u32, gen: u32) -> Result<(), State> {
    let word = w.slot_state(slot);
    let mut cur = State(word.load(Ordering::Acquire));
    loop {
        if is_done(cur, gen) {
            return Err(done_state(cur, gen));
        }
        let to = match cur.kind() {
            State::REQUEST => State::ABANDONED,
            State::SERVING if mutated(w, Mutant::AbandonServingAsQueued) => State::ABANDONED,
            State::SERVING => State::ORPHANED,
            _ => return Ok(()),
        };
        // SYNC: AcqRel: Acquire in case we lose to `finish` and read its reply; Release so the
        // worker that frees the slot orders after our last access.
        match word.compare_exchange(
            cur.0,
            State::new(to, gen).0,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Ok(()),
            Err(now) => cur = State(now),
        }
    }
}

/// Frees `slot`, which its owner holds in state `from` (a client: REPLY, or CLAIMED when the
/// request did not fit; a worker: ACCEPTED or ABANDONED): `from` -> FREE at the next
/// generation, waking one caller that waits for a free slot. Returns `false`, having changed
/// nothing, if the word is no longer `from` (only a peer that broke the protocol moves a slot
/// away from its owner): the caller must not touch the slot again.
pub fn release<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    slot: u32,
    from: State,
) -> bool {
    let next = if mutated(w, Mutant::NoGeneration) {
        from.gen()
    } else {
        State::next_gen(from.gen())
    };
    let free = State::new(State::FREE, next).0;
    let word = w.slot_state(slot);
    let mut from = from;
    if mutated(w, Mutant::RunFreedFirst) {
        w.drop_extent(slot);
    } else if w.has_extent(slot) {
        // The slot's arena run goes back before the slot is free (once FREE, the slot is
        // another's), but only while the slot is provably still ours: first take it into
        // CLAIMED at our generation (no worker or reaper acts on our CLAIMED slot), then give
        // the run back. A slot taken from us meanwhile fails the CAS and keeps its run.
        let held = State::new(State::CLAIMED, from.gen());
        if held != from
            && word
                .compare_exchange(from.0, held.0, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        w.drop_extent(slot);
        from = held;
    }
    // SYNC: Release publishes that we are done with the slot; pairs with the Acquire CAS in
    // `try_claim`. An RMW either way, so `notify_free` follows an RMW (`fence_after_rmw`).
    if mutated(w, Mutant::ReleaseByStore) {
        word.swap(free, Ordering::Release);
    } else if word
        .compare_exchange(from.0, free, Ordering::Release, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    notify_free(w, park);
    true
}

/// What the kernel says of the process behind an owner entry (`shm::Mapping::liveness`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Liveness {
    /// The process holds its entry's lock: it runs (or is stopped, or paused: still alive).
    Alive,
    /// Nobody holds the entry's lock, and the asker now holds it: the process that owned the
    /// entry is gone, and no other process can take the entry until the asker lets go.
    Dead,
    /// The question could not be answered (a system call failed): treated as alive.
    Unknown,
}

/// What [`reap`] did to one slot.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reaped {
    /// The slot is free, served, or its owner lives (or may live): left alone.
    Nothing,
    /// A dead owner's CLAIMED, REQUEST or REPLY slot: freed.
    Freed,
    /// A dead owner's call that a worker is serving: marked ORPHANED (the worker frees it).
    Abandoned,
}

/// The reaper's step for one slot. If the call in it belongs to an owner whose liveness
/// `liveness` reports as [`Liveness::Dead`], the slot is freed (CLAIMED, REQUEST, REPLY: no one
/// else holds those) or marked ORPHANED (SERVING: the worker frees it when the handler
/// returns), by a compare-and-swap from the word observed here, so that any progress made
/// since wins. An owner that is alive or whose liveness is unknown keeps its slot, however
/// long it holds it: no timer ever takes a slot from its owner. A REQUEST may still have its
/// ready bit set (or may never have had it: the owner can die between its CAS and the bit); a
/// stale bit is harmless, `begin_serving` skips a slot not in REQUEST.
pub fn reap<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    slot: u32,
    liveness: &mut dyn FnMut(u32) -> Liveness,
) -> Reaped {
    // SYNC: Acquire: if we free the slot, the dead owner's last writes are ordered before the
    // next claimer's (kept for symmetry; a dead owner writes nothing more).
    let s = State(w.slot_state(slot).load(Ordering::Acquire));
    if !s.held_by_owner() || s.owner() == 0 {
        return Reaped::Nothing;
    }
    match liveness(s.owner()) {
        Liveness::Dead => {}
        Liveness::Unknown if mutated(w, Mutant::ReclaimUnknown) => {}
        Liveness::Alive | Liveness::Unknown => return Reaped::Nothing,
    }
    if s.kind() == State::SERVING {
        return match abandon(w, slot, s.gen()) {
            Ok(()) => Reaped::Abandoned,
            Err(_) => Reaped::Nothing,
        };
    }
    let free = State::new(State::FREE, State::next_gen(s.gen()));
    let mut s = s;
    if mutated(w, Mutant::RunFreedFirst) {
        w.drop_extent(slot);
    } else if w.has_extent(slot) {
        // The dead owner's arena run goes back before the slot is free, and only once no
        // worker can take the call any more: first move the slot (REQUEST, REPLY) to CLAIMED at
        // the dead owner's generation (a worker serves only a REQUEST), so a worker that took
        // the call first keeps it and its run (our CAS fails: it is reaped as SERVING on a
        // later scan). Should this process die between the two CASes, the slot stays CLAIMED
        // by the dead owner and the next reaper frees it.
        let held = State::new(State::CLAIMED, s.gen());
        if held != s
            && w.slot_state(slot)
                .compare_exchange(s.0, held.0, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return Reaped::Nothing;
        }
        w.drop_extent(slot);
        s = held;
    }
    if mutated(w, Mutant::ReapByStore) {
        w.slot_state(slot).swap(free.0, Ordering::AcqRel);
    } else if w
        .slot_state(slot)
        .compare_exchange(s.0, free.0, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return Reaped::Nothing;
    }
    notify_free(w, park);
    Reaped::Freed
}

fn notify_free<W: Words + ?Sized, P: Park + ?Sized>(w: &W, park: &P) {
    // SYNC: (the slot was freed,) fence, read the waiters; pairs with the fence in
    // `claim_slow` (announce, fence, look for a free slot) and in an async helper's
    // `bell_arm` after it counted itself in `free_waiters`. Every caller freed the slot with
    // an RMW (`release`'s or `reap`'s CAS).
    fence_after_rmw();
    if w.free_waiters().load(Ordering::Relaxed) > 0 {
        // SYNC: Release pairs with the Acquire load of `free_seq` in `claim_slow`.
        w.free_seq().fetch_add(1, Ordering::Release);
        park.wake(w.free_seq(), 1);
        // An async helper counts itself in `free_waiters` while futures wait for a slot.
        ring(w, park);
    }
}

// ---------------------------------------------------------------------------------------------
// The async doorbell: one helper thread per client process and mapping sleeps on
// `async_bell` for all of that process's async calls.

/// Rings the async doorbell: bumps it (so that a helper about to sleep on its old value does
/// not) and, if a helper announced that it sleeps, clears the announcement and wakes every
/// helper. Called after an async call completes, after a slot is freed while someone waits
/// for one, and at shutdown, always after the change the helpers look for.
pub fn ring<W: Words + ?Sized, P: Park + ?Sized>(w: &W, park: &P) {
    let bell = w.async_bell();
    // SYNC: AcqRel RMW on the bell: Release makes the change made before (REPLY, ACCEPTED,
    // FREE, STOPPED) visible to a helper whose arming RMW reads this value or a later one;
    // both sides being RMWs of one word, one of them reads the other (no fence needed).
    let old = bell.fetch_add(2, Ordering::AcqRel);
    if old & 1 != 0 {
        // Every helper that armed before this point is asleep or will see the changed value:
        // wake them all; the next one to sleep arms again.
        bell.fetch_and(!1, Ordering::Relaxed);
        park.wake(bell, u32::MAX);
    }
}

/// An async helper announces that it is about to sleep: sets the bell's sleeper bit and
/// returns the value to sleep on. The helper must look for completions *after* this call and
/// sleep only if it found none (a ring after this call changes the value or wakes it).
pub fn bell_arm<W: Words + ?Sized>(w: &W) -> u32 {
    if mutated(w, Mutant::BellArmByLoad) {
        return w.async_bell().load(Ordering::Acquire);
    }
    // SYNC: AcqRel pairs with the AcqRel `fetch_add` in `ring`: if the ring came first we read
    // its value and see the change it announced; if we came first, it sees our bit.
    w.async_bell().fetch_or(1, Ordering::AcqRel) | 1
}

/// Sleeps on the doorbell while it still holds `armed` (the value `bell_arm` returned), at
/// most `timeout`; may return spuriously.
pub fn bell_wait<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    armed: u32,
    timeout: Option<Duration>,
) {
    park.wait(w.async_bell(), armed, timeout);
}

/// Whether the call in `slot` at `gen` is complete (REPLY or ACCEPTED, or freed after
/// ACCEPTED): the non-blocking check of an async caller. Acquire, as in `wait_done`.
pub fn poll_done<W: Words + ?Sized>(w: &W, slot: u32, gen: u32) -> Option<State> {
    // SYNC: Acquire pairs with the Release in `finish`: the reply bytes are visible.
    let s = State(w.slot_state(slot).load(Ordering::Acquire));
    is_done(s, gen).then(|| done_state(s, gen))
}

/// Whether the call in `slot` at `gen` is still in the hands of the protocol (REQUEST or
/// SERVING): anything else that is not done means a peer broke the protocol.
pub fn in_flight<W: Words + ?Sized>(w: &W, slot: u32, gen: u32) -> bool {
    let s = State(w.slot_state(slot).load(Ordering::Relaxed));
    s.gen() == gen && matches!(s.kind(), State::REQUEST | State::SERVING)
}

/// Whether the server is running (not STOPPED), as the slot protocol sees it.
pub fn running<W: Words + ?Sized>(w: &W) -> bool {
    server_running(w)
}

// ---------------------------------------------------------------------------------------------
// Server side: take a ready slot, begin serving, finish, park.

/// Takes one bit of the ready bitmap, scanning from slot `start` round the whole bitmap (a
/// `start` past the last slot counts as 0); exactly one caller gets each set bit.
///
/// A worker passes the slot after the one it served last, so that under constant load every
/// published slot is served within one turn of the bitmap: always scanning from the lowest bit
/// would leave a high slot unserved for as long as lower ones keep being published.
#[inline(always)]
pub fn take_ready<W: Words + ?Sized>(w: &W, start: u32) -> Option<u32> {
    let n = w.slot_count();
    let start = if start < n && !mutated(w, Mutant::LowestFirst) {
        start
    } else {
        0
    };
    let from = u64::MAX << (start % 64);
    if n <= 64 {
        // One word (the default 32 slots): its bits from `start` on first, then the rest.
        return take_in_word(w, 0, from, u64::MAX);
    }
    // The first word from `start`'s bit on, every other word whole, then the first word's
    // bits below `start` last.
    let words = n.div_ceil(64) as usize;
    let first = (start / 64) as usize;
    (0..=words).find_map(|k| {
        let mask = match k {
            0 => from,
            k if k == words => !from,
            _ => u64::MAX,
        };
        take_in_word(w, (first + k) % words, mask, mask)
    })
}

/// Takes one set bit of ready word `wi`: one of `prefer`'s if any is set, else one of
/// `allow`'s (`prefer` is within `allow`), the lowest of them.
#[inline(always)]
fn take_in_word<W: Words + ?Sized>(w: &W, wi: usize, prefer: u64, allow: u64) -> Option<u32> {
    let word = w.ready_word(wi);
    let mut v = word.load(Ordering::Relaxed) & allow;
    while v != 0 {
        let pick = if v & prefer != 0 { v & prefer } else { v };
        let bit = pick & pick.wrapping_neg();
        // SYNC: AcqRel on the bitmap only decides who owns the bit; the request bytes are
        // acquired by the CAS in `begin_serving`.
        let old = if mutated(w, Mutant::TakeByLoad) {
            let old = word.load(Ordering::SeqCst);
            word.store(old & !bit, Ordering::SeqCst);
            old
        } else {
            word.fetch_and(!bit, Ordering::AcqRel)
        };
        if old & bit != 0 {
            // A bit past the last slot (set by a broken peer) is cleared and skipped.
            let slot = wi as u32 * 64 + bit.trailing_zeros();
            if slot < w.slot_count() {
                return Some(slot);
            }
        }
        v = old & !bit & allow;
    }
    None
}

/// What a worker found in a slot whose ready bit it took.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Begin {
    /// The worker now owns the request at this generation (REQUEST -> SERVING).
    Serve(u32),
    /// Nothing to serve: an abandoned call (now freed) or a stale bit.
    Skip,
}

/// REQUEST -> SERVING for the slot whose ready bit this worker took.
pub fn begin_serving<W: Words + ?Sized, P: Park + ?Sized>(w: &W, park: &P, slot: u32) -> Begin {
    let word = w.slot_state(slot);
    let mut cur = State(word.load(Ordering::Acquire));
    loop {
        match cur.kind() {
            State::REQUEST => {
                let next = State(State::new(State::SERVING, cur.gen()).0 | (cur.0 & State::WAITER));
                // SYNC: Acquire pairs with the Release in `publish_request`: the request bytes
                // are visible to this worker.
                match word.compare_exchange(cur.0, next.0, Ordering::Acquire, Ordering::Acquire) {
                    Ok(_) => return Begin::Serve(cur.gen()),
                    Err(now) => cur = State(now),
                }
            }
            State::ABANDONED => {
                // The client timed out before any worker took the request: the slot is ours to
                // free. (An ORPHANED slot is its serving worker's to free: skipped.)
                let _ = release(w, park, slot, cur);
                return Begin::Skip;
            }
            _ => return Begin::Skip,
        }
    }
}

/// SERVING -> `to` (REPLY or ACCEPTED), publishing the reply, and wakes the client if it
/// parked. Returns `false` if the client had abandoned the call: the slot is then freed here.
pub fn finish<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    slot: u32,
    gen: u32,
    to: u32,
) -> bool {
    let word = w.slot_state(slot);
    let mut cur = State(word.load(Ordering::Relaxed));
    loop {
        if cur.gen() != gen {
            return false;
        }
        match cur.kind() {
            State::SERVING => {
                // SYNC: Release publishes the reply bytes and status; pairs with the Acquire
                // loads in `wait_done`. The CAS itself reads the WAITER bit: no fence needed.
                let order = if mutated(w, Mutant::FinishRelaxed) {
                    Ordering::Relaxed
                } else {
                    Ordering::Release
                };
                match word.compare_exchange(cur.0, State::new(to, gen).0, order, Ordering::Relaxed)
                {
                    Ok(_) => {
                        if cur.has_waiter() {
                            park.wake(word, u32::MAX);
                        }
                        return true;
                    }
                    Err(now) => cur = State(now),
                }
            }
            // ORPHANED: the client gave up while we served. (ABANDONED at our generation only
            // if a mutant or a peer wrote it: freed the same way, by a CAS from what we saw.)
            State::ORPHANED | State::ABANDONED => {
                // SYNC: the Acquire pairs with the client's AcqRel abandon CAS.
                crate::sync::fence(Ordering::Acquire);
                let _ = release(w, park, slot, cur);
                return false;
            }
            _ => return false,
        }
    }
}

/// Parks a worker until a request is published, the server stops, or `timeout` passes.
pub fn worker_park<W: Words + ?Sized, P: Park + ?Sized>(
    w: &W,
    park: &P,
    timeout: Option<Duration>,
) {
    // SYNC: Acquire pairs with the Release bumps in `publish_request` and `shutdown`.
    let seq = w.server_seq().load(Ordering::Acquire);
    w.server_sleepers().fetch_add(1, Ordering::Relaxed);
    // SYNC: announce, fence, re-check the bitmap; pairs with the fence in `publish_request`
    // (set the bit, fence, read `server_sleepers`).
    fence_after_rmw();
    if !any_ready(w) && server_running(w) {
        park.wait(w.server_seq(), seq, timeout);
    }
    w.server_sleepers().fetch_sub(1, Ordering::Relaxed);
}

/// Whether any request is waiting in the ready bitmap.
pub fn any_ready<W: Words + ?Sized>(w: &W) -> bool {
    let words = (w.slot_count() as usize).div_ceil(64);
    (0..words).any(|i| w.ready_word(i).load(Ordering::Relaxed) != 0)
}

/// Stops the server: sets STOPPED, then wakes every parked worker, every client parked on a
/// slot, and every caller waiting for a free slot. Each of them re-checks the server state.
pub fn shutdown<W: Words + ?Sized, P: Park + ?Sized>(w: &W, park: &P) {
    w.server_state()
        .store(crate::layout::server_state::STOPPED, Ordering::Release);
    // SYNC: store STOPPED, fence, read every slot word; pairs with the fence in
    // `wait_done_slow` (set WAITER, fence, read the server state) and in `claim_slow`.
    fence(Ordering::SeqCst);
    // SYNC: Release bumps pair with the Acquire loads of the futex words by the waiters.
    if !mutated(w, Mutant::ShutdownNoWorkerWake) {
        w.server_seq().fetch_add(1, Ordering::Release);
        park.wake(w.server_seq(), u32::MAX);
    }
    for i in 0..w.slot_count() {
        let word = w.slot_state(i);
        let s = State(word.load(Ordering::Relaxed));
        if s.has_waiter() {
            // Clearing WAITER changes the futex word, so a client that announced itself but
            // has not entered the futex yet does not sleep (its expected value is stale);
            // it re-announces if it parks again. A failed CAS means the word changed anyway.
            if !mutated(w, Mutant::ShutdownKeepsWaiter) {
                let _ = word.compare_exchange(
                    s.0,
                    s.0 & !State::WAITER,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            park.wake(word, u32::MAX);
        }
    }
    w.free_seq().fetch_add(1, Ordering::Release);
    park.wake(w.free_seq(), u32::MAX);
    ring(w, park);
}
