//! Instructions per 64-byte call, both sides, for `scripts/guard.sh`: a server and a client in
//! this one process make `N` calls (the first argument) and exit. Run under
//! `valgrind --tool=callgrind`, the difference of two runs' totals divided by the difference
//! of their `N` is the instruction count of one round trip (client and worker), setup
//! excluded. Both sides use `WaitMode::Park` so that no spin loop runs: under valgrind, which
//! runs one thread at a time, a spinning side's count would depend on when it is switched out.
//! The count therefore covers the call path without its spin, plus one park and one wake per
//! side (their system calls are not counted, only the instructions around them).

use shmrpc::{Client, Request, Server, WaitMode};

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let name = format!("shmrpc-instructions-{}", std::process::id());
    let _server = Server::builder(&name)
        .wait_mode(WaitMode::Park)
        .serve(|req: Request<'_, [u8; 64]>| *req.archived())
        .expect("server");
    let client = Client::builder(&name)
        .wait_mode(WaitMode::Park)
        .connect::<[u8; 64], [u8; 64]>()
        .expect("connect");
    let msg = [7u8; 64];
    for _ in 0..n {
        let reply = client.request(&msg).expect("call");
        assert_eq!(reply[0], 7);
    }
}
