//! The bridge: one local server exposed under one Zenoh key.

use crate::wire::{Code, Failure, Header, Kind};
use crate::{exact_key, transport, Error, Result};
use shmrpc::raw::{RawCall, RawClient, RawDone, RawKind, RawPending};
use shmrpc::{Client, Trust};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use zenoh::query::{Query, Queryable};
use zenoh::{Config, Session, Wait};

/// Forwarding threads of a bridge unless [`BridgeBuilder::workers`] says otherwise.
pub const DEFAULT_WORKERS: usize = 16;
/// Longest a forwarded call may take, whatever time its caller gives it, unless
/// [`BridgeBuilder::max_timeout`] says otherwise.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Queries waiting for a forwarding thread, per thread, before the bridge answers `Busy`.
const QUEUE_PER_WORKER: usize = 64;
/// How long Zenoh's callback waits for a call it started itself, unless
/// [`BridgeBuilder::inline_wait`] says otherwise.
pub const DEFAULT_INLINE_WAIT: Duration = Duration::from_micros(200);
/// The longest [`BridgeBuilder::inline_wait`] may be (1 s).
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(1);
/// The largest request Zenoh's callback makes a call of itself, and the largest reply it sends
/// itself: copying more would take about as long as the inline wait by itself (a few GB/s
/// here), so a forwarding thread does it.
const INLINE_MAX_BYTES: usize = 1 << 20;

/// Configures a [`Bridge`].
#[derive(Debug)]
pub struct BridgeBuilder {
    name: String,
    key: Option<String>,
    workers: usize,
    max_timeout: Duration,
    inline_wait: Duration,
    trust: Trust,
    session: Option<Session>,
    config: Option<Config>,
}

impl BridgeBuilder {
    /// Whether the bridge trusts the local server's mapping (default [`Trust::Trusted`], as a
    /// client): trusted, it copies each reply straight from the slot into the Zenoh reply;
    /// untrusting, it first copies it out and checks the server's checksum (about twice the
    /// time per byte of the reply: BENCHMARKS.md). The remote caller validates the
    /// reply either way.
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// The key expression to expose the server under (default: [`crate::default_key`]).
    /// Exactly one key: no wildcards.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Forwarding threads: how many calls the bridge carries at once (default 16). Each blocks
    /// in its call's slot until the reply; more calls wait in a queue (64 per thread), beyond
    /// which a call gets `Busy` at once.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// How long Zenoh's callback may wait for a call it makes itself (default 200 µs, at
    /// most 1 s; zero: never). When a call arrives while the bridge carries no
    /// other, the callback makes it at once instead of waking a forwarding thread (a thread
    /// wake-up saved per call, and the reply sent from Zenoh's own thread: BENCHMARKS.md). If
    /// the server has not answered within this wait (counted from the query's arrival, the
    /// wait for a slot or for large-message memory included), a forwarding thread takes the
    /// call over, and the callback returns. Requests and replies over 1 MiB and pings are
    /// always a thread's. So Zenoh's receive path is held up by at most about this long per
    /// call (plus writing a request of at most 1 MiB), and only while calls come one at a
    /// time.
    pub fn inline_wait(mut self, wait: Duration) -> Self {
        self.inline_wait = wait;
        self
    }

    /// The longest a forwarded call may take, whatever time its caller allows (default 300 s).
    pub fn max_timeout(mut self, t: Duration) -> Self {
        self.max_timeout = t;
        self
    }

    /// The Zenoh session to expose the server on (default: one opened with
    /// [`BridgeBuilder::config`]'s configuration).
    pub fn session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }

    /// The configuration of the bridge's own session (default: Zenoh's default configuration,
    /// a peer that scouts by multicast); ignored with [`BridgeBuilder::session`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Connects to the local server and starts exposing it. Fails with
    /// `Local(NotFound)` if no server of that name runs here: a bridge exposes only a server
    /// that it was asked to expose and found.
    pub fn start(self) -> Result<Bridge> {
        if !(1..=1024).contains(&self.workers) {
            return Err(Error::InvalidConfig(format!(
                "workers must be 1..=1024, not {}",
                self.workers
            )));
        }
        if self.inline_wait > MAX_INLINE_WAIT {
            return Err(Error::InvalidConfig(format!(
                "the inline wait must be at most {MAX_INLINE_WAIT:?}, not {:?}",
                self.inline_wait
            )));
        }
        let key = match self.key {
            Some(k) => k,
            None => crate::default_key(&self.name)?,
        };
        let ke = exact_key(&key)?;
        let raw = RawClient::with(Client::builder(&self.name).trust(self.trust))?;
        let session = match self.session {
            Some(s) => s,
            None => crate::open(self.config.unwrap_or_default())?,
        };
        let shared = Arc::new(Shared {
            raw,
            key: key.clone(),
            max_timeout: self.max_timeout,
            inline_wait: self.inline_wait,
            forwarded: AtomicU64::new(0),
            inline: AtomicU64::new(0),
            carried: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            max_queued: self.workers * QUEUE_PER_WORKER,
        });
        // Unbounded: `Shared::queued` bounds the queries in it, and the other jobs (a call
        // already published, at most one at a time) are never refused.
        let (tx, rx) = flume::unbounded::<Job>();
        let stop = tx.clone();
        let on_query = Arc::clone(&shared);
        let queryable = session
            .declare_queryable(ke)
            // Complete: it answers every call on its key, so a caller's BestMatching target
            // picks one such bridge instead of querying them all.
            .complete(true)
            .callback(move |query| on_query.take(query, &tx))
            .wait()
            .map_err(|e| transport(&format!("cannot declare a queryable on {key:?}"), e))?;
        let threads = (0..self.workers)
            .map(|i| {
                let (rx, shared) = (rx.clone(), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("shmrpc-bridge-{i}"))
                    .spawn(move || loop {
                        match rx.recv() {
                            Ok(Job::Stop) | Err(_) => break,
                            Ok(job) => shared.run(job),
                        }
                    })
                    .map_err(|e| Error::InvalidConfig(format!("cannot start a thread: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(server = %self.name, key = %key, workers = self.workers, "bridge started");
        Ok(Bridge {
            name: self.name,
            shared,
            queryable: Some(queryable),
            stop,
            rest: rx,
            threads,
            session,
        })
    }
}

/// What Zenoh's callback hands the forwarding threads.
enum Job {
    /// A query to forward, and when the bridge took it (its time counts from then).
    Query(Query, Instant),
    /// A query whose call the callback published and did not see answered in time.
    Pending(Query, RawPending),
    /// A query whose call the callback made, with a reply too large to send from there.
    Reply(Query, RawDone),
    /// Ends the thread that takes it (`Bridge::drop`).
    Stop,
}

/// What Zenoh's callback and the forwarding threads share.
struct Shared {
    raw: RawClient,
    key: String,
    max_timeout: Duration,
    inline_wait: Duration,
    forwarded: AtomicU64,
    /// Calls answered by Zenoh's callback itself.
    inline: AtomicU64,
    /// Queries taken and not yet answered.
    carried: AtomicUsize,
    /// Queries waiting in the queue for a thread, at most `max_queued` (then `Busy`).
    queued: AtomicUsize,
    max_queued: usize,
}

/// A query's call, decoded and checked: its header, its archive in the pieces Zenoh received
/// it in (a large message arrives in fragments: the slot takes them one after the other,
/// without a join), and its time, capped.
struct Decoded<'q> {
    header: Header,
    archive: Vec<&'q [u8]>,
    timeout: Duration,
}

impl Decoded<'_> {
    fn call(&self) -> RawCall<'_> {
        RawCall {
            archive: &self.archive,
            request_type: self.header.request_type,
            reply_type: self.header.reply_type,
            id: self.header.id,
        }
    }
}

/// What the bridge sends back for a call that ended: the reply's archive, or nothing for a
/// one-way message.
fn done_bytes(done: RawDone) -> Vec<u8> {
    match done {
        RawDone::Reply(reply) => reply.bytes().to_vec(),
        RawDone::Accepted => Vec::new(),
    }
}

impl Shared {
    /// Zenoh's callback: a query arrives. With no other call in the bridge, the call is made
    /// here for up to `inline_wait` (see [`BridgeBuilder::inline_wait`]); otherwise, or if it
    /// takes longer, a forwarding thread carries it.
    fn take(&self, query: Query, tx: &flume::Sender<Job>) {
        let taken = Instant::now();
        let alone = self.carried.fetch_add(1, Ordering::AcqRel) == 0;
        let job = if alone && !self.inline_wait.is_zero() {
            match self.start(query, taken) {
                Some(job) => job,
                None => return,
            }
        } else {
            Job::Query(query, taken)
        };
        match job {
            Job::Query(query, taken) => self.enqueue(query, taken, tx),
            // A call already made or under way is never refused (nor answered `Busy`, which
            // would ask its caller to make it again).
            job => {
                if let Err(e) = tx.send(job) {
                    // The threads are gone (the bridge is being dropped): finish it here.
                    self.run(e.into_inner());
                }
            }
        }
    }

    /// Queues a query for a thread, or answers `Busy` if the queue is full.
    fn enqueue(&self, query: Query, taken: Instant, tx: &flume::Sender<Job>) {
        if self.queued.fetch_add(1, Ordering::AcqRel) < self.max_queued {
            match tx.send(Job::Query(query, taken)) {
                Ok(()) => return,
                Err(e) => {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    if let Job::Query(query, _) = e.into_inner() {
                        let f = Failure::new(
                            Code::Busy,
                            format!("the bridge of {:?} is stopping", self.key),
                        );
                        self.answer(&query, Err(f));
                    }
                    return;
                }
            }
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        let busy = Failure::new(
            Code::Busy,
            format!("the bridge of {:?} has a full queue of calls", self.key),
        );
        self.answer(&query, Err(busy));
    }

    /// A forwarding thread's work on one job.
    fn run(&self, job: Job) {
        match job {
            Job::Query(query, taken) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.forward(query, taken);
            }
            Job::Pending(query, pending) => {
                let outcome = pending.wait().map(done_bytes);
                self.answer(&query, outcome.map_err(|e| Failure::of(&e)));
            }
            Job::Reply(query, done) => self.answer(&query, Ok(done_bytes(done))),
            Job::Stop => {}
        }
    }

    /// Starts a query's call in Zenoh's callback and answers it if it ends within
    /// `inline_wait` of `taken`; else the job that carries it on (`None`: answered).
    fn start(&self, query: Query, taken: Instant) -> Option<Job> {
        let Some(until) = taken.checked_add(self.inline_wait) else {
            return Some(Job::Query(query, taken));
        };
        let decoded = match self.decode(&query) {
            Ok(decoded) => decoded,
            Err(f) => {
                self.answer_here(&query, Err(f));
                return None;
            }
        };
        let len: usize = decoded.archive.iter().map(|piece| piece.len()).sum();
        let kind = match decoded.header.kind {
            _ if len > INLINE_MAX_BYTES => None,
            Kind::Request => Some(RawKind::Request),
            Kind::OneWay => Some(RawKind::OneWay),
            // `RawClient::publish` makes requests and one-way messages; pings are rare.
            Kind::Ping => None,
        };
        let Some(kind) = kind else {
            drop(decoded);
            return Some(Job::Query(query, taken));
        };
        let first = Some(until.saturating_duration_since(Instant::now()));
        let pending = match self
            .raw
            .publish(&decoded.call(), kind, decoded.timeout, first)
        {
            Ok(Some(pending)) => pending,
            // No slot or no room in time: a thread waits for it.
            Ok(None) => {
                drop(decoded);
                return Some(Job::Query(query, taken));
            }
            Err(e) => {
                self.answer_here(&query, Err(Failure::of(&e)));
                return None;
            }
        };
        drop(decoded);
        match pending.wait_until(until) {
            Ok(Ok(RawDone::Reply(reply))) if reply.bytes().len() > INLINE_MAX_BYTES => {
                Some(Job::Reply(query, RawDone::Reply(reply)))
            }
            Ok(outcome) => {
                let outcome = outcome.map(done_bytes);
                self.answer_here(&query, outcome.map_err(|e| Failure::of(&e)));
                None
            }
            Err(pending) => Some(Job::Pending(query, pending)),
        }
    }

    /// Answers a query from Zenoh's callback (counted in `inline`).
    fn answer_here(&self, query: &Query, outcome: std::result::Result<Vec<u8>, Failure>) {
        self.inline.fetch_add(1, Ordering::Relaxed);
        self.answer(query, outcome);
    }

    /// Forwards one query, taken at `taken`, to the local server and answers it.
    fn forward(&self, query: Query, taken: Instant) {
        let outcome = self.call(&query, taken);
        self.answer(&query, outcome);
    }

    /// Answers a query taken (and counts it as answered).
    fn answer(&self, query: &Query, outcome: std::result::Result<Vec<u8>, Failure>) {
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        // No longer carried once its answer is ready: a call that arrives as soon as its
        // caller has this answer finds the bridge idle.
        self.carried.fetch_sub(1, Ordering::AcqRel);
        let sent = match outcome {
            Ok(reply) => query.reply(query.key_expr().clone(), reply).wait(),
            Err(f) => query.reply_err(f.encode()).wait(),
        };
        if let Err(e) = sent {
            tracing::debug!(key = %self.key, "could not answer a call: {e}");
        }
    }

    /// The call a query asks for, decoded, with the server's bound enforced.
    fn decode<'q>(&self, query: &'q Query) -> std::result::Result<Decoded<'q>, Failure> {
        let header = query
            .attachment()
            .ok_or_else(|| Failure::new(Code::BadCall, "the call has no shmrpc header"))
            .and_then(|a| {
                Header::decode(&a.to_bytes()).map_err(|why| Failure::new(Code::BadCall, why))
            })?;
        let archive: Vec<&[u8]> = query
            .payload()
            .map_or_else(Vec::new, |p| p.slices().collect());
        let len: usize = archive.iter().map(|piece| piece.len()).sum();
        let max = self.raw.max_message();
        if len > max {
            // The server's bound, enforced here: nothing that large reaches the mapping.
            return Err(Failure::of(&shmrpc::Error::PayloadTooLarge { len, max }));
        }
        let timeout = header.timeout.min(self.max_timeout);
        Ok(Decoded {
            header,
            archive,
            timeout,
        })
    }

    /// The local call a query taken at `taken` asks for: the reply's archive (empty for a
    /// one-way message or a ping), or why it failed. Its time counts from `taken`.
    fn call(&self, query: &Query, taken: Instant) -> std::result::Result<Vec<u8>, Failure> {
        let decoded = self.decode(query)?;
        let timeout = decoded.timeout.saturating_sub(taken.elapsed());
        let call = decoded.call();
        let failed = |e: shmrpc::Error| Failure::of(&e);
        match decoded.header.kind {
            Kind::Request => {
                let reply = self.raw.request(&call, timeout).map_err(failed)?;
                Ok(reply.bytes().to_vec())
            }
            Kind::OneWay => self
                .raw
                .send(&call, timeout)
                .map(|()| Vec::new())
                .map_err(failed),
            Kind::Ping => self.raw.ping(timeout).map(|_| Vec::new()).map_err(failed),
        }
    }
}

/// A local server exposed to other hosts under a Zenoh key (see the crate documentation).
/// Dropping it stops exposing the server: calls already taken are answered first.
pub struct Bridge {
    name: String,
    shared: Arc<Shared>,
    queryable: Option<Queryable<()>>,
    stop: flume::Sender<Job>,
    /// The queue's receiving end, for what a callback still running queued after the threads
    /// ended.
    rest: flume::Receiver<Job>,
    threads: Vec<JoinHandle<()>>,
    session: Session,
}

impl Bridge {
    /// A builder for a bridge to the local server `name`.
    pub fn builder(name: impl Into<String>) -> BridgeBuilder {
        BridgeBuilder {
            name: name.into(),
            key: None,
            workers: DEFAULT_WORKERS,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            inline_wait: DEFAULT_INLINE_WAIT,
            trust: Trust::Trusted,
            session: None,
            config: None,
        }
    }

    /// The local server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key expression the server is exposed under.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Calls answered so far (successes and failures).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Of [`Bridge::forwarded`], the calls that Zenoh's callback answered itself (see
    /// [`BridgeBuilder::inline_wait`]), failures included.
    pub fn answered_inline(&self) -> u64 {
        self.shared.inline.load(Ordering::Relaxed)
    }

    /// The Zenoh session the bridge runs on.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // No new calls; the threads answer what is queued, then each takes one `Stop` and
        // ends.
        if let Some(q) = self.queryable.take() {
            let _ = q.undeclare().wait();
        }
        for _ in &self.threads {
            let _ = self.stop.send(Job::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // A callback that was running as the queryable went away may have queued a job after
        // the last `Stop`: answer it here.
        while let Ok(job) = self.rest.try_recv() {
            self.shared.run(job);
        }
        tracing::info!(key = %self.shared.key, "bridge stopped");
    }
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("name", &self.name)
            .field("key", &self.shared.key)
            .field("workers", &self.threads.len())
            .finish_non_exhaustive()
    }
}
