//! The routing policy's flags (`serve`, `sim`, `demo`): which policy, and its weights.

use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use cache_router_core::policy::{PolicyConfig, PolicyKind};

/// A value parser for a policy name, listing each policy with its description in `--help`.
pub fn policy_kind() -> impl TypedValueParser<Value = PolicyKind> {
    PossibleValuesParser::new(
        PolicyKind::ALL.map(|k| PossibleValue::new(k.name()).help(k.describe())),
    )
    .try_map(|s| s.parse::<PolicyKind>())
}

/// The cost weights and knobs of [`PolicyConfig`] as flags.
#[derive(Clone, Debug, clap::Args)]
pub struct PolicyArgs {
    /// Weight `a` on the request's uncached blocks.
    #[arg(
        long = "w-uncached",
        env = "CACHE_ROUTER_W_UNCACHED",
        default_value_t = 1.0
    )]
    pub uncached_weight: f64,
    /// Weight `b` on the worker's queued prefill blocks.
    #[arg(
        long = "w-prefill",
        env = "CACHE_ROUTER_W_PREFILL",
        default_value_t = 1.0
    )]
    pub prefill_weight: f64,
    /// Weight `c` on the worker's running (decoding) requests, in blocks per request.
    #[arg(
        long = "w-decode",
        env = "CACHE_ROUTER_W_DECODE",
        default_value_t = 1.0
    )]
    pub decode_weight: f64,
    /// Softmax temperature in cost units; 0 picks the minimum.
    #[arg(long, env = "CACHE_ROUTER_TEMPERATURE", default_value_t = 0.0)]
    pub temperature: f64,
    /// `approx`: how long a routed prefix is assumed cached (a bare number is milliseconds).
    #[arg(
        long = "approx-ttl",
        alias = "approx-ttl-ms",
        env = "CACHE_ROUTER_APPROX_TTL_MS",
        default_value = "120s",
        value_parser = super::duration::ms
    )]
    pub approx_ttl: Duration,
    /// `approx`: route by prefix match only when it covers more than this fraction.
    #[arg(long, env = "CACHE_ROUTER_APPROX_THRESHOLD", default_value_t = 0.5)]
    pub approx_threshold: f64,
    /// `approx`: fall back to least-loaded when max - min in-flight exceeds this.
    #[arg(long, env = "CACHE_ROUTER_APPROX_BALANCE_ABS", default_value_t = 32)]
    pub approx_balance_abs: u32,
    /// Seed for tie-breaks and sampling (reproducible runs).
    #[arg(
        id = "policy_seed",
        long = "policy-seed",
        env = "CACHE_ROUTER_POLICY_SEED",
        default_value_t = 0
    )]
    pub seed: u64,
}

impl From<PolicyArgs> for PolicyConfig {
    fn from(a: PolicyArgs) -> Self {
        PolicyConfig {
            uncached_weight: a.uncached_weight,
            prefill_weight: a.prefill_weight,
            decode_weight: a.decode_weight,
            temperature: a.temperature,
            approx_ttl_ms: u64::try_from(a.approx_ttl.as_millis()).unwrap_or(u64::MAX),
            approx_threshold: a.approx_threshold,
            approx_balance_abs: a.approx_balance_abs,
            seed: a.seed,
        }
    }
}
