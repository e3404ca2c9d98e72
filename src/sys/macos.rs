//! macOS (compiled in CI, not yet run: no Apple machine or SDK here). Named objects are plain
//! files in a private directory of this user's, `/tmp/shmrpc-UID` (mode 0700, checked before
//! every open; POSIX shm objects on macOS take no byte locks and no `pread`), mapped shared;
//! parking on a word is `os_sync_wait_on_address` with its shared flag (macOS 14.4 and later,
//! looked up at run time); on older systems a parked caller polls every 200 µs instead.
//!
//! The mapping being a file of a disk file system, the kernel may write its dirty pages back
//! from time to time; that costs I/O, not correctness. Unverified on a Mac: macOS's periodic
//! clean-up of `/tmp` may delete files untouched for days (a long-running server's lock
//! object, which nothing writes); a server whose lock object vanished could then be joined
//! by a second one under its name.

use crate::error::{Error, Result};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use rustix::fd::OwnedFd;
use std::sync::OnceLock;
use std::time::Duration;

/// Whether two file names differing only in case name one file: APFS and HFS+ are case-insensitive by default. Object names
/// then carry uppercase letters escaped (`shm::file_stem`).
pub(crate) const CASE_INSENSITIVE_NAMES: bool = true;

/// Where named objects live: `/tmp/shmrpc-UID`.
pub(crate) fn objects_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| format!("/tmp/shmrpc-{}", super::euid()))
}

/// Makes the objects' directory (mode 0700) if it is not there, then checks it.
pub(crate) fn make_objects_dir() -> Result<()> {
    let dir = objects_dir();
    match rustix::fs::mkdir(dir, rustix::fs::Mode::RWXU) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(Error::io(format!("creating {dir}"), e)),
    }
    check_objects_dir()
}

/// The objects' directory, if it exists, must be this user's own directory, closed to
/// others (another user could have made it first, in the world-writable `/tmp`).
pub(crate) fn check_objects_dir() -> Result<(), Error> {
    let dir = objects_dir();
    let st = match rustix::fs::statat(rustix::fs::CWD, dir, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        // Nothing there yet: every object open then finds nothing.
        Err(_) => return Ok(()),
    };
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    let perm = st.st_mode & 0o7777;
    let detail = if kind != rustix::fs::FileType::Directory {
        Some(format!("is not a directory ({kind:?})"))
    } else if st.st_uid != super::euid() {
        Some(format!("belongs to uid {}, not to this user", st.st_uid))
    } else if perm & 0o077 != 0 {
        Some(format!("has mode {perm:04o}: others may enter it"))
    } else {
        None
    };
    match detail {
        Some(detail) => Err(Error::ForeignObject {
            object: dir.to_owned(),
            detail,
        }),
        None => Ok(()),
    }
}

/// The CPU this thread runs on (`pthread_cpu_number_np`, macOS 11 and later, looked up at
/// run time), or `usize::MAX`.
pub(crate) fn current_cpu() -> usize {
    type CpuFn = unsafe extern "C" fn(*mut libc::size_t) -> libc::c_int;
    static CPU_FN: OnceLock<Option<CpuFn>> = OnceLock::new();
    let f = CPU_FN.get_or_init(|| {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name; null means absent.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"pthread_cpu_number_np".as_ptr()) };
        // SAFETY: the symbol is `int pthread_cpu_number_np(size_t *)`.
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, CpuFn>(p) })
    });
    let mut cpu: libc::size_t = 0;
    match f {
        // SAFETY: the call writes one `size_t` into our local.
        Some(f) if unsafe { f(&mut cpu) } == 0 => cpu,
        _ => usize::MAX,
    }
}

/// `/tmp/shmrpc-UID` appears only when a first server starts: before, there are no objects.
pub(crate) const OBJECTS_DIR_MAY_BE_ABSENT: bool = true;

/// Linux reserves a file's memory before its first write (`linux.rs`). Here the objects are
/// files of a private directory, and nothing is reserved yet: on a full disk the first write
/// to a page `ftruncate` added can still fault (`F_PREALLOCATE` would be the tool; not done,
/// as macOS is compiled here but not run).
pub(crate) fn reserve(_fd: &OwnedFd, _offset: u64, _len: u64, _what: &str) -> Result<()> {
    Ok(())
}

/// A private file of `len` zero bytes: created in the objects' directory and unlinked at once.
pub(crate) fn anonymous_file(len: u64) -> Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    make_objects_dir()?;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = format!("{}/image.{}.{n}", objects_dir(), std::process::id());
    let fd = rustix::fs::open(
        path.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .map_err(|e| Error::io(format!("creating {path}"), e))?;
    let _ = rustix::fs::unlink(path.as_str());
    super::set_len(&fd, len, "a mapping image")?;
    Ok(fd)
}

type WaitFn = unsafe extern "C" fn(*mut libc::c_void, u64, libc::size_t, u32) -> i32;
type WaitTimeoutFn =
    unsafe extern "C" fn(*mut libc::c_void, u64, libc::size_t, u32, u32, u64) -> i32;
type WakeFn = unsafe extern "C" fn(*mut libc::c_void, libc::size_t, u32) -> i32;

/// The functions of `<os/os_sync_wait_on_address.h>`, if this system has them (macOS 14.4 and
/// later): wait, wait with a timeout in nanoseconds, wake one, wake all.
#[derive(Clone, Copy)]
struct OsSync {
    wait: WaitFn,
    wait_timeout: WaitTimeoutFn,
    wake_any: WakeFn,
    wake_all: WakeFn,
}

fn os_sync() -> Option<OsSync> {
    static FNS: OnceLock<Option<OsSync>> = OnceLock::new();
    *FNS.get_or_init(|| {
        let find = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other
            // preconditions; a null result means the symbol is absent.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let wait = find(c"os_sync_wait_on_address")?;
        let wait_timeout = find(c"os_sync_wait_on_address_with_timeout")?;
        let any = find(c"os_sync_wake_by_address_any")?;
        let all = find(c"os_sync_wake_by_address_all")?;
        // SAFETY: each symbol is the function of that name, whose C signature is the one its
        // type spells (`<os/os_sync_wait_on_address.h>`; the same as libc's declarations).
        unsafe {
            Some(OsSync {
                wait: std::mem::transmute::<*mut libc::c_void, WaitFn>(wait),
                wait_timeout: std::mem::transmute::<*mut libc::c_void, WaitTimeoutFn>(wait_timeout),
                wake_any: std::mem::transmute::<*mut libc::c_void, WakeFn>(any),
                wake_all: std::mem::transmute::<*mut libc::c_void, WakeFn>(all),
            })
        }
    })
}

/// Longest poll of a parked caller on a system without `os_sync_wait_on_address`.
const POLL: Duration = Duration::from_micros(200);

/// Sleeps while `*word == expected`, at most `timeout`; may return spuriously (the caller
/// re-checks its condition). Shared between processes (`OS_SYNC_WAIT_ON_ADDRESS_SHARED`).
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let Some(f) = os_sync() else {
        std::thread::sleep(timeout.map_or(POLL, |t| t.min(POLL)));
        return;
    };
    let addr = word.as_ptr().cast();
    let flags = libc::OS_SYNC_WAIT_ON_ADDRESS_SHARED;
    match timeout {
        Some(t) => {
            // A zero timeout is refused (EINVAL): one nanosecond returns as soon.
            let ns = t.as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
            // SAFETY: `word` is a live, aligned 4-byte atomic for the duration of the call;
            // the kernel only compares it with `expected` and sleeps.
            unsafe {
                (f.wait_timeout)(
                    addr,
                    u64::from(expected),
                    4,
                    flags,
                    libc::OS_CLOCK_MACH_ABSOLUTE_TIME,
                    ns,
                );
            }
        }
        None => {
            // SAFETY: as above.
            unsafe {
                (f.wait)(addr, u64::from(expected), 4, flags);
            }
        }
    }
}

/// Wakes at most `n` waiters parked on `word` (one, or all); returns 0 (the count is unknown).
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    if let Some(f) = os_sync() {
        let wake = if n == 1 { f.wake_any } else { f.wake_all };
        // SAFETY: as in `futex_wait`; waking has no effect on the word.
        unsafe {
            wake(
                word.as_ptr().cast(),
                4,
                libc::OS_SYNC_WAKE_BY_ADDRESS_SHARED,
            )
        };
    }
    0
}
