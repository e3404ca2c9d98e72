//! shmrpc across machines: a running local [`shmrpc`] server served to other hosts over
//! [Zenoh](https://zenoh.io), and called from there with the same shape of API as
//! [`shmrpc::Client`].
//!
//! - [`Bridge`] (or `shmrpc bridge NAME`) exposes one local server, found by its name, under a
//!   Zenoh key expression (by default `shmrpc/<host>/<name>`, [`default_key`]). Each query is
//!   forwarded to the server by a [`shmrpc::raw::RawClient`], with the caller's message id,
//!   type fingerprints and time left; one-way messages and pings too. A fixed set of
//!   forwarding threads carries the calls (no thread per call), each in its own slot; while
//!   the bridge carries no other call, Zenoh's callback makes the call itself for up to
//!   [`BridgeBuilder::inline_wait`] before a thread takes it over.
//! - [`RemoteClient`] calls it: `request`, `request_timeout`, `send`, `ping` and their async
//!   forms, typed messages (rkyv archives on the wire, validated on arrival and read in the
//!   received buffer where it is one aligned piece), and the type check of a local call: the
//!   server compares the caller's fingerprints before it validates anything.
//!
//! ```no_run
//! use shmrpc_zenoh::{config, Bridge, RemoteClient};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // On the server's host, next to a running shmrpc server named "echo":
//! let bridge = Bridge::builder("echo")
//!     .key("shmrpc/lab/echo")
//!     .config(config::peer(&["tcp/0.0.0.0:7447"], &[])?)
//!     .start()?;
//!
//! // On another host:
//! let session = shmrpc_zenoh::open(config::peer(&[], &["tcp/server-host:7447"])?)?;
//! let client = RemoteClient::<String>::connect(&session, "shmrpc/lab/echo")?;
//! println!("{}", *client.request(&"hello".to_string())?);
//! # drop(bridge); Ok(()) }
//! ```
//!
//! **Choosing among several bridges.** Several hosts may expose the same key. A bridge declares
//! its queryable *complete* for its key, and a [`RemoteClient`] queries with
//! [`Target::One`] by default (Zenoh's `QueryTarget::BestMatching`), so Zenoh routes each call
//! to one of them (the one its routing finds nearest; which one, on a tie, is Zenoh's choice),
//! and runs it once. [`Target::All`] (`QueryTarget::All`) sends the call to every
//! bridge of the key and returns the first reply: for idempotent calls that want the fastest
//! host, never for calls with side effects. Consolidation is off (`ConsolidationMode::None`):
//! a reply is delivered as soon as it arrives.
//!
//! **Security.** Zenoh's TLS and mutual TLS settings pass through unchanged ([`config::tls`]),
//! a bridge enforces its server's message bound before it forwards anything, keys and names
//! are validated, and a bridge exposes exactly the one server it was started for, under
//! exactly one key (no wildcards). Anyone who can reach the bridge's Zenoh network can call
//! the server: put the network behind mutual TLS (or Zenoh's access control) when that is
//! not what you want.

#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod expose;
mod remote;
mod wire;

pub mod config;

pub use expose::{Bridge, BridgeBuilder};
pub use remote::{RemoteClient, RemoteClientBuilder, RemoteReply, Target};
/// The Zenoh this crate is built on, for its configuration and sessions.
pub use zenoh;

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong with a bridge or a remote call.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No bridge exposes the key, or the bridge's host runs no server of that name.
    NotFound {
        /// The key expression called.
        key: String,
        /// Which of the two, in words.
        detail: String,
    },
    /// The call did not complete within its timeout (on the way, or in the server).
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The server stopped or died while the call waited.
    ServerGone {
        /// The key expression called.
        key: String,
    },
    /// The message is larger than the server takes.
    PayloadTooLarge {
        /// Bytes of the message (0 if unknown).
        len: usize,
        /// The largest message the server takes.
        max: usize,
    },
    /// A message did not validate: the request at the server, or the reply here.
    BadMessage(String),
    /// The call's types are not the server's: nothing was validated or run.
    TypeMismatch {
        /// The key expression called.
        key: String,
        /// The caller's types, in words.
        client: String,
        /// The server's types, in its own words.
        server: String,
    },
    /// The handler panicked while serving this call; the server goes on serving.
    HandlerPanicked,
    /// The call's slot was taken by a process that broke the protocol; the call was lost.
    CallLost,
    /// The bridge or its server takes no more calls now; try again later.
    Busy {
        /// The key expression called.
        key: String,
        /// Why, in the bridge's words.
        detail: String,
    },
    /// Another failure, reported by the bridge in its words.
    Remote {
        /// The key expression called.
        key: String,
        /// The bridge's words.
        detail: String,
    },
    /// Zenoh failed (opening a session, declaring, querying, or an answer of no known form).
    Transport(String),
    /// The key expression is not acceptable.
    InvalidKey {
        /// The key given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting is out of range, or a configuration does not parse.
    InvalidConfig(String),
    /// The local side of a bridge failed (its server is not running, its name is invalid...).
    Local(shmrpc::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound { key, detail } => write!(f, "nothing serves {key:?}: {detail}"),
            Error::Timeout { after } => write!(f, "the remote call timed out after {after:?}"),
            Error::ServerGone { key } => {
                write!(
                    f,
                    "the server behind {key:?} stopped or died during the call"
                )
            }
            Error::PayloadTooLarge { len, max } => write!(
                f,
                "message of {len} bytes is larger than the {max} bytes the server takes"
            ),
            Error::BadMessage(why) => write!(f, "bad message: {why}"),
            Error::TypeMismatch {
                key,
                client,
                server,
            } => write!(
                f,
                "the types of a call to {key:?} do not match: this caller {client}; the \
                 server {server}"
            ),
            Error::HandlerPanicked => write!(f, "the server's handler panicked on this call"),
            Error::CallLost => write!(
                f,
                "the call's slot was taken by a process that broke the protocol; the call was \
                 lost"
            ),
            Error::Busy { key, detail } => write!(f, "{key:?} is busy: {detail}"),
            Error::Remote { key, detail } => write!(f, "the bridge of {key:?} failed: {detail}"),
            Error::Transport(why) => write!(f, "zenoh: {why}"),
            Error::InvalidKey { key, reason } => write!(f, "invalid key {key:?}: {reason}"),
            Error::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            Error::Local(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Local(e) => Some(e),
            _ => None,
        }
    }
}

impl From<shmrpc::Error> for Error {
    fn from(e: shmrpc::Error) -> Error {
        Error::Local(e)
    }
}

/// A Zenoh error, as a [`Error::Transport`].
fn transport(what: &str, e: impl fmt::Display) -> Error {
    Error::Transport(format!("{what}: {e}"))
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Opens a Zenoh session with `config` (see [`config`]).
///
/// Zenoh runs its own threads; this blocks until the session is open. Do not call it on the
/// thread of a single-threaded async runtime (Zenoh's blocking calls need a multi-threaded
/// one); dropping the last clone of a session closes it the same way.
pub fn open(config: zenoh::Config) -> Result<zenoh::Session> {
    use zenoh::Wait;
    zenoh::open(config)
        .wait()
        .map_err(|e| transport("cannot open a session", e))
}

/// The key a bridge exposes server `name` under by default: `shmrpc/<host>/<name>`, where
/// `<host>` is this machine's host name with any character other than ASCII letters, digits,
/// `_`, `-` and `.` replaced by `_`.
pub fn default_key(name: &str) -> Result<String> {
    shmrpc::raw::validate_name(name)?;
    Ok(key_for(&host_name(), name))
}

/// The key of server `name` exposed by default on host `host` ([`default_key`] there).
pub fn key_for(host: &str, name: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "localhost".into()
    } else {
        host
    };
    format!("shmrpc/{host}/{name}")
}

/// This machine's host name, as far as it can be read.
fn host_name() -> String {
    let from_file = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok();
    from_file
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `key` as a key expression a bridge may expose or a client may call: valid for Zenoh, and
/// one key (no wildcard `*`, `**` or `$*`: a bridge exposes exactly what it was asked to).
fn exact_key(key: &str) -> Result<zenoh::key_expr::OwnedKeyExpr> {
    let invalid = |reason: String| Error::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let ke = zenoh::key_expr::OwnedKeyExpr::try_from(key.to_owned())
        .map_err(|e| invalid(format!("not a Zenoh key expression ({e})")))?;
    if key.contains('*') || key.contains('$') {
        return Err(invalid(
            "wildcards are not allowed: a bridge exposes, and a call names, exactly one key".into(),
        ));
    }
    if key.starts_with('@') {
        return Err(invalid(
            "keys starting with '@' are Zenoh's admin space".into(),
        ));
    }
    Ok(ke)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_wildcards_or_bad_syntax_are_refused_with_a_reason() {
        for (key, why) in [
            ("shmrpc/*/echo", "wildcards"),
            ("shmrpc/**", "wildcards"),
            ("shmrpc/a$*b", "wildcards"),
            ("", "not a Zenoh key"),
            ("a//b", "not a Zenoh key"),
            ("a/b/", "not a Zenoh key"),
            ("a?b", "not a Zenoh key"),
            ("a#b", "not a Zenoh key"),
            ("@admin/x", "admin space"),
        ] {
            match exact_key(key) {
                Err(Error::InvalidKey { reason, .. }) => {
                    assert!(reason.contains(why), "{key:?}: {reason}")
                }
                other => panic!("{key:?}: {other:?}"),
            }
        }
        assert!(exact_key("shmrpc/host-1/echo.v2").is_ok());
    }

    #[test]
    fn the_default_key_names_host_and_server_and_refuses_bad_names() {
        assert_eq!(key_for("lab one/α", "echo"), "shmrpc/lab_one__/echo");
        assert_eq!(key_for("", "echo"), "shmrpc/localhost/echo");
        let key = default_key("echo").unwrap();
        assert!(
            key.starts_with("shmrpc/") && key.ends_with("/echo"),
            "{key}"
        );
        assert!(exact_key(&key).is_ok(), "{key}");
        assert!(matches!(
            default_key("a/b"),
            Err(Error::Local(shmrpc::Error::InvalidName { .. }))
        ));
    }
}
