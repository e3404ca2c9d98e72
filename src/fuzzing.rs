//! Entry points for fuzzing: the same functions run under cargo-fuzz (`fuzz/`, nightly) and
//! from the stable test `tests/fuzz_stable.rs` with seeded inputs. Not part of the API.

use crate::client::reply_error;
use crate::layout::{status, Layout};
use crate::message;
use crate::protocol::State;
use crate::shm::Mapping;
use crate::sync::Ordering;
use crate::trust::{copy_out, Trust};
use rkyv::util::AlignedVec;

/// A message type with every shape the validator must handle: strings, vectors, options,
/// enums, nesting.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
pub struct Rich {
    /// A number.
    pub n: u64,
    /// A string.
    pub text: String,
    /// A vector of numbers.
    pub values: Vec<u32>,
    /// An optional nested vector of strings.
    pub tags: Option<Vec<String>>,
    /// An enum.
    pub shape: Shape,
}

/// An enum with payloads, for [`Rich`].
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq, Clone)]
pub enum Shape {
    /// No payload.
    Empty,
    /// A byte vector.
    Bytes(Vec<u8>),
    /// A pair.
    Pair(u16, String),
}

/// A recursive message type: a chain of boxes, which a peer can make as deep as a slot is
/// long. Validation must refuse it beyond `message::MAX_DEPTH` instead of overflowing the
/// validating thread's stack.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug)]
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(__C: rkyv::validation::ArchiveContext, __C::Error: rkyv::rancor::Source)))]
pub struct Chain {
    /// A number.
    pub value: u32,
    /// The rest of the chain.
    #[rkyv(omit_bounds)]
    pub next: Option<Box<Chain>>,
}

impl Chain {
    /// A chain of `depth` links (built without recursion).
    pub fn of_depth(depth: usize) -> Chain {
        let mut chain = Chain {
            value: 0,
            next: None,
        };
        for i in 1..depth {
            chain = Chain {
                value: i as u32,
                next: Some(Box::new(chain)),
            };
        }
        chain
    }

    /// The archive of a chain of `depth` links, serialized on a thread with a stack big
    /// enough for rkyv's recursive serializer.
    pub fn archive_of_depth(depth: usize) -> Vec<u8> {
        std::thread::Builder::new()
            .stack_size((64 << 20) + depth * 1024)
            .spawn(move || {
                let chain = Chain::of_depth(depth);
                rkyv::to_bytes::<rkyv::rancor::Error>(&chain)
                    .map(|v| v.to_vec())
                    .unwrap_or_default()
            })
            .expect("a serializing thread")
            .join()
            .expect("serialized")
    }
}

impl Drop for Chain {
    /// Iteratively: the default drop of a deep chain recurses once per link.
    fn drop(&mut self) {
        let mut next = self.next.take();
        while let Some(mut link) = next {
            next = link.next.take();
        }
    }
}

/// The type fingerprint of `T`, as every call carries it (for tests that write calls into a
/// mapping by hand).
pub fn fingerprint<T: message::Message>() -> u32 {
    message::fingerprint::<T>()
}

impl Rich {
    /// A valid value to serialize and mutate.
    pub fn sample(n: u64) -> Rich {
        Rich {
            n,
            text: format!("sample {n}"),
            values: (0..(n % 7) as u32).collect(),
            tags: n.is_multiple_of(2).then(|| vec!["a".into(), "bc".into()]),
            shape: match n % 3 {
                0 => Shape::Empty,
                1 => Shape::Bytes(vec![1, 2, 3]),
                _ => Shape::Pair(7, "pair".into()),
            },
        }
    }

    /// The bytes of `self` as an archive (for seeding mutations).
    pub fn to_archive(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|v| v.to_vec())
            .unwrap_or_default()
    }
}

fn check<T: message::Message>(bytes: &[u8]) -> bool {
    match message::access::<T>(bytes) {
        Ok(archived) => {
            // Valid archives must also deserialize.
            message::deserialize::<T>(archived).is_ok()
        }
        Err(_) => false,
    }
}

/// Target (a): validates `data` as a request or reply of several types, exactly as a server
/// or client does with a peer's bytes, and deserializes what validates. Returns how many
/// types accepted the bytes.
pub fn message_bytes(data: &[u8]) -> usize {
    let mut buf = AlignedVec::<16>::new();
    buf.extend_from_slice(data);
    let bytes = buf.as_slice();
    [
        check::<String>(bytes),
        check::<Vec<u8>>(bytes),
        check::<u64>(bytes),
        check::<(u32, String)>(bytes),
        check::<Rich>(bytes),
        check::<Chain>(bytes),
    ]
    .into_iter()
    .filter(|ok| *ok)
    .count()
}

/// The geometry the mapping-image target uses: 64 KiB, 4 slots, and a large-message arena of
/// 3 chunks (192 KiB), so that the slots' `ext` records (garbage included) are exercised.
pub fn image_layout() -> Layout {
    Layout::new(64 * 1024, 4)
        .and_then(|l| l.with_arena(3 * crate::arena::CHUNK))
        .expect("valid layout")
}

/// Target (b): runs the server's code (reaper scan, take / begin / serve / finish, in trusted
/// and untrusted mode, request (reply returned or written in place) and one-way) over an
/// arbitrary mapping image, then reads every slot in REPLY the way a client does. Returns how many slots were served.
pub fn mapping_image(data: &[u8]) -> usize {
    let selector = data.first().copied().unwrap_or(0);
    let trust = if selector & 1 == 0 {
        Trust::Trusted
    } else {
        Trust::Untrusted
    };
    let Ok(map) = Mapping::from_image(image_layout(), data) else {
        return 0;
    };
    // A garbage arena lock would make each large reply wait for room for `WORKER_WAIT`: the
    // lock's contention is the loom models' subject, not this target's.
    map.header().arena_lock.store(0, Ordering::Relaxed);
    let served = crate::server::serve_image(&map, trust, selector & 2 != 0, selector & 4 != 0);
    let mut copy = AlignedVec::new();
    for slot in 0..map.layout().slot_count {
        let sh = map.slot(slot);
        if State(sh.state.load(Ordering::Acquire)).kind() != State::REPLY {
            continue;
        }
        let st = sh.status.load(Ordering::Relaxed);
        let len = sh.reply_len.load(Ordering::Relaxed) as usize;
        // The payload area, or the arena run the slot records (inside the arena: checked).
        let (area, max) = map.message_area(slot, len);
        if reply_error::<String>(st, len, max, true).is_none() {
            debug_assert_eq!(st, status::OK);
            // SAFETY: `len <= max`, inside the slot's payload area or run, 64-byte aligned.
            unsafe { copy_out(area, len, &mut copy) };
            let _ = check::<String>(&copy);
        }
    }
    served
}

/// What untrusted mode adds per message: the word-by-word copy out of shared memory and the
/// checksum (for `benches/rpc.rs`). `src` must be 8-byte aligned.
pub fn untrusted_copy(src: &[u8], dst: &mut AlignedVec) -> u32 {
    assert_eq!(
        src.as_ptr() as usize % 8,
        0,
        "source must be 8-byte aligned"
    );
    // SAFETY: `src` is a live, 8-byte aligned slice of `src.len()` bytes.
    unsafe { copy_out(src.as_ptr(), src.len(), dst) };
    crate::layout::checksum(dst)
}
