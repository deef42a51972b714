//! The NATS flags the router and the reporter share: connection and authentication, and the
//! limits of the event stream and the registry.

use std::path::PathBuf;

use async_nats::ServerAddr;
use std::time::Duration;

use crate::duration;
use crate::error::BusError;
use crate::subjects::Subjects;

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
    /// Prefix of this client's reply subjects. Give each reporter its own (e.g.
    /// `_INBOX_<worker>`) so NATS permissions can let it read only its own replies
    /// (docs/security.md).
    #[arg(long, env = "CACHE_ROUTER_NATS_INBOX_PREFIX", default_value = "_INBOX")]
    pub nats_inbox_prefix: String,
    /// Timeout of one connection attempt and of each request, e.g. 5s (a bare number is
    /// milliseconds).
    #[arg(
        long = "nats-timeout",
        alias = "nats-timeout-ms",
        env = "CACHE_ROUTER_NATS_TIMEOUT_MS",
        default_value = "5s",
        value_parser = duration::ms
    )]
    pub nats_timeout: Duration,
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
            nats_inbox_prefix: "_INBOX".into(),
            nats_timeout: Duration::from_secs(5),
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
        if self.url.is_some() {
            self.servers()?;
        }
        let inbox = &self.nats_inbox_prefix;
        if inbox.is_empty()
            || inbox.starts_with('.')
            || inbox.ends_with('.')
            || inbox.bytes().any(|b| b <= b' ' || b == b'*' || b == b'>')
        {
            return Err(BusError::Config(format!(
                "--nats-inbox-prefix {inbox:?} must be a subject without wildcards or spaces"
            )));
        }
        if self.nats_timeout.is_zero() {
            return Err(BusError::Config("--nats-timeout must be positive".into()));
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        self.nats_timeout
    }

    /// The servers of `--nats`: a comma-separated list a client fails over between
    /// (async-nats parses one URL per address, not a list).
    pub fn servers(&self) -> Result<Vec<ServerAddr>, BusError> {
        let url = self
            .url
            .as_deref()
            .ok_or_else(|| BusError::Config("no NATS URL given (--nats)".into()))?;
        server_list(url)
    }
}

/// `nats://a:4222,nats://b:4222` → the servers a client fails over between (async-nats
/// parses one URL per address, not a comma-separated list).
fn server_list(url: &str) -> Result<Vec<ServerAddr>, BusError> {
    let servers: Vec<ServerAddr> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| BusError::Config(format!("--nats: {s:?} is not a NATS URL: {e}")))
        })
        .collect::<Result<_, _>>()?;
    if servers.is_empty() {
        return Err(BusError::Config("--nats names no server".into()));
    }
    Ok(servers)
}

/// Limits of the event stream and the registry.
#[derive(Clone, Debug, clap::Args)]
pub struct StreamArgs {
    /// Oldest event kept in the stream, e.g. 1h (a bare number is seconds). Replay after a
    /// restart needs the tail since the last snapshot.
    #[arg(
        long = "stream-max-age",
        alias = "stream-max-age-s",
        env = "CACHE_ROUTER_STREAM_MAX_AGE_S",
        default_value = "1h",
        value_parser = duration::secs
    )]
    pub stream_max_age: Duration,
    /// Stream size limit in bytes (oldest events are dropped past it).
    #[arg(long, env = "CACHE_ROUTER_STREAM_MAX_BYTES", default_value_t = 1 << 30)]
    pub stream_max_bytes: i64,
    /// A worker whose registry entry was not refreshed for this long is considered gone, e.g.
    /// 10s (a bare number is milliseconds).
    #[arg(
        long = "registry-ttl",
        alias = "registry-ttl-ms",
        env = "CACHE_ROUTER_REGISTRY_TTL_MS",
        default_value = "10s",
        value_parser = duration::ms
    )]
    pub registry_ttl: Duration,
    /// Replicas of the event stream, the registry bucket and the snapshot store (a JetStream
    /// cluster keeps each on this many servers; 1 on a single server).
    #[arg(long, env = "CACHE_ROUTER_NATS_REPLICAS", default_value_t = 1)]
    pub nats_replicas: usize,
}

impl StreamArgs {
    pub fn validate(&self) -> Result<(), BusError> {
        if !(1..=5).contains(&self.nats_replicas) {
            return Err(BusError::Config(format!(
                "--nats-replicas must be 1..=5 (JetStream's limit), got {}",
                self.nats_replicas
            )));
        }
        if self.registry_ttl < Duration::from_millis(100) {
            return Err(BusError::Config(
                "--registry-ttl must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

impl Default for StreamArgs {
    fn default() -> Self {
        StreamArgs {
            stream_max_age: Duration::from_secs(3600),
            stream_max_bytes: 1 << 30,
            registry_ttl: Duration::from_secs(10),
            nats_replicas: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_is_every_server() {
        let s = server_list("nats://a:4222, nats://b:4223,nats://10.0.0.3:4224").unwrap();
        let ports: Vec<u16> = s.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(s[1].host(), "b");
        assert!(server_list("nats://a:x").is_err());
        assert!(server_list(" , ").is_err());
    }
}
