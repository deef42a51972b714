//! The one signal handler: SIGINT, SIGTERM and SIGHUP (a closed terminal) cancel shutdown
//! tokens in turn, so the first signal starts a graceful drain and, where the caller passes a
//! second token, another signal forces the stop.

use tokio_util::sync::CancellationToken;

/// Cancels `tokens` one per received signal, in order, then returns. Spawn it beside the
/// work it stops. If signals cannot be watched it says so and cancels nothing (the process
/// then ends on a signal the default way).
pub async fn cancel_on_signals(tokens: Vec<CancellationToken>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::warn!("cannot listen for signals; a signal will stop the process abruptly");
        return;
    };
    for token in tokens {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
            _ = hup.recv() => "SIGHUP",
        };
        tracing::info!("{name} received");
        token.cancel();
    }
}
