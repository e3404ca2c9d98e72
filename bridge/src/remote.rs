//! The remote client: calls to a bridge, in the shape of `shmrpc::Client`.

use crate::wire::{Code, Failure, Header, Kind};
use crate::{exact_key, transport, Error, Result};
use shmrpc::raw;
use shmrpc::rkyv::util::AlignedVec;
use shmrpc::{Message, Uuid};
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use zenoh::bytes::ZBytes;
use zenoh::key_expr::OwnedKeyExpr;
use zenoh::query::{ConsolidationMode, QueryTarget, Reply};
use zenoh::{Session, Wait};

/// Which of the bridges exposing a key a call goes to (see the crate documentation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// One bridge, the nearest as Zenoh routes (`QueryTarget::BestMatching` over complete
    /// queryables): the call runs once.
    #[default]
    One,
    /// Every bridge of the key (`QueryTarget::All`); the first reply wins. The call runs on
    /// every host: for idempotent calls only.
    All,
}

/// Configures a [`RemoteClient`].
#[derive(Clone, Debug)]
pub struct RemoteClientBuilder {
    key: String,
    timeout: Duration,
    target: Target,
}

impl RemoteClientBuilder {
    /// The timeout of `request`, `send` and `ping` (default: shmrpc's, 30 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Which bridge a call goes to when several expose the key (default [`Target::One`]).
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Connects over `session`, sending `Req` and receiving `Resp`. Fails at once with
    /// `NotFound` if no bridge that this session knows of exposes the key.
    pub fn connect<Req: Message, Resp: Message>(
        self,
        session: &Session,
    ) -> Result<RemoteClient<Req, Resp>> {
        let ke = exact_key(&self.key)?;
        let querier = session
            .declare_querier(ke.clone())
            .wait()
            .map_err(|e| transport("cannot declare a querier", e))?;
        let matching = querier
            .matching_status()
            .wait()
            .map_err(|e| transport("cannot ask for matching bridges", e))?
            .matching();
        if !matching {
            return Err(Error::NotFound {
                key: self.key,
                detail: "no bridge that this session can reach exposes it".into(),
            });
        }
        drop(querier);
        Ok(RemoteClient {
            inner: Arc::new(Inner {
                session: session.clone(),
                ke,
                key: self.key,
                timeout: self.timeout,
                target: self.target,
                req_type: raw::fingerprint::<Req>(),
                reply_type: raw::fingerprint::<Resp>(),
                types: format!(
                    "sends {}, expects {}",
                    raw::type_label::<Req>(),
                    raw::type_label::<Resp>()
                ),
                size_hint: AtomicUsize::new(256),
            }),
            _t: PhantomData,
        })
    }
}

struct Inner {
    session: Session,
    ke: OwnedKeyExpr,
    key: String,
    timeout: Duration,
    target: Target,
    req_type: u32,
    reply_type: u32,
    /// `Req` and `Resp` in words, for `TypeMismatch`.
    types: String,
    /// The last request's archive size: the next one's first guess of room.
    size_hint: AtomicUsize,
}

/// A handle on a server exposed by a bridge, sending `Req` and receiving `Resp` (by default
/// the same type). Cheap to clone, `Send + Sync`, any number of calls at once.
pub struct RemoteClient<Req, Resp = Req> {
    inner: Arc<Inner>,
    _t: PhantomData<fn(&Req) -> Resp>,
}

impl<Req, Resp> Clone for RemoteClient<Req, Resp> {
    fn clone(&self) -> Self {
        RemoteClient {
            inner: Arc::clone(&self.inner),
            _t: PhantomData,
        }
    }
}

impl<Req, Resp> std::fmt::Debug for RemoteClient<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClient")
            .field("key", &self.inner.key)
            .field("timeout", &self.inner.timeout)
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl RemoteClient<(), ()> {
    /// A builder, for a timeout, a target, or different request and reply types.
    pub fn builder(key: impl Into<String>) -> RemoteClientBuilder {
        RemoteClientBuilder {
            key: key.into(),
            timeout: shmrpc::DEFAULT_TIMEOUT,
            target: Target::One,
        }
    }
}

impl<T: Message> RemoteClient<T, T> {
    /// Connects to the server exposed under `key`, with the same message type both ways and
    /// the default timeout.
    pub fn connect(session: &Session, key: &str) -> Result<Self> {
        RemoteClient::builder(key).connect(session)
    }
}

/// A query sent, not yet answered.
struct Sent {
    replies: zenoh::handlers::FifoChannelHandler<Reply>,
    timeout: Duration,
}

impl<Req: Message, Resp: Message> RemoteClient<Req, Resp> {
    /// The key expression called.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The timeout of `request`, `send` and `ping`.
    pub fn default_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// Sends `msg` and waits for the reply, at most the default timeout.
    pub fn request(&self, msg: &Req) -> Result<RemoteReply<Resp>> {
        self.request_timeout(msg, self.inner.timeout)
    }

    /// Sends `msg` and waits for the reply, at most `timeout`.
    pub fn request_timeout(&self, msg: &Req, timeout: Duration) -> Result<RemoteReply<Resp>> {
        let (sent, id) = self.send_query(Kind::Request, Some(msg), timeout)?;
        let reply = sent.replies.recv().ok();
        self.take_reply(reply, sent.timeout, id)
    }

    /// Sends a one-way message; returns once the server has taken it, at most the default
    /// timeout.
    pub fn send(&self, msg: &Req) -> Result<()> {
        self.send_timeout(msg, self.inner.timeout)
    }

    /// Sends a one-way message, waiting at most `timeout` for the server to take it.
    pub fn send_timeout(&self, msg: &Req, timeout: Duration) -> Result<()> {
        let (sent, _) = self.send_query(Kind::OneWay, Some(msg), timeout)?;
        let reply = sent.replies.recv().ok();
        self.take_empty(reply, sent.timeout)
    }

    /// A ping through the bridge to the server (no handler runs); returns the round-trip time.
    pub fn ping(&self) -> Result<Duration> {
        self.ping_timeout(self.inner.timeout)
    }

    /// [`RemoteClient::ping`], waiting at most `timeout`.
    pub fn ping_timeout(&self, timeout: Duration) -> Result<Duration> {
        let t0 = Instant::now();
        let (sent, _) = self.send_query(Kind::Ping, None, timeout)?;
        let reply = sent.replies.recv().ok();
        self.take_empty(reply, sent.timeout).map(|()| t0.elapsed())
    }

    /// [`RemoteClient::request`] as a future, on any executor (the reply arrives through a
    /// channel that Zenoh's own threads fill).
    pub async fn request_async(&self, msg: &Req) -> Result<RemoteReply<Resp>> {
        self.request_async_timeout(msg, self.inner.timeout).await
    }

    /// [`RemoteClient::request_timeout`] as a future.
    pub async fn request_async_timeout(
        &self,
        msg: &Req,
        timeout: Duration,
    ) -> Result<RemoteReply<Resp>> {
        let (sent, id) = self.send_query(Kind::Request, Some(msg), timeout)?;
        let reply = sent.replies.recv_async().await.ok();
        self.take_reply(reply, sent.timeout, id)
    }

    /// [`RemoteClient::send`] as a future.
    pub async fn send_async(&self, msg: &Req) -> Result<()> {
        let (sent, _) = self.send_query(Kind::OneWay, Some(msg), self.inner.timeout)?;
        let reply = sent.replies.recv_async().await.ok();
        self.take_empty(reply, sent.timeout)
    }

    /// [`RemoteClient::ping`] as a future.
    pub async fn ping_async(&self) -> Result<Duration> {
        let t0 = Instant::now();
        let (sent, _) = self.send_query(Kind::Ping, None, self.inner.timeout)?;
        let reply = sent.replies.recv_async().await.ok();
        self.take_empty(reply, sent.timeout).map(|()| t0.elapsed())
    }

    /// Serializes `msg` and sends the query.
    fn send_query(&self, kind: Kind, msg: Option<&Req>, timeout: Duration) -> Result<(Sent, Uuid)> {
        let inner = &*self.inner;
        let id = raw::new_call_id();
        let mut archive = Vec::new();
        if let Some(msg) = msg {
            archive.reserve(inner.size_hint.load(Ordering::Relaxed));
            raw::archive_into(msg, &mut archive).map_err(|e| match e {
                shmrpc::Error::BadMessage(why) => Error::BadMessage(why),
                e => Error::Local(e),
            })?;
            inner.size_hint.store(archive.len(), Ordering::Relaxed);
        }
        let header = Header {
            kind,
            request_type: if kind == Kind::Ping {
                0
            } else {
                inner.req_type
            },
            reply_type: if kind == Kind::Request {
                inner.reply_type
            } else {
                0
            },
            id,
            timeout,
        };
        let target = match inner.target {
            Target::One => QueryTarget::BestMatching,
            Target::All => QueryTarget::All,
        };
        let replies = inner
            .session
            .get(&inner.ke)
            .payload(archive)
            .attachment(header.encode().to_vec())
            .target(target)
            .consolidation(ConsolidationMode::None)
            .timeout(timeout)
            .wait()
            .map_err(|e| transport("cannot send the query", e))?;
        Ok((Sent { replies, timeout }, id))
    }

    /// The first reply's bytes, or the error it (or its absence) reports.
    fn first_ok(&self, reply: Option<Reply>, timeout: Duration) -> Result<ZBytes> {
        let Some(reply) = reply else {
            return Err(Error::NotFound {
                key: self.inner.key.clone(),
                detail: "no bridge answered: none exposes it now".into(),
            });
        };
        match reply.into_result() {
            Ok(sample) => Ok(sample.payload().clone()),
            Err(e) => Err(self.failure(&e.payload().to_bytes(), timeout)),
        }
    }

    /// The error an error reply's payload reports.
    fn failure(&self, payload: &[u8], timeout: Duration) -> Error {
        let key = || self.inner.key.clone();
        let Some(f) = Failure::decode(payload) else {
            // Zenoh's own error: its query timer (the text "Timeout"), or a routing failure.
            let text = String::from_utf8_lossy(payload);
            return if text.trim() == "Timeout" {
                Error::Timeout { after: timeout }
            } else {
                Error::Transport(format!("the query failed: {text}"))
            };
        };
        match f.code {
            Code::NotFound => Error::NotFound {
                key: key(),
                detail: format!("the bridge's host runs no such server ({})", f.text),
            },
            Code::Timeout => Error::Timeout { after: timeout },
            Code::ServerGone => Error::ServerGone { key: key() },
            Code::BadMessage => Error::BadMessage(f.text),
            Code::TypeMismatch => Error::TypeMismatch {
                key: key(),
                client: self.inner.types.clone(),
                server: f.text,
            },
            Code::PayloadTooLarge => Error::PayloadTooLarge {
                len: f.a as usize,
                max: f.b as usize,
            },
            Code::HandlerPanicked => Error::HandlerPanicked,
            Code::CallLost => Error::CallLost,
            Code::Busy => Error::Busy {
                key: key(),
                detail: f.text,
            },
            Code::BadCall | Code::Other => Error::Remote {
                key: key(),
                detail: f.text,
            },
        }
    }

    fn take_empty(&self, reply: Option<Reply>, timeout: Duration) -> Result<()> {
        self.first_ok(reply, timeout).map(drop)
    }

    fn take_reply(
        &self,
        reply: Option<Reply>,
        timeout: Duration,
        id: Uuid,
    ) -> Result<RemoteReply<Resp>> {
        let bytes = self.first_ok(reply, timeout)?;
        RemoteReply::new(bytes, id)
    }
}

/// Where a remote reply's archive is: in the received buffer (one piece, 16-byte aligned), or
/// in an aligned copy. Held only to keep the bytes alive (read through `RemoteReply::archived`).
#[allow(dead_code)]
enum Storage {
    Received(ZBytes),
    Copy(AlignedVec),
}

/// A remote call's reply, validated; derefs to the archived reply. Read in place in the
/// buffer Zenoh received it in when that is one aligned piece, else in an aligned copy
/// ([`RemoteReply::in_place`] says which).
pub struct RemoteReply<Resp: Message> {
    id: Uuid,
    archived: *const Resp::Archived,
    storage: Storage,
}

// SAFETY: `archived` points into `storage` (Zenoh's reference-counted, immutable receive buffer,
// or a heap copy), which moves with the reply and is only ever read; sending it shares
// `Resp::Archived`, which `Sync` allows, as for `&Resp::Archived`.
unsafe impl<Resp: Message> Send for RemoteReply<Resp> where Resp::Archived: Sync {}
// SAFETY: as above: sharing only hands out `&Resp::Archived`.
unsafe impl<Resp: Message> Sync for RemoteReply<Resp> where Resp::Archived: Sync {}

impl<Resp: Message> RemoteReply<Resp> {
    fn new(bytes: ZBytes, id: Uuid) -> Result<RemoteReply<Resp>> {
        // One piece, aligned: read in place. Otherwise one copy, slice by slice (joining the
        // pieces first would copy them twice).
        let mut slices = bytes.slices();
        let in_place = match (slices.next(), slices.next()) {
            (Some(b), None) if (b.as_ptr() as usize).is_multiple_of(16) => {
                Some((b.as_ptr(), b.len()))
            }
            _ => None,
        };
        let (storage, ptr, len) = match in_place {
            Some((ptr, len)) => (Storage::Received(bytes), ptr, len),
            None => {
                let mut copy = AlignedVec::<16>::with_capacity(bytes.len());
                for piece in bytes.slices() {
                    copy.extend_from_slice(piece);
                }
                let (ptr, len) = (copy.as_ptr(), copy.len());
                (Storage::Copy(copy), ptr, len)
            }
        };
        // SAFETY: `ptr..ptr + len` is the contiguous reply: Zenoh's received slice, whose buffer
        // the `ZBytes` in `storage` keeps alive and unchanged (it is reference-counted and
        // never written once received; moving the `ZBytes` does not move it), or the heap
        // buffer of the copy, which does not move when the `AlignedVec` does.
        let slice = unsafe { std::slice::from_raw_parts(ptr, len) };
        let archived = raw::access::<Resp>(slice).map_err(|e| match e {
            shmrpc::Error::BadMessage(why) => Error::BadMessage(why),
            e => Error::Local(e),
        })?;
        Ok(RemoteReply {
            id,
            archived,
            storage,
        })
    }

    /// The call's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Whether the reply is read in the received buffer itself (no copy).
    pub fn in_place(&self) -> bool {
        matches!(self.storage, Storage::Received(_))
    }

    /// The archived reply.
    pub fn archived(&self) -> &Resp::Archived {
        // SAFETY: validated in `new`; points into `storage`, alive and unchanged while `self`.
        unsafe { &*self.archived }
    }

    /// Deserializes the reply into an owned `Resp`.
    pub fn deserialize(&self) -> Result<Resp> {
        shmrpc::rkyv::deserialize::<Resp, shmrpc::rkyv::rancor::Error>(self.archived())
            .map_err(|e| Error::BadMessage(format!("could not deserialize: {e}")))
    }
}

impl<Resp: Message> Deref for RemoteReply<Resp> {
    type Target = Resp::Archived;
    fn deref(&self) -> &Resp::Archived {
        self.archived()
    }
}

impl<Resp: Message> std::fmt::Debug for RemoteReply<Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReply")
            .field("id", &self.id)
            .field("in_place", &self.in_place())
            .finish_non_exhaustive()
    }
}
