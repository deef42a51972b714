//! Routers for tests and benches, started through the library's [`Router::spawn`] on
//! `127.0.0.1:0`; dropping the returned handle stops them.

use std::time::Duration;

use cache_router::{NatsConfig, Router, RouterConfig, RunningRouter};
use cache_router_bus::StreamArgs;
use cache_router_core::policy::PolicyKind;
use cache_router_core::protocol::WorkerInfo;

use crate::{tokenizer, BLOCK_SIZE, MODEL};

/// Binds `127.0.0.1:0` and spawns a router from `config`.
pub async fn spawn(config: RouterConfig) -> RunningRouter {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the router");
    Router::spawn(config, listener)
        .await
        .expect("the router starts")
}

/// The event plane's settings tests use: a 600 ms registry TTL, 2 s resync timeout, a
/// snapshot every 100 messages or 500 ms.
pub fn nats_config(url: &str) -> NatsConfig {
    NatsConfig {
        limits: StreamArgs {
            registry_ttl: Duration::from_millis(600),
            ..StreamArgs::default()
        },
        snapshot_every: 100,
        snapshot_interval: Duration::from_millis(500),
        resync_timeout: Duration::from_secs(2),
        ..NatsConfig::new(url)
    }
}

/// A router as `cache-router serve --nats URL --model mock-model --block-size 16 --policy
/// cache-aware` wires it, with the real tokenizer and the test settings of [`nats_config`].
/// Speculation is off, so every overlap it reports comes from the engines' events.
pub fn nats_router_config(url: &str) -> RouterConfig {
    let mut c = RouterConfig::new(tokenizer::models(MODEL, BLOCK_SIZE));
    c.nats = Some(nats_config(url));
    c.policy = PolicyKind::CacheAware;
    c.speculation = None;
    c
}

/// [`nats_router_config`], spawned.
pub async fn nats_router(url: &str) -> RunningRouter {
    spawn(nats_router_config(url)).await
}

/// A static worker of model `model` at `url`.
pub fn worker(id: &str, url: &str, model: &str) -> WorkerInfo {
    WorkerInfo {
        id: id.into(),
        url: url.to_owned(),
        model: model.to_owned(),
        block_size: BLOCK_SIZE as u32,
        epoch: 1,
    }
}
