//! `cache-router`: thin entry point. Parse, validate, run; everything else is in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use cache_router::sim;

mod serve;

/// Cache-aware router for fleets of LLM inference servers.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `cache_router=debug`.
    #[arg(long, env = "CACHE_ROUTER_LOG", default_value = "info", global = true)]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the router: consume the fleet's cache events from NATS JetStream into the index
    /// (restoring from the newest snapshot) and serve health, readiness and metrics.
    Serve(Box<serve::ServeArgs>),
    /// Simulate a fleet offline and compare routing policies (hit rate, TTFT, imbalance).
    Sim(Box<sim::cli::SimArgs>),
    /// Simulate one vLLM server (OpenAI API with dummy output, prefix cache, vLLM metrics and
    /// KV events) for demos and tests.
    MockWorker(Box<cache_router::mock::MockWorkerArgs>),
    /// Run the whole system locally: nats-server, mock engines with a worker-reporter each, a
    /// router per policy, and a chat + RAG (or Mooncake trace) replay through it; prints a
    /// policy comparison and writes PNG plots. Ctrl-C stops every child cleanly.
    Demo(Box<cache_router::demo::DemoArgs>),
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise: the container healthcheck of an
    /// image that has no shell or curl (e.g. `probe http://127.0.0.1:8080/ready`).
    Probe(ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct ProbeArgs {
    /// The URL to GET.
    url: String,
    /// Give up after this long, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = cache_router::flags::duration::ms)]
    timeout: std::time::Duration,
}

/// Exit code for a configuration error (BSD `EX_USAGE`), as linkerd does.
pub(crate) const EX_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a pipe, a file or a container log they are noise
        // (and break whoever parses the lines).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => serve::main(*args),
        Command::Sim(args) => run_sim(&args),
        Command::MockWorker(args) => run_mock_worker(*args),
        Command::Demo(args) => run_demo(*args),
        Command::Probe(args) => probe(&args),
    }
}

/// The multi-threaded runtime, or `None` after saying why it could not start.
pub(crate) fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new()
        .inspect_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

fn run_demo(args: cache_router::demo::DemoArgs) -> ExitCode {
    use cache_router::demo::DemoError;
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async move {
        // The first signal stops the demo and its children gracefully; a second kills them.
        let shutdown = tokio_util::sync::CancellationToken::new();
        let force = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cache_router_bus::shutdown::cancel_on_signals(vec![
            shutdown.clone(),
            force.clone(),
        ]));
        cache_router::demo::run(args, shutdown, force).await
    });
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(DemoError::Cancelled) => ExitCode::from(130),
        Err(e @ DemoError::Config(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_mock_worker(args: cache_router::mock::MockWorkerArgs) -> ExitCode {
    if let Err(e) = args.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(cache_router_bus::shutdown::cancel_on_signals(vec![
            shutdown.clone(),
        ]));
        cache_router::mock::run(args, listener, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ cache_router::mock::MockError::Config(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn probe(args: &ProbeArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(args.timeout)
            .no_proxy()
            .build()?;
        client.get(&args.url).send().await
    });
    match outcome {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("{}: {}", args.url, r.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", args.url);
            ExitCode::FAILURE
        }
    }
}

fn run_sim(args: &sim::cli::SimArgs) -> ExitCode {
    match sim::cli::run(args) {
        Ok(results) => {
            if args.json {
                match serde_json::to_string_pretty(&results) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("error: cannot encode results: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", sim::report::table(&results));
                if let Some(p) = &args.plot {
                    println!("plot written to {}", p.display());
                }
            }
            ExitCode::SUCCESS
        }
        Err(e @ sim::cli::SimError::Config(_)) => {
            eprintln!("error: {e}");
            ExitCode::from(EX_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sim_flags_parse() {
        let cli = Cli::try_parse_from([
            "cache-router",
            "sim",
            "--workers",
            "8",
            "--policy",
            "cache-aware,round-robin",
            "--json",
        ])
        .unwrap();
        let Command::Sim(args) = cli.command else {
            panic!("expected sim")
        };
        assert_eq!(args.workers, 8);
        assert_eq!(args.policy.len(), 2);
        assert!(Cli::try_parse_from(["cache-router", "sim", "--policy", "nope"]).is_err());
    }
}
