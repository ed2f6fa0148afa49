//! The Flight sink: a bounded buffer of embedded rows, and a background task
//! that puts them into a Flight server (a vector database such as Longbow)
//! with `DoPut`, the dataset as descriptor path.
//!
//! [`SinkHandle::submit`] never waits and never drops: rows fit in the
//! buffer or the call fails with [`SinkError::Full`], which front ends
//! answer with 429 or `RESOURCE_EXHAUSTED`. The task sends the oldest rows
//! first, at most [`SinkConfig::batch_rows`] a call. A row leaves the
//! buffer only when the sink answered the call that carried it with OK; a
//! failed call is retried with exponential backoff, and when
//! [`SinkConfig::max_retries`] retries failed too the circuit breaker opens:
//! one probe every [`SinkConfig::breaker_cooldown`] until the sink answers
//! again. While the sink is down the buffer fills and submissions are
//! refused, so a client never hears "accepted" for a row that was dropped.
//!
//! Delivery is at least once: when a call reaches the sink but its answer is
//! lost (a timeout, a broken connection), the retry sends the same rows
//! again. Sinks that must not hold duplicates should key rows on an id
//! column.

mod task;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use fletcher_engine::Metrics;
use prometheus::{IntCounter, IntGauge};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

/// Where the sink is and how the buffer in front of it behaves.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The sink's address: `grpc://HOST:PORT` (`grpc+tcp://` and `http://`
    /// are taken too). TLS sinks (`grpc+tls://`) are not supported.
    pub url: String,
    /// Dataset of rows submitted without one, sent as the `DoPut`
    /// descriptor path.
    pub dataset: String,
    /// Most rows held, sent or not, until the sink acknowledges them.
    pub buffer_rows: usize,
    /// Most rows in one `DoPut` call.
    pub batch_rows: usize,
    /// Retries of a failed call, with backoff, before the circuit breaker
    /// opens.
    pub max_retries: u32,
    /// Pause after a first failed call, doubled after each further failure.
    pub initial_backoff: Duration,
    /// Longest pause between two failed calls while the breaker is closed.
    pub max_backoff: Duration,
    /// Pause of an open breaker before it lets one probe call through.
    pub breaker_cooldown: Duration,
    /// Longest a row waits for a full batch of `batch_rows` before it is
    /// sent with whatever else is buffered.
    pub flush_timeout: Duration,
    /// Longest one `DoPut` call may take, connecting included.
    pub rpc_timeout: Duration,
}

impl SinkConfig {
    /// The defaults for the sink at `url`: a 65536-row buffer, 4096 rows a
    /// call, 50 ms doubling to 2 s between retries, the breaker opening
    /// when 5 retries failed and probing every 5 s, rows waiting at most 100 ms
    /// for a full batch, 30 s per call.
    pub fn new(url: impl Into<String>, dataset: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            dataset: dataset.into(),
            buffer_rows: 65_536,
            batch_rows: 4096,
            max_retries: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            breaker_cooldown: Duration::from_secs(5),
            flush_timeout: Duration::from_millis(100),
            rpc_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the sink could not start or refused rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The sink address cannot be used.
    #[error("sink address {url}: {reason}")]
    Url {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A size in the configuration is zero.
    #[error("sink configuration: {0} must be at least 1")]
    Config(&'static str),
    /// `start_sink` was called outside a tokio runtime.
    #[error("the sink needs a tokio runtime to run its task")]
    NoRuntime,
    /// The buffer has no room for the rows; nothing of them was taken.
    #[error(
        "the sink buffer is full: {buffered} of {capacity} rows wait for the sink, \
         {rows} more do not fit"
    )]
    Full {
        /// Rows submitted.
        rows: usize,
        /// Rows already buffered.
        buffered: usize,
        /// The buffer's size.
        capacity: usize,
    },
    /// The rows are more than the whole buffer holds.
    #[error("{rows} rows are more than the sink buffer holds ({capacity})")]
    TooLarge {
        /// Rows submitted.
        rows: usize,
        /// The buffer's size.
        capacity: usize,
    },
    /// The sink is shutting down and takes no more rows.
    #[error("the sink is shut down")]
    Closed,
}

/// State of the circuit breaker in front of the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; failures are retried after a backoff.
    Closed,
    /// The sink failed a call and its `max_retries` retries; waiting out
    /// the cooldown.
    Open,
    /// One probe call is on its way after a cooldown.
    HalfOpen,
}

impl BreakerState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// A snapshot of the sink, for health reports.
#[derive(Debug, Clone, Serialize)]
pub struct SinkStatus {
    /// The sink's address.
    pub url: String,
    /// The default dataset.
    pub dataset: String,
    /// Rows in the buffer, not yet acknowledged by the sink.
    pub buffered_rows: usize,
    /// The buffer's size.
    pub capacity: usize,
    /// Rows the sink acknowledged since the start.
    pub sent_rows: u64,
    /// Calls to the sink that failed since the start.
    pub failed_calls: u64,
    /// The circuit breaker.
    pub breaker: BreakerState,
}

/// What the sink did by the time it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SinkReport {
    /// Rows the sink acknowledged since the start.
    pub sent: u64,
    /// Rows still in the buffer: taken from clients, never acknowledged.
    pub unsent: usize,
}

/// Rows of one dataset waiting for the sink.
#[derive(Debug)]
struct Entry {
    dataset: Arc<str>,
    batch: RecordBatch,
    queued: Instant,
}

#[derive(Debug, Default)]
struct Buffer {
    entries: VecDeque<Entry>,
    rows: usize,
    closing: bool,
}

#[derive(Debug)]
struct Shared {
    url: String,
    dataset: Arc<str>,
    capacity: usize,
    batch_rows: usize,
    buffer: Mutex<Buffer>,
    wake: Notify,
    sent: AtomicU64,
    failed: AtomicU64,
    breaker: AtomicU8,
    rows_buffered: IntGauge,
    errors: IntCounter,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Shared {
    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_breaker(&self, state: BreakerState) {
        let v = match state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.breaker.store(v, Ordering::Relaxed);
    }

    /// Drops the `entries` oldest entries, holding `rows` rows, once the sink
    /// acknowledged them.
    fn acknowledge(&self, entries: usize, rows: usize) {
        let mut buffer = self.buffer();
        let n = entries.min(buffer.entries.len());
        buffer.entries.drain(..n);
        buffer.rows = buffer.rows.saturating_sub(rows);
        drop(buffer);
        self.rows_buffered.sub(rows as i64);
        self.sent.fetch_add(rows as u64, Ordering::Relaxed);
    }
}

/// A handle on the sink's buffer. Clones share the buffer and its task.
#[derive(Debug, Clone)]
pub struct SinkHandle {
    shared: Arc<Shared>,
}

/// Starts the sink's task on the current tokio runtime and returns its
/// handle. `metrics` receives `fletcher_sink_rows_buffered` and
/// `fletcher_sink_errors_total`. Nothing connects before the first rows are
/// sent, so an unreachable sink is no error here.
pub fn start_sink(config: SinkConfig, metrics: &Metrics) -> Result<SinkHandle, SinkError> {
    for (value, name) in [
        (config.buffer_rows, "buffer_rows"),
        (config.batch_rows, "batch_rows"),
    ] {
        if value == 0 {
            return Err(SinkError::Config(name));
        }
    }
    let endpoint = endpoint(&config.url)?
        .connect_timeout(config.rpc_timeout.min(Duration::from_secs(5)))
        .tcp_nodelay(true);
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SinkError::NoRuntime)?;
    let shared = Arc::new(Shared {
        url: config.url.clone(),
        dataset: Arc::from(config.dataset.as_str()),
        capacity: config.buffer_rows,
        batch_rows: config.batch_rows,
        buffer: Mutex::new(Buffer::default()),
        wake: Notify::new(),
        sent: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        breaker: AtomicU8::new(0),
        rows_buffered: metrics.sink_rows_buffered.clone(),
        errors: metrics.sink_errors_total.clone(),
        task: Mutex::new(None),
    });
    let channel = {
        let _entered = runtime.enter();
        endpoint.connect_lazy()
    };
    let sender = task::Sender::new(shared.clone(), channel, &config);
    let handle = runtime.spawn(sender.run());
    *shared.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    Ok(SinkHandle { shared })
}

/// The endpoint for a `grpc://HOST:PORT` address.
fn endpoint(url: &str) -> Result<Endpoint, SinkError> {
    let invalid = |reason: String| SinkError::Url {
        url: url.to_owned(),
        reason,
    };
    let rest = ["grpc://", "grpc+tcp://", "http://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| {
            invalid("expected grpc://HOST:PORT; TLS sinks (grpc+tls://) are not supported".into())
        })?;
    if rest.is_empty() || rest.contains('/') {
        return Err(invalid("expected grpc://HOST:PORT with no path".to_owned()));
    }
    Endpoint::from_shared(format!("http://{rest}")).map_err(|e| invalid(e.to_string()))
}

impl SinkHandle {
    /// Buffers `batch` for the default dataset; see
    /// [`submit_to`](Self::submit_to).
    pub fn submit(&self, batch: RecordBatch) -> Result<(), SinkError> {
        let dataset = self.shared.dataset.clone();
        self.push(dataset, batch)
    }

    /// Buffers `batch` for `dataset` and returns at once: all its rows are
    /// taken, or none and [`SinkError::Full`] when the buffer lacks room
    /// ([`SinkError::TooLarge`] when it never has that much).
    pub fn submit_to(&self, dataset: &str, batch: RecordBatch) -> Result<(), SinkError> {
        let dataset = if dataset == &*self.shared.dataset {
            self.shared.dataset.clone()
        } else {
            Arc::from(dataset)
        };
        self.push(dataset, batch)
    }

    fn push(&self, dataset: Arc<str>, batch: RecordBatch) -> Result<(), SinkError> {
        let rows = batch.num_rows();
        let capacity = self.shared.capacity;
        if rows == 0 {
            return Ok(());
        }
        if rows > capacity {
            return Err(SinkError::TooLarge { rows, capacity });
        }
        let mut buffer = self.shared.buffer();
        if buffer.closing {
            return Err(SinkError::Closed);
        }
        if buffer.rows + rows > capacity {
            return Err(SinkError::Full {
                rows,
                buffered: buffer.rows,
                capacity,
            });
        }
        let queued = Instant::now();
        let step = self.shared.batch_rows;
        for offset in (0..rows).step_by(step) {
            buffer.entries.push_back(Entry {
                dataset: dataset.clone(),
                batch: batch.slice(offset, step.min(rows - offset)),
                queued,
            });
        }
        buffer.rows += rows;
        drop(buffer);
        self.shared.rows_buffered.add(rows as i64);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Rows the buffer can take now.
    pub fn room(&self) -> usize {
        self.shared
            .capacity
            .saturating_sub(self.shared.buffer().rows)
    }

    /// The buffer's size in rows.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// The dataset of rows submitted without one.
    pub fn dataset(&self) -> &str {
        &self.shared.dataset
    }

    /// A snapshot of the buffer, the counters and the breaker.
    pub fn status(&self) -> SinkStatus {
        SinkStatus {
            url: self.shared.url.clone(),
            dataset: self.shared.dataset.to_string(),
            buffered_rows: self.shared.buffer().rows,
            capacity: self.shared.capacity,
            sent_rows: self.shared.sent.load(Ordering::Relaxed),
            failed_calls: self.shared.failed.load(Ordering::Relaxed),
            breaker: BreakerState::from_u8(self.shared.breaker.load(Ordering::Relaxed)),
        }
    }

    /// Stops taking rows, sends what the buffer holds for at most `timeout`,
    /// then stops the task and reports what was sent and what was not. Rows
    /// the sink has not acknowledged by then count as unsent, even when a
    /// call carrying them was on its way. Every clone of the handle refuses
    /// rows afterwards; a second call reports at once.
    pub async fn shutdown(self, timeout: Duration) -> SinkReport {
        self.shared.buffer().closing = true;
        self.shared.wake.notify_one();
        let task = self
            .shared
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(mut task) = task {
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                task.abort();
                // The task was aborted; its outcome carries nothing to report.
                let _ = task.await;
            }
        }
        let report = SinkReport {
            sent: self.shared.sent.load(Ordering::Relaxed),
            unsent: self.shared.buffer().rows,
        };
        if report.unsent > 0 {
            tracing::error!(
                url = %self.shared.url,
                unsent = report.unsent,
                "the sink stopped with rows it never acknowledged"
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_addresses_need_a_grpc_scheme_and_no_path() {
        assert!(endpoint("grpc://127.0.0.1:8815").is_ok());
        assert!(endpoint("grpc+tcp://localhost:1").is_ok());
        let err = endpoint("grpc+tls://host:1").unwrap_err();
        assert!(err.to_string().contains("TLS sinks"), "{err}");
        assert!(endpoint("grpc://host:1/x").is_err());
        assert!(endpoint("host:1").is_err());
    }

    #[test]
    fn start_needs_a_runtime_and_non_zero_sizes() {
        let metrics = Metrics::new();
        let config = SinkConfig::new("grpc://127.0.0.1:1", "d");
        assert!(matches!(
            start_sink(config.clone(), &metrics),
            Err(SinkError::NoRuntime)
        ));
        let zero = SinkConfig {
            batch_rows: 0,
            ..config
        };
        assert!(matches!(
            start_sink(zero, &metrics),
            Err(SinkError::Config("batch_rows"))
        ));
    }
}
