//! # shmrpc
//!
//! Request/response and one-way messaging between processes on one machine, through one
//! shared mapping per server name: no sockets, no daemon. A server publishes a name with a
//! handler; clients open it by that name. Messages are rkyv archives written straight into a
//! slot of the mapping and read in place by the other side after bytecheck validation.
//!
//! ```no_run
//! use shmrpc::{Client, Request, Server};
//!
//! # fn main() -> Result<(), shmrpc::Error> {
//! let server = Server::builder("Greeter")
//!     .serve(|req: Request<'_, String>| format!("hi, {}", req.as_str()))?;
//! let client = Client::connect("Greeter")?;
//! let reply = client.request(&"server".to_string())?;
//! assert_eq!(reply.as_str(), "hi, server");
//! # drop(reply); drop(server); Ok(()) }
//! ```
//!
//! - Blocking calls: [`Client::request`], [`Client::send`], with a per-call timeout.
//! - Async calls that need no particular runtime: [`Client::request_async`],
//!   [`Client::send_async`]; one helper thread per process and server, however many futures
//!   wait; dropping a future mid-call is safe.
//! - Live statistics kept in the mapping: [`Server::stats`], and [`StatsView`] from any
//!   process; [`list`] and [`clean`] find this user's servers. The `shmrpc` command-line tool
//!   (`cli/`) is built on these.
//! - [`Client::ping`]: a protocol-level round trip that runs no handler.
//!
//! See `DESIGN.md` for the mapping layout, the slot state machine and the memory orderings.
#![deny(missing_docs, missing_debug_implementations, unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(target_os = "linux"))]
compile_error!("shmrpc runs on Linux (it uses shared futexes and /dev/shm)");

pub mod layout;
pub mod protocol;
pub mod sync;

#[cfg(not(loom))]
mod async_call;
#[cfg(not(loom))]
mod client;
mod error;
#[cfg(not(loom))]
mod futex;
#[cfg(not(loom))]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(not(loom))]
mod message;
#[cfg(not(loom))]
mod reaper;
#[cfg(not(loom))]
mod server;
#[cfg(not(loom))]
mod shm;
#[cfg(not(loom))]
mod stats;
#[cfg(not(loom))]
mod trust;
#[cfg(not(loom))]
mod wait;

#[cfg(not(loom))]
pub use async_call::{CallFuture, PingFuture, RequestFuture, SendFuture};
#[cfg(not(loom))]
pub use client::{Client, ClientBuilder, Reply, DEFAULT_TIMEOUT};
pub use error::{Error, Result};
#[cfg(not(loom))]
pub use message::Message;
#[cfg(not(loom))]
pub use server::{Request, Server, ServerBuilder, StopHandle};
#[cfg(not(loom))]
pub use stats::{clean, list, Histogram, ServerEntry, SlotState, SlotUse, Stats, StatsView};
#[cfg(not(loom))]
pub use trust::Trust;
#[cfg(not(loom))]
pub use wait::WaitMode;

/// Re-exported so that users derive with the same rkyv version.
pub use rkyv;
pub use uuid::Uuid;
