//! `cache-router sim`: flags, validation and the run that compares policies.

use std::path::PathBuf;

use super::report;
use crate::flags::{policy_kind, GeneratorArgs, PolicyArgs, TimingArgs};
use cache_router_core::index::MAX_WORKER_SLOT;
use cache_router_core::policy::PolicyKind;
use cache_router_core::sim::workload::{self, Workload, WorkloadError};
use cache_router_core::sim::{simulate, FleetConfig, SimResult};

/// Built-in workload generators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadKind {
    /// Multi-turn sessions whose history grows each turn.
    Chat,
    /// Prompts built from a pool of shared documents.
    Rag,
}

/// Simulate a fleet offline and compare routing policies on one workload.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Mooncake-format trace (JSON lines {timestamp, input_length, output_length, hash_ids}).
    #[arg(long, conflicts_with = "workload")]
    pub trace: Option<PathBuf>,
    /// Tokens per trace hash id.
    #[arg(long, default_value_t = 512)]
    pub trace_block_size: u64,
    /// Compress the trace's time by this factor (2 = arrivals twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Built-in workload, when no trace is given.
    #[arg(long, value_enum, default_value_t = WorkloadKind::Chat)]
    pub workload: WorkloadKind,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Simulated engines.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// KV cache blocks per engine.
    #[arg(long, default_value_t = 2000)]
    pub capacity_blocks: usize,
    /// Policies to compare, comma-separated.
    #[arg(
        long,
        value_parser = policy_kind(),
        value_delimiter = ',',
        default_value = "cache-aware,round-robin,least-loaded,random,approx"
    )]
    pub policy: Vec<PolicyKind>,
    /// Print one JSON array (one object per policy) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also draw hit rates and TTFT distributions to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub timing: TimingArgs,
    #[command(flatten)]
    pub policy_config: PolicyArgs,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A flag is out of range: the caller exits with a usage error.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Plot(#[from] report::PlotError),
}

impl SimArgs {
    /// Checks every flag before any work starts.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Config(m));
        if self.workers == 0 || self.workers > usize::from(MAX_WORKER_SLOT) + 1 {
            return bad(format!(
                "--workers must be in 1..={}, got {}",
                usize::from(MAX_WORKER_SLOT) + 1,
                self.workers
            ));
        }
        if self.capacity_blocks == 0 {
            return bad("--capacity-blocks must be positive".into());
        }
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return bad(format!(
                "--time-scale must be positive, got {}",
                self.time_scale
            ));
        }
        if self.trace_block_size == 0 || self.generator.block_size == 0 {
            return bad("block sizes must be positive".into());
        }
        if !(self.generator.rate.is_finite() && self.generator.rate > 0.0) {
            return bad(format!(
                "--rate must be positive, got {}",
                self.generator.rate
            ));
        }
        if self.policy.is_empty() {
            return bad("--policy needs at least one policy".into());
        }
        let t = &self.timing;
        for (name, v) in [
            ("--prefill-overhead-ms", t.prefill_overhead_ms),
            ("--prefill-ms-per-token", t.prefill_ms_per_token),
            ("--decode-ms-per-token", t.decode_ms_per_token),
            ("--decode-ms-per-seq", t.decode_ms_per_seq),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a non-negative number, got {v}"));
            }
        }
        if !(self.policy_config.temperature.is_finite() && self.policy_config.temperature >= 0.0) {
            return bad("--temperature must be >= 0".into());
        }
        Ok(())
    }

    /// Loads or generates the workload.
    pub fn workload(&self) -> Result<Workload, SimError> {
        Ok(match (&self.trace, self.workload) {
            (Some(path), _) => {
                workload::load_mooncake(path, self.trace_block_size, self.time_scale)?
            }
            (None, WorkloadKind::Chat) => workload::generate_chat(&self.generator.clone().into()),
            (None, WorkloadKind::Rag) => workload::generate_rag(&self.generator.clone().into()),
        })
    }
}

/// Runs every requested policy on the same workload (in parallel threads, one per policy,
/// since runs share nothing) and returns their results in the order asked.
pub fn run(args: &SimArgs) -> Result<Vec<SimResult>, SimError> {
    args.validate()?;
    let workload = args.workload()?;
    let fleet = FleetConfig {
        workers: args.workers,
        capacity_blocks: args.capacity_blocks,
        timing: args.timing.clone().into(),
        policy: args.policy_config.clone().into(),
    };
    tracing::info!(
        workload = %workload.name,
        requests = workload.requests.len(),
        workers = fleet.workers,
        capacity_blocks = fleet.capacity_blocks,
        "simulating {} policies",
        args.policy.len()
    );
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = args
            .policy
            .iter()
            .map(|&kind| {
                let (w, f) = (&workload, &fleet);
                s.spawn(move || simulate(w, f, kind))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread panicked"))
            .collect::<Vec<_>>()
    });
    if let Some(path) = &args.plot {
        let title = format!(
            "{}: {} workers x {} blocks",
            workload.name, fleet.workers, fleet.capacity_blocks
        );
        report::plot(&results, &title, path)?;
    }
    Ok(results)
}
