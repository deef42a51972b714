//! Applies load reports from core NATS (`<prefix>.load.*`, not stored).

use std::sync::Arc;

use async_nats::Client;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use cache_router_bus::{retry, Subjects};
use cache_router_core::backoff::Backoff;
use cache_router_core::protocol::{Body, DecodeError, Envelope};

use crate::fleet_actor::{Command, FleetHandle};
use crate::metrics::{BadMessage, PlaneMetrics};

pub(super) async fn run(
    client: Client,
    subjects: Subjects,
    handle: FleetHandle,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) {
    let mut attempt = 0u32;
    let mut sub = loop {
        match client.subscribe(subjects.load_all()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!("cannot subscribe to load reports: {e}; retrying");
                if !retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await {
                    return;
                }
            }
        }
    };
    let prefix = subjects.load_all().trim_end_matches('*').to_owned();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        match Envelope::decode(&msg.payload) {
            Ok(Envelope {
                worker,
                body: Body::Load(load),
                ..
            }) => {
                // A report names its own worker: another worker's subject means a forger
                // trying to make a worker look idle or busy.
                if msg.subject.strip_prefix(prefix.as_str()) != Some(worker.0.as_str())
                    || worker.validate().is_err()
                {
                    metrics.bad_message(BadMessage::SubjectMismatch);
                    tracing::warn!(subject = %msg.subject, %worker, "load report on another worker's subject: skipped");
                    continue;
                }
                metrics.load_messages.inc();
                let _ = handle.send(Command::Load(worker, load)).await;
            }
            Ok(_) => metrics.bad_message(BadMessage::Malformed),
            Err(DecodeError::UnknownVersion(_)) => metrics.bad_message(BadMessage::UnknownVersion),
            Err(DecodeError::Malformed(_)) => metrics.bad_message(BadMessage::Malformed),
        }
    }
}
