//! Faults: client processes killed mid-call, killed servers, a rogue writer scribbling over
//! the mapping, and the mapping's permissions. Every peer here is a real process, killed with
//! SIGKILL; every wait is bounded.

mod common;

use common::{
    echo, read_line, say, start_server, unique_name, wait_for_stats, wait_for_stdin_eof, Echo,
    Gate, Proc, Rng, ROLE,
};
use shmrpc::{Client, Error, Server, SlotState, Trust};
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
#[cfg(unix)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The path of a server's mapping, for the raw-access children.
#[cfg(unix)]
fn object_path(name: &str) -> String {
    format!(
        "/dev/shm/shmrpc.{}.{name}",
        rustix::process::geteuid().as_raw()
    )
}

/// Maps a server's mapping read-write, outside the library: what a buggy or hostile peer of
/// the same user can do.
#[cfg(unix)]
fn raw_map(name: &str) -> (*mut u8, usize) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(object_path(name))
        .unwrap();
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a fresh shared mapping of the whole file; this process only touches it through
    // atomics and volatile writes.
    let ptr = unsafe {
        rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::SHARED,
            &file,
            0,
        )
        .unwrap()
    };
    (ptr.cast(), len)
}

#[cfg(unix)]
fn word64(base: *mut u8, offset: usize) -> &'static AtomicU64 {
    // SAFETY: `offset` is 8-aligned and inside the mapping, which stays mapped until exit.
    unsafe { &*base.add(offset).cast::<AtomicU64>() }
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Entry point of every child process; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    match args[..] {
        ["echo-server", name, workers, slots, trust] => {
            let trust = if trust == "untrusted" {
                Trust::Untrusted
            } else {
                Trust::Trusted
            };
            let server = Server::builder(name)
                .workers(workers.parse().unwrap())
                .slots(slots.parse().unwrap())
                .capacity(256 << 10)
                .trust(trust)
                .serve(echo)
                .unwrap();
            say("ready".into());
            wait_for_stdin_eof();
            drop(server);
            say("stopped".into());
        }
        // One slot, two workers; a call with text "hold" says "held" and waits for a "go".
        ["held-server", name] => {
            let go = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
            let handler_go = go.clone();
            let server = Server::builder(name)
                .slots(1)
                .workers(2)
                .serve(move |req: shmrpc::Request<'_, Echo>| {
                    if req.text == "hold" {
                        say("held".into());
                        let (lock, changed) = &*handler_go;
                        let mut gone = lock.lock().unwrap();
                        while !*gone {
                            gone = changed.wait(gone).unwrap();
                        }
                    }
                    echo(req)
                })
                .unwrap();
            say("ready".into());
            assert_eq!(read_line(), "go");
            *go.0.lock().unwrap() = true;
            go.1.notify_all();
            wait_for_stdin_eof();
            drop(server);
            say("stopped".into());
        }
        // Killed while it holds its reply (the slot is in REPLY, owned by this process).
        ["hold-reply", name] => {
            let client = Client::<Echo>::connect(name).unwrap();
            let reply = client.request(&Echo::new(1, "hold")).unwrap();
            say("holding".into());
            let _keep = reply;
            sleep_forever();
        }
        // Killed while it waits for the reply (REQUEST or SERVING).
        ["wait-reply", name] => {
            let client = Client::<Echo>::connect(name).unwrap();
            say("calling".into());
            let mut slow = Echo::new(1, "slow");
            slow.sleep_ms = 400;
            let _ = client.request(&slow);
            sleep_forever();
        }
        // Stops itself (then is killed) right after its claim, in the middle of writing its
        // request into the slot.
        ["gated-write", name] => {
            let client = Client::<Echo>::connect(name).unwrap();
            let mut gated = Echo::new(1, "gated");
            gated.gate = Gate::STOP;
            let _ = client.request(&gated);
            sleep_forever();
        }
        // Calls in a loop for `secs`, checking every reply; reports the count of bad replies.
        ["looper", name, tag, secs] => {
            let client = Client::builder(name)
                .timeout(Duration::from_secs(5))
                .connect::<Echo, Echo>()
                .unwrap();
            let until = Instant::now() + Duration::from_secs(secs.parse().unwrap());
            let (mut calls, mut bad, mut errors) = (0u64, 0u64, 0u64);
            say("started".into());
            while Instant::now() < until {
                let text = format!("{tag}/{calls}");
                match client.request(&Echo::new(calls, text.clone())) {
                    Ok(r) => {
                        if r.n != calls || r.text != format!("re:{text}") {
                            bad += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
                calls += 1;
            }
            say(format!("result calls={calls} bad={bad} errors={errors}"));
        }
        // Writes random bytes, state words, lengths and bitmap bits all over the mapping.
        #[cfg(unix)]
        ["rogue", name, millis, seed] => {
            let (base, len) = raw_map(name);
            let mut rng = Rng(seed.parse().unwrap());
            let until = Instant::now() + Duration::from_millis(millis.parse().unwrap());
            let mut writes = 0u64;
            while Instant::now() < until {
                for _ in 0..64 {
                    let offset = rng.below(len) & !7;
                    let value = match rng.below(4) {
                        0 => rng.next(),
                        1 => (rng.below(8) as u64) << (8 * rng.below(4)),
                        2 => u64::MAX,
                        _ => 0,
                    };
                    word64(base, offset).store(value, Ordering::Relaxed);
                    writes += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            say(format!("result writes={writes}"));
        }
        // Sets slot 0's ready bit with no call published there (a stray bit, as a reaped
        // request can leave behind), then reports when a worker has taken it.
        #[cfg(unix)]
        ["stray-bit", name] => {
            let (base, _) = raw_map(name);
            let ready = word64(base, std::mem::offset_of!(shmrpc::layout::Header, ready));
            ready.fetch_or(1, Ordering::SeqCst);
            say("set".into());
            let until = Instant::now() + Duration::from_secs(10);
            while ready.load(Ordering::SeqCst) & 1 != 0 {
                assert!(Instant::now() < until, "no worker took the stray bit");
                std::thread::yield_now();
            }
            say("taken".into());
        }
        _ => panic!("unknown child role {role:?}"),
    }
}

/// Waits until `client` gets a reply again, at most `limit`; returns how long it took.
fn time_until_served(client: &Client<Echo>, limit: Duration) -> Duration {
    let t0 = Instant::now();
    let reply = client
        .request_timeout(&Echo::new(42, "after"), limit)
        .unwrap_or_else(|e| panic!("no slot came back within {limit:?}: {e}"));
    assert_eq!(reply.n, 42);
    t0.elapsed()
}

/// A client process killed at each point of a call (mid-write right after its claim, waiting
/// while its call is served, holding the reply) costs nobody anything: its slot (the only
/// one) is reclaimed within a second and the next caller is served. Fails if the reaper
/// misses a state.
#[test]
fn client_killed_at_any_point_of_a_call_has_its_slot_reclaimed_within_a_second() {
    let mut worst = Duration::ZERO;
    for (role, line, state) in [
        ("gated-write", "writing", SlotState::Claimed),
        ("wait-reply", "calling", SlotState::Serving),
        ("hold-reply", "holding", SlotState::Replied),
    ] {
        let name = unique_name(role);
        let _server = Server::builder(&name).slots(1).serve(echo).unwrap();
        let client = Client::<Echo>::connect(&name).unwrap();
        let mut child = Proc::spawn(&[role, &name]);
        assert_eq!(child.line(), line);
        wait_for_stats(&name, "the child's call in its slot", |s| {
            s.in_use.len() == 1 && s.in_use[0].state == state
        });
        child.child.kill().unwrap();
        child.child.wait().unwrap();
        let took = time_until_served(&client, Duration::from_secs(3));
        println!("{role}: slot back and served {took:?} after the kill");
        assert!(took < Duration::from_secs(1), "{role}: took {took:?}");
        worst = worst.max(took);
    }
    println!("longest time to reclaim a slot: {worst:?}");
}

/// Under load, client processes are killed at random and replaced; every survivor gets
/// exactly its own replies, and afterwards every slot is free again (the server never
/// stalled and leaked nothing). Fails on a mixed-up reply or a leaked slot.
#[test]
fn random_client_kills_under_load_cost_the_survivors_nothing() {
    const SLOTS: u32 = 4;
    let name = unique_name("kills");
    let mut server = start_server(&["echo-server", &name, "2", &SLOTS.to_string(), "trusted"]);
    let mut rng = Rng(0x5eed);
    let survivors: Vec<Proc> = (0..2)
        .map(|i| Proc::spawn(&["looper", &name, &format!("s{i}"), "4"]))
        .collect();
    let mut victims: Vec<Proc> = Vec::new();
    let mut kills = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let mut v = Proc::spawn(&["looper", &name, "v", "30"]);
        assert_eq!(v.line(), "started");
        std::thread::sleep(Duration::from_millis(5 + rng.below(60) as u64));
        v.child.kill().unwrap();
        v.child.wait().unwrap();
        kills += 1;
        victims.push(v);
    }
    for mut s in survivors {
        assert_eq!(s.line(), "started");
        let result = s.line();
        assert!(result.ends_with("bad=0 errors=0"), "{result}");
        assert!(s.finish(Duration::from_secs(10)));
    }
    // Every slot can be held at once again: nothing leaked. Each held reply keeps its slot,
    // so the last call needs the last free slot.
    let client = Client::<Echo>::connect(&name).unwrap();
    let mut held = Vec::new();
    for i in 0..u64::from(SLOTS) {
        match client.request_timeout(&Echo::new(i, "all"), Duration::from_secs(3)) {
            Ok(reply) => held.push(reply),
            Err(e) => panic!("slot {i} of {SLOTS} never came back: {e}"),
        }
    }
    assert!(held.iter().enumerate().all(|(i, r)| r.n == i as u64));
    drop(held);
    println!("client processes killed: {kills}");
    assert!(kills >= 10);
    assert!(server.finish(Duration::from_secs(10)));
}

/// A server killed with SIGKILL: every waiting caller gets `ServerGone` within 250 ms, new calls
/// fail fast, and a new server under the same name starts with no cleanup and is reached by
/// the old handles on their next call.
#[test]
fn killed_server_is_reported_fast_and_a_restarted_one_is_reached_by_old_handles() {
    let name = unique_name("srvkill");
    let mut server = start_server(&["echo-server", &name, "2", "8", "trusted"]);
    let client = Client::<Echo>::connect(&name).unwrap();
    let waiters: Vec<_> = (0..4)
        .map(|i| {
            let client = client.clone();
            std::thread::spawn(move || {
                let mut slow = Echo::new(i, "slow");
                slow.sleep_ms = if i < 2 { 10_000 } else { 0 };
                // Two wait in the handler, two wait for a slot behind them or for a reply.
                let r = client.request_timeout(&slow, Duration::from_secs(30));
                (r.map(|_| ()), Instant::now())
            })
        })
        .collect();
    // Both 10 s calls are being served (so at least they are waiting when the server dies)...
    wait_for_stats(&name, "both slow calls served", |s| {
        s.in_use
            .iter()
            .filter(|u| u.state == SlotState::Serving)
            .count()
            == 2
    });
    // ...and the kill comes off the 50 ms rhythm of the callers' parks (a phase offset, not a
    // synchronization), so the figure is not a lucky alignment.
    std::thread::sleep(Duration::from_millis(25));
    server.child.kill().unwrap();
    let killed_at = Instant::now();
    server.child.wait().unwrap();
    let mut worst = Duration::ZERO;
    let mut gone = 0;
    for w in waiters {
        let (result, at) = w.join().unwrap();
        if let Err(e) = result {
            gone += 1;
            assert!(matches!(e, Error::ServerGone { .. }), "{e}");
            assert!(at > killed_at, "ServerGone before the server was killed");
            let took = at.duration_since(killed_at);
            println!("a waiting caller got ServerGone {took:?} after the kill");
            worst = worst.max(took);
        }
    }
    // Not vacuous: at least the two callers inside 10 s handlers were waiting.
    assert!(gone >= 2, "only {gone} callers got ServerGone");
    println!("longest time to ServerGone: {worst:?}");
    assert!(
        worst < Duration::from_millis(250),
        "ServerGone after {worst:?}"
    );
    let t0 = Instant::now();
    assert!(matches!(
        client.request(&Echo::new(9, "x")),
        Err(Error::ServerGone { .. })
    ));
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    // Restart with no cleanup; the old handle (and its clones) reach the new server.
    let mut again = start_server(&["echo-server", &name, "1", "8", "trusted"]);
    let reply = client.request(&Echo::new(10, "back")).unwrap();
    assert_eq!((reply.n.to_native(), reply.text.as_str()), (10, "re:back"));
    drop(reply);
    assert!(again.finish(Duration::from_secs(10)));
}

/// A handle that still holds a killed server's mapping must not make a new `connect` under the
/// same name reuse it: the new handle reaches the restarted server on its first call.
#[test]
fn connect_after_a_restart_reaches_the_new_server_while_old_handles_live() {
    let name = unique_name("reconnect");
    let mut first = start_server(&["echo-server", &name, "1", "8", "trusted"]);
    let old = Client::<Echo>::connect(&name).unwrap();
    assert_eq!(old.request(&Echo::new(1, "a")).unwrap().n, 1);
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    // Killed by SIGKILL: the old mapping still says RUNNING; only the pid tells.
    assert!(matches!(
        Client::<Echo>::connect(&name),
        Err(Error::NotFound { .. })
    ));
    let mut again = start_server(&["echo-server", &name, "1", "8", "trusted"]);
    let fresh = Client::<Echo>::connect(&name).unwrap();
    let t0 = Instant::now();
    let reply = fresh.request(&Echo::new(2, "b")).unwrap();
    assert_eq!(reply.n, 2);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    drop(reply);
    drop(old);
    assert!(again.finish(Duration::from_secs(10)));
}

/// A rogue process with write access scribbles over the header, the slots, state words,
/// lengths, payloads and the ready bitmap while clients call an untrusted-mode server. The
/// server never panics or hangs (it answers afterwards and stops cleanly); callers get their
/// own reply or a clear error, never someone else's reply.
#[test]
#[cfg(unix)] // the rogue maps the file with mmap
fn rogue_writer_cannot_crash_the_server_or_mix_up_replies() {
    let name = unique_name("rogue");
    let mut server = start_server(&["echo-server", &name, "2", "8", "untrusted"]);
    let client = Client::builder(&name)
        .trust(Trust::Untrusted)
        .timeout(Duration::from_millis(300))
        .connect::<Echo, Echo>()
        .unwrap();
    let mut rogue = Proc::spawn(&["rogue", &name, "2000", "12345"]);
    let (ok, errors, wrong) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (client, ok, errors, wrong) = (&client, &ok, &errors, &wrong);
            s.spawn(move || {
                let until = Instant::now() + Duration::from_millis(2200);
                let mut i = 0u64;
                while Instant::now() < until {
                    let n = (t << 32) | i;
                    let text = format!("{t}:{i}");
                    match client.request(&Echo::new(n, text.clone())) {
                        Ok(r) if r.n == n && r.text == format!("re:{text}") => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(
                            Error::Timeout { .. }
                            | Error::BadMessage(_)
                            | Error::ServerGone { .. }
                            | Error::HandlerPanicked
                            | Error::CallLost { .. }
                            | Error::TypeMismatch { .. }
                            | Error::PayloadTooLarge { .. },
                        ) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("unexpected error kind: {e}"),
                    }
                    i += 1;
                }
            });
        }
    });
    let writes = rogue.line();
    assert!(rogue.finish(Duration::from_secs(10)));
    println!(
        "rogue {writes}; calls ok={} clear errors={} wrong replies={}",
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed)
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0);
    // Not vacuous: calls did go through while the rogue wrote.
    assert!(ok.load(Ordering::Relaxed) > 0, "no call succeeded at all");
    // The server process is alive, not hung: it stops on request, cleanly, without a panic.
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server process died"
    );
    drop(server.child.stdin.take());
    assert_eq!(server.line(), "stopped");
    assert!(
        server.finish(Duration::from_secs(10)),
        "the server exited with an error"
    );
}

/// A client gives up (timeout) on a call that a worker is serving; then a peer process sets
/// that slot's ready bit, which leads the server's second worker to the slot. That worker must
/// leave the slot to the one serving it: had it freed it, the next call would run in the slot
/// while the first worker's late reply is still to be written there, and take that reply as
/// its own. With one slot, a caller can only get the slot back once the first worker is done:
/// until then it times out. (The server is a child, killed if this fails: a server whose slot
/// was freed under a worker need not stop cleanly.)
#[test]
#[cfg(unix)] // the peer maps the file with mmap
fn a_stray_ready_bit_never_frees_a_slot_under_its_serving_worker() {
    let name = unique_name("straybit");
    let mut server = start_server(&["held-server", &name]);
    let client = Client::<Echo>::connect(&name).unwrap();
    let gave_up = std::thread::scope(|s| {
        let call =
            s.spawn(|| client.request_timeout(&Echo::new(1, "hold"), Duration::from_secs(1)));
        // The worker has the call (SERVING) before its deadline passes.
        assert_eq!(server.line(), "held");
        call.join().unwrap().map(|r| r.n)
    });
    assert!(matches!(gave_up, Err(Error::Timeout { .. })), "{gave_up:?}");
    wait_for_stats(&name, "the given-up call still held by its worker", |s| {
        s.in_use.len() == 1 && s.in_use[0].state == SlotState::Abandoned
    });
    let mut peer = Proc::spawn(&["stray-bit", &name]);
    assert_eq!(peer.line(), "set");
    assert_eq!(peer.line(), "taken");
    assert!(peer.finish(Duration::from_secs(10)));
    let meanwhile = client
        .request_timeout(&Echo::new(2, "meanwhile"), Duration::from_millis(300))
        .map(|r| r.n);
    assert!(
        matches!(meanwhile, Err(Error::Timeout { .. })),
        "the slot was freed under its serving worker: a call got it meanwhile ({meanwhile:?})"
    );
    server.tell("go");
    let took = time_until_served(&client, Duration::from_secs(3));
    println!("served {took:?} after the held handler returned");
    drop(server.child.stdin.take());
    assert_eq!(server.line(), "stopped");
    assert!(server.finish(Duration::from_secs(10)));
}

/// The mapping and the name lock are created with mode 0600, whatever the umask.
#[test]
#[cfg(unix)] // Windows' owner-only access lists: tests/windows.rs
fn mapping_is_created_owner_read_write_only() {
    let name = unique_name("perm");
    // umask is process-wide: other tests creating files meanwhile get wider modes, harmless.
    let old = rustix::process::umask(rustix::fs::Mode::empty());
    let server = Server::builder(&name).serve(echo);
    rustix::process::umask(old);
    let _server = server.unwrap();
    for path in [object_path(&name), format!("{}.lock", object_path(&name))] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{path}");
    }
}

/// Bad input changes nothing: after each typed error the server under that name still serves.
#[test]
fn bad_input_gets_a_typed_error_and_changes_nothing() {
    let name = unique_name("badinput");
    let _server = Server::builder(&name)
        .capacity(256 << 10)
        .large_memory(1 << 20)
        .serve(echo)
        .unwrap();
    let client = Client::<Echo>::connect(&name).unwrap();
    let max = client.max_message();
    for bad in ["", "a/b", &"n".repeat(300)] {
        assert!(matches!(
            Server::builder(bad).serve(echo),
            Err(Error::InvalidName { .. })
        ));
    }
    for capacity in [0, usize::MAX] {
        assert!(matches!(
            Server::builder(&name).capacity(capacity).serve(echo),
            Err(Error::InvalidConfig(_))
        ));
    }
    assert!(matches!(
        Server::builder(&name).serve(echo),
        Err(Error::AddrInUse { .. })
    ));
    let huge = Echo::new(1, "x".repeat(max + 1));
    assert!(matches!(
        client.request(&huge),
        Err(Error::PayloadTooLarge { max: m, .. }) if m == max
    ));
    assert_eq!(client.request(&Echo::new(5, "still")).unwrap().n, 5);
}
