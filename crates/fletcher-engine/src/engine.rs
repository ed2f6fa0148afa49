//! The serving handle: admission control in front of the batching queue.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::cache::{CacheConfig, EmbeddingCache, KeyScope};
use crate::device::{CpuDevice, Device, DeviceSpec, Fault};
use crate::embedder::finish;
use crate::queue::{self, BatchLimits, Event, Job};
use crate::tokenize::TokenInfo;
use crate::{EmbedOptions, Embedder, EngineError, Metrics, TruncationSide};

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
    /// The devices to run on; empty means one CPU device with the
    /// embedder's threads.
    pub devices: Vec<DeviceSpec>,
    /// Whether [`Engine::inject_fault`] may arm faults (tests only).
    pub fault_injection: bool,
    /// The embedding cache; `None` embeds every text.
    pub cache: Option<CacheConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_requests: usize::MAX,
            max_concurrent_inputs: 4096,
            request_timeout: None,
            devices: Vec::new(),
            fault_injection: false,
            cache: None,
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
        self.inner
            .in_flight
            .fetch_sub(self.inputs, Ordering::AcqRel);
        self.inner.metrics.inputs_in_flight.sub(self.inputs as i64);
    }
}

struct Shared {
    embedder: Arc<Embedder>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    in_flight: AtomicUsize,
    healthy: Arc<AtomicBool>,
    events: std::sync::Mutex<Option<mpsc::Sender<Event>>>,
    devices: Vec<Arc<dyn Device>>,
    cache: Option<EmbeddingCache>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.embedder.model_id())
            .field("devices", &self.devices)
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Ok(mut events) = self.events.lock() {
            if let Some(events) = events.take() {
                let _ = events.send(Event::Close);
            }
        }
    }
}

/// A model behind a batching queue, shared by every front end. Clones are
/// handles to the same engine.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Shared>,
}

impl Engine {
    /// Starts the devices and the queue thread for `embedder`, warms the
    /// model up with one short text, and returns the handle.
    pub fn start(
        embedder: Embedder,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        let embedder = Arc::new(embedder);
        embedder.embed(&["warm-up".to_owned()])?;
        let specs = if config.devices.is_empty() {
            vec![DeviceSpec {
                threads: embedder.threads(),
            }]
        } else {
            config.devices.clone()
        };
        let (sender, receiver) = mpsc::channel();
        let mut devices: Vec<Arc<dyn Device>> = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let device = CpuDevice::start(
                index,
                spec.threads,
                embedder.core(),
                sender.clone(),
                metrics.clone(),
            )?;
            let name = [device.name()];
            metrics.gpu_batch_count_total.with_label_values(&name);
            metrics.gpu_sequences_total.with_label_values(&name);
            metrics.gpu_tokens_total.with_label_values(&name);
            metrics.gpu_throughput.with_label_values(&name);
            metrics.gpu_batch_time_seconds.with_label_values(&name);
            for stage in ["embeddings", "attention", "feed_forward", "pooling"] {
                metrics
                    .gpu_layer_duration_seconds
                    .with_label_values(&[stage, device.name()]);
            }
            devices.push(Arc::new(device));
        }
        let cache = match &config.cache {
            Some(c) if c.capacity_bytes > 0 || c.redis_url.is_some() => Some(
                EmbeddingCache::new(c.clone(), metrics.clone())
                    .map_err(|e| EngineError::InvalidOption(e.to_string()))?,
            ),
            _ => None,
        };
        let healthy = Arc::new(AtomicBool::new(true));
        let limits = BatchLimits {
            max_tokens: config.max_batch_tokens.max(1),
            max_sequences: config.max_batch_requests.max(1),
        };
        {
            let (embedder, metrics, healthy, devices) = (
                embedder.clone(),
                metrics.clone(),
                healthy.clone(),
                devices.clone(),
            );
            std::thread::Builder::new()
                .name("fletcher-queue".to_owned())
                .spawn(move || {
                    queue::run(embedder, receiver, devices, limits, metrics);
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
                events: std::sync::Mutex::new(Some(sender)),
                devices,
                cache,
            }),
        })
    }

    /// Arms `fault` on the device named `device` (`cpu:1`). Refused unless
    /// the engine was started with fault injection allowed.
    pub fn inject_fault(&self, device: &str, fault: Fault) -> Result<(), EngineError> {
        if !self.inner.config.fault_injection {
            return Err(EngineError::InvalidOption(
                "fault injection is disabled in this engine".to_owned(),
            ));
        }
        let target = self
            .inner
            .devices
            .iter()
            .find(|d| d.name() == device)
            .ok_or_else(|| EngineError::InvalidOption(format!("no device named `{device}`")))?;
        target.faults().arm(fault);
        Ok(())
    }

    /// The model behind the queue.
    pub fn embedder(&self) -> &Embedder {
        &self.inner.embedder
    }

    /// The model behind the queue, as a shared handle that outlives the
    /// engine.
    pub fn shared_embedder(&self) -> Arc<Embedder> {
        self.inner.embedder.clone()
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The limits the engine was started with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The embedding cache, when the engine has one.
    pub fn cache(&self) -> Option<&EmbeddingCache> {
        self.inner.cache.as_ref()
    }

    /// Names of the devices the engine runs on.
    pub fn devices(&self) -> Vec<String> {
        self.inner
            .devices
            .iter()
            .map(|d| d.name().to_owned())
            .collect()
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
        if let Ok(mut events) = self.inner.events.lock() {
            if let Some(events) = events.take() {
                let _ = events.send(Event::Close);
            }
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

        let keys = self.inner.cache.as_ref().map(|_| {
            KeyScope {
                model: embedder.fingerprint(),
                pooling: embedder.pooling().to_vec(),
                dataset: request.dataset.clone(),
                prompt: request.options.prompt.clone(),
                truncate: request.options.truncate,
                truncation_side: embedder.truncation_side_for(&request.options),
                max_seq_length: embedder.max_seq_length(),
            }
            .keys(&request.texts)
        });
        let options = request.options.clone();
        let texts = request.texts;
        // A few short texts are tokenized right here: a blocking task would
        // add two thread hand-offs to the latency of a short request.
        let tokens = if crate::tokenize::is_small(&texts) {
            embedder.tokenize(&texts, &options)?
        } else {
            tokio::task::spawn_blocking(move || embedder.tokenize(&texts, &options))
                .await
                .map_err(|e| EngineError::Internal(format!("tokenization task: {e}")))??
        };
        // Every text is tokenized, hit or miss: over-long texts are refused
        // alike and `prompt_tokens` counts the whole request.
        let cached: Vec<Option<Arc<[f32]>>> = match (&self.inner.cache, &keys) {
            (Some(cache), Some(keys)) => cache.get_many(keys).await,
            _ => vec![None; n],
        };
        let misses: Vec<usize> = (0..n).filter(|&i| cached[i].is_none()).collect();
        let tokenization = received.elapsed();
        let prompt_tokens: usize = tokens.iter().map(|t| t.ids.len()).sum();
        let tokens: Vec<_> = if misses.len() == n {
            tokens
        } else {
            let mut tokens: Vec<Option<_>> = tokens.into_iter().map(Some).collect();
            misses.iter().filter_map(|&i| tokens[i].take()).collect()
        };
        let metrics = &self.inner.metrics;
        metrics
            .tokenization_duration_seconds
            .observe(tokenization.as_secs_f64());
        metrics
            .tokenization_throughput
            .set(prompt_tokens as f64 / tokenization.as_secs_f64().max(1e-9));
        if let Some(dataset) = &request.dataset {
            metrics
                .dataset_inputs_total
                .with_label_values(&[dataset])
                .inc_by(n as u64);
        }

        if misses.is_empty() {
            metrics.vectors_processed_total.inc_by(n as u64);
            let normalize = self.inner.embedder.normalize_for(&request.options);
            return Ok(Embedded {
                vectors: cached
                    .iter()
                    .flatten()
                    .map(|v| finish(v, request.options.dimensions, normalize))
                    .collect(),
                prompt_tokens,
                timings: Timings {
                    tokenization,
                    ..Timings::default()
                },
            });
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            tokens,
            deadline,
            reply,
            _permit: permit,
            enqueued: Instant::now(),
        };
        let sent = match self.inner.events.lock() {
            Ok(events) => events
                .as_ref()
                .is_some_and(|s| s.send(Event::Job(job)).is_ok()),
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
        let normalize = self.inner.embedder.normalize_for(&request.options);
        let fresh = output.vectors;
        let vectors = if misses.len() == n {
            fresh
                .iter()
                .map(|v| finish(v, request.options.dimensions, normalize))
                .collect()
        } else {
            let mut vectors: Vec<Vec<f32>> = cached
                .iter()
                .map(|v| {
                    v.as_deref().map_or_else(Vec::new, |v| {
                        finish(v, request.options.dimensions, normalize)
                    })
                })
                .collect();
            for (&slot, v) in misses.iter().zip(&fresh) {
                vectors[slot] = finish(v, request.options.dimensions, normalize);
            }
            vectors
        };
        if let (Some(cache), Some(keys)) = (&self.inner.cache, &keys) {
            let entries = misses
                .iter()
                .zip(fresh)
                .map(|(&slot, v)| (keys[slot], Arc::<[f32]>::from(v)))
                .collect();
            cache.put_many(entries).await;
        }
        Ok(Embedded {
            vectors,
            prompt_tokens,
            timings: Timings {
                tokenization,
                queue: output.queue,
                inference: output.inference,
            },
        })
    }

    /// The tokens of each text, as the model would see them.
    pub async fn tokenize(
        &self,
        texts: Vec<String>,
        side: Option<TruncationSide>,
    ) -> Result<Vec<Vec<TokenInfo>>, EngineError> {
        let embedder = self.inner.embedder.clone();
        tokio::task::spawn_blocking(move || embedder.tokenize_detailed(&texts, side))
            .await
            .map_err(|e| EngineError::Internal(format!("tokenization task: {e}")))?
    }
}
