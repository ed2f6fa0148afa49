//! The routes of text-embeddings-inference: `/embed` (and `/`), `/tokenize`,
//! `/info`, `/health` and `/metrics`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fletcher_engine::{EmbedOptions, TokenInfo};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{embed as embed_texts, forward, sink_for, Call};
use crate::arrow::{self, VectorFormat};
use crate::error::ApiError;
use crate::extract::{
    check_prompt, check_texts, parse_json, texts_from, truncation_side, JsonBody, Params, RawBody,
};
use crate::observe::timing_headers;
use crate::AppState;

/// Content type of an Arrow IPC stream, for bodies and answers.
pub(crate) const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Body of `POST /embed`.
#[derive(Debug, Deserialize)]
struct EmbedBody {
    inputs: Value,
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
    prompt_name: Option<String>,
    dimensions: Option<usize>,
}

/// Query parameters of `POST /embed`. With a JSON body only `dataset` is
/// read; with an Arrow body they carry the options a JSON body would.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EmbedQuery {
    dataset: Option<String>,
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<String>,
    prompt_name: Option<String>,
    dimensions: Option<usize>,
    format: Option<String>,
    forward: Option<bool>,
}

/// Options as the TEI routes take them: normalized unless told otherwise,
/// truncated per `--auto-truncate` unless told otherwise.
struct TeiOptions<'a> {
    normalize: Option<bool>,
    truncate: Option<bool>,
    truncation_direction: Option<&'a str>,
    prompt_name: Option<String>,
    dimensions: Option<usize>,
}

impl TeiOptions<'_> {
    fn resolve(self, state: &AppState) -> Result<EmbedOptions, ApiError> {
        Ok(EmbedOptions {
            normalize: Some(self.normalize.unwrap_or(true)),
            truncate: self.truncate.unwrap_or(state.settings.auto_truncate),
            truncation_side: truncation_side(self.truncation_direction, "truncation_direction")?,
            prompt: check_prompt(state.engine.embedder().prompts(), self.prompt_name)?,
            dimensions: self.dimensions,
        })
    }
}

/// `POST /embed` and `POST /`: a JSON body answers `[[f32]]`; an Arrow IPC
/// stream body (`Content-Type: application/vnd.apache.arrow.stream`) with
/// a `text` column answers an Arrow IPC stream with `text` and `embedding`.
pub(crate) async fn embed(
    State(state): State<AppState>,
    Params(query): Params<EmbedQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    if is_arrow(&headers) {
        return embed_arrow(&state, query, &body).await;
    }
    let request: EmbedBody = parse_json(&body)?;
    let options = TeiOptions {
        normalize: request.normalize,
        truncate: request.truncate,
        truncation_direction: request.truncation_direction.as_deref(),
        prompt_name: request.prompt_name,
        dimensions: request.dimensions,
    }
    .resolve(&state)?;
    let texts = texts_from(request.inputs, "inputs")?;
    let sink = sink_for(&state, query.forward.unwrap_or(false), texts.len())?;
    let kept = sink.map(|_| texts.clone());
    let call = Call {
        field: "inputs",
        texts,
        options,
        dataset: query.dataset.clone(),
    };
    let embedded = embed_texts(&state, call).await?;
    if let (Some(sink), Some(texts)) = (sink, kept) {
        forward(sink, query.dataset.as_deref(), &texts, &embedded.vectors)?;
    }
    Ok((timing_headers(&embedded.timings), Json(embedded.vectors)).into_response())
}

async fn embed_arrow(
    state: &AppState,
    query: EmbedQuery,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let format = match query.format.as_deref() {
        None | Some("f32") | Some("float32") => VectorFormat::F32,
        Some("f16") | Some("float16") => VectorFormat::F16,
        Some(other) => {
            return Err(ApiError::Invalid {
                field: "format",
                reason: format!("unknown vector format `{other}` (f32, f16)"),
            })
        }
    };
    let mut input = arrow::read_texts(body)?;
    let options = TeiOptions {
        normalize: query.normalize,
        truncate: query.truncate,
        truncation_direction: query.truncation_direction.as_deref(),
        prompt_name: query.prompt_name,
        dimensions: query.dimensions,
    }
    .resolve(state)?;
    let dimension = options
        .dimensions
        .unwrap_or(state.engine.embedder().dimension());
    let sink = sink_for(state, query.forward.unwrap_or(false), input.texts.len())?;
    let texts = std::mem::take(&mut input.texts);
    let kept = sink.map(|_| texts.clone());
    let call = Call {
        field: "text",
        texts,
        options,
        dataset: query.dataset.clone(),
    };
    let embedded = embed_texts(state, call).await?;
    if let (Some(sink), Some(texts)) = (sink, kept) {
        forward(sink, query.dataset.as_deref(), &texts, &embedded.vectors)?;
    }
    let stream = arrow::write_embeddings(&input, &embedded.vectors, dimension, format)?;
    Ok((
        timing_headers(&embedded.timings),
        [(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM))],
        stream,
    )
        .into_response())
}

fn is_arrow(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(ARROW_STREAM))
}

/// Body of `POST /tokenize`.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenizeBody {
    inputs: Value,
    #[serde(default = "default_true")]
    add_special_tokens: bool,
    truncation_direction: Option<String>,
    prompt_name: Option<String>,
}

fn default_true() -> bool {
    true
}

/// `POST /tokenize`: the tokens of each text as the model sees them
/// (truncated to the model's limit), `[[{"id", "text", "special", "start",
/// "stop"}]]`. With `add_special_tokens: false` the special tokens are
/// left out of the answer.
pub(crate) async fn tokenize(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<TokenizeBody>,
) -> Result<Json<Vec<Vec<TokenInfo>>>, ApiError> {
    let mut texts = texts_from(request.inputs, "inputs")?;
    check_texts(&texts, "inputs", state.settings.max_client_batch_size)?;
    // Offsets are then into the prompt followed by the text, as the model
    // reads it.
    if let Some(prompt) = check_prompt(state.engine.embedder().prompts(), request.prompt_name)? {
        for text in &mut texts {
            text.insert_str(0, &prompt);
        }
    }
    let side = truncation_side(
        request.truncation_direction.as_deref(),
        "truncation_direction",
    )?;
    let mut tokens = state.engine.tokenize(texts, side).await?;
    if !request.add_special_tokens {
        for text in &mut tokens {
            text.retain(|t| !t.special);
        }
    }
    Ok(Json(tokens))
}

/// `GET /info`: the model and the limits a client must respect.
pub(crate) async fn info(State(state): State<AppState>) -> Json<Value> {
    let engine = &state.engine;
    let embedder = engine.embedder();
    let config = engine.config();
    let settings = &state.settings;
    let pooling: Vec<&str> = embedder.pooling().iter().map(|p| p.name()).collect();
    let pooling = pooling.join("+");
    Json(json!({
        "model_id": embedder.model_id(),
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": pooling}},
        "dimension": embedder.dimension(),
        "max_input_length": embedder.max_seq_length(),
        "pooling": pooling,
        "normalize": embedder.normalizes(),
        "threads": embedder.threads(),
        "max_concurrent_inputs": config.max_concurrent_inputs,
        "max_batch_tokens": config.max_batch_tokens,
        "max_batch_requests": (config.max_batch_requests != usize::MAX).then_some(config.max_batch_requests),
        "request_timeout_seconds": config.request_timeout.map(|t| t.as_secs_f64()),
        "max_client_batch_size": settings.max_client_batch_size,
        "payload_limit": settings.payload_limit,
        "auto_truncate": settings.auto_truncate,
        "devices": engine.devices(),
        "cache_capacity_bytes": engine.cache().map_or(0, |c| c.capacity_bytes()),
        "sink": settings.sink.as_ref().map(|s| s.status()),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

/// `GET /health`: 200 while the engine is healthy, 503 otherwise.
pub(crate) async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.engine.is_healthy() {
        Ok(Json(json!({"status": "ok"})))
    } else {
        Err(ApiError::Unhealthy)
    }
}

/// `GET /metrics`: every metric in Prometheus' text format.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_TEXT),
        )],
        state.engine.metrics().render(),
    )
        .into_response()
}

/// Body of `POST /admin/fault`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultBody {
    device: String,
    /// `panic`, `nan` or `slow`.
    fault: String,
    /// Batches affected, for `panic` and `nan` (default 1).
    count: Option<u32>,
    /// Slow-down factor, for `slow` (1.0 restores normal speed).
    factor: Option<f32>,
}

/// `POST /admin/fault`: arms a fault on a device. Refused with 422 unless
/// the server runs with `--fault-injection`, a switch meant for tests.
pub(crate) async fn inject_fault(
    State(state): State<AppState>,
    JsonBody(request): JsonBody<FaultBody>,
) -> Result<Json<Value>, ApiError> {
    use fletcher_engine::device::Fault;
    let fault = match request.fault.as_str() {
        "panic" => Fault::Panic(request.count.unwrap_or(1)),
        "nan" => Fault::Nan(request.count.unwrap_or(1)),
        "slow" => match request.factor {
            Some(f) if f.is_finite() && f > 0.0 => Fault::Slow(f),
            _ => {
                return Err(ApiError::Invalid {
                    field: "factor",
                    reason: "`slow` needs a positive `factor`".to_owned(),
                })
            }
        },
        other => {
            return Err(ApiError::Invalid {
                field: "fault",
                reason: format!("unknown fault `{other}` (panic, nan, slow)"),
            })
        }
    };
    state.engine.inject_fault(&request.device, fault)?;
    Ok(Json(
        json!({"device": request.device, "armed": request.fault}),
    ))
}
