//! Ownership and liveness (DESIGN.md, sections 3 and 6b): a slot is taken back only from a
//! client process that is provably dead (the kernel dropped its lock), never from one that is
//! stopped, paused, in another pid namespace, or whose liveness the server cannot read.
//! Every peer here is a real process; every wait is bounded and waits for something it can
//! observe (a line from a child, a stopped child, the server's statistics).
#![cfg(unix)]

mod common;

use common::{
    echo, read_line, say, signal, unique_name, wait_for_stats, wait_for_stdin_eof, wait_stopped,
    Echo, Gate, Proc, ROLE,
};
use shmrpc::{Client, Server, SlotState, Stats, StatsView};
use std::time::{Duration, Instant};

/// Reaper scans (100 ms apart) that a paused owner must survive: 1.2 s, twice the 600 ms
/// after which the old timer rule took the slot of an owner it could not identify.
const SCANS_WHILE_PAUSED: u64 = 12;

fn stats(name: &str) -> Stats {
    StatsView::open(name).unwrap().stats()
}

/// Makes calls through `client` (each must get its own reply) until the reaper has scanned
/// `scans` more times; returns how many calls were made.
fn call_through_scans(name: &str, client: &Client<Echo>, scans: u64) -> u64 {
    let until = stats(name).reaper_scans + scans;
    let mut calls = 0;
    let t0 = Instant::now();
    while stats(name).reaper_scans < until {
        let text = format!("other {calls}");
        let reply = client
            .request_timeout(&Echo::new(calls, text.clone()), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("another caller's call {calls} failed: {e}"));
        assert_eq!(
            (reply.n.to_native(), reply.text.as_str()),
            (calls, &*format!("re:{text}"))
        );
        calls += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the reaper stopped scanning"
        );
    }
    calls
}

/// Entry point of every child process; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    let check = |r: &shmrpc::Reply<'_, Echo>, n: u64, text: &str| {
        assert_eq!(r.n, n, "reply number");
        assert_eq!(r.text, format!("re:{text}"), "reply text");
        assert_eq!(r.id, *r.id().as_bytes(), "the reply is another call's");
    };
    match args[..] {
        // A call whose client is paused at `step`: "write" (right after its claim, mid-write:
        // the message stops its own process while it is serialized into the slot), "serve"
        // (published, while the handler runs), "hold" (holding its reply), "slot" (waiting
        // for a free slot). Prints "ok" if its own call completed correctly after the pause.
        ["paused", name, step] => {
            let client = Client::<Echo>::connect(name).unwrap();
            let mut msg = Echo::new(7, step);
            match step {
                "write" => msg.gate = Gate::STOP,
                "serve" => msg.sleep_ms = 300,
                _ => {}
            }
            say("calling".into());
            let reply = client
                .request_timeout(&msg, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("the paused call failed: {e}"));
            check(&reply, 7, step);
            if step == "hold" {
                say("holding".into());
                // The parent pauses us here, and tells us to go on once it resumed us.
                assert_eq!(read_line(), "go");
                check(&reply, 7, step);
            }
            drop(reply);
            say(format!("ok pid={}", std::process::id()));
            wait_for_stdin_eof();
        }
        // Connects, holds a reply until killed; prints its pid as it sees it.
        ["hold", name] => {
            let client = Client::<Echo>::connect(name)
                .unwrap_or_else(|e| panic!("cannot connect from here: {e}"));
            let reply = client.request(&Echo::new(3, "held")).unwrap();
            check(&reply, 3, "held");
            say(format!("holding pid={}", std::process::id()));
            let _keep = reply;
            wait_for_stdin_eof();
            std::process::exit(0);
        }
        // Waits (up to 60 s) for a free slot of a full server, until killed.
        ["wait-slot", name] => {
            let client = Client::<Echo>::connect(name).unwrap();
            say("calling".into());
            let r = client.request_timeout(&Echo::new(1, "late"), Duration::from_secs(60));
            say(format!("result {:?}", r.map(|r| r.n)));
            wait_for_stdin_eof();
        }
        // `threads` threads call once each and keep their replies (a leak), until killed.
        ["leaker", name, threads] => {
            let client = Client::<Echo>::connect(name).unwrap();
            say("started".into());
            std::thread::scope(|s| {
                for t in 0..threads.parse::<u64>().unwrap() {
                    let client = &client;
                    s.spawn(move || {
                        if let Ok(reply) =
                            client.request_timeout(&Echo::new(t, "leak"), Duration::from_secs(60))
                        {
                            std::mem::forget(reply);
                        }
                    });
                }
            });
            wait_for_stdin_eof();
        }
        // The same with async calls (one future per thread, on a one-crate executor).
        ["async-leaker", name, threads] => {
            let client = Client::<Echo>::connect(name).unwrap();
            say("started".into());
            std::thread::scope(|s| {
                for t in 0..threads.parse::<u64>().unwrap() {
                    let client = &client;
                    s.spawn(move || {
                        let msg = Echo::new(t, "leak");
                        let call = client.request_async_timeout(&msg, Duration::from_secs(60));
                        if let Ok(reply) = pollster::block_on(call) {
                            std::mem::forget(reply);
                        }
                    });
                }
            });
            wait_for_stdin_eof();
        }
        // A server that then runs out of file descriptors: it can open nothing any more, not
        // even /proc (so no pid lookup could tell it anything), and goes on serving.
        ["emfile-server", name] => {
            let server = Server::builder(name).slots(2).serve(echo).unwrap();
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            // SAFETY: setrlimit reads the struct we pass.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0);
            let mut hoard = Vec::new();
            while let Ok(f) = std::fs::File::open("/dev/null") {
                hoard.push(f);
            }
            let err = std::fs::File::open("/proc/self/stat").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "{err}");
            say(format!("ready emfile after {} descriptors", hoard.len()));
            wait_for_stdin_eof();
            drop(server);
        }
        _ => panic!("unknown child role {role:?}"),
    }
}

/// A client process paused (SIGSTOP) at each step of a call for 1.2 s of reaper scans: right
/// after its claim mid-write, after publishing while the handler runs, while holding its
/// reply, while waiting for a free slot. Meanwhile another caller's calls all get their own
/// replies; the paused client's slot stays its own; resumed, its call completes correctly.
/// Fails if the reaper takes a live owner's slot (the old 600 ms rule) or if the resumed
/// client disturbs anyone.
#[test]
fn a_paused_client_keeps_its_call_and_disturbs_no_one_at_every_step() {
    for step in ["write", "serve", "hold", "slot"] {
        let name = unique_name(&format!("pause-{step}"));
        let slots = if step == "slot" { 1 } else { 2 };
        let server = Server::builder(&name).slots(slots).serve(echo).unwrap();
        let other = Client::<Echo>::connect(&name).unwrap();
        // "slot": the only slot is held here, so the child waits for it.
        let blocker = (step == "slot").then(|| other.request(&Echo::new(0, "blocker")).unwrap());
        let mut child = Proc::spawn(&["paused", &name, step]);
        let pid = child.child.id();
        assert_eq!(child.line(), "calling");
        let expected = match step {
            "write" => {
                assert_eq!(child.line(), "writing");
                Some(SlotState::Claimed)
            }
            "serve" => {
                wait_for_stats(&name, "the child's call being served", |s| {
                    s.in_use.iter().any(|u| u.state == SlotState::Serving)
                });
                Some(SlotState::Serving)
            }
            "hold" => {
                assert_eq!(child.line(), "holding");
                Some(SlotState::Replied)
            }
            _ => {
                wait_for_stats(&name, "the child waiting for a slot", |s| {
                    s.free_waiters == 1
                });
                None
            }
        };
        if step != "write" {
            signal(pid, libc::SIGSTOP);
        }
        wait_stopped(pid);
        drop(blocker);
        let calls = call_through_scans(&name, &other, SCANS_WHILE_PAUSED);
        let s = stats(&name);
        if let Some(state) = expected {
            // The call finished by the server while paused is a reply held by the child.
            let state = if state == SlotState::Serving {
                SlotState::Replied
            } else {
                state
            };
            let held = s
                .in_use
                .iter()
                .find(|u| u.owner_pid == Some(pid))
                .unwrap_or_else(|| panic!("{step}: the paused child lost its slot: {s:?}"));
            assert_eq!(held.state, state, "{step}: {s:?}");
        }
        assert_eq!(s.reclaimed, 0, "{step}: a live client's slot was reclaimed");
        signal(pid, libc::SIGCONT);
        if step == "hold" {
            child.tell("go");
        }
        let result = child.line();
        assert!(result.starts_with("ok"), "{step}: {result}");
        assert!(
            child.finish(Duration::from_secs(10)),
            "{step}: child failed"
        );
        // Nothing was left behind by the paused call or disturbed by it.
        let s = stats(&name);
        assert_eq!(
            (s.slots_in_use, s.free_waiters, s.reclaimed),
            (0, 0, 0),
            "{step}: {s:?}"
        );
        println!("{step}: paused through {SCANS_WHILE_PAUSED} scans, {calls} other calls served");
        drop(server);
    }
}

/// Whether `unshare --pid --fork --mount-proc` works here (it needs privileges or user
/// namespaces).
fn pid_namespaces_available() -> bool {
    std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// A client in another pid namespace (with its own /proc) connects, calls, and holds a
/// reply; killed, its slot is reclaimed. The pid it records means nothing here, so neither
/// connecting nor reclaiming may depend on it. Fails with the old pid-and-/proc liveness
/// (`NotFound` at connect, a slot never reclaimed).
#[test]
fn a_client_in_another_pid_namespace_works_and_is_reclaimed_when_killed() {
    if !pid_namespaces_available() {
        println!("skipped: `unshare --pid --fork --mount-proc` is not available here");
        return;
    }
    let name = unique_name("pidns");
    let _server = Server::builder(&name).slots(2).serve(echo).unwrap();
    let mut child = Proc::spawn_under(
        &["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"],
        &["hold", &name],
    );
    let line = child.line();
    let ns_pid: u32 = line
        .strip_prefix("holding pid=")
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let s = stats(&name);
    assert_eq!(s.slots_in_use, 1, "{s:?}");
    assert_eq!(s.in_use[0].state, SlotState::Replied);
    // The child's pid in its own namespace (1 or 2), not any process of ours.
    assert_eq!(s.in_use[0].owner_pid, Some(ns_pid));
    assert_ne!(ns_pid, child.child.id());
    // Killing `unshare` kills its child (--kill-child).
    child.child.kill().unwrap();
    child.child.wait().unwrap();
    // (The reaper counts what it took back after its scan: wait for the count too.)
    wait_for_stats(&name, "the slot reclaimed", |s| {
        s.slots_in_use == 0 && s.reclaimed == 1
    });
    let client = Client::<Echo>::connect(&name).unwrap();
    assert_eq!(client.request(&Echo::new(5, "after")).unwrap().n, 5);
}

/// A server that can open no file at all (out of descriptors, so it could not read /proc
/// either) never frees a live client's slot: a reply held here through 1.2 s of scans is
/// unchanged. It still takes back the slot of a client that is killed (the lock query needs
/// no new descriptor).
#[test]
fn a_server_out_of_descriptors_never_frees_a_live_clients_slot() {
    let name = unique_name("emfile");
    let mut server = Proc::spawn(&["emfile-server", &name]);
    let ready = server.line();
    assert!(ready.starts_with("ready emfile"), "{ready}");
    let client = Client::<Echo>::connect(&name).unwrap();
    let held = client.request(&Echo::new(11, "mine")).unwrap();
    let scans = stats(&name).reaper_scans;
    wait_for_stats(&name, "reaper scans", |s| {
        s.reaper_scans >= scans + SCANS_WHILE_PAUSED
    });
    assert_eq!((held.n.to_native(), held.text.as_str()), (11, "re:mine"));
    assert_eq!(held.id, *held.id().as_bytes());
    let s = stats(&name);
    assert_eq!((s.slots_in_use, s.reclaimed), (1, 0), "{s:?}");
    // A killed client is still reclaimed.
    let mut victim = Proc::spawn(&["hold", &name]);
    assert!(victim.line().starts_with("holding"));
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let s = wait_for_stats(&name, "the killed client's slot back", |s| s.reclaimed == 1);
    assert_eq!(s.slots_in_use, 1, "{s:?}");
    assert_eq!(held.n, 11);
    drop(held);
    assert!(server.finish(Duration::from_secs(10)));
}

/// A caller killed while it waits for a free slot leaves no announcement behind:
/// `free_waiters` returns to zero, so releases stop making futex wake calls for it.
#[test]
fn a_waiter_killed_while_counted_leaves_no_free_waiter_behind() {
    let name = unique_name("waitkill");
    let _server = Server::builder(&name).slots(1).serve(echo).unwrap();
    let client = Client::<Echo>::connect(&name).unwrap();
    let held = client.request(&Echo::new(1, "blocker")).unwrap();
    let mut waiter = Proc::spawn(&["wait-slot", &name]);
    assert_eq!(waiter.line(), "calling");
    wait_for_stats(&name, "the waiter counted", |s| s.free_waiters == 1);
    waiter.child.kill().unwrap();
    waiter.child.wait().unwrap();
    wait_for_stats(&name, "the count healed", |s| s.free_waiters == 0);
    drop(held);
    assert_eq!(client.request(&Echo::new(2, "next")).unwrap().n, 2);
    assert_eq!(stats(&name).free_waiters, 0);
}

/// The server's liveness as a client sees it is its lock, not its pid: a server killed with
/// SIGKILL (whose mapping still says RUNNING) is found gone at once by `connect`.
#[test]
fn a_killed_server_is_not_found_although_its_mapping_says_running() {
    let name = unique_name("srvlock");
    let mut server = Proc::spawn(&["emfile-server", &name]);
    assert!(server.line().starts_with("ready"));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    match Client::<Echo>::connect(&name) {
        Err(shmrpc::Error::NotFound { .. }) => {}
        other => panic!("connect to a killed server: {other:?}"),
    }
}

/// A process that leaks every reply it gets (4 threads, 4 slots) stops at its share (3) once
/// another process's caller waits: its thread still waiting for a slot is ahead of that caller
/// in the futex's queue, and the slot freed here wakes it first; at its share it may not take
/// the slot and hands the wake-up on, so the slot reaches the other caller. (Without the share,
/// `slots_per_client(0)`, the leaker's thread usually takes the freed slot and the other caller
/// times out: usually, because a waiter that re-parks after its 50 ms slice goes to the back of
/// the queue.)
#[test]
fn a_leaking_process_leaves_slots_to_another_process_once_it_holds_its_share() {
    let name = unique_name("share");
    let _server = Server::builder(&name)
        .slots(4)
        .slots_per_client(3)
        .serve(echo)
        .unwrap();
    let client = Client::<Echo>::connect(&name).unwrap();
    let mine = client.request(&Echo::new(0, "held here")).unwrap();
    let mut leaker = Proc::spawn(&["leaker", &name, "4"]);
    assert_eq!(leaker.line(), "started");
    let pid = leaker.child.id();
    wait_for_stats(
        &name,
        "the leaker holding 3 slots, its 4th thread waiting",
        |s| {
            s.in_use.iter().filter(|u| u.owner_pid == Some(pid)).count() == 3 && s.free_waiters == 1
        },
    );
    std::thread::scope(|s| {
        let waiter =
            s.spawn(|| client.request_timeout(&Echo::new(9, "mine"), Duration::from_secs(2)));
        wait_for_stats(&name, "this process's caller waiting behind it", |s| {
            s.free_waiters == 2
        });
        drop(mine);
        let reply = waiter
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("the caller beside the leaker: {e}"));
        assert_eq!(reply.n, 9);
    });
    // (Once nobody else waits, the leaker may take the rest: the share binds only then.)
    assert_eq!(stats(&name).client_share, 3);
}

/// The same share binds async calls. A process whose futures leak every reply holds its share
/// (3 of 4 slots), a fourth future queued; another process's caller waits for a slot and is
/// stopped (SIGSTOP: it stays counted as waiting but cannot take a slot). A slot freed now
/// must stay free for the stopped caller (the leaker's helper, rung by the free, finds its
/// process at its share), and that caller gets it once continued. Without the rule for
/// futures the leaker's fourth future takes the slot within microseconds.
#[test]
fn a_process_leaking_async_replies_takes_no_slot_beyond_its_share_while_others_wait() {
    let name = unique_name("ashare");
    let _server = Server::builder(&name)
        .slots(4)
        .slots_per_client(3)
        .serve(echo)
        .unwrap();
    let client = Client::<Echo>::connect(&name).unwrap();
    let mine = client.request(&Echo::new(0, "held here")).unwrap();
    let mut leaker = Proc::spawn(&["async-leaker", &name, "4"]);
    assert_eq!(leaker.line(), "started");
    let pid = leaker.child.id();
    let leaked = |s: &Stats| s.in_use.iter().filter(|u| u.owner_pid == Some(pid)).count();
    wait_for_stats(
        &name,
        "the leaker holding 3 slots, its 4th future queued",
        |s| leaked(s) == 3 && s.free_waiters == 1,
    );
    let mut other = Proc::spawn(&["wait-slot", &name]);
    assert_eq!(other.line(), "calling");
    // Stop the caller while it is counted as waiting: between two park slices it retracts its
    // announcement for a few instructions, and a stop there would leave nobody else waiting.
    loop {
        wait_for_stats(&name, "the other process's caller waiting", |s| {
            s.free_waiters == 2
        });
        signal(other.child.id(), libc::SIGSTOP);
        wait_stopped(other.child.id());
        if stats(&name).free_waiters == 2 {
            break;
        }
        signal(other.child.id(), libc::SIGCONT);
    }
    drop(mine);
    // Six of the helper's park slices: a helper that may claim has long done so.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(300) {
        let s = stats(&name);
        assert!(
            leaked(&s) <= 3,
            "the leaker took a slot beyond its share: {s:?}"
        );
        std::thread::yield_now();
    }
    signal(other.child.id(), libc::SIGCONT);
    assert_eq!(other.line(), "result Ok(1)");
}

/// Every event this test binary emits, as `LEVEL message field=value ...` lines.
static EVENTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// The smallest `tracing` subscriber: records every event's level and fields in `EVENTS`.
struct Capture;

struct Fields(String);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(event.metadata().level().to_string());
        event.record(&mut fields);
        EVENTS.lock().unwrap().push(fields.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A client process that took every slot before anyone waited (so the share did not bind
/// then) is over its share once another caller waits: the server's reaper warns through
/// `tracing`, naming the process's pid, and `shmrpc stat`'s statistics show its slots. Fails
/// if no such warning comes within 30 s.
#[test]
fn a_process_over_its_share_is_named_in_a_warning() {
    let _ = tracing::subscriber::set_global_default(Capture);
    let name = unique_name("hogwarn");
    let _server = Server::builder(&name)
        .slots(4)
        .slots_per_client(3)
        .serve(echo)
        .unwrap();
    let mut leaker = Proc::spawn(&["leaker", &name, "4"]);
    assert_eq!(leaker.line(), "started");
    let pid = leaker.child.id();
    wait_for_stats(&name, "the leaker holding every slot", |s| {
        s.in_use.iter().filter(|u| u.owner_pid == Some(pid)).count() == 4
    });
    let client = Client::<Echo>::connect(&name).unwrap();
    std::thread::scope(|s| {
        let waiter =
            s.spawn(|| client.request_timeout(&Echo::new(1, "starved"), Duration::from_secs(30)));
        let t0 = Instant::now();
        let wanted = format!("pid={pid}");
        loop {
            let found = EVENTS.lock().unwrap().iter().any(|e| {
                e.starts_with("WARN")
                    && e.contains("more slots than its share")
                    && e.contains(&wanted)
            });
            if found {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no warning naming pid {pid}: {:?}",
                EVENTS.lock().unwrap()
            );
            std::thread::yield_now();
        }
        // Let the waiter through: the leaker goes, its slots come back.
        leaker.child.kill().unwrap();
        leaker.child.wait().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap().n, 1);
    });
}
