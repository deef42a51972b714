//! The publisher: what a worker's reporter (or the simulator, or a bench) uses to speak our
//! protocol on NATS.
//!
//! It owns the worker's sequence counter and its mirror of the held set under one lock, so a
//! message's sequence number and the set it leaves behind always agree; a resync reply is the
//! mirror as of an exact sequence number. Events and digests go to JetStream (sent in sequence
//! order under the lock, acks awaited after it); load goes to core NATS, unsequenced.
//!
//! Fault injection ([`Publisher::lose_next`], [`Publisher::apply_silently`]) simulates a lost
//! message or a worker whose cache changed without an event; tests, benches and the mock
//! engine's drop flag use it to exercise the router's recovery paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{BusError, Subjects};
use cache_router_core::index::BlockSet;
use cache_router_core::protocol::{
    decode_versioned, Body, Envelope, Load, SyncChunk, SyncRequest, WorkerId, PROTOCOL_VERSION,
};

/// Entries per resync chunk: ~19 bytes each in msgpack, so ~160 KB a chunk, well under
/// NATS's default 1 MB max payload.
pub const SYNC_CHUNK_ENTRIES: usize = 8192;

#[derive(Debug)]
struct State {
    epoch: u64,
    seq: u64,
    set: BlockSet,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    js: jetstream::Context,
    subjects: Subjects,
    worker: WorkerId,
    state: Mutex<State>,
    lose: AtomicU64,
    timeout: Duration,
}

/// Where a published message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The worker's sequence number given to the message.
    pub seq: u64,
    /// The stream sequence JetStream acknowledged; None if the message was deliberately lost.
    pub stream_seq: Option<u64>,
}

/// A cheap, clonable handle for one worker's publishing.
#[derive(Clone, Debug)]
pub struct Publisher {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Publisher {
    /// A publisher for `worker` starting at `epoch` (use a fresh value per engine start, e.g.
    /// the start time in ms) with an empty mirror.
    pub fn new(
        client: Client,
        subjects: Subjects,
        worker: WorkerId,
        epoch: u64,
        timeout: Duration,
    ) -> Result<Self, BusError> {
        worker.validate()?;
        Ok(Publisher {
            inner: Arc::new(Inner {
                js: jetstream::new(client.clone()),
                client,
                subjects,
                worker,
                state: Mutex::new(State {
                    epoch,
                    seq: 0,
                    set: BlockSet::default(),
                }),
                lose: AtomicU64::new(0),
                timeout,
            }),
        })
    }

    pub fn worker(&self) -> &WorkerId {
        &self.inner.worker
    }

    /// Publishes a cache event (`Stored`, `Removed`, `Cleared`) after applying it to the
    /// mirror, and waits for JetStream's ack.
    pub async fn publish(&self, body: Body) -> Result<Receipt, BusError> {
        self.send(|set| {
            set.apply(&body);
            body
        })
        .await
    }

    /// Publishes the mirror's digest (sequenced like events, so the router compares it at
    /// exactly the right point of the stream).
    pub async fn publish_digest(&self) -> Result<Receipt, BusError> {
        self.send(|set| {
            let d = set.digest();
            Body::Digest {
                block_count: d.block_count,
                checksum: d.checksum,
            }
        })
        .await
    }

    async fn send(&self, make: impl FnOnce(&mut BlockSet) -> Body) -> Result<Receipt, BusError> {
        let inner = &self.inner;
        let (seq, ack) = {
            let mut st = inner.state.lock().await;
            let body = make(&mut st.set);
            st.seq += 1;
            let env = Envelope::new(inner.worker.clone(), st.epoch, st.seq, now_ms(), body);
            let lost = inner
                .lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if lost {
                return Ok(Receipt {
                    seq: st.seq,
                    stream_seq: None,
                });
            }
            let payload = env.encode()?;
            // Sent while holding the lock so the wire order is the sequence order.
            let ack = inner
                .js
                .publish(inner.subjects.events(&inner.worker), payload.into())
                .await
                .map_err(|e| BusError::js("publish event", e))?;
            (st.seq, ack)
        };
        let ack = tokio::time::timeout(inner.timeout, ack)
            .await
            .map_err(|_| BusError::Timeout(inner.timeout, "JetStream publish ack"))?
            .map_err(|e| BusError::js("publish ack", e))?;
        Ok(Receipt {
            seq,
            stream_seq: Some(ack.sequence),
        })
    }

    /// Publishes load on core NATS (not stored, not sequenced).
    pub async fn publish_load(&self, load: Load) -> Result<(), BusError> {
        let epoch = self.inner.state.lock().await.epoch;
        let env = Envelope::new(
            self.inner.worker.clone(),
            epoch,
            0,
            now_ms(),
            Body::Load(load),
        );
        self.inner
            .client
            .publish(
                self.inner.subjects.load(&self.inner.worker),
                env.encode()?.into(),
            )
            .await
            .map_err(|e| BusError::nats("publish load", e))
    }

    /// Starts a new epoch (the engine restarted, or the reporter lost track of it): sequence
    /// numbers restart at 1. With `clear`, the mirror is emptied too.
    pub async fn new_epoch(&self, epoch: u64, clear: bool) {
        let mut st = self.inner.state.lock().await;
        st.epoch = epoch;
        st.seq = 0;
        if clear {
            st.set = BlockSet::default();
        }
    }

    /// The mirror and its position: `(epoch, seq, set)`.
    pub async fn ground_truth(&self) -> (u64, u64, BlockSet) {
        let st = self.inner.state.lock().await;
        (st.epoch, st.seq, st.set.clone())
    }

    /// Fault injection: the next `n` messages take a sequence number and change the mirror but
    /// are never sent, as if lost on the way.
    pub fn lose_next(&self, n: u64) {
        self.inner.lose.fetch_add(n, Ordering::SeqCst);
    }

    /// Fault injection: changes the mirror without any message (the engine's cache changed
    /// and its event never existed); only a digest reveals it.
    pub async fn apply_silently(&self, body: &Body) {
        self.inner.state.lock().await.set.apply(body);
    }

    /// Answers resync requests on `<prefix>.sync.<worker>` from the mirror until `shutdown`.
    /// The subscription is live when this returns, so no request sent afterwards is missed.
    pub async fn serve_resync(
        &self,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, BusError> {
        let inner = self.inner.clone();
        let mut sub = inner
            .client
            .subscribe(inner.subjects.sync(&inner.worker))
            .await
            .map_err(|e| BusError::nats("subscribe sync", e))?;
        inner
            .client
            .flush()
            .await
            .map_err(|e| BusError::nats("flush", e))?;
        Ok(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let Some(reply) = msg.reply.clone() else {
                    tracing::warn!(worker = %inner.worker, "resync request without reply subject");
                    continue;
                };
                match decode_versioned::<SyncRequest>(&msg.payload) {
                    Ok(req) if req.worker == inner.worker => {}
                    Ok(req) => {
                        tracing::warn!(worker = %inner.worker, asked = %req.worker, "resync request for another worker");
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(worker = %inner.worker, "bad resync request: {e}");
                        continue;
                    }
                }
                if let Err(e) = answer_resync(&inner, reply).await {
                    tracing::warn!(worker = %inner.worker, "resync reply failed: {e}");
                }
            }
        }))
    }
}

async fn answer_resync(inner: &Inner, reply: async_nats::Subject) -> Result<(), BusError> {
    let (epoch, seq, entries) = {
        let st = inner.state.lock().await;
        (st.epoch, st.seq, st.set.entries())
    };
    let total = entries.len().div_ceil(SYNC_CHUNK_ENTRIES).max(1) as u32;
    let mut chunks = entries.chunks(SYNC_CHUNK_ENTRIES);
    for index in 0..total {
        let chunk = SyncChunk {
            version: PROTOCOL_VERSION,
            worker: inner.worker.clone(),
            epoch,
            seq,
            index,
            total,
            entries: chunks.next().map(<[_]>::to_vec).unwrap_or_default(),
        };
        let bytes =
            rmp_serde::to_vec(&chunk).map_err(cache_router_core::protocol::EncodeError::from)?;
        inner
            .client
            .publish(reply.clone(), bytes.into())
            .await
            .map_err(|e| BusError::nats("publish resync chunk", e))?;
    }
    inner
        .client
        .flush()
        .await
        .map_err(|e| BusError::nats("flush", e))?;
    tracing::debug!(worker = %inner.worker, epoch, seq, total, "answered resync");
    Ok(())
}
