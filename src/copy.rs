//! Copies into shared memory. A copy too large for the last-level cache is made with
//! non-temporal (streaming) stores on x86-64.
//!
//! Why: a message of half the L3 or more cannot stay in cache between its writer and its reader
//! (a round trip has four such buffers in flight: the caller's message, the request, the reply,
//! and the caller's copy of it). A plain store first reads each destination line for ownership,
//! which costs one more pass over memory per copy. A streaming store writes the line without
//! reading it. glibc's `memcpy` streams only above its own threshold, three quarters of what
//! `cpuid` reports as the shared cache: on this project's VMs 240 MiB, from a reported 320 MiB
//! L3 where sysfs says 32 MiB, so glibc never streams a message shmrpc carries. Below about a
//! quarter of the L3 the reader would find the lines in cache, and streaming them out is
//! slower: hence half the L3 (BENCHMARKS.md, "Streaming the largest writes").
//!
//! Elsewhere (other architectures, other systems, or no L3 in sysfs) every copy is plain.

use std::sync::OnceLock;

/// Copies `len` bytes from `src` to `dst`, with streaming stores if `len` reaches
/// [`streaming_threshold`]. A streaming copy ends with `sfence`, so that a later Release
/// store or locked instruction that publishes the bytes cannot be seen before them.
///
/// # Safety
/// As `std::ptr::copy_nonoverlapping`: `src` readable and `dst` writable for `len` bytes, and
/// the two ranges do not overlap.
#[inline(always)]
pub(crate) unsafe fn to_shared(src: *const u8, dst: *mut u8, len: usize) {
    // A small write (every write of a small call) stays a plain inline copy.
    if len >= MIN_STREAMING {
        // SAFETY: the caller's contract.
        unsafe { large(src, dst, len) };
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    }
}

/// [`to_shared`] for a copy of [`MIN_STREAMING`] bytes or more: out of line, off the small
/// call's path.
///
/// # Safety
/// As [`to_shared`].
#[inline(never)]
unsafe fn large(src: *const u8, dst: *mut u8, len: usize) {
    if len >= streaming_threshold() {
        // SAFETY: the caller's contract.
        unsafe { stream(src, dst, len) };
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    }
}

/// No copy shorter than this streams, whatever the cache.
const MIN_STREAMING: usize = 1 << 20;

/// The smallest copy made with streaming stores: half of the L3 cache of CPU 0 as sysfs
/// gives it, at least [`MIN_STREAMING`]; `usize::MAX` (never) where there is no streaming
/// copy or no L3 to read. Read once per process.
pub(crate) fn streaming_threshold() -> usize {
    static THRESHOLD: OnceLock<usize> = OnceLock::new();
    *THRESHOLD.get_or_init(|| {
        if cfg!(all(target_arch = "x86_64", target_os = "linux")) {
            l3_bytes().map_or(usize::MAX, |l3| (l3 / 2).max(MIN_STREAMING))
        } else {
            usize::MAX
        }
    })
}

/// The size of the level-3 cache of CPU 0, from `/sys/devices/system/cpu/cpu0/cache`.
fn l3_bytes() -> Option<usize> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    (0..8).find_map(|i| {
        let index = dir.join(format!("index{i}"));
        let level = std::fs::read_to_string(index.join("level")).ok()?;
        if level.trim() != "3" {
            return None;
        }
        parse_size(&std::fs::read_to_string(index.join("size")).ok()?)
    })
}

/// A sysfs cache size: "32768K", "32M" or a number of bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' => (&s[..s.len() - 1], 1 << 10),
        b'M' => (&s[..s.len() - 1], 1 << 20),
        b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// The streaming copy: plain stores up to the first 16-byte boundary of `dst`, 64 bytes per
/// step by `movntdq` from unaligned loads, the tail by plain stores, then `sfence`.
///
/// # Safety
/// As [`to_shared`].
#[cfg(target_arch = "x86_64")]
#[inline(never)]
unsafe fn stream(src: *const u8, dst: *mut u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    let head = dst.align_offset(16).min(len);
    // SAFETY: the first `head <= len` bytes of both ranges (the caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
    let mut done = head;
    while len - done >= 64 {
        // SAFETY: `done + 64 <= len`: the loads read inside `src`'s range, the stores write
        // inside `dst`'s; `dst + done` is 16-byte aligned (`head` made it so and every step
        // adds 64), as `movntdq` requires; SSE2 is part of the x86-64 baseline.
        unsafe {
            let s = src.add(done).cast::<__m128i>();
            let d = dst.add(done).cast::<__m128i>();
            let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
            let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
        done += 64;
    }
    // SAFETY: the last `len - done` bytes of both ranges.
    unsafe { std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), len - done) };
    // SYNC: streaming stores are weakly ordered: without this fence a later Release store
    // (the publish of the message) could become visible before them.
    // SAFETY: SSE is part of the x86-64 baseline.
    unsafe { _mm_sfence() };
}

/// Without a streaming copy, [`streaming_threshold`] is `usize::MAX` and this is never called.
///
/// # Safety
/// As [`to_shared`].
#[cfg(not(target_arch = "x86_64"))]
unsafe fn stream(src: *const u8, dst: *mut u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_cache_sizes_parse_and_nonsense_does_not() {
        assert_eq!(parse_size("32768K\n"), Some(32 << 20));
        assert_eq!(parse_size("32M"), Some(32 << 20));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("K"), None);
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("99999999999999999999G"), None);
    }

    /// Every length around the 64-byte step and every misalignment of either side comes out
    /// byte for byte, and nothing outside the destination range is written.
    #[test]
    fn a_streaming_copy_is_exact_at_every_length_and_alignment() {
        let src: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in (0..200).chain([511, 512, 513, 1000]) {
            for s_off in 0..17 {
                for d_off in 0..17 {
                    if s_off + len > src.len() || d_off + len + 8 > 1100 {
                        continue;
                    }
                    let mut dst = vec![0xAAu8; 1100];
                    // SAFETY: both ranges lie inside their vectors, which do not overlap.
                    unsafe { stream(src[s_off..].as_ptr(), dst[d_off..].as_mut_ptr(), len) };
                    assert_eq!(&dst[d_off..d_off + len], &src[s_off..s_off + len]);
                    assert!(
                        dst[..d_off].iter().all(|&b| b == 0xAA),
                        "{len} {s_off} {d_off}"
                    );
                    assert!(dst[d_off + len..].iter().all(|&b| b == 0xAA));
                }
            }
        }
    }

    #[test]
    fn the_threshold_is_at_least_a_mebibyte() {
        assert!(streaming_threshold() >= MIN_STREAMING);
    }
}
