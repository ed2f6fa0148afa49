//! The serving handle: admission control in front of the batching queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::queue::{self, BatchLimits, Job};
use crate::tokenize::TokenInfo;
use crate::{EmbedOptions, Embedder, EngineError, Metrics, TruncationSide};

/// Name of the one CPU device the engine runs on.
const DEVICE: &str = "cpu:0";

/// Limits of the serving engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most tokens in one batch.
    pub max_batch_tokens: usize,
    /// Most texts in one batch.
    pub max_batch_requests: usize,
    /// Most texts admitted and not yet answered, over all requests.
    pub max_concurrent_inputs: usize,
    /// How long a request may wait for its vectors.
    pub request_timeout: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_requests: usize::MAX,
            max_concurrent_inputs: 4096,
            request_timeout: None,
        }
    }
}

/// One request to embed texts.
#[derive(Debug, Clone, Default)]
pub struct EmbedRequest {
    /// The texts, answered in this order.
    pub texts: Vec<String>,
    /// Normalization, truncation, prompt and dimensions.
    pub options: EmbedOptions,
    /// The dataset the texts belong to, for metrics and the cache.
    pub dataset: Option<String>,
}

/// Where a request's time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Tokenizing its texts.
    pub tokenization: Duration,
    /// Waiting for its first batch.
    pub queue: Duration,
    /// Batches that held its texts.
    pub inference: Duration,
}

/// The answer to an [`EmbedRequest`].
#[derive(Debug, Clone)]
pub struct Embedded {
    /// One vector per text, in request order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens of all texts after truncation, special tokens included.
    pub prompt_tokens: usize,
    /// Where the time went.
    pub timings: Timings,
}

/// A share of the inputs-in-flight budget, given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit {
    inner: Arc<Shared>,
    inputs: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(self.inputs, Ordering::AcqRel);
        self.inner.metrics.inputs_in_flight.sub(self.inputs as i64);
    }
}

#[derive(Debug)]
struct Shared {
    embedder: Arc<Embedder>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    in_flight: AtomicUsize,
    healthy: Arc<AtomicBool>,
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
}

/// A model behind a batching queue, shared by every front end. Clones are
/// handles to the same engine.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Shared>,
}

impl Engine {
    /// Starts the queue thread for `embedder`, warms the model up with one
    /// short text, and returns the handle.
    pub fn start(embedder: Embedder, config: EngineConfig, metrics: Arc<Metrics>) -> Result<Self, EngineError> {
        let embedder = Arc::new(embedder);
        embedder.embed(&["warm-up".to_owned()])?;
        for (labels, value) in [(DEVICE, 1.0)] {
            metrics.gpu_weight.with_label_values(&[labels]).set(value);
            metrics.gpu_batch_count_total.with_label_values(&[labels]);
            metrics.gpu_sequences_total.with_label_values(&[labels]);
            metrics.gpu_tokens_total.with_label_values(&[labels]);
            metrics.gpu_throughput.with_label_values(&[labels]);
            metrics.gpu_batch_time_seconds.with_label_values(&[labels]);
        }
        let (sender, receiver) = mpsc::channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let limits = BatchLimits {
            max_tokens: config.max_batch_tokens.max(1),
            max_sequences: config.max_batch_requests.max(1),
        };
        {
            let (embedder, metrics, healthy) = (embedder.clone(), metrics.clone(), healthy.clone());
            std::thread::Builder::new()
                .name("fletcher-queue".to_owned())
                .spawn(move || {
                    queue::run(embedder, receiver, limits, metrics, DEVICE.to_owned(), healthy.clone());
                    healthy.store(false, Ordering::Relaxed);
                })
                .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        }
        Ok(Self {
            inner: Arc::new(Shared {
                embedder,
                config,
                metrics,
                in_flight: AtomicUsize::new(0),
                healthy,
                jobs: std::sync::Mutex::new(Some(sender)),
            }),
        })
    }

    /// The model behind the queue.
    pub fn embedder(&self) -> &Embedder {
        &self.inner.embedder
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The limits the engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Names of the devices the engine runs on.
    pub fn devices(&self) -> Vec<String> {
        vec![DEVICE.to_owned()]
    }

    /// Texts admitted and not yet answered.
    pub fn inputs_in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Whether the queue is running and the model answered its warm-up.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Stops taking new requests; the queue finishes what it holds.
    pub fn close(&self) {
        if let Ok(mut jobs) = self.inner.jobs.lock() {
            jobs.take();
        }
    }

    /// Reserves room for `inputs` texts or refuses at once.
    fn admit(&self, inputs: usize) -> Result<Permit, EngineError> {
        let limit = self.inner.config.max_concurrent_inputs;
        let before = self.inner.in_flight.fetch_add(inputs, Ordering::AcqRel);
        let permit = Permit {
            inner: self.inner.clone(),
            inputs,
        };
        self.inner.metrics.inputs_in_flight.add(inputs as i64);
        if before + inputs > limit {
            drop(permit);
            return Err(EngineError::Overloaded {
                requested: inputs,
                in_flight: before,
                limit,
            });
        }
        Ok(permit)
    }

    /// Embeds the texts of `request`, batched with other requests' texts.
    pub async fn embed(&self, request: EmbedRequest) -> Result<Embedded, EngineError> {
        let received = Instant::now();
        let embedder = self.inner.embedder.clone();
        embedder.check_options(&request.options)?;
        let n = request.texts.len();
        if n == 0 {
            return Ok(Embedded {
                vectors: Vec::new(),
                prompt_tokens: 0,
                timings: Timings::default(),
            });
        }
        let permit = self.admit(n)?;
        let deadline = self.inner.config.request_timeout.map(|t| received + t);

        let options = request.options.clone();
        let texts = request.texts;
        let tokens = tokio::task::spawn_blocking(move || embedder.tokenize(&texts, &options))
            .await
            .map_err(|e| EngineError::Internal(format!("tokenization task: {e}")))??;
        let tokenization = received.elapsed();
        let prompt_tokens: usize = tokens.iter().map(|t| t.ids.len()).sum();
        let metrics = &self.inner.metrics;
        metrics.tokenization_duration_seconds.observe(tokenization.as_secs_f64());
        metrics
            .tokenization_throughput
            .set(prompt_tokens as f64 / tokenization.as_secs_f64().max(1e-9));
        if let Some(dataset) = &request.dataset {
            metrics.dataset_inputs_total.with_label_values(&[dataset]).inc_by(n as u64);
        }

        let (reply, answer) = oneshot::channel();
        let job = Job {
            tokens,
            normalize: self.inner.embedder.normalize_for(&request.options),
            dimensions: request.options.dimensions,
            deadline,
            reply,
            _permit: permit,
            enqueued: Instant::now(),
        };
        let sent = match self.inner.jobs.lock() {
            Ok(jobs) => jobs.as_ref().is_some_and(|s| s.send(job).is_ok()),
            Err(_) => false,
        };
        if !sent {
            return Err(EngineError::ShuttingDown);
        }
        let output = match deadline {
            // The queue enforces the deadline; the margin covers a batch
            // that is already running when it passes.
            Some(d) => {
                let wait = d.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
                match tokio::time::timeout(wait, answer).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        return Err(EngineError::Timeout {
                            waited: received.elapsed(),
                        })
                    }
                }
            }
            None => answer.await,
        }
        .map_err(|_| EngineError::Internal("the queue dropped a request".to_owned()))??;
        metrics.vectors_processed_total.inc_by(n as u64);
        Ok(Embedded {
            vectors: output.vectors,
            prompt_tokens,
            timings: Timings {
                tokenization,
                queue: output.queue,
                inference: output.inference,
            },
        })
    }

    /// The tokens of each text, as the model would see them.
    pub async fn tokenize(&self, texts: Vec<String>, side: Option<TruncationSide>) -> Result<Vec<Vec<TokenInfo>>, EngineError> {
        let embedder = self.inner.embedder.clone();
        tokio::task::spawn_blocking(move || embedder.tokenize_detailed(&texts, side))
            .await
            .map_err(|e| EngineError::Internal(format!("tokenization task: {e}")))?
    }
}
