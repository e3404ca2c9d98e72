//! Round trips between two real processes: shmrpc beside the hardware limit and the usual
//! alternatives, in one binary and one run, so that ratios are meaningful on a noisy machine.
//!
//! ```text
//! cargo bench -p shmrpc-bench --bench rpc                          # shmrpc and the in-house baselines
//! cargo bench -p shmrpc-bench --bench rpc --features bench-peers   # plus iceoryx2 and ipc-channel
//! ```
//!
//! This binary is also every server: it re-executes itself with `SHMRPC_BENCH_ROLE` set.
//! Each figure is one request of N bytes and one reply of N bytes, timed with `iter_custom`
//! after criterion's warm-up; servers are started before and stopped after each contender.

use criterion::{BenchmarkId, Criterion, Throughput};
use rustix::fs::Mode;
use rustix::mm::{MapFlags, ProtFlags};
use rustix::thread::futex;
use shmrpc::rkyv;
use shmrpc::{Client, Request, Server, WaitMode};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const ROLE: &str = "SHMRPC_BENCH_ROLE";
const SIZES: [usize; 4] = [64, 1024, 16 * 1024, 128 * 1024];

// ---------------------------------------------------------------------------------------------
// Servers (child processes).

/// A server child process; killed when dropped.
struct ServerProc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// Whether the server ends by itself once its stdin closes.
    stops_on_eof: bool,
}

impl ServerProc {
    fn start(role: &str) -> ServerProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "server {role:?} said {line:?}");
        ServerProc {
            child,
            stdin,
            stdout,
            stops_on_eof: role.starts_with("shmrpc") || role.starts_with("iceoryx2"),
        }
    }

    /// The line the server printed after "ready" (e.g. a channel name).
    fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
}

impl Drop for ServerProc {
    /// Closes the server's stdin. shmrpc and iceoryx2 servers stop on that and remove what
    /// they published: a killed shmrpc server would leave its mapping in `/dev/shm` until
    /// `shmrpc clean`. They get 10 s to do it. The other servers (raw, sockets, ipc-channel)
    /// publish nothing that outlives them and are killed at once.
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.stops_on_eof {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().unwrap();
}

fn wait_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// 4 slots leave room for 128 KiB messages in the default 1 MiB; the throughput server uses
/// the default 32, so that 8 callers never queue for a slot.
fn serve_shmrpc<const N: usize>(name: &str, mode: WaitMode, workers: usize, slots: u32) {
    let server = Server::builder(name)
        .capacity(1 << 20)
        .slots(slots)
        .workers(workers)
        .wait_mode(mode)
        .serve(|req: Request<'_, [u8; N]>| *req.archived())
        .unwrap();
    ready();
    wait_stdin_eof();
    drop(server);
}

/// The raw shared-memory ping-pong: no protocol, no validation. Layout: request sequence word
/// at 0, reply sequence word at 64, stop word at 128, request bytes at 4096, reply bytes at
/// 4096 + N (rounded up to a page).
struct Raw {
    base: *mut u8,
    n: usize,
}

// SAFETY: the raw mapping is shared memory used through atomics and the ping-pong protocol.
unsafe impl Send for Raw {}

impl Raw {
    fn len(n: usize) -> usize {
        4096 + 2 * n.div_ceil(4096) * 4096
    }
    fn open(path: &str, n: usize, create: bool) -> Raw {
        let flags = if create {
            rustix::shm::OFlags::CREATE | rustix::shm::OFlags::RDWR
        } else {
            rustix::shm::OFlags::RDWR
        };
        let fd = rustix::shm::open(path, flags, Mode::RUSR | Mode::WUSR).unwrap();
        if create {
            rustix::fs::ftruncate(&fd, Raw::len(n) as u64).unwrap();
        }
        // SAFETY: a fresh shared mapping of the whole object.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                Raw::len(n),
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
            .unwrap()
        };
        Raw {
            base: base.cast(),
            n,
        }
    }
    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offsets 0, 64, 128 are inside the first page, 4-aligned.
        unsafe { &*self.base.add(offset).cast::<AtomicU32>() }
    }
    fn request(&self) -> *mut u8 {
        // SAFETY: inside the mapping.
        unsafe { self.base.add(4096) }
    }
    fn reply(&self) -> *mut u8 {
        // SAFETY: inside the mapping.
        unsafe { self.base.add(4096 + self.n.div_ceil(4096) * 4096) }
    }
    /// Waits until `word` differs from `old`: spinning, or parked on the futex.
    fn wait_change(word: &AtomicU32, old: u32, spin: bool) -> u32 {
        loop {
            let now = word.load(Ordering::Acquire);
            if now != old {
                return now;
            }
            if spin {
                std::hint::spin_loop();
            } else {
                let _ = futex::wait(word, futex::Flags::empty(), old, None);
            }
        }
    }
    fn publish(word: &AtomicU32, spin: bool) {
        word.fetch_add(1, Ordering::Release);
        if !spin {
            let _ = futex::wake(word, futex::Flags::empty(), 1);
        }
    }
}

/// A server's echo over the request: reads `len` bytes at `at` into `buf`, then writes them
/// back from it, as a server that writes its reply over the request does. The `black_box`
/// keeps the second copy: without it the compiler drops it (the same bytes to the same
/// place), and the reply's line never moves.
///
/// # Safety
/// `at..at + len` is inside the mapping, `len <= buf.len()`, and the caller owns those bytes
/// under its model's protocol until it publishes the reply.
unsafe fn echo_in_place(at: *mut u8, buf: &mut [u8], len: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(at, buf.as_mut_ptr(), len);
        black_box(&mut *buf);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), at, len);
    }
}

/// `in_place` (`raw-inplace`): the reply goes over the request, as in a shmrpc slot, instead
/// of into a page of its own; the server reads the request into a buffer and writes the reply
/// from it.
fn serve_raw(path: &str, n: usize, spin: bool, in_place: bool) {
    let raw = Raw::open(path, n, false);
    let mut buf = vec![0u8; if in_place { n } else { 0 }];
    // Read the sequence before saying ready: the client may publish at once after.
    let mut seen = raw.word(0).load(Ordering::Acquire);
    ready();
    loop {
        seen = Raw::wait_change(raw.word(0), seen, spin);
        if raw.word(128).load(Ordering::Acquire) != 0 {
            return;
        }
        // SAFETY: the client wrote the request before its Release bump and waits for ours.
        unsafe {
            if in_place {
                echo_in_place(raw.request(), &mut buf, n);
            } else {
                std::ptr::copy_nonoverlapping(raw.request(), raw.reply(), n);
            }
        }
        Raw::publish(raw.word(64), spin);
    }
}

/// The protocol's cache-line traffic without its compute (`SHMRPC_BENCH_SHAPES=1`, an account
/// of the 64 B round trip, BENCHMARKS.md): a slot whose state word (line 0 of the slot, with a
/// length field beside it) both sides move by CAS, FREE -> CLAIMED -> REQUEST -> SERVING ->
/// REPLY -> FREE, as shmrpc's do, and whose payload line carries the request and then the
/// reply over it. `shaped` adds the ready bitmap: its own line, a `fetch_or` by the client and
/// a `fetch_and` by the worker, which polls it instead of the state word. `raw-stores` is
/// `raw-shaped` with every transition and both bitmap updates made by plain stores (what a
/// single worker and a trusted client would need): the same lines, no locked instruction. No
/// validation, no serialization, no call id, no clock, no statistics: the copies each way only.
mod shape {
    pub const FREE: u32 = 0;
    pub const CLAIMED: u32 = 1;
    pub const REQUEST: u32 = 2;
    pub const SERVING: u32 = 3;
    pub const REPLY: u32 = 4;
    /// The ready word (a line of its own in the first page).
    pub const READY: usize = 256;
    /// The slot: its state word and length at the start of the request area's page, the
    /// payload in the next line.
    pub const STATE: usize = 4096;
    pub const LEN: usize = 4096 + 8;
    pub const PAYLOAD: usize = 4096 + 64;

    use std::sync::atomic::{AtomicU32, Ordering};

    /// Moves the state word `from` -> `to` (a CAS, or a store when `cas` is false).
    pub fn step(state: &AtomicU32, from: u32, to: u32, order: Ordering, cas: bool) {
        if cas {
            state
                .compare_exchange(from, to, order, Ordering::Relaxed)
                .unwrap();
        } else {
            state.store(to, order);
        }
    }
}

impl Raw {
    fn word64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `shape::READY` is inside the first page, 8-aligned.
        unsafe { &*self.base.add(offset).cast::<AtomicU64>() }
    }
    fn shape_payload(&self) -> *mut u8 {
        // SAFETY: `PAYLOAD + n` is inside the mapping for every n (`Raw::len`).
        unsafe { self.base.add(shape::PAYLOAD) }
    }
}

fn serve_shaped(path: &str, n: usize, shaped: bool, cas: bool) {
    let raw = Raw::open(path, n, false);
    let state = raw.word(shape::STATE);
    let bitmap = raw.word64(shape::READY);
    let mut buf = vec![0u8; n];
    ready();
    loop {
        if shaped {
            while bitmap.load(Ordering::Acquire) == 0 {
                std::hint::spin_loop();
            }
            if cas {
                bitmap.fetch_and(!1, Ordering::AcqRel);
            } else {
                bitmap.store(0, Ordering::Relaxed);
            }
        } else {
            while state.load(Ordering::Relaxed) != shape::REQUEST {
                std::hint::spin_loop();
            }
        }
        let acquire = if cas {
            Ordering::Acquire
        } else {
            // A store does not acquire: the load below does.
            assert_eq!(state.load(Ordering::Acquire), shape::REQUEST);
            Ordering::Relaxed
        };
        shape::step(state, shape::REQUEST, shape::SERVING, acquire, cas);
        // Read like shmrpc's `req_len`, and bounded by the buffer whatever the word says.
        let len = (raw.word(shape::LEN).load(Ordering::Relaxed) as usize).min(n);
        // SAFETY: the slot is SERVING: the client wrote `len` (<= n, the size of `buf` and of
        // the payload) bytes before its Release CAS and touches them again only after our
        // REPLY.
        unsafe { echo_in_place(raw.shape_payload(), &mut buf, len) };
        shape::step(state, shape::SERVING, shape::REPLY, Ordering::Release, cas);
    }
}

fn shaped_session(kind: &str, n: usize, shaped: bool, cas: bool) -> Session {
    let (raw, server) = open_raw(kind, n);
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    Session {
        call: Box::new(move || {
            let state = raw.word(shape::STATE);
            let claim = if cas {
                Ordering::Acquire
            } else {
                Ordering::Relaxed
            };
            shape::step(state, shape::FREE, shape::CLAIMED, claim, cas);
            // SAFETY: the slot is CLAIMED by us: the worker reads it only after REQUEST.
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), raw.shape_payload(), n) };
            raw.word(shape::LEN).store(n as u32, Ordering::Relaxed);
            shape::step(
                state,
                shape::CLAIMED,
                shape::REQUEST,
                Ordering::Release,
                cas,
            );
            if shaped {
                let bitmap = raw.word64(shape::READY);
                if cas {
                    bitmap.fetch_or(1, Ordering::Release);
                } else {
                    bitmap.store(1, Ordering::Release);
                }
            }
            while state.load(Ordering::Acquire) != shape::REPLY {
                std::hint::spin_loop();
            }
            // SAFETY: REPLY: the worker wrote the reply before its Release CAS.
            unsafe { std::ptr::copy_nonoverlapping(raw.shape_payload(), out.as_mut_ptr(), n) };
            black_box(out[n - 1]);
            shape::step(state, shape::REPLY, shape::FREE, Ordering::Release, cas);
        }),
        _keep: vec![Box::new(server)],
    }
}

/// A protocol shmrpc does not have, modelled to measure what it would give
/// (`SHMRPC_BENCH_SHAPES=1`, BENCHMARKS.md "A line pattern for the 1.6x goal"): every line has
/// one writer, as in `raw-spin`, and the ownership checks are fences on the writer's own lines
/// instead of read-modify-writes on lines both sides write. The client claims and frees the
/// slot by CAS on a state word only it touches while the server keeps up; it writes the
/// request and then a request sequence word, fences, and reads the worker's `watching` word
/// (on the line of the reply's sequence word, which it reads anyway): only if the worker is not
/// watching would it set the ready bit (never, here: this worker always watches). The worker
/// watches the request sequence word of the slot it served last, announces on a line of its own
/// which call it takes and fences (what an abandon would be decided against), copies, and
/// publishes the reply and its sequence word. Nothing of shmrpc's compute is in it.
mod watch {
    /// Client-only in the steady state: claimed and freed by CAS.
    pub const STATE: usize = 4096;
    /// The request's sequence word and length (the client's line), then its bytes.
    pub const REQ_SEQ: usize = 4096 + 64;
    pub const REQ_LEN: usize = 4096 + 68;
    pub const REQ: usize = 4096 + 128;
    /// In the reply page: the reply's sequence word and the worker's `watching` word (the
    /// worker's line, which the client polls), the call the worker takes (a line the client
    /// reads only to abandon), then the reply's bytes.
    pub const REPLY_SEQ: usize = 0;
    pub const WATCHING: usize = 4;
    pub const TAKEN: usize = 64;
    pub const REPLY: usize = 128;
    /// Room for the bytes on both sides (`Raw::len`): the contender runs up to this size.
    pub const MAX: usize = 4096 - 128;
}

impl Raw {
    fn reply_word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `watch`'s offsets lie in the reply page, 4-aligned.
        unsafe { &*self.reply().add(offset).cast::<AtomicU32>() }
    }
}

/// The loop of a worker that watches `word` (after saying so in `watched` and fencing, as the
/// watch models' workers do): `serve` runs with each new value until the stop word is set.
fn watch_word(raw: &Raw, word: &AtomicU32, watched: &AtomicU32, mut serve: impl FnMut(u32)) {
    watched.store(1, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::SeqCst);
    let mut seen = word.load(Ordering::Acquire);
    ready();
    loop {
        seen = Raw::wait_change(word, seen, true);
        if raw.word(128).load(Ordering::Acquire) != 0 {
            return;
        }
        serve(seen);
    }
}

fn serve_watch(path: &str, n: usize) {
    let raw = Raw::open(path, n, false);
    let (req_seq, reply_seq) = (raw.word(watch::REQ_SEQ), raw.reply_word(watch::REPLY_SEQ));
    let taken = raw.reply_word(watch::TAKEN);
    let mut buf = vec![0u8; n];
    watch_word(&raw, req_seq, raw.reply_word(watch::WATCHING), |seen| {
        // Take the call: announce it on our line, fence, and check the request word again
        // (a client that abandons would change it, fence, and read `taken`).
        taken.store(seen, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        assert_eq!(req_seq.load(Ordering::Relaxed), seen);
        let len = (raw.word(watch::REQ_LEN).load(Ordering::Relaxed) as usize).min(n);
        // SAFETY: the client wrote `len` (<= n) request bytes before its Release store of the
        // sequence word and waits for ours; the reply area is ours until then.
        unsafe {
            std::ptr::copy_nonoverlapping(raw.base.add(watch::REQ), buf.as_mut_ptr(), len);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), raw.reply().add(watch::REPLY), len);
        }
        reply_seq.store(seen, Ordering::Release);
    });
}

fn watch_session(n: usize) -> Session {
    let kind = "raw-watch";
    let (raw, server) = open_raw(kind, n);
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    let mut seq = 0u32;
    Session {
        call: Box::new(move || {
            let state = raw.word(watch::STATE);
            shape::step(state, shape::FREE, shape::CLAIMED, Ordering::Acquire, true);
            seq = seq.wrapping_add(1);
            // SAFETY: the slot is ours (CLAIMED) and the worker reads the request only after
            // the sequence word's Release store.
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), raw.base.add(watch::REQ), n) };
            raw.word(watch::REQ_LEN).store(n as u32, Ordering::Relaxed);
            raw.word(watch::REQ_SEQ).store(seq, Ordering::Release);
            std::sync::atomic::fence(Ordering::SeqCst);
            if raw.reply_word(watch::WATCHING).load(Ordering::Relaxed) == 0 {
                raw.word64(shape::READY).fetch_or(1, Ordering::Release);
            }
            let reply_seq = raw.reply_word(watch::REPLY_SEQ);
            while reply_seq.load(Ordering::Acquire) != seq {
                std::hint::spin_loop();
            }
            // SAFETY: the worker wrote the reply before its Release store of `seq`.
            unsafe {
                std::ptr::copy_nonoverlapping(raw.reply().add(watch::REPLY), out.as_mut_ptr(), n)
            };
            black_box(out[n - 1]);
            shape::step(state, shape::CLAIMED, shape::FREE, Ordering::Release, true);
        }),
        _keep: vec![Box::new(server)],
    }
}

/// `raw-shaped` with another way for the worker to find the call (`SHMRPC_BENCH_SHAPES=1`):
/// the same five CAS transitions of the state word, but instead of the ready bitmap's
/// `fetch_or` and `fetch_and`, the client stores the call's sequence in a doorbell word of
/// its own line after publishing, fences, and reads a `watched` word that the worker writes
/// only when it starts or stops watching (the ready bit would be the fallback, never taken
/// here); the worker polls the doorbell. What changing only the discovery of calls, and not
/// the ownership by CAS, would give.
mod bell {
    /// The doorbell (client-written) and the `watched` word (worker-written), each on a line
    /// of its own in the first page.
    pub const BELL: usize = 512;
    pub const WATCHED: usize = 768;
}

fn serve_bell(path: &str, n: usize) {
    let raw = Raw::open(path, n, false);
    let state = raw.word(shape::STATE);
    let mut buf = vec![0u8; n];
    watch_word(&raw, raw.word(bell::BELL), raw.word(bell::WATCHED), |_| {
        shape::step(
            state,
            shape::REQUEST,
            shape::SERVING,
            Ordering::Acquire,
            true,
        );
        let len = (raw.word(shape::LEN).load(Ordering::Relaxed) as usize).min(n);
        // SAFETY: the slot is SERVING: the client wrote `len` (<= n) bytes before its Release
        // CAS and touches them again only after our REPLY.
        unsafe { echo_in_place(raw.shape_payload(), &mut buf, len) };
        shape::step(state, shape::SERVING, shape::REPLY, Ordering::Release, true);
    });
}

fn bell_session(n: usize) -> Session {
    let kind = "raw-bell";
    let (raw, server) = open_raw(kind, n);
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    let mut seq = 0u32;
    Session {
        call: Box::new(move || {
            let state = raw.word(shape::STATE);
            shape::step(state, shape::FREE, shape::CLAIMED, Ordering::Acquire, true);
            // SAFETY: the slot is CLAIMED by us: the worker reads it only after REQUEST.
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), raw.shape_payload(), n) };
            raw.word(shape::LEN).store(n as u32, Ordering::Relaxed);
            shape::step(
                state,
                shape::CLAIMED,
                shape::REQUEST,
                Ordering::Release,
                true,
            );
            seq = seq.wrapping_add(1);
            raw.word(bell::BELL).store(seq, Ordering::Release);
            std::sync::atomic::fence(Ordering::SeqCst);
            if raw.word(bell::WATCHED).load(Ordering::Relaxed) == 0 {
                raw.word64(shape::READY).fetch_or(1, Ordering::Release);
            }
            while state.load(Ordering::Acquire) != shape::REPLY {
                std::hint::spin_loop();
            }
            // SAFETY: REPLY: the worker wrote the reply before its Release CAS.
            unsafe { std::ptr::copy_nonoverlapping(raw.shape_payload(), out.as_mut_ptr(), n) };
            black_box(out[n - 1]);
            shape::step(state, shape::REPLY, shape::FREE, Ordering::Release, true);
        }),
        _keep: vec![Box::new(server)],
    }
}

/// A third line pattern (`SHMRPC_BENCH_SHAPES=1`, BENCHMARKS.md "Honest models and honest
/// callers; ownership by CAS on lines of one writer"): every ownership decision is still a CAS
/// on one word, as in shmrpc, but each such word lies on a line that one side alone writes
/// while calls go well. The client
/// claims and frees the slot by CAS on a claim word that only clients touch; it writes the
/// request, then the call's generation into a call line that the worker only reads, and sets
/// the ready bit. The worker takes the call by CAS on a decision word of its own (where an
/// abandoning client or a reaper would CAS too, and only they would move that line), writes
/// the reply over the request, stores the generation into a done line that the client polls,
/// and closes the decision by CAS. `watch` (`raw-decide-watch`): instead of the bitmap, the
/// worker polls the call line, and the client sets the ready bit only if the worker's
/// `watching` word (on the done line, read after a fence) says nobody watches.
mod decide {
    /// The client's claim word (its own line).
    pub const CLAIM: usize = 4096;
    /// The call line: the call's generation, then its length.
    pub const CALL_GEN: usize = 4096 + 64;
    pub const CALL_LEN: usize = 4096 + 68;
    /// The worker's decision word (its own line): the generation taken, with `SERVING` until
    /// the reply is out.
    pub const DECIDE: usize = 4096 + 128;
    /// The done line: the generation whose reply is complete (the client polls it), and the
    /// worker's `watching` word.
    pub const DONE: usize = 4096 + 192;
    pub const WATCHING: usize = 4096 + 196;
    /// The payload: the request, then the reply over it, as in a shmrpc slot.
    pub const PAYLOAD: usize = 4096 + 256;
    pub const SERVING: u32 = 1 << 31;
    /// Room for the bytes (`Raw::len`): the contender runs up to this size.
    pub const MAX: usize = 2 * 4096 - 256;
}

fn serve_decide(path: &str, n: usize, watch: bool) {
    let raw = Raw::open(path, n, false);
    let decide = raw.word(decide::DECIDE);
    let call_gen = raw.word(decide::CALL_GEN);
    let mut buf = vec![0u8; n];
    let mut serve = |gen: u32| {
        // Take the call: a CAS from the value this worker left on its own line.
        let old = decide.load(Ordering::Relaxed);
        assert_ne!(old & !decide::SERVING, gen);
        decide
            .compare_exchange(
                old,
                gen | decide::SERVING,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .unwrap();
        let len = (raw.word(decide::CALL_LEN).load(Ordering::Relaxed) as usize).min(n);
        // SAFETY: the client wrote `len` (<= n) bytes before its Release store of `gen` and
        // touches them again only after our store of the done word.
        unsafe { echo_in_place(raw.base.add(decide::PAYLOAD), &mut buf, len) };
        raw.word(decide::DONE).store(gen, Ordering::Release);
        decide
            .compare_exchange(
                gen | decide::SERVING,
                gen,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .unwrap();
    };
    if watch {
        return watch_word(&raw, call_gen, raw.word(decide::WATCHING), serve);
    }
    let bitmap = raw.word64(shape::READY);
    ready();
    loop {
        while bitmap.load(Ordering::Relaxed) == 0 {
            if raw.word(128).load(Ordering::Relaxed) != 0 {
                return;
            }
            std::hint::spin_loop();
        }
        bitmap.fetch_and(!1, Ordering::AcqRel);
        serve(call_gen.load(Ordering::Acquire));
    }
}

fn decide_session(n: usize, watch: bool) -> Session {
    let kind = if watch {
        "raw-decide-watch"
    } else {
        "raw-decide"
    };
    let (raw, server) = open_raw(kind, n);
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    let mut gen = 0u32;
    Session {
        call: Box::new(move || {
            let claim = raw.word(decide::CLAIM);
            shape::step(claim, shape::FREE, shape::CLAIMED, Ordering::Acquire, true);
            gen = (gen + 1) & !decide::SERVING;
            let payload = raw.base.wrapping_add(decide::PAYLOAD);
            // SAFETY: the slot is CLAIMED by us; the worker reads the payload only after the
            // Release store of the generation.
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), payload, n) };
            raw.word(decide::CALL_LEN)
                .store(n as u32, Ordering::Relaxed);
            raw.word(decide::CALL_GEN).store(gen, Ordering::Release);
            let ring = if watch {
                // SYNC (modelled): the generation, fence, `watching`; the worker's side is its
                // store of `watching`, fence, and a last look at the call line.
                std::sync::atomic::fence(Ordering::SeqCst);
                raw.word(decide::WATCHING).load(Ordering::Relaxed) == 0
            } else {
                true
            };
            if ring {
                raw.word64(shape::READY).fetch_or(1, Ordering::Release);
            }
            let done = raw.word(decide::DONE);
            while done.load(Ordering::Acquire) != gen {
                std::hint::spin_loop();
            }
            // SAFETY: the worker wrote the reply before its Release store of the done word.
            unsafe { std::ptr::copy_nonoverlapping(payload, out.as_mut_ptr(), n) };
            black_box(out[n - 1]);
            shape::step(claim, shape::CLAIMED, shape::FREE, Ordering::Release, true);
        }),
        _keep: vec![Box::new(server)],
    }
}

/// Large messages: a `Vec<u8>` echo with the default configuration (1 MiB of slots, 256 MiB
/// of large-message memory). In place (`in_place`): the handler replies with the request's
/// bytes (`AsVec`), which are copied once, from the request into the reply, as the raw
/// server copies them. Owned: the handler copies the request into the `Vec` it returns, which
/// the worker then serializes into shared memory: the application's copy and the library's.
fn serve_shmrpc_bytes(name: &str, in_place: bool) {
    let builder = Server::builder(name);
    let server = if in_place {
        builder.serve_in_place(
            |req: Request<'_, Vec<u8>>, out: shmrpc::Responder<'_, Vec<u8>>| {
                out.send(&shmrpc::AsVec(req.as_slice()))
            },
        )
    } else {
        builder.serve(|req: Request<'_, Vec<u8>>| req.as_slice().to_vec())
    }
    .unwrap();
    ready();
    wait_stdin_eof();
    drop(server);
}

fn serve_uds(path: &str, n: usize) {
    let listener = UnixListener::bind(path).unwrap();
    ready();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { break };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; n];
            while stream.read_exact(&mut buf).is_ok() {
                if stream.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
}

fn serve_pipe(n: usize) {
    ready();
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let mut buf = vec![0u8; n];
    while stdin.read_exact(&mut buf).is_ok() {
        if stdout.write_all(&buf).and_then(|_| stdout.flush()).is_err() {
            break;
        }
    }
}

fn serve(role: &str) {
    let args: Vec<&str> = role.split(' ').collect();
    let n: usize = args[1].parse().unwrap();
    match args[0] {
        "shmrpc" | "shmrpc-park" => {
            let mode = if args[0] == "shmrpc" {
                WaitMode::default()
            } else {
                WaitMode::Park
            };
            let workers: usize = args[3].parse().unwrap();
            let slots: u32 = args[4].parse().unwrap();
            match n {
                64 => serve_shmrpc::<64>(args[2], mode, workers, slots),
                1024 => serve_shmrpc::<1024>(args[2], mode, workers, slots),
                16384 => serve_shmrpc::<16384>(args[2], mode, workers, slots),
                131072 => serve_shmrpc::<131072>(args[2], mode, workers, slots),
                _ => panic!("unsupported size {n}"),
            }
        }
        "raw-spin" => serve_raw(args[2], n, true, false),
        "raw-inplace" => serve_raw(args[2], n, true, true),
        "raw-futex" => serve_raw(args[2], n, false, false),
        "raw-slot" => serve_shaped(args[2], n, false, true),
        "raw-shaped" => serve_shaped(args[2], n, true, true),
        "raw-stores" => serve_shaped(args[2], n, true, false),
        "raw-watch" => serve_watch(args[2], n),
        "raw-bell" => serve_bell(args[2], n),
        "raw-decide" => serve_decide(args[2], n, false),
        "raw-decide-watch" => serve_decide(args[2], n, true),
        "uds" => serve_uds(args[2], n),
        "pipe" => serve_pipe(n),
        "shmrpc-bytes" => serve_shmrpc_bytes(args[2], true),
        "shmrpc-owned" => serve_shmrpc_bytes(args[2], false),
        #[cfg(feature = "bench-peers")]
        "iceoryx2-slice" => peers::serve_iceoryx2_slice(args[2], n),
        #[cfg(feature = "bench-peers")]
        "ipc-channel" => peers::serve_ipc_channel(args[2]),
        #[cfg(feature = "bench-peers")]
        "iceoryx2" => peers::serve_iceoryx2(args[2], n),
        other => panic!("unknown role {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Clients (in the bench process): one round trip each.

fn name(kind: &str, n: usize) -> String {
    format!("bench-{kind}-{n}-{}", std::process::id())
}

/// Times a contender's round trips in a criterion benchmark; its server lives as long as the
/// session.
fn bench_session(c: &mut Criterion, group: &str, kind: &str, n: usize, mut session: Session) {
    bench_round_trip(c, group, kind, n, &mut session.call);
}

/// Times `round_trip` (one request and its reply) as contender `kind` at `n` bytes each way.
fn bench_round_trip(
    c: &mut Criterion,
    group: &str,
    kind: &str,
    n: usize,
    mut round_trip: impl FnMut(),
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Bytes(2 * n as u64));
    g.bench_with_input(BenchmarkId::new(kind, n), &n, |b, _| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            for _ in 0..iters {
                round_trip();
            }
            t0.elapsed()
        })
    });
    g.finish();
}

fn bench_stream<S: Read + Write>(
    c: &mut Criterion,
    group: &str,
    kind: &str,
    n: usize,
    mut tx: impl Write,
    mut rx: S,
) {
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    bench_round_trip(c, group, kind, n, || {
        tx.write_all(&msg).unwrap();
        tx.flush().unwrap();
        rx.read_exact(&mut out).unwrap();
        black_box(out[n - 1]);
    });
}

/// A read half for the pipe contender (the server's stdout).
struct PipeRx<'a>(&'a mut BufReader<ChildStdout>);
impl Read for PipeRx<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
impl Write for PipeRx<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        unreachable!("read half")
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn round_trips(c: &mut Criterion) {
    const GROUP: &str = "round_trip";
    for n in SIZES {
        bench_session(
            c,
            GROUP,
            "shmrpc",
            n,
            shmrpc_session(n, Calls::Blocking(WaitMode::default())),
        );
        bench_session(
            c,
            GROUP,
            "shmrpc-park",
            n,
            shmrpc_session(n, Calls::Blocking(WaitMode::Park)),
        );
        bench_session(c, GROUP, "shmrpc-async", n, shmrpc_session(n, Calls::Async));
        bench_session(c, GROUP, "raw-spin", n, raw_session("raw-spin", n, true));
        bench_session(c, GROUP, "raw-futex", n, raw_session("raw-futex", n, false));
        {
            let path = format!("/tmp/{}.sock", name("uds", n));
            let _server = ServerProc::start(&format!("uds {n} {path}"));
            let stream = UnixStream::connect(&path).unwrap();
            bench_stream(
                c,
                GROUP,
                "unix-socket",
                n,
                stream.try_clone().unwrap(),
                stream,
            );
            let _ = std::fs::remove_file(&path);
        }
        {
            let mut server = ServerProc::start(&format!("pipe {n}"));
            let tx = server.stdin.take().unwrap();
            bench_stream(c, GROUP, "pipe", n, tx, PipeRx(&mut server.stdout));
        }
        #[cfg(feature = "bench-peers")]
        {
            peers::bench_ipc_channel(c, GROUP, n);
            bench_session(c, GROUP, "iceoryx2", n, peers::iceoryx2_session(n));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput: many callers at once, 64-byte messages.

/// `threads` threads of this process each make `iters` 64-byte calls through `client` at once;
/// the time from the first one's start to the last one's end (each thread reads the clock
/// itself: the spawning thread may be descheduled while they run).
fn calls_in_threads(client: &Client<[u8; 64], [u8; 64]>, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (client, barrier) = (client.clone(), barrier.clone());
            std::thread::spawn(move || {
                let msg = [1u8; 64];
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(client.request(&msg).unwrap()[0]);
                }
                (start, Instant::now())
            })
        })
        .collect();
    let spans: Vec<(Instant, Instant)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let first = spans.iter().map(|s| s.0).min().unwrap();
    let last = spans.iter().map(|s| s.1).max().unwrap();
    last - first
}

/// `SHMRPC_BENCH_THROUGHPUT=ROUNDS cargo bench -p shmrpc-bench --bench rpc`: the throughput
/// table's ratios, interleaved. For each worker count one server runs; in each round every thread count makes
/// its calls in turn, and "8 threads / best" is taken within the round.
fn interleaved_throughput(rounds: usize) {
    const THREADS: [usize; 4] = [1, 2, 4, 8];
    println!(
        "interleaved throughput, {rounds} rounds, 64-byte calls; calls/s: median over rounds,"
    );
    println!("ratio: median over rounds of (8 threads) / (best thread count of the same round).\n");
    for workers in [1usize, 2] {
        let (_server, client) = throughput_server("tpi", workers);
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); THREADS.len()];
        let mut ratios = Vec::new();
        for _ in 0..rounds {
            let mut round = Vec::new();
            for (k, &t) in THREADS.iter().enumerate() {
                // 40,000 calls in all (~10 ms at full speed), after a 2,000-call warm-up.
                calls_in_threads(&client, t, 2_000 / t as u64);
                let per_thread = 40_000 / t as u64;
                let took = calls_in_threads(&client, t, per_thread);
                let rate = (per_thread * t as u64) as f64 / took.as_secs_f64();
                rates[k].push(rate);
                round.push(rate);
            }
            let best = round.iter().cloned().fold(0.0, f64::max);
            ratios.push(round[3] / best);
        }
        println!("{workers} worker(s)");
        for (k, t) in THREADS.iter().enumerate() {
            println!("  {t} threads  {:>10.0} calls/s", median(&mut rates[k]));
        }
        let mut sorted = ratios.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        println!(
            "  8 threads / best: median {:.0} %, min {:.0} %, max {:.0} %\n",
            100.0 * median(&mut ratios),
            100.0 * sorted[0],
            100.0 * sorted[sorted.len() - 1]
        );
    }
}

/// The throughput benchmarks' server (`workers` workers, the default 32 slots, 64-byte echo)
/// and a client of it.
fn throughput_server(tag: &str, workers: usize) -> (ServerProc, Client<[u8; 64], [u8; 64]>) {
    let name = name(&format!("{tag}{workers}"), 64);
    let server = ServerProc::start(&format!("shmrpc 64 {name} {workers} 32"));
    let client = Client::builder(&name)
        .connect::<[u8; 64], [u8; 64]>()
        .unwrap();
    (server, client)
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput_64B");
    g.sample_size(10);
    for workers in [1usize, 2] {
        let (_server, client) = throughput_server("tp", workers);
        let name = client.name().to_owned();
        for threads in [1u64, 2, 4, 8] {
            g.throughput(Throughput::Elements(threads));
            let id = BenchmarkId::new(format!("shmrpc-{workers}w"), format!("{threads}t"));
            g.bench_function(id, |b| {
                b.iter_custom(|iters| calls_in_threads(&client, threads as usize, iters))
            });
        }
        // Two client processes, each making `iters` calls when told.
        g.throughput(Throughput::Elements(2));
        let id = BenchmarkId::new(format!("shmrpc-{workers}w"), "2p");
        let mut procs: Vec<ServerProc> = (0..2)
            .map(|_| ServerProc::start(&format!("caller 64 {name}")))
            .collect();
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                for p in &mut procs {
                    writeln!(p.stdin.as_mut().unwrap(), "{iters}").unwrap();
                }
                for p in &mut procs {
                    assert_eq!(p.read_line(), "done");
                }
                t0.elapsed()
            })
        });
    }
    // The Unix socket under the same load: one connection per thread, a thread per connection.
    let path = format!("/tmp/{}.sock", name("tp-uds", 64));
    let _server = ServerProc::start(&format!("uds 64 {path}"));
    for threads in [1u64, 2, 4, 8] {
        g.throughput(Throughput::Elements(threads));
        let id = BenchmarkId::new("unix-socket", format!("{threads}t"));
        let streams: Vec<UnixStream> = (0..threads)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(threads as usize + 1));
                let handles: Vec<_> = streams
                    .iter()
                    .map(|s| {
                        let (mut s, barrier) = (s.try_clone().unwrap(), barrier.clone());
                        std::thread::spawn(move || {
                            let (msg, mut out) = ([1u8; 64], [0u8; 64]);
                            barrier.wait();
                            for _ in 0..iters {
                                s.write_all(&msg).unwrap();
                                s.read_exact(&mut out).unwrap();
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let t0 = Instant::now();
                for h in handles {
                    h.join().unwrap();
                }
                t0.elapsed()
            })
        });
    }
    let _ = std::fs::remove_file(&path);
    g.finish();
}

/// A calling child for the two-process throughput figure: makes N calls per line on stdin.
fn caller(name: &str) {
    let client = Client::builder(name)
        .connect::<[u8; 64], [u8; 64]>()
        .unwrap();
    ready();
    let msg = [1u8; 64];
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let n: u64 = line.trim().parse().unwrap();
        for _ in 0..n {
            black_box(client.request(&msg).unwrap()[0]);
        }
        println!("done");
        std::io::stdout().flush().unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The cost of safety: validation against unchecked access, and untrusted mode's copy.

fn safety(c: &mut Criterion) {
    let mut g = c.benchmark_group("safety");
    // A String: its validation (UTF-8) reads every byte, unlike a Vec of plain integers.
    for (label, len) in [("64B", 56usize), ("16KiB", 16376)] {
        let msg: String = "shmrpc ".chars().cycle().take(len).collect();
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&msg).unwrap();
        g.bench_function(BenchmarkId::new("bytecheck-access", label), |b| {
            b.iter(|| {
                let a = rkyv::access::<rkyv::string::ArchivedString, rkyv::rancor::Error>(
                    black_box(&bytes),
                )
                .unwrap();
                black_box(a.len())
            })
        });
        g.bench_function(BenchmarkId::new("unchecked-access", label), |b| {
            b.iter(|| {
                // SAFETY: `bytes` was just produced by rkyv for this type.
                let a = unsafe {
                    rkyv::access_unchecked::<rkyv::string::ArchivedString>(black_box(&bytes))
                };
                black_box(a.len())
            })
        });
        let mut copy = rkyv::util::AlignedVec::new();
        g.bench_function(BenchmarkId::new("untrusted-copy+checksum", label), |b| {
            b.iter(|| {
                black_box(shmrpc::fuzzing::untrusted_copy(
                    black_box(&bytes),
                    &mut copy,
                ))
            })
        });
    }
    g.finish();
}

#[cfg(feature = "bench-peers")]
mod peers {
    //! iceoryx2 request-response and ipc-channel, written as their documentation shows.
    use super::*;
    use iceoryx2::prelude::*;
    use ipc_channel::ipc::{self as ipcc, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer};

    pub fn serve_ipc_channel(server_name: &str) {
        let tx0: ipcc::IpcSender<(IpcBytesSender, IpcBytesReceiver)> =
            ipcc::IpcSender::connect(server_name.to_owned()).unwrap();
        let (req_tx, req_rx) = ipcc::bytes_channel().unwrap();
        let (rep_tx, rep_rx) = ipcc::bytes_channel().unwrap();
        tx0.send((req_tx, rep_rx)).unwrap();
        ready();
        while let Ok(msg) = req_rx.recv() {
            if rep_tx.send(&msg).is_err() {
                break;
            }
        }
    }

    pub fn bench_ipc_channel(c: &mut Criterion, group: &str, n: usize) {
        let (server, server_name) =
            IpcOneShotServer::<(IpcBytesSender, IpcBytesReceiver)>::new().unwrap();
        let _proc = ServerProc::start(&format!("ipc-channel {n} {server_name}"));
        let (_, (req_tx, rep_rx)) = server.accept().unwrap();
        let msg = vec![7u8; n];
        bench_round_trip(c, group, "ipc-channel", n, || {
            req_tx.send(&msg).unwrap();
            black_box(rep_rx.recv().unwrap().len());
        });
    }

    fn iceoryx2_server<const N: usize>(service_name: &str) {
        let node = NodeBuilder::new().create::<ipc::Service>().unwrap();
        let service = node
            .service_builder(&service_name.try_into().unwrap())
            .request_response::<[u8; N], [u8; N]>()
            .open_or_create()
            .unwrap();
        let server = service.server_builder().create().unwrap();
        ready();
        let stop = std::thread::spawn(wait_stdin_eof);
        while !stop.is_finished() {
            while let Some(active) = server.receive().unwrap() {
                let response = active.loan_uninit().unwrap();
                response.write_payload(*active).send().unwrap();
            }
            std::hint::spin_loop();
        }
    }

    pub fn serve_iceoryx2(service_name: &str, n: usize) {
        match n {
            64 => iceoryx2_server::<64>(service_name),
            1024 => iceoryx2_server::<1024>(service_name),
            16384 => iceoryx2_server::<16384>(service_name),
            _ => iceoryx2_server::<131072>(service_name),
        }
    }

    fn iceoryx2_session_n<const N: usize>() -> Session {
        let service_name = format!("shmrpc/bench/{}", name("iox2", N));
        let server = ServerProc::start(&format!("iceoryx2 {N} {service_name}"));
        let node = NodeBuilder::new().create::<ipc::Service>().unwrap();
        let service = node
            .service_builder(&service_name.as_str().try_into().unwrap())
            .request_response::<[u8; N], [u8; N]>()
            .open_or_create()
            .unwrap();
        let client = service.client_builder().create().unwrap();
        let msg = Box::new([7u8; N]);
        // The caller reads the whole reply, as the raw contenders do: it copies it out.
        let mut out = vec![0u8; N];
        Session {
            call: Box::new(move || {
                let request = client.loan_uninit().unwrap();
                let pending = request.write_payload(*msg).send().unwrap();
                loop {
                    if let Some(response) = pending.receive().unwrap() {
                        out.copy_from_slice(&response[..]);
                        black_box(out[N - 1]);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }),
            _keep: vec![Box::new(server), Box::new(service), Box::new(node)],
        }
    }

    /// iceoryx2 request-response with slice payloads (`[u8]`, sized per service), as its
    /// documentation shows: the server answers each request with a copy of its bytes.
    pub fn serve_iceoryx2_slice(service_name: &str, n: usize) {
        let node = NodeBuilder::new().create::<ipc::Service>().unwrap();
        let service = node
            .service_builder(&service_name.try_into().unwrap())
            .request_response::<[u8], [u8]>()
            .open_or_create()
            .unwrap();
        let server = service
            .server_builder()
            .initial_max_slice_len(n)
            .create()
            .unwrap();
        ready();
        let stop = std::thread::spawn(wait_stdin_eof);
        while !stop.is_finished() {
            while let Some(active) = server.receive().unwrap() {
                let response = active.loan_slice_uninit(active.payload().len()).unwrap();
                response.write_from_slice(active.payload()).send().unwrap();
            }
            std::hint::spin_loop();
        }
    }

    /// The client of [`serve_iceoryx2_slice`]; it reads the whole reply (copies it out).
    pub fn iceoryx2_slice_session(n: usize) -> Session {
        let service_name = format!("shmrpc/bench/{}", name("iox2s", n));
        let server = ServerProc::start(&format!("iceoryx2-slice {n} {service_name}"));
        let node = NodeBuilder::new().create::<ipc::Service>().unwrap();
        let service = node
            .service_builder(&service_name.as_str().try_into().unwrap())
            .request_response::<[u8], [u8]>()
            .open_or_create()
            .unwrap();
        let client = service
            .client_builder()
            .initial_max_slice_len(n)
            .create()
            .unwrap();
        let msg = vec![7u8; n];
        let mut out = vec![0u8; n];
        Session {
            call: Box::new(move || {
                let request = client.loan_slice_uninit(n).unwrap();
                let pending = request.write_from_slice(&msg).send().unwrap();
                loop {
                    if let Some(response) = pending.receive().unwrap() {
                        out.copy_from_slice(response.payload());
                        black_box(out[n - 1]);
                        break;
                    }
                    std::hint::spin_loop();
                }
            }),
            _keep: vec![Box::new(server), Box::new(service), Box::new(node)],
        }
    }

    pub fn iceoryx2_session(n: usize) -> Session {
        match n {
            64 => iceoryx2_session_n::<64>(),
            1024 => iceoryx2_session_n::<1024>(),
            16384 => iceoryx2_session_n::<16384>(),
            _ => iceoryx2_session_n::<131072>(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions (a contender's server and its round trip), used by the criterion benchmarks and by
// the interleaved comparison. Criterion measures contenders one after another, so a change of vCPU
// placement between two of them skews their ratio. Here the contenders take turns, round after
// round, each in a short session of its own (its server started, a warm-up, one timed batch,
// its server stopped), so that only one server is alive at a time (the raw-spin and iceoryx2
// servers busy-poll while idle and would starve the others); each ratio is taken within a round.

/// One session of a contender: one round trip per call, and what must stay alive meanwhile.
struct Session {
    call: Box<dyn FnMut()>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// How a shmrpc session calls: blocking in a wait mode, or one awaited `request_async` at a
/// time on a single-thread executor (`block_on`), against the same server as "shmrpc": the
/// cost of the async path (doorbell, helper thread, task wake-up) next to the blocking call's.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Calls {
    Blocking(WaitMode),
    Async,
}

fn shmrpc_session_n<const N: usize>(calls: Calls) -> Session {
    let (kind, mode) = match calls {
        Calls::Blocking(WaitMode::Park) => ("shmrpc-park", WaitMode::Park),
        Calls::Blocking(mode) => ("shmrpc", mode),
        Calls::Async => ("shmrpc-async", WaitMode::default()),
    };
    let server_kind = if mode == WaitMode::Park {
        "shmrpc-park"
    } else {
        "shmrpc"
    };
    let server_name = name(kind, N);
    let server = ServerProc::start(&format!("{server_kind} {N} {server_name} 1 4"));
    let client = Client::builder(&server_name)
        .wait_mode(mode)
        .connect::<[u8; N], [u8; N]>()
        .unwrap();
    let msg = Box::new([7u8; N]);
    // The caller reads the whole reply, as the raw contenders do: it copies it out.
    let mut out = vec![0u8; N];
    Session {
        call: Box::new(move || {
            let reply = if calls == Calls::Async {
                futures::executor::block_on(client.request_async(&msg))
            } else {
                client.request(&msg)
            }
            .unwrap();
            out.copy_from_slice(&reply[..]);
            black_box(out[N - 1]);
        }),
        _keep: vec![Box::new(server)],
    }
}

fn shmrpc_session(n: usize, calls: Calls) -> Session {
    match n {
        64 => shmrpc_session_n::<64>(calls),
        1024 => shmrpc_session_n::<1024>(calls),
        16384 => shmrpc_session_n::<16384>(calls),
        _ => shmrpc_session_n::<131072>(calls),
    }
}

/// A raw contender's mapping, made here, and its server process, started on it; the mapping's
/// name is unlinked once both sides have it mapped (the server says ready after mapping it).
fn open_raw(kind: &str, n: usize) -> (Raw, ServerProc) {
    let path = format!("/{}", name(kind, n));
    let raw = Raw::open(&path, n, true);
    let server = ServerProc::start(&format!("{kind} {n} {path}"));
    let _ = rustix::shm::unlink(path.as_str());
    (raw, server)
}

fn raw_session(kind: &str, n: usize, spin: bool) -> Session {
    let (raw, server) = open_raw(kind, n);
    let in_place = kind == "raw-inplace";
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    Session {
        call: Box::new(move || {
            let seen = raw.word(64).load(Ordering::Acquire);
            // SAFETY: the server reads the request only after our Release bump below.
            unsafe { std::ptr::copy_nonoverlapping(msg.as_ptr(), raw.request(), n) };
            Raw::publish(raw.word(0), spin);
            Raw::wait_change(raw.word(64), seen, spin);
            let reply = if in_place { raw.request() } else { raw.reply() };
            // SAFETY: the server wrote the reply before its Release bump.
            unsafe { std::ptr::copy_nonoverlapping(reply, out.as_mut_ptr(), n) };
            black_box(out[n - 1]);
        }),
        // The server process is killed when this drops; the mapping goes with `raw`.
        _keep: vec![Box::new(server)],
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

type Factory = Box<dyn Fn() -> Session>;

/// Runs `rounds` rounds in which every contender `(name, batch, factory)` runs one session in
/// turn: its server started, a warm-up of at least a quarter batch (two calls at least) and
/// 50 ms, a timed batch, its server stopped. The order rotates by one contender per round, so
/// that none always runs first or always after the same one (the one before leaves the caches
/// and the memory bus in its own state). Returns each contender's time per call, per round.
///
/// (The warm-up is the same for every contender: a fresh server process starts on its
/// parent's vCPU, and until the scheduler moves one of the two, tens of ms here, a spinning
/// pair shares one core and a call costs 3-4x its steady time; 300-call batches of 128 KiB
/// would fall inside.)
fn take_turns(cs: &[(&str, u32, Factory)], rounds: usize) -> Vec<Vec<f64>> {
    let mut per_call: Vec<Vec<f64>> = vec![Vec::new(); cs.len()];
    for round in 0..rounds {
        for k in 0..cs.len() {
            let i = (round + k) % cs.len();
            let (_, batch, factory) = &cs[i];
            let mut session = factory();
            let warm = Instant::now();
            let mut warmed = 0;
            while warmed < (batch / 4).max(2) || warm.elapsed() < Duration::from_millis(50) {
                (session.call)();
                warmed += 1;
            }
            let t0 = Instant::now();
            for _ in 0..*batch {
                (session.call)();
            }
            per_call[i].push(t0.elapsed().as_nanos() as f64 / f64::from(*batch));
        }
    }
    per_call
}

/// The median over rounds of contender `a`'s time over contender `b`'s, within each round.
fn median_ratio(per_call: &[Vec<f64>], a: usize, b: usize) -> f64 {
    let mut r: Vec<f64> = per_call[a]
        .iter()
        .zip(&per_call[b])
        .map(|(x, y)| x / y)
        .collect();
    median(&mut r)
}

/// `SHMRPC_BENCH_INTERLEAVED=ROUNDS cargo bench -p shmrpc-bench --bench rpc
/// [--features bench-peers]`
fn interleaved(rounds: usize) {
    println!("interleaved comparison, {rounds} rounds: in each round every contender runs one");
    println!("session (server started, warm-up, timed batch, server stopped), in turn.");
    println!("ns per round trip: median over rounds; ratios: median of the per-round ratios.\n");
    // `SHMRPC_BENCH_SIZES=64,1024` limits the run to some payload sizes.
    let sizes: Vec<usize> = match std::env::var("SHMRPC_BENCH_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse().expect("SHMRPC_BENCH_SIZES=64,1024,..."))
            .collect(),
        Err(_) => SIZES.to_vec(),
    };
    for n in sizes {
        // Batches of about 5-10 ms per session whatever the payload.
        let spin_batch = match n {
            0..=1024 => 20_000,
            1025..=16384 => 2_000,
            _ => 300,
        };
        #[cfg_attr(not(feature = "bench-peers"), allow(unused_mut))]
        let mut cs: Vec<(&str, u32, Factory)> = vec![
            (
                "shmrpc",
                spin_batch,
                Box::new(move || shmrpc_session(n, Calls::Blocking(WaitMode::default()))),
            ),
            (
                "raw-spin",
                spin_batch,
                Box::new(move || raw_session("raw-spin", n, true)),
            ),
            (
                "shmrpc-park",
                300,
                Box::new(move || shmrpc_session(n, Calls::Blocking(WaitMode::Park))),
            ),
            (
                "raw-futex",
                300,
                Box::new(move || raw_session("raw-futex", n, false)),
            ),
            (
                "shmrpc-async",
                (spin_batch / 10).max(300),
                Box::new(move || shmrpc_session(n, Calls::Async)),
            ),
            // `raw-spin` with the reply over the request, as shmrpc writes it: faster than
            // `raw-spin` from 1 KiB on (BENCHMARKS.md), so the limit there.
            (
                "raw-inplace",
                spin_batch,
                Box::new(move || raw_session("raw-inplace", n, true)),
            ),
        ];
        #[cfg(feature = "bench-peers")]
        cs.push((
            "iceoryx2",
            spin_batch,
            Box::new(move || peers::iceoryx2_session(n)),
        ));
        // The protocol's line traffic alone (see `mod shape`).
        let shapes = std::env::var_os("SHMRPC_BENCH_SHAPES").is_some();
        if shapes {
            // shmrpc's own slot protocol without a message (`Client::ping`: no serialization,
            // validation, types, handler or statistics; it reads `Instant::now` twice for the
            // time it returns, ~25 ns each here).
            cs.push((
                "shmrpc-ping",
                spin_batch,
                Box::new(move || {
                    let server_name = name("shmrpc-ping", n);
                    let server = ServerProc::start(&format!("shmrpc 64 {server_name} 1 4"));
                    let client = Client::builder(&server_name)
                        .connect::<[u8; 64], [u8; 64]>()
                        .unwrap();
                    Session {
                        call: Box::new(move || {
                            black_box(client.ping().unwrap());
                        }),
                        _keep: vec![Box::new(server)],
                    }
                }),
            ));
            cs.push((
                "raw-slot",
                spin_batch,
                Box::new(move || shaped_session("raw-slot", n, false, true)),
            ));
            cs.push((
                "raw-shaped",
                spin_batch,
                Box::new(move || shaped_session("raw-shaped", n, true, true)),
            ));
            cs.push((
                "raw-stores",
                spin_batch,
                Box::new(move || shaped_session("raw-stores", n, true, false)),
            ));
            cs.push(("raw-bell", spin_batch, Box::new(move || bell_session(n))));
            if n <= watch::MAX {
                cs.push(("raw-watch", spin_batch, Box::new(move || watch_session(n))));
            }
            if n <= decide::MAX {
                cs.push((
                    "raw-decide",
                    spin_batch,
                    Box::new(move || decide_session(n, false)),
                ));
                cs.push((
                    "raw-decide-watch",
                    spin_batch,
                    Box::new(move || decide_session(n, true)),
                ));
            }
        }
        let per_call = take_turns(&cs, rounds);
        let ratio = |a: usize, b: usize| median_ratio(&per_call, a, b);
        println!("payload {n} B");
        for (i, (name, _, _)) in cs.iter().enumerate() {
            let mut v = per_call[i].clone();
            println!("  {name:<12} {:>10.0} ns", median(&mut v));
        }
        let at = |name: &str| cs.iter().position(|c| c.0 == name);
        let inplace = at("raw-inplace").unwrap();
        println!("  shmrpc / raw-spin        {:.2}x", ratio(0, 1));
        println!("  shmrpc / raw-inplace     {:.2}x", ratio(0, inplace));
        println!("  shmrpc-park / raw-futex  {:.2}x", ratio(2, 3));
        println!("  shmrpc-async / shmrpc    {:.2}x", ratio(4, 0));
        if let Some(iox) = at("iceoryx2") {
            println!("  iceoryx2 / shmrpc        {:.2}x", ratio(iox, 0));
        }
        if shapes {
            let shaped = at("raw-shaped").unwrap();
            for name in [
                "raw-inplace",
                "shmrpc-ping",
                "raw-stores",
                "raw-slot",
                "raw-shaped",
                "raw-bell",
                "raw-watch",
                "raw-decide",
                "raw-decide-watch",
            ] {
                if let Some(i) = at(name) {
                    println!("  {name:<16} / raw-spin {:.2}x", ratio(i, 1));
                }
            }
            println!("  shmrpc / raw-shaped      {:.2}x", ratio(0, shaped));
        }
        println!();
    }
}

/// A `Vec<u8>` round trip of `n` bytes against [`serve_shmrpc_bytes`]; the caller reads the
/// whole reply (copies it out, as the raw contender does).
fn shmrpc_bytes_session(n: usize, role: &str) -> Session {
    let server_name = name(role, n);
    let server = ServerProc::start(&format!("{role} {n} {server_name}"));
    let client = Client::<Vec<u8>>::connect(&server_name).unwrap();
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    Session {
        call: Box::new(move || {
            let reply = client.request(&msg).unwrap();
            out.copy_from_slice(reply.as_slice());
            black_box(out[n - 1]);
        }),
        _keep: vec![Box::new(server)],
    }
}

/// `n` bytes each way over a Unix stream socket (the server echoes them).
fn uds_session(n: usize) -> Session {
    let path = format!("/tmp/{}.sock", name("uds", n));
    let server = ServerProc::start(&format!("uds {n} {path}"));
    let mut stream = UnixStream::connect(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let msg = vec![7u8; n];
    let mut out = vec![0u8; n];
    Session {
        call: Box::new(move || {
            stream.write_all(&msg).unwrap();
            stream.read_exact(&mut out).unwrap();
            black_box(out[n - 1]);
        }),
        _keep: vec![Box::new(server)],
    }
}

/// `SHMRPC_BENCH_LARGE=ROUNDS cargo bench -p shmrpc-bench --bench rpc [--features bench-peers]`:
/// messages larger than a slot (256 KiB, 1 MiB, 16 MiB, 64 MiB, or `SHMRPC_BENCH_SIZES`), the
/// contenders taking turns as in [`interleaved`]: shmrpc (`Vec<u8>`, the default server, the
/// reply written in place; and `shmrpc-owned`, the handler returning an owned copy),
/// the raw limit (the same bytes copied into shared memory by the client, from request to
/// reply by the server, and out by the client: spinning on a word each way), a Unix socket,
/// and, with the peers, iceoryx2 request-response with slice payloads.
fn interleaved_large(rounds: usize) {
    println!("interleaved comparison of large messages, {rounds} rounds (see `interleaved`).\n");
    // Every round's time per call, for `scripts/large_plot.py`: size,contender,round,ns.
    let csv_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench-large.csv");
    let mut csv = String::from("size,contender,round,ns\n");
    let sizes: Vec<usize> = match std::env::var("SHMRPC_BENCH_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().parse().expect("SHMRPC_BENCH_SIZES=262144,..."))
            .collect(),
        Err(_) => vec![256 << 10, 1 << 20, 16 << 20, 64 << 20],
    };
    for n in sizes {
        let batch = match n {
            0..=1_048_576 => 60,
            1_048_577..=16_777_216 => 8,
            _ => 3,
        };
        #[cfg_attr(not(feature = "bench-peers"), allow(unused_mut))]
        let mut cs: Vec<(&str, u32, Factory)> = vec![
            (
                "shmrpc",
                batch,
                Box::new(move || shmrpc_bytes_session(n, "shmrpc-bytes")),
            ),
            (
                "raw-spin",
                batch,
                Box::new(move || raw_session("raw-spin", n, true)),
            ),
            ("unix-socket", batch, Box::new(move || uds_session(n))),
        ];
        #[cfg(feature = "bench-peers")]
        cs.push((
            "iceoryx2",
            batch,
            Box::new(move || peers::iceoryx2_slice_session(n)),
        ));
        cs.push((
            "shmrpc-owned",
            batch,
            Box::new(move || shmrpc_bytes_session(n, "shmrpc-owned")),
        ));
        let per_call = take_turns(&cs, rounds);
        for (i, (name, _, _)) in cs.iter().enumerate() {
            for (round, ns) in per_call[i].iter().enumerate() {
                csv.push_str(&format!("{n},{name},{round},{ns:.0}\n"));
            }
        }
        let ratio = |a: usize, b: usize| median_ratio(&per_call, a, b);
        println!("payload {n} B");
        for (i, (name, _, _)) in cs.iter().enumerate() {
            let mut v = per_call[i].clone();
            let ns = median(&mut v);
            println!(
                "  {name:<12} {:>12.0} ns  {:>6.2} GB/s each way",
                ns,
                n as f64 / ns
            );
        }
        println!("  shmrpc / raw-spin        {:.2}x", ratio(0, 1));
        println!("  unix-socket / shmrpc     {:.2}x", ratio(2, 0));
        let owned = cs.len() - 1;
        if cs.len() > 4 {
            println!("  iceoryx2 / shmrpc        {:.2}x", ratio(3, 0));
        }
        println!("  shmrpc-owned / raw-spin  {:.2}x", ratio(owned, 1));
        println!();
    }
    match std::fs::write(csv_path, csv) {
        Ok(()) => println!("per-round times written to {csv_path}"),
        Err(e) => println!("could not write {csv_path}: {e}"),
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        if let Some(name) = role.strip_prefix("caller 64 ") {
            return caller(name);
        }
        return serve(&role);
    }
    if let Ok(rounds) = std::env::var("SHMRPC_BENCH_THROUGHPUT") {
        return interleaved_throughput(rounds.parse().expect("SHMRPC_BENCH_THROUGHPUT=ROUNDS"));
    }
    if let Ok(rounds) = std::env::var("SHMRPC_BENCH_LARGE") {
        return interleaved_large(rounds.parse().expect("SHMRPC_BENCH_LARGE=ROUNDS"));
    }
    if let Ok(rounds) = std::env::var("SHMRPC_BENCH_INTERLEAVED") {
        return interleaved(rounds.parse().expect("SHMRPC_BENCH_INTERLEAVED=ROUNDS"));
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    round_trips(&mut c);
    throughput(&mut c);
    safety(&mut c);
    c.final_summary();
}
