//! `shmrpc`: list, inspect, ping, benchmark and clean up the shmrpc servers of this user.
//!
//! Every failure is one line on stderr (clap's usage message for bad arguments) and a non-zero
//! exit: [`EXIT_CODES`] says which, and `--help` prints it.

use clap::{Parser, Subcommand};
use shmrpc::{Client, Error, Histogram, Request, Server, SlotState, Stats, StatsView};
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "shmrpc",
    version,
    about = "Inspect and exercise shmrpc servers",
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The servers of this user on this machine, each marked alive or stale.
    List,
    /// A server's statistics and the slots in use with their owner pids.
    Stat {
        /// The server name.
        name: String,
        /// Refresh in place until interrupted.
        #[arg(long)]
        watch: bool,
        /// Milliseconds between refreshes with --watch.
        #[arg(long, default_value_t = 1000)]
        interval: u64,
    },
    /// A protocol-level ping (no handler runs), with round-trip times.
    Ping {
        /// The server name.
        name: String,
        /// Number of pings.
        #[arg(long, short = 'c', default_value_t = 10)]
        count: u32,
        /// Milliseconds between pings.
        #[arg(long, default_value_t = 100)]
        interval: u64,
    },
    /// Starts its own server and clients, prints a latency histogram and the throughput.
    Bench {
        /// Bytes of each request and reply.
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Client threads.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 3.0)]
        duration: f64,
    },
    /// Removes the mappings of dead servers (never a live one) and says what it removed.
    Clean,
    /// Serves the local server NAME to other hosts over Zenoh until interrupted (or killed).
    #[cfg(feature = "bridge")]
    Bridge(BridgeArgs),
}

/// `shmrpc bridge`'s arguments.
#[cfg(feature = "bridge")]
#[derive(clap::Args)]
struct BridgeArgs {
    /// The local server's name.
    name: String,
    /// The key expression to expose it under (default: shmrpc/<host>/<name>).
    #[arg(long)]
    key: Option<String>,
    /// A Zenoh configuration file (JSON5 or YAML); the flags below are applied on top.
    #[arg(long)]
    config: Option<String>,
    /// An endpoint to listen on, such as tcp/0.0.0.0:7447 (repeatable). With --listen or
    /// --connect, the session is a peer with multicast scouting off.
    #[arg(long)]
    listen: Vec<String>,
    /// An endpoint to connect to (repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// TLS: the CA certificate (PEM) that peers' certificates chain to.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<String>,
    /// TLS: this bridge's certificate (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<String>,
    /// TLS: this bridge's private key (PEM).
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<String>,
    /// TLS: require and check callers' certificates too (mutual TLS).
    #[arg(long, requires = "tls_ca")]
    mtls: bool,
    /// Calls forwarded at once.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// How long Zenoh's callback may wait for a call it makes itself while the bridge carries
    /// no other, in microseconds (0: never; longer calls go on in a forwarding thread).
    #[arg(long, default_value_t = 200)]
    inline_wait_us: u64,
}

/// The exit-code convention, printed by `--help` (README.md says the same).
const EXIT_CODES: &str = "Exit status: 0 on success; 1 for bad arguments or input, or a missing \
or stale server; 2 for a permission problem; 3 for anything else.";
/// Exit status for bad arguments or input, or a missing or stale server.
const EXIT_BAD_INPUT: u8 = 1;
/// Exit status for a permission problem.
const EXIT_PERMISSION: u8 = 2;
/// Exit status for any other failure.
const EXIT_OTHER: u8 = 3;

/// A one-line failure and its exit code.
struct Fail(String, u8);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                EXIT_PERMISSION
            }
            Error::ForeignObject { .. } => EXIT_PERMISSION,
            Error::NotFound { .. }
            | Error::InvalidName { .. }
            | Error::InvalidConfig(_)
            | Error::PayloadTooLarge { .. }
            | Error::ServerGone { .. } => EXIT_BAD_INPUT,
            _ => EXIT_OTHER,
        };
        Fail(e.to_string(), code)
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` are "errors" that print to stdout: exit 0. Anything else
        // clap rejects is bad input (clap itself would exit 2, our permission code).
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::List => list(),
        Command::Stat {
            name,
            watch,
            interval,
        } => stat(&name, watch, Duration::from_millis(interval)),
        Command::Ping {
            name,
            count,
            interval,
        } => ping(&name, count, Duration::from_millis(interval)),
        Command::Bench {
            payload,
            clients,
            duration,
        } => bench(payload, clients, duration),
        Command::Clean => clean(),
        #[cfg(feature = "bridge")]
        Command::Bridge(args) => bridge(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg, code)) => {
            eprintln!("shmrpc: {msg}");
            ExitCode::from(code)
        }
    }
}

fn list() -> Result<(), Fail> {
    let servers = shmrpc::list()?;
    if servers.is_empty() {
        println!("no shmrpc servers for this user");
        return Ok(());
    }
    println!("{:<32} {:>8}  STATE", "NAME", "PID");
    for s in servers {
        let pid = s.pid.map_or("-".to_string(), |p| p.to_string());
        let mut state = if s.alive {
            "alive".to_string()
        } else {
            "stale (`shmrpc clean` removes it)".to_string()
        };
        if let Some(v) = s.layout_version.filter(|&v| v != shmrpc::LAYOUT_VERSION) {
            state.push_str(&format!(
                " [layout v{v}: another shmrpc version, this tool reads v{}]",
                shmrpc::LAYOUT_VERSION
            ));
        }
        println!("{:<32} {:>8}  {state}", s.name, pid);
    }
    Ok(())
}

/// Opens the statistics of `name`, failing with one clear line if it is missing or stale.
fn open_live(name: &str) -> Result<StatsView, Fail> {
    let view = match StatsView::open(name) {
        Ok(v) => v,
        Err(Error::NotFound { .. }) => {
            return Err(Fail(
                format!("no server named {name:?} (see `shmrpc list`)"),
                EXIT_BAD_INPUT,
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let s = view.stats();
    if !s.alive {
        return Err(Fail(
            format!(
                "server {name:?} is stale: its process {} is gone (`shmrpc clean` removes it)",
                s.server_pid
            ),
            EXIT_BAD_INPUT,
        ));
    }
    Ok(view)
}

fn stat(name: &str, watch: bool, interval: Duration) -> Result<(), Fail> {
    let view = open_live(name)?;
    if !watch {
        print!("{}", render(name, &view.stats()));
        return Ok(());
    }
    let mut out = std::io::stdout();
    loop {
        let s = view.stats();
        // Home the cursor and clear the screen, then draw: the table refreshes in place.
        let _ = write!(out, "\x1b[H\x1b[2J{}", render(name, &s));
        let _ = out.flush();
        if !s.alive {
            return Err(Fail(
                format!("server {name:?} stopped or died"),
                EXIT_BAD_INPUT,
            ));
        }
        std::thread::sleep(interval);
    }
}

fn render(name: &str, s: &Stats) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let state = if s.alive { "alive" } else { "stopped" };
    let _ = writeln!(
        o,
        "server {name}  pid {}  {state}  {} slots of {} B ({} KiB mapping), messages up to {} KiB",
        s.server_pid,
        s.slots,
        s.max_payload,
        s.capacity / 1024,
        s.max_payload.max(s.large_memory) / 1024
    );
    let _ = writeln!(
        o,
        "served {}  in flight {}  slots in use {}  timeouts {}  abandoned {}  bad messages {}  \
         handler panics {}  reclaimed {}  waiting for a slot {}",
        s.served,
        s.in_flight,
        s.slots_in_use,
        s.timeouts,
        s.abandoned,
        s.bad_messages,
        s.handler_panics,
        s.reclaimed,
        s.free_waiters
    );
    let _ = writeln!(
        o,
        "large-message memory: {} KiB in use of {} KiB, waiting for it {}",
        s.large_in_use / 1024,
        s.large_memory / 1024,
        s.large_waiters
    );
    if let Some((slot, bytes)) = s.large_first {
        let _ = writeln!(
            o,
            "  slot {slot} has waited long for {} KiB and goes first",
            bytes / 1024
        );
    }
    if s.large_held_by_workers > 0 {
        let _ = writeln!(
            o,
            "  of which held by the server's workers (requests read while their reply is written): {} KiB",
            s.large_held_by_workers / 1024
        );
    }
    for (label, h) in [
        ("handler time", &s.handler_time),
        ("queueing time", &s.queue_time),
    ] {
        let _ = writeln!(o, "{label}: {}", quantiles(h));
        o.push_str(&bars(h));
    }
    if !s.in_use.is_empty() {
        // Slots per client process, against the share each may hold while others wait.
        let mut per: Vec<(u32, Option<u32>, u32)> = Vec::new();
        for u in &s.in_use {
            match per.iter_mut().find(|p| p.0 == u.owner_entry) {
                Some(p) => p.2 += 1,
                None => per.push((u.owner_entry, u.owner_pid, 1)),
            }
        }
        let share = match s.client_share {
            0 => "no limit".to_string(),
            n => format!("{n} while others wait"),
        };
        let _ = writeln!(o, "slots per client process (share: {share}):");
        for (entry, pid, n) in per {
            let pid = pid.map_or(String::new(), |p| format!(" (pid {p})"));
            let _ = writeln!(o, "  entry {entry:>4}{pid}: {n}");
        }
        let _ = writeln!(o, "slots in use:");
        for u in &s.in_use {
            let owner = match (u.owner_entry, u.owner_pid) {
                (0, _) => "no owner".to_string(),
                (e, Some(p)) => format!("process entry {e} (pid {p} in its namespace)"),
                (e, None) => format!("process entry {e}"),
            };
            let state = match u.state {
                SlotState::Claimed => "claimed",
                SlotState::Queued => "queued",
                SlotState::Serving => "serving",
                SlotState::Replied => "replied",
                SlotState::Abandoned => "abandoned",
                SlotState::Accepted => "accepted (one-way handler running)",
            };
            let large = if u.large_bytes > 0 {
                format!("  {} KiB of large-message memory", u.large_bytes / 1024)
            } else {
                String::new()
            };
            let _ = writeln!(o, "  slot {:>4}  {state:<10}  {owner}{large}", u.slot);
        }
    }
    o
}

fn quantiles(h: &Histogram) -> String {
    let q = |x| {
        h.quantile(x)
            .map_or("-".into(), |d| format!("<{}", human(d)))
    };
    format!(
        "{} samples, p50 {}, p90 {}, p99 {}",
        h.count(),
        q(0.5),
        q(0.9),
        q(0.99)
    )
}

/// The non-empty buckets as a bar chart.
fn bars(h: &Histogram) -> String {
    let max = h.buckets.iter().copied().max().unwrap_or(0).max(1);
    let mut o = String::new();
    for (b, &c) in h.buckets.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let (lo, hi) = Histogram::bucket_range(b);
        let hi = if hi == Duration::MAX {
            "...".to_string()
        } else {
            human(hi)
        };
        let width = (c * 40).div_ceil(max) as usize;
        o.push_str(&format!(
            "  {:>8} - {:<8} {:>10}  {}\n",
            human(lo),
            hi,
            c,
            "#".repeat(width)
        ));
    }
    o
}

fn human(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else {
        format!("{:.2} s", ns as f64 / 1e9)
    }
}

fn ping(name: &str, count: u32, interval: Duration) -> Result<(), Fail> {
    open_live(name)?;
    let client: Client<Vec<u8>> = Client::builder(name)
        .timeout(Duration::from_secs(2))
        .connect()?;
    let mut times = Vec::with_capacity(count as usize);
    for seq in 0..count {
        if seq > 0 {
            std::thread::sleep(interval);
        }
        let rtt = client.ping()?;
        println!("pong from {name}: seq={seq} time={}", human(rtt));
        times.push(rtt);
    }
    times.sort();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        println!(
            "{} pings: min {}, p50 {}, p99 {}, max {}",
            times.len(),
            human(*min),
            human(at(0.5)),
            human(at(0.99)),
            human(*max)
        );
    }
    Ok(())
}

fn bench(payload: usize, clients: usize, duration: f64) -> Result<(), Fail> {
    if clients == 0 || clients > 1024 || !(0.1..=3600.0).contains(&duration) {
        return Err(Fail(
            "--clients must be in 1..=1024 and --duration in 0.1..=3600 seconds".into(),
            EXIT_BAD_INPUT,
        ));
    }
    let name = format!("shmrpc-bench-{}", std::process::id());
    // Room for the payload both ways (plus the archive's few bytes of framing) in each slot.
    let slots = clients.clamp(1, 64) as u32;
    let per_slot = (payload + 256).next_power_of_two().max(1024);
    let capacity = (per_slot * slots as usize + 4096)
        .next_multiple_of(4096)
        .clamp(64 * 1024, 256 << 20);
    let server = Server::builder(&name)
        .capacity(capacity)
        .slots(slots)
        .serve(|req: Request<'_, Vec<u8>>| req.as_slice().to_vec())?;
    let client: Client<Vec<u8>> = Client::connect(&name)?;
    let run_for = Duration::from_secs_f64(duration);
    let stop = Arc::new(AtomicBool::new(false));
    let bar = indicatif::ProgressBar::new(run_for.as_millis() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
            .expect("a valid template"),
    );
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let client = client.clone();
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || -> Result<hdrhistogram::Histogram<u64>, Error> {
                let msg = vec![7u8; payload];
                let mut hist =
                    hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                        .expect("valid bounds");
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let reply = client.request(&msg)?;
                    let ns = t0.elapsed().as_nanos() as u64;
                    if reply.len() != payload {
                        return Err(Error::BadMessage("the echo changed the payload".into()));
                    }
                    drop(reply);
                    hist.saturating_record(ns.max(1));
                }
                Ok(hist)
            })
        })
        .collect();
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(100));
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!("{} calls", server.stats().served));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .expect("valid bounds");
    for w in workers {
        let hist = w
            .join()
            .map_err(|_| Fail("a client thread panicked".into(), EXIT_OTHER))??;
        total
            .add(&hist)
            .map_err(|e| Fail(e.to_string(), EXIT_OTHER))?;
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    let stats = server.stats();
    drop(server);
    let calls = total.len();
    println!(
        "{clients} client thread(s), {payload} B each way, {:.1} s: {calls} calls, {:.0} calls/s",
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64()
    );
    let q = |p: f64| human(Duration::from_nanos(total.value_at_quantile(p)));
    println!(
        "round trip: min {}, p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
        human(Duration::from_nanos(total.min())),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        human(Duration::from_nanos(total.max()))
    );
    // The same run by power-of-two buckets, as the server's own histograms count.
    let mut buckets = Histogram::default();
    for v in total.iter_recorded() {
        let b = (63 - v.value_iterated_to().max(1).leading_zeros()) as usize;
        buckets.buckets[b.min(buckets.buckets.len() - 1)] += v.count_at_value();
    }
    println!("round-trip histogram:");
    print!("{}", bars(&buckets));
    println!("server handler time: {}", quantiles(&stats.handler_time));
    println!("server queueing time: {}", quantiles(&stats.queue_time));
    Ok(())
}

fn clean() -> Result<(), Fail> {
    let removed = shmrpc::clean()?;
    if removed.is_empty() {
        println!("nothing to clean: no stale shmrpc mappings");
    }
    for name in removed {
        println!("removed stale server {name}");
    }
    Ok(())
}

#[cfg(feature = "bridge")]
fn bridge(args: BridgeArgs) -> Result<(), Fail> {
    use shmrpc_zenoh::{config, Bridge, Error as ZError};
    let fail = |e: ZError| match e {
        ZError::Local(e) => Fail::from(e),
        e @ (ZError::InvalidKey { .. } | ZError::InvalidConfig(_)) => {
            Fail(e.to_string(), EXIT_BAD_INPUT)
        }
        e => Fail(e.to_string(), EXIT_OTHER),
    };
    let listen: Vec<&str> = args.listen.iter().map(String::as_str).collect();
    let connect: Vec<&str> = args.connect.iter().map(String::as_str).collect();
    let mut cfg = match (&args.config, listen.is_empty() && connect.is_empty()) {
        (Some(path), _) => config::from_file(path).map_err(fail)?,
        (None, true) => shmrpc_zenoh::zenoh::Config::default(),
        (None, false) => config::peer(&listen, &connect).map_err(fail)?,
    };
    if args.config.is_some() && !(listen.is_empty() && connect.is_empty()) {
        let on_top = config::peer(&listen, &connect).map_err(fail)?;
        for key in ["listen/endpoints", "connect/endpoints"] {
            if let Ok(v) = on_top.get_json(key) {
                cfg.insert_json5(key, &v)
                    .map_err(|e| Fail(format!("zenoh setting {key}: {e}"), EXIT_BAD_INPUT))?;
            }
        }
    }
    if let (Some(ca), Some(cert), Some(key)) = (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        let files = config::TlsFiles {
            root_ca: ca,
            certificate: cert,
            private_key: key,
        };
        config::tls(&mut cfg, &files, args.mtls).map_err(fail)?;
    }
    let mut builder = Bridge::builder(&args.name)
        .workers(args.workers)
        .inline_wait(std::time::Duration::from_micros(args.inline_wait_us))
        .config(cfg);
    if let Some(key) = &args.key {
        builder = builder.key(key.clone());
    }
    let bridge = builder.start().map_err(fail)?;
    println!("bridging {:?} as {}", bridge.name(), bridge.key());
    let _ = std::io::stdout().flush();
    // Until a signal ends the process: the bridge's threads do the work.
    loop {
        std::thread::park();
    }
}
