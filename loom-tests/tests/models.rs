//! Loom models of shmrpc's slot protocol and wake protocol.
//!
//! These run the real functions of `shmrpc::protocol`, compiled against loom's atomics through
//! `shmrpc::sync`. Only the mapping and the futex are replaced: the words live in a heap
//! [`Bus`], the payload of each slot is a loom `UnsafeCell` (so loom reports any read of bytes
//! that the protocol did not order after their write), and the futex is [`LoomFutex`], which
//! ignores timeouts: a wake-up the protocol loses shows up as a deadlock, not as a delay. Like
//! the kernel's, it wakes only threads parked on the word that is woken, and at most as many
//! as asked, so a wake that names the wrong word or too few threads is a lost wake-up too.
//!
//! Client threads play processes: each claims with its own owner entry (1, 2, ...), and a
//! model's "kernel lock" for an entry is an `AtomicU32` that the thread clears when it "dies".
//!
//! Each `mutant_*` test switches on a deliberate bug (`shmrpc::protocol::Mutant`) and must
//! fail, proving that its model can fail. Loom reports some failures (deadlocks) by aborting
//! the process, so `mutants_are_caught` runs each mutant in a child process of this test
//! binary and checks that it fails, and how.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p loom-tests --release` (bounded by
//! `LOOM_MAX_PREEMPTIONS`, default 3).
#![cfg(loom)]

mod runner;

use loom::cell::UnsafeCell;
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;
use shmrpc::hub::{Registered, Registry};
use shmrpc::layout::server_state;
use shmrpc::protocol::{self, Begin, Mutant, Park, Poll, State, WaitError, Waiting, Words};
use shmrpc::sync::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    owner_waiters: Vec<AtomicU32>,
    queued_waiters: AtomicU32,
    owner_queued: Vec<AtomicU32>,
    async_bell: AtomicU32,
    payload: Vec<UnsafeCell<u64>>,
    /// Each slot's arena record (0: none) and, in `run`, the bytes of the one run a model uses.
    ext: Vec<AtomicU32>,
    run: UnsafeCell<u64>,
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
            owner_waiters: (0..OWNERS).map(|_| AtomicU32::new(0)).collect(),
            queued_waiters: AtomicU32::new(0),
            owner_queued: (0..OWNERS).map(|_| AtomicU32::new(0)).collect(),
            async_bell: AtomicU32::new(0),
            payload: (0..slots).map(|_| UnsafeCell::new(0)).collect(),
            ext: (0..slots).map(|_| AtomicU32::new(0)).collect(),
            run: UnsafeCell::new(0),
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
    fn owner_waiters(&self, owner: u32) -> &AtomicU32 {
        &self.owner_waiters[owner as usize]
    }
    fn queued_waiters(&self) -> &AtomicU32 {
        &self.queued_waiters
    }
    fn owner_queued(&self, owner: u32) -> &AtomicU32 {
        &self.owner_queued[owner as usize]
    }
    fn async_bell(&self) -> &AtomicU32 {
        &self.async_bell
    }
    fn has_extent(&self, slot: u32) -> bool {
        self.ext[slot as usize].load(Ordering::Relaxed) != 0
    }
    fn drop_extent(&self, slot: u32) {
        // As `arena::free`: AcqRel, so that the run's last reader happens before an allocator
        // that sees the record cleared (Acquire) and writes the chunks.
        self.ext[slot as usize].swap(0, Ordering::AcqRel);
    }
    fn mutant(&self) -> Mutant {
        self.mutant
    }
}

/// Owner entries a model's bus has room for (0 is never an owner).
const OWNERS: usize = 4;

/// A futex: `wait` compares and sleeps atomically with respect to `wake` (the kernel does
/// both under the futex bucket lock; here, one mutex). A sleeper is queued under the address
/// of its word; `wake(word, n)` dequeues at most `n` sleepers of that word, first come first
/// woken, and only a dequeued sleeper returns. No spurious wake-ups, and timeouts are ignored
/// on purpose.
#[derive(Default)]
struct LoomFutex {
    lock: Mutex<FutexQueue>,
    cv: Condvar,
}

#[derive(Default)]
struct FutexQueue {
    next_ticket: u64,
    /// (word address, ticket) of every sleeper.
    sleepers: Vec<(usize, u64)>,
}

fn address(word: &AtomicU32) -> usize {
    word as *const AtomicU32 as usize
}

impl Park for Bus {
    fn wait(&self, word: &AtomicU32, expected: u32, _timeout: Option<Duration>) {
        let mut q = self.futex.lock.lock().unwrap();
        if word.load(Ordering::SeqCst) != expected {
            return;
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.sleepers.push((address(word), ticket));
        while q.sleepers.iter().any(|&(_, t)| t == ticket) {
            q = self.futex.cv.wait(q).unwrap();
        }
    }
    fn wake(&self, word: &AtomicU32, n: u32) {
        let mut q = self.futex.lock.lock().unwrap();
        let at = address(word);
        let mut left = n;
        q.sleepers.retain(|&(a, _)| {
            if a == at && left > 0 {
                left -= 1;
                false
            } else {
                true
            }
        });
        if left < n {
            self.futex.cv.notify_all();
        }
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

use runner::model;

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

/// A whole call on the client side, as process entry `owner`: claim, write, publish, wait,
/// read, release. Every step must succeed: the slot stays this call's throughout.
fn call_as(bus: &Bus, owner: u32, value: u64) -> u64 {
    let (slot, gen) = protocol::claim(bus, bus, owner, 0, &mut forever()).expect("claim");
    bus.write(slot, value);
    assert!(
        protocol::publish_request(bus, bus, slot, gen),
        "publish failed: the slot was taken from its live owner"
    );
    let st = protocol::wait_done(bus, bus, slot, gen, &mut forever()).expect("reply");
    assert_eq!(
        st.kind(),
        State::REPLY,
        "the call did not end in its own reply"
    );
    let reply = bus.read(slot);
    assert!(
        protocol::release(bus, bus, slot, st),
        "release failed: the reply was taken from its live owner"
    );
    reply
}

/// [`call_as`] for owner entry 1.
fn call(bus: &Bus, value: u64) -> u64 {
    call_as(bus, 1, value)
}

/// The counter part of a generation (without the owner entry).
fn counter(gen: u32) -> u32 {
    gen >> State::OWNER_BITS
}

// ---------------------------------------------------------------------------------------------
// Model 1: two clients race for the last free slot.

fn model_1(mutant: Mutant) {
    model("1 last-slot race", move || {
        let bus = Bus::new(1, mutant);
        let inside = Arc::new(AtomicU32::new(0));
        let clients: Vec<_> = (1..=2)
            .map(|owner| {
                let (bus, inside) = (bus.clone(), inside.clone());
                thread::spawn(move || {
                    let (slot, gen) =
                        protocol::claim(&*bus, &*bus, owner, 0, &mut forever()).unwrap();
                    // Exactly one holder at a time.
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "slot claimed twice"
                    );
                    inside.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(gen & State::OWNER_MASK, owner);
                    protocol::release(&*bus, &*bus, slot, State::new(State::CLAIMED, gen));
                    counter(gen)
                })
            })
            .collect();
        let mut gens: Vec<u32> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        gens.sort_unstable();
        // The loser got the slot after the winner released it: the next generation.
        assert_eq!(gens, [0, 1]);
        assert_eq!(
            bus.state(0),
            State::new(State::FREE, 2 << State::OWNER_BITS)
        );
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
        let (slot, gen) = protocol::claim(&*bus, &*bus, 1, 0, &mut forever()).unwrap();
        bus.write(slot, 1);
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        // The deadline has passed: one check, then give up.
        let mut expired = ModelWait { expired: true };
        match protocol::wait_done(&*bus, &*bus, slot, gen, &mut expired) {
            Ok(st) => assert!(protocol::release(&*bus, &*bus, slot, st)),
            Err(WaitError::Timeout) => match protocol::abandon(&*bus, slot, gen) {
                Ok(()) => {}
                // The reply won the race: the client owns it and must release it.
                Err(st) => {
                    assert_eq!(st.kind(), State::REPLY);
                    assert_eq!(bus.read(slot), 10);
                    assert!(protocol::release(&*bus, &*bus, slot, st));
                }
            },
            Err(WaitError::Gone) => panic!("server reported gone"),
        }
        // The next call never reads the old reply.
        assert_eq!(call(&bus, 2), 20);
        server.join().unwrap();
        // The slot went back to FREE exactly once per call: two counters on.
        assert_eq!(
            bus.state(0),
            State::new(State::FREE, (counter(gen) + 2) << State::OWNER_BITS)
        );
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
        let (slot, gen) = protocol::claim(&*bus, &*bus, 1, 0, &mut forever()).unwrap();
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
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
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
        let (slot, gen) = protocol::claim(&*bus, &*bus, 1, 0, &mut forever()).unwrap();
        let waiting_reply = {
            let bus = bus.clone();
            thread::spawn(move || {
                bus.write(slot, 1);
                assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
                protocol::wait_done(&*bus, &*bus, slot, gen, &mut forever())
            })
        };
        let waiting_slot = {
            let bus = bus.clone();
            thread::spawn(move || protocol::claim(&*bus, &*bus, 2, 0, &mut forever()).map(|_| ()))
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
        // A finished call of owner 1 at counter 0: the reply is waiting for its client, a
        // thread of the same process that then calls again (`call` claims as owner 1 too).
        let old = State::new(State::REPLY, 1);
        bus.slots[0].store(old.0, Ordering::SeqCst);
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 1))
        };
        let stale = {
            let bus = bus.clone();
            thread::spawn(move || {
                assert!(protocol::release(&*bus, &*bus, 0, old));
                thread::yield_now();
                // Stale: it still believes its generation-0 call is in flight.
                let _ = protocol::abandon(&*bus, 0, old.gen());
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
                    assert!(protocol::publish_request(&*bus, &*bus, slot, 0));
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
// Model 9: the async doorbell, with the real registry of the async hub (`shmrpc::hub`, its
// mutexes through the sync facade). A future publishes an async call and registers its waker
// (`Registry::register` re-checks the slot under the entry's lock); the server completes the
// call and rings; the process's helper thread arms the bell, wakes what completed
// (`Registry::wake_registered`, under the same locks) and sleeps on the bell. The future is
// never left waiting with its reply there (a lost wake-up deadlocks).

/// A task's waker in a model: sets a flag under a (loom) mutex and signals its condition.
struct Flag {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl std::task::Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        *self.woken.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

fn model_9(mutant: Mutant) {
    model("9 async doorbell", move || {
        let bus = Bus::new(1, mutant);
        let registry = Arc::new(Registry::new(1));
        let done = Arc::new(AtomicU32::new(0));
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
            let (bus, registry, done) = (bus.clone(), registry.clone(), done.clone());
            thread::spawn(move || loop {
                let armed = protocol::bell_arm(&*bus);
                registry.wake_registered(&*bus, Instant::now(), false);
                if done.load(Ordering::SeqCst) == 1 {
                    return;
                }
                protocol::bell_wait(&*bus, &*bus, armed, None);
            })
        };
        // The future.
        let flag = std::sync::Arc::new(Flag {
            woken: Mutex::new(false),
            cv: Condvar::new(),
        });
        let waker = std::task::Waker::from(flag.clone());
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).expect("a free slot");
        bus.write(slot, 7);
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        let far = Instant::now() + Duration::from_secs(3600);
        if let Registered::Waiting { .. } = registry.register(&*bus, slot, gen, &waker, far) {
            let mut woken = flag.woken.lock().unwrap();
            while !*woken {
                woken = flag.cv.wait(woken).unwrap();
            }
        }
        assert!(
            protocol::poll_done(&*bus, slot, gen).is_some(),
            "woken before its call completed"
        );
        assert_eq!(bus.read(slot), 70);
        // Let the helper go (in production it sleeps at most a park slice).
        done.store(1, Ordering::SeqCst);
        protocol::ring(&*bus, &*bus);
        assert!(protocol::release(
            &*bus,
            &*bus,
            slot,
            State::new(State::REPLY, gen)
        ));
        server.join().unwrap();
        helper.join().unwrap();
        assert_eq!(registry.registered(), 0);
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

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_register_without_check_breaks_model_9() {
    model_9(Mutant::RegisterWithoutCheck);
}

// ---------------------------------------------------------------------------------------------
// Model 10: an async future waits for a free slot. The helper counts itself in
// `free_waiters`, fences, arms the bell and looks for a free slot; a client releasing the only
// slot rings the bell (through `notify_free`). The helper always finds the slot.

fn model_10(mutant: Mutant) {
    model("10 async free-slot wait", move || {
        let bus = Bus::new(1, mutant);
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).expect("a free slot");
        let holder = {
            let bus = bus.clone();
            thread::spawn(move || {
                protocol::release(&*bus, &*bus, slot, State::new(State::CLAIMED, gen))
            })
        };
        // The helper of process entry 2 (with one future queued for a slot).
        protocol::announce_free_wait(&*bus, 2);
        shmrpc::sync::fence(Ordering::SeqCst);
        loop {
            let armed = protocol::bell_arm(&*bus);
            if bus.state(0).kind() == State::FREE {
                break;
            }
            protocol::bell_wait(&*bus, &*bus, armed, None);
        }
        protocol::retract_free_wait(&*bus, 2);
        // The woken future claims it.
        assert!(protocol::try_claim(&*bus, 2, 0).is_some());
        assert!(holder.join().unwrap());
        assert_eq!(bus.free_waiters.load(Ordering::SeqCst), 0);
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
// Liveness for models: one "kernel lock" per owner entry, held (1) while its thread-process
// lives. A reaper that asks about an entry gets Dead once the lock is free, and otherwise
// Alive, or Unknown when the model says that the question cannot be answered (a server out of
// file descriptors, say).

struct Locks {
    held: Vec<AtomicU32>,
    unknown: bool,
}

impl Locks {
    fn new(unknown: bool) -> Arc<Locks> {
        Arc::new(Locks {
            held: (0..OWNERS).map(|_| AtomicU32::new(1)).collect(),
            unknown,
        })
    }
    fn die(&self, owner: u32) {
        self.held[owner as usize].store(0, Ordering::SeqCst);
    }
    fn liveness(&self, owner: u32) -> protocol::Liveness {
        if self.held[owner as usize].load(Ordering::SeqCst) == 0 {
            protocol::Liveness::Dead
        } else if self.unknown {
            protocol::Liveness::Unknown
        } else {
            protocol::Liveness::Alive
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model 11: the reaper races every transition of a live owner whose liveness it cannot read.
// The owner's call (claim, write, publish, wait, read, release) must go through untouched:
// unknown is never reclaimed.

fn model_11(mutant: Mutant) {
    model("11 reap vs live owner", move || {
        let bus = Bus::new(1, mutant);
        let locks = Locks::new(true);
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 1))
        };
        let reaper = {
            let (bus, locks) = (bus.clone(), locks.clone());
            thread::spawn(move || {
                for _ in 0..2 {
                    let _ = protocol::reap(&*bus, &*bus, 0, &mut |o| locks.liveness(o));
                    thread::yield_now();
                }
            })
        };
        assert_eq!(call(&bus, 4), 40);
        reaper.join().unwrap();
        server.join().unwrap();
    });
}

#[test]
fn model_11_reaper_never_takes_a_live_owners_slot() {
    model_11(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_reclaim_unknown_breaks_model_11() {
    model_11(Mutant::ReclaimUnknown);
}

// ---------------------------------------------------------------------------------------------
// Model 12: a client dies right after publishing its request; the reaper (which finds its lock
// free) races the worker, which may be taking or serving that request. The slot comes back
// exactly once, and the next client's call through it (while the worker may still be busy with
// the dead one's) is served with its own bytes.

fn model_12(mutant: Mutant) {
    model("12 reap vs worker", move || {
        let bus = Bus::new(1, mutant);
        let locks = Locks::new(false);
        // Client 1's call, published; then client 1 dies.
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).unwrap();
        bus.write(slot, 1);
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        locks.die(1);
        let server = {
            let bus = bus.clone();
            // Serves until it has served the next client's request (value 5). The dead
            // client's ready bit and the next one's may be one bit: a reclaimed REQUEST's
            // stale bit and a new publication in the same slot merge, and the one take then
            // finds the new request.
            thread::spawn(move || loop {
                let Some(slot) = protocol::take_ready(&*bus, 0) else {
                    protocol::worker_park(&*bus, &*bus, None);
                    continue;
                };
                if let Begin::Serve(g) = protocol::begin_serving(&*bus, &*bus, slot) {
                    let v = bus.read(slot);
                    bus.write(slot, v * 10);
                    protocol::finish(&*bus, &*bus, slot, g, State::REPLY);
                    if v == 5 {
                        return;
                    }
                }
            })
        };
        let reaper = {
            let (bus, locks) = (bus.clone(), locks.clone());
            thread::spawn(move || {
                // Until the dead client's call left the slot (reclaimed, or abandoned and
                // freed by the worker).
                while bus.state(0).gen() == gen {
                    let _ = protocol::reap(&*bus, &*bus, 0, &mut |o| locks.liveness(o));
                    thread::yield_now();
                }
            })
        };
        // (After the race of interest, reaper against worker: with the next client in the race
        // too, the model has 1.7 million interleavings at the default bound.)
        reaper.join().unwrap();
        assert_eq!(call_as(&bus, 2, 5), 50);
        server.join().unwrap();
        assert_eq!(bus.state(0).kind(), State::FREE);
        assert_eq!(bus.free_waiters.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn model_12_a_dead_owners_slot_comes_back_once_whatever_the_worker_does() {
    model_12(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_reap_by_store_breaks_model_12() {
    model_12(Mutant::ReapByStore);
}

// ---------------------------------------------------------------------------------------------
// Model 13: a one-way message. The worker accepts it (SERVING -> ACCEPTED), then runs the
// handler on the bytes still in the slot and frees it. The sender returns once it sees the
// message accepted (or already freed), and at once makes a request, which may land in the
// same slot: the handler's read of the one-way bytes never races the sender's next write, and
// the request gets its own reply.

fn model_13(mutant: Mutant) {
    model("13 one-way", move || {
        let bus = Bus::new(1, mutant);
        let ran = Arc::new(AtomicU32::new(0));
        let server = {
            let (bus, ran) = (bus.clone(), ran.clone());
            thread::spawn(move || {
                let mut seen = 0;
                while seen < 2 {
                    let Some(slot) = protocol::take_ready(&*bus, 0) else {
                        protocol::worker_park(&*bus, &*bus, None);
                        continue;
                    };
                    seen += 1;
                    let Begin::Serve(gen) = protocol::begin_serving(&*bus, &*bus, slot) else {
                        continue;
                    };
                    if seen == 1 {
                        // One-way: accept, run the handler on the slot's bytes, free.
                        assert!(protocol::finish(&*bus, &*bus, slot, gen, State::ACCEPTED));
                        ran.store(bus.read(slot) as u32, Ordering::SeqCst);
                        let accepted = State::new(State::ACCEPTED, gen);
                        assert!(protocol::release(&*bus, &*bus, slot, accepted));
                    } else {
                        bus.write(slot, bus.read(slot) * 10);
                        assert!(protocol::finish(&*bus, &*bus, slot, gen, State::REPLY));
                    }
                }
            })
        };
        let (slot, gen) = protocol::claim(&*bus, &*bus, 1, 0, &mut forever()).unwrap();
        bus.write(slot, 3);
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        let st = protocol::wait_done(&*bus, &*bus, slot, gen, &mut forever())
            .expect("the one-way message was not accepted");
        assert_eq!(st.kind(), State::ACCEPTED);
        assert_eq!(call(&bus, 6), 60);
        server.join().unwrap();
        assert_eq!(
            ran.load(Ordering::SeqCst),
            3,
            "the one-way handler saw other bytes"
        );
    });
}

#[test]
fn model_13_one_way_completion_and_the_next_call() {
    model_13(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_no_generation_breaks_model_13() {
    model_13(Mutant::NoGeneration);
}

// ---------------------------------------------------------------------------------------------
// Model 14: shutdown races a worker on its way to park: the worker always leaves its loop
// (the futex here never times out, so a missed wake deadlocks).

fn model_14(mutant: Mutant) {
    model("14 shutdown vs worker park", move || {
        let bus = Bus::new(1, mutant);
        let worker = {
            let bus = bus.clone();
            thread::spawn(move || {
                while protocol::running(&*bus) {
                    if protocol::take_ready(&*bus, 0).is_none() {
                        protocol::worker_park(&*bus, &*bus, None);
                    }
                }
            })
        };
        protocol::shutdown(&*bus, &*bus);
        worker.join().unwrap();
    });
}

#[test]
fn model_14_shutdown_always_reaches_a_parking_worker() {
    model_14(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_shutdown_no_worker_wake_breaks_model_14() {
    model_14(Mutant::ShutdownNoWorkerWake);
}

// ---------------------------------------------------------------------------------------------
// Model 15: a publisher whose slot a peer took while it was writing (a protocol-breaking
// writer set it FREE, and another client claimed it): its publish must fail and leave the new
// owner's state word alone, and that call is served. (The stale client here writes no bytes:
// bytes it wrote before its failed publish would race the new owner's, which is what a
// protocol-breaking peer causes, DESIGN.md section 6c; the CAS only keeps the states right.)

/// Models 15 and 16: client 1 claimed slot 0 (and, for model 16, got its reply there); a
/// peer's blind write set the slot FREE at the next generation; then client 1's `stale`
/// transition races client 2's whole call through the slot. The stale transition must fail
/// (`false`) and client 2's call be served with its own bytes.
fn stale_transition_model(
    name: &'static str,
    mutant: Mutant,
    stale: impl Fn(&Bus, u32) -> bool + Send + Sync + Copy + 'static,
) {
    model(name, move || {
        let bus = Bus::new(1, mutant);
        let (slot, old) = protocol::try_claim(&*bus, 1, 0).unwrap();
        bus.slots[slot as usize].store(
            State::new(State::FREE, 1 << State::OWNER_BITS).0,
            Ordering::SeqCst,
        );
        let server = {
            let bus = bus.clone();
            thread::spawn(move || serve(&bus, 1))
        };
        let stale = {
            let bus = bus.clone();
            thread::spawn(move || stale(&bus, old))
        };
        assert_eq!(call_as(&bus, 2, 8), 80);
        assert!(!stale.join().unwrap(), "a stale transition succeeded");
        server.join().unwrap();
    });
}

fn model_15(mutant: Mutant) {
    // Client 1 resumes and publishes its (stale) call, without writing bytes.
    stale_transition_model("15 publish after losing the slot", mutant, |bus, old| {
        protocol::publish_request(bus, bus, 0, old)
    });
}

#[test]
fn model_15_a_stale_publish_fails_and_leaves_the_new_owners_state_alone() {
    model_15(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_publish_by_store_breaks_model_15() {
    model_15(Mutant::PublishByStore);
}

// ---------------------------------------------------------------------------------------------
// Model 16: a client's release of its reply after a peer took the slot (as in model 15) must
// fail and leave the new owner's call alone.

fn model_16(mutant: Mutant) {
    // Client 1 releases the reply it believes it still holds.
    stale_transition_model("16 release after losing the slot", mutant, |bus, old| {
        protocol::release(bus, bus, 0, State::new(State::REPLY, old))
    });
}

#[test]
fn model_16_a_stale_release_fails_and_leaves_the_new_owners_state_alone() {
    model_16(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_release_by_store_breaks_model_16() {
    model_16(Mutant::ReleaseByStore);
}

// ---------------------------------------------------------------------------------------------
// Model 17: a process dies while it waits for a free slot, counted in `free_waiters`; the
// holder of its lock heals the count, while a live process waits for the slot that a third
// frees. The live waiter is always woken (its own announcement survives the heal), and the
// count ends at zero.

fn model_17(mutant: Mutant) {
    model("17 heal free waits", move || {
        let bus = Bus::new(1, mutant);
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).unwrap();
        // Process 3 announced a wait and was killed before it retracted it.
        protocol::announce_free_wait(&*bus, 3);
        let healer = {
            let bus = bus.clone();
            thread::spawn(move || protocol::heal_free_waits(&*bus, 3))
        };
        let holder = {
            let bus = bus.clone();
            thread::spawn(move || {
                protocol::release(&*bus, &*bus, slot, State::new(State::CLAIMED, gen))
            })
        };
        let (_, got) = protocol::claim(&*bus, &*bus, 2, 0, &mut forever()).unwrap();
        assert_eq!(got & State::OWNER_MASK, 2);
        assert!(holder.join().unwrap());
        assert_eq!(healer.join().unwrap(), 1);
        assert_eq!(bus.free_waiters.load(Ordering::SeqCst), 0);
        assert_eq!(bus.owner_waiters[2].load(Ordering::SeqCst), 0);
        assert_eq!(bus.queued_waiters.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn model_17_a_dead_waiters_announcement_heals() {
    model_17(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_heal_everything_breaks_model_17() {
    model_17(Mutant::HealEverything);
}

// ---------------------------------------------------------------------------------------------
// Model 18: a dead client's request lives in an arena run. The reaper races the worker, which
// may take the request and read the run in place; an allocator reuses the run's chunks as
// soon as the record is cleared. The run must never be given back while the worker reads it
// (loom reports the write racing the read), and it comes back exactly once.

fn model_18(mutant: Mutant) {
    model("18 reap vs worker, with a run", move || {
        let bus = Bus::new(1, mutant);
        let locks = Locks::new(false);
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).unwrap();
        // The client's run, recorded in its slot, and its bytes.
        bus.ext[0].store(7, Ordering::Relaxed);
        // SAFETY (model): the run is the claimer's; loom checks it.
        bus.run.with_mut(|p| unsafe { *p = 1 });
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        locks.die(1);
        let worker = {
            let bus = bus.clone();
            thread::spawn(move || {
                let slot = protocol::take_ready(&*bus, 0).expect("the ready bit");
                if let Begin::Serve(g) = protocol::begin_serving(&*bus, &*bus, slot) {
                    // Reads the request in place, gives the run back (as a worker does before
                    // its reply), replies.
                    // SAFETY (model): the worker holds the slot SERVING, and so its run.
                    let v = bus.run.with(|p| unsafe { *p });
                    assert_eq!(v, 1, "the request's run changed under its worker");
                    bus.drop_extent(slot);
                    protocol::finish(&*bus, &*bus, slot, g, State::REPLY);
                }
            })
        };
        let reaper = {
            let (bus, locks) = (bus.clone(), locks.clone());
            thread::spawn(move || {
                let _ = protocol::reap(&*bus, &*bus, 0, &mut |o| locks.liveness(o));
            })
        };
        // Another writer's allocation, now: the chunks are free if no record holds them.
        // (One attempt each for the reaper and the allocator: spinning threads would not let
        // loom finish.)
        if bus.ext[0].load(Ordering::Acquire) == 0 {
            // SAFETY (model): a cleared record gives the chunks to whoever allocates them.
            bus.run.with_mut(|p| unsafe { *p = 2 });
        }
        worker.join().unwrap();
        reaper.join().unwrap();
        // Whatever is left (the served call's REPLY of the dead owner) is reaped afterwards.
        for _ in 0..2 {
            let _ = protocol::reap(&*bus, &*bus, 0, &mut |o| locks.liveness(o));
        }
        assert_eq!(
            bus.ext[0].load(Ordering::SeqCst),
            0,
            "the run was never given back"
        );
        assert_eq!(bus.state(0).kind(), State::FREE);
    });
}

#[test]
fn model_18_a_dead_owners_run_is_not_freed_under_its_worker() {
    model_18(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_run_freed_first_breaks_model_18() {
    model_18(Mutant::RunFreedFirst);
}

// ---------------------------------------------------------------------------------------------
// Model 19: fairness. A caller waits for the only slot and has queued (parked at least once);
// its holder frees it and at once calls again. The slot goes to the queued waiter: the new
// call, which has not queued, does not take it (it gives up at its deadline), and the waiter
// is always woken.

fn model_19(mutant: Mutant) {
    model("19 freed slot goes to the queue", move || {
        let bus = Bus::new(1, mutant);
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).unwrap();
        let waiter = {
            let bus = bus.clone();
            thread::spawn(move || {
                let (_, got) = protocol::claim(&*bus, &*bus, 2, 0, &mut forever()).unwrap();
                got
            })
        };
        while bus.queued_waiters.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        assert!(protocol::release(
            &*bus,
            &*bus,
            slot,
            State::new(State::CLAIMED, gen)
        ));
        let again = protocol::claim(&*bus, &*bus, 1, 0, &mut ModelWait { expired: true });
        assert!(
            again.is_err(),
            "a caller that had not queued took the slot freed for the queue"
        );
        assert_eq!(waiter.join().unwrap() & State::OWNER_MASK, 2);
        assert_eq!(bus.queued_waiters.load(Ordering::SeqCst), 0);
        assert_eq!(bus.free_waiters.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn model_19_a_freed_slot_goes_to_the_queued_waiter() {
    model_19(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_barge_past_queue_breaks_model_19() {
    model_19(Mutant::BargePastQueue);
}

// ---------------------------------------------------------------------------------------------
// Model 20: a wake-up that reaches nobody. Two slots, both held; one caller has queued for
// one. The holder frees both; a second caller arrives meanwhile. Each caller keeps the slot
// it gets. Whatever the order (the second free may wake nobody, the queued caller being
// awake already, while the newcomer leaves that slot to the queue), both get a slot: a waiter
// leaving with one passes on the wake-up for the other.

fn model_20(mutant: Mutant) {
    model("20 pass the wake-up on", move || {
        let bus = Bus::new(2, mutant);
        let held: Vec<_> = (0..2)
            .map(|k| protocol::try_claim(&*bus, 1, k).unwrap())
            .collect();
        let spawn_caller = |owner: u32| {
            let bus = bus.clone();
            thread::spawn(move || protocol::claim(&*bus, &*bus, owner, 0, &mut forever()).unwrap())
        };
        let first = spawn_caller(2);
        while bus.queued_waiters.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        // The newcomer arrives while the slots are freed.
        let callers = [first, spawn_caller(3)];
        for (slot, gen) in held {
            assert!(protocol::release(
                &*bus,
                &*bus,
                slot,
                State::new(State::CLAIMED, gen)
            ));
        }
        let mut got: Vec<u32> = callers.into_iter().map(|c| c.join().unwrap().0).collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1]);
        assert_eq!(bus.queued_waiters.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn model_20_a_wake_up_for_a_free_slot_is_passed_on() {
    model_20(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_no_pass_on_breaks_model_20() {
    model_20(Mutant::NoPassOn);
}

// ---------------------------------------------------------------------------------------------
// Model 21: no ready slot is passed over. Both slots are published; the worker serves slot 0,
// whose caller publishes its next call at once. The worker's next take, which starts after
// the slot it served, is slot 1: scanning from the lowest bit would serve slot 0 again, and
// under constant load slot 1 would wait for ever (the first calls of a 5000-client test
// timed out this way on i686). Then the scan wraps round to slot 0.

fn model_21(mutant: Mutant) {
    model("21 ready slots in turn", move || {
        let bus = Bus::new(2, mutant);
        let publish = |owner: u32, start: u32| {
            let (slot, gen) = protocol::try_claim(&*bus, owner, start).expect("a free slot");
            assert_eq!(slot, start);
            assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        };
        publish(1, 0);
        publish(2, 1);
        let mut cursor = 0;
        let mut take = |bus: &Bus| {
            let slot = protocol::take_ready(bus, cursor).expect("a ready slot");
            cursor = slot + 1;
            let Begin::Serve(gen) = protocol::begin_serving(bus, bus, slot) else {
                panic!("slot {slot} was ready but not servable");
            };
            assert!(protocol::finish(bus, bus, slot, gen, State::REPLY));
            slot
        };
        assert_eq!(take(&bus), 0);
        // Slot 0's caller takes its reply and publishes its next call.
        let st = protocol::wait_done(&*bus, &*bus, 0, bus.state(0).gen(), &mut forever()).unwrap();
        assert!(protocol::release(&*bus, &*bus, 0, st));
        publish(1, 0);
        assert_eq!(take(&bus), 1, "the worker passed over a ready slot");
        assert_eq!(take(&bus), 0);
        assert_eq!(protocol::take_ready(&*bus, cursor), None);
    });
}

#[test]
fn model_21_no_ready_slot_is_passed_over() {
    model_21(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_lowest_first_breaks_model_21() {
    model_21(Mutant::LowestFirst);
}

// ---------------------------------------------------------------------------------------------
// Model 22: a stray ready bit leads a second worker to a call that the first is serving, and
// its client gives up meanwhile (a timeout) and calls again on the same (only) slot. The
// second worker must leave the slot alone: only the serving worker frees it, after its reply
// write, so the client's next request never shares the slot with the old reply (loom reports
// the two writes to the payload if they are not ordered) and the old reply never completes
// the next call. Such a bit is left by a reaped REQUEST whose bit outlives the slot's next
// publication (DESIGN.md section 6b), or forged by a peer.

fn model_22(mutant: Mutant) {
    model("22 abandoned while served, stray bit", move || {
        let bus = Bus::new(1, mutant);
        let (slot, gen) = protocol::try_claim(&*bus, 1, 0).unwrap();
        bus.write(slot, 1);
        assert!(protocol::publish_request(&*bus, &*bus, slot, gen));
        let taken = protocol::take_ready(&*bus, 0).expect("the ready bit");
        let Begin::Serve(served) = protocol::begin_serving(&*bus, &*bus, taken) else {
            panic!("the request was not servable");
        };
        // The stray bit.
        bus.ready[0].fetch_or(1, Ordering::SeqCst);
        let first = {
            let bus = bus.clone();
            thread::spawn(move || {
                bus.write(slot, 10);
                protocol::finish(&*bus, &*bus, slot, served, State::REPLY)
            })
        };
        let second = {
            let bus = bus.clone();
            thread::spawn(move || {
                if let Some(s) = protocol::take_ready(&*bus, 0) {
                    if let Begin::Serve(g) = protocol::begin_serving(&*bus, &*bus, s) {
                        let v = bus.read(s);
                        bus.write(s, v * 10);
                        protocol::finish(&*bus, &*bus, s, g, State::REPLY);
                    }
                }
            })
        };
        // The client's deadline passes: it gives up, then calls again if the slot is free.
        let mut next = None;
        match protocol::abandon(&*bus, slot, gen) {
            Ok(()) => {}
            Err(st) => {
                assert_eq!(st.kind(), State::REPLY);
                assert_eq!(bus.read(slot), 10);
                assert!(protocol::release(&*bus, &*bus, slot, st));
            }
        }
        if let Some((s, g)) = protocol::try_claim(&*bus, 1, 0) {
            bus.write(s, 2);
            assert!(
                protocol::publish_request(&*bus, &*bus, s, g),
                "the next call's slot was taken from its live owner"
            );
            next = Some(g);
        }
        first.join().unwrap();
        second.join().unwrap();
        if let Some(g) = next {
            // Nothing but a worker's REQUEST -> SERVING -> REPLY of this call may have moved
            // it: REQUEST (not yet taken) or the reply to 2.
            let st = bus.state(slot);
            assert_eq!(st.gen(), g, "the next call's slot was freed under it");
            match st.kind() {
                State::REQUEST => assert_eq!(bus.read(slot), 2),
                State::REPLY => assert_eq!(bus.read(slot), 20, "the next call got the old reply"),
                k => panic!("the next call's slot is in state {k}"),
            }
        } else {
            assert_eq!(
                bus.state(slot).kind(),
                State::FREE,
                "the slot never came back"
            );
        }
    });
}

#[test]
fn model_22_a_call_abandoned_while_served_is_freed_by_its_worker_only() {
    model_22(Mutant::None);
}

#[test]
#[ignore = "a deliberate bug: run by `mutants_are_caught`, which expects it to fail"]
fn mutant_abandon_serving_as_queued_breaks_model_22() {
    model_22(Mutant::AbandonServingAsQueued);
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
        ("mutant_register_without_check_breaks_model_9", "deadlock"),
        ("mutant_bell_arm_by_load_breaks_model_10", "deadlock"),
        (
            "mutant_reclaim_unknown_breaks_model_11",
            "taken from its live owner|its own reply|Causality violation",
        ),
        (
            "mutant_reap_by_store_breaks_model_12",
            "Causality violation|deadlock|left: 5|right: 50",
        ),
        (
            "mutant_no_generation_breaks_model_13",
            "not accepted|deadlock",
        ),
        ("mutant_shutdown_no_worker_wake_breaks_model_14", "deadlock"),
        (
            "mutant_publish_by_store_breaks_model_15",
            "stale transition succeeded|taken from its live owner|Causality violation|deadlock",
        ),
        ("mutant_heal_everything_breaks_model_17", "deadlock|left: 1"),
        (
            "mutant_barge_past_queue_breaks_model_19",
            "took the slot freed for the queue",
        ),
        ("mutant_no_pass_on_breaks_model_20", "deadlock"),
        (
            "mutant_lowest_first_breaks_model_21",
            "passed over a ready slot",
        ),
        (
            "mutant_run_freed_first_breaks_model_18",
            "Causality violation|changed under its worker",
        ),
        (
            "mutant_abandon_serving_as_queued_breaks_model_22",
            "Causality violation|freed under it|old reply|taken from its live owner",
        ),
        (
            "mutant_release_by_store_breaks_model_16",
            "stale transition succeeded|taken from its live owner|Causality violation|deadlock",
        ),
    ];
    runner::mutants_fail(&cases);
}
