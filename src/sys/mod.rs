//! The platform seam: everything shmrpc asks of the operating system (named objects and their
//! checks, the liveness byte locks, mapping memory, parking on a word, the CPU hint), one
//! module per OS. The protocol (`protocol.rs`) and the mapping's logic (`shm.rs`) use only
//! what this module exports; no other file names a `target_os`.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!(
    "shmrpc runs on Linux for now (shared futexes, /dev/shm, open-file-description locks); \
     see the README's platform table"
);
