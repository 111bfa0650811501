//! `adrank bench floor-server` (hidden; `bench serve` runs it): the least a ranking server over
//! HTTP and Redis does per request, on the same HTTP stack as `adrank serve` (axum on a
//! multi-threaded tokio runtime, mimalloc): read the request, make one Redis round trip, send
//! back a real ranked reply. No parsing, no features, no model. Its CPU per request, at the
//! real server's saturation rate, is a floor under what everything besides the model can cost
//! in any server on this stack (hyper, tokio, redis-rs) on this machine, and so a ceiling on the
//! overhead ratio such a server reaches.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use redis::aio::MultiplexedConnection;

use crate::config::Loaded;

/// Arguments of `adrank bench floor-server`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// The body sent back to every `POST /v1/rank` (a real server's reply).
    #[arg(long, value_name = "PATH")]
    reply: PathBuf,
}

struct Floor {
    redis: MultiplexedConnection,
    reply: Bytes,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let reply = std::fs::read(&args.reply).with_context(|| format!("cannot read {}", args.reply.display()))?;
    let redis = adrank_featurestore::online::connect(&loaded.config.redis).await?;
    let state = Arc::new(Floor { redis, reply: Bytes::from(reply) });
    let app = Router::new().route("/v1/rank", post(rank)).route("/readyz", get(|| async { "ready" })).with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    axum::serve(listener, app).with_graceful_shutdown(crate::commands::ingest::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn rank(State(floor): State<Arc<Floor>>, body: Bytes) -> Response {
    // The body is read in full (axum buffers it) and then only looked at.
    std::hint::black_box(&body);
    let mut redis = floor.redis.clone();
    match redis::cmd("PING").query_async::<String>(&mut redis).await {
        Ok(_) => ([(CONTENT_TYPE, "application/json")], floor.reply.clone()).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
