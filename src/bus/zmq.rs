//! The ZMQ sockets of vLLM's KV-event plane: the engine side (PUB + replay ROUTER, used by
//! the mock engine) and the consumer side (SUB + replay DEALER, used by `worker-reporter`).
//!
//! Crate choice: the pure-Rust `zeromq` crate rather than libzmq bindings (`zmq`/`zmq2`). It
//! speaks ZMTP 3 on tokio, so it needs no C toolchain or system libzmq on CI or in the
//! sidecar's container, and its sockets are async without a blocking thread per socket. We
//! use only PUB/SUB and ROUTER/DEALER over TCP, the part of ZMTP it implements fully; the
//! shared fixtures (frames captured from vLLM's own publisher) pin the framing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use zeromq::{
    DealerSocket, PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};

use cache_router_core::backoff::Backoff;
use cache_router_core::kv_events::frames::{self, END_OF_REPLAY};
use cache_router_core::kv_events::{encode_batch, KvEventBatch, Layout};

#[derive(Debug, thiserror::Error)]
pub enum ZmqError {
    #[error("zmq {op} {endpoint}: {source}")]
    Socket {
        op: &'static str,
        endpoint: String,
        #[source]
        source: zeromq::ZmqError,
    },
    #[error("replay from {endpoint} timed out after {timeout:?}")]
    ReplayTimeout { endpoint: String, timeout: Duration },
    #[error("malformed frames: {0}")]
    Frames(#[from] frames::FrameError),
}

/// Names the operation and endpoint of a failed socket call.
fn failed<'a>(
    op: &'static str,
    endpoint: &'a str,
) -> impl FnOnce(zeromq::ZmqError) -> ZmqError + 'a {
    move |source| ZmqError::Socket {
        op,
        endpoint: endpoint.to_owned(),
        source,
    }
}

/// vLLM binds its PUB socket only when the endpoint has a wildcard host (or is ipc/inproc);
/// `tcp://127.0.0.1:P` makes it connect. The same rule tells a consumer which side it is.
pub fn engine_binds(endpoint: &str) -> bool {
    endpoint.contains('*')
        || endpoint.contains("::")
        || endpoint.starts_with("ipc://")
        || endpoint.starts_with("inproc://")
}

/// `tcp://*:P` is how vLLM spells "all interfaces"; the `zeromq` crate wants an address.
fn bindable(endpoint: &str) -> String {
    endpoint.replace("tcp://*:", "tcp://0.0.0.0:")
}

fn zmq_message(frames: Vec<Vec<u8>>) -> ZmqMessage {
    let mut iter = frames.into_iter();
    let mut msg = ZmqMessage::from(Bytes::from(iter.next().unwrap_or_default()));
    for f in iter {
        msg.push_back(Bytes::from(f));
    }
    msg
}

/// The engine-side publisher's settings (the mock engine's `--kv-*` flags).
#[derive(Clone, Debug)]
pub struct EnginePublisherConfig {
    pub events_endpoint: String,
    /// Bind the PUB socket whatever the endpoint (the mock engine, so tests and demos can use
    /// `tcp://127.0.0.1:P`); `false` follows vLLM's rule ([`engine_binds`]).
    pub always_bind: bool,
    pub replay_endpoint: Option<String>,
    pub topic: Vec<u8>,
    /// Batches kept for replay (vLLM's `buffer_steps`).
    pub buffer_steps: usize,
    /// Fraction of batches not sent live (still kept for replay), to exercise gap handling.
    pub drop_fraction: f64,
    /// Seed of the drop decisions, so a run that loses batches can be repeated exactly.
    pub drop_seed: u64,
    pub layout: Layout,
}

type ReplayBuffer = Arc<Mutex<VecDeque<(u64, Vec<u8>)>>>;

/// The fraction of batches a running publisher does not send live, changeable while it runs
/// (benches lose events on purpose for a time window), and how many it has dropped. Clones
/// share both.
#[derive(Clone, Debug, Default)]
pub struct DropControl {
    fraction: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
}

impl DropControl {
    pub fn new(fraction: f64) -> Self {
        let d = DropControl::default();
        d.set_fraction(fraction);
        d
    }

    pub fn fraction(&self) -> f64 {
        f64::from_bits(self.fraction.load(Ordering::Relaxed))
    }

    /// Sets the fraction, clamped to 0..1 (NaN counts as 0); applies from the next batch.
    pub fn set_fraction(&self, fraction: f64) {
        let f = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self.fraction.store(f.to_bits(), Ordering::Relaxed);
    }

    /// Batches dropped so far (each is in the replay buffer before it is counted).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// vLLM's `ZmqEventPublisher`: numbers batches from 0, sends them live on PUB and keeps the
/// last `buffer_steps` for a ROUTER that replays on request.
pub struct EnginePublisher {
    config: EnginePublisherConfig,
    publisher: PubSocket,
    router: Option<RouterSocket>,
    bound_events: Option<String>,
    bound_replay: Option<String>,
    drop: DropControl,
}

impl EnginePublisher {
    /// Binds (or connects, by vLLM's rule) the sockets, so errors surface before serving.
    pub async fn open(config: EnginePublisherConfig) -> Result<Self, ZmqError> {
        let mut publisher = PubSocket::new();
        let ep = &config.events_endpoint;
        let mut bound_events = None;
        if config.always_bind || engine_binds(ep) {
            let at = publisher
                .bind(&bindable(ep))
                .await
                .map_err(failed("bind", ep))?;
            bound_events = Some(at.to_string());
        } else {
            publisher.connect(ep).await.map_err(failed("connect", ep))?;
        }
        let mut bound_replay = None;
        let router = match &config.replay_endpoint {
            Some(rep) => {
                let mut router = RouterSocket::new();
                let at = router
                    .bind(&bindable(rep))
                    .await
                    .map_err(failed("bind", rep))?;
                bound_replay = Some(at.to_string());
                Some(router)
            }
            None => None,
        };
        let drop = DropControl::new(config.drop_fraction);
        Ok(EnginePublisher {
            config,
            publisher,
            router,
            bound_events,
            bound_replay,
            drop,
        })
    }

    /// The live endpoint as bound (port resolved), if the PUB socket bound.
    pub fn events_endpoint(&self) -> Option<&str> {
        self.bound_events.as_deref()
    }

    /// The replay endpoint as bound (port resolved), if replay is enabled.
    pub fn replay_endpoint(&self) -> Option<&str> {
        self.bound_replay.as_deref()
    }

    /// The live drop control (its fraction starts at the config's `drop_fraction`).
    pub fn drop_control(&self) -> DropControl {
        self.drop.clone()
    }

    /// Publishes every batch from `batches` until it closes or `shutdown` fires.
    pub async fn run(
        mut self,
        mut batches: UnboundedReceiver<KvEventBatch>,
        shutdown: CancellationToken,
    ) {
        let buffer: ReplayBuffer = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(router) = self.router.take() {
            let buffer = buffer.clone();
            let topic = self.config.topic.clone();
            let token = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = serve_replay(router, buffer, topic) => {}
                    () = token.cancelled() => {}
                }
            });
        }
        let mut seq: u64 = 0;
        let mut dice = StdRng::seed_from_u64(self.config.drop_seed);
        loop {
            let batch = tokio::select! {
                b = batches.recv() => match b { Some(b) => b, None => break },
                () = shutdown.cancelled() => break,
            };
            let payload = encode_batch(&batch, self.config.layout);
            {
                let mut buf = buffer.lock().unwrap_or_else(|e| e.into_inner());
                buf.push_back((seq, payload.clone()));
                while buf.len() > self.config.buffer_steps {
                    buf.pop_front();
                }
            }
            let fraction = self.drop.fraction();
            if fraction > 0.0 && dice.random::<f64>() < fraction {
                self.drop.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                let msg =
                    zmq_message(frames::live_frames(&self.config.topic, seq, &payload).into());
                if let Err(e) = self.publisher.send(msg).await {
                    tracing::warn!(error = %e, seq, "kv event publish failed");
                }
            }
            seq += 1;
        }
    }
}

async fn serve_replay(mut router: RouterSocket, buffer: ReplayBuffer, topic: Vec<u8>) {
    let mut failures = 0u32;
    loop {
        let msg = match router.recv().await {
            Ok(m) => {
                failures = 0;
                m
            }
            Err(e) => {
                tracing::warn!(error = %e, "replay socket receive failed");
                // Do not spin on a socket that keeps failing.
                failures = failures.saturating_add(1);
                tokio::time::sleep(Backoff::NETWORK.delay(failures)).await;
                continue;
            }
        };
        let frames: Vec<Bytes> = msg.into_vec();
        // [identity, "", start_seq]; anything else gets no reply, as vLLM does.
        let (Some(identity), 3) = (frames.first(), frames.len()) else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(frames[2].as_ref()) else {
            continue;
        };
        let start = u64::from_be_bytes(start);
        let replies: Vec<(u64, Vec<u8>)> = {
            let buf = buffer.lock().unwrap_or_else(|e| e.into_inner());
            buf.iter().filter(|(s, _)| *s >= start).cloned().collect()
        };
        for (seq, payload) in replies
            .iter()
            .map(|(s, p)| (*s, p.as_slice()))
            .chain([(END_OF_REPLAY, &[][..])])
        {
            let t: &[u8] = if seq == END_OF_REPLAY { &[] } else { &topic };
            let mut out = vec![identity.to_vec()];
            out.extend(frames::replay_reply(t, seq, payload));
            if let Err(e) = router.send(zmq_message(out)).await {
                tracing::warn!(error = %e, "replay send failed");
                break;
            }
        }
    }
}

/// The consumer's live subscription (SUB), bound or connected.
pub struct EventSubscriber {
    socket: SubSocket,
}

impl std::fmt::Debug for EventSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSubscriber").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for EnginePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnginePublisher")
            .field("config", &self.config)
            .field("events", &self.bound_events)
            .field("replay", &self.bound_replay)
            .field("drop", &self.drop)
            .finish_non_exhaustive()
    }
}

/// One live message: topic, sequence number, msgpack payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMessage {
    pub topic: Vec<u8>,
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl EventSubscriber {
    /// `bind` is needed when the engine's endpoint has a concrete host (its PUB connects).
    pub async fn open(endpoint: &str, bind: bool, topic: &str) -> Result<Self, ZmqError> {
        let mut socket = SubSocket::new();
        let res = if bind {
            socket
                .bind(&bindable(endpoint))
                .await
                .map(|_| ())
                .map_err(|s| ("bind", s))
        } else {
            socket.connect(endpoint).await.map_err(|s| ("connect", s))
        };
        res.map_err(|(op, source)| failed(op, endpoint)(source))?;
        socket
            .subscribe(topic)
            .await
            .map_err(failed("subscribe", endpoint))?;
        Ok(EventSubscriber { socket })
    }

    pub async fn recv(&mut self) -> Result<LiveMessage, ZmqError> {
        loop {
            let msg = self.socket.recv().await.map_err(failed("recv", ""))?;
            let frames: Vec<Bytes> = msg.into_vec();
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
            match frames::parse_live(&refs) {
                Ok(live) => {
                    return Ok(LiveMessage {
                        topic: live.topic.to_vec(),
                        seq: live.seq,
                        payload: live.payload.to_vec(),
                    })
                }
                Err(e) => tracing::warn!(error = %e, "skipping malformed kv event message"),
            }
        }
    }
}

/// Asks the engine's replay ROUTER for every buffered batch from `start_seq` on, reading
/// until the end marker (a DEALER, not REQ: REQ only ever sees the first reply).
pub async fn fetch_replay(
    endpoint: &str,
    start_seq: u64,
    timeout: Duration,
) -> Result<Vec<(u64, Vec<u8>)>, ZmqError> {
    let work = async {
        let mut dealer = DealerSocket::new();
        dealer
            .connect(endpoint)
            .await
            .map_err(failed("connect", endpoint))?;
        dealer
            .send(zmq_message(frames::replay_request(start_seq).into()))
            .await
            .map_err(failed("send", endpoint))?;
        let mut out = Vec::new();
        loop {
            let msg = dealer.recv().await.map_err(failed("recv", endpoint))?;
            let frames: Vec<Bytes> = msg.into_vec();
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_ref()).collect();
            let reply = frames::parse_replay_reply(&refs)?;
            if reply.is_end() {
                return Ok(out);
            }
            out.push((reply.seq, reply.payload));
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ZmqError::ReplayTimeout {
            endpoint: endpoint.into(),
            timeout,
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_control_is_shared_and_clamped() {
        let d = DropControl::new(0.3);
        let other = d.clone();
        assert_eq!(other.fraction(), 0.3);
        d.set_fraction(1.5);
        assert_eq!(other.fraction(), 1.0);
        d.set_fraction(-1.0);
        assert_eq!(other.fraction(), 0.0);
        d.set_fraction(f64::NAN);
        assert_eq!(other.fraction(), 0.0);
        assert_eq!(other.dropped(), 0);
    }
}
