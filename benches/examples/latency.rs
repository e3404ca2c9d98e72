//! A million round trips through shmrpc and through a Unix socket, side by side, each recorded
//! in an HDR histogram; prints p50, p90, p99, p99.9, p99.99 and max for both.
//!
//! ```text
//! cargo run --release -p shmrpc-bench --example latency [-- CALLS]
//! ```
//!
//! Both servers are child processes (this binary re-executed); 64-byte requests and replies.

use hdrhistogram::Histogram;
use shmrpc::{Client, Request, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const NAME: &str = "shmrpc-latency";

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("shmrpc-server") => shmrpc_server(),
        Some("uds-server") => uds_server(&args.next().expect("socket path")),
        other => {
            let calls = other.and_then(|a| a.parse().ok()).unwrap_or(1_000_000u64);
            measure(calls);
        }
    }
}

fn ready() {
    println!("ready");
    std::io::stdout().flush().unwrap();
}

fn shmrpc_server() {
    let server = Server::builder(NAME)
        .serve(|req: Request<'_, [u8; 64]>| *req.archived())
        .expect("start the server");
    ready();
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
}

fn uds_server(path: &str) {
    let listener = UnixListener::bind(path).expect("bind");
    ready();
    let (mut s, _) = listener.accept().expect("accept");
    let mut buf = [0u8; 64];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&buf).is_err() {
            break;
        }
    }
}

fn spawn(args: &[&str]) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn record(calls: u64, mut call: impl FnMut()) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for _ in 0..calls / 10 {
        call(); // warm-up
    }
    for _ in 0..calls {
        let t = Instant::now();
        call();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
    }
    h
}

fn measure(calls: u64) {
    let mut server = spawn(&["shmrpc-server"]);
    let client = Client::builder(NAME)
        .connect::<[u8; 64], [u8; 64]>()
        .expect("connect");
    let msg = [7u8; 64];
    let shm = record(calls, || {
        let reply = client.request(&msg).expect("call");
        std::hint::black_box(reply[63]);
    });
    drop(server.stdin.take());
    server.wait().unwrap();

    let path = format!("/tmp/shmrpc-latency-{}.sock", std::process::id());
    let mut uds_child = spawn(&["uds-server", &path]);
    let mut s = UnixStream::connect(&path).expect("connect the socket");
    let mut out = [0u8; 64];
    let uds = record(calls, || {
        s.write_all(&msg).unwrap();
        s.read_exact(&mut out).unwrap();
        std::hint::black_box(out[63]);
    });
    drop(s);
    let _ = uds_child.kill();
    let _ = uds_child.wait();
    let _ = std::fs::remove_file(&path);

    println!("{calls} round trips of 64 B each way (ns; Instant::now() costs ~30 ns here)");
    println!(
        "{:>10} {:>12} {:>12} {:>8}",
        "", "shmrpc", "unix socket", "ratio"
    );
    for (label, q) in [
        ("p50", 0.50),
        ("p90", 0.90),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("p99.99", 0.9999),
    ] {
        let (a, b) = (shm.value_at_quantile(q), uds.value_at_quantile(q));
        println!(
            "{label:>10} {a:>12} {b:>12} {:>7.1}×",
            b as f64 / a.max(1) as f64
        );
    }
    let (a, b) = (shm.max(), uds.max());
    println!(
        "{:>10} {a:>12} {b:>12} {:>7.1}×",
        "max",
        b as f64 / a.max(1) as f64
    );
}
