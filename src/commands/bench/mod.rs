//! `adrank bench`: benchmarks of adrank's components, each measured beside its physical limit
//! in the same run (these machines are shared and noisy: only ratios mean much).

mod floor;
mod ingest;
mod loadgen;
mod model;
mod reads;
mod serve;
mod stack;
mod train;

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Loaded;

/// Measure a component beside its limits.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The feature store: ingestion rate (Kafka -> Redis + Parquet) beside the broker's raw
    /// consume rate and Redis's raw pipelined write rate; online read latency beside a naive
    /// one-read-per-entity loop; freshness at half the ingestion rate. Starts its own tansu
    /// broker (memory storage) and uses the configured Redis under a key prefix of its own.
    Ingest(ingest::Args),
    /// The load generator itself: the highest rate one generator core holds within 1% against
    /// a trivial endpoint, and its latency percentiles beside wrk's at the same rate.
    Loadgen(loadgen::Args),
    /// The raw model on each execution provider (cpu, cuda) at the batch sizes the batcher
    /// forms: rows per second and per CPU-second, median run, and each provider's scores
    /// checked against the CPU's on the same logged rows.
    Model(model::Args),
    /// The ranking server beside the raw model: rows per CPU-second of the server process at
    /// saturation vs raw ONNX Runtime; latency at half saturation with its breakdown; version
    /// swaps under load; shedding at twice saturation; memory over load/unload cycles.
    Serve(serve::Args),
    /// Training throughput: N MPI ranks beside one rank reading the same shards (one thread
    /// each: the same model bit for bit), pair by pair on simulated history.
    Train(train::Args),
    /// The least a ranking server does per request (`bench serve` runs it).
    #[command(hide = true)]
    FloorServer(floor::Args),
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Ingest(args) => ingest::run(args, loaded).await,
        Command::Loadgen(args) => loadgen::run_command(args).await,
        Command::Model(args) => model::run(args, loaded).await,
        Command::Serve(args) => serve::run_command(args, loaded).await,
        Command::Train(args) => train::run(args, loaded).await,
        Command::FloorServer(args) => floor::run(args, loaded).await,
    }
}
