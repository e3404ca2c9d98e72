//! The client half: sends its arguments (or "server") to "TestRpcServer" and prints the reply.
//! Start `cargo run --release --example server` first.

use shmrpc::Client;
use std::time::Duration;

/// The message both sides exchange.
#[shmrpc::message]
#[derive(Debug)]
struct Hello {
    text: String,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let text = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let text = if text.is_empty() {
        "server".into()
    } else {
        text
    };
    let client = Client::connect("TestRpcServer")?;
    let reply = client.request_timeout(&Hello { text }, Duration::from_secs(5))?;
    println!("reply {}: {:?}", reply.id(), reply.text.as_str());
    let owned: Hello = reply.deserialize()?;
    drop(reply);
    println!("owned copy: {owned:?}");
    Ok(())
}
