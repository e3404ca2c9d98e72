//! Probe: how far a call's service order falls behind its arrival order.
use shmrpc::{Client, Request, Server};
use std::sync::atomic::{AtomicU64, Ordering};

static SERVED: AtomicU64 = AtomicU64::new(0);

fn stamp(_req: Request<'_, u64>) -> u64 {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_micros(20) {}
    SERVED.fetch_add(1, Ordering::SeqCst)
}

#[test]
fn probe() {
    let name = format!("fair{}", std::process::id());
    let _server = Server::builder(name.as_str())
        .slots(4)
        .workers(1)
        .serve(stamp)
        .unwrap();
    let arrivals = AtomicU64::new(0);
    let worst = AtomicU64::new(0);
    let over = AtomicU64::new(0);
    let total = 20000;
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let client = Client::<u64, u64>::connect(&name).unwrap();
                loop {
                    let a = arrivals.fetch_add(1, Ordering::SeqCst);
                    if a >= total {
                        break;
                    }
                    let s = *client.request(&a).unwrap();
                    let lag = s.to_native().saturating_sub(a);
                    worst.fetch_max(lag, Ordering::SeqCst);
                    if lag > 64 {
                        over.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    println!(
        "worst lag {} over64 {}",
        worst.load(Ordering::SeqCst),
        over.load(Ordering::SeqCst)
    );
}
