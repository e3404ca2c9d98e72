//! Processes of different architectures on one mapping: an x86_64 process against an i686 or
//! aarch64 one, each way, with messages whose native layout differs between 32 and 64 bits
//! (`usize`, `isize`, `Vec`, `String`, enums, `Option`) at several sizes, checked value for
//! value. The peer is this same test file built for the other target:
//! `SHMRPC_INTEROP_PEER=<its test binary>` and, for a binary that needs an emulator,
//! `SHMRPC_INTEROP_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"` (`.ci/run` sets
//! both). Without them the tests print that they were skipped.
#![cfg(unix)]

mod common;

use common::{say, unique_name, wait_for_stats, wait_for_stdin_eof, Proc, ROLE};
use shmrpc::{Client, Request, Server};
use std::time::Duration;

/// A shape whose variants carry pointer-sized and heap data.
#[shmrpc::message]
#[derive(Debug, PartialEq, Clone)]
pub enum Shape {
    Empty,
    Count(usize),
    Named { x: i32, name: String },
}

/// A message with every field whose native layout differs between 32- and 64-bit targets.
#[shmrpc::message]
#[derive(Debug, PartialEq, Clone)]
pub struct Mixed {
    pub n: usize,
    pub i: isize,
    pub wide: u64,
    pub v: Vec<u64>,
    pub sizes: Option<Vec<usize>>,
    pub text: String,
    pub shape: Shape,
    pub pair: (u8, u64),
    pub bytes: Vec<u8>,
}

/// Payload sizes (bytes of `Mixed::bytes`) the calls cycle through: up to most of a slot.
const SIZES: [usize; 4] = [0, 1000, 16 << 10, 200 << 10];

impl Mixed {
    /// The `k`-th request, the same on every target (values fit 32 bits where `usize` does).
    fn sample(k: u64) -> Mixed {
        let size = SIZES[(k % SIZES.len() as u64) as usize];
        Mixed {
            n: (k as usize) * 1_000_003 % 4_000_000_000,
            i: -(k as isize) * 7,
            wide: u64::MAX - k,
            v: (0..k % 9).map(|x| x * 0x1_0000_0001).collect(),
            sizes: k
                .is_multiple_of(2)
                .then(|| (0..k % 5).map(|x| x as usize * 3).collect()),
            text: format!("call {k} \u{e9}\u{1f980}"),
            shape: match k % 3 {
                0 => Shape::Empty,
                1 => Shape::Count(k as usize + 40_000),
                _ => Shape::Named {
                    x: -(k as i32),
                    name: "n".repeat(k as usize % 17),
                },
            },
            pair: (k as u8, k << 33),
            bytes: (0..size).map(|x| (x as u64 ^ k) as u8).collect(),
        }
    }

    /// What the server answers: a function of the request that touches every field.
    fn answer(&self) -> Mixed {
        Mixed {
            n: self.n / 2 + 1,
            i: self.i - 1,
            wide: self.wide.rotate_left(8),
            v: self.v.iter().rev().copied().collect(),
            sizes: self
                .sizes
                .as_ref()
                .map(|s| s.iter().map(|x| x + 1).collect()),
            text: self.text.to_uppercase(),
            shape: match &self.shape {
                Shape::Empty => Shape::Count(0),
                Shape::Count(c) => Shape::Named {
                    x: *c as i32,
                    name: "count".into(),
                },
                Shape::Named { x, name } => Shape::Count(x.unsigned_abs() as usize + name.len()),
            },
            pair: (self.pair.0.wrapping_add(1), self.pair.1 >> 1),
            bytes: self.bytes.iter().map(|b| b.wrapping_mul(3)).collect(),
        }
    }
}

const CALLS: u64 = 200;

fn serve(name: &str) -> Server {
    Server::builder(name)
        .capacity(1 << 20)
        .slots(4)
        .serve(|req: Request<'_, Mixed>| req.deserialize().unwrap().answer())
        .unwrap()
}

/// Makes `CALLS` calls and checks every reply, field by field (through `deserialize`, and
/// a few fields in place).
fn call_all(name: &str) {
    let client = Client::builder(name)
        .timeout(Duration::from_secs(60))
        .connect::<Mixed, Mixed>()
        .unwrap();
    for k in 0..CALLS {
        let req = Mixed::sample(k);
        let reply = client.request(&req).unwrap();
        assert_eq!(
            reply.n.to_native() as usize,
            req.answer().n,
            "call {k}: in place"
        );
        assert_eq!(reply.text.as_str(), req.answer().text, "call {k}: in place");
        assert_eq!(reply.deserialize().unwrap(), req.answer(), "call {k}");
    }
}

/// Entry point of every child process; a no-op in the normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let args: Vec<&str> = role.split(' ').collect();
    let arch = std::env::consts::ARCH;
    let width = usize::BITS;
    match args[..] {
        ["serve", name] => {
            let _server = serve(name);
            say(format!("ready {arch} {width}"));
            wait_for_stdin_eof();
        }
        ["call", name] => {
            call_all(name);
            say(format!("ok {arch} {width}"));
        }
        // Holds a reply until killed (or told to check it and let go).
        ["hold", name] => {
            let client = Client::<Mixed>::connect(name).unwrap();
            let req = Mixed::sample(1);
            let reply = client.request(&req).unwrap();
            say(format!("holding {arch} {width}"));
            wait_for_stdin_eof();
            assert_eq!(reply.deserialize().unwrap(), req.answer());
            say("intact".into());
        }
        _ => panic!("unknown child role {role:?}"),
    }
}

/// The peer binary and its runner, or `None` (the reason printed) when not configured.
fn peer() -> Option<(std::path::PathBuf, Vec<String>)> {
    let Ok(exe) = std::env::var("SHMRPC_INTEROP_PEER") else {
        println!("skipped: SHMRPC_INTEROP_PEER names no peer binary of another target");
        return None;
    };
    let runner = std::env::var("SHMRPC_INTEROP_RUNNER")
        .map(|r| r.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    Some((exe.into(), runner))
}

/// Liveness across architectures: a peer of the other architecture holding a reply keeps its
/// slot through many scans of this architecture's reaper (its byte lock is seen held: the
/// lock's byte range means the same to both), and loses it once killed.
#[test]
fn a_peer_holding_a_reply_is_alive_to_this_reaper_and_reclaimed_when_killed() {
    let Some((exe, runner)) = peer() else { return };
    let name = unique_name("interop-live");
    let _server = serve(&name);
    let runner: Vec<&str> = runner.iter().map(String::as_str).collect();
    let mut child = Proc::spawn_exe(&exe, &runner, &["hold", &name]);
    assert!(child.line().starts_with("holding"));
    let scans = wait_for_stats(&name, "the held slot", |s| s.slots_in_use == 1).reaper_scans;
    let s = wait_for_stats(&name, "ten reaper scans", |s| s.reaper_scans >= scans + 10);
    assert_eq!((s.slots_in_use, s.reclaimed), (1, 0), "{s:?}");
    child.tell("");
    drop(child.child.stdin.take());
    assert_eq!(child.line(), "intact");
    let mut victim = Proc::spawn_exe(&exe, &runner, &["hold", &name]);
    assert!(victim.line().starts_with("holding"));
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    wait_for_stats(&name, "the killed peer's slot reclaimed", |s| {
        s.slots_in_use == 0 && s.reclaimed == 1
    });
}

/// The reverse: this architecture holds a reply against a peer server whose reaper scans it.
#[test]
fn this_architecture_holding_a_reply_is_alive_to_a_peer_reaper() {
    let Some((exe, runner)) = peer() else { return };
    let name = unique_name("interop-live2");
    let runner: Vec<&str> = runner.iter().map(String::as_str).collect();
    let mut server = Proc::spawn_exe(&exe, &runner, &["serve", &name]);
    assert!(server.line().starts_with("ready"));
    let client = Client::<Mixed>::connect(&name).unwrap();
    let req = Mixed::sample(2);
    let reply = client.request(&req).unwrap();
    let scans = wait_for_stats(&name, "a scan", |s| s.reaper_scans > 0).reaper_scans;
    let s = wait_for_stats(&name, "ten reaper scans", |s| s.reaper_scans >= scans + 10);
    assert_eq!((s.slots_in_use, s.reclaimed), (1, 0), "{s:?}");
    assert_eq!(reply.deserialize().unwrap(), req.answer());
    drop(reply);
    assert!(server.finish(Duration::from_secs(60)));
}

/// A peer of the other architecture calls a server of this one: every reply checked there.
#[test]
fn a_peer_of_another_architecture_calls_a_server_of_this_one() {
    let Some((exe, runner)) = peer() else { return };
    let name = unique_name("interop-srv");
    let _server = serve(&name);
    let runner: Vec<&str> = runner.iter().map(String::as_str).collect();
    let mut child = Proc::spawn_exe(&exe, &runner, &["call", &name]);
    let line = child.line();
    assert!(line.starts_with("ok"), "{line}");
    println!(
        "{} {}-bit client -> {} {}-bit server: {CALLS} calls checked ({line})",
        line.split(' ').nth(1).unwrap_or("?"),
        line.split(' ').nth(2).unwrap_or("?"),
        std::env::consts::ARCH,
        usize::BITS
    );
    assert!(child.finish(Duration::from_secs(60)));
}

/// This architecture calls a server of the other one: every reply checked here.
#[test]
fn this_architecture_calls_a_server_of_another_one() {
    let Some((exe, runner)) = peer() else { return };
    let name = unique_name("interop-cli");
    let runner: Vec<&str> = runner.iter().map(String::as_str).collect();
    let mut server = Proc::spawn_exe(&exe, &runner, &["serve", &name]);
    let line = server.line();
    assert!(line.starts_with("ready"), "{line}");
    call_all(&name);
    println!(
        "{} {}-bit client -> {line}: {CALLS} calls checked",
        std::env::consts::ARCH,
        usize::BITS
    );
    assert!(server.finish(Duration::from_secs(60)));
}
