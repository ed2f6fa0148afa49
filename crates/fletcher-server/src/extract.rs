//! Request extractors whose rejections are [`ApiError`]s, so that a bad
//! body or query string is answered in the same JSON shape as every other
//! error, and the checks every inference route applies to its texts.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use fletcher_engine::{Prompts, TruncationSide};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;
use crate::AppState;

/// The whole request body, bounded by the payload limit.
#[derive(Debug)]
pub(crate) struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = state.settings.payload_limit;
        Bytes::from_request(request, state)
            .await
            .map(RawBody)
            .map_err(|r| ApiError::from_body(r, limit))
    }
}

/// A JSON body, whatever its content type.
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body; a shape error names the field it is about.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(ApiError::from_json)?;
    deserializer.end().map_err(ApiError::Json)?;
    Ok(value)
}

/// Query-string parameters.
#[derive(Debug)]
pub(crate) struct Params<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Params(t))
            .map_err(ApiError::from_query)
    }
}

/// The texts of a request field that holds either one string or an array
/// of strings. Token-id arrays and other shapes are refused.
pub(crate) fn texts_from(value: Value, field: &'static str) -> Result<Vec<String>, ApiError> {
    let invalid = |reason: String| ApiError::Invalid { field, reason };
    match value {
        Value::String(text) => Ok(vec![text]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(text) => Ok(text),
                Value::Number(_) | Value::Array(_) => Err(invalid(format!(
                    "item {i} is not a string; token ids are not accepted, send texts"
                ))),
                other => Err(invalid(format!(
                    "item {i} is {}, expected a string",
                    json_kind(&other)
                ))),
            })
            .collect(),
        other => Err(invalid(format!(
            "expected a string or an array of strings, got {}",
            json_kind(&other)
        ))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Refuses an empty request, an empty text, or more texts than the client
/// batch limit.
pub(crate) fn check_texts(
    texts: &[String],
    field: &'static str,
    limit: usize,
) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::NoInput { field });
    }
    if texts.len() > limit {
        return Err(ApiError::BatchTooLarge {
            size: texts.len(),
            limit,
        });
    }
    if let Some(index) = texts.iter().position(String::is_empty) {
        return Err(ApiError::EmptyText { field, index });
    }
    Ok(())
}

/// Parses a truncation side, accepting any letter case.
pub(crate) fn truncation_side(
    value: Option<&str>,
    field: &'static str,
) -> Result<Option<TruncationSide>, ApiError> {
    value
        .map(|v| {
            v.parse()
                .map_err(|reason| ApiError::Invalid { field, reason })
        })
        .transpose()
}

/// The prompt text a request gets: the one its `prompt_name` names, else
/// the model's default prompt, else none. An unknown name, or any prompt
/// for a model that pools without its prompt tokens, is refused.
pub(crate) fn check_prompt(
    prompts: &Prompts,
    prompt_name: Option<String>,
) -> Result<Option<String>, ApiError> {
    let Some(name) = prompt_name.or_else(|| prompts.default_name.clone()) else {
        return Ok(None);
    };
    let Some(text) = prompts.named.get(&name) else {
        let mut known: Vec<&str> = prompts.named.keys().map(String::as_str).collect();
        known.sort_unstable();
        return Err(ApiError::UnknownPrompt {
            name,
            known: known.join(", "),
        });
    };
    if prompts.excluded_from_pooling {
        return Err(ApiError::PromptNotPooled(name));
    }
    Ok(Some(text.clone()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn texts_accept_string_and_string_arrays() {
        assert_eq!(texts_from(json!("a"), "inputs").unwrap(), vec!["a"]);
        assert_eq!(
            texts_from(json!(["a", "b"]), "inputs").unwrap(),
            vec!["a", "b"]
        );
        let e = texts_from(json!([[101, 102]]), "input").unwrap_err();
        assert!(e.to_string().contains("token ids"), "{e}");
        let e = texts_from(json!(5), "inputs").unwrap_err();
        assert!(e.to_string().contains("a number"), "{e}");
        let e = texts_from(json!(["a", null]), "inputs").unwrap_err();
        assert!(e.to_string().contains("item 1 is null"), "{e}");
    }

    #[test]
    fn batch_checks_name_their_facts() {
        let texts = vec!["x".to_owned(); 3];
        let e = check_texts(&texts, "inputs", 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "batch size 3 is larger than the maximum client batch size of 2"
        );
        let e = check_texts(&["a".into(), String::new()], "inputs", 8).unwrap_err();
        assert_eq!(e.to_string(), "text 1 of `inputs` is empty");
        assert!(check_texts(&[], "inputs", 8).is_err());
        assert!(check_texts(&texts, "inputs", 3).is_ok());
    }

    #[test]
    fn truncation_side_takes_any_case() {
        assert_eq!(
            truncation_side(Some("Left"), "t").unwrap(),
            Some(TruncationSide::Left)
        );
        assert_eq!(
            truncation_side(Some("right"), "t").unwrap(),
            Some(TruncationSide::Right)
        );
        assert!(truncation_side(Some("middle"), "t").is_err());
        assert_eq!(truncation_side(None, "t").unwrap(), None);
    }
}
