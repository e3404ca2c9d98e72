//! Multi-process tests: the test binary re-executes itself as servers and clients.
//!
//! A child runs the `child_entry` test with `SHMRPC_TEST_CHILD` set to its role; in the normal
//! run that test sees no role and returns. Servers stop when their stdin closes, so a parent
//! that dies never leaves one behind, and every wait in the parent is bounded.

mod common;

use common::{echo, say, start_server, unique_name, wait_for_stdin_eof, Echo, Proc, ROLE};
use shmrpc::{Client, Error, Request, Server};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entry point of every child process; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    match args[..] {
        ["echo-server", name, workers] => {
            let server = Server::builder(name)
                .workers(workers.parse().unwrap())
                .serve(echo)
                .unwrap();
            say("ready".into());
            wait_for_stdin_eof();
            drop(server);
        }
        ["oneway-server", name, total] => {
            let total: usize = total.parse().unwrap();
            let seen: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
            let out_of_range = Arc::new(AtomicU64::new(0));
            let (s, o) = (Arc::clone(&seen), Arc::clone(&out_of_range));
            let server = Server::builder(name)
                .workers(2)
                .serve_oneway(
                    move |req: Request<'_, u64>| match s.get(req.to_native() as usize) {
                        Some(cell) => {
                            cell.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            o.fetch_add(1, Ordering::SeqCst);
                        }
                    },
                )
                .unwrap();
            say("ready".into());
            wait_for_stdin_eof();
            drop(server); // joins the workers: every accepted message has run
            let once = seen
                .iter()
                .filter(|c| c.load(Ordering::SeqCst) == 1)
                .count();
            let dups = seen.iter().filter(|c| c.load(Ordering::SeqCst) > 1).count();
            let missing = seen
                .iter()
                .filter(|c| c.load(Ordering::SeqCst) == 0)
                .count();
            say(format!(
                "result once={once} dups={dups} missing={missing} stray={}",
                out_of_range.load(Ordering::SeqCst)
            ));
        }
        ["echo-client", name, tag, count, threads] => {
            let count: u64 = count.parse().unwrap();
            let threads: u64 = threads.parse().unwrap();
            let client = Client::<Echo>::connect(name).unwrap();
            let bad = AtomicU64::new(0);
            std::thread::scope(|s| {
                for t in 0..threads {
                    let (client, bad) = (client.clone(), &bad);
                    s.spawn(move || {
                        for i in 0..count {
                            let n = (t << 32) | i;
                            let text = format!("{tag}/{t}/{i}");
                            let reply = client.request(&Echo::new(n, text.clone())).unwrap();
                            if reply.n != n
                                || reply.text != format!("re:{text}")
                                || &reply.id != reply.id().as_bytes()
                            {
                                bad.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    });
                }
            });
            say(format!(
                "result calls={} bad={}",
                count * threads,
                bad.load(Ordering::SeqCst)
            ));
        }
        ["sender", name, first, count] => {
            let first: u64 = first.parse().unwrap();
            let count: u64 = count.parse().unwrap();
            let client = Client::<u64>::connect(name).unwrap();
            for n in first..first + count {
                client.send(&n).unwrap();
            }
            say("result sent".into());
        }
        _ => panic!("unknown child role {role:?}"),
    }
}

/// The original library's test: 5000 client instances created in a parallel loop, one request
/// each, all answered correctly. Fails if connecting is not thread-safe, if slots run out
/// instead of queueing, or if replies cross between callers.
#[test]
fn five_thousand_parallel_client_instances_all_get_their_own_reply() {
    let name = unique_name("5000");
    let mut server = start_server(&["echo-server", &name, "1"]);
    let failures = AtomicU64::new(0);
    let next = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..50 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= 5000 {
                    break;
                }
                let ok = Client::<Echo>::connect(&name).is_ok_and(|client| {
                    client
                        .request(&Echo::new(i, format!("client {i}")))
                        .is_ok_and(|r| r.n == i && r.text == format!("re:client {i}"))
                });
                if !ok {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert!(server.finish(Duration::from_secs(10)));
}

/// Several client processes, each with several threads, against two workers: every reply
/// carries its own request's number, text and call id. Fails if a reply is delivered to the
/// wrong slot or generation.
#[test]
fn client_processes_never_get_each_others_replies() {
    let name = unique_name("mixed");
    let mut server = start_server(&["echo-server", &name, "2"]);
    let mut clients: Vec<Proc> = (0..4)
        .map(|c| Proc::spawn(&["echo-client", &name, &format!("p{c}"), "2000", "3"]))
        .collect();
    for c in &mut clients {
        assert_eq!(c.line(), "result calls=6000 bad=0");
        assert!(c.finish(Duration::from_secs(10)));
    }
    assert!(server.finish(Duration::from_secs(10)));
}

/// Three processes send 3000 one-way messages each: the server runs its handler exactly once
/// for every one. Fails if a message is lost (slot freed early) or delivered twice (a ready
/// bit taken by two workers).
#[test]
fn oneway_messages_from_many_processes_arrive_exactly_once() {
    let name = unique_name("oneway");
    let mut server = start_server(&["oneway-server", &name, "9000"]);
    let mut senders: Vec<Proc> = (0..3u64)
        .map(|s| Proc::spawn(&["sender", &name, &(s * 3000).to_string(), "3000"]))
        .collect();
    for s in &mut senders {
        assert_eq!(s.line(), "result sent");
        assert!(s.finish(Duration::from_secs(10)));
    }
    drop(server.child.stdin.take());
    assert_eq!(server.line(), "result once=9000 dups=0 missing=0 stray=0");
    assert!(server.finish(Duration::from_secs(10)));
}

/// A handler slower than the caller's timeout gives `Timeout`, promptly; the next call on the
/// same client gets its own reply, never the late one.
#[test]
fn timeout_across_processes_and_the_next_call_gets_its_own_reply() {
    let name = unique_name("ptimeout");
    let mut server = start_server(&["echo-server", &name, "1"]);
    let client = Client::<Echo>::connect(&name).unwrap();
    for round in 0..3u64 {
        let mut slow = Echo::new(1000 + round, "slow");
        slow.sleep_ms = 200;
        let t0 = Instant::now();
        let err = client
            .request_timeout(&slow, Duration::from_millis(40))
            .unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(
            t0.elapsed() < Duration::from_millis(190),
            "{:?}",
            t0.elapsed()
        );
        let reply = client.request(&Echo::new(round, "next")).unwrap();
        assert_eq!(
            (reply.n.to_native(), reply.text.as_str()),
            (round, "re:next")
        );
        assert_eq!(&reply.id, reply.id().as_bytes());
    }
    assert!(server.finish(Duration::from_secs(10)));
}

/// A server killed with SIGKILL while a call waits: the caller gets `ServerGone` well before
/// its timeout, and later calls fail at once.
#[test]
fn killed_server_gives_waiting_caller_server_gone() {
    let name = unique_name("killed");
    let mut server = start_server(&["echo-server", &name, "1"]);
    let client = Client::<Echo>::connect(&name).unwrap();
    let mut slow = Echo::new(1, "slow");
    slow.sleep_ms = 5_000;
    let waiter = std::thread::spawn(move || {
        let r = client.request_timeout(&slow, Duration::from_secs(20));
        (r.map(|_| ()), Instant::now(), client)
    });
    std::thread::sleep(Duration::from_millis(200));
    server.child.kill().unwrap();
    let killed_at = Instant::now();
    server.child.wait().unwrap();
    let (result, returned_at, client) = waiter.join().unwrap();
    assert!(
        matches!(result, Err(Error::ServerGone { .. })),
        "{result:?}"
    );
    let took = returned_at.saturating_duration_since(killed_at);
    assert!(
        took < Duration::from_millis(250),
        "ServerGone after {took:?}"
    );
    let t0 = Instant::now();
    let err = client.request(&Echo::new(2, "after")).unwrap_err();
    assert!(matches!(err, Error::ServerGone { .. }), "{err}");
    assert!(t0.elapsed() < Duration::from_millis(250));
    // The dead server's leftover mapping is reclaimed by the next server of that name.
    let _again = Server::builder(&name).serve(echo).unwrap();
    let fresh = Client::<Echo>::connect(&name).unwrap();
    assert_eq!(fresh.request(&Echo::new(3, "x")).unwrap().n, 3);
}

/// A handler panic in a server process: the caller gets `HandlerPanicked`, the server process
/// stays up and keeps serving this and other callers. Fails if a panic unwinds out of a worker
/// or leaves the slot held.
#[test]
fn handler_panic_in_a_server_process_is_reported_and_serving_goes_on() {
    let name = unique_name("ppanic");
    let mut server = start_server(&["echo-server", &name, "1"]);
    let client = Client::<Echo>::connect(&name).unwrap();
    for round in 0..3u64 {
        let err = client.request(&Echo::new(round, "panic")).unwrap_err();
        assert!(matches!(err, Error::HandlerPanicked), "{err}");
        let reply = client.request(&Echo::new(round, "after")).unwrap();
        assert_eq!(reply.n, round);
    }
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server process died"
    );
    assert!(server.finish(Duration::from_secs(10)));
}
