//! A remote round trip through a bridge against Zenoh's own query round trip between the same
//! two processes, and against a local shmrpc call to the same server, at 64 B, 1 KiB and
//! 64 KiB, in one run: the three take turns in each round (their order rotating), and the
//! medians of the rounds and of each round's ratios are reported.
//!
//! Run: `cargo bench -p shmrpc-zenoh --bench remote` (`SHMRPC_BENCH_ROUNDS`, default 15;
//! `SHMRPC_BENCH_SIZES`, default `64,1024,65536`).
//!
//! The host process (this binary, re-executed) runs the shmrpc server (an echo of `Vec<u8>`),
//! a bridge for it and, on the same Zenoh session, a plain queryable that echoes its query's
//! payload from Zenoh's callback: the same bytes each way as the bridge carries, with none of
//! its work. This process calls all three: the bridge through a `RemoteClient`, the plain
//! queryable with `Session::get` (the same target, consolidation and timeout a remote call
//! uses), and the server through a local `shmrpc::Client`.

use shmrpc::{Client, Request, Server};
use shmrpc_zenoh::zenoh::query::{ConsolidationMode, QueryTarget};
use shmrpc_zenoh::zenoh::{self, Wait};
use shmrpc_zenoh::{config, Bridge, RemoteClient};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROLE: &str = "SHMRPC_ZENOH_BENCH_ROLE";
/// Time each contender runs in a round.
const SLICE: Duration = Duration::from_millis(150);

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let args: Vec<&str> = role.split(' ').collect();
        host(args[0], args[1], args[2], args[3]);
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pid = std::process::id();
    let name = format!("zenoh-bench-{pid}");
    let key = format!("shmrpc-bench/{name}");
    let raw_key = format!("shmrpc-bench/{name}-plain");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, format!("{name} {key} {raw_key} {endpoint}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let session = shmrpc_zenoh::open(config::peer(&[], &[&endpoint]).unwrap()).unwrap();
    let t0 = Instant::now();
    let remote = loop {
        match RemoteClient::<Vec<u8>>::connect(&session, &key) {
            Ok(c) => break c,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    };
    let local = Client::<Vec<u8>>::connect(&name).unwrap();
    let plain = |payload: &[u8]| -> usize {
        let replies = session
            .get(&raw_key)
            .payload(payload.to_vec())
            .target(QueryTarget::BestMatching)
            .consolidation(ConsolidationMode::None)
            .timeout(Duration::from_secs(5))
            .wait()
            .unwrap();
        let reply = replies.recv().unwrap();
        reply.result().unwrap().payload().len()
    };

    let rounds: usize = std::env::var("SHMRPC_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let sizes: Vec<usize> = std::env::var("SHMRPC_BENCH_SIZES")
        .unwrap_or_else(|_| "64,1024,65536".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    println!("remote round trip through a bridge (same two processes, {rounds} rounds)");
    println!(
        "| size | bridge (median) | zenoh query (median) | local shmrpc (median) | bridge / zenoh | bridge / local |"
    );
    println!("|---|---|---|---|---|---|");
    for size in sizes {
        let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let mut times: [Vec<f64>; 3] = Default::default();
        let mut contenders: [Box<dyn FnMut() + '_>; 3] = [
            Box::new(|| assert_eq!(remote.request(&msg).unwrap().len(), size)),
            Box::new(|| assert_eq!(plain(&msg), size)),
            Box::new(|| assert_eq!(local.request(&msg).unwrap().len(), size)),
        ];
        // Warm up every path once.
        for c in contenders.iter_mut() {
            for _ in 0..50 {
                c();
            }
        }
        for round in 0..rounds {
            for k in 0..3 {
                let i = (round + k) % 3;
                times[i].push(mean_ns(&mut *contenders[i]));
            }
        }
        let med = |v: &[f64]| median(v.to_vec());
        let ratio = |a: usize, b: usize| {
            median(times[a].iter().zip(&times[b]).map(|(x, y)| x / y).collect())
        };
        println!(
            "| {} | {} | {} | {} | {:.2}x | {:.0}x |",
            human(size),
            ns(med(&times[0])),
            ns(med(&times[1])),
            ns(med(&times[2])),
            ratio(0, 1),
            ratio(0, 2),
        );
    }
    drop(child.stdin.take());
    let _ = child.wait();
}

/// The mean time of one call of `f`, in nanoseconds, over calls for about `SLICE`.
fn mean_ns(f: &mut dyn FnMut()) -> f64 {
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < SLICE || n < 20 {
        f();
        n += 1;
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ns(t: f64) -> String {
    if t >= 1000.0 {
        format!("{:.1} µs", t / 1000.0)
    } else {
        format!("{t:.0} ns")
    }
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// The host process: server, bridge and a plain echo queryable, until stdin closes.
fn host(name: &str, key: &str, raw_key: &str, endpoint: &str) {
    let server = Server::builder(name)
        .serve(|req: Request<'_, Vec<u8>>| req.as_slice().to_vec())
        .unwrap();
    let session = shmrpc_zenoh::open(config::peer(&[endpoint], &[]).unwrap()).unwrap();
    let bridge = Bridge::builder(name)
        .key(key)
        .session(session.clone())
        .start()
        .unwrap();
    let plain = session
        .declare_queryable(raw_key.to_owned())
        .complete(true)
        .callback(|q: zenoh::query::Query| {
            let payload = q.payload().cloned().unwrap_or_default();
            let _ = q.reply(q.key_expr().clone(), payload).wait();
        })
        .wait()
        .unwrap();
    println!("ready");
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
    drop(plain);
    drop(bridge);
    drop(server);
}
