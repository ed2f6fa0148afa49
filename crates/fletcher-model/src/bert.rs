//! BERT-family encoders: BERT, MiniLM, BGE, E5, GTE (BERT-based) and
//! RoBERTa / XLM-RoBERTa, which share the layer layout and differ only in
//! how positions are numbered and whether token types are used.
//!
//! Every module is a struct with `load` (from safetensors, checking shapes
//! against `config.json`) and `forward`:
//!
//! ```text
//! Embeddings:    x = LN(word[id] + position[pos] + token_type[tt])
//! Layer:         qkv = x·Wqkvᵀ + b;  ctx = attention(qkv)
//!                x = LN(ctx·Woᵀ + bo + x)
//!                x = LN(act(x·Wiᵀ + bi)·Wo2ᵀ + bo2 + x)
//! Encoder:       the layers in order
//! ```
//!
//! Tensor names are accepted with any prefix in front of
//! `embeddings.word_embeddings.weight` (none, `bert.`, `roberta.`, `model.`,
//! ...), and layer norms as `weight`/`bias` or the older `gamma`/`beta`.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fletcher_kernels::attention::ragged_attention;
use fletcher_kernels::norm::{add_layer_norm, layer_norm};
use fletcher_kernels::{Activation, PackedLinear};
use rayon::prelude::*;

use crate::config::Architecture;
use crate::pool::{BufferPool, PoolLimits, PooledBuffer};
use crate::weights::{MappedTensor, Weights};
use crate::{Encoder as EncoderTrait, ModelConfig, ModelError, RaggedBatch, Stage};

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// Sizes of a BERT-family model, validated against each other.
#[derive(Debug, Clone, Copy)]
struct Dims {
    hidden: usize,
    heads: usize,
    head_dim: usize,
    intermediate: usize,
    layers: usize,
    vocab: usize,
    positions: usize,
    types: usize,
    eps: f32,
}

impl Dims {
    fn new(c: &ModelConfig, config_path: &Path) -> Result<Self, ModelError> {
        let invalid = |message: String| ModelError::InvalidConfig {
            path: config_path.to_path_buf(),
            message,
        };
        for (name, value) in [
            ("hidden_size", c.hidden_size),
            ("num_attention_heads", c.num_attention_heads),
            ("num_hidden_layers", c.num_hidden_layers),
            ("intermediate_size", c.intermediate_size),
            ("vocab_size", c.vocab_size),
            ("max_position_embeddings", c.max_position_embeddings),
            ("type_vocab_size", c.type_vocab_size),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} is missing or 0")));
            }
        }
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                c.hidden_size, c.num_attention_heads
            )));
        }
        if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps > 0.0) {
            return Err(invalid(format!(
                "layer_norm_eps {} is not positive",
                c.layer_norm_eps
            )));
        }
        if c.position_embedding_type != "absolute" {
            return Err(invalid(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                c.position_embedding_type
            )));
        }
        Ok(Self {
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            head_dim: c.hidden_size / c.num_attention_heads,
            intermediate: c.intermediate_size,
            layers: c.num_hidden_layers,
            vocab: c.vocab_size,
            positions: c.max_position_embeddings,
            types: c.type_vocab_size,
            eps: c.layer_norm_eps as f32,
        })
    }
}

/// Looks tensors up under the prefix the checkpoint uses.
struct Loader<'a> {
    weights: &'a Arc<Weights>,
    prefix: String,
}

impl<'a> Loader<'a> {
    fn new(weights: &'a Arc<Weights>) -> Result<Self, ModelError> {
        let prefix = if weights.contains(WORD_EMBEDDINGS) {
            String::new()
        } else {
            let mut found: Vec<String> = weights
                .names()
                .into_iter()
                .filter_map(|n| n.strip_suffix(WORD_EMBEDDINGS).map(str::to_string))
                .filter(|p| p.ends_with('.'))
                .collect();
            found.sort_by_key(String::len);
            found
                .into_iter()
                .next()
                .ok_or_else(|| ModelError::MissingTensor {
                    name: WORD_EMBEDDINGS.to_string(),
                    path: weights.path().to_path_buf(),
                })?
        };
        Ok(Self { weights, prefix })
    }

    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn f32(&self, name: &str, shape: &[usize]) -> Result<Cow<'a, [f32]>, ModelError> {
        self.weights.f32(&self.name(name), shape)
    }

    fn mapped(&self, name: &str, shape: &[usize]) -> Result<MappedTensor, ModelError> {
        self.weights.mapped(&self.name(name), shape)
    }

    /// `{base}.weight` (`[out, in]`) and `{base}.bias` (`[out]`), packed.
    fn linear(&self, base: &str, out: usize, inp: usize) -> Result<PackedLinear, ModelError> {
        let w = self.f32(&format!("{base}.weight"), &[out, inp])?;
        let b = self.f32(&format!("{base}.bias"), &[out])?;
        Ok(PackedLinear::new(&w, Some(&b), out, inp))
    }

    /// The first of `names` present in the file; errors naming the first.
    fn either(&self, names: [String; 2], shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let [preferred, old] = names;
        let name = if self.weights.contains(&self.name(&preferred)) {
            &preferred
        } else {
            &old
        };
        match self.f32(name, shape) {
            Err(ModelError::MissingTensor { .. }) => Err(ModelError::MissingTensor {
                name: self.name(&preferred),
                path: self.weights.path().to_path_buf(),
            }),
            other => other.map(Cow::into_owned),
        }
    }
}

/// Layer normalization over rows of `gamma.len()`.
struct LayerNorm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(l: &Loader<'_>, base: &str, width: usize, eps: f32) -> Result<Self, ModelError> {
        let gamma = l.either(
            [format!("{base}.weight"), format!("{base}.gamma")],
            &[width],
        )?;
        let beta = l.either([format!("{base}.bias"), format!("{base}.beta")], &[width])?;
        Ok(Self { gamma, beta, eps })
    }

    /// `x = LN(x)`.
    fn forward(&self, x: &mut [f32]) {
        layer_norm(x, &self.gamma, &self.beta, self.eps);
    }

    /// `x = LN(x + residual)`.
    fn forward_residual(&self, x: &mut [f32], residual: &[f32]) {
        add_layer_norm(x, residual, &self.gamma, &self.beta, self.eps);
    }

    fn bytes(&self) -> usize {
        (self.gamma.len() + self.beta.len()) * std::mem::size_of::<f32>()
    }
}

/// Word, position and token-type embeddings followed by a layer norm.
struct Embeddings {
    word: MappedTensor,
    position: MappedTensor,
    token_type: MappedTensor,
    norm: LayerNorm,
    /// Position of a sequence's first token (0 for BERT, `pad + 1` for RoBERTa).
    position_offset: usize,
    /// RoBERTa ignores token type ids and always adds row 0.
    use_token_types: bool,
}

impl Embeddings {
    fn load(l: &Loader<'_>, d: &Dims, arch: Architecture, pad: usize) -> Result<Self, ModelError> {
        let h = d.hidden;
        Ok(Self {
            word: l.mapped(WORD_EMBEDDINGS, &[d.vocab, h])?,
            position: l.mapped("embeddings.position_embeddings.weight", &[d.positions, h])?,
            token_type: l.mapped("embeddings.token_type_embeddings.weight", &[d.types, h])?,
            norm: LayerNorm::load(l, "embeddings.LayerNorm", h, d.eps)?,
            position_offset: match arch {
                Architecture::Bert => 0,
                Architecture::Roberta => pad + 1,
            },
            use_token_types: arch == Architecture::Bert,
        })
    }

    /// Writes the embeddings of a validated batch to `x` (`[tokens, hidden]`).
    fn forward(&self, batch: &RaggedBatch<'_>, x: &mut [f32]) {
        let h = self.norm.gamma.len();
        let mut positions = Vec::with_capacity(batch.num_tokens());
        for w in batch.cu_seqlens.windows(2) {
            positions.extend((0..w[1] - w[0]).map(|p| p + self.position_offset));
        }
        let (word, pos, tt) = (
            self.word.as_slice(),
            self.position.as_slice(),
            self.token_type.as_slice(),
        );
        x.par_chunks_mut(h).enumerate().for_each(|(t, row)| {
            let id = batch.input_ids[t] as usize;
            let ty = if self.use_token_types {
                batch.token_type_ids.get(t).map_or(0, |&v| v as usize)
            } else {
                0
            };
            let (w, p, y) = (
                &word[id * h..][..h],
                &pos[positions[t] * h..][..h],
                &tt[ty * h..][..h],
            );
            for (i, out) in row.iter_mut().enumerate() {
                *out = w[i] + p[i] + y[i];
            }
        });
        self.norm.forward(x);
    }

    fn owned_bytes(&self) -> usize {
        self.word.owned_bytes()
            + self.position.owned_bytes()
            + self.token_type.owned_bytes()
            + self.norm.bytes()
    }
}

/// Buffers one forward pass reuses across layers, taken from a
/// [`BufferPool`] and returned to it when the pass ends.
struct Scratch<'p> {
    qkv: PooledBuffer<'p>,
    ctx: PooledBuffer<'p>,
    tmp: PooledBuffer<'p>,
    inter: PooledBuffer<'p>,
}

impl<'p> Scratch<'p> {
    fn new(tokens: usize, d: &Dims, pool: &'p BufferPool) -> Self {
        Self {
            qkv: pool.take(tokens * 3 * d.hidden),
            ctx: pool.take(tokens * d.hidden),
            tmp: pool.take(tokens * d.hidden),
            inter: pool.take(tokens * d.intermediate),
        }
    }
}

/// Time per stage of one forward pass, summed over layers.
#[derive(Default)]
struct StageTimes {
    attention: Duration,
    feed_forward: Duration,
}

/// Multi-head self-attention with query, key and value fused into one
/// `[3 * hidden, hidden]` projection whose output rows are `q | k | v`.
struct SelfAttention {
    qkv: PackedLinear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(l: &Loader<'_>, base: &str, d: &Dims) -> Result<Self, ModelError> {
        let h = d.hidden;
        let mut weight = Vec::with_capacity(3 * h * h);
        let mut bias = Vec::with_capacity(3 * h);
        for part in ["query", "key", "value"] {
            weight.extend_from_slice(&l.f32(&format!("{base}.{part}.weight"), &[h, h])?);
            bias.extend_from_slice(&l.f32(&format!("{base}.{part}.bias"), &[h])?);
        }
        Ok(Self {
            qkv: PackedLinear::new(&weight, Some(&bias), 3 * h, h),
            heads: d.heads,
            head_dim: d.head_dim,
        })
    }

    /// The attention context of `x` (`[tokens, hidden]`) into `ctx`.
    fn forward(&self, x: &[f32], cu_seqlens: &[usize], qkv: &mut [f32], ctx: &mut [f32]) {
        self.qkv
            .forward_segmented(x, cu_seqlens, qkv, Activation::Identity);
        ragged_attention(qkv, cu_seqlens, self.heads, self.head_dim, ctx);
    }
}

/// One transformer layer: attention, its output projection and residual
/// layer norm, then the feed-forward block and its residual layer norm.
struct Layer {
    attention: SelfAttention,
    attention_output: PackedLinear,
    attention_norm: LayerNorm,
    intermediate: PackedLinear,
    activation: Activation,
    output: PackedLinear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(l: &Loader<'_>, i: usize, d: &Dims, act: Activation) -> Result<Self, ModelError> {
        let p = format!("encoder.layer.{i}");
        let (h, m) = (d.hidden, d.intermediate);
        Ok(Self {
            attention: SelfAttention::load(l, &format!("{p}.attention.self"), d)?,
            attention_output: l.linear(&format!("{p}.attention.output.dense"), h, h)?,
            attention_norm: LayerNorm::load(
                l,
                &format!("{p}.attention.output.LayerNorm"),
                h,
                d.eps,
            )?,
            intermediate: l.linear(&format!("{p}.intermediate.dense"), m, h)?,
            activation: act,
            output: l.linear(&format!("{p}.output.dense"), h, m)?,
            output_norm: LayerNorm::load(l, &format!("{p}.output.LayerNorm"), h, d.eps)?,
        })
    }

    /// Replaces `x` (`[tokens, hidden]`) by the layer's output, adding the
    /// time of its stages to `times`.
    fn forward(
        &self,
        x: &mut Vec<f32>,
        cu_seqlens: &[usize],
        s: &mut Scratch<'_>,
        times: &mut StageTimes,
    ) {
        let start = Instant::now();
        self.attention
            .forward(x, cu_seqlens, &mut s.qkv, &mut s.ctx);
        self.attention_output.forward_segmented(
            &s.ctx,
            cu_seqlens,
            &mut s.tmp,
            Activation::Identity,
        );
        self.attention_norm.forward_residual(&mut s.tmp, x);
        std::mem::swap(x, &mut *s.tmp);
        let middle = Instant::now();
        self.intermediate
            .forward_segmented(x, cu_seqlens, &mut s.inter, self.activation);
        self.output
            .forward_segmented(&s.inter, cu_seqlens, &mut s.tmp, Activation::Identity);
        self.output_norm.forward_residual(&mut s.tmp, x);
        std::mem::swap(x, &mut *s.tmp);
        times.attention += middle - start;
        times.feed_forward += middle.elapsed();
    }

    fn packed_bytes(&self) -> usize {
        self.attention.qkv.size_bytes()
            + self.attention_output.size_bytes()
            + self.intermediate.size_bytes()
            + self.output.size_bytes()
            + self.attention_norm.bytes()
            + self.output_norm.bytes()
    }
}

/// The stack of transformer layers.
struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    fn load(l: &Loader<'_>, d: &Dims, act: Activation) -> Result<Self, ModelError> {
        let layers = (0..d.layers)
            .map(|i| Layer::load(l, i, d, act))
            .collect::<Result<_, _>>()?;
        Ok(Self { layers })
    }

    fn forward(
        &self,
        x: &mut Vec<f32>,
        cu_seqlens: &[usize],
        s: &mut Scratch<'_>,
        times: &mut StageTimes,
    ) {
        for layer in &self.layers {
            layer.forward(x, cu_seqlens, s, times);
        }
    }
}

/// A BERT-family encoder whose embedding tables stay in the weights' memory
/// map (when stored as aligned F32) and whose linear layers are packed.
pub struct BertModel {
    arch: Architecture,
    dims: Dims,
    max_positions: usize,
    embeddings: Embeddings,
    encoder: Encoder,
}

impl fmt::Debug for BertModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BertModel")
            .field("architecture", &self.arch)
            .field("hidden_size", &self.dims.hidden)
            .field("heads", &self.dims.heads)
            .field("layers", &self.dims.layers)
            .field("intermediate_size", &self.dims.intermediate)
            .field("max_positions", &self.max_positions)
            .field("packed_bytes", &self.packed_bytes())
            .finish()
    }
}

impl BertModel {
    /// Maps `weights_path` and builds the model `config` describes.
    /// `config_path` is only used in error messages.
    pub fn load(
        config: &ModelConfig,
        arch: Architecture,
        config_path: &Path,
        weights_path: &Path,
    ) -> Result<Self, ModelError> {
        let weights = Arc::new(Weights::open(weights_path)?);
        Self::from_weights(config, arch, config_path, &weights)
    }

    /// Builds the model from already mapped weights.
    pub fn from_weights(
        config: &ModelConfig,
        arch: Architecture,
        config_path: &Path,
        weights: &Arc<Weights>,
    ) -> Result<Self, ModelError> {
        let dims = Dims::new(config, config_path)?;
        let act = Activation::from_hf_name(&config.hidden_act).ok_or_else(|| {
            ModelError::InvalidConfig {
                path: config_path.to_path_buf(),
                message: format!("hidden_act `{}` is not supported", config.hidden_act),
            }
        })?;
        let pad = config.pad_token_id.unwrap_or(1) as usize;
        let max_positions = match arch {
            Architecture::Bert => dims.positions,
            Architecture::Roberta => dims
                .positions
                .checked_sub(pad + 1)
                .filter(|&m| m > 0)
                .ok_or_else(|| ModelError::InvalidConfig {
                    path: config_path.to_path_buf(),
                    message: format!(
                        "max_position_embeddings {} leaves no positions after padding id {pad}",
                        dims.positions
                    ),
                })?,
        };
        let loader = Loader::new(weights)?;
        Ok(Self {
            arch,
            dims,
            max_positions,
            embeddings: Embeddings::load(&loader, &dims, arch, pad)?,
            encoder: Encoder::load(&loader, &dims, act)?,
        })
    }

    /// Which family the model belongs to.
    pub fn architecture(&self) -> Architecture {
        self.arch
    }

    /// Transformer layers.
    pub fn num_layers(&self) -> usize {
        self.dims.layers
    }

    /// Whether the word-embedding table is read from the map without a copy.
    pub fn word_embeddings_mapped(&self) -> bool {
        self.embeddings.word.is_mapped()
    }

    fn check_tokens(&self, batch: &RaggedBatch<'_>) -> Result<(), ModelError> {
        batch.validate()?;
        for (sequence, w) in batch.cu_seqlens.windows(2).enumerate() {
            let len = w[1] - w[0];
            if len > self.max_positions {
                return Err(ModelError::SequenceTooLong {
                    sequence,
                    len,
                    max: self.max_positions,
                });
            }
        }
        if let Some(position) = batch
            .input_ids
            .iter()
            .position(|&id| id as usize >= self.dims.vocab)
        {
            let id = batch.input_ids[position];
            return Err(ModelError::TokenOutOfRange {
                position,
                id,
                vocab_size: self.dims.vocab,
            });
        }
        if self.embeddings.use_token_types {
            if let Some(position) = batch
                .token_type_ids
                .iter()
                .position(|&t| t as usize >= self.dims.types)
            {
                let id = batch.token_type_ids[position];
                return Err(ModelError::TokenTypeOutOfRange {
                    position,
                    id,
                    type_vocab_size: self.dims.types,
                });
            }
        }
        Ok(())
    }
}

impl EncoderTrait for BertModel {
    fn hidden_size(&self) -> usize {
        self.dims.hidden
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn forward(&self, batch: &RaggedBatch<'_>) -> Result<Vec<f32>, ModelError> {
        // A pool that keeps nothing: plain allocations, as before pooling.
        let pool = BufferPool::new(PoolLimits::NONE);
        self.forward_pooled(batch, &pool, &mut |_, _| {})
    }

    fn forward_pooled(
        &self,
        batch: &RaggedBatch<'_>,
        pool: &BufferPool,
        timer: &mut dyn FnMut(Stage, Duration),
    ) -> Result<Vec<f32>, ModelError> {
        self.check_tokens(batch)?;
        let tokens = batch.num_tokens();
        let start = Instant::now();
        let mut x = pool.take(tokens * self.dims.hidden);
        let mut times = StageTimes::default();
        if tokens > 0 {
            self.embeddings.forward(batch, &mut x);
        }
        timer(Stage::Embeddings, start.elapsed());
        if tokens > 0 {
            let mut scratch = Scratch::new(tokens, &self.dims, pool);
            self.encoder
                .forward(&mut x, batch.cu_seqlens, &mut scratch, &mut times);
        }
        timer(Stage::Attention, times.attention);
        timer(Stage::FeedForward, times.feed_forward);
        Ok(x.into_vec())
    }

    fn flops(&self, len: usize) -> f64 {
        let (n, h, m) = (
            len as f64,
            self.dims.hidden as f64,
            self.dims.intermediate as f64,
        );
        let linear = 2.0 * n * (3.0 * h * h + h * h + 2.0 * h * m);
        let attention = 4.0 * n * n * h;
        self.dims.layers as f64 * (linear + attention)
    }

    fn packed_bytes(&self) -> usize {
        self.embeddings.owned_bytes()
            + self
                .encoder
                .layers
                .iter()
                .map(Layer::packed_bytes)
                .sum::<usize>()
    }
}
