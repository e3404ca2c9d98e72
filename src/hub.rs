//! The registry of a process's async calls to one server: a waker entry per slot, which the
//! future that holds the slot fills and the helper thread empties when the call completes.
//!
//! It is the part of the async hub (`async_call.rs`) that races the server and the helper
//! thread, so it is written against the protocol's [`Words`] and the [`crate::sync`] facade:
//! the loom models (`loom-tests/`, model 9) runs this very code with a model mapping,
//! a model futex and loom's mutexes.

use crate::protocol::{self, Mutant, State, Words};
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};
use std::task::Waker;
use std::time::Instant;

/// Wakes a task; a waker that panics must not take the helper thread down with it.
pub(crate) fn wake(w: Waker) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.wake()));
}

/// The registration of the async call that holds a slot.
#[derive(Debug, Default)]
struct Entry {
    waker: Option<Waker>,
    gen: u32,
    deadline: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (plain field stores).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`Registry::register`] did.
#[derive(Debug)]
pub enum Registered {
    /// The call had completed: nothing is registered; its final state.
    Done(State),
    /// The waker is registered; `new` if the entry had none (the helper should look).
    Waiting {
        /// Whether this registration is new (not a refreshed waker).
        new: bool,
    },
}

/// A waker entry per slot, and how many hold a waker.
#[derive(Debug)]
pub struct Registry {
    entries: Box<[Mutex<Entry>]>,
    registered: AtomicUsize,
}

impl Registry {
    /// A registry for `slots` slots.
    pub fn new(slots: u32) -> Registry {
        Registry {
            entries: (0..slots).map(|_| Mutex::new(Entry::default())).collect(),
            registered: AtomicUsize::new(0),
        }
    }

    /// Entries holding a waker.
    pub fn registered(&self) -> usize {
        self.registered.load(Ordering::Relaxed)
    }

    /// Registers (or refreshes) the waker of the call in `slot` at `gen`, then checks the
    /// slot: if the call completed, unregisters and returns its state. Registering and
    /// checking under the entry's lock, which the helper takes to look, means that either this
    /// check or the helper's sees the completion.
    ///
    /// The entry may still hold the waker of the slot's previous call: a one-way message's
    /// slot is freed by the worker, so its sender may not have run yet when the next call
    /// claims the slot. That call is complete (its generation is past): wake it, do not drop it.
    pub fn register<W: Words + ?Sized>(
        &self,
        w: &W,
        slot: u32,
        gen: u32,
        waker: &Waker,
        deadline: Instant,
    ) -> Registered {
        let mut e = lock(&self.entries[slot as usize]);
        if !protocol::mutated(w, Mutant::RegisterWithoutCheck) {
            if let Some(state) = protocol::poll_done(w, slot, gen) {
                // Our call is complete: drop our registration only (a later call may own the
                // entry by now).
                if e.gen == gen && e.waker.take().is_some() {
                    self.registered.fetch_sub(1, Ordering::Relaxed);
                }
                return Registered::Done(state);
            }
        }
        // Not complete: the slot is still at our generation, so a registration at another
        // one belongs to an earlier, completed call.
        let previous = if e.gen != gen { e.waker.take() } else { None };
        let mut new = false;
        match (&mut e.waker, previous.is_some()) {
            (Some(w), _) => w.clone_from(waker),
            (none, replaced) => {
                *none = Some(waker.clone());
                if !replaced {
                    self.registered.fetch_add(1, Ordering::Relaxed);
                }
                new = true;
            }
        }
        e.gen = gen;
        e.deadline = Some(deadline);
        drop(e);
        if let Some(w) = previous {
            wake(w);
        }
        Registered::Waiting { new }
    }

    /// Unregisters the call in `slot` at `gen` (not a later call's registration).
    pub fn unregister(&self, slot: u32, gen: u32) {
        let mut e = lock(&self.entries[slot as usize]);
        if e.gen == gen && e.waker.take().is_some() {
            self.registered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Wakes every registered call that completed, whose deadline passed, or all of them if
    /// `gone`; returns the earliest deadline still waiting.
    pub fn wake_registered<W: Words + ?Sized>(
        &self,
        w: &W,
        now: Instant,
        gone: bool,
    ) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for (slot, entry) in self.entries.iter().enumerate() {
            let mut e = lock(entry);
            let Some(deadline) = e.deadline.filter(|_| e.waker.is_some()) else {
                continue;
            };
            let ready = gone
                || deadline <= now
                || protocol::poll_done(w, slot as u32, e.gen).is_some()
                || !protocol::in_flight(w, slot as u32, e.gen);
            if ready {
                let waker = e.waker.take().expect("checked above");
                self.registered.fetch_sub(1, Ordering::Relaxed);
                drop(e);
                wake(waker);
            } else {
                earliest = Some(earliest.map_or(deadline, |x| x.min(deadline)));
            }
        }
        earliest
    }
}
