//! Sleeping a [`Backoff`] schedule in async code, cut short by shutdown.

use cache_router_core::backoff::Backoff;
use tokio_util::sync::CancellationToken;

/// Counts one more failed attempt and sleeps its delay (`backoff.delay(attempt)`), or until
/// `shutdown`. Returns false when shutdown ended the pause: the caller stops retrying.
pub async fn pause(backoff: &Backoff, attempt: &mut u32, shutdown: &CancellationToken) -> bool {
    *attempt = attempt.saturating_add(1);
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(backoff.delay(*attempt)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_and_shutdown_cuts_them_short() {
        let token = CancellationToken::new();
        let mut attempt = 0;
        let t0 = tokio::time::Instant::now();
        assert!(pause(&Backoff::NETWORK, &mut attempt, &token).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        assert!(pause(&Backoff::NETWORK, &mut attempt, &token).await);
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
        assert_eq!(attempt, 2);
        token.cancel();
        let t1 = tokio::time::Instant::now();
        assert!(!pause(&Backoff::NETWORK, &mut attempt, &token).await);
        assert_eq!(t1.elapsed(), Duration::ZERO);
    }
}
