//! Dead-client detection: the server's reaper thread takes back the slots of client processes
//! that died (SIGKILL, crash) in the middle of a call.
//!
//! A slot's owner is known when `owner_gen` equals the generation of its state word with
//! `OWNER_VALID` set: the client writes its pid and start time right after it claims the slot,
//! then `owner_gen` (Release). Zeroed memory never matches, a previous owner's value matches
//! only the previous generation.
//! The pid with the start time identifies the process even if the pid is recycled. A slot held
//! by a known owner that no longer runs is reclaimed at the next scan; a slot whose owner never
//! got to write its identity (killed between the claim and those stores, a window of a few
//! instructions) is reclaimed once it has sat unchanged for [`UNKNOWN_OWNER_GRACE`].

use crate::layout::{SlotHeader, OWNER_VALID};
use crate::protocol::{self, State};
use crate::shm::{process_alive, Futex, Mapping};
use crate::sync::Ordering;
use std::time::{Duration, Instant};

/// How often the reaper scans the slots.
pub(crate) const SCAN_EVERY: Duration = Duration::from_millis(100);

/// How long a slot with no recorded owner may stay unchanged before it is reclaimed. A live
/// client holds that state for nanoseconds; only one killed in that window leaves it.
pub(crate) const UNKNOWN_OWNER_GRACE: Duration = Duration::from_millis(600);

/// What one scan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reaped {
    /// Client-owned slots (CLAIMED, REPLY) freed.
    pub freed: u32,
    /// In-flight calls (REQUEST, SERVING) abandoned on behalf of their dead client.
    pub abandoned: u32,
}

/// The reaper's memory between scans: for each slot, the state word it saw last and since when.
#[derive(Debug)]
pub(crate) struct Reaper {
    seen: Vec<Option<(u32, Instant)>>,
}

impl Reaper {
    pub(crate) fn new(slots: u32) -> Reaper {
        Reaper {
            seen: vec![None; slots as usize],
        }
    }

    /// Scans every slot once, reclaiming those whose owner is dead.
    pub(crate) fn scan(&mut self, map: &Mapping, now: Instant) -> Reaped {
        let mut out = Reaped::default();
        for (i, seen) in (0..map.layout().slot_count).zip(self.seen.iter_mut()) {
            let sh = map.slot(i);
            let s = State(sh.state.load(Ordering::Acquire));
            if !matches!(
                s.kind(),
                State::CLAIMED | State::REQUEST | State::SERVING | State::REPLY
            ) {
                *seen = None;
                continue;
            }
            let key = s.0 & !State::WAITER;
            let since = match *seen {
                Some((k, t)) if k == key => t,
                _ => {
                    *seen = Some((key, now));
                    now
                }
            };
            let dead = match owner(sh, s) {
                Some((pid, start)) => !process_alive(pid, start),
                None => now.duration_since(since) >= UNKNOWN_OWNER_GRACE,
            };
            if !dead {
                continue;
            }
            match s.kind() {
                // Nobody else holds these: free them. (A REQUEST's ready bit may be missing if
                // the client died between its two publishing stores, so it is not left to a
                // worker.)
                State::CLAIMED | State::REQUEST | State::REPLY => {
                    if protocol::reclaim(map, &Futex, i, s) {
                        out.freed += 1;
                    }
                }
                // A worker holds it: mark it, and the worker frees it when the handler returns.
                _ => {
                    if protocol::abandon(map, i, s.gen()).is_ok() {
                        out.abandoned += 1;
                    }
                }
            }
            *seen = None;
        }
        out
    }
}

/// The pid and start time of the process that owns the call in `sh` at state `s`, if it
/// recorded them for this generation.
fn owner(sh: &SlotHeader, s: State) -> Option<(u32, u64)> {
    // SYNC: Acquire pairs with the Release store of `owner_gen` in `Client::call`: when it
    // matches, the pid and start time below are the current owner's.
    if sh.owner_gen.load(Ordering::Acquire) != s.gen() | OWNER_VALID {
        return None;
    }
    Some((
        sh.owner_pid.load(Ordering::Relaxed),
        sh.owner_start.load(Ordering::Relaxed),
    ))
}
