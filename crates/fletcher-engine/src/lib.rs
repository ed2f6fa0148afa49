//! Fletcher's embedding engine: from texts to vectors.
//!
//! [`Embedder`] is the one door into the engine. It owns a tokenizer, a model
//! replica and a thread pool; it tokenizes texts, groups them into ragged
//! batches bounded in tokens (sorted by length, never padded), runs the
//! encoder, pools and normalizes, and answers in input order.

mod batch;
pub mod cache;
mod ceiling;
pub mod device;
mod embedder;
mod engine;
mod error;
pub mod hub;
mod metrics;
mod queue;
mod tokenize;

pub use ceiling::ceiling_gflops;
pub use embedder::{EmbedOptions, Embedder, LoadOptions, Prompts};
pub use engine::{EmbedRequest, Embedded, Engine, EngineConfig, Timings};
pub use error::EngineError;
pub use fletcher_model::Pooling;
pub use metrics::Metrics;
pub use tokenize::{TokenInfo, TruncationSide};
