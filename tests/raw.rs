//! Calls archived elsewhere (`shmrpc::raw`), as a bridge forwards them: an archive handed over
//! in several pieces is the same call as the joined archive.

mod common;

use common::unique_name;
use shmrpc::raw::{self, RawCall, RawClient};
use shmrpc::{Request, Server};
use std::time::Duration;

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
