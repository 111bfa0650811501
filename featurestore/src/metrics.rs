//! Every metric the feature store emits, named once (Prometheus names, units in the name).
//!
//! They go through the `metrics` facade: nothing is recorded until the binary installs a
//! recorder (`adrank ingest --metrics-listen`, serving's `/metrics`).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::online::reader::Missing;

pub const EVENTS: &str = "adrank_ingest_events_total";
pub const DEAD_LETTERS: &str = "adrank_ingest_dead_letters_total";
pub const CONSUMER_LAG: &str = "adrank_ingest_consumer_lag_messages";
pub const WRITE_SECONDS: &str = "adrank_ingest_redis_write_seconds";
pub const FRESHNESS_SECONDS: &str = "adrank_ingest_freshness_seconds";
pub const LATE_CLICKS: &str = "adrank_ingest_late_clicks_total";
pub const ORPHAN_CLICKS: &str = "adrank_ingest_orphan_clicks_total";
pub const RETRIED_CLICKS: &str = "adrank_ingest_retried_clicks_total";
pub const EXAMPLES: &str = "adrank_training_log_examples_total";
pub const LOG_COMMITS: &str = "adrank_training_log_commits_total";
pub const LOG_COMPACTIONS: &str = "adrank_training_log_compactions_total";
pub const FENCED: &str = "adrank_ingest_fenced_batches_total";
pub const CACHE_LOOKUPS: &str = "adrank_online_cache_lookups_total";
pub const MISSING: &str = "adrank_online_missing_entities_total";
pub const HISTORY_SECOND_READS: &str = "adrank_online_history_second_reads_total";

/// Registers every metric's help text.
pub fn describe() {
    describe_counter!(EVENTS, "Events applied to the online store, by topic.");
    describe_counter!(DEAD_LETTERS, "Events sent to the dead-letter topic, by topic and reason.");
    describe_gauge!(CONSUMER_LAG, "Messages between the ingester's position and the partition's end.");
    describe_histogram!(WRITE_SECONDS, "Time of one pipelined online-store write (all partitions of a poll).");
    describe_histogram!(FRESHNESS_SECONDS, "From an event's time to its effect being visible in Redis.");
    describe_counter!(LATE_CLICKS, "Clicks that arrived after their impression's attribution window closed.");
    describe_counter!(ORPHAN_CLICKS, "Clicks whose impression never arrived.");
    describe_counter!(RETRIED_CLICKS, "Clicks whose click id had already been counted: not counted again.");
    describe_counter!(EXAMPLES, "Training examples committed to the Parquet log, by label.");
    describe_counter!(LOG_COMMITS, "Training-log commits (Parquet files plus checkpoint).");
    describe_counter!(
        LOG_COMPACTIONS,
        "Training-log compactions: a partition's commits folded into a snapshot, by result."
    );
    describe_counter!(FENCED, "Partition batches refused because another ingester moved the watermark.");
    describe_counter!(CACHE_LOOKUPS, "Online-store cache lookups of ads and advertisers, by result.");
    describe_counter!(MISSING, "Entities a read found absent or expired, by kind.");
    describe_counter!(
        HISTORY_SECOND_READS,
        "Reads that needed a second round trip for history pairs (an ad's category not known before)."
    );
}

pub(crate) fn online_cache(hits: usize, misses: usize) {
    counter!(CACHE_LOOKUPS, "result" => "hit").increment(hits as u64);
    counter!(CACHE_LOOKUPS, "result" => "miss").increment(misses as u64);
}

pub(crate) fn online_missing(missing: Missing) {
    for (entity, n) in [("user", missing.users), ("ad", missing.ads), ("advertiser", missing.advertisers)] {
        if n > 0 {
            counter!(MISSING, "entity" => entity).increment(n as u64);
        }
    }
}

pub(crate) fn online_history_second_read() {
    counter!(HISTORY_SECOND_READS).increment(1);
}

pub(crate) fn applied(topic: &str, events: usize) {
    counter!(EVENTS, "topic" => topic.to_string()).increment(events as u64);
}

pub(crate) fn retried_clicks(n: i64) {
    if n > 0 {
        counter!(RETRIED_CLICKS).increment(n as u64);
    }
}

pub(crate) fn dead_letter(topic: &str, reason: &'static str) {
    counter!(DEAD_LETTERS, "topic" => topic.to_string(), "reason" => reason).increment(1);
}

pub(crate) fn lag(topic: &str, partition: i32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string()).set(lag as f64);
}

pub(crate) fn write_seconds(seconds: f64) {
    histogram!(WRITE_SECONDS).record(seconds);
}

pub(crate) fn freshness_seconds(seconds: f64) {
    histogram!(FRESHNESS_SECONDS).record(seconds);
}

pub(crate) fn late_clicks(n: u64) {
    counter!(LATE_CLICKS).increment(n);
}

pub(crate) fn orphan_clicks(n: u64) {
    counter!(ORPHAN_CLICKS).increment(n);
}

pub(crate) fn examples(clicked: u64, unclicked: u64) {
    counter!(EXAMPLES, "label" => "1").increment(clicked);
    counter!(EXAMPLES, "label" => "0").increment(unclicked);
    counter!(LOG_COMMITS).increment(1);
}

pub(crate) fn compaction(result: &'static str) {
    counter!(LOG_COMPACTIONS, "result" => result).increment(1);
}

pub(crate) fn fenced(topic: &str) {
    counter!(FENCED, "topic" => topic.to_string()).increment(1);
}
