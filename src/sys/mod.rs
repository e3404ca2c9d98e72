//! The platform seam: everything shmrpc asks of the operating system (named objects and their
//! checks, the liveness byte locks, mapping memory, parking on a word, the CPU hint). What Linux
//! and macOS share is `unix.rs`; `linux.rs` and `macos.rs` (compiled, not yet run) hold the
//! rest; `windows.rs` is Windows. The protocol (`protocol.rs`) and the mapping's logic
//! (`shm.rs`) use only what this module exports; no other file names a `target_os`.

#[cfg(any(target_os = "linux", target_os = "macos"))]
mod unix;
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub(crate) use unix::*;

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod os;
#[cfg(target_os = "macos")]
#[path = "macos.rs"]
mod os;
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub(crate) use os::{
    anonymous_file, current_cpu, futex_wait, futex_wake, reserve, CASE_INSENSITIVE_NAMES,
};

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
compile_error!(
    "shmrpc runs on Linux and Windows (and compiles for macOS) for now; see the README's \
     platform table"
);
