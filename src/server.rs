//! The server: a name, a mapping, worker threads and a handler.

use crate::arena;
use crate::clock;
use crate::error::{Error, Result};
use crate::large;
use crate::layout::{
    self, checksum, kind, status, Layout, DEFAULT_CAPACITY, DEFAULT_SLOTS, MAX_WORKERS,
};
use crate::message::{self, Message};
use crate::protocol::{self, Begin, Poll, State};
use crate::reaper::{Reaper, SCAN_EVERY};
use crate::reply::{Replied, Responder};
use crate::shm::{validate_name, Futex, Mapping, NameLock};
use crate::stats::{self, Stats};
use crate::sync::{AtomicU32, Ordering};
use crate::trust::{copy_out, Trust};
use crate::wait::{spin_until, stretched, ticks_to_duration, WaitMode};
use rkyv::util::AlignedVec;
use std::marker::PhantomData;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use uuid::Uuid;

/// A request as the handler sees it: the call's id and the archived message, validated and
/// read in place in the mapping. Derefs to the archived message.
pub struct Request<'a, T: Message> {
    id: Uuid,
    archived: &'a T::Archived,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message> Request<'_, T> {
    /// The call's UUID (the caller's `Reply::id` is the same).
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The archived message, read in place.
    pub fn archived(&self) -> &T::Archived {
        self.archived
    }
    /// An owned copy of the message.
    pub fn deserialize(&self) -> Result<T> {
        message::deserialize::<T>(self.archived)
    }
}

impl<T: Message> Deref for Request<'_, T> {
    type Target = T::Archived;
    fn deref(&self) -> &T::Archived {
        self.archived
    }
}

impl<T: Message> std::fmt::Debug for Request<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Configures and starts a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    name: String,
    capacity: usize,
    slots: u32,
    workers: usize,
    wait: WaitMode,
    trust: Trust,
    client_share: Option<u32>,
    large_memory: usize,
}

impl ServerBuilder {
    /// Bytes of the mapping's header, tables and slots (default 1 MiB; a multiple of 4096 in
    /// 64 KiB..=256 MiB). Messages that fit a slot travel in it; larger ones in the
    /// large-message memory ([`ServerBuilder::large_memory`]).
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }
    /// Bytes of memory for messages larger than a slot (default 256 MiB, 128 MiB on 32-bit
    /// targets; rounded up to 64 KiB; 0 for none; at most 4 GiB - 64 KiB). One message may
    /// take all of it, so this is also the largest message ([`Server::max_message`]); calls
    /// whose messages do not fit beside the ones in flight wait for room within their timeout.
    /// It costs no memory until large messages use it: it is a hole in the mapping's file.
    pub fn large_memory(mut self, bytes: usize) -> Self {
        self.large_memory = bytes;
        self
    }
    /// Number of slots, i.e. of calls in flight at once (default 32, at most 1024). The slot
    /// size, and so the largest message, follows from the capacity.
    pub fn slots(mut self, n: u32) -> Self {
        self.slots = n;
        self
    }
    /// Most slots one client process takes while callers of other processes wait for one
    /// (default: three quarters of the slots, at least 1; 0 for no limit; otherwise more
    /// than half of the slots, `InvalidConfig` else). A process that
    /// leaks replies or blocks a thread per slot then leaves the rest to the others. Kept by
    /// the clients (a cooperative rule); the server warns about a process over its share.
    pub fn slots_per_client(mut self, n: u32) -> Self {
        self.client_share = Some(n);
        self
    }
    /// Number of worker threads running the handler (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// How idle workers wait for requests (default: spin 50 µs, then park).
    pub fn wait_mode(mut self, mode: WaitMode) -> Self {
        self.wait = mode;
        self
    }

    /// Whether requests are read in place (`Trust::Trusted`, the default) or copied out of the
    /// mapping before validation (`Trust::Untrusted`).
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Starts a request/response server: `handler` returns the reply.
    pub fn serve<Req, Resp, F>(self, handler: F) -> Result<Server>
    where
        Req: Message + 'static,
        Resp: Message + 'static,
        F: Fn(Request<'_, Req>) -> Resp + Send + Sync + 'static,
    {
        self.start(Arc::new(Replying {
            handler,
            types: Types::of::<Req, Resp>(),
            _t: PhantomData::<fn(Req) -> Resp>,
        }))
    }

    /// Starts a request/response server whose handler writes the reply while it still reads
    /// the request: it gets the request and a [`Responder`], and returns what
    /// [`Responder::send`] (or [`Responder::fill`]) returns. A reply made of the request's
    /// bytes ([`AsVec`](crate::AsVec), [`AsString`](crate::AsString)) or computed into shared
    /// memory is then written once, where the caller reads it, with no owned value in between:
    /// for large messages this saves a copy and an allocation per call over [`Self::serve`].
    /// Callers see the same server (`Client<Req, Resp>`).
    ///
    /// The request stays where it is while the reply is written: a large request keeps its
    /// large-message memory until the handler returns (so a call holds both at once), and one
    /// that fits a slot is first copied to the worker's buffer (at most a slot's bytes), since
    /// the reply takes its place.
    ///
    /// ```
    /// use shmrpc::{AsVec, Client, Request, Responder, Server};
    ///
    /// # fn main() -> Result<(), shmrpc::Error> {
    /// # let name = format!("doc-in-place-{}", std::process::id());
    /// let _server = Server::builder(&name).serve_in_place(
    ///     |req: Request<'_, Vec<u8>>, out: Responder<'_, Vec<u8>>| out.send(&AsVec(req.as_slice())),
    /// )?;
    /// let client: Client<Vec<u8>> = Client::connect(&name)?;
    /// let big = vec![7u8; 1 << 20];
    /// assert_eq!(client.request(&big)?.as_slice(), &big[..]);
    /// # Ok(()) }
    /// ```
    pub fn serve_in_place<Req, Resp, F>(self, handler: F) -> Result<Server>
    where
        Req: Message + 'static,
        Resp: Message + 'static,
        F: for<'r, 'o> Fn(Request<'r, Req>, Responder<'o, Resp>) -> Replied<'o>
            + Send
            + Sync
            + 'static,
    {
        let direct = self.trust == Trust::Trusted;
        self.start(Arc::new(InPlace {
            handler,
            types: Types::of::<Req, Resp>(),
            direct,
            _t: PhantomData::<fn(Req) -> Resp>,
        }))
    }

    /// Starts a one-way server: `handler` returns nothing and callers use `Client::send`.
    pub fn serve_oneway<Req, F>(self, handler: F) -> Result<Server>
    where
        Req: Message + 'static,
        F: Fn(Request<'_, Req>) + Send + Sync + 'static,
    {
        self.start(Arc::new(OneWay {
            handler,
            types: Types::of::<Req, ()>(),
            _t: PhantomData::<fn(Req)>,
        }))
    }

    fn start(self, service: Arc<dyn Service>) -> Result<Server> {
        validate_name(&self.name)?;
        let layout = Layout::new(self.capacity, self.slots)?.with_arena(self.large_memory)?;
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(Error::InvalidConfig(format!(
                "worker count {} must be in 1..={MAX_WORKERS}",
                self.workers
            )));
        }
        let n = layout.slot_count;
        let share = self.client_share.unwrap_or((n - n / 4).max(1));
        // More than half: then at most one process can be over its share at a time, and the
        // others may always claim (two processes each over a smaller share, both waiting,
        // could leave free slots idle).
        if share != 0 && (share > n || share <= n / 2) {
            return Err(Error::InvalidConfig(format!(
                "slots per client {share} must be 0 (no limit) or in {}..={n} \
                 (more than half of the {n} slots)",
                n / 2 + 1
            )));
        }
        let lock = NameLock::acquire(&self.name)?;
        let map = Mapping::create(&self.name, layout, &lock)?;
        map.header().client_share.store(share, Ordering::Relaxed);
        map.header()
            .ns_per_tick_q32
            .store(ns_per_tick(), Ordering::Relaxed);
        map.header()
            .server_state
            .store(layout::server_state::RUNNING, Ordering::SeqCst);
        let shared = Arc::new(Shared {
            name: self.name,
            map,
            wait: self.wait,
            trust: self.trust,
            stopping: AtomicU32::new(0),
            stopped: Mutex::new(false),
            stopped_cv: Condvar::new(),
            lock: Mutex::new(Some(lock)),
        });
        let mut workers = Vec::with_capacity(self.workers + 1);
        for w in 0..=self.workers {
            let worker_shared = Arc::clone(&shared);
            let service = Arc::clone(&service);
            let spawned = if w < self.workers {
                std::thread::Builder::new()
                    .name(format!("shmrpc-worker-{w}"))
                    .spawn(move || worker_loop(&worker_shared, &*service, w))
            } else {
                std::thread::Builder::new()
                    .name("shmrpc-reaper".into())
                    .spawn(move || reaper_loop(&worker_shared))
            };
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    let server = Server { shared, workers };
                    drop(server);
                    return Err(Error::io("starting a worker thread", e));
                }
            }
        }
        tracing::info!(
            server = %shared.name,
            pid = std::process::id(),
            capacity = layout.capacity,
            slots = layout.slot_count,
            workers = self.workers,
            "server started"
        );
        Ok(Server { shared, workers })
    }
}

struct Shared {
    name: String,
    map: Mapping,
    wait: WaitMode,
    trust: Trust,
    /// Set (1) when the server stops. Process-local: the mapping's `server_state` tells
    /// clients, but a peer could overwrite that, so the workers do not obey it.
    stopping: AtomicU32,
    stopped: Mutex<bool>,
    stopped_cv: Condvar,
    /// Held until the `Server` drops (a `StopHandle` may outlive it, the name must not).
    lock: Mutex<Option<NameLock>>,
}

impl Shared {
    fn running(&self) -> bool {
        self.stopping.load(Ordering::Acquire) == 0
    }
}

/// A running server. Dropping it stops the workers, wakes every waiting caller with
/// `ServerGone` and removes the name.
///
/// ```
/// use shmrpc::{Client, Request, Server};
///
/// # fn main() -> Result<(), shmrpc::Error> {
/// # let name = format!("doc-server-{}", std::process::id());
/// let server = Server::builder(&name)
///     .workers(2)
///     .serve(|req: Request<'_, String>| format!("{} bytes from call {}", req.len(), req.id()))?;
/// let stop = server.stop_handle();
/// std::thread::spawn(move || {
///     let client: Client<String> = Client::connect(&name).unwrap();
///     println!("{}", client.request(&"hello".to_string()).unwrap().as_str());
///     stop.stop(); // or from a Ctrl-C handler
/// });
/// server.join(); // until stopped; the name is removed
/// # Ok(()) }
/// ```
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.shared.name)
            .field("layout", self.shared.map.layout())
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// Stops a server from another thread (a signal handler's thread, for example).
#[derive(Clone)]
pub struct StopHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl StopHandle {
    /// Stops the server: new and waiting calls get `ServerGone`, workers finish the handler
    /// they are in and exit, and `Server::join` returns.
    pub fn stop(&self) {
        let mut stopped = self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !*stopped {
            *stopped = true;
            tracing::info!(server = %self.shared.name, "server stopping");
            self.shared.stopping.store(1, Ordering::Release);
            protocol::shutdown(&self.shared.map, &Futex);
            self.shared.stopped_cv.notify_all();
        }
    }
}

impl Server {
    /// A builder for a server published under `name`.
    pub fn builder(name: impl Into<String>) -> ServerBuilder {
        ServerBuilder {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
            slots: DEFAULT_SLOTS,
            workers: 1,
            wait: WaitMode::default(),
            trust: Trust::default(),
            client_share: None,
            large_memory: crate::layout::DEFAULT_ARENA,
        }
    }

    /// The name the server is published under.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The largest message (request or reply) one slot carries, in bytes: larger ones go
    /// through the large-message memory.
    pub fn max_payload(&self) -> usize {
        self.shared.map.layout().max_payload()
    }

    /// The largest message (request or reply) this server takes, in bytes: its large-message
    /// memory, or a slot's payload if that is larger.
    pub fn max_message(&self) -> usize {
        self.shared.map.layout().max_message()
    }

    /// A handle that stops this server from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops the server (see [`StopHandle::stop`]).
    pub fn stop(&self) {
        self.stop_handle().stop();
    }

    /// Blocks until the server is stopped (through a [`StopHandle`]), then cleans up.
    pub fn join(self) {
        let mut stopped = self
            .shared
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while !*stopped {
            stopped = self
                .shared
                .stopped_cv
                .wait(stopped)
                .unwrap_or_else(|e| e.into_inner());
        }
        drop(stopped);
        drop(self);
    }

    /// Requests served (handlers run to completion) since start.
    pub fn served(&self) -> u64 {
        self.shared.map.header().served.load(Ordering::Relaxed)
    }

    /// A snapshot of the server's statistics (the same that `StatsView` reads from another
    /// process).
    pub fn stats(&self) -> Stats {
        Stats::read(&self.shared.map, self.shared.running())
    }
}

/// The latency clock's nanoseconds per tick (times 2^32), measured once per process (2 ms).
fn ns_per_tick() -> u64 {
    static CAL: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *CAL.get_or_init(|| clock::calibrate(Duration::from_millis(2)))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.shared.map.unlink(&self.shared.name);
        // Last: a new server may take the name once the lock is gone.
        drop(
            self.shared
                .lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

/// Where this worker runs, recorded in `Header::worker_cpus` when it changes (checked when it
/// goes idle, after a park and every 16 calls; `sched_getcpu` is a vDSO call): a caller that
/// finds itself on the CPU of the only active worker with its call not done naps rather than
/// spins (the worker cannot serve it while the caller holds the CPU). A parked worker clears
/// its bit. A hint only: a stale bit costs a caller a nap, nothing else.
struct WorkerCpu<'m> {
    map: &'m Mapping,
    cpu: usize,
}

impl<'m> WorkerCpu<'m> {
    fn new(map: &'m Mapping) -> Self {
        let mut me = WorkerCpu {
            map,
            cpu: usize::MAX,
        };
        me.note();
        me
    }

    /// The worker parks (or stops): it no longer holds a CPU that callers should leave to it.
    fn leave(&mut self) {
        if self.cpu < 64 {
            // Relaxed: a hint for callers; nothing is published through it.
            self.map
                .header()
                .worker_cpus
                .fetch_and(!(1u64 << self.cpu), Ordering::Relaxed);
        }
        self.cpu = usize::MAX;
    }

    /// Records the CPU this worker runs on (and sets its bit again if another worker that left
    /// the same CPU, or a peer, cleared it).
    fn note(&mut self) {
        let now = crate::sys::current_cpu();
        let cpus = &self.map.header().worker_cpus;
        if now == self.cpu {
            if now < 64 && cpus.load(Ordering::Relaxed) & (1 << now) == 0 {
                cpus.fetch_or(1 << now, Ordering::Relaxed);
            }
            return;
        }
        self.leave();
        if now < 64 {
            cpus.fetch_or(1u64 << now, Ordering::Relaxed);
        }
        self.cpu = now;
    }
}

impl Drop for WorkerCpu<'_> {
    /// Also when the worker unwinds.
    fn drop(&mut self) {
        self.leave();
    }
}

/// The largest request an in-place handler of a trusting server reads from a copy in the
/// worker's buffer rather than from its run (the size of this project's machine type's
/// second-level cache per core, 2 MiB). Measured (`SHMRPC_BENCH_LARGE=5`, an echo): at
/// 256 KiB the round trip went from 1.06x the raw limit to 0.45-0.48x, and at 1 MiB from
/// 1.05x to 0.80x. At 16 MiB the copy would no longer stay in the cache, and holding the run
/// costs nothing extra there. The buffer grows to the largest such request and is kept.
const COPY_LARGE_UP_TO: usize = 2 << 20;

/// How long an idle worker parks before it re-checks the server state.
const WORKER_PARK: Duration = Duration::from_millis(100);

fn worker_loop(shared: &Shared, service: &dyn Service, index: usize) {
    let map = &shared.map;
    // Where this worker's next scan of the ready bitmap starts: after the slot it served last
    // (workers begin on different 64-slot words).
    let words = map.layout().slot_count.div_ceil(64);
    let mut cursor = (index as u32 % words) * 64;
    let spin = match shared.wait {
        WaitMode::Adaptive { spin } => spin,
        WaitMode::Park => Duration::ZERO,
    };
    // Untrusted mode: requests are copied here before validation (reused: no allocation per
    // request once it has grown to the largest request seen).
    let mut mem = WorkerMem::new(map, shared.trust, index);
    let q32 = map.header().ns_per_tick_q32.load(Ordering::Relaxed);
    let mut cpu = WorkerCpu::new(map);
    let mut served: u32 = 0;
    // Clock ticks the last call took to serve, and from how many ticks on a call counts as
    // long (10 µs: shorter ones do not stretch the idle spin).
    let mut last: u64 = 0;
    // (Never in park mode, which does not spin.)
    let long = if spin.is_zero() {
        u64::MAX
    } else {
        clock::ticks_for(Duration::from_micros(10), q32)
    };
    while shared.running() {
        if let Some(slot) = protocol::take_ready(map, cursor) {
            cursor = slot + 1;
            map.prefetch_slot(slot);
            if let Begin::Serve(gen) = protocol::begin_serving(map, &Futex, slot) {
                last = serve_slot(map, service, slot, gen, &mut mem, q32);
                served = served.wrapping_add(1);
                if served.is_multiple_of(16) {
                    cpu.note();
                }
            }
            continue;
        }
        cpu.note();
        // An idle worker waits for callers: always worth spinning for (within its budget).
        // After a long call (a large message) the next request of its caller comes after the
        // caller read the reply and wrote the next request, each about as long as the call:
        // spin for about that long rather than park (see `wait::stretched`).
        let budget = if last > long {
            stretched(spin, 3 * ticks_to_duration(last, q32))
        } else {
            spin
        };
        last = 0;
        if spin_until(budget, &mut || {
            if protocol::any_ready(map) || !shared.running() {
                Poll::Ready
            } else {
                Poll::Busy
            }
        }) {
            continue;
        }
        cpu.leave();
        protocol::worker_park(map, &Futex, Some(WORKER_PARK));
        cpu.note();
    }
}

/// Serves the slot this worker moved to SERVING: a ping at once, anything else through the
/// service; then records the queueing and handler times (off the caller's path: the reply is
/// already published). Returns the clock ticks the call took to serve (0 for a ping).
fn serve_slot(
    map: &Mapping,
    service: &dyn Service,
    slot: u32,
    gen: u32,
    mem: &mut WorkerMem,
    q32: u64,
) -> u64 {
    let taken = clock::ticks();
    let sh = map.slot(slot);
    if sh.kind.load(Ordering::Relaxed) & kind::MASK == kind::PING {
        reply_status(map, slot, gen, status::OK);
        return 0;
    }
    let queued = clock::since_stamp(sh.published.load(Ordering::Relaxed), taken);
    // Per request: compiled to a check of the global level filter unless TRACE is enabled.
    tracing::trace!(slot, "serving a call");
    service.serve(map, slot, gen, mem);
    let took = clock::ticks().wrapping_sub(taken);
    stats::record(map.header(), q32, queued, took);
    took
}

/// Completes the call in `slot` (see `protocol::finish`), then rings the async doorbell if
/// its caller waits through an async helper. Returns `false` if the caller had abandoned it.
fn complete(map: &Mapping, slot: u32, gen: u32, to: u32) -> bool {
    // Read while the slot is still ours: after `finish` it is the client's again.
    let is_async = map.slot(slot).kind.load(Ordering::Relaxed) & kind::ASYNC != 0;
    let done = protocol::finish(map, &Futex, slot, gen, to);
    if done && is_async {
        protocol::ring(map, &Futex);
    }
    done
}

/// The reaper thread: every `SCAN_EVERY`, takes back the slots of dead client processes.
fn reaper_loop(shared: &Shared) {
    let mut reaper = Reaper::new();
    let mut stopped = shared.stopped.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        let reaped = reaper.scan(&shared.map);
        let slots = u64::from(reaped.freed) + u64::from(reaped.abandoned);
        if slots + u64::from(reaped.waits) > 0 {
            tracing::warn!(
                server = %shared.name,
                freed = reaped.freed,
                abandoned = reaped.abandoned,
                waits = reaped.waits,
                "reclaimed the slots and waits of dead client processes"
            );
            shared
                .map
                .header()
                .reclaimed
                .fetch_add(slots, Ordering::Relaxed);
        }
        stopped = shared
            .stopped_cv
            .wait_timeout(stopped, SCAN_EVERY)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Runs the server's code over an arbitrary mapping image (fuzzing): one reaper scan, then up
/// to two passes of take-ready / begin-serving / serve with a `String` echo handler (returning
/// its reply, or in place), or a one-way handler. Returns how many slots were served.
#[doc(hidden)]
pub fn serve_image(map: &Mapping, trust: Trust, oneway: bool, in_place: bool) -> usize {
    let replying = Replying {
        handler: |req: Request<'_, String>| req.as_str().to_owned(),
        types: Types::of::<String, String>(),
        _t: PhantomData::<fn(String) -> String>,
    };
    let one_way = OneWay {
        handler: |req: Request<'_, String>| {
            std::hint::black_box(req.len());
        },
        types: Types::of::<String, ()>(),
        _t: PhantomData::<fn(String)>,
    };
    let placing = InPlace {
        handler: echo_string_in_place,
        types: Types::of::<String, String>(),
        direct: trust == Trust::Trusted,
        _t: PhantomData::<fn(String) -> String>,
    };
    let service: &dyn Service = match (oneway, in_place) {
        (true, _) => &one_way,
        (false, true) => &placing,
        (false, false) => &replying,
    };
    let _ = Reaper::new().scan(map);
    let mut mem = WorkerMem::new(map, trust, 0);
    let mut served = 0;
    for _ in 0..2 * map.layout().slot_count {
        let Some(slot) = protocol::take_ready(map, 0) else {
            break;
        };
        if let Begin::Serve(gen) = protocol::begin_serving(map, &Futex, slot) {
            serve_slot(map, service, slot, gen, &mut mem, 1 << 32);
            served += 1;
        }
    }
    served
}

/// `serve_image`'s in-place handler.
fn echo_string_in_place<'o>(req: Request<'_, String>, out: Responder<'o, String>) -> Replied<'o> {
    out.send(&crate::AsString(req.as_str()))
}

/// Serves one slot that the worker moved to SERVING at `gen`, with the worker's buffers.
trait Service: Send + Sync {
    fn serve(&self, map: &Mapping, slot: u32, gen: u32, mem: &mut WorkerMem);
}

/// What a worker keeps from call to call.
struct WorkerMem {
    /// Untrusted mode: requests are copied here before validation.
    scratch: Option<AlignedVec>,
    /// In-place replies: a request that fits its slot is copied here (the reply takes its
    /// place). Empty until first needed.
    copy: AlignedVec,
    /// This worker's arena record (`arena::hold`): slot count + worker index.
    record: u32,
}

impl WorkerMem {
    /// The buffers of worker `index` of a server on `map` that trusts its callers or not.
    fn new(map: &Mapping, trust: Trust, index: usize) -> WorkerMem {
        WorkerMem {
            scratch: match trust {
                Trust::Trusted => None,
                Trust::Untrusted => Some(AlignedVec::with_capacity(map.layout().max_payload())),
            },
            copy: AlignedVec::new(),
            record: map.layout().slot_count + index as u32,
        }
    }
}

/// A server's request and reply types: their fingerprints, checked against every call's
/// before anything is validated, and their names for a mismatch's reply.
struct Types {
    request: u32,
    reply: u32,
    /// "takes R (n archived bytes) and replies S (m archived bytes)".
    label: String,
}

impl Types {
    fn of<Req: Message, Resp: Message>() -> Types {
        Types {
            request: message::fingerprint::<Req>(),
            reply: message::fingerprint::<Resp>(),
            label: format!(
                "takes {} and replies {}",
                message::type_label::<Req>(),
                message::type_label::<Resp>()
            ),
        }
    }

    /// Whether the call in `slot` (SERVING, ours) has our types: the request's always, the
    /// reply's when the caller waits for one (kind REQUEST). Otherwise answers it with
    /// TYPE_MISMATCH and our types in words.
    fn check(&self, map: &Mapping, slot: u32, gen: u32, kind: u32) -> bool {
        let sh = map.slot(slot);
        let req = sh.req_type.load(Ordering::Relaxed);
        let reply = sh.reply_type.load(Ordering::Relaxed);
        if req == self.request && (kind != kind::REQUEST || reply == self.reply) {
            return true;
        }
        let owner = map.proc_entry(State(sh.state.load(Ordering::Relaxed)).owner());
        tracing::warn!(
            caller_pid = owner.pid.load(Ordering::Relaxed),
            "a call's types do not match the server's (replied TypeMismatch)"
        );
        map.header().bad_messages.fetch_add(1, Ordering::Relaxed);
        // The words go into the payload area: the request's arena run (if any) goes back.
        large::drop_run(map, slot);
        let text = self.label.as_bytes();
        let len = text.len().min(map.layout().max_payload());
        // SAFETY: the slot is SERVING, owned by this worker: its payload area (`max_payload`
        // bytes) is ours to write until we publish; `len` is within it.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), map.payload(slot), len) };
        sh.status.store(status::TYPE_MISMATCH, Ordering::Relaxed);
        sh.reply_len.store(len as u32, Ordering::Relaxed);
        complete(map, slot, gen, State::REPLY);
        false
    }
}

struct Replying<F, Req, Resp> {
    handler: F,
    types: Types,
    _t: PhantomData<fn(Req) -> Resp>,
}

struct InPlace<F, Req, Resp> {
    handler: F,
    types: Types,
    /// Whether `Responder::fill` writes straight into shared memory (a trusting server).
    direct: bool,
    _t: PhantomData<fn(Req) -> Resp>,
}

struct OneWay<F, Req> {
    handler: F,
    types: Types,
    _t: PhantomData<fn(Req)>,
}

/// Reads the request in `slot` (which this worker holds in SERVING): its kind, id and
/// validated archive (in place, or in `scratch` when untrusted), or the status to reply with.
fn read_request<'a, T: Message>(
    map: &'a Mapping,
    slot: u32,
    scratch: Option<&'a mut AlignedVec>,
) -> (u32, Uuid, Result<&'a T::Archived, u32>) {
    let sh = map.slot(slot);
    let (flags, len) = (
        sh.kind.load(Ordering::Relaxed),
        sh.req_len.load(Ordering::Relaxed),
    );
    // The payload area, or the arena run the slot records (inside the arena: checked).
    let (area, room) = map.message_area(slot, len as usize);
    read_request_in::<T>(map, slot, (flags, len as usize), area, room, scratch)
}

/// [`read_request`] from the `room` bytes at `area`: the slot's payload area or an arena run
/// (inside the arena) that this worker owns through the slot or its own record. `flags` and
/// `len` are the slot's `kind` and `req_len` words as the caller read them, once, to choose
/// `area`: read again, a peer could change them in between (a length that chose a copy, then
/// one that reads the payload area in place, where the reply goes).
fn read_request_in<'a, T: Message>(
    map: &'a Mapping,
    slot: u32,
    (flags, len): (u32, usize),
    area: *mut u8,
    room: usize,
    scratch: Option<&'a mut AlignedVec>,
) -> (u32, Uuid, Result<&'a T::Archived, u32>) {
    let sh = map.slot(slot);
    let kind = flags & kind::MASK;
    let id = Uuid::from_u64_pair(
        sh.call_id[0].load(Ordering::Relaxed),
        sh.call_id[1].load(Ordering::Relaxed),
    );
    if len > room {
        return (kind, id, Err(status::BAD_MESSAGE));
    }
    let bytes: &[u8] = match scratch {
        Some(buf) => {
            // SAFETY: `len <= room`, so the range is inside this slot's payload area or run,
            // which starts 64-byte aligned.
            unsafe { copy_out(area, len, buf) };
            if flags & kind::CHECKED != 0 && checksum(buf) != sh.req_sum.load(Ordering::Relaxed) {
                return (kind, id, Err(status::BAD_MESSAGE));
            }
            buf.as_slice()
        }
        // SAFETY: the slot is SERVING, owned by this worker: the client wrote these bytes
        // before its Release publication (acquired in `begin_serving`) and, following the
        // protocol, writes nothing until it gets the slot back (nor does anyone to its run,
        // which is the slot's, or this worker's record's); `len` is within the area.
        None => unsafe { std::slice::from_raw_parts(area, len) },
    };
    (
        kind,
        id,
        message::access::<T>(bytes).map_err(|_| status::BAD_MESSAGE),
    )
}

/// Publishes a reply with `status` and no payload.
fn reply_status(map: &Mapping, slot: u32, gen: u32, st: u32) {
    // No payload: the request's arena run (if any) goes back now, not with the slot.
    large::drop_run(map, slot);
    let sh = map.slot(slot);
    sh.status.store(st, Ordering::Relaxed);
    sh.reply_len.store(0, Ordering::Relaxed);
    complete(map, slot, gen, State::REPLY);
}

/// One-way: accept first (the sender returns), then run the handler on the bytes still in the
/// slot, which stays this worker's (ACCEPTED) until it frees it. A message whose sender gave up
/// meanwhile is dropped unrun: that sender was told it timed out.
fn accept_then_run(map: &Mapping, slot: u32, gen: u32, run: impl FnOnce()) {
    map.slot(slot).status.store(status::OK, Ordering::Relaxed);
    if !complete(map, slot, gen, State::ACCEPTED) {
        return;
    }
    if catch_unwind(AssertUnwindSafe(run)).is_err() {
        tracing::error!("a one-way handler panicked; the server goes on serving");
        map.header().panics.fetch_add(1, Ordering::Relaxed);
    } else {
        map.header().served.fetch_add(1, Ordering::Relaxed);
    }
    let _ = protocol::release(map, &Futex, slot, State::new(State::ACCEPTED, gen));
}

/// The kind (`layout::kind`, without flags) of the call in `slot`.
fn kind_of(map: &Mapping, slot: u32) -> u32 {
    map.slot(slot).kind.load(Ordering::Relaxed) & kind::MASK
}

fn count_bad(map: &Mapping) {
    tracing::warn!("a request did not validate as the server's request type (replied BadMessage)");
    map.header().bad_messages.fetch_add(1, Ordering::Relaxed);
}

impl<F, Req, Resp> Service for Replying<F, Req, Resp>
where
    Req: Message,
    Resp: Message,
    F: Fn(Request<'_, Req>) -> Resp + Send + Sync,
{
    fn serve(&self, map: &Mapping, slot: u32, gen: u32, mem: &mut WorkerMem) {
        if !self.types.check(map, slot, gen, kind_of(map, slot)) {
            return;
        }
        let (kind, id, archived) = read_request::<Req>(map, slot, mem.scratch.as_mut());
        let archived = match archived {
            Ok(a) => a,
            Err(st) => {
                count_bad(map);
                return reply_status(map, slot, gen, st);
            }
        };
        let request = Request {
            id,
            archived,
            _t: PhantomData,
        };
        if kind == kind::ONEWAY {
            // A one-way message to a replying server: accept it, run the handler, drop the
            // reply, then free the slot (the sender is no longer waiting).
            return accept_then_run(map, slot, gen, || drop((self.handler)(request)));
        }
        let sh = map.slot(slot);
        let checked = sh.kind.load(Ordering::Relaxed) & kind::CHECKED != 0;
        // The reply is serialized where the handler made it, inside the unwind guard: no move
        // of a large reply out of the closure, and a panicking `Serialize` impl is reported
        // like a panicking handler instead of taking the worker down.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let reply = (self.handler)(request);
            // SAFETY: the slot is SERVING, owned by this worker; the request archive is no
            // longer borrowed (the handler took the request by value and returned an owned
            // reply), so its payload area and arena run are free to overwrite.
            unsafe { large::serialize_reply(map, slot, &reply, checked, None) }
        }));
        let Ok(written) = outcome else {
            return handler_panicked(map, slot, gen, id);
        };
        publish_reply(map, slot, gen, checked, written);
    }
}

/// Reports a handler that panicked on call `id` (logged, counted) and replies HANDLER_PANICKED.
#[cold]
fn handler_panicked(map: &Mapping, slot: u32, gen: u32, id: Uuid) {
    tracing::error!(call = %id, "the handler panicked; the server goes on serving");
    map.header().panics.fetch_add(1, Ordering::Relaxed);
    reply_status(map, slot, gen, status::HANDLER_PANICKED);
}

/// Publishes the reply a worker wrote (or why it could not): its status, length and checksum.
#[inline(always)]
fn publish_reply(map: &Mapping, slot: u32, gen: u32, checked: bool, written: Result<(usize, u32)>) {
    let sh = map.slot(slot);
    match written {
        Ok((len, sum)) => {
            if checked {
                sh.reply_sum.store(sum, Ordering::Relaxed);
            }
            sh.status.store(status::OK, Ordering::Relaxed);
            sh.reply_len.store(len as u32, Ordering::Relaxed);
        }
        // Too large for the arena, or no room in it for `large::WORKER_WAIT`.
        Err(Error::PayloadTooLarge { len, .. }) => {
            sh.status.store(status::REPLY_TOO_LARGE, Ordering::Relaxed);
            sh.reply_len
                .store(u32::try_from(len).unwrap_or(u32::MAX), Ordering::Relaxed);
        }
        // No memory behind the run the reply was to go to (`Mapping::reserve`).
        Err(e @ Error::Io { .. }) => {
            tracing::warn!(error = %e, "no memory for a reply (replied NoMemory)");
            sh.status.store(status::NO_MEMORY, Ordering::Relaxed);
            sh.reply_len.store(0, Ordering::Relaxed);
        }
        Err(_) => {
            sh.status.store(status::BAD_MESSAGE, Ordering::Relaxed);
            sh.reply_len.store(0, Ordering::Relaxed);
        }
    }
    complete(map, slot, gen, State::REPLY);
    // Counted after the reply is out, like the histograms: off the caller's path.
    map.header().served.fetch_add(1, Ordering::Relaxed);
}

impl<F, Req, Resp> Service for InPlace<F, Req, Resp>
where
    Req: Message,
    Resp: Message,
    F: for<'r, 'o> Fn(Request<'r, Req>, Responder<'o, Resp>) -> Replied<'o> + Send + Sync,
{
    fn serve(&self, map: &Mapping, slot: u32, gen: u32, mem: &mut WorkerMem) {
        let layout = map.layout();
        let sh = map.slot(slot);
        // Read once: where the request is read from depends on them (`read_request_in`).
        let flags = sh.kind.load(Ordering::Relaxed);
        let len = sh.req_len.load(Ordering::Relaxed) as usize;
        let kind = flags & kind::MASK;
        if !self.types.check(map, slot, gen, kind) {
            return;
        }
        let checked = flags & kind::CHECKED != 0;
        let WorkerMem {
            scratch,
            copy,
            record,
        } = mem;
        let record = *record;
        // Where the request is read from while the reply is written, and the worker's record
        // if it holds the request's run for the reply to reuse.
        let large = len > layout.max_payload();
        let mut held = None;
        let (area, room, buf) = if kind == kind::ONEWAY || (large && scratch.is_some()) {
            // No reply to write, or untrusted (copied out; its run goes back when the reply
            // is written): read where it is, as `Replying` does.
            let (area, room) = map.message_area(slot, len);
            (area, room, scratch.as_mut())
        } else if !large {
            // The reply takes the payload area: the request is copied out first.
            let buf = match scratch {
                Some(s) => s,
                None => copy,
            };
            (map.payload(slot), layout.max_payload(), Some(buf))
        } else if len <= COPY_LARGE_UP_TO {
            // Trusted, and small enough to stay in this core's cache: copied to the worker's
            // buffer, its run kept in the worker's record for the reply to reuse (the first
            // free run, to the reply's allocation): lines this worker has just read, which it
            // then writes without fetching them again. Read in place, the request would keep
            // its run and the reply would go to lines the caller last read, one more transfer
            // per line (BENCHMARKS.md: 2x at 256 KiB). Given back instead, the run could go
            // to a queued request while the handler runs, leaving no room for this reply
            // (DESIGN.md section 4b, "Room for replies").
            let (area, room) = map.message_area(slot, len);
            if len <= room {
                copy.clear();
                // SAFETY: the slot is SERVING, owned by this worker: the client wrote these
                // bytes before its Release publication (acquired in `begin_serving`) and,
                // following the protocol (a trusted peer), writes nothing until it gets the
                // slot back; `len` is within the slot's run.
                copy.extend_from_slice(unsafe { std::slice::from_raw_parts(area, len) });
                held = arena::hold(map, slot, record).map(|_| record);
                (copy.as_mut_ptr(), len, None)
            } else {
                // A run too short for the length: `read_request_in` says BadMessage.
                (area, room, None)
            }
        } else {
            // Read in place from its run, which moves to this worker's record so that the
            // reply may take the slot's (a run outside the arena: too short, BadMessage).
            match arena::hold(map, slot, record) {
                Some(run) if run.within(layout.arena_chunks) => {
                    (map.arena_run(run), run.bytes(), None)
                }
                _ => (map.payload(slot), layout.max_payload(), None),
            }
        };
        let (kind, id, archived) = read_request_in::<Req>(map, slot, (flags, len), area, room, buf);
        let archived = match archived {
            Ok(a) => a,
            Err(st) => {
                count_bad(map);
                large::drop_run(map, record);
                return reply_status(map, slot, gen, st);
            }
        };
        let request = Request {
            id,
            archived,
            _t: PhantomData,
        };
        let mut written = None;
        let responder = Responder {
            map,
            slot,
            checked,
            discard: kind == kind::ONEWAY,
            direct: self.direct,
            held,
            written: &mut written,
            _t: PhantomData,
        };
        if kind == kind::ONEWAY {
            return accept_then_run(map, slot, gen, || {
                let _ = (self.handler)(request, responder);
            });
        }
        // The reply is written inside the unwind guard, as `Replying`'s.
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _ = (self.handler)(request, responder);
        }));
        // The request is done with: its run (if it was held) goes back.
        large::drop_run(map, record);
        let (Ok(()), Some(written)) = (outcome, written) else {
            return handler_panicked(map, slot, gen, id);
        };
        publish_reply(map, slot, gen, checked, written);
    }
}

impl<F, Req> Service for OneWay<F, Req>
where
    Req: Message,
    F: Fn(Request<'_, Req>) + Send + Sync,
{
    fn serve(&self, map: &Mapping, slot: u32, gen: u32, mem: &mut WorkerMem) {
        let kind = kind_of(map, slot);
        if kind != kind::ONEWAY {
            return reply_status(map, slot, gen, status::WRONG_KIND);
        }
        if !self.types.check(map, slot, gen, kind) {
            return;
        }
        let (_, id, archived) = read_request::<Req>(map, slot, mem.scratch.as_mut());
        let archived = match archived {
            Ok(a) => a,
            Err(st) => {
                count_bad(map);
                return reply_status(map, slot, gen, st);
            }
        };
        let request = Request {
            id,
            archived,
            _t: PhantomData,
        };
        accept_then_run(map, slot, gen, || (self.handler)(request));
    }
}
