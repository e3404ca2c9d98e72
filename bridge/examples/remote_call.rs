//! The calling half: connects to the bridge of `expose` at `tcp/127.0.0.1:7447` (or the
//! endpoint given as the first argument) and calls the server behind it.

use shmrpc_zenoh::{config, RemoteClient};
use std::time::Duration;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let connect = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp/127.0.0.1:7447".into());
    let session = shmrpc_zenoh::open(config::peer(&[], &[&connect])?)?;
    let client = RemoteClient::builder("shmrpc/demo/zenoh-demo")
        .timeout(Duration::from_secs(5))
        .connect::<String, String>(&session)?;
    for who in ["Ada", "Grace", "Edsger"] {
        let reply = client.request(&who.to_string())?;
        println!("{}", reply.as_str());
    }
    println!("ping through the bridge: {:?}", client.ping()?);
    Ok(())
}
