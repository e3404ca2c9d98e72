//! How far one side trusts the other's bytes while it reads them.

use crate::sync::{AtomicU64, AtomicU8, Ordering};
use rkyv::util::AlignedVec;

/// Whether archives are read in place in the mapping or copied out first.
///
/// Validation (bytecheck) happens in both modes. What differs is what a peer that writes into
/// the mapping *while* this process reads an archive can do: see DESIGN.md, "Threat model".
///
/// Set it on each side, on the builders:
///
/// ```
/// use shmrpc::{Client, Request, Server, Trust};
///
/// # fn main() -> Result<(), shmrpc::Error> {
/// # let name = format!("doc-trust-{}", std::process::id());
/// let _server = Server::builder(&name)
///     .trust(Trust::Untrusted) // requests are copied out and checksummed before validation
///     .serve(|req: Request<'_, String>| req.to_uppercase())?;
/// let client = Client::builder(&name)
///     .trust(Trust::Untrusted) // so are replies
///     .connect::<String, String>()?;
/// assert_eq!(client.request(&"abc".to_string())?.as_str(), "ABC");
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// Validate and read in place: zero copies. The peers are trusted to follow the protocol
    /// (not to write into a slot they do not own). The default.
    #[default]
    Trusted,
    /// Copy each message out of the mapping into private memory, then validate and read the
    /// copy. A peer that breaks the protocol can then only make a message invalid, never make
    /// this process read outside its own memory. Costs one copy per message; on the client,
    /// one buffer per reply.
    Untrusted,
}

/// Copies `len` bytes at `src` (in the mapping) into `dst`, reading them as relaxed atomics:
/// a peer writing at the same time changes what we copy, never the safety of the copy.
///
/// # Safety
/// `src..src + len` must lie inside the mapping, and `src` must be 8-byte aligned.
pub(crate) unsafe fn copy_out(src: *const u8, len: usize, dst: &mut AlignedVec) {
    dst.clear();
    dst.resize(len, 0);
    let out = dst.as_mut_slice();
    let words = len / 8;
    for i in 0..words {
        // SAFETY: `src + 8i .. src + 8i + 8` is inside the caller's range and 8-byte aligned;
        // `AtomicU64` has the size and alignment of `u64`, and shared memory is valid for it.
        let w = unsafe { (*src.add(i * 8).cast::<AtomicU64>()).load(Ordering::Relaxed) };
        out[i * 8..i * 8 + 8].copy_from_slice(&w.to_ne_bytes());
    }
    for (j, byte) in out.iter_mut().enumerate().skip(words * 8) {
        // SAFETY: `src + j` is inside the caller's range; `AtomicU8` has the layout of `u8`.
        *byte = unsafe { (*src.add(j).cast::<AtomicU8>()).load(Ordering::Relaxed) };
    }
}
