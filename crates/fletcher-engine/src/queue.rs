//! Cross-request batching and dispatch. One thread owns the queue: it forms
//! ragged batches from the texts of every waiting request, hands each batch
//! to the device that will finish it soonest given its measured throughput,
//! and answers a request when its last text is done.
//!
//! - Fairness: a batch takes texts from every waiting request in turn, a few
//!   at a time, so a short request is never stuck behind a long one.
//! - Dropped work: a request whose client has gone, or whose deadline has
//!   passed, leaves the queue before its texts reach a device.
//! - Faults: texts of a batch that failed, panicked or gave non-finite
//!   vectors are retried once, on another device when there is one; the
//!   device sits out a back-off that grows with consecutive failures.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::device::{Completion, Device};
use crate::embedder::Embedder;
use crate::engine::Permit;
use crate::tokenize::Tokens;
use crate::{EngineError, Metrics};

/// Texts one request contributes to a batch before the next request's turn.
const TURN: usize = 16;
/// Batches a device may hold at once: one running, one waiting, so it never
/// idles while the queue forms the next.
const DEPTH: usize = 2;
/// Weight of the newest measurement in a device's throughput average.
const EWMA: f64 = 0.3;
/// How long the queue sleeps when it has nothing to dispatch, between
/// checks of deadlines and device back-offs.
const TICK: Duration = Duration::from_millis(20);

/// What the queue thread receives.
#[derive(Debug)]
pub(crate) enum Event {
    /// A new request.
    Job(Job),
    /// A device finished a batch.
    Done(Completion),
    /// No more requests will come; finish what is queued and stop.
    Close,
}

/// What a finished request gets back from the queue.
#[derive(Debug)]
pub(crate) struct JobOutput {
    /// Pooled vectors before normalization, in request order.
    pub vectors: Vec<Vec<f32>>,
    pub queue: Duration,
    pub inference: Duration,
}

/// One request's tokenized texts waiting to be encoded.
#[derive(Debug)]
pub(crate) struct Job {
    pub tokens: Vec<Tokens>,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<JobOutput, EngineError>>,
    /// Held until the job is answered or dropped.
    pub _permit: Permit,
    pub enqueued: Instant,
}

impl Job {
    /// Answers the job. Its share of the inputs-in-flight budget is given
    /// back first, so a caller that has its answer sees the budget freed.
    fn answer(self, result: Result<JobOutput, EngineError>) {
        let Self { reply, _permit, .. } = self;
        drop(_permit);
        let _ = reply.send(result);
    }
}

/// A job being served.
#[derive(Debug)]
struct Active {
    job: Job,
    /// Texts not yet sent to a device, in order.
    pending: VecDeque<usize>,
    /// Texts to send again, with the device that failed them.
    retry: VecDeque<(usize, usize)>,
    attempts: Vec<u8>,
    vectors: Vec<Vec<f32>>,
    done: usize,
    started: Option<Instant>,
    inference: Duration,
}

impl Active {
    fn new(job: Job) -> Self {
        let n = job.tokens.len();
        Self {
            job,
            pending: (0..n).collect(),
            retry: VecDeque::new(),
            attempts: vec![0; n],
            vectors: vec![Vec::new(); n],
            done: 0,
            started: None,
            inference: Duration::ZERO,
        }
    }

    fn waiting(&self) -> usize {
        self.pending.len() + self.retry.len()
    }
}

/// A batch on a device.
#[derive(Debug)]
struct InFlight {
    picks: Vec<(u64, usize)>,
    tokens: usize,
}

/// The queue's view of a device.
#[derive(Debug)]
struct DeviceState {
    device: Arc<dyn Device>,
    /// Average tokens per second; `None` until the first batch finishes.
    rate: Option<f64>,
    outstanding: usize,
    outstanding_tokens: usize,
    failures: u32,
    paused_until: Option<Instant>,
}

impl DeviceState {
    fn usable(&self, now: Instant) -> bool {
        self.outstanding < DEPTH && self.paused_until.is_none_or(|t| t <= now)
    }
}

/// Limits of the batches the queue forms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub max_tokens: usize,
    pub max_sequences: usize,
}

/// The queue thread's state.
struct Queue {
    jobs: BTreeMap<u64, Active>,
    next_job: u64,
    in_flight: HashMap<u64, InFlight>,
    next_batch: u64,
    devices: Vec<DeviceState>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    dimension: usize,
}

/// Runs the queue until [`Event::Close`] arrives and everything queued is
/// answered.
pub(crate) fn run(
    embedder: Arc<Embedder>,
    events: mpsc::Receiver<Event>,
    devices: Vec<Arc<dyn Device>>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
) {
    let mut queue = Queue {
        jobs: BTreeMap::new(),
        next_job: 0,
        in_flight: HashMap::new(),
        next_batch: 0,
        devices: devices
            .into_iter()
            .map(|device| DeviceState {
                device,
                rate: None,
                outstanding: 0,
                outstanding_tokens: 0,
                failures: 0,
                paused_until: None,
            })
            .collect(),
        limits,
        metrics,
        dimension: embedder.dimension(),
    };
    queue.publish_weights();
    let mut closing = false;
    // Whether the last dispatch sent a batch. When it sent none although
    // texts wait and a device is free (texts to retry that only a device in
    // back-off may take), the queue waits for an event or a tick instead of
    // spinning.
    let mut progressed = true;
    loop {
        if closing && queue.jobs.is_empty() && queue.in_flight.is_empty() {
            return;
        }
        let first = if progressed && queue.can_dispatch() {
            events.try_recv().ok()
        } else {
            match events.recv_timeout(TICK) {
                Ok(event) => Some(event),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        };
        for event in first
            .into_iter()
            .chain(std::iter::from_fn(|| events.try_recv().ok()))
        {
            match event {
                Event::Job(job) => {
                    queue.jobs.insert(queue.next_job, Active::new(job));
                    queue.next_job += 1;
                }
                Event::Done(completion) => queue.complete(completion),
                Event::Close => closing = true,
            }
        }
        queue.prune();
        progressed = queue.dispatch();
    }
}

impl Queue {
    fn can_dispatch(&self) -> bool {
        let now = Instant::now();
        self.jobs.values().any(|a| a.waiting() > 0) && self.devices.iter().any(|d| d.usable(now))
    }

    /// Drops jobs whose client has gone and fails those past their deadline.
    fn prune(&mut self) {
        let now = Instant::now();
        self.jobs.retain(|_, a| !a.job.reply.is_closed());
        let late: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, a)| a.job.deadline.is_some_and(|d| d <= now))
            .map(|(&j, _)| j)
            .collect();
        for j in late {
            if let Some(a) = self.jobs.remove(&j) {
                let waited = now.duration_since(a.job.enqueued);
                a.job.answer(Err(EngineError::Timeout { waited }));
            }
        }
        let waiting: usize = self.jobs.values().map(Active::waiting).sum();
        self.metrics.queue_depth.set(waiting as i64);
    }

    /// The usable devices, the one that would finish one more batch soonest
    /// first.
    fn devices_by_finish(&self, now: Instant) -> Vec<usize> {
        let known: Vec<f64> = self.devices.iter().filter_map(|d| d.rate).collect();
        let default_rate = if known.is_empty() {
            1.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        let mut usable: Vec<(usize, f64)> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.usable(now))
            .map(|(i, d)| {
                let rate = d.rate.unwrap_or(default_rate).max(1e-9);
                (i, (d.outstanding_tokens as f64 + 1.0) / rate)
            })
            .collect();
        usable.sort_by(|a, b| a.1.total_cmp(&b.1));
        usable.into_iter().map(|(i, _)| i).collect()
    }

    /// Sends batches to devices while there are texts and free devices;
    /// returns whether it sent any. A device that may take none of the
    /// waiting texts (they failed on it and wait for another device) is
    /// passed over for the next one.
    fn dispatch(&mut self) -> bool {
        let now = Instant::now();
        let mut sent = false;
        loop {
            let mut chosen = None;
            for d in self.devices_by_finish(now) {
                let picks = self.pick_batch(d, self.budget(d));
                if picks.is_empty() {
                    continue;
                }
                if self.faster_alone(d, &picks, now) {
                    self.put_back(&picks);
                    continue;
                }
                chosen = Some((d, picks));
                break;
            }
            let Some((d, picks)) = chosen else {
                return sent;
            };
            sent = true;
            let items: Vec<&Tokens> = picks
                .iter()
                .filter_map(|&(j, i)| self.jobs.get(&j).map(|a| &a.job.tokens[i]))
                .collect();
            let mut batch = Embedder::gather(&items);
            batch.id = self.next_batch;
            self.next_batch += 1;
            let tokens = batch.tokens();
            for &(j, _) in &picks {
                if let Some(a) = self.jobs.get_mut(&j) {
                    a.started.get_or_insert(now);
                }
            }
            let state = &mut self.devices[d];
            state.outstanding += 1;
            state.outstanding_tokens += tokens;
            self.in_flight.insert(batch.id, InFlight { picks, tokens });
            let id = batch.id;
            if let Err(error) = self.devices[d].device.submit(batch) {
                self.complete(Completion {
                    device: d,
                    batch: id,
                    result: Err(error),
                    elapsed: Duration::ZERO,
                });
            }
        }
    }

    /// Whether a faster device would finish everything that is waiting,
    /// `picks` included, no later than device `d` would finish `picks`: at
    /// the end of a burst a slow device's batch would only make the last
    /// answers wait. Never when texts wait for a retry (they may be barred
    /// from the faster device) or when no faster device is healthy.
    fn faster_alone(&self, d: usize, picks: &[(u64, usize)], now: Instant) -> bool {
        let Some(rate) = self.devices[d].rate else {
            return false;
        };
        let Some((f, fast_rate)) = self
            .devices
            .iter()
            .enumerate()
            .filter(|(i, s)| *i != d && s.paused_until.is_none_or(|t| t <= now))
            .filter_map(|(i, s)| s.rate.map(|r| (i, r)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
        else {
            return false;
        };
        if fast_rate <= rate || self.jobs.values().any(|a| !a.retry.is_empty()) {
            return false;
        }
        let tokens_of =
            |&(j, i): &(u64, usize)| self.jobs.get(&j).map_or(0, |a| a.job.tokens[i].ids.len());
        let batch: usize = picks.iter().map(tokens_of).sum();
        let slow_done = (self.devices[d].outstanding_tokens + batch) as f64 / rate;
        // The tokens the faster device could take before `d` finishes; the
        // waiting texts are counted only until they pass that (a long queue
        // is never summed in full).
        let room = slow_done * fast_rate - (self.devices[f].outstanding_tokens + batch) as f64;
        let mut waiting = 0.0;
        for a in self.jobs.values() {
            for &i in &a.pending {
                waiting += a.job.tokens[i].ids.len() as f64;
                if waiting > room {
                    return false;
                }
            }
        }
        room >= 0.0
    }

    /// Returns texts chosen by [`pick_batch`](Self::pick_batch) (no retries
    /// among them) to the front of their jobs' queues, in order.
    fn put_back(&mut self, picks: &[(u64, usize)]) {
        for &(j, i) in picks.iter().rev() {
            if let Some(a) = self.jobs.get_mut(&j) {
                a.pending.push_front(i);
            }
        }
    }

    /// Tokens for the next batch of device `d`: the full budget for the
    /// fastest device, less for slower ones so they do not hold the tail.
    fn budget(&self, d: usize) -> usize {
        let fastest = self
            .devices
            .iter()
            .filter_map(|s| s.rate)
            .fold(0.0, f64::max);
        match self.devices[d].rate {
            Some(rate) if fastest > 0.0 && self.devices.len() > 1 => {
                ((self.limits.max_tokens as f64 * rate / fastest) as usize).max(256)
            }
            _ => self.limits.max_tokens,
        }
    }

    /// Chooses `(job, text)` pairs for device `d`: retries first, then turns
    /// of [`TURN`] texts per job until the budget is spent.
    fn pick_batch(&mut self, d: usize, max_tokens: usize) -> Vec<(u64, usize)> {
        let several = self.devices.len() > 1;
        let max_sequences = self.limits.max_sequences;
        let mut picks = Vec::new();
        let mut tokens = 0;
        let fits = |len: usize, picks: &Vec<(u64, usize)>, tokens: usize| {
            picks.is_empty() || (picks.len() < max_sequences && tokens + len <= max_tokens)
        };
        for (&j, a) in &mut self.jobs {
            let mut kept = VecDeque::new();
            while let Some((i, failed_on)) = a.retry.pop_front() {
                let len = a.job.tokens[i].ids.len();
                if (several && failed_on == d) || !fits(len, &picks, tokens) {
                    kept.push_back((i, failed_on));
                    continue;
                }
                picks.push((j, i));
                tokens += len;
            }
            a.retry = kept;
        }
        'rounds: loop {
            let mut progressed = false;
            for (&j, a) in &mut self.jobs {
                for _ in 0..TURN {
                    let Some(&i) = a.pending.front() else { break };
                    let len = a.job.tokens[i].ids.len();
                    if !fits(len, &picks, tokens) {
                        break 'rounds;
                    }
                    a.pending.pop_front();
                    picks.push((j, i));
                    tokens += len;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        picks
    }

    /// Takes a device's answer for a batch.
    fn complete(&mut self, c: Completion) {
        let Some(flight) = self.in_flight.remove(&c.batch) else {
            return;
        };
        let now = Instant::now();
        let state = &mut self.devices[c.device];
        state.outstanding -= 1;
        state.outstanding_tokens -= flight.tokens;
        let name = state.device.name().to_owned();
        let sequences = flight.picks.len();
        let m = &self.metrics;
        let labels = [name.as_str()];
        m.gpu_batch_count_total.with_label_values(&labels).inc();
        m.gpu_sequences_total
            .with_label_values(&labels)
            .inc_by(sequences as u64);
        m.gpu_tokens_total
            .with_label_values(&labels)
            .inc_by(flight.tokens as u64);
        m.gpu_batch_time_seconds
            .with_label_values(&labels)
            .set(c.elapsed.as_secs_f64());
        let seconds = c.elapsed.as_secs_f64().max(1e-9);
        m.gpu_throughput
            .with_label_values(&labels)
            .set(sequences as f64 / seconds);
        m.batch_size_distribution.observe(sequences as f64);

        match c.result {
            Ok(pooled) => {
                let state = &mut self.devices[c.device];
                state.failures = 0;
                state.paused_until = None;
                let measured = flight.tokens as f64 / seconds;
                state.rate = Some(
                    state
                        .rate
                        .map_or(measured, |r| EWMA * measured + (1.0 - EWMA) * r),
                );
                let dim = self.dimension;
                for (&(j, i), vector) in flight.picks.iter().zip(pooled.chunks_exact(dim)) {
                    if vector.iter().all(|x| x.is_finite()) {
                        if let Some(a) = self.jobs.get_mut(&j) {
                            a.vectors[i] = vector.to_vec();
                            a.done += 1;
                        }
                    } else {
                        self.metrics.output_invalid_total.inc();
                        tracing::warn!(device = %name, batch = c.batch, text = i, "non-finite vector");
                        self.retry_or_fail(j, i, c.device, || EngineError::InvalidOutput {
                            index: i,
                            device: name.clone(),
                        });
                    }
                }
            }
            Err(error) => {
                let state = &mut self.devices[c.device];
                state.failures += 1;
                let backoff = Duration::from_millis(50) * 2u32.pow(state.failures.min(7));
                state.paused_until = Some(now + backoff);
                state.rate = state.rate.map(|r| r * 0.5);
                tracing::warn!(device = %name, batch = c.batch, sequences, %error, ?backoff, "batch failed; retrying its texts");
                let message = error.to_string();
                for &(j, i) in &flight.picks {
                    self.retry_or_fail(j, i, c.device, || EngineError::Device {
                        device: name.clone(),
                        message: message.clone(),
                    });
                }
            }
        }
        self.finish_jobs(&flight.picks, c.elapsed);
        self.publish_weights();
    }

    /// Queues text `i` of job `j` again unless it was already retried, in
    /// which case the job fails with `error`.
    fn retry_or_fail(&mut self, j: u64, i: usize, device: usize, error: impl Fn() -> EngineError) {
        let Some(a) = self.jobs.get_mut(&j) else {
            return;
        };
        if a.attempts[i] == 0 {
            a.attempts[i] = 1;
            a.retry.push_back((i, device));
        } else if let Some(a) = self.jobs.remove(&j) {
            a.job.answer(Err(error()));
        }
    }

    /// Answers the jobs among `picks` whose texts are all done.
    fn finish_jobs(&mut self, picks: &[(u64, usize)], elapsed: Duration) {
        let mut touched: Vec<u64> = picks.iter().map(|&(j, _)| j).collect();
        touched.sort_unstable();
        touched.dedup();
        for j in touched {
            let Some(a) = self.jobs.get_mut(&j) else {
                continue;
            };
            a.inference += elapsed;
            if a.done == a.job.tokens.len() {
                if let Some(a) = self.jobs.remove(&j) {
                    let queue = a
                        .started
                        .map_or(Duration::ZERO, |s| s.duration_since(a.job.enqueued));
                    a.job.answer(Ok(JobOutput {
                        vectors: a.vectors,
                        queue,
                        inference: a.inference,
                    }));
                }
            }
        }
    }

    /// Sets `fletcher_gpu_weight` to each device's share of the measured
    /// throughput (0 while it sits out a back-off).
    fn publish_weights(&self) {
        let now = Instant::now();
        let rates: Vec<f64> = self
            .devices
            .iter()
            .map(|d| {
                if d.paused_until.is_some_and(|t| t > now) {
                    0.0
                } else {
                    d.rate.unwrap_or(1.0)
                }
            })
            .collect();
        let total: f64 = rates.iter().sum();
        for (d, rate) in self.devices.iter().zip(rates) {
            let weight = if total > 0.0 { rate / total } else { 0.0 };
            self.metrics
                .gpu_weight
                .with_label_values(&[d.device.name()])
                .set(weight);
        }
    }
}
