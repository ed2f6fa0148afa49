//! The embedding cache: repeated texts answered without running the model.
//!
//! Two tiers, both optional:
//!
//! - a memory tier in this process, bounded in bytes, whose eviction is
//!   TinyLFU: a text is admitted over the entries it would push out only if
//!   it is asked for more often than they are, so a scan of texts seen once
//!   leaves the often-asked texts in place;
//! - a Redis tier shared by every replica pointed at the same server, reached
//!   under a short timeout and behind a circuit breaker, so that a slow or
//!   absent Redis costs a request at most one timeout and, while the breaker
//!   is open, nothing at all.
//!
//! Entries are pooled vectors before normalization and before truncation to
//! `dimensions`; one entry answers every combination of those options. A
//! [`CacheKey`] is built by a [`KeyScope`] from everything else that decides
//! the vector.
//!
//! The cache never fails a request: Redis errors are counted in
//! `fletcher_cache_redis_errors_total` and logged, and the affected texts
//! count as misses.

mod breaker;
mod key;
mod memory;
mod redis_tier;

#[cfg(test)]
mod redis_server;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use key::{model_fingerprint, CacheKey, KeyScope};
pub use memory::{entry_weight, ENTRY_OVERHEAD_BYTES};

use crate::Metrics;
use memory::MemoryTier;
use redis_tier::RedisTier;

/// How the cache is sized and where its shared tier lives.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Most bytes the memory tier holds, as [`entry_weight`] counts them;
    /// 0 turns the memory tier off.
    pub capacity_bytes: u64,
    /// `redis://` or `rediss://` URL of the shared tier; `None` turns it off.
    pub redis_url: Option<String>,
    /// How long an entry lives in Redis (rounded to milliseconds); `None`
    /// keeps it until Redis evicts it, which it does only if the server has a
    /// `maxmemory` policy. The memory tier evicts by size alone.
    pub ttl: Option<Duration>,
    /// Put before every Redis key, so that several deployments may share one
    /// server.
    pub key_prefix: String,
    /// Longest a request waits for one Redis call, connecting included.
    pub redis_timeout: Duration,
    /// Failed Redis calls in a row after which Redis is skipped.
    pub breaker_threshold: u32,
    /// How long Redis is skipped before one call probes it again.
    pub breaker_cool_down: Duration,
}

impl Default for CacheConfig {
    /// 256 MiB in memory, no Redis, no expiry, prefix `fletcher:`, 50 ms
    /// Redis timeout, breaker opening after 3 failures for 5 s.
    fn default() -> Self {
        Self {
            capacity_bytes: 256 << 20,
            redis_url: None,
            ttl: None,
            key_prefix: "fletcher:".to_owned(),
            redis_timeout: Duration::from_millis(50),
            breaker_threshold: 3,
            breaker_cool_down: Duration::from_secs(5),
        }
    }
}

/// Why a cache could not be set up. Nothing fails once it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The Redis URL could not be parsed.
    #[error("Redis URL {url}: {message}")]
    RedisUrl {
        /// The URL, its password hidden.
        url: String,
        /// What the Redis client reported.
        message: String,
    },
    /// A setting is outside what the cache accepts.
    #[error("cache setting {setting} = {value}: {requirement}")]
    InvalidSetting {
        /// The setting's field name in [`CacheConfig`].
        setting: &'static str,
        /// The value given.
        value: String,
        /// What it must be.
        requirement: &'static str,
    },
}

#[derive(Debug)]
struct Inner {
    memory: Option<MemoryTier>,
    redis: Option<Arc<RedisTier>>,
    metrics: Arc<Metrics>,
}

/// The two-tier embedding cache. Clones are handles to the same cache; it is
/// `Send + Sync` and every method takes `&self`.
///
/// The async methods must run inside a Tokio runtime with its timer enabled,
/// and the Redis connection lives on the runtime of the first call that
/// uses it.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    inner: Arc<Inner>,
}

impl EmbeddingCache {
    /// A cache as `config` says, reporting into `metrics`.
    ///
    /// Redis is not contacted here: when called inside a Tokio runtime, a
    /// background task opens the connection; otherwise the first call does.
    /// A Redis that is down at start fails nothing.
    pub fn new(config: CacheConfig, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let memory = (config.capacity_bytes > 0).then(|| MemoryTier::new(config.capacity_bytes));
        let redis = match &config.redis_url {
            None => None,
            Some(url) => {
                if config.redis_timeout.is_zero() {
                    return Err(CacheError::InvalidSetting {
                        setting: "redis_timeout",
                        value: format!("{:?}", config.redis_timeout),
                        requirement: "must be above zero",
                    });
                }
                Some(Arc::new(RedisTier::new(url, &config, metrics.clone())?))
            }
        };
        if let (Some(tier), Ok(runtime)) = (&redis, tokio::runtime::Handle::try_current()) {
            let tier = tier.clone();
            runtime.spawn(async move { tier.warm_up().await });
        }
        let cache = Self {
            inner: Arc::new(Inner {
                memory,
                redis,
                metrics,
            }),
        };
        cache.publish(0, 0);
        Ok(cache)
    }

    /// One answer per key, in order: the memory tier first, then Redis for
    /// the keys memory lacks, in one `MGET` that waits at most the Redis
    /// timeout. Vectors found in Redis are copied into the memory tier.
    ///
    /// Counts every key as one hit or one miss in `fletcher_cache_hits_total`
    /// and `fletcher_cache_misses_total`.
    pub async fn get_many(&self, keys: &[CacheKey]) -> Vec<Option<Arc<[f32]>>> {
        let inner = &*self.inner;
        let mut found: Vec<Option<Arc<[f32]>>> = match &inner.memory {
            Some(memory) => keys.iter().map(|key| memory.get(key)).collect(),
            None => vec![None; keys.len()],
        };
        if let Some(redis) = &inner.redis {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| found[i].is_none()).collect();
            if !missing.is_empty() {
                let asked: Vec<CacheKey> = missing.iter().map(|&i| keys[i]).collect();
                let answers = redis.get_many(&asked).await;
                let mut promoted = false;
                for (&slot, answer) in missing.iter().zip(answers) {
                    if let Some(vector) = answer {
                        if let Some(memory) = &inner.memory {
                            memory.insert(keys[slot], vector.clone());
                            promoted = true;
                        }
                        found[slot] = Some(vector);
                    }
                }
                if promoted {
                    self.settle();
                }
            }
        }
        let hits = found.iter().filter(|v| v.is_some()).count() as u64;
        inner.metrics.cache_hits_total.inc_by(hits);
        inner
            .metrics
            .cache_misses_total
            .inc_by(keys.len() as u64 - hits);
        found
    }

    /// Stores pooled vectors (before normalization and truncation to
    /// `dimensions`) in the memory tier, then in Redis in one pipeline of
    /// `SET`s with the configured expiry.
    ///
    /// Waits at most the Redis timeout for Redis; a caller that must not
    /// wait at all may spawn this on a task, since the cache is cheap to
    /// clone. Redis failures are counted and logged, never returned.
    pub async fn put_many(&self, entries: Vec<(CacheKey, Arc<[f32]>)>) {
        if entries.is_empty() {
            return;
        }
        let inner = &*self.inner;
        if let Some(memory) = &inner.memory {
            for (key, vector) in &entries {
                memory.insert(*key, vector.clone());
            }
            self.settle();
        }
        if let Some(redis) = &inner.redis {
            redis.put_many(&entries).await;
        }
    }

    /// Bytes held by the memory tier as [`entry_weight`] counts them, as of
    /// its last maintenance; never more than the capacity.
    pub fn bytes(&self) -> u64 {
        self.inner.memory.as_ref().map_or(0, MemoryTier::bytes)
    }

    /// Entries held by the memory tier as of its last maintenance.
    pub fn entries(&self) -> u64 {
        self.inner.memory.as_ref().map_or(0, MemoryTier::entries)
    }

    /// Most bytes the memory tier holds; 0 when it is off.
    pub fn capacity_bytes(&self) -> u64 {
        self.inner.memory.as_ref().map_or(0, MemoryTier::capacity)
    }

    /// Whether Redis is configured but being skipped after repeated
    /// failures.
    pub fn redis_degraded(&self) -> bool {
        self.inner.redis.as_ref().is_some_and(|r| r.is_degraded())
    }

    /// Applies the memory tier's pending admissions and evictions and
    /// publishes its size to the gauges.
    fn settle(&self) {
        if let Some(memory) = &self.inner.memory {
            let (bytes, entries) = memory.settle();
            self.publish(bytes, entries);
        }
    }

    fn publish(&self, bytes: u64, entries: u64) {
        let metrics = &self.inner.metrics;
        metrics
            .cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        metrics
            .cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}
