//! Calls across a bridge, with real processes: a server process, a bridge process and a
//! remote-client process (each this test binary in a role), Zenoh in peer mode with multicast
//! scouting off and explicit TCP (or TLS) endpoints on 127.0.0.1; and a multi-host test in
//! network namespaces made by the test.

use shmrpc::{Request, Server};
use shmrpc_zenoh::zenoh::Wait;
use shmrpc_zenoh::{config, Bridge, Error, RemoteClient, Target};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The environment variable that tells a child process its role.
const ROLE: &str = "SHMRPC_ZENOH_TEST_ROLE";
/// How long a test waits for a line from a child before it fails.
const LINE_WAIT: Duration = Duration::from_secs(60);
/// How long a child may take to end once its stdin is closed before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Children.

/// A child process of this test binary in a role, with its stdin and a stream of its lines.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    what: String,
}

impl Proc {
    fn spawn(role: &[&str]) -> Proc {
        Self::spawn_in(None, role)
    }

    /// Spawns the role in network namespace `netns` (`ip netns exec`), if given.
    fn spawn_in(netns: Option<&str>, role: &[&str]) -> Proc {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(ROLE, role.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                // The test harness's own lines are not ours.
                if let Some(ours) = line.strip_prefix("> ") {
                    if tx.send(ours.to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Proc {
            stdin: child.stdin.take(),
            child,
            lines,
            what: role.join(" "),
        }
    }

    /// The child's next line; fails the test after `LINE_WAIT`.
    fn line(&self) -> String {
        match self.lines.recv_timeout(LINE_WAIT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => panic!("{}: no line in {LINE_WAIT:?}", self.what),
            Err(RecvTimeoutError::Disconnected) => panic!("{}: ended", self.what),
        }
    }

    /// Sends a command line to the child and returns its answer.
    fn ask(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.line()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    /// Ends the child the way its role expects: stdin closed, so that a server or a bridge
    /// stops and removes what it published (a killed server leaves its mapping in `/dev/shm`
    /// until the name is served again). A child still running after `EXIT_WAIT` is killed.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + EXIT_WAIT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.kill();
    }
}

/// Prints a line for the parent (the `> ` prefix keeps it apart from the harness's output; the
/// newline first ends a line the harness may have begun).
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n> {line}").unwrap();
    out.flush().unwrap();
}

/// Blocks until the parent closes stdin (or dies).
fn wait_for_stdin_eof() {
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
}

/// The echo handler: `sleep:MS:TEXT` sleeps first, `panic` panics, anything else comes back
/// tagged with the server's name.
fn echo(tag: &str, req: &str) -> String {
    if let Some(rest) = req.strip_prefix("sleep:") {
        let (ms, text) = rest.split_once(':').unwrap_or((rest, ""));
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        return format!("{tag}:{text}");
    }
    if req == "panic" {
        panic!("asked to panic");
    }
    format!("{tag}:{req}")
}

/// The name of an error's variant, as the children report it.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::NotFound { .. } => "NotFound",
        Error::Timeout { .. } => "Timeout",
        Error::ServerGone { .. } => "ServerGone",
        Error::PayloadTooLarge { .. } => "PayloadTooLarge",
        Error::BadMessage(_) => "BadMessage",
        Error::TypeMismatch { .. } => "TypeMismatch",
        Error::HandlerPanicked => "HandlerPanicked",
        Error::CallLost => "CallLost",
        Error::Busy { .. } => "Busy",
        Error::Remote { .. } => "Remote",
        Error::Transport(_) => "Transport",
        Error::InvalidKey { .. } => "InvalidKey",
        Error::InvalidConfig(_) => "InvalidConfig",
        Error::Local(_) => "Local",
        _ => "Other",
    }
}

fn outcome<T>(r: Result<T, Error>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(v)),
        Err(e) => format!("err {} {e}", kind(&e)),
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
        // A request/response server tagging its replies with `tag`.
        ["server", name, tag, large] => {
            let mut b = Server::builder(name).workers(2);
            if large == "small" {
                b = b.large_memory(0);
            }
            let tag = tag.to_owned();
            let server = b
                .serve(move |req: Request<'_, String>| echo(&tag, req.as_str()))
                .unwrap();
            say("ready");
            wait_for_stdin_eof();
            drop(server);
        }
        // A one-way server that reports every message it runs.
        ["oneway-server", name] => {
            let server = Server::builder(name)
                .serve_oneway(|req: Request<'_, String>| say(format!("got {}", req.as_str())))
                .unwrap();
            say("ready");
            wait_for_stdin_eof();
            drop(server);
        }
        // A bridge for `name` under `key`, listening on `listen`.
        ["bridge", name, key, listen] => {
            let cfg = config::peer(&[listen], &[]).unwrap();
            let bridge = Bridge::builder(name).key(key).config(cfg).start().unwrap();
            say(format!("bridging {}", bridge.key()));
            wait_for_stdin_eof();
            drop(bridge);
        }
        // A bridge whose Zenoh configuration is a file.
        ["bridge-config", name, key, file] => {
            let cfg = config::from_file(file).unwrap();
            let bridge = Bridge::builder(name).key(key).config(cfg).start().unwrap();
            say(format!("bridging {}", bridge.key()));
            wait_for_stdin_eof();
            drop(bridge);
        }
        // A remote caller: connects to `connect` (comma-separated endpoints) and answers
        // commands on stdin, one line each.
        ["remote", key, connect, target, ref tls @ ..] => remote_child(key, connect, target, tls),
        _ => panic!("unknown child role {role:?}"),
    }
}

fn remote_child(key: &str, connect: &str, target: &str, tls: &[&str]) {
    let endpoints: Vec<&str> = connect.split(',').collect();
    let mut cfg = config::peer(&[], &endpoints).unwrap();
    if let [ca, cert, keyfile] = tls[..] {
        let files = config::TlsFiles {
            root_ca: ca,
            certificate: cert,
            private_key: keyfile,
        };
        config::tls(&mut cfg, &files, true).unwrap();
    }
    let session = shmrpc_zenoh::open(cfg).unwrap();
    let target = if target == "all" {
        Target::All
    } else {
        Target::One
    };
    // Connects once the bridge's declarations arrived (a fresh session may not have them yet).
    let t0 = Instant::now();
    let client = loop {
        match RemoteClient::builder(key)
            .target(target)
            .connect::<String, String>(&session)
        {
            Ok(c) => break Ok(c),
            Err(e @ Error::NotFound { .. }) if t0.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => break Err(e),
        }
    };
    let client = match client {
        Ok(c) => {
            say("ok connected");
            c
        }
        Err(e) => {
            say(format!("err {} {e}", kind(&e)));
            return;
        }
    };
    let wrong = RemoteClient::builder(key).connect::<u64, u64>(&session);
    let mut line = String::new();
    while {
        line.clear();
        std::io::stdin().read_line(&mut line).unwrap_or(0) > 0
    } {
        let cmd = line.trim_end();
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        let answer = match verb {
            "call" => outcome(client.request(&arg.to_owned()), |r| r.as_str().to_owned()),
            // call-timeout MS TEXT
            "call-timeout" => {
                let (ms, text) = arg.split_once(' ').unwrap();
                let t = Duration::from_millis(ms.parse().unwrap());
                let t0 = Instant::now();
                let r = client.request_timeout(&text.to_owned(), t);
                format!(
                    "{} after_ms={}",
                    outcome(r, |r| r.as_str().to_owned()),
                    t0.elapsed().as_millis()
                )
            }
            // call-size N: a message of N bytes, checked on its way back.
            "call-size" => {
                let n: usize = arg.parse().unwrap();
                let text: String = (0..n).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                outcome(client.request(&text), |r| {
                    let same = r.as_str().strip_prefix("s:") == Some(text.as_str());
                    format!("same={same} in_place={}", r.in_place())
                })
            }
            // many THREADS CALLS: calls in parallel, each checked against its own request.
            "many" => {
                let (threads, calls) = arg.split_once(' ').unwrap();
                let (threads, calls): (usize, usize) =
                    (threads.parse().unwrap(), calls.parse().unwrap());
                let bad = AtomicU32::new(0);
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (client, bad) = (&client, &bad);
                        s.spawn(move || {
                            for i in 0..calls {
                                let text = format!("t{t}-{i}-{}", "x".repeat((i * 37) % 3000));
                                match client.request(&text) {
                                    Ok(r) if r.as_str().ends_with(&format!(":{text}")) => {}
                                    _ => {
                                        bad.fetch_add(1, Ordering::SeqCst);
                                    }
                                }
                            }
                        });
                    }
                });
                format!("ok bad={}", bad.load(Ordering::SeqCst))
            }
            "async" => outcome(
                pollster::block_on(client.request_async(&arg.to_owned())),
                |r| r.as_str().to_owned(),
            ),
            "send" => outcome(client.send(&arg.to_owned()), |()| "sent".into()),
            "ping" => outcome(client.ping(), |_| "pong".into()),
            "wrong" => match &wrong {
                Ok(w) => outcome(w.request(&7), |r| format!("{}", *r)),
                Err(e) => format!("err {} {e}", kind(e)),
            },
            _ => format!("unknown command {cmd:?}"),
        };
        say(answer);
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers of the tests.

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A server name and a key no other test (or test run) uses.
fn unique(tag: &str) -> (String, String) {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let name = format!("zb-{tag}-{}-{n}", std::process::id());
    let key = format!("shmrpc-test/{name}");
    (name, key)
}

/// A TCP port free right now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process, a bridge process on a fresh port, and a remote-client process connected
/// to it.
struct Trio {
    server: Proc,
    bridge: Proc,
    remote: Proc,
    name: String,
    key: String,
    endpoint: String,
}

impl Trio {
    fn start(tag: &str) -> Trio {
        Self::start_with(tag, "server", "large")
    }

    fn start_with(tag: &str, server_role: &str, large: &str) -> Trio {
        let (name, key) = unique(tag);
        let server = if server_role == "server" {
            Proc::spawn(&["server", &name, "s", large])
        } else {
            Proc::spawn(&[server_role, &name])
        };
        assert_eq!(server.line(), "ready");
        let endpoint = format!("tcp/127.0.0.1:{}", free_port());
        let bridge = Proc::spawn(&["bridge", &name, &key, &endpoint]);
        assert_eq!(bridge.line(), format!("bridging {key}"));
        let remote = Proc::spawn(&["remote", &key, &endpoint, "one"]);
        assert_eq!(remote.line(), "ok connected");
        Trio {
            server,
            bridge,
            remote,
            name,
            key,
            endpoint,
        }
    }
}

impl Trio {
    /// Sends the remote process `command` (a slow call) without waiting for its answer, and
    /// returns once the server is serving it (counted in flight).
    fn start_served(&mut self, command: &str) {
        let stdin = self.remote.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let t0 = Instant::now();
        while shmrpc::StatsView::open(&self.name)
            .unwrap()
            .stats()
            .in_flight
            == 0
        {
            assert!(
                t0.elapsed() < LINE_WAIT,
                "the call never reached the server"
            );
            std::thread::yield_now();
        }
    }
}

fn served(name: &str) -> u64 {
    shmrpc::StatsView::open(name).unwrap().stats().served
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Requests of every size class (a slot, the large-message memory, several Zenoh batches)
/// come back equal to what was sent; 8 threads of one remote process in parallel get their
/// own replies; the async form works on a runtime-free executor.
#[test]
fn replies_match_their_requests_through_a_bridge_process() {
    let mut t = Trio::start("replies");
    assert_eq!(t.remote.ask("call hello"), "ok s:hello");
    for n in [1, 64, 1024, 64 << 10, 1 << 20, 5 << 20] {
        let answer = t.remote.ask(&format!("call-size {n}"));
        assert!(answer.starts_with("ok same=true"), "{n} bytes: {answer}");
    }
    assert_eq!(t.remote.ask("many 8 100"), "ok bad=0");
    assert_eq!(t.remote.ask("async later"), "ok s:later");
    assert_eq!(t.remote.ask("ping"), "ok pong");
}

/// One-way messages run on the server (each exactly once), and `send` returns once taken.
#[test]
fn one_way_messages_cross_the_bridge_and_run_once() {
    let mut t = Trio::start_with("oneway", "oneway-server", "large");
    for i in 0..5 {
        assert_eq!(t.remote.ask(&format!("send m{i}")), "ok sent");
    }
    let mut got: Vec<String> = (0..5).map(|_| t.server.line()).collect();
    got.sort();
    assert_eq!(got, ["got m0", "got m1", "got m2", "got m3", "got m4"]);
    // A request to a one-way server is a typed error, not a hang.
    let answer = t.remote.ask("call x");
    assert!(
        answer.starts_with("err BadMessage") || answer.starts_with("err TypeMismatch"),
        "{answer}"
    );
}

/// A call whose handler outlasts the caller's timeout is `Timeout` after about that time, and
/// the bridge and server go on serving.
#[test]
fn a_timeout_reaches_the_remote_caller_as_timeout() {
    let mut t = Trio::start("timeout");
    let answer = t.remote.ask("call-timeout 300 sleep:3000:slow");
    assert!(answer.starts_with("err Timeout"), "{answer}");
    let ms: u64 = answer.rsplit("after_ms=").next().unwrap().parse().unwrap();
    assert!((290..3000).contains(&ms), "timed out after {ms} ms");
    assert_eq!(t.remote.ask("call next"), "ok s:next");
}

/// A server killed during a call: the remote caller gets `ServerGone`; a call while no server
/// runs is a typed error too; a restarted server is reached again through the same bridge.
#[test]
fn a_killed_server_is_server_gone_and_a_restarted_one_is_reached_again() {
    let mut t = Trio::start("srvkill");
    t.start_served("call-timeout 20000 sleep:10000:long");
    t.server.kill();
    let answer = t.remote.line();
    assert!(answer.starts_with("err ServerGone"), "{answer}");
    let answer = t.remote.ask("call nobody");
    assert!(
        answer.starts_with("err ServerGone") || answer.starts_with("err NotFound"),
        "{answer}"
    );
    let server = Proc::spawn(&["server", &t.name, "s2", "large"]);
    assert_eq!(server.line(), "ready");
    assert_eq!(t.remote.ask("call again"), "ok s2:again");
}

/// A bridge killed during a call, and calls while it is down, are typed errors; a bridge
/// restarted on the same endpoint is reached again by the same remote process.
#[test]
fn a_killed_bridge_is_a_typed_error_and_a_restarted_one_is_reached_again() {
    let mut t = Trio::start("brkill");
    t.start_served("call-timeout 5000 sleep:3000:long");
    t.bridge.kill();
    let answer = t.remote.line();
    assert!(
        ["err NotFound", "err Timeout", "err Transport"]
            .iter()
            .any(|k| answer.starts_with(k)),
        "{answer}"
    );
    let answer = t.remote.ask("call-timeout 2000 nobody");
    assert!(
        ["err NotFound", "err Timeout"]
            .iter()
            .any(|k| answer.starts_with(k)),
        "{answer}"
    );
    let bridge = Proc::spawn(&["bridge", &t.name, &t.key, &t.endpoint]);
    assert_eq!(bridge.line(), format!("bridging {}", t.key));
    // The remote session re-dials the endpoint (every 100 ms to 1 s): bounded retries.
    let t0 = Instant::now();
    loop {
        let answer = t.remote.ask("call-timeout 2000 back");
        if answer.starts_with("ok s:back") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never reached again: {answer}"
        );
    }
}

/// The server's types travel: a caller with other types gets `TypeMismatch` naming both
/// sides; a message over the server's bound is refused by the bridge before it reaches the
/// mapping; a handler's panic is `HandlerPanicked`.
#[test]
fn types_bounds_and_panics_reach_the_remote_caller_as_typed_errors() {
    let mut t = Trio::start_with("typed", "server", "small");
    let answer = t.remote.ask("wrong");
    assert!(answer.starts_with("err TypeMismatch"), "{answer}");
    assert!(
        answer.contains("u64") && answer.contains("String"),
        "{answer}"
    );
    let before = shmrpc::StatsView::open(&t.name).unwrap().stats();
    let answer = t.remote.ask(&format!("call-size {}", 200 << 10));
    assert!(answer.starts_with("err PayloadTooLarge"), "{answer}");
    assert!(
        answer.contains(&format!("the {} bytes", before.max_payload)),
        "{answer}"
    );
    let after = shmrpc::StatsView::open(&t.name).unwrap().stats();
    assert_eq!(
        (after.bad_messages, after.served),
        (before.bad_messages, before.served),
        "the message reached the server"
    );
    let answer = t.remote.ask("call panic");
    assert!(answer.starts_with("err HandlerPanicked"), "{answer}");
    assert_eq!(t.remote.ask("call fine"), "ok s:fine");
}

/// Connecting to a key that no bridge exposes fails at once with `NotFound`; so does a bridge
/// for a server that does not run, and a key with a wildcard is refused.
#[test]
fn nothing_exposed_fails_fast_and_bridges_expose_only_what_they_were_asked_to() {
    let session = shmrpc_zenoh::open(config::peer(&[], &[]).unwrap()).unwrap();
    let t0 = Instant::now();
    let r = RemoteClient::<String>::connect(&session, "shmrpc-test/nobody/here");
    assert!(matches!(r, Err(Error::NotFound { .. })), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let (name, key) = unique("absent");
    let r = Bridge::builder(&name)
        .key(&key)
        .session(session.clone())
        .start();
    assert!(
        matches!(r, Err(Error::Local(shmrpc::Error::NotFound { .. }))),
        "{r:?}"
    );
    let server = Proc::spawn(&["server", &name, "s", "large"]);
    assert_eq!(server.line(), "ready");
    let r = Bridge::builder(&name)
        .key("shmrpc-test/*/all")
        .session(session.clone())
        .start();
    assert!(matches!(r, Err(Error::InvalidKey { .. })), "{r:?}");
}

/// Two bridges (on two servers) expose one key. With the default target each call runs on
/// exactly one of them; with `Target::All` on both (the first reply wins); with one bridge
/// killed, calls go on through the other.
#[test]
fn several_bridges_one_key_each_call_runs_once_by_default() {
    let (a, key) = unique("multi-a");
    let (b, _) = unique("multi-b");
    let sa = Proc::spawn(&["server", &a, "a", "large"]);
    let sb = Proc::spawn(&["server", &b, "b", "large"]);
    assert_eq!((sa.line(), sb.line()), ("ready".into(), "ready".into()));
    let (ea, eb) = (
        format!("tcp/127.0.0.1:{}", free_port()),
        format!("tcp/127.0.0.1:{}", free_port()),
    );
    let mut ba = Proc::spawn(&["bridge", &a, &key, &ea]);
    let bb = Proc::spawn(&["bridge", &b, &key, &eb]);
    assert_eq!(ba.line(), format!("bridging {key}"));
    assert_eq!(bb.line(), format!("bridging {key}"));
    let both = format!("{ea},{eb}");
    // The caller's session connects to both bridges before it opens (Zenoh's `open` returns
    // once connected peers' declarations arrived): it knows both queryables.
    let mut one = Proc::spawn(&["remote", &key, &both, "one"]);
    assert_eq!(one.line(), "ok connected");
    for i in 0..50 {
        let answer = one.ask(&format!("call n{i}"));
        assert!(
            answer == format!("ok a:n{i}") || answer == format!("ok b:n{i}"),
            "{answer}"
        );
    }
    // Served counts trail replies: wait for both servers to have counted every call (nothing
    // else has called them).
    let t0 = Instant::now();
    while served(&a) + served(&b) < 50 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::yield_now();
    }
    assert_eq!(served(&a) + served(&b), 50, "a call ran twice");
    // `Target::All`: once both bridges answered this caller, each call runs on both.
    let mut all = Proc::spawn(&["remote", &key, &both, "all"]);
    assert_eq!(all.line(), "ok connected");
    let before = served(&a) + served(&b);
    for i in 0..10 {
        assert!(all.ask(&format!("call m{i}")).starts_with("ok "));
    }
    let t0 = Instant::now();
    while served(&a) + served(&b) < before + 20 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "Target::All did not run each call on both: {}",
            served(&a) + served(&b) - before
        );
        std::thread::yield_now();
    }
    ba.kill();
    let t0 = Instant::now();
    let mut answer = String::new();
    for i in 0..20 {
        answer = one.ask(&format!("call-timeout 2000 after{i}"));
        if answer == format!("ok b:after{i}") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{answer}");
    }
    assert!(answer.starts_with("ok b:after"), "{answer}");
}

/// Runs `openssl` with `args` in `dir`; `false` if it is not installed or fails.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A CA and certificates signed by it for `names` (`<name>.pem`, `<name>.key`), each valid
/// for `localhost`, in a fresh directory. `None` (the reason printed) without openssl.
fn make_certificates(tag: &str, names: &[&str]) -> Option<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("shmrpc-zenoh-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=DNS:localhost\n").unwrap();
    let mut ok = openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for n in names {
        let (key, csr, pem) = (format!("{n}.key"), format!("{n}.csr"), format!("{n}.pem"));
        ok =
            ok && openssl(
                &dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                ],
            ) && openssl(
                &dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    "ext.cnf",
                    "-out",
                    &pem,
                ],
            );
    }
    if !ok {
        println!("skipped: openssl could not make test certificates (is it installed?)");
        return None;
    }
    Some(dir)
}

/// Mutual TLS passes through (the bridge runs `examples/mtls.json5`): a caller with a
/// certificate of the bridge's CA is served; one with a certificate of another CA never gets a
/// link (its connect finds no bridge).
#[test]
fn mutual_tls_admits_callers_with_a_certificate_of_the_ca_only() {
    let Some(dir) = make_certificates("good", &["bridge", "caller"]) else {
        return;
    };
    let Some(other) = make_certificates("other", &["stranger"]) else {
        return;
    };
    let f = |d: &std::path::Path, n: &str| d.join(n).to_string_lossy().into_owned();
    let (name, key) = unique("tls");
    let server = Proc::spawn(&["server", &name, "s", "large"]);
    assert_eq!(server.line(), "ready");
    let endpoint = format!("tls/localhost:{}", free_port());
    // The bridge runs the example configuration file, with this test's port and certificates.
    let example = include_str!("../examples/mtls.json5")
        .replace("tls/localhost:7447", &endpoint)
        .replace("/etc/shmrpc/ca.pem", &f(&dir, "ca.pem"))
        .replace("/etc/shmrpc/bridge.pem", &f(&dir, "bridge.pem"))
        .replace("/etc/shmrpc/bridge.key", &f(&dir, "bridge.key"));
    let file = dir.join("mtls.json5");
    std::fs::write(&file, example).unwrap();
    let bridge = Proc::spawn(&["bridge-config", &name, &key, &f(&dir, "mtls.json5")]);
    assert_eq!(bridge.line(), format!("bridging {key}"));
    let mut caller = Proc::spawn(&[
        "remote",
        &key,
        &endpoint,
        "one",
        &f(&dir, "ca.pem"),
        &f(&dir, "caller.pem"),
        &f(&dir, "caller.key"),
    ]);
    assert_eq!(caller.line(), "ok connected");
    assert_eq!(caller.ask("call secret"), "ok s:secret");
    // A stranger: its certificate is of another CA (and it trusts that CA only).
    let stranger = Proc::spawn(&[
        "remote",
        &key,
        &endpoint,
        "one",
        &f(&other, "ca.pem"),
        &f(&other, "stranger.pem"),
        &f(&other, "stranger.key"),
    ]);
    let answer = stranger.line();
    assert!(answer.starts_with("err NotFound"), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

/// Two hosts: network namespaces joined by a veth pair, made by the test (as root, with
/// `ip`). The server and the bridge run in one, the caller in the other, over the veth link.
#[test]
fn a_caller_on_another_host_reaches_the_server_through_its_bridge() {
    let tag = format!("{}", std::process::id() % 100_000);
    let Some(net) = Netns::make(&tag) else {
        return;
    };
    let (name, key) = unique("netns");
    let server = Proc::spawn_in(Some(&net.a), &["server", &name, "s", "large"]);
    assert_eq!(server.line(), "ready");
    let endpoint = "tcp/10.231.0.1:7447";
    let bridge = Proc::spawn_in(Some(&net.a), &["bridge", &name, &key, endpoint]);
    assert_eq!(bridge.line(), format!("bridging {key}"));
    let mut remote = Proc::spawn_in(Some(&net.b), &["remote", &key, endpoint, "one"]);
    assert_eq!(remote.line(), "ok connected");
    assert_eq!(remote.ask("call across"), "ok s:across");
    assert!(remote
        .ask(&format!("call-size {}", 1 << 20))
        .starts_with("ok same=true"));
    assert_eq!(remote.ask("ping"), "ok pong");
}

/// Two network namespaces joined by a veth pair (10.231.0.1 in `a`, 10.231.0.2 in `b`),
/// removed on drop.
struct Netns {
    a: String,
    b: String,
}

impl Netns {
    fn make(tag: &str) -> Option<Netns> {
        let run = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let net = Netns {
            a: format!("shmrpc-a{tag}"),
            b: format!("shmrpc-b{tag}"),
        };
        let (va, vb) = (format!("sra{tag}"), format!("srb{tag}"));
        let ok = run(&["netns", "add", &net.a])
            && run(&["netns", "add", &net.b])
            && run(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && run(&["link", "set", &va, "netns", &net.a])
            && run(&["link", "set", &vb, "netns", &net.b])
            && run(&["-n", &net.a, "addr", "add", "10.231.0.1/24", "dev", &va])
            && run(&["-n", &net.b, "addr", "add", "10.231.0.2/24", "dev", &vb])
            && run(&["-n", &net.a, "link", "set", &va, "up"])
            && run(&["-n", &net.b, "link", "set", &vb, "up"])
            && run(&["-n", &net.a, "link", "set", "lo", "up"])
            && run(&["-n", &net.b, "link", "set", "lo", "up"]);
        if !ok {
            println!(
                "skipped: cannot make network namespaces and a veth pair (needs root and `ip`)"
            );
            // (Dropping `net` removes what was made.)
            return None;
        }
        Some(net)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A call that outlasts the bridge's inline wait moves to a forwarding thread and frees Zenoh's
/// callback: a second call made while the first is held in its handler is answered, the
/// first's own reply comes once its handler goes on, and calls made while the bridge is idle
/// (a malformed one, then a quick one: the first leaves the bridge idle again) are answered by
/// the callback itself.
#[test]
fn a_call_that_outlasts_the_inline_wait_frees_zenohs_callback_for_the_next() {
    let (name, key) = unique("inline");
    let (open, gate) = std::sync::mpsc::channel::<()>();
    let (entered, entries) = std::sync::mpsc::channel::<()>();
    let (gate, entered) = (std::sync::Mutex::new(gate), std::sync::Mutex::new(entered));
    let _server = Server::builder(&name)
        .workers(2)
        .serve(move |req: Request<'_, Vec<u8>>| {
            if req.first() == Some(&0) {
                let _ = entered.lock().unwrap().send(());
                let _ = gate.lock().unwrap().recv();
            }
            req.as_slice().to_vec()
        })
        .unwrap();
    // Dropped before the server (declared after it), so that a failing run does not leave the
    // server's stop waiting for a handler held at the gate.
    let open = open;
    let endpoint = format!("tcp/127.0.0.1:{}", free_port());
    let host = shmrpc_zenoh::open(config::peer(&[&endpoint], &[]).unwrap()).unwrap();
    let bridge = Bridge::builder(&name)
        .key(&key)
        .session(host.clone())
        .inline_wait(Duration::from_secs(1))
        .start()
        .unwrap();
    let caller = shmrpc_zenoh::open(config::peer(&[], &[&endpoint]).unwrap()).unwrap();
    let t0 = Instant::now();
    let remote = loop {
        match RemoteClient::<Vec<u8>>::connect(&caller, &key) {
            Ok(remote) => break remote,
            Err(e) => assert!(t0.elapsed() < LINE_WAIT, "{e}"),
        }
        std::thread::yield_now();
    };
    let wait = Duration::from_secs(20);
    std::thread::scope(|s| {
        let held = s.spawn(|| {
            remote
                .request_timeout(&vec![0u8, 9, 9], wait)
                .map(|r| r.as_slice().to_vec())
        });
        entries.recv_timeout(LINE_WAIT).expect("the held call ran");
        let next = remote.request_timeout(&vec![7u8; 3], wait);
        assert_eq!(
            next.map(|r| r.as_slice().to_vec())
                .map_err(|e| e.to_string()),
            Ok(vec![7u8; 3]),
            "a call made while another was held in its handler"
        );
        assert_eq!(bridge.answered_inline(), 0, "the held call was handed on");
        open.send(()).unwrap();
        assert_eq!(held.join().unwrap().unwrap(), vec![0u8, 9, 9]);
    });
    let replies = caller.get(&key).timeout(wait).wait().unwrap();
    let reply = replies
        .recv()
        .expect("an answer to a query without a header");
    assert!(reply.result().is_err(), "a query without a header failed");
    assert_eq!(
        bridge.answered_inline(),
        1,
        "the malformed call was answered inline"
    );
    let quick = remote.request_timeout(&vec![3u8; 5], wait).unwrap();
    assert_eq!(quick.as_slice(), &[3u8; 5]);
    assert_eq!(
        bridge.answered_inline(),
        2,
        "the quick call was made inline"
    );
    assert_eq!(bridge.forwarded(), 4);
}
