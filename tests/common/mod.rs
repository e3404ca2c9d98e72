//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// A server name unique to this process and call site, so tests never collide.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The message the tests' echo servers use.
#[shmrpc::message]
#[derive(Debug, PartialEq, Clone)]
pub struct Echo {
    /// A number the client chooses; the reply carries it back.
    pub n: u64,
    /// Free text; the reply carries it back with a prefix.
    pub text: String,
    /// In a reply: the call id the handler saw.
    pub id: [u8; 16],
    /// The handler sleeps this many milliseconds before replying.
    pub sleep_ms: u32,
    /// [`Gate::STOP`]: the process serializing this message stops itself (SIGSTOP) in the
    /// middle of writing it into its slot, after printing "writing" (the text is already in
    /// the slot then, the rest not yet). Replies carry 0.
    #[rkyv(with = Gate)]
    pub gate: u32,
}

impl Echo {
    pub fn new(n: u64, text: impl Into<String>) -> Echo {
        Echo {
            n,
            text: text.into(),
            id: [0; 16],
            sleep_ms: 0,
            gate: 0,
        }
    }
}

/// An rkyv wrapper for a `u32` that, with the value [`Gate::STOP`], stops the serializing
/// process at that point of its write: a client paused (or killed) after its claim, mid-write.
pub struct Gate;

impl Gate {
    pub const STOP: u32 = 1;
}

impl shmrpc::rkyv::with::ArchiveWith<u32> for Gate {
    type Archived = shmrpc::rkyv::Archived<u32>;
    type Resolver = ();
    fn resolve_with(field: &u32, _: (), out: shmrpc::rkyv::Place<Self::Archived>) {
        shmrpc::rkyv::Archive::resolve(field, (), out);
    }
}

impl<S: shmrpc::rkyv::rancor::Fallible + ?Sized> shmrpc::rkyv::with::SerializeWith<u32, S>
    for Gate
{
    fn serialize_with(field: &u32, _: &mut S) -> Result<(), S::Error> {
        if *field == Gate::STOP {
            say("writing".into());
            // SAFETY: raise has no memory-safety preconditions.
            #[cfg(unix)]
            unsafe {
                libc::raise(libc::SIGSTOP)
            };
            // No signals to stop a process with: the writing thread stops for good instead
            // (the tests that use the gate on Windows kill the process there).
            #[cfg(windows)]
            loop {
                std::thread::park();
            }
        }
        Ok(())
    }
}

impl<D: shmrpc::rkyv::rancor::Fallible + ?Sized>
    shmrpc::rkyv::with::DeserializeWith<shmrpc::rkyv::Archived<u32>, u32, D> for Gate
{
    fn deserialize_with(field: &shmrpc::rkyv::Archived<u32>, _: &mut D) -> Result<u32, D::Error> {
        Ok(field.to_native())
    }
}

/// Waits (`waitpid` with `WUNTRACED`) until child `pid` has stopped; panics if it exits.
#[cfg(unix)]
pub fn wait_stopped(pid: u32) {
    let mut status = 0;
    // SAFETY: waitpid writes the status into our local; `pid` is our child.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WUNTRACED) };
    assert_eq!(r, pid as i32, "waitpid failed");
    assert!(
        libc::WIFSTOPPED(status),
        "child {pid} did not stop (status {status:#x})"
    );
}

/// Sends `sig` to process `pid`.
#[cfg(unix)]
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill({pid}, {sig})"
    );
}

/// The echo handler: sleeps if asked, panics on `text == "panic"`, and otherwise replies with
/// the same number, the text prefixed with "re:", and the call id it saw.
pub fn echo(req: shmrpc::Request<'_, Echo>) -> Echo {
    if req.sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(u64::from(
            req.sleep_ms.to_native(),
        )));
    }
    if req.text == "panic" {
        panic!("the test asked this handler to panic");
    }
    Echo {
        n: req.n.to_native(),
        text: format!("re:{}", req.text),
        id: *req.id().as_bytes(),
        sleep_ms: 0,
        gate: 0,
    }
}

pub const ROLE: &str = "SHMRPC_TEST_CHILD";

/// A child process, killed on drop if still running.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
}

/// Child lines meant for the parent start with this marker (libtest prints its own text,
/// sometimes on the same line).
const MARK: &str = "@@ ";

/// The longest a parent waits for any one line from a child.
const LINE_LIMIT: Duration = Duration::from_secs(60);

impl Proc {
    pub fn spawn(role: &[&str]) -> Proc {
        Proc::spawn_under(&[], role)
    }

    /// [`Proc::spawn`] through a wrapper command (`prefix`, for example `unshare --pid`), which
    /// runs this test binary as its last argument.
    pub fn spawn_under(prefix: &[&str], role: &[&str]) -> Proc {
        Proc::spawn_with(prefix, &[], role)
    }

    /// [`Proc::spawn_under`] with extra environment variables.
    pub fn spawn_with(prefix: &[&str], env: &[(&str, &str)], role: &[&str]) -> Proc {
        Proc::spawn_full(prefix, env, None, role).unwrap()
    }

    /// [`Proc::spawn`] as another user (`uid` and group `uid`; the caller must be root), or
    /// `None` if that user cannot run this test binary.
    /// The child's first line must be "started".
    pub fn spawn_as(uid: u32, role: &[&str]) -> Option<Proc> {
        let p = Proc::spawn_full(&[], &[], Some(uid), role).ok()?;
        match p.lines.recv_timeout(LINE_LIMIT) {
            Ok(line) if line == "started" => Some(p),
            _ => None,
        }
    }

    /// [`Proc::spawn_under`] of another test binary `exe` (built from the same source, maybe
    /// for another target: its `child_entry` takes the same roles).
    pub fn spawn_exe(exe: &std::path::Path, prefix: &[&str], role: &[&str]) -> Proc {
        Proc::spawn_from(Some(exe), prefix, &[], None, role).unwrap()
    }

    fn spawn_full(
        prefix: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
        role: &[&str],
    ) -> std::io::Result<Proc> {
        Proc::spawn_from(None, prefix, env, uid, role)
    }

    fn spawn_from(
        exe: Option<&std::path::Path>,
        prefix: &[&str],
        env: &[(&str, &str)],
        uid: Option<u32>,
        role: &[&str],
    ) -> std::io::Result<Proc> {
        let exe = exe.map_or_else(|| std::env::current_exe().unwrap(), |e| e.to_owned());
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        if let Some(uid) = uid {
            #[cfg(unix)]
            {
                use std::os::unix::process::CommandExt;
                command.uid(uid).gid(uid);
            }
            #[cfg(not(unix))]
            return Err(std::io::Error::other(format!(
                "running a child as uid {uid} is a Unix test"
            )));
        }
        let mut child = command
            .args([
                "--exact",
                "child_entry",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(ROLE, role.join(" "))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Some(at) = line.find(MARK) {
                    if tx.send(line[at + MARK.len()..].to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Proc { child, lines })
    }

    /// The next marked line the child prints, waiting at most `LINE_LIMIT`.
    pub fn line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_LIMIT) {
            Ok(line) => line,
            Err(e) => panic!("no line from the child within {LINE_LIMIT:?}: {e}"),
        }
    }

    /// Sends `line` to the child's stdin (see [`read_line`]).
    pub fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin (a server's stop signal) and waits for the exit, at most `limit`.
    pub fn finish(&mut self, limit: Duration) -> bool {
        drop(self.child.stdin.take());
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(t0.elapsed() < limit, "child did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls server `name`'s statistics until `cond` holds, at most 30 s: a bounded wait on an
/// observable condition, not a sleep standing in for one.
pub fn wait_for_stats(
    name: &str,
    what: &str,
    cond: impl Fn(&shmrpc::Stats) -> bool,
) -> shmrpc::Stats {
    let t0 = Instant::now();
    loop {
        let s = shmrpc::StatsView::open(name).unwrap().stats();
        if cond(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "never saw {what}: {s:?}"
        );
        std::thread::yield_now();
    }
}

/// Blocks until stdin closes: the parent's stop signal for server children.
pub fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// Reads one line from stdin (what the parent sent with [`Proc::tell`]).
pub fn read_line() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim_end().to_owned()
}

pub fn say(line: String) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{MARK}{line}").unwrap();
    out.flush().unwrap();
}

/// Spawns a server child and waits for its "ready".
pub fn start_server(role: &[&str]) -> Proc {
    let mut p = Proc::spawn(role);
    assert_eq!(p.line(), "ready");
    p
}

/// A small deterministic generator (SplitMix64): seeded inputs, reproducible failures.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
