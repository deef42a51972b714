//! The engine's response body, passed through chunk by chunk.
//!
//! Nothing is buffered, so SSE simply flows. The stream owns the request's in-flight
//! [`Guard`]: the first chunk moves the request from prefill to decoding, and the end of the
//! stream, an engine error, an idle timeout or the client going away (axum drops the body,
//! which drops the engine response and closes that connection) releases it. A stream cut short
//! counts as a failure of the worker in [`Liveness`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

use cache_router_core::index::WorkerIdx;
use cache_router_core::liveness::Liveness;

use super::error_chain;
use super::inflight::Guard;

/// Why a response body ended early.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    #[error("the engine sent nothing for {0:?}")]
    Idle(Duration),
    #[error("the engine connection failed mid-response: {0}")]
    Engine(#[source] reqwest::Error),
}

pub(super) type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The engine's body, chunk by chunk, owning the request's in-flight guard.
pub(super) struct Passthrough {
    /// `None` once finished (ended, failed or timed out).
    inner: Option<ChunkStream>,
    guard: Option<Guard>,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    liveness: Arc<Liveness>,
    worker: WorkerIdx,
    worker_id: String,
    /// The engine answered `text/event-stream`: failures are reported in-band as an error
    /// event (what OpenAI clients read), then the stream ends.
    sse: bool,
    /// The error to end a non-SSE stream with, after nothing else.
    pending: Option<BodyError>,
}

impl Passthrough {
    pub(super) fn new(
        inner: ChunkStream,
        guard: Guard,
        idle_timeout: Duration,
        liveness: Arc<Liveness>,
        worker: WorkerIdx,
        worker_id: String,
        sse: bool,
    ) -> Self {
        Passthrough {
            inner: Some(inner),
            guard: Some(guard),
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            liveness,
            worker,
            worker_id,
            sse,
            pending: None,
        }
    }

    fn finish(&mut self) {
        self.inner = None;
        self.guard = None;
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        tracing::warn!(worker = %self.worker_id, error = %error_chain(&e), "engine response cut short");
        self.liveness
            .record_failure(self.worker, crate::clock::now());
        self.finish();
        if self.sse {
            let message = match &e {
                BodyError::Idle(d) => format!("the inference engine stalled for {d:?}"),
                BodyError::Engine(_) => "the inference engine failed mid-response".to_owned(),
            };
            let event = serde_json::json!({
                "error": {
                    "message": message,
                    "type": "upstream_error",
                    "param": null,
                    "code": "upstream_stream_error",
                }
            });
            // The leading blank line terminates any event the engine left half-written.
            Poll::Ready(Some(Ok(Bytes::from(format!("\n\ndata: {event}\n\n")))))
        } else {
            Poll::Ready(Some(Err(e)))
        }
    }
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("worker", &self.worker_id)
            .field("finished", &self.inner.is_none())
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

impl Stream for Passthrough {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(e) = this.pending.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Data already there wins over the idle timer (a slow client is not a stalled engine).
        match inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                if !chunk.is_empty() {
                    if let Some(g) = this.guard.as_mut() {
                        g.first_byte();
                    }
                }
                let deadline = tokio::time::Instant::now() + this.idle_timeout;
                this.idle.as_mut().reset(deadline);
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(e))) => return this.fail(BodyError::Engine(e)),
            Poll::Ready(None) => {
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match this.idle.as_mut().poll(cx) {
            Poll::Ready(()) => this.fail(BodyError::Idle(this.idle_timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Passthrough {
    fn drop(&mut self) {
        if self.inner.is_some() {
            tracing::debug!(worker = %self.worker_id, "client went away mid-response");
        }
    }
}
