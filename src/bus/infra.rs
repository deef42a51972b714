//! The JetStream objects a fleet uses, created idempotently by whoever starts first.

use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::Client;

use crate::args::StreamArgs;
use crate::error::BusError;
use crate::subjects::Subjects;

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
            max_age: limits.stream_max_age,
            max_bytes: limits.stream_max_bytes,
            storage: stream::StorageType::File,
            num_replicas: limits.nats_replicas,
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
                max_age: limits.registry_ttl.saturating_mul(3),
                storage: stream::StorageType::File,
                num_replicas: limits.nats_replicas,
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
                num_replicas: limits.nats_replicas,
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

/// [`ensure_infra`], retried with backoff until it succeeds (the servers may still be starting,
/// or a cluster still electing its leader) or `shutdown` fires (None).
pub async fn wait_for_infra(
    client: &Client,
    subjects: &Subjects,
    limits: &StreamArgs,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Infra> {
    let mut attempt = 0;
    loop {
        match ensure_infra(client, subjects, limits).await {
            Ok(infra) => return Some(infra),
            Err(e) => {
                tracing::warn!("JetStream not usable yet: {e}; retrying");
                let backoff = cache_router_core::backoff::Backoff::NETWORK;
                if !crate::retry::pause(&backoff, &mut attempt, shutdown).await {
                    return None;
                }
            }
        }
    }
}
