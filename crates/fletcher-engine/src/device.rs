//! Devices: execution units that each own a model replica, threads and
//! working memory, and encode ragged batches handed to them.
//!
//! The interface is asynchronous on purpose: [`Device::submit`] queues a
//! batch of token ids and returns at once, and the pooled vectors come back
//! later as a [`Completion`] on the channel the device was created with. A
//! CPU device runs batches on its own worker thread and rayon pool; a GPU
//! device can keep several batches in flight on streams the same way.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fletcher_model::{BufferPool, PoolLimits, RaggedBatch};

use crate::embedder::ModelCore;
use crate::{EngineError, Metrics};

/// A device as named on the command line: `cpu:N` is a CPU device of N
/// cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// Threads (cores) of the device.
    pub threads: usize,
}

impl DeviceSpec {
    /// Parses a comma-separated list such as `cpu:1,cpu:1` or `cpu:2`.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        let specs: Vec<Self> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if specs.is_empty() {
            return Err("no device given".to_owned());
        }
        Ok(specs)
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, count) = s.split_once(':').unwrap_or((s, "1"));
        if kind != "cpu" {
            return Err(format!(
                "unknown device kind `{kind}` in `{s}`: this build runs on `cpu:N` devices"
            ));
        }
        match count.parse::<usize>() {
            Ok(threads) if threads > 0 => Ok(Self { threads }),
            _ => Err(format!("`{s}`: the core count must be a positive integer")),
        }
    }
}

/// Token ids of a ragged batch, owned so they can cross to a device.
#[derive(Debug, Clone, Default)]
pub struct DeviceBatch {
    /// Identifies the batch in its [`Completion`].
    pub id: u64,
    /// Token ids of all sequences end to end.
    pub input_ids: Vec<u32>,
    /// Token type ids, as long as `input_ids`.
    pub token_type_ids: Vec<u32>,
    /// Sequence offsets, one more than there are sequences.
    pub cu_seqlens: Vec<usize>,
}

impl DeviceBatch {
    /// Sequences in the batch.
    pub fn sequences(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Tokens in the batch.
    pub fn tokens(&self) -> usize {
        self.input_ids.len()
    }
}

/// What a device reports for a batch.
#[derive(Debug)]
pub struct Completion {
    /// Index of the device in the engine's list.
    pub device: usize,
    /// The batch's id.
    pub batch: u64,
    /// Pooled vectors `[sequences, dimension]` before normalization, or why
    /// there are none.
    pub result: Result<Vec<f32>, EngineError>,
    /// Wall time of the batch on the device.
    pub elapsed: Duration,
}

/// Faults a test can make a device produce. Never armed unless the engine
/// was started with fault injection allowed.
#[derive(Debug, Default)]
pub struct Faults {
    panics: AtomicU32,
    nans: AtomicU32,
    slowdown_percent: AtomicU32,
}

/// A fault to inject into a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Panic inside the next `n` batches.
    Panic(u32),
    /// Make the first vector of each of the next `n` batches NaN.
    Nan(u32),
    /// Make every batch take `factor` times as long (1.0 = normal speed).
    Slow(f32),
}

impl Faults {
    /// Arms `fault`.
    pub fn arm(&self, fault: Fault) {
        match fault {
            Fault::Panic(n) => self.panics.store(n, Ordering::SeqCst),
            Fault::Nan(n) => self.nans.store(n, Ordering::SeqCst),
            Fault::Slow(f) => self
                .slowdown_percent
                .store((f.max(1.0) * 100.0) as u32, Ordering::SeqCst),
        }
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// An execution unit that encodes batches.
pub trait Device: Send + Sync + std::fmt::Debug {
    /// The device's name, as in metrics (`cpu:0`).
    fn name(&self) -> &str;
    /// Queues `batch`; returns at once. Its [`Completion`] arrives later on
    /// the device's completion channel, also when the batch fails.
    fn submit(&self, batch: DeviceBatch) -> Result<(), EngineError>;
    /// The device's fault switches.
    fn faults(&self) -> &Faults;
}

/// A group of CPU cores with its own rayon pool, worker thread and buffer
/// pool, sharing the model's packed weights with the other CPU devices.
#[derive(Debug)]
pub struct CpuDevice {
    name: String,
    work: mpsc::Sender<DeviceBatch>,
    faults: Arc<Faults>,
}

impl CpuDevice {
    /// Starts a device of `threads` cores, reporting to `done` as device
    /// number `index`.
    pub(crate) fn start(
        index: usize,
        threads: usize,
        model: Arc<ModelCore>,
        done: mpsc::Sender<crate::queue::Event>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, EngineError> {
        let name = format!("cpu:{index}");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name({
                let name = name.clone();
                move |i| format!("fletcher-{name}-{i}")
            })
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let (work, batches) = mpsc::channel::<DeviceBatch>();
        let faults = Arc::new(Faults::default());
        let worker = Worker {
            index,
            name: name.clone(),
            pool,
            buffers: BufferPool::with_observer(PoolLimits::default(), metrics.clone()),
            model,
            faults: faults.clone(),
            metrics,
        };
        std::thread::Builder::new()
            .name(format!("fletcher-{name}"))
            .spawn(move || {
                for batch in batches {
                    let completion = worker.run(batch);
                    if done.send(crate::queue::Event::Done(completion)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        Ok(Self { name, work, faults })
    }
}

impl Device for CpuDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn submit(&self, batch: DeviceBatch) -> Result<(), EngineError> {
        self.work.send(batch).map_err(|_| EngineError::Device {
            device: self.name.clone(),
            message: "worker thread has stopped".to_owned(),
        })
    }

    fn faults(&self) -> &Faults {
        &self.faults
    }
}

/// The state a CPU device's worker thread owns.
struct Worker {
    index: usize,
    name: String,
    pool: rayon::ThreadPool,
    /// Activation and workspace buffers, reused from batch to batch; its
    /// hits, misses and holdings add to the `fletcher_metal_pool_*`
    /// metrics.
    buffers: BufferPool,
    model: Arc<ModelCore>,
    faults: Arc<Faults>,
    metrics: Arc<Metrics>,
}

impl Worker {
    fn run(&self, batch: DeviceBatch) -> Completion {
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if Faults::take(&self.faults.panics) {
                panic!("injected fault: panic on {}", self.name);
            }
            self.pool.install(|| {
                self.model.encode(
                    &RaggedBatch {
                        input_ids: &batch.input_ids,
                        token_type_ids: &batch.token_type_ids,
                        cu_seqlens: &batch.cu_seqlens,
                    },
                    &self.name,
                    &self.metrics,
                    &self.buffers,
                )
            })
        }));
        let mut result = match outcome {
            Ok(result) => result,
            Err(panic) => {
                self.metrics.panics_total.inc();
                let message = panic_message(panic.as_ref());
                tracing::error!(
                    device = %self.name,
                    batch = batch.id,
                    sequences = batch.sequences(),
                    tokens = batch.tokens(),
                    %message,
                    "device worker panicked; it keeps serving"
                );
                Err(EngineError::Device {
                    device: self.name.clone(),
                    message: format!("worker panicked: {message}"),
                })
            }
        };
        if let Ok(vectors) = &mut result {
            if Faults::take(&self.faults.nans) {
                let dim = vectors.len() / batch.sequences().max(1);
                vectors[..dim].fill(f32::NAN);
            }
        }
        let percent = self.faults.slowdown_percent.load(Ordering::Relaxed);
        if percent > 100 {
            let extra = start.elapsed().mul_f64(f64::from(percent - 100) / 100.0);
            std::thread::sleep(extra);
        }
        Completion {
            device: self.index,
            batch: batch.id,
            result,
            elapsed: start.elapsed(),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse() {
        let two = DeviceSpec::parse_list("cpu:1, cpu:1").unwrap();
        assert_eq!(
            two,
            vec![DeviceSpec { threads: 1 }, DeviceSpec { threads: 1 }]
        );
        assert_eq!(DeviceSpec::parse_list("cpu:2").unwrap()[0].threads, 2);
        assert!(DeviceSpec::parse_list("cuda:0")
            .unwrap_err()
            .contains("cuda"));
        assert!(DeviceSpec::parse_list("cpu:0").is_err());
        assert!(DeviceSpec::parse_list("").is_err());
    }

    #[test]
    fn faults_fire_the_armed_number_of_times() {
        let faults = Faults::default();
        faults.arm(Fault::Panic(2));
        assert!(Faults::take(&faults.panics));
        assert!(Faults::take(&faults.panics));
        assert!(!Faults::take(&faults.panics));
    }
}
