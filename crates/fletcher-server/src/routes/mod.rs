//! The route handlers, and the one path by which they reach the engine.

pub(crate) mod openai;
pub(crate) mod tei;

use fletcher_engine::{EmbedOptions, EmbedRequest, Embedded};
use fletcher_flight::{rows_to_batch, SinkError, SinkHandle};

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
    check_texts(
        &call.texts,
        call.field,
        state.settings.max_client_batch_size,
    )?;
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

/// The sink for a request that asks for forwarding (`forward`), after
/// checking that its buffer has room for `rows` now; `None` when forwarding
/// was not asked for.
pub(crate) fn sink_for(
    state: &AppState,
    forward: bool,
    rows: usize,
) -> Result<Option<&SinkHandle>, ApiError> {
    if !forward {
        return Ok(None);
    }
    let sink = state.settings.sink.as_ref().ok_or(ApiError::NoSink)?;
    let room = sink.room();
    if rows > room {
        return Err(ApiError::SinkFull { rows, room });
    }
    Ok(Some(sink))
}

/// Hands embedded rows to the sink, for `dataset` or the sink's default.
/// The rows are buffered or refused whole; a refusal fails the request.
pub(crate) fn forward(
    sink: &SinkHandle,
    dataset: Option<&str>,
    texts: &[String],
    vectors: &[Vec<f32>],
) -> Result<(), ApiError> {
    let batch = rows_to_batch(texts, vectors).map_err(|e| ApiError::Encode(e.to_string()))?;
    let submitted = match dataset {
        Some(dataset) => sink.submit_to(dataset, batch),
        None => sink.submit(batch),
    };
    submitted.map_err(|e| match e {
        SinkError::Full {
            rows,
            buffered,
            capacity,
        } => ApiError::SinkFull {
            rows,
            room: capacity.saturating_sub(buffered),
        },
        SinkError::TooLarge { rows, .. } => ApiError::SinkFull { rows, room: 0 },
        SinkError::Closed => ApiError::Unhealthy,
        other => ApiError::Encode(other.to_string()),
    })
}
