//! The byte layout of the shared mapping. DESIGN.md quotes this file; keep the two in step.
//!
//! Everything here is `#[repr(C)]`, fixed-width and little-endian (shmrpc only builds for
//! little-endian targets), with explicit padding instead of `CachePadded` so that a 32-bit and
//! a 64-bit process compute the same offsets. The compile-time assertions at the bottom pin
//! every offset that DESIGN.md names.

use crate::error::Error;
use crate::sync::{AtomicU32, AtomicU64};

/// `b"SHMRPC\0\x01"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMRPC\0\x01");
/// Bumped whenever any offset or meaning in this file changes.
pub const LAYOUT_VERSION: u32 = 7;
/// Bytes reserved for [`Header`] at the start of the mapping.
pub const HEADER_SIZE: usize = 1024;
/// Process entries in the table that follows the header: entry `k` (1..=1023) belongs to the
/// client process that holds the liveness lock on byte `k` of the mapping's file; entry 0 is
/// the server's (byte 0) and is never an owner.
pub const PROC_ENTRIES: usize = 1024;
/// Bytes of one [`ProcEntry`].
pub const PROC_ENTRY_SIZE: usize = 16;
/// Most worker threads a server runs.
pub const MAX_WORKERS: usize = 256;
/// Offset of the worker records: one arena record (`arena.rs`, an `Extent::pack` word) per
/// worker, in which a worker keeps the run of the request it is reading while it writes the
/// reply into a run of its own (`ServerBuilder::serve_in_place`). Written only by the server.
pub const WORKERS_OFFSET: usize = HEADER_SIZE;
/// Offset of the process table: after the worker records.
pub const PROCS_OFFSET: usize = WORKERS_OFFSET + MAX_WORKERS * 4;
/// Offset of slot 0: after the header and the process table.
pub const SLOTS_OFFSET: usize = PROCS_OFFSET + PROC_ENTRIES * PROC_ENTRY_SIZE;
/// Default size of the large-message arena: 256 MiB of the mapping's file after the slots
/// (128 MiB on 32-bit targets, whose address space is short), which cost no memory until a
/// large message uses them (the file is sparse). A message can take all of it; a 64 MiB
/// request and its 64 MiB reply fit side by side.
#[cfg(target_pointer_width = "64")]
pub const DEFAULT_ARENA: usize = 256 << 20;
/// Default size of the large-message arena (see the 64-bit definition).
#[cfg(not(target_pointer_width = "64"))]
pub const DEFAULT_ARENA: usize = 128 << 20;
/// Bytes of [`SlotHeader`] at the start of every slot; the payload follows.
pub const SLOT_HEADER_SIZE: usize = 64;
/// Slots are a multiple of this many bytes, so every payload starts 64-byte aligned.
pub const SLOT_ALIGN: usize = 64;
/// Most slots a mapping can have: one bit each in the 16-word ready bitmap.
pub const MAX_SLOTS: u32 = 1024;
/// Words in the ready bitmap.
pub const READY_WORDS: usize = (MAX_SLOTS as usize) / 64;
/// Smallest accepted capacity (bytes of the header, tables and slots).
pub const MIN_CAPACITY: usize = 64 * 1024;
/// Largest accepted capacity; lengths in the mapping are `u32`.
pub const MAX_CAPACITY: usize = 256 * 1024 * 1024;
/// Default capacity: 1 MiB.
pub const DEFAULT_CAPACITY: usize = 1 << 20;
/// Default slot count: 32 slots of just under 32 KiB at the default capacity.
pub const DEFAULT_SLOTS: u32 = 32;
/// A slot must be able to carry at least this many payload bytes.
pub const MIN_PAYLOAD: usize = 256;

/// Server lifecycle values of [`Header::server_state`].
pub mod server_state {
    /// The mapping exists but the server has not finished initializing it.
    pub const INIT: u32 = 0;
    /// Workers are serving.
    pub const RUNNING: u32 = 1;
    /// The server stopped (cleanly); callers get `ServerGone`.
    pub const STOPPED: u32 = 2;
}

/// Slot kinds in [`SlotHeader::kind`], written by the client while it owns the slot.
pub mod kind {
    /// A request that expects a reply.
    pub const REQUEST: u32 = 0;
    /// A one-way message.
    pub const ONEWAY: u32 = 1;
    /// A protocol-level ping: the worker replies at once with an empty `OK`, without running
    /// the handler (`shmrpc ping`, `Client::ping`).
    pub const PING: u32 = 2;
    /// Mask of the kind proper; the bits above are flags.
    pub const MASK: u32 = 0xff;
    /// Flag: the client is untrusting; `req_sum` holds the request's checksum, and the server
    /// must put the reply's checksum in `reply_sum`.
    pub const CHECKED: u32 = 1 << 8;
    /// Flag: an async caller waits for this call through its process's helper thread, which
    /// sleeps on [`Header::async_bell`](super::Header::async_bell): the worker rings the bell
    /// after it completes the call.
    pub const ASYNC: u32 = 1 << 9;
}

/// Buckets of the latency histograms: bucket `b` counts durations in `[2^b, 2^(b+1))`
/// nanoseconds (bucket 0 also counts 0 ns); the last bucket counts everything from 2^31 ns
/// (2.1 s) up.
pub const HIST_BUCKETS: usize = 32;

/// The histogram bucket of a duration of `ns` nanoseconds.
#[inline]
pub fn hist_bucket(ns: u64) -> usize {
    ((63 - (ns | 1).leading_zeros()) as usize).min(HIST_BUCKETS - 1)
}

/// The integrity checksum of an archive in untrusting mode: a 64-bit multiply-mix over 8-byte
/// words, folded to 32 bits. It turns a peer's stray write into a `BadMessage` instead of a
/// silently altered message; it is not a defence against a peer that forges on purpose.
pub fn checksum(bytes: &[u8]) -> u32 {
    let mut c = Checksum::new();
    c.update(bytes);
    c.finish()
}

/// [`checksum`] computed over a stream of writes, so that a writer can sum the bytes it
/// writes (its own, private copy) rather than re-read them from the mapping, where a peer
/// could have changed them in between.
#[derive(Debug, Clone)]
pub struct Checksum {
    h: u64,
    carry: [u8; 8],
    carried: usize,
    total: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;

    /// An empty sum.
    pub fn new() -> Checksum {
        Checksum {
            h: Self::K,
            carry: [0; 8],
            carried: 0,
            total: 0,
        }
    }

    #[inline]
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(Self::K).rotate_left(29);
    }

    /// Adds `bytes` to the sum.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.carried > 0 {
            let take = (8 - self.carried).min(bytes.len());
            self.carry[self.carried..self.carried + take].copy_from_slice(&bytes[..take]);
            self.carried += take;
            bytes = &bytes[take..];
            if self.carried < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.carry));
            self.carried = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    /// The 32-bit sum of everything added.
    pub fn finish(&self) -> u32 {
        let mut tail = [0u8; 8];
        tail[..self.carried].copy_from_slice(&self.carry[..self.carried]);
        let mut h = (self.h ^ u64::from_le_bytes(tail)).wrapping_mul(Self::K);
        h = (h ^ self.total).wrapping_mul(Self::K);
        (h ^ (h >> 32)) as u32
    }
}

/// Reply status in [`SlotHeader::status`], written by the server before it publishes.
pub mod status {
    /// The payload holds the reply archive (or nothing, for an accepted one-way message).
    pub const OK: u32 = 0;
    /// The request did not validate as the server's request type.
    pub const BAD_MESSAGE: u32 = 1;
    /// The handler panicked; the server goes on serving.
    pub const HANDLER_PANICKED: u32 = 2;
    /// The reply did not fit the slot; `reply_len` holds its size.
    pub const REPLY_TOO_LARGE: u32 = 3;
    /// The message kind does not match the server (a request to a one-way server).
    pub const WRONG_KIND: u32 = 4;
    /// The call's type fingerprints do not match the server's request or reply type; the
    /// payload holds the server's types in words (UTF-8, `reply_len` bytes).
    pub const TYPE_MISMATCH: u32 = 5;
    /// The server could not get memory for a reply too large for its slot (the file system
    /// behind the mapping, `/dev/shm` on Linux, is full).
    pub const NO_MEMORY: u32 = 6;
}

/// Where a parked-on word's park counter is: this many bytes after the word (the four words
/// threads park on, `Header::{server_seq, free_seq, async_bell}` and `SlotHeader::state`, each
/// have one). Platforms that park in a kernel object keyed by the word count their sleepers
/// there (`sys/windows.rs`); the others leave it zero.
pub const PARKED_DELTA: usize = 28;

/// The header at offset 0 of the mapping. Written once by the server before it publishes
/// `magic`; after that only the atomics change.
#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// [`MAGIC`], stored last (Release) when the header is complete.
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`].
    pub version: AtomicU32,
    /// [`HEADER_SIZE`].
    pub header_size: AtomicU32,
    /// Bytes of the mapping before the arena: header, tables and slots (the arena, of
    /// `arena_chunks` chunks, follows; the file is `capacity + arena bytes` long).
    pub capacity: AtomicU64,
    /// Number of slots.
    pub slot_count: AtomicU32,
    /// Bytes per slot, header included (a multiple of [`SLOT_ALIGN`]).
    pub slot_size: AtomicU32,
    /// Largest archive a slot carries: `slot_size - SLOT_HEADER_SIZE`.
    pub max_payload: AtomicU32,
    /// Pid of the server process, as the server sees it (shown by `stat`; liveness is the
    /// lock on byte 0 of the file, not this number, which means nothing in another pid
    /// namespace).
    pub server_pid: AtomicU32,
    /// Unused (layout version 2 kept the server's start time here); zero.
    pub reserved0: AtomicU64,
    /// Bumped at every server start under this name.
    pub epoch: AtomicU64,
    _pad0: [u8; 8],
    // ---- line 1 (64): the server's wake words, written by clients and workers.
    /// One of [`server_state`].
    pub server_state: AtomicU32,
    /// Futex word the workers park on; bumped by a client that wakes them.
    pub server_seq: AtomicU32,
    /// Workers parked (or about to park) on `server_seq`.
    pub server_sleepers: AtomicU32,
    _pad1: [u8; 20],
    /// [`PARKED_DELTA`] bytes after `server_seq`: the park counter of `server_seq` (see
    /// [`SlotHeader::parked`]).
    pub server_seq_parked: AtomicU32,
    _pad1b: [u8; 28],
    // ---- line 2 (128): free-slot waiters.
    /// Futex word of callers waiting for a free slot; bumped by whoever frees one.
    pub free_seq: AtomicU32,
    /// Callers parked (or about to park) on `free_seq`.
    pub free_waiters: AtomicU32,
    /// The async doorbell: a counter in steps of 2 with bit 0 set by a sleeping async helper
    /// (`protocol::bell_arm`); rung (`protocol::ring`) after an async call completes, after a
    /// slot is freed while someone waits for one, and at shutdown.
    pub async_bell: AtomicU32,
    /// Of `free_waiters`, the callers that have parked at least once (and async helpers with
    /// futures queued): while any is counted, a caller that has not queued takes no free slot
    /// (`protocol::claim_if`), so freed slots go to those already waiting.
    pub queued_waiters: AtomicU32,
    _pad2: [u8; 12],
    /// The park counter of `free_seq` ([`PARKED_DELTA`] bytes after it).
    pub free_seq_parked: AtomicU32,
    _pad2b: [u8; 4],
    /// The park counter of `async_bell` ([`PARKED_DELTA`] bytes after it).
    pub async_bell_parked: AtomicU32,
    _pad2c: [u8; 24],
    // ---- lines 3-4 (192): the ready bitmap, one bit per slot holding a published request.
    /// Bit `i % 64` of word `i / 64` is set by the client that publishes slot `i`.
    pub ready: [AtomicU64; READY_WORDS],
    // ---- line 5 (320): counters, relaxed.
    /// Requests and one-way messages the handlers ran to completion.
    pub served: AtomicU64,
    /// Requests that did not validate.
    pub bad_messages: AtomicU64,
    /// Handler panics.
    pub panics: AtomicU64,
    /// Calls the clients abandoned (timeout or cancellation).
    pub abandoned: AtomicU64,
    /// Slots the reaper took back from dead client processes.
    pub reclaimed: AtomicU64,
    /// Calls whose deadline passed (counted by the client that gave up).
    pub timeouts: AtomicU64,
    /// Fixed-point nanoseconds per tick of the latency clock, times 2^32 (`clock.rs`),
    /// measured by the server at start; clients need it only to read the histograms.
    pub ns_per_tick_q32: AtomicU64,
    /// Scans the server's reaper completed (relaxed; lets tests and tools see that it ran).
    pub reaper_scans: AtomicU64,
    // ---- lines 6-9 (384): handler time histogram; lines 10-13 (640): queueing time.
    /// Handler run time (from taking the request to publishing the reply), by [`hist_bucket`].
    pub handler_hist: [AtomicU64; HIST_BUCKETS],
    /// Queueing time (from the start of the call, before it claimed its slot, to a worker
    /// taking the request).
    pub queue_hist: [AtomicU64; HIST_BUCKETS],
    // ---- line 14 (896): where the workers run.
    /// Bit `c` set: a worker last ran on CPU `c` (CPUs 0..64; a hint, written by a worker only
    /// when it finds itself on another CPU).
    pub worker_cpus: AtomicU64,
    /// Most slots one client process takes while callers of other processes wait for one
    /// (`ServerBuilder::slots_per_client`; 0: no limit). A cooperative rule, kept by clients.
    pub client_share: AtomicU32,
    /// Chunks of the large-message arena (`arena.rs`; 0: none), which starts right after the
    /// slots (`Layout::arena_offset`).
    pub arena_chunks: AtomicU32,
    /// The arena lock: 0, or `arena::LOCKED` | the holder's process entry (0: the server).
    pub arena_lock: AtomicU32,
    /// The large request that waits for room with priority: (its slot + 1) << 16 | the chunks
    /// it needs, or 0 (`arena::want`).
    pub arena_want: AtomicU32,
    /// Futex word of callers waiting for arena room; bumped by whoever frees a run while
    /// someone waits.
    pub arena_seq: AtomicU32,
    /// Callers parked (or about to park) on `arena_seq`.
    pub arena_waiters: AtomicU32,
    /// When the request named in `arena_want` last said it still waits (`clock::stamp`):
    /// a word not renewed for `arena::WANT_FRESH` is ignored (its process paused or hung).
    pub arena_want_at: AtomicU32,
    _pad5: [u8; 16],
    /// The park counter of `arena_seq` ([`PARKED_DELTA`] bytes after it).
    pub arena_seq_parked: AtomicU32,
    _pad6: [u8; HEADER_SIZE - 952],
}

/// One entry of the process table at [`PROCS_OFFSET`]. Written only by the process that holds
/// the entry's liveness lock (or, once that process is dead, by whoever then holds the lock).
#[repr(C)]
#[derive(Debug)]
pub struct ProcEntry {
    /// The holder's pid as it sees itself (informational: `stat` shows it; it may mean
    /// nothing in the server's pid namespace).
    pub pid: AtomicU32,
    /// The holder's share of [`Header::free_waiters`] (`protocol::announce_free_wait`).
    pub free_waits: AtomicU32,
    /// The holder's share of [`Header::arena_waiters`] (`Mapping::wait_for_arena`).
    pub arena_waits: AtomicU32,
    /// The holder's share of [`Header::queued_waiters`] (`protocol::queue_free_wait`).
    pub queued_waits: AtomicU32,
}

/// The header of every slot; the payload follows at [`SLOT_HEADER_SIZE`].
///
/// Apart from `state`, each field is written only by the side that owns the slot (see the
/// state machine in `protocol.rs`); they are atomics, accessed `Relaxed`, so that a peer that
/// breaks the protocol causes wrong values, never a data race in this process.
#[repr(C)]
#[derive(Debug)]
pub struct SlotHeader {
    /// The slot state word (`protocol::State`): kind, waiter bit and generation.
    pub state: AtomicU32,
    /// One of [`kind`].
    pub kind: AtomicU32,
    /// Length of the request archive.
    pub req_len: AtomicU32,
    /// Length of the reply archive.
    pub reply_len: AtomicU32,
    /// One of [`status`].
    pub status: AtomicU32,
    /// Type fingerprint (`message::fingerprint`) of the request the client sent; 0 for a ping.
    pub req_type: AtomicU32,
    /// Type fingerprint of the reply the client expects; 0 for a one-way message or a ping.
    pub reply_type: AtomicU32,
    /// The park counter of `state`, [`PARKED_DELTA`] bytes after it: on platforms whose
    /// kernel cannot wait on an address across processes (Windows: `sys/windows.rs`), the
    /// threads sleeping on `state` in a kernel semaphore or about to, so that a waker posts
    /// the semaphore only for sleepers that are there. Unused (zero) on Linux and macOS.
    pub parked: AtomicU32,
    /// The call's UUID, big-endian bytes as two little-endian `u64` halves (high, low).
    pub call_id: [AtomicU64; 2],
    /// The run of arena chunks that holds this slot's message when it did not fit the payload
    /// area (`arena::Extent::pack`: first chunk << 16 | count), or 0. It belongs to whoever
    /// owns the slot and goes back before the slot goes FREE.
    pub ext: AtomicU32,
    /// Checksum of the request archive, when `kind` has [`kind::CHECKED`].
    pub req_sum: AtomicU32,
    /// Checksum of the reply archive, when the request had [`kind::CHECKED`].
    pub reply_sum: AtomicU32,
    /// The latency clock (`clock.rs`) when the call began (before the client claimed this
    /// slot), in units of 64 ticks, truncated to 32 bits: the worker derives the queueing time
    /// from it. (The field keeps its name from layout version 1, where it was stamped at
    /// publication.)
    pub published: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(offset_of!(Header, capacity) == 16);
    assert!(offset_of!(Header, slot_count) == 24);
    assert!(offset_of!(Header, slot_size) == 28);
    assert!(offset_of!(Header, max_payload) == 32);
    assert!(offset_of!(Header, server_pid) == 36);
    assert!(offset_of!(Header, reserved0) == 40);
    assert!(offset_of!(Header, epoch) == 48);
    assert!(offset_of!(Header, server_state) == 64);
    assert!(offset_of!(Header, server_seq) == 68);
    assert!(offset_of!(Header, server_sleepers) == 72);
    assert!(offset_of!(Header, free_seq) == 128);
    assert!(offset_of!(Header, free_waiters) == 132);
    assert!(offset_of!(Header, async_bell) == 136);
    assert!(offset_of!(Header, queued_waiters) == 140);
    assert!(offset_of!(Header, ready) == 192);
    // Every word a thread parks on has its park counter PARKED_DELTA bytes further.
    assert!(offset_of!(Header, server_seq_parked) == offset_of!(Header, server_seq) + PARKED_DELTA);
    assert!(offset_of!(Header, free_seq_parked) == offset_of!(Header, free_seq) + PARKED_DELTA);
    assert!(offset_of!(Header, async_bell_parked) == offset_of!(Header, async_bell) + PARKED_DELTA);
    assert!(offset_of!(SlotHeader, parked) == offset_of!(SlotHeader, state) + PARKED_DELTA);
    assert!(offset_of!(Header, arena_seq_parked) == offset_of!(Header, arena_seq) + PARKED_DELTA);
    assert!(offset_of!(Header, arena_chunks) == 908);
    assert!(offset_of!(Header, arena_lock) == 912);
    assert!(offset_of!(Header, arena_seq) == 920);
    assert!(offset_of!(Header, arena_waiters) == 924);
    assert!(offset_of!(SlotHeader, ext) == 48);
    assert!(PROCS_OFFSET == 2048);
    assert!(SLOTS_OFFSET == 18432);
    assert!(offset_of!(Header, served) == 320);
    assert!(offset_of!(Header, abandoned) == 344);
    assert!(offset_of!(Header, reclaimed) == 352);
    assert!(offset_of!(Header, timeouts) == 360);
    assert!(offset_of!(Header, ns_per_tick_q32) == 368);
    assert!(offset_of!(Header, reaper_scans) == 376);
    assert!(offset_of!(Header, handler_hist) == 384);
    assert!(offset_of!(Header, queue_hist) == 640);
    assert!(offset_of!(Header, worker_cpus) == 896);
    assert!(offset_of!(Header, client_share) == 904);
    assert!(size_of::<SlotHeader>() == SLOT_HEADER_SIZE);
    assert!(offset_of!(SlotHeader, req_type) == 20);
    assert!(offset_of!(SlotHeader, reply_type) == 24);
    assert!(offset_of!(SlotHeader, call_id) == 32);
    assert!(offset_of!(SlotHeader, req_sum) == 52);
    assert!(offset_of!(SlotHeader, reply_sum) == 56);
    assert!(offset_of!(SlotHeader, published) == 60);
    assert!(size_of::<ProcEntry>() == PROC_ENTRY_SIZE);
    assert!(SLOTS_OFFSET.is_multiple_of(SLOT_ALIGN));
    assert!(PROC_ENTRIES as u32 == crate::protocol::State::MAX_OWNER + 1);
    assert!(cfg!(target_endian = "little"));
};

/// The geometry of one mapping, computed from the configuration by the server and checked
/// against the file by clients. Every offset the code uses comes from here, never from the
/// mapping itself after it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of the mapping before the arena: header, tables and slots.
    pub capacity: usize,
    /// Number of slots.
    pub slot_count: u32,
    /// Bytes per slot, header included.
    pub slot_size: usize,
    /// Chunks of the large-message arena that follows the slots (0: none).
    pub arena_chunks: u32,
}

impl Layout {
    /// The geometry for `capacity` bytes split into `slots` slots, or `InvalidConfig`.
    pub fn new(capacity: usize, slots: u32) -> Result<Layout, Error> {
        if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) || !capacity.is_multiple_of(4096) {
            return Err(Error::InvalidConfig(format!(
                "capacity {capacity} must be a multiple of 4096 in {MIN_CAPACITY}..={MAX_CAPACITY} bytes"
            )));
        }
        if !(1..=MAX_SLOTS).contains(&slots) {
            return Err(Error::InvalidConfig(format!(
                "slot count {slots} must be in 1..={MAX_SLOTS}"
            )));
        }
        let slot_size = ((capacity - SLOTS_OFFSET) / slots as usize) & !(SLOT_ALIGN - 1);
        if slot_size < SLOT_HEADER_SIZE + MIN_PAYLOAD {
            return Err(Error::InvalidConfig(format!(
                "{slots} slots in {capacity} bytes leave {slot_size} bytes per slot; \
                 each needs at least {}",
                SLOT_HEADER_SIZE + MIN_PAYLOAD
            )));
        }
        Ok(Layout {
            capacity,
            slot_count: slots,
            slot_size,
            arena_chunks: 0,
        })
    }

    /// This geometry with a large-message arena of `bytes` (rounded up to whole chunks; 0 for
    /// none), or `InvalidConfig` past `arena::MAX_CHUNKS` chunks.
    pub fn with_arena(self, bytes: usize) -> Result<Layout, Error> {
        let chunks = crate::arena::chunks_for(bytes);
        if chunks > u64::from(crate::arena::MAX_CHUNKS) {
            return Err(Error::InvalidConfig(format!(
                "large-message memory {bytes} must be at most {} bytes",
                crate::arena::MAX_CHUNKS as usize * crate::arena::CHUNK
            )));
        }
        let layout = Layout {
            arena_chunks: chunks as u32,
            ..self
        };
        if u64::try_from(layout.file_len()).is_err() || layout.file_len() > isize::MAX as usize {
            return Err(Error::InvalidConfig(
                "the mapping would not fit this process's address space".into(),
            ));
        }
        Ok(layout)
    }

    /// Offset of the arena: right after the slots (the slots' region ends at `capacity`, a
    /// multiple of 4096).
    pub fn arena_offset(&self) -> usize {
        self.capacity
    }

    /// Bytes of the arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena_chunks as usize * crate::arena::CHUNK
    }

    /// Bytes of the whole mapping's file: the slots' region and the arena.
    pub fn file_len(&self) -> usize {
        self.capacity.saturating_add(self.arena_bytes())
    }

    /// The largest message: a slot's payload, or the whole arena if that is larger.
    pub fn max_message(&self) -> usize {
        self.max_payload().max(self.arena_bytes())
    }

    /// Largest message (archive bytes) one slot carries.
    pub fn max_payload(&self) -> usize {
        self.slot_size - SLOT_HEADER_SIZE
    }

    /// Byte offset of slot `i` from the start of the mapping.
    pub fn slot_offset(&self, i: u32) -> usize {
        SLOTS_OFFSET + i as usize * self.slot_size
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The streaming sum a writer computes equals the one-shot sum the reader computes, for
    /// every way of splitting the bytes into writes. Fails if a carry across writes is lost.
    #[test]
    fn streamed_checksum_equals_one_shot_checksum() {
        let data: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        for len in [0, 1, 7, 8, 9, 63, 200] {
            let whole = checksum(&data[..len]);
            for split in 0..=len {
                for split2 in split..=len {
                    let mut c = Checksum::new();
                    c.update(&data[..split]);
                    c.update(&data[split..split2]);
                    c.update(&data[split2..len]);
                    assert_eq!(c.finish(), whole, "len {len} split {split}/{split2}");
                }
            }
        }
        assert_ne!(checksum(b"abc"), checksum(b"abd"));
        assert_ne!(checksum(&[0; 8]), checksum(&[0; 16]));
    }
}
