//! `adrank sim`: the synthetic ads world from the command line.

mod bench;
mod bootstrap;
mod ceiling;
mod history;
mod oracle;
pub(crate) mod publish;
mod requests;

use std::process::ExitCode;

use adrank_loadtest::world::World;
use clap::Subcommand;

use crate::config::Loaded;

/// Drive the synthetic ads world.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate simulated days of history served by the baseline policy (rank by bid) and
    /// publish profiles, catalog, impressions and clicks to Kafka.
    Bootstrap(bootstrap::Args),
    /// Generate simulated days of history served by the baseline policy and write the joined
    /// training examples straight to the training log (no Kafka): data for `adrank train`.
    History(history::Args),
    /// What a predictor reaches that knows the truth except some of its terms, on the last
    /// simulated day: the oracle, the learnable ceiling (without the users' own taste
    /// deviations), and without entity terms (biases, the latent dot product).
    Ceiling(ceiling::Args),
    /// Print ranking requests as JSON, one per line (for curl and tests).
    Requests(requests::Args),
    /// Print the oracle metrics (what the true probabilities achieve) for a set of events.
    Oracle(oracle::Args),
    /// Measure the world's throughput on one core: requests and events per second.
    Bench(bench::Args),
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Bootstrap(args) => bootstrap::run(args, loaded).await,
        Command::History(args) => history::run(args, loaded).await,
        Command::Ceiling(args) => ceiling::run(args, loaded).await,
        Command::Requests(args) => requests::run(args, loaded),
        Command::Oracle(args) => oracle::run(args, loaded).await,
        Command::Bench(args) => bench::run(args, loaded).await,
    }
}

/// The world of the loaded config (building it takes about a second at the default size).
pub(crate) fn world(loaded: &Loaded) -> World {
    World::new(loaded.config.world.clone())
}
