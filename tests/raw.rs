//! Calls archived elsewhere (`shmrpc::raw`), as a bridge forwards them: an archive handed over
//! in several pieces is the same call as the joined archive.

mod common;

use common::unique_name;
use shmrpc::raw::{self, RawCall, RawClient, RawDone, RawKind};
use shmrpc::{Request, Server};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An archive split at every kind of place (inside its bytes, with empty pieces, across the
/// edge of a slot so that the call moves to the large-message memory) reaches the handler as
/// the archive it was, and the reply is the echo of the request.
#[test]
fn an_archive_in_pieces_is_the_call_of_the_joined_archive() {
    let name = unique_name("raw-pieces");
    let server = Server::builder(&name)
        .serve(|req: Request<'_, Vec<u8>>| req.as_slice().to_vec())
        .unwrap();
    let client = RawClient::connect(&name).unwrap();
    let slot_edge = server.max_payload();
    for len in [0, 1, 100, slot_edge - 64, slot_edge + 1000, 3 * slot_edge] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let mut archive = Vec::new();
        raw::archive_into(&msg, &mut archive).unwrap();
        let n = archive.len();
        let (a, rest) = archive.split_at(n / 3);
        let (b, c) = rest.split_at(rest.len() / 2);
        for pieces in [
            vec![&archive[..]],
            vec![a, b, c],
            vec![&[][..], a, &[][..], b, c, &[][..]],
        ] {
            let call = RawCall {
                archive: &pieces,
                request_type: raw::fingerprint::<Vec<u8>>(),
                reply_type: raw::fingerprint::<Vec<u8>>(),
                id: raw::new_call_id(),
            };
            let reply = client.request(&call, Duration::from_secs(10)).unwrap();
            assert_eq!(reply.id(), call.id);
            let echoed = raw::access::<Vec<u8>>(reply.bytes()).unwrap();
            assert_eq!(
                echoed.as_slice(),
                &msg[..],
                "{len} bytes in {} pieces",
                pieces.len()
            );
        }
    }
}

/// A raw call of `msg` (a `Vec<u8>` both ways), archived into `archive`.
fn call_of<'a>(archive: &'a [&'a [u8]]) -> RawCall<'a> {
    RawCall {
        archive,
        request_type: raw::fingerprint::<Vec<u8>>(),
        reply_type: raw::fingerprint::<Vec<u8>>(),
        id: raw::new_call_id(),
    }
}

/// A server of `slots` slots, `large` bytes of large-message memory and one worker whose
/// handler echoes, but first, for a request that starts with 0, says so on the returned
/// receiver and waits until the returned sender sends (or is dropped).
fn gated_server(name: &str, slots: u32, large: usize) -> (Server, Sender<()>, Receiver<()>) {
    let (open, gate) = channel::<()>();
    let (entered, entries) = channel::<()>();
    let gate = Mutex::new(gate);
    let entered = Mutex::new(entered);
    let server = Server::builder(name)
        .slots(slots)
        .large_memory(large)
        .workers(1)
        .serve(move |req: Request<'_, Vec<u8>>| {
            if req.first() == Some(&0) {
                let _ = entered.lock().unwrap().send(());
                let _ = gate.lock().unwrap().recv();
            }
            req.as_slice().to_vec()
        })
        .unwrap();
    (server, open, entries)
}

fn archived(msg: &Vec<u8>) -> Vec<u8> {
    let mut archive = Vec::new();
    raw::archive_into(msg, &mut archive).unwrap();
    archive
}

fn reply_of(done: RawDone) -> Vec<u8> {
    match done {
        RawDone::Reply(reply) => raw::access::<Vec<u8>>(reply.bytes()).unwrap().to_vec(),
        RawDone::Accepted => panic!("a request was only accepted"),
    }
}

/// A published call is still pending when an early wait ends (its handler is held), and the
/// thread it is handed to then takes its reply: the reply of that call, with its id.
#[test]
fn a_published_call_not_answered_by_the_first_wait_is_answered_in_the_thread_it_moves_to() {
    let name = unique_name("raw-publish");
    let (server, open, entries) = gated_server(&name, 4, 16 << 20);
    let client = RawClient::connect(&name).unwrap();
    let msg = vec![0u8, 1, 2, 3];
    let archive = archived(&msg);
    let pieces = [&archive[..]];
    let call = call_of(&pieces);
    let timeout = Duration::from_secs(30);
    let pending = client
        .publish(&call, RawKind::Request, timeout, None)
        .unwrap()
        .expect("no first wait: published");
    assert_eq!(pending.id(), call.id);
    entries.recv_timeout(timeout).expect("the handler ran");
    let pending = match pending.wait_until(Instant::now() + Duration::from_millis(20)) {
        Err(pending) => pending,
        Ok(r) => panic!("a held call ended: {r:?}"),
    };
    assert_eq!(server.stats().timeouts, 0, "an early wait is no timeout");
    let waiter = std::thread::spawn(move || {
        let id = pending.id();
        (id, pending.wait())
    });
    open.send(()).unwrap();
    let (id, done) = waiter.join().unwrap();
    assert_eq!(id, call.id);
    assert_eq!(reply_of(done.unwrap()), msg);
    // A one-way message is done once taken.
    let quick = archived(&vec![1u8, 2]);
    let pending = client
        .publish(&call_of(&[&quick]), RawKind::OneWay, timeout, None)
        .unwrap()
        .unwrap();
    assert!(matches!(pending.wait(), Ok(RawDone::Accepted)));
}

/// With a first wait, publishing into a server whose slots are all taken holds nothing and
/// says so (`None`) once that wait is over; a pending call dropped unanswered gives its slot
/// back, so the next call gets it.
#[test]
fn a_first_wait_without_a_free_slot_holds_nothing_and_a_dropped_call_gives_its_slot_back() {
    let name = unique_name("raw-first");
    let (server, open, entries) = gated_server(&name, 1, 16 << 20);
    let client = RawClient::connect(&name).unwrap();
    let timeout = Duration::from_secs(30);
    let held = archived(&vec![0u8; 8]);
    let pending = client
        .publish(&call_of(&[&held]), RawKind::Request, timeout, None)
        .unwrap()
        .unwrap();
    entries.recv_timeout(timeout).expect("the handler ran");
    let quick = archived(&vec![5u8; 8]);
    let t0 = Instant::now();
    let first = Some(Duration::from_millis(20));
    let r = client.publish(&call_of(&[&quick]), RawKind::Request, timeout, first);
    assert!(matches!(r, Ok(None)), "{r:?}");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(20), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    drop(pending);
    open.send(()).unwrap();
    // The one slot is free again once the worker has finished the abandoned call.
    let reply = client
        .request(&call_of(&[&quick]), timeout)
        .expect("the dropped call's slot is free again");
    assert_eq!(
        raw::access::<Vec<u8>>(reply.bytes()).unwrap().as_slice(),
        &[5u8; 8]
    );
    drop(reply);
    let stats = server.stats();
    assert_eq!(stats.in_flight, 0, "{stats:?}");
    assert_eq!(stats.abandoned, 1, "{stats:?}");
}

/// With a first wait, a large request that does not fit beside one in flight waits for room
/// at most that long and then holds nothing: neither its slot nor any large-message memory.
#[test]
fn a_first_wait_without_large_memory_holds_neither_slot_nor_memory() {
    let name = unique_name("raw-first-large");
    let (server, open, entries) = gated_server(&name, 4, 4 << 20);
    let client = RawClient::connect(&name).unwrap();
    let timeout = Duration::from_secs(30);
    let held = archived(&vec![0u8; 3 << 20]);
    let pending = client
        .publish(&call_of(&[&held]), RawKind::Request, timeout, None)
        .unwrap()
        .unwrap();
    entries.recv_timeout(timeout).expect("the handler ran");
    let before = server.stats();
    let large = archived(&vec![7u8; 3 << 20]);
    let first = Some(Duration::from_millis(20));
    let r = client.publish(&call_of(&[&large]), RawKind::Request, timeout, first);
    assert!(matches!(r, Ok(None)), "{r:?}");
    let after = server.stats();
    assert_eq!(after.slots_in_use, before.slots_in_use, "{after:?}");
    assert_eq!(after.large_in_use, before.large_in_use, "{after:?}");
    assert_eq!(after.timeouts, 0, "{after:?}");
    open.send(()).unwrap();
    assert_eq!(reply_of(pending.wait().unwrap()).len(), 3 << 20);
    // With the room back, the same request goes through.
    let reply = client.request(&call_of(&[&large]), timeout).unwrap();
    assert_eq!(
        raw::access::<Vec<u8>>(reply.bytes()).unwrap().len(),
        3 << 20
    );
    drop(reply);
    assert_eq!(server.stats().large_in_use, 0);
}
