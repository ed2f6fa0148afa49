//! Model side of Fletcher: reading a Hugging Face / sentence-transformers
//! model directory, memory-mapping its safetensors weights, running the
//! encoder on ragged batches (sequences laid end to end, no padding) and
//! pooling the hidden states into sentence embeddings.
//!
//! The usual path is [`ModelDir::open`] → [`ModelDir::load_encoder`] →
//! [`Encoder::forward`] → [`pool`]. Encoders run their kernels on the current
//! rayon pool, so a caller picks the thread count by installing a pool
//! around `forward`.

pub mod bert;
pub mod config;
pub mod error;
pub mod pool;
pub mod pooling;
pub mod weights;

use std::time::Duration;

pub use config::{Architecture, ModelConfig, ModelDir, SentenceTransformerConfig};
pub use error::ModelError;
pub use pool::{BufferPool, PoolLimits, PoolObserver, PoolStats, PooledBuffer};
pub use pooling::{pool, Pooling};
pub use weights::Weights;

/// Token ids of several sequences laid end to end (no padding).
///
/// Sequence `i` is `cu_seqlens[i]..cu_seqlens[i + 1]` of `input_ids` and
/// `token_type_ids`; `cu_seqlens` starts at 0 and ends at the token count.
/// `token_type_ids` may be empty, meaning every token has type 0.
#[derive(Debug, Clone, Copy)]
pub struct RaggedBatch<'a> {
    /// Token ids, `[tokens]`.
    pub input_ids: &'a [u32],
    /// Token type (segment) ids, `[tokens]`, or empty for all zeros.
    pub token_type_ids: &'a [u32],
    /// Sequence offsets, `[sequences + 1]`.
    pub cu_seqlens: &'a [usize],
}

impl RaggedBatch<'_> {
    /// Tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// Sequences in the batch (0 when `cu_seqlens` is empty).
    pub fn num_sequences(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Checks the batch is self-consistent: `cu_seqlens` is non-empty,
    /// starts at 0, never decreases and ends at `input_ids.len()`, and
    /// `token_type_ids` is empty or as long as `input_ids`.
    pub fn validate(&self) -> Result<(), ModelError> {
        let tokens = self.input_ids.len();
        let (Some(&first), Some(&last)) = (self.cu_seqlens.first(), self.cu_seqlens.last()) else {
            return Err(ModelError::InvalidBatch("cu_seqlens is empty".to_string()));
        };
        if first != 0 {
            return Err(ModelError::InvalidBatch(format!(
                "cu_seqlens starts at {first}, not 0"
            )));
        }
        if last != tokens {
            return Err(ModelError::InvalidBatch(format!(
                "cu_seqlens ends at {last} but the batch has {tokens} tokens"
            )));
        }
        if let Some(i) = self.cu_seqlens.windows(2).position(|w| w[1] < w[0]) {
            return Err(ModelError::InvalidBatch(format!(
                "cu_seqlens decreases at index {}: {} then {}",
                i + 1,
                self.cu_seqlens[i],
                self.cu_seqlens[i + 1]
            )));
        }
        if !self.token_type_ids.is_empty() && self.token_type_ids.len() != tokens {
            return Err(ModelError::InvalidBatch(format!(
                "{} token type ids for {tokens} tokens",
                self.token_type_ids.len()
            )));
        }
        Ok(())
    }
}

/// A stage of the model whose time is reported per batch, summed over
/// layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Embedding lookups and their layer norm.
    Embeddings,
    /// Self-attention: the QKV projection, attention, the output
    /// projection and its residual layer norm.
    Attention,
    /// The feed-forward block and its residual layer norm.
    FeedForward,
    /// Pooling hidden states into sentence vectors.
    Pooling,
}

impl Stage {
    /// The stage as the `layer_type` metric label names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embeddings => "embeddings",
            Self::Attention => "attention",
            Self::FeedForward => "feed_forward",
            Self::Pooling => "pooling",
        }
    }
}

/// A transformer encoder that maps a ragged batch of token ids to final
/// hidden states.
pub trait Encoder: Send + Sync + std::fmt::Debug {
    /// Width of the hidden states.
    fn hidden_size(&self) -> usize;

    /// Most tokens a sequence may have (for XLM-R:
    /// `max_position_embeddings - padding_idx - 1`).
    fn max_positions(&self) -> usize;

    /// Final hidden states, `[tokens, hidden]`, row `t` belonging to token
    /// `t` of the batch. Each sequence attends only to itself, so a
    /// sequence's rows do not depend on the rest of the batch.
    ///
    /// Errors (never panics) on ids out of vocabulary range, a sequence
    /// longer than [`Encoder::max_positions`], or inconsistent `cu_seqlens`.
    fn forward(&self, batch: &RaggedBatch<'_>) -> Result<Vec<f32>, ModelError>;

    /// As [`Encoder::forward`], taking activation and workspace buffers from
    /// `pool` (and returning them to it) and calling `timer` once per batch
    /// for each of [`Stage::Embeddings`], [`Stage::Attention`] and
    /// [`Stage::FeedForward`] with the stage's time summed over layers. The
    /// result comes from the pool too: hand it back with
    /// [`BufferPool::give_back`] once done with it.
    ///
    /// The default ignores the pool and reports no stages.
    fn forward_pooled(
        &self,
        batch: &RaggedBatch<'_>,
        pool: &BufferPool,
        timer: &mut dyn FnMut(Stage, Duration),
    ) -> Result<Vec<f32>, ModelError> {
        let _ = (pool, timer);
        self.forward(batch)
    }

    /// Floating-point operations to encode one sequence of `len` tokens
    /// (linear layers and attention; a multiply-add counts as two).
    fn flops(&self, len: usize) -> f64;

    /// Bytes of weights held in memory outside the memory map: packed linear
    /// layers, layer-norm parameters, and embedding tables that had to be
    /// converted or copied.
    fn packed_bytes(&self) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_validation() {
        let ids = [1, 2, 3];
        let ok = RaggedBatch {
            input_ids: &ids,
            token_type_ids: &[],
            cu_seqlens: &[0, 1, 3],
        };
        ok.validate().unwrap();
        assert_eq!((ok.num_tokens(), ok.num_sequences()), (3, 2));
        let bad = [
            RaggedBatch {
                cu_seqlens: &[],
                ..ok
            },
            RaggedBatch {
                cu_seqlens: &[1, 3],
                ..ok
            },
            RaggedBatch {
                cu_seqlens: &[0, 2],
                ..ok
            },
            RaggedBatch {
                cu_seqlens: &[0, 2, 1, 3],
                ..ok
            },
            RaggedBatch {
                token_type_ids: &[0, 0],
                ..ok
            },
        ];
        for b in bad {
            assert!(
                matches!(b.validate(), Err(ModelError::InvalidBatch(_))),
                "{b:?}"
            );
        }
    }
}
