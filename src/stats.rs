//! Live statistics: counters and latency histograms kept in the mapping's header, read by the
//! server (`Server::stats`) or by any process of the same user through a read-only view
//! ([`StatsView::open`]) that writes nothing and so cannot disturb the server.
//!
//! Everything is `Relaxed`: each counter is exact on its own, but a snapshot taken while calls
//! run is not one instant (a call may be counted as served and still show its slot in use).

use crate::clock;
use crate::error::Result;
use crate::layout::{self, Header, HIST_BUCKETS};
use crate::protocol::State;
use crate::shm::Mapping;
use crate::sync::Ordering;
use std::time::Duration;

/// Records one served call in the header's histograms: `queued` and `handled` in ticks.
#[inline]
pub(crate) fn record(h: &Header, q32: u64, queued: u64, handled: u64) {
    h.queue_hist[layout::hist_bucket(clock::to_ns(queued, q32))].fetch_add(1, Ordering::Relaxed);
    h.handler_hist[layout::hist_bucket(clock::to_ns(handled, q32))].fetch_add(1, Ordering::Relaxed);
}

/// A coarse latency histogram: bucket `b` counts durations in `[2^b, 2^(b+1))` ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// The counts, by bucket.
    pub buckets: [u64; HIST_BUCKETS],
}

impl Histogram {
    /// Durations recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The range of durations bucket `b` counts (the last one is open-ended: its end is
    /// `Duration::MAX`).
    pub fn bucket_range(b: usize) -> (Duration, Duration) {
        let lo = if b == 0 { 0 } else { 1u64 << b };
        let hi = if b + 1 >= HIST_BUCKETS {
            Duration::MAX
        } else {
            Duration::from_nanos(1u64 << (b + 1))
        };
        (Duration::from_nanos(lo), hi)
    }

    /// An upper bound of the `q` quantile (`0.0..=1.0`): the end of the bucket that holds it,
    /// or `None` when nothing was recorded. Within a factor of 2 by construction.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Self::bucket_range(b).1);
            }
        }
        None
    }

    fn read(h: &[crate::sync::AtomicU64; HIST_BUCKETS]) -> Histogram {
        let mut out = Histogram::default();
        for (o, a) in out.buckets.iter_mut().zip(h) {
            *o = a.load(Ordering::Relaxed);
        }
        out
    }
}

/// What a slot in use is doing, as a snapshot saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// A client claimed it and is writing its request.
    Claimed,
    /// The request waits for a worker.
    Queued,
    /// A worker runs the handler.
    Serving,
    /// The reply waits for (or is being read by) its client.
    Replied,
    /// The client gave up; the worker frees it when the handler returns.
    Abandoned,
    /// A one-way message was taken; its handler runs.
    Accepted,
}

/// A slot in use and the process that owns its call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotUse {
    /// The slot index.
    pub slot: u32,
    /// What it is doing.
    pub state: SlotState,
    /// The process-table entry of the client process that claimed it (1..=1023), recorded by
    /// the claim itself.
    pub owner_entry: u32,
    /// That process's pid as it sees itself (in its own pid namespace), if it wrote it.
    pub owner_pid: Option<u32>,
    /// Bytes of large-message memory the slot's message holds (0 if it fits the slot).
    pub large_bytes: usize,
}

/// A snapshot of a server's statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Pid of the server process.
    pub server_pid: u32,
    /// Whether the server is running (not stopped, and its process alive).
    pub alive: bool,
    /// Bytes of the mapping.
    pub capacity: usize,
    /// Number of slots.
    pub slots: u32,
    /// Largest message a slot carries.
    pub max_payload: usize,
    /// Requests and one-way messages whose handler ran to completion.
    pub served: u64,
    /// Requests that did not validate as the server's request type.
    pub bad_messages: u64,
    /// Handler panics.
    pub handler_panics: u64,
    /// Calls their clients gave up on (timeout or cancellation) while in flight.
    pub abandoned: u64,
    /// Calls whose deadline passed.
    pub timeouts: u64,
    /// Slots the reaper took back from dead client processes.
    pub reclaimed: u64,
    /// Slots not free.
    pub slots_in_use: u32,
    /// Calls published and not yet completed: queued or being served.
    pub in_flight: u32,
    /// Handler run time, from taking a request to publishing its reply.
    pub handler_time: Histogram,
    /// Queueing time, from the start of a call (before it claimed its slot: a wait for a free
    /// slot counts) to a worker taking the request.
    pub queue_time: Histogram,
    /// Every slot in use.
    pub in_use: Vec<SlotUse>,
    /// Callers (and async helpers) announced as waiting for a free slot.
    pub free_waiters: u32,
    /// Most slots one client process takes while others wait (0: no limit).
    pub client_share: u32,
    /// Scans the server's reaper has completed.
    pub reaper_scans: u64,
    /// The CPUs (bit `c` for CPU `c` < 64) where the server's active workers last ran; a
    /// worker clears its bit while it parks. Callers nap rather than spin on the CPU of a lone
    /// active worker (DESIGN.md, section 5).
    pub worker_cpus: u64,
    /// Bytes of large-message memory (the largest message: a message may take all of it).
    pub large_memory: usize,
    /// Bytes of it that messages hold now (`in_use` says which slot's, and whose; the part
    /// not in `in_use` is `large_held_by_workers`).
    pub large_in_use: usize,
    /// Bytes of it that the server's workers hold: the requests an in-place handler reads
    /// while its reply is written (`ServerBuilder::serve_in_place`).
    pub large_held_by_workers: usize,
    /// Callers (and workers) announced as waiting for large-message memory.
    pub large_waiters: u32,
    /// The slot of the large request that has waited long for memory and goes first (other
    /// requests leave it room: DESIGN.md section 4b, "Waiting for room"), with the bytes it
    /// waits for.
    pub large_first: Option<(u32, usize)>,
}

impl Stats {
    pub(crate) fn read(map: &Mapping, alive: bool) -> Stats {
        let h = map.header();
        let lay = map.layout();
        let mut in_use = Vec::new();
        let mut in_flight = 0;
        for i in 0..lay.slot_count {
            let sh = map.slot(i);
            let s = State(sh.state.load(Ordering::Relaxed));
            let state = match s.kind() {
                State::CLAIMED => SlotState::Claimed,
                State::REQUEST => SlotState::Queued,
                State::SERVING => SlotState::Serving,
                State::REPLY => SlotState::Replied,
                State::ABANDONED | State::ORPHANED => SlotState::Abandoned,
                State::ACCEPTED => SlotState::Accepted,
                _ => continue,
            };
            if matches!(state, SlotState::Queued | SlotState::Serving) {
                in_flight += 1;
            }
            let owner_entry = s.owner();
            let owner_pid = Some(map.proc_entry(owner_entry).pid.load(Ordering::Relaxed))
                .filter(|&pid| owner_entry != 0 && pid != 0);
            let large_bytes = crate::arena::Extent::unpack(sh.ext.load(Ordering::Relaxed))
                .filter(|run| run.within(lay.arena_chunks))
                .map_or(0, |run| run.bytes());
            in_use.push(SlotUse {
                slot: i,
                state,
                owner_entry,
                owner_pid,
                large_bytes,
            });
        }
        let large_held_by_workers = (0..crate::layout::MAX_WORKERS as u32)
            .filter_map(|w| {
                crate::arena::Extent::unpack(map.worker_record(w).load(Ordering::Relaxed))
            })
            .filter(|run| run.within(lay.arena_chunks))
            .map(|run| run.bytes())
            .fold(0usize, usize::saturating_add)
            .min(lay.arena_bytes());
        // Saturating: forged records may overlap, and their sum need not fit a 32-bit usize.
        let large_in_use = in_use
            .iter()
            .map(|u| u.large_bytes)
            .fold(large_held_by_workers, usize::saturating_add)
            .min(lay.arena_bytes());
        Stats {
            server_pid: h.server_pid.load(Ordering::Relaxed),
            alive,
            capacity: lay.capacity,
            slots: lay.slot_count,
            max_payload: lay.max_payload(),
            served: h.served.load(Ordering::Relaxed),
            bad_messages: h.bad_messages.load(Ordering::Relaxed),
            handler_panics: h.panics.load(Ordering::Relaxed),
            abandoned: h.abandoned.load(Ordering::Relaxed),
            timeouts: h.timeouts.load(Ordering::Relaxed),
            reclaimed: h.reclaimed.load(Ordering::Relaxed),
            slots_in_use: in_use.len() as u32,
            in_flight,
            handler_time: Histogram::read(&h.handler_hist),
            queue_time: Histogram::read(&h.queue_hist),
            in_use,
            free_waiters: h.free_waiters.load(Ordering::Relaxed),
            client_share: h.client_share.load(Ordering::Relaxed),
            reaper_scans: h.reaper_scans.load(Ordering::Relaxed),
            worker_cpus: h.worker_cpus.load(Ordering::Relaxed),
            large_memory: lay.arena_bytes(),
            large_in_use,
            large_held_by_workers,
            large_waiters: h.arena_waiters.load(Ordering::Relaxed),
            large_first: match h.arena_want.load(Ordering::Relaxed) {
                0 => None,
                v => Some((
                    (v >> 16).wrapping_sub(1),
                    (v & 0xffff) as usize * crate::arena::CHUNK,
                )),
            },
        }
    }
}

/// A read-only view of a server's statistics, opened by name from any process of the same
/// user. It maps the mapping read-only and writes nothing: the server cannot tell it is there.
/// It also opens the mapping of a server that died (its statistics as they were, `alive:
/// false`).
///
/// ```
/// # fn main() -> Result<(), shmrpc::Error> {
/// # let name = format!("doc-statsview-{}", std::process::id());
/// let server = shmrpc::Server::builder(&name).serve(|req: shmrpc::Request<'_, u8>| *req)?;
/// shmrpc::Client::<u8>::connect(&name)?.request(&7)?;
///
/// // In any process of the same user:
/// let view = shmrpc::StatsView::open(&name)?;
/// assert!(view.stats().alive);
/// // A worker counts a call just after its reply is out (off the caller's path), so the
/// // count can trail the reply the caller already has by a moment.
/// let t0 = std::time::Instant::now();
/// let stats = loop {
///     let stats = view.stats();
///     if stats.served == 1 || t0.elapsed() > std::time::Duration::from_secs(10) {
///         break stats;
///     }
///     std::thread::yield_now();
/// };
/// assert_eq!(stats.served, 1);
/// println!("handler time p50 < {:?}", stats.handler_time.quantile(0.5));
/// # drop(server); Ok(()) }
/// ```
#[derive(Debug)]
pub struct StatsView {
    map: Mapping,
}

impl StatsView {
    /// Opens the statistics of server `name`: `NotFound` if no mapping has that name,
    /// `PermissionDenied`-kind `Io` if it belongs to someone else.
    pub fn open(name: &str) -> Result<StatsView> {
        crate::shm::validate_name(name)?;
        Ok(StatsView {
            map: Mapping::open_view(name)?,
        })
    }

    /// A snapshot of the statistics now.
    pub fn stats(&self) -> Stats {
        let alive = self.map.server_running();
        Stats::read(&self.map, alive)
    }
}
