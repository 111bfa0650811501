//! `adrank`: the command line of the adrank ads-ranking system.
//!
//! One binary, one subcommand per module under `commands/`. Configuration is loaded and checked
//! before any subcommand runs: a bad config is reported in full and exits with status 2.

mod commands;
mod config;
mod stack;
mod table;

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// adrank: ads ranking with dynamically batched ONNX models, a Kafka + Redis feature store and
/// a retraining loop with shadow and canary rollouts.
#[derive(Debug, Parser)]
#[command(name = "adrank", version, propagate_version = true)]
struct Cli {
    /// The config file. Default: config/adrank.toml in the current directory when it exists,
    /// else built-in defaults. ADRANK_<SECTION>__<KEY> variables override single keys.
    #[arg(long, global = true, env = "ADRANK_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: commands::Command,
}

/// mimalloc instead of glibc's malloc: event generation and serving allocate many small
/// strings and maps per request, where glibc's allocator measured as the largest single cost
/// (BENCHMARKS.md, world throughput). Built with `no_thp`: otherwise mimalloc asks for
/// transparent huge pages on its memory, and the kernel zeroes a whole 2 MiB page at the first
/// touch of every region mimalloc has returned and takes back, which was 20% of the ingester's
/// CPU samples (`clear_page_erms`); BENCHMARKS.md, feature store.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration that cannot be used.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let loaded = match config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(report) => {
            eprintln!("{report}");
            return ExitCode::from(CONFIG_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.command.run(&loaded)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `ADRANK_LOG` (tracing's filter syntax), warnings by default.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ADRANK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only on a terminal: log files and test captures stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn every_subcommand_has_valid_arguments() {
        // clap checks its own invariants (unique names, valid defaults) only when a command is
        // built: build them all here, not on a user's first run.
        super::Cli::command().debug_assert();
    }
}
