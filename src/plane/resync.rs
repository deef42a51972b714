//! Carries out the resyncs the fleet asks for: one fetch per worker at a time, retried with
//! backoff while the worker still needs it.
//!
//! A fetch asks the worker's reporter (request/reply on `<prefix>.sync.<worker>`) for its
//! whole held set as of an exact `(epoch, seq)`, collected from numbered chunks within a
//! timeout; the actor then replaces the worker's view and applies what it buffered since.
//!
//! Resyncs of one worker are paced ([`ResyncPace`]): a worker whose sequence keeps breaking
//! (a forger on its subject) gets fewer and fewer, each delay counted in
//! `cache_router_resyncs_paced_total`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use cache_router_bus::{BusError, Subjects};
use cache_router_core::backoff::Backoff;
use cache_router_core::fleet::ResyncNeeded;
use cache_router_core::protocol::{
    decode_versioned, EncodeError, SyncChunk, SyncRequest, WorkerId, PROTOCOL_VERSION,
};
use cache_router_core::resync_pace::ResyncPace;

use crate::fleet_actor::{Command, FleetHandle, SyncResult};
use crate::metrics::PlaneMetrics;

type Job = (WorkerId, u32, Result<SyncResult, BusError>);

pub(super) async fn run(
    client: Client,
    subjects: Subjects,
    timeout: Duration,
    mut rx: mpsc::UnboundedReceiver<ResyncNeeded>,
    handle: FleetHandle,
    metrics: Arc<PlaneMetrics>,
    shutdown: CancellationToken,
) {
    let mut in_flight: HashSet<WorkerId> = HashSet::new();
    let mut jobs: JoinSet<Job> = JoinSet::new();
    let mut pace = ResyncPace::default();
    // `wait` before the fetch: the pacing delay of a new resync, or the retry backoff.
    let spawn = |jobs: &mut JoinSet<Job>, w: WorkerId, attempt: u32, wait: Duration| {
        let (client, subjects) = (client.clone(), subjects.clone());
        jobs.spawn(async move {
            tokio::time::sleep(wait).await;
            let r = fetch(&client, &subjects, &w, timeout).await;
            (w, attempt, r)
        });
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            need = rx.recv() => {
                let Some(need) = need else { break };
                tracing::info!(worker = %need.worker, cause = need.cause.as_str(), "resync needed");
                if in_flight.insert(need.worker.clone()) {
                    let wait = pace.delay(&need.worker, Instant::now());
                    if !wait.is_zero() {
                        metrics.resyncs_paced.inc();
                        tracing::debug!(worker = %need.worker, ?wait, "resync paced");
                    }
                    spawn(&mut jobs, need.worker, 0, wait);
                }
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                let Ok((w, attempt, r)) = done else { continue };
                match r {
                    Ok(res) => {
                        metrics.resync_fetch(true);
                        metrics
                            .resync_last_us
                            .set(res.started.elapsed().as_micros() as i64);
                        in_flight.remove(&w);
                        let _ = handle.send(Command::ResyncDone(res)).await;
                    }
                    Err(e) => {
                        metrics.resync_fetch(false);
                        let still = handle.needs_resync(w.clone()).await.unwrap_or(false);
                        if still {
                            tracing::warn!(worker = %w, attempt, "resync failed: {e}; retrying");
                            spawn(&mut jobs, w, attempt + 1, Backoff::NETWORK.delay(attempt + 1));
                        } else {
                            in_flight.remove(&w);
                        }
                    }
                }
            }
        }
    }
    jobs.shutdown().await;
}

/// Asks `w`'s reporter for its full set and collects the chunks.
async fn fetch(
    client: &Client,
    subjects: &Subjects,
    w: &WorkerId,
    timeout: Duration,
) -> Result<SyncResult, BusError> {
    let started = Instant::now();
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::nats("subscribe resync inbox", e))?;
    let req = rmp_serde::to_vec(&SyncRequest {
        version: PROTOCOL_VERSION,
        worker: w.clone(),
    })
    .map_err(EncodeError::from)?;
    client
        .publish_with_reply(subjects.sync(w), inbox, req.into())
        .await
        .map_err(|e| BusError::nats("publish resync request", e))?;
    let collect = async {
        let mut chunks: HashMap<u32, SyncChunk> = HashMap::new();
        let mut total = None;
        while let Some(msg) = sub.next().await {
            if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(BusError::nats(
                    "resync",
                    format!("no reporter answers on {}", subjects.sync(w)),
                ));
            }
            let chunk: SyncChunk = decode_versioned(&msg.payload)?;
            if &chunk.worker != w {
                continue;
            }
            if let Some(first) = chunks.values().next() {
                if (first.epoch, first.seq) != (chunk.epoch, chunk.seq) {
                    return Err(BusError::Config(
                        "resync chunks of different versions".into(),
                    ));
                }
            }
            total = Some(chunk.total);
            chunks.insert(chunk.index, chunk);
            if total == Some(chunks.len() as u32) {
                break;
            }
        }
        if total != Some(chunks.len() as u32) {
            return Err(BusError::nats("resync", "reply stream ended early"));
        }
        let mut ordered: Vec<SyncChunk> = chunks.into_values().collect();
        ordered.sort_by_key(|c| c.index);
        let (epoch, seq) = (ordered[0].epoch, ordered[0].seq);
        let entries = ordered.into_iter().flat_map(|c| c.entries).collect();
        Ok(SyncResult {
            worker: w.clone(),
            epoch,
            seq,
            entries,
            started,
        })
    };
    let r = tokio::time::timeout(timeout, collect)
        .await
        .map_err(|_| BusError::Timeout(timeout, "resync reply"))?;
    let _ = sub.unsubscribe().await;
    r
}
