//! The bridge: one local server exposed under one Zenoh key.

use crate::wire::{Code, Failure, Header, Kind};
use crate::{exact_key, transport, Error, Result};
use shmrpc::raw::{RawCall, RawClient};
use shmrpc::{Client, Trust};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use zenoh::query::{Query, Queryable};
use zenoh::{Config, Session, Wait};

/// Forwarding threads of a bridge unless [`BridgeBuilder::workers`] says otherwise.
pub const DEFAULT_WORKERS: usize = 16;
/// Longest a forwarded call may take, whatever time its caller gives it, unless
/// [`BridgeBuilder::max_timeout`] says otherwise.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(300);
/// Queries waiting for a forwarding thread, per thread, before the bridge answers `Busy`.
const QUEUE_PER_WORKER: usize = 64;

/// Configures a [`Bridge`].
#[derive(Debug)]
pub struct BridgeBuilder {
    name: String,
    key: Option<String>,
    workers: usize,
    max_timeout: Duration,
    trust: Trust,
    session: Option<Session>,
    config: Option<Config>,
}

impl BridgeBuilder {
    /// Whether the bridge trusts the local server's mapping (default [`Trust::Trusted`], as a
    /// client): trusted, it copies each reply straight from the slot into the Zenoh reply;
    /// untrusting, it first copies it out and checks the server's checksum (about twice the
    /// time per byte of the reply: BENCHMARKS.md). The remote caller validates the
    /// reply either way.
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// The key expression to expose the server under (default: [`crate::default_key`]).
    /// Exactly one key: no wildcards.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Forwarding threads: how many calls the bridge carries at once (default 16). Each blocks
    /// in its call's slot until the reply; more calls wait in a queue (64 per thread), beyond
    /// which a call gets `Busy` at once.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The longest a forwarded call may take, whatever time its caller allows (default 300 s).
    pub fn max_timeout(mut self, t: Duration) -> Self {
        self.max_timeout = t;
        self
    }

    /// The Zenoh session to expose the server on (default: one opened with
    /// [`BridgeBuilder::config`]'s configuration).
    pub fn session(mut self, session: Session) -> Self {
        self.session = Some(session);
        self
    }

    /// The configuration of the bridge's own session (default: Zenoh's default configuration,
    /// a peer that scouts by multicast); ignored with [`BridgeBuilder::session`].
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Connects to the local server and starts exposing it. Fails with
    /// `Local(NotFound)` if no server of that name runs here: a bridge exposes only a server
    /// that it was asked to expose and found.
    pub fn start(self) -> Result<Bridge> {
        if !(1..=1024).contains(&self.workers) {
            return Err(Error::InvalidConfig(format!(
                "workers must be 1..=1024, not {}",
                self.workers
            )));
        }
        let key = match self.key {
            Some(k) => k,
            None => crate::default_key(&self.name)?,
        };
        let ke = exact_key(&key)?;
        let raw = RawClient::with(Client::builder(&self.name).trust(self.trust))?;
        let session = match self.session {
            Some(s) => s,
            None => crate::open(self.config.unwrap_or_default())?,
        };
        let shared = Arc::new(Shared {
            raw,
            key: key.clone(),
            max_timeout: self.max_timeout,
            forwarded: AtomicU64::new(0),
        });
        // `None` tells a thread to end (`Bridge::drop`).
        let (tx, rx) = flume::bounded::<Option<Query>>(self.workers * QUEUE_PER_WORKER);
        let stop = tx.clone();
        let busy = {
            let key = key.clone();
            move |query: Query| {
                let f = Failure::new(
                    Code::Busy,
                    format!("the bridge of {key:?} has a full queue of calls"),
                );
                let _ = query.reply_err(f.encode()).wait();
            }
        };
        let queryable = session
            .declare_queryable(ke)
            // Complete: it answers every call on its key, so a caller's BestMatching target
            // picks one such bridge instead of querying them all.
            .complete(true)
            .callback(move |query| {
                if let Err(e) = tx.try_send(Some(query)) {
                    if let Some(query) = e.into_inner() {
                        busy(query);
                    }
                }
            })
            .wait()
            .map_err(|e| transport(&format!("cannot declare a queryable on {key:?}"), e))?;
        let threads = (0..self.workers)
            .map(|i| {
                let (rx, shared) = (rx.clone(), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("shmrpc-bridge-{i}"))
                    .spawn(move || {
                        while let Ok(Some(query)) = rx.recv() {
                            shared.forward(query);
                        }
                    })
                    .map_err(|e| Error::InvalidConfig(format!("cannot start a thread: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(server = %self.name, key = %key, workers = self.workers, "bridge started");
        Ok(Bridge {
            name: self.name,
            shared,
            queryable: Some(queryable),
            stop,
            threads,
            session,
        })
    }
}

/// What the forwarding threads share.
struct Shared {
    raw: RawClient,
    key: String,
    max_timeout: Duration,
    forwarded: AtomicU64,
}

impl Shared {
    /// Forwards one query to the local server and answers it.
    fn forward(&self, query: Query) {
        let outcome = self.call(&query);
        self.forwarded.fetch_add(1, Ordering::Relaxed);
        let sent = match outcome {
            Ok(reply) => query.reply(query.key_expr().clone(), reply).wait(),
            Err(f) => query.reply_err(f.encode()).wait(),
        };
        if let Err(e) = sent {
            tracing::debug!(key = %self.key, "could not answer a call: {e}");
        }
    }

    /// The local call a query asks for: the reply's archive (empty for a one-way message or a
    /// ping), or why it failed.
    fn call(&self, query: &Query) -> std::result::Result<Vec<u8>, Failure> {
        let header = query
            .attachment()
            .ok_or_else(|| Failure::new(Code::BadCall, "the call has no shmrpc header"))
            .and_then(|a| {
                Header::decode(&a.to_bytes()).map_err(|why| Failure::new(Code::BadCall, why))
            })?;
        // The archive as Zenoh received it, in one piece or several (a large message arrives
        // in fragments): the slot takes the pieces one after the other, without a join.
        let archive: Vec<&[u8]> = query
            .payload()
            .map_or_else(Vec::new, |p| p.slices().collect());
        let len: usize = archive.iter().map(|piece| piece.len()).sum();
        let max = self.raw.max_message();
        if len > max {
            // The server's bound, enforced here: nothing that large reaches the mapping.
            return Err(Failure::of(&shmrpc::Error::PayloadTooLarge { len, max }));
        }
        let timeout = header.timeout.min(self.max_timeout);
        let call = RawCall {
            archive: &archive,
            request_type: header.request_type,
            reply_type: header.reply_type,
            id: header.id,
        };
        let failed = |e: shmrpc::Error| Failure::of(&e);
        match header.kind {
            Kind::Request => {
                let reply = self.raw.request(&call, timeout).map_err(failed)?;
                Ok(reply.bytes().to_vec())
            }
            Kind::OneWay => self
                .raw
                .send(&call, timeout)
                .map(|()| Vec::new())
                .map_err(failed),
            Kind::Ping => self.raw.ping(timeout).map(|_| Vec::new()).map_err(failed),
        }
    }
}

/// A local server exposed to other hosts under a Zenoh key (see the crate documentation).
/// Dropping it stops exposing the server: calls already taken are answered first.
pub struct Bridge {
    name: String,
    shared: Arc<Shared>,
    queryable: Option<Queryable<()>>,
    stop: flume::Sender<Option<Query>>,
    threads: Vec<JoinHandle<()>>,
    session: Session,
}

impl Bridge {
    /// A builder for a bridge to the local server `name`.
    pub fn builder(name: impl Into<String>) -> BridgeBuilder {
        BridgeBuilder {
            name: name.into(),
            key: None,
            workers: DEFAULT_WORKERS,
            max_timeout: DEFAULT_MAX_TIMEOUT,
            trust: Trust::Trusted,
            session: None,
            config: None,
        }
    }

    /// The local server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key expression the server is exposed under.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Calls answered so far (successes and failures).
    pub fn forwarded(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// The Zenoh session the bridge runs on.
    pub fn session(&self) -> &Session {
        &self.session
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // No new calls; the threads answer what is queued, then each takes one `None` and ends.
        if let Some(q) = self.queryable.take() {
            let _ = q.undeclare().wait();
        }
        for _ in &self.threads {
            let _ = self.stop.send(None);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        tracing::info!(key = %self.shared.key, "bridge stopped");
    }
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("name", &self.name)
            .field("key", &self.shared.key)
            .field("workers", &self.threads.len())
            .finish_non_exhaustive()
    }
}
