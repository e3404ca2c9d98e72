//! Live statistics: counters and histograms in the mapping, the in-process and the read-only
//! views, the protocol-level ping, and listing and cleaning servers by name.

mod common;

use common::{echo, start_server, unique_name, Echo, ROLE};
use shmrpc::{Client, Error, Server, SlotState, StatsView};
use std::time::{Duration, Instant};

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    if let ["echo-server", name] = args[..] {
        let server = Server::builder(name).serve(echo).unwrap();
        common::say("ready".into());
        common::wait_for_stdin_eof();
        drop(server);
    }
}

#[test]
fn counters_and_histograms_count_every_call_and_a_view_reads_the_same() {
    let name = unique_name("stats");
    let server = Server::builder(&name).serve(echo).unwrap();
    let client: Client<Echo> = Client::connect(&name).unwrap();
    for n in 0..100 {
        client.request(&Echo::new(n, "x")).unwrap();
    }
    // A ping runs no handler and is not counted as served.
    assert!(client.ping().unwrap() < Duration::from_secs(5));
    // A call that times out is counted by its client.
    let mut slow = Echo::new(1, "slow");
    slow.sleep_ms = 200;
    let err = client
        .request_timeout(&slow, Duration::from_millis(20))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }));
    // The abandoned call's handler finishes 200 ms later; the worker counts each call and
    // records its times right after completing it. Wait for those records (bounded), then
    // check every counter exactly.
    let t0 = Instant::now();
    while server.stats().handler_time.count() < 101 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{:?}",
            server.stats()
        );
        std::thread::yield_now();
    }

    let s = server.stats();
    assert_eq!(s.served, 101, "{s:?}");
    assert_eq!(s.timeouts, 1);
    assert_eq!(s.abandoned, 1);
    assert_eq!(s.handler_time.count(), 101);
    assert_eq!(s.queue_time.count(), 101);
    // The slow handler slept 200 ms: its bucket is the one holding [134 ms, 268 ms).
    let slowest = s.handler_time.quantile(1.0).unwrap();
    assert!(slowest >= Duration::from_millis(200), "{slowest:?}");
    assert!(slowest < Duration::from_millis(600), "{slowest:?}");
    assert!(s.alive);
    assert_eq!(s.server_pid, std::process::id());

    // A held reply keeps its slot, which the view shows with its owner.
    let reply = client.request(&Echo::new(7, "held")).unwrap();
    let view = StatsView::open(&name).unwrap();
    // The worker counts a call right after publishing its reply: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while view.stats().served < 102 {
        assert!(Instant::now() < deadline, "{:?}", view.stats());
        std::thread::yield_now();
    }
    let v = view.stats();
    assert_eq!(v.served, 102);
    assert_eq!(v.slots_in_use, 1);
    assert_eq!(v.in_use[0].state, SlotState::Replied);
    assert_eq!(v.in_use[0].owner_pid, Some(std::process::id()));
    drop(reply);
    assert_eq!(view.stats().slots_in_use, 0);

    assert!(matches!(
        StatsView::open(&unique_name("nobody")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        StatsView::open("bad/name"),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
fn list_marks_a_killed_server_stale_and_clean_removes_only_that_one() {
    let live = unique_name("live");
    let _server = Server::builder(&live).serve(echo).unwrap();
    let dead = unique_name("dead");
    let mut child = start_server(&["echo-server", &dead]);
    child.child.kill().unwrap();
    child.child.wait().unwrap();

    let listed = shmrpc::list().unwrap();
    let find = |n: &str| listed.iter().find(|e| e.name == n).cloned();
    let l = find(&live).expect("the live server is listed");
    assert!(l.alive);
    assert_eq!(l.pid, Some(std::process::id()));
    let d = find(&dead).expect("the killed server is listed");
    assert!(!d.alive);
    assert!(!StatsView::open(&dead).unwrap().stats().alive);

    let removed = shmrpc::clean().unwrap();
    assert!(removed.contains(&dead), "{removed:?}");
    assert!(!removed.contains(&live), "{removed:?}");
    let t0 = Instant::now();
    let after = shmrpc::list().unwrap();
    assert!(after.iter().all(|e| e.name != dead));
    assert!(after.iter().any(|e| e.name == live && e.alive));
    // The live server still serves.
    let client: Client<Echo> = Client::connect(&live).unwrap();
    assert_eq!(client.request(&Echo::new(3, "x")).unwrap().n, 3);
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn the_header_shows_where_active_workers_run_and_parked_ones_leave_it() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 64 {
        return; // CPUs from 64 up are not recorded
    }
    let name = unique_name("cpus");
    let server = Server::builder(&name).serve(echo).unwrap();
    let client: Client<Echo> = Client::connect(&name).unwrap();
    // Right after a call the worker spins for up to 50 µs: it is active, its CPU's bit set.
    let active = (0..200).any(|n| {
        client.request(&Echo::new(n, "x")).unwrap();
        server.stats().worker_cpus.count_ones() == 1
    });
    assert!(active, "no call left a worker's CPU recorded");
    // Idle, it parks and clears its bit (it wakes every 100 ms to look at the server state and
    // is active again for ~50 µs: look a few times).
    std::thread::sleep(Duration::from_millis(200));
    let parked = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(1));
        server.stats().worker_cpus == 0
    });
    assert!(parked, "{:#x}", server.stats().worker_cpus);
    // A call wakes it; it records its CPU again before it spins.
    let active = (0..200).any(|n| {
        client.request(&Echo::new(n, "y")).unwrap();
        server.stats().worker_cpus != 0
    });
    assert!(active);
    // Stopped, no worker is active.
    let view = StatsView::open(&name).unwrap();
    drop(server);
    assert_eq!(view.stats().worker_cpus, 0);
}
