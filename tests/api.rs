//! In-process tests of the API contract and of every error variant.

mod common;

use common::{echo, say, unique_name, Echo, Proc, ROLE};
use shmrpc::{Client, Error, Request, Server, SlotState, WaitMode};
use std::time::{Duration, Instant};

/// Entry point of the child processes; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    match role.as_str() {
        "stop-wakes-parked-caller" => stop_wakes_parked_caller(),
        _ => panic!("unknown child role {role:?}"),
    }
}

#[test]
fn round_trip_carries_the_reply_and_the_call_id() {
    let name = unique_name("roundtrip");
    let _server = Server::builder(&name).serve(echo).unwrap();
    let client = Client::connect(&name).unwrap();
    for n in 0..100u64 {
        let reply = client.request(&Echo::new(n, format!("m{n}"))).unwrap();
        assert_eq!(reply.n, n);
        assert_eq!(reply.text, format!("re:m{n}"));
        // The handler saw the same UUID the caller's reply reports.
        assert_eq!(&reply.id, reply.id().as_bytes());
        let owned: Echo = reply.deserialize().unwrap();
        assert_eq!(owned.n, n);
    }
}

#[test]
fn plain_strings_and_byte_vectors_need_no_derive() {
    let name = unique_name("plain");
    let _s = Server::builder(&name)
        .serve(|req: Request<'_, String>| req.to_uppercase())
        .unwrap();
    let c = Client::connect(&name).unwrap();
    assert_eq!(c.request(&"hello".to_string()).unwrap().as_str(), "HELLO");

    let name = unique_name("bytes");
    let _s = Server::builder(&name)
        .serve(|req: Request<'_, Vec<u8>>| req.iter().rev().copied().collect::<Vec<u8>>())
        .unwrap();
    let c = Client::connect(&name).unwrap();
    assert_eq!(c.request(&vec![1u8, 2, 3]).unwrap().as_slice(), &[3, 2, 1]);
}

#[test]
fn different_request_and_reply_types() {
    let name = unique_name("typed");
    let _s = Server::builder(&name)
        .serve(|req: Request<'_, String>| req.len() as u64)
        .unwrap();
    let c = Client::builder(&name).connect::<String, u64>().unwrap();
    assert_eq!(*c.request(&"four".to_string()).unwrap(), 4);
}

/// `Reply` is `Send + Sync` (its archived type is): one can be read from several threads and
/// dropped on another than the one that made the call. Fails if a reply dropped on another
/// thread did not give its slot back (the second loop would wait for a slot and time out).
#[test]
fn a_reply_read_and_dropped_on_other_threads_gives_its_slot_back() {
    let name = unique_name("reply-send");
    let server = Server::builder(&name).slots(2).serve(echo).unwrap();
    let client = Client::builder(&name)
        .timeout(Duration::from_secs(5))
        .connect::<Echo, Echo>()
        .unwrap();
    for n in 0..20u64 {
        let reply = client.request(&Echo::new(n, format!("m{n}"))).unwrap();
        std::thread::scope(|s| {
            let shared = &reply;
            s.spawn(move || assert_eq!(shared.n, n));
            s.spawn(move || assert_eq!(shared.text, format!("re:m{n}")));
        });
        std::thread::scope(|s| {
            s.spawn(move || {
                assert_eq!(reply.n, n);
                drop(reply);
            });
        });
    }
    assert!(server.stats().in_use.is_empty());
}

#[test]
fn one_handle_shared_by_many_threads_gets_each_its_own_reply() {
    let name = unique_name("threads");
    let _server = Server::builder(&name).workers(2).serve(echo).unwrap();
    let client = Client::connect(&name).unwrap();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let client = client.clone();
            s.spawn(move || {
                for i in 0..500u64 {
                    let n = t * 1_000_000 + i;
                    let reply = client.request(&Echo::new(n, n.to_string())).unwrap();
                    assert_eq!(reply.n, n);
                    assert_eq!(reply.text, format!("re:{n}"));
                }
            });
        }
    });
}

#[test]
fn more_callers_than_slots_wait_for_a_slot_instead_of_failing() {
    // 2 slots, 16 threads holding replies briefly: callers must queue on the free-slot futex.
    let name = unique_name("fewslots");
    let _server = Server::builder(&name).slots(2).serve(echo).unwrap();
    let client = Client::connect(&name).unwrap();
    std::thread::scope(|s| {
        for t in 0..16u64 {
            let client = client.clone();
            s.spawn(move || {
                for i in 0..50u64 {
                    let reply = client.request(&Echo::new(t * 100 + i, "x")).unwrap();
                    assert_eq!(reply.n, t * 100 + i);
                }
            });
        }
    });
}

#[test]
fn oneway_server_runs_the_handler_for_each_message() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let name = unique_name("oneway");
    let sum = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&sum);
    let server = Server::builder(&name)
        .serve_oneway(move |req: Request<'_, u64>| {
            seen.fetch_add(req.to_native(), Ordering::SeqCst);
        })
        .unwrap();
    let client = Client::connect(&name).unwrap();
    for i in 1..=100u64 {
        client.send(&i).unwrap();
    }
    // `send` returns once the message is taken; dropping the server joins the workers, so
    // every taken message has run its handler.
    drop(server);
    assert_eq!(sum.load(Ordering::SeqCst), 5050);
}

#[test]
fn request_to_a_oneway_server_is_a_bad_message() {
    let name = unique_name("wrongkind");
    let _s = Server::builder(&name)
        .serve_oneway(|_: Request<'_, u64>| {})
        .unwrap();
    let c = Client::<u64>::connect(&name).unwrap();
    assert!(matches!(c.request(&1), Err(Error::BadMessage(_))));
    c.send(&1).unwrap();
}

/// The same name rules on every platform: what one cannot hold is invalid on all.
#[test]
fn invalid_names_are_rejected() {
    let long_with_capitals = format!("{}{}", "x".repeat(150), "X".repeat(26));
    for name in [
        "",
        "a/b",
        "a\\b",
        ".hidden",
        "trailing.",
        "sp ace",
        "name.lock",
        "caf\u{e9}",
        &"x".repeat(201),
        // 176 bytes, but 202 once its capitals are counted twice.
        &long_with_capitals,
    ] {
        let err = Server::builder(name).serve(echo).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
        let err = Client::<Echo>::connect(name).unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{name:?}: {err}");
    }
}

/// Names are case-sensitive everywhere, also where file names are not (Windows, macOS): `Foo`
/// and `foo` are two servers, each reached by its own name and listed under it; and the longest
/// valid name (200 bytes, capitals counted twice) works.
#[test]
fn names_differing_only_in_case_are_two_servers() {
    let lower = unique_name("case");
    let upper = lower.to_ascii_uppercase();
    let _a = Server::builder(&lower)
        .serve(|_: Request<'_, String>| "lower".to_owned())
        .unwrap();
    let _b = Server::builder(&upper)
        .serve(|_: Request<'_, String>| "upper".to_owned())
        .unwrap();
    let ask = |name: &str| {
        let c = Client::<String>::connect(name).unwrap();
        let r = c.request(&"?".to_owned()).unwrap();
        r.as_str().to_owned()
    };
    assert_eq!(ask(&lower), "lower");
    assert_eq!(ask(&upper), "upper");
    let listed: Vec<String> = shmrpc::list()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        listed.contains(&lower) && listed.contains(&upper),
        "{listed:?}"
    );
    let longest = format!("{}{}", "x".repeat(150 - lower.len()), "X".repeat(25)) + &lower;
    assert_eq!(longest.len() + 25, 200);
    let _c = Server::builder(&longest).serve(echo).unwrap();
    Client::<Echo>::connect(&longest).unwrap();
}

#[test]
fn invalid_configs_name_their_bounds() {
    let name = unique_name("config");
    for (capacity, slots) in [
        (0, 4),
        // Over the 256 MiB bound (the largest `usize` on 32-bit targets as well).
        (usize::MAX, 4),
        (1 << 20, 0),
        (1 << 20, 5000),
        (1 << 16, 1000),
        (1000, 1),
    ] {
        let err = Server::builder(&name)
            .capacity(capacity)
            .slots(slots)
            .serve(echo)
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidConfig(_)),
            "{capacity} {slots}: {err}"
        );
    }
    let err = Server::builder(&name).workers(0).serve(echo).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig(_)));
    // Nothing was created: the name is still free.
    assert!(matches!(
        Client::<Echo>::connect(&name),
        Err(Error::NotFound { .. })
    ));
    // The accepted range includes 256 KiB..=1 MiB.
    for capacity in [256 << 10, 512 << 10, 1 << 20] {
        drop(
            Server::builder(&name)
                .capacity(capacity)
                .serve(echo)
                .unwrap(),
        );
    }
}

#[test]
fn second_server_under_a_live_name_is_addr_in_use() {
    let name = unique_name("inuse");
    let first = Server::builder(&name).serve(echo).unwrap();
    let err = Server::builder(&name).serve(echo).unwrap_err();
    assert!(matches!(err, Error::AddrInUse { .. }), "{err}");
    // The first server is untouched.
    let c = Client::connect(&name).unwrap();
    assert_eq!(c.request(&Echo::new(7, "a")).unwrap().n, 7);
    drop(c);
    drop(first);
    // Once stopped, the name is free again.
    drop(Server::builder(&name).serve(echo).unwrap());
}

#[test]
fn missing_server_is_not_found() {
    let err = Client::<Echo>::connect(&unique_name("missing")).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[test]
fn dropping_the_server_removes_the_name() {
    let name = unique_name("removed");
    drop(Server::builder(&name).serve(echo).unwrap());
    assert!(matches!(
        Client::<Echo>::connect(&name),
        Err(Error::NotFound { .. })
    ));
}

/// A message over the server's bound (its large-message memory; a slot's payload for a server
/// without one) is `PayloadTooLarge` naming the bound, the request's and the reply's alike.
#[test]
fn oversized_request_and_reply_are_payload_too_large_and_change_nothing() {
    for large in [1 << 20, 0] {
        let name = unique_name("toolarge");
        let server = Server::builder(&name)
            .capacity(256 << 10)
            .slots(8)
            .large_memory(large)
            .serve(|req: Request<'_, Vec<u8>>| vec![0u8; req.len() * 4])
            .unwrap();
        let max = server.max_message();
        assert_eq!(
            max,
            if large == 0 {
                server.max_payload()
            } else {
                large
            }
        );
        let c = Client::connect(&name).unwrap();
        assert_eq!(c.max_message(), max);
        match c.request(&vec![0u8; max + 1]) {
            Err(Error::PayloadTooLarge { len, max: m }) => {
                assert!(len > max);
                assert_eq!(m, max);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // A request that fits but whose reply does not.
        match c.request(&vec![0u8; max / 2]) {
            Err(Error::PayloadTooLarge { len, max: m }) => {
                assert!(len > max, "{len}");
                assert_eq!(m, max);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // The slots and the arena went back: the server still answers, many times over.
        for _ in 0..100 {
            assert_eq!(c.request(&vec![1u8; 10]).unwrap().len(), 40);
        }
        let stats = shmrpc::StatsView::open(&name).unwrap().stats();
        assert_eq!(stats.large_in_use, 0, "{stats:?}");
    }
}

/// A `Vec<u8>` archive has the layout of a `String` archive (and invalid UTF-8 would fail
/// validation): the type check refuses it before validation, as `TypeMismatch`.
#[test]
fn a_request_of_another_type_with_the_same_layout_is_a_type_mismatch() {
    let name = unique_name("badmsg");
    let _s = Server::builder(&name)
        .serve(|req: Request<'_, String>| req.len() as u32)
        .unwrap();
    let c = Client::builder(&name).connect::<Vec<u8>, u32>().unwrap();
    let err = c.request(&vec![0xff, 0xfe, 0xfd]).unwrap_err();
    assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
    // The server goes on serving well-typed callers.
    let good = Client::builder(&name).connect::<String, u32>().unwrap();
    assert_eq!(*good.request(&"abc".to_string()).unwrap(), 3);
}

#[test]
fn handler_panic_is_reported_and_the_server_keeps_serving() {
    let name = unique_name("panic");
    let _s = Server::builder(&name).serve(echo).unwrap();
    let c = Client::connect(&name).unwrap();
    for _ in 0..3 {
        assert!(matches!(
            c.request(&Echo::new(1, "panic")),
            Err(Error::HandlerPanicked)
        ));
        assert_eq!(c.request(&Echo::new(2, "fine")).unwrap().n, 2);
    }
}

/// A spin budget longer than the call's timeout (here without end) does not outlast the
/// timeout: the spin reads no clock for the deadline, so it is capped by the timeout itself.
/// Fails if the caller spins until the slow reply arrives (an `Ok` after 1 s) or panics adding
/// to an endless budget.
#[test]
fn a_spin_budget_longer_than_the_timeout_still_times_out_on_time() {
    let name = unique_name("longspin");
    let _s = Server::builder(&name).serve(echo).unwrap();
    let c = Client::builder(&name)
        .wait_mode(WaitMode::Adaptive {
            spin: Duration::MAX,
        })
        .connect::<Echo, Echo>()
        .unwrap();
    let mut slow = Echo::new(1, "slow");
    slow.sleep_ms = 1000;
    let t0 = Instant::now();
    let got = c
        .request_timeout(&slow, Duration::from_millis(50))
        .map(|r| r.n);
    assert!(matches!(got, Err(Error::Timeout { .. })), "{got:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn timeout_then_the_next_call_gets_its_own_reply_never_the_late_one() {
    let name = unique_name("timeout");
    let _s = Server::builder(&name).serve(echo).unwrap();
    let c = Client::connect(&name).unwrap();
    let mut slow = Echo::new(1, "slow");
    slow.sleep_ms = 300;
    let t0 = Instant::now();
    let err = c
        .request_timeout(&slow, Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // The single worker is still busy with the slow call; this one waits for it, then gets
    // its own reply (n == 2), not the abandoned one (n == 1).
    for n in 2..20 {
        let reply = c.request(&Echo::new(n, "fast")).unwrap();
        assert_eq!(reply.n, n);
        assert_eq!(reply.text, "re:fast");
        assert_eq!(&reply.id, reply.id().as_bytes());
    }
}

/// Runs in a child whose callers park for 10 s at a time (`SHMRPC_TEST_PARK_SLICE_MS`), so
/// that only the stop's own wake-up can end the caller's park within the bound below: a
/// caller parked (`WaitMode::Park`) on its slot while the handler runs is woken by the stop
/// with `ServerGone` within 1 s, and new calls fail fast.
fn stop_wakes_parked_caller() {
    let name = unique_name("gone");
    let server = Server::builder(&name).serve(echo).unwrap();
    let stop = server.stop_handle();
    let c = Client::builder(&name)
        .wait_mode(WaitMode::Park)
        .connect::<Echo, Echo>()
        .unwrap();
    let stopper = std::thread::spawn(move || {
        // The caller's call is being served, and it parks at once (no spin): when the stats
        // show the slot SERVING, the caller is parked or about to (either way, only a wake or
        // a changed word ends its wait before the 10 s slice).
        let t0 = Instant::now();
        while !server
            .stats()
            .in_use
            .iter()
            .any(|u| u.state == SlotState::Serving)
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the call never started"
            );
            std::thread::yield_now();
        }
        let t = Instant::now();
        stop.stop();
        (t, server)
    });
    let mut slow = Echo::new(1, "slow");
    slow.sleep_ms = 5_000;
    let err = c
        .request_timeout(&slow, Duration::from_secs(30))
        .unwrap_err();
    let returned = Instant::now();
    let (stopped_at, server) = stopper.join().unwrap();
    assert!(matches!(err, Error::ServerGone { .. }), "{err}");
    let took = returned.duration_since(stopped_at);
    // Woken by the stop itself: a slice lasts 10 s and the handler 5 s.
    assert!(
        took < Duration::from_secs(1),
        "woken {took:?} after the stop"
    );
    // New calls fail fast.
    let t0 = Instant::now();
    assert!(matches!(
        c.request(&Echo::new(2, "x")),
        Err(Error::ServerGone { .. })
    ));
    assert!(t0.elapsed() < Duration::from_secs(1));
    drop(server);
    say(format!("ok woken {took:?} after the stop"));
}

#[test]
fn stopping_the_server_wakes_a_parked_caller_with_server_gone() {
    let mut child = Proc::spawn_with(
        &[],
        &[("SHMRPC_TEST_PARK_SLICE_MS", "10000")],
        &["stop-wakes-parked-caller"],
    );
    let line = child.line();
    assert!(line.starts_with("ok"), "{line}");
    println!("{line}");
    assert!(child.finish(Duration::from_secs(30)));
}

#[test]
#[cfg(unix)]
fn an_unopenable_name_is_an_io_error() {
    // A directory where the shm object should be: shm_open fails with EISDIR, even as root.
    let name = unique_name("io");
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    let path = format!("/dev/shm/shmrpc.{}.{}", uid.unwrap(), name);
    std::fs::create_dir(&path).unwrap();
    let err = Client::<Echo>::connect(&name).unwrap_err();
    std::fs::remove_dir(&path).unwrap();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    // It says what was being done, and to which object.
    assert!(
        err.to_string().contains(&format!("opening {path}")),
        "{err}"
    );
}

/// A message whose `Serialize` panics.
#[derive(Debug)]
struct Boom;

impl rkyv::Archive for Boom {
    type Archived = rkyv::rend::u32_le;
    type Resolver = ();
    fn resolve(&self, _: (), out: rkyv::Place<Self::Archived>) {
        rkyv::Archive::resolve(&0u32, (), out)
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for Boom {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        panic!("this message cannot be serialized");
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<Boom, D> for rkyv::rend::u32_le {
    fn deserialize(&self, _: &mut D) -> Result<Boom, D::Error> {
        Ok(Boom)
    }
}

#[test]
fn a_panicking_serializer_gives_its_slot_back() {
    let name = unique_name("boom");
    let server = Server::builder(&name)
        .slots(1)
        .capacity(64 * 1024)
        .serve(|_: Request<'_, u32>| 7u32)
        .unwrap();
    let boom = Client::builder(&name).connect::<Boom, u32>().unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = boom.request(&Boom);
    }));
    assert!(caught.is_err(), "the serializer's panic reaches the caller");
    assert_eq!(server.stats().slots_in_use, 0);
    // The only slot is free: the next call gets it at once.
    let client: Client<u32> = Client::connect(&name).unwrap();
    let reply = client.request_timeout(&1, Duration::from_secs(1)).unwrap();
    assert_eq!(*reply, 7);
}

/// A message whose serialization takes 150 ms (archived as a `u32`).
struct Slow;

impl rkyv::Archive for Slow {
    type Archived = rkyv::rend::u32_le;
    type Resolver = ();
    fn resolve(&self, _: (), out: rkyv::Place<Self::Archived>) {
        rkyv::Archive::resolve(&0u32, (), out)
    }
}

impl<S: rkyv::rancor::Fallible + ?Sized> rkyv::Serialize<S> for Slow {
    fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
        std::thread::sleep(Duration::from_millis(150));
        Ok(())
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized> rkyv::Deserialize<Slow, D> for rkyv::rend::u32_le {
    fn deserialize(&self, _: &mut D) -> Result<Slow, D::Error> {
        Ok(Slow)
    }
}

#[test]
fn the_timeout_counts_from_the_call_not_from_its_publication() {
    let name = unique_name("slowser");
    let _server = Server::builder(&name)
        .serve(|_: Request<'_, Slow>| {
            std::thread::sleep(Duration::from_millis(400));
            7u32
        })
        .unwrap();
    let client = Client::builder(&name).connect::<Slow, u32>().unwrap();
    let t0 = Instant::now();
    let err = client
        .request_timeout(&Slow, Duration::from_millis(100))
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // 150 ms of serialization already spent the 100 ms: the call gives up at its first wait,
    // not 100 ms after publishing (250 ms) nor when the handler answers (550 ms).
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_millis(240),
        "{took:?}"
    );
}

/// A reply held across a server restart stays readable while another call through the same
/// handle reconnects to the new server (the handle keeps the old mapping mapped), and both
/// servers' replies are each call's own.
#[test]
fn a_reply_held_across_a_restart_stays_valid_while_the_handle_reconnects() {
    let name = unique_name("restart-held");
    let first = Server::builder(&name).serve(echo).unwrap();
    let client = Client::<Echo>::connect(&name).unwrap();
    let held = client.request(&Echo::new(1, "old")).unwrap();
    drop(first);
    let _second = Server::builder(&name).serve(echo).unwrap();
    for n in 2..5u64 {
        let reply = client.request(&Echo::new(n, "new")).unwrap();
        assert_eq!((reply.n.to_native(), reply.text.as_str()), (n, "re:new"));
    }
    assert_eq!((held.n.to_native(), held.text.as_str()), (1, "re:old"));
    assert_eq!(&held.id, held.id().as_bytes());
}

/// Every call carries its request type and expected reply type; a server of other types
/// answers `TypeMismatch` naming both sides' types, before validating anything, even where
/// the bytes would validate (a `u64` read as two `u32`s, a `String` as a `u64`). The server
/// goes on serving well-typed calls.
#[test]
fn wrong_types_are_a_type_mismatch_naming_both_sides() {
    let name = unique_name("types");
    let _server = Server::builder(&name)
        .serve(|req: Request<'_, (u32, u32)>| (req.0.to_native(), req.1.to_native()))
        .unwrap();
    let expect_mismatch = |r: Result<(), Error>, what: &str| match r {
        Err(e @ Error::TypeMismatch { .. }) => {
            let text = e.to_string();
            assert!(text.contains("(u32, u32)"), "{what}: {text}");
            println!("{what}: {text}");
        }
        other => panic!("{what}: expected TypeMismatch, got {other:?}"),
    };
    let wide = Client::builder(&name).connect::<u64, u64>().unwrap();
    expect_mismatch(wide.request(&12).map(drop), "u64 request");
    let text = Client::builder(&name)
        .connect::<String, (u32, u32)>()
        .unwrap();
    expect_mismatch(text.request(&"x".to_string()).map(drop), "String request");
    // The right request type with the wrong reply type is refused too.
    let reply_as_string = Client::builder(&name)
        .connect::<(u32, u32), String>()
        .unwrap();
    expect_mismatch(
        reply_as_string.request(&(1, 2)).map(drop),
        "String reply expected",
    );
    expect_mismatch(
        futures_lite_block_on(wide.request_async(&12)).map(drop),
        "async u64 request",
    );
    let right = Client::builder(&name)
        .connect::<(u32, u32), (u32, u32)>()
        .unwrap();
    let reply = right.request(&(3, 4)).unwrap();
    assert_eq!((reply.0.to_native(), reply.1.to_native()), (3, 4));
}

/// A one-way message of the wrong type is refused the same way, and never runs.
#[test]
fn a_one_way_message_of_the_wrong_type_is_a_type_mismatch() {
    let name = unique_name("types-oneway");
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = std::sync::Arc::clone(&ran);
    let _server = Server::builder(&name)
        .serve_oneway(move |_req: Request<'_, u64>| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
    let wrong = Client::<String>::connect(&name).unwrap();
    match wrong.send(&"not a number".to_string()) {
        Err(Error::TypeMismatch { .. }) => {}
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    let right = Client::<u64>::connect(&name).unwrap();
    right.send(&7).unwrap();
    let t0 = Instant::now();
    while ran.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::yield_now();
    }
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Polls a future to completion on this thread (the root package has no async runtime).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// A message of a recursive type nested 20,000 deep (a chain of boxes; validating it
/// unbounded needs ~20 MB of stack in a debug build, ten times a worker's) is `BadMessage`,
/// and the server keeps serving. Fails with an aborted test process if validation is not
/// bounded.
#[test]
fn a_message_nested_too_deep_is_a_bad_message_not_a_crash() {
    use shmrpc::fuzzing::Chain;
    let name = unique_name("deep");
    let _server = Server::builder(&name)
        .capacity(4 << 20)
        .slots(2)
        .serve(|req: Request<'_, Chain>| Chain {
            value: req.value.to_native(),
            next: None,
        })
        .unwrap();
    let client = Client::<Chain>::connect(&name).unwrap();
    // rkyv's serializer recurses too: serialize on a thread with room for it.
    let outcome = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, || {
                let deep = Chain::of_depth(20_000);
                client.request(&deep).map(|r| r.value.to_native())
            })
            .unwrap()
            .join()
            .unwrap()
    });
    match outcome {
        Err(Error::BadMessage(why)) => println!("refused: {why}"),
        other => panic!("expected BadMessage, got {other:?}"),
    }
    let shallow = Chain::of_depth(10);
    assert_eq!(client.request(&shallow).unwrap().value, 9);
}

/// The same bound on the client's side: a server whose reply is nested 2,000 deep (a chain of
/// boxes) gets its caller a `BadMessage`, not a stack overflow, and the next call, answered
/// 250 deep (within the bound of 256), goes through. Fails with an aborted test process if a
/// reply's validation is not bounded.
#[test]
fn a_reply_nested_too_deep_is_a_bad_message_not_a_crash() {
    use shmrpc::fuzzing::Chain;
    let name = unique_name("deepreply");
    let _server = Server::builder(&name)
        .capacity(4 << 20)
        .slots(2)
        .workers(1)
        .serve(|req: Request<'_, u32>| Chain::of_depth(req.to_native() as usize))
        .unwrap();
    // 2,000 levels: far past the bound (256), and what a worker's stack holds when rkyv's
    // serializer recurses through them (in a debug build too).
    let client = Client::builder(&name).connect::<u32, Chain>().unwrap();
    let outcome = client.request(&2_000).map(|r| r.value.to_native());
    match outcome {
        Err(Error::BadMessage(why)) => println!("refused: {why}"),
        other => panic!("expected BadMessage, got {other:?}"),
    }
    assert_eq!(client.request(&250).unwrap().value, 249);
}
