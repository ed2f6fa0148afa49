//! The shared tier: vectors in Redis, reached through one multiplexed
//! connection that reconnects by itself, every call bounded in time and
//! skipped altogether while a circuit breaker is open.
//!
//! Values are the vector's components as little-endian `f32` bytes, stored
//! under `prefix + hex(key)`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::breaker::{Breaker, Tripped};
use super::{CacheConfig, CacheError, CacheKey};
use crate::Metrics;

/// Least time between two warnings about errors that do not change the
/// breaker's state.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Longest a background connection attempt may take; calls stop waiting for
/// it after the configured timeout, the attempt itself goes on to this limit.
const CONNECT_LIMIT: Duration = Duration::from_secs(1);

/// Why one Redis call produced nothing.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("connection setup: {0}")]
    Setup(String),
}

/// The Redis tier of one cache.
pub(super) struct RedisTier {
    client: redis::Client,
    connection: OnceLock<Result<ConnectionManager, String>>,
    /// The URL with any password hidden, for logs.
    url: String,
    prefix: String,
    timeout: Duration,
    ttl_millis: Option<u64>,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Milliseconds after `started` of the last rate-limited warning, plus
    /// one; zero when none was logged yet.
    last_warning: AtomicU64,
}

impl RedisTier {
    /// Parses `url`; connects on first use, never here.
    pub fn new(url: &str, config: &CacheConfig, metrics: Arc<Metrics>) -> Result<Self, CacheError> {
        let redacted = redact(url);
        let client = redis::Client::open(url).map_err(|e| CacheError::RedisUrl {
            url: redacted.clone(),
            message: e.to_string(),
        })?;
        let ttl_millis = config
            .ttl
            .map(|ttl| u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(Self {
            client,
            connection: OnceLock::new(),
            url: redacted,
            prefix: config.key_prefix.clone(),
            timeout: config.redis_timeout,
            ttl_millis,
            breaker: Breaker::new(
                config.breaker_threshold,
                config.breaker_cool_down,
                config.redis_timeout.saturating_mul(2),
            ),
            metrics,
            started: Instant::now(),
            last_warning: AtomicU64::new(0),
        })
    }

    /// Whether calls are skipped because the breaker is open.
    pub fn is_degraded(&self) -> bool {
        self.breaker.is_open()
    }

    /// Checks the connection once, so that the first request finds it open.
    pub async fn warm_up(&self) {
        let _ = self
            .call("PING", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await;
    }

    /// The stored vector of each key, `None` where Redis has none or could
    /// not answer in time. Always `keys.len()` answers.
    pub async fn get_many(&self, keys: &[CacheKey]) -> Vec<Option<Arc<[f32]>>> {
        if keys.is_empty() {
            return Vec::new();
        }
        let mut cmd = redis::cmd("MGET");
        for key in keys {
            cmd.arg(self.name(key));
        }
        let cmd = &cmd;
        let found = self
            .call("MGET", |mut conn| async move {
                cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await
            })
            .await;
        let Some(values) = found else {
            return vec![None; keys.len()];
        };
        if values.len() != keys.len() {
            self.metrics.cache_redis_errors_total.inc();
            tracing::warn!(
                url = %self.url,
                asked = keys.len(),
                answered = values.len(),
                "Redis cache answered MGET with the wrong number of values"
            );
            return vec![None; keys.len()];
        }
        values
            .into_iter()
            .zip(keys)
            .map(|(value, key)| {
                let bytes = value?;
                let vector = decode(&bytes);
                if vector.is_none() {
                    self.metrics.cache_redis_errors_total.inc();
                    tracing::debug!(
                        url = %self.url,
                        key = %key.to_hex(),
                        bytes = bytes.len(),
                        "Redis cache value is not a vector of f32; treated as a miss"
                    );
                }
                vector
            })
            .collect()
    }

    /// Stores the vectors in one pipeline of `SET`s, with the configured
    /// expiry. Failures are counted and logged, never returned.
    pub async fn put_many(&self, entries: &[(CacheKey, Arc<[f32]>)]) {
        if entries.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, vector) in entries {
            pipe.cmd("SET").arg(self.name(key)).arg(encode(vector));
            if let Some(ms) = self.ttl_millis {
                pipe.arg("PX").arg(ms);
            }
            pipe.ignore();
        }
        let pipe = &pipe;
        let _ = self
            .call(
                "SET",
                |mut conn| async move { pipe.exec_async(&mut conn).await },
            )
            .await;
    }

    fn name(&self, key: &CacheKey) -> String {
        let mut name = String::with_capacity(self.prefix.len() + 64);
        name.push_str(&self.prefix);
        name.push_str(&key.to_hex());
        name
    }

    fn connection(&self) -> Result<ConnectionManager, String> {
        self.connection
            .get_or_init(|| {
                let config = ConnectionManagerConfig::new()
                    .set_number_of_retries(0)
                    .set_connection_timeout(Some(CONNECT_LIMIT.max(self.timeout)))
                    .set_response_timeout(Some(self.timeout));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Runs `op` through the breaker within the timeout. An attempt that
    /// fails on a broken connection is tried once more on the fresh
    /// connection the manager starts, inside the same time limit.
    async fn call<T, F, Fut>(&self, what: &'static str, op: F) -> Option<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.admit() {
            return None;
        }
        let outcome = match self.connection() {
            Err(message) => Err(CallError::Setup(message)),
            Ok(conn) => {
                let attempts = async {
                    match op(conn.clone()).await {
                        Err(e) if e.is_io_error() || e.is_unrecoverable_error() => op(conn).await,
                        other => other,
                    }
                };
                match tokio::time::timeout(self.timeout, attempts).await {
                    Ok(result) => result.map_err(CallError::from),
                    Err(_) => Err(CallError::Timeout(self.timeout)),
                }
            }
        };
        match outcome {
            Ok(value) => {
                if self.breaker.success() {
                    tracing::info!(url = %self.url, "Redis cache reachable again");
                }
                Some(value)
            }
            Err(error) => {
                self.failed(what, &error);
                None
            }
        }
    }

    fn failed(&self, what: &'static str, error: &CallError) {
        self.metrics.cache_redis_errors_total.inc();
        match self.breaker.failure() {
            Tripped::Opened => tracing::warn!(
                url = %self.url,
                command = what,
                %error,
                cool_down = ?self.breaker_cool_down(),
                "Redis cache unreachable; answering from memory alone until a probe after the cool-down succeeds"
            ),
            Tripped::Reopened => tracing::debug!(
                url = %self.url,
                command = what,
                %error,
                "Redis cache probe failed"
            ),
            Tripped::No => {
                if self.may_warn() {
                    tracing::warn!(url = %self.url, command = what, %error, "Redis cache call failed");
                } else {
                    tracing::debug!(url = %self.url, command = what, %error, "Redis cache call failed");
                }
            }
        }
    }

    fn breaker_cool_down(&self) -> Duration {
        self.breaker.cool_down()
    }

    /// Whether a rate-limited warning may be logged now; claims the slot if
    /// so.
    fn may_warn(&self) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_warning.load(Ordering::Relaxed);
        let interval = WARN_INTERVAL.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= interval)
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

impl std::fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("ttl_millis", &self.ttl_millis)
            .field("degraded", &self.is_degraded())
            .finish()
    }
}

/// The vector as Redis stores it: each component as little-endian `f32`.
pub(super) fn encode(vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(vector.len() * 4);
    for x in vector {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes
}

/// The vector stored as `bytes`; `None` unless they are a whole, non-zero
/// number of `f32`s.
pub(super) fn decode(bytes: &[u8]) -> Option<Arc<[f32]>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// `url` with the password between `://` and `@` replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user_info = &rest[..at];
    let user = user_info.split(':').next().unwrap_or("");
    if user_info.contains(':') {
        format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
    } else {
        format!("{}***{}", &url[..scheme_end], &rest[at..])
    }
}
