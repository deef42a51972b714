//! `worker-reporter`'s flags, each with an environment fallback for container deployments.

use std::time::Duration;

use cache_router_bus::duration;
use cache_router_bus::{NatsArgs, StreamArgs};
use cache_router_core::protocol::WorkerId;

use crate::ReporterError;

/// Runs beside one unmodified engine and reports its cache and load to cache-router.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "worker-reporter", version, about)]
pub struct ReporterArgs {
    /// This worker's stable id (`[A-Za-z0-9_-]`, at most 128 characters).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: String,
    /// The engine's OpenAI-compatible base URL, e.g. http://10.0.0.5:8000 (also scraped for
    /// `/metrics`).
    #[arg(long, env = "ENGINE_URL")]
    pub engine_url: String,
    /// URL the router should send requests to, when it differs from --engine-url.
    #[arg(long, env = "ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Model name: the hash namespace; must match the router's.
    #[arg(long, env = "MODEL")]
    pub model: String,
    /// The engine's KV block size in tokens (vLLM's --block-size); must match the router's.
    #[arg(long, env = "BLOCK_SIZE", default_value_t = 16)]
    pub block_size: u32,
    /// The engine's KV-events endpoint (vLLM's `kv_events_config.endpoint`).
    #[arg(long, env = "ZMQ_ENDPOINT")]
    pub zmq_endpoint: String,
    /// Bind the SUB socket instead of connecting: needed when the engine's endpoint names a
    /// concrete host (then vLLM's PUB connects to us).
    #[arg(long, env = "ZMQ_BIND")]
    pub zmq_bind: bool,
    /// The engine's replay endpoint (`kv_events_config.replay_endpoint`), used on gaps.
    #[arg(long, env = "ZMQ_REPLAY_ENDPOINT")]
    pub zmq_replay_endpoint: Option<String>,
    /// Topic prefix to subscribe to (vLLM's default topic is empty).
    #[arg(long, env = "ZMQ_TOPIC", default_value = "")]
    pub zmq_topic: String,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub stream: StreamArgs,
    /// How often to publish a digest of the mirror (anti-entropy), e.g. 2s, 500ms (a bare
    /// number is seconds).
    #[arg(long, env = "DIGEST_INTERVAL", default_value = "2s", value_parser = duration::secs)]
    pub digest_interval: Duration,
    /// How often to scrape the engine's /metrics and publish its load.
    #[arg(long, env = "LOAD_INTERVAL", default_value = "500ms", value_parser = duration::secs)]
    pub load_interval: Duration,
    /// Timeout of each engine HTTP scrape and of each replay request.
    #[arg(long, env = "ENGINE_TIMEOUT", default_value = "2s", value_parser = duration::secs)]
    pub engine_timeout: Duration,
    /// Mirror entries kept at most (bounds memory if removals are lost).
    #[arg(long, env = "MAX_MIRROR_ENTRIES", default_value_t = 4_000_000)]
    pub max_mirror_entries: usize,
}

impl ReporterArgs {
    pub fn validate(&self) -> Result<(), ReporterError> {
        let bad = |m: &str| Err(ReporterError::Config(m.to_owned()));
        WorkerId(self.worker_id.clone())
            .validate()
            .map_err(|e| ReporterError::Config(e.to_string()))?;
        if self.block_size == 0 {
            return bad("--block-size must be positive");
        }
        if self.nats.url.is_none() {
            return bad("--nats is required");
        }
        for (name, d) in [
            ("--digest-interval", self.digest_interval),
            ("--load-interval", self.load_interval),
            ("--engine-timeout", self.engine_timeout),
        ] {
            if d.is_zero() {
                return Err(ReporterError::Config(format!("{name} must be positive")));
            }
        }
        self.nats.validate()?;
        self.stream.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> Result<ReporterArgs, clap::Error> {
        let mut v = vec![
            "worker-reporter",
            "--worker-id",
            "w1",
            "--engine-url",
            "http://127.0.0.1:1",
            "--model",
            "m",
            "--zmq-endpoint",
            "tcp://127.0.0.1:2",
            "--nats",
            "nats://127.0.0.1:3",
        ];
        v.extend_from_slice(extra);
        ReporterArgs::try_parse_from(v)
    }

    #[test]
    fn durations_and_validation() {
        let a = parse(&["--digest-interval", "500ms", "--load-interval", "3"]).unwrap();
        assert_eq!(a.digest_interval, Duration::from_millis(500));
        assert_eq!(
            a.load_interval,
            Duration::from_secs(3),
            "a bare number is seconds"
        );
        assert!(a.validate().is_ok());
        assert!(parse(&["--digest-interval", "2h5"]).is_err());
        assert!(parse(&["--digest-interval", "0s"])
            .unwrap()
            .validate()
            .is_err());
        let mut bad_id = parse(&[]).unwrap();
        bad_id.worker_id = "a.b".into();
        assert!(bad_id.validate().is_err());
    }
}
