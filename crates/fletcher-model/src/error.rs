//! The error type of model loading and encoding.

use std::path::PathBuf;

/// Everything that can go wrong while opening a model directory, loading its
/// weights or running an encoder. Every variant names the file, tensor or
/// input position involved, so its message alone says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A file the model needs is not in the directory.
    #[error("{path} is missing: {reason}")]
    MissingFile {
        /// The file that was looked for.
        path: PathBuf,
        /// Why the file is needed, or what was found instead.
        reason: String,
    },

    /// A JSON file could not be parsed or does not have the expected fields.
    #[error("malformed {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },

    /// A configuration file parsed, but a value in it cannot be used.
    #[error("invalid configuration in {path}: {message}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// Which value is wrong and why.
        message: String,
    },

    /// The model's architecture (or `model_type`) is not one Fletcher implements.
    #[error(
        "unknown architecture `{architecture}` in {path}; supported: BERT-family models \
         (model_type `bert`) and RoBERTa / XLM-RoBERTa (model_type `roberta`, `xlm-roberta`)"
    )]
    UnknownArchitecture {
        /// The `model_type` or `architectures` entry that was not recognized.
        architecture: String,
        /// The config.json that names it.
        path: PathBuf,
    },

    /// A sentence-transformers module that would change the vectors is not
    /// implemented, so encoding would silently disagree with the reference.
    #[error("unsupported sentence-transformers module `{module}` in {path}")]
    UnsupportedModule {
        /// The module type, or pooling mode, as written in the file.
        module: String,
        /// The file that lists it.
        path: PathBuf,
    },

    /// The safetensors file is truncated or its header is corrupt.
    #[error("corrupt safetensors file {path}: {source}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// A tensor the architecture needs is not in the weights file.
    #[error("tensor `{name}` not found in {path}")]
    MissingTensor {
        /// The full tensor name that was looked up (prefix included).
        name: String,
        /// The weights file.
        path: PathBuf,
    },

    /// A tensor's shape disagrees with what config.json implies.
    #[error("tensor `{name}` in {path} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// The weights file.
        path: PathBuf,
        /// The shape config.json implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
    },

    /// A tensor is stored in a dtype other than F32, F16 or BF16.
    #[error("tensor `{name}` in {path} has unsupported dtype {dtype} (F32, F16 and BF16 load)")]
    UnsupportedDtype {
        /// The tensor.
        name: String,
        /// The weights file.
        path: PathBuf,
        /// The dtype as safetensors names it.
        dtype: String,
    },

    /// The batch's offsets or lengths are inconsistent.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),

    /// A token id is not a row of the word-embedding table.
    #[error("token id {id} at position {position} is out of range (vocabulary has {vocab_size} entries)")]
    TokenOutOfRange {
        /// Index of the token in the flattened batch.
        position: usize,
        /// The offending id.
        id: u32,
        /// Rows in the word-embedding table.
        vocab_size: usize,
    },

    /// A token type id is not a row of the token-type embedding table.
    #[error("token type id {id} at position {position} is out of range (model has {type_vocab_size} token types)")]
    TokenTypeOutOfRange {
        /// Index of the token in the flattened batch.
        position: usize,
        /// The offending token type id.
        id: u32,
        /// Rows in the token-type embedding table.
        type_vocab_size: usize,
    },

    /// A sequence has more tokens than the model has positions.
    #[error("sequence {sequence} has {len} tokens; the model accepts at most {max}")]
    SequenceTooLong {
        /// Index of the sequence in the batch.
        sequence: usize,
        /// Its length in tokens.
        len: usize,
        /// The model's limit, [`crate::Encoder::max_positions`].
        max: usize,
    },
}
