//! Messages: the rkyv bounds a message type meets, serialization straight into a slot, and
//! validated access to a peer's bytes.

use crate::error::{Error, Result};
use crate::layout::Checksum;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::Arena;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::ser::sharing::Share;
use rkyv::ser::{Positional, Writer};
use std::cell::Cell;
use uuid::Uuid;

/// A type that can travel through shmrpc: any rkyv type whose archive validates with
/// bytecheck. `String`, `Vec<u8>`, primitives, tuples and every [`#[shmrpc::message]`](macro@crate::message)
/// type (or `#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]` type) qualify; the
/// blanket impl means nobody implements this by hand.
pub trait Message:
    rkyv::Archive<
        Archived: rkyv::Portable
                      + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                      + rkyv::Deserialize<Self, HighDeserializer<rancor::Error>>,
    > + for<'a> rkyv::Serialize<HighSerializer<SlotWriter, ArenaHandle<'a>, rancor::Error>>
    + Sized
{
}

impl<T> Message for T where
    T: rkyv::Archive<
            Archived: rkyv::Portable
                          + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
                          + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
        > + for<'a> rkyv::Serialize<HighSerializer<SlotWriter, ArenaHandle<'a>, rancor::Error>>
{
}

/// The rkyv writer that serializes straight into a slot's payload area.
///
/// Past the end of the area it keeps counting without writing, so that a message too large
/// for the slot reports its exact size in `PayloadTooLarge` without a second pass.
#[derive(Debug)]
pub struct SlotWriter {
    ptr: *mut u8,
    cap: usize,
    pos: usize,
    /// Sums the bytes as they are written (untrusting peers), from our own copy of them.
    sum: Option<Checksum>,
}

impl Positional for SlotWriter {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> Writer<E> for SlotWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        if let Some(sum) = &mut self.sum {
            sum.update(bytes);
        }
        let end = self.pos.saturating_add(bytes.len());
        if end <= self.cap {
            // SAFETY: `pos..end` lies inside the `cap` bytes at `ptr`, which the caller of
            // `serialize_into` owns (its slot is CLAIMED by the client or SERVING by the
            // worker), and `bytes` is a distinct Rust slice, so the ranges do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(self.pos), bytes.len())
            };
        }
        self.pos = end;
        Ok(())
    }
}

/// Serializes `value` into the `cap` bytes at `dst`; returns the archive's length and, if
/// `checked`, its checksum (0 otherwise), summed from the bytes as they were produced.
///
/// # Safety
/// `dst..dst + cap` must be writable and owned by the caller (its slot is CLAIMED by this
/// client or SERVING by this worker) for the duration of the call, and aligned to 16.
#[inline]
pub(crate) unsafe fn serialize_into<T: Message>(
    value: &T,
    dst: *mut u8,
    cap: usize,
    checked: bool,
) -> Result<(usize, u32)> {
    let writer = SlotWriter {
        ptr: dst,
        cap,
        pos: 0,
        sum: checked.then(Checksum::new),
    };
    let written = with_arena(|arena| {
        let mut serializer = rkyv::ser::Serializer::new(writer, arena.acquire(), Share::new());
        match rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer) {
            Ok(_) => Ok(serializer.into_writer()),
            Err(e) => Err(e),
        }
    });
    match written {
        Ok(w) if w.pos <= cap => Ok((w.pos, w.sum.map_or(0, |s| s.finish()))),
        Ok(w) => Err(Error::PayloadTooLarge {
            len: w.pos,
            max: cap,
        }),
        Err(e) => Err(not_serialized(e)),
    }
}

thread_local! {
    /// This thread's scratch arena for serialization (rkyv's `with_arena` also shrinks it
    /// after every use; `Arena::acquire` already does at the start of the next one).
    static ARENA: Cell<Option<Arena>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's arena (a fresh one if a `Serialize` impl serializes a message
/// itself, re-entering this while the arena is out).
#[inline]
fn with_arena<R>(f: impl FnOnce(&mut Arena) -> R) -> R {
    // `try_with`: during this thread's TLS destruction (a call from another thread-local's
    // destructor) the cell is gone; such a call gets a fresh arena and drops it.
    let mut arena = ARENA
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    let r = f(&mut arena);
    let _ = ARENA.try_with(|cell| cell.set(Some(arena)));
    r
}

#[cold]
fn not_serialized(e: rancor::Error) -> Error {
    Error::BadMessage(format!("could not serialize the message: {e}"))
}

/// Validates `bytes` as an archived `T` with bytecheck and returns a reference into them.
pub fn access<T: Message>(bytes: &[u8]) -> Result<&T::Archived> {
    rkyv::access::<T::Archived, rancor::Error>(bytes).map_err(|e| {
        Error::BadMessage(format!(
            "the bytes do not validate as {}: {e}",
            std::any::type_name::<T>()
        ))
    })
}

/// Deserializes an archived `T` into an owned `T`.
pub fn deserialize<T: Message>(archived: &T::Archived) -> Result<T> {
    rkyv::deserialize::<T, rancor::Error>(archived)
        .map_err(|e| Error::BadMessage(format!("could not deserialize: {e}")))
}

thread_local! {
    static RNG: Cell<u64> = const { Cell::new(0) };
}

/// A fresh random (version 4) UUID for a call, from a per-thread SplitMix64 generator seeded
/// once from the operating system: no system call and no allocation per call. Call ids only
/// need to be unique, not unpredictable.
pub fn new_call_id() -> Uuid {
    RNG.with(|state| {
        let mut s = state.get();
        if s == 0 {
            s = Uuid::new_v4().as_u64_pair().0 | 1;
        }
        let mut next = || {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let bytes = ((u128::from(next()) << 64) | u128::from(next())).to_le_bytes();
        state.set(s);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
    struct Mixed {
        n: u64,
        text: String,
        list: Vec<u32>,
        arr: [u8; 300],
        opt: Option<Box<u64>>,
    }

    /// Serializes `v` into a 64-byte aligned buffer, with and without the streaming checksum,
    /// and checks that both give rkyv's own bytes (and the checksum the reader computes).
    fn same_bytes<T>(v: &T)
    where
        T: Message
            + for<'a> rkyv::Serialize<
                HighSerializer<rkyv::util::AlignedVec, ArenaHandle<'a>, rancor::Error>,
            >,
    {
        let expect = rkyv::to_bytes::<rancor::Error>(v).unwrap();
        let mut buf = rkyv::util::AlignedVec::<64>::with_capacity(1 << 20);
        buf.resize(1 << 20, 0xAA);
        for checked in [false, true] {
            // SAFETY: the buffer is ours, 64-byte aligned and `cap` bytes long.
            let (len, sum) =
                unsafe { serialize_into(v, buf.as_mut_ptr(), buf.len(), checked) }.unwrap();
            assert_eq!(&buf[..len], expect.as_slice(), "checked {checked}");
            if checked {
                assert_eq!(sum, crate::layout::checksum(&expect));
            }
            buf.fill(0xAA);
        }
    }

    #[test]
    fn slot_writer_gives_rkyvs_bytes_and_checksum() {
        same_bytes(&"hello".to_string());
        same_bytes(&vec![1u8, 2, 3]);
        same_bytes(&[7u8; 131072]);
        same_bytes(&(3u32, "x".to_string()));
        same_bytes(&Mixed {
            n: 9,
            text: "some text that is longer than inline".into(),
            list: (0..100).collect(),
            arr: [5; 300],
            opt: Some(Box::new(77)),
        });
    }

    #[test]
    fn a_root_too_large_for_the_slot_reports_its_size() {
        let mut buf = rkyv::util::AlignedVec::<64>::with_capacity(4096);
        buf.resize(4096, 0);
        // SAFETY: as above.
        let r = unsafe { serialize_into(&[1u8; 8192], buf.as_mut_ptr(), buf.len(), false) };
        assert!(
            matches!(
                r,
                Err(Error::PayloadTooLarge {
                    len: 8192,
                    max: 4096
                })
            ),
            "{r:?}"
        );
    }
}
