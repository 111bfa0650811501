//! `adrank features export`: a window of the training log as the model rows serving feeds, for a
//! model trained elsewhere (PyTorch), with the statistics to import it with.

use std::{collections::HashMap, fs::File, path::PathBuf, process::ExitCode, sync::Arc};

use adrank_contracts::{spec::FeatureSpec, training_log::utc_hour};
use adrank_trainer::{data::LogWindow, export::Chunk};
use anyhow::Context as _;
use arrow::{
    array::{ArrayRef, Float32Array, Int64Array, RecordBatch},
    datatypes::{DataType, Field, Schema},
};
use clap::Subcommand;
use parquet::{arrow::ArrowWriter, basic::Compression, file::properties::WriterProperties};

use super::window::{DefaultPart, WindowArgs};
use crate::config::Loaded;

/// The model rows of the training log.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a window's examples as model rows to OUT/rows.parquet: `label` (1.0 clicked, 0.0
    /// not), `event_time_ms`, one int64 column per id feature and one float32 column per dense
    /// feature, in the spec's column order, encoded exactly as serving encodes them (the file's
    /// metadata names the columns and each id feature's cardinality); and
    /// OUT/stats.json, the standardisation statistics used (fitted as `adrank train` fits them),
    /// which `registry import --stats` takes.
    Export {
        #[command(flatten)]
        window: WindowArgs,
        /// The folder to write (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Default: `features.toml` beside the config file, else `config/features.toml`.
        #[arg(long)]
        spec: Option<PathBuf>,
    },
}

pub(crate) async fn run(args: Args, loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let Command::Export { window, out, spec } = args.command;
    let config = &loaded.config;
    let spec = FeatureSpec::load(&loaded.spec_path(spec.as_deref()))?;
    let location = window.location(&config.ingest.training_log);
    let window = window.resolve(&location, DefaultPart::AllButLastDay).await?;
    let data = LogWindow::open(&location, window).await?;
    let training = config.training.clone();
    let encoded = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || adrank_trainer::export::encode(&data, &spec, &training)).await??
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let stats_path = out.join("stats.json");
    std::fs::write(&stats_path, serde_json::to_vec_pretty(&encoded.stats)?)
        .with_context(|| format!("cannot write {}", stats_path.display()))?;
    let rows_path = out.join("rows.parquet");
    let (examples, clicks) = (encoded.examples, encoded.clicks);
    let written = {
        let (spec, rows_path) = (spec.clone(), rows_path.clone());
        tokio::task::spawn_blocking(move || write_rows(&spec, encoded.chunks, &rows_path)).await??
    };
    anyhow::ensure!(written == examples, "wrote {written} rows of the {examples} examples read");
    println!(
        "{examples} rows ({clicks} clicked) of {} .. {} UTC, {} id and {} dense columns: {}",
        utc_hour(window.since_ms),
        utc_hour(window.until_ms),
        spec.id_features().count(),
        spec.dense_features().count(),
        rows_path.display()
    );
    println!("statistics: {}", stats_path.display());
    Ok(ExitCode::SUCCESS)
}

/// The columns: label, event time, the id features, the dense features; in the schema's
/// metadata, what a trainer elsewhere needs besides the rows: the column order, and each id
/// feature's cardinality (its embedding table's size; the largest id is one less).
fn schema(spec: &FeatureSpec) -> Arc<Schema> {
    let mut fields =
        vec![Field::new("label", DataType::Float32, false), Field::new("event_time_ms", DataType::Int64, false)];
    fields.extend(spec.id_features().map(|f| Field::new(&f.name, DataType::Int64, false)));
    fields.extend(spec.dense_features().map(|f| Field::new(&f.name, DataType::Float32, false)));
    let largest = spec.largest_ids();
    let list = |items: Vec<String>| items.join(",");
    let metadata = HashMap::from([
        ("adrank.spec_version".to_string(), spec.version()),
        ("adrank.ids".to_string(), list(largest.iter().map(|(name, _)| name.clone()).collect())),
        ("adrank.id_cardinalities".to_string(), list(largest.iter().map(|(_, id)| (id + 1).to_string()).collect())),
        ("adrank.dense".to_string(), list(spec.dense_features().map(|f| f.name.clone()).collect())),
    ]);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Writes every chunk as Parquet; the rows written.
fn write_rows(
    spec: &FeatureSpec,
    chunks: impl Iterator<Item = adrank_trainer::Result<Chunk>>,
    path: &std::path::Path,
) -> anyhow::Result<u64> {
    let schema = schema(spec);
    let (id_width, dense_width) = (spec.id_features().count(), spec.dense_features().count());
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties))?;
    let mut written = 0;
    for chunk in chunks {
        let chunk = chunk?;
        let rows = chunk.rows.rows();
        if rows == 0 {
            continue;
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Float32Array::from(chunk.rows.labels.clone())),
            Arc::new(Int64Array::from(chunk.event_time_ms.clone())),
        ];
        let ids = &chunk.rows.ids;
        columns.extend(
            (0..id_width).map(|c| -> ArrayRef {
                Arc::new(Int64Array::from_iter_values((0..rows).map(|r| ids[r * id_width + c])))
            }),
        );
        let dense = &chunk.rows.dense;
        columns.extend((0..dense_width).map(|c| -> ArrayRef {
            Arc::new(Float32Array::from_iter_values((0..rows).map(|r| dense[r * dense_width + c])))
        }));
        writer.write(&RecordBatch::try_new(Arc::clone(&schema), columns)?)?;
        written += rows as u64;
    }
    writer.close().with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(written)
}
