//! Dead-client detection: the server's reaper thread takes back the slots of client processes
//! that died (SIGKILL, crash) in the middle of a call, and the free-slot waits they announced.
//!
//! Every claimed slot names its owner in the state word itself (`protocol::State::owner`): the
//! entry of the process table whose byte lock the owner's open file description holds
//! (`shm::Mapping::owner_liveness`). The kernel drops that lock when the process ends, however
//! it ends, and only then can the reaper take it: holding it, the reaper knows the owner is
//! dead and that no new process can take the entry while it cleans up. A live owner (running,
//! stopped, paused for any time) keeps its lock and so its slots; an owner whose liveness
//! cannot be read (a failing system call) is treated as alive. There is no timer rule.

use crate::arena;
use crate::layout::PROC_ENTRIES;
use crate::protocol::{self, Liveness, Reaped as SlotReaped, State};
use crate::shm::{Futex, Mapping};
use crate::sync::Ordering;
use std::time::Duration;

/// How often the reaper scans the slots.
pub(crate) const SCAN_EVERY: Duration = Duration::from_millis(100);

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Client-owned slots (CLAIMED, REQUEST, REPLY) freed.
    pub freed: u32,
    /// In-flight calls (SERVING) abandoned on behalf of their dead client.
    pub abandoned: u32,
    /// Free-slot waits that dead processes had announced, taken back.
    pub waits: u32,
    /// Arena locks broken (their holder died holding them).
    pub locks: u32,
}

/// The reaper's memory of one scan: what it learnt of each process entry (asked at most once
/// per scan), kept between scans so that a scan allocates nothing.
#[derive(Debug)]
pub(crate) struct Reaper {
    verdict: Vec<Option<Liveness>>,
    /// Slots each entry holds (counted while others wait), and whether it was reported over
    /// its share already.
    held: Vec<u32>,
    reported: Vec<bool>,
}

impl Reaper {
    pub(crate) fn new() -> Reaper {
        Reaper {
            verdict: vec![None; PROC_ENTRIES],
            held: vec![0; PROC_ENTRIES],
            reported: vec![false; PROC_ENTRIES],
        }
    }

    /// While callers wait for a slot, warns (once per episode) about every client process
    /// that holds more than its share (`Header::client_share`): a process leaking replies, or
    /// stuck in as many threads, starves the others.
    fn report_hogs(&mut self, map: &Mapping) {
        let h = map.header();
        let share = h.client_share.load(Ordering::Relaxed);
        let waiting = h.free_waiters.load(Ordering::Relaxed);
        self.held.iter_mut().for_each(|n| *n = 0);
        if share > 0 && waiting > 0 {
            for i in 0..map.layout().slot_count {
                let s = State(map.slot(i).state.load(Ordering::Relaxed));
                if s.held_by_owner() {
                    self.held[s.owner() as usize] += 1;
                }
            }
        }
        for k in 1..PROC_ENTRIES {
            let over = self.held[k] > share && waiting > 0 && share > 0;
            if over && !self.reported[k] {
                tracing::warn!(
                    entry = k,
                    pid = map.proc_entry(k as u32).pid.load(Ordering::Relaxed),
                    held = self.held[k],
                    share,
                    waiting,
                    "a client process holds more slots than its share while others wait"
                );
            }
            self.reported[k] = over;
        }
    }

    /// Scans every slot and every entry with announced waits once, taking back what dead
    /// processes hold. Entries found dead are locked by this mapping during the scan and let
    /// go at its end.
    pub(crate) fn scan(&mut self, map: &Mapping) -> Reaped {
        let mut out = Reaped::default();
        let verdict = &mut self.verdict;
        verdict.iter_mut().for_each(|v| *v = None);
        // The holder of the arena lock is asked about, dead or alive, even without slots.
        let held = map.header().arena_lock.load(Ordering::Acquire);
        let holder = held & !arena::LOCKED;
        if held & arena::LOCKED != 0 && holder != 0 && (holder as usize) < PROC_ENTRIES {
            verdict[holder as usize] = Some(map.owner_liveness(holder));
        }
        for i in 0..map.layout().slot_count {
            let mut liveness =
                |k: u32| *verdict[k as usize].get_or_insert_with(|| map.owner_liveness(k));
            match protocol::reap(map, &Futex, i, &mut liveness) {
                SlotReaped::Freed => out.freed += 1,
                SlotReaped::Abandoned => out.abandoned += 1,
                SlotReaped::Nothing => {}
            }
        }
        for k in 1..PROC_ENTRIES as u32 {
            let v = &mut verdict[k as usize];
            let entry = map.proc_entry(k);
            if v.is_none()
                && (entry.free_waits.load(Ordering::Relaxed) > 0
                    || entry.arena_waits.load(Ordering::Relaxed) > 0)
            {
                *v = Some(map.owner_liveness(k));
            }
            if *v == Some(Liveness::Dead) {
                out.waits = out.waits.saturating_add(protocol::heal_free_waits(map, k));
                out.waits = out.waits.saturating_add(map.heal_arena_waits(k));
                // An arena lock it died holding can go (what it recorded stays recorded until
                // its slots are reaped, above).
                if arena::break_lock(map, k) {
                    out.locks = out.locks.saturating_add(1);
                }
                map.let_go(k);
            }
        }
        // A priority for arena room whose request is no longer being written (its process
        // died, or it did not let go) goes.
        let slots = map.layout().slot_count;
        arena::clear_stale_want(map, |s| {
            s < slots && State(map.slot(s).state.load(Ordering::Relaxed)).kind() == State::CLAIMED
        });
        self.report_hogs(map);
        map.header().reaper_scans.fetch_add(1, Ordering::Relaxed);
        out
    }
}
