//! `adrank sim ceiling`: how close any model can get to the truth on a held-out day.

use std::process::ExitCode;

use adrank_loadtest::oracle::{ablation_rows, ablations};
use anyhow::bail;

use crate::{config::Loaded, table::Table};

/// The truth with some of its terms removed, measured on the last of `days` simulated days.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Simulated days; the last one is measured (the same days `sim history --days` writes).
    #[arg(long, default_value_t = 7.0)]
    days: f64,
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    if !(args.days.is_finite() && args.days >= 1.0) {
        bail!("--days is {}; expected at least 1 (the last day is measured)", args.days);
    }
    let mut world = super::world(loaded);
    let per_hour = f64::from(loaded.config.world.requests_per_hour);
    let (warm_up, measured) = (((args.days - 1.0) * 24.0 * per_hour).round() as u64, (24.0 * per_hour).round() as u64);
    for _ in 0..warm_up {
        world.serve_baseline();
    }
    let mut rows = Vec::new();
    for _ in 0..measured {
        let served = world.serve_baseline();
        rows.extend(ablation_rows(world.truth(), &served));
    }
    let results = ablations(&rows);
    let oracle = results.first().map_or(f64::NAN, |a| a.quality.normalised_entropy);
    let mut table = Table::new(["THE TRUTH WITHOUT", "AUC", "LOG LOSS", "NE", "VS ORACLE"]);
    for a in &results {
        table.row(vec![
            a.without.into(),
            format!("{:.4}", a.quality.auc),
            format!("{:.5}", a.quality.log_loss),
            format!("{:.4}", a.quality.normalised_entropy),
            format!("{:+.2}%", 100.0 * (a.quality.normalised_entropy / oracle - 1.0)),
        ]);
    }
    println!("{} impressions of the last simulated day (day {})", rows.len(), args.days);
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}
