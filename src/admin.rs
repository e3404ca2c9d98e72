//! This user's servers on this machine: finding them ([`list`]) and removing what dead ones
//! left ([`clean`]). Both read headers only, like `StatsView`, and never touch a live server.

use crate::error::{Error, Result};

/// A server mapping of this user, as [`list`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    /// The server name.
    pub name: String,
    /// Its process, if its header is readable.
    pub pid: Option<u32>,
    /// Whether it is running (else the mapping is stale: its server died or is starting).
    pub alive: bool,
    /// The mapping's layout version, if its header is readable; a server built with another
    /// layout version than this library's ([`crate::LAYOUT_VERSION`]) cannot be
    /// called or inspected by it.
    pub layout_version: Option<u32>,
}

/// The server mappings of this user on this machine, sorted by name, each marked alive or
/// stale. Reads headers only (read-only), like [`StatsView`](crate::StatsView).
///
/// ```
/// for server in shmrpc::list()? {
///     let state = if server.alive { "alive" } else { "stale" };
///     println!("{} (pid {:?}): {state}", server.name, server.pid);
/// }
/// # Ok::<(), shmrpc::Error>(())
/// ```
pub fn list() -> Result<Vec<ServerEntry>> {
    let mut out = Vec::new();
    for name in crate::shm::list_names()? {
        let entry = match crate::shm::peek_header(&name) {
            Some((version, pid, alive)) => ServerEntry {
                name,
                pid: Some(pid),
                alive,
                layout_version: Some(version),
            },
            None => ServerEntry {
                name,
                pid: None,
                alive: false,
                layout_version: None,
            },
        };
        out.push(entry);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes the mappings of dead servers of this user, never a live one: a name is removed
/// only while its lock can be taken, which no running server allows. Returns the names
/// removed. Objects that are not this user's own (`Error::ForeignObject`) are left alone.
///
/// ```no_run
/// // (Not run by the doctests: it would remove stale servers that other tests on the machine
/// // create on purpose.)
/// for name in shmrpc::clean()? {
///     println!("removed the leftovers of {name}");
/// }
/// # Ok::<(), shmrpc::Error>(())
/// ```
pub fn clean() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in crate::shm::list_names()? {
        match crate::shm::remove_stale(&name) {
            Ok(true) => removed.push(name),
            Ok(false) | Err(Error::AddrInUse { .. }) => {}
            // Not ours to remove (another user's plant, a wrong mode): left alone.
            Err(e @ Error::ForeignObject { .. }) => {
                tracing::warn!(server = %name, "clean left an object alone: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    removed.sort();
    Ok(removed)
}
