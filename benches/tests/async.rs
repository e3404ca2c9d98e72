//! Async calls: on tokio's multi-thread runtime, on a single-thread `block_on`, on smol; many
//! futures at once with a fixed number of helper threads; timeouts; cancellation at random
//! points; no CPU burnt while futures wait.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{echo, unique_name, Echo, Rng};
use futures::future::join_all;
use shmrpc::{Client, Error, Request, Server};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: one of them measures the CPU time of the whole
/// process, which the others would inflate.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Threads of this process named `shmrpc-async` (the async helpers).
fn helper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|c| c.trim() == "shmrpc-async")
        .count()
}

/// CPU time (user + system) this process has used.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// An echo server with `slots` slots in the smallest mapping that holds them, and a client.
fn small_server(tag: &str, slots: u32) -> (Server, Client<Echo>) {
    let name = unique_name(tag);
    let server = Server::builder(&name)
        .slots(slots)
        .capacity(64 * 1024 * slots.div_ceil(8) as usize)
        .serve(echo)
        .unwrap();
    let client = Client::connect(&name).unwrap();
    (server, client)
}

/// Tokio's multi-thread runtime with two workers (the machine's cores) and timers.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap()
}

fn check(reply: &shmrpc::Reply<'_, Echo>, n: u64) {
    assert_eq!(reply.n, n);
    assert_eq!(reply.text, format!("re:m{n}"));
    assert_eq!(&reply.id, reply.id().as_bytes());
}

#[test]
fn ten_thousand_futures_on_tokio_multi_thread_all_get_their_reply() {
    let _serial = serial();
    let name = unique_name("async-tokio");
    let server = Server::builder(&name).workers(2).serve(echo).unwrap();
    let client: Client<Echo> = Client::connect(&name).unwrap();
    let rt = tokio_runtime();
    let ok = Arc::new(AtomicU64::new(0));
    let max_helpers = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let tasks: Vec<_> = (0..10_000u64)
            .map(|n| {
                let c = client.clone();
                let ok = Arc::clone(&ok);
                tokio::spawn(async move {
                    let msg = Echo::new(n, format!("m{n}"));
                    let reply = c.request_async(&msg).await.unwrap();
                    check(&reply, n);
                    ok.fetch_add(1, Ordering::Relaxed);
                })
            })
            .collect();
        // While they run: one helper thread per mapping in this process, not one per future
        // (helpers of earlier tests' mappings may still be on their way out).
        for _ in 0..5 {
            max_helpers.fetch_max(helper_threads() as u64, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_eq!(ok.load(Ordering::Relaxed), 10_000);
    assert!(max_helpers.load(Ordering::Relaxed) <= 4, "{max_helpers:?}");
    // The worker counts a call right after publishing its reply: give the last one a moment.
    std::thread::sleep(Duration::from_millis(50));
    let stats = server.stats();
    assert!(stats.served >= 10_000);
    assert_eq!(stats.abandoned, 0);
}

#[test]
fn ten_thousand_futures_on_a_single_thread_block_on() {
    let _serial = serial();
    let name = unique_name("async-blockon");
    let _server = Server::builder(&name).serve(echo).unwrap();
    let client: Client<Echo> = Client::connect(&name).unwrap();
    let msgs: Vec<Echo> = (0..10_000u64)
        .map(|n| Echo::new(n, format!("m{n}")))
        .collect();
    // Each reply is checked and dropped as it arrives: a `Reply` holds its slot until it
    // drops, so keeping 10,000 of them would wait for slots that never come back.
    let client = &client;
    let done =
        futures::executor::block_on(join_all(msgs.iter().enumerate().map(|(n, m)| async move {
            check(&client.request_async(m).await.unwrap(), n as u64);
        })));
    assert_eq!(done.len(), 10_000);
}

#[test]
fn futures_on_smol_send_and_ping_too() {
    let _serial = serial();
    let name = unique_name("async-smol");
    let _server = Server::builder(&name).serve(echo).unwrap();
    let client: Client<Echo> = Client::connect(&name).unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let oneway = unique_name("async-smol-oneway");
    let seen2 = Arc::clone(&seen);
    let _sink = Server::builder(&oneway)
        .serve_oneway(move |req: Request<'_, Echo>| {
            seen2.fetch_add(req.n.to_native(), Ordering::Relaxed);
        })
        .unwrap();
    let sender: Client<Echo> = Client::connect(&oneway).unwrap();
    smol::block_on(async {
        let tasks: Vec<_> = (0..2_000u64)
            .map(|n| {
                let c = client.clone();
                let s = sender.clone();
                smol::spawn(async move {
                    let msg = Echo::new(n, format!("m{n}"));
                    check(&c.request_async(&msg).await.unwrap(), n);
                    s.send_async(&msg).await.unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        let rtt = client.ping_async().await.unwrap();
        assert!(rtt < Duration::from_secs(5));
    });
    // One-way handlers run after the sender returns: wait for the last ones.
    let want: u64 = (0..2_000u64).sum();
    let t0 = Instant::now();
    while seen.load(Ordering::Relaxed) != want {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "one-way messages lost"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn async_timeout_gives_timeout_and_the_next_call_is_clean() {
    let _serial = serial();
    let name = unique_name("async-timeout");
    let server = Server::builder(&name).serve(echo).unwrap();
    let client: Client<Echo> = Client::connect(&name).unwrap();
    futures::executor::block_on(async {
        let mut slow = Echo::new(1, "m1");
        slow.sleep_ms = 300;
        let t0 = Instant::now();
        let err = client
            .request_async_timeout(&slow, Duration::from_millis(50))
            .await
            .unwrap_err();
        let took = t0.elapsed();
        assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
        assert!(took >= Duration::from_millis(50), "{took:?}");
        assert!(took < Duration::from_millis(280), "{took:?}");
        // The next call's reply is its own, not the late one.
        let reply = client.request_async(&Echo::new(2, "m2")).await.unwrap();
        check(&reply, 2);
    });
    let stats = server.stats();
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.abandoned, 1);
}

#[test]
fn futures_dropped_at_random_points_lose_nothing_and_leak_no_slot() {
    let _serial = serial();
    let (server, client) = small_server("async-cancel", 8);
    let rt = tokio_runtime();
    let completed = Arc::new(AtomicU64::new(0));
    rt.block_on(async {
        let mut rng = Rng(0x5eed);
        let tasks: Vec<_> = (0..600u64)
            .map(|n| {
                let c = client.clone();
                let completed = Arc::clone(&completed);
                // Cancel after 0..3 ms: before the first poll, while queued for one of the
                // 8 slots, while in flight, or (the reply being fast) never.
                // Every tenth is never cancelled (so that some complete however loaded the
                // machine is: the check below is not vacuous).
                let cancel_after = if n % 10 == 0 {
                    Duration::from_secs(30)
                } else {
                    Duration::from_micros(rng.below(3000) as u64)
                };
                let sleep_ms = rng.below(3) as u32;
                tokio::spawn(async move {
                    let mut msg = Echo::new(n, format!("m{n}"));
                    msg.sleep_ms = sleep_ms;
                    let call = c.request_async(&msg);
                    if let Ok(r) = tokio::time::timeout(cancel_after, call).await {
                        check(&r.unwrap(), n);
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        // After all that, every call gets its own reply.
        for n in 10_000..10_200u64 {
            let msg = Echo::new(n, format!("m{n}"));
            check(&client.request_async(&msg).await.unwrap(), n);
        }
    });
    // Abandoned calls' slots come back when their handlers return.
    let t0 = Instant::now();
    loop {
        let s = server.stats();
        if s.slots_in_use == 0 {
            assert!(s.abandoned > 0, "no call was cancelled in flight: {s:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "slots leaked: {s:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(completed.load(Ordering::Relaxed) >= 60);
}

#[test]
fn waiting_futures_burn_no_cpu_and_a_stopped_server_fails_them() {
    let _serial = serial();
    let (server, client) = small_server("async-idle", 64);
    let stop = server.stop_handle();
    let mut slow = Echo::new(0, "m0");
    slow.sleep_ms = 1_000;
    let msgs: Vec<Echo> = (0..100).map(|_| slow.clone()).collect();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        stop.stop();
    });
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let results =
        futures::executor::block_on(join_all(msgs.iter().map(|m| client.request_async(m))));
    let wall = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    stopper.join().unwrap();
    // 100 futures waited ~0.6 s for a handler that sleeps: the process (server included) used
    // almost no CPU meanwhile.
    assert!(
        cpu < Duration::from_millis(150),
        "cpu {cpu:?} over {wall:?}"
    );
    assert!(wall < Duration::from_secs(2), "{wall:?}");
    for r in results {
        assert!(matches!(r, Err(Error::ServerGone { .. })), "{r:?}");
    }
    drop(server);
}

#[test]
fn futures_queued_for_a_slot_fail_fast_when_the_server_stops() {
    let _serial = serial();
    let (server, client) = small_server("async-queued-stop", 1);
    let mut slow = Echo::new(0, "m0");
    slow.sleep_ms = 800;
    let msgs: Vec<Echo> = (0..50).map(|_| slow.clone()).collect();
    let stop = server.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stop.stop();
    });
    let t0 = Instant::now();
    // One call holds the only slot; 49 queue for it.
    let results =
        futures::executor::block_on(join_all(msgs.iter().map(|m| client.request_async(m))));
    let took = t0.elapsed();
    stopper.join().unwrap();
    assert!(took < Duration::from_millis(700), "{took:?}");
    for r in results {
        assert!(matches!(r, Err(Error::ServerGone { .. })), "{r:?}");
    }
}

/// `Reply` is `Send` when its archived type is `Sync`, so a task on a multi-thread runtime can
/// hold one across `.await`s. This fails to compile if `Reply` is not `Send` (`tokio::spawn`
/// needs a `Send` future), and fails at run time if a held reply's slot went to a later call
/// (its bytes would change under it) or if a reply dropped on another worker thread leaked
/// its slot (the later calls would run out of the 8 slots).
#[test]
fn a_reply_held_across_await_in_a_spawned_tokio_task_stays_its_own() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<shmrpc::Reply<'static, Echo>>();

    let _serial = serial();
    let (server, client) = small_server("async-held", 8);
    let rt = tokio_runtime();
    rt.block_on(async move {
        let tasks: Vec<_> = (0..4u64)
            .map(|n| {
                let c = client.clone();
                tokio::spawn(async move {
                    let first = c.request_async(&Echo::new(n, format!("m{n}"))).await?;
                    // A timer: the task may resume on the other worker thread.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    for k in 100..150 {
                        let other = c.request_async(&Echo::new(k, format!("m{k}"))).await?;
                        check(&other, k);
                        tokio::task::yield_now().await;
                    }
                    check(&first, n);
                    first.deserialize()
                })
            })
            .collect();
        for (n, t) in tasks.into_iter().enumerate() {
            let owned: Echo = t.await.unwrap().unwrap();
            assert_eq!(owned.n, n as u64);
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        server.stats().in_use.is_empty(),
        "{:?}",
        server.stats().in_use
    );
}
