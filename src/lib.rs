//! # shmrpc
//!
//! Request/response and one-way messaging between processes on one machine, through one
//! shared mapping per server name: no sockets, no daemon. A server publishes a name with a
//! handler; clients open it by that name. Messages are rkyv archives written straight into a
//! slot of the mapping and read in place by the other side after bytecheck validation.
//!
//! ```
//! use shmrpc::{Client, Request, Server};
//!
//! #[shmrpc::message]
//! struct Hello {
//!     text: String,
//! }
//!
//! # fn main() -> Result<(), shmrpc::Error> {
//! # let name = format!("doc-lib-{}", std::process::id());
//! let server = Server::builder(&name)
//!     .serve(|req: Request<'_, Hello>| Hello { text: format!("hi, {}", req.text) })?;
//! let client = Client::connect(&name)?;
//! let reply = client.request(&Hello { text: "server".into() })?;
//! assert_eq!(reply.text, "hi, server");
//! # drop(reply); drop(server); Ok(()) }
//! ```
//!
//! - Messages: any rkyv type ([`Message`]); [`macro@message`] derives one without a `rkyv`
//!   dependency of your own.
//! - Blocking calls: [`Client::request`], [`Client::send`], with a per-call timeout.
//! - Async calls that need no particular runtime: [`Client::request_async`],
//!   [`Client::send_async`]; one helper thread per process and server, however many futures
//!   wait; dropping a future mid-call is safe ([`CallFuture`]).
//! - Live statistics kept in the mapping: [`Server::stats`], and [`StatsView`] from any
//!   process; [`list`] and [`clean`] find this user's servers. The `shmrpc` command-line tool
//!   (crate `shmrpc-cli`) is built on these.
//! - [`Client::ping`]: a protocol-level round trip that runs no handler.
//!
//! The repository's README has a longer tour (every snippet of it runs as a doctest), and
//! `DESIGN.md` (shipped in the crate) the mapping layout, the slot state machine and the
//! memory orderings.
#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

// The mapping layout, the slot protocol and the atomics facade are public only for the loom
// models (`loom-tests/`), the fuzzers and the benchmarks: hidden, and outside semver.
#[doc(hidden)]
pub mod arena;
#[doc(hidden)]
pub mod layout;
#[doc(hidden)]
pub mod protocol;
#[doc(hidden)]
pub mod sync;

#[cfg(not(loom))]
mod admin;
#[cfg(not(loom))]
mod async_call;
#[cfg(not(loom))]
mod client;
#[cfg(not(loom))]
mod clock;
#[cfg(not(loom))]
mod connection;
#[cfg(not(loom))]
mod copy;
mod error;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod hub;
#[cfg(not(loom))]
mod large;
#[cfg(not(loom))]
mod message;
#[cfg(not(loom))]
pub mod raw;
#[cfg(not(loom))]
mod reaper;
#[cfg(not(loom))]
mod reply;
#[cfg(not(loom))]
mod server;
#[cfg(not(loom))]
mod shm;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
mod trust;
#[cfg(not(loom))]
mod wait;

#[cfg(not(loom))]
pub use async_call::{CallFuture, PingFuture, RequestFuture, SendFuture};
#[cfg(not(loom))]
pub use client::{Client, ClientBuilder, Reply, DEFAULT_TIMEOUT};
pub use error::{Error, Result};
/// The version of the mapping layout this build reads and writes; a server of another version
/// shows it in [`ServerEntry::layout_version`], and this build cannot call or inspect it.
pub use layout::LAYOUT_VERSION;
#[cfg(not(loom))]
pub use message::{Encode, Message};
#[cfg(not(loom))]
pub use reply::{AsString, AsVec, Replied, Responder};
#[cfg(not(loom))]
pub use server::{Request, Server, ServerBuilder, StopHandle};

#[cfg(not(loom))]
pub use admin::{clean, list, ServerEntry};
#[cfg(not(loom))]
pub use stats::{Histogram, SlotState, SlotUse, Stats, StatsView};
#[cfg(not(loom))]
pub use trust::Trust;
#[cfg(not(loom))]
pub use wait::WaitMode;

/// Re-exported so that users derive with the same rkyv version ([`macro@message`] does it for
/// you).
pub use rkyv;
/// Makes a struct or enum a shmrpc message: rkyv's `Archive`, `Serialize` and `Deserialize`
/// derives, through [`shmrpc::rkyv`](rkyv), so your crate needs no `rkyv` dependency.
///
/// ```
/// #[shmrpc::message]
/// #[derive(Debug, PartialEq)] // derives on your type go on as usual
/// struct Hello {
///     text: String,
///     count: u32,
/// }
///
/// // Arguments go to `#[rkyv(..)]`: here, `Debug` for the archived `ArchivedCommand` too.
/// #[shmrpc::message(derive(Debug))]
/// #[derive(Debug)]
/// enum Command {
///     Ping,
///     Say { text: String },
/// }
///
/// fn is_message<T: shmrpc::Message>() {}
/// is_message::<Hello>();
/// is_message::<Command>();
/// let bytes = shmrpc::rkyv::to_bytes::<shmrpc::rkyv::rancor::Error>(&Command::Ping).unwrap();
/// let archived = shmrpc::rkyv::access::<ArchivedCommand, shmrpc::rkyv::rancor::Error>(&bytes);
/// assert_eq!(format!("{:?}", archived.unwrap()), "Ping");
/// ```
///
/// It is an attribute rather than a derive because a derive macro cannot add derives. It
/// expands to
///
/// ```text
/// #[derive(::shmrpc::rkyv::Archive, ::shmrpc::rkyv::Serialize, ::shmrpc::rkyv::Deserialize)]
/// #[rkyv(crate = ::shmrpc::rkyv, <arguments>)]
/// ```
///
/// which is also what to write by hand where an attribute macro does not fit.
pub use shmrpc_derive::message;
pub use uuid::Uuid;

/// The README's snippets, compiled and run as doctests (`cargo test --doc -p shmrpc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
