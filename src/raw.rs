//! Calls whose messages were archived elsewhere: for a bridge that forwards other callers'
//! calls without knowing their types (`shmrpc-zenoh` serves a local server to other hosts
//! this way).
//!
//! A [`RawClient`] writes the archive it is given into the slot byte for byte, with the call id
//! and type fingerprints it is given, and hands back the reply's bytes unvalidated. The server
//! checks the fingerprints and validates the request exactly as it does for a typed call, so a
//! raw call cannot do anything a typed one could not; the reply is validated by whoever decodes
//! it (the remote caller). An archive is position-independent (rkyv's relative pointers), and a
//! slot's payload area and an arena run are 16-byte aligned like the buffer rkyv serialized it
//! into, so the copy is the same archive.

use crate::client::{CallTag, Client, ClientBuilder, Held, Published};
use crate::error::{Error, Result};
use crate::layout::kind;
use crate::message;
use rkyv::rancor::Fallible;
use rkyv::ser::Writer;
use rkyv::{Archive, Deserialize, Place, Serialize};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// An archive made elsewhere, which "serializes" by writing its pieces as they are, one after
/// the other: its own archived form is empty, so rkyv adds nothing after them.
pub(crate) struct Prebuilt<'a>(&'a [&'a [u8]]);

impl Archive for Prebuilt<'_> {
    type Archived = ();
    type Resolver = ();

    fn resolve(&self, _: (), _: Place<()>) {}
}

impl<S: Fallible + Writer<S::Error> + ?Sized> Serialize<S> for Prebuilt<'_> {
    fn serialize(&self, serializer: &mut S) -> std::result::Result<(), S::Error> {
        self.0.iter().try_for_each(|piece| serializer.write(piece))
    }
}

impl<'a, D: Fallible + ?Sized> Deserialize<Prebuilt<'a>, D> for () {
    fn deserialize(&self, _: &mut D) -> std::result::Result<Prebuilt<'a>, D::Error> {
        Ok(Prebuilt(&[]))
    }
}

/// One forwarded call: an archive of the request type whose fingerprint is `request_type`
/// ([`fingerprint`] of the type on the sender's side), the fingerprint of
/// the reply type its caller expects (ignored for one-way messages), and its id.
#[derive(Clone, Copy, Debug)]
pub struct RawCall<'a> {
    /// The request's archive, as `rkyv::to_bytes` (or any shmrpc sender) made it: in one
    /// piece, or in several that are written into the slot one after the other (as a network
    /// buffer holds a message it received in fragments), so that the caller need not join
    /// them first.
    pub archive: &'a [&'a [u8]],
    /// The request type's fingerprint.
    pub request_type: u32,
    /// The fingerprint of the reply type the caller expects.
    pub reply_type: u32,
    /// The call's id, which the server's handler sees.
    pub id: Uuid,
}

/// A handle on a local server for calls archived elsewhere (see the module documentation).
/// Cheap to clone, `Send + Sync`, any number of calls at once, like [`Client`].
#[derive(Clone, Debug)]
pub struct RawClient {
    client: Client<Vec<u8>>,
}

impl RawClient {
    /// Connects to the server `name` with the default timeout and wait mode, trusting the
    /// server (replies are read in the slot).
    pub fn connect(name: &str) -> Result<RawClient> {
        Self::with(Client::builder(name))
    }

    /// Connects as `builder` says (its timeout, wait mode and trust; its types do not matter:
    /// each call names its own).
    pub fn with(builder: ClientBuilder) -> Result<RawClient> {
        Ok(RawClient {
            client: builder.connect::<Vec<u8>, Vec<u8>>()?,
        })
    }

    /// The server name.
    pub fn name(&self) -> &str {
        self.client.name()
    }

    /// The largest message the server takes ([`Client::max_message`]).
    pub fn max_message(&self) -> usize {
        self.client.max_message()
    }

    /// Forwards a request and waits at most `timeout` for its reply's bytes.
    ///
    /// The errors are those of [`Client::request_timeout`]; a `TypeMismatch` carries the
    /// server's types in words in `server` and an empty `client` (the forwarder does not know
    /// the caller's types in words).
    pub fn request(&self, call: &RawCall<'_>, timeout: Duration) -> Result<RawReply<'_>> {
        let done = self
            .client
            .call_tagged(
                Some(&Prebuilt(call.archive)),
                kind::REQUEST,
                timeout,
                tag(call),
            )
            .map_err(unlabel)?;
        let id = done.id;
        let (held, ptr, len) = self.client.reply_bytes(done).map_err(unlabel)?;
        Ok(RawReply { id, held, ptr, len })
    }

    /// Publishes a forwarded request or one-way message (`kind`) and returns without waiting
    /// for the server: a [`RawPending`], which this or any other thread then waits for. With
    /// `first` (shorter than `timeout`), it waits for a free slot or for large-message memory
    /// at most that long and returns `Ok(None)`, holding nothing, if it would have to wait
    /// longer; a caller that must not block (a network library's receive path) tries this
    /// first and hands the call to a thread that may block otherwise.
    pub fn publish(
        &self,
        call: &RawCall<'_>,
        kind: RawKind,
        timeout: Duration,
        first: Option<Duration>,
    ) -> Result<Option<RawPending>> {
        let k = match kind {
            RawKind::Request => kind::REQUEST,
            RawKind::OneWay => kind::ONEWAY,
        };
        let published = self
            .client
            .publish_tagged(Some(&Prebuilt(call.archive)), k, timeout, tag(call), first)
            .map_err(unlabel)?;
        Ok(published.map(|published| RawPending {
            client: self.clone(),
            published,
            kind,
        }))
    }

    /// Forwards a one-way message; returns once the server has taken it, at most `timeout`.
    pub fn send(&self, call: &RawCall<'_>, timeout: Duration) -> Result<()> {
        let done = self
            .client
            .call_tagged(
                Some(&Prebuilt(call.archive)),
                kind::ONEWAY,
                timeout,
                tag(call),
            )
            .map_err(unlabel)?;
        self.client.take_accept(done).map_err(unlabel)
    }

    /// A protocol-level ping ([`Client::ping_timeout`]).
    pub fn ping(&self, timeout: Duration) -> Result<Duration> {
        self.client.ping_timeout(timeout)
    }
}

fn tag(call: &RawCall<'_>) -> CallTag {
    CallTag {
        id: call.id,
        types: (call.request_type.max(1), call.reply_type.max(1)),
    }
}

/// A `TypeMismatch`'s client side is the raw handle's own (byte vectors), which says nothing
/// about the caller it forwards: leave it empty.
fn unlabel(e: Error) -> Error {
    match e {
        Error::TypeMismatch { name, server, .. } => Error::TypeMismatch {
            name,
            client: String::new(),
            server,
        },
        e => e,
    }
}

/// What a [`RawClient::publish`]ed call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawKind {
    /// A request, answered by a reply.
    Request,
    /// A one-way message, done once the server has taken it.
    OneWay,
}

/// How a [`RawPending`] call ended.
#[derive(Debug)]
pub enum RawDone {
    /// A request's reply.
    Reply(RawReply<'static>),
    /// A one-way message the server has taken.
    Accepted,
}

/// A call published by [`RawClient::publish`] and not yet answered. It is `Send`: the thread
/// that published it may hand it to another to wait. Dropped before it is answered, it gives
/// the call up, as a call that timed out does (the server frees the slot, or the drop frees the
/// reply that came).
#[derive(Debug)]
pub struct RawPending {
    client: RawClient,
    published: Published,
    kind: RawKind,
}

impl RawPending {
    /// The call's id.
    pub fn id(&self) -> Uuid {
        self.published.id()
    }

    /// Waits for the call's end, at most until its deadline (the `timeout` it was published
    /// with): the errors of [`RawClient::request`] and [`RawClient::send`].
    pub fn wait(mut self) -> Result<RawDone> {
        // `None` only for a call already taken, which an owned `RawPending` never is.
        self.finish(None)
            .unwrap_or_else(|| Err(self.client.client.lost()))
    }

    /// Waits for the call's end until `until` at most (or its deadline, if earlier), and
    /// gives the call back, still pending, if it has not ended by then: to wait for again, here
    /// or in another thread.
    pub fn wait_until(
        mut self,
        until: Instant,
    ) -> std::result::Result<Result<RawDone>, RawPending> {
        self.finish(Some(until)).ok_or(self)
    }

    fn finish(&mut self, until: Option<Instant>) -> Option<Result<RawDone>> {
        let client = &self.client.client;
        let done = match client.wait_published(&mut self.published, until)? {
            Ok(done) => done,
            Err(e) => return Some(Err(unlabel(e))),
        };
        Some(
            match self.kind {
                RawKind::Request => client.reply_bytes(done).map(|(held, ptr, len)| {
                    RawDone::Reply(RawReply {
                        id: self.published.id(),
                        held,
                        ptr,
                        len,
                    })
                }),
                RawKind::OneWay => client.take_accept(done).map(|()| RawDone::Accepted),
            }
            .map_err(unlabel),
        )
    }
}

/// A forwarded request's reply, unvalidated: its bytes in the slot (a trusting handle) or in
/// a private copy (untrusting), held until it drops like a [`Reply`](crate::Reply).
pub struct RawReply<'c> {
    id: Uuid,
    held: Held<'c>,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `ptr` points into what `held` keeps alive (the slot, owned by the process, not by a
// thread, and released by a compare-and-swap from whichever thread drops it; or a heap buffer
// that does not move), and is only ever read through a shared slice.
unsafe impl Send for RawReply<'_> {}
// SAFETY: as above; sharing only hands out `&[u8]`.
unsafe impl Sync for RawReply<'_> {}

impl RawReply<'_> {
    /// The call's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The reply's archive, to validate (with [`access`]) before use.
    pub fn bytes(&self) -> &[u8] {
        let _ = &self.held;
        // SAFETY: `reply_bytes` gave `len` bytes at `ptr`, valid while `held` lives (as long as
        // `self`, which the returned borrow is tied to).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::fmt::Debug for RawReply<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawReply")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Validates `bytes` as an archived `T` exactly as a typed caller validates its reply (with
/// bytecheck, nesting bounded) and returns a reference into them; the bytes must be 16-byte
/// aligned, or the archive does not validate.
pub fn access<T: crate::Message>(bytes: &[u8]) -> Result<&T::Archived> {
    message::access::<T>(bytes)
}

/// The fingerprint a typed caller sends for `T` (what [`RawCall::request_type`] and
/// [`RawCall::reply_type`] hold): FNV-1a over its type name and archived size (DESIGN.md,
/// "Types on the wire").
pub fn fingerprint<T: crate::Message>() -> u32 {
    message::fingerprint::<T>()
}

/// `T`'s type in words (its name and archived size), as a server's `TypeMismatch` words it.
pub fn type_label<T: crate::Message>() -> String {
    message::type_label::<T>()
}

/// Whether `name` is an acceptable server name (the rules of `Server::builder`), without
/// looking for a server.
pub fn validate_name(name: &str) -> Result<()> {
    crate::shm::validate_name(name)
}

/// A fresh call id, as a typed client makes one for each call (random, version 4).
pub fn new_call_id() -> Uuid {
    message::new_call_id()
}

/// Serializes `value` as a typed client would, into `out` (cleared first): the archive that a
/// [`RawCall`] carries and that [`access`] validates. `out`'s capacity is reused; a message
/// larger than it is serialized a second time into room of its exact size.
pub fn archive_into<T: crate::Message>(value: &T, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    loop {
        let cap = out.capacity();
        // SAFETY: `out`'s spare capacity (`cap` bytes from its start, the vector being empty)
        // is writable and ours while we hold `&mut out`; the writer writes nothing past `cap`
        // (it counts on without writing), and the archive's alignment is relative to its start,
        // so the buffer's own alignment does not matter for writing it.
        match unsafe { message::serialize_into(value, out.as_mut_ptr(), cap, false, false) } {
            Ok(Ok((len, _))) => {
                // SAFETY: the serializer initialized the first `len <= cap` bytes.
                unsafe { out.set_len(len) };
                return Ok(());
            }
            Err(Error::PayloadTooLarge { len, .. }) if len > cap => out.reserve_exact(len),
            // (Only a writer told to stop at the end reports this; ours counts on.)
            Ok(Err(need)) => out.reserve_exact(need),
            Err(e) => return Err(e),
        }
    }
}
