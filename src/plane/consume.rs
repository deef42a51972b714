//! Pulls the event stream in order from a start sequence, in batches, into the fleet actor.
//!
//! An ordered consumer is recreated after any error (with backoff) at the next sequence not
//! yet received, so a NATS outage loses nothing the stream still holds. Each message is
//! decoded here, off the actor's thread; what cannot be applied is counted and passed on as a
//! skipped sequence number so the actor's applied position still advances. A consumer that
//! falls silent while the stream moves on is recreated (see [`STALL_CHECK`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use cache_router_bus::{retry, Infra, Subjects};
use cache_router_core::backoff::Backoff;
use cache_router_core::protocol::{Body, DecodeError, Envelope};

use crate::fleet_actor::{Command, FleetHandle, StreamItem};
use crate::metrics::{BadMessage, PlaneMetrics};

/// Most messages handed to the actor in one command.
const BATCH: usize = 512;

/// How often a quiet consumer checks that the stream has nothing it has not delivered. An
/// ordered consumer whose server went away (a node killed or cut off, the client failed over
/// to another) can stay silent instead of failing; the stream's own last sequence tells.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Whether the stream holds messages at or after `next_seq` (asked with a timeout; an
/// unreachable stream is not "ahead": the consumer's own errors cover that).
async fn stream_is_ahead(infra: &Infra, next_seq: u64) -> bool {
    let mut stream = infra.stream.clone();
    match tokio::time::timeout(STALL_CHECK * 2, stream.info()).await {
        Ok(Ok(info)) => info.state.last_sequence >= next_seq,
        _ => false,
    }
}

pub(super) async fn run(
    infra: Infra,
    subjects: Subjects,
    mut next_seq: u64,
    tail_at_start: u64,
    handle: FleetHandle,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) {
    let prefix = subjects.events_all().trim_end_matches('>').to_owned();
    let mut attempt = 0u32;
    'outer: while !shutdown.is_cancelled() {
        let consumer = infra
            .stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subjects.events_all(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: next_seq.max(1),
                },
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!("event consumer: {e}; retrying");
                    retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!("cannot create event consumer: {e}; retrying");
                retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                continue;
            }
        };
        attempt = 0;
        let mut watchdog = tokio::time::interval(STALL_CHECK);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_message = tokio::time::Instant::now();
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                m = messages.next() => m,
                _ = watchdog.tick() => {
                    if last_message.elapsed() >= STALL_CHECK && stream_is_ahead(&infra, next_seq).await {
                        tracing::warn!(next_seq, "event consumer stalled behind the stream; recreating it");
                        continue 'outer;
                    }
                    continue;
                }
            };
            last_message = tokio::time::Instant::now();
            let mut batch: Vec<StreamItem> = Vec::new();
            let mut item = first;
            loop {
                match item {
                    Some(Ok(msg)) => match msg.info() {
                        Ok(info) => {
                            let seq = info.stream_sequence;
                            metrics.stream_messages.inc();
                            if seq <= tail_at_start {
                                metrics.replayed.inc();
                            }
                            next_seq = seq + 1;
                            let env = decode_event(&msg.subject, &msg.payload, &prefix, &metrics);
                            batch.push((seq, env));
                        }
                        Err(_) => metrics.bad_message(BadMessage::Malformed),
                    },
                    Some(Err(e)) => {
                        tracing::warn!("event stream error: {e}; recreating the consumer");
                        flush(&handle, &mut batch).await;
                        retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                        continue 'outer;
                    }
                    None => {
                        flush(&handle, &mut batch).await;
                        tracing::warn!("event stream ended; recreating the consumer");
                        retry::pause(&Backoff::NETWORK, &mut attempt, &shutdown).await;
                        continue 'outer;
                    }
                }
                if batch.len() >= BATCH {
                    break;
                }
                // Take whatever is already buffered without waiting.
                match messages.next().now_or_never() {
                    Some(next) => item = next,
                    None => break,
                }
            }
            flush(&handle, &mut batch).await;
        }
    }
}

async fn flush(handle: &FleetHandle, batch: &mut Vec<StreamItem>) {
    if !batch.is_empty() {
        let _ = handle.send(Command::Apply(std::mem::take(batch))).await;
    }
}

/// Decodes one stream message; counts and logs what cannot be applied.
fn decode_event(
    subject: &str,
    payload: &[u8],
    prefix: &str,
    metrics: &PlaneMetrics,
) -> Option<Envelope> {
    match Envelope::decode(payload) {
        Ok(env) => {
            if subject.strip_prefix(prefix) != Some(env.worker.0.as_str()) {
                metrics.bad_message(BadMessage::SubjectMismatch);
                tracing::warn!(subject, worker = %env.worker, "message on another worker's subject: skipped");
                return None;
            }
            if matches!(env.body, Body::Load(_)) {
                // Load belongs on core NATS; harmless here but not sequenced with events.
                return None;
            }
            Some(env)
        }
        Err(e) => {
            metrics.bad_message(match e {
                DecodeError::UnknownVersion(_) => BadMessage::UnknownVersion,
                DecodeError::Malformed(_) => BadMessage::Malformed,
            });
            tracing::warn!(subject, "skipped undecodable event: {e}");
            None
        }
    }
}
