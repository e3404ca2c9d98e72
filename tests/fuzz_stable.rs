//! The fuzz targets of `fuzz/`, driven on stable Rust: seeded random inputs and mutations of
//! valid messages and mapping images, a few seconds in all. A panic, a hang or a crash here is
//! a bug; any crasher cargo-fuzz finds goes into `REGRESSIONS` below.

mod common;

use common::Rng;
use shmrpc::arena::Extent;
use shmrpc::fuzzing::{image_layout, mapping_image, message_bytes, Rich};
use shmrpc::layout::{HEADER_SIZE, MAX_WORKERS, SLOTS_OFFSET, SLOT_HEADER_SIZE, WORKERS_OFFSET};
use std::time::{Duration, Instant};

/// Edge inputs, plus every crasher cargo-fuzz finds. None so far: 8.9 million `message` and
/// 316,000 `mapping` executions (150 s each, nightly) found nothing.
const REGRESSIONS: &[&[u8]] = &[b"", &[0xff; 64], &[0; 4096]];

/// Input generation on top of the shared seeded generator.
trait Inputs {
    fn bytes(&mut self, len: usize) -> Vec<u8>;
    fn mutate(&mut self, data: &mut Vec<u8>);
}

impl Inputs for Rng {
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// Flips bits, overwrites bytes with edge values, truncates or extends.
    fn mutate(&mut self, data: &mut Vec<u8>) {
        for _ in 0..1 + self.below(4) {
            match self.below(5) {
                0 if !data.is_empty() => {
                    let i = self.below(data.len());
                    data[i] ^= 1 << self.below(8);
                }
                1 if !data.is_empty() => {
                    let i = self.below(data.len());
                    data[i] = [0, 0xff, 0x7f, 0x80][self.below(4)];
                }
                2 => data.truncate(self.below(data.len() + 1)),
                3 => {
                    let n = self.below(16);
                    let extra = self.bytes(n);
                    data.extend(extra);
                }
                _ if data.len() >= 4 => {
                    let i = self.below(data.len() - 3);
                    let v = (self.next() as u32).to_le_bytes();
                    data[i..i + 4].copy_from_slice(&v);
                }
                _ => {}
            }
        }
    }
}

/// Target (a), a few seconds: random bytes and mutated valid archives never panic, and valid
/// archives are accepted (so the target does real work).
#[test]
fn validating_message_bytes_never_panics() {
    for r in REGRESSIONS {
        message_bytes(r);
    }
    let mut rng = Rng(1);
    let valid: Vec<Vec<u8>> = (0..12).map(|n| Rich::sample(n).to_archive()).collect();
    for v in &valid {
        assert!(message_bytes(v) >= 1, "a valid archive was rejected");
    }
    let (mut runs, mut accepted) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let input = if rng.below(2) == 0 {
            let len = rng.below(300);
            rng.bytes(len)
        } else {
            let mut v = valid[rng.below(valid.len())].clone();
            rng.mutate(&mut v);
            v
        };
        accepted += message_bytes(&input) as u64;
        runs += 1;
    }
    println!("message_bytes: {runs} inputs, {accepted} type acceptances");
    assert!(runs > 1000);
}

/// A mapping image with every slot holding a published request (a `String` archive): slots 0
/// and 1 in their payload area, slots 2 and 3 in a run of the arena recorded in their `ext`.
fn image_with_requests(rng: &mut Rng) -> Vec<u8> {
    let layout = image_layout();
    let mut image = vec![0u8; layout.file_len()];
    // The header's arena size, as a server writes it.
    image[908..912].copy_from_slice(&layout.arena_chunks.to_le_bytes());
    let small = rkyv::to_bytes::<rkyv::rancor::Error>(&format!("hello {}", rng.next())).unwrap();
    // Larger than a slot's payload area: what a sender puts into a run.
    let large =
        rkyv::to_bytes::<rkyv::rancor::Error>(&"l".repeat(layout.max_payload() + 100)).unwrap();
    for slot in 0..layout.slot_count {
        let text = if slot < 2 { &small } else { &large };
        let base = SLOTS_OFFSET + slot as usize * layout.slot_size;
        let gen = rng.below(1000) as u32;
        // REQUEST, no owner entry (so the reaper, which runs first, leaves it alone).
        image[base..base + 4].copy_from_slice(&((gen << 14) | 2).to_le_bytes());
        image[base + 4..base + 8].copy_from_slice(&(rng.below(2) as u32).to_le_bytes()); // kind
        image[base + 8..base + 12].copy_from_slice(&(text.len() as u32).to_le_bytes());
        // The request and reply types the serving code checks first.
        let string = shmrpc::fuzzing::fingerprint::<String>().to_le_bytes();
        image[base + 20..base + 24].copy_from_slice(&string);
        image[base + 24..base + 28].copy_from_slice(&string);
        let payload = if slot < 2 {
            base + SLOT_HEADER_SIZE
        } else {
            // Chunk `slot - 1` (1 and 2) of the arena, recorded as a one-chunk run.
            let run = Extent {
                first: slot - 1,
                count: 1,
            };
            image[base + 48..base + 52].copy_from_slice(&run.pack().to_le_bytes());
            layout.arena_offset() + run.offset()
        };
        image[payload..payload + text.len()].copy_from_slice(text);
    }
    image[192..200].copy_from_slice(&0b1111u64.to_le_bytes()); // ready bits for 4 slots
    image
}

/// Target (b), a few seconds: arbitrary and mutated mapping images never make the server's code
/// panic, hang, or touch memory outside the mapping; a well-formed image is fully served.
#[test]
fn serving_an_arbitrary_mapping_image_never_panics() {
    for r in REGRESSIONS {
        mapping_image(r);
    }
    let mut rng = Rng(2);
    let mut well_formed = image_with_requests(&mut rng);
    well_formed[0] = 0; // trusted, request/response
    assert_eq!(
        mapping_image(&well_formed),
        4,
        "a well-formed image was not served"
    );
    well_formed = image_with_requests(&mut rng);
    well_formed[0] = 4; // trusted, replies written in place
    assert_eq!(
        mapping_image(&well_formed),
        4,
        "a well-formed image was not served in place"
    );
    let (mut runs, mut served) = (0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let input = match rng.below(3) {
            0 => {
                let len = rng.below(2048);
                rng.bytes(len)
            }
            _ => {
                let mut image = image_with_requests(&mut rng);
                // Mutate the header and slot headers most, the payloads too.
                for _ in 0..1 + rng.below(16) {
                    let layout = image_layout();
                    let slot = rng.below(layout.slot_count as usize);
                    let i = match rng.below(5) {
                        0 => rng.below(HEADER_SIZE),
                        // The workers' arena records: garbage held runs.
                        3 => WORKERS_OFFSET + rng.below(MAX_WORKERS * 4),
                        1 => SLOTS_OFFSET + slot * layout.slot_size + rng.below(SLOT_HEADER_SIZE),
                        // The run record: garbage runs, runs outside the arena, no run.
                        2 => SLOTS_OFFSET + slot * layout.slot_size + 48 + rng.below(4),
                        _ => rng.below(image.len()),
                    };
                    image[i] = rng.next() as u8;
                }
                image[0] = rng.next() as u8; // the selector: trust, one-way, in place
                image
            }
        };
        served += mapping_image(&input) as u64;
        runs += 1;
    }
    println!("mapping_image: {runs} images, {served} slots served");
    assert!(runs > 100);
}
