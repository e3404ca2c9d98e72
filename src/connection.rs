//! A client process's connection to one server: the mapping, what this process learnt of the
//! server's life (once found gone, it stays gone for every handle here), and the process's
//! async state for it (`async_call::Hub`, made by the first async call). Shared by every
//! client handle of one name in the process (`client::shared_mapping`); the mapping itself
//! (`shm.rs`) knows nothing of clients, hubs or futures.

use crate::async_call::Hub;
use crate::error::Result;
use crate::shm::Mapping;
use crate::sync::{AtomicU32, Ordering};
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug)]
pub(crate) struct Connection {
    map: Mapping,
    /// Set once a caller found this mapping's server dead or stopped, so that later calls
    /// through any handle fail fast (or reconnect) without asking the kernel again.
    gone: AtomicU32,
    /// This process's async state for this server, made by the first async call.
    pub(crate) hub: OnceLock<Arc<Hub>>,
    pub(crate) hub_init: Mutex<()>,
}

impl Connection {
    /// Opens the mapping of the running server `name` and takes this process's entry in it.
    pub(crate) fn open(name: &str) -> Result<Connection> {
        // Settled now rather than on a call's first park.
        let _ = crate::wait::caller_park_slice();
        Ok(Connection {
            map: Mapping::open(name)?,
            gone: AtomicU32::new(0),
            hub: OnceLock::new(),
            hub_init: Mutex::new(()),
        })
    }

    /// The mapping.
    #[inline]
    pub(crate) fn map(&self) -> &Mapping {
        &self.map
    }

    /// Whether the server runs ([`Mapping::server_running`]: one system call), remembering a
    /// negative answer.
    pub(crate) fn server_alive(&self) -> bool {
        if self.known_gone() {
            return false;
        }
        let alive = self.map.server_running();
        if !alive {
            self.gone.store(1, Ordering::Relaxed);
        }
        alive
    }

    /// Whether the server is known to have stopped or died: cheap, no system call.
    #[inline]
    pub(crate) fn known_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed) != 0 || !self.map.running_state()
    }
}

impl Deref for Connection {
    type Target = Mapping;
    #[inline]
    fn deref(&self) -> &Mapping {
        &self.map
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // The async helper (if any) finds the connection gone and exits now rather than at
        // the end of its idle park.
        if let Some(hub) = self.hub.get() {
            hub.nudge();
        }
    }
}
