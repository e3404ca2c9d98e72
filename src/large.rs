//! Large messages on the sending side: moving a message that outgrows its slot into a run of
//! the arena (`arena.rs`), waiting for room within the caller's time.
//!
//! A sender first serializes into its slot's payload area, with the writer told to stop at the
//! first write past its end (for a byte buffer, whose bytes are one write, that is at once;
//! at most a slot's worth of work otherwise). A message that stops there gets a generous run
//! (at least what it needed when it stopped: four times that, or a quarter of the arena if
//! more) and is serialized once into it, then the run is cut to the archive. Only when other messages hold so much of the arena
//! that the run is too short does the writer count the rest, wait for a run of the exact size
//! and serialize again into it.

use crate::arena::{self, chunks_for, Alloc, Extent, Purpose};
use crate::clock;
use crate::error::{Error, Result};
use crate::message::{self, Encode};
use crate::protocol::State;
use crate::shm::Mapping;
use crate::sync::Ordering;
use crate::wait::ticks_to_duration;
use std::time::{Duration, Instant};

/// How long a worker waits for arena room for a reply before it looks at who holds the room:
/// if only the requests waiting to be served could free enough of it (they may all be waiting
/// for this very worker), it reports the reply too large; else it waits on, as long as its
/// caller waits ([`Deadline::Serving`]).
pub(crate) const WORKER_WAIT: Duration = Duration::from_secs(2);

/// The longest a worker waits for room for a reply in any case (a caller may wait longer,
/// and a peer may hold its replies for ever): the clients' default timeout.
const WORKER_WAIT_MAX: Duration = crate::client::DEFAULT_TIMEOUT;

/// How long a request waits for arena room before it asks to go first (`arena::want`).
const WANT_AFTER: Duration = Duration::from_millis(100);

/// Longest one wait for arena room lasts before the waiter looks again.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Who writes a large message: the process entry that takes the arena lock, and what for.
#[derive(Clone, Copy)]
pub(crate) struct Writer {
    /// The process entry (0: the server).
    pub(crate) owner: u32,
    /// A request keeps room for replies; a reply takes any room.
    pub(crate) purpose: Purpose,
}

impl Writer {
    /// A server's worker, writing a reply that may take the run its record `record` holds
    /// ([`Purpose::ReplyReusing`]), or any room.
    pub(crate) fn worker_reusing(record: Option<u32>) -> Writer {
        Writer {
            owner: 0,
            purpose: record.map_or(Purpose::Reply, Purpose::ReplyReusing),
        }
    }

    /// A client of process entry `entry`, writing a request.
    pub(crate) fn client(entry: u32) -> Writer {
        Writer {
            owner: entry,
            purpose: Purpose::Request,
        }
    }
}

/// Arena room for the message being written into `slot` by `writer`.
pub(crate) struct ArenaRoom<'m> {
    map: &'m Mapping,
    slot: u32,
    writer: Writer,
    /// When the waiting ends: the caller's deadline (computed on first need).
    deadline: Deadline,
    /// The time allowed, for a `Timeout` error.
    timeout: Duration,
}

/// When the waiting for room ends.
pub(crate) enum Deadline {
    /// `timeout` after the call began (`begun`, in clock ticks): a client's call.
    Call { begun: u64, timeout: Duration },
    /// Fixed once first needed.
    At(Instant),
    /// A worker's reply for the slot: as long as its caller waits (the slot SERVING) and the
    /// server runs, at most [`WORKER_WAIT_MAX`]; past [`WORKER_WAIT`] (from the first wait,
    /// when it began), only while something other than the requests waiting to be served
    /// holds room the reply needs (replies being read, runs the workers hold), which frees
    /// without this worker.
    Serving(Option<Instant>),
}

impl<'m> ArenaRoom<'m> {
    #[inline(always)]
    pub(crate) fn new(map: &'m Mapping, slot: u32, writer: Writer, deadline: Deadline) -> Self {
        let timeout = match deadline {
            Deadline::Call { timeout, .. } => timeout,
            Deadline::At(at) => at.saturating_duration_since(Instant::now()),
            Deadline::Serving(_) => WORKER_WAIT,
        };
        ArenaRoom {
            map,
            slot,
            writer,
            deadline,
            timeout,
        }
    }

    fn until(&mut self) -> Instant {
        let at = match self.deadline {
            Deadline::At(at) => return at,
            Deadline::Call { begun, timeout } => {
                let q32 = self.map.header().ns_per_tick_q32.load(Ordering::Relaxed);
                let spent = ticks_to_duration(clock::ticks().wrapping_sub(begun), q32);
                Instant::now() + timeout.saturating_sub(spent)
            }
            // Looked at again after each slice of waiting (`worker_waits_on`).
            Deadline::Serving(since) => {
                let now = Instant::now();
                self.deadline = Deadline::Serving(Some(since.unwrap_or(now)));
                return now + WAIT_SLICE;
            }
        };
        self.deadline = Deadline::At(at);
        at
    }

    /// For [`Deadline::Serving`]: whether the worker waits on for a run of `min` chunks.
    #[cold]
    fn worker_waits_on(&self, min: u32) -> bool {
        let Deadline::Serving(since) = self.deadline else {
            return true;
        };
        let map = self.map;
        let kind = State(map.slot(self.slot).state.load(Ordering::Acquire)).kind();
        if kind != State::SERVING || !map.running_state() {
            // The caller gave up, or the server stops: no one waits for this reply.
            return false;
        }
        let waited = since.map_or(Duration::ZERO, |t| t.elapsed());
        if waited < WORKER_WAIT {
            return true;
        }
        if waited >= WORKER_WAIT_MAX {
            return false;
        }
        // Would the room be there with only the requests published or being written holding
        // theirs? If not, only they could make it, and they may be waiting for this worker.
        let slots = map.layout().slot_count;
        arena::fits_with_only(map, min, |s| {
            s < slots
                && matches!(
                    State(map.slot(s).state.load(Ordering::Relaxed)).kind(),
                    State::CLAIMED | State::REQUEST
                )
        })
    }

    /// A run of at least `min` chunks (as many as are free up to `max`) recorded in the slot,
    /// waiting for frees until the deadline; `None` once it passed.
    pub(crate) fn alloc(&mut self, min: u32, max: u32) -> Option<Extent> {
        let mut wanting = false;
        let got = self.alloc_waiting(min, max, &mut wanting);
        if wanting {
            arena::unwant(self.map, self.slot);
            // The requests held back for this one may go now.
            self.map.notify_arena();
        }
        got
    }

    /// [`ArenaRoom::alloc`]; a request that has waited [`WANT_AFTER`] takes the arena's
    /// priority word if it is free (`wanting`: whether it holds it, for the caller to let go).
    fn alloc_waiting(&mut self, min: u32, max: u32, wanting: &mut bool) -> Option<Extent> {
        let (map, slot) = (self.map, self.slot);
        let Writer { owner, purpose } = self.writer;
        let mut busy = 0u32;
        let mut since: Option<Instant> = None;
        loop {
            match arena::alloc_for(map, owner, slot, min, max, purpose) {
                Alloc::Got(run) => return Some(self.got(run)),
                Alloc::Busy(_) => {
                    // Held for a reading of the records (microseconds), or by a process that
                    // died in it (the reaper breaks that within its scan period).
                    busy += 1;
                    if busy < 64 {
                        std::hint::spin_loop();
                        continue;
                    }
                    std::thread::yield_now();
                    if !busy.is_multiple_of(1024) {
                        continue;
                    }
                }
                Alloc::Full => {}
            }
            if !self.worker_waits_on(min) {
                return None;
            }
            if purpose == Purpose::Request {
                if *wanting {
                    arena::renew_want(map, slot);
                } else {
                    let t = *since.get_or_insert_with(Instant::now);
                    if t.elapsed() >= WANT_AFTER {
                        *wanting = arena::want(map, slot, min);
                    }
                }
            }
            let until = self.until();
            let now = Instant::now();
            if now >= until {
                return None;
            }
            let mut got = None;
            map.wait_for_arena(
                (until - now).min(WAIT_SLICE),
                &mut || match arena::alloc_for(map, owner, slot, min, max, purpose) {
                    Alloc::Got(run) => {
                        got = Some(run);
                        true
                    }
                    _ => false,
                },
            );
            if let Some(run) = got {
                return Some(self.got(run));
            }
        }
    }

    /// `run`, allocated: a reply that reused its request's run may have given back the part
    /// it did not take (the others who wait for room are woken).
    fn got(&self, run: Extent) -> Extent {
        if matches!(self.writer.purpose, Purpose::ReplyReusing(_)) {
            self.map.notify_arena();
        }
        run
    }
}

/// Serializes `value` for `slot` (owned by the caller, `writer`): into the slot's payload area
/// when it fits, else into an arena run recorded in the slot (cut to size), one that keeps
/// room for replies if the writer is a client. On error nothing stays recorded.
/// Returns the archive's length and checksum.
///
/// # Safety
/// The caller owns `slot` (CLAIMED by this client, or SERVING by this worker), which records
/// no run, and nothing borrows its payload area.
#[inline(always)]
pub(crate) unsafe fn serialize_large<T: Encode>(
    map: &Mapping,
    slot: u32,
    writer: Writer,
    value: &T,
    checked: bool,
    deadline: Deadline,
) -> Result<(usize, u32)> {
    let layout = map.layout();
    // SAFETY: the caller owns the slot and its payload area (`max_payload` bytes, 64-byte
    // aligned).
    let first = unsafe {
        message::serialize_into(
            value,
            map.payload(slot),
            layout.max_payload(),
            checked,
            layout.arena_chunks > 0,
        )
    }?;
    match first {
        Ok(done) => Ok(done),
        // SAFETY: as above.
        Err(need) => unsafe { into_arena(map, slot, writer, value, checked, deadline, need) },
    }
}

/// A message that outgrew its slot: serialized into a run of the arena.
///
/// # Safety
/// As [`serialize_large`].
#[cold]
#[inline(never)]
unsafe fn into_arena<T: Encode>(
    map: &Mapping,
    slot: u32,
    writer: Writer,
    value: &T,
    checked: bool,
    deadline: Deadline,
    need: usize,
) -> Result<(usize, u32)> {
    let layout = map.layout();
    let chunks = layout.arena_chunks;
    if chunks_for(need) > u64::from(chunks) {
        // Larger than all the room there is: count it (writing nothing) for the error's size.
        // SAFETY: an area of 0 bytes: the writer only counts.
        let len =
            match unsafe { message::serialize_into(value, map.payload(slot), 0, false, false) } {
                Err(Error::PayloadTooLarge { len, .. }) => len,
                _ => need,
            };
        return Err(Error::PayloadTooLarge {
            len,
            max: layout.max_message(),
        });
    }
    let mut room = ArenaRoom::new(map, slot, writer, deadline);
    // At least what the message needed when it stopped (for a byte buffer, about all of it);
    // how much more is unknown: a generous run, so that up to four writers share the arena.
    let min = chunks_for(need) as u32;
    let max = min.saturating_mul(4).max(chunks / 4).min(chunks).max(min);
    let Some(run) = room.alloc(min, max) else {
        // (The caller, which knows the server's name, fills it in.)
        return Err(Error::Timeout {
            after: room.timeout,
            name: String::new(),
        });
    };
    let run = match reserve_run(map, slot, run, min) {
        Ok(run) => run,
        Err(e) => {
            drop_run(map, slot);
            return Err(e);
        }
    };
    // SAFETY: the run is recorded in our slot, backed, 64-byte aligned.
    let len = match unsafe { into_run(map, run, value, checked) } {
        Ok((len, sum)) => {
            trim(map, slot, len);
            return Ok((len, sum));
        }
        Err(Error::PayloadTooLarge { len, .. }) => len,
        Err(e) => {
            drop_run(map, slot);
            return Err(e);
        }
    };
    drop_run(map, slot);
    let max = layout.max_message();
    if len > max || chunks_for(len) > u64::from(chunks) {
        return Err(Error::PayloadTooLarge { len, max });
    }
    // The run we got was too short (others held the rest): the exact size now.
    let n = chunks_for(len) as u32;
    let Some(run) = room.alloc(n, n) else {
        // (The caller, which knows the server's name, fills it in.)
        return Err(Error::Timeout {
            after: room.timeout,
            name: String::new(),
        });
    };
    if let Err(e) = map.reserve(run) {
        drop_run(map, slot);
        return Err(e);
    }
    // SAFETY: the run is recorded in our slot, `n` chunks, backed, 64-byte aligned.
    let second = unsafe { into_run(map, run, value, checked) };
    if second.is_err() {
        drop_run(map, slot);
    }
    second
}

/// Gives run `run` (recorded in `slot`, ours) memory ([`Mapping::reserve`]) before anything is
/// written there: all of it if there is that much, else only the `min` chunks the message
/// needed when it outgrew its slot, the rest of the run going back (a message longer than
/// that then finds the run too short, and its exact size gets its own run and reservation).
/// `Io` (`ENOSPC`: a full `/dev/shm`) if not even `min` chunks have memory.
fn reserve_run(map: &Mapping, slot: u32, run: Extent, min: u32) -> Result<Extent> {
    let whole = map.reserve(run);
    if whole.is_ok() || run.count <= min {
        return whole.map(|()| run);
    }
    if arena::trim(map, slot, min) > 0 {
        map.notify_arena();
    }
    let cut = Extent {
        first: run.first,
        count: min,
    };
    map.reserve(cut).map(|()| cut)
}

/// Serializes `value` into arena run `run`, counting past its end (`PayloadTooLarge` with the
/// exact length if it does not fit).
///
/// # Safety
/// The run is recorded in a slot the caller owns, has memory behind it
/// ([`Mapping::reserve`]), and nothing borrows it.
unsafe fn into_run<T: Encode>(
    map: &Mapping,
    run: Extent,
    value: &T,
    checked: bool,
) -> Result<(usize, u32)> {
    // SAFETY: the caller's contract; a run is 64-byte aligned.
    unsafe { message::serialize_into(value, map.arena_run(run), run.bytes(), checked, false) }?
        // A writer that counts on never stops a serialization.
        .map_err(|_| Error::BadMessage("the serialization stopped early".into()))
}

/// Cuts the run `slot` records (if any) to `len` bytes, waking those who wait for room if that
/// gave chunks back.
#[cold]
fn trim(map: &Mapping, slot: u32, len: usize) {
    if arena::trim(map, slot, chunks_for(len).max(1) as u32) > 0 {
        map.notify_arena();
    }
}

/// Gives back the run record `slot` holds (a slot's, or past the slots a worker's), if any.
pub(crate) fn drop_run(map: &Mapping, slot: u32) {
    use crate::protocol::Words;
    map.drop_extent(slot);
}

/// Serializes a worker's reply for `slot` (SERVING, ours) like a client's message (payload
/// area, then a run), waiting for room as [`Deadline::Serving`] says. The request is dead once the
/// handler returned, and its run, if it had one (recorded in the slot, or in the worker's
/// record `held` where `InPlace::serve` moved it there), is the reply's to reuse
/// ([`Purpose::ReplyReusing`]): no other allocation can take that room first, so a reply no
/// longer than its request always finds room. Whatever the reply does not reuse goes back. So
/// a message is in a run exactly when it does not fit the payload area, which lets a reader of
/// a message that fits read the payload area without looking at the record. A reply that
/// cannot be placed is `PayloadTooLarge` (its status tells the caller).
///
/// # Safety
/// The worker owns `slot` (SERVING) and record `held`, and nothing borrows its payload area,
/// the run the slot records, or the run `held` records.
#[inline(always)]
pub(crate) unsafe fn serialize_reply<T: Encode>(
    map: &Mapping,
    slot: u32,
    value: &T,
    checked: bool,
    held: Option<u32>,
) -> Result<(usize, u32)> {
    if map.slot(slot).ext.load(Ordering::Relaxed) == 0 {
        // SAFETY: the caller's contract; the slot records no run.
        return unsafe { reply_into(map, slot, value, checked, Writer::worker_reusing(held)) };
    }
    // SAFETY: the caller's contract: the slot's run may be overwritten, and is only replaced
    // (under the arena lock) if the reply goes to a run.
    let out = unsafe {
        reply_into(
            map,
            slot,
            value,
            checked,
            Writer::worker_reusing(Some(slot)),
        )
    };
    if !matches!(out, Ok((len, _)) if len > map.layout().max_payload()) {
        // In the payload area (or not written): the request's run is still recorded.
        drop_run(map, slot);
    }
    out
}

/// [`serialize_reply`] by `writer`.
///
/// # Safety
/// As [`serialize_reply`]; the slot records no run, or the one `writer` reuses.
#[inline(always)]
unsafe fn reply_into<T: Encode>(
    map: &Mapping,
    slot: u32,
    value: &T,
    checked: bool,
    writer: Writer,
) -> Result<(usize, u32)> {
    // SAFETY: the caller's contract.
    unsafe { serialize_large(map, slot, writer, value, checked, Deadline::Serving(None)) }.map_err(
        |e| match e {
            Error::Timeout { .. } => Error::PayloadTooLarge {
                len: 0,
                max: map.layout().max_message(),
            },
            e => e,
        },
    )
}
