//! What can go wrong on the bus, as one typed error callers can branch on.

use std::time::Duration;

use cache_router_core::protocol::InvalidWorkerId;

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
    Encode(#[from] cache_router_core::protocol::EncodeError),
    #[error(transparent)]
    Decode(#[from] cache_router_core::protocol::DecodeError),
}

impl BusError {
    pub fn js(what: &'static str, e: impl std::fmt::Display) -> Self {
        BusError::JetStream {
            what,
            msg: e.to_string(),
        }
    }

    pub fn nats(what: &'static str, e: impl std::fmt::Display) -> Self {
        BusError::Nats {
            what,
            msg: e.to_string(),
        }
    }
}
