//! The deliberately bad candidate: the demo's first model's hours with their labels shuffled
//! (what a training job joined to the wrong clicks would learn from), trained as a person would
//! with `adrank train`. It ranks by little more than bid, and calibrates to the history's click
//! rate instead of what production shows.

use adrank_contracts::training_log::{TrainingLog, utc_hour};
use adrank_registry::Registry;
use adrank_trainer::retrain::{Outcome, Step, cycles};
use anyhow::Context as _;

use super::super::child::run_step;
use crate::config::Loaded;

/// Trains the bad candidate on the first cycle's training hours; returns its version.
pub(super) async fn train(loaded: &Loaded, registry: &Registry, name: &str) -> anyhow::Result<u64> {
    let first = cycles(registry, name).await?.into_iter().next().context("the first cycle left no records")?;
    let Some(Outcome::Window { plan, .. }) = first.steps.get(&Step::Window).map(|r| &r.outcome) else {
        anyhow::bail!("the first cycle recorded no windows");
    };
    let (since, until) = plan.train;
    let log = TrainingLog::open(&loaded.config.ingest.training_log)?;
    let shuffled = loaded.config.stack.state_dir.join("demo-shuffled-labels").display().to_string();
    // A fresh copy each run: the log's commits are create-once.
    let _ = std::fs::remove_dir_all(&shuffled);
    let copied = log.shuffled_copy(&TrainingLog::open(&shuffled)?, Some((since, until)), 7).await?;
    eprintln!(
        "{copied} examples of {} .. {} UTC copied to {shuffled} with their labels shuffled",
        utc_hour(since),
        utc_hour(until)
    );
    let (since, until) = (utc_hour(since), utc_hour(until));
    let reason = "adrank demo: a bad candidate (labels shuffled), to be stopped online";
    let args = [
        "train",
        "--name",
        name,
        "--training-log",
        &shuffled,
        "--since",
        &since,
        "--until",
        &until,
        "--epochs",
        "1",
        "--reason",
        reason,
    ];
    run_step(loaded, &args, &[]).await?;
    let newest = registry.versions(name).await?.into_iter().map(|m| m.version).max();
    newest.context("`adrank train` published no version")
}
