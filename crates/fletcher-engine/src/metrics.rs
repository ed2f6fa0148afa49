//! The engine's Prometheus metrics, with the names, types and labels that
//! dashboards expect.
//!
//! The `gpu` and `metal` prefixes are historical: on a CPU device they
//! describe that device and its buffer pool.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry,
};

/// Every metric the engine and its front ends report.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Sequences per second of the device's last batch.
    pub gpu_throughput: GaugeVec,
    /// Seconds of the device's last batch.
    pub gpu_batch_time_seconds: GaugeVec,
    /// Batches run per device.
    pub gpu_batch_count_total: IntCounterVec,
    /// Sequences encoded per device.
    pub gpu_sequences_total: IntCounterVec,
    /// Tokens encoded per device.
    pub gpu_tokens_total: IntCounterVec,
    /// Share of work the dispatcher gives each device.
    pub gpu_weight: GaugeVec,
    /// Seconds per model stage (`layer_type`) and device.
    pub gpu_layer_duration_seconds: HistogramVec,
    /// Buffer-pool reuses.
    pub metal_pool_hits_total: IntCounter,
    /// Buffer-pool allocations.
    pub metal_pool_misses_total: IntCounter,
    /// Bytes held by buffer pools.
    pub metal_pool_size_bytes: IntGauge,
    /// Buffers held by buffer pools.
    pub metal_pool_buffers_count: IntGauge,
    /// Texts answered from the embedding cache.
    pub cache_hits_total: IntCounter,
    /// Texts the cache could not answer.
    pub cache_misses_total: IntCounter,
    /// Bytes held by the embedding cache's memory tier.
    pub cache_bytes: IntGauge,
    /// Entries held by the embedding cache's memory tier.
    pub cache_entries: IntGauge,
    /// Failed calls to the embedding cache's Redis tier.
    pub cache_redis_errors_total: IntCounter,
    /// Seconds spent tokenizing one request.
    pub tokenization_duration_seconds: Histogram,
    /// Tokens per second of the last tokenization.
    pub tokenization_throughput: Gauge,
    /// Sequences per batch.
    pub batch_size_distribution: Histogram,
    /// Vectors refused for holding NaN or infinity.
    pub output_invalid_total: IntCounter,
    /// Panics caught in device workers.
    pub panics_total: IntCounter,
    /// Seconds from a request's arrival to its answer, by route.
    pub request_duration_seconds: HistogramVec,
    /// Vectors returned to clients.
    pub vectors_processed_total: IntCounter,
    /// Texts admitted and not yet answered.
    pub inputs_in_flight: IntGauge,
    /// Texts waiting in the batching queue.
    pub queue_depth: IntGauge,
    /// Requests refused or failed, by error type.
    pub errors_total: IntCounterVec,
    /// Texts embedded per dataset named by the request.
    pub dataset_inputs_total: IntCounterVec,
    /// Arrow Flight calls, by method.
    pub flight_requests_total: IntCounterVec,
    /// Bytes of Flight data messages sent to Flight clients.
    pub flight_bytes_sent_total: IntCounter,
    /// Seconds from a Flight call's arrival to the end of its answer, by
    /// method.
    pub flight_duration_seconds: HistogramVec,
    /// Rows in the Flight sink's buffer, not yet acknowledged by the sink.
    pub sink_rows_buffered: IntGauge,
    /// Failed attempts to send rows to the Flight sink.
    pub sink_errors_total: IntCounter,
}

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).unwrap_or_default()
}

impl Metrics {
    /// Creates the metrics in a registry of their own.
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric.expect("metric definitions are static and valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let device = &["device"];
        let seconds = exponential(1e-4, 2.0, 18);
        Self {
            gpu_throughput: register!(GaugeVec::new(
                Opts::new(
                    "fletcher_gpu_throughput",
                    "GPU throughput in sequences per second"
                ),
                device
            )),
            gpu_batch_time_seconds: register!(GaugeVec::new(
                Opts::new(
                    "fletcher_gpu_batch_time_seconds",
                    "Last batch processing time in seconds"
                ),
                device
            )),
            gpu_batch_count_total: register!(IntCounterVec::new(
                Opts::new(
                    "fletcher_gpu_batch_count_total",
                    "Total number of batches processed"
                ),
                device
            )),
            gpu_sequences_total: register!(IntCounterVec::new(
                Opts::new(
                    "fletcher_gpu_sequences_total",
                    "Total number of sequences processed"
                ),
                device
            )),
            gpu_tokens_total: register!(IntCounterVec::new(
                Opts::new(
                    "fletcher_gpu_tokens_total",
                    "Total number of tokens processed"
                ),
                device
            )),
            gpu_weight: register!(GaugeVec::new(
                Opts::new(
                    "fletcher_gpu_weight",
                    "Current load balancing weight (based on throughput)"
                ),
                device
            )),
            gpu_layer_duration_seconds: register!(HistogramVec::new(
                HistogramOpts::new(
                    "fletcher_gpu_layer_duration_seconds",
                    "Time spent in specific model layers"
                )
                .buckets(exponential(1e-5, 2.5, 16)),
                &["layer_type", "device"]
            )),
            metal_pool_hits_total: register!(IntCounter::new(
                "fletcher_metal_pool_hits_total",
                "Total successful buffer pool retrievals"
            )),
            metal_pool_misses_total: register!(IntCounter::new(
                "fletcher_metal_pool_misses_total",
                "Total buffer pool misses (allocations)"
            )),
            metal_pool_size_bytes: register!(IntGauge::new(
                "fletcher_metal_pool_size_bytes",
                "Current total size of buffers in pool"
            )),
            metal_pool_buffers_count: register!(IntGauge::new(
                "fletcher_metal_pool_buffers_count",
                "Current number of buffers in pool"
            )),
            cache_hits_total: register!(IntCounter::new(
                "fletcher_cache_hits_total",
                "Embedding cache hits"
            )),
            cache_misses_total: register!(IntCounter::new(
                "fletcher_cache_misses_total",
                "Embedding cache misses"
            )),
            cache_bytes: register!(IntGauge::new(
                "fletcher_cache_bytes",
                "Bytes held by the embedding cache's memory tier"
            )),
            cache_entries: register!(IntGauge::new(
                "fletcher_cache_entries",
                "Entries held by the embedding cache's memory tier"
            )),
            cache_redis_errors_total: register!(IntCounter::new(
                "fletcher_cache_redis_errors_total",
                "Failed calls to the embedding cache's Redis tier"
            )),
            tokenization_duration_seconds: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "fletcher_tokenization_duration_seconds",
                    "Time spent in tokenization"
                )
                .buckets(seconds.clone())
            )),
            tokenization_throughput: register!(Gauge::new(
                "fletcher_tokenization_throughput",
                "Tokenization throughput (tokens/sec)"
            )),
            batch_size_distribution: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "fletcher_batch_size_distribution",
                    "Distribution of processed batch sizes"
                )
                .buckets(exponential(1.0, 2.0, 14))
            )),
            output_invalid_total: register!(IntCounter::new(
                "fletcher_output_invalid_total",
                "Total invalid outputs (NaNs)"
            )),
            panics_total: register!(IntCounter::new(
                "fletcher_panics_total",
                "Total recovered panics in worker routines"
            )),
            request_duration_seconds: register!(HistogramVec::new(
                HistogramOpts::new(
                    "fletcher_request_duration_seconds",
                    "Seconds from a request's arrival to its answer"
                )
                .buckets(seconds),
                &["route"]
            )),
            vectors_processed_total: register!(IntCounter::new(
                "fletcher_vectors_processed_total",
                "Vectors returned to clients"
            )),
            inputs_in_flight: register!(IntGauge::new(
                "fletcher_inputs_in_flight",
                "Texts admitted and not yet answered"
            )),
            queue_depth: register!(IntGauge::new(
                "fletcher_queue_depth",
                "Texts waiting in the batching queue"
            )),
            errors_total: register!(IntCounterVec::new(
                Opts::new(
                    "fletcher_errors_total",
                    "Requests refused or failed, by error type"
                ),
                &["error_type"]
            )),
            dataset_inputs_total: register!(IntCounterVec::new(
                Opts::new(
                    "fletcher_dataset_inputs_total",
                    "Texts embedded per dataset"
                ),
                &["dataset"]
            )),
            flight_requests_total: register!(IntCounterVec::new(
                Opts::new(
                    "fletcher_flight_requests_total",
                    "Arrow Flight calls, by method"
                ),
                &["method"]
            )),
            flight_bytes_sent_total: register!(IntCounter::new(
                "fletcher_flight_bytes_sent_total",
                "Bytes of Flight data messages sent to Flight clients"
            )),
            flight_duration_seconds: register!(HistogramVec::new(
                HistogramOpts::new(
                    "fletcher_flight_duration_seconds",
                    "Seconds from a Flight call's arrival to the end of its answer"
                )
                .buckets(exponential(1e-4, 2.0, 22)),
                &["method"]
            )),
            sink_rows_buffered: register!(IntGauge::new(
                "fletcher_sink_rows_buffered",
                "Rows in the Flight sink's buffer, not yet acknowledged by the sink"
            )),
            sink_errors_total: register!(IntCounter::new(
                "fletcher_sink_errors_total",
                "Failed attempts to send rows to the Flight sink"
            )),
            registry,
        }
    }

    /// The registry holding every metric, for exposition.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let families = self.registry.gather();
        // Text encoding into a String only fails on invalid metric data,
        // which the static definitions above rule out.
        let _ = prometheus::TextEncoder::new().encode_utf8(&families, &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Buffer pools report to the `fletcher_metal_pool_*` metrics. Several pools
/// (one per device) add up: the gauges move by each pool's changes.
impl fletcher_model::PoolObserver for Metrics {
    fn hit(&self) {
        self.metal_pool_hits_total.inc();
    }

    fn miss(&self) {
        self.metal_pool_misses_total.inc();
    }

    fn held(&self, bytes_delta: i64, buffers_delta: i64) {
        self.metal_pool_size_bytes.add(bytes_delta);
        self.metal_pool_buffers_count.add(buffers_delta);
    }
}
