//! The shared mapping: names, creation and opening, liveness of processes, and the
//! production implementations of [`Words`] and [`Park`]. What it asks of the operating system
//! goes through `crate::sys`.

use crate::error::{Error, Result};
use crate::layout::{
    self, Header, Layout, ProcEntry, SlotHeader, HEADER_SIZE, MAX_WORKERS, PROCS_OFFSET,
    PROC_ENTRIES, PROC_ENTRY_SIZE, SLOT_HEADER_SIZE, WORKERS_OFFSET,
};
use crate::protocol::{self, Liveness, Park, Reaped, State, Words};
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::sys::{
    self, byte_locked, names_file, open_object, shm_path, try_lock_byte, unlock_byte, LockTry,
    ObjectError,
};
use std::ptr::NonNull;
use std::time::Duration;

/// Longest accepted server name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a server name: 1..=200 bytes of ASCII letters, digits, `_`, `-` and `.`, an
/// uppercase letter counting as two; not starting or ending with `.`, not ending with `.lock`.
/// The same rules on every platform, so that a name valid on one is valid on all: names are
/// case-sensitive everywhere (where file names are not, an uppercase letter is stored escaped,
/// in two bytes: see [`file_stem`]), and Windows drops a final dot from file names.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    let uppercase = name.bytes().filter(u8::is_ascii_uppercase).count();
    if name.len() + uppercase > MAX_NAME_LEN {
        return bad("the name is longer than 200 bytes (an uppercase letter counts as two)");
    }
    if name.starts_with('.') {
        return bad("the name starts with '.'");
    }
    if name.ends_with('.') {
        return bad("the name ends with '.' (Windows drops a final dot from file names)");
    }
    if name.ends_with(".lock") {
        return bad("the name ends with '.lock' (reserved for the lock object)");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("only ASCII letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// Marks an escaped uppercase letter in a [`file_stem`].
const UPPER_MARK: char = '^';

/// The part of a server's object names that comes from its name: the name itself where file
/// names are case-sensitive (Linux), and elsewhere (Windows, macOS) the name with each
/// uppercase letter escaped as `^` and its lowercase (`Foo` -> `^foo`), so that `Foo` and `foo`
/// stay two names there too.
fn file_stem(name: &str) -> String {
    if !sys::CASE_INSENSITIVE_NAMES {
        return name.to_owned();
    }
    let mut stem = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            stem.push(UPPER_MARK);
            stem.push(c.to_ascii_lowercase());
        } else {
            stem.push(c);
        }
    }
    stem
}

/// The server name whose [`file_stem`] is `stem`, if it is one.
fn name_of_stem(stem: &str) -> Option<String> {
    if !sys::CASE_INSENSITIVE_NAMES {
        return Some(stem.to_owned());
    }
    let mut name = String::with_capacity(stem.len());
    let mut chars = stem.chars();
    while let Some(c) = chars.next() {
        match c {
            UPPER_MARK => match chars.next() {
                Some(l) if l.is_ascii_lowercase() => name.push(l.to_ascii_uppercase()),
                _ => return None,
            },
            // Where names are stored escaped, a plain uppercase letter is no name of ours.
            c if c.is_ascii_uppercase() => return None,
            c => name.push(c),
        }
    }
    Some(name)
}

/// The object name of server `name`'s mapping.
fn object_name(name: &str) -> String {
    sys::object_name(&file_stem(name))
}

/// The object name of server `name`'s lock.
fn lock_name(name: &str) -> String {
    sys::lock_name(&file_stem(name))
}

/// The byte of a mapping's file whose lock the server holds while it runs. Byte `k` in
/// 1..=1023 is process entry `k`'s (`layout::PROC_ENTRIES`).
const SERVER_LOCK_BYTE: u32 = 0;

/// A mapped server mapping. The geometry (`layout`) is this process's own copy, fixed when the
/// mapping was created or validated; nothing read from the mapping later can change it.
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    layout: Layout,
    _fd: sys::Fd,
    /// One bit per arena chunk that this process knows to have memory behind it (it reserved
    /// it, [`Mapping::reserve`]): pages are never given back while the file lives, so a bit,
    /// once set, stays true.
    backed: Box<[AtomicU64]>,
    /// This process's entry in the process table (`layout::ProcEntry`), whose byte lock the
    /// file description behind `_fd` holds for as long as the mapping lives; 0 for the
    /// server's mapping and read-only views, which never claim slots.
    entry: u32,
}

// SAFETY: the mapping is shared memory accessed only through atomics and through raw pointers
// whose use the slot protocol serializes; the pointer stays valid until `Drop`.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` hands out only `&Atomic*` and raw pointers.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base` came from `sys::map` with `layout.file_len()` bytes and nothing
        // borrows it: every borrow of a `Mapping`'s memory is tied to `&self`.
        unsafe { sys::unmap(self.base, self.layout.file_len()) };
    }
}

/// The exclusive claim of a server on its name: an `flock`ed lock object held for the
/// server's lifetime. The kernel drops the lock when the process dies, however it dies.
#[derive(Debug)]
pub struct NameLock {
    _fd: sys::Fd,
    object: String,
}

impl NameLock {
    /// Takes the name, or `AddrInUse` if a live server holds it.
    pub fn acquire(name: &str) -> Result<NameLock> {
        let object = lock_name(name);
        for _ in 0..100 {
            // Created exclusively when absent; an existing one must pass every check of
            // `open_object`.
            let fd = if sys::object_exists(&object) {
                match open_object(&object, true) {
                    Ok(fd) => fd,
                    // Unlinked meanwhile by a stopping server: try again.
                    Err(ObjectError::NotFound) => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                match sys::create_object(&object) {
                    Ok(fd) => fd,
                    // Created meanwhile (by another starting server): look at it again.
                    Err(Error::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        continue
                    }
                    Err(e) => return Err(e),
                }
            };
            if !sys::lock_file(&fd, &shm_path(&object))? {
                return Err(Error::AddrInUse {
                    name: name.to_owned(),
                });
            }
            // A stopping server unlinks the lock object before it closes it: if we locked an
            // unlinked object, try again with the current one.
            if names_file(&object, &fd) {
                return Ok(NameLock { _fd: fd, object });
            }
        }
        Err(Error::AddrInUse {
            name: name.to_owned(),
        })
    }
}

impl Drop for NameLock {
    fn drop(&mut self) {
        // Unlink while we still hold the lock (and only if the name is still ours: another
        // server may have taken a name that something else removed); closing `fd` then
        // releases it.
        if names_file(&self.object, &self._fd) {
            let _ = sys::unlink_object(&self.object);
        }
    }
}

impl Mapping {
    /// Wraps `len = layout.capacity` mapped bytes at `base` of `fd` (no process entry yet).
    fn new(base: NonNull<u8>, layout: Layout, fd: sys::Fd) -> Mapping {
        Mapping {
            base,
            layout,
            _fd: fd,
            backed: Self::none_backed(&layout),
            entry: 0,
        }
    }

    /// A [`Mapping::backed`] for `layout`'s arena with no chunk known to be backed.
    fn none_backed(layout: &Layout) -> Box<[AtomicU64]> {
        (0..layout.arena_chunks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect()
    }

    /// Creates the mapping of a new server under `name` (whose [`NameLock`] the caller holds),
    /// replacing a stale one. Returns it with the server state still INIT.
    pub fn create(name: &str, layout: Layout, _lock: &NameLock) -> Result<Mapping> {
        let object = object_name(name);
        // A leftover must be ours (a dead server's) before we replace it: another user's plant
        // is refused, naming it, rather than failing to unlink it with a bare EPERM.
        let epoch = match open_object(&object, false) {
            Ok(fd) => Self::stale_epoch(&fd).map_or(1, |e| e.wrapping_add(1)),
            Err(ObjectError::NotFound) => 1,
            Err(e) => return Err(e.into()),
        };
        let path = shm_path(&object);
        sys::unlink_object(&object)?;
        // Exclusive: fails on anything created under the name meanwhile, a link included.
        let fd = sys::create_object(&object)?;
        // The arena's part of the file stays a hole until large messages use it
        // (`Mapping::reserve`); the rest gets its memory now, so that no write to the header or
        // a slot can find a full `/dev/shm` (a SIGBUS): a full one fails the start instead.
        sys::set_len(&fd, layout.file_len() as u64, &path)?;
        sys::reserve(&fd, 0, layout.arena_offset() as u64, &path)?;
        // The server's liveness: held as long as this file description is open, that is,
        // until this mapping drops or the process ends, however it ends.
        match try_lock_byte(&fd, SERVER_LOCK_BYTE) {
            LockTry::Got => {}
            LockTry::Held => {
                return Err(Error::io(
                    format!("locking byte 0 of the new {path}"),
                    std::io::Error::other("already locked by another process"),
                ))
            }
            LockTry::Failed(e) => {
                return Err(Error::io(format!("locking byte 0 of the new {path}"), e))
            }
        }
        let base = sys::map(&fd, layout.file_len(), true)?;
        let map = Mapping::new(base, layout, fd);
        let h = map.header();
        h.arena_chunks.store(layout.arena_chunks, Ordering::Relaxed);
        h.version.store(layout::LAYOUT_VERSION, Ordering::Relaxed);
        h.header_size.store(HEADER_SIZE as u32, Ordering::Relaxed);
        h.capacity.store(layout.capacity as u64, Ordering::Relaxed);
        h.slot_count.store(layout.slot_count, Ordering::Relaxed);
        h.slot_size
            .store(layout.slot_size as u32, Ordering::Relaxed);
        h.max_payload
            .store(layout.max_payload() as u32, Ordering::Relaxed);
        h.server_pid.store(std::process::id(), Ordering::Relaxed);
        h.epoch.store(epoch, Ordering::Relaxed);
        // SYNC: Release publishes every header field above; pairs with the Acquire load of
        // `magic` in `Mapping::open`.
        h.magic.store(layout::MAGIC, Ordering::Release);
        Ok(map)
    }

    /// A private mapping with `layout` (an anonymous memfd) holding `image` (repeated or cut to
    /// size): what the fuzz targets feed to the server's code in place of a shared mapping.
    pub fn from_image(layout: Layout, image: &[u8]) -> Result<Mapping> {
        let fd = sys::anonymous_file(layout.file_len() as u64)?;
        let base = sys::map(&fd, layout.file_len(), true)?;
        if !image.is_empty() {
            let len = layout.file_len();
            let mut at = 0;
            while at < len {
                let n = image.len().min(len - at);
                // SAFETY: `at + n <= file_len`; the mapping is new and private to this call,
                // and `image` is a distinct Rust slice.
                unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), base.as_ptr().add(at), n) };
                at += n;
            }
        }
        Ok(Mapping::new(base, layout, fd))
    }

    /// The epoch of a leftover mapping open on `fd`, if it has a readable header.
    fn stale_epoch(fd: &sys::Fd) -> Option<u64> {
        if sys::file_len(fd, "a leftover mapping").ok()? < HEADER_SIZE as u64 {
            return None;
        }
        let mut buf = [0u8; 8];
        sys::read_exact_at(fd, &mut buf, 48)?;
        Some(u64::from_le_bytes(buf))
    }

    /// Opens the mapping of the running server `name`, checking its header against the file.
    pub fn open(name: &str) -> Result<Mapping> {
        Self::open_with(name, false)
    }

    /// Opens the mapping of server `name` read-only, alive or not (statistics): only its
    /// header and slot headers may be read, never written (the pages are mapped without
    /// write permission).
    pub fn open_view(name: &str) -> Result<Mapping> {
        Self::open_with(name, true)
    }

    fn open_with(name: &str, view: bool) -> Result<Mapping> {
        let not_found = || Error::NotFound {
            name: name.to_owned(),
        };
        let fd = match open_object(&object_name(name), !view) {
            Ok(fd) => fd,
            Err(ObjectError::NotFound) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        let size = usize::try_from(sys::file_len(&fd, &shm_path(&object_name(name)))?)
            .unwrap_or(usize::MAX);
        if size < HEADER_SIZE {
            // Created but not yet sized: a server that is starting (or died starting).
            return Err(not_found());
        }
        let header_only = Layout {
            capacity: size,
            slot_count: 0,
            slot_size: 0,
            arena_chunks: 0,
        };
        let probe = Mapping::new(sys::map(&fd, size, !view)?, header_only, fd);
        let h = probe.header();
        // SYNC: Acquire pairs with the Release store of `magic` in `Mapping::create`.
        if h.magic.load(Ordering::Acquire) != layout::MAGIC {
            return Err(not_found());
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != layout::LAYOUT_VERSION {
            return Err(Error::BadMessage(format!(
                "server {name:?} uses mapping layout version {version}, this library {}",
                layout::LAYOUT_VERSION
            )));
        }
        let capacity = h.capacity.load(Ordering::Relaxed) as usize;
        let slots = h.slot_count.load(Ordering::Relaxed);
        let slot_size = h.slot_size.load(Ordering::Relaxed) as usize;
        let chunks = h.arena_chunks.load(Ordering::Relaxed);
        // (In u64: a forged count times the chunk size may not fit a 32-bit usize; `with_arena`
        // refuses what does not fit the address space.)
        let arena = u64::from(chunks) * crate::arena::CHUNK as u64;
        let layout = match Layout::new(capacity, slots)
            .and_then(|l| l.with_arena(usize::try_from(arena).unwrap_or(usize::MAX)))
        {
            Ok(l) if l.slot_size == slot_size && l.file_len() == size => l,
            _ => {
                return Err(Error::BadMessage(format!(
                    "the mapping of server {name:?} has an inconsistent header \
                     (capacity {capacity}, arena {chunks} chunks, file {size}, \
                     {slots} slots of {slot_size})"
                )))
            }
        };
        if !view
            && (h.server_state.load(Ordering::SeqCst) != layout::server_state::RUNNING
                || byte_locked(&probe._fd, SERVER_LOCK_BYTE) == Some(false))
        {
            return Err(not_found());
        }
        let mut map = probe;
        // Same length as the probe (`file_len() == size`), so `Drop` still unmaps the right range.
        map.backed = Self::none_backed(&layout);
        map.layout = layout;
        if !view {
            map.entry = map.take_entry(name)?;
        }
        Ok(map)
    }

    /// Takes a free entry of the process table for this process: the first byte lock in
    /// 1..=1023 (from a start that depends on the pid, so that processes spread out) that no
    /// one holds. A previous holder of the entry is dead (the kernel dropped its lock), so
    /// whatever it left (slots, announced waits) is taken back first, while we hold the lock.
    fn take_entry(&self, name: &str) -> Result<u32> {
        let max = State::MAX_OWNER;
        let first = std::process::id() % max;
        for k in 0..max {
            let entry = 1 + (first + k) % max;
            match try_lock_byte(&self._fd, entry) {
                LockTry::Got => {}
                LockTry::Held => continue,
                LockTry::Failed(e) => {
                    return Err(Error::io(
                        format!("locking process entry {entry} of server {name:?}"),
                        e,
                    ))
                }
            }
            let left = self.clean_entry(entry);
            if left > 0 {
                tracing::warn!(server = %name, entry, reclaimed = left,
                    "took back what a dead process left in its entry");
            }
            self.proc_entry(entry)
                .pid
                .store(std::process::id(), Ordering::Relaxed);
            return Ok(entry);
        }
        Err(Error::TooManyClients {
            name: name.to_owned(),
            max: max as usize,
        })
    }

    /// Slots whose call belongs to process entry `k` (claimed and not yet freed or handed to
    /// a worker for good: CLAIMED, REQUEST, SERVING, REPLY). Reads every slot word: for the
    /// contended path and the reaper only.
    pub fn held_by(&self, k: u32) -> u32 {
        (0..self.layout.slot_count)
            .filter(|&i| {
                let s = State(self.slot(i).state.load(Ordering::Relaxed));
                s.owner() == k && s.held_by_owner()
            })
            .count() as u32
    }

    /// Whether callers of other processes than this one wait for a free slot (the total of
    /// announced waits exceeds this process's own share of it).
    #[inline]
    pub fn others_waiting(&self) -> bool {
        let total = self.header().free_waiters.load(Ordering::Relaxed);
        total > 0
            && total
                > self
                    .proc_entry(self.entry)
                    .free_waits
                    .load(Ordering::Relaxed)
    }

    /// This process's entry (0 for a server's mapping or a view).
    pub fn entry(&self) -> u32 {
        self.entry
    }

    /// Entry `k` of the process table (`k < PROC_ENTRIES`).
    pub fn proc_entry(&self, k: u32) -> &ProcEntry {
        assert!((k as usize) < PROC_ENTRIES, "process entry out of range");
        // SAFETY: the table lies inside the mapping (`Layout::new` puts slot 0 after it), is
        // 8-byte aligned, and `ProcEntry` holds only atomics.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(PROCS_OFFSET + k as usize * PROC_ENTRY_SIZE)
                .cast::<ProcEntry>()
        }
    }

    /// Whether the process behind entry `k` lives, as the kernel's byte lock says.
    /// [`Liveness::Dead`] means that *this* mapping now holds the entry's lock: the caller must
    /// [`Mapping::let_go`] of it when done cleaning up.
    pub fn owner_liveness(&self, k: u32) -> Liveness {
        if k == self.entry {
            // Our own entry (our lock would not conflict with us: ask the question we can).
            return Liveness::Alive;
        }
        if k == 0 || k > State::MAX_OWNER {
            return Liveness::Unknown;
        }
        match try_lock_byte(&self._fd, k) {
            LockTry::Got => Liveness::Dead,
            LockTry::Held => Liveness::Alive,
            LockTry::Failed(_) => Liveness::Unknown,
        }
    }

    /// Lets go of entry `k`'s lock, taken by [`Mapping::owner_liveness`] answering `Dead`.
    pub fn let_go(&self, k: u32) {
        if k != self.entry && k != SERVER_LOCK_BYTE {
            unlock_byte(&self._fd, k);
        }
    }

    /// Takes back, for a dead holder of entry `k` whose lock this mapping holds, every slot
    /// it still owns and every free-slot wait it announced. Returns the slots taken back.
    pub fn clean_entry(&self, k: u32) -> u32 {
        let mut taken = 0;
        for i in 0..self.layout.slot_count {
            let mut dead = |o: u32| {
                if o == k {
                    Liveness::Dead
                } else {
                    Liveness::Alive
                }
            };
            if protocol::reap(self, &Futex, i, &mut dead) != Reaped::Nothing {
                taken += 1;
            }
        }
        if taken > 0 {
            self.header()
                .reclaimed
                .fetch_add(u64::from(taken), Ordering::Relaxed);
        }
        protocol::heal_free_waits(self, k);
        self.heal_arena_waits(k);
        // A lock it died holding can go (what it recorded was reaped with its slots).
        crate::arena::break_lock(self, k);
        taken
    }

    /// Where slot `i`'s message of `len` bytes is, and how many bytes are there: the payload
    /// area if the message fits it (a message is in a run only if it does not: `large.rs`),
    /// else the arena run the slot records if it lies inside the arena (else the payload area,
    /// too short for `len`: the caller's length check fails). Read by the slot's owner only
    /// (the record was written before the state word that gave it the slot).
    #[inline]
    pub fn message_area(&self, i: u32, len: usize) -> (*mut u8, usize) {
        let max = self.layout.max_payload();
        if len <= max {
            return (self.payload(i), max);
        }
        match crate::arena::Extent::unpack(self.slot(i).ext.load(Ordering::Relaxed)) {
            Some(run) if run.within(self.layout.arena_chunks) => (self.arena_run(run), run.bytes()),
            _ => (self.payload(i), max),
        }
    }

    /// Makes sure that arena run `run` (inside the arena) has memory behind it before this
    /// process writes there: the arena is a hole until used, and on Linux the first write to a
    /// page of it when `/dev/shm` is full would be a SIGBUS, where this returns the error
    /// (`ENOSPC`). A system call only for chunks this process has not reserved before.
    pub(crate) fn reserve(&self, run: crate::arena::Extent) -> Result<()> {
        let chunks = run.first as usize..(run.first + run.count) as usize;
        let known = |c: usize| self.backed[c / 64].load(Ordering::Relaxed) & (1 << (c % 64)) != 0;
        if chunks.clone().all(known) {
            return Ok(());
        }
        sys::reserve(
            &self._fd,
            (self.layout.arena_offset() + run.offset()) as u64,
            run.bytes() as u64,
            "a large message",
        )?;
        for c in chunks {
            self.backed[c / 64].fetch_or(1 << (c % 64), Ordering::Relaxed);
        }
        Ok(())
    }

    /// The first byte of arena run `run` (which lies inside the arena).
    pub fn arena_run(&self, run: crate::arena::Extent) -> *mut u8 {
        debug_assert!(run.within(self.layout.arena_chunks));
        // SAFETY: the run lies inside the arena (checked by every caller against this
        // process's own layout), which lies inside the mapping (`Layout::file_len`).
        unsafe {
            self.base
                .as_ptr()
                .add(self.layout.arena_offset() + run.offset())
        }
    }

    /// Wakes the callers that wait for arena room, if any (after a run, or part of one, went
    /// back).
    pub(crate) fn notify_arena(&self) {
        let h = self.header();
        // SYNC: the run's record was cleared by an RMW; pairs with the waiter's fence
        // (announce, fence, retry) in `wait_for_arena`.
        crate::sync::fence_after_rmw();
        if h.arena_waiters.load(Ordering::Relaxed) > 0 {
            h.arena_seq.fetch_add(1, Ordering::Release);
            Futex.wake(&h.arena_seq, u32::MAX);
        }
    }

    /// Sleeps until arena room may have been freed (a free bumped `arena_seq`), at most `slice`.
    /// The caller retries its allocation after each return.
    pub fn wait_for_arena(&self, slice: Duration, retry: &mut dyn FnMut() -> bool) -> bool {
        let h = self.header();
        let seq = h.arena_seq.load(Ordering::Acquire);
        // Our entry's share first (what `heal_arena_waits` takes back if we die), then the
        // total that frees read.
        let mine = &self.proc_entry(self.entry).arena_waits;
        mine.fetch_add(1, Ordering::Relaxed);
        h.arena_waiters.fetch_add(1, Ordering::Relaxed);
        // SYNC: announce, fence, retry: pairs with `notify_arena`'s fence.
        crate::sync::fence_after_rmw();
        let got = retry();
        if !got {
            Futex.wait(&h.arena_seq, seq, Some(slice));
        }
        saturating_sub(&h.arena_waiters, 1);
        saturating_sub(mine, 1);
        got
    }

    /// Takes back the arena waits that the dead holder of entry `k` announced (the caller
    /// holds `k`'s lock: nobody else adds to its share). Returns how many there were.
    pub fn heal_arena_waits(&self, k: u32) -> u32 {
        let left = self.proc_entry(k).arena_waits.swap(0, Ordering::Relaxed);
        if left > 0 {
            saturating_sub(&self.header().arena_waiters, left);
        }
        left
    }

    /// The geometry of this mapping.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes, page-aligned, and `Header` holds
        // only atomics and padding, valid for any bit pattern.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    /// The header of slot `i`.
    #[inline]
    pub fn slot(&self, i: u32) -> &SlotHeader {
        assert!(i < self.layout.slot_count, "slot index out of range");
        // SAFETY: `i < slot_count`, so the slot lies inside the mapping (`Layout::new`); slot
        // offsets are 64-byte aligned; `SlotHeader` holds only atomics and padding.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(self.layout.slot_offset(i))
                .cast::<SlotHeader>()
        }
    }

    /// The arena record of worker `w` (`layout::WORKERS_OFFSET`): the run of the request it
    /// reads while it writes the reply, or 0.
    #[inline]
    pub fn worker_record(&self, w: u32) -> &AtomicU32 {
        assert!((w as usize) < MAX_WORKERS, "worker index out of range");
        // SAFETY: the records lie inside the mapping's header pages (before the process table,
        // which `Layout::new` puts before slot 0), 4-byte aligned; an `AtomicU32` has no
        // invalid bit pattern.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(WORKERS_OFFSET + w as usize * 4)
                .cast::<AtomicU32>()
        }
    }

    /// Asks the CPU to start fetching slot `i`'s header line and first payload line for
    /// writing: a worker that took the slot's ready bit is about to read and write both, and so
    /// is a client whose reply just arrived (it reads the reply, frees the slot, and usually
    /// writes its next call there); the fetches then overlap instead of following each other,
    /// and no read-then-upgrade pair is needed. A hint only.
    #[inline]
    pub fn prefetch_slot(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0};
            let header = self.slot(i) as *const SlotHeader as *const i8;
            let payload = self.payload(i) as *const i8;
            // SAFETY: prefetching has no architectural effect (it never faults); both
            // addresses are inside the mapping anyway.
            unsafe {
                _mm_prefetch::<_MM_HINT_ET0>(header);
                _mm_prefetch::<_MM_HINT_ET0>(payload);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// The payload area of slot `i`: `layout.max_payload()` bytes, 64-byte aligned.
    ///
    /// Reading or writing through the pointer is sound only for the side that owns the slot
    /// under the protocol in `protocol.rs`.
    #[inline]
    pub fn payload(&self, i: u32) -> *mut u8 {
        assert!(i < self.layout.slot_count, "slot index out of range");
        // SAFETY: in bounds as in `slot`; the payload follows the slot header.
        unsafe {
            self.base
                .as_ptr()
                .add(self.layout.slot_offset(i) + SLOT_HEADER_SIZE)
        }
    }

    /// Whether the server that created this mapping is running: not stopped, and its lock on
    /// byte 0 of the file is held (one system call). An unknown answer (the call failed)
    /// counts as running: a call's own timeout still bounds its wait. (A client's
    /// `connection::Connection` remembers a negative answer.)
    pub fn server_running(&self) -> bool {
        self.running_state() && byte_locked(&self._fd, SERVER_LOCK_BYTE) != Some(false)
    }

    /// Whether the server's lifecycle word says RUNNING: cheap, no system call.
    #[inline]
    pub fn running_state(&self) -> bool {
        self.header().server_state.load(Ordering::Acquire) == layout::server_state::RUNNING
    }

    /// Whether `name` still names this mapping: a server that restarted under the name has
    /// created a new object (another inode), and this one is a dead server's.
    pub fn is_current(&self, name: &str) -> bool {
        names_file(&object_name(name), &self._fd)
    }

    /// Removes the name of this mapping if it still names this mapping (a server's cleanup).
    pub fn unlink(&self, name: &str) {
        let object = object_name(name);
        if names_file(&object, &self._fd) {
            let _ = sys::unlink_object(&object);
        }
    }
}

/// What the fixed start of a server's header says (these offsets are the same in every layout
/// version): its layout version, pid, and whether it is running. Read with `pread`, without
/// mapping anything. `None` if there is no readable, complete header.
pub fn peek_header(name: &str) -> Option<(u32, u32, bool)> {
    let fd = open_object(&object_name(name), false).ok()?;
    let mut buf = [0u8; 72];
    sys::read_exact_at(&fd, &mut buf, 0)?;
    let word = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
    if u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")) != layout::MAGIC {
        return None;
    }
    let running = word(64) == layout::server_state::RUNNING
        && byte_locked(&fd, SERVER_LOCK_BYTE) != Some(false);
    Some((word(8), word(36), running))
}

/// The server names of this user that have a mapping or a lock object.
pub fn list_names() -> Result<Vec<String>> {
    let prefix = format!("shmrpc.{}.", sys::euid());
    let mut names = Vec::new();
    for file in sys::list_objects(&prefix)? {
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let stem = rest.strip_suffix(".lock").unwrap_or(rest);
        let Some(name) = name_of_stem(stem) else {
            continue;
        };
        if validate_name(&name).is_ok() && !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes the mapping and lock object of server `name` if no live server holds the name
/// (its lock is free): `Ok(true)` if something was removed, `AddrInUse` if a server runs.
pub fn remove_stale(name: &str) -> Result<bool> {
    let object = object_name(name);
    let had_lock = sys::object_exists(&lock_name(name));
    let lock = NameLock::acquire(name)?;
    // Only ours is removed: another user's plant is reported (and `clean` leaves it alone).
    match open_object(&object, false) {
        Ok(_) | Err(ObjectError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }
    let removed = sys::unlink_existing(&object)? || had_lock;
    // Dropping the lock unlinks the lock object.
    drop(lock);
    Ok(removed)
}

impl Words for Mapping {
    fn slot_count(&self) -> u32 {
        self.layout.slot_count
    }
    fn slot_state(&self, i: u32) -> &AtomicU32 {
        &self.slot(i).state
    }
    fn ready_word(&self, w: usize) -> &AtomicU64 {
        &self.header().ready[w]
    }
    fn server_state(&self) -> &AtomicU32 {
        &self.header().server_state
    }
    fn server_seq(&self) -> &AtomicU32 {
        &self.header().server_seq
    }
    fn server_sleepers(&self) -> &AtomicU32 {
        &self.header().server_sleepers
    }
    fn free_seq(&self) -> &AtomicU32 {
        &self.header().free_seq
    }
    fn free_waiters(&self) -> &AtomicU32 {
        &self.header().free_waiters
    }
    fn owner_waiters(&self, owner: u32) -> &AtomicU32 {
        &self.proc_entry(owner).free_waits
    }
    fn queued_waiters(&self) -> &AtomicU32 {
        &self.header().queued_waiters
    }
    fn owner_queued(&self, owner: u32) -> &AtomicU32 {
        &self.proc_entry(owner).queued_waits
    }
    fn async_bell(&self) -> &AtomicU32 {
        &self.header().async_bell
    }
    fn has_extent(&self, slot: u32) -> bool {
        self.slot(slot).ext.load(Ordering::Relaxed) != 0
    }
    fn drop_extent(&self, slot: u32) {
        if crate::arena::free(self, slot) > 0 {
            self.notify_arena();
        }
    }
}

impl crate::arena::ArenaWords for Mapping {
    fn arena_chunks(&self) -> u32 {
        self.layout.arena_chunks
    }
    fn arena_lock(&self) -> &AtomicU32 {
        &self.header().arena_lock
    }
    fn ext_slots(&self) -> u32 {
        self.layout.slot_count + MAX_WORKERS as u32
    }
    fn slot_ext(&self, slot: u32) -> &AtomicU32 {
        match slot.checked_sub(self.layout.slot_count) {
            None => &self.slot(slot).ext,
            Some(w) => self.worker_record(w),
        }
    }
    fn arena_want(&self) -> Option<&AtomicU32> {
        Some(&self.header().arena_want)
    }
    fn arena_want_fresh(&self) -> bool {
        let h = self.header();
        let ticks = crate::clock::since_stamp(
            h.arena_want_at.load(Ordering::Relaxed),
            crate::clock::ticks(),
        );
        let q32 = h.ns_per_tick_q32.load(Ordering::Relaxed);
        crate::wait::ticks_to_duration(ticks, q32) < crate::arena::WANT_FRESH
    }
    fn renew_arena_want(&self) {
        let stamp = crate::clock::stamp(crate::clock::ticks());
        self.header().arena_want_at.store(stamp, Ordering::Relaxed);
    }
}

/// The production [`Park`]: a shared futex on a word of the mapping.
#[derive(Clone, Copy, Debug, Default)]
pub struct Futex;

impl Park for Futex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        sys::futex_wait(word, expected, timeout);
    }
    fn wake(&self, word: &AtomicU32, n: u32) {
        sys::futex_wake(word, n);
    }
}

/// Subtracts `n` from a count that a process's death may have left high, never below 0.
fn saturating_sub(word: &AtomicU32, n: u32) {
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}
