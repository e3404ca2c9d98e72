//! Replies written in place ([`ServerBuilder::serve_in_place`](crate::ServerBuilder::serve_in_place)):
//! the handler hands its reply to a [`Responder`] while it still borrows the request, so that
//! a reply made of the request's bytes, or computed straight into shared memory
//! ([`Responder::fill`]), is written once, where the caller reads it.
//!
//! [`AsVec`] and [`AsString`] serialize borrowed data as a `Vec<T>` or a `String` would (the
//! same archive, so a caller's `Client<_, Vec<T>>` reads it), without owning it first.

use crate::error::Result;
use crate::large;
use crate::message::{Encode, Message, SlotWriter};
use crate::shm::Mapping;
use rkyv::rancor::{self, Fallible, Source};
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize, SerializeUnsized};
use std::cell::Cell;
use std::marker::PhantomData;

/// Where a handler's reply goes: [`Responder::send`] (or [`Responder::fill`]) writes it into the
/// call's slot or large-message memory, once, and returns the [`Replied`] token the handler
/// returns. For a one-way message to an in-place server the reply is dropped unwritten.
pub struct Responder<'o, T> {
    pub(crate) map: &'o Mapping,
    pub(crate) slot: u32,
    pub(crate) checked: bool,
    /// The caller does not wait for a reply (a one-way message): nothing is written.
    pub(crate) discard: bool,
    /// Whether a handler's buffer goes to shared memory directly (trusted server) or through
    /// a private copy first ([`crate::Trust::Untrusted`]).
    pub(crate) direct: bool,
    /// The worker's record holding the request's run, copied out, for the reply to reuse
    /// (`large::serialize_reply`); `None` where the request is read from it.
    pub(crate) held: Option<u32>,
    /// The archive's length and checksum, or why it could not be written.
    pub(crate) written: &'o mut Option<Result<(usize, u32)>>,
    pub(crate) _t: PhantomData<fn(T)>,
}

/// Proof that a handler replied: only a [`Responder`] makes one, for its own call (the
/// lifetime ties it to that call).
#[must_use = "the handler returns this"]
pub struct Replied<'o>(PhantomData<fn(&'o ()) -> &'o ()>);

impl<T> std::fmt::Debug for Responder<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("slot", &self.slot)
            .field("discard", &self.discard)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Replied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replied")
    }
}

impl<'o, T: Message> Responder<'o, T> {
    /// Replies with `value`, serialized straight into shared memory: any value whose archive
    /// is `T`'s ([`AsVec`] and [`AsString`] for borrowed data, or a `T` itself). A reply too
    /// large for the server's memory reaches the caller as `PayloadTooLarge`.
    pub fn send<V>(self, value: &V) -> Replied<'o>
    where
        V: Archive<Archived = T::Archived> + Encode,
    {
        if !self.discard {
            // SAFETY: the worker owns the slot (SERVING) until it publishes the reply, after
            // this handler returns; the request this handler reads is not in the slot's
            // payload area nor in the run the slot records (`InPlace::serve` copied it out or
            // moved its run to the worker's record), so both are free to overwrite, and the
            // run `held` records is set only where the request was copied out of it.
            *self.written = Some(unsafe {
                large::serialize_reply(self.map, self.slot, value, self.checked, self.held)
            });
        }
        Replied(PhantomData)
    }
}

impl<'o> Responder<'o, Vec<u8>> {
    /// Replies with `len` bytes that `fill` writes straight into shared memory (the room a
    /// reply of `Vec<u8>` of that length takes; `fill` sees it zeroed or holding old bytes,
    /// and must write all of it). `fill` runs at most once: not at all for a one-way message
    /// or a reply that cannot be placed (`PayloadTooLarge`). An untrusting server
    /// ([`crate::Trust::Untrusted`]) and a checksummed call give `fill` a private buffer and
    /// copy it.
    pub fn fill(self, len: usize, fill: impl FnOnce(&mut [u8])) -> Replied<'o> {
        let direct = self.direct;
        self.send(&Filled {
            len,
            direct,
            fill: Cell::new(Some(fill)),
        })
    }
}

/// Borrowed elements serialized as a `Vec<T>`: `responder.send(&AsVec(request.as_slice()))`
/// replies with a copy of a request's bytes, made once, into shared memory.
#[derive(Debug, Clone, Copy)]
pub struct AsVec<'a, T>(pub &'a [T]);

impl<T: Archive> Archive for AsVec<'_, T> {
    type Archived = ArchivedVec<T::Archived>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<T, S> Serialize<S> for AsVec<'_, T>
where
    T: Serialize<S>,
    S: Fallible + Allocator + Writer + ?Sized,
{
    fn serialize(&self, serializer: &mut S) -> Result<VecResolver, S::Error> {
        ArchivedVec::<T::Archived>::serialize_from_slice(self.0, serializer)
    }
}

/// A borrowed string serialized as a `String`.
#[derive(Debug, Clone, Copy)]
pub struct AsString<'a>(pub &'a str);

impl Archive for AsString<'_> {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve(&self, resolver: StringResolver, out: Place<ArchivedString>) {
        ArchivedString::resolve_from_str(self.0, resolver, out);
    }
}

impl<S: Fallible + ?Sized> Serialize<S> for AsString<'_>
where
    S::Error: Source,
    str: SerializeUnsized<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(self.0, serializer)
    }
}

/// `len` bytes written by a closure, archived as a `Vec<u8>` ([`Responder::fill`]).
struct Filled<F> {
    len: usize,
    direct: bool,
    fill: Cell<Option<F>>,
}

impl<F> Archive for Filled<F> {
    type Archived = ArchivedVec<u8>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: VecResolver, out: Place<ArchivedVec<u8>>) {
        ArchivedVec::<u8>::resolve_from_len(self.len, resolver, out);
    }
}

type High<'a> = rkyv::api::high::HighSerializer<SlotWriter, ArenaHandle<'a>, rancor::Error>;

impl<'a, F: FnOnce(&mut [u8])> Serialize<High<'a>> for Filled<F> {
    fn serialize(&self, serializer: &mut High<'a>) -> Result<VecResolver, rancor::Error> {
        let pos = serializer.writer.pos_now();
        serializer.writer.fill(self.len, self.direct, &self.fill)?;
        Ok(VecResolver::from_pos(pos))
    }
}
