//! Linux: objects in `/dev/shm` (tmpfs, root's, sticky), shared futexes for parking, glibc's
//! `sched_getcpu` for the CPU hint, a memfd for an anonymous file.

use crate::error::{Context, Error, Result};
use crate::sync::AtomicU32;
use rustix::fd::OwnedFd;
use rustix::thread::futex;
use std::time::Duration;

/// Whether two file names differing only in case name one file: Linux file names are case-sensitive (tmpfs). Object names
/// then carry uppercase letters escaped (`shm::file_stem`).
pub(crate) const CASE_INSENSITIVE_NAMES: bool = false;

/// Where named objects live: POSIX shm objects are files of `/dev/shm` on Linux.
pub(crate) fn objects_dir() -> &'static str {
    "/dev/shm"
}

/// `/dev/shm` is always there: its absence is an error worth reporting.
pub(crate) const OBJECTS_DIR_MAY_BE_ABSENT: bool = false;

/// `/dev/shm` exists and is the system's: nothing to make.
pub(crate) fn make_objects_dir() -> Result<()> {
    Ok(())
}

/// `/dev/shm` is root's sticky directory: nobody else can plant it.
pub(crate) fn check_objects_dir() -> Result<(), Error> {
    Ok(())
}

/// Gives `len` bytes of `fd`'s file at `offset` memory now (`fallocate`, keeping the size):
/// a tmpfs file sized by `ftruncate` is a hole, and the first write to a page of it when the
/// file system is full (`/dev/shm` has one size limit for all its users; a container's is
/// often 64 MiB) is a SIGBUS, where this is `ENOSPC`. Pages already there cost nothing.
pub(crate) fn reserve(fd: &OwnedFd, offset: u64, len: u64, what: &str) -> Result<()> {
    rustix::fs::fallocate(fd, rustix::fs::FallocateFlags::KEEP_SIZE, offset, len)
        .context(|| format!("reserving {len} bytes of memory for {what}"))
}

/// The CPU this thread runs on (`usize::MAX` if unknown): glibc's `sched_getcpu`, a vDSO
/// call. (rustix's own vDSO lookup crashes under valgrind, which then cannot run a process
/// using shmrpc.)
pub(crate) fn current_cpu() -> usize {
    // SAFETY: sched_getcpu takes no arguments and has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).unwrap_or(usize::MAX)
}

/// A private file of `len` zero bytes, not in any namespace (a memfd): what the fuzz targets
/// map in place of a server's mapping.
pub(crate) fn anonymous_file(len: u64) -> Result<OwnedFd> {
    let fd = rustix::fs::memfd_create("shmrpc-image", rustix::fs::MemfdFlags::CLOEXEC)
        .context(|| "creating a memfd for a mapping image".into())?;
    super::set_len(&fd, len, "a mapping image")?;
    Ok(fd)
}

/// Sleeps while `*word == expected`, at most `timeout` (forever with `None`): a *shared*
/// futex (no `FUTEX_PRIVATE_FLAG`), which the kernel keys by the physical page, so that a
/// waiter in one process is woken by a waker in another.
///
/// Returns when woken, when the word no longer holds `expected`, on a signal, or on timeout;
/// the caller cannot tell which and must re-check its condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| futex::Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    });
    // EAGAIN (value changed), EINTR and ETIMEDOUT are all "re-check the condition".
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// Wakes at most `n` waiters parked on `word`. Returns how many were woken.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), n).unwrap_or(0)
}
