//! Loom models of shmrpc's slot protocol and wake protocol.
//!
//! These run the real functions of `shmrpc::protocol`, compiled against loom's atomics through
//! `shmrpc::sync`. Only the mapping and the futex are replaced: the words live in a heap
//! [`Bus`], the payload of each slot is a loom `UnsafeCell` (so loom reports any read of bytes
//! that the protocol did not order after their write), and the futex is [`LoomFutex`], which
//! ignores timeouts: a wake-up the protocol loses shows up as a deadlock, not as a delay.
//!
//! Each `mutant_*` test switches on a deliberate bug (`shmrpc::protocol::Mutant`) and must
//! fail, proving that its model can fail. Loom reports some failures (deadlocks) by aborting
//! the process, so `mutants_are_caught` runs each mutant in a child process of this test
//! binary and checks that it fails, and how.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release` (bounded by
//! `LOOM_MAX_PREEMPTIONS`, default 3).
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use shmrpc::layout::server_state;
use shmrpc::protocol::{self, Begin, Mutant, Park, Poll, State, WaitError, Waiting, Words};
use shmrpc::sync::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// The stand-ins for the mapping and the futex.

/// The protocol's words on the heap, plus one payload cell per slot.
struct Bus {
    slots: Vec<AtomicU32>,
    ready: Vec<AtomicU64>,
    server_state: AtomicU32,
    server_seq: AtomicU32,
    server_sleepers: AtomicU32,
    free_seq: AtomicU32,
    free_waiters: AtomicU32,
    async_bell: AtomicU32,
    payload: Vec<UnsafeCell<u64>>,
    futex: LoomFutex,
    mutant: Mutant,
}

impl Bus {
    fn new(slots: u32, mutant: Mutant) -> Arc<Bus> {
        Arc::new(Bus {
            slots: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            ready: (0..(slots as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            server_state: AtomicU32::new(server_state::RUNNING),
            server_seq: AtomicU32::new(0),
            server_sleepers: AtomicU32::new(0),
            free_seq: AtomicU32::new(0),
            free_waiters: AtomicU32::new(0),
            async_bell: AtomicU32::new(0),
            payload: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            futex: LoomFutex::default(),
            mutant,
        })
    }

    fn write(&self, slot: u32, v: u64) {
        // SAFETY (model): the protocol gives this thread the slot; loom checks it.
        self.payload[slot as usize].with_mut(|p| unsafe { *p = v });
    }

    fn read(&self, slot: u32) -> u64 {
        // SAFETY (model): as above.
        self.payload[slot as usize].with(|p| unsafe { *p })
    }

    fn state(&self, slot: u32) -> State {
        State(self.slots[slot as usize].load(Ordering::SeqCst))
    }
}

impl Words for Bus {
    fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }
    fn slot_state(&self, i: u32) -> &AtomicU32 {
        &self.slots[i as usize]
    }
    fn ready_word(&self, w: usize) -> &AtomicU64 {
        &self.ready[w]
    }
    fn server_state(&self) -> &AtomicU32 {
        &self.server_state
    }
    fn server_seq(&self) -> &AtomicU32 {
        &self.server_seq
    }
    fn server_sleepers(&self) -> &AtomicU32 {
        &self.server_sleepers
    }
    fn free_seq(&self) -> &AtomicU32 {
        &self.free_seq
    }
    fn free_waiters(&self) -> &AtomicU32 {
        &self.free_waiters
    }
    fn async_bell(&self) -> &AtomicU32 {
        &self.async_bell
    }
    fn mutant(&self) -> Mutant {
        self.mutant
    }
}

/// A futex: `wait` compares and sleeps atomically with respect to `wake` (the kernel does
/// both under the futex bucket lock; here, one mutex). Timeouts are ignored on purpose.
#[derive(Default)]
struct LoomFutex {
    lock: Mutex<()>,
    cv: Condvar,
}

impl Park for Bus {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let guard = self.futex.lock.lock().unwrap();
        if word.load(Ordering::SeqCst) == expected {
            drop(self.futex.cv.wait(guard).unwrap());
        }
    }
    fn wake(&self, _word: &AtomicU32, _n: u32) {
        let _guard = self.futex.lock.lock().unwrap();
        self.futex.cv.notify_all();
    }
}

/// A caller's waiting policy in a model: no spinning (one check), parks forever unless the
/// deadline is declared passed, and the server process is always alive.
struct ModelWait {
    expired: bool,
}

impl Waiting for ModelWait {
    fn spin(&mut self, poll: &mut dyn FnMut() -> Poll) -> bool {
        poll() == Poll::Ready
    }
    fn next_park(&mut self) -> Option<Duration> {
        (!self.expired).then_some(Duration::from_secs(1))
    }
    fn peer_alive(&mut self) -> bool {
        true
    }
}

fn forever() -> ModelWait {
    ModelWait { expired: false }
}

// ---------------------------------------------------------------------------------------------
// Model runner: a preemption bound and a count of the interleavings explored.

/// The preemption bound when `LOOM_MAX_PREEMPTIONS` is not set: the whole suite explores
/// about 1.2 million interleavings in about a minute on the project's 2-core machine.
const DEFAULT_BOUND: usize = 3;

/// Runs `f` under loom with `LOOM_MAX_PREEMPTIONS` if set, else [`DEFAULT_BOUND`].
fn model<F: Fn() + Sync + Send + 'static>(name: &str, f: F) {
    use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&runs);
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(DEFAULT_BOUND);
    }
    let bound = builder.preemption_bound;
    let t0 = std::time::Instant::now();
    builder.check(move || {
        counter.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    println!(
        "model {name}: {} interleavings, preemption bound {bound:?}, {:?}",
        runs.load(StdOrdering::Relaxed),
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// The server side of a model: serve `n` published slots (or skip abandoned ones), parking when
// nothing is ready. The handler reads the request value and replies with ten times it.

fn serve(bus: &Bus, n: usize) -> usize {
    let mut served = 0;
    let mut seen = 0;
    while seen < n {
        let Some(slot) = protocol::take_ready(bus, 0) else {
            protocol::worker_park(bus, bus, None);
            continue;
        };
        seen += 1;
        if let Begin::Serve(gen) = protocol::begin_serving(bus, bus, slot) {
            let request = bus.read(slot);
            bus.write(slot, request * 10);
            protocol::finish(bus, bus, slot, gen, State::REPLY);
            served += 1;
        }
    }
    served
}

/// A whole call on the client side: claim, write, publish, wait, read, release.
fn call(bus: &Bus, value: u64) -> u64 {
    let (slot, gen) = protocol::claim(bus, bus, 0, &mut forever()).expect("claim");
    bus.write(slot, value);
    protocol::publish_request(bus, bus, slot, gen);
    let st = protocol::wait_done(bus, bus, slot, gen, &mut forever()).expect("reply");
    assert_eq!(st.kind(), State::REPLY);
    let reply = bus.read(slot);
    protocol::release(bus, bus, slot, gen);
    reply
}

// ---------------------------------------------------------------------------------------------
// Model 1: two clients race for the last free slot.

fn model_1(mutant: Mutant) {
    model("1 last-slot race", move || {
        let bus = Bus::new(1, mutant);
        let inside = Arc::new(AtomicU32::new(0));
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let (bus, inside) = (bus.clone(), inside.clone());
                thread::spawn(move || {
                    let (slot, gen) = protocol::claim(&*bus, &*bus, 0, &mut forever()).unwrap();
                    // Exactly one holder at a time.
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "slot claimed twice"
                    );
                    inside.fetch_sub(1, Ordering::SeqCst);
                    protocol::release(&*bus, &*bus, slot, gen);
                    gen
                })
            })
            .collect();
        let mut gens: Vec<u32> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        gens.sort_unstable();
        // The loser got the slot after the winner released it: the next generation.
        assert_eq!(gens, [0, 1]);
        assert_eq!(bus.state(0), State::new(State::FREE, 2));
    });
}

#[test]
fn model_1_two_clients_race_for_the_last_slot() {
    model_1(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_claim_by_store_breaks_model_1() {
    model_1(Mutant::ClaimByStore);
}

// ---------------------------------------------------------------------------------------------
// Model 2: hand-off. The worker sees the request bytes, the client sees the reply bytes.

fn model_2(mutant: Mutant) {
    model("2 hand-off", move || {
        let bus = Bus::new(1, mutant);
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 1))
        };
        assert_eq!(call(&bus, 7), 70);
        assert_eq!(server.join().unwrap(), 1);
    });
}

#[test]
fn model_2_request_and_reply_bytes_are_visible_after_publication() {
    model_2(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_relaxed_publish_breaks_model_2() {
    model_2(Mutant::PublishRelaxed);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_relaxed_finish_breaks_model_2() {
    model_2(Mutant::FinishRelaxed);
}

// ---------------------------------------------------------------------------------------------
// Model 3: no lost wake-up. Two calls in a row through one worker: the worker parks between
// them while the client publishes; the client parks while the worker replies. The futex here
// never times out, so a lost wake-up deadlocks and loom reports it.

fn model_3(mutant: Mutant) {
    model("3 no lost wake-up", move || {
        let bus = Bus::new(1, mutant);
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 2))
        };
        assert_eq!(call(&bus, 1), 10);
        assert_eq!(call(&bus, 2), 20);
        assert_eq!(server.join().unwrap(), 2);
    });
}

#[test]
fn model_3_no_waiter_sleeps_through_its_wake_up() {
    model_3(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_no_worker_wake_breaks_model_3() {
    model_3(Mutant::NoWorkerWake);
}

// ---------------------------------------------------------------------------------------------
// Model 4: a client abandons its call (timeout) while the worker serves it; then it calls
// again on the same (only) slot and must get the reply to the new call.

fn model_4(mutant: Mutant) {
    model("4 timeout race", move || {
        let bus = Bus::new(1, mutant);
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 2))
        };
        let (slot, gen) = protocol::claim(&*bus, &*bus, 0, &mut forever()).unwrap();
        bus.write(slot, 1);
        protocol::publish_request(&*bus, &*bus, slot, gen);
        // The deadline has passed: one check, then give up.
        let mut expired = ModelWait { expired: true };
        match protocol::wait_done(&*bus, &*bus, slot, gen, &mut expired) {
            Ok(_) => protocol::release(&*bus, &*bus, slot, gen),
            Err(WaitError::Timeout) => match protocol::abandon(&*bus, slot, gen) {
                Ok(()) => {}
                // The reply won the race: the client owns it and must release it.
                Err(st) => {
                    assert_eq!(st.kind(), State::REPLY);
                    assert_eq!(bus.read(slot), 10);
                    protocol::release(&*bus, &*bus, slot, gen);
                }
            },
            Err(WaitError::Gone) => panic!("server reported gone"),
        }
        // The next call never reads the old reply.
        assert_eq!(call(&bus, 2), 20);
        server.join().unwrap();
        // The slot went back to FREE exactly once per call: generation gen + 2.
        assert_eq!(bus.state(0), State::new(State::FREE, gen + 2));
        assert_eq!(bus.ready[0].load(Ordering::SeqCst), 0, "a ready bit leaked");
    });
}

#[test]
fn model_4_abandon_races_the_reply_and_the_slot_is_freed_once() {
    model_4(Mutant::None);
}

// ---------------------------------------------------------------------------------------------
// Model 5: two workers race for one ready slot: exactly one serves it.

#[test]
fn model_5_two_workers_serve_one_request_once() {
    model("5 two workers", || {
        let bus = Bus::new(2, Mutant::None);
        let (slot, gen) = protocol::claim(&*bus, &*bus, 0, &mut forever()).unwrap();
        bus.write(slot, 3);
        let served = Arc::new(AtomicU32::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (bus, served) = (bus.clone(), served.clone());
                thread::spawn(move || {
                    // Each worker looks twice; the request may appear between the looks.
                    for _ in 0..2 {
                        if let Some(s) = protocol::take_ready(&*bus, 0) {
                            if let Begin::Serve(g) = protocol::begin_serving(&*bus, &*bus, s) {
                                served.fetch_add(1, Ordering::SeqCst);
                                let v = bus.read(s);
                                bus.write(s, v * 10);
                                protocol::finish(&*bus, &*bus, s, g, State::REPLY);
                            }
                        }
                        thread::yield_now();
                    }
                })
            })
            .collect();
        protocol::publish_request(&*bus, &*bus, slot, gen);
        for w in workers {
            w.join().unwrap();
        }
        let n = served.load(Ordering::SeqCst);
        assert!(n <= 1, "served twice");
        if n == 1 {
            assert_eq!(bus.state(slot).kind(), State::REPLY);
            assert_eq!(bus.read(slot), 30);
        } else {
            // Neither looked after the publication: the request is still there, once.
            assert_eq!(bus.state(slot).kind(), State::REQUEST);
            assert_eq!(protocol::take_ready(&*bus, 0), Some(slot));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Model 6: shutdown while clients wait: one for its reply, one for a free slot. Both return
// `Gone`; nobody parks forever (the futex here never times out).

fn model_6(mutant: Mutant) {
    model("6 shutdown", move || {
        let bus = Bus::new(1, mutant);
        let (slot, gen) = protocol::claim(&*bus, &*bus, 0, &mut forever()).unwrap();
        let waiting_reply = {
            let bus = bus.clone();
            thread::spawn(move || {
                bus.write(slot, 1);
                protocol::publish_request(&*bus, &*bus, slot, gen);
                protocol::wait_done(&*bus, &*bus, slot, gen, &mut forever())
            })
        };
        let waiting_slot = {
            let bus = bus.clone();
            thread::spawn(move || protocol::claim(&*bus, &*bus, 0, &mut forever()).map(|_| ()))
        };
        protocol::shutdown(&*bus, &*bus);
        assert_eq!(waiting_reply.join().unwrap(), Err(WaitError::Gone));
        assert_eq!(waiting_slot.join().unwrap(), Err(WaitError::Gone));
    });
}

#[test]
fn model_6_shutdown_wakes_every_waiting_client() {
    model_6(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_shutdown_keeps_waiter_breaks_model_6() {
    model_6(Mutant::ShutdownKeepsWaiter);
}

// ---------------------------------------------------------------------------------------------
// Model 7: ABA. A client whose call completed releases the slot and then, stale, tries to
// abandon that call, while another client claims the slot and calls through it. The stale
// abandon must not touch the new call.

fn model_7(mutant: Mutant) {
    model("7 ABA", move || {
        let bus = Bus::new(1, mutant);
        // A finished call at generation 0: the reply is waiting for its client.
        bus.slots[0].store(State::new(State::REPLY, 0).0, Ordering::SeqCst);
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 1))
        };
        let stale = {
            let bus = bus.clone();
            thread::spawn(move || {
                protocol::release(&*bus, &*bus, 0, 0);
                thread::yield_now();
                // Stale: it still believes its generation-0 call is in flight.
                let _ = protocol::abandon(&*bus, 0, 0);
            })
        };
        assert_eq!(call(&bus, 5), 50);
        stale.join().unwrap();
        server.join().unwrap();
    });
}

#[test]
fn model_7_stale_abandon_does_not_touch_the_next_call() {
    model_7(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_no_generation_breaks_model_7() {
    model_7(Mutant::NoGeneration);
}

// ---------------------------------------------------------------------------------------------
// Model 8: the ready bitmap under two publishers and two consumers: each publication is taken
// exactly once, none is lost.

fn model_8(mutant: Mutant) {
    model("8 ready bitmap", move || {
        let bus = Bus::new(2, mutant);
        let taken: Arc<Vec<AtomicU32>> = Arc::new((0..2).map(|_| AtomicU32::new(0)).collect());
        let publishers: Vec<_> = (0..2u32)
            .map(|slot| {
                let bus = bus.clone();
                thread::spawn(move || {
                    bus.slots[slot as usize]
                        .store(State::new(State::CLAIMED, 0).0, Ordering::SeqCst);
                    protocol::publish_request(&*bus, &*bus, slot, 0);
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (bus, taken) = (bus.clone(), taken.clone());
                thread::spawn(move || {
                    if let Some(slot) = protocol::take_ready(&*bus, 0) {
                        taken[slot as usize].fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in publishers.into_iter().chain(consumers) {
            t.join().unwrap();
        }
        // What the consumers missed is still in the bitmap: nothing lost, nothing twice.
        while let Some(slot) = protocol::take_ready(&*bus, 0) {
            taken[slot as usize].fetch_add(1, Ordering::SeqCst);
        }
        for (slot, t) in taken.iter().enumerate() {
            assert_eq!(
                t.load(Ordering::SeqCst),
                1,
                "slot {slot} taken a wrong number of times"
            );
        }
    });
}

#[test]
fn model_8_ready_bitmap_loses_nothing_and_duplicates_nothing() {
    model_8(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_take_by_load_breaks_model_8() {
    model_8(Mutant::TakeByLoad);
}

// ---------------------------------------------------------------------------------------------
// Model 9: the async doorbell. A future publishes an async call and registers its waker under
// the entry lock, re-checking the slot there; the server completes the call and rings; the
// process's helper thread arms the bell, looks at the entry under the same lock, and sleeps on
// the bell. The future is never left waiting with its reply there (a lost ring deadlocks).

/// The process-local registration of one async call (`async_call::Hub`'s entry).
#[derive(Default)]
struct AsyncEntry {
    registered: bool,
    woken: bool,
    finished: bool,
}

fn model_9(mutant: Mutant) {
    model("9 async doorbell", move || {
        let bus = Bus::new(1, mutant);
        let entry = Arc::new((Mutex::new(AsyncEntry::default()), Condvar::new()));
        let server = {
            let bus = bus.clone();
            thread::spawn(move || {
                let slot = loop {
                    match protocol::take_ready(&*bus, 0) {
                        Some(slot) => break slot,
                        None => protocol::worker_park(&*bus, &*bus, None),
                    }
                };
                let Begin::Serve(gen) = protocol::begin_serving(&*bus, &*bus, slot) else {
                    panic!("nothing to serve");
                };
                bus.write(slot, bus.read(slot) * 10);
                // The server's `complete` for an ASYNC call: finish, then ring.
                assert!(protocol::finish(&*bus, &*bus, slot, gen, State::REPLY));
                protocol::ring(&*bus, &*bus);
            })
        };
        let helper = {
            let (bus, entry) = (bus.clone(), entry.clone());
            thread::spawn(move || loop {
                let armed = protocol::bell_arm(&*bus);
                {
                    let mut e = entry.0.lock().unwrap();
                    if e.finished {
                        return;
                    }
                    if e.registered && protocol::poll_done(&*bus, 0, 0).is_some() {
                        e.registered = false;
                        e.woken = true;
                        entry.1.notify_all();
                        return;
                    }
                }
                protocol::bell_wait(&*bus, &*bus, armed, None);
            })
        };
        // The future.
        let (slot, gen) = protocol::try_claim(&*bus, 0).expect("a free slot");
        bus.write(slot, 7);
        protocol::publish_request(&*bus, &*bus, slot, gen);
        let mut e = entry.0.lock().unwrap();
        if protocol::poll_done(&*bus, slot, gen).is_some() {
            // Done before registering: the helper is not needed. (In production it sleeps at
            // most a park slice; here its futex never times out, so tell it.)
            e.finished = true;
            drop(e);
            protocol::ring(&*bus, &*bus);
        } else {
            e.registered = true;
            while !e.woken {
                e = entry.1.wait(e).unwrap();
            }
            e.finished = true;
            drop(e);
        }
        assert_eq!(bus.read(slot), 70);
        protocol::release(&*bus, &*bus, slot, gen);
        server.join().unwrap();
        helper.join().unwrap();
    });
}

#[test]
fn model_9_async_doorbell_never_loses_a_completion() {
    model_9(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_bell_arm_by_load_breaks_model_9() {
    model_9(Mutant::BellArmByLoad);
}

// ---------------------------------------------------------------------------------------------
// Model 10: an async future waits for a free slot. The helper counts itself in
// `free_waiters`, fences, arms the bell and looks for a free slot; a client releasing the only
// slot rings the bell (through `notify_free`). The helper always finds the slot.

fn model_10(mutant: Mutant) {
    model("10 async free-slot wait", move || {
        let bus = Bus::new(1, mutant);
        let (slot, gen) = protocol::try_claim(&*bus, 0).expect("a free slot");
        let holder = {
            let bus = bus.clone();
            thread::spawn(move || protocol::release(&*bus, &*bus, slot, gen))
        };
        // The helper (with one future queued for a slot).
        bus.free_waiters.fetch_add(1, Ordering::Relaxed);
        shmrpc::sync::fence(Ordering::SeqCst);
        loop {
            let armed = protocol::bell_arm(&*bus);
            if bus.state(0).kind() == State::FREE {
                break;
            }
            protocol::bell_wait(&*bus, &*bus, armed, None);
        }
        bus.free_waiters.fetch_sub(1, Ordering::Relaxed);
        // The woken future claims it.
        assert!(protocol::try_claim(&*bus, 0).is_some());
        holder.join().unwrap();
    });
}

#[test]
fn model_10_a_freed_slot_always_reaches_an_async_waiter() {
    model_10(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_bell_arm_by_load_breaks_model_10() {
    model_10(Mutant::BellArmByLoad);
}

// ---------------------------------------------------------------------------------------------
// The mutants must fail.

/// Runs every `mutant_*` test in its own process and checks that loom catches the bug: the
/// process fails, with the kind of report the bug should cause.
#[test]
fn mutants_are_caught() {
    let cases = [
        (
            "mutant_claim_by_store_breaks_model_1",
            "slot claimed twice|left: [0, 0]",
        ),
        (
            "mutant_relaxed_publish_breaks_model_2",
            "Causality violation|deadlock",
        ),
        (
            "mutant_relaxed_finish_breaks_model_2",
            "Causality violation",
        ),
        ("mutant_no_worker_wake_breaks_model_3", "deadlock"),
        ("mutant_shutdown_keeps_waiter_breaks_model_6", "deadlock"),
        ("mutant_no_generation_breaks_model_7", "deadlock|reply|Gone"),
        (
            "mutant_take_by_load_breaks_model_8",
            "taken a wrong number of times",
        ),
        ("mutant_bell_arm_by_load_breaks_model_9", "deadlock"),
        ("mutant_bell_arm_by_load_breaks_model_10", "deadlock"),
    ];
    for (name, expected) in cases {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", name, "--ignored", "--test-threads", "1"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "{name}: the bug went unnoticed\n{text}"
        );
        assert!(
            expected.split('|').any(|e| text.contains(e)),
            "{name}: failed, but not as expected ({expected}):\n{text}"
        );
        println!("{name}: caught ({})", out.status);
    }
}
