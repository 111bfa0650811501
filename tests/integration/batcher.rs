//! The serving batcher over the real ONNX Runtime: concurrent jobs merge into runs whose scores
//! equal scoring each job alone; expired work is refused before inference; a full queue sheds.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use adrank_registry::scoring::{ScoringSession, SessionOptions};
use adrank_serving::batcher::{BatchError, Batcher, BatcherConfig, Rows};
use adrank_trainer::model::{Architecture, InputShape, Model};

fn shape() -> InputShape {
    InputShape::of(&adrank_testkit::spec())
}

fn session() -> ScoringSession {
    let architecture = Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true };
    let onnx = adrank_trainer::onnx::export(&Model::new(&architecture, &shape(), 0.02, 5), &[]);
    ScoringSession::load(&onnx, &adrank_testkit::onnxruntime(), SessionOptions::single_thread()).unwrap()
}

/// `n` rows of valid inputs, different for each `seed`.
fn rows(n: usize, seed: u64) -> Rows {
    let shape = shape();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rows = Rows { rows: n, ..Rows::default() };
    for _ in 0..n {
        rows.ids.extend(shape.id_cardinalities.iter().map(|&c| (next() % c) as i64));
        rows.dense.extend((0..shape.dense_width).map(|_| (next() % 1000) as f32 / 500.0 - 1.0));
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_merge_into_runs_that_score_like_single_runs() {
    let config = BatcherConfig { max_batch_rows: 256, max_queue_delay: Duration::from_millis(30), queue_jobs: 64 };
    let batcher = Batcher::spawn(session(), config);
    let deadline = Instant::now() + Duration::from_secs(120);
    // The batcher is work-conserving: an idle model runs each job at once. A big job first keeps
    // the model busy, so the small ones arrive while it runs and must merge; its size and the
    // pause before the small jobs leave a wide margin on a loaded machine.
    let blocker = {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.score(rows(400_000, 99), deadline).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let jobs: Vec<Rows> = (0..24).map(|i| rows(10 + i, i as u64)).collect();
    let handles: Vec<_> = jobs
        .iter()
        .cloned()
        .map(|job| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.score(job, deadline).await })
        })
        .collect();
    let mut alone = session();
    let mut biggest = 0;
    for (job, handle) in jobs.iter().zip(handles) {
        let scored = handle.await.unwrap().unwrap();
        assert_eq!(scored.scores.len(), job.rows);
        assert!(scored.batch_rows >= job.rows && scored.batch_rows <= 256, "{scored:?}");
        biggest = biggest.max(scored.batch_rows);
        let reference = alone.score(job.rows, &job.ids, &job.dense).unwrap();
        for (a, b) in scored.scores.iter().zip(&reference) {
            assert!((a - b).abs() <= 1e-6, "batched {a} vs alone {b}");
        }
    }
    assert!(biggest > 40, "concurrent jobs were merged (largest run: {biggest} rows)");
    assert_eq!(blocker.await.unwrap().unwrap().scores.len(), 400_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_work_is_refused_before_inference() {
    let config = BatcherConfig { max_batch_rows: 64, max_queue_delay: Duration::from_millis(5), queue_jobs: 8 };
    let batcher = Batcher::spawn(session(), config);
    let past = Instant::now() - Duration::from_millis(1);
    assert_eq!(batcher.score(rows(3, 1), past).await, Err(BatchError::DeadlineExceeded));
    // The batcher still serves work with time left.
    let ok = batcher.score(rows(3, 2), Instant::now() + Duration::from_secs(5)).await.unwrap();
    assert_eq!(ok.scores.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_sheds_instead_of_waiting() {
    let config = BatcherConfig { max_batch_rows: 1, max_queue_delay: Duration::ZERO, queue_jobs: 2 };
    let batcher = Batcher::spawn(session(), config);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Big jobs keep the model busy: one running, one handed over, one held by the batching task,
    // then the queue's two places fill and the jobs after them are refused.
    let big = Arc::new(rows(300_000, 3));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (batcher, job) = (batcher.clone(), (*big).clone());
        tasks.push(tokio::spawn(async move {
            let asked = Instant::now();
            let result = batcher.score(job, deadline).await;
            (result, asked.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut scored, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (Ok(s), _) => {
                assert_eq!(s.scores.len(), 300_000, "admitted jobs are all scored");
                scored += 1;
            }
            (Err(e), took) => {
                assert_eq!(e, BatchError::Overloaded(2));
                assert!(took < Duration::from_millis(50), "refused at once, not after waiting: {took:?}");
                refused += 1;
            }
        }
    }
    assert!(scored >= 5 && refused >= 1, "{scored} scored, {refused} refused");
}
