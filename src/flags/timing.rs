//! The timing model's flags (`sim`, `mock-worker`).

use cache_router_core::sim::timing::TimingModel;

/// The constants of the timing model ([`TimingModel`]) as flags.
#[derive(Clone, Debug, clap::Args)]
pub struct TimingArgs {
    /// Fixed cost of one prefill batch, in ms.
    #[arg(long, env = "CACHE_ROUTER_PREFILL_OVERHEAD_MS", default_value_t = 5.0)]
    pub prefill_overhead_ms: f64,
    /// Prefill time per uncached prompt token, in ms.
    #[arg(
        long,
        env = "CACHE_ROUTER_PREFILL_MS_PER_TOKEN",
        default_value_t = 0.05
    )]
    pub prefill_ms_per_token: f64,
    /// Decode step time per output token with one running sequence, in ms.
    #[arg(long, env = "CACHE_ROUTER_DECODE_MS_PER_TOKEN", default_value_t = 25.0)]
    pub decode_ms_per_token: f64,
    /// Extra decode step time per additional running sequence, in ms.
    #[arg(long, env = "CACHE_ROUTER_DECODE_MS_PER_SEQ", default_value_t = 0.1)]
    pub decode_ms_per_seq: f64,
}

impl From<TimingArgs> for TimingModel {
    fn from(a: TimingArgs) -> Self {
        TimingModel {
            prefill_overhead_ms: a.prefill_overhead_ms,
            prefill_ms_per_token: a.prefill_ms_per_token,
            decode_ms_per_token: a.decode_ms_per_token,
            decode_ms_per_seq: a.decode_ms_per_seq,
        }
    }
}
