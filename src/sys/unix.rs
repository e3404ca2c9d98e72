//! What Linux and macOS share: named objects are files in one directory (`os::objects_dir`:
//! `/dev/shm` on Linux, a private per-user directory on macOS), opened without following
//! links and checked before use; open-file-description byte locks for liveness; `mmap`.
//! The rest (the directory, parking on a word, the CPU hint, an anonymous file) is in
//! `linux.rs` and `macos.rs`.
//!
//! We use `rustix` (fs, mm) and `libc` (OFD locks) rather than the `shared_memory` crate: the
//! latter has had no release since 2021, cannot set the object's mode, hides the descriptor we
//! need for `fstat`, and its stale-object cleanup relies on a flink file. DESIGN.md explains
//! the choice.

use super::os;
use crate::error::{Context, Error, Result};
use rustix::fd::OwnedFd;

/// An open object (a descriptor here).
pub(crate) type Fd = OwnedFd;
use rustix::fs::{FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use rustix::mm::{MapFlags, ProtFlags};
use std::ptr::NonNull;

/// The shm object name of a server's mapping: per user, so two users' servers never collide.
pub(crate) fn object_name(name: &str) -> String {
    format!("/shmrpc.{}.{}", euid(), name)
}

pub(crate) fn lock_name(name: &str) -> String {
    format!("{}.lock", object_name(name))
}

/// The path of object `object` (`/NAME`) in the objects' directory (`/dev/shm` on Linux).
pub(crate) fn shm_path(object: &str) -> String {
    format!("{}{object}", os::objects_dir())
}

/// Opens shm object `object` (`/dev/shm/...`) without following a symbolic link (`O_NOFOLLOW`:
/// a link planted under the name fails instead of leading elsewhere), then checks on the
/// descriptor, before anything maps or locks it, that it is what shmrpc creates: a regular
/// file, owned by this process's effective user, mode exactly 0600, one link. `O_NONBLOCK`
/// too: opening a FIFO planted under the name would otherwise wait for a writer forever
/// (it has no effect on a regular file). `NotFound`-kind errors are `ObjectError::NotFound`, for the
/// caller to map; a refused open (`EACCES`) of an object that is not
/// ours is reported as what it is.
pub(crate) fn open_object(object: &str, writable: bool) -> Result<Fd, ObjectError> {
    os::check_objects_dir().map_err(ObjectError::Foreign)?;
    let path = shm_path(object);
    let access = if writable {
        OFlags::RDWR
    } else {
        OFlags::RDONLY
    };
    let fd = match rustix::fs::open(
        path.as_str(),
        access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(ObjectError::NotFound),
        Err(Errno::LOOP) => {
            return Err(ObjectError::Foreign(foreign(
                &path,
                "is a symbolic link".to_owned(),
            )))
        }
        Err(Errno::ACCESS) => {
            // Another user's object whose mode does not let us open it: say whose it is.
            let detail = rustix::fs::statat(
                rustix::fs::CWD,
                path.as_str(),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .ok()
            .and_then(|st| object_problem(&st));
            return Err(match detail {
                Some(d) => ObjectError::Foreign(foreign(&path, d)),
                None => ObjectError::Os(Errno::ACCESS, format!("opening {path}")),
            });
        }
        Err(e) => return Err(ObjectError::Os(e, format!("opening {path}"))),
    };
    check_object(&fd, &path)?;
    Ok(fd)
}

/// Why an object could not be opened: the OS said no (and what was being done), or it is
/// not ours.
pub(crate) enum ObjectError {
    /// Nothing has that name.
    NotFound,
    /// The system said no, while doing what the string says.
    Os(Errno, String),
    /// The object is not ours: `Error::ForeignObject`.
    Foreign(Error),
}

impl From<ObjectError> for Error {
    fn from(e: ObjectError) -> Error {
        match e {
            ObjectError::NotFound => Error::io("opening a shm object", Errno::NOENT),
            ObjectError::Os(e, context) => Error::io(context, e),
            ObjectError::Foreign(e) => e,
        }
    }
}

pub(crate) fn foreign(path: &str, detail: String) -> Error {
    Error::ForeignObject {
        object: path.to_owned(),
        detail,
    }
}

/// The checks of [`open_object`] on an open descriptor of `path`.
pub(crate) fn check_object(fd: &OwnedFd, path: &str) -> Result<(), ObjectError> {
    let st = rustix::fs::fstat(fd).map_err(|e| ObjectError::Os(e, format!("inspecting {path}")))?;
    match object_problem(&st) {
        Some(d) => Err(ObjectError::Foreign(foreign(path, d))),
        None => Ok(()),
    }
}

/// What makes the file described by `st` not an object this user's shmrpc created, if
/// anything.
pub(crate) fn object_problem(st: &rustix::fs::Stat) -> Option<String> {
    let euid = euid();
    let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
    let perm = st.st_mode & 0o7777;
    let detail = if kind != rustix::fs::FileType::RegularFile {
        Some(format!("is not a regular file ({kind:?})"))
    } else if st.st_uid != euid {
        Some(format!(
            "belongs to uid {} (mode {perm:04o}), not to this user (uid {euid})",
            st.st_uid
        ))
    } else if perm != 0o600 {
        Some(format!("has mode {perm:04o}, not 0600"))
    } else if st.st_nlink != 1 {
        Some(format!(
            "has {} links, not 1 (a hard link to it exists)",
            st.st_nlink
        ))
    } else {
        None
    };
    detail
}

/// Whether the object now under `object`'s name (not following a link) is the file `fd` is
/// open on.
pub(crate) fn names_file(object: &str, fd: &OwnedFd) -> bool {
    match (
        rustix::fs::fstat(fd),
        rustix::fs::statat(
            rustix::fs::CWD,
            shm_path(object).as_str(),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        ),
    ) {
        (Ok(ours), Ok(now)) => ours.st_ino == now.st_ino && ours.st_dev == now.st_dev,
        _ => false,
    }
}

/// The outcome of trying to take a byte's lock.
pub(crate) enum LockTry {
    /// Taken: this open file description now holds it.
    Got,
    /// Another open file description holds it.
    Held,
    /// The system call failed otherwise.
    Failed(Errno),
}

/// The lock types `ofd_lock` uses (`F_WRLCK`, `F_UNLCK`; their C type differs by OS).
#[derive(Clone, Copy)]
pub(crate) enum LockKind {
    Write,
    Unlock,
}

impl LockKind {
    fn raw(self) -> i64 {
        match self {
            LockKind::Write => i64::from(libc::F_WRLCK),
            LockKind::Unlock => i64::from(libc::F_UNLCK),
        }
    }
}

/// An open-file-description lock on byte `byte` of `fd`'s file (`F_OFD_*`): owned by the open
/// file description, not by a pid, so it means the same in every pid namespace, and the kernel
/// drops it when the last descriptor of that description closes, which it does for a process
/// however the process ends. (`flock` locks the whole file; classic POSIX record locks belong
/// to a pid and are dropped by any `close` of the file in that process.)
pub(crate) fn ofd_lock(
    fd: &OwnedFd,
    cmd: libc::c_int,
    kind: LockKind,
    byte: u32,
) -> Result<libc::flock, Errno> {
    use rustix::fd::AsRawFd;
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind.raw() as _;
    fl.l_whence = libc::SEEK_SET as _;
    fl.l_start = byte as _;
    fl.l_len = 1;
    // l_pid must be 0 for OFD locks (zeroed above).
    loop {
        // SAFETY: `fd` is an open descriptor for the duration of the call and `fl` a valid,
        // exclusively borrowed `flock` that the kernel reads and (F_OFD_GETLK) writes.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
        if r == 0 {
            return Ok(fl);
        }
        let e = Errno::from_io_error(&std::io::Error::last_os_error()).unwrap_or(Errno::IO);
        if e != Errno::INTR {
            return Err(e);
        }
    }
}

pub(crate) fn try_lock_byte(fd: &OwnedFd, byte: u32) -> LockTry {
    match ofd_lock(fd, libc::F_OFD_SETLK, LockKind::Write, byte) {
        Ok(_) => LockTry::Got,
        Err(Errno::AGAIN) | Err(Errno::ACCESS) => LockTry::Held,
        Err(e) => LockTry::Failed(e),
    }
}

pub(crate) fn unlock_byte(fd: &OwnedFd, byte: u32) {
    let _ = ofd_lock(fd, libc::F_OFD_SETLK, LockKind::Unlock, byte);
}

/// Whether some open file description holds byte `byte`'s lock, without taking it (any
/// descriptor, read-only included): `Some(true)` held, `Some(false)` free, `None` unknown.
pub(crate) fn byte_locked(fd: &OwnedFd, byte: u32) -> Option<bool> {
    let fl = ofd_lock(fd, libc::F_OFD_GETLK, LockKind::Write, byte).ok()?;
    Some(i64::from(fl.l_type) != i64::from(libc::F_UNLCK))
}

/// `CLOCK_MONOTONIC` in nanoseconds (the latency clock where there is no TSC).
#[allow(dead_code)] // only on targets without a TSC
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(t.tv_nsec as u64)
}

/// The effective user id (object names carry it, so that two users' servers never collide).
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates shm object `object` exclusively (`O_EXCL`, not following a link: fails on anything
/// already under the name) with mode exactly 0600 (the umask could only have narrowed it).
pub(crate) fn create_object(object: &str) -> Result<OwnedFd> {
    os::make_objects_dir()?;
    let path = shm_path(object);
    let fd = rustix::fs::open(
        path.as_str(),
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )
    .context(|| format!("creating {path}"))?;
    rustix::fs::fchmod(&fd, Mode::RUSR | Mode::WUSR)
        .context(|| format!("setting mode 0600 on {path}"))?;
    Ok(fd)
}

/// Removes shm object `object`'s name (`Ok` if there was none).
pub(crate) fn unlink_object(object: &str) -> Result<()> {
    match rustix::fs::unlink(shm_path(object).as_str()) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", shm_path(object)), e)),
    }
}

/// Removes shm object `object`'s name: whether it existed.
pub(crate) fn unlink_existing(object: &str) -> Result<bool> {
    match rustix::fs::unlink(shm_path(object).as_str()) {
        Ok(()) => Ok(true),
        Err(Errno::NOENT) => Ok(false),
        Err(e) => Err(Error::io(format!("removing {}", shm_path(object)), e)),
    }
}

/// Whether something has the name of shm object `object`.
pub(crate) fn object_exists(object: &str) -> bool {
    rustix::fs::statat(
        rustix::fs::CWD,
        shm_path(object).as_str(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .is_ok()
}

/// Takes the whole-file exclusive lock of `fd` without waiting (`flock`): `Ok(false)` if
/// another open file description holds it. The kernel drops it when the holder ends.
pub(crate) fn lock_file(fd: &OwnedFd, what: &str) -> Result<bool> {
    match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) => Ok(false),
        Err(e) => Err(Error::io(format!("locking {what}"), e)),
    }
}

/// Sets the length of `fd`'s file.
pub(crate) fn set_len(fd: &OwnedFd, len: u64, what: &str) -> Result<()> {
    rustix::fs::ftruncate(fd, len).context(|| format!("sizing {what} to {len} bytes"))
}

/// The length of `fd`'s file.
pub(crate) fn file_len(fd: &OwnedFd, what: &str) -> Result<u64> {
    let st = rustix::fs::fstat(fd).context(|| format!("inspecting {what}"))?;
    Ok(u64::try_from(st.st_size).unwrap_or(0))
}

/// Reads `buf.len()` bytes at `offset` of `fd`'s file: `None` unless all of them were read.
pub(crate) fn read_exact_at(fd: &OwnedFd, buf: &mut [u8], offset: u64) -> Option<()> {
    (rustix::io::pread(fd, &mut *buf, offset).ok()? == buf.len()).then_some(())
}

/// Maps `len` bytes of `fd`'s file, shared, readable and (if `writable`) writable.
pub(crate) fn map(fd: &OwnedFd, len: usize, writable: bool) -> Result<NonNull<u8>> {
    let prot = if writable {
        ProtFlags::READ | ProtFlags::WRITE
    } else {
        ProtFlags::READ
    };
    // SAFETY: a fresh shared mapping of `len` bytes of `fd`; nothing else refers to that
    // address range yet. The file is at least `len` bytes long (checked by every caller).
    let ptr = unsafe { rustix::mm::mmap(std::ptr::null_mut(), len, prot, MapFlags::SHARED, fd, 0) }
        .context(|| format!("mapping {len} bytes of a server's file"))?;
    NonNull::new(ptr.cast()).ok_or_else(|| {
        Error::io(
            "mapping a server's file",
            std::io::Error::other("mmap returned null"),
        )
    })
}

/// Unmaps what [`map`] mapped.
///
/// # Safety
///
/// `base` and `len` are a mapping made by [`map`] that nothing refers to any more.
pub(crate) unsafe fn unmap(base: NonNull<u8>, len: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        let _ = rustix::mm::munmap(base.as_ptr().cast(), len);
    }
}

/// The names (without the leading `/`) of the shm objects that start with `prefix`.
pub(crate) fn list_objects(prefix: &str) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let dir = os::objects_dir();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No directory yet (macOS: no server ever ran): no objects.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && os::OBJECTS_DIR_MAY_BE_ABSENT => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(Error::io(format!("listing {dir}"), e)),
    };
    for entry in entries {
        let file = entry.context(|| format!("listing {dir}"))?.file_name();
        if let Some(name) = file.to_str().filter(|f| f.starts_with(prefix)) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}
