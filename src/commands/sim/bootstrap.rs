//! `adrank sim bootstrap`: simulated history on Kafka.

use std::{
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use super::publish::Publisher;
use crate::{config::Loaded, table::Table};
use adrank_contracts::eval::quality;
use adrank_featurestore::kafka::admin;
use anyhow::{Context as _, bail};

/// Generate and publish simulated history.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Simulated days (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    days: f64,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let config = &loaded.config;
    if !(args.days.is_finite() && args.days > 0.0) {
        bail!("--days is {}; expected a positive number of simulated days", args.days);
    }
    let state = admin::describe(&config.kafka).await.context("Kafka is not reachable: run `adrank up`")?;
    let missing: Vec<&str> = state.missing().map(|t| t.name.as_str()).collect();
    if !missing.is_empty() {
        bail!("topics missing: {}; run `adrank up` to create them", missing.join(", "));
    }
    eprintln!("building the world ({} users, {} ads) …", config.world.users, config.world.ads);
    let mut world = super::world(loaded);
    let mut publisher = Publisher::new(&config.kafka)?;
    let topics = &config.kafka.topics;
    let start = Instant::now();

    let mut profiles = 0u64;
    for profile in world.user_profiles().collect::<Vec<_>>() {
        publisher.send(&topics.users.name, &profile).await?;
        profiles += 1;
    }
    let mut catalog = 0u64;
    for record in world.live_catalog() {
        publisher.send(&topics.ads.name, &record).await?;
        catalog += 1;
    }

    let requests = (args.days * 24.0 * f64::from(config.world.requests_per_hour)).round() as u64;
    let (mut impressions, mut clicks) = (0u64, 0u64);
    let mut truth_and_labels: Vec<(f64, bool)> = Vec::new();
    let mut last_progress = Instant::now();
    let mut hour = world.now_ms() / 3_600_000;
    for done in 1..=requests {
        let served = world.serve_baseline();
        let clicked: Vec<&str> = served.clicks.iter().map(|c| c.impression_id.as_str()).collect();
        for impression in &served.impressions {
            let p = impression.oracle_p.expect("the world sets oracle_p; this is a bug");
            truth_and_labels.push((p, clicked.contains(&impression.impression_id.as_str())));
            publisher.send(&topics.impressions.name, impression).await?;
        }
        for click in &served.clicks {
            publisher.send(&topics.clicks.name, click).await?;
        }
        impressions += served.impressions.len() as u64;
        clicks += served.clicks.len() as u64;
        if world.now_ms() / 3_600_000 != hour {
            hour = world.now_ms() / 3_600_000;
            for record in world.take_catalog_changes() {
                publisher.send(&topics.ads.name, &record).await?;
                catalog += 1;
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) || done == requests {
            last_progress = Instant::now();
            eprint!(
                "\r  {done}/{requests} requests, {impressions} impressions, {clicks} clicks, {:.0} events/s published ",
                publisher.acknowledged as f64 / start.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    publisher.finish().await?;
    eprintln!();
    let elapsed = start.elapsed();
    let total = profiles + catalog + impressions + clicks;
    let oracle = quality(&truth_and_labels);
    let mut table = Table::new(["WHAT", "VALUE"]);
    table.row(vec!["simulated days".into(), format!("{} ({requests} requests)", args.days)]);
    table.row(vec!["user profiles".into(), profiles.to_string()]);
    table.row(vec!["catalog records".into(), catalog.to_string()]);
    table.row(vec!["impressions".into(), impressions.to_string()]);
    table.row(vec!["clicks".into(), clicks.to_string()]);
    if let Some(q) = oracle {
        table.row(vec!["CTR".into(), format!("{:.4} (config {})", q.ctr, config.world.mean_ctr)]);
        table.row(vec![
            "oracle".into(),
            format!("log loss {:.5}, AUC {:.4}, normalised entropy {:.4}", q.log_loss, q.auc, q.normalised_entropy),
        ]);
    }
    table.row(vec![
        "published".into(),
        format!(
            "{total} events in {:.1} s: {:.0} events/s (acks=all)",
            elapsed.as_secs_f64(),
            total as f64 / elapsed.as_secs_f64()
        ),
    ]);
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
