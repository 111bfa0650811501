//! Training data: examples of a time window of the Parquet training log, transformed into model
//! rows, streamed with bounded memory and shuffled through a bounded buffer.
//!
//! - [`LogWindow`]: the committed files of a window, read one file at a time.
//! - [`RowStream`]: a reader thread that decodes and transforms files ahead of the trainer
//!   (two chunks in flight at most), so decoding overlaps training.
//! - [`Shuffler`]: a bounded shuffle buffer (the tf.data kind): rows leave in random order
//!   from a window of `capacity` rows.

mod shuffle;
mod stream;

use adrank_contracts::{
    events::RawValue,
    spec::{POSITION_FIELD, Transformer},
    training_log::{Example, TrainingLog},
};

pub use shuffle::Shuffler;
pub use stream::RowStream;

use crate::{Error, Result, model::Batch};

/// A span of event time, `[since_ms, until_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub since_ms: i64,
    pub until_ms: i64,
}

impl Window {
    pub fn contains(&self, ms: i64) -> bool {
        ms >= self.since_ms && ms < self.until_ms
    }
}

/// The training log's files that cover a window.
#[derive(Debug, Clone)]
pub struct LogWindow {
    log: TrainingLog,
    location: String,
    files: Vec<String>,
    pub window: Window,
}

/// The span of event hours the log's committed files cover, `[first hour, last hour + 1 h)`, or
/// `None` for an empty log.
pub async fn log_span(location: &str) -> Result<Option<Window>> {
    let commits = TrainingLog::open(location)?.all_commits().await?;
    let hours = commits.iter().flat_map(|c| &c.files).filter_map(|f| adrank_contracts::training_log::file_hour(f));
    let (first, last) = hours.fold((None::<i64>, None::<i64>), |(lo, hi), h| {
        (Some(lo.map_or(h, |l| l.min(h))), Some(hi.map_or(h, |x| x.max(h))))
    });
    Ok(first.zip(last).map(|(since_ms, last)| Window { since_ms, until_ms: last + 3_600_000 }))
}

impl LogWindow {
    /// Lists the committed files of `window` in the log at `location`.
    pub async fn open(location: &str, window: Window) -> Result<Self> {
        let log = TrainingLog::open(location)?;
        let commits = log.all_commits().await?;
        let files = TrainingLog::files_between(&commits, window.since_ms, window.until_ms);
        Ok(Self { log, location: location.into(), files, window })
    }

    /// Shard `index` of `count`: every `count`-th file from the `index`-th (disjoint, together
    /// the whole window).
    pub fn shard(&self, index: usize, count: usize) -> Self {
        let files = self.files.iter().enumerate().filter(|(i, _)| i % count == index).map(|(_, f)| f.clone()).collect();
        Self { files, ..self.clone() }
    }

    pub fn files(&self) -> &[String] {
        &self.files
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// The examples of one file that fall inside `window`.
    pub async fn read(&self, file: &str, window: Window) -> Result<Vec<Example>> {
        let mut examples = self.log.read_file(file).await?;
        examples.retain(|e| window.contains(e.impression.event_time_ms));
        Ok(examples)
    }

    /// Fails when the window holds no data at all, naming what was looked for.
    pub fn require_files(&self) -> Result<()> {
        if self.files.is_empty() {
            return Err(Error::NoData { location: self.location.clone(), window: self.window });
        }
        Ok(())
    }
}

/// The raw record a model row is made from: what serving logged, plus the slot it was shown in.
pub fn raw_features(example: &Example) -> adrank_contracts::events::RawFeatures {
    let mut raw = example.impression.features.clone();
    raw.insert(POSITION_FIELD, RawValue::Num(f64::from(example.impression.position)));
    raw
}

/// Appends one example's model row and label to `batch`.
pub fn push_row(transformer: &Transformer, example: &Example, batch: &mut Batch) {
    transformer.transform(&raw_features(example), &mut batch.ids, &mut batch.dense);
    batch.labels.push(if example.label() { 1.0 } else { 0.0 });
}
