//! Wires the mock engine's KV event batches to vLLM's ZMQ publisher (PUB + replay ROUTER).

use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{MockError, MockWorkerArgs};
use cache_router_bus::zmq::{DropControl, EnginePublisher, EnginePublisherConfig};
use cache_router_core::kv_events::Layout;

/// A running KV event publisher: send batches into `events`.
#[derive(Debug)]
pub(super) struct KvPublisher {
    pub events: UnboundedSender<cache_router_core::kv_events::KvEventBatch>,
    /// The live endpoint as bound (port resolved).
    pub events_endpoint: Option<String>,
    /// The replay endpoint as bound (port resolved).
    pub replay_endpoint: Option<String>,
    /// `--kv-drop-fraction`, changeable while the publisher runs, and the dropped count.
    pub drop: DropControl,
    pub task: JoinHandle<()>,
}

/// Binds the sockets named by `--kv-events-endpoint`/`--kv-replay-endpoint` (`None` when no
/// events endpoint is set). The engine binds both, as vLLM does with a `*` endpoint, so
/// `tcp://127.0.0.1:P` works for tests and demos on one machine.
pub(super) async fn start_kv_publisher(
    args: &MockWorkerArgs,
    shutdown: CancellationToken,
) -> Result<Option<KvPublisher>, MockError> {
    let Some(endpoint) = args.kv_events_endpoint.clone() else {
        if args.kv_replay_endpoint.is_some() {
            return Err(MockError::Config(
                "--kv-replay-endpoint needs --kv-events-endpoint".into(),
            ));
        }
        return Ok(None);
    };
    let publisher = EnginePublisher::open(EnginePublisherConfig {
        events_endpoint: endpoint,
        always_bind: true,
        replay_endpoint: args.kv_replay_endpoint.clone(),
        topic: args.kv_topic.as_bytes().to_vec(),
        buffer_steps: args.kv_replay_buffer_steps.max(1),
        drop_fraction: args.kv_drop_fraction,
        drop_seed: args.kv_drop_seed,
        layout: Layout::Maps,
    })
    .await
    .map_err(|e| MockError::Config(e.to_string()))?;
    let events_endpoint = publisher.events_endpoint().map(str::to_owned);
    let replay_endpoint = publisher.replay_endpoint().map(str::to_owned);
    let drop = publisher.drop_control();
    tracing::info!(events = ?events_endpoint, replay = ?replay_endpoint, "kv events publisher bound");
    let (tx, rx) = unbounded_channel();
    let task = tokio::spawn(publisher.run(rx, shutdown));
    Ok(Some(KvPublisher {
        events: tx,
        events_endpoint,
        replay_endpoint,
        drop,
        task,
    }))
}
