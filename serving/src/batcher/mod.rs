//! The dynamic batcher: rows of concurrent requests merged into ONNX Runtime runs.
//!
//! One batcher per loaded model version. A cloneable [`Batcher`] handle sends jobs over a
//! bounded queue (admission: a full queue answers [`BatchError::Overloaded`] at once, never
//! waits); one task owns the queue and forms batches, bounded by `max_batch_rows` and by
//! `max_queue_delay` counted from the oldest job waiting. Batching is work-conserving: when the
//! model is idle a batch goes at once with whatever is queued (waiting then would only add
//! latency); while it runs, the next batch keeps filling until the model is free, the batch is
//! full or the delay is spent, so batches grow with load by themselves. Jobs whose deadline
//! passed are answered [`BatchError::DeadlineExceeded`] and jobs whose caller has gone are
//! dropped, both before any inference is spent on them. One formed batch waits ahead of the
//! model (a channel of one), so the next batch forms while the current one runs. The model runs
//! on its own OS thread, never on the async runtime, and each job is answered with its scores,
//! its time in the queue and the inference time of the run it was part of.

mod worker;

/// The name of each loaded version's model thread (one per version; it ends, and frees the
/// session, once the version is unloaded and its last request answered).
pub const MODEL_THREAD: &str = "adrank-model";

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use adrank_registry::scoring::ScoringSession;
use tokio::sync::{Notify, mpsc, oneshot};

/// How batches are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherConfig {
    /// The most rows in one run (a single larger job still runs, alone).
    pub max_batch_rows: usize,
    /// The longest the oldest waiting job is held for more rows to join its batch.
    pub max_queue_delay: Duration,
    /// Jobs the queue holds before new ones are refused.
    pub queue_jobs: usize,
}

/// Model inputs for some rows: `ids` holds `rows * id_width` ids, `dense` `rows * dense_width`
/// numbers (the transformer's output).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub rows: usize,
    pub ids: Vec<i64>,
    pub dense: Vec<f32>,
}

/// A job's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// One click probability per row, in order.
    pub scores: Vec<f32>,
    /// From enqueueing to the start of the run that scored it.
    pub queue: Duration,
    /// The run's duration.
    pub inference: Duration,
    /// Rows in that run (this job's and others').
    pub batch_rows: usize,
}

/// Why a job was not scored. `Clone`: one failed run answers every job in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("the inference queue is full ({0} jobs waiting); retry later")]
    Overloaded(usize),
    #[error("the deadline passed before the request could be scored")]
    DeadlineExceeded,
    #[error("the model is shutting down")]
    Closed,
    #[error("inference failed: {0}")]
    Inference(String),
}

struct Job {
    rows: Rows,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Scored, BatchError>>,
}

/// A handle to one model version's batcher.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    capacity: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("rows", &self.rows.rows).field("deadline", &self.deadline).finish()
    }
}

impl Batcher {
    /// Starts the batching task (on the current tokio runtime) and the model thread.
    pub fn spawn(session: ScoringSession, config: BatcherConfig) -> Self {
        let capacity = config.queue_jobs.max(1);
        let (queue, jobs) = mpsc::channel(capacity);
        let (batches, ready) = mpsc::channel(1);
        let model = Arc::new(ModelState::default());
        worker::spawn_model_thread(session, ready, Arc::clone(&model));
        tokio::spawn(form_batches(jobs, batches, config, model));
        Self { queue, capacity }
    }

    /// Scores `rows`, waiting at most until `deadline`.
    pub async fn score(&self, rows: Rows, deadline: Instant) -> Result<Scored, BatchError> {
        let (reply, answer) = oneshot::channel();
        let job = Job { rows, enqueued: Instant::now(), deadline, reply };
        self.queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => BatchError::Overloaded(self.capacity),
            mpsc::error::TrySendError::Closed(_) => BatchError::Closed,
        })?;
        match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BatchError::Closed),
            // Dropping `answer` tells the batcher this caller has gone.
            Err(_) => Err(BatchError::DeadlineExceeded),
        }
    }

    /// Jobs waiting in the queue now.
    pub fn queued(&self) -> usize {
        self.capacity - self.queue.capacity()
    }
}

/// Whether the model has work: batches handed over and not finished, and a signal when that
/// falls to none.
#[derive(Debug, Default)]
struct ModelState {
    pending: AtomicUsize,
    idle: Notify,
}

impl ModelState {
    fn busy(&self) -> bool {
        self.pending.load(Ordering::Acquire) > 0
    }

    /// The model thread finished a batch. (`notify_waiters` stores no permit: a stale one would
    /// cut a later batch short.)
    fn finished(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// A formed batch, on its way to the model thread.
struct Batch {
    jobs: Vec<Job>,
}

/// Forms batches until every handle is dropped, then lets the model thread finish.
async fn form_batches(
    mut jobs: mpsc::Receiver<Job>,
    batches: mpsc::Sender<Batch>,
    config: BatcherConfig,
    model: Arc<ModelState>,
) {
    let mut carried: Option<Job> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Some(first) = admit(first) else { continue };
        let window_end = first.enqueued + config.max_queue_delay;
        let mut rows = first.rows.rows;
        let mut batch = vec![first];
        let mut take = |job: Job, rows: &mut usize, batch: &mut Vec<Job>| -> bool {
            let Some(job) = admit(job) else { return true };
            if *rows + job.rows.rows > config.max_batch_rows {
                // It starts the next batch instead of overfilling this one.
                carried = Some(job);
                return false;
            }
            *rows += job.rows.rows;
            batch.push(job);
            true
        };
        // Whatever is already queued joins at once.
        let mut full = false;
        while !full && rows < config.max_batch_rows {
            let Ok(job) = jobs.try_recv() else { break };
            full = !take(job, &mut rows, &mut batch);
        }
        // While the model is busy, more may join: until it is free, the batch is full or the
        // oldest job has waited `max_queue_delay`.
        while !full && rows < config.max_batch_rows {
            // Registered before the check, so a run finishing in between is not missed.
            let idle = model.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if !model.busy() {
                break;
            }
            let next = tokio::select! {
                job = tokio::time::timeout_at(window_end.into(), jobs.recv()) => match job {
                    Ok(Some(job)) => job,
                    Ok(None) | Err(_) => break,
                },
                () = &mut idle => break,
            };
            full = !take(next, &mut rows, &mut batch);
        }
        model.pending.fetch_add(1, Ordering::AcqRel);
        // Handing over waits while the model runs the previous batch: that is the back pressure
        // that lets the queue fill and admission refuse.
        if let Err(mpsc::error::SendError(batch)) = batches.send(Batch { jobs: batch }).await {
            model.finished();
            for job in batch.jobs {
                let _ = job.reply.send(Err(BatchError::Closed));
            }
            return;
        }
    }
}

/// `None` (after answering it) when a job is not worth scoring: its caller has gone or its
/// deadline has passed.
fn admit(job: Job) -> Option<Job> {
    if job.reply.is_closed() {
        return None;
    }
    if Instant::now() >= job.deadline {
        let _ = job.reply.send(Err(BatchError::DeadlineExceeded));
        return None;
    }
    Some(job)
}
