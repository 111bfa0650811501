//! `adrank`: the command line of the adrank ads-ranking system.
//!
//! One binary, one subcommand per module under `commands/`. Configuration is loaded and checked
//! before any subcommand runs: a bad config is reported in full and exits with status 2.

mod commands;
mod config;
mod stack;
mod table;
mod telemetry;

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

/// mimalloc's `mi_option_purge_decommits`, the sixth option of `mi_option_e` in its v3
/// `mimalloc.h` (libmimalloc-sys names no constant for it); a test checks its default.
const PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

/// mimalloc hands memory it has not used for a while (its purge delay, 1 s) back to the
/// kernel, by default by decommitting it (`MADV_DONTNEED`): the next allocation there then
/// takes a page fault per 4 KiB page. Online reads took ~9,200 faults in 4 s that way, in
/// bursts after each purge, and the reads that paid them were the slowest (BENCHMARKS.md,
/// feature store, a sixth machine). Purging by reset instead (`MADV_FREE`), the kernel takes the
/// pages back only when it needs memory, and touching one it has not taken costs nothing.
/// `MIMALLOC_PURGE_DECOMMITS` in the environment still decides.
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_none() {
        // SAFETY: an option is a plain value mimalloc reads when it next purges; this runs
        // before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DECOMMITS, 0) };
    }
}

/// Exit status for a configuration that cannot be used.
const CONFIG_ERROR: u8 = 2;

fn main() -> ExitCode {
    tune_allocator();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Kept to the end of main: dropping it exports the spans still held.
    let _telemetry = telemetry::init(matches.subcommand_name().unwrap_or("adrank"));
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn every_subcommand_has_valid_arguments() {
        // clap checks its own invariants (unique names, valid defaults) only when a command is
        // built: build them all here, not on a user's first run.
        super::Cli::command().debug_assert();
    }

    /// The option's place in mimalloc's list: it is a switch that is on by default, unlike its
    /// neighbours (`arena_eager_commit` is 2, `allow_large_os_pages` 0, `purge_delay` 1000).
    #[test]
    #[allow(unsafe_code)]
    fn purge_decommits_names_mimallocs_option() {
        if std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some() {
            panic!("unset MIMALLOC_PURGE_DECOMMITS to run this test: it reads the option's default");
        }
        // SAFETY: reading an option.
        let (this, delay) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::PURGE_DECOMMITS),
                libmimalloc_sys::mi_option_get(super::PURGE_DECOMMITS + 10),
            )
        };
        assert_eq!((this, delay), (1, 1000), "mimalloc's option list has moved: find purge_decommits in mimalloc.h");
    }
}
