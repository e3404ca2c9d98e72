//! A steady-state call allocates nothing, on the client or on the server, for a fixed-size
//! request and reply. Server and client run in this process so that one counting allocator
//! sees both sides; the counter is per thread-group, so other tests' threads are excluded by
//! running the measurement in a dedicated test binary with this single test.

use shmrpc::{Client, Request, Server};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards to the system allocator; only adds a relaxed counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A fixed-size message: numbers and a byte array, no heap.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, Clone, Copy)]
struct Fixed {
    n: u64,
    x: f64,
    bytes: [u8; 48],
}

/// 10,000 calls after warm-up, in both wait modes: zero allocations in the whole process.
/// Fails if any part of the call path (serialization, validation, call ids, waiting, the
/// mapping handle, the worker) allocates per call.
#[test]
fn steady_state_calls_allocate_nothing_on_either_side() {
    for (mode, wait) in [
        ("adaptive", shmrpc::WaitMode::default()),
        ("park", shmrpc::WaitMode::Park),
    ] {
        let name = format!("test-zeroalloc-{mode}-{}", std::process::id());
        let server = Server::builder(&name)
            .wait_mode(wait)
            .serve(|req: Request<'_, Fixed>| Fixed {
                n: req.n.to_native() + 1,
                x: req.x.to_native() * 2.0,
                bytes: req.bytes,
            })
            .unwrap();
        let client = Client::builder(&name)
            .wait_mode(wait)
            .connect::<Fixed, Fixed>()
            .unwrap();
        let mut msg = Fixed {
            n: 0,
            x: 1.5,
            bytes: [7; 48],
        };
        let mut call = |i: u64| {
            msg.n = i;
            let reply = client.request(&msg).unwrap();
            assert_eq!(reply.n, i + 1);
            assert_eq!(reply.bytes, [7; 48]);
        };
        for i in 0..1_000 {
            call(i);
        }
        COUNTING.store(true, Ordering::SeqCst);
        for i in 0..10_000 {
            call(i);
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCATIONS.swap(0, Ordering::SeqCst);
        println!("{mode}: {n} allocations in 10,000 calls");
        assert_eq!(n, 0, "{mode}: {n} allocations in 10,000 calls");
        drop(server);
    }
}
