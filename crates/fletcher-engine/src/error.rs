//! Errors of the engine.

use fletcher_model::ModelError;

/// Why the engine could not load a model or embed a text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The model directory or one of its files is unusable.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model could not be found locally or fetched from the Hub.
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),
    /// `tokenizer.json` could not be read or used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: String,
        /// What the tokenizer library reported.
        message: String,
    },
    /// A text could not be tokenized.
    #[error("text {index}: tokenization failed: {message}")]
    Tokenize {
        /// Position of the text in the request.
        index: usize,
        /// What the tokenizer library reported.
        message: String,
    },
    /// A text is longer than the model accepts and truncation is off.
    #[error("text {index} has {tokens} tokens, more than the limit of {limit}")]
    TooLong {
        /// Position of the text in the request.
        index: usize,
        /// Tokens of the whole text, special tokens included.
        tokens: usize,
        /// Most tokens the model accepts.
        limit: usize,
    },
    /// The directory has no pooling configuration and none was given.
    #[error(
        "{path} has no sentence-transformers pooling config (modules.json and \
         1_Pooling/config.json); pass a pooling mode (cls, mean, max, \
         mean_sqrt_len, lasttoken)"
    )]
    NoPooling {
        /// The model directory.
        path: String,
    },
    /// The request asked for something the model cannot give.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Too many texts are in flight; the request was refused at once.
    #[error(
        "overloaded: {in_flight} texts in flight, {requested} more would pass the limit of {limit}"
    )]
    Overloaded {
        /// Texts in the refused request.
        requested: usize,
        /// Texts already in flight.
        in_flight: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The request waited longer than the request timeout.
    #[error("request timed out after {waited:?}")]
    Timeout {
        /// How long it waited.
        waited: std::time::Duration,
    },
    /// A device failed while encoding a batch holding the request's texts.
    #[error("device {device} failed: {message}")]
    Device {
        /// The device's name.
        device: String,
        /// What went wrong.
        message: String,
    },
    /// A device produced a vector with NaN or infinity for a text, twice.
    #[error("text {index}: device {device} produced a non-finite vector")]
    InvalidOutput {
        /// Position of the text in the request.
        index: usize,
        /// The device that produced it last.
        device: String,
    },
    /// The engine is shutting down and takes no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A fault inside the engine.
    #[error("internal error: {0}")]
    Internal(String),
    /// The thread pool could not be started.
    #[error("thread pool: {0}")]
    ThreadPool(String),
}
