//! The one error type of shmrpc.

use std::fmt;
use std::time::Duration;

/// Everything that can go wrong with a server or a call.
///
/// Each variant's `Display` is a sentence a user can act on:
///
/// ```
/// use shmrpc::{Client, Error};
///
/// match Client::<String>::connect("no-such-server") {
///     Err(e @ Error::NotFound { .. }) => eprintln!("error: {e}"), // no server named ...
///     Err(e) => eprintln!("error: {e}"),
///     Ok(_) => unreachable!(),
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No server of that name is running (no mapping, a stale one, or one still starting).
    NotFound {
        /// The name looked up.
        name: String,
    },
    /// The call did not complete within its timeout; its slot is given back to the server.
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
        /// The server name.
        name: String,
    },
    /// The server stopped or died while the call waited (or before it started).
    ServerGone {
        /// The server name.
        name: String,
    },
    /// The message is larger than the server takes (its large-message memory, or a slot if
    /// the server has none), or, for a reply, found no room there in time.
    PayloadTooLarge {
        /// Bytes of the serialized message (0 if unknown).
        len: usize,
        /// The largest message the server takes ([`crate::Client::max_message`]).
        max: usize,
    },
    /// A builder setting is out of range; the message names the bounds.
    InvalidConfig(String),
    /// The server name is not acceptable.
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Every entry of the server's process table is held by a live process (at most `max`
    /// client processes connect to one server at a time).
    TooManyClients {
        /// The server name.
        name: String,
        /// How many client processes a server takes.
        max: usize,
    },
    /// The call's slot was taken away from this caller by another process that broke the
    /// protocol (wrote into the mapping): the call was not published, or its reply is lost.
    /// No other call's state word was changed (bytes already written into the slot may have
    /// reached the slot's new owner, as any stray write does).
    CallLost {
        /// The server name.
        name: String,
    },
    /// An object under the server's name is not one this user's shmrpc created: a symbolic
    /// link, a hard link, another user's file, or a wrong mode. Nothing was mapped or locked.
    /// Another user may be impersonating the server; remove the object (as its owner or
    /// root) or use another name.
    ForeignObject {
        /// The object's path.
        object: String,
        /// What is wrong with it (its owner and mode, or its kind).
        detail: String,
    },
    /// A live server already holds that name.
    AddrInUse {
        /// The name.
        name: String,
    },
    /// A message (or the mapping itself) did not validate.
    BadMessage(String),
    /// The call's request type, or the reply type its caller expects, is not the server's
    /// (their fingerprints differ: DESIGN.md, "Types on the wire"). Nothing was validated or
    /// run.
    TypeMismatch {
        /// The server name.
        name: String,
        /// The caller's types, in words.
        client: String,
        /// The server's types, in its own words.
        server: String,
    },
    /// The handler panicked while serving this call; the server goes on serving.
    HandlerPanicked,
    /// An operating-system call failed. Kind `StorageFull` when the file system behind the
    /// mappings (`/dev/shm` on Linux) is full: a message that needed memory there (a request,
    /// or the reply the server could not place), or a server that could not start.
    Io {
        /// What was being done, and to which object.
        context: String,
        /// The error the system reported.
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound { name } => write!(f, "no shmrpc server named {name:?} is running"),
            Error::Timeout { after, name } => {
                write!(f, "the call to server {name:?} timed out after {after:?}")
            }
            Error::ServerGone { name } => write!(f, "the server {name:?} stopped or died"),
            Error::PayloadTooLarge { len: 0, max } => write!(
                f,
                "the reply is larger than the {max} bytes the server takes, or found no room \
                 in its large-message memory in time"
            ),
            Error::PayloadTooLarge { len, max } => write!(
                f,
                "message of {len} bytes is larger than the {max} bytes the server takes"
            ),
            Error::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            Error::InvalidName { name, reason } => {
                write!(f, "invalid server name {name:?}: {reason}")
            }
            Error::TooManyClients { name, max } => write!(
                f,
                "server {name:?} already has {max} client processes connected (its limit)"
            ),
            Error::CallLost { name } => write!(
                f,
                "the call's slot in server {name:?} was taken by another process that broke \
                 the protocol; the call was lost"
            ),
            Error::ForeignObject { object, detail } => write!(
                f,
                "{object} {detail}: it is not an object this user's shmrpc created, so it was \
                 neither mapped nor locked (another user may be impersonating the server); \
                 remove it (as its owner or root) or use another server name"
            ),
            Error::AddrInUse { name } => {
                write!(f, "a live shmrpc server already holds the name {name:?}")
            }
            Error::BadMessage(why) => write!(f, "bad message: {why}"),
            Error::TypeMismatch {
                name,
                client,
                server,
            } => write!(
                f,
                "type mismatch with server {name:?}: this client {client}; the server {server}"
            ),
            Error::HandlerPanicked => write!(f, "the server's handler panicked on this call"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io("an operating-system call", e)
    }
}

#[cfg(unix)]
impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Self {
        Error::io("an operating-system call", e)
    }
}

impl Error {
    /// An `Io` error: `source` happened while doing `context` (what, to which object).
    pub(crate) fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Adds what was being done, and to which object, to a failed system call.
#[cfg(not(loom))]
pub(crate) trait Context<T> {
    /// `Err(e)` becomes `Error::Io { context: what(), source: e }`.
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

#[cfg(not(loom))]
impl<T, E: Into<std::io::Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}

/// `Result<T, shmrpc::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
