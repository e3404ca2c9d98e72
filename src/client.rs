//! The client: a cheap, cloneable handle on a server's mapping.

use crate::error::{Error, Result};
use crate::layout::{kind, status};
use crate::message::{self, Message};
use crate::protocol::{self, State, WaitError};
use crate::shm::{self, validate_name, Futex, Mapping};
use crate::sync::Ordering;
use crate::wait::{CallWait, WaitMode};
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
static MAPPINGS: Mutex<Option<HashMap<String, Weak<Mapping>>>> = Mutex::new(None);

thread_local! {
    /// The slot this thread used last: claims start there, so a thread usually finds its own
    /// slot free and does not contend with others on the same word.
    static SLOT_HINT: Cell<u32> = const { Cell::new(0) };
}

fn shared_mapping(name: &str) -> Result<Arc<Mapping>> {
    let mut guard = MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
    let maps = guard.get_or_insert_with(HashMap::new);
    if let Some(map) = maps.get(name).and_then(Weak::upgrade) {
        if map.server_alive() {
            return Ok(map);
        }
    }
    let map = Arc::new(Mapping::open(name)?);
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
    /// Connects with request type `Req` and reply type `Resp`.
    pub fn connect<Req: Message, Resp: Message>(self) -> Result<Client<Req, Resp>> {
        validate_name(&self.name)?;
        let map = shared_mapping(&self.name)?;
        let (pid, start) = shm::self_identity();
        Ok(Client {
            inner: Arc::new(Inner {
                name: self.name,
                map,
                timeout: self.timeout,
                wait: self.wait,
                pid,
                start,
            }),
            _t: PhantomData,
        })
    }
}

#[derive(Debug)]
struct Inner {
    name: String,
    map: Arc<Mapping>,
    timeout: Duration,
    wait: WaitMode,
    pid: u32,
    start: u64,
}

/// A handle on the server `name`, sending `Req` and receiving `Resp` (by default the same
/// type). Cheap to create and to clone; `Send + Sync`; any number of threads may call through
/// one handle at once, each call in its own slot.
pub struct Client<Req, Resp = Req> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(&Req) -> Resp>,
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
    pub fn builder(name: &str) -> ClientBuilder {
        ClientBuilder {
            name: name.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            wait: WaitMode::default(),
        }
    }
}

/// How a call ended in the slot: the slot and generation, and the final state word.
struct Done {
    slot: u32,
    gen: u32,
    state: State,
    id: Uuid,
}

impl<Req: Message, Resp: Message> Client<Req, Resp> {
    /// The server name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The largest message (request or reply) one slot carries, in bytes.
    pub fn max_payload(&self) -> usize {
        self.inner.map.layout().max_payload()
    }

    /// Sends `msg` and waits for the reply, at most the default timeout.
    pub fn request(&self, msg: &Req) -> Result<Reply<'_, Resp>> {
        self.request_timeout(msg, self.inner.timeout)
    }

    /// Sends `msg` and waits for the reply, at most `timeout`.
    pub fn request_timeout(&self, msg: &Req, timeout: Duration) -> Result<Reply<'_, Resp>> {
        let done = self.call(msg, kind::REQUEST, timeout)?;
        let map = &*self.inner.map;
        if done.state.kind() != State::REPLY {
            // ACCEPTED for a request: only a peer breaking the protocol does that, and the
            // slot is then the server's to free.
            return Err(Error::BadMessage(
                "the server accepted a request as a one-way message".into(),
            ));
        }
        let sh = map.slot(done.slot);
        let st = sh.status.load(Ordering::Relaxed);
        let len = sh.reply_len.load(Ordering::Relaxed) as usize;
        let max = map.layout().max_payload();
        let result = match st {
            status::OK if len <= max => {
                // SAFETY: the slot is in REPLY at our generation: it is ours until `release`;
                // the server wrote these bytes before its Release publication, acquired in
                // `wait_done`; `len <= max` keeps the slice inside the payload area.
                let bytes = unsafe { std::slice::from_raw_parts(map.payload(done.slot), len) };
                message::access::<Resp>(bytes).map(|archived| archived as *const _)
            }
            status::OK => Err(Error::BadMessage(format!(
                "reply length {len} exceeds the slot's {max} bytes"
            ))),
            status::HANDLER_PANICKED => Err(Error::HandlerPanicked),
            status::REPLY_TOO_LARGE => Err(Error::PayloadTooLarge { len, max }),
            status::WRONG_KIND => Err(Error::BadMessage(
                "the server is one-way: use `send`, not `request`".into(),
            )),
            _ => Err(Error::BadMessage(format!(
                "the server could not validate the request as its request type \
                 (status {st}); sent {}",
                std::any::type_name::<Req>()
            ))),
        };
        match result {
            Ok(archived) => Ok(Reply {
                map,
                slot: done.slot,
                gen: done.gen,
                id: done.id,
                archived,
                _t: PhantomData,
            }),
            Err(e) => {
                protocol::release(map, &Futex, done.slot, done.gen);
                Err(e)
            }
        }
    }

    /// Sends a one-way message; returns once the server has taken it (validated it and
    /// started its handler), at most the default timeout.
    pub fn send(&self, msg: &Req) -> Result<()> {
        self.send_timeout(msg, self.inner.timeout)
    }

    /// Sends a one-way message, waiting at most `timeout` for the server to take it.
    pub fn send_timeout(&self, msg: &Req, timeout: Duration) -> Result<()> {
        let done = self.call(msg, kind::ONEWAY, timeout)?;
        if done.state.kind() == State::ACCEPTED {
            // The server owns the slot until its handler returns.
            return Ok(());
        }
        let map = &*self.inner.map;
        let st = map.slot(done.slot).status.load(Ordering::Relaxed);
        protocol::release(map, &Futex, done.slot, done.gen);
        Err(match st {
            status::HANDLER_PANICKED => Error::HandlerPanicked,
            _ => Error::BadMessage(format!(
                "the server could not validate the message as its request type (status {st}); \
                 sent {}",
                std::any::type_name::<Req>()
            )),
        })
    }

    /// Claims a slot, writes `msg`, publishes it and waits until the server replies or
    /// accepts it. On error the slot has been released or abandoned.
    fn call(&self, msg: &Req, kind: u32, timeout: Duration) -> Result<Done> {
        let inner = &*self.inner;
        let map = &*inner.map;
        if map.header().server_state.load(Ordering::Relaxed) != crate::layout::server_state::RUNNING
        {
            return Err(Error::ServerGone);
        }
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(far_future);
        let alive = || map.server_alive();
        let mut waiting = CallWait::new(inner.wait, deadline, &alive);
        let wait_error = |e| match e {
            WaitError::Timeout => Error::Timeout { after: timeout },
            WaitError::Gone => Error::ServerGone,
        };
        let (slot, gen) =
            protocol::claim(map, &Futex, SLOT_HINT.get(), &mut waiting).map_err(wait_error)?;
        SLOT_HINT.set(slot);
        let id = message::new_call_id();
        let sh = map.slot(slot);
        let max = map.layout().max_payload();
        // SAFETY: the slot is CLAIMED by this call: no other process reads or writes its
        // payload until we publish it; the area is `max` bytes, 64-byte aligned.
        let len = match unsafe { message::serialize_into(msg, map.payload(slot), max) } {
            Ok(len) => len,
            Err(e) => {
                protocol::release(map, &Futex, slot, gen);
                return Err(e);
            }
        };
        let (hi, lo) = id.as_u64_pair();
        sh.call_id[0].store(hi, Ordering::Relaxed);
        sh.call_id[1].store(lo, Ordering::Relaxed);
        sh.kind.store(kind, Ordering::Relaxed);
        sh.req_len.store(len as u32, Ordering::Relaxed);
        sh.owner_pid.store(inner.pid, Ordering::Relaxed);
        sh.owner_start.store(inner.start, Ordering::Relaxed);
        protocol::publish_request(map, &Futex, slot, gen);
        match protocol::wait_done(map, &Futex, slot, gen, &mut waiting) {
            Ok(state) => Ok(Done {
                slot,
                gen,
                state,
                id,
            }),
            Err(e) => match protocol::abandon(map, slot, gen) {
                Ok(()) => {
                    map.header().abandoned.fetch_add(1, Ordering::Relaxed);
                    Err(wait_error(e))
                }
                // It completed as we gave up: take it after all.
                Err(state) => Ok(Done {
                    slot,
                    gen,
                    state,
                    id,
                }),
            },
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// A reply, read in place in the server's mapping; derefs to the archived reply. The slot
/// stays this call's until the `Reply` drops, so drop it before making many more calls.
pub struct Reply<'c, Resp: Message> {
    map: &'c Mapping,
    slot: u32,
    gen: u32,
    id: Uuid,
    archived: *const Resp::Archived,
    _t: PhantomData<&'c Resp::Archived>,
}

impl<Resp: Message> Reply<'_, Resp> {
    /// The call's UUID: the same the handler saw in `Request::id`.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The archived reply, read in place.
    pub fn archived(&self) -> &Resp::Archived {
        // SAFETY: `archived` points into our slot, validated by bytecheck; the slot is in
        // REPLY and ours until `Drop`, so the bytes stay put while `&self` lives.
        unsafe { &*self.archived }
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

impl<Resp: Message> Drop for Reply<'_, Resp> {
    fn drop(&mut self) {
        protocol::release(self.map, &Futex, self.slot, self.gen);
    }
}

impl<Resp: Message> std::fmt::Debug for Reply<'_, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("id", &self.id)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}
