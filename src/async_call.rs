//! Async calls: futures that need no particular runtime, and one helper thread per process
//! and mapping that sleeps on the mapping's doorbell for all of them.
//!
//! A future claims a slot without blocking, writes and publishes its call with
//! [`kind::ASYNC`], and registers its waker in this process's [`Hub`] entry for the slot. The
//! worker that completes an async call rings the doorbell (`protocol::ring`); the helper
//! thread, asleep on it (`protocol::bell_arm`, `protocol::bell_wait`), wakes, looks at every
//! registered slot, and wakes the tasks whose call completed, whose deadline passed, or whose
//! server is gone. A future that finds no free slot queues here; the helper then counts itself
//! in the mapping's `free_waiters`, so that every freed slot rings the doorbell too.
//!
//! However many futures wait, a process has one helper thread per server it calls
//! asynchronously, and nothing spins: the helper sleeps on the futex, at most `PARK_SLICE`
//! at a time (to check that the server lives) or until the nearest deadline.
//!
//! Cancellation: dropping a future unregisters it and gives its slot back exactly as a
//! timed-out blocking call does (`protocol::abandon`, or `release` if the reply had come):
//! the generation in the slot's state word and the call id keep a late reply away from the
//! slot's next call.

use crate::client::{give_up, within_share, Client, Done, MapRef, Reply};
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::hub::{wake, Registered, Registry};
use crate::layout::kind;
use crate::message::Message;
use crate::protocol::{self, State};
use crate::shm::{Futex, Mapping};
use crate::sync::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use crate::wait::{Deadline, WaitMode, PARK_SLICE};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long an idle helper (no async call waiting) sleeps before it checks whether its mapping
/// is still used; any new call wakes it at once.
const IDLE_PARK: Duration = Duration::from_secs(1);

/// The async state of one mapping in this process: a waker entry per slot, the queue of
/// futures waiting for a free slot, and the helper thread.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The waker entry of each slot (the part the loom models run: `hub.rs`).
    registry: Registry,
    queue: Mutex<SlotQueue>,
    /// Futures in `queue`.
    queued: AtomicUsize,
    /// Where async claims start scanning (spreads futures over the slots).
    claim_hint: AtomicU32,
    helper: Thread,
    /// The helper's next planned wake-up, in nanoseconds since `epoch`.
    sleep_until_ns: AtomicU64,
    epoch: Instant,
}

/// Futures waiting for a free slot, in arrival order (tickets increase).
#[derive(Debug, Default)]
struct SlotQueue {
    next_ticket: u64,
    waiting: BTreeMap<u64, (Waker, Instant)>,
    /// No deadline in `waiting` is earlier than this (it may be earlier than all of them).
    earliest: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves consistent data (plain field stores).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// The hub of `map`, created (with its helper thread) by the first async call.
    pub(crate) fn of(map: &Arc<Connection>) -> Result<Arc<Hub>> {
        if let Some(hub) = map.hub.get() {
            return Ok(Arc::clone(hub));
        }
        let _guard = lock(&map.hub_init);
        if let Some(hub) = map.hub.get() {
            return Ok(Arc::clone(hub));
        }
        let weak = Arc::downgrade(map);
        let (tx, rx) = std::sync::mpsc::channel::<Arc<Hub>>();
        let handle = std::thread::Builder::new()
            .name("shmrpc-async".into())
            .spawn(move || {
                if let Ok(hub) = rx.recv() {
                    helper_loop(&hub, &weak);
                }
            })?;
        let hub = Arc::new(Hub {
            registry: Registry::new(map.layout().slot_count),
            queue: Mutex::new(SlotQueue::default()),
            queued: AtomicUsize::new(0),
            claim_hint: AtomicU32::new(0),
            helper: handle.thread().clone(),
            sleep_until_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let _ = tx.send(Arc::clone(&hub));
        let _ = map.hub.set(Arc::clone(&hub));
        Ok(hub)
    }

    /// Wakes the helper if it sleeps idle (a call or a queued future appeared, or the mapping
    /// is being dropped).
    pub(crate) fn nudge(&self) {
        self.helper.unpark();
    }

    /// Queues a future for a free slot (or refreshes its waker); returns its ticket.
    fn enqueue(&self, map: &Mapping, ticket: Option<u64>, waker: &Waker, deadline: Instant) -> u64 {
        let mut q = lock(&self.queue);
        if let Some((w, _)) = ticket.and_then(|t| q.waiting.get_mut(&t)) {
            w.clone_from(waker);
            return ticket.expect("found by ticket");
        }
        let t = q.next_ticket;
        q.next_ticket += 1;
        q.waiting.insert(t, (waker.clone(), deadline));
        q.earliest = Some(q.earliest.map_or(deadline, |e| e.min(deadline)));
        self.queued.fetch_add(1, Ordering::Relaxed);
        drop(q);
        self.nudge();
        // A helper asleep on the doorbell may not count itself as a free-slot waiter yet (it
        // does so only while futures queue): ring it so that it does, and sees our deadline.
        protocol::ring(map, &Futex);
        t
    }

    /// Removes a ticket; returns whether it was still queued (not yet woken for a slot).
    fn dequeue(&self, ticket: u64) -> bool {
        let removed = lock(&self.queue).waiting.remove(&ticket).is_some();
        if removed {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Wakes the longest-waiting future queued for a slot, if any.
    fn wake_next_queued(&self) -> bool {
        let first = lock(&self.queue).waiting.pop_first();
        match first {
            Some((_, (waker, _))) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                wake(waker);
                true
            }
            None => false,
        }
    }

    /// Wakes every queued future whose deadline passed; returns the earliest deadline left.
    fn expire_queued(&self, now: Instant) -> Option<Instant> {
        loop {
            let mut q = lock(&self.queue);
            if q.earliest.is_none_or(|e| e > now) {
                return q.earliest;
            }
            let expired = q
                .waiting
                .iter()
                .find(|(_, (_, d))| *d <= now)
                .map(|(t, _)| *t);
            match expired {
                Some(t) => {
                    let (waker, _) = q.waiting.remove(&t).expect("found above");
                    drop(q);
                    self.queued.fetch_sub(1, Ordering::Relaxed);
                    wake(waker);
                }
                None => {
                    q.earliest = q.waiting.values().map(|(_, d)| *d).min();
                }
            }
        }
    }

    /// Registers (or refreshes) the waker of the call in `slot` at `gen` and returns `None`,
    /// or returns the call's state if it completed ([`Registry::register`]).
    fn register(
        &self,
        map: &Mapping,
        slot: u32,
        gen: u32,
        waker: &Waker,
        deadline: Instant,
    ) -> Option<State> {
        match self.registry.register(map, slot, gen, waker, deadline) {
            Registered::Done(state) => Some(state),
            Registered::Waiting { new } => {
                if new {
                    self.nudge();
                    // A helper asleep on the doorbell until a later instant would see this
                    // deadline late: ring it awake (rare: only a deadline shorter than the
                    // helper's sleep).
                    if deadline < self.sleep_until() {
                        protocol::ring(map, &Futex);
                    }
                }
                None
            }
        }
    }

    /// The latest the helper sleeps until (`epoch` while it sleeps idle: then `nudge` wakes it).
    fn sleep_until(&self) -> Instant {
        let ns = self.sleep_until_ns.load(Ordering::Relaxed);
        self.epoch + Duration::from_nanos(ns)
    }

    /// Unregisters the call in `slot` at `gen` (not a later call's registration).
    fn unregister(&self, slot: u32, gen: u32) {
        self.registry.unregister(slot, gen);
    }

    /// Wakes as many queued futures as there are free slots (or all of them, if `gone`).
    fn wake_for_free_slots(&self, map: &Mapping, gone: bool) {
        if gone {
            while self.wake_next_queued() {}
            return;
        }
        if !within_share(map) {
            // This process holds its share while others wait: its futures stay queued (a
            // freed slot of its own rings again; otherwise the next slice looks again).
            return;
        }
        let n = map.layout().slot_count;
        let free = (0..n)
            .filter(|&i| State(map.slot(i).state.load(Ordering::Relaxed)).kind() == State::FREE)
            .count();
        for _ in 0..free {
            if !self.wake_next_queued() {
                break;
            }
        }
    }
}

/// The helper thread: sleeps on the doorbell while async calls of this process wait, and
/// wakes their tasks. Exits once the mapping is no longer used in this process.
fn helper_loop(hub: &Hub, weak: &Weak<Connection>) {
    let mut last_check = Instant::now();
    loop {
        let Some(map) = weak.upgrade() else {
            // No handle uses the mapping any more, so no future can queue here again: wake the
            // queued ones (they reconnect or fail) before leaving.
            while hub.wake_next_queued() {}
            return;
        };
        let registered = hub.registry.registered();
        let queued = hub.queued.load(Ordering::Relaxed);
        if registered == 0 && queued == 0 {
            drop(map);
            // Idle: nothing to ring for. A new call unparks us (`nudge`); a token left by an
            // earlier unpark makes this return at once, so a call that arrives between the
            // loads above and here is seen.
            hub.sleep_until_ns.store(0, Ordering::Relaxed);
            std::thread::park_timeout(IDLE_PARK);
            continue;
        }
        if queued > 0 {
            // Be a free-slot waiter, so that every freed slot rings the doorbell (announced
            // in this process's entry too, so that it heals if the process dies counted), and
            // a queued one: the futures have waited, and callers that have not leave freed
            // slots to them.
            protocol::announce_free_wait(map.map(), map.entry());
            protocol::queue_free_wait(map.map(), map.entry());
            // SYNC: announce, fence, then look for free slots (after `bell_arm`); pairs with the
            // fence in `protocol::notify_free` (free the slot, fence, read `free_waiters`).
            fence(Ordering::SeqCst);
        }
        let armed = protocol::bell_arm(map.map());
        let now = Instant::now();
        // The latest we sleep until, published before we look at the entries: a call that
        // registers after our look (under the entry lock, so it sees this store) with an
        // earlier deadline rings us awake.
        let latest = (now + PARK_SLICE).saturating_duration_since(hub.epoch);
        hub.sleep_until_ns
            .store(latest.as_nanos() as u64, Ordering::Relaxed);
        let mut gone = !protocol::running(map.map()) || map.known_gone();
        if !gone && now.duration_since(last_check) >= PARK_SLICE {
            last_check = now;
            gone = !map.server_alive();
        }
        let mut next = hub.registry.wake_registered(map.map(), now, gone);
        if queued > 0 {
            hub.wake_for_free_slots(&map, gone);
            if let Some(d) = hub.expire_queued(now) {
                next = Some(next.map_or(d, |x| x.min(d)));
            }
        }
        let sleep = next
            .map_or(PARK_SLICE, |d| d.saturating_duration_since(now))
            .min(PARK_SLICE);
        if !sleep.is_zero() && !gone {
            protocol::bell_wait(map.map(), &Futex, armed, Some(sleep));
        }
        if queued > 0 {
            protocol::unqueue_free_wait(map.map(), map.entry());
            protocol::retract_free_wait(map.map(), map.entry());
        }
        if gone {
            // Every waiting task has been woken and will fail with `ServerGone`; do not spin
            // on a dead mapping while they get to it.
            drop(map);
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
}

/// How long the first poll of an async call watches for its reply before it hands the wait
/// to the helper thread: a spinning server answers a small call in a few hundred nanoseconds,
/// far less than the helper's wake-up and the executor's (several µs). Never in `Park` mode.
const ASYNC_SPIN: Duration = Duration::from_micros(2);

/// How long that watch goes on while no worker has taken the call yet: a worker that has not
/// taken it within this is busy with other calls, and the executor has other tasks to run.
const ASYNC_SPIN_QUEUED: Duration = Duration::from_nanos(500);

/// How much longer the watch lasts per byte of request, while a worker serves the call: a
/// large call's round trip is mostly copying (128 KiB each way: ~4.5 µs here), and a watch
/// shorter than that hands every such call to the helper thread (~20 µs).
const ASYNC_SPIN_PER_BYTE_PS: u64 = 40;

/// The longest watch, whatever the size: about what the helper's wake-up costs.
const ASYNC_SPIN_MAX: Duration = Duration::from_micros(20);

/// Watches the call just published in `slot` for at most [`ASYNC_SPIN`] (plus
/// [`ASYNC_SPIN_PER_BYTE_PS`] per byte of its `len`-byte request once a worker has taken it);
/// its state if it completed.
fn spin_for_reply(map: &Mapping, slot: u32, gen: u32, len: u32) -> Option<State> {
    let extra = Duration::from_nanos(u64::from(len) * ASYNC_SPIN_PER_BYTE_PS / 1000);
    let budget = (ASYNC_SPIN + extra).min(ASYNC_SPIN_MAX);
    // The clock is first read after the first 16 checks (most small calls complete within
    // them): the watch lasts up to 16 checks more than its budget.
    let mut t0 = None;
    loop {
        for _ in 0..16 {
            if let Some(state) = protocol::poll_done(map, slot, gen) {
                return Some(state);
            }
            std::hint::spin_loop();
        }
        let spent = t0.get_or_insert_with(Instant::now).elapsed();
        let queued = State(map.slot(slot).state.load(Ordering::Relaxed)).kind() == State::REQUEST;
        if spent >= budget || (queued && spent >= ASYNC_SPIN_QUEUED) {
            return None;
        }
    }
}

/// A future's deadline, started at its first poll (`poll` starts it before anything reads it).
fn since_first_poll(deadline: &mut Option<Deadline>, timeout: Duration) -> &mut Deadline {
    deadline.get_or_insert_with(|| Deadline::after(timeout))
}

/// Where an async call is.
enum Step {
    /// Not started, or queued for a free slot (in that hub, with that ticket): claim next.
    Claim { queued: Option<(Arc<Hub>, u64)> },
    /// Published in `slot` at `gen`.
    InFlight {
        map: Arc<Connection>,
        hub: Arc<Hub>,
        slot: u32,
        gen: u32,
        id: Uuid,
    },
    /// Completed (the result was returned) or failed.
    Finished,
}

/// The future of an async call. It needs no particular runtime; it does nothing until first
/// polled, and its timeout counts from that first poll.
///
/// Dropping it at any point cancels the call safely: its slot goes back to the server as a
/// timed-out blocking call's does, and a reply that arrives late is discarded, never seen by
/// the slot's next call. While it waits, one helper thread per process and server (however
/// many futures wait) sleeps on a futex in the mapping and wakes the tasks whose call is done.
///
/// It is `Send` when `Req` is `Sync`, so it can run in a spawned task of a multi-thread
/// runtime; the [`Reply`] a request resolves to is `Send` when the archived reply type is
/// `Sync`, so it can be held across an `.await` there too.
#[must_use = "futures do nothing unless polled"]
pub struct CallFuture<'c, 'm, Req: Message, Resp: Message, T> {
    client: &'c Client<Req, Resp>,
    msg: Option<&'m Req>,
    kind: u32,
    timeout: Duration,
    /// Set at the first poll: the timeout counts from there.
    deadline: Option<Deadline>,
    /// A ping's first poll, by this process's clock (its round trip counts from there).
    started: Option<Instant>,
    step: Step,
    /// Turns the completed call into the output (given `started`).
    finish: Finish<'c, Req, Resp, T>,
}

/// Turns a completed call into a future's output, given a ping's start.
type Finish<'c, Req, Resp, T> = fn(&'c Client<Req, Resp>, Done<'c>, Option<Instant>) -> Result<T>;

impl<Req: Message, Resp: Message, T> std::fmt::Debug for CallFuture<'_, '_, Req, Resp, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let step = match &self.step {
            Step::Claim { queued: None } => "not started",
            Step::Claim { .. } => "waiting for a slot",
            Step::InFlight { .. } => "in flight",
            Step::Finished => "finished",
        };
        f.debug_struct("CallFuture")
            .field("client", &self.client.name())
            .field("step", &step)
            .finish_non_exhaustive()
    }
}

/// The future of [`Client::request_async`].
pub type RequestFuture<'c, 'm, Req, Resp> = CallFuture<'c, 'm, Req, Resp, Reply<'c, Resp>>;
/// The future of [`Client::send_async`].
pub type SendFuture<'c, 'm, Req, Resp> = CallFuture<'c, 'm, Req, Resp, ()>;
/// The future of [`Client::ping_async`].
pub type PingFuture<'c, Req, Resp> = CallFuture<'c, 'static, Req, Resp, Duration>;

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// Sends `msg` and resolves to the reply, at most the default timeout after the first
    /// poll. Works on any executor. The first poll watches for a quick reply (2 µs, longer for
    /// large requests); after that, waiting costs no thread and no CPU (one helper thread per
    /// process and server wakes the task).
    pub fn request_async<'c, 'm>(&'c self, msg: &'m Req) -> RequestFuture<'c, 'm, Req, Resp> {
        self.request_async_timeout(msg, self.default_timeout())
    }

    /// [`Client::request_async`] with its own timeout.
    pub fn request_async_timeout<'c, 'm>(
        &'c self,
        msg: &'m Req,
        timeout: Duration,
    ) -> RequestFuture<'c, 'm, Req, Resp> {
        self.future(Some(msg), kind::REQUEST, timeout, |c, d, _| c.take_reply(d))
    }

    /// Sends a one-way message; resolves once the server has taken it.
    pub fn send_async<'c, 'm>(&'c self, msg: &'m Req) -> SendFuture<'c, 'm, Req, Resp> {
        self.send_async_timeout(msg, self.default_timeout())
    }

    /// [`Client::send_async`] with its own timeout.
    pub fn send_async_timeout<'c, 'm>(
        &'c self,
        msg: &'m Req,
        timeout: Duration,
    ) -> SendFuture<'c, 'm, Req, Resp> {
        self.future(Some(msg), kind::ONEWAY, timeout, |c, d, _| c.take_accept(d))
    }

    /// [`Client::ping`], async: resolves to the round-trip time.
    pub fn ping_async(&self) -> PingFuture<'_, Req, Resp> {
        self.future(None, kind::PING, self.default_timeout(), |c, d, started| {
            let elapsed = started.map_or(Duration::ZERO, |t| t.elapsed());
            c.take_pong(d).map(|()| elapsed)
        })
    }

    fn future<'c, 'm, T>(
        &'c self,
        msg: Option<&'m Req>,
        kind: u32,
        timeout: Duration,
        finish: Finish<'c, Req, Resp, T>,
    ) -> CallFuture<'c, 'm, Req, Resp, T> {
        CallFuture {
            client: self,
            msg,
            kind,
            timeout,
            deadline: None,
            started: None,
            step: Step::Claim { queued: None },
            finish,
        }
    }
}

impl<Req: Message, Resp: Message, T> CallFuture<'_, '_, Req, Resp, T> {
    /// The call's deadline as an `Instant`.
    fn deadline_at(&mut self, map: &Mapping) -> Instant {
        since_first_poll(&mut self.deadline, self.timeout).get(&map.header().ns_per_tick_q32)
    }

    fn timeout_error(&self, map: &Mapping) -> Error {
        map.header().timeouts.fetch_add(1, Ordering::Relaxed);
        Error::Timeout {
            after: self.timeout,
            name: self.client.name().to_owned(),
        }
    }

    /// One step of claiming: `Ready(Err)` on failure, `Pending` queued for a slot, or
    /// `Ready(Ok(()))` with the call published and `self.step` InFlight.
    fn poll_claim(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let Step::Claim { queued } = std::mem::replace(&mut self.step, Step::Finished) else {
            unreachable!("only called while claiming");
        };
        let begun = since_first_poll(&mut self.deadline, self.timeout).begun();
        let found = self
            .client
            .mapping()
            .and_then(|map| Hub::of(&map).map(|hub| (map, hub)));
        let (map, hub) = match found {
            Ok(found) => found,
            Err(e) => {
                if let Some((old, t)) = queued {
                    if !old.dequeue(t) {
                        old.wake_next_queued();
                    }
                }
                return Poll::Ready(Err(e));
            }
        };
        // Queued in another hub (the server restarted meanwhile): leave that queue.
        let mut ticket = match queued {
            Some((old, t)) if !Arc::ptr_eq(&old, &hub) => {
                old.dequeue(t);
                None
            }
            Some((_, t)) => Some(t),
            None => None,
        };
        if !protocol::running(map.map()) {
            if let Some(t) = ticket {
                hub.dequeue(t);
            }
            return Poll::Ready(Err(self.client.gone()));
        }
        let hint = hub.claim_hint.fetch_add(1, Ordering::Relaxed);
        // A process at its share of slots while others wait claims no more (a blocking call's
        // rule too): the future queues, and the helper wakes it once the share allows. A
        // future that has not queued yet leaves free slots to the callers queued for one
        // (`protocol::claim_if`); once queued here, it takes any.
        let was_queued = ticket.is_some();
        let claim = || {
            if within_share(map.map()) && (was_queued || protocol::queue_empty(map.map())) {
                protocol::try_claim(map.map(), map.entry(), hint)
            } else {
                None
            }
        };
        let mut claimed = claim();
        if claimed.is_none() {
            let deadline = self.deadline_at(&map);
            if Instant::now() >= deadline {
                if let Some(t) = ticket {
                    hub.dequeue(t);
                }
                return Poll::Ready(Err(self.timeout_error(&map)));
            }
            let t = hub.enqueue(&map, ticket, cx.waker(), deadline);
            ticket = Some(t);
            // A slot freed between the failed claim and the enqueue found no one to wake:
            // look once more now that we are queued.
            claimed = claim();
        }
        let Some((slot, gen)) = claimed else {
            self.step = Step::Claim {
                queued: ticket.map(|t| (hub, t)),
            };
            return Poll::Pending;
        };
        if let Some(t) = ticket {
            // Still queued, or already woken for a free slot: either way we have one now.
            hub.dequeue(t);
        }
        let (id, _) = self.client.write_and_publish(
            &map,
            slot,
            gen,
            self.msg,
            self.kind | kind::ASYNC,
            (begun, self.timeout),
            self.client.tag(),
        )?;
        self.step = Step::InFlight {
            map,
            hub,
            slot,
            gen,
            id,
        };
        Poll::Ready(Ok(()))
    }
}

impl<Req: Message, Resp: Message, T> Future for CallFuture<'_, '_, Req, Resp, T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        // Nothing in `CallFuture` is pinned structurally (no self-references).
        let this = self.get_mut();
        if this.deadline.is_none() {
            since_first_poll(&mut this.deadline, this.timeout);
            if this.kind == kind::PING {
                this.started = Some(Instant::now());
            }
        }
        if matches!(this.step, Step::Finished) {
            return Poll::Ready(Err(Error::InvalidConfig(
                "an async call was polled after it completed".into(),
            )));
        }
        let mut just_published = false;
        if matches!(this.step, Step::Claim { .. }) {
            match this.poll_claim(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.step = Step::Finished;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) => just_published = true,
            }
        }
        let Step::InFlight {
            map,
            hub,
            slot,
            gen,
            id,
        } = &this.step
        else {
            unreachable!("poll_claim leaves the call in flight");
        };
        let (slot, gen, id) = (*slot, *gen, *id);
        let (timeout, since) = (this.timeout, &mut this.deadline);
        let q32 = &map.header().ns_per_tick_q32;
        let mut deadline = || since_first_poll(since, timeout).get(q32);
        let spun = if just_published && this.client.wait_mode() != WaitMode::Park {
            // Our own write (the worker never writes it); bounded by the layout all the same.
            let len = map.slot(slot).req_len.load(Ordering::Relaxed);
            spin_for_reply(map, slot, gen, len.min(map.layout().max_payload() as u32))
        } else {
            None
        };
        let state = match spun.or_else(|| hub.register(map, slot, gen, cx.waker(), deadline())) {
            Some(state) => state,
            None => {
                let gone = !protocol::running(map.map()) || map.known_gone();
                let broken = !protocol::in_flight(map.map(), slot, gen)
                    && protocol::poll_done(map.map(), slot, gen).is_none();
                if !gone && !broken && Instant::now() < deadline() {
                    return Poll::Pending;
                }
                hub.unregister(slot, gen);
                match protocol::abandon(map.map(), slot, gen) {
                    Ok(()) => {
                        map.header().abandoned.fetch_add(1, Ordering::Relaxed);
                        let err = if gone || broken {
                            let _ = map.server_alive();
                            this.client.gone()
                        } else {
                            this.timeout_error(map)
                        };
                        this.step = Step::Finished;
                        return Poll::Ready(Err(err));
                    }
                    // It completed as we gave up: take it after all.
                    Err(state) => state,
                }
            }
        };
        let Step::InFlight { map, .. } = std::mem::replace(&mut this.step, Step::Finished) else {
            unreachable!("in flight above");
        };
        let done = Done {
            map: MapRef::Arc(map),
            slot,
            gen,
            state,
            id,
        };
        Poll::Ready((this.finish)(this.client, done, this.started))
    }
}

impl<Req: Message, Resp: Message, T> Drop for CallFuture<'_, '_, Req, Resp, T> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.step, Step::Finished) {
            Step::Finished | Step::Claim { queued: None } => {}
            Step::Claim {
                queued: Some((hub, t)),
            } => {
                if !hub.dequeue(t) {
                    // We were woken for a free slot and will not take it: pass the wake on.
                    hub.wake_next_queued();
                }
            }
            Step::InFlight {
                map,
                hub,
                slot,
                gen,
                ..
            } => {
                hub.unregister(slot, gen);
                give_up(&map, slot, gen);
            }
        }
    }
}
