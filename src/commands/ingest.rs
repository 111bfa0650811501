//! `adrank ingest`: run one feature-store ingester (start as many as the topics have partitions;
//! they share the work through the consumer group).

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use adrank_featurestore::{
    ingest::{Ingester, RunOptions},
    kafka::admin,
    metrics,
};
use anyhow::{Context as _, bail};

use crate::{config::Loaded, table::Table};

/// Apply Kafka events to the Redis online store and write the Parquet training log.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Stop once no event has arrived for this many seconds and everything read is committed
    /// (for batch use: ingest a bootstrap, then train). Without it, runs until SIGINT/SIGTERM.
    #[arg(long, value_name = "SECS")]
    exit_when_idle: Option<f64>,
    /// Serve Prometheus metrics on this address (for example 127.0.0.1:9101).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let exit_when_idle = match args.exit_when_idle {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            bail!("--exit-when-idle is {secs}; expected a positive number of seconds")
        }
        secs => secs.map(Duration::from_secs_f64),
    };
    if let Some(addr) = args.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        metrics::describe();
    }
    let state = admin::describe(&config.kafka).await.context("Kafka is not reachable: run `adrank up`")?;
    let missing: Vec<&str> = state.missing().map(|t| t.name.as_str()).collect();
    if !missing.is_empty() {
        bail!("topics missing: {}; run `adrank up` to create them", missing.join(", "));
    }
    let ingester = Ingester::new(&config.kafka, &config.redis, &config.ingest).await?;
    eprintln!(
        "ingesting into {} (prefix {}) and {}; group {}",
        config.redis.url, config.redis.key_prefix, config.ingest.training_log, config.kafka.consumer_group
    );
    let totals = ingester.run(RunOptions { exit_when_idle }, shutdown_signal()).await?;
    let mut table = Table::new(["", "events"]);
    for (name, n) in ["impressions", "clicks", "user profiles", "ad records"].iter().zip(totals.applied) {
        table.row(vec![format!("{name} applied"), n.to_string()]);
    }
    for (name, n) in [
        ("dead-lettered", totals.dead_letters),
        ("training examples written", totals.examples),
        ("late clicks", totals.late_clicks),
        ("orphan clicks", totals.orphan_clicks),
        ("batches fenced by another ingester", totals.fenced),
    ] {
        table.row(vec![name.to_string(), n.to_string()]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
