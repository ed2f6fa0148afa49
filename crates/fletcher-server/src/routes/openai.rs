//! OpenAI's `POST /v1/embeddings`.
//!
//! Vectors follow the model's normalization. `encoding_format: "base64"`
//! answers each vector as the base64 of its little-endian f32 bytes, as
//! OpenAI's clients expect. Token-id inputs are refused with 422; `user`
//! and other unknown fields are ignored.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::prelude::{Engine as _, BASE64_STANDARD};
use fletcher_engine::EmbedOptions;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{embed, Call, DatasetParam};
use crate::error::ApiError;
use crate::extract::{texts_from, JsonBody, Params};
use crate::observe::timing_headers;
use crate::AppState;

/// Body of `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
pub(crate) struct EmbeddingsRequest {
    input: Value,
    model: Option<String>,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

#[derive(Debug, Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
}

#[derive(Debug, Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Encoded,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Encoded {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// `POST /v1/embeddings`: one embedding object per input, in order, and
/// the tokens used. `model` echoes the request's, else the loaded model id.
pub(crate) async fn embeddings(
    State(state): State<AppState>,
    Params(query): Params<DatasetParam>,
    JsonBody(request): JsonBody<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::Invalid {
                field: "encoding_format",
                reason: format!("unknown encoding format `{other}` (float, base64)"),
            })
        }
    };
    let call = Call {
        field: "input",
        texts: texts_from(request.input, "input")?,
        options: EmbedOptions {
            normalize: None,
            truncate: state.settings.auto_truncate,
            truncation_side: None,
            prompt: None,
            dimensions: request.dimensions,
        },
        dataset: query.dataset,
    };
    let embedded = embed(&state, call).await?;
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: if base64 {
                Encoded::Base64(BASE64_STANDARD.encode(le_bytes(&vector)))
            } else {
                Encoded::Float(vector)
            },
        })
        .collect();
    let model = request
        .model
        .unwrap_or_else(|| state.engine.embedder().model_id().to_owned());
    let body = EmbeddingsResponse {
        object: "list",
        data,
        model,
        usage: Usage {
            prompt_tokens: embedded.prompt_tokens,
            total_tokens: embedded.prompt_tokens,
        },
    };
    Ok((timing_headers(&embedded.timings), Json(body)).into_response())
}

fn le_bytes(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let encoded = BASE64_STANDARD.encode(le_bytes(&[1.0, -2.5]));
        let bytes = BASE64_STANDARD.decode(encoded).unwrap();
        assert_eq!(bytes, [0, 0, 128, 63, 0, 0, 32, 192]);
    }
}
