//! The route handlers, and the one path by which they reach the engine.

pub(crate) mod openai;
pub(crate) mod tei;

use fletcher_engine::{EmbedOptions, EmbedRequest, Embedded};

use crate::error::ApiError;
use crate::extract::check_texts;
use crate::AppState;

/// What an inference route asks of the engine.
#[derive(Debug)]
pub(crate) struct Call {
    /// The request field holding the texts, for error messages.
    pub field: &'static str,
    pub texts: Vec<String>,
    pub options: EmbedOptions,
    pub dataset: Option<String>,
}

/// Checks the texts against the server's limits and embeds them. Every
/// inference route, JSON or Arrow, goes through here.
pub(crate) async fn embed(state: &AppState, call: Call) -> Result<Embedded, ApiError> {
    check_texts(&call.texts, call.field, state.settings.max_client_batch_size)?;
    let inputs = call.texts.len();
    let embedded = state
        .engine
        .embed(EmbedRequest {
            texts: call.texts,
            options: call.options,
            dataset: call.dataset,
        })
        .await?;
    tracing::debug!(
        inputs,
        prompt_tokens = embedded.prompt_tokens,
        tokenization_ms = embedded.timings.tokenization.as_secs_f64() * 1e3,
        queue_ms = embedded.timings.queue.as_secs_f64() * 1e3,
        inference_ms = embedded.timings.inference.as_secs_f64() * 1e3,
        "embedded"
    );
    Ok(embedded)
}

/// The `?dataset=NAME` parameter of the inference routes.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct DatasetParam {
    pub dataset: Option<String>,
}
