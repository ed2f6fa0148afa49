//! Cross-request batching: one thread owns the queue, forms ragged batches
//! from the texts of every waiting request, runs them on the device and
//! answers each request when its last text is done.
//!
//! Fairness: each batch takes texts from every waiting request in turn, a
//! few at a time, so a short request is never stuck behind a long one.
//! Requests whose client has gone, or whose deadline has passed, are dropped
//! before their texts reach the device.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::embedder::finish;
use crate::engine::Permit;
use crate::tokenize::Tokens;
use crate::{Embedder, EngineError, Metrics};

/// Texts one request contributes to a batch before the next request's turn.
const TURN: usize = 16;

/// What a finished request gets back from the queue.
#[derive(Debug)]
pub(crate) struct JobOutput {
    pub vectors: Vec<Vec<f32>>,
    pub queue: Duration,
    pub inference: Duration,
}

/// One request's tokenized texts waiting to be encoded.
#[derive(Debug)]
pub(crate) struct Job {
    pub tokens: Vec<Tokens>,
    pub normalize: bool,
    pub dimensions: Option<usize>,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<JobOutput, EngineError>>,
    /// Held until the job is answered or dropped.
    pub _permit: Permit,
    pub enqueued: Instant,
}

/// A job being served: its texts not yet scheduled and the vectors so far.
#[derive(Debug)]
struct Active {
    job: Job,
    next: usize,
    done: usize,
    vectors: Vec<Vec<f32>>,
    started: Option<Instant>,
    inference: Duration,
    finished: bool,
}

impl Active {
    fn new(job: Job) -> Self {
        let n = job.tokens.len();
        Self {
            job,
            next: 0,
            done: 0,
            vectors: vec![Vec::new(); n],
            started: None,
            inference: Duration::ZERO,
            finished: false,
        }
    }

    fn fail(&mut self, error: EngineError) {
        if !self.finished {
            self.finished = true;
            let reply = std::mem::replace(&mut self.job.reply, oneshot::channel().0);
            let _ = reply.send(Err(error));
        }
    }

    fn complete(&mut self) {
        self.finished = true;
        let reply = std::mem::replace(&mut self.job.reply, oneshot::channel().0);
        let output = JobOutput {
            vectors: std::mem::take(&mut self.vectors),
            queue: self
                .started
                .map_or(Duration::ZERO, |s| s.duration_since(self.job.enqueued)),
            inference: self.inference,
        };
        let _ = reply.send(Ok(output));
    }
}

/// Limits of the batches the queue forms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_tokens: usize,
    pub max_sequences: usize,
}

/// Runs the queue until every sender is gone and every job is answered.
pub(crate) fn run(
    embedder: Arc<Embedder>,
    jobs: mpsc::Receiver<Job>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    device: String,
    healthy: Arc<AtomicBool>,
) {
    let mut active: VecDeque<Active> = VecDeque::new();
    loop {
        if active.is_empty() {
            match jobs.recv() {
                Ok(job) => active.push_back(Active::new(job)),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            active.push_back(Active::new(job));
        }

        let now = Instant::now();
        for a in &mut active {
            if a.job.reply.is_closed() {
                a.finished = true;
            } else if a.job.deadline.is_some_and(|d| d <= now) {
                a.fail(EngineError::Timeout {
                    waited: now.duration_since(a.job.enqueued),
                });
            }
        }
        active.retain(|a| !a.finished);
        let waiting: usize = active.iter().map(|a| a.job.tokens.len() - a.next).sum();
        metrics.queue_depth.set(waiting as i64);

        let picks = pick_batch(&mut active, limits);
        if picks.is_empty() {
            continue;
        }
        let items: Vec<&Tokens> = picks.iter().map(|&(j, i)| &active[j].job.tokens[i]).collect();
        let (sequences, tokens) = (items.len(), items.iter().map(|t| t.ids.len()).sum::<usize>());
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| embedder.encode(&items)));
        drop(items);
        let elapsed = start.elapsed();
        for a in active.iter_mut().filter(|a| a.started.is_none() && a.next > 0) {
            a.started = Some(start);
        }

        let labels = [device.as_str()];
        metrics.gpu_batch_count_total.with_label_values(&labels).inc();
        metrics.gpu_sequences_total.with_label_values(&labels).inc_by(sequences as u64);
        metrics.gpu_tokens_total.with_label_values(&labels).inc_by(tokens as u64);
        metrics.gpu_batch_time_seconds.with_label_values(&labels).set(elapsed.as_secs_f64());
        metrics
            .gpu_throughput
            .with_label_values(&labels)
            .set(sequences as f64 / elapsed.as_secs_f64().max(1e-9));
        metrics.batch_size_distribution.observe(sequences as f64);

        match outcome {
            Ok(Ok(pooled)) => {
                let dim = embedder.dimension();
                let mut touched = Vec::new();
                for (&(j, i), vector) in picks.iter().zip(pooled.chunks_exact(dim)) {
                    let a = &mut active[j];
                    a.vectors[i] = finish(vector, a.job.dimensions, a.job.normalize);
                    a.done += 1;
                    if touched.last() != Some(&j) {
                        touched.push(j);
                    }
                }
                for j in touched {
                    let a = &mut active[j];
                    a.inference += elapsed;
                    if a.done == a.job.tokens.len() {
                        a.complete();
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%device, sequences, tokens, %error, "batch failed");
                fail_batch(&mut active, &picks, || EngineError::Device {
                    device: device.clone(),
                    message: error.to_string(),
                });
            }
            Err(panic) => {
                metrics.panics_total.inc();
                let message = panic_message(&panic);
                tracing::error!(%device, sequences, tokens, %message, "device worker panicked");
                fail_batch(&mut active, &picks, || EngineError::Device {
                    device: device.clone(),
                    message: format!("worker panicked: {message}"),
                });
            }
        }
        active.retain(|a| !a.finished);
        healthy.store(true, Ordering::Relaxed);
    }
}

/// Chooses the texts of the next batch: `(job, text)` pairs taken in turns
/// of [`TURN`] texts per job until the token or sequence budget is spent.
fn pick_batch(active: &mut VecDeque<Active>, limits: BatchLimits) -> Vec<(usize, usize)> {
    let mut picks = Vec::new();
    let mut tokens = 0;
    'rounds: loop {
        let mut progressed = false;
        for (j, a) in active.iter_mut().enumerate() {
            for _ in 0..TURN {
                if a.next == a.job.tokens.len() {
                    break;
                }
                let len = a.job.tokens[a.next].ids.len();
                let full = picks.len() >= limits.max_sequences || tokens + len > limits.max_tokens;
                if !picks.is_empty() && full {
                    break 'rounds;
                }
                picks.push((j, a.next));
                tokens += len;
                a.next += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    picks
}

fn fail_batch(active: &mut VecDeque<Active>, picks: &[(usize, usize)], error: impl Fn() -> EngineError) {
    for &(j, _) in picks {
        active[j].fail(error());
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
