//! `adrank xray`: the loop's figures as charts over time, live. A sampler reads what
//! `adrank status` reads every few seconds into a bounded history; one page (no build step, no
//! external network: `page.html`, its script inline) polls this server's JSON and draws it.

mod sample;

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{Html, IntoResponse, Response},
    routing::get,
};
use sample::{Counters, Sample};

use super::status;
use crate::config::Loaded;

/// The live dashboard.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where the dashboard listens (loopback by default: it shows the whole loop's state).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The model whose rollouts and retraining are shown (default: `retrain.model`).
    #[arg(long)]
    model: Option<String>,
    /// Seconds between samples.
    #[arg(long, default_value_t = 2)]
    every: u64,
    /// Samples kept: the charts' span (1,800 every 2 s is an hour).
    #[arg(long, default_value_t = 1800)]
    keep: usize,
}

/// The retraining cycles the page lists.
const CYCLES_SHOWN: usize = 20;

const PAGE: &str = include_str!("page.html");

#[derive(Debug)]
struct Shared {
    every_secs: u64,
    history: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    samples: VecDeque<Sample>,
    /// The newest status in full, as `adrank status --json` prints it.
    latest: serde_json::Value,
    counters: Option<Counters>,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.keep > 0, "--keep must be at least 1");
    let model = args.model.clone().unwrap_or_else(|| loaded.config.retrain.model.clone());
    let every = Duration::from_secs(args.every.max(1));
    let shared = Arc::new(Shared { every_secs: every.as_secs(), history: Mutex::new(History::default()) });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, model, "the X-Ray dashboard is up");
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/history", get(history))
        .route("/api/status", get(latest))
        .with_state(Arc::clone(&shared));
    let server = async { axum::serve(listener, app).await.context("the dashboard's server stopped") };
    tokio::select! {
        result = server => result?,
        never = sample(loaded, &model, every, args.keep, &shared) => match never {},
        () = super::ingest::shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the status every `every` into the history, for ever.
async fn sample(loaded: &Loaded, model: &str, every: Duration, keep: usize, shared: &Shared) -> Infallible {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let status = status::read(loaded, model, CYCLES_SHOWN).await;
        let latest = serde_json::to_value(&status).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
        let mut history = shared.history.lock().expect("no sampler panics holding the lock");
        let (sample, counters) = Sample::of(&status, history.counters.as_ref());
        history.counters = Some(counters);
        if history.samples.len() == keep {
            history.samples.pop_front();
        }
        history.samples.push_back(sample);
        history.latest = latest;
    }
}

async fn history(State(shared): State<Arc<Shared>>) -> Response {
    let history = shared.history.lock().expect("no sampler panics holding the lock");
    let body = serde_json::json!({ "every_secs": shared.every_secs, "samples": history.samples });
    no_store(Json(body))
}

async fn latest(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.history.lock().expect("no sampler panics holding the lock").latest.clone();
    no_store(Json(body))
}

/// Every answer is live: no cache may keep it.
fn no_store(body: impl IntoResponse) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], body).into_response()
}
