//! `adrank sim requests`: sample ranking requests.

use std::{io::Write as _, process::ExitCode};

use crate::config::Loaded;

/// Print ranking requests as JSON lines.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many requests.
    #[arg(short = 'n', long, default_value_t = 10)]
    count: u64,
    /// Requests to skip first (they still advance simulated time).
    #[arg(long, default_value_t = 0)]
    skip: u64,
}

pub(crate) fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let mut world = super::world(loaded);
    for _ in 0..args.skip {
        world.next_request();
    }
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..args.count {
        let request = world.next_request();
        serde_json::to_writer(&mut out, &world.rank_request(&request))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
