//! The model thread: runs formed batches through ONNX Runtime and answers their jobs.

use std::{sync::Arc, time::Instant};

use adrank_registry::scoring::ScoringSession;
use tokio::sync::mpsc::Receiver;

use super::{Batch, BatchError, MODEL_THREAD, ModelState, Scored, admit};

pub(super) fn spawn_model_thread(mut session: ScoringSession, mut batches: Receiver<Batch>, model: Arc<ModelState>) {
    std::thread::Builder::new()
        .name(MODEL_THREAD.into())
        .spawn(move || {
            // The inputs of batches of several jobs, reused: a run would otherwise allocate two
            // buffers of up to `max_batch_rows` rows.
            let mut merged = Merged::default();
            // Ends when the batching task ends (every handle dropped).
            while let Some(batch) = batches.blocking_recv() {
                run(&mut session, batch, &mut merged);
                model.finished();
            }
        })
        .expect("spawning a thread only fails when the OS is out of resources");
}

/// A batch's jobs' inputs put together.
#[derive(Default)]
struct Merged {
    ids: Vec<i64>,
    dense: Vec<f32>,
}

fn run(session: &mut ScoringSession, batch: Batch, merged: &mut Merged) {
    // The batch may have waited for the previous run: check again before spending inference.
    let jobs: Vec<_> = batch.jobs.into_iter().filter_map(admit).collect();
    let rows: usize = jobs.iter().map(|j| j.rows.rows).sum();
    let (ids, dense) = match &jobs[..] {
        [] => return,
        // One job: its own buffers, as they are.
        [job] => (&job.rows.ids[..], &job.rows.dense[..]),
        _ => {
            merged.ids.clear();
            merged.dense.clear();
            for job in &jobs {
                merged.ids.extend_from_slice(&job.rows.ids);
                merged.dense.extend_from_slice(&job.rows.dense);
            }
            (&merged.ids[..], &merged.dense[..])
        }
    };
    let started = Instant::now();
    let result = session.score(rows, ids, dense);
    let inference = started.elapsed();
    // A model whose output does not hold one score per row (its signature was checked at load;
    // this guards the slicing below) fails the run instead of the thread.
    let result = result.map_err(|e| e.to_string()).and_then(|scores| {
        if scores.len() == rows { Ok(scores) } else { Err(format!("{} scores for {rows} rows", scores.len())) }
    });
    crate::metrics::batch(rows, result.is_err());
    match result {
        Ok(scores) => {
            let mut offset = 0;
            for job in jobs {
                let n = job.rows.rows;
                let scored = Scored {
                    scores: scores[offset..offset + n].to_vec(),
                    queue: started.saturating_duration_since(job.enqueued),
                    inference,
                    batch_rows: rows,
                };
                offset += n;
                let _ = job.reply.send(Ok(scored));
            }
        }
        Err(e) => {
            let error = BatchError::Inference(e);
            for job in jobs {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}
