//! The timing model shared by the simulator and the mock engine.
//!
//! An engine has one prefill lane (requests prefill one after another, FIFO) and decodes any
//! number of requests at once:
//!
//! ```text
//! prefill_ms(r) = prefill_overhead_ms + uncached_tokens(r) * prefill_ms_per_token
//! TTFT(r)       = queue_wait(r) + prefill_ms(r)
//! decode_ms(r)  = output_tokens(r) * (decode_ms_per_token + decode_ms_per_seq * running)
//! ```
//!
//! `uncached_tokens` is the prompt length minus the cached prefix, at least one token (an
//! engine always computes the last prompt token to produce logits). `queue_wait` is the time
//! until the lane is free *and* the cache can admit the request (pinned blocks may make it
//! wait for others to finish). `running` is the number of requests decoding on the engine when
//! this one starts decoding. The defaults roughly match an 8B model on one modern GPU
//! (~20k prefill tokens/s, ~30 ms per decode step at moderate batch).

use serde::Serialize;

/// Constants of the timing model (all flags of `cache-router sim` and `mock-worker`).
#[derive(Clone, Debug, Serialize)]
pub struct TimingModel {
    /// Fixed cost of one prefill batch, in ms.
    pub prefill_overhead_ms: f64,
    /// Prefill time per uncached prompt token, in ms.
    pub prefill_ms_per_token: f64,
    /// Decode step time per output token with one running sequence, in ms.
    pub decode_ms_per_token: f64,
    /// Extra decode step time per additional running sequence, in ms.
    pub decode_ms_per_seq: f64,
}

impl Default for TimingModel {
    fn default() -> Self {
        TimingModel {
            prefill_overhead_ms: 5.0,
            prefill_ms_per_token: 0.05,
            decode_ms_per_token: 25.0,
            decode_ms_per_seq: 0.1,
        }
    }
}

impl TimingModel {
    /// Prefill time for a prompt of `prompt_tokens` with `cached_tokens` already cached.
    pub fn prefill_ms(&self, prompt_tokens: u64, cached_tokens: u64) -> f64 {
        let uncached = prompt_tokens.saturating_sub(cached_tokens).max(1);
        self.prefill_overhead_ms + uncached as f64 * self.prefill_ms_per_token
    }

    /// Decode time for `output_tokens` while `running` sequences decode.
    pub fn decode_ms(&self, output_tokens: u64, running: usize) -> f64 {
        output_tokens as f64
            * (self.decode_ms_per_token + self.decode_ms_per_seq * running.saturating_sub(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula() {
        let t = TimingModel::default();
        assert_eq!(t.prefill_ms(1000, 0), 5.0 + 1000.0 * 0.05);
        assert_eq!(t.prefill_ms(1000, 1000), 5.0 + 0.05); // at least one token
        assert_eq!(t.decode_ms(10, 1), 250.0);
        assert!((t.decode_ms(10, 11) - 260.0).abs() < 1e-9);
    }
}
