//! The event plane on NATS: connection, subjects, JetStream infrastructure, the publisher used
//! by reporters/simulators/benches, and the router's ingest.
//!
//! Subjects (prefix configurable, default `kvr`):
//! - `<prefix>.events.<worker>`: cache events and digests, captured by the JetStream stream
//!   `<PREFIX>_EVENTS` (age and size limits are flags);
//! - `<prefix>.load.<worker>`: load reports on core NATS, not stored;
//! - `<prefix>.sync.<worker>`: request/reply for a worker's full set, answered in chunks;
//! - KV bucket `<prefix>-workers`: the worker registry (a key per worker, refreshed by its
//!   reporter; an entry older than the TTL means the worker is gone);
//! - object store `<prefix>-snapshots`: router snapshots.

pub mod ingest;
pub mod publisher;
pub mod registry;
pub mod snapshot;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::{Client, ConnectOptions};

use crate::protocol::{InvalidWorkerId, WorkerId};

/// NATS connection flags, shared by the router, the reporter and the tools.
#[derive(Clone, Debug, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma-separated. Without it the router runs on static workers only.
    #[arg(long = "nats", env = "CACHE_ROUTER_NATS")]
    pub url: Option<String>,
    /// Subject prefix for every subject, stream, bucket and store this fleet uses.
    #[arg(long, env = "CACHE_ROUTER_PREFIX", default_value = "kvr")]
    pub prefix: String,
    /// User name (with --nats-password).
    #[arg(long, env = "CACHE_ROUTER_NATS_USER", requires = "nats_password")]
    pub nats_user: Option<String>,
    #[arg(long, env = "CACHE_ROUTER_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// Authentication token.
    #[arg(long, env = "CACHE_ROUTER_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// Credentials file (JWT + NKey seed).
    #[arg(long, env = "CACHE_ROUTER_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server; implies TLS.
    #[arg(long, env = "CACHE_ROUTER_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --nats-tls-key.
    #[arg(long, env = "CACHE_ROUTER_NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    #[arg(long, env = "CACHE_ROUTER_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,
    /// Timeout of one connection attempt and of each request, in milliseconds.
    #[arg(long, env = "CACHE_ROUTER_NATS_TIMEOUT_MS", default_value_t = 5000)]
    pub nats_timeout_ms: u64,
}

impl NatsArgs {
    /// Defaults for a server at `url` (tests, tools).
    pub fn for_url(url: impl Into<String>) -> Self {
        NatsArgs {
            url: Some(url.into()),
            prefix: "kvr".into(),
            nats_user: None,
            nats_password: None,
            nats_token: None,
            nats_creds: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
            nats_timeout_ms: 5000,
        }
    }

    pub fn subjects(&self) -> Subjects {
        Subjects::new(&self.prefix)
    }

    pub fn validate(&self) -> Result<(), BusError> {
        let ok = !self.prefix.is_empty()
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BusError::Config(format!(
                "--prefix {:?} must be non-empty A-Z, a-z, 0-9, '-' or '_'",
                self.prefix
            )));
        }
        if self.nats_timeout_ms == 0 {
            return Err(BusError::Config(
                "--nats-timeout-ms must be positive".into(),
            ));
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.nats_timeout_ms)
    }
}

/// Names of everything one fleet uses on NATS.
#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Subjects {
            prefix: prefix.to_owned(),
        }
    }

    pub fn events(&self, w: &WorkerId) -> String {
        format!("{}.events.{}", self.prefix, w)
    }

    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }

    pub fn load(&self, w: &WorkerId) -> String {
        format!("{}.load.{}", self.prefix, w)
    }

    pub fn load_all(&self) -> String {
        format!("{}.load.*", self.prefix)
    }

    pub fn sync(&self, w: &WorkerId) -> String {
        format!("{}.sync.{}", self.prefix, w)
    }

    /// Stream names may not contain '.', so the prefix is upper-cased with a suffix.
    pub fn stream(&self) -> String {
        format!("{}_EVENTS", self.prefix.to_uppercase())
    }

    pub fn registry_bucket(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    pub fn snapshot_store(&self) -> String {
        format!("{}-snapshots", self.prefix)
    }
}

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    WorkerId(#[from] InvalidWorkerId),
    #[error("cannot connect to NATS at {url}: {msg}")]
    Connect { url: String, msg: String },
    #[error("JetStream {what}: {msg}")]
    JetStream { what: &'static str, msg: String },
    #[error("NATS {what}: {msg}")]
    Nats { what: &'static str, msg: String },
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, &'static str),
    #[error(transparent)]
    Encode(#[from] crate::protocol::EncodeError),
    #[error(transparent)]
    Decode(#[from] crate::protocol::DecodeError),
}

impl BusError {
    pub(crate) fn js(what: &'static str, e: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            what,
            msg: e.to_string(),
        }
    }

    pub(crate) fn nats(what: &'static str, e: impl std::fmt::Display) -> Self {
        BusError::Nats {
            what,
            msg: e.to_string(),
        }
    }
}

/// Reconnect delay for the `attempt`-th try: none for the first (async-nats asks before its
/// very first connection attempt too), then exponential from 100 ms, capped at 5 s, forever.
fn backoff(attempt: usize) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let ms = 100u64.saturating_mul(1u64 << (attempt - 2).min(6));
    Duration::from_millis(ms.min(5_000))
}

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
        .retry_on_initial_connect()
        .reconnect_delay_callback(backoff)
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
    opts.connect(url.as_str())
        .await
        .map_err(|e| BusError::Connect {
            url: url.clone(),
            msg: e.to_string(),
        })
}

/// Limits of the event stream and the registry.
#[derive(Clone, Debug, clap::Args)]
pub struct StreamArgs {
    /// Oldest event kept in the stream, in seconds (replay after a restart needs the tail
    /// since the last snapshot).
    #[arg(long, env = "CACHE_ROUTER_STREAM_MAX_AGE_S", default_value_t = 3600)]
    pub stream_max_age_s: u64,
    /// Stream size limit in bytes (oldest events are dropped past it).
    #[arg(long, env = "CACHE_ROUTER_STREAM_MAX_BYTES", default_value_t = 1 << 30)]
    pub stream_max_bytes: i64,
    /// A worker whose registry entry was not refreshed for this long is considered gone.
    #[arg(long, env = "CACHE_ROUTER_REGISTRY_TTL_MS", default_value_t = 10_000)]
    pub registry_ttl_ms: u64,
}

impl Default for StreamArgs {
    fn default() -> Self {
        StreamArgs {
            stream_max_age_s: 3600,
            stream_max_bytes: 1 << 30,
            registry_ttl_ms: 10_000,
        }
    }
}

/// The JetStream objects a fleet uses.
#[derive(Clone)]
pub struct Infra {
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub registry: kv::Store,
    pub snapshots: object_store::ObjectStore,
}

impl std::fmt::Debug for Infra {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infra")
            .field("stream", &self.stream.cached_info().config.name)
            .field("registry", &self.registry.name)
            .finish_non_exhaustive()
    }
}

/// Creates (idempotently) the event stream, the registry bucket and the snapshot store.
pub async fn ensure_infra(
    client: &Client,
    subjects: &Subjects,
    limits: &StreamArgs,
) -> Result<Infra, BusError> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(stream::Config {
            name: subjects.stream(),
            subjects: vec![subjects.events_all()],
            max_age: Duration::from_secs(limits.stream_max_age_s),
            max_bytes: limits.stream_max_bytes,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::js("create event stream", e))?;
    let registry = match js.get_key_value(subjects.registry_bucket()).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: subjects.registry_bucket(),
                history: 1,
                // The bucket keeps entries a little past the TTL; liveness itself is judged
                // by the router from each entry's age.
                max_age: Duration::from_millis(limits.registry_ttl_ms.saturating_mul(3)),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::js("create registry bucket", e))?,
    };
    let snapshots = match js.get_object_store(subjects.snapshot_store()).await {
        Ok(s) => s,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: subjects.snapshot_store(),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::js("create snapshot store", e))?,
    };
    Ok(Infra {
        js,
        stream,
        registry,
        snapshots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_names() {
        let s = Subjects::new("kvr");
        let w = WorkerId::from("gpu-1");
        assert_eq!(s.events(&w), "kvr.events.gpu-1");
        assert_eq!(s.events_all(), "kvr.events.>");
        assert_eq!(s.load_all(), "kvr.load.*");
        assert_eq!(s.sync(&w), "kvr.sync.gpu-1");
        assert_eq!(s.stream(), "KVR_EVENTS");
        assert_eq!(s.registry_bucket(), "kvr-workers");
    }

    #[test]
    fn prefix_is_validated_and_backoff_is_capped() {
        let mut a = NatsArgs::for_url("nats://127.0.0.1:1");
        assert!(a.validate().is_ok());
        a.prefix = "a.b".into();
        assert!(a.validate().is_err());
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(100));
        assert_eq!(backoff(100), Duration::from_secs(5));
    }
}
