//! Loom models of the large-message arena (`shmrpc::arena`), run against the real code: the
//! arena's words live on the heap ([`Heap`]), each chunk's bytes are a loom `UnsafeCell` (so
//! loom reports two owners of one chunk touching it), and a process "dies" by panicking at one
//! of the arena's crash points (`ArenaWords::crash_point`): each model runs once per crash
//! point of the dying thread's path, and once with no crash.
//!
//! Each `mutant_*` test switches on a deliberate bug (`shmrpc::arena::ArenaMutant`) and must
//! fail; `mutants_are_caught` runs them in child processes (loom aborts on some failures).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release --test arena`.
#![cfg(loom)]

mod runner;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use shmrpc::arena::{self, Alloc, ArenaMutant, ArenaWords, Extent, Purpose};
use shmrpc::sync::{AtomicU32, Ordering};
use std::cell::Cell;

const CHUNKS: u32 = 4;

struct Heap {
    lock: AtomicU32,
    ext: Vec<AtomicU32>,
    /// The bytes of each chunk: written by whoever holds it.
    chunk: Vec<UnsafeCell<u32>>,
    mutant: ArenaMutant,
    /// The dying thread panics at its `crash_at`-th crash point (counted in `passed`).
    crash_at: usize,
    passed: AtomicU32,
}

loom::thread_local! {
    /// Whether this thread is the one that dies.
    static DOOMED: Cell<bool> = Cell::new(false);
}

/// The panic payload of a modelled death.
struct Died;

impl Heap {
    fn new(slots: u32, mutant: ArenaMutant, crash_at: usize) -> Arc<Heap> {
        Arc::new(Heap {
            lock: AtomicU32::new(0),
            ext: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            chunk: (0..CHUNKS).map(|_| UnsafeCell::new(0)).collect(),
            mutant,
            crash_at,
            passed: AtomicU32::new(0),
        })
    }

    /// Writes `tag` into every chunk of `run` and reads it back: two holders of one chunk race
    /// here, which loom reports.
    fn use_run(&self, run: Extent, tag: u32) {
        for c in run.first..run.first + run.count {
            // SAFETY (model): the arena gives this thread the chunk; loom checks it.
            self.chunk[c as usize].with_mut(|p| unsafe { *p = tag });
            let back = self.chunk[c as usize].with(|p| unsafe { *p });
            assert_eq!(back, tag, "chunk {c} changed under its holder");
        }
    }

    /// Whether `slot` still records exactly `run`.
    fn still_records(&self, slot: u32, run: Extent) -> bool {
        self.ext[slot as usize].load(Ordering::SeqCst) == run.pack()
    }

    fn assert_clean(&self) {
        for (s, e) in self.ext.iter().enumerate() {
            assert_eq!(e.load(Ordering::SeqCst), 0, "slot {s}'s run leaked");
        }
        assert_eq!(self.lock.load(Ordering::SeqCst), 0, "lock left held");
    }
}

impl ArenaWords for Heap {
    fn arena_chunks(&self) -> u32 {
        CHUNKS
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
    fn arena_mutant(&self) -> ArenaMutant {
        self.mutant
    }
    fn crash_point(&self) {
        if DOOMED.with(Cell::get) {
            let n = self.passed.fetch_add(1, Ordering::Relaxed) as usize;
            if n == self.crash_at {
                std::panic::panic_any(Died);
            }
        }
    }
}

use runner::model;

/// Modelled deaths are panics: keep them quiet, report every other panic.
fn quiet_deaths() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<Died>().is_none() {
            default(info);
        }
    }));
}

/// A live process's use of its run: write it, check that its record stayed its own, free it.
fn use_and_free(h: &Heap, slot: u32, run: Extent, owner: u32) {
    h.use_run(run, owner);
    assert!(
        h.still_records(slot, run),
        "a live holder's run was freed under it"
    );
    assert_eq!(
        arena::free(h, slot),
        run.count,
        "the run's record changed under its holder"
    );
}

/// Model 1: two allocators, no deaths, and a reaper that breaks the lock of a process that
/// died (entry 9, which holds nothing here). Each allocator's chunks are its own (no chunk
/// is written by both) and nothing is left allocated or locked at the end.
fn model_two_allocators(mutant: ArenaMutant) {
    model("arena 1", move || {
        let h = Heap::new(2, mutant, usize::MAX);
        // Each allocator tries a few times (a busy lock or a full arena: yield and retry), so
        // that loom's schedules stay finite; when both get runs, they must not share a chunk.
        let threads: Vec<_> = [(1u32, 0u32), (2, 1)]
            .into_iter()
            .map(|(owner, slot)| {
                let h = h.clone();
                thread::spawn(move || {
                    for _ in 0..2 {
                        if let Alloc::Got(run) = arena::alloc(&*h, owner, slot, 1, 3) {
                            use_and_free(&h, slot, run, owner);
                            return;
                        }
                        thread::yield_now();
                    }
                })
            })
            .collect();
        // A reaper that found entry 9 dead: it must not break a live holder's lock.
        arena::break_lock(&*h, 9);
        for t in threads {
            t.join().unwrap();
        }
        h.assert_clean();
    });
}

/// Model 2: a process dies at every point of an allocation followed by a free (it panics at
/// its `crash_at`-th crash point; past the last one it lives); once it is gone, the reaper
/// (the main thread, after the join that stands for the kernel's report) breaks the lock if the
/// dead process held it and frees the dead slot's run. Meanwhile another process tries to
/// allocate, use and free a run. The survivor's chunks stay its own, and at the end nothing is
/// leaked or locked. (Each allocation is tried a bounded number of times, so that loom's
/// schedules stay finite: the survivor's tries cover the schedules before and after the
/// reaper's steps.)
fn model_a_death_at_every_point(mutant: ArenaMutant) {
    quiet_deaths();
    for crash_at in 0..4 {
        model(
            &format!("arena 2, death at crash point {crash_at}"),
            move || {
                let h = Heap::new(2, mutant, crash_at);
                let survivor = {
                    let h = h.clone();
                    thread::spawn(move || {
                        for _ in 0..3 {
                            if let Alloc::Got(run) = arena::alloc(&*h, 2, 1, 1, 2) {
                                use_and_free(&h, 1, run, 2);
                                return;
                            }
                            thread::yield_now();
                        }
                    })
                };
                let dying = {
                    let h = h.clone();
                    thread::spawn(move || {
                        DOOMED.with(|d| d.set(true));
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            for _ in 0..2 {
                                if let Alloc::Got(run) = arena::alloc(&*h, 1, 0, 2, 2) {
                                    h.use_run(run, 1);
                                    arena::free(&*h, 0);
                                    return;
                                }
                                thread::yield_now();
                            }
                        }));
                    })
                };
                dying.join().unwrap();
                // The reaper, told by the kernel that entry 1 died.
                arena::break_lock(&*h, 1);
                arena::free(&*h, 0);
                survivor.join().unwrap();
                h.assert_clean();
            },
        );
    }
}

/// Model 3: a worker holds a request's run (chunks 0-1, recorded in its slot 0) and moves it
/// to its own record (2) with `arena::hold`, so that the reply may take a run recorded in the
/// slot, while another process allocates (slot 1). The worker uses the request's chunks and
/// its reply's, the other process its own: no chunk is touched by both, and at the end nothing
/// is left recorded.
fn model_hold(mutant: ArenaMutant) {
    model("arena 3", move || {
        let h = Heap::new(3, mutant, usize::MAX);
        let request = Extent { first: 0, count: 2 };
        h.ext[0].store(request.pack(), Ordering::SeqCst);
        let other = {
            let h = h.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    if let Alloc::Got(run) = arena::alloc(&*h, 2, 1, 1, 2) {
                        use_and_free(&h, 1, run, 2);
                        return;
                    }
                    thread::yield_now();
                }
            })
        };
        assert_eq!(arena::hold(&*h, 0, 2), Some(request));
        // The handler reads the request (here: writes its tag, so that loom sees a race).
        h.use_run(request, 1);
        for _ in 0..2 {
            if let Alloc::Got(reply) = arena::alloc(&*h, 0, 0, 1, 1) {
                h.use_run(reply, 1);
                arena::free(&*h, 0);
                break;
            }
            thread::yield_now();
        }
        h.use_run(request, 1);
        assert!(h.still_records(2, request), "the held run moved");
        assert_eq!(arena::free(&*h, 2), 2);
        other.join().unwrap();
        h.assert_clean();
    });
}

/// Model 4: a worker keeps its request's run (chunks 0-1) in its own record (2), having copied
/// the request out, and writes its reply (slot 0) with `Purpose::ReplyReusing(2)`, while
/// another process allocates a request (slot 1, as much as it may take). The reply always finds
/// room (the reused run counts as free for it and for no one else), the held record is cleared
/// in the same allocation, no chunk is touched by both, and at the end nothing is left
/// recorded.
fn model_reply_reusing(mutant: ArenaMutant) {
    model("arena 4", move || {
        let h = Heap::new(3, mutant, usize::MAX);
        let request = Extent { first: 0, count: 2 };
        h.ext[2].store(request.pack(), Ordering::SeqCst);
        let other = {
            let h = h.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    if let Alloc::Got(run) = arena::alloc_for(&*h, 2, 1, 1, 4, Purpose::Request) {
                        use_and_free(&h, 1, run, 2);
                        return;
                    }
                    thread::yield_now();
                }
            })
        };
        // The request was read (copied out) before the reply is written.
        h.use_run(request, 1);
        let mut reply = None;
        // Busy (the other holds the lock) is retried; it takes the lock at most twice.
        for _ in 0..3 {
            match arena::alloc_for(&*h, 0, 0, 2, 2, Purpose::ReplyReusing(2)) {
                Alloc::Got(run) => {
                    reply = Some(run);
                    break;
                }
                Alloc::Busy(_) => thread::yield_now(),
                Alloc::Full => panic!("the reply found no room"),
            }
        }
        let reply = reply.expect("the lock is free for one of three tries");
        assert_eq!(
            h.ext[2].load(Ordering::SeqCst),
            0,
            "the reused record stays"
        );
        h.use_run(reply, 1);
        assert_eq!(arena::free(&*h, 0), 2);
        other.join().unwrap();
        h.assert_clean();
    });
}

#[test]
fn model_1_two_allocators_never_share_a_chunk() {
    model_two_allocators(ArenaMutant::None);
}

#[test]
fn model_2_a_process_dying_anywhere_leaks_nothing_and_takes_nothing() {
    model_a_death_at_every_point(ArenaMutant::None);
}

#[test]
fn model_3_a_held_request_run_is_never_handed_out() {
    model_hold(ArenaMutant::None);
}

#[test]
fn model_4_a_reply_reusing_its_requests_run_always_finds_room() {
    model_reply_reusing(ArenaMutant::None);
}

#[test]
#[ignore = "run by mutants_are_caught"]
fn mutant_reuse_freed_first_breaks_model_4() {
    model_reply_reusing(ArenaMutant::ReuseFreedFirst);
}

#[test]
#[ignore = "run by mutants_are_caught"]
fn mutant_hold_clears_first_breaks_model_3() {
    model_hold(ArenaMutant::HoldClearsFirst);
}

#[test]
#[ignore = "run by mutants_are_caught"]
fn mutant_no_lock_breaks_model_1() {
    model_two_allocators(ArenaMutant::NoLock);
}

#[test]
#[ignore = "run by mutants_are_caught"]
fn mutant_unlock_before_record_breaks_model_1() {
    model_two_allocators(ArenaMutant::UnlockBeforeRecord);
}

#[test]
#[ignore = "run by mutants_are_caught"]
fn mutant_break_any_holder_breaks_model_1() {
    model_two_allocators(ArenaMutant::BreakAnyHolder);
}

#[test]
#[ignore = "run by mutants_are_caught"]
fn mutant_keep_dead_lock_breaks_model_2() {
    model_a_death_at_every_point(ArenaMutant::KeepDeadLock);
}

/// Every mutant fails its model, and for the expected reason.
#[test]
fn mutants_are_caught() {
    let cases = [
        (
            "mutant_no_lock_breaks_model_1",
            "Causality violation|changed under",
        ),
        (
            "mutant_unlock_before_record_breaks_model_1",
            "Causality violation|changed under",
        ),
        (
            "mutant_break_any_holder_breaks_model_1",
            "Causality violation|changed under|lock left held",
        ),
        ("mutant_keep_dead_lock_breaks_model_2", "lock left held"),
        (
            "mutant_hold_clears_first_breaks_model_3",
            "Causality violation|changed under",
        ),
        (
            "mutant_reuse_freed_first_breaks_model_4",
            "the reply found no room",
        ),
    ];
    runner::mutants_fail(&cases);
}
