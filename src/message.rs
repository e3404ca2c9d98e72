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
use rkyv::validation::{archive::ArchiveValidator, shared::SharedValidator, Validator};
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

/// A value that serializes into shared memory: any rkyv `Serialize` for shmrpc's writer (every
/// [`Message`], and borrowed forms such as [`crate::AsVec`] that archive as one).
pub trait Encode:
    for<'a> rkyv::Serialize<HighSerializer<SlotWriter, ArenaHandle<'a>, rancor::Error>>
{
}

impl<T> Encode for T where
    T: for<'a> rkyv::Serialize<HighSerializer<SlotWriter, ArenaHandle<'a>, rancor::Error>>
{
}

/// The rkyv writer that serializes straight into a slot's payload area or an arena run.
///
/// Past the end of its area it either stops the serialization (`stop_at_end`: the first
/// attempt of a message that may move to the arena, which then knows it needs more room than a
/// slot) or keeps counting without writing, so that a message too large for the area reports
/// its exact size without a second pass.
#[derive(Debug)]
pub struct SlotWriter {
    ptr: *mut u8,
    cap: usize,
    pos: usize,
    /// Sums the bytes as they are written (untrusting peers), from our own copy of them.
    sum: Option<Checksum>,
    /// Stop at the first write past the end instead of counting on.
    stop_at_end: bool,
}

/// Why a writer stopped a serialization: the message outgrew its area.
#[derive(Debug)]
struct Outgrown;

impl std::fmt::Display for Outgrown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the message outgrew its area")
    }
}

impl std::error::Error for Outgrown {}

thread_local! {
    /// Set by a writer that stopped a serialization ([`Outgrown`]) to the size the message
    /// needed at that point (0: none stopped), read right after.
    static OUTGROWN: Cell<usize> = const { Cell::new(0) };
}

impl Positional for SlotWriter {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: rancor::Source> Writer<E> for SlotWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos.saturating_add(bytes.len());
        if end > self.cap && self.stop_at_end {
            return Err(outgrown(end));
        }
        if let Some(sum) = &mut self.sum {
            sum.update(bytes);
        }
        if end <= self.cap {
            // SAFETY: `pos..end` lies inside the `cap` bytes at `ptr`, which the caller of
            // `serialize_into` owns (its slot is CLAIMED by the client or SERVING by the
            // worker, and so is the run the slot records), and `bytes` is a distinct Rust
            // slice, so the ranges do not overlap. (A byte buffer larger than half the L3 is
            // one such write, and goes out by streaming stores: `copy::to_shared`.)
            unsafe { crate::copy::to_shared(bytes.as_ptr(), self.ptr.add(self.pos), bytes.len()) };
        }
        self.pos = end;
        Ok(())
    }
}

impl SlotWriter {
    /// Bytes written so far (or counted, past the end).
    pub(crate) fn pos_now(&self) -> usize {
        self.pos
    }

    /// Writes `len` bytes produced by the closure in `fill` (taken: it runs at most once)
    /// like [`Writer::write`] would write them: straight into the area if `direct` and no
    /// checksum is kept, else into a private buffer first; past the end it stops or counts
    /// without running the closure.
    pub(crate) fn fill<F: FnOnce(&mut [u8])>(
        &mut self,
        len: usize,
        direct: bool,
        fill: &Cell<Option<F>>,
    ) -> Result<(), rancor::Error> {
        use rancor::Source;
        let end = self.pos.saturating_add(len);
        if end > self.cap {
            if self.stop_at_end {
                return Err(outgrown(end));
            }
            self.pos = end;
            return Ok(());
        }
        let Some(f) = fill.take() else {
            return Err(rancor::Error::new(Outgrown));
        };
        if direct && self.sum.is_none() {
            // SAFETY: `pos..end` lies inside the `cap` bytes at `ptr`, which the caller of
            // `serialize_into` owns (a worker's SERVING slot, or the run it records): by the
            // protocol no other process writes there until the reply is published, and nothing
            // in this process borrows it; u8 has no invalid values.
            let area = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(self.pos), len) };
            f(area);
            self.pos = end;
            return Ok(());
        }
        let mut own = vec![0u8; len];
        f(&mut own);
        <Self as Writer<rancor::Error>>::write(self, &own)
    }
}

#[cold]
fn outgrown<E: rancor::Source>(need: usize) -> E {
    let _ = OUTGROWN.try_with(|o| o.set(need.max(1)));
    E::new(Outgrown)
}

/// Serializes `value` into the `cap` bytes at `dst`; returns the archive's length and, if
/// `checked`, its checksum (0 otherwise), summed from the bytes as they were produced; or
/// `Err(need)` if `stop_at_end` and the message outgrew the area: the serialization stopped at
/// the first write past its end (nothing past `cap` was touched), when the message needed
/// `need` bytes at least (for a byte buffer, whose bytes are one write, about all of it).
/// Without `stop_at_end` a message larger than the area gets `PayloadTooLarge` with its exact
/// length.
///
/// # Safety
/// `dst..dst + cap` must be writable and owned by the caller (its slot is CLAIMED by this
/// client or SERVING by this worker) for the duration of the call, and aligned to 16 if the
/// archive is to be read in place there (writing it does not depend on the alignment).
#[inline(always)]
pub(crate) unsafe fn serialize_into<T: Encode>(
    value: &T,
    dst: *mut u8,
    cap: usize,
    checked: bool,
    stop_at_end: bool,
) -> Result<Result<(usize, u32), usize>> {
    if is_plain::<T>() {
        // One copy, with the outcomes the writer would give: the size needed if it stops at
        // the end, `PayloadTooLarge` if not, nothing written past `cap` either way.
        let len = size_of::<T>();
        if len > cap {
            if stop_at_end {
                return Ok(Err(len));
            }
            return Err(Error::PayloadTooLarge { len, max: cap });
        }
        // SAFETY: `is_plain`: rkyv attests (`COPY_OPTIMIZATION`) that `T` has no uninit bytes
        // and archives as its own bytes, and `T::Archived` has `T`'s size; `value` is a live
        // `&T`, so its `size_of::<T>()` bytes are initialized and readable.
        let bytes = unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), len) };
        // SAFETY: `len <= cap`, and `dst..dst + cap` is the caller's to write (this function's
        // contract); `bytes` is a distinct Rust value, so the ranges do not overlap.
        unsafe { crate::copy::to_shared(bytes.as_ptr(), dst, len) };
        // Summed from our own copy of the bytes, as the writer sums them.
        let sum = if checked {
            crate::layout::checksum(bytes)
        } else {
            0
        };
        return Ok(Ok((len, sum)));
    }
    let writer = SlotWriter {
        ptr: dst,
        cap,
        pos: 0,
        sum: checked.then(Checksum::new),
        stop_at_end,
    };
    let written = with_arena(|arena| {
        let mut serializer = rkyv::ser::Serializer::new(writer, arena.acquire(), Share::new());
        match rkyv::api::serialize_using::<_, rancor::Error>(value, &mut serializer) {
            Ok(_) => Ok(serializer.into_writer()),
            Err(e) => Err(e),
        }
    });
    match written {
        Ok(w) if w.pos <= cap => Ok(Ok((w.pos, w.sum.map_or(0, |s| s.finish())))),
        Ok(w) => Err(Error::PayloadTooLarge {
            len: w.pos,
            max: cap,
        }),
        Err(e) => match OUTGROWN.try_with(|o| o.replace(0)).unwrap_or(0) {
            need if need > 0 && stop_at_end => Ok(Err(need)),
            _ => Err(not_serialized(e)),
        },
    }
}

/// Whether `T` archives as a copy of its own bytes: rkyv's `COPY_OPTIMIZATION` (numbers and
/// arrays of them on a target whose endianness and pointer width are the archive format's,
/// and derived structs of such fields without padding; not tuples) with an archived form of
/// `T`'s size. Such a value is its archive: serializing it
/// is one copy, and the archive is the same bytes as rkyv's serializer writes from position 0
/// (nothing out of line, no padding before or inside the root), which
/// `plain_values_serialize_to_rkyvs_bytes` checks.
#[inline(always)]
const fn is_plain<T: rkyv::Archive>() -> bool {
    T::COPY_OPTIMIZATION.is_enabled() && size_of::<T>() == size_of::<T::Archived>()
}

thread_local! {
    /// This thread's scratch arena for serialization (rkyv's `with_arena` also shrinks it
    /// after every use; `Arena::acquire` already does at the start of the next one).
    static ARENA: Cell<Option<Arena>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's arena (a fresh one if a `Serialize` impl serializes a message
/// itself, re-entering this while the arena is out).
#[inline(always)]
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

/// The deepest nesting of pointers (boxes, vectors, strings, options of them...) that a
/// message may have: validation recurses once per level, so without a bound one message of a
/// recursive type (a chain of `Box`es a few hundred kilobytes long) overflows the validating
/// thread's stack and aborts its process. Measured here, a level costs about 1 KiB of stack
/// in a debug build (much less optimized): at this bound validation needs at most about
/// 256 KiB even there (`validation_of_the_deepest_message_fits_a_small_stack` checks it on a
/// 512 KiB thread), which any thread has. A deeper message is `BadMessage` (serde_json's
/// default limit is 128; a long list belongs in a `Vec`, which is one level).
pub const MAX_DEPTH: usize = 256;

/// Validates `bytes` as an archived `T` with bytecheck (nesting at most [`MAX_DEPTH`]) and
/// returns a reference into them.
///
/// A plain value ([`is_plain`]: no pointers, nothing out of line) skips the validator's
/// bookkeeping of subtree ranges, which only pointers consult: its root is placed and checked
/// for bounds and alignment as rkyv's `access` places and checks it (at the end of `bytes`),
/// and its `CheckBytes` runs as always (a `bool` must be 0 or 1, a `char` a scalar value).
/// `plain_access_agrees_with_rkyv` checks that both give the same answer.
pub fn access<T: Message>(bytes: &[u8]) -> Result<&T::Archived> {
    if is_plain::<T>() {
        return access_plain::<T>(bytes);
    }
    let mut validator = Validator::new(
        ArchiveValidator::with_max_depth(bytes, std::num::NonZeroUsize::new(MAX_DEPTH)),
        SharedValidator::new(),
    );
    rkyv::api::access_with_context::<T::Archived, _, rancor::Error>(bytes, &mut validator)
        .map_err(|e| not_valid::<T>(&e))
}

/// [`access`] of a plain value.
#[inline(always)]
fn access_plain<T: Message>(bytes: &[u8]) -> Result<&T::Archived> {
    use rkyv::rancor::{Source, Strategy};
    let size = size_of::<T::Archived>();
    // rkyv's root position: the last `size` bytes.
    let Some(pos) = bytes.len().checked_sub(size) else {
        return Err(not_valid::<T>(&rancor::Error::new(Short(
            bytes.len(),
            size,
        ))));
    };
    let root = bytes.as_ptr().wrapping_add(pos);
    if !(root as usize).is_multiple_of(align_of::<T::Archived>()) {
        return Err(not_valid::<T>(&rancor::Error::new(Unaligned(
            root as usize,
        ))));
    }
    let mut validator = Validator::new(ArchiveValidator::new(bytes), SharedValidator::new());
    // SAFETY: `root..root + size` lies inside `bytes` (`pos + size == bytes.len()`), which
    // stays borrowed for the result's lifetime, and `root` is aligned for `T::Archived`: what
    // `check_bytes` requires of its pointer.
    unsafe {
        <T::Archived as CheckBytes<_>>::check_bytes(
            root.cast::<T::Archived>(),
            Strategy::<_, rancor::Error>::wrap(&mut validator),
        )
    }
    .map_err(|e| not_valid::<T>(&e))?;
    // SAFETY: the bytes at `root` (in bounds and aligned, above) validated as a
    // `T::Archived`, which is `Portable`; `bytes` is borrowed for the result's lifetime.
    Ok(unsafe { &*root.cast::<T::Archived>() })
}

/// A plain value's bytes refused before its own check: too few of them...
#[derive(Debug)]
struct Short(usize, usize);

impl std::fmt::Display for Short {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes, where the archived value needs {}",
            self.0, self.1
        )
    }
}

impl std::error::Error for Short {}

/// ...or its root not aligned for its type.
#[derive(Debug)]
struct Unaligned(usize);

impl std::fmt::Display for Unaligned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the archived value at {:#x} is not aligned for its type",
            self.0
        )
    }
}

impl std::error::Error for Unaligned {}

#[cold]
fn not_valid<T>(e: &rancor::Error) -> Error {
    Error::BadMessage(format!(
        "the bytes do not validate as {}: {e}",
        std::any::type_name::<T>()
    ))
}

/// The type fingerprint of `T` that travels with every call (`SlotHeader::req_type` and
/// `reply_type`): FNV-1a over `T`'s type name (`std::any::type_name`, with its module path)
/// and the size of its archived form, folded to 32 bits, never 0 (0 means "no type": a ping,
/// or the reply of a one-way message). The same on every target for the same source and
/// compiler version (`type_name`'s text is not promised across compiler versions): rkyv's
/// archived layout does not depend on the pointer width (DESIGN.md, section 2). Computed once
/// per client handle and per server, not per call.
pub fn fingerprint<T: Message>() -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let name = std::any::type_name::<T>().as_bytes();
    let size = (std::mem::size_of::<T::Archived>() as u64).to_le_bytes();
    for &b in name.iter().chain(b"\0").chain(&size) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let folded = (h ^ (h >> 32)) as u32;
    folded.max(1)
}

/// What a type fingerprint stands for, in human terms: the type's name and archived size.
pub fn type_label<T: Message>() -> String {
    format!(
        "{} ({} archived bytes)",
        std::any::type_name::<T>(),
        std::mem::size_of::<T::Archived>()
    )
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
        let (hi, lo) = (next(), next());
        state.set(s);
        // Version 4 (bits 12..16 of the high half, the high nibble of byte 6) and the RFC 4122
        // variant (the top two bits of the low half, byte 8), set on the two words directly:
        // what `uuid::Builder::from_random_bytes` does byte by byte.
        Uuid::from_u64_pair((hi & !0xF000) | 0x4000, (lo & !(0xC0 << 56)) | (0x80 << 56))
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

    #[test]
    fn call_ids_are_random_version_4_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_call_id();
            assert_eq!(id.get_version(), Some(uuid::Version::Random), "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert!(seen.insert(id), "call id {id} repeated");
        }
        // Every one of the 122 random bits takes both values.
        let (and, or) = seen.iter().fold((u128::MAX, 0u128), |(a, o), id| {
            (a & id.as_u128(), o | id.as_u128())
        });
        let fixed: u128 = (0xF000u128 << 64) | (0xC0u128 << 56);
        assert_eq!(!and & !fixed & or, !fixed, "some random bit never changed");
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
                unsafe { serialize_into(v, buf.as_mut_ptr(), buf.len(), checked, false) }
                    .unwrap()
                    .unwrap();
            assert_eq!(&buf[..len], expect.as_slice(), "checked {checked}");
            if checked {
                assert_eq!(sum, crate::layout::checksum(&expect));
            }
            buf.fill(0xAA);
        }
    }

    #[test]
    fn plain_values_serialize_to_rkyvs_bytes() {
        // Copied as their own bytes (on a little-endian target of either pointer width).
        assert!(is_plain::<[u8; 64]>() && is_plain::<u8>());
        if cfg!(target_endian = "little") {
            assert!(is_plain::<u64>() && is_plain::<[u64; 3]>() && is_plain::<f64>());
        }
        // Not copies: out-of-line data, a tag, tuples (rkyv does not attest them).
        assert!(!is_plain::<String>() && !is_plain::<Vec<u8>>() && !is_plain::<Option<u32>>());
        assert!(!is_plain::<(u32, u32)>());
        same_bytes(&[9u8; 64]);
        same_bytes(&0x0102_0304_0506_0708u64);
        same_bytes(&(7u32, 0xFFFF_FFFFu32));
        same_bytes(&[1u64, 2, 3]);
        same_bytes(&-5i16);
        same_bytes(&1.5f64);
        same_bytes(&true);
        same_bytes(&'é');
    }

    /// A plain struct with fields that have invalid bit patterns (a `bool` must be 0 or 1, a
    /// `char` a scalar value), no padding and its fields in order, so that rkyv attests it.
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone, Copy)]
    #[repr(C)]
    struct Picky {
        n: u32,
        c: char,
        b: bool,
        rest: [u8; 3],
    }

    /// `access` of a plain value (its own path, `access_plain`) and rkyv's `access` accept the
    /// same bytes, at the same place, and refuse the same bytes: every value of one byte, and
    /// for each type deterministic random and planted invalid contents, at every alignment
    /// of a 16-aligned buffer and at lengths from none to a few bytes over the value's size.
    fn plain_access_agrees<T: Message>(planted: &[&[u8]]) {
        assert!(
            is_plain::<T>(),
            "{} is not plain",
            std::any::type_name::<T>()
        );
        let size = size_of::<T::Archived>();
        let mut buf = rkyv::util::AlignedVec::<16>::with_capacity(size + 64);
        buf.resize(size + 64, 0);
        let mut z = 0x5EED_u64;
        let mut contents: Vec<Vec<u8>> = planted.iter().map(|p| p.to_vec()).collect();
        for _ in 0..64 {
            contents.push(
                (0..size + 32)
                    .map(|_| {
                        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
                        ((z ^ (z >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 56) as u8
                    })
                    .collect(),
            );
        }
        let (mut accepted, mut refused) = (0, 0);
        for content in &contents {
            for off in 0..16 {
                for len in 0..=size + 16 {
                    buf.fill(0);
                    let n = content.len().min(len);
                    // The content's first bytes where rkyv looks for the root, the end.
                    buf[off + len - n..off + len].copy_from_slice(&content[..n]);
                    let bytes = &buf[off..off + len];
                    let ours = access::<T>(bytes);
                    let theirs = rkyv::access::<T::Archived, rancor::Error>(bytes);
                    match (ours, theirs) {
                        (Ok(a), Ok(b)) => {
                            assert!(std::ptr::eq(a, b), "{content:?} at {off}, {len}");
                            accepted += 1;
                        }
                        (Err(Error::BadMessage(_)), Err(_)) => refused += 1,
                        (a, b) => panic!(
                            "{}: ours {:?}, rkyv's {:?}, {content:?} at {off}, length {len}",
                            std::any::type_name::<T>(),
                            a.is_ok(),
                            b.is_ok()
                        ),
                    }
                }
            }
        }
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn plain_access_agrees_with_rkyv() {
        let bytes: Vec<[u8; 1]> = (0..=255u8).map(|b| [b]).collect();
        let each: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
        plain_access_agrees::<u8>(&each);
        plain_access_agrees::<bool>(&each);
        plain_access_agrees::<[u8; 64]>(&[]);
        if cfg!(target_endian = "little") {
            let surrogate = 0xD800u32.to_le_bytes();
            let too_high = 0x11_0000u32.to_le_bytes();
            let fine = u32::from('é').to_le_bytes();
            plain_access_agrees::<u32>(&[]);
            plain_access_agrees::<char>(&[&surrogate, &too_high, &fine]);
            let mut picky = [0u8; 12];
            picky[4..8].copy_from_slice(&fine);
            let valid = picky;
            picky[8] = 2;
            let bad_bool = picky;
            picky[8] = 1;
            picky[4..8].copy_from_slice(&surrogate);
            plain_access_agrees::<Picky>(&[&valid, &bad_bool, &picky]);
            let value = Picky {
                n: 7,
                c: 'é',
                b: true,
                rest: [1, 2, 3],
            };
            let bytes = rkyv::to_bytes::<rancor::Error>(&value).unwrap();
            let back = access::<Picky>(&bytes).map(|p| (p.n.to_native(), p.c.to_native(), p.b));
            assert_eq!(back.ok(), Some((7, 'é', true)));
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

    /// Stopping at the end: a message that outgrows the area stops the serialization, touches
    /// nothing past the area, and is told apart from a failed one.
    #[test]
    fn a_message_outgrowing_its_area_stops_at_its_end() {
        let mut buf = rkyv::util::AlignedVec::<64>::with_capacity(8192);
        buf.resize(8192, 0xAA);
        // SAFETY: the first 4096 bytes of the buffer are the area.
        let r = unsafe { serialize_into(&vec![1u8; 8192], buf.as_mut_ptr(), 4096, false, true) };
        assert!(matches!(r, Ok(Err(8192..))), "{r:?}");
        assert!(
            buf[4096..].iter().all(|&b| b == 0xAA),
            "wrote past the area"
        );
        // SAFETY: as above.
        let small = unsafe { serialize_into(&vec![1u8; 100], buf.as_mut_ptr(), 4096, false, true) };
        assert!(matches!(small, Ok(Ok((len, _))) if len > 100), "{small:?}");
        // A plain value (one copy) stops the same way, with its whole size, checksum or not.
        for checked in [false, true] {
            // SAFETY: as above.
            let r = unsafe { serialize_into(&[1u8; 8192], buf.as_mut_ptr(), 4096, checked, true) };
            assert!(matches!(r, Ok(Err(8192))), "{r:?}");
            assert!(
                buf[4096..].iter().all(|&b| b == 0xAA),
                "wrote past the area"
            );
        }
    }

    #[test]
    fn a_root_too_large_for_the_slot_reports_its_size() {
        let mut buf = rkyv::util::AlignedVec::<64>::with_capacity(4096);
        buf.resize(4096, 0);
        // SAFETY: as above.
        let r = unsafe { serialize_into(&[1u8; 8192], buf.as_mut_ptr(), buf.len(), false, false) };
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

#[cfg(test)]
mod depth_tests {
    use super::*;
    use crate::fuzzing::Chain;

    /// On a thread with only 512 KiB of stack, the deepest chain validation accepts validates,
    /// and one deeper is `BadMessage` (it would have recursed further). Fails if a level of
    /// validation costs more stack than `MAX_DEPTH` assumes, or if the bound is not applied.
    #[test]
    fn validation_of_the_deepest_message_fits_a_small_stack() {
        // A chain of n links nests n - 1 boxes inside the root: MAX_DEPTH subtrees in all.
        let ok = Chain::archive_of_depth(MAX_DEPTH - 1);
        let deep = Chain::archive_of_depth(MAX_DEPTH);
        let very_deep = Chain::archive_of_depth(200_000);
        std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || {
                let mut buf = rkyv::util::AlignedVec::<16>::new();
                buf.extend_from_slice(&ok);
                assert!(
                    access::<Chain>(&buf).is_ok(),
                    "the deepest chain allowed was refused"
                );
                for bytes in [deep, very_deep] {
                    let mut buf = rkyv::util::AlignedVec::<16>::new();
                    buf.extend_from_slice(&bytes);
                    assert!(matches!(access::<Chain>(&buf), Err(Error::BadMessage(_))));
                }
            })
            .unwrap()
            .join()
            .expect("validation overflowed a 512 KiB stack or accepted a chain too deep");
    }
}
