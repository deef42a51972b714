//! The accept loop: every connection bounded in count and in time.
//!
//! axum's own `serve` has no header-read timeout, no idle timeout and no connection cap, so
//! slowloris clients (headers a byte at a time) and idle keep-alive connections stay open
//! until the process runs out of descriptors. Here each connection is served by hyper's
//! HTTP/1.1 server with:
//! - a header-read timeout (`--header-read-timeout`): the headers of each request must arrive
//!   within it, counted from when the connection starts waiting for them — after accept, and
//!   after each response on a keep-alive connection, so it is the idle timeout too;
//! - a cap on open connections (`--max-connections`): past it a new connection is closed at
//!   once (and counted) rather than queued;
//! - TCP_NODELAY: a streamed response is many small writes, and with Nagle's algorithm each
//!   one after the first can wait for the client's delayed ACK (40 ms on Linux), which showed
//!   up as a 40 ms TTFT floor under load in the live demo.
//!
//! HTTP/1.1 only: hyper-util's auto (HTTP/1 + h2c) builder runs no timer while it sniffs the
//! protocol, so a client that connects and sends nothing would never be shed. OpenAI clients
//! speak HTTP/1.1; h2 belongs to the TLS terminator in front.
//!
//! On shutdown the listener closes, open connections finish their current request (the
//! caller bounds that by its grace period) and then close.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::HttpMetrics;

/// Bounds on client connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time for a request's headers to arrive (and for an idle keep-alive connection to send
    /// its next request).
    pub header_read_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then waits for open connections to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<HttpMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut accept_errors = 0u32;
    loop {
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => {
                    accept_errors = 0;
                    c
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    accept_errors = accept_errors.saturating_add(1);
                    tracing::warn!("accept failed: {e}");
                    let pause = cache_router_core::backoff::Backoff {
                        initial: Duration::from_millis(5),
                        max: Duration::from_secs(1),
                    };
                    tokio::time::sleep(pause.delay(accept_errors)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            tracing::debug!("connection refused: --max-connections are open");
            drop(stream);
            continue;
        };
        metrics.connections_accepted.inc();
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
