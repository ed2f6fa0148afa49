//! The options of `fletcher serve`.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use fletcher_engine::cache::CacheConfig;
use fletcher_engine::device::DeviceSpec;
use fletcher_engine::{EngineConfig, LoadOptions, Pooling, TruncationSide};
use fletcher_flight::FlightArgs;

use crate::Settings;

/// Options of `fletcher serve`: the model to load, the engine's limits and
/// the server's own.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Model directory, or Hugging Face Hub id (`org/name[@revision]`).
    #[arg(long)]
    pub model: String,

    /// Threads that run the model (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Pooling instead of the model's own config: cls, mean, max,
    /// mean_sqrt_len_tokens, lasttoken.
    #[arg(long)]
    pub pooling: Option<Pooling>,

    /// Whether vectors are L2-normalized by default (default: the model's
    /// Normalize module).
    #[arg(long)]
    pub normalize: Option<bool>,

    /// Most tokens of one text, special tokens included (default: the
    /// model's max_seq_length).
    #[arg(long)]
    pub max_seq_length: Option<usize>,

    /// Which end of an over-long text is cut by default: left or right.
    #[arg(long, default_value = "right")]
    pub truncation_side: TruncationSide,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Most tokens in one batch.
    #[arg(long, default_value_t = 16_384)]
    pub max_batch_tokens: usize,

    /// Most texts in one batch (default: no limit beyond tokens).
    #[arg(long)]
    pub max_batch_requests: Option<usize>,

    /// Most texts admitted and not yet answered, over all requests; a
    /// request that would pass it is refused at once with 429.
    #[arg(long, default_value_t = 4096)]
    pub max_concurrent_inputs: usize,

    /// Most texts in one request; more are refused with 422.
    #[arg(long, default_value_t = 512)]
    pub max_client_batch_size: usize,

    /// Seconds a request may wait for its vectors before a 504.
    #[arg(long, value_parser = parse_seconds)]
    pub request_timeout: Option<Duration>,

    /// Most bytes in one request body; more are refused with 413.
    #[arg(long, default_value_t = 2_000_000)]
    pub payload_limit: usize,

    /// Require `Authorization: Bearer <key>` on every route but /health
    /// and /metrics.
    #[arg(long, env = "FLETCHER_API_KEY", hide_env_values = true)]
    pub api_key: Option<ApiKey>,

    /// Cut over-long texts when a request does not say (`--auto-truncate
    /// false` refuses them with 422).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_truncate: bool,

    /// Log one JSON object a line instead of text.
    #[arg(long)]
    pub json_logs: bool,

    /// Devices to run the model on, comma-separated: `cpu:N` is a device
    /// of N cores with its own threads (for example `cpu:1,cpu:1`)
    /// [default: one device with every core].
    #[arg(long, value_parser = parse_devices)]
    pub devices: Option<DeviceList>,

    /// Bytes of embedding cache in memory; 0 turns the memory tier off.
    #[arg(long, default_value_t = 256 << 20)]
    pub cache_capacity: u64,

    /// Redis server shared by replicas as a second cache tier
    /// (`redis://HOST:PORT`).
    #[arg(long, env = "FLETCHER_CACHE_URL")]
    pub cache_url: Option<String>,

    /// Seconds an entry lives in Redis [default: until Redis evicts it].
    #[arg(long, value_parser = parse_seconds)]
    pub cache_ttl: Option<Duration>,

    /// Prefix of every Redis key.
    #[arg(long, default_value = "fletcher:")]
    pub cache_prefix: String,

    /// Longest wait for one Redis call, in seconds.
    #[arg(long, default_value = "0.05", value_parser = parse_seconds)]
    pub cache_timeout: Duration,

    /// Allow `POST /admin/fault` to make a device panic, emit NaN or slow
    /// down. For tests only; never on a production server.
    #[arg(long, hide = true)]
    pub fault_injection: bool,

    /// The Arrow Flight service and the sink.
    #[command(flatten)]
    pub flight: FlightArgs,
}

impl ServeArgs {
    /// How the model is loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            threads: self.threads,
            pooling: self.pooling,
            normalize: self.normalize,
            max_seq_length: self.max_seq_length,
            truncation_side: self.truncation_side,
            max_batch_tokens: Some(self.max_batch_tokens),
        }
    }

    /// The engine's limits.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_batch_tokens: self.max_batch_tokens,
            max_batch_requests: self.max_batch_requests.unwrap_or(usize::MAX),
            max_concurrent_inputs: self.max_concurrent_inputs,
            request_timeout: self.request_timeout,
            devices: self.devices.clone().map(|d| d.0).unwrap_or_default(),
            fault_injection: self.fault_injection,
            cache: Some(CacheConfig {
                capacity_bytes: self.cache_capacity,
                redis_url: self.cache_url.clone(),
                ttl: self.cache_ttl,
                key_prefix: self.cache_prefix.clone(),
                redis_timeout: self.cache_timeout,
                ..CacheConfig::default()
            }),
        }
    }

    /// The server's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            max_client_batch_size: self.max_client_batch_size,
            payload_limit: self.payload_limit,
            api_key: self.api_key.clone(),
            auto_truncate: self.auto_truncate,
            ..Settings::default()
        }
    }
}

/// The devices of `--devices`, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceList(pub Vec<DeviceSpec>);

fn parse_devices(s: &str) -> Result<DeviceList, String> {
    DeviceSpec::parse_list(s).map(DeviceList)
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let seconds: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number of seconds: {e}"))?;
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?} seconds: {e}"))
}

/// An API key. Its `Debug` form hides the key, so it never reaches a log.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key's bytes, for comparison.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<hidden>)")
    }
}

impl FromStr for ApiKey {
    type Err = Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        Self(key)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let cli = Cli::try_parse_from(["x", "--model", "m"]).unwrap();
        let a = cli.serve;
        assert_eq!((a.host.as_str(), a.port), ("0.0.0.0", 8080));
        assert_eq!(a.max_batch_tokens, 16_384);
        assert_eq!(a.max_concurrent_inputs, 4096);
        assert_eq!(a.max_client_batch_size, 512);
        assert_eq!(a.payload_limit, 2_000_000);
        assert!(a.auto_truncate && !a.json_logs);
        assert_eq!(a.request_timeout, None);
        assert_eq!(a.truncation_side, TruncationSide::Right);
    }

    #[test]
    fn options_parse_and_key_stays_hidden() {
        let cli = Cli::try_parse_from([
            "x",
            "--model",
            "m",
            "--auto-truncate",
            "false",
            "--request-timeout",
            "2.5",
            "--pooling",
            "cls",
            "--api-key",
            "sekrit",
            "--truncation-side",
            "Left",
        ])
        .unwrap();
        let a = cli.serve;
        assert!(!a.auto_truncate);
        assert_eq!(a.request_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(a.pooling, Some(Pooling::Cls));
        assert_eq!(a.truncation_side, TruncationSide::Left);
        assert!(!format!("{a:?}").contains("sekrit"));
        assert_eq!(a.settings().api_key.unwrap().as_bytes(), b"sekrit");
        assert!(Cli::try_parse_from(["x", "--model", "m", "--request-timeout", "-1"]).is_err());
    }
}
