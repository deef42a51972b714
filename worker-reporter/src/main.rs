//! `worker-reporter`: parse, validate, run until SIGTERM/SIGINT.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use worker_reporter::ReporterArgs;

fn main() -> anyhow::Result<()> {
    let args = ReporterArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: in a pipe, a file or a container log they are noise
        // (and break whoever parses the lines).
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    args.validate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cache_router_bus::shutdown::cancel_on_signals(vec![
            shutdown.clone(),
        ]));
        worker_reporter::run(args, shutdown).await
    })?;
    Ok(())
}
