//! The NATS connection: configured auth and TLS, reconnection forever with backoff, every
//! state change logged.

use async_nats::{Client, ConnectOptions};
use cache_router_core::backoff::Backoff;

use crate::args::NatsArgs;
use crate::error::BusError;

/// Connects with the configured auth, reconnecting forever with backoff and logging every
/// connection state change. The first connection is also retried, so a router may start
/// before its NATS server.
pub async fn connect(args: &NatsArgs, name: &str) -> Result<Client, BusError> {
    args.validate()?;
    let url = args
        .url
        .clone()
        .ok_or_else(|| BusError::Config("no NATS URL given (--nats)".into()))?;
    let mut opts = ConnectOptions::new()
        .name(name)
        .connection_timeout(args.timeout())
        .request_timeout(Some(args.timeout()))
        .max_reconnects(None)
        .custom_inbox_prefix(args.nats_inbox_prefix.clone())
        .retry_on_initial_connect()
        // async-nats asks for a delay before its very first attempt too (attempt 1): none.
        .reconnect_delay_callback(|attempt| {
            Backoff::RECONNECT.delay(u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("nats: connected"),
                async_nats::Event::Disconnected => tracing::warn!("nats: disconnected"),
                other => tracing::warn!("nats: {other}"),
            }
        });
    if let (Some(u), Some(p)) = (&args.nats_user, &args.nats_password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &args.nats_token {
        opts = opts.token(t.clone());
    }
    if let Some(c) = &args.nats_creds {
        opts = opts
            .credentials_file(c)
            .await
            .map_err(|e| BusError::Config(format!("--nats-creds {}: {e}", c.display())))?;
    }
    if let Some(ca) = &args.nats_tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&args.nats_tls_cert, &args.nats_tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let servers = args.servers()?;
    opts.connect(servers.as_slice())
        .await
        .map_err(|e| BusError::Connect {
            url: url.clone(),
            msg: e.to_string(),
        })
}
