//! Windows (tested in CI under wine). Named objects are files of a private directory of this
//! user's, `%LOCALAPPDATA%\shmrpc`, created with a protected access list that grants this user
//! alone (Windows' 0600) and checked on the handle before use: owner, access list, one link,
//! not a reparse point (a symbolic link or junction planted under the name is refused, not
//! followed). The mapping is a file mapping of that file, as on macOS; liveness is a byte-range
//! lock (`LockFileEx`) past the end of the file, held by the handle and dropped by the kernel
//! when the handle closes, which it does for a process however the process ends: the same
//! answers as Linux's OFD locks.
//!
//! Parking: `WaitOnAddress` wakes only threads of the waker's own process, so a thread parks in
//! a named semaphore of the session's `Local\` namespace, one per parked-on word of a mapping
//! (named after the file's identity and the word's offset), and counts itself in the word's
//! park counter (`layout::PARKED_DELTA` bytes after it) first. A waker takes as many sleepers as
//! it wakes off that counter and posts the semaphore that many times: a post is never lost (a
//! semaphore keeps its count), and nobody posts for sleepers that are not there. The protocol's
//! own announcements (the WAITER bit, `server_sleepers`, `free_waiters`, the bell's bit) keep
//! the fast path free of system calls as on Linux.

use crate::error::{Context, Error, Result};
use crate::layout::PARKED_DELTA;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use windows_sys::Win32::Foundation::{
    CloseHandle, LocalFree, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, ERROR_FILE_NOT_FOUND,
    ERROR_LOCK_VIOLATION, ERROR_PATH_NOT_FOUND, GENERIC_READ, GENERIC_WRITE, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_OBJECT_0,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW,
    ConvertStringSidToSidW, GetSecurityInfo, SDDL_REVISION_1, SE_FILE_OBJECT, SE_KERNEL_OBJECT,
};
use windows_sys::Win32::Security::{
    EqualSid, GetAce, GetTokenInformation, TokenUser, ACCESS_ALLOWED_ACE, ACE_HEADER, ACL,
    DACL_SECURITY_INFORMATION, OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateDirectoryW, CreateFileW, DeleteFileW, FileEndOfFileInfo, GetFileAttributesW,
    GetFileInformationByHandle, GetFileSizeEx, LockFileEx, MoveFileExW, ReadFile,
    SetFileInformationByHandle, UnlockFileEx, BY_HANDLE_FILE_INFORMATION, CREATE_NEW,
    FILE_ATTRIBUTE_DIRECTORY, FILE_ATTRIBUTE_NOT_CONTENT_INDEXED, FILE_ATTRIBUTE_REPARSE_POINT,
    FILE_ATTRIBUTE_TEMPORARY, FILE_END_OF_FILE_INFO, FILE_FLAG_BACKUP_SEMANTICS,
    FILE_FLAG_DELETE_ON_CLOSE, FILE_FLAG_OPEN_REPARSE_POINT, FILE_READ_ATTRIBUTES,
    FILE_SHARE_DELETE, FILE_SHARE_READ, FILE_SHARE_WRITE, INVALID_FILE_ATTRIBUTES,
    LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, OPEN_EXISTING, READ_CONTROL,
};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, MapViewOfFile, UnmapViewOfFile, FILE_MAP_READ, FILE_MAP_WRITE,
    MEMORY_MAPPED_VIEW_ADDRESS, PAGE_READONLY, PAGE_READWRITE,
};
use windows_sys::Win32::System::Threading::{
    CreateSemaphoreW, GetCurrentProcess, GetCurrentProcessorNumber, OpenProcessToken,
    ReleaseSemaphore, WaitForSingleObject,
};
use windows_sys::Win32::System::IO::OVERLAPPED;

/// An open object: the file's handle and its identity (volume serial number and file index),
/// which names its park semaphores and tells a replaced file from this one.
#[derive(Debug)]
pub(crate) struct Fd {
    handle: OwnedHandle,
    id: (u32, u64),
}

impl Fd {
    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }
}

/// `s` as a NUL-terminated UTF-16 string.
fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(std::iter::once(0)).collect()
}

/// Path `p` as a NUL-terminated UTF-16 string, in its verbatim form (`\\?\C:\...`), which
/// has no `MAX_PATH` limit: a profile directory and a 200-byte name can exceed 260 characters.
fn wide_path(p: &str) -> Vec<u16> {
    if p.starts_with("\\\\") {
        wide(p)
    } else {
        wide(&format!("\\\\?\\{p}"))
    }
}

/// The last error of this thread as an `io::Error`.
fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn is_raw(e: &std::io::Error, code: u32) -> bool {
    e.raw_os_error() == Some(code as i32)
}

// ---- this user ------------------------------------------------------------------------------

/// This process's user: its SID (in a buffer that lives as long as the process) and the SID's
/// string form.
struct User {
    /// The `TOKEN_USER` buffer; `sid` points into it.
    _buf: Vec<u64>,
    sid: PSID,
    text: String,
}

// SAFETY: `sid` points into `_buf`, which is never written after `user()` built it; sharing
// read-only access to a SID between threads is what the security functions expect.
unsafe impl Send for User {}
// SAFETY: as above.
unsafe impl Sync for User {}

/// The user this process runs as (read once from its token). `None` if the token cannot be
/// read, in which case no object can be created or checked.
fn user() -> Option<&'static User> {
    static USER: OnceLock<Option<User>> = OnceLock::new();
    USER.get_or_init(|| {
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: GetCurrentProcess returns a pseudo-handle; `token` receives a new handle.
        if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
            return None;
        }
        // SAFETY: `token` is a handle we own from here on.
        let _token = unsafe { OwnedHandle::from_raw_handle(token as RawHandle) };
        let mut buf = vec![0u64; 128];
        let mut len = 0u32;
        // SAFETY: `buf` has 1024 writable bytes, 8-byte aligned (TOKEN_USER's alignment).
        let ok = unsafe {
            GetTokenInformation(
                token,
                TokenUser,
                buf.as_mut_ptr().cast(),
                (buf.len() * 8) as u32,
                &mut len,
            )
        };
        if ok == 0 {
            return None;
        }
        // SAFETY: GetTokenInformation wrote a TOKEN_USER at the start of `buf`.
        let sid = unsafe { (*buf.as_ptr().cast::<TOKEN_USER>()).User.Sid };
        let text = sid_text(sid)?;
        Some(User {
            _buf: buf,
            sid,
            text,
        })
    })
    .as_ref()
}

fn no_user() -> Error {
    Error::io(
        "reading this process's user from its token",
        std::io::Error::other("the process token could not be read"),
    )
}

/// The string form (`S-1-5-...`) of a SID.
fn sid_text(sid: PSID) -> Option<String> {
    let mut p: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sid` is a valid SID (from a token or a security descriptor still alive); `p`
    // receives a LocalAlloc'd string that we free below.
    if unsafe { ConvertSidToStringSidW(sid, &mut p) } == 0 || p.is_null() {
        return None;
    }
    // SAFETY: `p` is a NUL-terminated UTF-16 string.
    let text = unsafe {
        let mut n = 0;
        while *p.add(n) != 0 {
            n += 1;
        }
        String::from_utf16_lossy(std::slice::from_raw_parts(p, n))
    };
    // SAFETY: `p` came from LocalAlloc inside ConvertSidToStringSidW.
    unsafe { LocalFree(p.cast()) };
    Some(text)
}

/// A number for this user (a hash of the SID) that object names carry, as the uid does on
/// Unix, so that two users' objects never share a name even in a shared directory.
pub(crate) fn euid() -> u32 {
    let text = user().map_or("unknown", |u| u.text.as_str());
    text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A SID allocated once for the life of the process.
struct StaticSid(PSID);

// SAFETY: the SID is written once (by ConvertStringSidToSidW) and only read after that.
unsafe impl Send for StaticSid {}
// SAFETY: as above.
unsafe impl Sync for StaticSid {}

/// The local system (S-1-5-18) and the administrators (S-1-5-32-544), whose entries in an
/// access list do not make an object another user's: they can take any object anyway.
fn trusted_sids() -> &'static [StaticSid] {
    static SIDS: OnceLock<Vec<StaticSid>> = OnceLock::new();
    SIDS.get_or_init(|| {
        ["S-1-5-18", "S-1-5-32-544"]
            .iter()
            .filter_map(|text| {
                let w = wide(text);
                let mut sid: PSID = std::ptr::null_mut();
                // SAFETY: `w` is NUL-terminated; `sid` receives a LocalAlloc'd SID, kept for
                // the life of the process.
                let ok = unsafe { ConvertStringSidToSidW(w.as_ptr(), &mut sid) };
                (ok != 0 && !sid.is_null()).then_some(StaticSid(sid))
            })
            .collect()
    })
}

/// A security descriptor granting this user alone full access (protected: nothing inherited),
/// for the objects and semaphores we create; `inherit` makes the grant inherited by the
/// files of a directory too.
struct OwnerOnly(PSECURITY_DESCRIPTOR);

impl OwnerOnly {
    fn new(inherit: bool) -> Result<OwnerOnly> {
        let user = user().ok_or_else(no_user)?;
        let flags = if inherit { "OICI" } else { "" };
        // The owner is set too: by default an elevated process's objects belong to the
        // administrators, and wine makes a kernel object's owner the user's primary group.
        let sddl = wide(&format!("O:{0}D:P(A;{flags};GA;;;{0})", user.text));
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `sddl` is NUL-terminated; `sd` receives a LocalAlloc'd descriptor.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(Error::io(
                "building an owner-only security descriptor",
                last_error(),
            ));
        }
        Ok(OwnerOnly(sd))
    }

    /// Security attributes pointing at the descriptor (valid while `self` lives).
    fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: self.0,
            bInheritHandle: 0,
        }
    }
}

// SAFETY: the descriptor is written once (by ConvertStringSecurityDescriptorToSecurityDescriptorW)
// and only read after that (the system copies it into each object it secures).
unsafe impl Send for OwnerOnly {}
// SAFETY: as above.
unsafe impl Sync for OwnerOnly {}

impl Drop for OwnerOnly {
    fn drop(&mut self) {
        // SAFETY: the descriptor came from LocalAlloc and nothing refers to it any more.
        unsafe { LocalFree(self.0) };
    }
}

/// What makes the object behind `h` (of `kind`) not this user's own, if anything: another
/// owner, no access list (everyone may open it), or an allowing entry for anyone but this user,
/// the system, or the administrators (who can take any object anyway).
fn security_problem(h: HANDLE, kind: i32) -> Result<Option<String>, std::io::Error> {
    let user =
        user().ok_or_else(|| std::io::Error::other("the process token could not be read"))?;
    let mut owner: PSID = std::ptr::null_mut();
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `h` is an open handle with READ_CONTROL; the out-pointers point into `sd`,
    // which we free below.
    let err = unsafe {
        GetSecurityInfo(
            h,
            kind,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if err != 0 {
        return Err(std::io::Error::from_raw_os_error(err as i32));
    }
    let problem = (|| {
        // SAFETY: `owner` and `user.sid` are valid SIDs.
        if owner.is_null() || unsafe { EqualSid(owner, user.sid) } == 0 {
            let who = if owner.is_null() {
                "nobody".to_owned()
            } else {
                sid_text(owner).unwrap_or_else(|| "an unreadable SID".into())
            };
            return Some(format!(
                "belongs to {who}, not to this user ({})",
                user.text
            ));
        }
        if dacl.is_null() {
            return Some("has no access list: anyone may open it".into());
        }
        // SAFETY: `dacl` points to a valid ACL inside `sd`.
        let count = unsafe { (*dacl).AceCount };
        for i in 0..u32::from(count) {
            let mut ace: *mut core::ffi::c_void = std::ptr::null_mut();
            // SAFETY: `i` < AceCount of a valid ACL.
            if unsafe { GetAce(dacl, i, &mut ace) } == 0 {
                return Some("has an unreadable access list".into());
            }
            // SAFETY: every ACE starts with an ACE_HEADER.
            let header = unsafe { *ace.cast::<ACE_HEADER>() };
            // ACCESS_ALLOWED_ACE_TYPE: the only kind that grants (deny entries only narrow).
            if header.AceType != 0 {
                continue;
            }
            // SAFETY: an ACCESS_ALLOWED_ACE's SID starts at `SidStart`.
            let sid = unsafe {
                std::ptr::addr_of_mut!((*ace.cast::<ACCESS_ALLOWED_ACE>()).SidStart).cast()
            };
            // SAFETY: `sid` is a SID inside a valid ACE.
            if unsafe { EqualSid(sid, user.sid) } != 0 {
                continue;
            }
            // SYSTEM, Administrators: they can take any object of this machine anyway.
            let trusted = |t: &StaticSid| {
                // SAFETY: both are valid SIDs (one in the ACE, one made at first use).
                unsafe { EqualSid(sid, t.0) != 0 }
            };
            if trusted_sids().iter().any(trusted) {
                continue;
            }
            let text = sid_text(sid).unwrap_or_default();
            return Some(format!("lets {text} open it (only this user may)"));
        }
        None
    })();
    // SAFETY: `sd` came from LocalAlloc inside GetSecurityInfo; the pointers into it are dead.
    unsafe { LocalFree(sd) };
    Ok(problem)
}

// ---- the objects' directory -----------------------------------------------------------------

/// Where named objects live: `%LOCALAPPDATA%\shmrpc` (a per-user directory of the profile).
fn objects_dir() -> &'static str {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var("LOCALAPPDATA")
            .or_else(|_| std::env::var("USERPROFILE").map(|p| format!("{p}\\AppData\\Local")))
            .unwrap_or_else(|_| "C:\\ProgramData".into());
        format!("{base}\\shmrpc")
    })
}

/// Makes the objects' directory (this user's alone) if it is not there, then checks it, and
/// removes what earlier removals could not (files still mapped then).
fn make_objects_dir() -> Result<()> {
    let dir = objects_dir();
    let sd = OwnerOnly::new(true)?;
    let sa = sd.attributes();
    let w = wide_path(dir);
    // SAFETY: `w` is NUL-terminated; `sa` points to a descriptor alive for the call.
    if unsafe { CreateDirectoryW(w.as_ptr(), &sa) } == 0 {
        let e = last_error();
        if !is_raw(&e, ERROR_ALREADY_EXISTS) {
            return Err(Error::io(format!("creating {dir}"), e));
        }
    }
    check_objects_dir()?;
    sweep_tombs();
    Ok(())
}

/// Opens `path` (not following a reparse point) for `access`, sharing everything (the files
/// are opened by many processes and renamed while open).
fn open_handle(path: &str, access: u32, flags: u32) -> Result<Fd, std::io::Error> {
    let w = wide_path(path);
    // SAFETY: `w` is NUL-terminated; no security attributes, no template.
    let h = unsafe {
        CreateFileW(
            w.as_ptr(),
            access,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            std::ptr::null(),
            OPEN_EXISTING,
            FILE_FLAG_OPEN_REPARSE_POINT | flags,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(last_error());
    }
    // SAFETY: `h` is a new handle that we own from here on.
    let handle = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
    let info = file_info(h)?;
    Ok(Fd {
        handle,
        id: file_id(&info),
    })
}

fn file_info(h: HANDLE) -> Result<BY_HANDLE_FILE_INFORMATION, std::io::Error> {
    // SAFETY: all-zero is a valid BY_HANDLE_FILE_INFORMATION.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: `h` is open; `info` is writable.
    if unsafe { GetFileInformationByHandle(h, &mut info) } == 0 {
        return Err(last_error());
    }
    Ok(info)
}

fn file_id(info: &BY_HANDLE_FILE_INFORMATION) -> (u32, u64) {
    (
        info.dwVolumeSerialNumber,
        (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
    )
}

/// The objects' directory, if it exists, must be a directory (not a junction) of this user's,
/// closed to others: a planted one is refused, naming it.
fn check_objects_dir() -> Result<(), Error> {
    let dir = objects_dir();
    let fd = match open_handle(
        dir,
        FILE_READ_ATTRIBUTES | READ_CONTROL,
        FILE_FLAG_BACKUP_SEMANTICS,
    ) {
        Ok(fd) => fd,
        Err(e) if is_raw(&e, ERROR_FILE_NOT_FOUND) || is_raw(&e, ERROR_PATH_NOT_FOUND) => {
            return Ok(())
        }
        Err(e) => return Err(Error::io(format!("opening {dir}"), e)),
    };
    let info = file_info(fd.raw()).context(|| format!("inspecting {dir}"))?;
    let detail = if info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        Some("is a symbolic link or junction".to_owned())
    } else if info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY == 0 {
        Some("is not a directory".to_owned())
    } else {
        security_problem(fd.raw(), SE_FILE_OBJECT)
            .context(|| format!("reading the security of {dir}"))?
    };
    match detail {
        Some(detail) => Err(foreign(dir, detail)),
        None => Ok(()),
    }
}

/// Whether two file names differing only in case name one file: NTFS names are case-insensitive. Object names
/// then carry uppercase letters escaped (`shm::file_stem`).
pub(crate) const CASE_INSENSITIVE_NAMES: bool = true;

// ---- named objects --------------------------------------------------------------------------

/// The object name of a server's mapping: per user, as on Unix.
pub(crate) fn object_name(name: &str) -> String {
    format!("\\shmrpc.{}.{}", euid(), name)
}

pub(crate) fn lock_name(name: &str) -> String {
    format!("{}.lock", object_name(name))
}

/// The path of object `object` (`\NAME`) in the objects' directory.
pub(crate) fn shm_path(object: &str) -> String {
    format!("{}{object}", objects_dir())
}

/// Why an object could not be opened: nothing has the name, the system said no (and what was
/// being done), or it is not ours.
pub(crate) enum ObjectError {
    NotFound,
    Os(std::io::Error, String),
    Foreign(Error),
}

impl From<ObjectError> for Error {
    fn from(e: ObjectError) -> Error {
        match e {
            ObjectError::NotFound => Error::io(
                "opening a shm object",
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ),
            ObjectError::Os(e, context) => Error::io(context, e),
            ObjectError::Foreign(e) => e,
        }
    }
}

fn foreign(path: &str, detail: String) -> Error {
    Error::ForeignObject {
        object: path.to_owned(),
        detail,
    }
}

/// Opens object `object` without following a reparse point, then checks on the handle,
/// before anything maps or locks it, that it is what shmrpc creates: a file (not a
/// directory, not a link), owned by this user, open to this user alone, with one link.
/// A refused open (access denied: an object whose access list shuts us out) is another
/// user's object.
pub(crate) fn open_object(object: &str, writable: bool) -> Result<Fd, ObjectError> {
    check_objects_dir().map_err(ObjectError::Foreign)?;
    let path = shm_path(object);
    let access = GENERIC_READ | READ_CONTROL | if writable { GENERIC_WRITE } else { 0 };
    let fd = match open_handle(&path, access, 0) {
        Ok(fd) => fd,
        Err(e) if is_raw(&e, ERROR_FILE_NOT_FOUND) || is_raw(&e, ERROR_PATH_NOT_FOUND) => {
            return Err(ObjectError::NotFound)
        }
        Err(e) if is_raw(&e, ERROR_ACCESS_DENIED) => {
            // A directory cannot be opened as a file (nor can another user's closed file).
            let w = wide_path(&path);
            // SAFETY: NUL-terminated.
            let attributes = unsafe { GetFileAttributesW(w.as_ptr()) };
            let detail = if attributes != INVALID_FILE_ATTRIBUTES
                && attributes & FILE_ATTRIBUTE_DIRECTORY != 0
            {
                "is a directory"
            } else {
                "cannot be opened by this user (access denied): not this user's object"
            };
            return Err(ObjectError::Foreign(foreign(&path, detail.into())));
        }
        Err(e) => return Err(ObjectError::Os(e, format!("opening {path}"))),
    };
    let info = file_info(fd.raw()).map_err(|e| ObjectError::Os(e, format!("inspecting {path}")))?;
    let detail = if info.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        Some("is a symbolic link or another reparse point".to_owned())
    } else if info.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY != 0 {
        Some("is a directory".to_owned())
    } else if info.nNumberOfLinks != 1 {
        Some(format!(
            "has {} links, not 1 (a hard link to it exists)",
            info.nNumberOfLinks
        ))
    } else {
        security_problem(fd.raw(), SE_FILE_OBJECT)
            .map_err(|e| ObjectError::Os(e, format!("reading the security of {path}")))?
    };
    match detail {
        Some(d) => Err(ObjectError::Foreign(foreign(&path, d))),
        None => Ok(fd),
    }
}

/// Whether the object now under `object`'s name (not following a link) is the file `fd` is
/// open on.
pub(crate) fn names_file(object: &str, fd: &Fd) -> bool {
    match open_handle(&shm_path(object), FILE_READ_ATTRIBUTES, 0) {
        Ok(now) => now.id == fd.id,
        Err(_) => false,
    }
}

/// Creates object `object` exclusively (fails on anything already under the name, a link
/// included), open to this user alone. Temporary: the system keeps its pages in memory
/// rather than writing them back while it can.
pub(crate) fn create_object(object: &str) -> Result<Fd> {
    make_objects_dir()?;
    let fd = create_file(&shm_path(object), 0)?;
    // Sparse, so that the large-message memory (most of the file) takes no disk space until
    // messages use it. Best effort: a file system without sparse files allocates it.
    let mut returned = 0u32;
    // SAFETY: the handle is open for writing; no buffers; a synchronous call.
    unsafe {
        windows_sys::Win32::System::IO::DeviceIoControl(
            fd.raw(),
            windows_sys::Win32::System::Ioctl::FSCTL_SET_SPARSE,
            std::ptr::null(),
            0,
            std::ptr::null_mut(),
            0,
            &mut returned,
            std::ptr::null_mut(),
        )
    };
    Ok(fd)
}

fn create_file(path: &str, flags: u32) -> Result<Fd> {
    let sd = OwnerOnly::new(false)?;
    let sa = sd.attributes();
    let w = wide_path(path);
    // SAFETY: `w` is NUL-terminated; `sa` points to a descriptor alive for the call.
    let h = unsafe {
        CreateFileW(
            w.as_ptr(),
            GENERIC_READ | GENERIC_WRITE | READ_CONTROL,
            FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
            &sa,
            CREATE_NEW,
            FILE_FLAG_OPEN_REPARSE_POINT
                | FILE_ATTRIBUTE_TEMPORARY
                | FILE_ATTRIBUTE_NOT_CONTENT_INDEXED
                | flags,
            std::ptr::null_mut(),
        )
    };
    if h == INVALID_HANDLE_VALUE {
        return Err(Error::io(format!("creating {path}"), last_error()));
    }
    // SAFETY: `h` is a new handle that we own from here on.
    let handle = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
    let info = file_info(h).context(|| format!("inspecting {path}"))?;
    Ok(Fd {
        handle,
        id: file_id(&info),
    })
}

/// Files renamed out of the way by [`unlink_existing`] start with this (and are never an
/// object's name: those start with `shmrpc.`).
const TOMB_PREFIX: &str = "~shmrpc-removed.";

/// Removes object `object`'s name: whether it existed. Windows cannot delete a file that is
/// still mapped, and a file deleted while open keeps its name until its last handle closes
/// (a new server could not create its mapping under the name): so the file is first renamed
/// to a unique name of its own, then deleted if it can be. What cannot be deleted yet is
/// removed by a later server start or `clean` ([`sweep_tombs`]).
pub(crate) fn unlink_existing(object: &str) -> Result<bool> {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = shm_path(object);
    let tomb = format!(
        "{}\\{TOMB_PREFIX}{}.{}.{}",
        objects_dir(),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        object.trim_start_matches('\\'),
    );
    let (from, to) = (wide_path(&path), wide_path(&tomb));
    // SAFETY: both are NUL-terminated; no flags: fails rather than replace anything.
    if unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), 0) } == 0 {
        let e = last_error();
        if is_raw(&e, ERROR_FILE_NOT_FOUND) || is_raw(&e, ERROR_PATH_NOT_FOUND) {
            return Ok(false);
        }
        return Err(Error::io(format!("removing {path}"), e));
    }
    // SAFETY: NUL-terminated. Failure (still mapped somewhere) leaves it to `sweep_tombs`.
    unsafe { DeleteFileW(to.as_ptr()) };
    Ok(true)
}

/// Removes object `object`'s name (`Ok` if there was none).
pub(crate) fn unlink_object(object: &str) -> Result<()> {
    unlink_existing(object).map(|_| ())
}

/// Deletes the renamed files of earlier removals that nothing maps any more.
fn sweep_tombs() {
    let Ok(entries) = std::fs::read_dir(objects_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TOMB_PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether something has the name of object `object`.
pub(crate) fn object_exists(object: &str) -> bool {
    let w = wide_path(&shm_path(object));
    // SAFETY: NUL-terminated.
    unsafe { GetFileAttributesW(w.as_ptr()) != INVALID_FILE_ATTRIBUTES }
}

/// The names (without the leading `\`) of the objects that start with `prefix`.
pub(crate) fn list_objects(prefix: &str) -> Result<Vec<String>> {
    let dir = objects_dir();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // No directory yet (no server ever ran): no objects.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {dir}"), e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("listing {dir}"))?;
        if let Some(name) = entry.file_name().to_str().filter(|f| f.starts_with(prefix)) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

// ---- liveness locks -------------------------------------------------------------------------

/// Where the byte locks are: far past the end of any mapping, so that they never cover bytes
/// that anyone reads or writes (Windows' locks are mandatory for `ReadFile`).
const LOCK_BASE: u64 = 1 << 62;
/// The byte of [`lock_file`]'s whole-object lock (below every byte lock).
const FILE_LOCK_BYTE: u64 = LOCK_BASE - 1;

/// The outcome of trying to take a byte's lock.
pub(crate) enum LockTry {
    /// Taken: this handle now holds it.
    Got,
    /// Another handle holds it.
    Held,
    /// The system call failed otherwise.
    Failed(std::io::Error),
}

fn overlapped_at(offset: u64) -> OVERLAPPED {
    // SAFETY: all-zero is a valid OVERLAPPED (no event, offset 0).
    let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
    ov.Anonymous.Anonymous.Offset = offset as u32;
    ov.Anonymous.Anonymous.OffsetHigh = (offset >> 32) as u32;
    ov
}

/// `LockFileEx` on one byte at `offset`, without waiting.
fn lock_at(fd: &Fd, offset: u64, exclusive: bool) -> LockTry {
    let mut ov = overlapped_at(offset);
    let flags = LOCKFILE_FAIL_IMMEDIATELY
        | if exclusive {
            LOCKFILE_EXCLUSIVE_LOCK
        } else {
            0
        };
    // SAFETY: the handle is open (synchronous); `ov` lives across the call.
    if unsafe { LockFileEx(fd.raw(), flags, 0, 1, 0, &mut ov) } != 0 {
        return LockTry::Got;
    }
    let e = last_error();
    if is_raw(&e, ERROR_LOCK_VIOLATION) {
        LockTry::Held
    } else {
        LockTry::Failed(e)
    }
}

fn unlock_at(fd: &Fd, offset: u64) {
    let mut ov = overlapped_at(offset);
    // SAFETY: as in `lock_at`.
    unsafe { UnlockFileEx(fd.raw(), 0, 1, 0, &mut ov) };
}

/// Byte `byte`'s exclusive lock (`LockFileEx`), owned by the handle: the kernel drops it when
/// the handle closes, as it does for a process however the process ends.
pub(crate) fn try_lock_byte(fd: &Fd, byte: u32) -> LockTry {
    lock_at(fd, LOCK_BASE + u64::from(byte), true)
}

pub(crate) fn unlock_byte(fd: &Fd, byte: u32) {
    unlock_at(fd, LOCK_BASE + u64::from(byte));
}

/// Whether another handle holds byte `byte`'s lock: a shared lock is tried and, if taken,
/// dropped at once (Windows has no query; two askers do not disturb each other, and the one
/// exclusive taker of byte 0, a starting server, takes it before anyone asks).
/// `Some(true)` held, `Some(false)` free, `None` unknown.
pub(crate) fn byte_locked(fd: &Fd, byte: u32) -> Option<bool> {
    let offset = LOCK_BASE + u64::from(byte);
    match lock_at(fd, offset, false) {
        LockTry::Got => {
            unlock_at(fd, offset);
            Some(false)
        }
        LockTry::Held => Some(true),
        LockTry::Failed(_) => None,
    }
}

/// Takes the whole-object exclusive lock of `fd` without waiting: `Ok(false)` if another
/// handle holds it. The kernel drops it when the holder ends.
pub(crate) fn lock_file(fd: &Fd, what: &str) -> Result<bool> {
    match lock_at(fd, FILE_LOCK_BYTE, true) {
        LockTry::Got => Ok(true),
        LockTry::Held => Ok(false),
        LockTry::Failed(e) => Err(Error::io(format!("locking {what}"), e)),
    }
}

// ---- file contents and mapping --------------------------------------------------------------

/// Linux reserves a file's memory before its first write (`linux.rs`); here nothing is left
/// to do: extending a file that is not sparse (ours are not) allocates its clusters, so a full
/// disk fails [`set_len`], not a later write through the view.
pub(crate) fn reserve(_fd: &Fd, _offset: u64, _len: u64, _what: &str) -> Result<()> {
    Ok(())
}

/// Sets the length of `fd`'s file.
pub(crate) fn set_len(fd: &Fd, len: u64, what: &str) -> Result<()> {
    let info = FILE_END_OF_FILE_INFO {
        EndOfFile: i64::try_from(len).unwrap_or(i64::MAX),
    };
    // SAFETY: the handle is open for writing; `info` lives across the call.
    let ok = unsafe {
        SetFileInformationByHandle(
            fd.raw(),
            FileEndOfFileInfo,
            (&info as *const FILE_END_OF_FILE_INFO).cast(),
            std::mem::size_of::<FILE_END_OF_FILE_INFO>() as u32,
        )
    };
    if ok == 0 {
        return Err(Error::io(
            format!("sizing {what} to {len} bytes"),
            last_error(),
        ));
    }
    Ok(())
}

/// The length of `fd`'s file.
pub(crate) fn file_len(fd: &Fd, what: &str) -> Result<u64> {
    let mut len = 0i64;
    // SAFETY: the handle is open; `len` is writable.
    if unsafe { GetFileSizeEx(fd.raw(), &mut len) } == 0 {
        return Err(Error::io(format!("inspecting {what}"), last_error()));
    }
    Ok(u64::try_from(len).unwrap_or(0))
}

/// Reads `buf.len()` bytes at `offset` of `fd`'s file: `None` unless all of them were read.
pub(crate) fn read_exact_at(fd: &Fd, buf: &mut [u8], offset: u64) -> Option<()> {
    let mut ov = overlapped_at(offset);
    let mut n = 0u32;
    let len = u32::try_from(buf.len()).ok()?;
    // SAFETY: `buf` has `len` writable bytes; `ov` gives the offset of this synchronous read.
    let ok = unsafe { ReadFile(fd.raw(), buf.as_mut_ptr(), len, &mut n, &mut ov) };
    (ok != 0 && n == len).then_some(())
}

/// A mapped view this process made, for [`futex_wait`] and [`futex_wake`] to find the park
/// semaphores of a word in.
struct Region {
    base: usize,
    len: usize,
    writable: bool,
    id: (u32, u64),
    /// Offset of a parked-on word -> its semaphore (opened on first use).
    sems: Vec<(usize, OwnedHandle)>,
}

fn regions() -> &'static Mutex<Vec<Region>> {
    static REGIONS: Mutex<Vec<Region>> = Mutex::new(Vec::new());
    &REGIONS
}

/// Maps `len` bytes of `fd`'s file, shared, readable and (if `writable`) writable.
pub(crate) fn map(fd: &Fd, len: usize, writable: bool) -> Result<NonNull<u8>> {
    let protect = if writable {
        PAGE_READWRITE
    } else {
        PAGE_READONLY
    };
    // SAFETY: the handle is open with the access `protect` needs; unnamed, default security.
    let section =
        unsafe { CreateFileMappingW(fd.raw(), std::ptr::null(), protect, 0, 0, std::ptr::null()) };
    if section.is_null() {
        return Err(Error::io(
            format!("mapping {len} bytes of a server's file"),
            last_error(),
        ));
    }
    let access = FILE_MAP_READ | if writable { FILE_MAP_WRITE } else { 0 };
    // SAFETY: `section` is a mapping of the whole file, which is at least `len` bytes long
    // (checked by every caller).
    let view = unsafe { MapViewOfFile(section, access, 0, 0, len) };
    let err = last_error();
    // SAFETY: the view (if any) keeps the section alive; we own `section`'s handle.
    unsafe { CloseHandle(section) };
    let base = NonNull::new(view.Value.cast::<u8>())
        .ok_or_else(|| Error::io(format!("mapping {len} bytes of a server's file"), err))?;
    if writable {
        // What a first park or wake needs, made now rather than on the call path.
        let _ = semaphore_descriptor();
        let _ = trusted_sids();
    }
    regions()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Region {
            base: base.as_ptr() as usize,
            len,
            writable,
            id: fd.id,
            // Room for every word a thread can park on (each slot's state and four header
            // words), so that a first park allocates nothing.
            sems: Vec::with_capacity(crate::layout::MAX_SLOTS as usize + 8),
        });
    Ok(base)
}

/// Unmaps what [`map`] mapped (and closes its park semaphores).
///
/// # Safety
///
/// `base` and `len` are a mapping made by [`map`] that nothing refers to any more.
pub(crate) unsafe fn unmap(base: NonNull<u8>, _len: usize) {
    let addr = base.as_ptr() as usize;
    let region = {
        let mut all = regions().lock().unwrap_or_else(|p| p.into_inner());
        all.iter()
            .position(|r| r.base == addr)
            .map(|i| all.swap_remove(i))
    };
    // Nobody waits on its semaphores: a parked thread borrows the mapping.
    drop(region);
    // SAFETY: the caller's contract: a view from `map`, unused from now on.
    unsafe {
        UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS {
            Value: base.as_ptr().cast(),
        })
    };
}

/// A private file of `len` zero bytes (deleted when closed): what the fuzz targets map in
/// place of a server's mapping.
pub(crate) fn anonymous_file(len: u64) -> Result<Fd> {
    make_objects_dir()?;
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = format!("{}\\image.{}.{n}", objects_dir(), std::process::id());
    let fd = create_file(&path, FILE_FLAG_DELETE_ON_CLOSE)?;
    set_len(&fd, len, "a mapping image")?;
    Ok(fd)
}

// ---- parking --------------------------------------------------------------------------------

/// The park counter of `word` (`layout::PARKED_DELTA` bytes after it), if `word` lies in a
/// writable mapping of ours; and, with `open`, its semaphore, opened on first use. `None`: a
/// word outside every such mapping, or a semaphore that could not be had; the caller then
/// naps instead, which the protocol's bounded park slices tolerate.
fn parking(word: &AtomicU32, open: bool) -> Option<(&AtomicU32, HANDLE)> {
    let addr = word as *const AtomicU32 as usize;
    let mut all = regions().lock().unwrap_or_else(|p| p.into_inner());
    let r = all
        .iter_mut()
        .find(|r| addr >= r.base && addr + PARKED_DELTA + 4 <= r.base + r.len)?;
    if !r.writable {
        return None;
    }
    // SAFETY: `addr + PARKED_DELTA` is inside the writable view (checked above), 4-byte
    // aligned (every parked-on word and its counter are: `layout`'s assertions), and the view
    // lives as long as `word`'s borrow: a `Mapping` unmaps only when nothing borrows it. The
    // counter is an atomic that peers may scribble on; a wrong value costs spurious wake-ups
    // or naps, never memory safety.
    let parked = unsafe { &*((addr + PARKED_DELTA) as *const AtomicU32) };
    if !open {
        return Some((parked, std::ptr::null_mut()));
    }
    let offset = addr - r.base;
    let sem = match r.sems.iter().find(|(o, _)| *o == offset) {
        Some((_, h)) => h.as_raw_handle() as HANDLE,
        None => {
            let h = open_semaphore(r.id, offset)?;
            let raw = h.as_raw_handle() as HANDLE;
            r.sems.push((offset, h));
            raw
        }
    };
    Some((parked, sem))
}

/// The named semaphore `Local\shmrpc.<file id>.<offset>`, created open to this user alone, or
/// opened if it exists and is this user's.
///
/// Allocates nothing (a caller's first park on a word must not break the steady state's
/// zero allocations): the name is built on the stack, the descriptor once per process.
fn open_semaphore(id: (u32, u64), offset: usize) -> Option<OwnedHandle> {
    let mut name = [0u16; 64];
    let mut n = 0;
    let mut put = |c: u8| {
        name[n] = u16::from(c);
        n += 1;
    };
    b"Local\\shmrpc.".iter().for_each(|&c| put(c));
    let hex = |v: u64, digits: u32, put: &mut dyn FnMut(u8)| {
        for i in (0..digits).rev() {
            put(b"0123456789abcdef"[((v >> (4 * i)) & 15) as usize]);
        }
    };
    hex(u64::from(id.0), 8, &mut put);
    hex(id.1, 16, &mut put);
    put(b'.');
    hex(offset as u64, 16, &mut put);
    // `name` keeps a NUL after the 55 characters written.
    let sa = semaphore_descriptor()?.attributes();
    // SAFETY: `name` is NUL-terminated; `sa` points to a descriptor that lives as long as the
    // process.
    let h = unsafe { CreateSemaphoreW(&sa, 0, i32::MAX, name.as_ptr()) };
    if h.is_null() {
        return None;
    }
    // SAFETY: a new handle that we own from here on.
    let handle = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
    // Opened, not created: another user could have made it first under our name to steal or
    // fake wake-ups; use it only if it is ours.
    // SAFETY: reading the last error right after the call.
    if last_error().raw_os_error() == Some(ERROR_ALREADY_EXISTS as i32)
        && !matches!(security_problem(h, SE_KERNEL_OBJECT), Ok(None))
    {
        tracing::warn!("a park semaphore of a shmrpc mapping is not this user's: napping instead");
        return None;
    }
    Some(handle)
}

/// The descriptor of the park semaphores (this user alone), made once per process: by
/// [`map`], so that a first park allocates nothing.
fn semaphore_descriptor() -> Option<&'static OwnerOnly> {
    static SD: OnceLock<Option<OwnerOnly>> = OnceLock::new();
    SD.get_or_init(|| OwnerOnly::new(false).ok()).as_ref()
}

/// Milliseconds for `WaitForSingleObject`, rounded up (a wait of less than one millisecond
/// would otherwise not sleep at all); `INFINITE` for `None`.
fn millis(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => u32::MAX,
        Some(d) => u32::try_from(d.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1),
    }
}

/// Sleeps while `*word == expected`, at most `timeout` (forever with `None`). May return
/// spuriously; the caller re-checks its condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let Some((parked, sem)) = parking(word, true) else {
        let nap = timeout.map_or(Duration::from_millis(1), |t| {
            t.min(Duration::from_millis(1))
        });
        std::thread::sleep(nap);
        return;
    };
    // SYNC: SeqCst on both sides: the counter's increment is ordered before the re-check of
    // the word, and a waker's change of the word before its read of the counter; so either
    // we see the new value and do not sleep, or the waker sees us counted and posts.
    parked.fetch_add(1, Ordering::SeqCst);
    if word.load(Ordering::SeqCst) == expected {
        // SAFETY: `sem` is a semaphore handle of a live region (see `parking`), closed only
        // when the region is unmapped, which our borrow of `word` rules out.
        if unsafe { WaitForSingleObject(sem, millis(timeout)) } == WAIT_OBJECT_0 {
            // A waker took us off the counter and posted for us.
            return;
        }
    }
    // Leaving without a post: take ourselves off the counter, unless a waker already did (it
    // counted us as woken and is posting): then consume that post, so that it does not wake a
    // later sleeper for nothing. Bounded: a waker killed between the two steps never posts.
    let mut c = parked.load(Ordering::SeqCst);
    loop {
        if c == 0 {
            // SAFETY: as above.
            unsafe { WaitForSingleObject(sem, 50) };
            return;
        }
        match parked.compare_exchange(c, c - 1, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return,
            Err(now) => c = now,
        }
    }
}

/// Wakes at most `n` threads parked on `word`: takes them off its park counter and posts its
/// semaphore as many times. Returns how many.
pub(crate) fn futex_wake(word: &AtomicU32, n: u32) -> usize {
    // The counter first: no semaphore is opened (a system call) for a word nobody sleeps on.
    let Some((parked, _)) = parking(word, false) else {
        return 0;
    };
    let mut c = parked.load(Ordering::SeqCst);
    loop {
        if c == 0 || n == 0 {
            return 0;
        }
        let m = c.min(n).min(i32::MAX as u32);
        match parked.compare_exchange(c, c - m, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                let Some((_, sem)) = parking(word, true) else {
                    return 0;
                };
                // SAFETY: `sem` is a semaphore handle of a live region (see `futex_wait`).
                unsafe { ReleaseSemaphore(sem, m as i32, std::ptr::null_mut()) };
                return m as usize;
            }
            Err(now) => c = now,
        }
    }
}

// ---- clock and CPU --------------------------------------------------------------------------

/// The performance counter in nanoseconds (the latency clock where there is no TSC).
#[allow(dead_code)] // only on targets without a TSC
pub(crate) fn monotonic_ns() -> u64 {
    static FREQ: OnceLock<u64> = OnceLock::new();
    let freq = *FREQ.get_or_init(|| {
        let mut f = 0i64;
        // SAFETY: `f` is writable.
        unsafe { windows_sys::Win32::System::Performance::QueryPerformanceFrequency(&mut f) };
        u64::try_from(f).unwrap_or(1).max(1)
    });
    let mut t = 0i64;
    // SAFETY: `t` is writable.
    unsafe { windows_sys::Win32::System::Performance::QueryPerformanceCounter(&mut t) };
    ((u128::from(u64::try_from(t).unwrap_or(0)) * 1_000_000_000) / u128::from(freq)) as u64
}

/// The CPU this thread runs on (within its processor group).
pub(crate) fn current_cpu() -> usize {
    // SAFETY: no arguments, no preconditions.
    unsafe { GetCurrentProcessorNumber() as usize }
}
