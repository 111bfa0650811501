//! The model thread: runs formed batches through ONNX Runtime and answers their jobs.

use std::{sync::Arc, time::Instant};

use adrank_registry::scoring::ScoringSession;
use tokio::sync::mpsc::Receiver;

use super::{Batch, BatchError, MODEL_THREAD, ModelState, Scored, admit};

pub(super) fn spawn_model_thread(mut session: ScoringSession, mut batches: Receiver<Batch>, model: Arc<ModelState>) {
    std::thread::Builder::new()
        .name(MODEL_THREAD.into())
        .spawn(move || {
            // Ends when the batching task ends (every handle dropped).
            while let Some(batch) = batches.blocking_recv() {
                run(&mut session, batch);
                model.finished();
            }
        })
        .expect("spawning a thread only fails when the OS is out of resources");
}

fn run(session: &mut ScoringSession, batch: Batch) {
    // The batch may have waited for the previous run: check again before spending inference.
    let jobs: Vec<_> = batch.jobs.into_iter().filter_map(admit).collect();
    if jobs.is_empty() {
        return;
    }
    let rows: usize = jobs.iter().map(|j| j.rows.rows).sum();
    let (mut ids, mut dense) = (Vec::new(), Vec::new());
    for job in &jobs {
        ids.extend_from_slice(&job.rows.ids);
        dense.extend_from_slice(&job.rows.dense);
    }
    let started = Instant::now();
    let result = session.score(rows, &ids, &dense);
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
