//! The exposing half: a local shmrpc server, "zenoh-demo", and a bridge that serves it to other
//! hosts under the key `shmrpc/demo/zenoh-demo`, listening on `tcp/127.0.0.1:7447` (or the
//! endpoint given as the first argument, such as `tcp/0.0.0.0:7447`). Ctrl-C stops both.
//!
//! Run `cargo run --release -p shmrpc-zenoh --example remote_call` in another terminal (or on
//! another host, with the endpoint of this one as its argument).

use shmrpc::{Request, Server};
use shmrpc_zenoh::{config, Bridge};

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp/127.0.0.1:7447".into());
    let server = Server::builder("zenoh-demo").serve(|req: Request<'_, String>| {
        println!("request {}: {:?}", req.id(), req.as_str());
        format!("hi, {} (from {})", req.as_str(), std::process::id())
    })?;
    let bridge = Bridge::builder("zenoh-demo")
        .key("shmrpc/demo/zenoh-demo")
        .config(config::peer(&[&listen], &[])?)
        .start()?;
    println!(
        "serving \"zenoh-demo\" as {} on {listen}; Ctrl-C stops",
        bridge.key()
    );
    let stop = server.stop_handle();
    ctrlc::set_handler(move || stop.stop())?;
    server.join();
    drop(bridge);
    println!("stopped");
    Ok(())
}
