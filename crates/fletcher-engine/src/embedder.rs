//! The [`Embedder`] handle: one model replica, its tokenizer and its threads.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use std::time::{Duration, Instant};

use fletcher_model::{BufferPool, Encoder, ModelDir, PoolLimits, Pooling, RaggedBatch, Stage};

use crate::batch::{longest_first, plan_batches};
use crate::tokenize::{TextTokenizer, TokenInfo, Tokens};
use crate::{hub, EngineError, Metrics, TruncationSide};

/// Tokens in one ragged batch when nothing else is asked for: large enough to
/// keep the matrix multiplies efficient, small enough for the activations of
/// a batch to stay in the last-level cache of a small machine.
const DEFAULT_MAX_BATCH_TOKENS: usize = 4096;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Threads of the embedder's pool; `None` uses every core.
    pub threads: Option<usize>,
    /// Pooling instead of the model's own pooling config; required for a
    /// plain transformers directory.
    pub pooling: Option<Pooling>,
    /// Whether vectors are L2-normalized, instead of the model's Normalize
    /// module.
    pub normalize: Option<bool>,
    /// Most tokens of a text, special tokens included, instead of the model's
    /// `max_seq_length`; never more than the model's positions.
    pub max_seq_length: Option<usize>,
    /// Which end of an over-long text is cut by default.
    pub truncation_side: TruncationSide,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: Option<usize>,
}

/// Options of one embedding call.
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// L2-normalize the vectors; `None` follows the model.
    pub normalize: Option<bool>,
    /// Cut over-long texts; when false they fail with
    /// [`EngineError::TooLong`].
    pub truncate: bool,
    /// Which end to cut; `None` follows the load options.
    pub truncation_side: Option<TruncationSide>,
    /// Text put before every input, as sentence-transformers' prompts are.
    pub prompt: Option<String>,
    /// Keep only the first `dimensions` components (before normalization).
    pub dimensions: Option<usize>,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            normalize: None,
            truncate: true,
            truncation_side: None,
            prompt: None,
            dimensions: None,
        }
    }
}

/// The encoder and its pooling: what every device runs. Devices share one
/// `ModelCore`, so the packed weights exist once in memory.
#[derive(Debug)]
pub(crate) struct ModelCore {
    encoder: Box<dyn Encoder>,
    pooling: Vec<Pooling>,
}

impl ModelCore {
    /// Components of each pooled vector.
    pub fn dimension(&self) -> usize {
        self.encoder.hidden_size() * self.pooling.len()
    }

    /// Encodes and pools `batch` on the current rayon pool:
    /// `[sequences, dimension]`, before normalization. Activations and
    /// workspaces come from `buffers`; stage times go to `metrics` under
    /// `device`, one observation per stage.
    pub fn encode(
        &self,
        batch: &RaggedBatch<'_>,
        device: &str,
        metrics: &Metrics,
        buffers: &BufferPool,
    ) -> Result<Vec<f32>, EngineError> {
        let mut observe = |stage: Stage, elapsed: Duration| {
            metrics
                .gpu_layer_duration_seconds
                .with_label_values(&[stage.as_str(), device])
                .observe(elapsed.as_secs_f64());
        };
        let hidden = self.encoder.forward_pooled(batch, buffers, &mut observe)?;
        let start = Instant::now();
        let mut pooled = vec![0.0; batch.num_sequences() * self.dimension()];
        fletcher_model::pooling::pool(
            &hidden,
            self.encoder.hidden_size(),
            batch.cu_seqlens,
            &self.pooling,
            &mut pooled,
        );
        buffers.give_back(hidden);
        observe(Stage::Pooling, start.elapsed());
        Ok(pooled)
    }
}

/// A loaded model ready to embed texts. Cheap to share between threads.
#[derive(Debug)]
pub struct Embedder {
    id: String,
    core: Arc<ModelCore>,
    tokenizer: TextTokenizer,
    /// Metrics of calls made directly on the embedder (the CLI).
    metrics: Metrics,
    /// Activation buffers of calls made directly on the embedder.
    buffers: BufferPool,
    normalize: bool,
    truncation_side: TruncationSide,
    max_batch_tokens: usize,
    pool: rayon::ThreadPool,
    threads: usize,
    fingerprint: [u8; 32],
    prompts: Prompts,
}

/// The named prompts of a sentence-transformers model
/// (`config_sentence_transformers.json`).
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    /// Prompt texts by name.
    pub named: std::collections::HashMap<String, String>,
    /// The prompt applied when a call names none.
    pub default_name: Option<String>,
    /// The pooling leaves the prompt's tokens out (`include_prompt: false`),
    /// which this engine does not do: prompts are refused for such a model.
    pub excluded_from_pooling: bool,
}

impl Embedder {
    /// Loads a model from a directory or a Hugging Face Hub id.
    pub fn load(spec: &str, options: &LoadOptions) -> Result<Self, EngineError> {
        let path = hub::resolve_model(spec)?;
        Self::load_dir(spec, &path, options)
    }

    /// Loads the model in `path`, reporting it as `id`.
    pub fn load_dir(id: &str, path: &Path, options: &LoadOptions) -> Result<Self, EngineError> {
        let dir = ModelDir::open(path)?;
        let encoder = dir.load_encoder()?;
        let pooling = match (options.pooling, &dir.sentence.pooling) {
            (Some(mode), _) => vec![mode],
            (None, Some(modes)) if !modes.is_empty() => modes.clone(),
            (None, _) => {
                return Err(EngineError::NoPooling {
                    path: path.display().to_string(),
                })
            }
        };
        let max_len = options
            .max_seq_length
            .or(dir.sentence.max_seq_length)
            .unwrap_or(usize::MAX)
            .min(encoder.max_positions());
        if max_len < 2 {
            return Err(EngineError::InvalidOption(format!(
                "max_seq_length {max_len} leaves no room for text"
            )));
        }
        let tokenizer =
            TextTokenizer::load(&dir.tokenizer_path, max_len, dir.sentence.do_lower_case)?;
        let fingerprint = crate::cache::model_fingerprint(&[
            dir.weights_path.as_path(),
            dir.tokenizer_path.as_path(),
            dir.config_path.as_path(),
        ])
        .map_err(|e| EngineError::InvalidOption(format!("cannot read the model files: {e}")))?;
        let threads = options.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("fletcher-cpu-{i}"))
            .build()
            .map_err(|e| EngineError::ThreadPool(e.to_string()))?;
        let metrics = Metrics::new();
        let buffers = BufferPool::with_observer(PoolLimits::default(), Arc::new(metrics.clone()));
        Ok(Self {
            id: id.to_owned(),
            core: Arc::new(ModelCore { encoder, pooling }),
            tokenizer,
            metrics,
            buffers,
            normalize: options.normalize.unwrap_or(dir.sentence.normalize),
            truncation_side: options.truncation_side,
            max_batch_tokens: options
                .max_batch_tokens
                .unwrap_or(DEFAULT_MAX_BATCH_TOKENS)
                .max(1),
            pool,
            threads: threads.max(1),
            fingerprint,
            prompts: Prompts {
                named: dir.sentence.prompts.clone(),
                default_name: dir.sentence.default_prompt_name.clone(),
                excluded_from_pooling: dir.sentence.exclude_prompt_from_pooling,
            },
        })
    }

    /// A hash of the weights, tokenizer and config: two embedders with the
    /// same fingerprint give the same vectors.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The model's named prompts.
    pub fn prompts(&self) -> &Prompts {
        &self.prompts
    }

    /// Components of each vector.
    pub fn dimension(&self) -> usize {
        self.core.dimension()
    }

    /// Most tokens of one text, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// Threads that run the model.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The model as it was named when loaded.
    pub fn model_id(&self) -> &str {
        &self.id
    }

    /// The pooling modes, concatenated in this order.
    pub fn pooling(&self) -> &[Pooling] {
        &self.core.pooling
    }

    /// Whether vectors are normalized unless a call says otherwise.
    pub fn normalizes(&self) -> bool {
        self.normalize
    }

    /// Floating-point operations to encode one text of `tokens` tokens.
    pub fn flops(&self, tokens: usize) -> f64 {
        self.core.encoder.flops(tokens)
    }

    /// Embeds `texts` with the model's defaults; vectors in input order.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.embed_with(texts, &EmbedOptions::default())
    }

    /// Tokens of each text after truncation, special tokens included.
    pub fn token_counts(&self, texts: &[String]) -> Result<Vec<usize>, EngineError> {
        let tokens = self
            .pool
            .install(|| self.tokenizer.encode(texts, self.truncation_side))?;
        Ok(tokens.iter().map(|t| t.ids.len()).collect())
    }

    /// Embeds `texts` with `options`; vectors in input order.
    pub fn embed_with(
        &self,
        texts: &[String],
        options: &EmbedOptions,
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        self.check_options(options)?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        self.pool.install(|| {
            let tokens = self.tokenize(texts, options)?;
            let normalize = options.normalize.unwrap_or(self.normalize);
            let lengths: Vec<usize> = tokens.iter().map(|t| t.ids.len()).collect();
            let order = longest_first(&lengths);
            let dim = self.dimension();
            let mut out = vec![Vec::new(); texts.len()];
            for batch in plan_batches(&order, &lengths, self.max_batch_tokens) {
                let items: Vec<&Tokens> = batch.iter().map(|&i| &tokens[i]).collect();
                let pooled = self.encode(&items)?;
                for (&slot, vector) in batch.iter().zip(pooled.chunks_exact(dim)) {
                    out[slot] = finish(vector, options.dimensions, normalize);
                }
            }
            Ok(out)
        })
    }

    /// The tokens of each text with strings and offsets, truncated as the
    /// model would.
    pub fn tokenize_detailed(
        &self,
        texts: &[String],
        side: Option<TruncationSide>,
    ) -> Result<Vec<Vec<TokenInfo>>, EngineError> {
        self.tokenizer
            .detailed(texts, side.unwrap_or(self.truncation_side))
    }

    /// Refuses options this model cannot honour.
    pub(crate) fn check_options(&self, options: &EmbedOptions) -> Result<(), EngineError> {
        if let Some(d) = options.dimensions {
            if d == 0 || d > self.dimension() {
                return Err(EngineError::InvalidOption(format!(
                    "dimensions must be between 1 and {}, got {d}",
                    self.dimension()
                )));
            }
        }
        Ok(())
    }

    /// Tokenizes `texts` as `options` say, on the current rayon pool; fails
    /// on the first over-long text when truncation is off.
    pub(crate) fn tokenize(
        &self,
        texts: &[String],
        options: &EmbedOptions,
    ) -> Result<Vec<Tokens>, EngineError> {
        let inputs: Cow<'_, [String]> = match &options.prompt {
            Some(prompt) => Cow::Owned(texts.iter().map(|t| format!("{prompt}{t}")).collect()),
            None => Cow::Borrowed(texts),
        };
        let side = options.truncation_side.unwrap_or(self.truncation_side);
        let tokens = self.tokenizer.encode(&inputs, side)?;
        if !options.truncate {
            let limit = self.tokenizer.max_len();
            if let Some(index) = tokens.iter().position(|t| t.truncated) {
                return Err(EngineError::TooLong {
                    index,
                    tokens: self.tokenizer.untruncated_len(&inputs[index])?,
                    limit,
                });
            }
        }
        Ok(tokens)
    }

    /// Whether `options` ask for normalized vectors.
    pub(crate) fn truncation_side_for(&self, options: &EmbedOptions) -> TruncationSide {
        options.truncation_side.unwrap_or(self.truncation_side)
    }

    pub(crate) fn normalize_for(&self, options: &EmbedOptions) -> bool {
        options.normalize.unwrap_or(self.normalize)
    }

    /// Encodes and pools `items` as one ragged batch on the embedder's pool:
    /// `[items.len(), dimension]`, before normalization.
    pub(crate) fn encode(&self, items: &[&Tokens]) -> Result<Vec<f32>, EngineError> {
        let batch = Self::gather(items);
        self.pool.install(|| {
            self.core.encode(
                &RaggedBatch {
                    input_ids: &batch.input_ids,
                    token_type_ids: &batch.token_type_ids,
                    cu_seqlens: &batch.cu_seqlens,
                },
                "cpu:0",
                &self.metrics,
                &self.buffers,
            )
        })
    }

    /// The encoder and pooling, shared with the engine's devices.
    pub(crate) fn core(&self) -> Arc<ModelCore> {
        self.core.clone()
    }

    /// Gathers `items` into one ragged batch of owned token ids.
    pub(crate) fn gather(items: &[&Tokens]) -> crate::device::DeviceBatch {
        let total: usize = items.iter().map(|t| t.ids.len()).sum();
        let mut batch = crate::device::DeviceBatch {
            id: 0,
            input_ids: Vec::with_capacity(total),
            token_type_ids: Vec::with_capacity(total),
            cu_seqlens: Vec::with_capacity(items.len() + 1),
        };
        batch.cu_seqlens.push(0);
        for t in items {
            batch.input_ids.extend_from_slice(&t.ids);
            batch.token_type_ids.extend_from_slice(&t.type_ids);
            batch.cu_seqlens.push(batch.input_ids.len());
        }
        batch
    }
}

/// Shortens a pooled vector to `dimensions` and L2-normalizes it if asked.
pub(crate) fn finish(pooled: &[f32], dimensions: Option<usize>, normalize: bool) -> Vec<f32> {
    let mut v = pooled[..dimensions.unwrap_or(pooled.len())].to_vec();
    if normalize {
        let norm = v
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        // sentence-transformers divides by max(norm, 1e-12).
        let inv = (1.0 / norm.max(1e-12)) as f32;
        for x in &mut v {
            *x *= inv;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::finish;

    #[test]
    fn finish_truncates_then_normalizes() {
        let v = finish(&[3.0, 4.0, 12.0], Some(2), true);
        assert_eq!(v.len(), 2);
        assert!((v[0] - 0.6).abs() < 1e-7 && (v[1] - 0.8).abs() < 1e-7);
        assert_eq!(finish(&[3.0, 4.0], None, false), vec![3.0, 4.0]);
        assert_eq!(finish(&[0.0, 0.0], None, true), vec![0.0, 0.0]);
    }
}
