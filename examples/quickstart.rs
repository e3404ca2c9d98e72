//! Starts a server process and a client process, makes a round trip and a burst of calls, and
//! prints what happened with a latency summary.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use shmrpc::{Client, Request, Server};
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The message both sides exchange.
#[shmrpc::message]
#[derive(Debug)]
struct Hello {
    text: String,
}

const NAME: &str = "shmrpc-quickstart";
const BURST: usize = 100_000;

fn main() {
    let role = std::env::args().nth(1);
    let run = match role.as_deref() {
        Some("server") => run_server(),
        Some("client") => run_client(),
        _ => run_both(),
    };
    if let Err(e) = run {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The parent: starts the server process, then the client process, then stops the server.
fn run_both() -> Result<(), Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    let mut server = Command::new(&exe)
        .arg("server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(server.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?;
    print!("[server pid {}] {line}", server.id());
    let client = Command::new(&exe).arg("client").status()?;
    drop(server.stdin.take()); // the server stops when its stdin closes
    line.clear();
    out.read_line(&mut line)?;
    print!("[server pid {}] {line}", server.id());
    server.wait()?;
    if !client.success() {
        return Err("the client process failed".into());
    }
    Ok(())
}

fn run_server() -> Result<(), Box<dyn std::error::Error>> {
    let server = Server::builder(NAME).serve(|req: Request<'_, Hello>| Hello {
        text: format!("hi, {}", req.text),
    })?;
    println!(
        "serving {NAME:?}: 1 worker, {} bytes per message in a slot, {} MiB at most",
        server.max_payload(),
        server.max_message() >> 20
    );
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink)?;
    let served = server.served();
    drop(server);
    println!("stopped after serving {served} requests; name removed");
    Ok(())
}

fn run_client() -> Result<(), Box<dyn std::error::Error>> {
    let pid = std::process::id();
    let client = Client::connect(NAME)?;
    let t0 = Instant::now();
    let reply = client.request(&Hello {
        text: "server".into(),
    })?;
    println!(
        "[client pid {pid}] first round trip: {:?} -> {:?} (call id {}) in {:?}",
        "server",
        reply.text.as_str(),
        reply.id(),
        t0.elapsed()
    );
    drop(reply);

    let msg = Hello {
        text: "burst".into(),
    };
    let mut times = Vec::with_capacity(BURST);
    let start = Instant::now();
    for _ in 0..BURST {
        let t = Instant::now();
        let reply = client.request_timeout(&msg, Duration::from_secs(5))?;
        assert_eq!(reply.text, "hi, burst");
        drop(reply);
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "[client pid {pid}] burst of {BURST} calls in {total:?}: {:.0} calls/s, \
         round trip p50 {:?}, p99 {:?}, max {:?}",
        BURST as f64 / total.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        times[times.len() - 1]
    );
    Ok(())
}
