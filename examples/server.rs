//! The server half: serves "TestRpcServer" until Ctrl-C, which stops it cleanly and removes
//! the name. Run `cargo run --release --example client` in another terminal.

use shmrpc::{Request, Server};

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
    let server = Server::builder("TestRpcServer")
        .capacity(1 << 20)
        .workers(2)
        .serve(|req: Request<'_, Hello>| {
            println!("request {}: {:?}", req.id(), req.text.as_str());
            Hello {
                text: format!("hi, {}", req.text),
            }
        })?;
    let stop = server.stop_handle();
    ctrlc::set_handler(move || stop.stop())?;
    println!("serving \"TestRpcServer\"; Ctrl-C stops");
    server.join();
    println!("stopped; the name is removed");
    Ok(())
}
