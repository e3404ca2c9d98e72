//! The client: a cheap, cloneable handle on a server's mapping.

use crate::clock;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::large;
use crate::layout::{checksum, kind, status};
use crate::message::{self, Message};
use crate::protocol::{self, State, WaitError};
use crate::shm::{validate_name, Futex, Mapping};
use crate::sync::{AtomicPtr, Ordering};
use crate::trust::{copy_out, Trust};
use crate::wait::{far_future, CallWait, Deadline, WaitMode};
use arc_swap::ArcSwap;
use rkyv::util::AlignedVec;
use std::cell::Cell;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The timeout of `request` and `send` unless the builder sets another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One mapping per server name per process, shared by every client handle of that name.
/// Locked only by `connect`, never on the call path.
static MAPPINGS: Mutex<Option<HashMap<String, Weak<Connection>>>> = Mutex::new(None);

thread_local! {
    /// The slot this thread used last: claims start there, so a thread usually finds its own
    /// slot free and does not contend with others on the same word.
    static SLOT_HINT: Cell<u32> = const { Cell::new(0) };
}

fn shared_mapping(name: &str) -> Result<Arc<Connection>> {
    let mut guard = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
    let maps = guard.get_or_insert_with(HashMap::new);
    if let Some(map) = maps.get(name).and_then(Weak::upgrade) {
        // Something in this process still holds the mapping (another handle, a `Reply`, an
        // async helper): reuse it only if its server still runs and still owns the name (a
        // server killed by SIGKILL cannot mark its mapping stopped; a restarted one made a new
        // mapping).
        if !map.known_gone() && map.is_current(name) && map.server_alive() {
            return Ok(map);
        }
    }
    let map = Arc::new(Connection::open(name)?);
    maps.retain(|_, w| w.strong_count() > 0);
    maps.insert(name.to_owned(), Arc::downgrade(&map));
    Ok(map)
}

/// Configures a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    name: String,
    timeout: Duration,
    wait: WaitMode,
    trust: Trust,
}

impl ClientBuilder {
    /// The timeout of `request` and `send` (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
    /// How a call waits for its reply (default: spin 50 µs, then park).
    pub fn wait_mode(mut self, mode: WaitMode) -> Self {
        self.wait = mode;
        self
    }
    /// Whether replies are read in place (`Trust::Trusted`, the default) or copied out of the
    /// mapping before validation (`Trust::Untrusted`; one buffer per reply).
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }
    /// Connects with request type `Req` and reply type `Resp`.
    pub fn connect<Req: Message, Resp: Message>(self) -> Result<Client<Req, Resp>> {
        validate_name(&self.name)?;
        let map = shared_mapping(&self.name)?;
        tracing::debug!(server = %self.name, "client connected");
        Ok(Client {
            inner: Arc::new(Inner {
                name: self.name,
                req_type: message::fingerprint::<Req>(),
                reply_type: message::fingerprint::<Resp>(),
                types: (message::type_label::<Req>(), message::type_label::<Resp>()),
                current: AtomicPtr::new(Arc::as_ptr(&map).cast_mut()),
                retained: Mutex::new(vec![Arc::clone(&map)]),
                map: ArcSwap::new(map),
                timeout: self.timeout,
                wait: self.wait,
                trust: self.trust,
            }),
            _t: PhantomData,
        })
    }
}

#[derive(Debug)]
struct Inner {
    name: String,
    /// The current server's mapping; replaced when that server is gone and a new one runs.
    /// The async path takes its `Arc`s from here.
    map: ArcSwap<Connection>,
    /// The same mapping as a plain pointer into `retained`, for the blocking path: a call
    /// borrows it with one load, with no reference-count or hazard-slot traffic (an arc-swap
    /// guard costs ~12 ns here, two locked instructions on this thread's debt slot).
    current: AtomicPtr<Connection>,
    /// Every mapping `current` has pointed to, kept until the last clone of the handle drops,
    /// so that a mapping a call or a `Reply` borrowed stays mapped after a reconnect swapped
    /// `current`: one per server restart that this handle lived through (each keeps its dead
    /// server's mapping, which the restart unlinked, in memory until then).
    retained: Mutex<Vec<Arc<Connection>>>,
    timeout: Duration,
    wait: WaitMode,
    trust: Trust,
    /// Type fingerprints of `Req` and `Resp` (`message::fingerprint`), sent with each call.
    req_type: u32,
    reply_type: u32,
    /// `Req` and `Resp` in words, for `TypeMismatch`.
    types: (String, String),
}

/// A handle on the server `name`, sending `Req` and receiving `Resp` (by default the same
/// type). Cheap to create and to clone; `Send + Sync`; any number of threads may call through
/// one handle at once, each call in its own slot.
///
/// ```
/// use shmrpc::{Client, Error, Request, Server};
/// use std::time::Duration;
///
/// # fn main() -> Result<(), Error> {
/// # let name = format!("doc-client-{}", std::process::id());
/// let _server = Server::builder(&name).serve(|req: Request<'_, u64>| req.to_native() + 1)?;
///
/// let client: Client<u64> = Client::connect(&name)?; // same type both ways
/// assert_eq!(*client.request(&41)?, 42);
///
/// let typed = Client::builder(&name) // a timeout, other types, a wait mode, a trust mode
///     .timeout(Duration::from_secs(1))
///     .connect::<u64, u64>()?;
/// assert_eq!(*typed.request(&1)?, 2);
///
/// // Many threads may call through one handle (or its clones) at once.
/// std::thread::scope(|s| {
///     for i in 0..4u64 {
///         let c = client.clone();
///         s.spawn(move || assert_eq!(*c.request(&i).unwrap(), i + 1));
///     }
/// });
///
/// assert!(matches!(Client::<u64>::connect("no-such-server"), Err(Error::NotFound { .. })));
/// # Ok(()) }
/// ```
pub struct Client<Req, Resp = Req> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(&Req) -> Resp>,
}

impl Inner {
    /// The current mapping (see `current`).
    #[inline]
    fn current(&self) -> &Connection {
        // SYNC: Acquire pairs with the Release store in `reconnect`: the mapping is complete.
        let ptr = self.current.load(Ordering::Acquire);
        // SAFETY: `current` always points to a mapping held by an `Arc` in `retained` (a
        // reconnect stores the pointer while it holds the `retained` lock and the new `Arc`,
        // and pushes that `Arc` before letting go of either), and nothing is ever removed from
        // `retained` while `self` lives; the returned borrow is tied to `self`.
        unsafe { &*ptr }
    }
}

impl<Req, Resp> Clone for Client<Req, Resp> {
    fn clone(&self) -> Self {
        Client {
            inner: Arc::clone(&self.inner),
            _t: PhantomData,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Client<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.inner.name)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

impl<T: Message> Client<T, T> {
    /// Connects to the server `name`, with the same message type both ways and the default
    /// timeout. Fails with `NotFound` if no live server has that name.
    pub fn connect(name: &str) -> Result<Self> {
        Client::builder(name).connect()
    }
}

impl Client<(), ()> {
    /// A builder, for a timeout, a wait mode, or different request and reply types.
    pub fn builder(name: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            name: name.into(),
            timeout: DEFAULT_TIMEOUT,
            wait: WaitMode::default(),
            trust: Trust::default(),
        }
    }
}

/// What a call carries besides its message: its id and the type fingerprints of its request
/// and of the reply its caller expects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallTag {
    pub(crate) id: Uuid,
    pub(crate) types: (u32, u32),
}

/// How a call ended in the slot: the slot and generation, and the final state word.
pub(crate) struct Done<'c> {
    pub(crate) map: MapRef<'c>,
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    pub(crate) state: State,
    pub(crate) id: Uuid,
}

/// A reference to the mapping a call used: borrowed from the handle on the blocking path (no
/// reference-count traffic), an `Arc` on the async path.
pub(crate) enum MapRef<'c> {
    Borrowed(&'c Connection),
    Arc(Arc<Connection>),
}

impl Deref for MapRef<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            MapRef::Borrowed(m) => m,
            MapRef::Arc(a) => a,
        }
    }
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// The server name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// How this handle's calls wait (see [`ClientBuilder::wait_mode`]).
    pub fn wait_mode(&self) -> WaitMode {
        self.inner.wait
    }

    /// The timeout of `request`, `send` and their async forms.
    pub fn default_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The largest message (request or reply) one slot carries, in bytes: larger ones go
    /// through the server's large-message memory.
    pub fn max_payload(&self) -> usize {
        self.inner.current().layout().max_payload()
    }

    /// The largest message (request or reply) the server takes, in bytes
    /// ([`Server::max_message`](crate::Server::max_message)); a larger one is
    /// `PayloadTooLarge`.
    pub fn max_message(&self) -> usize {
        self.inner.current().layout().max_message()
    }

    /// Sends `msg` and waits for the reply, at most the default timeout.
    pub fn request(&self, msg: &Req) -> Result<Reply<'_, Resp>> {
        self.request_timeout(msg, self.inner.timeout)
    }

    /// Sends `msg` and waits for the reply, at most `timeout`.
    pub fn request_timeout(&self, msg: &Req, timeout: Duration) -> Result<Reply<'_, Resp>> {
        let done = self.call(Some(msg), kind::REQUEST, timeout)?;
        self.take_reply(done)
    }

    /// Sends a one-way message; returns once the server has taken it (validated it and
    /// started its handler), at most the default timeout.
    pub fn send(&self, msg: &Req) -> Result<()> {
        self.send_timeout(msg, self.inner.timeout)
    }

    /// Sends a one-way message, waiting at most `timeout` for the server to take it.
    pub fn send_timeout(&self, msg: &Req, timeout: Duration) -> Result<()> {
        let done = self.call(Some(msg), kind::ONEWAY, timeout)?;
        self.take_accept(done)
    }

    /// A protocol-level ping: a worker answers it without running the handler (so it works on
    /// any server, request/response or one-way). Returns the round-trip time.
    pub fn ping(&self) -> Result<Duration> {
        self.ping_timeout(self.inner.timeout)
    }

    /// [`Client::ping`], waiting at most `timeout`.
    pub fn ping_timeout(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let done = self.call(None, kind::PING, timeout)?;
        let elapsed = t0.elapsed();
        self.take_pong(done).map(|()| elapsed)
    }

    /// Turns a completed request into its `Reply` (or the error its status reports).
    pub(crate) fn take_reply<'c>(&'c self, done: Done<'c>) -> Result<Reply<'c, Resp>> {
        let id = done.id;
        let (held, ptr, len) = self.reply_bytes(done)?;
        // SAFETY: `reply_bytes` returns the reply's `len` bytes at `ptr`, which stay valid
        // while `held` lives: the slot's payload area or run (REPLY at our generation, ours
        // until `held` releases it), or the heap buffer of a private copy.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        match message::access::<Resp>(bytes) {
            Ok(archived) => Ok(Reply {
                id,
                archived: ArchivedPtr(archived),
                held,
                _t: PhantomData,
            }),
            // Dropping `held` releases the slot.
            Err(e) => Err(self.named(e)),
        }
    }

    /// The bytes of a completed request's reply, not yet validated (or the error its status
    /// reports): what holds them, where they are and their length. The bytes stay valid and
    /// unchanged by this process while the `Held` lives (a trusting caller reads them in the
    /// slot, where only a peer breaking the protocol could change them).
    #[inline(always)]
    pub(crate) fn reply_bytes<'c>(&self, done: Done<'c>) -> Result<(Held<'c>, *const u8, usize)> {
        let map = done.map.map();
        if done.state.kind() != State::REPLY {
            // ACCEPTED for a request, or the slot moved on to another generation: only a peer
            // breaking the protocol does that, and the slot is no longer ours to touch.
            return Err(self.lost());
        }
        let sh = map.slot(done.slot);
        let st = sh.status.load(Ordering::Relaxed);
        let len = sh.reply_len.load(Ordering::Relaxed) as usize;
        let reply_sum = sh.reply_sum.load(Ordering::Relaxed);
        // The payload area, or the arena run the slot records (inside the arena: checked).
        let (area, max) = map.message_area(done.slot, len);
        let same_call = Uuid::from_u64_pair(
            sh.call_id[0].load(Ordering::Relaxed),
            sh.call_id[1].load(Ordering::Relaxed),
        ) == done.id;
        if let Some(e) = reply_error::<Req>(st, len, max, same_call).map(|e| match e {
            Error::PayloadTooLarge { len, .. } => Error::PayloadTooLarge {
                len,
                max: map.layout().max_message(),
            },
            e => e,
        }) {
            let e = self.named(self.mismatch_or(e, map, done.slot, len));
            let _ = protocol::release(map, &Futex, done.slot, done.state);
            return Err(e);
        }
        let held = match self.inner.trust {
            Trust::Trusted => Held::Slot {
                map: done.map,
                slot: done.slot,
                gen: done.gen,
            },
            Trust::Untrusted => {
                let mut copy = AlignedVec::with_capacity(len);
                // SAFETY: `len <= max`: the range is inside our slot's payload area or run,
                // 64-byte aligned.
                unsafe { copy_out(area, len, &mut copy) };
                // The reply is ours now: give the slot back at once.
                let _ = protocol::release(map, &Futex, done.slot, done.state);
                if checksum(&copy) != reply_sum {
                    return Err(Error::BadMessage(
                        "the reply's checksum does not match (altered in the mapping)".into(),
                    ));
                }
                Held::Copy(copy)
            }
        };
        let ptr = match &held {
            // The server wrote these bytes before its Release publication, acquired in
            // `wait_done` / `poll_done`; `len <= max` keeps them inside the payload area or
            // the run, which stays ours (the slot's) until `Held` releases it.
            Held::Slot { .. } => area.cast_const(),
            Held::Copy(copy) => copy.as_ptr(),
        };
        Ok((held, ptr, len))
    }

    /// `ServerGone`, naming this handle's server.
    #[cold]
    pub(crate) fn gone(&self) -> Error {
        Error::ServerGone {
            name: self.inner.name.clone(),
        }
    }

    /// `e`, a `BadMessage` naming this handle's server (the server sent, or refused, it).
    #[cold]
    fn named(&self, e: Error) -> Error {
        match e {
            Error::BadMessage(why) => {
                Error::BadMessage(format!("server {:?}: {why}", self.inner.name))
            }
            e => e,
        }
    }

    /// `CallLost`, naming this handle's server.
    #[cold]
    pub(crate) fn lost(&self) -> Error {
        Error::CallLost {
            name: self.inner.name.clone(),
        }
    }

    /// The result of a completed one-way message.
    pub(crate) fn take_accept(&self, done: Done<'_>) -> Result<()> {
        if done.state.kind() == State::ACCEPTED {
            // The server owns the slot until its handler returns.
            return Ok(());
        }
        let map = done.map.map();
        let sh = map.slot(done.slot);
        let st = sh.status.load(Ordering::Relaxed);
        let len = sh.reply_len.load(Ordering::Relaxed) as usize;
        let mismatch = (st == status::TYPE_MISMATCH).then(|| self.mismatch(map, done.slot, len));
        let _ = protocol::release(map, &Futex, done.slot, done.state);
        Err(match st {
            _ if mismatch.is_some() => mismatch.expect("checked"),
            status::HANDLER_PANICKED => Error::HandlerPanicked,
            _ => Error::BadMessage(format!(
                "the server could not validate the message as its request type (status {st}); \
                 sent {}",
                std::any::type_name::<Req>()
            )),
        })
    }

    /// The result of a completed ping.
    pub(crate) fn take_pong(&self, done: Done<'_>) -> Result<()> {
        if done.state.kind() != State::REPLY {
            return Err(Error::BadMessage(
                "the server accepted a ping as a one-way message".into(),
            ));
        }
        let map = done.map.map();
        let st = map.slot(done.slot).status.load(Ordering::Relaxed);
        let _ = protocol::release(map, &Futex, done.slot, done.state);
        if st == status::OK {
            Ok(())
        } else {
            Err(Error::BadMessage(format!(
                "the server answered a ping with status {st}"
            )))
        }
    }

    /// `TypeMismatch` if `e` reports one (status TYPE_MISMATCH), else `e`.
    fn mismatch_or(&self, e: Error, map: &Mapping, slot: u32, len: usize) -> Error {
        match e {
            Error::TypeMismatch { .. } => self.mismatch(map, slot, len),
            e => e,
        }
    }

    /// The `TypeMismatch` of the call in `slot` (which this caller still owns): the server's
    /// types in words are the reply's `len` bytes (copied out, bounded by the slot).
    fn mismatch(&self, map: &Mapping, slot: u32, len: usize) -> Error {
        let len = len.min(map.layout().max_payload());
        let mut copy = AlignedVec::with_capacity(len);
        // SAFETY: `len <= max_payload`: the range is inside our slot's payload, 64-byte
        // aligned; the slot is ours (REPLY) until we release it.
        unsafe { copy_out(map.payload(slot), len, &mut copy) };
        let (req, resp) = &self.inner.types;
        Error::TypeMismatch {
            name: self.inner.name.clone(),
            client: format!("sends {req}, expects {resp}"),
            server: String::from_utf8_lossy(&copy).into_owned(),
        }
    }

    /// The current server's mapping; if its server is known to be gone, the mapping of a new
    /// server under the same name (swapped in for every clone of this handle), or
    /// `ServerGone`.
    /// The async path's form of [`Client::mapping_ref`]: an `Arc` of the current mapping.
    pub(crate) fn mapping(&self) -> Result<Arc<Connection>> {
        let map = self.mapping_ref()?;
        let current = self.inner.map.load();
        if std::ptr::eq(&**current, map) {
            return Ok(Arc::clone(&current));
        }
        // A reconnect is storing `map` into both fields right now: take it from the list.
        let retained = self
            .inner
            .retained
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(Arc::clone(
            retained
                .iter()
                .find(|m| std::ptr::eq(&***m, map))
                .expect("the current mapping is retained"),
        ))
    }

    /// The current server's mapping, borrowed for as long as this handle; if its server is
    /// known to be gone, the mapping of a new server under the same name (swapped in for
    /// every clone of this handle), or `ServerGone`.
    pub(crate) fn mapping_ref(&self) -> Result<&Connection> {
        let map = self.inner.current();
        if !map.known_gone() {
            return Ok(map);
        }
        self.reconnect(map)
    }

    #[cold]
    fn reconnect(&self, stale: &Connection) -> Result<&Connection> {
        let inner = &*self.inner;
        let mut retained = inner.retained.lock().unwrap_or_else(|e| e.into_inner());
        if !std::ptr::eq(inner.current(), stale) {
            // Another thread reconnected meanwhile.
            return Ok(inner.current());
        }
        match shared_mapping(&inner.name) {
            Ok(fresh) if !std::ptr::eq(&*fresh, stale) => {
                tracing::info!(server = %inner.name, "reconnected to a restarted server");
                inner.map.store(Arc::clone(&fresh));
                // SYNC: Release publishes the new mapping (it is fully built) to the Acquire
                // load in `Inner::current`.
                inner
                    .current
                    .store(Arc::as_ptr(&fresh).cast_mut(), Ordering::Release);
                retained.push(fresh);
                drop(retained);
                Ok(inner.current())
            }
            Ok(_) | Err(Error::NotFound { .. }) => Err(self.gone()),
            Err(e) => Err(e),
        }
    }

    /// Writes the call into `slot` (CLAIMED by this caller at `gen`) and publishes it: the
    /// owner fields, the archive of `msg` (none for a ping), the call id, kind, length and
    /// stamp of `begun`, when the call began (whose `timeout` bounds a wait for large-message
    /// room). On error the slot has been released, or (for
    /// `CallLost`) is no longer this call's and was not touched.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_and_publish<M: Message>(
        &self,
        map: &Mapping,
        slot: u32,
        gen: u32,
        msg: Option<&M>,
        kind: u32,
        (begun, timeout): (u64, Duration),
        tag: CallTag,
    ) -> Result<(Uuid, usize)> {
        let inner = &*self.inner;
        let sh = map.slot(slot);
        // (Who owns the slot is already in its state word: `gen` names this process's entry.)
        let claimed = State::new(State::CLAIMED, gen);
        let id = tag.id;
        let checked = inner.trust == Trust::Untrusted;
        let (len, sum) = match msg {
            None => (0, checksum(&[])),
            Some(msg) => {
                // A panicking `Serialize` impl must not leave the slot CLAIMED for good (the
                // reaper frees slots of dead processes only): give it back (and its arena
                // run, if it had one), then unwind on.
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let deadline = large::Deadline::Call { begun, timeout };
                    // SAFETY: the slot is CLAIMED by this call (it records no run: a slot
                    // goes FREE without one): no other process reads or writes its payload
                    // or runs until we publish it.
                    unsafe {
                        large::serialize_large(
                            map,
                            slot,
                            large::Writer::client(map.entry()),
                            msg,
                            checked,
                            deadline,
                        )
                    }
                }));
                match written {
                    Ok(Ok(written)) => written,
                    Ok(Err(e)) => {
                        let _ = protocol::release(map, &Futex, slot, claimed);
                        return Err(match e {
                            Error::Timeout { after, .. } => Error::Timeout {
                                after,
                                name: inner.name.clone(),
                            },
                            e => e,
                        });
                    }
                    Err(panic) => {
                        let _ = protocol::release(map, &Futex, slot, claimed);
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        };
        let (hi, lo) = id.as_u64_pair();
        sh.call_id[0].store(hi, Ordering::Relaxed);
        sh.call_id[1].store(lo, Ordering::Relaxed);
        // The types the server checks before it validates anything: none for a ping, no
        // reply type for a one-way message.
        let (req_type, reply_type) = match kind & kind::MASK {
            kind::PING => (0, 0),
            kind::ONEWAY => (tag.types.0, 0),
            _ => tag.types,
        };
        sh.req_type.store(req_type, Ordering::Relaxed);
        sh.reply_type.store(reply_type, Ordering::Relaxed);
        let kind = if checked {
            sh.req_sum.store(sum, Ordering::Relaxed);
            kind | kind::CHECKED
        } else {
            kind
        };
        sh.kind.store(kind, Ordering::Relaxed);
        sh.req_len.store(len as u32, Ordering::Relaxed);
        sh.published.store(clock::stamp(begun), Ordering::Relaxed);
        if !protocol::publish_request(map, &Futex, slot, gen) {
            tracing::error!(
                slot,
                "the slot of a call was taken by another process before it was published"
            );
            return Err(self.lost());
        }
        Ok((id, len))
    }

    /// Claims a slot, writes the call, publishes it and waits until the server replies or
    /// accepts it. On error the slot has been released or abandoned.
    fn call(&self, msg: Option<&Req>, kind: u32, timeout: Duration) -> Result<Done<'_>> {
        self.call_tagged(msg, kind, timeout, self.tag())
    }

    /// This handle's types and a fresh id, for a call.
    #[inline(always)]
    pub(crate) fn tag(&self) -> CallTag {
        CallTag {
            id: message::new_call_id(),
            types: (self.inner.req_type, self.inner.reply_type),
        }
    }

    /// [`Client::call`] with the message, id and type fingerprints given (a raw call forwards
    /// another caller's).
    #[inline(always)]
    pub(crate) fn call_tagged<M: Message>(
        &self,
        msg: Option<&M>,
        kind: u32,
        timeout: Duration,
        tag: CallTag,
    ) -> Result<Done<'_>> {
        let inner = &*self.inner;
        let conn = self.mapping_ref()?;
        let map = conn.map();
        let deadline = Deadline::after(timeout);
        let deadline_begun = deadline.begun();
        let alive = || conn.server_alive();
        let q32 = &map.header().ns_per_tick_q32;
        let cpus = &map.header().worker_cpus;
        let mut waiting = CallWait::new(inner.wait, deadline, q32, cpus, &alive);
        let wait_error = |e| self.wait_error(conn, e, timeout);
        let within_share = || within_share(map);
        let (slot, gen) = protocol::claim_if(
            map,
            &Futex,
            map.entry(),
            SLOT_HINT.get(),
            &mut waiting,
            &within_share,
        )
        .map_err(wait_error)?;
        SLOT_HINT.set(slot);
        let (id, len) =
            self.write_and_publish(map, slot, gen, msg, kind, (deadline_begun, timeout), tag)?;
        if len > map.layout().max_payload() {
            // A large request: the worker takes about as long to read it (and to write an
            // echo) as we took to write it; park only if the reply takes much longer.
            let spent = clock::ticks().wrapping_sub(deadline_begun);
            let q32 = q32.load(Ordering::Relaxed);
            waiting.stretch(2 * crate::wait::ticks_to_duration(spent, q32));
        }
        let state = match protocol::wait_done(map, &Futex, slot, gen, &mut waiting) {
            Ok(state) => {
                map.prefetch_slot(slot);
                state
            }
            Err(e) => match protocol::abandon(map, slot, gen) {
                Ok(()) => {
                    map.header().abandoned.fetch_add(1, Ordering::Relaxed);
                    return Err(wait_error(e));
                }
                // It completed as we gave up: take it after all.
                Err(state) => state,
            },
        };
        Ok(Done {
            map: MapRef::Borrowed(conn),
            slot,
            gen,
            state,
            id,
        })
    }
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// The error a failed wait of a call to `conn` reports.
    #[cold]
    fn wait_error(&self, conn: &Connection, e: WaitError, timeout: Duration) -> Error {
        match e {
            WaitError::Timeout => {
                conn.map().header().timeouts.fetch_add(1, Ordering::Relaxed);
                Error::Timeout {
                    after: timeout,
                    name: self.inner.name.clone(),
                }
            }
            WaitError::Gone => {
                // Remember it (for every handle in this process) if the server is really gone.
                let _ = conn.server_alive();
                self.gone()
            }
        }
    }

    /// The first half of [`Client::call_tagged`]: claims a slot, writes the call and publishes
    /// it, and returns without waiting for the server. With `first` (earlier than the call's
    /// deadline), it waits for a free slot or for large-message room only until then, and
    /// returns `Ok(None)`, holding nothing, if it had to wait longer.
    pub(crate) fn publish_tagged<M: Message>(
        &self,
        msg: Option<&M>,
        kind: u32,
        timeout: Duration,
        tag: CallTag,
        first: Option<Duration>,
    ) -> Result<Option<Published>> {
        let conn = self.mapping()?;
        let map = conn.map();
        let q32 = &map.header().ns_per_tick_q32;
        let mut deadline = Deadline::after(timeout);
        let begun = deadline.begun();
        let at = deadline.get(q32);
        let first = first.filter(|f| *f < timeout);
        let bound = first.unwrap_or(timeout);
        let claim_deadline = match first {
            Some(f) => Deadline::at(Instant::now().checked_add(f).unwrap_or_else(far_future)),
            None => deadline,
        };
        let alive = || conn.server_alive();
        let cpus = &map.header().worker_cpus;
        let mut waiting = CallWait::new(self.inner.wait, claim_deadline, q32, cpus, &alive);
        if let Some(f) = first {
            waiting.limit_spin(f);
        }
        let within_share = || within_share(map);
        let claimed = protocol::claim_if(
            map,
            &Futex,
            map.entry(),
            SLOT_HINT.get(),
            &mut waiting,
            &within_share,
        );
        let (slot, gen) = match claimed {
            Ok(claimed) => claimed,
            Err(WaitError::Timeout) if first.is_some() => return Ok(None),
            Err(e) => return Err(self.wait_error(&conn, e, timeout)),
        };
        SLOT_HINT.set(slot);
        // The large-message memory is waited for until `bound` too.
        let (id, len) = match self.write_and_publish(map, slot, gen, msg, kind, (begun, bound), tag)
        {
            Ok(written) => written,
            Err(Error::Timeout { .. }) if first.is_some() => return Ok(None),
            Err(e) => return Err(e),
        };
        let stretch = if len > map.layout().max_payload() {
            // As in `call_tagged`: a large request's worker takes about as long again.
            let spent = clock::ticks().wrapping_sub(begun);
            2 * crate::wait::ticks_to_duration(spent, q32.load(Ordering::Relaxed))
        } else {
            Duration::ZERO
        };
        Ok(Some(Published {
            map: Some(conn),
            slot,
            gen,
            id,
            deadline: at,
            timeout,
            stretch,
        }))
    }

    /// The second half of [`Client::call_tagged`] for a call of [`Client::publish_tagged`]:
    /// waits until the server replies or accepts it, or gives up at the call's deadline; with
    /// `until` (earlier than the deadline), returns `None` at `until`, the call still pending,
    /// for this or another thread to wait again. Once it returns `Some`, `p` holds nothing.
    pub(crate) fn wait_published(
        &self,
        p: &mut Published,
        until: Option<Instant>,
    ) -> Option<Result<Done<'static>>> {
        let conn = Arc::clone(p.map.as_ref()?);
        let map = conn.map();
        let until = until.filter(|u| *u < p.deadline);
        let alive = || conn.server_alive();
        let (q32, cpus) = (&map.header().ns_per_tick_q32, &map.header().worker_cpus);
        let deadline = Deadline::at(until.unwrap_or(p.deadline));
        let mut waiting = CallWait::new(self.inner.wait, deadline, q32, cpus, &alive);
        waiting.stretch(p.stretch);
        if let Some(until) = until {
            waiting.limit_spin(until.saturating_duration_since(Instant::now()));
        }
        let state = match protocol::wait_done(map, &Futex, p.slot, p.gen, &mut waiting) {
            Ok(state) => {
                map.prefetch_slot(p.slot);
                state
            }
            Err(WaitError::Timeout) if until.is_some() && Instant::now() < p.deadline => {
                return None;
            }
            Err(e) => match protocol::abandon(map, p.slot, p.gen) {
                Ok(()) => {
                    map.header().abandoned.fetch_add(1, Ordering::Relaxed);
                    p.map = None;
                    return Some(Err(self.wait_error(&conn, e, p.timeout)));
                }
                // It completed as we gave up: take it after all.
                Err(state) => state,
            },
        };
        p.map = None;
        Some(Ok(Done {
            map: MapRef::Arc(conn),
            slot: p.slot,
            gen: p.gen,
            state,
            id: p.id,
        }))
    }
}

/// A call published and not yet taken ([`Client::publish_tagged`]): it keeps its mapping by
/// an `Arc`, so any thread may wait for it ([`Client::wait_published`]). Dropped untaken, it
/// gives the call up as a call that timed out does: the worker frees the slot, or, if the
/// reply had come, the drop does.
pub(crate) struct Published {
    /// `None` once taken.
    map: Option<Arc<Connection>>,
    slot: u32,
    gen: u32,
    id: Uuid,
    /// The call's deadline, and its timeout (for `Error::Timeout`).
    deadline: Instant,
    timeout: Duration,
    /// How much longer than its wait mode says the wait spins (a large request's).
    stretch: Duration,
}

impl Published {
    /// The call's id.
    pub(crate) fn id(&self) -> Uuid {
        self.id
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        if let Some(map) = self.map.take() {
            give_up(&map, self.slot, self.gen);
        }
    }
}

/// Gives up a call in flight that nobody will take (a dropped future or pending call): the
/// worker frees the slot (counted as abandoned), or, if the reply had come, this frees it.
/// (ACCEPTED: the worker frees it.)
pub(crate) fn give_up(map: &Connection, slot: u32, gen: u32) {
    match protocol::abandon(map.map(), slot, gen) {
        Ok(()) => {
            map.header().abandoned.fetch_add(1, Ordering::Relaxed);
        }
        Err(s) if s.kind() == State::REPLY => {
            let _ = protocol::release(map.map(), &Futex, slot, s);
        }
        Err(_) => {}
    }
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published")
            .field("slot", &self.slot)
            .field("id", &self.id)
            .field("taken", &self.map.is_none())
            .finish_non_exhaustive()
    }
}

/// The per-process share of slots (`Header::client_share`): while callers of other processes
/// wait for a slot, a process that already holds its share takes no more.
pub(crate) fn within_share(map: &Mapping) -> bool {
    let share = map.header().client_share.load(Ordering::Relaxed);
    share == 0 || !map.others_waiting() || map.held_by(map.entry()) < share
}

/// What a reply's status and length say, before its bytes are read: `None` if the bytes hold
/// a reply to validate, or the error to report.
pub(crate) fn reply_error<Req>(st: u32, len: usize, max: usize, same_call: bool) -> Option<Error> {
    Some(match st {
        _ if !same_call => {
            Error::BadMessage("the slot no longer holds this call (a peer wrote into it)".into())
        }
        status::OK if len <= max => return None,
        status::OK => Error::BadMessage(format!(
            "reply length {len} exceeds the {max} bytes of its area"
        )),
        status::HANDLER_PANICKED => Error::HandlerPanicked,
        status::REPLY_TOO_LARGE => Error::PayloadTooLarge { len, max },
        status::NO_MEMORY => Error::io(
            "the server's reply: the server had no memory for it (its shared memory file \
             system is full)",
            std::io::ErrorKind::StorageFull,
        ),
        status::WRONG_KIND => {
            Error::BadMessage("the server is one-way: use `send`, not `request`".into())
        }
        // Filled in with the server's words by the caller (`Client::mismatch_or`).
        status::TYPE_MISMATCH => Error::TypeMismatch {
            name: String::new(),
            client: String::new(),
            server: String::new(),
        },
        _ => Error::BadMessage(format!(
            "the server could not validate the request as its request type \
             (status {st}); sent {}",
            std::any::type_name::<Req>()
        )),
    })
}

/// Ties a `Reply` to its client's borrow and to `Resp`, without owning either.
type ReplyMarker<'c, Resp> = (&'c (), fn() -> Resp);

/// Where a reply's bytes are: in its slot (trusted), or in a private copy (untrusted).
pub(crate) enum Held<'c> {
    Slot {
        map: MapRef<'c>,
        slot: u32,
        gen: u32,
    },
    Copy(AlignedVec),
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Held::Slot { map, slot, gen } = self {
            let reply = State::new(State::REPLY, *gen);
            if !protocol::release(map.map(), &Futex, *slot, reply) {
                tracing::error!(
                    slot,
                    "a reply's slot was taken by another process while it was held"
                );
            }
        }
    }
}

/// A pointer to a validated archived reply inside a [`Held`], which keeps it alive; it is used
/// only as a shared reference, so it is `Send` and `Sync` exactly when `&T` is.
struct ArchivedPtr<T: ?Sized>(*const T);

// SAFETY: an `ArchivedPtr` is only ever turned into a `&T` (in `Reply::archived`), never
// written through; sending it to another thread shares `T`, which `T: Sync` allows, as it
// does for `&T`. The bytes it points to stay valid wherever the `Reply` goes: the slot stays
// this process's (REPLY at our generation) until `Held` drops, whichever thread drops it (the
// slot is owned by the process, not by a thread, and `release` is a compare-and-swap), and a
// private copy is a heap buffer that does not move.
unsafe impl<T: ?Sized + Sync> Send for ArchivedPtr<T> {}
// SAFETY: sharing an `ArchivedPtr` between threads only lets each of them make a `&T`, which
// `T: Sync` allows.
unsafe impl<T: ?Sized + Sync> Sync for ArchivedPtr<T> {}

/// A reply, read in place in the server's mapping (or, untrusted, in a private copy); derefs
/// to the archived reply. In place, the slot stays this call's until the `Reply` drops, so
/// drop it before making many more calls.
///
/// A `Reply` is `Send` and `Sync` when the archived reply type is `Sync` (every type rkyv
/// derives an archive for is, unless it holds a non-`Sync` field), so it can be held across an
/// `.await` in a task that a multi-thread runtime moves between threads:
///
/// ```
/// fn assert_send_sync<T: Send + Sync>() {}
/// assert_send_sync::<shmrpc::Reply<'static, String>>();
/// ```
pub struct Reply<'c, Resp: Message> {
    id: Uuid,
    archived: ArchivedPtr<Resp::Archived>,
    held: Held<'c>,
    _t: PhantomData<ReplyMarker<'c, Resp>>,
}

impl<Resp: Message> Reply<'_, Resp> {
    /// The call's UUID: the same the handler saw in `Request::id`.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The archived reply.
    pub fn archived(&self) -> &Resp::Archived {
        // SAFETY: `archived` points into `held` (our slot, which is in REPLY and ours until
        // `held` drops, or our private copy, which does not move: the vector is never
        // resized), validated by bytecheck; both live as long as `&self`.
        unsafe { &*self.archived.0 }
    }
    /// An owned copy of the reply.
    pub fn deserialize(&self) -> Result<Resp> {
        message::deserialize::<Resp>(self.archived())
    }
}

impl<Resp: Message> Deref for Reply<'_, Resp> {
    type Target = Resp::Archived;
    fn deref(&self) -> &Resp::Archived {
        self.archived()
    }
}

impl<Resp: Message> std::fmt::Debug for Reply<'_, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("id", &self.id)
            .field("in_place", &matches!(self.held, Held::Slot { .. }))
            .finish_non_exhaustive()
    }
}
