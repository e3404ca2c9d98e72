//! Async calls on tokio: a server, then `request_async` / `send_async` / timeouts, and what
//! an async round trip costs next to a blocking one (the same server, the same run).
//!
//! `cargo run --release -p shmrpc-bench --example async`

use shmrpc::{Client, Error, Request, Server};
use std::time::{Duration, Instant};

#[shmrpc::message]
#[derive(Debug)]
struct Hello {
    text: String,
    sleep_ms: u32,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder("shmrpc-async-demo").serve(|req: Request<'_, Hello>| {
        if req.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(req.sleep_ms.to_native().into()));
        }
        Hello {
            text: format!("hi, {}", req.text),
            sleep_ms: 0,
        }
    })?;
    let client: Client<Hello> = Client::connect("shmrpc-async-demo")?;

    // One call.
    let msg = Hello {
        text: "async".into(),
        sleep_ms: 0,
    };
    let reply = client.request_async(&msg).await?;
    println!("reply: {:?} (call id {})", reply.text.as_str(), reply.id());
    drop(reply); // a reply holds its slot until it drops

    // 10,000 calls in flight at once from tokio tasks: one helper thread waits for them all.
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..10_000)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let msg = Hello {
                    text: i.to_string(),
                    sleep_ms: 0,
                };
                let reply = client.request_async(&msg).await?;
                Ok::<bool, Error>(reply.text == format!("hi, {i}"))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await??);
    }
    let took = t0.elapsed();
    println!(
        "10000 concurrent tasks: {ok} correct replies in {took:?} ({:.0} calls/s)",
        10_000.0 / took.as_secs_f64()
    );

    // Sequential round trips, blocking and async, on the same server.
    let n = 20_000u32;
    let t0 = Instant::now();
    for _ in 0..n {
        drop(client.request(&msg)?);
    }
    let blocking = t0.elapsed() / n;
    let t0 = Instant::now();
    for _ in 0..n {
        drop(client.request_async(&msg).await?);
    }
    let awaited = t0.elapsed() / n;
    println!("one call at a time: blocking {blocking:?} per call, async {awaited:?} per call");
    // A timeout through the async path (last: the worker still sleeps in that handler).
    let slow = Hello {
        text: "slow".into(),
        sleep_ms: 200,
    };
    match client
        .request_async_timeout(&slow, Duration::from_millis(50))
        .await
    {
        Err(Error::Timeout { after, .. }) => println!("slow call: timed out after {after:?}"),
        other => println!("slow call: unexpected {other:?}"),
    }

    println!(
        "server stats: {} served, {} timeouts",
        server.stats().served,
        server.stats().timeouts
    );
    Ok(())
}
