//! Messages larger than a slot (DESIGN.md section 4b): through the large-message arena, under
//! load from thousands of client instances and several processes, each reply equal to its
//! request byte for byte; and nothing leaked when a client or a server process is killed at
//! any point of a large transfer. Every peer here is a real process; every wait is bounded.

mod common;

use common::{echo, say, start_server, unique_name, wait_for_stats, Echo, Gate, Proc, Rng, ROLE};

use shmrpc::{Client, Error, Request, Server, SlotState, StatsView};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The largest message the load tests send.
const MAX_SIZE: usize = 4 << 20;

/// A message of `len` bytes (at least 16) that names its sender and call: every byte is the
/// call's tag, except the first and last eight, which hold the call's number. A reply that is
/// another call's, or cut, or shifted, differs from its request.
fn message(call: u64, len: usize) -> Vec<u8> {
    let len = len.max(16);
    let mut v = vec![(call % 251) as u8; len];
    v[..8].copy_from_slice(&call.to_le_bytes());
    v[len - 8..].copy_from_slice(&call.to_le_bytes());
    v
}

/// A size from 1 byte to [`MAX_SIZE`]. Log-uniform by default: every size class is drawn
/// equally often (within a slot, just over one, a few chunks, the 4 MiB end), about 300 KB a
/// call on average; `SHMRPC_LARGE_UNIFORM=1` draws uniformly instead (2 MiB a call on average:
/// 10 GB each way over 5000 calls, minutes in a debug build).
fn random_size(rng: &mut Rng) -> usize {
    if std::env::var_os("SHMRPC_LARGE_UNIFORM").is_some() {
        return 1 + rng.below(MAX_SIZE);
    }
    let bits = (MAX_SIZE as f64).log2();
    let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    (2f64.powf(x * bits) as usize).clamp(1, MAX_SIZE)
}

/// How many client instances the load test runs (5000; fewer under emulation, where
/// `SHMRPC_LARGE_CLIENTS` says so, and the processes test scales with it).
fn clients() -> u64 {
    std::env::var("SHMRPC_LARGE_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

fn echo_bytes(req: Request<'_, Vec<u8>>) -> Vec<u8> {
    req.as_slice().to_vec()
}

/// Entry point of every child process; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    match args[..] {
        // Runs in a mount namespace whose /dev/shm is a 16 MiB tmpfs (`full_shm_prefix`): a
        // server with the default 256 MiB of large-message memory, messages larger than the
        // room left, then a /dev/shm filled to the last byte. Each step reports its outcome;
        // a SIGBUS would end the child before its line.
        ["full-shm", name] => {
            let server = Server::builder(name)
                .serve(|req: Request<'_, Vec<u8>>| -> Vec<u8> {
                    // A short request asks for a reply of that many MiB.
                    match req.len() {
                        1 => vec![7; usize::from(req[0]) << 20],
                        _ => req.to_vec(),
                    }
                })
                .unwrap();
            let client = Client::<Vec<u8>>::connect(name).unwrap();
            let kind = |r: Result<usize, Error>| match r {
                Ok(len) => format!("ok {len}"),
                Err(Error::Io { source, .. }) => format!("io {:?}", source.kind()),
                Err(e) => format!("other {e}"),
            };
            let call = |msg: &Vec<u8>| kind(client.request(msg).map(|r| r.len()));
            say(format!("request 24 MiB: {}", call(&vec![1; 24 << 20])));
            say(format!("reply 24 MiB: {}", call(&vec![24])));
            say(format!("request 1 MiB: {}", call(&vec![1; 1 << 20])));
            say(format!("reply 1 MiB: {}", call(&vec![1])));
            // Fill what is left of /dev/shm, then start another server.
            let mut filler = std::fs::File::create("/dev/shm/filler").unwrap();
            let block = vec![0u8; 64 << 10];
            while std::io::Write::write_all(&mut filler, &block).is_ok() {}
            say(format!("request 8 MiB, full: {}", call(&vec![1; 8 << 20])));
            let other = Server::builder(format!("{name}-2")).serve(echo_bytes);
            say(format!("start, full: {}", kind(other.map(|_| 0))));
            say(format!("request 1 KiB, full: {}", call(&vec![1; 1 << 10])));
            drop(server);
        }
        // The default configuration: 1 MiB of slots, 256 MiB of large-message memory.
        ["bytes-server", name] => {
            let server = Server::builder(name).workers(2).serve(echo_bytes).unwrap();
            say("ready".into());
            common::wait_for_stdin_eof();
            drop(server);
        }
        // Calls `calls` times from `threads` threads, random sizes; reports the bad replies.
        ["bytes-client", name, tag, calls, threads] => {
            let calls: u64 = calls.parse().unwrap();
            let tag: u64 = tag.parse().unwrap();
            let client = Client::<Vec<u8>>::connect(name).unwrap();
            let (next, bad) = (AtomicU64::new(0), AtomicU64::new(0));
            std::thread::scope(|s| {
                for t in 0..threads.parse::<u64>().unwrap() {
                    let (client, next, bad) = (&client, &next, &bad);
                    s.spawn(move || {
                        let mut rng = Rng(tag * 1000 + t);
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            if i >= calls {
                                break;
                            }
                            let msg = message(tag << 32 | i, random_size(&mut rng));
                            match client.request(&msg) {
                                Ok(r) if r.as_slice() == msg.as_slice() => {}
                                _ => {
                                    bad.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                    });
                }
            });
            let (sent, bad) = (
                next.load(Ordering::SeqCst).min(calls),
                bad.load(Ordering::SeqCst),
            );
            say(format!("result bad={bad} of {sent}"));
        }
        // Killed while it holds a large reply.
        ["hold-large", name, size] => {
            let client = Client::<Echo>::connect(name).unwrap();
            let reply = client
                .request(&Echo::new(1, "h".repeat(size.parse().unwrap())))
                .unwrap();
            say("holding".into());
            let _keep = reply;
            sleep_forever();
        }
        // Killed while its large request is being served.
        ["wait-large", name, size] => {
            let client = Client::<Echo>::connect(name).unwrap();
            let mut slow = Echo::new(1, "w".repeat(size.parse().unwrap()));
            slow.sleep_ms = 500;
            say("calling".into());
            let _ = client.request(&slow);
            sleep_forever();
        }
        // Stops (then is killed) in the middle of writing a large request into the arena: the
        // text, written before the gate, has already moved the message out of its slot.
        ["gated-large", name, size] => {
            let client = Client::<Echo>::connect(name).unwrap();
            let mut gated = Echo::new(1, "g".repeat(size.parse().unwrap()));
            gated.gate = Gate::STOP;
            let _ = client.request(&gated);
            sleep_forever();
        }
        // Waits for large-message memory that the parent holds (then is killed).
        ["wait-room", name] => {
            let client = Client::<Vec<u8>>::connect(name).unwrap();
            say("calling".into());
            let _ = client.request_timeout(&message(9, 2 << 20), Duration::from_secs(600));
            sleep_forever();
        }
        ["echo-server", name] => {
            let server = Server::builder(name)
                .large_memory(8 << 20)
                .serve(echo)
                .unwrap();
            say("ready".into());
            common::wait_for_stdin_eof();
            drop(server);
        }
        _ => panic!("unknown child role {role:?}"),
    }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// 5000 client instances created in a parallel loop (as in the original's test), each sending
/// one message of a random size from 1 byte to 4 MiB to a server process with the default
/// configuration: no failure, every reply equal to its request byte for byte, and afterwards
/// no large-message memory in use. Fails if a run is shared by two calls, lost, or leaked.
#[test]
fn five_thousand_client_instances_send_random_sizes_and_get_them_back_byte_for_byte() {
    let name = unique_name("large5000");
    let mut server = start_server(&["bytes-server", &name]);
    let total = clients();
    let (failures, next, bytes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..50 {
            let (failures, next, bytes, name) = (&failures, &next, &bytes, &name);
            s.spawn(move || {
                let mut rng = Rng(0x1a12e + t);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= total {
                        break;
                    }
                    let msg = message(i, random_size(&mut rng));
                    bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
                    let outcome = Client::<Vec<u8>>::connect(name).and_then(|client| {
                        client.request(&msg).map(|r| r.as_slice() == msg.as_slice())
                    });
                    if !matches!(outcome, Ok(true)) {
                        eprintln!("call {i} of {} bytes: {outcome:?}", msg.len());
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    println!(
        "{total} calls, {} MB each way, in {:?}",
        bytes.load(Ordering::Relaxed) >> 20,
        t0.elapsed()
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    let stats = wait_for_stats(&name, "no large memory in use", |s| s.large_in_use == 0);
    assert_eq!(stats.slots_in_use, 0, "{stats:?}");
    assert!(server.finish(Duration::from_secs(10)));
}

/// Several client processes with several threads each, random sizes up to 4 MiB: every reply
/// is its own request, byte for byte.
#[test]
fn client_processes_send_large_messages_and_get_their_own_back() {
    let name = unique_name("largeprocs");
    let mut server = start_server(&["bytes-server", &name]);
    // 300 calls per process natively; as many fewer as the load test runs under emulation.
    let calls = (300 * clients() / 5000).max(20).to_string();
    let mut procs: Vec<Proc> = (1..=4)
        .map(|p| Proc::spawn(&["bytes-client", &name, &p.to_string(), &calls, "4"]))
        .collect();
    for p in &mut procs {
        assert_eq!(p.line(), format!("result bad=0 of {calls}"));
        assert!(p.finish(Duration::from_secs(30)));
    }
    let stats = wait_for_stats(&name, "no large memory in use", |s| s.large_in_use == 0);
    assert_eq!(stats.slots_in_use, 0, "{stats:?}");
    assert!(server.finish(Duration::from_secs(10)));
}

/// A client process killed at each point of a large transfer (in the middle of writing its
/// request into the arena, while its request is served, while it holds its reply) leaves
/// nothing behind: its slot and its arena run come back within the reclaim time, and the next
/// large call is served. Fails if the reaper misses the run of any state.
#[test]
fn a_client_killed_at_any_point_of_a_large_transfer_leaves_no_memory_behind() {
    const SIZE: &str = "3000000";
    for (role, line, state) in [
        ("gated-large", "writing", SlotState::Claimed),
        ("wait-large", "calling", SlotState::Serving),
        ("hold-large", "holding", SlotState::Replied),
    ] {
        let name = unique_name(role);
        let mut server = start_server(&["echo-server", &name]);
        let client = Client::<Echo>::connect(&name).unwrap();
        let mut child = Proc::spawn(&[role, &name, SIZE]);
        assert_eq!(child.line(), line);
        let before = wait_for_stats(&name, "the child's large call in its slot", |s| {
            s.in_use.len() == 1 && s.in_use[0].state == state && s.in_use[0].large_bytes > 0
        });
        assert!(before.large_in_use > 0, "{before:?}");
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        let t0 = Instant::now();
        let after = wait_for_stats(&name, "the run back", |s| {
            s.large_in_use == 0 && s.slots_in_use == 0
        });
        let took = t0.elapsed();
        println!(
            "{role}: slot and {} bytes back {took:?} after the kill",
            before.large_in_use
        );
        assert!(
            took < Duration::from_secs(2),
            "{role}: took {took:?}: {after:?}"
        );
        // The memory is usable again: a call as large as the arena allows goes through.
        let big = Echo::new(7, "b".repeat(3_000_000));
        assert_eq!(client.request(&big).unwrap().text.len(), 3_000_003);
        drop(client);
        assert!(server.finish(Duration::from_secs(10)));
    }
}

/// A server process killed while it serves a large request: the caller gets `ServerGone`, and
/// `shmrpc::clean` removes the dead server's mapping, its large-message memory with it.
#[test]
fn a_server_killed_in_a_large_transfer_is_reported_and_cleaned() {
    let name = unique_name("largeserverkill");
    let mut server = start_server(&["echo-server", &name]);
    let client = Client::<Echo>::connect(&name).unwrap();
    let caller = std::thread::scope(|s| {
        let call = s.spawn(|| {
            let mut slow = Echo::new(1, "s".repeat(2_000_000));
            slow.sleep_ms = 2000;
            client
                .request_timeout(&slow, Duration::from_secs(20))
                .map(|r| r.n)
        });
        wait_for_stats(&name, "the large call being served", |s| {
            s.in_use
                .iter()
                .any(|u| u.state == SlotState::Serving && u.large_bytes > 0)
        });
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        call.join().unwrap()
    });
    assert!(
        matches!(caller, Err(Error::ServerGone { .. })),
        "{caller:?}"
    );
    drop(client);
    let removed = shmrpc::clean().unwrap();
    assert!(removed.contains(&name), "{removed:?}");
    assert!(shmrpc::list().unwrap().iter().all(|e| e.name != name));
}

/// A call that needs more memory than is free while other calls hold it waits for room within
/// its timeout and then goes through; one that cannot get room in time gets `Timeout`, not a
/// failure of another kind, and the memory of a held reply is not taken from its holder.
/// `unshare` and `sh` arguments that run the test binary (appended) as root of a new user and
/// mount namespace in which /dev/shm is a fresh 16 MiB tmpfs; `None` where that is not allowed
/// (no user namespaces).
#[cfg(target_os = "linux")]
fn full_shm_prefix() -> Option<[&'static str; 5]> {
    let prefix = [
        "unshare",
        "-rm",
        "sh",
        "-c",
        "mount -t tmpfs -o size=16m tmpfs /dev/shm && exec \"$0\" \"$@\"",
    ];
    let works = std::process::Command::new(prefix[0])
        .args(&prefix[1..])
        .arg("true")
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(prefix)
}

/// A full /dev/shm (its one size limit is shared by every user of the machine; a container's
/// is often 64 MiB, under the default 256 MiB of large-message memory) gives typed errors, not
/// a SIGBUS: a request or a reply larger than the room left is `Io` (`StorageFull`), smaller
/// ones still go through, and a server cannot start on a full one. The large-message memory
/// is a hole in the file until used, and the first write to a page of a hole on a full tmpfs
/// is a SIGBUS: writers now reserve a run's memory first, and a server its header and slots.
#[test]
#[cfg(target_os = "linux")]
fn a_full_dev_shm_is_an_error_for_the_message_that_does_not_fit_and_never_a_crash() {
    let Some(prefix) = full_shm_prefix() else {
        println!("skipped: `unshare -rm` (a user and mount namespace) is not available here");
        return;
    };
    let mut child = Proc::spawn_under(&prefix, &["full-shm", &unique_name("fullshm")]);
    for (step, want) in [
        ("request 24 MiB", "io StorageFull"),
        ("reply 24 MiB", "io StorageFull"),
        ("request 1 MiB", "ok 1048576"),
        ("reply 1 MiB", "ok 1048576"),
        ("request 8 MiB, full", "io StorageFull"),
        ("start, full", "io StorageFull"),
        ("request 1 KiB, full", "ok 1024"),
    ] {
        assert_eq!(child.line(), format!("{step}: {want}"));
    }
    assert!(child.finish(Duration::from_secs(10)));
}

#[test]
fn a_call_waits_for_large_memory_within_its_timeout() {
    let name = unique_name("largewait");
    let _server = Server::builder(&name)
        .large_memory(4 << 20)
        .workers(2)
        .serve(echo_bytes)
        .unwrap();
    let client = Client::<Vec<u8>>::connect(&name).unwrap();
    let held = client.request(&message(1, 3 << 20)).unwrap();
    // 1 MiB left: a 2 MiB call cannot get room while `held` lives.
    let t0 = Instant::now();
    let short = client.request_timeout(&message(2, 2 << 20), Duration::from_millis(200));
    assert!(matches!(short, Err(Error::Timeout { .. })), "{short:?}");
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert_eq!(held.as_slice(), message(1, 3 << 20).as_slice());
    // With a longer timeout, the room appears when `held` goes.
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            client
                .request_timeout(&message(3, 2 << 20), Duration::from_secs(20))
                .map(|r| r.as_slice() == message(3, 2 << 20).as_slice())
        });
        // Its slot claimed: it writes, or waits for room, which `held` keeps.
        wait_for_stats(&name, "the waiter's slot claimed", |s| s.slots_in_use == 2);
        drop(held);
        assert!(matches!(waiter.join().unwrap(), Ok(true)));
    });
}

/// `grow_or_echo`'s reply to a request shorter than 16 bytes: longer than the request.
const GROWN: usize = 2 << 20;

/// Replies to a request shorter than 16 bytes with `GROWN` bytes, else echoes it.
fn grow_or_echo(req: Request<'_, Vec<u8>>) -> Vec<u8> {
    if req.len() < 16 {
        vec![7; GROWN]
    } else {
        req.to_vec()
    }
}

/// A worker whose reply finds no room while a reply its caller has not read yet holds it
/// waits on past its first wait (`WORKER_WAIT`, 2 s) as long as its own caller waits: that room
/// frees without the worker. Here the holder reads for 3 s. Fails if the worker gives up at
/// 2 s (the caller then gets `PayloadTooLarge` with length 0, as a slow reader under qemu made
/// a worker do in CI).
#[test]
fn a_reply_waits_past_the_first_wait_for_room_that_a_slow_reader_holds() {
    let name = unique_name("largeslowread");
    let _server = Server::builder(&name)
        .large_memory(4 << 20)
        .workers(2)
        .serve(grow_or_echo)
        .unwrap();
    let client = Client::<Vec<u8>>::connect(&name).unwrap();
    let held = client.request(&message(1, 3 << 20)).unwrap();
    std::thread::scope(|s| {
        // 1 MiB left: the 2 MiB reply waits for room, which `held` keeps.
        let waiter = s.spawn(|| {
            client
                .request_timeout(&vec![1], Duration::from_secs(20))
                .map(|r| r.len())
        });
        wait_for_stats(&name, "the worker waiting for room", |s| {
            s.large_waiters > 0
        });
        // The reader is slow: it holds its reply past the worker's first wait (the subject of
        // this test is that time, not a synchronization).
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(held.as_slice(), message(1, 3 << 20).as_slice());
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), GROWN);
    });
}

/// A worker whose reply (longer than its request) finds no room that anything but the requests
/// waiting to be served could free gives up after its first wait (`WORKER_WAIT`, 2 s), with
/// `PayloadTooLarge` of length 0: those requests wait for this very worker (one here). Then the
/// queued request is served. Fails if the worker waits on for its longest wait (30 s) or for
/// ever.
#[test]
fn a_reply_that_only_queued_requests_could_make_room_for_gives_up_after_the_first_wait() {
    let name = unique_name("largequeued");
    let (go, gate) = std::sync::mpsc::sync_channel::<()>(1);
    let gate = std::sync::Mutex::new(gate);
    let _server = Server::builder(&name)
        .large_memory(4 << 20)
        .workers(1)
        .serve(move |req: Request<'_, Vec<u8>>| {
            if req.len() < 16 {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(60));
            }
            grow_or_echo(req)
        })
        .unwrap();
    let client = Client::<Vec<u8>>::connect(&name).unwrap();
    std::thread::scope(|s| {
        let grown = s.spawn(|| client.request_timeout(&vec![1], Duration::from_secs(60)));
        wait_for_stats(&name, "the first call being served", |s| {
            s.in_use.iter().any(|u| u.state == SlotState::Serving)
        });
        // Queued behind it, alone in the arena: it takes 3 MiB of the 4.
        let queued = s.spawn(|| {
            client
                .request_timeout(&message(2, 3 << 20), Duration::from_secs(60))
                .map(|r| r.as_slice() == message(2, 3 << 20).as_slice())
        });
        wait_for_stats(&name, "the large request queued", |s| {
            s.in_use
                .iter()
                .any(|u| u.state == SlotState::Queued && u.large_bytes >= 3 << 20)
        });
        let t0 = Instant::now();
        go.send(()).unwrap();
        let out = grown.join().unwrap();
        let took = t0.elapsed();
        assert!(
            matches!(out, Err(Error::PayloadTooLarge { len: 0, .. })),
            "{:?}",
            out.map(|r| r.len())
        );
        assert!(took < Duration::from_secs(15), "gave up after {took:?}");
        assert!(matches!(queued.join().unwrap(), Ok(true)));
    });
}

/// A large request that needs most of the memory, waiting while a smaller call holds part of
/// it, is not overtaken by smaller requests that keep coming: once it has waited
/// (`WANT_AFTER`, 100 ms) it goes first (`Stats::large_first`), a new smaller request that
/// would fit waits behind it, and it is served first. Fails if the newcomer is placed while the
/// large request waits (a steady stream of such calls would starve it until its timeout, as
/// six callers under qemu did in CI).
#[test]
fn a_large_request_is_not_overtaken_by_smaller_ones_once_it_has_waited() {
    const SMALL: usize = (1 << 20) - 64;
    const BIG: usize = (4 << 20) - 4096;
    let name = unique_name("largefirst");
    let (go, gate) = std::sync::mpsc::sync_channel::<()>(1);
    let gate = std::sync::Mutex::new(gate);
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let served = order.clone();
    let _server = Server::builder(&name)
        .large_memory(8 << 20)
        .workers(2)
        .serve(move |req: Request<'_, Vec<u8>>| {
            let tag = req[0];
            if tag == 1 {
                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(60));
            }
            served.lock().unwrap().push(tag);
            req.to_vec()
        })
        .unwrap();
    let client = Client::<Vec<u8>>::connect(&name).unwrap();
    let call = |tag: u8, len: usize| {
        let mut msg = message(u64::from(tag), len);
        msg[0] = tag;
        client
            .request_timeout(&msg, Duration::from_secs(60))
            .map(|r| r.as_slice() == msg.as_slice())
    };
    std::thread::scope(|s| {
        // 1 MiB held while its handler waits: the 4 MiB request cannot leave room for itself
        // and its reply until it goes.
        let first = s.spawn(|| call(1, SMALL));
        wait_for_stats(&name, "the first call being served", |s| {
            s.in_use.iter().any(|u| u.state == SlotState::Serving)
        });
        let big = s.spawn(|| call(2, BIG));
        let waiting = wait_for_stats(&name, "the large request going first", |s| {
            s.large_first.is_some()
        });
        assert!(waiting.large_first.unwrap().1 >= BIG, "{waiting:?}");
        // A newcomer that would fit beside the first call: it waits behind the large one.
        let newcomer = s.spawn(|| call(3, SMALL));
        let during = wait_for_stats(&name, "the newcomer waiting", |s| s.large_waiters >= 2);
        go.send(()).unwrap();
        let results = [first, big, newcomer].map(|c| c.join().unwrap());
        assert_eq!(
            during.large_in_use,
            SMALL.next_multiple_of(64 << 10),
            "only the first call holds memory while the large one waits: {during:?}"
        );
        assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");
        assert_eq!(*order.lock().unwrap(), [1, 2, 3], "served in that order");
    });
    let after = wait_for_stats(&name, "nothing held", |s| s.large_in_use == 0);
    assert_eq!(after.large_first, None, "{after:?}");
}

/// A caller that goes first (it waited for room) and is then paused holds no one back: its
/// priority lapses once it stops renewing it (`arena::WANT_FRESH`, 250 ms), and a smaller
/// request that fits is placed. Fails if a paused holder's word is honoured for good (the
/// newcomer then waits until its timeout).
#[cfg(unix)]
#[test]
fn a_paused_caller_that_goes_first_holds_no_one_back() {
    let name = unique_name("largepaused");
    let _server = Server::builder(&name)
        .large_memory(8 << 20)
        .serve(echo_bytes)
        .unwrap();
    let client = Client::<Vec<u8>>::connect(&name).unwrap();
    // 3 MiB held: the child's 2 MiB request cannot leave room for its reply and for the held
    // one; a 1 MiB request can.
    let held = client.request(&message(1, 3 << 20)).unwrap();
    let mut waiter = Proc::spawn(&["wait-room", &name]);
    assert_eq!(waiter.line(), "calling");
    wait_for_stats(&name, "the child going first", |s| s.large_first.is_some());
    let pid = waiter.child.id();
    common::signal(pid, libc::SIGSTOP);
    common::wait_stopped(pid);
    let t0 = Instant::now();
    let small = message(2, (1 << 20) - 64);
    let out = client.request_timeout(&small, Duration::from_secs(10));
    let took = t0.elapsed();
    waiter.child.kill().unwrap();
    waiter.child.wait().unwrap();
    assert!(
        matches!(&out, Ok(r) if r.as_slice() == small.as_slice()),
        "{:?} after {took:?}",
        out.map(|r| r.len())
    );
    drop(held);
}

/// A caller killed while it waits for large-message memory leaves no announced wait behind:
/// its entry's share of the waiters is taken back when the reaper finds it dead (otherwise
/// every later free of a run would make a futex wake for nobody). Fails if the count stays.
#[test]
fn a_caller_killed_while_waiting_for_large_memory_leaves_no_waiter_behind() {
    let name = unique_name("roomkill");
    let _server = Server::builder(&name)
        .large_memory(4 << 20)
        .serve(echo_bytes)
        .unwrap();
    let client = Client::<Vec<u8>>::connect(&name).unwrap();
    // 1 MiB left: the child's 2 MiB call waits while `held` lives.
    let held = client.request(&message(1, 3 << 20)).unwrap();
    let mut waiter = Proc::spawn(&["wait-room", &name]);
    assert_eq!(waiter.line(), "calling");
    wait_for_stats(&name, "the waiter counted", |s| s.large_waiters == 1);
    waiter.child.kill().unwrap();
    waiter.child.wait().unwrap();
    wait_for_stats(&name, "the count healed and the slot back", |s| {
        s.large_waiters == 0 && s.slots_in_use == 1
    });
    drop(held);
    assert_eq!(client.request(&message(2, 2 << 20)).unwrap().len(), 2 << 20);
    assert_eq!(StatsView::open(&name).unwrap().stats().large_waiters, 0);
}
