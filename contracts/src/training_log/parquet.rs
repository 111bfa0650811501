//! Training examples as Arrow record batches and Parquet files.
//!
//! One row per impression. The logged raw features are two map columns, `features_str` and
//! `features_num`, so the log needs no schema change when the feature spec gains a feature, and
//! any Parquet reader (pyarrow, DuckDB, Spark) sees typed values. Times are UTC millisecond
//! timestamps.

use std::sync::Arc;

use arrow::{
    array::{
        Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, Int32Array, Int64Array, MapBuilder,
        RecordBatch, StringArray, StringBuilder, TimestampMillisecondArray, UInt16Array, UInt32Array, UInt64Array,
    },
    datatypes::{
        Field, Float64Type, Int32Type, Int64Type, Schema, TimestampMillisecondType, UInt16Type, UInt32Type, UInt64Type,
    },
    error::ArrowError,
};
use bytes::Bytes;
use parquet::{
    arrow::{ArrowWriter, arrow_reader::ParquetRecordBatchReaderBuilder},
    basic::Compression,
    errors::ParquetError,
    file::properties::WriterProperties,
};

use super::join::Example;
use crate::events::{Impression, RawFeatures, RawValue, RolloutArm};

/// Encodes examples as one record batch.
pub fn to_record_batch(examples: &[Example]) -> Result<RecordBatch, ArrowError> {
    let strings =
        |f: fn(&Example) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(examples.iter().map(f))) };
    let times = |f: fn(&Example) -> Option<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter(examples.iter().map(f)).with_timezone_utc())
    };
    let mut text = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut numbers = MapBuilder::new(None, StringBuilder::new(), Float64Builder::new());
    for example in examples {
        for (name, value) in example.impression.features.iter() {
            match value {
                RawValue::Str(s) => {
                    text.keys().append_value(name);
                    text.values().append_value(s);
                }
                RawValue::Num(x) => {
                    numbers.keys().append_value(name);
                    numbers.values().append_value(*x);
                }
                // Missing is what an absent key means: nothing to log.
                RawValue::Missing => {}
            }
        }
        text.append(true)?;
        numbers.append(true)?;
    }
    let columns: Vec<(&str, ArrayRef, bool)> = vec![
        ("impression_id", strings(|e| &e.impression.impression_id), false),
        ("request_id", strings(|e| &e.impression.request_id), false),
        ("event_time", times(|e| Some(e.impression.event_time_ms)), false),
        ("user_id", strings(|e| &e.impression.user_id), false),
        ("ad_id", strings(|e| &e.impression.ad_id), false),
        ("advertiser_id", strings(|e| &e.impression.advertiser_id), false),
        ("position", Arc::new(UInt16Array::from_iter_values(examples.iter().map(|e| e.impression.position))), false),
        ("surface", strings(|e| &e.impression.surface), false),
        ("model_name", strings(|e| &e.impression.model_name), false),
        ("model_version", strings(|e| &e.impression.model_version), false),
        ("score", Arc::new(Float64Array::from_iter_values(examples.iter().map(|e| e.impression.score))), false),
        ("bid", Arc::new(Float64Array::from_iter_values(examples.iter().map(|e| e.impression.bid))), false),
        ("label", Arc::new(BooleanArray::from_iter(examples.iter().map(|e| Some(e.label())))), false),
        ("clicks", Arc::new(UInt32Array::from_iter_values(examples.iter().map(|e| e.clicks))), false),
        ("first_click_time", times(|e| e.first_click_ms), true),
        ("oracle_p", Arc::new(Float64Array::from_iter(examples.iter().map(|e| e.impression.oracle_p))), true),
        ("shadow_score", Arc::new(Float64Array::from_iter(examples.iter().map(|e| e.impression.shadow_score))), true),
        (
            "rollout_id",
            Arc::new(UInt64Array::from_iter(examples.iter().map(|e| e.impression.rollout.as_ref().map(|r| r.id)))),
            true,
        ),
        (
            "rollout_arm",
            Arc::new(StringArray::from_iter(
                examples.iter().map(|e| e.impression.rollout.as_ref().map(|r| r.arm.as_str())),
            )),
            true,
        ),
        ("features_str", Arc::new(text.finish()), false),
        ("features_num", Arc::new(numbers.finish()), false),
        ("kafka_partition", Arc::new(Int32Array::from_iter_values(examples.iter().map(|e| e.partition))), false),
        ("kafka_offset", Arc::new(Int64Array::from_iter_values(examples.iter().map(|e| e.offset))), false),
    ];
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(Arc::new(schema), columns.into_iter().map(|(_, array, _)| array).collect())
}

/// Encodes examples as one Parquet file, Snappy-compressed (what most Parquet writers default
/// to). zstd (level 3) made files ~22% smaller but cost the ingester ~6% of its throughput: a
/// commit writes one file per partition and event hour, and parquet-rs sets up a compression
/// and a decompression context for every column chunk (BENCHMARKS.md).
pub fn to_parquet(examples: &[Example]) -> Result<Vec<u8>, ParquetError> {
    let batch = to_record_batch(examples)?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("adrank {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), Some(properties))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}

/// Decodes a Parquet file written by [`to_parquet`].
pub fn from_parquet(bytes: Bytes) -> Result<Vec<Example>, ParquetError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut examples = Vec::new();
    for batch in reader {
        examples.extend(from_record_batch(&batch?)?);
    }
    Ok(examples)
}

/// Decodes a record batch written by [`to_record_batch`].
pub fn from_record_batch(batch: &RecordBatch) -> Result<Vec<Example>, ArrowError> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| ArrowError::SchemaError(format!("the training log has no `{name}` column")))
    };
    let text = |name: &str| -> Result<&StringArray, ArrowError> {
        column(name)?.as_string_opt::<i32>().ok_or_else(|| wrong_type(name))
    };
    let (impression_id, request_id, user_id, ad_id, advertiser_id, surface, model_name, model_version) = (
        text("impression_id")?,
        text("request_id")?,
        text("user_id")?,
        text("ad_id")?,
        text("advertiser_id")?,
        text("surface")?,
        text("model_name")?,
        text("model_version")?,
    );
    let event_time =
        column("event_time")?.as_primitive_opt::<TimestampMillisecondType>().ok_or_else(|| wrong_type("event_time"))?;
    let first_click = column("first_click_time")?
        .as_primitive_opt::<TimestampMillisecondType>()
        .ok_or_else(|| wrong_type("first_click_time"))?;
    let position = column("position")?.as_primitive_opt::<UInt16Type>().ok_or_else(|| wrong_type("position"))?;
    let score = column("score")?.as_primitive_opt::<Float64Type>().ok_or_else(|| wrong_type("score"))?;
    let bid = column("bid")?.as_primitive_opt::<Float64Type>().ok_or_else(|| wrong_type("bid"))?;
    let oracle = column("oracle_p")?.as_primitive_opt::<Float64Type>().ok_or_else(|| wrong_type("oracle_p"))?;
    // Files written before rollouts have no such columns: no arm, no shadow score.
    let shadow = match batch.column_by_name("shadow_score") {
        None => None,
        Some(column) => Some(column.as_primitive_opt::<Float64Type>().ok_or_else(|| wrong_type("shadow_score"))?),
    };
    let rollout = match (batch.column_by_name("rollout_id"), batch.column_by_name("rollout_arm")) {
        (Some(id), Some(arm)) => Some((
            id.as_primitive_opt::<UInt64Type>().ok_or_else(|| wrong_type("rollout_id"))?,
            arm.as_string_opt::<i32>().ok_or_else(|| wrong_type("rollout_arm"))?,
        )),
        _ => None,
    };
    let clicks = column("clicks")?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong_type("clicks"))?;
    let partition =
        column("kafka_partition")?.as_primitive_opt::<Int32Type>().ok_or_else(|| wrong_type("kafka_partition"))?;
    let offset = column("kafka_offset")?.as_primitive_opt::<Int64Type>().ok_or_else(|| wrong_type("kafka_offset"))?;
    let text_features = column("features_str")?.as_map_opt().ok_or_else(|| wrong_type("features_str"))?;
    let number_features = column("features_num")?.as_map_opt().ok_or_else(|| wrong_type("features_num"))?;
    let (text_keys, text_values) = (
        text_features.keys().as_string_opt::<i32>().ok_or_else(|| wrong_type("features_str"))?,
        text_features.values().as_string_opt::<i32>().ok_or_else(|| wrong_type("features_str"))?,
    );
    let (number_keys, number_values) = (
        number_features.keys().as_string_opt::<i32>().ok_or_else(|| wrong_type("features_num"))?,
        number_features.values().as_primitive_opt::<Float64Type>().ok_or_else(|| wrong_type("features_num"))?,
    );
    let offsets = |map: &arrow::array::MapArray, row: usize| {
        let o = map.value_offsets();
        o[row] as usize..o[row + 1] as usize
    };
    let mut examples = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut features: RawFeatures = offsets(text_features, row)
            .map(|i| (text_keys.value(i).to_string().into(), RawValue::from(text_values.value(i))))
            .collect();
        for i in offsets(number_features, row) {
            features.insert(number_keys.value(i).to_string(), RawValue::Num(number_values.value(i)));
        }
        examples.push(Example {
            impression: Impression {
                impression_id: impression_id.value(row).into(),
                request_id: request_id.value(row).into(),
                event_time_ms: event_time.value(row),
                user_id: user_id.value(row).into(),
                ad_id: ad_id.value(row).into(),
                advertiser_id: advertiser_id.value(row).into(),
                position: position.value(row),
                surface: surface.value(row).into(),
                model_name: model_name.value(row).into(),
                model_version: model_version.value(row).into(),
                score: score.value(row),
                bid: bid.value(row),
                features,
                oracle_p: oracle.is_valid(row).then(|| oracle.value(row)),
                rollout: rollout
                    .filter(|(id, arm)| id.is_valid(row) && arm.is_valid(row))
                    .map(|(id, arm)| RolloutArm { id: id.value(row), arm: arm.value(row).to_string() }),
                shadow_score: shadow.filter(|s| s.is_valid(row)).map(|s| s.value(row)),
            },
            partition: partition.value(row),
            offset: offset.value(row),
            clicks: clicks.value(row),
            first_click_ms: first_click.is_valid(row).then(|| first_click.value(row)),
        });
    }
    Ok(examples)
}

fn wrong_type(name: &str) -> ArrowError {
    ArrowError::SchemaError(format!("the training log's `{name}` column has an unexpected type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_round_trip_through_parquet() {
        let mut impression = Impression::example(
            "i-1",
            RawFeatures::from([
                ("bid".into(), RawValue::Num(1.5)),
                ("segment".into(), RawValue::from("s3")),
                ("x".into(), RawValue::Missing),
            ]),
        );
        impression.oracle_p = Some(0.03);
        impression.rollout = Some(RolloutArm { id: 3, arm: "candidate".into() });
        impression.shadow_score = Some(0.04);
        let clicked =
            Example { impression: impression.clone(), partition: 2, offset: 41, clicks: 2, first_click_ms: Some(9) };
        let mut plain = clicked.clone();
        plain.impression.impression_id = "i-2".into();
        plain.impression.oracle_p = None;
        plain.impression.rollout = None;
        plain.impression.shadow_score = None;
        plain.impression.features = RawFeatures::new();
        plain.clicks = 0;
        plain.first_click_ms = None;
        let bytes = to_parquet(&[clicked.clone(), plain.clone()]).unwrap();
        let back = from_parquet(Bytes::from(bytes)).unwrap();
        // Missing values are not logged: an absent key means the same.
        let mut expected = clicked;
        expected.impression.features =
            RawFeatures::from([("bid".into(), RawValue::Num(1.5)), ("segment".into(), RawValue::from("s3"))]);
        assert_eq!(back, [expected, plain]);
    }

    #[test]
    fn a_file_without_a_column_is_refused_by_name() {
        let batch = RecordBatch::try_from_iter([("impression_id", Arc::new(StringArray::from(vec!["i"])) as ArrayRef)])
            .unwrap();
        let error = from_record_batch(&batch).unwrap_err().to_string();
        assert!(error.contains("request_id"), "{error}");
    }
}
