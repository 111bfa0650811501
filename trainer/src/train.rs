//! The training loop: statistics, epochs of shuffled mini-batches, validation after each epoch
//! and early stopping.

use std::{sync::Arc, time::Instant};

use adrank_contracts::{
    events::RawFeatures,
    spec::{FeatureSpec, TransformStats, Transformer},
};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::{
    Result, TrainingConfig,
    data::{self, LogWindow, RowStream, Window},
    model::{Batch, Grads, InputShape, Model},
    optim::Optimizer,
    parallel::{Parallel, ShardStream, Step, decode_sums, encode_sums},
    rng::Rng,
};

/// What to train.
#[derive(Debug)]
pub struct TrainRequest<'a> {
    /// The training window (the newest `validation_fraction` of it validates).
    pub data: &'a LogWindow,
    pub spec: &'a FeatureSpec,
    pub config: &'a TrainingConfig,
    /// Start from this model and its statistics instead of fresh weights (same architecture
    /// and spec).
    pub warm_start: Option<(Model, TransformStats)>,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// The ranks and data shards ([`Parallel::local`]: this process, one stream).
    pub parallel: Parallel<'a>,
}

/// A trained model with what it needs to be served and what happened.
#[derive(Debug)]
pub struct Trained {
    pub model: Model,
    pub stats: TransformStats,
    pub report: TrainReport,
}

/// How training went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub train_window: (i64, i64),
    pub validation_window: (i64, i64),
    pub train_examples: u64,
    pub train_clicks: u64,
    pub validation_examples: u64,
    pub validation_clicks: u64,
    pub epochs: Vec<EpochReport>,
    /// The epoch whose model was kept (1-based).
    pub best_epoch: u32,
    pub threads: usize,
    pub seconds: f64,
}

/// One epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: u32,
    /// Mean log loss of the training batches, measured while training.
    pub train_loss: f64,
    pub validation_loss: f64,
    pub seconds: f64,
}

/// Trains a model on a window of the log.
pub fn train(request: TrainRequest<'_>) -> Result<Trained> {
    let started = Instant::now();
    let config = request.config;
    if let Some(problem) = config.problems().first() {
        return Err(crate::Error::Settings(format!("{}: {}", problem.key, problem.problem)));
    }
    request.data.require_files()?;
    let window = request.data.window;
    let split = window.until_ms - ((window.until_ms - window.since_ms) as f64 * config.validation_fraction) as i64;
    let (train_window, validation_window) =
        (Window { since_ms: window.since_ms, until_ms: split }, Window { since_ms: split, until_ms: window.until_ms });
    let threads = config.threads();
    let parallel = request.parallel;
    if parallel.shards < parallel.collective.size() {
        return Err(crate::Error::Settings(format!(
            "{} data shards cannot feed {} ranks; use at least as many shards as ranks",
            parallel.shards,
            parallel.collective.size()
        )));
    }

    let scan = scan(request.data, train_window, config, &parallel)?;
    if scan.examples == 0 {
        return Err(crate::Error::NoData { location: request.data.location().into(), window: train_window });
    }
    let (mut model, stats) = match request.warm_start {
        Some((model, stats)) => {
            if model.input_shape() != InputShape::of(request.spec) {
                return Err(crate::Error::Settings(
                    "the parent model's inputs differ from the feature spec's; train without a parent".into(),
                ));
            }
            (model, stats)
        }
        None => {
            let stats = TransformStats::fit(request.spec, &scan.sample);
            let base_rate = scan.clicks as f64 / scan.examples as f64;
            (Model::new(&config.model, &InputShape::of(request.spec), base_rate, config.seed), stats)
        }
    };
    let transformer = Arc::new(Transformer::new(request.spec, &stats)?);
    let shape = InputShape::of(request.spec);
    let mut optimizer = Optimizer::new(config.optimizer_config(), &model);
    let mut report = TrainReport {
        train_window: (train_window.since_ms, train_window.until_ms),
        validation_window: (validation_window.since_ms, validation_window.until_ms),
        train_examples: scan.examples,
        train_clicks: scan.clicks,
        validation_examples: 0,
        validation_clicks: 0,
        epochs: Vec::new(),
        best_epoch: 0,
        threads,
        seconds: 0.0,
    };
    let mut best: Option<(f64, Model)> = None;
    for epoch in 1..=config.epochs {
        let epoch_started = Instant::now();
        let bar = progress_bar(request.progress, scan.examples, epoch, config.epochs);
        let buffer = config.shuffle_buffer.div_ceil(parallel.shards);
        let mut streams: Vec<(usize, ShardStream)> = parallel
            .owned()
            .into_iter()
            .map(|shard| {
                let seed = parallel.seed(config.seed ^ u64::from(epoch), shard);
                let data = request.data.shard(shard, parallel.shards);
                (shard, ShardStream::new(&data, train_window, &transformer, &shape, (buffer, seed)))
            })
            .collect();
        let (mut loss, mut seen) = (0.0, 0u64);
        loop {
            let mut mine = Vec::with_capacity(streams.len());
            for (shard, stream) in &mut streams {
                let batch = stream.next_rows(parallel.share(config.batch_size, *shard))?;
                if batch.rows() > 0 {
                    let (loss, mut grads) = gradients(&model, &batch, &shape, 0..batch.rows(), threads);
                    // Each embedding row once per shard: less to exchange and for every rank to
                    // sort. One shard's update is unchanged; with more, a row's gradient is summed
                    // shard by shard, the same way on any number of ranks.
                    grads.sparse = grads.sparse.merged(model.embeddings().dim);
                    mine.push((*shard, Step { rows: batch.rows(), loss, grads }));
                }
            }
            let mut steps = parallel.gather(mine, Step::encode, Step::decode).into_iter().map(|(_, step)| step);
            let Some(mut total) = steps.next() else { break };
            for step in steps {
                total.rows += step.rows;
                total.loss += step.loss;
                total.grads.absorb(step.grads);
            }
            optimizer.apply(&mut model, &total.grads, total.rows);
            fault_if_asked(parallel.collective.rank())?;
            loss += total.loss;
            seen += total.rows as u64;
            bar.set_position(seen);
        }
        bar.finish_and_clear();
        let (validation_loss, validation_examples, validation_clicks) =
            validate(&model, request.data, validation_window, &transformer, (threads, &parallel))?;
        if validation_examples == 0 {
            // A loss over nothing would be NaN: no version may be judged, or published, on it.
            // (The newest examples of a log wait for their attribution window to close.)
            return Err(crate::Error::NoData { location: request.data.location().into(), window: validation_window });
        }
        report.validation_examples = validation_examples;
        report.validation_clicks = validation_clicks;
        let epoch_report = EpochReport {
            epoch,
            train_loss: loss / seen.max(1) as f64,
            validation_loss,
            seconds: epoch_started.elapsed().as_secs_f64(),
        };
        tracing::info!(
            epoch,
            train_loss = epoch_report.train_loss,
            validation_loss,
            seconds = epoch_report.seconds,
            "epoch done"
        );
        report.epochs.push(epoch_report);
        let improved = best.as_ref().is_none_or(|(b, _)| validation_loss < *b);
        if improved {
            best = Some((validation_loss, model.clone()));
            report.best_epoch = epoch;
        } else if epoch - report.best_epoch >= config.patience.max(1) {
            break;
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    let (_, model) = best.expect("at least one epoch ran; this is a bug");
    Ok(Trained { model, stats, report })
}

/// One epoch over rows already in memory, in a seeded random order, one thread: the trainer's own
/// arithmetic (gathering each batch's rows, forward, backward, optimiser) without reading the log,
/// for comparing with another framework on the same rows (`adrank bench train --pytorch`).
/// Returns the model and the epoch's seconds.
pub fn epoch_in_memory(config: &TrainingConfig, shape: &InputShape, rows: &Batch) -> (Model, f64) {
    let n = rows.rows();
    let base_rate = rows.labels.iter().map(|&y| f64::from(y)).sum::<f64>() / n.max(1) as f64;
    let mut model = Model::new(&config.model, shape, base_rate, config.seed);
    let mut optimizer = Optimizer::new(config.optimizer_config(), &model);
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let (f, d) = (shape.id_width(), shape.dense_width);
    let mut batch = Batch::default();
    let started = Instant::now();
    for chunk in order.chunks(config.batch_size.max(1)) {
        batch.clear();
        for &r in chunk {
            batch.ids.extend_from_slice(&rows.ids[r * f..(r + 1) * f]);
            batch.dense.extend_from_slice(&rows.dense[r * d..(r + 1) * d]);
            batch.labels.push(rows.labels[r]);
        }
        let (_, grads) = model.loss_and_grads(batch.view(shape, 0..chunk.len()));
        optimizer.apply(&mut model, &grads, chunk.len());
    }
    (model, started.elapsed().as_secs_f64())
}

/// What one pass over the training window learns before training: its size and a uniform
/// sample of raw records for the transform statistics.
pub(crate) struct Scan {
    pub(crate) examples: u64,
    pub(crate) clicks: u64,
    pub(crate) sample: Vec<RawFeatures>,
}

/// Reservoir sampling (Algorithm R) per shard, seeded, `stats_sample / shards` each: the same
/// log and shards give the same sample whichever rank reads which shard.
pub(crate) fn scan(data: &LogWindow, window: Window, config: &TrainingConfig, parallel: &Parallel<'_>) -> Result<Scan> {
    let capacity = config.stats_sample.div_ceil(parallel.shards);
    let mut mine = Vec::new();
    for shard in parallel.owned() {
        let mut rng = Rng::new(parallel.seed(config.seed, shard) ^ 0x5CA1);
        let mut result = Scan { examples: 0, clicks: 0, sample: Vec::new() };
        for chunk in RowStream::spawn(&data.shard(shard, parallel.shards), window, |examples| examples) {
            for example in chunk? {
                result.examples += 1;
                result.clicks += u64::from(example.label());
                let raw = data::raw_features(&example);
                if result.sample.len() < capacity {
                    result.sample.push(raw);
                } else {
                    let slot = rng.below(result.examples as usize);
                    if slot < capacity {
                        result.sample[slot] = raw;
                    }
                }
            }
        }
        mine.push((shard, result));
    }
    let encode = |scan: &Scan, out: &mut Vec<u8>| {
        let json = serde_json::to_vec(&(scan.examples, scan.clicks, &scan.sample)).expect("samples serialise");
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
    };
    let decode = |bytes: &[u8]| -> Option<(Scan, usize)> {
        let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let (examples, clicks, sample) = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
        Some((Scan { examples, clicks, sample }, 8 + n))
    };
    let mut total = Scan { examples: 0, clicks: 0, sample: Vec::new() };
    for (_, scan) in parallel.gather(mine, encode, decode) {
        total.examples += scan.examples;
        total.clicks += scan.clicks;
        total.sample.extend(scan.sample);
    }
    Ok(total)
}

/// Transformed rows of a window, one chunk per log file.
pub(crate) fn rows(data: &LogWindow, window: Window, transformer: &Arc<Transformer>) -> RowStream<Batch> {
    let transformer = Arc::clone(transformer);
    RowStream::spawn(data, window, move |examples| {
        let mut batch = Batch::default();
        for example in &examples {
            data::push_row(&transformer, example, &mut batch);
        }
        batch
    })
}

/// Gradients of rows `range` of `batch`, computed by `threads` threads over contiguous shards
/// and summed in shard order (so a thread count gives one result).
fn gradients(
    model: &Model,
    batch: &Batch,
    shape: &InputShape,
    range: std::ops::Range<usize>,
    threads: usize,
) -> (f64, Grads) {
    let shards = split(range, threads);
    if shards.len() == 1 {
        return model.loss_and_grads(batch.view(shape, shards[0].clone()));
    }
    let results: Vec<(f64, Grads)> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            shards.iter().map(|shard| scope.spawn(|| model.loss_and_grads(batch.view(shape, shard.clone())))).collect();
        handles.into_iter().map(|h| h.join().expect("a gradient thread panicked; this is a bug")).collect()
    });
    let mut results = results.into_iter();
    let (mut loss, mut grads) = results.next().expect("at least one shard");
    for (l, g) in results {
        loss += l;
        grads.absorb(g);
    }
    (loss, grads)
}

/// `range` cut into at most `parts` contiguous, non-empty pieces.
fn split(range: std::ops::Range<usize>, parts: usize) -> Vec<std::ops::Range<usize>> {
    let n = range.len();
    let parts = parts.clamp(1, n.max(1));
    (0..parts).map(|p| range.start + p * n / parts..range.start + (p + 1) * n / parts).collect()
}

/// Mean log loss of a window, its examples and its clicks: each shard summed on its own, the
/// sums added in shard order.
fn validate(
    model: &Model,
    data: &LogWindow,
    window: Window,
    transformer: &Arc<Transformer>,
    (threads, parallel): (usize, &Parallel<'_>),
) -> Result<(f64, u64, u64)> {
    let shape = model.input_shape();
    let mut mine = Vec::new();
    for shard in parallel.owned() {
        let (mut loss, mut n, mut clicks) = (0.0, 0u64, 0u64);
        for chunk in rows(&data.shard(shard, parallel.shards), window, transformer) {
            let chunk = chunk?;
            let shards = split(0..chunk.rows(), threads);
            loss += std::thread::scope(|scope| {
                let handles: Vec<_> =
                    shards.iter().map(|s| scope.spawn(|| model.loss(chunk.view(&shape, s.clone())))).collect();
                handles.into_iter().map(|h| h.join().expect("a validation thread panicked; this is a bug")).sum::<f64>()
            });
            n += chunk.rows() as u64;
            clicks += chunk.labels.iter().filter(|&&y| y > 0.5).count() as u64;
        }
        mine.push((shard, (loss, n, clicks)));
    }
    let (mut loss, mut n, mut clicks) = (0.0, 0u64, 0u64);
    for (_, (l, count, c)) in parallel.gather(mine, encode_sums, decode_sums) {
        loss += l;
        n += count;
        clicks += c;
    }
    Ok((if n > 0 { loss / n as f64 } else { f64::NAN }, n, clicks))
}

/// Test hooks, after a rank's first step: `ADRANK_TRAIN_DIE_RANK=<rank>` aborts that rank, as a
/// crashed rank would; `ADRANK_TRAIN_FAIL_RANK=<rank>` makes its training return an error, as a
/// log it cannot read would. Tests check that either way the whole run fails, and none hangs.
fn fault_if_asked(rank: usize) -> Result<()> {
    static HOOKS: std::sync::OnceLock<[Option<String>; 2]> = std::sync::OnceLock::new();
    let [die, fail] = HOOKS
        .get_or_init(|| [std::env::var("ADRANK_TRAIN_DIE_RANK").ok(), std::env::var("ADRANK_TRAIN_FAIL_RANK").ok()]);
    let me = rank.to_string();
    if die.as_deref() == Some(&me) {
        eprintln!("rank {rank}: dying on purpose (ADRANK_TRAIN_DIE_RANK)");
        std::process::abort();
    }
    if fail.as_deref() == Some(&me) {
        return Err(crate::Error::Settings(format!("rank {rank} fails on purpose (ADRANK_TRAIN_FAIL_RANK)")));
    }
    Ok(())
}

fn progress_bar(show: bool, total: u64, epoch: u32, epochs: u32) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("epoch {msg} [{bar:30}] {pos}/{len} examples, {per_sec}, eta {eta}")
            .expect("the template is valid; this is a bug")
            .progress_chars("=> "),
    );
    bar.set_message(format!("{epoch}/{epochs}"));
    bar
}
