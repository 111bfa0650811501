//! A window of the training log as model rows, for a model trained elsewhere (`adrank features
//! export`): the ids and numbers serving will feed, with their labels, and the statistics they
//! were standardised with, fitted as `adrank train` fits them (a seeded reservoir sample of
//! `training.stats_sample` examples).

use std::sync::Arc;

use adrank_contracts::spec::{FeatureSpec, TransformStats, Transformer};

use crate::{
    Error, Result, TrainingConfig,
    data::{self, LogWindow, RowStream},
    model::Batch,
    parallel::Parallel,
    train::scan,
};

/// The window's rows, to be read chunk by chunk, and what they were encoded with.
#[derive(Debug)]
pub struct Encoded {
    pub stats: TransformStats,
    pub examples: u64,
    pub clicks: u64,
    /// One chunk per log file, in the log's order.
    pub chunks: RowStream<Chunk>,
}

/// Model rows with their labels, and each row's event time.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub rows: Batch,
    pub event_time_ms: Vec<i64>,
}

/// Fits the statistics on the window and starts encoding its rows with them.
pub fn encode(data: &LogWindow, spec: &FeatureSpec, config: &TrainingConfig) -> Result<Encoded> {
    data.require_files()?;
    let window = data.window;
    let scan = scan(data, window, config, &Parallel::local())?;
    if scan.examples == 0 {
        return Err(Error::NoData { location: data.location().into(), window });
    }
    let stats = TransformStats::fit(spec, &scan.sample);
    let transformer = Arc::new(Transformer::new(spec, &stats)?);
    let chunks = RowStream::spawn(data, window, move |examples| {
        let mut chunk = Chunk::default();
        for example in &examples {
            data::push_row(&transformer, example, &mut chunk.rows);
            chunk.event_time_ms.push(example.impression.event_time_ms);
        }
        chunk
    });
    Ok(Encoded { stats, examples: scan.examples, clicks: scan.clicks, chunks })
}
