//! The subcommands. Adding one means adding a module with an `Args` struct (clap) and a `run`
//! function, and one line in [`Command`] and in [`Command::run`].

mod bench;
mod child;
mod config;
mod demo;
mod doctor;
mod down;
mod eval;
mod features;
mod ingest;
mod loadtest;
mod registry;
mod retrain;
mod rollout;
mod serve;
mod sim;
mod status;
mod train;
mod up;
mod window;
mod xray;

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Loaded;

/// What adrank can do.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The whole chain once on the local stack: simulated history to Kafka, ingest, train a
    /// first model, serve it, closed-loop load with an HTML report (`--quick`: a few minutes).
    Demo(demo::Args),
    /// The whole loop on one screen: dependencies, models and aliases, the rollout and its
    /// arms, the serving replicas, ingest lag and freshness, the last retraining cycles
    /// (`--json`, `--watch`).
    Status(status::Args),
    /// The live dashboard: what `status` shows, as charts over time (latency, throughput,
    /// shedding, ingest lag and freshness, CTR and calibration per version, the rollout
    /// timeline, retraining cycles) on one page served here.
    Xray(xray::Args),
    /// Check every dependency (ONNX Runtime, Kafka, Redis, registry, MPI) and say how to fix
    /// what is missing. Exits non-zero when a required one fails.
    Doctor(doctor::Args),
    /// Start the local stack for one machine (a tansu Kafka broker, topics, Redis if none
    /// answers). Idempotent: what already runs is left alone.
    Up(up::Args),
    /// Stop what `adrank up` started, and nothing else.
    Down(down::Args),
    /// Print the effective configuration (file, defaults and environment overrides) as TOML.
    Config(config::Args),
    /// Run a feature-store ingester: Kafka events into the Redis online store and the Parquet
    /// training log, exactly once. Start several to share the partitions.
    Ingest(ingest::Args),
    /// Train a model on a window of the training log, check it loads in ONNX Runtime, and
    /// publish it to the registry.
    Train(train::Args),
    /// Score a candidate version and a baseline (default: production) on a held-out window
    /// with ONNX Runtime; AUC, log loss, normalised entropy, calibration, per slice, vs the truth.
    Eval(eval::Args),
    /// The model registry: list, show, import, alias, history.
    Registry(registry::Args),
    /// A window of the training log as encoded model rows and their statistics (Parquet and
    /// JSON), for a model trained elsewhere and brought back with `registry import`.
    Features(features::Args),
    /// A candidate's rollout, kept in the registry: start it, see it, advance, pause, resume,
    /// promote or abort it, and its audit log. `serve` routes each user to their arm.
    Rollout(rollout::Args),
    /// The retraining loop: a cycle trains a candidate on final hours (warm-started from
    /// production), evaluates it against production on newer hours, applies the gates and
    /// records the decision; `--loop` runs cycles on triggers, one at a time across processes;
    /// `history` lists them.
    Retrain(retrain::Args),
    /// Load on the ranking API (wrk2's open model: a fixed schedule, latency from each intended
    /// send time) with requests from the synthetic world; rate sweeps; closed-loop runs where
    /// the world clicks; JSON and HTML reports.
    Loadtest(loadtest::Args),
    /// Serve the ranking API (`POST /v1/rank`) with a version from the registry.
    Serve(serve::Args),
    /// Benchmarks, each beside its physical limit in the same run.
    Bench(bench::Args),
    /// The synthetic ads world: bootstrap history to Kafka, sample requests, oracle metrics,
    /// throughput.
    Sim(sim::Args),
}

impl Command {
    pub(crate) async fn run(self, loaded: &Loaded) -> anyhow::Result<ExitCode> {
        match self {
            Self::Demo(args) => demo::run(args, loaded).await,
            Self::Status(args) => status::run(args, loaded).await,
            Self::Xray(args) => xray::run(args, loaded).await,
            Self::Doctor(args) => doctor::run(args, loaded).await,
            Self::Up(args) => up::run(args, loaded).await,
            Self::Down(args) => down::run(args, loaded).await,
            Self::Config(args) => config::run(args, loaded),
            Self::Ingest(args) => ingest::run(args, loaded).await,
            Self::Sim(args) => sim::run(args, loaded).await,
            Self::Bench(args) => bench::run(args, loaded).await,
            Self::Train(args) => train::run(args, loaded).await,
            Self::Eval(args) => eval::run(args, loaded).await,
            Self::Registry(args) => registry::run(args, loaded).await,
            Self::Features(args) => features::run(args, loaded).await,
            Self::Retrain(args) => retrain::run(args, loaded).await,
            Self::Rollout(args) => rollout::run(args, loaded).await,
            Self::Serve(args) => serve::run_command(args, loaded).await,
            Self::Loadtest(args) => loadtest::run_command(args, loaded).await,
        }
    }
}
