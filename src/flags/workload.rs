//! The built-in workload generators' flags (`sim`, `demo`).

use cache_router_core::sim::workload::GeneratorConfig;

/// The shape of the built-in generators ([`GeneratorConfig`]) as flags.
#[derive(Clone, Debug, clap::Args)]
pub struct GeneratorArgs {
    /// Seed of the generator.
    #[arg(id = "workload_seed", long = "workload-seed", default_value_t = 42)]
    pub seed: u64,
    /// Tokens per block for generated workloads.
    #[arg(id = "gen_block_size", long = "gen-block-size", default_value_t = 16)]
    pub block_size: u64,
    /// Requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// chat: number of sessions.
    #[arg(long, default_value_t = 200)]
    pub sessions: usize,
    /// chat: turns per session.
    #[arg(long, default_value_t = 8)]
    pub turns: usize,
    /// chat: shared system prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    pub system_tokens: u64,
    /// chat: user message length in tokens; rag: question length.
    #[arg(long, default_value_t = 128)]
    pub user_tokens: u64,
    /// Output length in tokens (chat: the assistant reply, which joins the history).
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u64,
    /// rag: documents in the pool.
    #[arg(long, default_value_t = 200)]
    pub documents: usize,
    /// rag: document length in tokens.
    #[arg(long, default_value_t = 1024)]
    pub document_tokens: u64,
    /// rag: documents per request (the first is drawn by Zipf popularity).
    #[arg(long, default_value_t = 2)]
    pub docs_per_request: usize,
    /// rag: requests in total.
    #[arg(long, default_value_t = 2000)]
    pub rag_requests: usize,
}

impl From<GeneratorArgs> for GeneratorConfig {
    fn from(a: GeneratorArgs) -> Self {
        GeneratorConfig {
            seed: a.seed,
            block_size: a.block_size,
            rate: a.rate,
            sessions: a.sessions,
            turns: a.turns,
            system_tokens: a.system_tokens,
            user_tokens: a.user_tokens,
            output_tokens: a.output_tokens,
            documents: a.documents,
            document_tokens: a.document_tokens,
            docs_per_request: a.docs_per_request,
            rag_requests: a.rag_requests,
        }
    }
}
