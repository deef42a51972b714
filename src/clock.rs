//! The router's monotonic clock: tokio's, so tests can pause and advance it, as the std
//! `Instant` the core takes.

/// Now, on tokio's clock.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
