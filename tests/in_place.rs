//! Replies written in place (`ServerBuilder::serve_in_place`): a handler that replies with the
//! request's own bytes, or fills its reply straight into shared memory, while it still reads
//! the request.

mod common;

use common::{unique_name, wait_for_stats, Rng};
use shmrpc::layout::DEFAULT_ARENA;
use shmrpc::{AsString, AsVec, Client, Error, Replied, Request, Responder, Server, Trust};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// Bytes that differ with the call and the position, so that a reply built from another call's
/// bytes, or from a run another message overwrote, does not compare equal.
fn message(call: u64, len: usize) -> Vec<u8> {
    let mut x = call.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn echo_in_place<'o>(req: Request<'_, Vec<u8>>, out: Responder<'o, Vec<u8>>) -> Replied<'o> {
    out.send(&AsVec(req.as_slice()))
}

/// Every size, from empty through the edge of a slot to 64 MiB (with the default
/// configuration, whose large-message memory holds a 64 MiB request and its reply side by
/// side on 64-bit targets), comes back byte for byte, and nothing stays held afterwards.
#[test]
fn an_in_place_echo_returns_every_size_byte_for_byte_and_keeps_nothing() {
    let name = unique_name("inplace-sizes");
    let server = Server::builder(&name)
        .serve_in_place(echo_in_place)
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    let slot = client.max_payload();
    let mut sizes = vec![
        0,
        1,
        63,
        slot - 16,
        slot - 8,
        slot,
        slot + 1,
        200_000,
        5 << 20,
    ];
    if DEFAULT_ARENA >= 256 << 20 {
        sizes.push(64 << 20);
    }
    for (i, len) in sizes.into_iter().enumerate() {
        let msg = message(i as u64, len);
        let reply = client
            .request_timeout(&msg, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{len} bytes: {e}"));
        assert!(reply.as_slice() == msg.as_slice(), "{len} bytes differ");
    }
    let stats = server.stats();
    assert_eq!(stats.large_in_use, 0, "{stats:?}");
    assert_eq!(stats.large_held_by_workers, 0, "{stats:?}");
}

/// The request reversed, computed straight into the reply's memory.
fn reverse_in_place<'o>(req: Request<'_, Vec<u8>>, out: Responder<'o, Vec<u8>>) -> Replied<'o> {
    out.fill(req.len(), |buf| {
        for (b, r) in buf.iter_mut().zip(req.iter().rev()) {
            *b = *r;
        }
    })
}

/// Holds a handler at its start: each call says it entered, then waits for the test's go.
struct Gate {
    entered: mpsc::SyncSender<()>,
    go: std::sync::Mutex<mpsc::Receiver<()>>,
}

impl Gate {
    /// A gate, the receiver of its calls' entries (room for `entries` unread) and the sender
    /// of their go-aheads (room for `gos` unread).
    fn new(entries: usize, gos: usize) -> (Gate, mpsc::Receiver<()>, mpsc::SyncSender<()>) {
        let (entered, entries) = mpsc::sync_channel(entries);
        let (proceed, go) = mpsc::sync_channel(gos);
        let go = std::sync::Mutex::new(go);
        (Gate { entered, go }, entries, proceed)
    }

    fn pass(&self) {
        self.entered.send(()).unwrap();
        self.go.lock().unwrap().recv().unwrap();
    }
}

/// A reply computed from a large request while the handler reads it (here: the request
/// reversed) is right at every size: the reply's memory is never the request's. Fails if the
/// allocator does not see the run a worker holds (the reply would land on the request, and
/// reversing it there overwrites bytes before they are read).
#[test]
fn a_reply_computed_from_a_large_request_never_lands_on_it() {
    let name = unique_name("inplace-reverse");
    let server = Server::builder(&name)
        .serve_in_place(reverse_in_place)
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    let slot = client.max_payload();
    for (i, len) in [10, slot - 8, slot + 1, 100_000, 4 << 20]
        .into_iter()
        .enumerate()
    {
        let msg = message(i as u64, len);
        let reply = client.request(&msg).unwrap();
        let want: Vec<u8> = msg.iter().rev().copied().collect();
        assert!(reply.as_slice() == want.as_slice(), "{len} bytes");
    }
    assert_eq!(server.stats().large_in_use, 0);
}

/// Six callers on two workers, 300 calls of random sizes up to 4 MiB (two in three larger than
/// a slot), against `memory` bytes of large-message memory: every reply must be its own request
/// reversed. Returns the calls that failed.
fn reversed_echoes_from_six_callers(memory: usize) -> u64 {
    let name = unique_name("inplace-many");
    let server = Server::builder(&name)
        .workers(2)
        .large_memory(memory)
        .serve_in_place(reverse_in_place)
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    let (bad, next) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..6 {
            let (client, bad, next) = (&client, &bad, &next);
            s.spawn(move || {
                let mut rng = Rng(0x1e + t);
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= 300 {
                        break;
                    }
                    let len = match rng.below(3) {
                        0 => rng.below(client.max_payload() + 1),
                        _ => client.max_payload() + rng.below(4 << 20),
                    };
                    let msg = message(i, len);
                    let want: Vec<u8> = msg.iter().rev().copied().collect();
                    match client.request_timeout(&msg, Duration::from_secs(60)) {
                        Ok(r) if r.as_slice() == want.as_slice() => {}
                        other => {
                            eprintln!("call {i} of {len} bytes: {:?}", other.map(|r| r.len()));
                            bad.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    let stats = server.stats();
    assert_eq!(stats.large_in_use, 0, "{stats:?}");
    bad.load(Ordering::SeqCst)
}

/// While one worker reads a request from the run in its record, the other calls allocate
/// theirs, with room for the worst case (six requests of up to 4 MiB and both workers'
/// replies). Fails if an allocator hands out a run a worker holds (the requests would be
/// overwritten under the handler that reverses them).
#[test]
fn concurrent_in_place_echoes_never_share_memory() {
    assert_eq!(reversed_echoes_from_six_callers(64 << 20), 0);
}

/// The same calls against 10 MiB, where the requests of queued callers could take the room
/// that the replies of the two being served need. Fails if a request may take it (both
/// workers then wait for room that only their own callers could free, and give up after
/// `WORKER_WAIT` with `PayloadTooLarge`: the old allocator failed this every time).
#[test]
fn queued_large_requests_leave_room_for_the_replies_being_written() {
    assert_eq!(reversed_echoes_from_six_callers(10 << 20), 0);
}

/// Three callers whose requests would fill the large-message memory (8 MiB, three requests of
/// 2.5 MiB: read in place, over the copy limit) against two workers, whose handlers wait until
/// the third caller has queued its request or waits for room: the third must wait, leaving room
/// for the replies of the two being served, and every call then succeeds. Fails if the third
/// request takes the room both replies need (both workers then wait for room that only their
/// own callers could free, and give up after `WORKER_WAIT` with `PayloadTooLarge`).
#[test]
fn requests_that_would_fill_the_large_memory_leave_room_for_the_replies() {
    const LEN: usize = 5 << 19;
    let name = unique_name("inplace-room");
    let (gate, entered, proceed) = Gate::new(2, 3);
    let _server = Server::builder(&name)
        .workers(2)
        .large_memory(8 << 20)
        .serve_in_place(
            move |req: Request<'_, Vec<u8>>, out: Responder<'_, Vec<u8>>| {
                gate.pass();
                reverse_in_place(req, out)
            },
        )
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..3u64)
            .map(|i| {
                let client = &client;
                s.spawn(move || {
                    let msg = message(i, LEN);
                    let want: Vec<u8> = msg.iter().rev().copied().collect();
                    match client.request_timeout(&msg, Duration::from_secs(60)) {
                        Ok(r) => r.as_slice() == want.as_slice(),
                        Err(e) => panic!("call {i}: {e}"),
                    }
                })
            })
            .collect();
        // Two requests are being served, each held by its worker...
        entered.recv().unwrap();
        entered.recv().unwrap();
        // ...and the third caller has either taken its room or waits for it.
        let during = wait_for_stats(&name, "the third caller placed or waiting", |s| {
            s.large_waiters > 0 || s.large_in_use >= 3 * LEN
        });
        // Let the handlers go before any assertion, so that a failure fails, not hangs.
        for _ in 0..3 {
            proceed.send(()).unwrap();
        }
        let replies: Vec<bool> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        assert!(
            during.large_waiters > 0 && during.large_in_use < 3 * LEN,
            "the third request waited for room: {during:?}"
        );
        assert_eq!(replies, [true; 3], "every reply is its request reversed");
    });
    let after = wait_for_stats(&name, "nothing held", |s| s.large_in_use == 0);
    assert_eq!(after.large_held_by_workers, 0, "{after:?}");
}

/// `Responder::fill` writes a computed reply of any size, straight into shared memory in a
/// trusting server and through a private buffer in an untrusting one; `AsString` replies with
/// borrowed text. Fails if a filled reply is cut, shifted or misplaced.
#[test]
fn a_filled_reply_reaches_the_caller_whatever_its_size_and_the_trust() {
    for trust in [Trust::Trusted, Trust::Untrusted] {
        let name = unique_name("inplace-fill");
        let _server = Server::builder(&name)
            .trust(trust)
            .serve_in_place(|req: Request<'_, u64>, out: Responder<'_, Vec<u8>>| {
                let len = req.to_native() as usize;
                out.fill(len, |buf| {
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = (i % 251) as u8;
                    }
                })
            })
            .unwrap();
        let client: Client<u64, Vec<u8>> = Client::builder(&name).connect().unwrap();
        for len in [0usize, 5, 32_000, 40_000, 3 << 20] {
            let reply = client.request(&(len as u64)).unwrap();
            assert_eq!(reply.len(), len, "{trust:?}");
            assert!(
                reply.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
                "{trust:?}: {len} bytes"
            );
        }
        let text = unique_name("inplace-str");
        let _strings = Server::builder(&text)
            .trust(trust)
            .serve_in_place(|req: Request<'_, String>, out: Responder<'_, String>| {
                out.send(&AsString(req.as_str().trim()))
            })
            .unwrap();
        let client: Client<String> = Client::connect(&text).unwrap();
        let long = format!("  {}  ", "x".repeat(100_000));
        assert_eq!(
            client.request(&long).unwrap().as_str(),
            long.trim(),
            "{trust:?}"
        );
    }
}

/// While an in-place handler reads a large request, the request's memory shows in the
/// statistics as held by the server's workers (and the slot no longer records it: the reply
/// may take its place); it goes back once the reply is out, and when the handler panics.
#[test]
fn the_request_an_in_place_handler_reads_is_held_by_its_worker_until_the_reply_is_out() {
    let name = unique_name("inplace-held");
    let (gate, reading, proceed) = Gate::new(0, 0);
    let server = Server::builder(&name)
        .serve_in_place(
            move |req: Request<'_, Vec<u8>>, out: Responder<'_, Vec<u8>>| {
                gate.pass();
                if req.first() == Some(&0xff) {
                    panic!("asked to panic (test)");
                }
                out.send(&AsVec(&req[..10]))
            },
        )
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    for panics in [false, true] {
        let mut msg = message(1, 3 << 20);
        msg[0] = if panics { 0xff } else { 0 };
        std::thread::scope(|s| {
            let call = s.spawn(|| client.request_timeout(&msg, Duration::from_secs(30)));
            reading.recv().unwrap();
            let during = server.stats();
            // Let the handler go before any assertion, so that a failure fails, not hangs.
            proceed.send(()).unwrap();
            let outcome = call.join().unwrap();
            assert!(
                during.large_held_by_workers >= 3 << 20,
                "the worker holds the request: {during:?}"
            );
            assert!(
                during.in_use.iter().all(|u| u.large_bytes == 0),
                "the slot records no run while its request is held: {during:?}"
            );
            match outcome {
                Ok(r) => {
                    assert!(!panics);
                    assert_eq!(r.as_slice(), &msg[..10]);
                }
                Err(e) => assert!(panics && matches!(e, Error::HandlerPanicked), "{e:?}"),
            }
        });
        let after = wait_for_stats(&name, "nothing held", |s| s.large_in_use == 0);
        assert_eq!(after.large_held_by_workers, 0, "{after:?}");
    }
}

/// A large request of at most 2 MiB is read from a copy in the worker's own buffer: while the
/// handler runs, its run is no longer the slot's but the worker's (kept for the reply to reuse,
/// so that no queued request can take that room first), and the reply is still computed from
/// the whole request; once the reply is out, nothing is held.
#[test]
fn a_large_request_that_fits_the_cache_is_read_from_a_copy_and_its_run_kept_for_the_reply() {
    let name = unique_name("inplace-copied");
    let (gate, reading, proceed) = Gate::new(0, 0);
    let server = Server::builder(&name)
        .serve_in_place(
            move |req: Request<'_, Vec<u8>>, out: Responder<'_, Vec<u8>>| {
                gate.pass();
                reverse_in_place(req, out)
            },
        )
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    let msg = message(7, 512 << 10);
    std::thread::scope(|s| {
        let call = s.spawn(|| client.request_timeout(&msg, Duration::from_secs(30)));
        reading.recv().unwrap();
        let during = server.stats();
        // Let the handler go before any assertion, so that a failure fails, not hangs.
        proceed.send(()).unwrap();
        let reply = call.join().unwrap().unwrap();
        assert!(
            during.large_held_by_workers >= 512 << 10,
            "the worker keeps the request's run for the reply: {during:?}"
        );
        assert!(
            during.in_use.iter().all(|u| u.large_bytes == 0),
            "the slot records no run while the worker keeps it: {during:?}"
        );
        let reversed: Vec<u8> = msg.iter().rev().copied().collect();
        assert!(
            reply.as_slice() == &reversed[..],
            "the reply is the reversed request"
        );
    });
    let after = wait_for_stats(&name, "nothing held", |s| s.large_in_use == 0);
    assert_eq!(after.large_held_by_workers, 0, "{after:?}");
}

/// Two callers of 2 MiB requests (copied out: at the copy limit) being served, and six callers
/// of 1 MiB requests queued behind them, against 7.5 MiB of large-message memory: every call
/// succeeds. Fails if a worker gives its request's run back before its reply is written: the
/// queued requests then take that room (all six fit, leaving 1.5 MiB), and both workers wait for
/// room that only their own callers could free, giving up after `WORKER_WAIT` with
/// `PayloadTooLarge` (what the allocator did before `Purpose::ReplyReusing`).
#[test]
fn copied_requests_keep_their_room_for_the_replies_while_others_queue() {
    const SERVED: usize = (2 << 20) - 4096;
    const QUEUED: usize = 6;
    let name = unique_name("inplace-reuse");
    let (gate, entered, proceed) = Gate::new(2 + QUEUED, 2 + QUEUED);
    let _server = Server::builder(&name)
        .workers(2)
        .large_memory(15 << 19)
        .serve_in_place(
            move |req: Request<'_, Vec<u8>>, out: Responder<'_, Vec<u8>>| {
                gate.pass();
                reverse_in_place(req, out)
            },
        )
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    let call = |i: u64, len: usize| {
        let msg = message(i, len);
        let want: Vec<u8> = msg.iter().rev().copied().collect();
        client
            .request_timeout(&msg, Duration::from_secs(60))
            .map(|r| r.as_slice() == want.as_slice())
            .map_err(|e| format!("call {i} ({len} bytes): {e}"))
    };
    std::thread::scope(|s| {
        let mut calls: Vec<_> = (0..2).map(|i| s.spawn(move || call(i, SERVED))).collect();
        // Both are being served...
        for _ in 0..2 {
            entered
                .recv_timeout(Duration::from_secs(60))
                .expect("both large requests reach a handler");
        }
        // ...when the others come: each places its request or waits for room, until all are
        // placed or all but those that fit wait.
        calls.extend((2..2 + QUEUED as u64).map(|i| s.spawn(move || call(i, (1 << 20) - 64))));
        let during = wait_for_stats(&name, "the queued callers placed or waiting", |s| {
            let placed = s.in_use.iter().filter(|u| u.large_bytes > 0).count();
            let waiting = s.large_waiters as usize;
            placed == QUEUED || (placed + waiting >= QUEUED && waiting >= QUEUED - 1)
        });
        // Let the handlers go before any assertion, so that a failure fails, not hangs.
        for _ in 0..2 + QUEUED {
            proceed.send(()).unwrap();
        }
        let replies: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
        assert_eq!(replies, vec![Ok(true); 2 + QUEUED], "{during:?}");
        assert!(
            during.large_held_by_workers >= 2 * SERVED,
            "both workers keep their requests' runs: {during:?}"
        );
    });
    let after = wait_for_stats(&name, "nothing held", |s| s.large_in_use == 0);
    assert_eq!(after.large_held_by_workers, 0, "{after:?}");
}

/// A one-way message to an in-place server runs its handler, whose reply goes nowhere.
#[test]
fn a_one_way_message_to_an_in_place_server_runs_its_handler() {
    let name = unique_name("inplace-oneway");
    let (tx, rx) = mpsc::channel::<usize>();
    let tx = std::sync::Mutex::new(tx);
    let _server = Server::builder(&name)
        .serve_in_place(
            move |req: Request<'_, Vec<u8>>, out: Responder<'_, Vec<u8>>| {
                tx.lock().unwrap().send(req.len()).unwrap();
                out.send(&AsVec(req.as_slice()))
            },
        )
        .unwrap();
    let client: Client<Vec<u8>> = Client::connect(&name).unwrap();
    client.send(&vec![1; 100_000]).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), 100_000);
    assert_eq!(client.request(&vec![2; 10]).unwrap().as_slice(), &[2; 10]);
}
