//! `adrank serve`: the ranking API.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use adrank_contracts::spec::FeatureSpec;
use adrank_featurestore::online::{Reader, Wanted};
use adrank_registry::Registry;
use adrank_serving::{
    api::{AppState, Listeners, MetricsRender, run_with_drain_deadline},
    clicks::ClickSink,
    impressions::ImpressionLog,
    manager::{ManagerConfig, ModelManager},
};
use anyhow::Context as _;

use crate::config::Loaded;

/// Serve the ranking API.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The model name in the registry.
    #[arg(long, default_value = "ctr")]
    name: String,
    /// What to serve: an alias (followed: when it moves, the new version is swapped in), `latest`
    /// (likewise) or a version number.
    #[arg(long, default_value = "production", value_name = "ALIAS")]
    follow: String,
    /// Also keep this reference's version loaded (an alias such as `candidate`, or a number;
    /// repeatable): requests can pin it with the `x-adrank-model-version` header.
    #[arg(long, value_name = "ALIAS")]
    also: Vec<String>,
    /// The feature spec.
    /// Default: `features.toml` beside the config file, else `config/features.toml`.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Listen here instead of `serving.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Also serve the gRPC API (`adrank.v1.Ranking/Rank`) here, instead of at
    /// `serving.grpc_listen` (unset by default: HTTP only).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
}

pub(crate) async fn run_command(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    let recorder =
        adrank_serving::metrics::exporter().install_recorder().context("cannot install the metrics recorder")?;
    adrank_serving::metrics::describe();
    adrank_featurestore::metrics::describe();
    // The soft file limit (often 1,024) caps connections far below what a server needs.
    match adrank_serving::connections::raise_file_limit() {
        Ok(limit) => tracing::debug!(limit, "file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file limit; connections are limited by the current one"),
    }
    let spec = FeatureSpec::load(&loaded.spec_path(args.spec.as_deref()))?;
    let registry = Registry::open(&config.registry)?;
    let models = Arc::new(
        ModelManager::start(ManagerConfig {
            registry,
            name: args.name.clone(),
            follow: args.follow.clone(),
            spec: spec.clone(),
            ort: config.onnxruntime.clone(),
            serving: config.serving.clone(),
            also: args.also.clone(),
        })
        .await?,
    );
    if config.onnxruntime.execution_provider == adrank_registry::config::Provider::Cuda {
        let device = config.onnxruntime.cuda_device as usize;
        match tokio::task::spawn_blocking(move || adrank_serving::gpu::export_memory(device)).await? {
            Ok(()) => tracing::info!(device, "exporting the GPU's memory in use"),
            Err(e) => tracing::warn!(error = %e, "the GPU's memory is not exported"),
        }
    }
    // Only what the banner needs: holding the version itself here kept the first version loaded
    // (its session and model thread) for the process's life, whatever replaced it.
    let (first_version, load_seconds) = {
        let first = models.default_version();
        (first.manifest.version, first.load_seconds)
    };
    // Connected on first use and again after every failure: a Redis that is down now is read
    // as soon as it answers.
    let reader = Reader::lazy(&config.redis)?.with_wanted(Wanted::from_spec(&spec));
    if let Err(e) = reader.ping().await {
        tracing::warn!(
            error = %e,
            "the online store does not answer: requests use the spec's defaults (degraded) until it does"
        );
    }
    let reader = Some(reader);
    let topic = &config.kafka.topics.impressions.name;
    let impressions = ImpressionLog::start(&config.kafka, topic, config.serving.impression_buffer)
        .with_context(|| format!("cannot create the Kafka producer for {topic}"))?;
    let clicks_topic = &config.kafka.topics.clicks.name;
    let clicks = ClickSink::new(&config.kafka, clicks_topic, std::time::Duration::from_secs(5))
        .with_context(|| format!("cannot create the Kafka producer for {clicks_topic}"))?;
    let listen = args.listen.unwrap_or(config.serving.listen);
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let grpc = match args.grpc_listen.or(config.serving.grpc_listen) {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for gRPC on {addr}"))?,
        ),
        None => None,
    };
    let grpc_banner = match &grpc {
        Some(l) => format!(" and gRPC on {}", l.local_addr()?),
        None => String::new(),
    };
    eprintln!(
        "serving {} version {} ({} follows it) on http://{}{grpc_banner} (loaded and warmed in {:.1} s)",
        args.name,
        first_version,
        args.follow,
        listener.local_addr()?,
        load_seconds
    );
    let watcher = Arc::clone(&models);
    let poll = std::time::Duration::from_millis(config.serving.registry_poll_ms);
    tokio::spawn(async move { watcher.watch(poll, std::future::pending()).await });
    let shadowing = Arc::clone(&models);
    let state = Arc::new(AppState {
        models,
        reader,
        impressions: Some(impressions.clone()),
        clicks: Some(clicks),
        metrics: Some(MetricsRender(Arc::new(move || recorder.render()))),
        config: config.serving.clone(),
    });
    // On SIGINT or SIGTERM: stop accepting, answer what is in flight, send the impression log
    // to Kafka, then exit; each of the two waits is bounded.
    let timeout = std::time::Duration::from_millis(config.serving.shutdown_timeout_ms);
    if !run_with_drain_deadline(Listeners { http: listener, grpc }, state, super::ingest::shutdown_signal(), timeout)
        .await?
    {
        tracing::warn!(
            timeout_ms = config.serving.shutdown_timeout_ms,
            "requests still in flight at the shutdown deadline were abandoned"
        );
    }
    // Shadow copies log their requests' impressions once scored: those go to Kafka too.
    if !shadowing.shadow().idle(timeout).await {
        tracing::warn!("shadow copies still being scored at the shutdown deadline; their impressions are lost");
    }
    let log = impressions.flush(timeout).await;
    if log.buffered + log.in_flight > 0 {
        tracing::warn!(
            unsent = log.buffered,
            unacknowledged = log.in_flight,
            delivered = log.delivered,
            dropped = log.dropped,
            "the impression log did not reach Kafka before the shutdown deadline"
        );
    } else {
        tracing::info!(delivered = log.delivered, dropped = log.dropped, "impression log flushed");
    }
    Ok(ExitCode::SUCCESS)
}
